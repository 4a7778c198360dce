//! Checks of the resilience fields: ranges, cross-field rules, and what a tcp service allows.

use std::fmt::Display;
use std::time::Duration;

use super::PolicyError;
use crate::duration;
use crate::load::Origin;
use crate::policy::limits::{IDLE_TIMEOUT, INTERVAL, TIMEOUT};
use crate::policy::{
    BreakerScope, CircuitBreaker, Faults, OutlierDetection, Retries, RetryOn, Service, TrafficPolicySpec,
};

/// Collects errors for one document.
struct Check<'a> {
    origin: &'a Origin,
    errors: &'a mut Vec<PolicyError>,
}

impl Check<'_> {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(self.origin.error(Some(field.to_owned()), message));
    }

    /// `low..=high`, inclusive, with the value in the message.
    fn range<T: PartialOrd + Display>(&mut self, field: &str, value: T, low: T, high: T) {
        if !(low <= value && value <= high) {
            self.error(field, format!("must be between {low} and {high} (got {value})"));
        }
    }

    /// More than 0s and at most `max`.
    fn duration(&mut self, field: &str, value: Duration, max: Duration) {
        if value.is_zero() {
            self.error(field, format!("must be more than 0s and at most {}", duration::format(max)));
        } else if value > max {
            self.error(field, format!("must be at most {} (got {})", duration::format(max), duration::format(value)));
        }
    }

    fn duration_option(&mut self, field: &str, value: Option<Duration>, max: Duration) {
        if let Some(value) = value {
            self.duration(field, value, max);
        }
    }
}

/// Everything that can be checked within the policy document itself.
pub(super) fn check_resilience(origin: &Origin, spec: &TrafficPolicySpec, errors: &mut Vec<PolicyError>) {
    let mut check = Check { origin, errors };
    check.duration_option("spec.timeout", spec.timeout, TIMEOUT);
    check.duration_option("spec.idleTimeout", spec.idle_timeout, IDLE_TIMEOUT);
    if let Some(retries) = &spec.retries {
        check_retries(&mut check, retries, spec.timeout);
    }
    if let Some(breaker) = &spec.circuit_breaker {
        check_breaker(&mut check, breaker);
    }
    if let Some(outlier) = &spec.outlier_detection {
        check_outlier(&mut check, outlier);
    }
    if let Some(faults) = &spec.faults {
        check_faults(&mut check, "spec.faults", faults);
    }
    for (i, route) in spec.routes.iter().enumerate() {
        if let Some(faults) = &route.faults {
            check_faults(&mut check, &format!("spec.routes[{i}].faults"), faults);
        }
    }
}

fn check_retries(check: &mut Check<'_>, retries: &Retries, timeout: Option<Duration>) {
    check.range("spec.retries.attempts", retries.attempts, 0, 10);
    check.duration_option("spec.retries.perTryTimeout", retries.per_try_timeout, TIMEOUT);
    if let (Some(per_try), Some(timeout)) = (retries.per_try_timeout, timeout)
        && per_try > timeout
    {
        check.error(
            "spec.retries.perTryTimeout",
            format!(
                "must be at most spec.timeout ({}), which covers the whole request with its \
                 retries (got {})",
                duration::format(timeout),
                duration::format(per_try)
            ),
        );
    }
    if retries.conditions().is_empty() {
        check.error(
            "spec.retries.retryOn",
            "must list at least one condition to retry on (non-idempotent only widens the \
             methods retried), e.g. [connect-failure, 5xx]",
        );
    }
    let wants_codes = retries.retry_on.contains(&RetryOn::RetriableStatusCodes);
    let codes = &retries.retriable_status_codes;
    if wants_codes && codes.is_empty() {
        check.error(
            "spec.retries.retriableStatusCodes",
            "retryOn lists retriable-status-codes, so list the codes here, e.g. [503]",
        );
    }
    if !wants_codes && !codes.is_empty() {
        check.error(
            "spec.retries.retriableStatusCodes",
            "has no effect unless retryOn lists retriable-status-codes; add it there or remove \
             these codes",
        );
    }
    for (i, code) in codes.iter().enumerate() {
        check.range(&format!("spec.retries.retriableStatusCodes[{i}]"), *code, 100, 599);
    }
    let backoff = &retries.backoff;
    check.duration("spec.retries.backoff.base", backoff.base, INTERVAL);
    check.duration_option("spec.retries.backoff.max", backoff.max, INTERVAL);
    if let Some(max) = backoff.max
        && max < backoff.base
    {
        check.error(
            "spec.retries.backoff.max",
            format!(
                "must be at least backoff.base ({}) (got {})",
                duration::format(backoff.base),
                duration::format(max)
            ),
        );
    }
    let budget = &retries.budget;
    check.range("spec.retries.budget.ratio", budget.ratio, 0.0, 1.0);
    check.duration("spec.retries.budget.window", budget.window, INTERVAL);
}

