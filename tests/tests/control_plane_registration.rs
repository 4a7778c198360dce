//! Who may register endpoints: only an xDS stream authenticated by a workload certificate or a
//! join token (stream metadata), unless the control plane runs with
//! `--insecure-registration`; every stream gets its config. What a sidecar registers when it is
//! not told (`--inbound-bind 0.0.0.0`, no `--advertise`): the local address of its xDS
//! connection. Unauthenticated streams get a small request size limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use outrider_proxy::source::xds::Protocol;
use outrider_tests::binary::{ProxyProcess, proxy_bin};
use outrider_tests::control_plane::{ControlPlane, MeshProxy, outrider_bin};
use outrider_tests::harness::TempDir;
use outrider_tests::mesh::{self, Sidecar};
use outrider_tests::{policy, upstream, wait};
use outrider_xds::ads::{AdsClient, AdsError, ClientConfig, Handler, Update};
use outrider_xds::resources::{CLUSTER_TYPE_URL, string_value, struct_of};
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;

/// The registrations of `service` listed by `GET /v1/endpoints`.
async fn registered(cp: &ControlPlane, service: &str) -> Vec<Value> {
    let listed = cp.call("GET", "/v1/endpoints", "", false, None).await;
    listed.json["items"].as_array().unwrap().iter().filter(|i| i["service"] == service).cloned().collect()
}

