//! The CA over the control plane's API: join tokens from the `outrider token create` CLI,
//! certificates from CSRs (`POST /v1/certificates`) checked against `/v1/ca/bundle`, the
//! refusals (other identity, spent token, no API token, bad renewal proof), and with `--tls`
//! the API and xDS over TLS with the proxy's client certificate identity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::Output;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use http::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use outrider_control_plane::cli::client as api;
use outrider_control_plane::server::ServerConfig;
use outrider_proxy::tls::{self, CertStore, Identity, TrustBundle};
use outrider_tests::control_plane::{ControlPlane, TOKEN, outrider_bin};
use outrider_tests::harness::TempDir;
use outrider_tests::{binary, wait};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_stream::wrappers::ReceiverStream;

const CHECKOUT: &str = "spiffe://outrider.local/ns/shop/sa/checkout";
const ADMIN: &str = "spiffe://outrider.local/ns/shop/sa/admin";
const CONTROL_PLANE: &str = "spiffe://outrider.local/ns/outrider-system/sa/control-plane";

async fn call(
    server: &str,
    root: Option<&Path>,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    exchange(server, root, method, path, bearer, body.map(|b| b.to_string())).await
}

async fn exchange(
    server: &str,
    root: Option<&Path>,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<String>,
) -> (StatusCode, Value) {
    let reply =
        api::send_with_root(server, root, method, path, bearer, body).await.unwrap_or_else(|e| panic!("{path}: {e}"));
    (reply.status, reply.json())
}

/// [`call`] with a text body (YAML policies).
async fn call_text(
    server: &str,
    root: Option<&Path>,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    exchange(server, root, method, path, bearer, Some(body.to_owned())).await
}

async fn post(server: &str, path: &str, bearer: Option<&str>, body: Value) -> (StatusCode, Value) {
    call(server, None, Method::POST, path, bearer, Some(body)).await
}

