//! What one attempt came to, in the terms the policies count.
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, StatusCode};

use crate::http::client::UpstreamError;
use crate::rescue::ProxyError;

/// gRPC status codes the policies look at.
pub mod grpc {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;

    /// The statuses Envoy's load reports count as errors at the endpoint: UNKNOWN,
    /// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    pub fn is_load_error(code: u32) -> bool {
        matches!(code, 2 | DEADLINE_EXCEEDED | 12 | INTERNAL | UNAVAILABLE | 15)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not a failure by any policy's count.
    Success,
    /// An HTTP status ≥ 500 from the upstream.
    Status(u16),
    /// A gRPC status in the response headers (trailers-only response). A status in the
    /// trailers is seen by the load reports only ([`Outcome::of_headers`]).
    Grpc(u32),
    /// Never reached the endpoint.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM: the server did not process the request.
    RefusedStream,
    /// The connection or stream broke before a response.
    Reset,
    /// The per-try timeout fired.
    Timeout,
    /// Rejected locally (breaker, limits): says nothing about the upstream.
    Local,
}

pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The grpc-status of a trailers-only response (or of the trailers), if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// Whether the response is gRPC (content-type `application/grpc`, `application/grpc+proto`…).
fn is_grpc_response(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether trailers that end a gRPC response make it an error for the load reports: a
/// grpc-status of [`grpc::is_load_error`], or none at all (`None`: the body ended without
/// trailers).
pub fn trailers_load_error(trailers: Option<&HeaderMap>) -> bool {
    trailers.and_then(grpc_status).is_none_or(grpc::is_load_error)
}

impl Outcome {
    pub fn of_response(status: StatusCode, headers: &HeaderMap) -> Outcome {
        if status.is_server_error() {
            return Outcome::Status(status.as_u16());
        }
        match grpc_status(headers) {
            Some(code) if code != grpc::OK => Outcome::Grpc(code),
            _ => Outcome::Success,
        }
    }

    /// [`Outcome::of_response`] for the attempt guard, and whether the answer is still to come
    /// in the trailers: a gRPC response whose headers carry no grpc-status (and no 5xx).
    pub fn of_headers(status: StatusCode, headers: &HeaderMap) -> (Outcome, bool) {
        if status.is_server_error() {
            return (Outcome::Status(status.as_u16()), false);
        }
        match grpc_status(headers) {
            Some(code) if code != grpc::OK => (Outcome::Grpc(code), false),
            Some(_) => (Outcome::Success, false),
            None => (Outcome::Success, is_grpc_response(headers)),
        }
    }

    pub fn of_error(e: &ProxyError) -> Outcome {
        match e {
            ProxyError::Upstream(u) if u.is_connect() => Outcome::ConnectFailure,
            ProxyError::Upstream(UpstreamError::Request(_, err)) if is_refused_stream(err) => Outcome::RefusedStream,
            ProxyError::Upstream(_) => Outcome::Reset,
            ProxyError::Timeout { .. } => Outcome::Timeout,
            _ => Outcome::Local,
        }
    }

    /// Counts against the circuit breaker's failure rate (docs/architecture.md: 5xx, gateway
    /// errors, resets, timeouts, gRPC UNAVAILABLE / INTERNAL / DEADLINE_EXCEEDED).
    pub fn is_breaker_failure(self) -> bool {
        match self {
            Outcome::Status(_)
            | Outcome::ConnectFailure
            | Outcome::RefusedStream
            | Outcome::Reset
            | Outcome::Timeout => true,
            Outcome::Grpc(c) => matches!(c, grpc::UNAVAILABLE | grpc::INTERNAL | grpc::DEADLINE_EXCEEDED),
            Outcome::Success | Outcome::Local => false,
        }
    }

    /// Counts as a 5xx for outlier detection (Envoy counts local connect
    /// failures and resets as 503s).
    pub fn is_5xx(self) -> bool {
        matches!(
            self,
            Outcome::Status(_) | Outcome::ConnectFailure | Outcome::RefusedStream | Outcome::Reset | Outcome::Timeout
        )
    }

    /// A gateway error: 502, 503, 504, or a connection that failed.
    pub fn is_gateway_error(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s, 502..=504),
            Outcome::ConnectFailure | Outcome::RefusedStream | Outcome::Reset | Outcome::Timeout => true,
            _ => false,
        }
    }

    /// Whether the attempt failed at the endpoint, for the load reports (Envoy's LRS rules: a
    /// 5xx, a gRPC error status of [`grpc::is_load_error`], or no response); `None` for a local
    /// rejection, which never reached it.
    pub fn load_error(self) -> Option<bool> {
        match self {
            Outcome::Success => Some(false),
            Outcome::Grpc(code) => Some(grpc::is_load_error(code)),
            Outcome::Status(_)
            | Outcome::ConnectFailure
            | Outcome::RefusedStream
            | Outcome::Reset
            | Outcome::Timeout => Some(true),
            Outcome::Local => None,
        }
    }

    /// Every reason a retry can have (`retries_total{reason}`: [`Outcome::reason`] of the
    /// failures that are retried).
    pub const RETRY_REASONS: [&'static str; 6] =
        ["5xx", "grpc-status", "connect-failure", "refused-stream", "reset", "per-try-timeout"];

    /// A label for `retries_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Status(_) => "5xx",
            Outcome::Grpc(_) => "grpc-status",
            Outcome::ConnectFailure => "connect-failure",
            Outcome::RefusedStream => "refused-stream",
            Outcome::Reset => "reset",
            Outcome::Timeout => "per-try-timeout",
            Outcome::Local => "local",
        }
    }
}

