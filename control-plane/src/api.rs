//! The HTTP API on the API port (15014): policies, validation, proxy status, metrics.
//!
//! | request | what |
//! |---|---|
//! | `GET /v1/policies[/KIND[/NAME]][?service=NAME]` | documents (JSON), `ETag` = resource version; `service`: those naming it |
//! | `PUT` / `POST /v1/policies` | create or replace the documents of the body (YAML or JSON) |
//! | `DELETE /v1/policies/KIND/NAME` | delete one document |
//! | `POST /v1/validate` | dry run of a write (token): errors, or what would change |
//! | `GET /v1/status` | connected proxies, versions, ACK/NACK |
//! | `GET` / `POST /v1/endpoints`, `DELETE /v1/endpoints/ID` | registered workloads (TTL) |
//! | `GET /v1/rollouts[/NAME]` (`?service=NAME` on the list) | rollouts: phase, step, weight, canary and stable numbers, history (Kubernetes mode: `NAME` is `NAMESPACE/NAME`) |
//! | `POST /v1/rollouts/NAME/{start,pause,resume,promote,abort}` | an operator's command (API token) |
//! | `GET /v1/stats[/SERVICE]` | load reports: per service, subset, endpoint; history (`?window=1m&labels=k=v`) |
//! | `GET /v1/ca/bundle` | the trust domain and the roots proxies trust (no auth) |
//! | `POST /v1/tokens` | a join token for `{namespace, serviceAccount, ttl?, singleUse?}` (API token) |
//! | `DELETE /v1/tokens/NS/SA` | revoke every join token of an identity (API token) |
//! | `POST /v1/certificates` | a CSR + join token (`Bearer ort_…`), service-account token (`Bearer <JWT>`, `--kubernetes`) or renewal proof → certificate chain |
//! | `GET /v1/mesh` | the dashboard's graph: services, source → destination calls, resilience (`?window=1m`) |
//! | `GET /v1/policies/rejected` | the errors of the last rejected policy write |
//! | `GET /ui/` | the dashboard (assets built into the binary) |
//! | `GET /metrics` | the control plane's own metrics |
//!
//! Writes need `Authorization: Bearer TOKEN`; `If-Match: VERSION` makes a write conditional
//! (409 when stale). `POST /v1/certificates` authenticates with a join token or a renewal proof
//! instead. With `--tls` the API is served over TLS 1.3 only.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ca::issuance::Issuance;
use crate::ca::serving;
use crate::ca::tokens::JoinTokens;
use crate::endpoints::Registry;
use crate::kubernetes::Cluster;
use crate::metrics::{Metrics, ResultLabels};
use crate::policies::{Policies, WriteError, canonical_kind};
use crate::snapshot::Snapshot;
use crate::tracker::Tracker;

mod ca;
/// The dashboard's aggregated reads, built once per second and shared by every reader.
pub mod cache;
mod endpoints;
pub mod rollouts;
mod stats;
mod ui;

/// Largest request body accepted.
pub const MAX_BODY: usize = 4 << 20;

type Body = Full<Bytes>;

/// What the handlers share.
#[derive(Debug)]
pub struct ApiState {
    pub policies: Arc<Policies>,
    pub tracker: Arc<Tracker>,
    pub metrics: Metrics,
    /// Bearer token for writes.
    pub token: String,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub registry: Arc<Registry>,
    /// The CA and the token reviewer, for `/v1/certificates` and `/v1/ca/bundle`.
    pub issuance: Issuance,
    /// Join tokens, for `/v1/tokens`.
    pub tokens: Arc<JoinTokens>,
    /// Load reports, for `/v1/stats`.
    pub stats: Arc<crate::stats::Stats>,
    /// Rollouts, for `/v1/rollouts`.
    pub rollouts: rollouts::Rollouts,
    /// The last policy write refused (unix seconds, the response body), for the dashboard.
    pub last_rejected: parking_lot::Mutex<Option<(u64, serde_json::Value)>>,
    /// `GET /v1/mesh` and `GET /v1/stats/SERVICE` answers, shared by every reader for a second.
    pub views: cache::Views,
    /// With `--kubernetes`: the cluster holds the policies, and policy writes are refused.
    pub kubernetes: Option<Arc<Cluster>>,
    /// With `--kubernetes`: reviews service-account tokens for `/v1/certificates`.
    pub service_accounts: Option<crate::ca::service_accounts::Reviewer>,
}

/// How long a connection may take to send a request head, and stay idle between two requests
/// on a kept-alive connection, before it is closed.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve until the task is dropped; over TLS when `tls` is given. A connection that sends no
/// request head for `idle` is closed.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    idle: std::time::Duration,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, state, idle).await,
                Some(acceptor) => match serving::accept(&acceptor, stream).await {
                    Ok((stream, _peer)) => serve_connection(stream, state, idle).await,
                    Err(e) => tracing::debug!(error = %e, "API TLS handshake failed"),
                },
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, state: Arc<ApiState>, idle: std::time::Duration)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(idle)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "API connection ended");
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = value.to_string();
    body.push('\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({"error": message.into()}))
}

