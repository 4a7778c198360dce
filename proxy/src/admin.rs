//! Admin (loopback only), metrics and health servers. They run on the control
//! runtime, so a slow scrape never delays a request.
use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::drain::Drain;
use crate::http::Body;
use crate::policy::breaker::State;
use crate::policy::config::BreakerScope;
use crate::state::{Cluster, Store};
use crate::telemetry::log::LogHandle;
use crate::telemetry::metrics::{EndpointStateLabels, Metrics, ServiceLabels};

/// Which endpoints a server exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// Port 15000: everything.
    Admin,
    /// Port 15090: `/metrics` (and `/stats/prometheus`).
    Metrics,
    /// Port 15021: `/healthz/ready`.
    Health,
}

#[derive(Debug)]
pub struct AdminState {
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub drain: Drain,
    pub log: LogHandle,
    pub node_id: String,
    pub service: Option<String>,
    /// This proxy's identity, once issued.
    pub mesh: crate::mesh::MeshHandle,
    /// Whether an identity is expected (`--identity-token`): not ready before it is issued.
    pub needs_identity: bool,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, surface: Surface) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, surface, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Body::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json_response(v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(serde_json::to_string_pretty(v).unwrap_or_default()));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

/// The breaker state of a cluster as a whole: its one state machine (`scope: service`), or the
/// worst of its endpoints' (`scope: endpoint`: open if any is open, else half-open if any is).
pub fn breaker_state(c: &Cluster) -> Option<State> {
    let cfg = c.policy.breaker.as_ref()?;
    Some(match cfg.scope {
        BreakerScope::Service => c.state.breaker.state(),
        BreakerScope::Endpoint => {
            c.endpoints.items().iter().map(|e| e.shared.breaker.state()).max().unwrap_or(State::Closed)
        }
    })
}

/// Gauges that are read off the live state at scrape time.
fn refresh_gauges(state: &AdminState) {
    let m = &state.metrics;
    let snap = state.store.load_full();
    // Rebuilt from the snapshot: a service (or breaker) that left the config leaves no gauge.
    m.endpoints.clear();
    m.circuit_breaker_state.clear();
    m.circuit_breaker_endpoints.clear();
    for c in snap.clusters.values() {
        let total = c.endpoints.items().len() as i64;
        let ejected = c.endpoints.items().iter().filter(|e| e.shared.health.is_ejected()).count() as i64;
        m.endpoints
            .get_or_create(&EndpointStateLabels { service: c.service.clone(), state: "healthy" })
            .set(total - ejected);
        m.endpoints.get_or_create(&EndpointStateLabels { service: c.service.clone(), state: "ejected" }).set(ejected);
        let Some(worst) = breaker_state(c) else { continue };
        m.circuit_breaker_state.get_or_create(&ServiceLabels { service: c.service.clone() }).set(worst.metric());
        if c.policy.breaker.is_some_and(|b| b.scope == BreakerScope::Endpoint) {
            for s in [State::Closed, State::Open, State::HalfOpen] {
                let n = c.endpoints.items().iter().filter(|e| e.shared.breaker.state() == s).count() as i64;
                m.circuit_breaker_endpoints
                    .get_or_create(&EndpointStateLabels { service: c.service.clone(), state: s.as_str() })
                    .set(n);
            }
        }
    }
}

fn metrics_response(state: &AdminState) -> Response<Body> {
    refresh_gauges(state);
    if let Some(mesh) = state.mesh.load().as_ref() {
        state.metrics.tls_certificate_expiry_seconds.set(mesh.certs.expiry_seconds());
    }
    let m = &state.metrics;
    let mut r = Response::new(Body::full(m.encode()));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(Metrics::CONTENT_TYPE));
    r
}

fn ready(state: &AdminState) -> Response<Body> {
    if state.drain.is_draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if state.needs_identity && state.mesh.load().is_none() {
        text(StatusCode::SERVICE_UNAVAILABLE, "waiting for the workload certificate\n")
    } else if state.store.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "waiting for the first config\n")
    }
}

