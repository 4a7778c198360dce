use serde_json::{Value, json};

use super::*;
use crate::kubernetes::inject::{INJECT_KEY, PROXY_CONTAINER};

fn webhook() -> Webhook {
    Webhook::new(InjectConfig::new("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), Metrics::new())
}

fn review(object: Value, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b8e2d2c-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "object": object,
        },
    }))
    .unwrap()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "reviews-7d4f-", "namespace": "shop", "labels": {"app": "reviews"}},
        "spec": {
            "serviceAccountName": "reviews",
            "initContainers": [{"name": "migrate", "image": "m"}],
            "containers": [{"name": "app", "image": "reviews:1", "volumeMounts": [{"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
            "volumes": [{"name": "kube-api-access-x", "projected": {"sources": []}}],
        },
    })
}

fn patch_of(answer: &Value) -> json_patch::Patch {
    let b64 = answer["response"]["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn a_pod_creation_is_allowed_with_the_patch_that_injects_it() {
    let hook = webhook();
    let answer = hook.review(&review(pod(), "CREATE")).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], "0b8e2d2c-1");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");

    // The patch applied to the pod as sent is exactly what injection makes of it.
    let mut patched = pod();
    json_patch::patch(&mut patched, &patch_of(&answer)).unwrap();
    let mut expected = pod();
    assert_eq!(inject(&mut expected, &hook.config()), Ok(Outcome::Injected));
    assert_eq!(patched, expected);
    assert_eq!(patched["spec"]["initContainers"][1]["name"], PROXY_CONTAINER);

    // Injecting the patched pod again: allowed, no patch.
    let again = hook.review(&review(patched, "CREATE")).unwrap();
    assert_eq!(again["response"]["allowed"], true);
    assert!(again["response"].get("patch").is_none(), "{again}");
    let text = hook.metrics.encode();
    assert!(text.contains("outrider_injections_total{result=\"injected\"} 1"), "{text}");
    assert!(text.contains("outrider_injections_total{result=\"skipped\"} 1"), "{text}");
}

#[test]
fn the_patch_is_right_for_pods_of_every_shape() {
    let hook = webhook();
    let shapes = [
        json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app"}]}}),
        json!({"metadata": {"name": "b", "annotations": {"x": "y"}}, "spec": {"containers": [{"name": "app"}], "initContainers": []}}),
        json!({"metadata": {"name": "c", "labels": {"app": "c", "version": "v1"}}, "spec": {"containers": [{"name": "app"}, {"name": "log"}],
            "initContainers": [{"name": "one", "image": "1", "env": [{"name": "A", "value": "b"}]}, {"name": "two", "image": "2"}],
            "volumes": [{"name": "v", "emptyDir": {}}]}}),
    ];
    for original in shapes {
        let answer = hook.review(&review(original.clone(), "CREATE")).unwrap();
        let mut patched = original.clone();
        json_patch::patch(&mut patched, &patch_of(&answer)).unwrap();
        let mut expected = original.clone();
        inject(&mut expected, &hook.config()).unwrap();
        assert_eq!(patched, expected, "for {original}");
    }
}

#[test]
fn opted_out_pods_other_objects_and_operations_pass_unchanged() {
    let hook = webhook();
    let mut opted_out = pod();
    opted_out["metadata"]["annotations"] = json!({INJECT_KEY: "false"});
    let mut host = pod();
    host["spec"]["hostNetwork"] = json!(true);
    for (body, warning) in [
        (review(opted_out, "CREATE"), None),
        (review(host, "CREATE"), Some("outrider: pod not injected: it uses the host's network (hostNetwork: true)")),
        (review(pod(), "UPDATE"), None),
    ] {
        let answer = hook.review(&body).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        assert!(answer["response"].get("patch").is_none(), "{answer}");
        assert_eq!(answer["response"]["warnings"][0].as_str(), warning, "{answer}");
    }
    let mut not_a_pod: Value = serde_json::from_slice(&review(json!({"kind": "Service"}), "CREATE")).unwrap();
    not_a_pod["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    let answer = hook.review(&serde_json::to_vec(&not_a_pod).unwrap()).unwrap();
    assert_eq!(answer["response"], json!({"uid": "0b8e2d2c-1", "allowed": true}));
}

#[test]
fn a_pod_that_cannot_be_injected_is_refused_with_the_reason() {
    let hook = webhook();
    let mut bad = pod();
    bad["metadata"]["annotations"] = json!({"outrider.io/exclude-inbound-ports": "eighty"});
    let answer = hook.review(&review(bad, "CREATE")).unwrap();
    let response = &answer["response"];
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("outrider sidecar injection: metadata.annotations[outrider.io/exclude-inbound-ports]"),
        "{message}"
    );
    assert!(hook.metrics.encode().contains("outrider_injections_total{result=\"refused\"} 1"));
}

#[test]
fn what_is_not_a_review_is_an_error() {
    let hook = webhook();
    assert!(matches!(hook.review(b"{not json"), Err(ReviewError::Json(_))));
    assert_eq!(hook.review(b"{}"), Err(ReviewError::NotAReview));
    assert_eq!(hook.review(br#"{"request": {"kind": {"kind": "Pod"}}}"#), Err(ReviewError::NotAReview));
    // A review without the pod is answered, and refused.
    let answer = hook
        .review(br#"{"request": {"uid": "u", "kind": {"group": "", "kind": "Pod"}, "operation": "CREATE"}}"#)
        .unwrap();
    assert_eq!(answer["response"]["allowed"], false);
}
