//! HTTP/1.1 upgrades (WebSocket-style) through the outbound port: 101, then bytes
//! both ways over the upgraded connection until the client closes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::ProxyHarness;
use outrider_tests::policy::{docs, service};
use outrider_tests::raw::Reader;
use outrider_tests::upstream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_then_bytes_both_ways() {
    let ws = upstream::websocket().name("ws").start().await;
    let proxy = ProxyHarness::start(&docs(&[service("ws").port(8080).endpoint(ws.addr).yaml()])).await;

    let mut s = Reader::new(TcpStream::connect(proxy.addrs.outbound).await.unwrap());
    s.io.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws:8080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = s.response().await;
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(head.header("x-upstream"), Some("ws"));
    let seen = ws.last();
    assert_eq!(seen.header("upgrade"), Some("websocket"), "Upgrade reaches the upstream");
    assert!(seen.header("connection").unwrap_or("").eq_ignore_ascii_case("upgrade"));

    // Upstream → client, unprompted.
    let greeting = b"hello from ws\n";
    assert_eq!(s.exact(greeting.len()).await, greeting);
    // Client → upstream → client, several times.
    for msg in [&b"ping 1"[..], b"second message", &[0u8, 1, 2, 255, 254]] {
        s.io.write_all(msg).await.unwrap();
        assert_eq!(s.exact(msg.len()).await, msg);
    }
    // The client's EOF reaches the upstream, which then closes.
    s.io.shutdown().await.unwrap();
    assert!(s.to_end().await.is_empty(), "nothing after the echoes");
}
