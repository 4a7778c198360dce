//! HTTP on the inbound port: detected and delivered to the application port with
//! the same header hygiene as outbound, in the HTTP version the caller used.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::Version;
use outrider_tests::policy::{docs, service};
use outrider_tests::{ProxyHarness, client, prom, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_http1_is_delivered_to_the_app() {
    let app = upstream::http1().name("app").start().await;
    let policy = docs(&[service("unused").endpoint(app.addr).yaml()]);
    let proxy = ProxyHarness::start_with(&policy, Some(app.addr.port())).await;

    let c = client::http1(proxy.addrs.inbound);
    let r = client::send(&c, client::request("POST", "http://my-app.local/in?x=1", "inbound body")).await;
    r.assert_status(200);
    assert_eq!(r.upstream(), Some("app"));
    let seen = app.last();
    assert_eq!(seen.path, "/in?x=1");
    assert_eq!(seen.body.as_ref(), b"inbound body");
    assert_eq!(seen.header("host"), Some("my-app.local"), "Host is kept for the app");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(seen.header("x-request-id").is_some());

    let m = proxy.metrics().await;
    assert!(
        prom::sum(&m, "outrider_requests_total", &[("direction", "inbound"), ("code", "200")]) >= 1.0,
        "the inbound request is counted:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_h2_is_delivered_as_h2() {
    let app = upstream::h2().name("app2").start().await;
    let policy = docs(&[service("unused").endpoint(app.addr).yaml()]);
    let proxy = ProxyHarness::start_with(&policy, Some(app.addr.port())).await;

    let c = client::h2(proxy.addrs.inbound);
    let r = client::send(&c, client::get("http://my-app.local/h2")).await;
    r.assert_status(200);
    assert_eq!(r.upstream(), Some("app2"));
    assert_eq!(app.last().version, Version::HTTP_2);
}
