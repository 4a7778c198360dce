//! Injection and service-account identity against a real API server (tests/src/kube.rs): the
//! repository's manifests (deploy/kubernetes) are created on it, the control plane runs with the
//! RBAC they grant (a kubeconfig with its service account's token), keeps the webhook's caBundle,
//! and the API server itself calls the webhook over TLS when a pod is created.
//! Skips when the test bed's binaries are absent (build them with tests/k8s/build-testbed.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use base64::Engine as _;
use http::Method;
use outrider_control_plane::kubernetes::inject::{InjectConfig, PROXY_CONTAINER};
use outrider_control_plane::kubernetes::webhook::{CONFIGURATION, WebhookSettings};
use outrider_control_plane::kubernetes::{KubeSettings, defaults};
use outrider_control_plane::server::{self, Running, ServerConfig};
use outrider_proxy::tls::{self, Identity};
use outrider_tests::harness::TempDir;
use outrider_tests::kube::{ApiServer, SA_ISSUER};
use outrider_tests::wait::wait_until;
use serde_json::{Value, json};

const NS: &str = defaults::NAMESPACE;

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// The files of the kustomization, in its order.
fn kustomization() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(manifests().join("kustomization.yaml")).unwrap();
    let k: Value = serde_yaml_ng::from_str(&text).unwrap();
    k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let f = f.as_str().unwrap().to_owned();
            let text = std::fs::read_to_string(manifests().join(&f)).unwrap();
            (f, text)
        })
        .collect()
}

/// The control plane as its manifests install it, against `api`: every manifest but the webhook
/// configuration is created first; the control plane runs as its service account; then the
/// webhook configuration, pointed at the control plane's local port (no Service networking
/// here), is created and its caBundle left for the control plane to fill.
struct Mesh {
    cp: Running,
    _dir: TempDir,
}

async fn install(api: &ApiServer) -> Mesh {
    install_with(api, |_| {}).await
}

async fn install_with(api: &ApiServer, adjust: impl FnOnce(&mut ServerConfig)) -> Mesh {
    let mut webhook_yaml = None;
    for (file, text) in kustomization() {
        if file == "webhook.yaml" {
            webhook_yaml = Some(text);
            continue;
        }
        api.create_yaml(&text).await;
        if file == "crds.yaml" {
            // The CRDs serve once Established.
            for plural in ["trafficpolicies", "authorizationpolicies", "telemetries", "rollouts"] {
                wait_until(&format!("CRD {plural} established"), || async move {
                    let crd = api
                        .get(&format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.outrider.io"))
                        .await;
                    crd["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Established" && c["status"] == "True"))
                })
                .await;
            }
        }
    }
    let dir = TempDir::new("kube-inject");
    let mut config = cp_config(api, &dir).await;
    adjust(&mut config);
    let cp =
        tokio::task::spawn_blocking(move || server::start(config)).await.unwrap().expect("the control plane starts");
    let port = cp.webhook_addr.expect("a webhook port").port();

    let mut configuration: Value = serde_yaml_ng::from_str(&webhook_yaml.expect("webhook.yaml")).unwrap();
    assert_eq!(configuration["metadata"]["name"], CONFIGURATION);
    assert_eq!(configuration["webhooks"][0]["clientConfig"]["service"]["name"], "outrider");
    configuration["webhooks"][0]["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}/inject")});
    api.create("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", &configuration).await;

    // The leader fills the caBundle with the CA's root, the one that signed the webhook's
    // certificate (which the API server then verifies: the pods below are injected over TLS).
    let root = cp.ca.root_pem().to_owned();
    let path = format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}");
    wait_until("the caBundle is the CA's root", || {
        let (root, path) = (root.clone(), path.clone());
        async move {
            let c = api.get(&path).await;
            let bundle = c["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap_or_default();
            base64::engine::general_purpose::STANDARD.decode(bundle).is_ok_and(|b| b == root.as_bytes())
        }
    })
    .await;
    Mesh { cp, _dir: dir }
}