fn check_breaker(check: &mut Check<'_>, breaker: &CircuitBreaker) {
    const LIMIT: u32 = 1_000_000;
    check.range("spec.circuitBreaker.maxConnections", breaker.max_connections, 1, LIMIT);
    check.range("spec.circuitBreaker.maxPendingRequests", breaker.max_pending_requests, 1, LIMIT);
    check.range("spec.circuitBreaker.maxRequests", breaker.max_requests, 1, LIMIT);
    check.range("spec.circuitBreaker.maxRetries", breaker.max_retries, 0, LIMIT);
    let percents = [
        ("spec.circuitBreaker.failureRateThreshold", breaker.failure_rate_threshold),
        ("spec.circuitBreaker.slowCallRateThreshold", breaker.slow_call_rate_threshold),
    ];
    for (field, value) in percents {
        if let Some(value) = value {
            check.range(field, value, 1, 100);
        }
    }
    check.duration_option("spec.circuitBreaker.slowCallDuration", breaker.slow_call_duration, TIMEOUT);
    check.duration_option("spec.circuitBreaker.openDuration", breaker.open_duration, TIMEOUT);
    if let Some(window) = breaker.window {
        check.range("spec.circuitBreaker.window", window, 1, 10_000);
    }
    if let Some(minimum) = breaker.minimum_calls {
        let window = breaker.effective_window();
        if !(1..=window).contains(&minimum) {
            let source = if breaker.window.is_some() { "window" } else { "the default window" };
            check.error(
                "spec.circuitBreaker.minimumCalls",
                format!("must be between 1 and {window}, {source} (got {minimum})"),
            );
        }
    }
    if let Some(calls) = breaker.half_open_calls {
        check.range("spec.circuitBreaker.halfOpenCalls", calls, 1, 1000);
    }
    if let Some(fallback) = &breaker.fallback {
        match (fallback.subset.is_empty(), &fallback.service) {
            (true, None) => check.error(
                "spec.circuitBreaker.fallback",
                "name a subset of this service (fallback: {subset: {version: v1}}) or another \
                 service (fallback: {service: NAME})",
            ),
            (false, Some(_)) => check.error(
                "spec.circuitBreaker.fallback",
                "give either subset or service, not both: a fallback service is used whole",
            ),
            (false, None) if breaker.scope == Some(BreakerScope::Service) => check.error(
                "spec.circuitBreaker.fallback.subset",
                "with scope: service the whole service shares one breaker, so a subset of it is \
                 open too; use scope: endpoint, or a fallback service",
            ),
            _ => {}
        }
    }
}