/// `outrider ARGS` with the API token (unless `api_token` is None) and `OUTRIDER_SERVER`.
async fn cli(server: &str, api_token: Option<&str>, root: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(outrider_bin());
    cmd.args(args).env("OUTRIDER_SERVER", server).env_remove("OUTRIDER_TOKEN").env_remove("OUTRIDER_CA_ROOT");
    if let Some(t) = api_token {
        cmd.env("OUTRIDER_TOKEN", t);
    }
    if let Some(r) = root {
        cmd.env("OUTRIDER_CA_ROOT", r);
    }
    binary::run_to_exit(cmd).await
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A join token for shop/checkout from the CLI (`-o json`).
async fn token_from_cli(server: &str, root: Option<&Path>, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--namespace", "shop", "--service-account", "checkout", "-o", "json"];
    args.extend_from_slice(extra);
    let out = cli(server, Some(TOKEN), root, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(v["identity"], CHECKOUT, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn chain(reply: &Value) -> Vec<String> {
    reply["certificateChain"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect()
}

/// A store for `identity` trusting the roots of `GET /v1/ca/bundle`.
fn store_for(identity: &str, bundle: &Value) -> CertStore {
    let roots: Vec<&str> = bundle["roots"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    CertStore::new(Identity::parse(identity).unwrap(), TrustBundle::from_pem(roots).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_cli_gets_a_certificate_that_verifies_against_the_bundle() {
    let dir = TempDir::new("ca-api-issue");
    let cp = ControlPlane::start(&dir.path().join("store"));
    let server = format!("http://{}", cp.api);

    let out =
        cli(&server, Some(TOKEN), None, &["token", "create", "--namespace", "shop", "--service-account", "checkout"])
            .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("TOKEN      ort_") && table.contains(&format!("IDENTITY   {CHECKOUT}")), "{table}");

    let out = cli(
        &server,
        Some(TOKEN),
        None,
        &["token", "create", "--namespace", "shop", "--service-account", "checkout", "-q"],
    )
    .await;
    let quiet = String::from_utf8_lossy(&out.stdout);
    assert!(quiet.starts_with("ort_") && quiet.trim().len() == 68 && quiet.lines().count() == 1, "{quiet:?}");

    let mut args = vec!["token", "create", "--namespace", "shop", "--service-account", "checkout", "-o", "json"];
    args.extend(["--ttl", "2h"]);
    let out = cli(&server, Some(TOKEN), None, &args).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let expires = v["expiresAt"].as_u64().unwrap();
    assert!(expires.abs_diff(unix_now() + 7200) < 60, "expiresAt {expires} is not in 2h");
    let token = v["token"].as_str().unwrap();

    let identity = Identity::parse(CHECKOUT).unwrap();
    let key = tls::new_key_and_csr(&identity).unwrap();
    let (status, reply) = post(&server, "/v1/certificates", Some(token), json!({"csr": key.csr_pem})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["identity"], CHECKOUT);
    assert_eq!(chain(&reply).len(), 2, "leaf and root: {reply}");
    let not_after = reply["notAfter"].as_u64().unwrap();
    assert!(not_after.abs_diff(unix_now() + 24 * 3600) < 60, "default lifetime 24h, notAfter {not_after}");

    let (status, bundle) = call(&server, None, Method::GET, "/v1/ca/bundle", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(bundle["trustDomain"], "outrider.local");
    let root_file = std::fs::read_to_string(dir.path().join("store/root.pem")).unwrap();
    assert_eq!(bundle["roots"][0], root_file.as_str(), "the bundle holds the root written to the data dir");
    assert_eq!(reply["trustBundle"], bundle["roots"]);
    let store = store_for(CHECKOUT, &bundle);
    store.install(key, &chain(&reply)).expect("the issued chain verifies against /v1/ca/bundle");

    let metrics = cp.metrics().await;
    assert!(metrics.contains("outrider_ca_certificates_issued_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_for_another_identity_is_forbidden_and_one_without_uri_san_is_a_bad_request() {
    let dir = TempDir::new("ca-api-other");
    let cp = ControlPlane::start(&dir.path().join("store"));
    let server = format!("http://{}", cp.api);
    let token = token_from_cli(&server, None, &[]).await;

    let admin = tls::new_key_and_csr(&Identity::parse(ADMIN).unwrap()).unwrap();
    let (status, reply) = post(&server, "/v1/certificates", Some(&token), json!({"csr": admin.csr_pem})).await;
    assert_eq!(status, 403, "{reply}");
    assert_eq!(reply["error"], format!("the CSR asks for {ADMIN} but the token grants {CHECKOUT}"));

    let key = rcgen::KeyPair::generate().unwrap();
    let no_san = rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
    let (status, reply) = post(&server, "/v1/certificates", Some(&token), json!({"csr": no_san})).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("no URI SAN"), "{reply}");

    let (status, reply) = post(&server, "/v1/certificates", Some(&token), json!({"csr": "garbage"})).await;
    assert_eq!(status, 400, "{reply}");

    let metrics = cp.metrics().await;
    assert!(metrics.contains("outrider_ca_issue_errors_total{reason=\"identity_mismatch\"} 1"), "{metrics}");
    assert!(metrics.contains("outrider_ca_issue_errors_total{reason=\"bad_csr\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_token_redeemed_twice_an_unknown_token_and_no_credential_are_unauthorized() {
    let dir = TempDir::new("ca-api-single");
    let cp = ControlPlane::start(&dir.path().join("store"));
    let server = format!("http://{}", cp.api);
    let token = token_from_cli(&server, None, &["--single-use"]).await;
    let identity = Identity::parse(CHECKOUT).unwrap();

    let first = tls::new_key_and_csr(&identity).unwrap();
    let (status, reply) = post(&server, "/v1/certificates", Some(&token), json!({"csr": first.csr_pem})).await;
    assert_eq!(status, 200, "{reply}");
    let second = tls::new_key_and_csr(&identity).unwrap();
    let (status, reply) = post(&server, "/v1/certificates", Some(&token), json!({"csr": second.csr_pem})).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("already redeemed"), "{reply}");

    let unknown = format!("ort_{}", "ab".repeat(32));
    let (status, reply) = post(&server, "/v1/certificates", Some(&unknown), json!({"csr": second.csr_pem})).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("unknown"), "{reply}");

    let (status, reply) = post(&server, "/v1/certificates", None, json!({"csr": second.csr_pem})).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("join token"), "{reply}");

    let metrics = cp.metrics().await;
    assert!(metrics.contains("outrider_ca_issue_errors_total{reason=\"token_used\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_tokens_needs_the_api_token_and_valid_names() {
    let dir = TempDir::new("ca-api-auth");
    let cp = ControlPlane::start(&dir.path().join("store"));
    let server = format!("http://{}", cp.api);
    let body = json!({"namespace": "shop", "serviceAccount": "checkout"});

    let (status, reply) = post(&server, "/v1/tokens", None, body.clone()).await;
    assert_eq!(status, 401, "{reply}");
    let (status, _) = post(&server, "/v1/tokens", Some("wrong"), body.clone()).await;
    assert_eq!(status, 401);
    let out =
        cli(&server, Some("wrong"), None, &["token", "create", "--namespace", "shop", "--service-account", "x"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", text(&out));

    let (status, reply) =
        post(&server, "/v1/tokens", Some(TOKEN), json!({"namespace": "Shop", "serviceAccount": "a"})).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["field"], "namespace", "{reply}");
    let (status, reply) =
        post(&server, "/v1/tokens", Some(TOKEN), json!({"namespace": "shop", "serviceAccount": "a", "ttl": "soon"}))
            .await;
    assert_eq!((status, &reply["field"]), (StatusCode::BAD_REQUEST, &json!("ttl")), "{reply}");
    let out =
        cli(&server, Some(TOKEN), None, &["token", "create", "--namespace", "shop", "--service-account", "bad_sa"])
            .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serviceAccount"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_gets_no_certificate_and_revoking_needs_the_api_token() {
    let dir = TempDir::new("ca-api-revoke");
    let cp = ControlPlane::start(&dir.path().join("store"));
    let server = format!("http://{}", cp.api);
    let token = token_from_cli(&server, None, &[]).await;
    let other = {
        let (status, reply) =
            post(&server, "/v1/tokens", Some(TOKEN), json!({"namespace": "shop", "serviceAccount": "admin"})).await;
        assert_eq!(status, 200, "{reply}");
        reply["token"].as_str().unwrap().to_owned()
    };

    let args = ["token", "revoke", "--namespace", "shop", "--service-account", "checkout"];
    let out = cli(&server, Some("wrong"), None, &args).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = cli(&server, Some(TOKEN), None, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("revoked 1 join token of {CHECKOUT}"));

    let key = tls::new_key_and_csr(&Identity::parse(CHECKOUT).unwrap()).unwrap();
    let (status, reply) = post(&server, "/v1/certificates", Some(&token), json!({"csr": key.csr_pem})).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("unknown"), "{reply}");
    // Another identity's token is untouched.
    let key = tls::new_key_and_csr(&Identity::parse(ADMIN).unwrap()).unwrap();
    let (status, reply) = post(&server, "/v1/certificates", Some(&other), json!({"csr": key.csr_pem})).await;
    assert_eq!(status, 200, "{reply}");
}

/// A key and a CSR for `uri`, with the CSR's DER.
fn rcgen_csr(uri: &str) -> (rcgen::KeyPair, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    let req = params.serialize_request(&key).unwrap();
    (key, req.pem().unwrap(), req.der().to_vec())
}

/// Hex ECDSA P-256 SHA-256 ASN.1 signature of `message` by `key`.
fn sign(key: &rcgen::KeyPair, message: &[u8]) -> String {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key.serialize_der(), &rng).unwrap();
    pair.sign(&rng, message).unwrap().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_a_proof_from_the_current_key_needs_no_token() {
    let dir = TempDir::new("ca-api-renew");
    let cp = ControlPlane::start(&dir.path().join("store"));
    let server = format!("http://{}", cp.api);
    let token = token_from_cli(&server, None, &["--single-use"]).await;
    let (current_key, csr, _) = rcgen_csr(CHECKOUT);
    let (status, reply) = post(&server, "/v1/certificates", Some(&token), json!({"csr": csr})).await;
    assert_eq!(status, 200, "{reply}");
    let current = chain(&reply);

    let (new_key, csr, der) = rcgen_csr(CHECKOUT);
    let renewal =
        |signature: String| json!({"csr": csr, "renewal": {"certificateChain": current, "signature": signature}});
    let (status, reply) = post(&server, "/v1/certificates", None, renewal(sign(&current_key, &der))).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["identity"], CHECKOUT);
    assert_ne!(chain(&reply)[0], current[0], "a new certificate");

    let (status, reply) = post(&server, "/v1/certificates", None, renewal(sign(&new_key, &der))).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("signature invalid"), "{reply}");

    let (_, admin_csr, admin_der) = rcgen_csr(ADMIN);
    let body = json!({"csr": admin_csr, "renewal": {"certificateChain": current, "signature": sign(&current_key, &admin_der)}});
    let (status, reply) = post(&server, "/v1/certificates", None, body).await;
    assert_eq!(status, 403, "{reply}");
    assert_eq!(reply["error"], format!("the CSR asks for {ADMIN} but the current certificate is for {CHECKOUT}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ca_file_stops_the_start_with_exit_code_2_naming_it() {
    let dir = TempDir::new("ca-api-badfile");
    let cert = dir.path().join("my-ca.pem");
    let key = dir.path().join("my-ca.key");
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let mut cmd = Command::new(outrider_bin());
    cmd.args(["control-plane", "--xds-port", "0", "--api-port", "0", "--data-dir"])
        .arg(dir.path().join("store"))
        .arg("--ca-cert")
        .arg(&cert)
        .arg("--ca-key")
        .arg(&key);
    let out = binary::run_to_exit(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("my-ca.pem"), "{}", text(&out));
}

/// Dials one address over TLS (tonic connector).
#[derive(Clone)]
struct TlsConnect {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl tower::Service<http::Uri> for TlsConnect {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, config) = (self.addr, self.config.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Opens an LRS stream over TLS with the client certificate in `store` (if it has one) and
/// waits for the server's first answer.
async fn lrs_first_reply(cp: &ControlPlane, store: Arc<CertStore>) -> Result<(), tonic::Status> {
    use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
    use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
    let config = tls::client_config_alpn(store, Identity::parse(CONTROL_PLANE).unwrap(), b"h2").unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.xds))
        .unwrap()
        .connect_with_connector(TlsConnect { addr: cp.xds, config })
        .await
        .expect("xDS over TLS connects");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(LoadStatsRequest { node: Some(node("sidecar-checkout", CHECKOUT, None)), cluster_stats: Vec::new() })
        .await
        .unwrap();
    let mut replies =
        LoadReportingServiceClient::new(channel).stream_load_stats(ReceiverStream::new(rx)).await?.into_inner();
    let first = wait::within("the first load report answer", replies.message()).await?;
    assert!(first.is_some_and(|f| f.load_reporting_interval.is_some()), "the server did not give an interval");
    drop(tx);
    Ok(())
}

fn node(id: &str, identity: &str, service: Option<&str>) -> Node {
    let value = PbValue { kind: Some(Kind::StringValue(identity.to_owned())) };
    let mut fields: std::collections::BTreeMap<String, PbValue> =
        [("identity".to_owned(), value)].into_iter().collect();
    if let Some(s) = service {
        fields.insert("service".to_owned(), PbValue { kind: Some(Kind::StringValue(s.to_owned())) });
    }
    Node { id: id.to_owned(), metadata: Some(Struct { fields: fields.into_iter().collect() }), ..Default::default() }
}

/// Opens a SotW stream over TLS as `store`'s identity, claiming `claimed`; the first reply.
async fn xds_first_reply(cp: &ControlPlane, store: Arc<CertStore>, claimed: &str) -> Result<(), tonic::Status> {
    xds_first_reply_as(cp, store, claimed, None).await
}

/// [`xds_first_reply`] with node metadata `service`.
async fn xds_first_reply_as(
    cp: &ControlPlane,
    store: Arc<CertStore>,
    claimed: &str,
    service: Option<&str>,
) -> Result<(), tonic::Status> {
    let config = tls::client_config_alpn(store, Identity::parse(CONTROL_PLANE).unwrap(), b"h2").unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.xds))
        .unwrap()
        .connect_with_connector(TlsConnect { addr: cp.xds, config })
        .await
        .expect("xDS over TLS connects");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node("sidecar-checkout", claimed, service)),
        type_url: outrider_xds::resources::CLUSTER_TYPE_URL.to_owned(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut replies = client.stream_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
    let first = wait::within("the first xDS reply", replies.message()).await?;
    assert!(first.is_some(), "the stream ended without a reply");
    // Keep the stream open for the status check.
    tokio::spawn(async move {
        let _tx = tx;
        while let Ok(Some(_)) = replies.message().await {}
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_api_and_xds_are_served_over_tls_and_xds_knows_the_client_identity() {
    let dir = TempDir::new("ca-api-tls");
    let data = dir.path().join("store");
    let cp = ControlPlane::start_config(ServerConfig {
        tls: true,
        token: Some(TOKEN.into()),
        workload_cert_ttl: Duration::from_secs(60),
        ..ServerConfig::local(&data)
    });
    let root = data.join("root.pem");
    let https = format!("https://127.0.0.1:{}", cp.api.port());

    let (status, bundle) = call(&https, Some(&root), Method::GET, "/v1/ca/bundle", None, None).await;
    assert_eq!(status, 200, "{bundle}");
    assert!(
        api::send(&format!("http://{}", cp.api), Method::GET, "/v1/ca/bundle", None, None).await.is_err(),
        "plain HTTP must not be answered"
    );
    let err = api::send_with_root(&https, None, Method::GET, "/v1/ca/bundle", None, None).await.unwrap_err();
    assert!(err.to_string().contains("--ca-root"), "{err}");

    // The CLI over TLS, by host name (DNS SAN localhost).
    let by_name = format!("https://localhost:{}", cp.api.port());
    let token = token_from_cli(&by_name, Some(&root), &[]).await;
    let key = tls::new_key_and_csr(&Identity::parse(CHECKOUT).unwrap()).unwrap();
    let (status, reply) =
        call(&https, Some(&root), Method::POST, "/v1/certificates", Some(&token), Some(json!({"csr": key.csr_pem})))
            .await;
    assert_eq!(status, 200, "{reply}");
    let store = Arc::new(store_for(CHECKOUT, &bundle));
    store.install(key, &chain(&reply)).unwrap();

    // xDS over mTLS: the server is the control plane's SPIFFE ID; the claimed identity must match.
    xds_first_reply(&cp, store.clone(), CHECKOUT).await.expect("the stream of a matching identity is served");
    let refused = xds_first_reply(&cp, store.clone(), ADMIN).await.expect_err("a mismatched claim is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains(&format!("claims identity {ADMIN}")), "{refused:?}");
    // An authenticated proxy may only act for a Service of its own namespace.
    let yaml = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: payments, namespace: payments}\nspec: {port: 80}\n";
    let (status, reply) = call_text(&https, Some(&root), Method::PUT, "/v1/policies", Some(TOKEN), yaml).await;
    assert_eq!(status, 200, "{reply}");
    let refused = xds_first_reply_as(&cp, store.clone(), CHECKOUT, Some("payments"))
        .await
        .expect_err("a Service of another namespace is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("the Service is in namespace \"payments\""), "{refused:?}");
    // Without a client certificate xDS still works, unauthenticated.
    let anonymous = Arc::new(store_for(CHECKOUT, &bundle));
    xds_first_reply(&cp, anonymous.clone(), CHECKOUT).await.expect("client certificates are optional");
    // Load reports decide rollouts: over TLS only a proxy with a certificate may send them.
    lrs_first_reply(&cp, store.clone()).await.expect("a proxy with an identity may send load reports");
    let refused = lrs_first_reply(&cp, anonymous).await.expect_err("load reports without a certificate are refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("need a client certificate"), "{refused:?}");

    let status = wait::wait_for("the status to show the authenticated proxy", || async {
        let (_, s) = call(&https, Some(&root), Method::GET, "/v1/status", None, None).await;
        let proxies = s["proxies"].as_array()?.clone();
        (proxies.len() == 2).then_some(proxies)
    })
    .await;
    let identities: Vec<&Value> = status.iter().map(|p| &p["identity"]).collect();
    assert!(identities.contains(&&json!(CHECKOUT)) && identities.contains(&&Value::Null), "{status:?}");
    let out = cli(&https, None, Some(&root), &["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("IDENTITY") && table.contains(CHECKOUT), "{table}");
}

/// The table `outrider token create` prints, saved as the proxy's token file, stops the proxy
/// at start with an error that names the file and says to use `-q`; `-q`'s output works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_holding_the_create_table_is_refused_naming_the_file_and_minus_q() {
    let dir = TempDir::new("ca-api-token-file");
    let cp = ControlPlane::start(&dir.path().join("store"));
    let server = format!("http://{}", cp.api);
    let table =
        cli(&server, Some(TOKEN), None, &["token", "create", "--namespace", "shop", "--service-account", "checkout"])
            .await;
    assert_eq!(table.status.code(), Some(0), "{}", text(&table));
    let file = dir.write("token", &String::from_utf8_lossy(&table.stdout));
    let mut cmd = Command::new(binary::proxy_bin());
    cmd.args(["--xds-address", &cp.xds_url(), "--service", "checkout", "--identity-token"]).arg(&file);
    let out = binary::run_to_exit(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&file.display().to_string()) && stderr.contains("-q"), "{stderr}");
    assert!(!stderr.contains("ort_"), "the secret is not echoed: {stderr}");

    let quiet = cli(
        &server,
        Some(TOKEN),
        None,
        &["token", "create", "--namespace", "shop", "--service-account", "checkout", "-q"],
    )
    .await;
    assert_eq!(quiet.status.code(), Some(0), "{}", text(&quiet));
    assert_eq!(
        outrider_xds::join_token::read(&dir.write("token", &String::from_utf8_lossy(&quiet.stdout))).unwrap().len(),
        68
    );
}
