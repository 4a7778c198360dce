use super::*;

fn resources(endpoints: &[&str]) -> Resources {
    let eps: String = endpoints.iter().map(|e| format!("    - {{address: \"{e}\"}}\n")).collect();
    let yaml = format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  port: 8080\n  endpoints:\n{eps}"
    );
    outrider_xds::translate(&outrider_xds::load_str("t.yaml", &yaml).unwrap())
}

fn shared_of(snap: &Snapshot, addr: &str) -> Arc<EndpointShared> {
    let c = snap.clusters.values().next().unwrap();
    c.endpoints.items().iter().find(|e| e.addr.to_string() == addr).unwrap().shared.clone()
}

#[test]
fn endpoint_state_is_carried_and_survives_a_rejected_build() {
    let b = Builder::new();
    let (first, rejected) = b.build(&resources(&["127.0.0.1:1", "127.0.0.1:2"]));
    assert!(rejected.is_empty());
    let e2 = shared_of(&first, "127.0.0.1:2");

    // A build that drops endpoint 2 but is rejected (an unsupported lb policy)
    // must not forget endpoint 2's state: the first snapshot stays in force.
    let mut bad = resources(&["127.0.0.1:1"]);
    let c = bad.clusters.iter_mut().find(|c| c.name != names::PASSTHROUGH_CLUSTER).unwrap();
    c.lb_policy = envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::Maglev as i32;
    c.load_balancing_policy = None;
    let (_, rejected) = b.build(&bad);
    assert!(!rejected.is_empty());

    let (third, rejected) = b.build(&resources(&["127.0.0.1:1", "127.0.0.1:2"]));
    assert!(rejected.is_empty());
    assert!(Arc::ptr_eq(&e2, &shared_of(&third, "127.0.0.1:2")), "EWMA, pool and health carried over");

    // An accepted build without endpoint 2 does drop it.
    b.build(&resources(&["127.0.0.1:1"]));
    let (fifth, _) = b.build(&resources(&["127.0.0.1:1", "127.0.0.1:2"]));
    assert!(!Arc::ptr_eq(&e2, &shared_of(&fifth, "127.0.0.1:2")));
}

/// Service `s` with endpoints v1 (port 1) and v2 (port 2), a `legacy` service, and a policy
/// for `s` with a canary split and the given breaker.
fn canary(breaker: &str) -> Resources {
    let yaml = format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  port: 8080\n  endpoints:\n\
         \x20   - {{address: \"127.0.0.1:1\", labels: {{version: v1}}}}\n\
         \x20   - {{address: \"127.0.0.1:2\", labels: {{version: v2}}}}\n---\n\
         apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: legacy}}\nspec:\n  port: 9090\n  endpoints:\n\
         \x20   - {{address: \"127.0.0.1:3\"}}\n---\n\
         apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: s}}\nspec:\n  service: s\n  \
         circuitBreaker: {breaker}\n  routes:\n    - match: {{pathPrefix: /}}\n      \
         split: [{{subset: {{version: v1}}, weight: 50}}, {{subset: {{version: v2}}, weight: 50}}]\n"
    );
    outrider_xds::translate(&outrider_xds::load_str("t.yaml", &yaml).unwrap())
}

fn splits(snap: &Snapshot) -> &[Split] {
    &snap.vhosts.get("s").unwrap().routes[0].splits
}

#[test]
fn each_split_gets_its_fallback_resolved_once_per_snapshot() {
    let (snap, rejected) = Builder::new().build(&canary("{fallback: {subset: {version: v1}}}"));
    assert!(rejected.is_empty(), "{rejected:?}");
    let [v1, v2] = splits(&snap) else { panic!("two splits") };
    assert!(v1.fallback.is_none(), "the v1 split is the fallback itself: no fallback");
    let fb = v2.fallback.as_ref().expect("the v2 split falls back to v1");
    assert_eq!(&*fb.cluster.name, "outbound|8080||s");
    let ports: Vec<u16> = fb.endpoints.items().iter().map(|e| e.addr.port()).collect();
    assert_eq!(ports, [1]);

    let (snap, rejected) = Builder::new().build(&canary("{scope: service, fallback: {service: legacy}}"));
    assert!(rejected.is_empty(), "{rejected:?}");
    for split in splits(&snap) {
        let fb = split.fallback.as_ref().expect("both splits fall back to legacy");
        assert_eq!(&*fb.cluster.service, "legacy");
        assert_eq!(fb.endpoints.items().len(), 1);
    }
}

#[test]
fn a_fallback_to_a_cluster_the_config_lacks_is_rejected_and_the_rest_serves() {
    let mut res = canary("{fallback: {service: legacy}}");
    res.clusters.retain(|c| !c.name.ends_with("||legacy"));
    let (snap, rejected) = Builder::new().build(&res);
    // (legacy's own route is rejected too: its cluster is gone.)
    let r = rejected.iter().find(|r| r.type_name == "Cluster").expect("the cluster with the fallback is rejected");
    assert_eq!(r.name, "outbound|8080||s");
    assert!(r.reason.contains("fallback names cluster outbound|9090||legacy"), "{r}");
    assert!(splits(&snap).iter().all(|s| s.fallback.is_none()));
    assert_eq!(splits(&snap)[1].endpoints.items().len(), 1, "the route still serves");
}
