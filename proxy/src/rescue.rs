//! Errors become local replies here and nowhere else: the status code, the gRPC
//! status for gRPC callers, and the `x-outrider-local-reply` reason that also
//! goes into the access log.
use http::{HeaderValue, Response, StatusCode, header};

use crate::http::Body;
use crate::http::client::UpstreamError;
use crate::http::headers::{X_LOCAL_REPLY, X_OVERLOADED};

/// Where the failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Upstream,
    Downstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no service is configured for authority {authority:?}; check the Service's name, port or addresses")]
    NoRoute { authority: String },
    #[error("no route of service {service} matches {path}")]
    NoRouteMatch { service: String, path: String },
    #[error("service {service} has no endpoint to send to; are its endpoints registered?")]
    NoHealthyUpstream { service: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("{} timed out after {after:?}", if *.per_try { "the attempt" } else { "the request" })]
    Timeout { after: std::time::Duration, per_try: bool },
    #[error("service {service} is overloaded ({reason}); the circuit breaker rejected the request")]
    Overloaded { service: String, reason: &'static str },
    #[error("fault injected: abort with {status}")]
    FaultAbort { status: u16 },
    #[error("{peer} may not call service {service}{}", match policy { Some(p) => format!(" (denied by AuthorizationPolicy {p})"), None => " (no AuthorizationPolicy allows it)".to_owned() })]
    Unauthorized { service: String, peer: String, policy: Option<std::sync::Arc<str>> },
}

/// Every reason `outrider_local_replies_total` counts: the `x-outrider-local-reply` reasons
/// [`ProxyError::classify`] gives, and `downstream-cancelled` (the caller went away before a
/// response; the access log's own). Exported at 0 from the start.
pub const LOCAL_REPLY_REASONS: [&str; 11] = [
    "no-route",
    "no-healthy-upstream",
    "connect-failure",
    "upstream-reset",
    "bad-request",
    "timeout",
    "circuit-open",
    "overloaded",
    "unauthorized",
    "fault-injected",
    "downstream-cancelled",
];

/// gRPC status codes used in local replies.
mod grpc {
    pub const UNIMPLEMENTED: u8 = 12;
    pub const UNAVAILABLE: u8 = 14;
    pub const INTERNAL: u8 = 13;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
}

impl ProxyError {
    /// The status, the reason tag and the source.
    pub fn classify(&self) -> (StatusCode, &'static str, Source) {
        match self {
            ProxyError::NoRoute { .. } | ProxyError::NoRouteMatch { .. } => {
                (StatusCode::NOT_FOUND, "no-route", Source::Downstream)
            }
            ProxyError::NoHealthyUpstream { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "no-healthy-upstream", Source::Internal)
            }
            ProxyError::Upstream(e) if e.is_connect() => {
                (StatusCode::SERVICE_UNAVAILABLE, "connect-failure", Source::Upstream)
            }
            ProxyError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream-reset", Source::Upstream),
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", Source::Downstream),
            ProxyError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout", Source::Upstream),
            ProxyError::Overloaded { reason: "open", .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "circuit-open", Source::Internal)
            }
            ProxyError::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", Source::Internal),
            ProxyError::Unauthorized { .. } => (StatusCode::FORBIDDEN, "unauthorized", Source::Downstream),
            ProxyError::FaultAbort { status } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "fault-injected",
                Source::Internal,
            ),
        }
    }

    /// The local reply for this error; `grpc` when the caller speaks gRPC.
    pub fn to_response(&self, grpc: bool) -> (Response<Body>, &'static str) {
        let (status, reason, source) = self.classify();
        let message = self.to_string();
        if source == Source::Upstream {
            tracing::debug!(error = %message, reason, "upstream failure");
        }
        let mut resp = if grpc {
            let code = match status {
                StatusCode::NOT_FOUND => grpc::UNIMPLEMENTED,
                StatusCode::GATEWAY_TIMEOUT => grpc::DEADLINE_EXCEEDED,
                StatusCode::FORBIDDEN => grpc::PERMISSION_DENIED,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => grpc::UNAVAILABLE,
                _ => grpc::INTERNAL,
            };
            let mut r = Response::new(Body::Empty);
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from(u16::from(code)));
            if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
                h.insert("grpc-message", v);
            }
            r
        } else {
            let mut r = Response::new(Body::full(format!("{message}\n")));
            *r.status_mut() = status;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        };
        resp.headers_mut().insert(X_LOCAL_REPLY.clone(), HeaderValue::from_static(reason));
        if matches!(self, ProxyError::Overloaded { .. }) {
            resp.headers_mut().insert(X_OVERLOADED.clone(), HeaderValue::from_static("true"));
        }
        (resp, reason)
    }
}

/// gRPC's percent-encoding of `grpc-message` (RFC 3986 unreserved + printable ASCII kept).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Is this request gRPC (so a local reply must be a gRPC status)?
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failure_is_503_and_reset_is_502() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let e = ProxyError::from(UpstreamError::Connect(addr, std::io::Error::other("refused")));
        let (r, reason) = e.to_response(false);
        assert_eq!(r.status(), 503);
        assert_eq!(reason, "connect-failure");
        assert_eq!(r.headers()["x-outrider-local-reply"], "connect-failure");
        let e = ProxyError::NoRoute { authority: "nope".into() };
        let (r, reason) = e.to_response(false);
        assert_eq!((r.status().as_u16(), reason), (404, "no-route"));
    }

    #[test]
    fn every_reason_is_listed_in_local_reply_reasons() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let errors = [
            ProxyError::NoRoute { authority: "a".into() },
            ProxyError::NoRouteMatch { service: "s".into(), path: "/".into() },
            ProxyError::NoHealthyUpstream { service: "s".into() },
            ProxyError::from(UpstreamError::Connect(addr, std::io::Error::other("refused"))),
            ProxyError::from(UpstreamError::Tls(addr, "bad certificate".into())),
            ProxyError::BadRequest("x"),
            ProxyError::Timeout { after: std::time::Duration::from_secs(1), per_try: false },
            ProxyError::Overloaded { service: "s".into(), reason: "open" },
            ProxyError::Overloaded { service: "s".into(), reason: "max-requests" },
            ProxyError::FaultAbort { status: 503 },
            ProxyError::Unauthorized { service: "s".into(), peer: "p".into(), policy: None },
        ];
        for e in errors {
            let (_, reason, _) = e.classify();
            assert!(LOCAL_REPLY_REASONS.contains(&reason), "{reason} is missing from LOCAL_REPLY_REASONS");
        }
    }

    #[test]
    fn grpc_callers_get_a_grpc_status() {
        let e = ProxyError::NoHealthyUpstream { service: "s".into() };
        let (r, _) = e.to_response(true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["x-outrider-local-reply"], "no-healthy-upstream");
    }
}
