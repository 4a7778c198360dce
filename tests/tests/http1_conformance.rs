//! HTTP/1.1 conformance (RFC 9112) with raw bytes on every listener that speaks HTTP/1: a
//! request with more than one Host header (or a Host that is not `host[:port]`) gets 400 and is
//! not forwarded; a request line that is not HTTP/1.x (HTTP/0.9's `GET /path`) is answered or
//! closed at once — with and without protocol detection — never left open until a timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use outrider_proxy::http::preface::REJECT;
use outrider_tests::harness::TempDir;
use outrider_tests::mesh::{self, Sidecar, join_token};
use outrider_tests::policy::{docs, service};
use outrider_tests::raw::Reader;
use outrider_tests::upstream::{self, Upstream};
use outrider_tests::{ProxyHarness, wait};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy whose `echo` service (HTTP/1.1) is `up`; its inbound port delivers to `up` too.
/// `declared`: the proxy serves `echo` (`--service`), so inbound skips protocol detection.
async fn proxy(up: &Upstream, declared: bool) -> ProxyHarness {
    ProxyHarness::start_configured(&docs(&[service("echo").port(8080).endpoint(up.addr).yaml()]), |c| {
        c.app_port = Some(up.addr.port());
        if declared {
            c.service = Some("echo".into());
        }
    })
    .await
}

/// Send `bytes`, then read everything until the proxy closes (within the test deadline). A
/// reset or a TLS close without close_notify counts as the close.
async fn exchange<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    io.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match wait::within("the proxy to answer and close", io.read(&mut buf)).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn plain(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    exchange(TcpStream::connect(addr).await.unwrap(), bytes).await
}

/// A request through `addr` answered by the proxy itself with 400 `bad-request`.
async fn assert_400(addr: SocketAddr, request: &str, what: &str) {
    let mut r = Reader::new(TcpStream::connect(addr).await.unwrap());
    r.io.write_all(request.as_bytes()).await.unwrap();
    let resp = r.response().await;
    assert_eq!(resp.status, 400, "{what}: {resp:?}");
    assert_eq!(resp.header("x-outrider-local-reply"), Some("bad-request"), "{what}: the proxy's own 400");
}