/// The status entry of node `id`.
async fn proxy_status(cp: &ControlPlane, id: &str) -> Value {
    let status = cp.status().await;
    status["proxies"].as_array().unwrap().iter().find(|p| p["nodeId"] == id).cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_sidecar_gets_its_config_but_registers_nothing_and_the_status_says_why() {
    let data = TempDir::new("reg-refused");
    let cp = ControlPlane::start(data.path());
    let app = upstream::http1().name("echo-app").start().await;
    let version = cp.apply(&policy::service("echo").yaml()).await;
    let proxy = MeshProxy::start_advertising(&cp.xds_url(), "echo-1", "echo", Protocol::Delta, Some(app.addr)).await;
    // The proxy is served (it ACKs everything); its registration came first, on its first request.
    cp.wait_converged(&version, 1).await;
    proxy.wait_ready().await;

    assert!(registered(&cp, "echo").await.is_empty(), "an unauthenticated stream registered a workload");
    let me = proxy_status(&cp, "echo-1").await;
    assert_eq!(me["authentication"], "none", "{me}");
    assert!(me["registered"].is_null(), "{me}");
    let refused = me["registrationRefused"].as_str().unwrap_or_default();
    assert!(refused.contains("not authenticated") && refused.contains("no client certificate"), "{me}");
    // `outrider status` says so too.
    let mut cmd = tokio::process::Command::new(outrider_bin());
    cmd.args(["status", "--server", &format!("http://{}", cp.api)]);
    let out = outrider_tests::binary::run_to_exit(cmd).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("REGISTRATION REFUSED echo-1: not authenticated"), "{table}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_insecure_registration_a_plaintext_sidecar_registers() {
    let data = TempDir::new("reg-insecure");
    let cp = ControlPlane::start_insecure_registration(data.path(), Duration::from_secs(10));
    let app = upstream::http1().name("echo-app").start().await;
    cp.apply(&policy::service("echo").yaml()).await;
    let proxy = MeshProxy::start_advertising(&cp.xds_url(), "echo-1", "echo", Protocol::Sotw, Some(app.addr)).await;
    let items = wait::wait_for("the workload to be registered", || async {
        let items = registered(&cp, "echo").await;
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(items[0]["address"], app.addr.to_string());
    let me = proxy_status(&cp, "echo-1").await;
    assert_eq!(me["authentication"], "none", "{me}");
    assert_eq!(me["registered"], app.addr.to_string(), "{me}");
    assert!(me["registrationRefused"].is_null(), "{me}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_sent_as_stream_metadata_authenticates_the_registration() {
    let data = TempDir::new("reg-token");
    let cp = mesh::control_plane(data.path(), Duration::from_secs(3600));
    let app = upstream::http1().name("echo-app").start().await;
    cp.apply(&policy::service("echo").yaml()).await;
    let token = mesh::join_token(&cp, "echo").await;
    // xDS over plain http: the token in the stream metadata is the only credential.
    let sidecar = Sidecar::start(&cp, "echo", Some(app.addr.port()), Some(&token)).await;
    let items = wait::wait_for("the workload to be registered", || async {
        let items = registered(&cp, "echo").await;
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(items[0]["address"], sidecar.inbound.to_string());
    assert_eq!(items[0]["identity"], mesh::identity("echo"), "registered as meshed, with its identity");
    let me = proxy_status(&cp, "echo-sidecar").await;
    assert_eq!(me["authentication"], "join-token", "{me}");
    assert_eq!(me["identity"], mesh::identity("echo"), "{me}");
    drop(sidecar);
}

/// Accepts everything (the stream's fate is what the tests look at).
struct Accept;

impl Handler for Accept {
    fn update(&self, _update: &Update<'_>) -> Result<(), String> {
        Ok(())
    }
}

fn node(id: &str, service: &str) -> Node {
    Node {
        id: id.into(),
        metadata: Some(struct_of([("service", string_value(service)), ("advertise", string_value("127.0.0.1:9"))])),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_may_only_register_services_of_its_namespace() {
    let data = TempDir::new("reg-namespace");
    let cp = mesh::control_plane(data.path(), Duration::from_secs(3600));
    cp.apply(&policy::service("echo").yaml()).await;
    // A token for shop/web; echo is in namespace default.
    let body = serde_json::json!({"namespace": "shop", "serviceAccount": "web"}).to_string();
    let r = cp.call("POST", "/v1/tokens", &body, true, None).await;
    let file = data.write("token", r.json["token"].as_str().unwrap());
    let mut config = ClientConfig::new(cp.xds_url(), node("intruder", "echo"));
    config.protocol = outrider_xds::ads::Protocol::Sotw;
    config.join_token = Some(file);
    let mut client = AdsClient::new(config);
    let mut delivered = false;
    let result = wait::within("the stream to be refused", client.run_once(&Accept, &mut delivered)).await;
    let Err(AdsError::Stream(status)) = result else { panic!("not refused: {result:?}") };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("the Service is in namespace \"default\""), "{status:?}");
    assert!(registered(&cp, "echo").await.is_empty());
}

/// A SotW request for clusters naming `bytes` worth of resources, with `token` as metadata.
async fn send_large_request(cp: &ControlPlane, token: Option<&str>, bytes: usize) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(cp.xds_url()).unwrap().connect().await.unwrap();
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let names = (0..bytes / 40).map(|i| format!("outbound|8080||service-{i:020}")).collect();
    tx.send(DiscoveryRequest {
        node: Some(node("big", "echo")),
        type_url: CLUSTER_TYPE_URL.into(),
        resource_names: names,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut replies = client.stream_aggregated_resources(request).await?.into_inner();
    let first = wait::within("the first reply", replies.message()).await?;
    assert!(first.is_some(), "the stream ended without a reply or a status");
    drop(tx);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_stream_may_not_send_a_large_request_an_authenticated_one_may() {
    let data = TempDir::new("reg-limit");
    let cp = mesh::control_plane(data.path(), Duration::from_secs(3600));
    cp.apply(&policy::service("echo").yaml()).await;
    let refused = send_large_request(&cp, None, 2 << 20).await.expect_err("2 MiB unauthenticated");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    send_large_request(&cp, None, 512 << 10).await.expect("0.5 MiB unauthenticated is fine");
    let token = mesh::join_token(&cp, "echo").await;
    send_large_request(&cp, Some(&token), 2 << 20).await.expect("2 MiB with a join token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_bound_to_every_address_registers_the_local_address_of_its_xds_connection_and_logs_it() {
    let data = TempDir::new("reg-local");
    let cp = ControlPlane::start_insecure_registration(data.path(), Duration::from_secs(10));
    cp.apply(&policy::service("echo").yaml()).await;
    // Default --inbound-bind (0.0.0.0), no --advertise.
    let mut cmd = tokio::process::Command::new(proxy_bin());
    cmd.args(["--xds-address", &cp.xds_url(), "--node-id", "echo-1", "--service", "echo"]).args([
        "--log-format",
        "json",
        "--workers",
        "1",
    ]);
    for flag in ["--outbound-port", "--inbound-port", "--admin-port", "--metrics-port", "--health-port"] {
        cmd.args([flag, "0"]);
    }
    let proxy = ProxyProcess::spawn(cmd).await;
    assert!(proxy.addrs.inbound.ip().is_unspecified(), "{:?}", proxy.addrs);
    // The control plane is on loopback: the connection's local address is 127.0.0.1.
    let expected = format!("127.0.0.1:{}", proxy.addrs.inbound.port());
    let items = wait::wait_for("the workload to be registered", || async {
        let items = registered(&cp, "echo").await;
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(items[0]["address"], expected.as_str());
    wait::wait_until("the proxy to log the address it registers", || async {
        proxy.stdout().iter().any(|l| l.contains("local address of the xDS connection") && l.contains(&expected))
    })
    .await;
}
