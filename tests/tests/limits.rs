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

/// Request heads well over the limit (256 KiB): HTTP/1.1 gets `431` and the connection is
/// closed; on h2 the header block needs more CONTINUATION frames than h2's flood guard allows,
/// so the connection gets GOAWAY (`ENHANCE_YOUR_CALM`); a new connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_the_limit_are_refused_with_431_and_the_proxy_keeps_serving() {
    let up = upstream::http1().name("echo").start().await;
    let proxy = ProxyHarness::start(&docs(&[service("echo").endpoint(up.addr).yaml()])).await;
    let big = "v".repeat(256 * 1024);

    let mut s = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
    let head = format!("GET / HTTP/1.1\r\nhost: echo:8080\r\nx-big: {big}\r\n\r\n");
    // The proxy may answer and close before it has read the whole head.
    let _ = s.write_all(head.as_bytes()).await;
    let mut got = vec![0u8; 64];
    let n = wait::within("the answer to an oversized head", s.read(&mut got)).await.unwrap();
    let text = String::from_utf8_lossy(&got[..n]);
    assert!(text.starts_with("HTTP/1.1 431"), "HTTP/1.1: {text}");

    let mut h2 = client::h2_connection(proxy.addrs.outbound).await;
    let req = http::Request::builder()
        .uri("http://echo:8080/big")
        .header("x-big", big.as_str())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let sent = wait::within("the h2 answer to an oversized header list", h2.send_request(req)).await;
    let err = format!("{:?}", sent.expect_err("an oversized header block is refused"));
    // The GOAWAY may arrive while the client is still writing the block: then a broken pipe.
    assert!(err.contains("ENHANCE_YOUR_CALM") || err.contains("BrokenPipe"), "h2: {err}");
    // A new connection carries a normal request.
    let mut h2 = client::h2_connection(proxy.addrs.outbound).await;
    let ok = wait::within("a normal request on a new connection", async {
        h2.ready().await?;
        h2.send_request(client::get("http://echo:8080/after")).await
    })
    .await
    .expect("the proxy serves new connections");
    assert_eq!(ok.status(), 200);
    assert_eq!(up.request_count(), 1, "no oversized head reached the upstream");
}

/// The HTTP/1.1 head limit is exact: 64 KiB (request line, headers and the blank line) is
/// served, one byte more is answered `431` and the connection closed; the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_head_of_64_kib_is_served_and_one_byte_more_gets_431() {
    const LIMIT: usize = 64 * 1024;
    let up = upstream::http1().name("echo").start().await;
    let proxy = ProxyHarness::start(&docs(&[service("echo").endpoint(up.addr).yaml()])).await;
    // A head of exactly `len` bytes.
    let head = |len: usize| {
        let start = "GET /edge HTTP/1.1\r\nhost: echo:8080\r\nx-big: ";
        let end = "\r\n\r\n";
        format!("{start}{}{end}", "v".repeat(len - start.len() - end.len()))
    };
    for (len, status) in [(LIMIT - 1024, "200"), (LIMIT, "200"), (LIMIT + 1, "431"), (LIMIT + 1024, "431")] {
        let head = head(len);
        assert_eq!(head.len(), len);
        let mut s = TcpStream::connect(proxy.addrs.outbound).await.unwrap();
        let _ = s.write_all(head.as_bytes()).await;
        let mut got = vec![0u8; 64];
        let n = wait::within("the answer", s.read(&mut got)).await.unwrap();
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "a {len}-byte head: {text}");
    }
    assert_eq!(up.request_count(), 2, "only the heads within the limit reached the upstream");
}

/// On h2 a header list (decoded: names, values and 32 bytes per field) over 64 KiB gets a
/// `431` on its stream; the connection stays up and serves the next request. Just under is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_header_list_just_over_64_kib_gets_431_on_its_stream_and_the_connection_serves_on() {
    let up = upstream::http1().name("echo").start().await;
    let proxy = ProxyHarness::start(&docs(&[service("echo").endpoint(up.addr).yaml()])).await;
    let mut h2 = client::h2_connection(proxy.addrs.outbound).await;
    let req = |value: &str| {
        http::Request::builder()
            .uri("http://echo:8080/h2-edge")
            .header("x-big", value)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    for (len, status) in [(60 * 1024, 200), (65 * 1024, 431), (62 * 1024, 200)] {
        let resp = wait::within("an h2 answer", async {
            h2.ready().await?;
            h2.send_request(req(&"v".repeat(len))).await
        })
        .await
        .unwrap_or_else(|e| panic!("a {len}-byte header on h2: {e:?}"));
        assert_eq!(resp.status(), status, "a {len}-byte header on h2");
    }
    assert_eq!(up.request_count(), 2, "the oversized list never reached the upstream");
}
