//! The resilience fields of a TrafficPolicy: retries, circuit breaker, outlier detection and
//! faults. Semantics: docs/policy.md ("Resilience") and docs/architecture.md.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;

/// `spec.retries`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try, 0..=10.
    pub attempts: u32,
    /// Limit of each try; at most `timeout` when both are set.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize_option")]
    pub per_try_timeout: Option<Duration>,
    /// What is retried. `non-idempotent` is a flag rather than a condition: it lets requests
    /// with non-idempotent methods be retried too.
    pub retry_on: Vec<RetryOn>,
    /// Status codes retried with `retriable-status-codes` (required with it, and only then).
    pub retriable_status_codes: Vec<u32>,
    pub backoff: Backoff,
    pub budget: RetryBudget,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: defaults::RETRY_ATTEMPTS,
            per_try_timeout: None,
            retry_on: defaults::RETRY_ON.to_vec(),
            retriable_status_codes: Vec::new(),
            backoff: Backoff::default(),
            budget: RetryBudget::default(),
        }
    }
}

impl Retries {
    /// Whether `non-idempotent` is listed.
    pub fn retry_non_idempotent(&self) -> bool {
        self.retry_on.contains(&RetryOn::NonIdempotent)
    }

    /// The retry conditions in Envoy's `retry_on` spelling, in order, without duplicates and
    /// without `non-idempotent`.
    pub fn conditions(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for token in &self.retry_on {
            if *token != RetryOn::NonIdempotent && !out.contains(&token.as_str()) {
                out.push(token.as_str());
            }
        }
        out
    }
}

/// One `retryOn` token; the spellings are Envoy's `retry_on` conditions.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    ConnectFailure,
    RefusedStream,
    Reset,
    #[serde(rename = "5xx")]
    FiveXx,
    GatewayError,
    RetriableStatusCodes,
    NonIdempotent,
    Unavailable,
    Cancelled,
    DeadlineExceeded,
    ResourceExhausted,
    Internal,
}

impl RetryOn {
    /// The YAML (and Envoy) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::Reset => "reset",
            RetryOn::FiveXx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::NonIdempotent => "non-idempotent",
            RetryOn::Unavailable => "unavailable",
            RetryOn::Cancelled => "cancelled",
            RetryOn::DeadlineExceeded => "deadline-exceeded",
            RetryOn::ResourceExhausted => "resource-exhausted",
            RetryOn::Internal => "internal",
        }
    }
}

/// `spec.retries.backoff`: full jitter, sleep = random(0, min(max, base · 2^n)).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub base: Duration,
    /// Absent: [`defaults::BACKOFF_MAX_FACTOR`] × `base` (see [`Backoff::max_interval`]).
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize_option")]
    pub max: Option<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: defaults::BACKOFF_BASE, max: None }
    }
}

impl Backoff {
    /// `max`, or 10 × `base` without it.
    pub fn max_interval(&self) -> Duration {
        self.max.unwrap_or_else(|| self.base.saturating_mul(defaults::BACKOFF_MAX_FACTOR))
    }
}

/// `spec.retries.budget`: at most `ratio` retries per original request over `window`, plus
/// `minPerSecond`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// 0.0..=1.0.
    pub ratio: f64,
    pub min_per_second: u32,
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: defaults::BUDGET_RATIO,
            min_per_second: defaults::BUDGET_MIN_PER_SECOND,
            window: defaults::BUDGET_WINDOW,
        }
    }
}

/// `spec.circuitBreaker.scope`: what one breaker state machine guards.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum BreakerScope {
    /// One state machine per endpoint (Resilience4j guards one call target, Linkerd's failure
    /// accrual one endpoint): an open endpoint is skipped, the others keep serving.
    #[default]
    Endpoint,
    /// One state machine for the whole service: when it opens, every call to the service is
    /// rejected (or sent to the fallback).
    Service,
}

impl BreakerScope {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerScope::Endpoint => "endpoint",
            BreakerScope::Service => "service",
        }
    }
}

/// `spec.circuitBreaker.fallback`: where a request goes when every endpoint of its split is open
/// (or the split has no endpoints): a subset of the same service, or another service. Exactly
/// one of the two.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Fallback {
    /// Endpoint labels of the same service, e.g. `{version: v1}`.
    pub subset: BTreeMap<String, String>,
    /// Another service of the same protocol family (HTTP).
    pub service: Option<String>,
}

/// `spec.circuitBreaker`: Envoy-style thresholds (always in force) and a Resilience4j-style
/// state machine, on as soon as one of its fields is given (see [`CircuitBreaker::state_machine`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    /// Concurrent retries.
    pub max_retries: u32,
    /// Percent, 1..=100.
    pub failure_rate_threshold: Option<u32>,
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize_option")]
    pub slow_call_duration: Option<Duration>,
    /// Percent, 1..=100.
    pub slow_call_rate_threshold: Option<u32>,
    /// Last N calls, 1..=10000.
    pub window: Option<u32>,
    /// 1..=window.
    pub minimum_calls: Option<u32>,
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize_option")]
    pub open_duration: Option<Duration>,
    /// 1..=1000.
    pub half_open_calls: Option<u32>,
    /// What one state machine guards; absent = `endpoint`.
    pub scope: Option<BreakerScope>,
    /// Where requests go when the breakers of their split are open.
    pub fallback: Option<Fallback>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            max_connections: defaults::MAX_CONNECTIONS,
            max_pending_requests: defaults::MAX_PENDING_REQUESTS,
            max_requests: defaults::MAX_REQUESTS,
            max_retries: defaults::MAX_RETRIES,
            failure_rate_threshold: None,
            slow_call_duration: None,
            slow_call_rate_threshold: None,
            window: None,
            minimum_calls: None,
            open_duration: None,
            half_open_calls: None,
            scope: None,
            fallback: None,
        }
    }
}

