//! Mutual TLS between two sidecars with identities from the control plane's CA: the hop
//! between proxies is mTLS over HTTP/2 while the apps speak HTTP/1.1; strict mode refuses
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
async fn two_sidecars_talk_mtls_over_h2_while_the_apps_speak_http1() {
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

    // The hop between the proxies was mutual TLS carrying HTTP/2 (ALPN outrider/1).
    let m = server.metrics().await;
    assert!(counter(&m, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", "outrider/1")]) >= 1.0, "{m}");
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

    // Many requests share the one multiplexed mTLS connection.
    for i in 0..20 {
        caller.get(&format!("http://reviews:9080/n/{i}")).await.assert_status(200);
    }
    let m = server.metrics().await;
    assert_eq!(
        counter(&m, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", "outrider/1")]),
        1.0,
        "one h2 connection between the proxies: {m}"
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
    let direct = tokio::time::timeout(
        Duration::from_secs(10),
        raw.request(outrider_tests::client::get("http://reviews/ok")),
    )
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
    outrider_tests::wait::wait_until("the strict inbound listener", || async {
        let dump = server.config_dump().await;
        dump["config"]["listeners"]["resources"]
            .as_array()
            .is_some_and(|ls| ls.iter().any(|l| l["name"] == "inbound|reviews" && l["mtls"] == "strict"))
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
    let other = Ca::open(CaConfig::new(TrustDomain::new("outrider.local").unwrap(), dir.path().join("other-ca"))).unwrap();
    let mesh_root = cp.call("GET", "/v1/ca/bundle", "", false, None).await.json["roots"][0].as_str().unwrap().to_owned();
    let identity = Identity::parse(id).unwrap();
    let bundle = TrustBundle::from_pem([mesh_root.as_str(), other.root_pem()]).unwrap();
    let store = Arc::new(CertStore::new(identity.clone(), bundle));
    let key = outrider_proxy::tls::new_key_and_csr(&identity).unwrap();
    let ns_sa = identity.namespace_and_service_account().unwrap();
    let issued = other.issue(&key.csr_pem, &outrider_control_plane::ca::Identity::new(ns_sa.0, ns_sa.1).unwrap()).unwrap();
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
        let mut tls = tokio_rustls::TlsConnector::from(self.config.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
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