fn is_refused_stream(err: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_responses() {
        let mut h = HeaderMap::new();
        assert_eq!(Outcome::of_response(StatusCode::OK, &h), Outcome::Success);
        assert_eq!(Outcome::of_response(StatusCode::SERVICE_UNAVAILABLE, &h), Outcome::Status(503));
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(Outcome::of_response(StatusCode::OK, &h), Outcome::Grpc(14));
        assert!(Outcome::Grpc(14).is_breaker_failure());
        assert!(!Outcome::Grpc(5).is_breaker_failure(), "NOT_FOUND is the caller's problem");
        assert!(Outcome::Status(503).is_gateway_error());
        assert!(!Outcome::Status(500).is_gateway_error());
        assert!(Outcome::Status(500).is_5xx());
        assert!(!Outcome::Local.is_breaker_failure());
    }

    #[test]
    fn a_grpc_response_without_a_status_in_its_headers_waits_for_its_trailers() {
        let mut h = HeaderMap::new();
        assert_eq!(Outcome::of_headers(StatusCode::OK, &h), (Outcome::Success, false), "not gRPC");
        h.insert(CONTENT_TYPE, "application/grpc+proto".parse().unwrap());
        assert_eq!(Outcome::of_headers(StatusCode::OK, &h), (Outcome::Success, true));
        assert_eq!(Outcome::of_headers(StatusCode::BAD_GATEWAY, &h), (Outcome::Status(502), false));
        h.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(Outcome::of_headers(StatusCode::OK, &h), (Outcome::Success, false), "trailers-only OK");
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(Outcome::of_headers(StatusCode::OK, &h), (Outcome::Grpc(14), false), "trailers-only error");
    }

    #[test]
    fn trailers_are_an_error_by_envoys_rule_or_when_missing() {
        let trailers = |code: &str| {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", code.parse().unwrap());
            t
        };
        assert!(trailers_load_error(Some(&trailers("14"))), "UNAVAILABLE");
        assert!(trailers_load_error(Some(&trailers("13"))), "INTERNAL");
        assert!(!trailers_load_error(Some(&trailers("0"))), "OK");
        assert!(!trailers_load_error(Some(&trailers("5"))), "NOT_FOUND is the caller's problem");
        assert!(!trailers_load_error(Some(&trailers("1"))), "CANCELLED");
        assert!(trailers_load_error(Some(&HeaderMap::new())), "trailers without a status");
        assert!(trailers_load_error(None), "no trailers at all");
    }
}
