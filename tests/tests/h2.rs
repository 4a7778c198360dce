//! HTTP/2 through the outbound port: h2c prior knowledge to an h2 upstream, and
//! an HTTP/2 client to an HTTP/1.1 upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Version;
use outrider_tests::ProxyHarness;
use outrider_tests::client::{self, request};
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_to_h2_upstream() {
    let up = upstream::h2().name("h2-up").start().await;
    let proxy =
        ProxyHarness::start(&docs(&[service("echo2").protocol("http2").port(8080).endpoint(up.addr).yaml()])).await;
    let c = proxy.h2_client();

    let r = client::send(&c, client::get("http://echo2:8080/a?b=c")).await;
    r.assert_status(200);
    assert_eq!(r.version, Version::HTTP_2, "the client spoke HTTP/2 to the proxy");
    assert_eq!(r.upstream(), Some("h2-up"));
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_2, "the proxy spoke HTTP/2 to the upstream");
    assert_eq!(seen.path, "/a?b=c");
    assert!(seen.header("x-request-id").is_some(), "the request id is added over HTTP/2 too");

    let body = "x".repeat(100_000);
    let r = client::send(&c, request("POST", "http://echo2:8080/post", body.clone())).await;
    r.assert_status(200);
    assert_eq!(r.echo().body.len(), body.len(), "a 100 kB body crosses both HTTP/2 hops intact");
    assert_eq!(up.last().body, body.as_bytes());

    // Concurrent streams on the one client connection.
    let replies = futures_util::future::join_all(
        (0..20).map(|i| client::send(&c, client::get(&format!("http://echo2:8080/c/{i}")))),
    )
    .await;
    for (i, r) in replies.iter().enumerate() {
        r.assert_status(200);
        assert_eq!(r.echo().path, format!("/c/{i}"));
    }
    assert_eq!(up.request_count(), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_to_http1_upstream() {
    let up = upstream::http1().name("h1-up").start().await;
    let proxy =
        ProxyHarness::start(&docs(&[service("echo").protocol("http").port(8080).endpoint(up.addr).yaml()])).await;
    let c = proxy.h2_client();

    let r = client::send(&c, request("POST", "http://echo:8080/down", "over two protocols")).await;
    r.assert_status(200);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.upstream(), Some("h1-up"));
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11, "an http service is spoken to in HTTP/1.1");
    assert_eq!(seen.header("host"), Some("echo:8080"), "the :authority becomes Host");
    assert_eq!(seen.body.as_ref(), b"over two protocols");
}
