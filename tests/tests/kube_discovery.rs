//! `outrider control-plane --kubernetes` against a real API server (tests/src/kube.rs): Services,
//! EndpointSlices, Pods and `outrider.io` objects written as kubectl would become the config of
//! real `outrider-proxy` processes, and requests through them reach the endpoints the cluster
//! names. Skips when the test bed's binaries are absent (tests/k8s/build-testbed.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use outrider_control_plane::kubernetes::defaults::LEASE_DURATION;
use outrider_tests::binary::ProxyProcess;
use outrider_tests::client::{self, Client};
use outrider_tests::control_plane::outrider_bin;
use outrider_tests::harness::TempDir;
use outrider_tests::kube::ApiServer;
use outrider_tests::kube_mesh::{self, PodNetwork, Replica, SYSTEM, accepted_condition, apply, delete, namespace};
use outrider_tests::upstream::{self, Upstream};
use outrider_tests::wait;
use outrider_xds::Protocol;
use serde_json::{Value, json};

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices";
const POLICIES: &str = "/apis/outrider.io/v1/namespaces/shop/trafficpolicies";

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"serviceAccountName": "reviews", "containers": [{"name": "app", "image": "localhost/app:dev"}]}})
}

/// One slice per endpoint: each upstream listens on a port of its own at the pod network's
/// address (the slice's port), as named target ports resolve per pod.
fn slice(name: &str, service: &str, port_name: &str, up: &Upstream, pod: &str, conditions: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": up.addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [up.addr.ip().to_string()], "conditions": conditions,
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}}]})
}

fn ready() -> Value {
    json!({"ready": true, "serving": true, "terminating": false})
}

async fn get(client: &Client, host: &str) -> client::Reply {
    client::send(client, client::get(&format!("http://{host}/"))).await
}

/// The upstreams that answered `n` requests to `host` (name → count); panics on a non-200.
async fn spread(client: &Client, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = get(client, host).await;
        assert_eq!(r.status, 200, "{host}: {} {}", r.status, r.text());
        *seen.entry(r.upstream().unwrap_or("?").to_owned()).or_insert(0) += 1;
    }
    seen
}

