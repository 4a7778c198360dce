use super::*;

use crate::kubernetes::crds;
use crate::kubernetes::discovery::{Naming, ServiceInfo, discover};

fn services(list: &[(&str, &str, &[u16])]) -> Discovered {
    let mut infos = HashMap::new();
    for (i, (ns, name, ports)) in list.iter().enumerate() {
        let value = json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": format!("10.96.0.{}", i + 1),
                "ports": ports.iter().map(|p| json!({"name": format!("http-{p}"), "port": p})).collect::<Vec<_>>()}});
        let info: ServiceInfo =
            crate::kubernetes::discovery::compact_service(&serde_json::from_value(value).unwrap()).unwrap();
        infos.insert((ns.to_string(), name.to_string()), info);
    }
    let naming = Naming { cluster_domain: "cluster.local".into(), trust_domain: "td".into() };
    discover(&naming, &infos, &HashMap::new(), &HashMap::new())
}

fn object(created: &str, spec: Value) -> PolicyObject {
    PolicyObject { generation: 3, created: created.to_owned(), spec, accepted: None }
}

fn kind(name: &str) -> &'static Kind {
    crds::kind(name).unwrap()
}

fn objects(list: Vec<(&str, &str, PolicyObject)>) -> HashMap<ObjectKey, PolicyObject> {
    list.into_iter().map(|(ns, name, o)| ((ns.to_owned(), name.to_owned()), o)).collect()
}

fn verdict<'a>(a: &'a Assembled, kind: &str, ns: &str, name: &str) -> &'a Verdict {
    a.verdicts
        .iter()
        .find(|((k, n, m), _)| *k == kind && n == ns && m == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no verdict for {kind} {ns}/{name}: {:?}", a.verdicts))
}

#[test]
fn a_valid_policy_applies_to_its_namespaces_service_under_the_outrider_name() {
    let tps = objects(vec![(
        "shop",
        "reviews",
        object("2026-01-01T00:00:00Z", json!({"service": "reviews", "timeout": "2s", "retries": {"attempts": 3}})),
    )]);
    let a = assemble(services(&[("shop", "reviews", &[9080])]), &[(kind("TrafficPolicy"), &tps)], "outrider-system");
    let v = verdict(&a, "TrafficPolicy", "shop", "reviews");
    assert!(v.accepted, "{v:?}");
    assert_eq!(v.generation, 3);
    let policy = &a.set.traffic_policies["reviews.shop"];
    assert_eq!(policy.spec.service, "reviews.shop");
    assert_eq!(policy.spec.retries.as_ref().unwrap().attempts, 3);
    // The translation accepts the assembled set as it is.
    let resources = outrider_xds::translate(&a.set);
    assert!(resources.clusters.iter().any(|c| c.name == "outbound|9080||reviews.shop"));
}

#[test]
fn an_invalid_object_carries_the_message_outrider_validate_prints_and_does_not_keep_others_out() {
    let bad_spec = json!({"service": "reviews", "routes": [{"split": [{"weight": 60}, {"weight": 30}]}],
        "retries": {"attempts": 99}});
    let tps = objects(vec![
        ("shop", "bad", object("2026-01-01T00:00:00Z", bad_spec)),
        ("shop", "good", object("2026-01-02T00:00:00Z", json!({"service": "ratings", "timeout": "1s"}))),
    ]);
    let a = assemble(
        services(&[("shop", "reviews", &[9080]), ("shop", "ratings", &[9080])]),
        &[(kind("TrafficPolicy"), &tps)],
        "outrider-system",
    );
    let bad = verdict(&a, "TrafficPolicy", "shop", "bad");
    assert!(!bad.accepted);
    assert_eq!(bad.reason, "Invalid");
    assert!(verdict(&a, "TrafficPolicy", "shop", "good").accepted);
    assert!(a.set.traffic_policies.contains_key("ratings.shop"));
    assert!(!a.set.traffic_policies.contains_key("reviews.shop"));

    // The same document in a file, beside its Service, as `outrider validate` reads it.
    let file = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews.shop}\nspec: {port: 9080}\n---\n\
        apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: bad, namespace: shop}\n\
        spec: {service: reviews.shop, routes: [{split: [{weight: 60}, {weight: 30}]}], retries: {attempts: 99}}\n";
    let errors = outrider_xds::load_str("policy.yaml", file).unwrap_err();
    let printed = errors.to_string();
    let policy_errors: Vec<_> = errors.iter().filter(|e| e.kind.as_deref() == Some("TrafficPolicy")).collect();
    assert!(policy_errors.len() >= 2, "{printed}");
    for line in bad.message.lines() {
        assert!(printed.lines().any(|p| p.ends_with(&format!(": {line}"))), "{line:?} is not in:\n{printed}");
    }
    assert_eq!(bad.message.lines().count(), policy_errors.len(), "{}", bad.message);
}

