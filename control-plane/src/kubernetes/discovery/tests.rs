use super::*;

use serde_json::json;

fn naming() -> Naming {
    Naming { cluster_domain: "cluster.local".into(), trust_domain: "td.local".into() }
}

fn key(ns: &str, name: &str) -> ObjectKey {
    (ns.to_owned(), name.to_owned())
}

fn service(value: serde_json::Value) -> Option<ServiceInfo> {
    compact_service(&serde_json::from_value(value).unwrap())
}

fn slice(value: serde_json::Value) -> SliceInfo {
    compact_slice(&serde_json::from_value(value).unwrap()).unwrap()
}

fn reviews() -> ServiceInfo {
    service(json!({"metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]}}))
    .unwrap()
}

fn endpoint(ip: &str, ready: bool, serving: bool, terminating: bool, pod: Option<&str>) -> serde_json::Value {
    let mut e =
        json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": terminating}});
    if let Some(pod) = pod {
        e["targetRef"] = json!({"kind": "Pod", "name": pod, "namespace": "shop"});
    }
    e
}

fn reviews_slice(endpoints: Vec<serde_json::Value>) -> SliceInfo {
    slice(json!({"metadata": {"name": "reviews-1", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints}))
}

fn pod(labels: serde_json::Value, sidecar: bool) -> PodInfo {
    let mut spec = json!({"serviceAccountName": "reviews-sa", "containers": [{"name": "app"}]});
    if sidecar {
        spec["initContainers"] = json!([{"name": SIDECAR_CONTAINER, "restartPolicy": "Always"}]);
    }
    compact_pod(&serde_json::from_value(json!({"metadata": {"labels": labels}, "spec": spec})).unwrap()).unwrap()
}

fn addresses(s: &Service) -> Vec<String> {
    s.spec.endpoints.iter().map(|e| e.address.to_string()).collect()
}

#[test]
fn a_single_port_service_is_named_name_dot_namespace_with_its_hosts_and_cluster_ip() {
    let services = HashMap::from([(key("shop", "reviews"), reviews())]);
    let slices =
        HashMap::from([(key("shop", "reviews-1"), reviews_slice(vec![endpoint("10.1.0.5", true, true, false, None)]))]);
    let d = discover(&naming(), &services, &slices, &HashMap::new());
    let s = &d.services["reviews.shop"];
    assert_eq!(s.metadata.namespace, "shop");
    assert_eq!(s.spec.port, 9080);
    assert_eq!(s.spec.protocol, Protocol::Http);
    assert_eq!(s.spec.addresses, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    // Endpoints listen on the target port named in the slice.
    assert_eq!(addresses(s), ["10.1.0.5:8080"]);
    for host in [
        "reviews",
        "reviews:9080",
        "reviews.shop",
        "reviews.shop:9080",
        "reviews.shop.svc",
        "reviews.shop.svc:9080",
        "reviews.shop.svc.cluster.local",
        "reviews.shop.svc.cluster.local:9080",
    ] {
        assert!(s.spec.hosts.iter().any(|h| h == host), "{host} missing from {:?}", s.spec.hosts);
    }
    assert_eq!(d.by_kube_name[&key("shop", "reviews")], ["reviews.shop"]);
}

#[test]
fn the_short_name_is_left_out_when_two_namespaces_share_it() {
    let mut other = reviews();
    other.cluster_ips = vec!["10.96.0.11".parse().unwrap()];
    let services = HashMap::from([(key("shop", "reviews"), reviews()), (key("test", "reviews"), other)]);
    let d = discover(&naming(), &services, &HashMap::new(), &HashMap::new());
    for s in d.services.values() {
        assert!(!s.spec.hosts.iter().any(|h| h == "reviews" || h == "reviews:9080"), "{:?}", s.spec.hosts);
    }
    assert!(d.services["reviews.test"].spec.hosts.iter().any(|h| h == "reviews.test"));
}

#[test]
fn each_port_of_a_multi_port_service_is_a_service_and_port_80_gets_the_bare_hosts() {
    let info = service(json!({"metadata": {"name": "api", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.12", "ports": [
            {"name": "grpc", "port": 9090, "targetPort": 9090},
            {"name": "http-web", "port": 80, "targetPort": 8080},
            {"name": "dns", "port": 53, "protocol": "UDP"}]}}))
    .unwrap();
    assert_eq!(info.ports.len(), 2, "UDP ports are left out");
    let services = HashMap::from([(key("shop", "api"), info)]);
    let d = discover(&naming(), &services, &HashMap::new(), &HashMap::new());
    let grpc = &d.services["api.shop:9090"];
    let web = &d.services["api.shop:80"];
    assert_eq!(grpc.spec.protocol, Protocol::Grpc);
    assert_eq!(web.spec.protocol, Protocol::Http);
    assert!(web.spec.hosts.iter().any(|h| h == "api.shop"));
    assert!(!grpc.spec.hosts.iter().any(|h| h == "api.shop"));
    assert!(grpc.spec.hosts.iter().any(|h| h == "api.shop:9090"));
    assert_eq!(d.by_kube_name[&key("shop", "api")], ["api.shop:9090", "api.shop:80"]);
}

#[test]
fn headless_and_external_name_services_are_not_routed() {
    assert!(
        service(json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}))
            .is_none()
    );
    assert!(
        service(json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "example.com"}}))
            .is_none()
    );
}

