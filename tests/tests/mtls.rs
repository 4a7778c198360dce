//! Mutual TLS between two sidecars with identities from the control plane's CA: the hop
//! between proxies is pooled mTLS HTTP/1.1 connections while the apps speak HTTP/1.1 (full
//! duplex, large bodies, reuse); strict mode refuses
//! plaintext and foreign CAs; AuthorizationPolicy allows, denies, and deny wins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use outrider_tests::harness::TempDir;
use outrider_tests::mesh::{self, Sidecar, identity, join_token};
use outrider_tests::policy::docs;
use outrider_tests::prom;
use outrider_tests::upstream;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn reviews(extra: &str) -> String {
    docs(&[format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: reviews}}\nspec:\n  port: 9080\n{extra}"
    )])
}

fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    prom::sum(text, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_talk_mtls_over_pooled_http1_while_the_apps_speak_http1() {
    let dir = TempDir::new("mtls-pair");
    let cp = mesh::control_plane(dir.path(), DAY);
    cp.apply(&reviews("")).await;
    let app = upstream::http1().name("reviews-app").start().await;
    let reviews_token = join_token(&cp, "reviews").await;
    let frontend_token = join_token(&cp, "frontend").await;
    let server = Sidecar::start(&cp, "reviews", Some(app.addr.port()), Some(&reviews_token)).await;
    let caller = Sidecar::start(&cp, "frontend", None, Some(&frontend_token)).await;
    mesh::wait_meshed_endpoints(&caller, "reviews", 1).await;

    let reply = caller.get("http://reviews:9080/hello").await;
    reply.assert_status(200);
    assert_eq!(reply.header("x-upstream"), Some("reviews-app"));

    // The app got HTTP/1.1, with the caller's verified identity; the hop-internal header is gone.
    let seen = app.last();
    assert_eq!(seen.version, http::Version::HTTP_11, "the app speaks HTTP/1.1");
    assert_eq!(
        seen.header("x-forwarded-client-cert"),
        Some(format!("By={};URI={}", identity("reviews"), identity("frontend")).as_str()),
        "the server side saw the client's SPIFFE ID"
    );
    assert_eq!(seen.header("x-outrider-orig-proto"), None);

    // The hop between the proxies was mutual TLS carrying HTTP/1.1 (ALPN outrider-http1/1).
    let m = server.metrics().await;
    assert_eq!(
        counter(&m, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", "outrider-http1/1")]),
        1.0,
        "{m}"
    );
    assert!(counter(&m, "outrider_tls_certificate_expiry_seconds", &[]) > 3600.0, "{m}");
    let dump = caller.config_dump().await;
    assert_eq!(dump["node"]["identity"]["spiffe_id"], identity("frontend"));

    // A request with its own forged client-cert header does not get it through.
    let forged = outrider_tests::client::request("GET", "http://reviews:9080/forged", bytes::Bytes::new());
    let mut forged = forged;
    forged.headers_mut().insert("x-forwarded-client-cert", "URI=spiffe://evil/ns/x/sa/y".parse().unwrap());
    outrider_tests::client::send(&caller.client, forged).await.assert_status(200);
    assert_eq!(
        app.last().header("x-forwarded-client-cert"),
        Some(format!("By={};URI={}", identity("reviews"), identity("frontend")).as_str())
    );

    // An HTTP/2 caller of this `http` service: its app still gets HTTP/1.1 (the declared protocol).
    let h2 = outrider_tests::client::h2(caller.app.as_ref().unwrap().addrs.outbound);
    outrider_tests::client::send(&h2, outrider_tests::client::get("http://reviews:9080/h2")).await.assert_status(200);
    assert_eq!(app.last().path, "/h2");
    assert_eq!(app.last().version, http::Version::HTTP_11, "the app gets its declared protocol");

    // One request at a time: every one reuses the first pooled mTLS connection, and none
    // went over HTTP/2 (the app's protocol is HTTP/1.1).
    for i in 0..20 {
        caller.get(&format!("http://reviews:9080/n/{i}")).await.assert_status(200);
    }
    let m = server.metrics().await;
    let alpn = |a: &str| counter(&m, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", a)]);
    assert_eq!(alpn("outrider-http1/1"), 1.0, "one pooled connection between the proxies: {m}");
    assert_eq!(alpn("outrider/1"), 0.0, "{m}");
    caller.shutdown().await;
    server.shutdown().await;
}

/// A control plane with `policy`, a reviews sidecar in front of the app on `app_port` and a
/// frontend sidecar that sees reviews' meshed endpoint: the pair most tests here use.
struct Pair {
    _dir: TempDir,
    _cp: outrider_tests::control_plane::ControlPlane,
    server: Sidecar,
    caller: Sidecar,
}

async fn pair(name: &str, policy: &str, app_port: u16) -> Pair {
    let dir = TempDir::new(name);
    let cp = mesh::control_plane(dir.path(), DAY);
    cp.apply(policy).await;
    let server = Sidecar::start(&cp, "reviews", Some(app_port), Some(&join_token(&cp, "reviews").await)).await;
    let caller = Sidecar::start(&cp, "frontend", None, Some(&join_token(&cp, "frontend").await)).await;
    mesh::wait_meshed_endpoints(&caller, "reviews", 1).await;
    Pair { _dir: dir, _cp: cp, server, caller }
}

/// `idle_http1_connections` of the caller sidecar's pool to `service`'s endpoint, from
/// `/clusters`.
async fn idle_http1(caller: &Sidecar) -> u64 {
    let c = outrider_tests::client::http1(caller.admin);
    let r = outrider_tests::client::send(&c, outrider_tests::client::get("http://admin/clusters")).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut n = 0;
    let mut stack = vec![&v];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                n += m.get("idle_http1_connections").and_then(serde_json::Value::as_u64).unwrap_or(0);
                stack.extend(m.values());
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_open_mtls_connections_that_later_calls_reuse() {
    let gate = upstream::Gate::new();
    let app = upstream::http1().name("reviews-app").gate(&gate).start().await;
    let Pair { server, caller, _dir, _cp } = pair("mtls-pool", &reviews(""), app.addr.port()).await;

    // Four calls held at the app at once: four connections between the proxies.
    let wave = |tag: &'static str| {
        (0..4)
            .map(|i| {
                let c = caller.client.clone();
                tokio::spawn(async move {
                    outrider_tests::client::send(
                        &c,
                        outrider_tests::client::get(&format!("http://reviews:9080/{tag}/{i}")),
                    )
                    .await
                })
            })
            .collect::<Vec<_>>()
    };
    let first = wave("first");
    outrider_tests::wait::wait_until("the app to hold four calls", || async { app.request_count() == 4 }).await;
    gate.open();
    for t in first {
        t.await.unwrap().assert_status(200);
    }
    outrider_tests::wait::wait_until("four idle connections in the caller's pool", || async {
        idle_http1(&caller).await == 4
    })
    .await;
    // The next four take the idle ones: no new connection, no new handshake.
    for t in wave("second") {
        t.await.unwrap().assert_status(200);
    }
    let m = server.metrics().await;
    let alpn = |a: &str| counter(&m, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", a)]);
    assert_eq!(alpn("outrider-http1/1"), 4.0, "{m}");
    assert_eq!(alpn("outrider/1"), 0.0, "{m}");
    assert_eq!(app.request_count(), 8);
    caller.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_and_its_streamed_answer_cross_the_mtls_hop_together() {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    // The app answers at once and echoes the (chunked) request body's bytes as they arrive:
    // each echo needs both sidecars to carry the request and the response at the same time,
    // and the caller's TLS session to send every piece it is given without waiting for more.
    let app = upstream::duplex_echo("duplex").await;
    let Pair { server, caller, _dir, _cp } = pair("mtls-duplex", &reviews(""), app.addr.port()).await;

    let outbound = caller.app.as_ref().unwrap().addrs.outbound;
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(outbound).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let (tx, body) = outrider_tests::client::fed();
    let req = hyper::Request::post("http://reviews:9080/echo").header("host", "reviews:9080").body(body).unwrap();
    tx.send(Bytes::from_static(b"one")).unwrap();
    let resp = outrider_tests::wait::within("the response head, before the upload ends", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut resp = resp.into_body();
    // The echo may come back in pieces of any size: read until all of `want` is back.
    let mut back = Vec::new();
    let mut until = async |want: &[u8]| {
        while back.len() < want.len() {
            let frame = outrider_tests::wait::within("an echoed chunk", resp.frame()).await;
            back.extend_from_slice(&frame.expect("the echo goes on").unwrap().into_data().unwrap());
        }
        assert_eq!(back, want);
        back.clear();
    };
    until(b"one").await;
    tx.send(Bytes::from_static(b"two")).unwrap();
    until(b"two").await;
    // 8 MiB more, in pieces larger than the sockets' buffers take at once, so that the
    // caller's TLS session holds encrypted bytes when the socket is full, with no more of the
    // body coming until the echo is back: they must be sent without waiting for more.
    let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    for piece in big.chunks(2 * 1024 * 1024) {
        tx.send(Bytes::copy_from_slice(piece)).unwrap();
        until(piece).await;
    }
    drop(tx);
    let end = outrider_tests::wait::within("the end of the response", resp.frame()).await;
    assert!(end.is_none(), "the response ends after the request does");
    caller.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_crosses_the_mtls_hop_whole_both_ways() {
    let app = upstream::http1().name("reviews-app").start().await;
    let Pair { server, caller, _dir, _cp } = pair("mtls-large", &reviews(""), app.addr.port()).await;
    // 4 MiB up, echoed back (in the app's JSON) down, twice on the one pooled connection.
    let body: String = (0..4 * 1024 * 1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    for _ in 0..2 {
        let req = outrider_tests::client::request("POST", "http://reviews:9080/big", body.clone());
        let r = outrider_tests::client::send(&caller.client, req).await;
        r.assert_status(200);
        let echo = r.echo();
        assert_eq!(echo.body.len(), body.len());
        assert!(echo.body == body, "the body arrived changed");
    }
    let m = server.metrics().await;
    assert_eq!(
        counter(&m, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", "outrider-http1/1")]),
        1.0,
        "{m}"
    );
    caller.shutdown().await;
    server.shutdown().await;
}

const AUTHZ: &str = "---
apiVersion: outrider.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-callers}
spec:
  service: reviews
  from: [{identities: [\"spiffe://outrider.local/ns/default/sa/frontend\"]}]
---
apiVersion: outrider.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-no-admin}
spec:
  service: reviews
  action: deny
  to: [{paths: [/admin/*]}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_and_authorization_policies() {
    let dir = TempDir::new("mtls-strict");
    let cp = mesh::control_plane(dir.path(), DAY);
    cp.apply(&format!("{}{AUTHZ}", reviews("  mtls: strict\n"))).await;
    let app = upstream::http1().name("reviews-app").start().await;
    let server = Sidecar::start(&cp, "reviews", Some(app.addr.port()), Some(&join_token(&cp, "reviews").await)).await;
    let frontend = Sidecar::start(&cp, "frontend", None, Some(&join_token(&cp, "frontend").await)).await;
    let ratings = Sidecar::start(&cp, "ratings", None, Some(&join_token(&cp, "ratings").await)).await;
    let plain = Sidecar::start(&cp, "legacy", None, None).await;
    for s in [&frontend, &ratings, &plain] {
        mesh::wait_meshed_endpoints(s, "reviews", 1).await;
    }
    wait_strict(&server).await;

    // Allowed identity passes.
    frontend.get("http://reviews:9080/ok").await.assert_status(200);
    let served = app.request_count();

    // A valid identity that no policy allows: 403 with the reason, and the app never sees it.
    let denied = ratings.get("http://reviews:9080/ok").await;
    denied.assert_status(403);
    assert_eq!(denied.header("x-outrider-local-reply"), Some("unauthorized"));
    assert!(denied.text().contains("no AuthorizationPolicy allows it"), "{}", denied.text());
    // Deny wins over allow.
    let admin = frontend.get("http://reviews:9080/admin/users").await;
    admin.assert_status(403);
    assert!(admin.text().contains("reviews-no-admin"), "{}", admin.text());
    // The deny rule holds for spellings of the same path the app would also serve as /admin/….
    assert_eq!(app.request_count(), served, "denied requests never reach the app");
    for sneaky in ["//admin/users", "/./admin/users", "/pub/../admin/users", "/%61dmin/users"] {
        let r = frontend.get(&format!("http://reviews:9080{sneaky}")).await;
        assert_eq!(r.status, 403, "{sneaky}: {}", r.text());
    }
    let r = frontend.get("http://reviews:9080/pub/..%2Fadmin").await;
    assert_eq!(r.status, 400, "an encoded slash is refused: {}", r.text());
    // The normalized path is what the app receives.
    frontend.get("http://reviews:9080//ok/./x").await.assert_status(200);
    assert_eq!(app.last().path, "/ok/x");
    let served = app.request_count();
    // Opaque TCP to an HTTP service would bypass per-request rules: refused.
    let tcp = mesh::mesh_client(&cp, "frontend", "reviews", outrider_proxy::tls::ALPN_OUTRIDER_TCP).await;
    let mut tls = mesh::tls_connect(tcp, server.inbound).await.expect("handshake");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tls.write_all(b"GET /admin/users HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "nothing comes back: {}", String::from_utf8_lossy(&rest));
    }
    assert_eq!(app.request_count(), served, "denied requests never reach the app");
    let m = server.metrics().await;
    let ratings_id = identity("ratings");
    assert_eq!(
        counter(&m, "outrider_authorization_denied_total", &[("service", "reviews"), ("peer", &ratings_id)]),
        1.0,
        "{m}"
    );

    // Plaintext: from a proxy without identity, and from a raw client to the inbound port.
    let r = plain.get("http://reviews:9080/ok").await;
    assert!(r.status.is_server_error(), "plaintext caller refused, got {}", r.status);
    let raw = outrider_tests::client::http1(server.inbound);
    let direct =
        tokio::time::timeout(Duration::from_secs(10), raw.request(outrider_tests::client::get("http://reviews/ok")))
            .await
            .expect("the refusal is prompt");
    assert!(direct.is_err(), "a plaintext connection is closed");
    let m = server.metrics().await;
    assert!(counter(&m, "outrider_plaintext_refused_total", &[("service", "reviews")]) >= 2.0, "{m}");
    assert_eq!(app.request_count(), served);

    // A certificate from another CA, for an allowed identity: the handshake fails.
    let before = counter(&m, "outrider_tls_handshake_errors_total", &[("direction", "inbound")]);
    let foreign = foreign_client(&cp, &dir, &identity("frontend")).await;
    let err = foreign.handshake(server.inbound).await.expect_err("a foreign CA is refused");
    assert!(!err.is_empty());
    let m = server.metrics().await;
    assert_eq!(counter(&m, "outrider_tls_handshake_errors_total", &[("direction", "inbound")]), before + 1.0, "{m}");

    for s in [frontend, ratings, plain, server] {
        s.shutdown().await;
    }
}

/// Until the server sidecar has the strict inbound listener.
async fn wait_strict(server: &Sidecar) {
    mesh::wait_inbound(server, "reviews", |l| {
        l["mtls"] == "strict" && l["authorization"].as_array().map(Vec::len) == Some(2)
    })
    .await;
}

/// A TLS client with a certificate for `id` from a CA that is not the mesh's (it trusts the
/// mesh root, so only the server's check of the client certificate can fail).
struct ForeignClient {
    config: Arc<rustls::ClientConfig>,
}

async fn foreign_client(cp: &outrider_tests::control_plane::ControlPlane, dir: &TempDir, id: &str) -> ForeignClient {
    use outrider_control_plane::ca::{Ca, CaConfig, TrustDomain};
    use outrider_proxy::tls::{CertStore, Identity, TrustBundle};
    let other =
        Ca::open(CaConfig::new(TrustDomain::new("outrider.local").unwrap(), dir.path().join("other-ca"))).unwrap();
    let mesh_root =
        cp.call("GET", "/v1/ca/bundle", "", false, None).await.json["roots"][0].as_str().unwrap().to_owned();
    let identity = Identity::parse(id).unwrap();
    let bundle = TrustBundle::from_pem([mesh_root.as_str(), other.root_pem()]).unwrap();
    let store = Arc::new(CertStore::new(identity.clone(), bundle));
    let key = outrider_proxy::tls::new_key_and_csr(&identity).unwrap();
    let ns_sa = identity.namespace_and_service_account().unwrap();
    let issued =
        other.issue(&key.csr_pem, &outrider_control_plane::ca::Identity::new(ns_sa.0, ns_sa.1).unwrap()).unwrap();
    store.install(key, &issued.chain_pem).unwrap();
    let config = outrider_proxy::tls::client_config(store, Identity::parse(&identity_of_reviews()).unwrap()).unwrap();
    ForeignClient { config }
}

fn identity_of_reviews() -> String {
    identity("reviews")
}

impl ForeignClient {
    /// Handshake and one read: `Err` with the reason when the server refuses.
    async fn handshake(&self, addr: std::net::SocketAddr) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: the server checks the client certificate after the client finished; its
        // refusal arrives as an alert on the first read.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        match tls.read(&mut buf).await {
            Ok(0) => Err("closed".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_between_sidecars_rides_an_mtls_http1_connection() {
    use outrider_tests::raw::Reader;
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new("mtls-ws");
    let cp = mesh::control_plane(dir.path(), DAY);
    cp.apply(&reviews("")).await;
    let ws = upstream::websocket().name("ws").start().await;
    let server = Sidecar::start(&cp, "reviews", Some(ws.addr.port()), Some(&join_token(&cp, "reviews").await)).await;
    let caller = Sidecar::start(&cp, "frontend", None, Some(&join_token(&cp, "frontend").await)).await;
    mesh::wait_meshed_endpoints(&caller, "reviews", 1).await;

    let outbound = caller.app.as_ref().unwrap().addrs.outbound;
    let mut s = Reader::new(tokio::net::TcpStream::connect(outbound).await.unwrap());
    s.io.write_all(
        b"GET /chat HTTP/1.1\r\nHost: reviews:9080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = s.response().await;
    assert_eq!(head.status, 101, "{head:?}");
    let greeting = b"hello from ws\n";
    assert_eq!(s.exact(greeting.len()).await, greeting);
    s.io.write_all(b"ping").await.unwrap();
    assert_eq!(s.exact(4).await, b"ping");
    assert_eq!(
        ws.last().header("x-forwarded-client-cert"),
        Some(format!("By={};URI={}", identity("reviews"), identity("frontend")).as_str())
    );
    let m = server.metrics().await;
    assert_eq!(
        counter(&m, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", "outrider-http1/1")]),
        1.0,
        "{m}"
    );
    s.io.shutdown().await.unwrap();
    assert!(s.to_end().await.is_empty());
    caller.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_inside_mtls_is_authorized_by_identity() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("mtls-tcp");
    let cp = mesh::control_plane(dir.path(), DAY);
    cp.apply(&docs(&[
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: db}\nspec: {protocol: tcp, port: 5432, addresses: [\"127.100.0.9\"], mtls: strict}\n",
        "apiVersion: outrider.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: db-no-batch}\nspec:\n  service: db\n  action: deny\n  from: [{identities: [\"spiffe://outrider.local/ns/default/sa/batch\"]}]\n",
    ]))
    .await;
    let app = upstream::tcp_echo().start().await;
    let server = Sidecar::start(&cp, "db", Some(app.addr.port()), Some(&join_token(&cp, "db").await)).await;
    mesh::wait_inbound(&server, "db", |l| l["authorization"][0]["policies"][0] == "db-no-batch").await;

    // An allowed identity: bytes both ways through the mTLS session.
    let config = mesh::mesh_client(&cp, "api", "db", outrider_proxy::tls::ALPN_OUTRIDER_TCP).await;
    let mut tls = mesh::tls_connect(config, server.inbound).await.expect("handshake");
    tls.write_all(b"select 1").await.unwrap();
    let mut buf = [0u8; 8];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"select 1");
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await.unwrap();

    // A denied identity: the connection is closed without reaching the app.
    let connections = app.connections();
    let config = mesh::mesh_client(&cp, "batch", "db", outrider_proxy::tls::ALPN_OUTRIDER_TCP).await;
    let mut tls = mesh::tls_connect(config, server.inbound).await.expect("handshake");
    let _ = tls.write_all(b"select 1").await;
    let mut rest = Vec::new();
    let read = tls.read_to_end(&mut rest).await;
    assert!(read.is_err() || rest.is_empty(), "nothing comes back: {rest:?}");
    assert_eq!(app.connections(), connections, "the app never saw the denied connection");
    let m = server.metrics().await;
    assert_eq!(
        counter(&m, "outrider_authorization_denied_total", &[("service", "db"), ("peer", &identity("batch"))]),
        1.0,
        "{m}"
    );
    assert_eq!(
        counter(&m, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", "outrider-tcp/1")]),
        2.0,
        "{m}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_presenting_another_identity_is_refused_by_the_caller() {
    let dir = TempDir::new("mtls-wrong-san");
    let cp = mesh::control_plane(dir.path(), DAY);
    let app = upstream::http1().name("backend-app").start().await;
    // The backend registers under another service name, so the only endpoint of `reviews` is
    // the static one below, which claims an identity its sidecar does not have.
    let backend = Sidecar::start(&cp, "backend", Some(app.addr.port()), Some(&join_token(&cp, "backend").await)).await;
    cp.apply(&reviews(&format!(
        "  endpoints: [{{address: \"{}\", meshed: true, identity: \"{}\"}}]\n",
        backend.inbound,
        identity("reviews")
    )))
    .await;
    let caller = Sidecar::start(&cp, "frontend", None, Some(&join_token(&cp, "frontend").await)).await;
    mesh::wait_meshed_endpoints(&caller, "reviews", 1).await;
    let r = caller.get("http://reviews:9080/x").await;
    r.assert_status(503);
    assert_eq!(r.header("x-outrider-local-reply"), Some("connect-failure"));
    let text = r.text();
    assert!(
        text.contains(&format!("peer identity is {}, expected {}", identity("backend"), identity("reviews"))),
        "{text}"
    );
    assert_eq!(app.request_count(), 0);
    caller.shutdown().await;
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused() {
    let dir = TempDir::new("mtls-expired");
    let cp = mesh::control_plane(dir.path(), DAY);
    cp.apply(&reviews("")).await;
    let app = upstream::http1().start().await;
    let server = Sidecar::start(&cp, "reviews", Some(app.addr.port()), Some(&join_token(&cp, "reviews").await)).await;

    // A certificate signed by the mesh root itself, but expired an hour ago.
    let root_pem = std::fs::read_to_string(dir.path().join("root.pem")).unwrap();
    let root_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("root.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity("frontend").try_into().unwrap())];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(2);
    params.not_after = now - time::Duration::hours(1);
    let cert = params.signed_by(&key, &issuer).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(root_der(&root_pem))).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(outrider_proxy::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_auth_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![outrider_proxy::tls::ALPN_OUTRIDER.to_vec()];
    let before = counter(&server.metrics().await, "outrider_tls_handshake_errors_total", &[("direction", "inbound")]);
    let refused = match mesh::tls_connect(Arc::new(config), server.inbound).await {
        Err(e) => e,
        Ok(mut tls) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 16];
            match tls.read(&mut buf).await {
                Err(e) => e.to_string(),
                Ok(n) => panic!("an expired certificate was accepted ({n} bytes read)"),
            }
        }
    };
    assert!(refused.contains("CertificateExpired") || refused.contains("expired"), "{refused}");
    let m = server.metrics().await;
    assert_eq!(counter(&m, "outrider_tls_handshake_errors_total", &[("direction", "inbound")]), before + 1.0, "{m}");
    assert_eq!(app.request_count(), 0);
    server.shutdown().await;
}

fn root_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// The expired-certificate test checks the server's verdict only.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &outrider_proxy::tls::provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        outrider_proxy::tls::provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Certificates of 10 s rotate every 5–8 s: load runs until both sidecars have rotated twice
/// (about 10–16 s; with `OUTRIDER_LONG_TESTS=1` for at least 60 s and three rotations each), no
/// request fails, and a new connection after the rotations still handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_no_request() {
    let dir = TempDir::new("mtls-rotate");
    let cp = mesh::control_plane(dir.path(), Duration::from_secs(10));
    cp.apply(&reviews("")).await;
    let app = upstream::http1().name("reviews-app").start().await;
    let server = Sidecar::start(&cp, "reviews", Some(app.addr.port()), Some(&join_token(&cp, "reviews").await)).await;
    let caller = Sidecar::start(&cp, "frontend", None, Some(&join_token(&cp, "frontend").await)).await;
    mesh::wait_meshed_endpoints(&caller, "reviews", 1).await;

    // Certificates live 10 s and are renewed within 8 s: 3 installs each (the first included)
    // is two rotations under load; the long run waits for 8, about a minute of load.
    let installs_wanted = if outrider_tests::long_tests() { 8 } else { 3 };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outbound = caller.app.as_ref().unwrap().addrs.outbound;
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let stop = stop.clone();
            tokio::spawn(async move {
                // Each worker opens a new connection to its sidecar every 50 requests.
                let (mut ok, mut failed) = (0u32, Vec::new());
                let mut client = outrider_tests::client::http1(outbound);
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if i.is_multiple_of(50) {
                        client = outrider_tests::client::http1(outbound);
                    }
                    let r = outrider_tests::client::send(
                        &client,
                        outrider_tests::client::get(&format!("http://reviews:9080/w{w}/{i}")),
                    )
                    .await;
                    if r.status == 200 {
                        ok += 1
                    } else {
                        failed.push(r.status.as_u16())
                    }
                    i += 1;
                }
                (ok, failed)
            })
        })
        .collect();
    // Wait for each install on both sidecars in turn: each comes within one renewal period,
    // so each wait is bounded by the test deadline however many rotations are wanted.
    for n in 2..=installs_wanted {
        outrider_tests::wait::wait_until(&format!("both sidecars have installed {n} certificates"), || async {
            certificates_installed(&caller).await >= n && certificates_installed(&server).await >= n
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(failed.is_empty(), "failed requests during rotation: {failed:?}");
        total += ok;
    }
    assert!(total > 100, "load ran ({total} requests)");
    // A fresh handshake now uses the rotated certificates on both sides.
    let fresh = Sidecar::start(&cp, "ratings", None, Some(&join_token(&cp, "ratings").await)).await;
    mesh::wait_meshed_endpoints(&fresh, "reviews", 1).await;
    fresh.get("http://reviews:9080/after").await.assert_status(200);
    for s in [fresh, caller, server] {
        s.shutdown().await;
    }
}

/// Certificates a sidecar has installed so far, the first one included.
async fn certificates_installed(sidecar: &Sidecar) -> u64 {
    sidecar.config_dump().await["node"]["identity"]["certificates_installed"].as_u64().unwrap()
}

/// The control plane with `--tls`: the sidecar gets its certificate over HTTPS (trusting the
/// mesh root it was given) and its config over xDS with mutual TLS; the control plane shows the
/// authenticated identity in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_and_xds_over_tls_authenticate_the_sidecar() {
    let dir = TempDir::new("mtls-cp-tls");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cp = outrider_tests::control_plane::ControlPlane::start_config(outrider_control_plane::server::ServerConfig {
        xds: any,
        api: any,
        token: Some(outrider_tests::control_plane::TOKEN.into()),
        tls: true,
        ..outrider_control_plane::server::ServerConfig::local(dir.path())
    });
    let root = dir.path().join("root.pem");
    let api = cp.api;
    let xds = cp.xds;
    let app = upstream::http1().name("reviews-app").start().await;
    // Tokens and policies through the TLS API, with the CLI's client (it takes the root).
    let token = https_token(api, &root).await;
    https_apply(api, &root, &reviews("")).await;
    let server = Sidecar::start_edited(&cp, "reviews", Some(app.addr.port()), Some(&token), |c| {
        c.xds.as_mut().unwrap().address = format!("https://{xds}");
        let id = c.identity.as_mut().unwrap();
        id.ca = format!("https://{api}").parse().unwrap();
        id.ca_root = Some(outrider_proxy::mesh::CaRoots::File(root.clone()));
    })
    .await;
    let status = https_get(api, &root, "/v1/status").await;
    let proxies = status["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 1, "{status}");
    assert_eq!(proxies[0]["identity"], identity("reviews"), "the xDS stream is authenticated: {status}");
    assert_eq!(server.config_dump().await["node"]["identity"]["spiffe_id"], identity("reviews"));
    server.shutdown().await;
}

async fn https_call(
    api: std::net::SocketAddr,
    root: &std::path::Path,
    method: &str,
    path: &str,
    body: String,
) -> serde_json::Value {
    let roots = std::fs::read(root).unwrap();
    let mut store = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&roots) {
        store.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(outrider_proxy::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(api).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(api.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "cp")
        .header("authorization", format!("Bearer {}", outrider_tests::control_plane::TOKEN))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    assert!(status.is_success(), "{method} {path}: {status} {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

async fn https_get(api: std::net::SocketAddr, root: &std::path::Path, path: &str) -> serde_json::Value {
    https_call(api, root, "GET", path, String::new()).await
}

async fn https_token(api: std::net::SocketAddr, root: &std::path::Path) -> String {
    let body = serde_json::json!({"namespace": "default", "serviceAccount": "reviews"}).to_string();
    https_call(api, root, "POST", "/v1/tokens", body).await["token"].as_str().unwrap().to_owned()
}

async fn https_apply(api: std::net::SocketAddr, root: &std::path::Path, yaml: &str) {
    https_call(api, root, "PUT", "/v1/policies", yaml.to_owned()).await;
}

/// A sidecar whose certificate cannot be issued (the CA is unreachable) is not ready and
/// refuses inbound connections instead of serving them without its policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_fails_closed_until_the_certificate_is_issued() {
    let dir = TempDir::new("mtls-closed");
    let cp = mesh::control_plane(dir.path(), DAY);
    cp.apply(&reviews("")).await;
    let app = upstream::http1().start().await;
    let token = dir.write("token", &join_token(&cp, "reviews").await);
    let mut config = outrider_proxy::config::ProxyConfig::local("unready");
    config.xds =
        Some(outrider_proxy::source::xds::XdsConfig::new(cp.xds_url(), outrider_proxy::source::xds::Protocol::Delta));
    config.service = Some("reviews".into());
    config.app_port = Some(app.addr.port());
    config.identity = Some(outrider_proxy::mesh::IdentityConfig {
        ca: format!("http://{}", outrider_tests::upstream::closed_port()).parse().unwrap(),
        token_file: token,
        namespace: "default".into(),
        service_account: "reviews".into(),
        ca_root: None,
    });
    let proxy =
        outrider_proxy::app::App::build(config, outrider_proxy::telemetry::log::LogHandle::disabled()).await.unwrap();
    let admin = outrider_tests::client::http1(proxy.addrs.admin);
    let ready = outrider_tests::client::send(&admin, outrider_tests::client::get("http://admin/ready")).await;
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("waiting for the workload certificate"), "{}", ready.text());
    let raw = outrider_tests::client::http1(proxy.addrs.inbound);
    let r = raw.request(outrider_tests::client::get("http://reviews/x")).await;
    assert!(r.is_err(), "the inbound connection is closed");
    assert_eq!(app.request_count(), 0);
    proxy.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_mtls_connection_leaves_the_callers_pool_after_the_idle_timeout() {
    let policy = format!(
        "{}---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: reviews}}\nspec:\n  service: reviews\n  idleTimeout: 1s\n",
        reviews("")
    );
    let app = upstream::http1().name("reviews-app").start().await;
    let Pair { server, caller, _dir, _cp } = pair("mtls-idle", &policy, app.addr.port()).await;
    caller.get("http://reviews:9080/once").await.assert_status(200);
    assert_eq!(idle_http1(&caller).await, 1);
    // Closed by the caller's timer, with no request to notice it.
    outrider_tests::wait::wait_until("the idle connection to leave the pool", || async {
        idle_http1(&caller).await == 0
    })
    .await;
    // The next call opens a new one.
    caller.get("http://reviews:9080/again").await.assert_status(200);
    let m = server.metrics().await;
    assert_eq!(
        counter(&m, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", "outrider-http1/1")]),
        2.0,
        "{m}"
    );
    caller.shutdown().await;
    server.shutdown().await;
}