/// The control plane as the manifests run it: least privilege, for real (its service account's
/// RBAC only), a webhook port, the webhook configuration's caBundle kept.
async fn cp_config(api: &ApiServer, dir: &TempDir) -> ServerConfig {
    let token = api.service_account_token(NS, "outrider-control-plane", SA_ISSUER).await;
    let kubeconfig = api.kubeconfig_with_token("outrider-control-plane", &token);
    let mut kube = KubeSettings::new();
    kube.kubeconfig = Some(kubeconfig);
    kube.namespace = NS.to_owned();
    ServerConfig {
        kubernetes: Some(kube),
        webhook: WebhookSettings {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            inject: InjectConfig::new(""),
            configuration: Some(CONFIGURATION.to_owned()),
        },
        ..ServerConfig::local(dir.path().join("data"))
    }
}

async fn namespace(api: &ApiServer, name: &str, inject: bool) {
    let labels = if inject { json!({"outrider.io/inject": "enabled"}) } else { json!({}) };
    api.create(
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}}),
    )
    .await;
}

async fn service_account(api: &ApiServer, namespace: &str, name: &str) {
    api.create(
        &format!("/api/v1/namespaces/{namespace}/serviceaccounts"),
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
    )
    .await;
}

fn pod(name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "reviews", "version": "v1"}, "annotations": annotations},
        "spec": {"serviceAccountName": "reviews",
            "containers": [{"name": "app", "image": "example.org/reviews:1", "ports": [{"containerPort": 9080}]}]}})
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {container}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_in_a_labelled_namespace_comes_back_injected_and_an_opted_out_or_unlabelled_one_does_not() {
    let Some(api) = ApiServer::start().await else { return };
    let mesh = install(&api).await;
    namespace(&api, "shop", true).await;
    namespace(&api, "plain", false).await;
    service_account(&api, "shop", "reviews").await;
    service_account(&api, "plain", "reviews").await;

    let created = api.create("/api/v1/namespaces/shop/pods", &pod("reviews-1", json!({}))).await;
    let inits = created["spec"]["initContainers"].as_array().expect("init containers were added");
    let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["outrider-init", PROXY_CONTAINER], "{created}");
    // The redirection: root with NET_ADMIN/NET_RAW only, the proxy's uid exempt.
    let init = &inits[0];
    assert_eq!(init["command"], json!(["/usr/local/bin/outrider-proxy", "iptables", "--apply"]));
    assert_eq!(init["securityContext"]["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    // The proxy as a native sidecar, held ready before the app starts.
    let proxy = &inits[1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/healthz/ready");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    // Downward API: the pod's IP, namespace, service account and labels.
    assert_eq!(env(proxy, "OUTRIDER_POD_IP")["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    assert_eq!(env(proxy, "OUTRIDER_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env(proxy, "OUTRIDER_SERVICE_ACCOUNT")["valueFrom"]["fieldRef"]["fieldPath"], "spec.serviceAccountName");
    assert_eq!(env(proxy, "OUTRIDER_SERVICE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.labels['app']");
    assert_eq!(env(proxy, "OUTRIDER_LABEL")["value"], "app=$(OUTRIDER_LABEL_0),version=$(OUTRIDER_LABEL_1)");
    // It trusts the mesh's root and proves its identity with a token of the mesh's audience.
    assert_eq!(env(proxy, "OUTRIDER_CA_ROOT_PEM")["value"], mesh.cp.ca.root_pem());
    let volume = created["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "outrider-token")
        .expect("the token volume")
        .clone();
    assert_eq!(volume["projected"]["sources"][0]["serviceAccountToken"]["audience"], "outrider");
    assert!(created["metadata"]["annotations"]["outrider.io/injected"].is_string(), "{created}");
    // The app itself is untouched.
    assert_eq!(created["spec"]["containers"].as_array().unwrap().len(), 1);
    assert_eq!(created["spec"]["containers"][0]["name"], "app");

    // Opted out by annotation: stored as sent.
    let out =
        api.create("/api/v1/namespaces/shop/pods", &pod("reviews-2", json!({"outrider.io/inject": "false"}))).await;
    assert!(out["spec"]["initContainers"].is_null(), "{out}");
    assert!(out["metadata"]["annotations"]["outrider.io/injected"].is_null(), "{out}");
    // A namespace without the label: the API server does not even ask.
    let plain = api.create("/api/v1/namespaces/plain/pods", &pod("reviews-1", json!({}))).await;
    assert!(plain["spec"]["initContainers"].is_null(), "{plain}");
    // A bad annotation in a meshed namespace: refused, naming it.
    let bad = api
        .request(
            Method::POST,
            "/api/v1/namespaces/shop/pods",
            Some(&pod("reviews-3", json!({"outrider.io/inject": "maybe"}))),
        )
        .await
        .unwrap();
    assert_eq!(bad.status.as_u16(), 400, "{}", bad.body);
    assert!(bad.body["message"].as_str().unwrap().contains("outrider.io/inject"), "{}", bad.body);
    drop(mesh);
}

/// `POST /v1/certificates` with `token` for `spiffe` → (status, body).
async fn certificate(mesh: &Mesh, token: &str, spiffe: &str) -> (u16, Value) {
    let key = tls::new_key_and_csr(&Identity::parse(spiffe).unwrap()).unwrap();
    let reply = outrider_control_plane::cli::client::send(
        &format!("http://{}", mesh.cp.api_addr),
        Method::POST,
        "/v1/certificates",
        Some(token),
        Some(json!({"csr": key.csr_pem}).to_string()),
    )
    .await
    .unwrap();
    (reply.status.as_u16(), reply.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_of_the_mesh_audience_gets_its_accounts_certificate_and_no_other() {
    let Some(api) = ApiServer::start().await else { return };
    let mesh = install(&api).await;
    namespace(&api, "shop", true).await;
    for sa in ["reviews", "ratings", "gone"] {
        service_account(&api, "shop", sa).await;
    }
    const REVIEWS: &str = "spiffe://outrider.local/ns/shop/sa/reviews";

    let reviews = api.service_account_token("shop", "reviews", "outrider").await;
    let (status, reply) = certificate(&mesh, &reviews, REVIEWS).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["identity"], REVIEWS);

    // Another account's token does not get reviews' certificate.
    let ratings = api.service_account_token("shop", "ratings", "outrider").await;
    let (status, reply) = certificate(&mesh, &ratings, REVIEWS).await;
    assert_eq!(status, 403, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("sa/ratings"), "{reply}");

    // reviews' token for another audience (the API server's own) is refused by the review.
    let api_audience = api.service_account_token("shop", "reviews", SA_ISSUER).await;
    let (status, reply) = certificate(&mesh, &api_audience, REVIEWS).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("audience"), "{reply}");

    // A token whose account was deleted is refused.
    let gone = api.service_account_token("shop", "gone", "outrider").await;
    api.request(Method::DELETE, "/api/v1/namespaces/shop/serviceaccounts/gone", None).await.unwrap();
    let (status, reply) = certificate(&mesh, &gone, "spiffe://outrider.local/ns/shop/sa/gone").await;
    assert_eq!(status, 401, "{reply}");

    // Not a token the API server signed at all.
    let forged = format!("{}.e30.c2ln", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#));
    let (status, reply) = certificate(&mesh, &forged, REVIEWS).await;
    assert_eq!(status, 401, "{reply}");
}

/// `outrider check` against the cluster and the control plane: (exit code, stdout).
async fn check(api: &ApiServer, mesh: &Mesh) -> (i32, String) {
    let out = tokio::process::Command::new(outrider_tests::control_plane::outrider_bin())
        .arg("check")
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args(["--server", &format!("http://{}", mesh.cp.api_addr)])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.stderr.is_empty() || out.status.code().is_some(), "{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

fn line<'a>(report: &'a str, check: &str) -> &'a str {
    report.lines().find(|l| l.contains(&format!(" {check}: "))).unwrap_or_else(|| panic!("no {check} in:\n{report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outrider_check_passes_only_when_every_check_does_and_says_what_to_fix() {
    let Some(api) = ApiServer::start().await else { return };
    let mesh = install(&api).await;
    namespace(&api, "shop", true).await;

    // No kubelet here: the Deployment's replicas never become ready by themselves.
    let (code, report) = check(&api, &mesh).await;
    assert_eq!(code, 1, "{report}");
    assert!(line(&report, "control plane replicas ready").starts_with("FAIL"), "{report}");
    assert!(report.contains("fix: kubectl -n outrider-system describe deployment outrider-control-plane"), "{report}");
    for passing in ["CRDs installed and current", "webhook caBundle valid", "webhook reachable", "proxies in sync"] {
        assert!(line(&report, passing).starts_with("ok"), "{passing}:\n{report}");
    }

    // What a kubelet would report.
    let status = json!({"status": {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}});
    let r = api
        .request_as(
            Some(api.token()),
            Method::PATCH,
            "/apis/apps/v1/namespaces/outrider-system/deployments/outrider-control-plane/status",
            Some(&status),
            "application/merge-patch+json",
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let (code, report) = check(&api, &mesh).await;
    assert_eq!(code, 0, "{report}");

    // A policy for a service that does not exist: refused (by the leader's status) and named.
    let policy = json!({"apiVersion": "outrider.io/v1", "kind": "TrafficPolicy",
        "metadata": {"name": "ghost", "namespace": "shop"}, "spec": {"service": "ghost", "timeout": "1s"}});
    api.create("/apis/outrider.io/v1/namespaces/shop/trafficpolicies", &policy).await;
    wait_until("the policy's Accepted condition", || async {
        let p = api.get("/apis/outrider.io/v1/namespaces/shop/trafficpolicies/ghost").await;
        p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Accepted"))
    })
    .await;
    let (code, report) = check(&api, &mesh).await;
    assert_eq!(code, 1, "{report}");
    let missing = line(&report, "policies name existing services");
    assert!(missing.starts_with("FAIL") && missing.contains("TrafficPolicy shop/ghost"), "{report}");
    // Its only other problem is the missing service: accepted otherwise, counted in the singular.
    assert!(line(&report, "policies accepted").ends_with(": 1 policy"), "{report}");
    api.request(Method::DELETE, "/apis/outrider.io/v1/namespaces/shop/trafficpolicies/ghost", None).await.unwrap();

    // The caBundle emptied (an old manifest re-applied): the leader puts it back, and until then
    // check says so.
    let path = format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}");
    let mut configuration = api.get(&path).await;
    configuration["webhooks"][0]["clientConfig"]["caBundle"] = json!(
        base64::engine::general_purpose::STANDARD
            .encode("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    );
    let r = api.request(Method::PUT, &path, Some(&configuration)).await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let root = mesh.cp.ca.root_pem().to_owned();
    wait_until("the leader restores the caBundle", || {
        let (root, path) = (root.clone(), path.clone());
        let api = &api;
        async move {
            let c = api.get(&path).await;
            let bundle = c["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap_or_default();
            base64::engine::general_purpose::STANDARD.decode(bundle).is_ok_and(|b| b == root.as_bytes())
        }
    })
    .await;
    let (code, report) = check(&api, &mesh).await;
    assert_eq!(code, 0, "{report}");
}

/// The value of each `env` entry of an injected container, as the kubelet would set it: plain
/// values with `$(VAR)` of earlier entries expanded, `fieldRef`s from the pod's facts.
fn resolve_env(container: &Value, facts: &[(&str, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = if let Some(path) = e.pointer("/valueFrom/fieldRef/fieldPath").and_then(Value::as_str) {
            facts.iter().find(|(p, _)| *p == path).unwrap_or_else(|| panic!("no fact for {path}")).1.clone()
        } else {
            let mut v = e["value"].as_str().unwrap_or_default().to_owned();
            for (k, val) in &out {
                v = v.replace(&format!("$({k})"), val);
            }
            v
        };
        out.push((name, value));
    }
    out
}

/// Python inside the namespace: GET a URL; prints the status and the body, or `ERR`.
const GET: &str = "import sys, urllib.request\ntry:\n    r = urllib.request.urlopen(sys.argv[1], timeout=2)\n    print(r.status)\n    print(r.read().decode())\nexcept Exception as e:\n    print('ERR', e)\n";

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The pod, run as its kubelet would (no kubelet here): a network namespace with a veth to the
/// host (the control plane listens on the host end only), its injected init container (the
/// iptables rules), its injected proxy (uid 1337, the environment the pod spec gives it, its
/// service-account token from the TokenRequest API bound to the pod), then the app once the
/// proxy is ready — and a request to the pod's IP is served through the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_pod_runs_as_its_spec_says_and_serves_through_its_sidecar() {
    if let Some(why) = outrider_tests::netns::unsupported() {
        outrider_tests::skip(&format!("skipping: {why}"));
        return;
    }
    let Some(api) = ApiServer::start().await else { return };
    let ns = outrider_tests::netns::Netns::create().unwrap();
    let n = 20 + std::process::id() % 200;
    let (host_ip, pod_ip) = (format!("10.252.{n}.1"), format!("10.252.{n}.2"));
    let host_end = format!("orp{n}");
    ip(&["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
    ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_end]);
    ip(&["link", "set", &host_end, "up"]);
    ip(&["-n", &ns.name, "addr", "add", &format!("{pod_ip}/30"), "dev", "eth0"]);
    ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
    ip(&["-n", &ns.name, "route", "add", "default", "via", &host_ip]);

    // The control plane on the host end: xDS and the API (the proxy's CA is the xDS host, port
    // 15014) over TLS, injecting pods that reach it there.
    let xds_port = std::net::TcpListener::bind((host_ip.as_str(), 0)).unwrap().local_addr().unwrap().port();
    let host: std::net::IpAddr = host_ip.parse().unwrap();
    let mesh = install_with(&api, |c| {
        c.tls = true;
        c.xds = (host, xds_port).into();
        c.api = (host, 15014).into();
        c.webhook.inject.xds_address = format!("https://{host}:{xds_port}");
    })
    .await;
    namespace(&api, "shop", true).await;
    service_account(&api, "shop", "reviews").await;
    api.create(
        "/api/v1/namespaces/shop/services",
        &json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "reviews"},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}}),
    )
    .await;
    let created = api.create("/api/v1/namespaces/shop/pods", &pod("reviews-1", json!({}))).await;
    let uid = created["metadata"]["uid"].as_str().unwrap();
    // What the kubelet and the EndpointSlice controller would write.
    let status = json!({"status": {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}});
    let r = api
        .request_as(
            Some(api.token()),
            Method::PATCH,
            "/api/v1/namespaces/shop/pods/reviews-1/status",
            Some(&status),
            "application/merge-patch+json",
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    api.create(
        "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
        &json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "reviews-1", "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [pod_ip], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": "reviews-1", "namespace": "shop", "uid": uid}}]}),
    )
    .await;

    // The projected token, as the kubelet gets it: bound to the pod, the mesh's audience.
    let token = api
        .create(
            "/api/v1/namespaces/shop/serviceaccounts/reviews/token",
            &json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["outrider"], "expirationSeconds": 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "reviews-1", "uid": uid}}}),
        )
        .await["status"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let volumes = TempDir::new("kube-pod-volumes");
    let token_dir = volumes.path().join("outrider-token");
    std::fs::create_dir_all(&token_dir).unwrap();
    std::fs::write(token_dir.join("token"), &token).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    for dir in [volumes.path(), token_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(token_dir.join("token"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let inits = created["spec"]["initContainers"].as_array().unwrap();
    let proxy_bin = outrider_tests::binary::proxy_bin();
    let binary = |container: &Value| {
        let command: Vec<String> =
            container["command"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
        assert_eq!(command[0], "/usr/local/bin/outrider-proxy");
        let args = container["args"].as_array().into_iter().flatten().map(|a| a.as_str().unwrap().to_owned());
        command[1..].iter().cloned().chain(args).collect::<Vec<_>>()
    };
    // 1. outrider-init, as root: the redirection.
    let out = ns.command(&proxy_bin).args(binary(&inits[0])).output().await.unwrap();
    assert!(out.status.success(), "outrider-init: {}", String::from_utf8_lossy(&out.stderr));

    // 2. outrider-proxy, as its securityContext says, with its environment.
    let proxy = &inits[1];
    let uid_1337 = proxy["securityContext"]["runAsUser"].as_u64().unwrap().to_string();
    let facts = [
        ("metadata.name", "reviews-1".to_owned()),
        ("metadata.namespace", "shop".to_owned()),
        ("spec.serviceAccountName", "reviews".to_owned()),
        ("status.podIP", pod_ip.clone()),
        ("metadata.labels['app']", "reviews".to_owned()),
        ("metadata.labels['version']", "v1".to_owned()),
    ];
    let mount = proxy["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let mut cmd = ns.command("setpriv");
    cmd.args([&format!("--reuid={uid_1337}"), &format!("--regid={uid_1337}"), "--clear-groups", "--"]);
    cmd.arg(&proxy_bin).args(binary(proxy));
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in resolve_env(proxy, &facts) {
        cmd.env(k, v.replace(mount, token_dir.to_str().unwrap()));
    }
    let mut sidecar = outrider_tests::netns::Background::spawn(cmd);
    // Its startup probe: the app starts once this answers 200 (first config and certificate).
    let probe = proxy["startupProbe"]["httpGet"].clone();
    let ready_url = format!("http://127.0.0.1:{}{}", probe["port"], probe["path"].as_str().unwrap());
    wait_until("the proxy's startup probe passes", || {
        let (ns, url) = (&ns, ready_url.clone());
        async move { ns.run_python(GET, &[&url]).await.stdout.starts_with(b"200") }
    })
    .await;
    sidecar.wait_for_line("certificate").await;

    // 3. The app, unaware of the proxy.
    let mut app = outrider_tests::netns::Background::spawn({
        let mut c = ns.python();
        c.args(["-m", "http.server", "9080", "--bind", "0.0.0.0"]);
        c
    });
    app.wait_for_line("Serving HTTP").await;

    // A caller outside the pod: its request to the pod's IP is redirected to the sidecar's
    // inbound listener and delivered to the app.
    let url = format!("http://{pod_ip}:9080/");
    let body = outrider_tests::wait::wait_for("the app answers through the sidecar", || {
        let url = url.clone();
        async move {
            let out = tokio::process::Command::new("python3").args(["-c", GET, &url]).output().await.ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.starts_with("200").then_some(text)
        }
    })
    .await;
    assert!(body.contains("Directory listing"), "{body}");
    let metrics = ns.run_python(GET, &["http://127.0.0.1:15090/metrics"]).await;
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.lines().any(|l| l.starts_with("outrider_requests_total{")
            && l.contains("direction=\"inbound\"")
            && l.contains("code=\"200\"")),
        "the request went through the sidecar's inbound listener:\n{metrics}"
    );
    drop(app);
    drop(sidecar);
    drop(mesh);
}

/// Put a new root in the CA Secret (`tls.crt`/`tls.key`) and the mesh's current root in its
/// `ca.crt`, as an operator rotating the root does; returns (old root, new root).
async fn rotate_root_in_secret(api: &ApiServer, mesh: &Mesh) -> (String, String) {
    let old_root = mesh.cp.ca.root_pem().to_owned();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (new_root, new_key) = outrider_control_plane::ca::generate_root_pem(mesh.cp.ca.trust_domain()).unwrap();
    let secret_path = format!("/api/v1/namespaces/{NS}/secrets/outrider-ca");
    let mut secret = api.get(&secret_path).await;
    secret["data"] = json!({"tls.crt": b64(&new_root), "tls.key": b64(&new_key), "ca.crt": b64(&old_root)});
    api.request(Method::PUT, &secret_path, Some(&secret)).await.unwrap().expect(200);
    (old_root, new_root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_root_rotation_the_webhooks_ca_bundle_holds_the_new_and_the_old_root_and_pods_are_injected() {
    let Some(api) = ApiServer::start().await else { return };
    let mesh = install(&api).await;
    // The operator rotates the root (docs/kubernetes.md): the new root signs, the old one stays
    // trusted through the Secret's ca.crt.
    let (old_root, new_root) = rotate_root_in_secret(&api, &mesh).await;

    // A rolling restart: the old replica stops (releasing the Lease), a new one reads the Secret.
    let Mesh { cp, _dir } = mesh;
    tokio::task::spawn_blocking(move || cp.shutdown()).await.unwrap();
    let dir = TempDir::new("kube-inject-rotated");
    let config = cp_config(&api, &dir).await;
    let cp = tokio::task::spawn_blocking(move || server::start(config)).await.unwrap().expect("the new replica starts");
    assert_eq!(cp.ca.root_pem().trim(), new_root.trim(), "the new replica signs with the new root");
    let bundle = cp.ca.trust_bundle();
    assert_eq!(bundle.roots.len(), 2, "the new and the old root: {bundle:?}");
    assert_eq!(bundle.roots[1].trim(), old_root.trim());

    // The Service now routes to the new replica's webhook port.
    let path = format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}");
    let url = format!("https://127.0.0.1:{}/inject", cp.webhook_addr.expect("a webhook port").port());
    let patch = json!([{"op": "replace", "path": "/webhooks/0/clientConfig/url", "value": url}]);
    api.request_as(Some(api.token()), Method::PATCH, &path, Some(&patch), "application/json-patch+json")
        .await
        .unwrap()
        .expect(200);
    // The new leader puts the new bundle in the caBundle…
    let want = bundle.to_pem();
    let api_ref = &api;
    wait_until("the caBundle is the new and the old root", || {
        let (want, path) = (want.clone(), path.clone());
        async move {
            let c = api_ref.get(&path).await;
            let got = c["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap_or_default();
            base64::engine::general_purpose::STANDARD.decode(got).is_ok_and(|b| b == want.as_bytes())
        }
    })
    .await;
    // …with which the API server verifies the webhook's new certificate: pods are injected, and
    // their sidecars trust both roots.
    namespace(&api, "shop", true).await;
    service_account(&api, "shop", "reviews").await;
    let created = api.create("/api/v1/namespaces/shop/pods", &pod("reviews-1", json!({}))).await;
    let inits = created["spec"]["initContainers"].as_array().expect("init containers were added");
    let proxy = inits.iter().find(|c| c["name"] == PROXY_CONTAINER).expect("the sidecar");
    assert_eq!(env(proxy, "OUTRIDER_CA_ROOT_PEM")["value"], want.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotated_in_the_secret_reaches_the_ca_bundle_and_injected_pods_without_a_restart() {
    let Some(api) = ApiServer::start().await else { return };
    let mesh = install(&api).await;
    // The operator puts a new root in the Secret, the old one in ca.crt; nothing is restarted.
    let (old_root, new_root) = rotate_root_in_secret(&api, &mesh).await;

    // The running replica trusts both at once (it keeps signing with the root it started with
    // until its restart), and the leader puts both in the caBundle.
    let path = format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}");
    let (old, new) = (old_root.trim().to_owned(), new_root.trim().to_owned());
    let api_ref = &api;
    wait_until("the caBundle to hold the old and the new root", || {
        let (path, old, new) = (path.clone(), old.clone(), new.clone());
        async move {
            let c = api_ref.get(&path).await;
            let got = c["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap_or_default();
            let got = base64::engine::general_purpose::STANDARD.decode(got).unwrap_or_default();
            let got = String::from_utf8_lossy(&got).into_owned();
            got.contains(&old) && got.contains(&new)
        }
    })
    .await;
    assert_eq!(mesh.cp.ca.root_pem().trim(), old_root.trim(), "signing moves to the new root at the restart");
    let bundle = mesh.cp.ca.trust_bundle();
    assert_eq!(bundle.roots.len(), 2, "{bundle:?}");
    assert_eq!(bundle.roots[1].trim(), new_root.trim());

    // The webhook (still serving a certificate of the old root) injects, and the sidecars trust both.
    namespace(&api, "shop", true).await;
    service_account(&api, "shop", "reviews").await;
    let created = api.create("/api/v1/namespaces/shop/pods", &pod("reviews-1", json!({}))).await;
    let inits = created["spec"]["initContainers"].as_array().expect("init containers were added");
    let proxy = inits.iter().find(|c| c["name"] == PROXY_CONTAINER).expect("the sidecar");
    assert_eq!(env(proxy, "OUTRIDER_CA_ROOT_PEM")["value"], bundle.to_pem().as_str());
}
