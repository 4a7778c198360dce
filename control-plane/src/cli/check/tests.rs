use serde_json::json;

use super::*;

#[test]
fn a_crd_is_current_only_with_the_same_versions_schemas_and_subresources() {
    let kind = &KINDS[0];
    let wanted = definition(kind);
    // As the API server returns it: with defaults and status added.
    let mut installed = wanted.clone();
    installed["spec"]["conversion"] = json!({"strategy": "None"});
    installed["status"] = json!({"conditions": []});
    assert_eq!(crd_current(&wanted, &installed), Ok(()));

    let mut old = wanted.clone();
    old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("service");
    assert_eq!(
        crd_current(&wanted, &old),
        Err("the schema of version v1 differs at .properties.spec.properties.service (missing)".to_owned())
    );
    let mut no_status = wanted.clone();
    no_status["spec"]["versions"][0]["subresources"] = json!({});
    assert!(crd_current(&wanted, &no_status).unwrap_err().contains("subresources"));
    let mut other = wanted.clone();
    other["spec"]["versions"][0]["name"] = json!("v1beta1");
    assert_eq!(crd_current(&wanted, &other), Err("version v1 is not served".to_owned()));
}

fn root(days: u32) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(i64::from(days));
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn the_bundle_must_hold_every_root_and_roots_must_not_be_near_expiry() {
    let (a, b) = (root(365), root(10));
    assert_eq!(bundle_holds_roots(&format!("{a}\n{b}"), &[a.clone(), b.clone()]), Ok(()));
    assert!(bundle_holds_roots(&a, &[a.clone(), b.clone()]).unwrap_err().contains("lacks 1 of the control plane's 2"));
    assert!(bundle_holds_roots("", std::slice::from_ref(&a)).unwrap_err().contains("empty"));

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(roots_near_expiry(std::slice::from_ref(&a), now, ROOT_EXPIRY_WARNING).is_empty());
    let near = roots_near_expiry(&[a, b], now, ROOT_EXPIRY_WARNING);
    assert_eq!(near.len(), 1, "{near:?}");
    assert!(near[0].starts_with("root 2 expires in"), "{near:?}");
    assert_eq!(roots_near_expiry(&["junk".to_owned()], now, ROOT_EXPIRY_WARNING), ["root 1 cannot be read"]);
}

#[test]
fn proxies_nacking_or_behind_are_named() {
    let status = json!({"proxies": [
        {"nodeId": "a", "types": {"Cluster": {"sent": "3", "acked": "3", "nack": null}}},
        {"nodeId": "b", "types": {"Listener": {"sent": "4", "acked": "3", "nack": {"version": "4", "error": "bad port"}}}},
        {"nodeId": "c", "types": {"Cluster": {"sent": "5", "acked": "4", "nack": null}}},
    ]});
    assert_eq!(proxy_problems(&status), ["b NACKs Listener: bad port", "c has not ACKed Cluster 5 (it has 4)"]);
    assert!(proxy_problems(&json!({"proxies": []})).is_empty());
}

#[test]
fn policies_naming_missing_services_are_told_apart_from_other_rejections() {
    let object = |name: &str, condition: Value| {
        (
            "TrafficPolicy".to_owned(),
            json!({"metadata": {"namespace": "shop", "name": name}, "status": {"conditions": [condition]}}),
        )
    };
    let objects = vec![
        object("ok", json!({"type": "Accepted", "status": "True", "message": "applied"})),
        object(
            "gone",
            json!({"type": "Accepted", "status": "False", "message": "spec.service: no Service named \"x\" (known services: y)"}),
        ),
        object(
            "bad",
            json!({"type": "Accepted", "status": "False", "message": "spec.retries.attempts: 99 is more than 10"}),
        ),
        ("Telemetry".to_owned(), json!({"metadata": {"namespace": "shop", "name": "new"}})),
    ];
    let (missing, other) = policy_problems(&objects);
    assert_eq!(missing, ["TrafficPolicy shop/gone: spec.service: no Service named \"x\" (known services: y)"]);
    assert_eq!(other.len(), 2, "{other:?}");
    assert!(other[0].starts_with("TrafficPolicy shop/bad: spec.retries"));
    assert!(other[1].contains("no Accepted condition yet"));
}
