//! `outrider check`: is the mesh on this cluster in order? (as `linkerd check` / `istioctl
//! analyze`). It reads the cluster (kubeconfig, as kubectl) and the control plane's API
//! (`--server`, e.g. through `kubectl -n outrider-system port-forward svc/outrider 15014`) and
//! prints one line per check, with a fix for each that fails:
//!
//! - the CRDs are installed and the same as this version's;
//! - the injection webhook's configuration exists, its caBundle holds the control plane's CA
//!   roots, and the webhook answers (its Service has ready endpoints; a `url` webhook is called,
//!   its certificate verified against the caBundle);
//! - the control plane's replicas are ready;
//! - no proxy is out of sync or NACKing;
//! - no CA root is near expiry;
//! - every policy is accepted and names services that exist.
//!
//! Exit 0 only when every check passes, 1 otherwise, 2 for bad usage.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use super::Connection;
use super::client::send_with_root;
use crate::kubernetes::crds::{KINDS, definition};
use crate::kubernetes::status::api_resource;
use crate::kubernetes::webhook::{CONFIGURATION, SERVICE};
use crate::kubernetes::{Kube, KubeSettings};

/// The control plane's Deployment in its namespace.
pub const DEPLOYMENT: &str = "outrider-control-plane";
/// A CA root expiring sooner than this fails the check.
pub const ROOT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub name: &'static str,
    /// `None`: passed; `Some(problem)`: failed.
    pub problem: Option<String>,
    /// What passing looked like, or how to fix the problem.
    pub detail: String,
}

impl Outcome {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self { name, problem: None, detail: detail.into() }
    }

    fn fail(name: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name, problem: Some(problem.into()), detail: fix.into() }
    }

    pub fn passed(&self) -> bool {
        self.problem.is_none()
    }
}

/// Installed CRD `installed` against this version's `wanted` (both JSON): the versions, their
/// schemas and subresources must be the same.
pub fn crd_current(wanted: &Value, installed: &Value) -> Result<(), String> {
    let versions = |crd: &Value| -> Vec<(String, Value, Value)> {
        crd.pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .map(|v| {
                        (
                            v["name"].as_str().unwrap_or_default().to_owned(),
                            v.pointer("/schema/openAPIV3Schema").map_or(Value::Null, numbers_as_floats),
                            v.get("subresources").cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (want, have) = (versions(wanted), versions(installed));
    for (name, schema, subresources) in &want {
        match have.iter().find(|(n, _, _)| n == name) {
            None => return Err(format!("version {name} is not served")),
            Some((_, s, _)) if s != schema => {
                let at = first_difference(schema, s, String::new());
                return Err(format!("the schema of version {name} differs at {at}"));
            }
            Some((_, _, sub)) if sub != subresources => {
                return Err(format!("the subresources of version {name} differ"));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `value` with every number as a float: the API server's types keep `minimum` and `maximum`
/// as floats (`0.0`) where the generated schema has integers (`0`).
fn numbers_as_floats(value: &Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), numbers_as_floats(v))).collect()),
        other => other.clone(),
    }
}

/// The JSON path of the first place `want` and `have` differ.
fn first_difference(want: &Value, have: &Value, at: String) -> String {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, v) in w {
                match h.get(k) {
                    Some(hv) if hv == v => {}
                    Some(hv) => return first_difference(v, hv, format!("{at}.{k}")),
                    None => return format!("{at}.{k} (missing)"),
                }
            }
            match h.keys().find(|k| !w.contains_key(*k)) {
                Some(k) => format!("{at}.{k} (unexpected)"),
                None => at,
            }
        }
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => {
            match w.iter().zip(h).enumerate().find(|(_, (a, b))| a != b) {
                Some((i, (a, b))) => first_difference(a, b, format!("{at}[{i}]")),
                None => at,
            }
        }
        _ => {
            if at.is_empty() {
                ".".to_owned()
            } else {
                at
            }
        }
    }
}

/// The PEM certificates of a caBundle (base64 already decoded by the API types).
fn pem_certs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find("-----END CERTIFICATE-----") else { break };
        let end = start + end + "-----END CERTIFICATE-----".len();
        out.push(rest[start..end].trim().to_owned());
        rest = &rest[end..];
    }
    out
}