/// The fallback against the set: the service it names exists, is another HTTP service, and a
/// subset matches an endpoint of this service (when it lists endpoints); HTTP only.
pub(super) fn check_fallback<'a>(
    origin: &Origin,
    spec: &TrafficPolicySpec,
    service: &Service,
    lookup: &dyn Fn(&str) -> Option<&'a Service>,
    missing: impl Fn(&str) -> Option<String>,
    errors: &mut Vec<PolicyError>,
) {
    let Some(fallback) = spec.circuit_breaker.as_ref().and_then(|b| b.fallback.as_ref()) else { return };
    let name = service.name();
    let mut check = Check { origin, errors };
    if !service.spec.protocol.is_http() {
        check.error(
            "spec.circuitBreaker.fallback",
            format!(
                "fallback is HTTP only, but service \"{name}\" is tcp (a connection is not \
                 re-routed once its endpoints' breakers are open); remove it"
            ),
        );
        return;
    }
    if let Some(target) = &fallback.service {
        match lookup(target) {
            None => {
                if let Some(message) = missing(target) {
                    check.error("spec.circuitBreaker.fallback.service", message);
                }
            }
            Some(_) if target == name => check.error(
                "spec.circuitBreaker.fallback.service",
                format!(
                    "names this policy's own service \"{name}\"; name another service, or a \
                     subset of this one (fallback: {{subset: {{...}}}})"
                ),
            ),
            Some(other) if !other.spec.protocol.is_http() => check.error(
                "spec.circuitBreaker.fallback.service",
                format!("service \"{target}\" is tcp; an HTTP service can only fall back to an HTTP service"),
            ),
            Some(_) => {}
        }
    }
    let endpoints = &service.spec.endpoints;
    if !fallback.subset.is_empty()
        && !endpoints.is_empty()
        && !endpoints.iter().any(|e| fallback.subset.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
    {
        let have: std::collections::BTreeSet<String> =
            endpoints.iter().map(|e| super::labels_text(&e.labels)).collect();
        check.error(
            "spec.circuitBreaker.fallback.subset",
            format!(
                "{} matches no endpoint of service \"{name}\" (endpoint labels: {})",
                super::labels_text(&fallback.subset),
                have.into_iter().collect::<Vec<_>>().join(", ")
            ),
        );
    }
}

fn check_outlier(check: &mut Check<'_>, outlier: &OutlierDetection) {
    check.range("spec.outlierDetection.failurePercentageThreshold", outlier.failure_percentage_threshold, 0, 100);
    check.range("spec.outlierDetection.maxEjectionPercent", outlier.max_ejection_percent, 0, 100);
    check.duration("spec.outlierDetection.interval", outlier.interval, INTERVAL);
    check.duration("spec.outlierDetection.baseEjectionTime", outlier.base_ejection_time, TIMEOUT);
    check.duration("spec.outlierDetection.maxEjectionTime", outlier.max_ejection_time, TIMEOUT);
    if outlier.max_ejection_time < outlier.base_ejection_time {
        check.error(
            "spec.outlierDetection.maxEjectionTime",
            format!(
                "must be at least baseEjectionTime ({}) (got {}; the default is 300s)",
                duration::format(outlier.base_ejection_time),
                duration::format(outlier.max_ejection_time)
            ),
        );
    }
}

fn check_faults(check: &mut Check<'_>, at: &str, faults: &Faults) {
    if let Some(delay) = &faults.delay {
        check.range(&format!("{at}.delay.percent"), delay.percent, 0.0, 100.0);
        check.duration(&format!("{at}.delay.duration"), delay.duration, INTERVAL);
    }
    if let Some(abort) = &faults.abort {
        check.range(&format!("{at}.abort.percent"), abort.percent, 0.0, 100.0);
        check.range(&format!("{at}.abort.status"), abort.status, 200, 599);
    }
}

/// Fields that only make sense for HTTP, rejected for a tcp service.
pub(super) fn check_tcp(origin: &Origin, spec: &TrafficPolicySpec, service: &Service, errors: &mut Vec<PolicyError>) {
    if service.spec.protocol.is_http() {
        return;
    }
    let name = service.name();
    let mut check = Check { origin, errors };
    if spec.timeout.is_some() {
        check.error(
            "spec.timeout",
            format!(
                "timeout is HTTP only, but service \"{name}\" is tcp (a connection has no \
                 request to time out); use connectTimeout or idleTimeout"
            ),
        );
    }
    if spec.retries.is_some() {
        check.error(
            "spec.retries",
            format!(
                "retries are HTTP only, but service \"{name}\" is tcp (a byte stream cannot be \
                 replayed); remove spec.retries"
            ),
        );
    }
    if spec.faults.is_some() {
        check.error("spec.faults", format!("faults are HTTP only, but service \"{name}\" is tcp; remove spec.faults"));
    }
}
