//! The resilience fields of a TrafficPolicy as Envoy resources: route timeouts, retry policy
//! and fault config; cluster thresholds, outlier detection and the `outrider.v1.Resilience`
//! extension. The contract is summed up in the [`crate::resources`] module docs.

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, OutlierDetection as EnvoyOutlierDetection, circuit_breakers::Thresholds,
};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy, Route, RouteAction,
    retry_policy::{
        RateLimitedRetryBackOff, ResetHeader, ResetHeaderFormat, RetryBackOff, RetryHostPredicate, retry_host_predicate,
    },
    route::Action,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay::FaultDelaySecifier};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort::ErrorType};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::{metadata, proto_duration};
use crate::policy::{
    self, BreakerScope, CircuitBreaker, Faults, OutlierDetection, PolicySet, Retries, Service, TrafficPolicy,
    TrafficPolicySpec,
};
use crate::resources::{
    self as ext, BreakerStateMachine, FAULT_FILTER, HTTP_FAULT_TYPE_URL, OUTRIDER_METADATA, PREVIOUS_HOSTS_PREDICATE,
    PREVIOUS_HOSTS_PREDICATE_TYPE_URL, RETRY_NON_IDEMPOTENT_FIELD, Resilience, RetryBudget, any, bool_value,
    cluster_name, struct_of,
};

/// Header whose value (seconds) paces retries of rate-limited responses.
const RETRY_AFTER: &str = "retry-after";
/// Hosts tried per retry to find one not tried before.
const HOST_SELECTION_RETRY_MAX_ATTEMPTS: i64 = 3;

/// Adds the policy's timeouts, retries and faults to a route of its service. `source` is the
/// policy route it came from (`None` for the default route of a policy without routes).
pub(super) fn apply_to_route(route: &mut Route, spec: &TrafficPolicySpec, source: Option<&policy::Route>) {
    if let Some(Action::Route(action)) = &mut route.action {
        apply_to_action(action, spec);
    }
    if let Some(retries) = &spec.retries {
        route.metadata = Some(metadata([(
            OUTRIDER_METADATA,
            struct_of([(RETRY_NON_IDEMPOTENT_FIELD, bool_value(retries.retry_non_idempotent()))]),
        )]));
    }
    if let Some(faults) = spec.faults_for(source) {
        route.typed_per_filter_config.insert(FAULT_FILTER.to_owned(), any(HTTP_FAULT_TYPE_URL, &http_fault(faults)));
    }
}

fn apply_to_action(action: &mut RouteAction, spec: &TrafficPolicySpec) {
    // Unset = no overall timeout (see the resources module docs); never a zero duration.
    action.timeout = spec.timeout.map(proto_duration);
    action.idle_timeout = spec.idle_timeout.map(proto_duration);
    action.retry_policy = spec.retries.as_ref().map(retry_policy);
}

/// Envoy's retry policy for `retries`.
pub(super) fn retry_policy(retries: &Retries) -> RetryPolicy {
    let max = proto_duration(retries.backoff.max_interval());
    RetryPolicy {
        retry_on: retries.conditions().join(","),
        num_retries: Some(UInt32Value { value: retries.attempts }),
        per_try_timeout: retries.per_try_timeout.map(proto_duration),
        retriable_status_codes: retries.retriable_status_codes.clone(),
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(proto_duration(retries.backoff.base)),
            max_interval: Some(max),
        }),
        rate_limited_retry_back_off: Some(RateLimitedRetryBackOff {
            reset_headers: vec![ResetHeader {
                name: RETRY_AFTER.to_owned(),
                format: ResetHeaderFormat::Seconds as i32,
            }],
            max_interval: Some(max),
        }),
        retry_host_predicate: vec![RetryHostPredicate {
            name: PREVIOUS_HOSTS_PREDICATE.to_owned(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(any(
                PREVIOUS_HOSTS_PREDICATE_TYPE_URL,
                &PreviousHostsPredicate {},
            ))),
        }],
        host_selection_retry_max_attempts: HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        ..Default::default()
    }
}

/// `percent` (0..=100, fractions allowed) as parts per million.
pub(super) fn fractional_percent(percent: f64) -> FractionalPercent {
    // Validated to 0..=100, so the product is within 0..=1_000_000.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let numerator = (percent * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32;
    FractionalPercent { numerator, denominator: DenominatorType::Million as i32 }
}