/// Whether the caBundle holds every root the control plane trusts (so its serving certificate,
/// signed by one of them, verifies).
pub fn bundle_holds_roots(bundle: &str, roots: &[String]) -> Result<(), String> {
    let have = pem_certs(bundle);
    if have.is_empty() {
        return Err("the caBundle is empty or holds no PEM certificate".to_owned());
    }
    let missing = roots.iter().filter(|r| !have.iter().any(|h| h.trim() == r.trim())).count();
    if missing > 0 {
        return Err(format!("the caBundle lacks {missing} of the control plane's {} CA root(s)", roots.len()));
    }
    Ok(())
}

/// Unix seconds at which a PEM certificate expires.
fn not_after(pem: &str) -> Option<i64> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der.contents).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The roots that expire within `warning` of `now` (unix seconds), as messages.
pub fn roots_near_expiry(roots: &[String], now: i64, warning: Duration) -> Vec<String> {
    let limit = now.saturating_add(i64::try_from(warning.as_secs()).unwrap_or(i64::MAX));
    roots
        .iter()
        .enumerate()
        .filter_map(|(i, pem)| match not_after(pem) {
            None => Some(format!("root {} cannot be read", i + 1)),
            Some(t) if t <= now => Some(format!("root {} expired {} days ago", i + 1, (now - t) / 86_400)),
            Some(t) if t <= limit => Some(format!("root {} expires in {} days", i + 1, (t - now) / 86_400)),
            Some(_) => None,
        })
        .collect()
}

/// Proxies NACKing or out of sync in a `/v1/status` answer, as messages.
pub fn proxy_problems(status: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in status["proxies"].as_array().into_iter().flatten() {
        let node = p["nodeId"].as_str().unwrap_or("?");
        for (type_name, s) in p["types"].as_object().into_iter().flatten() {
            if let Some(nack) = s.get("nack").filter(|n| !n.is_null()) {
                out.push(format!("{node} NACKs {type_name}: {}", nack["error"].as_str().unwrap_or("")));
            } else if s["sent"] != s["acked"] {
                out.push(format!(
                    "{node} has not ACKed {type_name} {} (it has {})",
                    s["sent"].as_str().unwrap_or(""),
                    s["acked"].as_str().unwrap_or("nothing")
                ));
            }
        }
    }
    out
}

