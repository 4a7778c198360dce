//! The mutating admission webhook: `POST /inject` on a TLS port of its own (default 15017),
//! with the control plane's serving certificate from its own CA. The API server sends an
//! `admission.k8s.io/v1` `AdmissionReview` for each Pod created in a namespace labelled
//! `outrider.io/inject: enabled` (the MutatingWebhookConfiguration's `namespaceSelector`); the
//! answer allows the pod with the JSON Patch from the pod as received to the pod
//! [`inject`](super::inject::inject) returns.
//!
//! The review is read as plain JSON (only `uid`, `kind`, `operation`, `namespace` and `object`
//! matter) and the pod is never converted to typed structs, so a field this binary does not
//! know is neither dropped nor patched. A pod whose injection annotations are invalid is
//! refused with a message naming the annotation: the namespace asked for the mesh, and a pod
//! silently left outside it would be worse than one that does not start.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::inject::{InjectConfig, Outcome, Skip, inject};
use crate::ca::serving;
use crate::metrics::{Metrics, ResultLabels};

/// The path the MutatingWebhookConfiguration names.
pub const PATH: &str = "/inject";
/// Default port of the webhook.
pub const DEFAULT_PORT: u16 = 15017;
/// Largest review accepted (an object is at most 1.5 MiB in etcd; the review wraps it).
pub const MAX_REVIEW: usize = 8 << 20;

/// The name of the control plane's Service (its DNS names go into the serving certificate).
pub const SERVICE: &str = "outrider";
/// The MutatingWebhookConfiguration the manifests install, whose `caBundle` the control plane
/// keeps.
pub const CONFIGURATION: &str = "outrider-sidecar-injector";

/// How the control plane serves injection (with `--kubernetes`).
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Where the webhook listens (TLS); `None`: no webhook on this replica.
    pub listen: Option<std::net::SocketAddr>,
    /// The injection settings; `ca_roots_pem` is replaced by the CA's roots at start.
    pub inject: InjectConfig,
    /// The MutatingWebhookConfiguration whose `caBundle` is kept equal to the CA's roots;
    /// `None`: left alone (the operator brings the bundle).
    pub configuration: Option<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self { listen: None, inject: InjectConfig::new(""), configuration: Some(CONFIGURATION.to_owned()) }
    }
}

/// The webhook's state: the injection settings and the metrics.
pub struct Webhook {
    config: parking_lot::RwLock<Arc<InjectConfig>>,
    /// The CA's roots now (PEM), when they can change while it runs.
    roots: Option<Box<dyn Fn() -> String + Send + Sync>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").finish_non_exhaustive()
    }
}

/// Why a review could not be answered at all (the API server then applies the
/// `failurePolicy`); an answerable review that refuses the pod is not an error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    Json(String),
    #[error("not an admission.k8s.io/v1 AdmissionReview with a request.uid")]
    NotAReview,
}

impl Webhook {
    pub fn new(config: InjectConfig, metrics: Metrics) -> Self {
        Self { config: parking_lot::RwLock::new(Arc::new(config)), roots: None, metrics }
    }

    /// Injected pods trust what `roots` returns at the time of each review (the CA's roots
    /// follow the CA root Secret), instead of the configuration's `ca_roots_pem`.
    pub fn with_roots(mut self, roots: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.roots = Some(Box::new(roots));
        self
    }

    /// The settings in force (with the CA's roots of now).
    pub fn config(&self) -> Arc<InjectConfig> {
        let current = self.config.read().clone();
        let Some(roots) = &self.roots else { return current };
        let roots = roots();
        if roots == current.ca_roots_pem {
            return current;
        }
        let mut next = (*current).clone();
        next.ca_roots_pem = roots;
        let next = Arc::new(next);
        *self.config.write() = next.clone();
        next
    }

    fn count(&self, result: &'static str) {
        self.metrics.injections.get_or_create(&ResultLabels { result }).inc();
    }