fn handle(state: &AdminState, surface: Surface, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (surface, req.method(), path) {
        (Surface::Health, &Method::GET, "/healthz/ready") => ready(state),
        (Surface::Metrics, &Method::GET, "/metrics" | "/stats/prometheus") => metrics_response(state),
        (Surface::Admin, &Method::GET, "/ready") => ready(state),
        (Surface::Admin, &Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (Surface::Admin, &Method::GET, "/metrics") => metrics_response(state),
        (Surface::Admin, &Method::GET, "/config_dump") => {
            let snap = state.store.load_full();
            let mesh = state.mesh.load();
            let identity = mesh.as_ref().map(|m| {
                let expires = m.certs.not_after().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                let rotates = m.certs.rotate_at().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                json!({
                    "spiffe_id": m.identity().as_str(),
                    "certificate_not_after_unix": expires.map(|d| d.as_secs()),
                    "rotates_at_unix": rotates.map(|d| d.as_secs()),
                    "certificates_installed": m.certs.installs(),
                })
            });
            // The sidecar's own service and whether the config has it (its inbound policy).
            let service_in_config = state.service.as_deref().map(|s| snap.inbound.contains_key(s));
            json_response(&json!({
                "node": {
                    "id": state.node_id,
                    "service": state.service,
                    "service_in_config": service_in_config,
                    "identity": identity,
                },
                "ready": state.store.is_ready(),
                "versions": snap.versions,
                "config": snap.dump(),
            }))
        }
        (Surface::Admin, &Method::GET, "/clusters") => json_response(&clusters(state)),
        (Surface::Admin, &Method::POST, "/drain") => {
            state.drain.start();
            text(StatusCode::OK, "draining\n")
        }
        (Surface::Admin, &Method::PUT | &Method::POST, "/logging") => {
            let level =
                req.uri().query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("level=")).map(str::to_string);
            match level {
                Some(l) => match state.log.set_level(&l) {
                    Ok(()) => text(StatusCode::OK, format!("log level set to {l}\n")),
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                },
                None => text(StatusCode::BAD_REQUEST, "usage: PUT /logging?level=debug\n"),
            }
        }
        (_, m, p)
            if surface == Surface::Admin
                && matches!(
                    p,
                    "/ready" | "/live" | "/config_dump" | "/clusters" | "/metrics" | "/drain" | "/logging"
                ) =>
        {
            text(StatusCode::METHOD_NOT_ALLOWED, format!("{m} is not allowed on {p}\n"))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn clusters(state: &AdminState) -> serde_json::Value {
    let snap = state.store.load_full();
    let list: Vec<_> = snap
        .clusters
        .values()
        .map(|c| {
            let endpoint_scope = c.policy.breaker.is_some_and(|b| b.scope == BreakerScope::Endpoint);
            let eps: Vec<_> = c
                .endpoints
                .items()
                .iter()
                .map(|e| {
                    let (idle, h2) = e.shared.pool.stats();
                    json!({
                        "address": e.addr.to_string(),
                        "weight": e.weight,
                        "labels": e.labels,
                        "meshed": e.meshed,
                        "health": if e.shared.health.is_ejected() { "ejected" } else { "healthy" },
                        "circuit_breaker": endpoint_scope.then(|| e.shared.breaker.state().as_str()),
                        "ejected_for_ms": e.shared.health.ejected_for().map(|d| d.as_millis() as u64),
                        "times_ejected": e.shared.health.times_ejected(),
                        "ewma_ms": e.shared.ewma.rtt().map(|d| d.as_secs_f64() * 1000.0),
                        "pending": e.shared.ewma.pending(),
                        "idle_http1_connections": idle,
                        "http2_connection": h2,
                    })
                })
                .collect();
            json!({
                "name": &*c.name,
                "service": &*c.service,
                "protocol": format!("{:?}", c.protocol).to_lowercase(),
                "lb_policy": c.lb.as_str(),
                "connect_timeout_ms": c.connect_timeout.as_millis() as u64,
                "endpoints": eps,
                "circuit_breaker": {
                    "scope": c.policy.breaker.map(|b| b.scope.as_str()),
                    "state": breaker_state(c).map(State::as_str),
                    "fallback": c.policy.fallback.as_ref().map(|f| json!({"cluster": &*f.cluster, "subset": f.subset})),
                    "active_requests": c.state.counters.active().0,
                    "pending_requests": c.state.counters.active().1,
                    "connections": c.state.counters.active().2,
                    "active_retries": c.state.counters.active().3,
                    "max_requests": c.policy.thresholds.max_requests,
                    "max_pending_requests": c.policy.thresholds.max_pending_requests,
                    "max_connections": c.policy.thresholds.max_connections,
                    "max_retries": c.policy.thresholds.max_retries,
                },
            })
        })
        .collect();
    json!({"clusters": list})
}