#[test]
fn the_older_of_two_policies_for_one_service_wins_and_the_other_is_a_conflict() {
    let tps = objects(vec![
        ("shop", "newer", object("2026-01-02T00:00:00Z", json!({"service": "reviews"}))),
        ("shop", "older", object("2026-01-01T00:00:00Z", json!({"service": "reviews", "timeout": "9s"}))),
    ]);
    let a = assemble(services(&[("shop", "reviews", &[9080])]), &[(kind("TrafficPolicy"), &tps)], "ns");
    assert!(verdict(&a, "TrafficPolicy", "shop", "older").accepted);
    let newer = verdict(&a, "TrafficPolicy", "shop", "newer");
    assert_eq!(newer.reason, "Conflict");
    assert!(newer.message.contains("already has a TrafficPolicy (shop/older)"), "{}", newer.message);
    assert_eq!(a.set.traffic_policies["reviews.shop"].metadata.name, "older");
}

#[test]
fn policies_reach_only_their_own_namespace_and_each_port() {
    let tps = objects(vec![
        ("shop", "across", object("2026-01-01T00:00:00Z", json!({"service": "reviews.other"}))),
        ("shop", "api", object("2026-01-01T00:00:00Z", json!({"service": "api", "timeout": "1s"}))),
        ("test", "missing", object("2026-01-01T00:00:00Z", json!({"service": "api"}))),
    ]);
    let a = assemble(services(&[("shop", "api", &[80, 9090])]), &[(kind("TrafficPolicy"), &tps)], "ns");
    let across = verdict(&a, "TrafficPolicy", "shop", "across");
    assert!(!across.accepted && across.message.contains("another namespace"), "{across:?}");
    assert!(verdict(&a, "TrafficPolicy", "shop", "api").accepted);
    assert!(a.set.traffic_policies.contains_key("api.shop:80") && a.set.traffic_policies.contains_key("api.shop:9090"));
    let missing = verdict(&a, "TrafficPolicy", "test", "missing");
    assert!(missing.message.starts_with("spec.service: no Service named \"api.test\""), "{}", missing.message);
}

#[test]
fn mesh_wide_kinds_are_read_from_the_control_planes_namespace_only() {
    let spec = json!({"tracing": {"samplingPercent": 5}});
    let telemetry = objects(vec![
        ("outrider-system", "mesh", object("2026-01-01T00:00:00Z", spec.clone())),
        ("shop", "mine", object("2026-01-01T00:00:00Z", spec)),
    ]);
    let a = assemble(services(&[]), &[(kind("Telemetry"), &telemetry)], "outrider-system");
    assert!(verdict(&a, "Telemetry", "outrider-system", "mesh").accepted);
    assert_eq!(verdict(&a, "Telemetry", "shop", "mine").reason, "WrongNamespace");
    assert_eq!(a.set.telemetry.as_ref().unwrap().metadata.name, "mesh");
}

#[test]
fn authorization_policies_of_equal_names_in_two_namespaces_both_apply() {
    let spec = json!({"service": "reviews", "from": [{"identities": ["spiffe://td/ns/shop/sa/web"]}]});
    let aps = objects(vec![
        ("shop", "callers", object("2026-01-01T00:00:00Z", spec.clone())),
        ("test", "callers", object("2026-01-01T00:00:00Z", spec)),
    ]);
    let a = assemble(
        services(&[("shop", "reviews", &[9080]), ("test", "reviews", &[9080])]),
        &[(kind("AuthorizationPolicy"), &aps)],
        "ns",
    );
    assert_eq!(a.set.authorization_policies.len(), 2, "{:?}", a.set.authorization_policies.keys());
    assert_eq!(a.set.authorization_policies("reviews.test").count(), 1);
}