fn authorized(state: &ApiState, req: &Request<Incoming>) -> bool {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    // Compare without stopping at the first difference.
    let (a, b) = (given.trim().as_bytes(), state.token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(state: &ApiState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => json_response(StatusCode::OK, &json!({"ok": true})),
        (&Method::GET, ["metrics"]) => Response::builder()
            .header(header::CONTENT_TYPE, Metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(state.metrics.encode())))
            .unwrap_or_default(),
        (&Method::GET, ["v1", "status"]) => {
            let (version, policy_version) = {
                let s = state.snapshots.borrow();
                (s.version.clone(), s.policy_version.clone())
            };
            // A sidecar whose service has no Service document has no inbound policy.
            let set = state.policies.current();
            let proxies: Vec<serde_json::Value> = state
                .tracker
                .list()
                .into_iter()
                .map(|p| {
                    let missing = p.sidecar && !set.services.contains_key(&p.service);
                    let mut v = json!(p);
                    v["serviceMissing"] = json!(missing);
                    v
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"version": version, "policyVersion": policy_version, "proxies": proxies}),
            )
        }
        (&Method::GET, ["v1", "endpoints"]) => endpoints::list(state),
        (&Method::POST | &Method::PUT, ["v1", "endpoints"]) => endpoints::register(state, req).await,
        (&Method::DELETE, ["v1", "endpoints", id]) => {
            let id = (*id).to_owned();
            endpoints::remove(state, &req, &id)
        }
        (&Method::GET, ["v1", "rollouts"]) => match service_filter(req.uri().query()) {
            Ok(service) => rollouts::list(state, service.as_deref()),
            Err(message) => error(StatusCode::BAD_REQUEST, message),
        },
        (&Method::GET, ["v1", "rollouts", name]) => rollouts::status(state, name),
        (&Method::GET, ["v1", "rollouts", namespace, name]) => rollouts::status(state, &format!("{namespace}/{name}")),
        (&Method::POST, ["v1", "rollouts", name, command]) => {
            let (name, command) = ((*name).to_owned(), (*command).to_owned());
            rollouts::command(state, req, &name, &command).await
        }
        (&Method::POST, ["v1", "rollouts", namespace, name, command]) => {
            let (name, command) = (format!("{namespace}/{name}"), (*command).to_owned());
            rollouts::command(state, req, &name, &command).await
        }
        (&Method::GET, ["v1", "stats"]) => stats::summary(state, req.uri().query()),
        (&Method::GET, ["v1", "stats", service]) => stats::service(state, service, req.uri().query()),
        (&Method::GET, ["v1", "mesh"]) => stats::mesh(state, req.uri().query()),
        (&Method::GET, ["v1", "policies", "rejected"]) => {
            let last = state.last_rejected.lock().clone();
            json_response(
                StatusCode::OK,
                &match last {
                    Some((at, body)) => json!({"at": at, "response": body}),
                    None => json!({"at": null, "response": null}),
                },
            )
        }
        (&Method::GET, ["ui", rest @ ..]) => ui::asset(&rest.join("/"), &path),
        (&Method::GET, ["v1", "ca", "bundle"]) => ca::bundle(state),
        (&Method::POST, ["v1", "tokens"]) => ca::create_token(state, req).await,
        (&Method::DELETE, ["v1", "tokens", namespace, service_account]) => {
            ca::revoke_tokens(state, &req, namespace, service_account).await
        }
        (&Method::POST, ["v1", "certificates"]) => ca::issue(state, req).await,
        (&Method::GET, ["v1", "policies", rest @ ..]) if rest.len() <= 2 => {
            get_policies(state, rest, req.uri().query()).await
        }
        (&Method::PUT | &Method::POST | &Method::DELETE, ["v1", "policies", ..]) if state.kubernetes.is_some() => {
            kubernetes_owns_policies()
        }
        (&Method::PUT | &Method::POST, ["v1", "policies"]) => write(state, req, false).await,
        (&Method::POST, ["v1", "validate"]) => write(state, req, true).await,
        (&Method::DELETE, ["v1", "policies", kind, name]) => {
            let (kind, name) = ((*kind).to_owned(), (*name).to_owned());
            delete(state, req, &kind, &name).await
        }
        (_, ["v1", ..]) | (_, ["metrics"]) | (_, ["healthz"]) | (_, ["ui", ..]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path}"))
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such resource: {path}")),
    }
}

/// `service=NAME` of a list query (the dashboard's Service page), or what is wrong with it.
fn service_filter(query: Option<&str>) -> Result<Option<String>, String> {
    let mut service = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("service", value)) if !value.is_empty() => service = Some(stats::decode(value)),
            _ => {
                return Err(format!(
                    "unknown query {pair:?}: the only parameter is service=NAME (documents that name the service)"
                ));
            }
        }
    }
    Ok(service)
}

