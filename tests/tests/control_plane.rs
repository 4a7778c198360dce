//! The control plane end to end: policies over the API reach real proxies over xDS (Delta and
//! SotW), bad writes change nothing, stale writes conflict, and a restarted control plane serves
//! what it had. (A control plane killed under load: `chaos_control_plane`, as real processes.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use outrider_proxy::source::xds::Protocol;
use outrider_tests::control_plane::{ControlPlane, MeshProxy};
use outrider_tests::harness::TempDir;
use outrider_tests::{policy, upstream, wait};

fn service(upstream: &upstream::Upstream) -> String {
    policy::service("echo").endpoint(upstream.endpoint()).yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reaches_delta_and_sotw_proxies_and_status_shows_ack() {
    let data = TempDir::new("cp-data");
    let cp = ControlPlane::start(data.path());
    let a = upstream::http1().name("a").start().await;
    let delta = MeshProxy::start(&cp.xds_url(), "delta-1", "frontend", Protocol::Delta).await;
    let sotw = MeshProxy::start(&cp.xds_url(), "sotw-1", "frontend", Protocol::Sotw).await;
    // An empty mesh is still a complete config: both become ready.
    delta.wait_ready().await;
    sotw.wait_ready().await;

    let version = cp.apply(&service(&a)).await;
    let status = cp.wait_converged(&version, 2).await;
    let proxies = status["proxies"].as_array().unwrap();
    let nodes: Vec<&str> = proxies.iter().map(|p| p["nodeId"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["delta-1", "sotw-1"]);
    assert_eq!(proxies[0]["protocol"], "delta");
    assert_eq!(proxies[1]["protocol"], "sotw");
    assert_eq!(proxies[0]["service"], "frontend");

    for p in [&delta, &sotw] {
        wait::wait_until("the proxy to route to the applied service", || async {
            p.get("http://echo:8080/x").await.upstream() == Some("a")
        })
        .await;
    }
    // The control plane's metrics saw the streams and the pushes.
    let metrics = cp.metrics().await;
    assert!(metrics.contains("outrider_xds_connected_proxies 2"), "{metrics}");
    assert!(metrics.contains("outrider_xds_pushes_total{type=\"Cluster\"}"), "{metrics}");
    assert!(metrics.contains("outrider_xds_push_latency_seconds_count"), "{metrics}");
    delta.shutdown().await;
    sotw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_is_refused_naming_the_field_and_changes_nothing() {
    let data = TempDir::new("cp-data");
    let cp = ControlPlane::start(data.path());
    let a = upstream::http1().name("a").start().await;
    let proxy = MeshProxy::start(&cp.xds_url(), "p", "frontend", Protocol::Delta).await;
    let version = cp.apply(&service(&a)).await;
    let before = cp.wait_converged(&version, 1).await["version"].clone();

    let bad = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: echo}\nspec:\n  service: echo\n  connectTimeout: 1s\n  loadBalancer: fastest\n";
    let r = cp.call("PUT", "/v1/policies", bad, true, None).await;
    assert_eq!(r.status, 400, "{}", r.json);
    let e = &r.json["errors"][0];
    assert_eq!(e["field"], "spec.loadBalancer", "{}", r.json);
    assert_eq!(e["kind"], "TrafficPolicy");
    assert!(e["message"].as_str().unwrap().contains("fastest"), "{}", r.json);

    // A policy for a service that does not exist is refused as a whole set.
    let dangling = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: nope}\nspec: {service: nope}\n";
    let r = cp.call("POST", "/v1/policies", dangling, true, None).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["errors"][0]["field"], "spec.service", "{}", r.json);

    // Without the token nothing is written either.
    let r = cp.call("PUT", "/v1/policies", &service(&a), false, None).await;
    assert_eq!(r.status, 401);

    // Nothing changed: same version, same documents, traffic as before.
    let listed = cp.call("GET", "/v1/policies", "", false, None).await;
    let kinds: Vec<&str> =
        listed.json["items"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service"]);
    assert_eq!(cp.status().await["version"], before);
    assert_eq!(proxy.get("http://echo:8080/").await.upstream(), Some("a"));
    // The dry run says what would change without changing it; it needs the token.
    let anonymous = cp.call("POST", "/v1/validate", &service(&a).replace("8080", "8081"), false, None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.json);
    let dry = cp.call("POST", "/v1/validate", &service(&a).replace("8080", "8081"), true, None).await;
    assert_eq!(dry.status, 200, "{}", dry.json);
    assert_eq!(dry.json["changes"][0]["action"], "updated");
    assert_eq!(cp.status().await["version"], before);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_with_a_stale_version_get_409() {
    let data = TempDir::new("cp-data");
    let cp = ControlPlane::start(data.path());
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    cp.apply(&service(&a)).await;
    let read = cp.call("GET", "/v1/policies/Service/echo", "", false, None).await;
    let version = read.etag.clone().expect("an ETag");
    assert_eq!(read.json["resourceVersion"].to_string(), version);

    // Two writers read the same version and write at once: exactly one wins.
    let (first, second) = (service(&a).replace("protocol: http", "protocol: http2"), service(&b));
    let (r1, r2) = tokio::join!(
        cp.call("PUT", "/v1/policies", &first, true, Some(&version)),
        cp.call("PUT", "/v1/policies", &second, true, Some(&version)),
    );
    let mut statuses = [r1.status.as_u16(), r2.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", r1.json, r2.json);
    // DELETE with a stale version is refused too; with the current one it works.
    let stale = cp.call("DELETE", "/v1/policies/Service/echo", "", true, Some(&version)).await;
    assert_eq!(stale.status, 409);
    let now = cp.call("GET", "/v1/policies/Service/echo", "", false, None).await.etag.unwrap();
    let deleted = cp.call("DELETE", "/v1/policies/Service/echo", "", true, Some(&now)).await;
    assert_eq!(deleted.status, 200, "{}", deleted.json);
    assert_eq!(cp.call("GET", "/v1/policies/Service/echo", "", false, None).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_serves_exactly_what_it_had() {
    let data = TempDir::new("cp-data");
    let mut cp = ControlPlane::start(data.path());
    let a = upstream::http1().name("a").start().await;
    let tp = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: echo}\nspec: {service: echo, connectTimeout: 2s, loadBalancer: round-robin}\n";
    let version = cp.apply(&policy::docs(&[service(&a), tp.to_owned()])).await;
    let before = cp.call("GET", "/v1/policies", "", false, None).await;
    cp.restart();
    let after = cp.call("GET", "/v1/policies", "", false, None).await;
    assert_eq!(before.json, after.json);
    assert_eq!(cp.status().await["policyVersion"], version.as_str(), "the same set gives the same xDS version");
    // A fresh proxy gets the restored config.
    let proxy = MeshProxy::start(&cp.xds_url(), "late", "frontend", Protocol::Sotw).await;
    proxy.wait_ready().await;
    assert_eq!(proxy.get("http://echo:8080/").await.upstream(), Some("a"));
    proxy.shutdown().await;
}

/// A client that rejects every cluster update.
struct RejectClusters;

impl outrider_xds::ads::Handler for RejectClusters {
    fn update(&self, update: &outrider_xds::ads::Update<'_>) -> Result<(), String> {
        if update.type_url == outrider_xds::resources::CLUSTER_TYPE_URL
            && update.resources.contains_key("outbound|8080||echo")
        {
            return Err("Cluster \"outbound|8080||echo\": lb_policy MAGLEV is not supported".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_visible_in_status_with_its_error_while_others_ack() {
    let data = TempDir::new("cp-data");
    let cp = ControlPlane::start(data.path());
    let a = upstream::http1().name("a").start().await;
    let proxy = MeshProxy::start(&cp.xds_url(), "good", "frontend", Protocol::Delta).await;
    for protocol in [outrider_xds::ads::Protocol::Delta, outrider_xds::ads::Protocol::Sotw] {
        let node =
            envoy_types::pb::envoy::config::core::v3::Node { id: format!("picky-{protocol:?}"), ..Default::default() };
        let mut config = outrider_xds::ads::ClientConfig::new(cp.xds_url(), node);
        config.protocol = protocol;
        let client = outrider_xds::ads::AdsClient::new(config);
        tokio::spawn(client.run(Arc::new(RejectClusters)));
    }
    let version = cp.apply(&service(&a)).await;
    let status = wait::wait_for("the NACKs to show in /v1/status", || async {
        let s = cp.status().await;
        let proxies = s["proxies"].as_array()?.clone();
        let nacked = proxies.iter().filter(|p| p["types"]["Cluster"]["nack"]["version"] == version.as_str()).count();
        (nacked == 2).then_some(s)
    })
    .await;
    for p in status["proxies"].as_array().unwrap() {
        let cluster = &p["types"]["Cluster"];
        if p["nodeId"] == "good" {
            continue;
        }
        assert_eq!(cluster["nack"]["version"], version.as_str(), "{p}");
        assert!(cluster["nack"]["error"].as_str().unwrap().contains("MAGLEV"), "{p}");
        assert_ne!(cluster["acked"], version.as_str(), "{p}");
    }
    let metrics = cp.metrics().await;
    assert!(metrics.contains("outrider_xds_nacks_total{type=\"Cluster\"} 2"), "{metrics}");
    // The well-behaved proxy ACKed and routes.
    wait::wait_until("the good proxy to route", || async {
        proxy.get("http://echo:8080/").await.upstream() == Some("a")
    })
    .await;
    proxy.shutdown().await;
}

/// Records whether a cluster update arrived.
#[derive(Default)]
struct Seen(std::sync::atomic::AtomicBool);

impl outrider_xds::ads::Handler for Seen {
    fn update(&self, update: &outrider_xds::ads::Update<'_>) -> Result<(), String> {
        if update.type_url == outrider_xds::resources::CLUSTER_TYPE_URL && !update.resources.is_empty() {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ads_client_decodes_responses_up_to_its_limit_and_names_a_larger_one() {
    use outrider_xds::ads::{AdsClient, AdsError, ClientConfig, DEFAULT_MAX_MESSAGE, Protocol as Ads};
    let data = TempDir::new("cp-decode-limit");
    let cp = ControlPlane::start(data.path());
    let services: Vec<String> = (0..40)
        .map(|i| policy::service(&format!("svc-{i}")).endpoint(format!("127.0.0.1:{}", 1000 + i)).yaml())
        .collect();
    cp.apply(&policy::docs(&services)).await;
    let node = envoy_types::pb::envoy::config::core::v3::Node { id: "limit".into(), ..Default::default() };

    // 4 KiB holds a few clusters, not forty: the stream fails with OUT_OF_RANGE.
    let mut small = ClientConfig::new(cp.xds_url(), node.clone());
    small.protocol = Ads::Sotw;
    small.max_message = 4 << 10;
    let mut delivered = false;
    let result =
        wait::within("the stream to fail", AdsClient::new(small).run_once(&Seen::default(), &mut delivered)).await;
    let Err(AdsError::Stream(status)) = result else { panic!("not refused: {result:?}") };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("4096"), "the message names the limit: {status:?}");

    // The default takes it.
    let mut default = ClientConfig::new(cp.xds_url(), node);
    default.protocol = Ads::Sotw;
    assert_eq!(default.max_message, DEFAULT_MAX_MESSAGE);
    let seen = std::sync::Arc::new(Seen::default());
    let handler = seen.clone();
    let task = tokio::spawn(async move {
        let mut delivered = false;
        let _ = AdsClient::new(default).run_once(handler.as_ref(), &mut delivered).await;
    });
    wait::wait_until("the clusters to arrive", || async { seen.0.load(std::sync::atomic::Ordering::SeqCst) }).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_a_sidecar_whose_service_is_not_in_the_config() {
    let data = TempDir::new("cp-missing-service");
    let cp = ControlPlane::start(data.path());
    let version = cp.apply(&policy::service("echo").yaml()).await;
    let proxy = MeshProxy::start(&cp.xds_url(), "reviews-1", "reviews", Protocol::Delta).await;
    let status = cp.wait_converged(&version, 1).await;
    assert_eq!(status["proxies"][0]["serviceMissing"], true, "{status}");
    let mut cmd = tokio::process::Command::new(outrider_tests::control_plane::outrider_bin());
    cmd.args(["status", "--server", &format!("http://{}", cp.api)]);
    let out = outrider_tests::binary::run_to_exit(cmd).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("SERVICE MISSING reviews-1: service \"reviews\" is not in the config"), "{table}");

    let version =
        cp.apply(&policy::docs(&[policy::service("echo").yaml(), policy::service("reviews").port(9080).yaml()])).await;
    let status = cp.wait_converged(&version, 1).await;
    assert_eq!(status["proxies"][0]["serviceMissing"], false, "{status}");
    proxy.shutdown().await;
}
