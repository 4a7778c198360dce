//! Policy as the data path uses it, converted once per snapshot from the Envoy
//! resources (route `timeout`/`retry_policy`/fault config, cluster
//! `circuit_breakers`/`outlier_detection` and our `outrider.v1.Resilience`).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::ExponentialBackoff;

/// What a route asks of the requests it carries.
#[derive(Clone, Debug, Default)]
pub struct RoutePolicy {
    /// Until response headers, retries included.
    pub timeout: Option<Duration>,
    /// A response body (HTTP/2 stream) that sends nothing for this long fails.
    pub idle_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
}

impl RoutePolicy {
    pub fn is_empty(&self) -> bool {
        self.timeout.is_none() && self.retry.is_none() && self.fault.is_none() && self.idle_timeout.is_none()
    }
}

/// Conditions under which an attempt is retried (Envoy's `retry_on` tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const SERVER_5XX: RetryOn = RetryOn(1 << 3);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 4);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 5);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 6);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 7);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 8);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 9);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 10);

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: RetryOn) {
        self.0 |= other.0;
    }

    /// Parse Envoy's comma-separated `retry_on`; unknown tokens are returned as errors.
    pub fn parse(s: &str) -> Result<RetryOn, String> {
        let mut on = RetryOn::default();
        for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            on.insert(match t {
                "connect-failure" => Self::CONNECT_FAILURE,
                "refused-stream" => Self::REFUSED_STREAM,
                "reset" => Self::RESET,
                "5xx" => Self::SERVER_5XX,
                "gateway-error" => Self::GATEWAY_ERROR,
                "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
                "cancelled" => Self::GRPC_CANCELLED,
                "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
                "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
                "internal" => Self::GRPC_INTERNAL,
                "unavailable" => Self::GRPC_UNAVAILABLE,
                other => return Err(format!("retry_on {other:?} is not supported")),
            });
        }
        Ok(on)
    }
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    pub status_codes: Vec<u16>,
    pub backoff: ExponentialBackoff,
    /// A server's `Retry-After` (on 503 / 429) is honoured up to this.
    pub retry_after_max: Option<Duration>,
    /// Retry POST / PATCH (and gRPC) for conditions where the upstream may have
    /// processed the request.
    pub non_idempotent: bool,
}

#[derive(Clone, Debug, Default)]
pub struct FaultPolicy {
    /// Percent (0..=100, fractional) and duration.
    pub delay: Option<(f64, Duration)>,
    /// Percent and HTTP status.
    pub abort: Option<(f64, u16)>,
}

/// Envoy-style circuit-breaker thresholds (always in force; Envoy's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3 }
    }
}

/// The Resilience4j-style state machine (count-based window).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    pub failure_rate_threshold: u32,
    pub slow_call_duration: Duration,
    pub slow_call_rate_threshold: u32,
    pub window: u32,
    pub minimum_calls: u32,
    pub open_duration: Duration,
    pub half_open_calls: u32,
    pub scope: BreakerScope,
}

/// What one breaker state machine guards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BreakerScope {
    /// Each endpoint has its own (`EndpointBreaker`): an open endpoint is skipped.
    #[default]
    Endpoint,
    /// The cluster has one (`ServiceBreaker`): open rejects every call to the service.
    Service,
}

impl BreakerScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerScope::Endpoint => "endpoint",
            BreakerScope::Service => "service",
        }
    }
}

/// Where requests go when every endpoint of their split is open (or the split has none): the
/// endpoints of `cluster` with every label of `subset`. Resolved against the snapshot's
/// clusters when routes are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackConfig {
    pub cluster: Arc<str>,
    pub subset: BTreeMap<String, String>,
}

/// Linkerd-style retry budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    pub ratio: f64,
    pub min_per_second: u32,
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self { ratio: 0.2, min_per_second: 10, window: Duration::from_secs(10) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierConfig {
    /// 0 = off.
    pub consecutive_5xx: u32,
    /// 0 = off.
    pub consecutive_gateway: u32,
    /// Percent; 0 = off.
    pub failure_percentage: u32,
    pub failure_percentage_min_requests: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// Everything a cluster asks of its requests.
#[derive(Clone, Debug, Default)]
pub struct ClusterPolicy {
    pub thresholds: Thresholds,
    /// Pooled upstream connections idle this long are closed (default 1 h).
    pub upstream_idle_timeout: Option<Duration>,
    pub breaker: Option<BreakerConfig>,
    pub budget: Option<BudgetConfig>,
    pub outlier: Option<OutlierConfig>,
    pub fallback: Option<FallbackConfig>,
}