    /// The answer to one `AdmissionReview` (its JSON body).
    pub fn review(&self, body: &[u8]) -> Result<Value, ReviewError> {
        let review: Value = serde_json::from_slice(body).map_err(|e| ReviewError::Json(e.to_string()))?;
        let request = review.get("request").ok_or(ReviewError::NotAReview)?;
        let uid = request.get("uid").and_then(Value::as_str).ok_or(ReviewError::NotAReview)?;
        let api_version = review.get("apiVersion").and_then(Value::as_str).unwrap_or("admission.k8s.io/v1");
        let answer =
            |response: Value| json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response});
        let allow = || json!({"uid": uid, "allowed": true});

        let kind = request.pointer("/kind/kind").and_then(Value::as_str).unwrap_or_default();
        let group = request.pointer("/kind/group").and_then(Value::as_str).unwrap_or_default();
        let operation = request.get("operation").and_then(Value::as_str).unwrap_or_default();
        let namespace = request.get("namespace").and_then(Value::as_str).unwrap_or_default();
        if kind != "Pod" || !group.is_empty() || operation != "CREATE" {
            // Not ours to change (the configuration only sends pod creations).
            self.count("ignored");
            return Ok(answer(allow()));
        }
        let Some(original) = request.get("object").filter(|o| o.is_object()) else {
            self.count("refused");
            return Ok(answer(deny(uid, "the review has no pod (request.object)")));
        };
        let name = pod_name(original);
        let mut pod = original.clone();
        match inject(&mut pod, &self.config()) {
            Ok(Outcome::Injected) => {
                let patch = json_patch::diff(original, &pod);
                let patch = match serde_json::to_vec(&patch) {
                    Ok(p) => p,
                    Err(e) => {
                        self.count("refused");
                        return Ok(answer(deny(uid, &format!("cannot encode the patch: {e}"))));
                    }
                };
                tracing::info!(%namespace, pod = %name, operations = patch_len(&patch), "injected the outrider-proxy sidecar");
                self.count("injected");
                let mut response = allow();
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
                Ok(answer(response))
            }
            Ok(Outcome::Skipped(why)) => {
                tracing::info!(%namespace, pod = %name, reason = %why, "not injected");
                self.count("skipped");
                let mut response = allow();
                // A pod that opted out knows; a host-network pod in a meshed namespace is told.
                if why == Skip::HostNetwork {
                    response["warnings"] = json!([format!("outrider: pod not injected: {why}")]);
                }
                Ok(answer(response))
            }
            Err(e) => {
                tracing::warn!(%namespace, pod = %name, error = %e, "pod refused: cannot inject it");
                self.count("refused");
                Ok(answer(deny(uid, &format!("outrider sidecar injection: {e}"))))
            }
        }
    }
}

fn deny(uid: &str, message: &str) -> Value {
    json!({"uid": uid, "allowed": false, "status": {"code": 400, "reason": "BadRequest", "message": message}})
}

/// The pod's name, or its `generateName` prefix (pods of a ReplicaSet have only that at
/// admission).
fn pod_name(pod: &Value) -> String {
    let meta = &pod["metadata"];
    match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(n), _) if !n.is_empty() => n.to_owned(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => String::new(),
    }
}

fn patch_len(patch: &[u8]) -> usize {
    serde_json::from_slice::<Vec<Value>>(patch).map(|ops| ops.len()).unwrap_or(0)
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

async fn handle(webhook: &Webhook, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, PATH) => {}
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, "text/plain", "ok\n"),
        (_, PATH) => return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "POST an AdmissionReview\n"),
        _ => return reply(StatusCode::NOT_FOUND, "text/plain", "the injection webhook is at POST /inject\n"),
    }
    let body = match Limited::new(req.into_body(), MAX_REVIEW).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", format!("cannot read the review: {e}\n"));
        }
    };
    match webhook.review(&body) {
        Ok(answer) => reply(StatusCode::OK, "application/json", answer.to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "bad admission review");
            reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"))
        }
    }
}

/// Serves the webhook over TLS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, tls: TlsAcceptor, webhook: Webhook) {
    let webhook = Arc::new(webhook);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let webhook = webhook.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let stream = match serving::accept(&tls, stream).await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(handle(&webhook, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests;