/// Wait until `n` requests in a row to `host` are answered by `want` alone.
async fn wait_only(client: &Client, host: &str, want: &Upstream) {
    wait::wait_until(&format!("{host} to be served by {} alone", want.name), || async {
        for _ in 0..10 {
            let r = get(client, host).await;
            if r.status != 200 || r.upstream() != Some(want.name.as_str()) {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_endpoint_slices_pods_and_policies_reach_real_sidecars() {
    let Some(pods) = PodNetwork::create() else { return };
    let Some(api) = ApiServer::start().await else { return };
    namespace(&api, SYSTEM).await;
    namespace(&api, "shop").await;
    kube_mesh::install_crds(&api).await;
    api.create(
        "/api/v1/namespaces/shop/serviceaccounts",
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reviews"}}),
    )
    .await;

    let v1 = pods.upstream(upstream::http1().name("reviews-v1").start()).await;
    let v2 = pods.upstream(upstream::http1().name("reviews-v2").start()).await;
    let old = pods.upstream(upstream::http1().name("reviews-old").start()).await;
    let gone = pods.upstream(upstream::http1().name("reviews-gone").start()).await;
    let ratings = pods.upstream(upstream::h2().name("ratings").start()).await;
    for (name, version) in [("reviews-v1", "v1"), ("reviews-v2", "v2"), ("reviews-old", "v2"), ("reviews-gone", "v2")] {
        api.create("/api/v1/namespaces/shop/pods", &pod(name, json!({"app": "reviews", "version": version}))).await;
    }
    api.create("/api/v1/namespaces/shop/pods", &pod("ratings-0", json!({"app": "ratings"}))).await;
    // reviews: HTTP by its port name; ratings: h2c by appProtocol (its upstream speaks only
    // HTTP/2), plus a gRPC port by name and an opaque port.
    api.create(
        "/api/v1/namespaces/shop/services",
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews"},
            "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .await;
    api.create(
        "/api/v1/namespaces/shop/services",
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ratings"},
            "spec": {"selector": {"app": "ratings"}, "ports": [
                {"name": "web", "port": 80, "appProtocol": "kubernetes.io/h2c"},
                {"name": "grpc-api", "port": 9090},
                {"name": "db", "port": 5432}]}}),
    )
    .await;
    api.create(
        "/api/v1/namespaces/shop/services",
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "details"},
            "spec": {"ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    for (name, up, pod, conditions) in [
        ("reviews-v1", &v1, "reviews-v1", ready()),
        ("reviews-v2", &v2, "reviews-v2", ready()),
        // Being deleted but still serving: used only once no endpoint is ready.
        ("reviews-old", &old, "reviews-old", json!({"ready": false, "serving": true, "terminating": true})),
        // Neither ready nor serving: never used.
        ("reviews-gone", &gone, "reviews-gone", json!({"ready": false, "serving": false, "terminating": true})),
    ] {
        api.create(SLICES, &slice(name, "reviews", "http", up, pod, conditions)).await;
    }
    api.create(SLICES, &slice("ratings-web", "ratings", "web", &ratings, "ratings-0", ready())).await;

    let cp = Replica::start(&api, "cp-0", LEASE_DURATION).await;
    let set = cp.cluster().sets().borrow().clone();
    assert_eq!(set.services["ratings.shop:80"].spec.protocol, Protocol::Http2);
    assert_eq!(set.services["ratings.shop:9090"].spec.protocol, Protocol::Grpc);
    assert_eq!(set.services["ratings.shop:5432"].spec.protocol, Protocol::Tcp);
    assert_eq!(set.services["reviews.shop"].spec.protocol, Protocol::Http);
    let labels = &set.services["reviews.shop"].spec.endpoints[0].labels;
    assert_eq!(labels.get("app").map(String::as_str), Some("reviews"), "endpoint labels from the pod: {labels:?}");

    let sidecar: ProxyProcess = kube_mesh::sidecar(cp.xds, "caller").await;
    let client = client::http1(sidecar.addrs.outbound);
    wait::wait_until("the sidecar to route reviews", || async { get(&client, "reviews").await.status == 200 }).await;

    // Every name the cluster's DNS gives the Service routes to it.
    for host in [
        "reviews",
        "reviews.shop",
        "reviews.shop.svc",
        "reviews.shop.svc.cluster.local",
        "reviews.shop.svc.cluster.local:80",
        "reviews.shop:80",
    ] {
        let r = get(&client, host).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert!(matches!(r.upstream(), Some("reviews-v1" | "reviews-v2")), "{host} answered by {:?}", r.upstream());
    }
    // Ready endpoints only while there are some (which of the two the balancer prefers is its
    // business; the set names both).
    let endpoints: Vec<_> = set.services["reviews.shop"].spec.endpoints.iter().map(|e| e.address).collect();
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert!(endpoints.contains(&v1.addr) && endpoints.contains(&v2.addr), "{endpoints:?}");
    let seen = spread(&client, "reviews.shop", 40).await;
    assert!(seen.keys().all(|k| k == "reviews-v1" || k == "reviews-v2"), "{seen:?}");
    assert_eq!(old.request_count() + gone.request_count(), 0);
    // HTTP/2 to the upstream by appProtocol.
    let r = get(&client, "ratings.shop").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), Some("ratings"));
    assert_eq!(ratings.last().version, http::Version::HTTP_2);

    // A TrafficPolicy object: subsets select on the pods' labels.
    let canary = json!({"apiVersion": "outrider.io/v1", "kind": "TrafficPolicy", "metadata": {"name": "reviews"},
        "spec": {"service": "reviews", "routes": [{"split": [{"subset": {"version": "v2"}, "weight": 100}]}]}});
    apply(&api, POLICIES, &canary).await;
    wait_only(&client, "reviews", &v2).await;
    let accepted = accepted_condition(&api, &format!("{POLICIES}/reviews")).await;
    assert_eq!(accepted["status"], "True", "{accepted}");
    // Changed in place: the sidecar follows.
    let mut to_v1 = canary.clone();
    to_v1["spec"]["routes"][0]["split"][0]["subset"]["version"] = json!("v1");
    apply(&api, POLICIES, &to_v1).await;
    wait_only(&client, "reviews", &v1).await;

    // A rejected object: its condition carries what `outrider validate` prints for the same
    // document, and the sidecar keeps what it had.
    let broken = json!({"apiVersion": "outrider.io/v1", "kind": "TrafficPolicy", "metadata": {"name": "details"},
        "spec": {"service": "details", "routes": [{"split": [{"weight": 60}, {"weight": 30}]}]}});
    apply(&api, POLICIES, &broken).await;
    let rejected = accepted_condition(&api, &format!("{POLICIES}/details")).await;
    assert_eq!(rejected["status"], "False", "{rejected}");
    assert_eq!(rejected["reason"], "Invalid", "{rejected}");
    let message = rejected["message"].as_str().unwrap().to_owned();
    let dir = TempDir::new("outrider-kube-validate");
    let file = dir.path().join("details.yaml");
    std::fs::write(
        &file,
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: details.shop, namespace: shop}\nspec: {port: 80}\n---\n\
         apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: details, namespace: shop}\n\
         spec:\n  service: details.shop\n  routes:\n  - split: [{weight: 60}, {weight: 30}]\n",
    )
    .unwrap();
    let out = std::process::Command::new(outrider_bin()).args(["validate", "-f"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(!message.is_empty());
    for line in message.lines() {
        assert!(printed.contains(line), "the condition's {line:?} is what outrider validate prints:\n{printed}");
    }
    assert_eq!(get(&client, "ratings.shop").await.upstream(), Some("ratings"));
    wait_only(&client, "reviews", &v1).await;

    // The policy deleted; then the ready pods go away: the serving-but-terminating endpoint
    // takes the traffic, the one that is not serving never does.
    delete(&api, &format!("{POLICIES}/reviews")).await;
    for (name, up, pod) in [("reviews-v1", &v1, "reviews-v1"), ("reviews-v2", &v2, "reviews-v2")] {
        let gone = json!({"ready": false, "serving": false, "terminating": true});
        apply(&api, SLICES, &slice(name, "reviews", "http", up, pod, gone)).await;
    }
    wait_only(&client, "reviews.shop.svc", &old).await;
    assert_eq!(gone.request_count(), 0);

    // No endpoint left: the proxy's own 503, not a hang.
    delete(&api, &format!("{SLICES}/reviews-old")).await;
    let r = wait::wait_for("reviews to have no endpoint", || async {
        let r = get(&client, "reviews").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(r.header("x-outrider-local-reply"), Some("no-healthy-upstream"), "{r:?}");
}