/// Policies whose `Accepted` condition is not True: (missing-service messages, other messages).
pub fn policy_problems(objects: &[(String, Value)]) -> (Vec<String>, Vec<String>) {
    let (mut missing, mut other) = (Vec::new(), Vec::new());
    for (kind, o) in objects {
        let name = format!(
            "{kind} {}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        );
        let condition = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Accepted"));
        match condition {
            Some(c) if c["status"] == "True" => {}
            Some(c) => {
                let message = c["message"].as_str().unwrap_or("");
                let line = format!("{name}: {message}");
                if message.contains("no Service named") { missing.push(line) } else { other.push(line) }
            }
            None => other.push(format!("{name}: no Accepted condition yet (is a control plane replica leading?)")),
        }
    }
    (missing, other)
}

/// What `outrider check` needs to reach.
#[derive(Debug, Clone)]
pub struct CheckArgs {
    pub kube: KubeSettings,
    pub conn: Connection,
}

/// Runs every check; prints them; exit code.
pub fn check(args: &CheckArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outrider: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcomes = rt.block_on(run(args));
    let mut text = String::new();
    for o in &outcomes {
        match &o.problem {
            None => {
                let _ = writeln!(text, "ok    {}: {}", o.name, o.detail);
            }
            Some(problem) => {
                let _ = writeln!(text, "FAIL  {}: {problem}\n      fix: {}", o.name, o.detail);
            }
        }
    }
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    let _ = writeln!(text, "{} checks, {failed} failed", outcomes.len());
    print!("{text}");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// Every check, in order. A check that cannot reach what it looks at fails with that reason.
pub async fn run(args: &CheckArgs) -> Vec<Outcome> {
    let kube = match Kube::connect(&args.kube).await {
        Ok(k) => k,
        Err(e) => {
            return vec![Outcome::fail("cluster", e.to_string(), "point --kubeconfig (or KUBECONFIG) at the cluster")];
        }
    };
    let mut out = vec![Outcome::pass("cluster", format!("reached {}", kube.url))];
    out.push(check_crds(&kube).await);
    let configuration = Api::<MutatingWebhookConfiguration>::all(kube.client.clone()).get_opt(CONFIGURATION).await;
    let bundle = match &configuration {
        Ok(Some(c)) => c
            .webhooks
            .iter()
            .flatten()
            .next()
            .and_then(|w| w.client_config.ca_bundle.as_ref())
            .map(|b| String::from_utf8_lossy(&b.0).into_owned()),
        _ => None,
    };
    let roots = control_plane_roots(args, bundle.as_deref()).await;
    out.push(check_bundle(&configuration, &roots));
    out.push(check_webhook_reachable(&kube, &configuration, bundle.as_deref()).await);
    out.push(check_replicas(&kube).await);
    out.push(check_proxies(args, bundle.as_deref()).await);
    out.push(check_roots(&roots));
    out.extend(check_policies(&kube).await);
    out
}

async fn check_crds(kube: &Kube) -> Outcome {
    const NAME: &str = "CRDs installed and current";
    let fix = "kubectl apply --server-side -f deploy/kubernetes/crds.yaml (from this version)";
    let api = Api::<CustomResourceDefinition>::all(kube.client.clone());
    let mut problems = Vec::new();
    for kind in KINDS {
        match api.get_opt(&kind.crd_name()).await {
            Ok(Some(crd)) => {
                let installed = serde_json::to_value(&crd).unwrap_or(Value::Null);
                if let Err(e) = crd_current(&definition(kind), &installed) {
                    problems.push(format!("{}: {e} (an older or newer Outrider's)", kind.crd_name()));
                }
            }
            Ok(None) => problems.push(format!("{} is not installed", kind.crd_name())),
            Err(e) => problems.push(format!("cannot read {}: {e}", kind.crd_name())),
        }
    }
    if problems.is_empty() {
        Outcome::pass(NAME, format!("{} kinds of outrider.io/v1", KINDS.len()))
    } else {
        Outcome::fail(NAME, problems.join("; "), fix)
    }
}

/// The control plane's roots (`GET /v1/ca/bundle`); an https `--server` without `--ca-root` is
/// verified against the webhook's caBundle.
async fn control_plane_roots(args: &CheckArgs, bundle: Option<&str>) -> Result<Vec<String>, String> {
    let reply = api_call(args, bundle, "/v1/ca/bundle").await?;
    let roots: Vec<String> =
        reply["roots"].as_array().into_iter().flatten().filter_map(|r| r.as_str().map(str::to_owned)).collect();
    if roots.is_empty() {
        return Err(format!("{} answered no CA roots", args.conn.server));
    }
    Ok(roots)
}

async fn api_call(args: &CheckArgs, bundle: Option<&str>, path: &str) -> Result<Value, String> {
    let server = &args.conn.server;
    // An https server with no --ca-root: trust what the API server trusts for the webhook.
    let temp;
    let root = match (&args.conn.ca_root, bundle) {
        (Some(r), _) => Some(r.as_path()),
        (None, Some(b)) if server.starts_with("https://") => {
            temp = std::env::temp_dir().join(format!("outrider-check-{}.pem", std::process::id()));
            std::fs::write(&temp, b).map_err(|e| format!("{}: {e}", temp.display()))?;
            Some(temp.as_path())
        }
        _ => None,
    };
    let result = send_with_root(server, root, Method::GET, path, args.conn.token.as_deref(), None).await;
    if root.is_some() && args.conn.ca_root.is_none() {
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("outrider-check-{}.pem", std::process::id())));
    }
    let reply = result.map_err(|e| format!("cannot reach the control plane at {server}: {e}"))?;
    if !reply.status.is_success() {
        return Err(format!("{server}{path} answered {}", reply.status));
    }
    Ok(reply.json())
}