#[test]
fn ready_endpoints_are_used_and_terminating_serving_ones_only_when_none_is_ready() {
    let services = HashMap::from([(key("shop", "reviews"), reviews())]);
    let mixed = reviews_slice(vec![
        endpoint("10.1.0.1", true, true, false, None),
        endpoint("10.1.0.2", false, true, true, None),
        endpoint("10.1.0.3", false, false, false, None),
        endpoint("10.1.0.4", false, false, true, None),
    ]);
    let slices = HashMap::from([(key("shop", "reviews-1"), mixed)]);
    let d = discover(&naming(), &services, &slices, &HashMap::new());
    assert_eq!(addresses(&d.services["reviews.shop"]), ["10.1.0.1:8080"]);

    let draining = reviews_slice(vec![
        endpoint("10.1.0.2", false, true, true, None),
        endpoint("10.1.0.3", false, false, false, None),
        endpoint("10.1.0.4", false, false, true, None),
    ]);
    let slices = HashMap::from([(key("shop", "reviews-1"), draining)]);
    let d = discover(&naming(), &services, &slices, &HashMap::new());
    assert_eq!(addresses(&d.services["reviews.shop"]), ["10.1.0.2:8080"]);
}

#[test]
fn endpoints_carry_their_pods_labels_and_meshed_pods_their_identity() {
    let services = HashMap::from([(key("shop", "reviews"), reviews())]);
    let slices = HashMap::from([(
        key("shop", "reviews-1"),
        reviews_slice(vec![
            endpoint("10.1.0.1", true, true, false, Some("reviews-v1")),
            endpoint("10.1.0.2", true, true, false, Some("reviews-v2")),
        ]),
    )]);
    let pods = HashMap::from([
        (key("shop", "reviews-v1"), pod(json!({"version": "v1"}), false)),
        (key("shop", "reviews-v2"), pod(json!({"version": "v2"}), true)),
    ]);
    let d = discover(&naming(), &services, &slices, &pods);
    let eps = &d.services["reviews.shop"].spec.endpoints;
    assert_eq!(eps[0].labels["version"], "v1");
    assert!(!eps[0].meshed && eps[0].identity.is_none());
    assert_eq!(eps[1].labels["version"], "v2");
    assert!(eps[1].meshed);
    assert_eq!(eps[1].identity.as_deref(), Some("spiffe://td.local/ns/shop/sa/reviews-sa"));
}

#[test]
fn slices_of_other_ports_or_services_and_fqdn_slices_do_not_count() {
    let fqdn: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "x",
        "labels": {"kubernetes.io/service-name": "reviews"}}, "addressType": "FQDN", "endpoints": []}))
    .unwrap();
    assert!(compact_slice(&fqdn).is_none());
    let services = HashMap::from([(key("shop", "reviews"), reviews())]);
    let other_port = slice(json!({"metadata": {"name": "reviews-2", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4", "ports": [{"name": "metrics", "port": 9100}],
        "endpoints": [endpoint("10.1.0.9", true, true, false, None)]}));
    let other_service = slice(json!({"metadata": {"name": "ratings-1", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "ratings"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": [endpoint("10.1.0.8", true, true, false, None)]}));
    let slices = HashMap::from([(key("shop", "reviews-2"), other_port), (key("shop", "ratings-1"), other_service)]);
    let d = discover(&naming(), &services, &slices, &HashMap::new());
    assert!(d.services["reviews.shop"].spec.endpoints.is_empty());
}

#[test]
fn the_mtls_annotation_sets_the_inbound_mode() {
    let strict = service(json!({"metadata": {"name": "a", "annotations": {"outrider.io/mtls": "strict"}},
        "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}}))
    .unwrap();
    assert_eq!(strict.mtls, Some(MtlsMode::Strict));
    let bad = service(json!({"metadata": {"name": "a", "annotations": {"outrider.io/mtls": "yes"}},
        "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}}))
    .unwrap();
    assert_eq!(bad.mtls, None);
}
