//! `/v1/endpoints`: workloads without a sidecar register themselves with a TTL (and refresh it
//! by registering again); sidecar registrations are listed too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, Body, MAX_BODY, authorized, error, json_response, unauthorized};
use crate::endpoints::{MAX_TTL, Origin};

/// TTL of a registration that does not say.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    service: String,
    address: SocketAddr,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// e.g. `30s`.
    #[serde(default)]
    ttl: Option<String>,
}

pub(super) fn list(state: &ApiState) -> Response<Body> {
    json_response(StatusCode::OK, &json!({"items": state.registry.list()}))
}

pub(super) async fn register(state: &ApiState, req: Request<Incoming>) -> Response<Body> {
    if !authorized(state, &req) {
        return unauthorized();
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the body: {e}")),
    };
    let reg: Registration = match serde_yaml_ng::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid registration: {e}; expected {{service, address: IP:PORT, labels?, ttl?}}"),
            );
        }
    };
    let ttl = match reg.ttl.as_deref().map(outrider_xds::duration::parse) {
        None => DEFAULT_TTL,
        Some(Ok(t)) if !t.is_zero() && t <= MAX_TTL => t,
        Some(Ok(t)) => {
            return error(StatusCode::BAD_REQUEST, format!("ttl: {t:?} is out of range (more than 0, at most 24h)"));
        }
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("ttl: {e}")),
    };
    if !state.policies.current().services.contains_key(&reg.service) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("service: no Service named {:?}; apply its Service document first", reg.service),
        );
    }
    let id = state.registry.register(&reg.service, reg.address, reg.labels, Origin::Api, Some(ttl), None, None);
    json_response(StatusCode::OK, &json!({"id": id, "ttlSeconds": ttl.as_secs_f64()}))
}

pub(super) fn remove(state: &ApiState, req: &Request<Incoming>, id: &str) -> Response<Body> {
    if !authorized(state, req) {
        return unauthorized();
    }
    match id.parse::<u64>() {
        Ok(id) if state.registry.remove(id) => json_response(StatusCode::OK, &json!({"removed": id})),
        _ => error(StatusCode::NOT_FOUND, format!("no endpoint registration {id:?}")),
    }
}
