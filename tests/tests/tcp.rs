//! Opaque TCP via the inbound port (delivered to the app port): bytes both ways,
//! and a half-close: the app still writes after the client's EOF.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::policy::{docs, service};
use outrider_tests::raw::Reader;
use outrider_tests::{ProxyHarness, eventually, prom, upstream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_half_close_and_byte_count() {
    let trailer = b"-- trailer after EOF --";
    let app = upstream::tcp_echo().trailer(trailer).start().await;
    // The policy does not matter for inbound delivery; any valid one will do.
    let policy = docs(&[service("unused").port(8080).endpoint(app.addr).yaml()]);
    let proxy = ProxyHarness::start_with(&policy, Some(app.addr.port())).await;
    let before = prom::sum(&proxy.metrics().await, "outrider_tcp_bytes_total", &[("direction", "inbound")]);

    let mut s = Reader::new(TcpStream::connect(proxy.addrs.inbound).await.unwrap());
    // Not HTTP: starts with lower-case letters.
    let msg = b"hello over opaque tcp\x00\x01\x02";
    s.io.write_all(msg).await.unwrap();
    assert_eq!(s.exact(msg.len()).await, msg, "the echo comes back while the connection is open");
    let more = vec![b'z'; 64 * 1024];
    s.io.write_all(&more).await.unwrap();
    s.io.shutdown().await.unwrap();
    let rest = s.to_end().await;
    assert_eq!(rest.len(), more.len() + trailer.len(), "64 KiB echo plus the trailer");
    assert!(rest.starts_with(&more));
    assert!(rest.ends_with(trailer), "the app's write after our EOF arrived: the half-close was honoured");
    assert_eq!(app.connections(), 1);

    let expected = (2 * (msg.len() + more.len()) + trailer.len()) as f64;
    eventually!("outrider_tcp_bytes_total{direction=\"inbound\"} counts the connection", {
        let now = prom::sum(&proxy.metrics().await, "outrider_tcp_bytes_total", &[("direction", "inbound")]);
        now - before >= expected
    });
}