/// The per-route fault config.
pub(super) fn http_fault(faults: &Faults) -> HttpFault {
    HttpFault {
        delay: faults.delay.map(|delay| FaultDelay {
            percentage: Some(fractional_percent(delay.percent)),
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(proto_duration(delay.duration))),
        }),
        abort: faults.abort.map(|abort| FaultAbort {
            percentage: Some(fractional_percent(abort.percent)),
            error_type: Some(ErrorType::HttpStatus(abort.status)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether any route of the set injects faults (then every HTTP connection manager gets the
/// fault filter, which Envoy needs for the per-route configs to take effect).
pub(super) fn any_faults(set: &PolicySet) -> bool {
    set.services
        .values()
        .filter(|service| service.spec.protocol.is_http())
        .filter_map(|service| set.traffic_policy(service.name()))
        .any(|policy| {
            let spec = &policy.spec;
            if spec.routes.is_empty() {
                spec.faults_for(None).is_some()
            } else {
                spec.routes.iter().any(|route| spec.faults_for(Some(route)).is_some())
            }
        })
}

/// One `DEFAULT`-priority threshold, Envoy's defaults without a `circuitBreaker`.
pub(super) fn circuit_breakers(breaker: Option<&CircuitBreaker>) -> CircuitBreakers {
    let default = CircuitBreaker::default();
    let breaker = breaker.unwrap_or(&default);
    let value = |value: u32| Some(UInt32Value { value });
    CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: value(breaker.max_connections),
            max_pending_requests: value(breaker.max_pending_requests),
            max_requests: value(breaker.max_requests),
            max_retries: value(breaker.max_retries),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Envoy's outlier detection. Success-rate ejection, which the policy cannot express, is
/// turned off (`enforcing_success_rate: 0`; Envoy's default would be 100). For a tcp service
/// Envoy counts a failed connect as a 503 (a gateway error), and so does outrider-proxy.
pub(super) fn outlier_detection(outlier: &OutlierDetection) -> EnvoyOutlierDetection {
    let value = |value: u32| Some(UInt32Value { value });
    let enforcing = |on: bool| value(if on { 100 } else { 0 });
    let consecutive_5xx = outlier.consecutive_5xx();
    let gateway = outlier.consecutive_gateway_errors();
    let percentage = outlier.failure_percentage_threshold;
    EnvoyOutlierDetection {
        consecutive_5xx: value(consecutive_5xx),
        enforcing_consecutive_5xx: enforcing(consecutive_5xx > 0),
        consecutive_gateway_failure: value(gateway),
        enforcing_consecutive_gateway_failure: enforcing(gateway > 0),
        enforcing_success_rate: value(0),
        failure_percentage_threshold: value(percentage),
        enforcing_failure_percentage: enforcing(percentage > 0),
        failure_percentage_minimum_hosts: value(1),
        failure_percentage_request_volume: value(outlier.failure_percentage_minimum_requests),
        interval: Some(proto_duration(outlier.interval)),
        base_ejection_time: Some(proto_duration(outlier.base_ejection_time)),
        max_ejection_time: Some(proto_duration(outlier.max_ejection_time)),
        max_ejection_percent: value(outlier.max_ejection_percent),
        ..Default::default()
    }
}

/// The `outrider.v1.Resilience` extension of `service`'s cluster, when its policy needs one.
/// `fallback` is the service a breaker's fallback names (its name and port), resolved from the
/// set (`None`: the service itself, or a name the set does not have).
pub(super) fn extension(
    service: &Service,
    policy: Option<&TrafficPolicy>,
    fallback: Option<(&str, u16)>,
) -> Option<Resilience> {
    let spec = &policy?.spec;
    let breaker =
        spec.circuit_breaker.as_ref().and_then(CircuitBreaker::state_machine).map(|machine| BreakerStateMachine {
            failure_rate_threshold: machine.failure_rate_threshold,
            slow_call_duration: Some(proto_duration(machine.slow_call_duration)),
            slow_call_rate_threshold: machine.slow_call_rate_threshold,
            window: machine.window,
            minimum_calls: machine.minimum_calls,
            open_duration: Some(proto_duration(machine.open_duration)),
            half_open_calls: machine.half_open_calls,
            scope: match machine.scope {
                BreakerScope::Endpoint => ext::BreakerScope::Endpoint,
                BreakerScope::Service => ext::BreakerScope::Service,
            } as i32,
        });
    let fallback = spec.circuit_breaker.as_ref().and_then(|b| b.fallback.as_ref()).and_then(|f| {
        let (name, port) = match &f.service {
            // Validated: the service exists.
            Some(_) => fallback?,
            None => (service.name(), service.spec.port),
        };
        Some(ext::Fallback { cluster: cluster_name(name, port), subset: f.subset.clone() })
    });
    let retry_budget = spec.retries.as_ref().map(|retries| RetryBudget {
        ratio: retries.budget.ratio,
        min_per_second: retries.budget.min_per_second,
        window: Some(proto_duration(retries.budget.window)),
    });
    let upstream_idle_timeout = spec.idle_timeout.map(proto_duration);
    if breaker.is_none() && retry_budget.is_none() && upstream_idle_timeout.is_none() {
        return None;
    }
    Some(Resilience { breaker, retry_budget, upstream_idle_timeout, fallback })
}
