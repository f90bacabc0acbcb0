//! The baseline for the tracking benchmark: an axum server that reads each request and answers
//! 204, doing nothing else. Same runtime shape as switchyard (`switchyard::server::serve`): one
//! thread per core, each running a single-threaded tokio runtime with axum over hyper HTTP/1.1,
//! and an acceptor dealing connections to them in turn; so the difference between the two is
//! switchyard's own work. `BENCH_NOOP_SHARED=1` serves on tokio's work-stealing runtime
//! instead (switchyard's `http_threads = 0`).
//!
//! Usage: `bench-noop 127.0.0.1:PORT`

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn app() -> Router {
    // Reading the body keeps the work per request the same as a real collector's minimum.
    Router::new().fallback(|_body: Bytes| async { StatusCode::NO_CONTENT })
}

/// One thread's share of the connections, as the listener its server accepts from. The twin
/// of `switchyard::server`'s `Dealt`, written again rather than shared: linking switchyard (or
/// `platform`, with its database drivers) into the baseline would put that whole build, with
/// fat LTO, behind every `bench-noop` build.
struct Dealt {
    connections: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for Dealt {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Some((stream, peer)) = self.connections.recv().await else {
                return std::future::pending().await;
            };
            if let Ok(stream) = TcpStream::from_std(stream) {
                return (stream, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let addr: SocketAddr = listen.parse()?;
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
    let mut listener = socket.listen(4096)?;
    let local = listener.local_addr()?;
    eprintln!("bench-noop listening on {local}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    if std::env::var_os("BENCH_NOOP_SHARED").is_some() {
        axum::serve(listener, app())
            .with_graceful_shutdown(stop)
            .await?;
        return Ok(());
    }
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let queues: Vec<_> = (0..threads)
        .map(|_| {
            let (queue, connections) = mpsc::unbounded_channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    // As switchyard's HTTP threads (`HTTP_GLOBAL_QUEUE_INTERVAL`).
                    .global_queue_interval(2)
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    let _ = axum::serve(Dealt { connections, local }, app()).await;
                });
            });
            queue
        })
        .collect();
    let deal = async {
        for next in (0..threads).cycle() {
            let (stream, peer) = axum::serve::Listener::accept(&mut listener).await;
            if let Ok(stream) = stream.into_std() {
                let _ = queues[next].send((stream, peer));
            }
        }
    };
    tokio::select! {
        () = deal => {}
        () = stop => {}
    }
    // The bench stops the baseline only between runs, with nothing in flight.
    Ok(())
}