fn host_cases() -> Vec<(&'static str, String)> {
    let req = |hosts: &str| format!("GET /host HTTP/1.1\r\n{hosts}Content-Length: 0\r\n\r\n");
    vec![
        ("two Host headers", req("Host: echo:8080\r\nHost: evil:8080\r\n")),
        ("the same Host twice", req("Host: echo:8080\r\nHost: echo:8080\r\n")),
        ("two Host headers, one empty", req("Host: echo:8080\r\nHost: \r\n")),
        ("a Host list in one line", req("Host: echo:8080, evil:8080\r\n")),
        ("a Host with user info", req("Host: evil@echo:8080\r\n")),
        ("a Host with a space", req("Host: echo 8080\r\n")),
        (
            "two Host headers on an absolute-form request",
            "GET http://echo:8080/host HTTP/1.1\r\nHost: echo:8080\r\nHost: evil:8080\r\n\r\n".into(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_host_gets_400_and_is_not_forwarded() {
    let up = upstream::http1().name("echo").start().await;
    for declared in [false, true] {
        let p = proxy(&up, declared).await;
        for (listener, addr) in [("outbound", p.addrs.outbound), ("inbound", p.addrs.inbound)] {
            for (what, request) in host_cases() {
                assert_400(addr, &request, &format!("{listener} (declared {declared}): {what}")).await;
            }
            // The same connection shape with one Host is served.
            let mut r = Reader::new(TcpStream::connect(addr).await.unwrap());
            r.io.write_all(b"GET /one HTTP/1.1\r\nHost: echo:8080\r\n\r\n").await.unwrap();
            assert_eq!(r.response().await.status, 200, "{listener}: one Host is fine");
        }
        p.shutdown().await;
    }
    let paths: Vec<String> = up.requests().into_iter().map(|s| s.path).collect();
    assert!(paths.iter().all(|p| p == "/one"), "the upstream saw no bad request: {paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_names_the_host_upstream() {
    let up = upstream::http1().name("echo").start().await;
    let p = proxy(&up, false).await;
    let mut r = Reader::new(TcpStream::connect(p.addrs.outbound).await.unwrap());
    r.io.write_all(b"GET http://echo:8080/abs HTTP/1.1\r\nHost: elsewhere:9\r\n\r\n").await.unwrap();
    assert_eq!(r.response().await.status, 200);
    assert_eq!(up.last().header("host"), Some("echo:8080"), "RFC 9112 §3.2.2: the target's authority, not Host");
}

/// Request lines that are not HTTP/1.x.
fn not_http1() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("HTTP/0.9", b"GET /path\r\n"),
        ("HTTP/0.9 with LF only", b"GET /\n"),
        ("HTTP/2.0 in a request line", b"GET /x HTTP/2.0\r\nHost: echo:8080\r\n\r\n"),
        ("HTTP/1.2", b"GET /x HTTP/1.2\r\nHost: echo:8080\r\n\r\n"),
        ("a lower-case version", b"GET /x http/1.1\r\nHost: echo:8080\r\n\r\n"),
        ("a broken HTTP/2 magic", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_that_is_not_http1_is_refused_at_once() {
    let up = upstream::http1().name("echo").start().await;
    for declared in [false, true] {
        let p = proxy(&up, declared).await;
        // Plaintext listeners also speak HTTP/2: such bytes are an invalid HTTP/2 preface.
        for (listener, addr) in [("outbound", p.addrs.outbound), ("inbound", p.addrs.inbound)] {
            for (what, bytes) in not_http1() {
                let got = plain(addr, bytes).await;
                assert_eq!(
                    got, REJECT,
                    "{listener} (declared {declared}): {what}: GOAWAY(PROTOCOL_ERROR), then closed"
                );
            }
        }
        // A line longer than the first 128 bytes is left to the HTTP/1 parser: 400.
        let long = format!("GET /{}\r\n", "a".repeat(200));
        for (listener, addr) in [("outbound", p.addrs.outbound), ("inbound", p.addrs.inbound)] {
            let got = String::from_utf8_lossy(&plain(addr, long.as_bytes()).await).into_owned();
            assert!(got.starts_with("HTTP/1.1 400 "), "{listener}: a long HTTP/0.9 line: {got:?}");
        }
        // The admin port speaks HTTP/1.1 only: 400.
        for (what, bytes) in not_http1() {
            let got = String::from_utf8_lossy(&plain(p.addrs.admin, bytes).await).into_owned();
            assert!(got.starts_with("HTTP/1.1 400 "), "admin: {what}: {got:?}");
        }
        p.shutdown().await;
    }
    assert_eq!(up.connections(), 0, "nothing reached the upstream");
}

/// A connection that sent a whole HTTP/0.9 request must be closed without waiting for the
/// header read timeout: read with a deadline far below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http09_is_closed_long_before_the_header_read_timeout() {
    let up = upstream::http1().name("echo").start().await;
    let p = proxy(&up, false).await;
    let header_read_timeout = outrider_proxy::http::server::ServerLimits::default().header_read_timeout;
    // Half the proxy's timeout, whatever the test deadline (OUTRIDER_TEST_DEADLINE_SECS) is.
    let bound = header_read_timeout / 2;
    for addr in [p.addrs.outbound, p.addrs.inbound] {
        let got = tokio::time::timeout(bound, plain(addr, b"GET /\r\n"))
            .await
            .unwrap_or_else(|_| panic!("{addr}: the HTTP/0.9 connection was still open after {bound:?}"));
        assert_eq!(got, REJECT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mtls_http1_hop_refuses_the_same() {
    let dir = TempDir::new("http1-conformance-mtls");
    let cp = mesh::control_plane(dir.path(), Duration::from_secs(24 * 3600));
    cp.apply(&docs(&[
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec: {protocol: http, port: 9080}\n",
    ]))
    .await;
    let app = upstream::http1().name("reviews-app").start().await;
    let server = Sidecar::start(&cp, "reviews", Some(app.addr.port()), Some(&join_token(&cp, "reviews").await)).await;
    mesh::wait_inbound(&server, "reviews", |_| true).await;
    let tls = mesh::mesh_client(&cp, "frontend", "reviews", outrider_proxy::tls::ALPN_OUTRIDER_HTTP1).await;
    let connect = || async { mesh::tls_connect(tls.clone(), server.inbound).await.expect("handshake") };

    // ALPN chose HTTP/1.1: a line that is not HTTP/1.x gets hyper's 400.
    for (what, bytes) in not_http1() {
        let got = String::from_utf8_lossy(&exchange(connect().await, bytes).await).into_owned();
        assert!(got.starts_with("HTTP/1.1 400 "), "mTLS: {what}: {got:?}");
    }
    for (what, request) in host_cases() {
        let mut r = Reader::new(connect().await);
        r.io.write_all(request.as_bytes()).await.unwrap();
        let resp = r.response().await;
        assert_eq!(resp.status, 400, "mTLS: {what}: {resp:?}");
        assert_eq!(resp.header("x-outrider-local-reply"), Some("bad-request"));
    }
    assert_eq!(app.request_count(), 0, "nothing reached the app");
    server.shutdown().await;
}

/// A peer's keep-alive HTTP/1.1 connection over mutual TLS (ALPN `outrider-http1/1`) serves
/// request after request on the same TLS session, holding no buffer between them: every
/// request reaches the app with the caller's verified identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mtls_http1_hop_serves_a_keep_alive_connection() {
    let dir = TempDir::new("http1-conformance-mtls-park");
    let cp = mesh::control_plane(dir.path(), Duration::from_secs(24 * 3600));
    cp.apply(&docs(&[
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec: {protocol: http, port: 9080}\n",
    ]))
    .await;
    let app = upstream::http1().name("reviews-app").start().await;
    let token = join_token(&cp, "reviews").await;
    let server = Sidecar::start(&cp, "reviews", Some(app.addr.port()), Some(&token)).await;
    mesh::wait_inbound(&server, "reviews", |_| true).await;
    let tls = mesh::mesh_client(&cp, "frontend", "reviews", outrider_proxy::tls::ALPN_OUTRIDER_HTTP1).await;
    let mut r = Reader::new(mesh::tls_connect(tls, server.inbound).await.expect("handshake"));
    for path in ["/a", "/b", "/c"] {
        r.io.write_all(format!("GET {path} HTTP/1.1\r\nHost: reviews:9080\r\n\r\n").as_bytes()).await.unwrap();
        let resp = r.response().await;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        let seen = app.last();
        assert_eq!(seen.path, path);
        assert_eq!(
            seen.header("x-forwarded-client-cert"),
            Some(format!("By={};URI={}", mesh::identity("reviews"), mesh::identity("frontend")).as_str()),
            "{path}: the caller's identity on every request"
        );
    }
    assert_eq!(app.request_count(), 3);
    server.shutdown().await;
}