fn check_bundle(
    configuration: &kube::Result<Option<MutatingWebhookConfiguration>>,
    roots: &Result<Vec<String>, String>,
) -> Outcome {
    const NAME: &str = "webhook caBundle valid";
    let configuration = match configuration {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Outcome::fail(
                NAME,
                format!("no MutatingWebhookConfiguration {CONFIGURATION}"),
                "kubectl apply -f deploy/kubernetes/webhook.yaml",
            );
        }
        Err(e) => return Outcome::fail(NAME, format!("cannot read {CONFIGURATION}: {e}"), "check your RBAC"),
    };
    let roots = match roots {
        Ok(r) => r,
        Err(e) => {
            return Outcome::fail(
                NAME,
                e.clone(),
                "reach the control plane's API: kubectl -n outrider-system port-forward svc/outrider 15014, then --server https://127.0.0.1:15014",
            );
        }
    };
    let fix = "the control plane's leader sets it within seconds: check that a replica leads \
               (kubectl -n outrider-system get lease outrider-control-plane) and may patch the configuration";
    for (i, webhook) in configuration.webhooks.iter().flatten().enumerate() {
        let bundle = webhook.client_config.ca_bundle.as_ref().map(|b| String::from_utf8_lossy(&b.0).into_owned());
        if let Err(e) = bundle_holds_roots(bundle.as_deref().unwrap_or(""), roots) {
            return Outcome::fail(NAME, format!("webhook {} ({}): {e}", i + 1, webhook.name), fix);
        }
    }
    Outcome::pass(NAME, format!("holds the control plane's {} root(s)", roots.len()))
}

async fn check_webhook_reachable(
    kube: &Kube,
    configuration: &kube::Result<Option<MutatingWebhookConfiguration>>,
    bundle: Option<&str>,
) -> Outcome {
    const NAME: &str = "webhook reachable";
    let Ok(Some(configuration)) = configuration else {
        return Outcome::fail(NAME, "no webhook configuration", "kubectl apply -f deploy/kubernetes/webhook.yaml");
    };
    let Some(webhook) = configuration.webhooks.iter().flatten().next() else {
        return Outcome::fail(
            NAME,
            "the configuration has no webhook",
            "kubectl apply -f deploy/kubernetes/webhook.yaml",
        );
    };
    if let Some(url) = &webhook.client_config.url {
        // Called as the API server calls it: TLS verified against the caBundle.
        let base = url.trim_end_matches(crate::kubernetes::webhook::PATH);
        let Some(bundle) = bundle else {
            return Outcome::fail(NAME, "no caBundle to verify it with", "see the caBundle check");
        };
        let path = std::env::temp_dir().join(format!("outrider-check-webhook-{}.pem", std::process::id()));
        if let Err(e) = std::fs::write(&path, bundle) {
            return Outcome::fail(NAME, format!("{}: {e}", path.display()), "a writable temporary directory");
        }
        let reply = send_with_root(base, Some(&path), Method::GET, "/healthz", None, None).await;
        let _ = std::fs::remove_file(&path);
        return match reply {
            Ok(r) if r.status.is_success() => {
                Outcome::pass(NAME, format!("{url} answers over TLS the caBundle verifies"))
            }
            Ok(r) => {
                Outcome::fail(NAME, format!("{url}: /healthz answered {}", r.status), "see the control plane's logs")
            }
            Err(e) => Outcome::fail(
                NAME,
                format!("{url}: {e}"),
                "is the control plane running, and is the caBundle its root?",
            ),
        };
    }
    let Some(service) = &webhook.client_config.service else {
        return Outcome::fail(
            NAME,
            "the webhook names neither a url nor a Service",
            "kubectl apply -f deploy/kubernetes/webhook.yaml",
        );
    };
    let slices = Api::<EndpointSlice>::namespaced(kube.client.clone(), &service.namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={}", service.name)))
        .await;
    let ready = match slices {
        Ok(list) => list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .count(),
        Err(e) => {
            return Outcome::fail(
                NAME,
                format!("cannot list the endpoints of {}: {e}", service.name),
                "check your RBAC",
            );
        }
    };
    if ready == 0 {
        return Outcome::fail(
            NAME,
            format!("Service {}/{} has no ready endpoint", service.namespace, service.name),
            format!(
                "kubectl -n {} get pods -l app.kubernetes.io/name=outrider; see the control plane's logs",
                service.namespace
            ),
        );
    }
    let name = if service.name == SERVICE { "the control plane".to_owned() } else { service.name.clone() };
    Outcome::pass(
        NAME,
        format!("{name} has {ready} ready endpoint(s) behind Service {}/{}", service.namespace, service.name),
    )
}

async fn check_replicas(kube: &Kube) -> Outcome {
    const NAME: &str = "control plane replicas ready";
    let fix = format!("kubectl -n {} describe deployment {DEPLOYMENT}", kube.namespace);
    match Api::<Deployment>::namespaced(kube.client.clone(), &kube.namespace).get_opt(DEPLOYMENT).await {
        Ok(Some(d)) => {
            let wanted = d.spec.replicas.unwrap_or(1);
            let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
            if ready >= wanted && ready > 0 {
                Outcome::pass(NAME, format!("{ready}/{wanted}"))
            } else {
                Outcome::fail(NAME, format!("{ready} of {wanted} ready"), fix)
            }
        }
        Ok(None) => Outcome::fail(
            NAME,
            format!("no Deployment {}/{DEPLOYMENT}", kube.namespace),
            "kubectl apply -k deploy/kubernetes (or --namespace if it lives elsewhere)",
        ),
        Err(e) => Outcome::fail(NAME, format!("cannot read the Deployment: {e}"), fix),
    }
}

async fn check_proxies(args: &CheckArgs, bundle: Option<&str>) -> Outcome {
    const NAME: &str = "proxies in sync";
    let status = match api_call(args, bundle, "/v1/status").await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(NAME, e, "reach the control plane's API (see --server)"),
    };
    let count = status["proxies"].as_array().map_or(0, Vec::len);
    let problems = proxy_problems(&status);
    if problems.is_empty() {
        Outcome::pass(NAME, format!("{count} connected, every resource ACKed"))
    } else {
        Outcome::fail(
            NAME,
            problems.join("; "),
            "a NACK names what the proxy refused: fix the policy (outrider validate), or upgrade the proxy; \
             a proxy that does not ACK is stuck or overloaded: see its logs",
        )
    }
}