async fn get_policies(state: &ApiState, rest: &[&str], query: Option<&str>) -> Response<Body> {
    let service = match service_filter(query) {
        Ok(s) => s,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let kind = match rest.first() {
        Some(k) => match canonical_kind(k) {
            Some(k) => Some(k),
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "unknown kind {k:?}: expected Service, TrafficPolicy, AuthorizationPolicy, Telemetry or Rollout"
                    ),
                );
            }
        },
        None => None,
    };
    let name = rest.get(1).copied();
    let (revision, items) = state.policies.list_where(kind, name, service.as_deref()).await;
    if let (Some(kind), Some(name)) = (kind, name) {
        return match items.into_iter().next() {
            Some(item) => {
                let mut resp = json_response(StatusCode::OK, &json!(item));
                if let Ok(v) = format!("\"{}\"", item.resource_version).parse() {
                    resp.headers_mut().insert(header::ETAG, v);
                }
                resp
            }
            None => error(StatusCode::NOT_FOUND, format!("{kind}/{name} not found")),
        };
    }
    let mut resp = json_response(StatusCode::OK, &json!({"revision": revision, "items": items}));
    if let Ok(v) = format!("\"{revision}\"").parse() {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn if_match(req: &Request<Incoming>) -> Option<String> {
    req.headers().get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn write(state: &ApiState, req: Request<Incoming>, dry_run: bool) -> Response<Body> {
    // A dry run needs the token too: it parses up to MAX_BODY and validates it against the
    // whole set, work nobody without the token should be able to make the server do.
    if !authorized(state, &req) {
        return unauthorized();
    }
    let expected = if_match(&req);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
            );
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not UTF-8");
    };
    let result = state.policies.apply(text, expected.as_deref(), dry_run).await;
    if dry_run {
        return match result {
            Ok(outcome) => json_response(StatusCode::OK, &json!({"valid": true, "changes": outcome.changes})),
            Err(e) => write_error(state, e, true),
        };
    }
    match result {
        Ok(outcome) => {
            record(state, "accepted");
            tracing::info!(revision = outcome.revision, changes = outcome.changes.len(), "policies written");
            json_response(StatusCode::OK, &json!(outcome))
        }
        Err(e) => write_error(state, e, false),
    }
}

async fn delete(state: &ApiState, req: Request<Incoming>, kind: &str, name: &str) -> Response<Body> {
    if !authorized(state, &req) {
        return unauthorized();
    }
    let Some(kind) = canonical_kind(kind) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown kind {kind:?}: expected Service, TrafficPolicy, AuthorizationPolicy, Telemetry or Rollout"
            ),
        );
    };
    match state.policies.delete(kind, name, if_match(&req).as_deref()).await {
        Ok(outcome) => {
            record(state, "accepted");
            json_response(StatusCode::OK, &json!(outcome))
        }
        Err(e) => write_error(state, e, false),
    }
}

/// 405 in Kubernetes mode: the cluster is the one source of truth, so the API does not keep a
/// second copy; the same documents are applied with kubectl.
fn kubernetes_owns_policies() -> Response<Body> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "this control plane runs with --kubernetes: policies are outrider.io/v1 objects in the cluster; \
         write them with kubectl apply -f FILE (the same documents) or kubectl delete KIND NAME -n NAMESPACE",
    );
    if let Ok(v) = "GET".parse() {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

fn record(state: &ApiState, result: &'static str) {
    state.metrics.policy_writes.get_or_create(&ResultLabels { result }).inc();
}

fn unauthorized() -> Response<Body> {
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "writes need a bearer token (Authorization: Bearer TOKEN; the CLI's --token / OUTRIDER_TOKEN)",
    );
    if let Ok(v) = "Bearer".parse() {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn write_error(state: &ApiState, e: WriteError, dry_run: bool) -> Response<Body> {
    let (status, result) = match &e {
        WriteError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        WriteError::Conflict { .. } | WriteError::OwnedByDir { .. } | WriteError::Owned(_) => {
            (StatusCode::CONFLICT, "conflict")
        }
        WriteError::NotFound { .. } => (StatusCode::NOT_FOUND, "invalid"),
        WriteError::Persist(_) => (StatusCode::INTERNAL_SERVER_ERROR, "error"),
    };
    let mut body = json!({"error": e.to_string()});
    if let WriteError::Invalid(errors) = &e {
        body["valid"] = json!(false);
        body["errors"] = errors.iter().map(outrider_xds::PolicyError::to_json).collect();
    }
    if !dry_run {
        record(state, result);
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        *state.last_rejected.lock() = Some((at, body.clone()));
    }
    if let WriteError::Persist(p) = &e {
        tracing::error!(error = %p, "cannot persist a policy write");
    }
    json_response(status, &body)
}
