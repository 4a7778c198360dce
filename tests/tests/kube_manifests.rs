//! The install manifests (deploy/kubernetes) and the Helm chart (deploy/helm/outrider):
//! validated against Kubernetes' own schemas with `kubernetes-validate` (PyPI), the chart linted
//! and rendered by a real `helm` (tests/k8s/build-helm.sh), the chart's objects equal to the
//! kustomization's, and what `outrider inject` writes valid too. (They are also created on a
//! real API server: tests/tests/kube_inject.rs.)
//! Each test skips when its tool is missing (a failure under OUTRIDER_REQUIRE_ALL=1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize as _;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn chart() -> PathBuf {
    repo().join("deploy/helm/outrider")
}

/// `kubernetes-validate`, if installed.
fn kubernetes_validate() -> Option<PathBuf> {
    let found = Command::new("kubernetes-validate").arg("--version").stdout(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return Some(PathBuf::from("kubernetes-validate"));
    }
    outrider_tests::skip("skipping: kubernetes-validate is not installed (pip install kubernetes-validate)");
    None
}

/// helm: `$OUTRIDER_HELM`, else the cache of tests/k8s/build-helm.sh.
fn helm() -> Option<PathBuf> {
    let path = std::env::var_os("OUTRIDER_HELM").map(PathBuf::from).unwrap_or_else(|| {
        let tools = std::env::var_os("OUTRIDER_TOOLS")
            .map_or_else(|| PathBuf::from("/var/cache/outrider-tools"), PathBuf::from);
        tools.join(format!("helm-{}", outrider_tests::kube::version("HELM_VERSION"))).join("helm")
    });
    if path.is_file() {
        return Some(path);
    }
    outrider_tests::skip(&format!("skipping: no helm at {} (build it with tests/k8s/build-helm.sh)", path.display()));
    None
}

/// Runs `cmd`, asserting success; its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// `kubernetes-validate --strict` on a file, against the Kubernetes version of the test bed.
fn validate(tool: &Path, file: &Path) {
    let version = outrider_tests::kube::version("K8S_VERSION").trim_start_matches('v');
    let minor = version.rsplit_once('.').map_or(version, |(m, _)| m);
    run(Command::new(tool).args(["--strict", "--quiet", "-k", &format!("{minor}.0")]).arg(file));
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The kustomization's objects, in its order.
fn kustomization_objects() -> Vec<Value> {
    let k: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(manifests().join("kustomization.yaml")).unwrap()).unwrap();
    k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| documents(&std::fs::read_to_string(manifests().join(f.as_str().unwrap())).unwrap()))
        .collect()
}

fn key(o: &Value) -> String {
    format!(
        "{}/{}/{}",
        o["kind"].as_str().unwrap(),
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"]
    )
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let Some(tool) = kubernetes_validate() else { return };
    let kustomization: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(manifests().join("kustomization.yaml")).unwrap()).unwrap();
    let files = kustomization["resources"].as_array().unwrap();
    assert_eq!(files.len(), 5, "namespace, CRDs, RBAC, control plane, webhook: {kustomization}");
    for f in files {
        validate(&tool, &manifests().join(f.as_str().unwrap()));
    }
    // What it checks, to be sure it would catch a mistake: a wrong type fails.
    let dir = outrider_tests::harness::TempDir::new("kube-manifests");
    let bad =
        dir.write("bad.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: http}]}\n");
    let out = Command::new(&tool).args(["--strict", "--quiet"]).arg(&bad).output().unwrap();
    assert!(!out.status.success(), "a Service with a string port validated");
}

#[test]
fn the_chart_lints_and_renders_the_kustomizations_objects() {
    let Some(helm) = helm() else { return };
    run(Command::new(&helm).args(["lint", "--strict"]).arg(chart()));
    let rendered = run(Command::new(&helm).args(["template", "outrider"]).arg(chart()).args([
        "--namespace",
        "outrider-system",
        "--include-crds",
        "--set",
        "namespace.create=true",
    ]));
    let mut from_chart = documents(&rendered);
    let mut from_kustomize = kustomization_objects();
    from_chart.sort_by_key(key);
    from_kustomize.sort_by_key(key);
    let keys = |v: &[Value]| v.iter().map(key).collect::<Vec<_>>();
    assert_eq!(keys(&from_chart), keys(&from_kustomize), "the same objects");
    for (a, b) in from_chart.iter().zip(&from_kustomize) {
        assert_eq!(a, b, "{} differs between the chart and the kustomization", key(a));
    }
    // Values change what they say they change.
    let custom = run(Command::new(&helm).args(["template", "outrider"]).arg(chart()).args([
        "--namespace",
        "mesh",
        "--set",
        "controlPlane.replicas=3",
        "--set",
        "webhook.failurePolicy=Ignore",
    ]));
    let custom = documents(&custom);
    let find = |kind: &str| custom.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    assert_eq!(find("Deployment")["spec"]["replicas"], 3);
    assert_eq!(find("Deployment")["metadata"]["namespace"], "mesh");
    assert_eq!(find("MutatingWebhookConfiguration")["webhooks"][0]["failurePolicy"], "Ignore");
    assert_eq!(find("MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["service"]["namespace"], "mesh");
    assert!(custom.iter().all(|o| o["kind"] != "Namespace"), "no Namespace unless asked");

    // And what it renders is valid for the API.
    if let Some(tool) = kubernetes_validate() {
        let dir = outrider_tests::harness::TempDir::new("kube-chart");
        validate(&tool, &dir.write("rendered.yaml", &rendered));
    }
}

#[test]
fn what_outrider_inject_writes_validates() {
    let Some(tool) = kubernetes_validate() else { return };
    let dir = outrider_tests::harness::TempDir::new("kube-inject-cli");
    let input = dir.write(
        "app.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews, namespace: shop}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  template:\n    metadata: {labels: {app: reviews, version: v1}}\n    spec:\n      containers: [{name: app, image: example.org/reviews:1}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec: {selector: {app: reviews}, ports: [{port: 9080}]}\n",
    );
    let root = dir.write("root.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    let out = run(Command::new(outrider_tests::control_plane::outrider_bin())
        .args(["inject", "-f"])
        .arg(&input)
        .arg("--ca-root")
        .arg(&root));
    let docs = documents(&out);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["spec"]["template"]["spec"]["initContainers"][1]["name"], "outrider-proxy");
    assert_eq!(docs[1]["kind"], "Service", "passed through");
    validate(&tool, &dir.write("injected.yaml", &out));
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    let generated = std::fs::read_to_string(manifests().join("crds.yaml")).unwrap();
    let chart = std::fs::read_to_string(chart().join("crds/crds.yaml")).unwrap();
    assert!(
        generated == chart,
        "deploy/helm/outrider/crds/crds.yaml differs from deploy/kubernetes/crds.yaml: copy it over"
    );
    assert_eq!(
        generated,
        outrider_control_plane::kubernetes::crds::manifests(),
        "deploy/kubernetes/crds.yaml is stale"
    );
}
