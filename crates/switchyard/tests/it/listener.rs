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