fn check_roots(roots: &Result<Vec<String>, String>) -> Outcome {
    const NAME: &str = "certificates not near expiry";
    let roots = match roots {
        Ok(r) => r,
        Err(e) => return Outcome::fail(NAME, e.clone(), "reach the control plane's API (see --server)"),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let problems = roots_near_expiry(roots, now, ROOT_EXPIRY_WARNING);
    if problems.is_empty() {
        Outcome::pass(
            NAME,
            format!("{} CA root(s) valid for 30 days or more; workload certificates renew themselves", roots.len()),
        )
    } else {
        Outcome::fail(NAME, problems.join("; "), "rotate the CA root (docs/security.md: rotating the root)")
    }
}

async fn check_policies(kube: &Kube) -> Vec<Outcome> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for kind in KINDS {
        let api = Api::<DynamicObject>::all_with(kube.client.clone(), &api_resource(kind));
        match api.list(&ListParams::default()).await {
            Ok(list) => objects.extend(
                list.items.into_iter().map(|o| (kind.kind.to_owned(), serde_json::to_value(o).unwrap_or(Value::Null))),
            ),
            Err(e) => errors.push(format!("cannot list {}: {e}", kind.plural)),
        }
    }
    let (missing, other) = policy_problems(&objects);
    let names = if missing.is_empty() && errors.is_empty() {
        Outcome::pass("policies name existing services", super::count(objects.len(), "policy", "policies"))
    } else {
        let mut problems = missing;
        problems.extend(errors.iter().cloned());
        Outcome::fail(
            "policies name existing services",
            problems.join("; "),
            "create the Service, or correct spec.service (kubectl get svc -A)",
        )
    };
    let accepted = if other.is_empty() && errors.is_empty() {
        Outcome::pass("policies accepted", super::count(objects.len(), "policy", "policies"))
    } else {
        let mut problems = other;
        problems.extend(errors);
        Outcome::fail(
            "policies accepted",
            problems.join("; "),
            "the message says what to change (outrider validate -f FILE)",
        )
    };
    vec![names, accepted]
}

#[cfg(test)]
mod tests;
