use serde_json::{Value, json};

use super::manifest::{DocOutcome, ManifestError, inject_stream};
use super::*;

const ROOT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn config() -> InjectConfig {
    InjectConfig::new(ROOT)
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reviews-0", "labels": {"app": "reviews", "version": "v2"}},
        "spec": {
            "serviceAccountName": "reviews",
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [{"name": "app", "image": "reviews:1", "ports": [{"containerPort": 9080}]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "aFieldFromTheFuture": {"kept": true},
        },
    })
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no env {name} in {container}"))
}

#[test]
fn adds_the_redirection_then_the_proxy_as_a_native_sidecar_before_the_pods_own_init_containers() {
    let mut p = pod();
    let before = p.clone();
    assert_eq!(inject(&mut p, &config()), Ok(Outcome::Injected));

    let inits = p["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);

    let init = &inits[0];
    assert_eq!(init["image"], defaults::INIT_IMAGE);
    assert_eq!(init["command"], json!(["/usr/local/bin/outrider-proxy", "iptables", "--apply"]));
    let args: Vec<&str> = init["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(
        args,
        [
            "--outbound-port",
            "15001",
            "--inbound-port",
            "15006",
            "--proxy-uid",
            "1337",
            "--exclude-inbound-ports",
            "15000,15008,15020,15021,15090"
        ]
    );
    assert_eq!(init["securityContext"]["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert!(init.get("restartPolicy").is_none(), "the redirection runs once");

    let proxy = &inits[1];
    assert_eq!(proxy["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(proxy["image"], defaults::PROXY_IMAGE);
    assert_eq!(proxy["startupProbe"]["httpGet"], json!({"path": "/healthz/ready", "port": 15021}));
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    // The pod's facts from the downward API.
    assert_eq!(env(proxy, "OUTRIDER_POD_IP")["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    assert_eq!(env(proxy, "OUTRIDER_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env(proxy, "OUTRIDER_SERVICE_ACCOUNT")["valueFrom"]["fieldRef"]["fieldPath"], "spec.serviceAccountName");
    assert_eq!(env(proxy, "OUTRIDER_SERVICE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.labels['app']");
    assert_eq!(env(proxy, "OUTRIDER_LABEL_0")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.labels['app']");
    assert_eq!(env(proxy, "OUTRIDER_LABEL_1")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.labels['version']");
    assert_eq!(env(proxy, "OUTRIDER_LABEL")["value"], "app=$(OUTRIDER_LABEL_0),version=$(OUTRIDER_LABEL_1)");
    assert_eq!(env(proxy, "OUTRIDER_XDS_ADDRESS")["value"], defaults::XDS_ADDRESS);
    assert_eq!(env(proxy, "OUTRIDER_CA_ROOT_PEM")["value"], ROOT);
    assert_eq!(env(proxy, "OUTRIDER_IDENTITY_TOKEN")["value"], format!("{TOKEN_DIR}/token"));
    // A variable may only refer to ones defined before it.
    let names: Vec<&str> = proxy["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    for (i, e) in proxy["env"].as_array().unwrap().iter().enumerate() {
        let value = e["value"].as_str().unwrap_or_default();
        for (j, var) in names.iter().enumerate() {
            if value.contains(&format!("$({var})")) {
                assert!(j < i, "{} refers to {var}, defined after it", names[i]);
            }
        }
    }
    assert_eq!(proxy["volumeMounts"], json!([{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}]));

    // The projected token of the mesh's audience, after the pod's own volumes.
    let volumes = p["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["name"], "data");
    assert_eq!(
        volumes[1],
        json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken":
            {"audience": "outrider", "expirationSeconds": 3600, "path": "token"}}]}})
    );
    assert_eq!(p["metadata"]["annotations"][INJECTED_ANNOTATION], defaults::PROXY_IMAGE);

    // Nothing else changed: the app, its init container, fields this code does not know.
    assert_eq!(p["spec"]["containers"], before["spec"]["containers"]);
    assert_eq!(p["spec"]["aFieldFromTheFuture"], before["spec"]["aFieldFromTheFuture"]);
    assert_eq!(p["metadata"]["labels"], before["metadata"]["labels"]);
}

#[test]
fn injecting_an_injected_pod_changes_nothing() {
    let mut p = pod();
    inject(&mut p, &config()).unwrap();
    let once = p.clone();
    assert_eq!(inject(&mut p, &config()), Ok(Outcome::Skipped(Skip::AlreadyInjected)));
    assert_eq!(p, once);
    // Even with other settings: what is there stays.
    let mut other = config();
    other.proxy_image = "elsewhere/proxy:2".into();
    assert_eq!(inject(&mut p, &other), Ok(Outcome::Skipped(Skip::AlreadyInjected)));
    assert_eq!(p, once);
}

#[test]
fn the_annotation_false_and_host_network_leave_the_pod_alone() {
    let mut p = pod();
    p["metadata"]["annotations"] = json!({INJECT_KEY: "false"});
    let before = p.clone();
    assert_eq!(inject(&mut p, &config()), Ok(Outcome::Skipped(Skip::Disabled)));
    assert_eq!(p, before);

    let mut p = pod();
    p["spec"]["hostNetwork"] = json!(true);
    let before = p.clone();
    assert_eq!(inject(&mut p, &config()), Ok(Outcome::Skipped(Skip::HostNetwork)));
    assert_eq!(p, before);

    // "true" is accepted (the namespace label is what enables injection).
    let mut p = pod();
    p["metadata"]["annotations"] = json!({INJECT_KEY: "true"});
    assert_eq!(inject(&mut p, &config()), Ok(Outcome::Injected));
}

#[test]
fn a_pod_without_labels_annotations_or_volumes_gets_them() {
    let mut p = json!({"metadata": {"name": "bare"}, "spec": {"containers": [{"name": "app", "image": "a"}]}});
    assert_eq!(inject(&mut p, &config()), Ok(Outcome::Injected));
    assert_eq!(p["spec"]["initContainers"].as_array().unwrap().len(), 2);
    assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
    let proxy = &p["spec"]["initContainers"][1];
    let names: Vec<&str> = proxy["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"OUTRIDER_SERVICE") && !names.contains(&"OUTRIDER_LABEL"), "{names:?}");

    // null lists (as some generators write them) are replaced, not an error.
    let mut p = json!({"metadata": {"annotations": null}, "spec": {"containers": [{"name": "app"}],
        "initContainers": null, "volumes": null}});
    assert_eq!(inject(&mut p, &config()), Ok(Outcome::Injected));
}

#[test]
fn annotations_name_the_service_and_the_ports_and_cidrs_left_alone() {
    let mut p = pod();
    p["metadata"]["annotations"] = json!({
        SERVICE_ANNOTATION: "ratings",
        EXCLUDE_INBOUND_PORTS_ANNOTATION: "8081, 15000",
        EXCLUDE_OUTBOUND_CIDRS_ANNOTATION: "10.0.0.0/8,192.168.1.1",
    });
    inject(&mut p, &config()).unwrap();
    let init = &p["spec"]["initContainers"][0];
    let args: Vec<&str> = init["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(
        &args[6..],
        [
            "--exclude-inbound-ports",
            "8081,15000,15008,15020,15021,15090",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,192.168.1.1"
        ]
    );
    assert_eq!(
        env(&p["spec"]["initContainers"][1], "OUTRIDER_SERVICE"),
        &json!({"name": "OUTRIDER_SERVICE", "value": "ratings"})
    );

    // app.kubernetes.io/name wins over app.
    let mut p = pod();
    p["metadata"]["labels"]["app.kubernetes.io/name"] = json!("reviews-api");
    inject(&mut p, &config()).unwrap();
    assert_eq!(
        env(&p["spec"]["initContainers"][1], "OUTRIDER_SERVICE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['app.kubernetes.io/name']"
    );
}

#[test]
fn bad_annotations_and_taken_names_are_errors_that_leave_the_pod_alone() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"metadata": {"annotations": {INJECT_KEY: "maybe"}}}), "outrider.io/inject]: \"maybe\""),
        (json!({"metadata": {"annotations": {EXCLUDE_INBOUND_PORTS_ANNOTATION: "80,http"}}}), "\"http\" is not a port"),
        (json!({"metadata": {"annotations": {EXCLUDE_INBOUND_PORTS_ANNOTATION: "0"}}}), "\"0\" is not a port"),
        (json!({"metadata": {"annotations": {EXCLUDE_OUTBOUND_CIDRS_ANNOTATION: "10.0.0.0/33"}}}), "not an IPv4 CIDR"),
        (json!({"metadata": {"annotations": {SERVICE_ANNOTATION: "$(OUTRIDER_POD_NAME)"}}}), "not a service name"),
        (
            json!({"spec": {"containers": [{"name": "outrider-proxy"}]}}),
            "spec.containers: a container named \"outrider-proxy\"",
        ),
        (
            json!({"spec": {"initContainers": [{"name": "outrider-init"}]}}),
            "spec.initContainers: a container named \"outrider-init\"",
        ),
        (json!({"spec": {"volumes": [{"name": "outrider-token"}]}}), "spec.volumes"),
        (json!({"spec": {"containers": []}}), "spec.containers is missing or empty"),
    ];
    for (overlay, message) in cases {
        let mut p = pod();
        merge(&mut p, &overlay);
        let before = p.clone();
        let err = inject(&mut p, &config()).expect_err(message);
        assert!(err.to_string().contains(message), "{err} does not say {message}");
        assert_eq!(p, before, "an error leaves the pod untouched");
    }
    assert_eq!(inject(&mut json!([]), &config()), Err(InjectError::NotAnObject("the pod")));
    assert_eq!(inject(&mut json!({"metadata": {}}), &config()), Err(InjectError::NoContainers));
}

/// `target` with the fields of `overlay` replaced (objects merged, anything else replaced).
fn merge(target: &mut Value, overlay: &Value) {
    match (target, overlay) {
        (Value::Object(t), Value::Object(o)) => {
            for (k, v) in o {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, o) => *t = o.clone(),
    }
}

#[test]
fn settings_reach_the_containers() {
    let mut c = config();
    c.proxy_image = "registry.example/outrider-proxy:9".into();
    c.init_image = "registry.example/outrider-proxy-init:9".into();
    c.pull_policy = PullPolicy::Always;
    c.xds_address = "https://cp.mesh:15010".into();
    c.token_audience = "mesh.example".into();
    c.token_ttl = Duration::from_secs(7200);
    c.drain_timeout = Duration::from_secs(20);
    c.resources = Resources {
        cpu_request: None,
        memory_request: Some("32Mi".into()),
        cpu_limit: Some("1".into()),
        memory_limit: None,
    };
    let mut p = pod();
    inject(&mut p, &c).unwrap();
    let (init, proxy) = (&p["spec"]["initContainers"][0], &p["spec"]["initContainers"][1]);
    assert_eq!(init["image"], "registry.example/outrider-proxy-init:9");
    assert_eq!(proxy["image"], "registry.example/outrider-proxy:9");
    assert_eq!(proxy["imagePullPolicy"], "Always");
    assert_eq!(env(proxy, "OUTRIDER_XDS_ADDRESS")["value"], "https://cp.mesh:15010");
    assert_eq!(env(proxy, "OUTRIDER_DRAIN_TIMEOUT")["value"], "20s");
    assert_eq!(proxy["resources"], json!({"requests": {"memory": "32Mi"}, "limits": {"cpu": "1"}}));
    let token = &p["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "mesh.example");
    assert_eq!(token["expirationSeconds"], 7200);
}

const STREAM: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  template:
    metadata: {labels: {app: reviews}}
    spec:
      containers: [{name: app, image: "reviews:1"}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec: {ports: [{port: 80}]}
---
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: job, image: "job:1"}]
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: one, annotations: {outrider.io/inject: "false"}}
    spec: {containers: [{name: app, image: a}]}
  - apiVersion: apps/v1
    kind: StatefulSet
    metadata: {name: db}
    spec: {serviceName: db, selector: {}, template: {spec: {containers: [{name: db, image: d}]}}}
  - apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: agent}
    spec: {selector: {}, template: {spec: {hostNetwork: true, containers: [{name: a, image: a}]}}}
  - apiVersion: batch/v1
    kind: Job
    metadata: {name: once}
    spec: {template: {spec: {restartPolicy: Never, containers: [{name: j, image: j}]}}}
"#;

#[test]
fn a_stream_of_documents_gets_every_pod_template_injected_and_the_rest_passed_through() {
    let (out, reports) = inject_stream(STREAM, &config()).unwrap();
    let outcome: Vec<(usize, &str, &str, &DocOutcome)> =
        reports.iter().map(|r| (r.document, r.kind.as_str(), r.name.as_str(), &r.outcome)).collect();
    assert_eq!(
        outcome,
        [
            (1, "Deployment", "reviews", &DocOutcome::Injected),
            (2, "Service", "reviews", &DocOutcome::NotAWorkload),
            (4, "CronJob", "nightly", &DocOutcome::Injected),
            (5, "Pod", "one", &DocOutcome::Skipped(Skip::Disabled)),
            (5, "StatefulSet", "db", &DocOutcome::Injected),
            (5, "DaemonSet", "agent", &DocOutcome::Skipped(Skip::HostNetwork)),
            (5, "Job", "once", &DocOutcome::Injected),
        ]
    );
    let docs: Vec<Value> =
        serde_yaml_ng::Deserializer::from_str(&out).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    assert_eq!(docs.len(), 4, "the empty document is dropped:\n{out}");
    let names = |v: &Value| -> Vec<String> {
        v["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&docs[0]["spec"]["template"]["spec"]), [INIT_CONTAINER, PROXY_CONTAINER]);
    assert_eq!(docs[0]["spec"]["template"]["metadata"]["annotations"][INJECTED_ANNOTATION], defaults::PROXY_IMAGE);
    assert_eq!(
        docs[1],
        serde_yaml_ng::from_str::<Value>(
            "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 80}]}"
        )
        .unwrap()
    );
    assert_eq!(names(&docs[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"]), [INIT_CONTAINER, PROXY_CONTAINER]);
    assert!(docs[3]["items"][0]["spec"].get("initContainers").is_none());
    assert_eq!(names(&docs[3]["items"][3]["spec"]["template"]["spec"]), [INIT_CONTAINER, PROXY_CONTAINER]);

    // The output injected again is the output: nothing changes.
    let (again, reports) = inject_stream(&out, &config()).unwrap();
    assert_eq!(again, out);
    assert!(reports.iter().all(|r| r.outcome != DocOutcome::Injected), "{reports:?}");
}

#[test]
fn a_stream_with_a_bad_document_names_it() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1}\n";
    let err = inject_stream(text, &config()).unwrap_err();
    assert!(matches!(err, ManifestError::Template { document: 2, .. }), "{err:?}");
    assert_eq!(err.to_string(), "document 2 (Deployment/web): spec.template: missing or not an object");

    let text =
        "kind: Pod\nmetadata: {name: p, annotations: {outrider.io/inject: nope}}\nspec: {containers: [{name: a}]}\n";
    let err = inject_stream(text, &config()).unwrap_err().to_string();
    assert!(err.starts_with("document 1 (Pod/p): metadata.annotations[outrider.io/inject]"), "{err}");

    let err = inject_stream("kind: Service\n---\nkind: [unclosed\n", &config()).unwrap_err();
    assert!(matches!(err, ManifestError::Yaml { document: 2, .. }), "{err:?}");
}