/// The breaker state machine with its defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateMachine {
    pub failure_rate_threshold: u32,
    pub slow_call_duration: Duration,
    pub slow_call_rate_threshold: u32,
    pub window: u32,
    pub minimum_calls: u32,
    pub open_duration: Duration,
    pub half_open_calls: u32,
    pub scope: BreakerScope,
}

impl CircuitBreaker {
    /// The state machine, if any of its fields is given (`scope` and `fallback` included), with
    /// the others defaulted (`minimumCalls` defaults to 100 clamped to the window).
    pub fn state_machine(&self) -> Option<StateMachine> {
        let on = self.failure_rate_threshold.is_some()
            || self.slow_call_duration.is_some()
            || self.slow_call_rate_threshold.is_some()
            || self.window.is_some()
            || self.minimum_calls.is_some()
            || self.open_duration.is_some()
            || self.half_open_calls.is_some()
            || self.scope.is_some()
            || self.fallback.is_some();
        if !on {
            return None;
        }
        let window = self.effective_window();
        Some(StateMachine {
            failure_rate_threshold: self.failure_rate_threshold.unwrap_or(defaults::FAILURE_RATE_THRESHOLD),
            slow_call_duration: self.slow_call_duration.unwrap_or(defaults::SLOW_CALL_DURATION),
            slow_call_rate_threshold: self.slow_call_rate_threshold.unwrap_or(defaults::SLOW_CALL_RATE_THRESHOLD),
            window,
            minimum_calls: self.minimum_calls.unwrap_or(defaults::MINIMUM_CALLS.min(window)),
            open_duration: self.open_duration.unwrap_or(defaults::OPEN_DURATION),
            half_open_calls: self.half_open_calls.unwrap_or(defaults::HALF_OPEN_CALLS),
            scope: self.scope.unwrap_or_default(),
        })
    }

    /// `window`, or its default.
    pub fn effective_window(&self) -> u32 {
        self.window.unwrap_or(defaults::BREAKER_WINDOW)
    }
}

/// `spec.outlierDetection`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Absent: 5; 0 turns it off. For a tcp service a failed connect counts as a 5xx (Envoy's
    /// reading of a local-origin connect failure).
    #[serde(rename = "consecutive5xx")]
    pub consecutive_5xx: Option<u32>,
    /// Absent: 0 (off). For a tcp service a failed connect counts as a gateway error.
    pub consecutive_gateway_errors: Option<u32>,
    /// Percent, 0..=100; 0 turns it off.
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_requests: u32,
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub interval: Duration,
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub base_ejection_time: Duration,
    /// At least `baseEjectionTime`.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub max_ejection_time: Duration,
    /// Percent, 0..=100 (at least one endpoint may always be ejected).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: None,
            consecutive_gateway_errors: None,
            failure_percentage_threshold: defaults::FAILURE_PERCENTAGE_THRESHOLD,
            failure_percentage_minimum_requests: defaults::FAILURE_PERCENTAGE_MINIMUM_REQUESTS,
            interval: defaults::OUTLIER_INTERVAL,
            base_ejection_time: defaults::BASE_EJECTION_TIME,
            max_ejection_time: defaults::MAX_EJECTION_TIME,
            max_ejection_percent: defaults::MAX_EJECTION_PERCENT,
        }
    }
}

impl OutlierDetection {
    /// Consecutive 5xx before ejection; 0 is off. For a tcp service: consecutive failed
    /// connects (a connect failure counts as a 503, as in Envoy).
    pub fn consecutive_5xx(&self) -> u32 {
        self.consecutive_5xx.unwrap_or(defaults::CONSECUTIVE_5XX)
    }

    /// Consecutive 502/503/504 before ejection; 0 is off. For a tcp service: consecutive
    /// failed connects.
    pub fn consecutive_gateway_errors(&self) -> u32 {
        self.consecutive_gateway_errors.unwrap_or(defaults::CONSECUTIVE_GATEWAY_ERRORS)
    }
}

/// `spec.faults` and `spec.routes[].faults`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

impl Faults {
    /// Neither a delay nor an abort.
    pub fn is_empty(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }
}

/// Delay `percent` of requests by `duration`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// 0..=100, fractions allowed (resolution 0.0001).
    pub percent: f64,
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub duration: Duration,
}

/// Answer `percent` of requests with `status` without calling the service.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// 0..=100, fractions allowed (resolution 0.0001).
    pub percent: f64,
    /// 200..=599.
    pub status: u32,
}
