//! Envoy route / cluster fields → the proxy's policy config (once per snapshot).
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XCluster;
use envoy_types::pb::envoy::config::route::v3::{Route as XRoute, RouteAction};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::value;
use outrider_xds::resources::{self as names, Resilience};

use super::build::{decode_any, duration_from};
use crate::backoff::ExponentialBackoff;
use crate::policy::config::{
    BreakerConfig, BreakerScope, BudgetConfig, ClusterPolicy, FallbackConfig, FaultPolicy, OutlierConfig, RetryOn,
    RetryPolicy, RoutePolicy, Thresholds,
};

/// Upstream connections idle this long are closed unless the policy says otherwise.
const DEFAULT_UPSTREAM_IDLE: Duration = Duration::from_secs(3600);

fn dur(field: &str, d: &Option<envoy_types::pb::google::protobuf::Duration>) -> Result<Option<Duration>, String> {
    d.as_ref().map(|d| duration_from(field, d)).transpose()
}

/// The most retries of one request the proxy makes (the policy allows 10; Envoy
/// has no limit, but more than this is a mistake, not a policy).
pub const MAX_RETRIES_PER_REQUEST: u32 = 100;
/// The breaker's count window and half-open probes (as the policy validator allows): they
/// bound the memory of each state machine.
pub const MAX_BREAKER_WINDOW: u32 = 10_000;
pub const MAX_HALF_OPEN_CALLS: u32 = 1000;

fn percent(p: &Option<FractionalPercent>) -> f64 {
    let Some(p) = p else { return 0.0 };
    let denom = match fractional_percent::DenominatorType::try_from(p.denominator) {
        Ok(fractional_percent::DenominatorType::Hundred) => 100.0,
        Ok(fractional_percent::DenominatorType::TenThousand) => 10_000.0,
        _ => 1_000_000.0,
    };
    (f64::from(p.numerator) / denom * 100.0).min(100.0)
}

/// Timeout, retry policy and faults of a route.
pub fn route_policy(r: &XRoute, action: &RouteAction) -> Result<RoutePolicy, String> {
    let timeout = dur("route timeout", &action.timeout)?.filter(|d| !d.is_zero());
    let mut retry = None;
    if let Some(rp) = &action.retry_policy {
        let on = RetryOn::parse(&rp.retry_on)?;
        let backoff = match &rp.retry_back_off {
            Some(b) => {
                let base = dur("retry_back_off.base_interval", &b.base_interval)?.unwrap_or(Duration::from_millis(25));
                let max = dur("retry_back_off.max_interval", &b.max_interval)?
                    .unwrap_or(base.saturating_mul(10).min(super::build::MAX_DURATION));
                ExponentialBackoff::new(base, max.max(base))
            }
            None => ExponentialBackoff::new(Duration::from_millis(25), Duration::from_millis(250)),
        };
        let retry_after_max = match &rp.rate_limited_retry_back_off {
            Some(rl) => dur("rate_limited_retry_back_off.max_interval", &rl.max_interval)?.or(Some(backoff.max)),
            None => None,
        };
        let non_idempotent = r
            .metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get(names::OUTRIDER_METADATA))
            .and_then(|s| s.fields.get(names::RETRY_NON_IDEMPOTENT_FIELD))
            .is_some_and(|v| matches!(v.kind, Some(value::Kind::BoolValue(true))));
        let status_codes = rp
            .retriable_status_codes
            .iter()
            .map(|c| u16::try_from(*c).map_err(|_| format!("retriable status code {c} is out of range")))
            .collect::<Result<Vec<_>, _>>()?;
        let attempts = rp.num_retries.as_ref().map(|n| n.value).unwrap_or(1);
        if attempts > MAX_RETRIES_PER_REQUEST {
            return Err(format!(
                "retry_policy.num_retries {attempts} is more than this proxy makes for one request \
                 ({MAX_RETRIES_PER_REQUEST})"
            ));
        }
        retry = Some(RetryPolicy {
            attempts,
            per_try_timeout: dur("retry_policy.per_try_timeout", &rp.per_try_timeout)?.filter(|d| !d.is_zero()),
            on,
            status_codes,
            backoff,
            retry_after_max,
            non_idempotent,
        });
    }
    let fault = match r.typed_per_filter_config.get(names::FAULT_FILTER) {
        None => None,
        Some(any) => {
            let f: HttpFault = decode_any(any)?;
            let delay = match f.delay {
                Some(d) => match d.fault_delay_secifier {
                    Some(fault_delay::FaultDelaySecifier::FixedDelay(fd)) => {
                        Some((percent(&d.percentage), duration_from("fault delay fixed_delay", &fd)?))
                    }
                    _ => return Err("fault delay: only fixed_delay is supported".into()),
                },
                None => None,
            };
            let abort = match f.abort {
                Some(a) => match a.error_type {
                    Some(fault_abort::ErrorType::HttpStatus(s)) if (200..=599).contains(&s) => {
                        Some((percent(&a.percentage), s as u16))
                    }
                    _ => return Err("fault abort: only http_status 200..599 is supported".into()),
                },
                None => None,
            };
            Some(FaultPolicy { delay, abort })
        }
    };
    let idle_timeout = dur("route idle_timeout", &action.idle_timeout)?.filter(|d| !d.is_zero());
    Ok(RoutePolicy { timeout, idle_timeout, retry, fault })
}

