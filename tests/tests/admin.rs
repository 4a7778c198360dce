//! The admin, metrics and health servers: readiness, config dump, clusters, and a
//! Prometheus exposition that `promtool` accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::policy::{cluster_name, docs, service};
use outrider_tests::upstream::{self, Upstream};
use outrider_tests::{ProxyHarness, client, prom};
use serde_json::Value;

async fn setup() -> (Upstream, Upstream, ProxyHarness) {
    let v1 = upstream::http1().name("v1").start().await;
    let v2 = upstream::http1().name("v2").start().await;
    let policy = docs(&[
        service("echo")
            .address("127.100.0.5")
            .endpoint_labeled(v1.addr, &[("version", "v1")])
            .endpoint_labeled(v2.addr, &[("version", "v2")])
            .yaml(),
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: echo}\nspec:\n  service: echo\n  \
         loadBalancer: round-robin\n  routes:\n    - name: canary\n      match: {headers: {x-canary: \"true\"}}\n      \
         split: [{subset: {version: v2}, weight: 100}]\n    - name: main\n      match: {pathPrefix: /}\n      \
         split: [{subset: {version: v1}, weight: 90}, {subset: {version: v2}, weight: 10}]\n"
            .to_string(),
        service("store").protocol("tcp").port(9000).address("127.100.0.6").endpoint(v1.addr).yaml(),
    ]);
    let proxy = ProxyHarness::start(&policy).await;
    (v1, v2, proxy)
}

fn json(r: &client::Reply) -> Value {
    r.assert_status(200);
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_live_and_health() {
    let (_v1, _v2, proxy) = setup().await;
    assert_eq!(proxy.admin("GET", "/ready").await.assert_status(200).text().trim(), "ready");
    proxy.admin("GET", "/live").await.assert_status(200);
    let health = client::http1(proxy.addrs.health);
    client::send(&health, client::get("http://health/healthz/ready")).await.assert_status(200);
    proxy.admin("POST", "/ready").await.assert_status(405);
    proxy.admin("GET", "/nope").await.assert_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// `POST /drain` starts the drain (the binary's run loop then closes the listeners, as on
/// SIGTERM: drain.rs): readiness turns off and a connection made meanwhile is answered once
/// with `Connection: close`.
async fn drain_over_the_admin_api_turns_readiness_off_and_closes_new_connections_after_one_answer() {
    let (_v1, _v2, proxy) = setup().await;
    proxy.get("http://echo:8080/").await.assert_status(200);
    proxy.admin("POST", "/drain").await.assert_status(200);
    proxy.admin("GET", "/ready").await.assert_status(503);
    let mut conn = client::h1_connection(proxy.addrs.outbound).await;
    let r = client::send_h1(&mut conn, client::h1_get("echo:8080", "/late")).await;
    r.assert_status(200);
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_lists_the_files_resources_with_versions() {
    let (v1, v2, proxy) = setup().await;
    let dump = json(&proxy.admin("GET", "/config_dump").await);
    for t in ["listeners", "routes", "clusters", "endpoints"] {
        let v = dump["versions"][t].as_str().unwrap_or_default();
        assert!(!v.is_empty(), "versions.{t} is set: {}", dump["versions"]);
        assert_eq!(dump["config"][t]["version"].as_str(), Some(v), "config.{t}.version matches versions.{t}");
        for resource in dump["config"][t]["resources"].as_array().expect("a list of resources") {
            // From a policy file every resource has the file's version.
            assert_eq!(resource["version"].as_str(), Some(v), "config.{t}: {resource}");
        }
    }
    let text = dump.to_string();
    for needle in [
        cluster_name("echo", 8080),
        cluster_name("store", 9000),
        "\"canary\"".into(),
        "\"main\"".into(),
        "127.100.0.5".into(),
        v1.endpoint(),
        v2.endpoint(),
    ] {
        assert!(text.contains(&needle), "/config_dump mentions {needle}: {dump:#}");
    }
    let clusters = dump["config"]["clusters"]["resources"].as_array().expect("a list of clusters");
    let echo = clusters.iter().find(|c| c["name"] == cluster_name("echo", 8080).as_str()).expect("the echo cluster");
    assert_eq!(echo["lb_policy"], "round-robin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_show_endpoints() {
    let (v1, v2, proxy) = setup().await;
    let clusters = json(&proxy.admin("GET", "/clusters").await);
    let list = clusters["clusters"].as_array().expect("clusters[]");
    let echo = list.iter().find(|c| c["service"] == "echo").expect("the echo cluster");
    let addrs: Vec<&str> = echo["endpoints"].as_array().unwrap().iter().filter_map(|e| e["address"].as_str()).collect();
    assert_eq!(addrs.len(), 2, "{echo:#}");
    assert!(addrs.contains(&v1.endpoint().as_str()) && addrs.contains(&v2.endpoint().as_str()), "{echo:#}");
    let store = list.iter().find(|c| c["service"] == "store").expect("the store cluster");
    assert_eq!(store["endpoints"][0]["address"].as_str(), Some(v1.endpoint().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_name_the_families() {
    let (_v1, _v2, proxy) = setup().await;
    proxy.get("http://echo:8080/").await.assert_status(200);
    proxy.get("http://nope:1/").await.assert_status(404);
    let text = proxy.metrics().await;
    let admin_text = proxy.admin("GET", "/metrics").await.assert_status(200).text();
    assert!(admin_text.contains("outrider_requests_total"), "the admin port serves /metrics too");

    for name in [
        "outrider_requests_total",
        "outrider_request_duration_seconds_bucket",
        "outrider_request_duration_seconds_count",
        "outrider_tcp_connections_open",
        "outrider_xds_updates_total",
        "outrider_config_version",
    ] {
        assert!(prom::samples(&text).iter().any(|s| s.name == name), "{name} is exported:\n{text}");
    }
    assert!(
        prom::sum(&text, "outrider_requests_total", &[("direction", "outbound"), ("service", "echo"), ("code", "200")])
            >= 1.0,
        "the request to echo is counted:\n{text}"
    );
    assert!(prom::sum(&text, "outrider_requests_total", &[("code", "404")]) >= 1.0, "{text}");
    assert!(prom::sum(&text, "outrider_xds_updates_total", &[("result", "accepted")]) >= 1.0, "{text}");

    outrider_tests::prom::promtool_check("the proxy", &text).await;
}
