//! The listening socket: a burst of new connections larger than the usual 128-deep accept
//! queue waits in the kernel for the server, instead of being dropped.

use std::time::Duration;

/// Connections opened while nothing accepts. With `TcpListener::bind`'s backlog of 128, the
/// kernel drops the handshakes past the queue's end and those clients try again only after a
/// second; with `switchyard::listen`'s, every one completes at once and is accepted later.
#[tokio::test]
async fn a_burst_of_connections_waits_in_the_accept_queue() {
    // The kernel caps any backlog at `net.core.somaxconn` (4096 by default since Linux 5.4).
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let burst = 300.min(somaxconn);
    let listener = switchyard::listen(([127, 0, 0, 1], 0).into()).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut clients = Vec::with_capacity(burst);
    for i in 0..burst {
        let connect = tokio::net::TcpStream::connect(addr);
        let stream = tokio::time::timeout(Duration::from_millis(500), connect)
            .await
            .unwrap_or_else(|_| panic!("connection {i} of {burst} waited: the queue is full"))
            .expect("connect");
        clients.push(stream);
    }
    for i in 0..burst {
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .unwrap_or_else(|_| panic!("only {i} of {burst} connections were queued"))
            .expect("accept");
    }
}

/// Threads of this process named `http-N` (the server's HTTP threads). nextest runs each test in
/// a process of its own; under `cargo test` other tests' servers may add theirs.
fn http_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
                .filter(|name| name.starts_with("http-"))
                .count()
        })
        .unwrap_or(0)
}

/// Sends `request` on `stream` and reads the response (head, and a `Content-Length` body);
/// returns its status.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert_eq!(read, 1, "connection closed after {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("an ASCII head");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("body");
    head[9..12].parse().expect("a status code")
}

/// Connections are dealt to the HTTP threads in turn (`http_threads`), or served by the shared
/// runtime (`0`). Either way each of several keep-alive connections carries a GA4 hit (served
/// on its thread) and an API request (spawned onto the shared runtime), one after the other,
/// and every hit answered 204 is in the log.
#[tokio::test]
async fn every_connection_is_served_on_http_threads_or_the_shared_runtime() {
    use crate::support::{Backend, TestApp};
    for threads in [3, 0] {
        let app = TestApp::spawn_with(Backend::Sqlite, |c| c.http_threads = Some(threads))
            .await
            .expect("sqlite");
        let owner = app.signup(&format!("threads{threads}@example.com")).await;
        let ws = app.workspace(&owner, "Threads").await;
        app.site(&owner, &ws, "t.example.com").await;
        if std::env::var_os("NEXTEST").is_some() {
            // The previous round's server has stopped; its threads end just after saying so.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while http_threads() != threads && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                http_threads(),
                threads,
                "http-N threads with http_threads = {threads}"
            );
        } else {
            assert!(http_threads() >= threads);
        }
        let body = "en=page_view&_ee=1\nen=scroll&epn.percent_scrolled=90\n";
        let hit = format!(
            "POST /g/collect?v=2&tid=G-TEST123&cid=1.2&dl=https%3A%2F%2Ft.example.com%2F HTTP/1.1\r\n\
             Host: t.example.com\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let api = format!(
            "GET /api/v1/workspaces/{ws}/sites HTTP/1.1\r\nHost: t.example.com\r\n\
             Authorization: Bearer {}\r\n\r\n",
            owner.token
        );
        let connections = 7;
        let mut streams = Vec::new();
        for _ in 0..connections {
            streams.push(
                tokio::net::TcpStream::connect(app.addr)
                    .await
                    .expect("connect"),
            );
        }
        for stream in &mut streams {
            assert_eq!(
                exchange(stream, &hit).await,
                204,
                "http_threads = {threads}"
            );
            assert_eq!(
                exchange(stream, &api).await,
                200,
                "http_threads = {threads}"
            );
            assert_eq!(
                exchange(stream, &hit).await,
                204,
                "http_threads = {threads}"
            );
        }
        let records = app.log_records().await;
        assert_eq!(records.len(), 2 * connections, "http_threads = {threads}");
        assert!(records.iter().all(|r| r.hits.len() == 2));
        drop(streams);
        app.stop().await;
    }
}
