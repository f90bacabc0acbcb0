//! The baseline for the tracking benchmark: an axum server that reads each request and answers
//! 204, doing nothing else. Same runtime shape as switchyard (tokio multi-thread, one worker per
//! core, axum over hyper HTTP/1.1), so the difference between the two is switchyard's own work.
//!
//! Usage: `bench-noop 127.0.0.1:PORT`

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let addr: std::net::SocketAddr = listen.parse()?;
    // The accept queue switchyard asks for (as `switchyard::listen` does; not called, so the
    // baseline does not link switchyard), not `TcpListener::bind`'s 128: with 128, a generator opening 1,024 connections at once had handshakes dropped and
    // retried after 1 s and 3 s, so its start took 5–8 s against this server only.
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    eprintln!("bench-noop listening on {}", listener.local_addr()?);
    // Reading the body keeps the work per request the same as a real collector's minimum.
    let app = Router::new().fallback(|_body: Bytes| async { StatusCode::NO_CONTENT });
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
