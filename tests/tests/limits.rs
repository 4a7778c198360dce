//! Limits at the edge of the proxy: `--max-connections` caps the downstream connections open at
//! once; a connection over it is closed at once and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::policy::{docs, service};
use outrider_tests::{ProxyHarness, client, prom, upstream, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection that has had one request answered and stays open (HTTP/1.1 keep-alive).
async fn keep_alive(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: echo:8080\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = wait::within("the response", s.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed_at_once_and_counted() {
    let up = upstream::http1().name("echo").start().await;
    let proxy =
        ProxyHarness::start_configured(&docs(&[service("echo").endpoint(up.addr).yaml()]), |c| c.max_connections = 2)
            .await;
    let open = |text: &str| prom::sum(text, "outrider_tcp_connections_open", &[("direction", "outbound")]);
    let refused = |text: &str| prom::sum(text, "outrider_tcp_connections_refused_total", &[("direction", "outbound")]);
    assert_eq!(refused(&proxy.metrics().await), 0.0, "exported at 0 before the first refusal");

    // Two keep-alive connections (one request answered on each) take both slots.
    let first = keep_alive(proxy.addrs.outbound).await;
    let _second = keep_alive(proxy.addrs.outbound).await;
    assert_eq!(open(&proxy.metrics().await), 2.0);

    // A third is closed at once, before any request, and counted.
    let mut third = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    let mut buf = [0u8; 16];
    let read = wait::within("the proxy to close the connection over the limit", third.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let text = proxy.metrics().await;
    assert_eq!(refused(&text), 1.0, "{text}");
    assert_eq!(open(&text), 2.0, "{text}");
    prom::promtool_check("the proxy at its connection limit", &text).await;

    // One closes: a new connection is served.
    drop(first);
    wait::wait_until("a slot to free up", || async { open(&proxy.metrics().await) == 1.0 }).await;
    let fresh = client::http1(proxy.addrs.outbound);
    let reply = client::send(&fresh, client::get("http://echo:8080/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream(), Some("echo"));
}