/// Thresholds, breaker, budget and outlier detection of a cluster.
pub fn cluster_policy(xc: &XCluster) -> Result<ClusterPolicy, String> {
    let mut thresholds = Thresholds::default();
    if let Some(cb) = &xc.circuit_breakers
        && let Some(t) = cb.thresholds.iter().find(|t| t.priority == 0)
    {
        let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
            x.as_ref().map(|x| x.value).unwrap_or(d)
        };
        thresholds = Thresholds {
            max_connections: v(&t.max_connections, 1024),
            max_pending_requests: v(&t.max_pending_requests, 1024),
            max_requests: v(&t.max_requests, 1024),
            max_retries: v(&t.max_retries, 3),
        };
    }
    let outlier = match &xc.outlier_detection {
        None => None,
        Some(o) => {
            let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
                x.as_ref().map(|x| x.value).unwrap_or(d)
            };
            let enforced = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| v(x, d) > 0;
            let base =
                dur("outlier_detection.base_ejection_time", &o.base_ejection_time)?.unwrap_or(Duration::from_secs(30));
            Some(OutlierConfig {
                consecutive_5xx: if enforced(&o.enforcing_consecutive_5xx, 100) { v(&o.consecutive_5xx, 5) } else { 0 },
                consecutive_gateway: if enforced(&o.enforcing_consecutive_gateway_failure, 0) {
                    v(&o.consecutive_gateway_failure, 5)
                } else {
                    0
                },
                failure_percentage: if enforced(&o.enforcing_failure_percentage, 0) {
                    match v(&o.failure_percentage_threshold, 85) {
                        p @ 0..=100 => p,
                        p => return Err(format!("outlier_detection.failure_percentage_threshold {p} is over 100")),
                    }
                } else {
                    0
                },
                failure_percentage_min_requests: v(&o.failure_percentage_request_volume, 50),
                interval: dur("outlier_detection.interval", &o.interval)?.unwrap_or(Duration::from_secs(10)),
                base_ejection: base,
                max_ejection: dur("outlier_detection.max_ejection_time", &o.max_ejection_time)?
                    .unwrap_or(Duration::from_secs(300))
                    .max(base),
                max_ejection_percent: v(&o.max_ejection_percent, 10).min(100),
            })
        }
    };
    let mut breaker = None;
    let mut budget = None;
    let mut fallback = None;
    let mut upstream_idle_timeout = Some(DEFAULT_UPSTREAM_IDLE);
    if let Some(any) = xc.typed_extension_protocol_options.get(names::RESILIENCE_KEY) {
        let r: Resilience = decode_any(any)?;
        if let Some(d) = dur("outrider.resilience upstream_idle_timeout", &r.upstream_idle_timeout)? {
            upstream_idle_timeout = Some(d).filter(|d| !d.is_zero());
        }
        if let Some(b) = r.breaker {
            if b.window > MAX_BREAKER_WINDOW || b.half_open_calls > MAX_HALF_OPEN_CALLS {
                return Err(format!(
                    "outrider.resilience breaker: window {} and half_open_calls {} must be at most \
                     {MAX_BREAKER_WINDOW} and {MAX_HALF_OPEN_CALLS}",
                    b.window, b.half_open_calls
                ));
            }
            let window = b.window.max(1);
            let scope = match names::BreakerScope::try_from(b.scope) {
                Ok(names::BreakerScope::Endpoint) => BreakerScope::Endpoint,
                Ok(names::BreakerScope::Service) => BreakerScope::Service,
                Err(_) => return Err(format!("breaker scope {} is not supported (0 endpoint, 1 service)", b.scope)),
            };
            breaker = Some(BreakerConfig {
                failure_rate_threshold: b.failure_rate_threshold.clamp(1, 100),
                slow_call_duration: dur("outrider.resilience breaker.slow_call_duration", &b.slow_call_duration)?
                    .unwrap_or(Duration::from_secs(60)),
                slow_call_rate_threshold: b.slow_call_rate_threshold.clamp(1, 100),
                window,
                minimum_calls: b.minimum_calls.clamp(1, window),
                open_duration: dur("outrider.resilience breaker.open_duration", &b.open_duration)?
                    .unwrap_or(Duration::from_secs(60)),
                half_open_calls: b.half_open_calls.max(1),
                scope,
            });
        }
        if let Some(f) = r.fallback {
            if f.cluster.is_empty() {
                return Err("fallback names no cluster".into());
            }
            fallback = Some(FallbackConfig { cluster: Arc::from(f.cluster), subset: f.subset });
        }
        if let Some(rb) = r.retry_budget {
            if !(0.0..=1000.0).contains(&rb.ratio) {
                return Err(format!("retry budget ratio {} is out of range", rb.ratio));
            }
            budget = Some(BudgetConfig {
                ratio: rb.ratio,
                min_per_second: rb.min_per_second,
                window: dur("outrider.resilience retry_budget.window", &rb.window)?
                    .unwrap_or(Duration::from_secs(10))
                    .max(Duration::from_millis(10)),
            });
        }
    }
    Ok(ClusterPolicy { thresholds, upstream_idle_timeout, breaker, budget, outlier, fallback })
}

#[cfg(test)]
mod tests;
