//! HTTP/1.1 through the outbound port: methods and bodies, header hygiene,
//! request ids, `Expect: 100-continue`, local replies, keep-alive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::client::{self, request};
use outrider_tests::policy::{docs, service};
use outrider_tests::raw::Reader;
use outrider_tests::upstream::{self, Upstream, closed_port};
use outrider_tests::{ProxyHarness, prom};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn setup() -> (Upstream, ProxyHarness) {
    let echo = upstream::http1().name("echo").start().await;
    let policy = docs(&[
        service("echo").port(8080).endpoint(echo.addr).yaml(),
        service("dead").port(8080).endpoint(closed_port()).yaml(),
    ]);
    let proxy = ProxyHarness::start(&policy).await;
    (echo, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_with_body_reach_the_upstream() {
    let (echo, proxy) = setup().await;

    let r = proxy.get("http://echo:8080/hello?x=1").await;
    r.assert_status(200);
    assert_eq!(r.upstream(), Some("echo"));
    let seen = echo.last();
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/hello?x=1"));
    assert_eq!(seen.header("host"), Some("echo:8080"), "Host is passed on as the client sent it");

    let body = "a body that must arrive intact\n".repeat(100);
    let r = proxy.send(request("POST", "http://echo:8080/upload", body.clone())).await;
    r.assert_status(200);
    let e = r.echo();
    assert_eq!((e.method.as_str(), e.path.as_str()), ("POST", "/upload"));
    assert_eq!(e.body, body, "the upstream got the whole body");
    assert_eq!(echo.last().body, body.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_name_without_port_and_any_case_route_too() {
    let (_echo, proxy) = setup().await;
    proxy.get("http://echo/a").await.assert_status(200);
    proxy.get("http://ECHO:8080/a").await.assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarded_for_appended() {
    let (echo, proxy) = setup().await;
    // Raw bytes, so no client library adds or drops anything on the way in.
    let mut s = Reader::new(TcpStream::connect(proxy.addrs.outbound).await.unwrap());
    s.io.write_all(
        b"GET /hop HTTP/1.1\r\nHost: echo:8080\r\nConnection: keep-alive, x-foo\r\nx-foo: secret\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 10.1.2.3\r\nx-keep: kept\r\n\r\n",
    )
    .await
    .unwrap();
    let r = s.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echo.last();
    for h in ["x-foo", "keep-alive", "proxy-connection"] {
        assert_eq!(seen.header(h), None, "{h} must not reach the upstream: {:?}", seen.headers);
    }
    assert!(
        !seen.header("connection").unwrap_or("").contains("x-foo"),
        "the client's Connection header must not be passed on: {:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-keep"), Some("kept"), "end-to-end headers stay");
    assert_eq!(seen.header("x-forwarded-for"), Some("10.1.2.3, 127.0.0.1"), "the client address is appended");

    proxy.get("http://echo:8080/no-xff").await.assert_status(200);
    assert_eq!(echo.last().header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_generated_when_absent_and_kept_when_present() {
    let (echo, proxy) = setup().await;
    proxy.get("http://echo:8080/1").await.assert_status(200);
    let first = echo.last().header("x-request-id").expect("a generated x-request-id").to_string();
    proxy.get("http://echo:8080/2").await.assert_status(200);
    let second = echo.last().header("x-request-id").expect("a generated x-request-id").to_string();
    for id in [&first, &second] {
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_eq!(id.matches('-').count(), 4, "a UUID: {id}");
    }
    assert_ne!(first, second, "each request gets its own id");

    let req = http::Request::builder()
        .uri("http://echo:8080/3")
        .header("x-request-id", "caller-chose-this-id")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    proxy.send(req).await.assert_status(200);
    assert_eq!(echo.last().header("x-request-id"), Some("caller-chose-this-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (echo, proxy) = setup().await;
    let body = b"hello world";
    let mut s = Reader::new(TcpStream::connect(proxy.addrs.outbound).await.unwrap());
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: echo:8080\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    s.io.write_all(head.as_bytes()).await.unwrap();
    let interim = s.response().await;
    assert_eq!(interim.status, 100, "the proxy must say 100 Continue before the client sends the body");
    s.io.write_all(body).await.unwrap();
    let r = s.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream"), Some("echo"));
    assert_eq!(echo.last().body.as_ref(), body);
    assert_eq!(outrider_tests::upstream::Echo::parse(&r.body).body, "hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_no_route() {
    let (echo, proxy) = setup().await;
    let r = proxy.get("http://nope:1234/").await;
    r.assert_status(404);
    assert_eq!(r.header("x-outrider-local-reply"), Some("no-route"));
    assert_eq!(r.upstream(), None);
    assert_eq!(echo.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_endpoint_is_503_connect_failure() {
    let (_echo, proxy) = setup().await;
    let r = proxy.get("http://dead:8080/").await;
    r.assert_status(503);
    assert_eq!(r.header("x-outrider-local-reply"), Some("connect-failure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let (echo, proxy) = setup().await;
    let mut conn = client::h1_connection(proxy.addrs.outbound).await;
    for i in 0..5 {
        let r = client::send_h1(&mut conn, client::h1_get("echo:8080", &format!("/ka/{i}"))).await;
        r.assert_status(200);
        assert_eq!(r.echo().path, format!("/ka/{i}"));
    }
    assert_eq!(echo.request_count(), 5);
    let m = proxy.metrics().await;
    assert_eq!(
        prom::sum(&m, "outrider_tcp_connections_total", &[("direction", "outbound")]),
        1.0,
        "all five requests used one downstream connection:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_arrives_intact() {
    let (echo, proxy) = setup().await;
    let mut s = Reader::new(TcpStream::connect(proxy.addrs.outbound).await.unwrap());
    s.io.write_all(
        b"POST /chunked HTTP/1.1\r\nHost: echo:8080\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let r = s.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.last().body.as_ref(), b"hello, world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_request_is_routed_by_its_authority() {
    let (echo, proxy) = setup().await;
    let mut s = Reader::new(TcpStream::connect(proxy.addrs.outbound).await.unwrap());
    s.io.write_all(b"GET http://echo:8080/abs?q=1 HTTP/1.1\r\nHost: echo:8080\r\n\r\n").await.unwrap();
    let r = s.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.last().path, "/abs?q=1", "the upstream gets origin form");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_own_503_is_passed_through_not_a_local_reply() {
    let failing = upstream::http1().name("failing").status(503).start().await;
    let proxy = ProxyHarness::start(&docs(&[service("failing").endpoint(failing.addr).yaml()])).await;
    let r = proxy.get("http://failing:8080/").await;
    r.assert_status(503);
    assert_eq!(r.upstream(), Some("failing"));
    assert_eq!(r.header("x-outrider-local-reply"), None, "the upstream's 503 is not the proxy's");
}