#[test]
fn a_canary_split_is_accepted_while_its_subset_has_no_endpoint_yet() {
    let spec = json!({"service": "reviews", "routes": [
        {"split": [{"subset": {"version": "v1"}, "weight": 90}, {"subset": {"version": "v2"}, "weight": 10}]}]});
    let tps = objects(vec![("shop", "canary", object("2026-01-01T00:00:00Z", spec))]);
    let mut discovered = services(&[("shop", "reviews", &[9080])]);
    let service = discovered.services.get_mut("reviews.shop").unwrap();
    service.spec.endpoints.push(outrider_xds::Endpoint {
        address: "10.1.0.1:9080".parse().unwrap(),
        labels: BTreeMap::from([("version".to_owned(), "v1".to_owned())]),
        weight: 1,
        meshed: false,
        identity: None,
        hbone: false,
    });
    let a = assemble(discovered, &[(kind("TrafficPolicy"), &tps)], "ns");
    assert!(verdict(&a, "TrafficPolicy", "shop", "canary").accepted);
    // The set keeps the endpoints for the translation.
    assert_eq!(a.set.services["reviews.shop"].spec.endpoints.len(), 1);
}

#[test]
fn rollouts_are_judged_with_their_services_traffic_policy_and_keyed_by_namespace() {
    let rollout = |routes: Value, steps: Value| {
        json!({"service": "reviews", "stable": {"version": "v1"}, "canary": {"version": "v2"},
            "strategy": {"canary": {"steps": steps}}, "routes": routes})
    };
    // Created before the TrafficPolicy: still judged after it.
    let ros = objects(vec![
        ("shop", "reviews", object("2026-01-01T00:00:00Z", rollout(json!(["main"]), json!([10, 50])))),
        ("test", "reviews", object("2026-01-01T00:00:00Z", rollout(json!([]), json!([50, 10])))),
        ("stage", "reviews", object("2026-01-01T00:00:00Z", rollout(json!(["nope"]), json!([10])))),
        ("multi", "reviews", object("2026-01-01T00:00:00Z", rollout(json!([]), json!([10])))),
        ("prod", "reviews", object("2026-01-01T00:00:00Z", rollout(json!([]), json!([20])))),
    ]);
    let tps = objects(vec![(
        "shop",
        "reviews",
        object(
            "2026-01-02T00:00:00Z",
            json!({"service": "reviews", "routes": [{"name": "main", "split": [{"subset": {"version": "v1"}, "weight": 100}]}]}),
        ),
    )]);
    let services = services(&[
        ("shop", "reviews", &[9080]),
        ("test", "reviews", &[9080]),
        ("stage", "reviews", &[9080]),
        ("multi", "reviews", &[80, 9090]),
        ("prod", "reviews", &[9080]),
    ]);
    let a = assemble(services, &[(kind("TrafficPolicy"), &tps), (kind("Rollout"), &ros)], "outrider-system");
    // The route it names is its TrafficPolicy's.
    assert!(verdict(&a, "Rollout", "shop", "reviews").accepted, "{:?}", a.verdicts);
    let shop = &a.set.rollouts["shop/reviews"];
    assert_eq!((shop.spec.service.as_str(), shop.metadata.namespace.as_str()), ("reviews.shop", "shop"));
    assert!(verdict(&a, "TrafficPolicy", "shop", "reviews").accepted);
    assert_eq!(a.set.traffic_policies.len(), 1, "the companion is not added twice");
    // The same name in another namespace is another rollout.
    assert!(verdict(&a, "Rollout", "prod", "reviews").accepted);
    assert_eq!(a.set.rollouts.keys().collect::<Vec<_>>(), ["prod/reviews", "shop/reviews"]);
    // A bad spec: the message `outrider validate` prints, with the field.
    let test = verdict(&a, "Rollout", "test", "reviews");
    assert_eq!((test.accepted, test.reason), (false, "Invalid"));
    assert_eq!(test.message, "spec.strategy.canary.steps[1]: weights must increase (got 10 after 50)");
    let stage = verdict(&a, "Rollout", "stage", "reviews");
    assert!(
        stage
            .message
            .starts_with("spec.routes[0]: the TrafficPolicy of service \"reviews.stage\" has no route \"nope\""),
        "{}",
        stage.message
    );
    let multi = verdict(&a, "Rollout", "multi", "reviews");
    assert!(multi.message.starts_with("spec.service: Service \"reviews\" has several ports"), "{}", multi.message);
    // `check` judges one object alone, as assemble would.
    let services = crate::kubernetes::policies::tests::services(&[("shop", "reviews", &[9080])]);
    let bad = json!({"service": "reviews", "timeout": "soon"});
    let (reason, message) = check(&services, kind("TrafficPolicy"), "shop", "reviews", bad, "ns").unwrap_err();
    assert_eq!(reason, "Invalid");
    assert!(message.starts_with("spec.timeout: "), "{message}");
    check(&services, kind("TrafficPolicy"), "shop", "reviews", json!({"service": "reviews"}), "ns").unwrap();
}
