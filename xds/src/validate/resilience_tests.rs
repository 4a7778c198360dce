//! Loading and validating the resilience fields of a TrafficPolicy.

use std::time::Duration;

use crate::policy::{BreakerScope, RetryOn, StateMachine, TrafficPolicySpec};
use crate::{PolicyErrors, load_str};

/// A Service (http, or the given protocol) then a TrafficPolicy with the given spec lines.
fn policy_for(protocol: &str, spec: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: reviews}}\n\
         spec: {{protocol: {protocol}, port: 9080, addresses: [\"127.100.0.5\"]}}\n---\n\
         apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: reviews}}\n\
         spec:\n  service: reviews\n{spec}"
    )
}

fn load(spec: &str) -> TrafficPolicySpec {
    let set = load_str("policy.yaml", &policy_for("http", spec)).unwrap_or_else(|errors| panic!("{errors}"));
    set.traffic_policies["reviews"].spec.clone()
}

fn errors_for(protocol: &str, spec: &str) -> PolicyErrors {
    match load_str("policy.yaml", &policy_for(protocol, spec)) {
        Ok(set) => panic!("expected errors, got {set:?}"),
        Err(errors) => errors,
    }
}

/// The only error's (field, message).
fn only(protocol: &str, spec: &str) -> (String, String) {
    let errors = errors_for(protocol, spec);
    assert_eq!(errors.len(), 1, "{errors}");
    let error = errors.iter().next().unwrap();
    assert_eq!(error.kind.as_deref(), Some("TrafficPolicy"), "{error}");
    assert_eq!(error.name.as_deref(), Some("reviews"), "{error}");
    assert_eq!(error.document, Some(1), "{error}");
    (error.field.clone().unwrap_or_default(), error.message.clone())
}

#[test]
fn defaults_are_applied() {
    let spec = load("  retries: {}\n  circuitBreaker: {}\n  outlierDetection: {}\n  faults: {}\n");
    assert_eq!(spec.timeout, None);
    assert_eq!(spec.idle_timeout, None);
    let retries = spec.retries.unwrap();
    assert_eq!(retries.attempts, 2);
    assert_eq!(retries.per_try_timeout, None);
    assert_eq!(
        retries.retry_on,
        [RetryOn::ConnectFailure, RetryOn::RefusedStream, RetryOn::Unavailable, RetryOn::Cancelled]
    );
    assert!(retries.retriable_status_codes.is_empty());
    assert_eq!(retries.backoff.base, Duration::from_millis(25));
    assert_eq!(retries.backoff.max_interval(), Duration::from_millis(250));
    assert_eq!(retries.budget.ratio, 0.2);
    assert_eq!(retries.budget.min_per_second, 10);
    assert_eq!(retries.budget.window, Duration::from_secs(10));
    assert!(!retries.retry_non_idempotent());

    let breaker = spec.circuit_breaker.unwrap();
    assert_eq!(
        (breaker.max_connections, breaker.max_pending_requests, breaker.max_requests, breaker.max_retries),
        (1024, 1024, 1024, 3)
    );
    assert_eq!(breaker.state_machine(), None);

    let outlier = spec.outlier_detection.unwrap();
    assert_eq!(outlier.consecutive_5xx(), 5);
    assert_eq!(outlier.consecutive_gateway_errors(), 0);
    assert_eq!(outlier.failure_percentage_threshold, 0);
    assert_eq!(outlier.failure_percentage_minimum_requests, 5);
    assert_eq!(outlier.interval, Duration::from_secs(10));
    assert_eq!(outlier.base_ejection_time, Duration::from_secs(30));
    assert_eq!(outlier.max_ejection_time, Duration::from_secs(300));
    assert_eq!(outlier.max_ejection_percent, 10);
    assert!(spec.faults.unwrap().is_empty());

    // The backoff max follows a given base.
    let retries = load("  retries: {backoff: {base: 100ms}}\n").retries.unwrap();
    assert_eq!(retries.backoff.max_interval(), Duration::from_secs(1));
}

#[test]
fn one_state_machine_field_turns_it_on_with_resilience4j_defaults() {
    let breaker = load("  circuitBreaker: {window: 20}\n").circuit_breaker.unwrap();
    assert_eq!(
        breaker.state_machine(),
        Some(StateMachine {
            failure_rate_threshold: 50,
            slow_call_duration: Duration::from_secs(60),
            slow_call_rate_threshold: 100,
            window: 20,
            // 100 clamped to the window.
            minimum_calls: 20,
            open_duration: Duration::from_secs(60),
            half_open_calls: 10,
            scope: BreakerScope::Endpoint,
        })
    );
    let breaker = load("  circuitBreaker: {openDuration: 5s}\n").circuit_breaker.unwrap();
    let machine = breaker.state_machine().unwrap();
    assert_eq!((machine.window, machine.minimum_calls), (100, 100));
    assert_eq!(machine.open_duration, Duration::from_secs(5));
    // Thresholds alone leave it off; a scope turns it on.
    let breaker = load("  circuitBreaker: {maxRequests: 10}\n").circuit_breaker.unwrap();
    assert_eq!(breaker.state_machine(), None);
    let breaker = load("  circuitBreaker: {scope: service}\n").circuit_breaker.unwrap();
    assert_eq!(breaker.state_machine().unwrap().scope, BreakerScope::Service);
}

/// Services `reviews` (http, endpoints v1 and v2), `legacy` (http) and `db` (tcp), and a
/// policy for `reviews` (or for `service` with `protocol`) with the given breaker.
fn fallback_set(policy_service: &str, breaker: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: reviews}}\n\
         spec:\n  port: 9080\n  endpoints:\n    - {{address: \"127.0.0.1:1\", labels: {{version: v1}}}}\n\
         \x20   - {{address: \"127.0.0.1:2\", labels: {{version: v2}}}}\n---\n\
         apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: legacy}}\nspec: {{port: 9090}}\n---\n\
         apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: db}}\n\
         spec: {{protocol: tcp, port: 5432, addresses: [\"127.100.0.9\"]}}\n---\n\
         apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: p}}\n\
         spec:\n  service: {policy_service}\n  circuitBreaker: {breaker}\n"
    )
}

#[test]
fn fallback_is_checked_against_the_set() {
    let ok = |breaker: &str| {
        load_str("policy.yaml", &fallback_set("reviews", breaker)).unwrap_or_else(|errors| panic!("{errors}"))
    };
    let set = ok("{fallback: {subset: {version: v1}}}");
    let breaker = set.traffic_policies["reviews"].spec.circuit_breaker.clone().unwrap();
    assert_eq!(breaker.fallback.unwrap().subset["version"], "v1");
    ok("{scope: service, fallback: {service: legacy}}");
    ok("{scope: endpoint, fallback: {service: legacy}}");

    let cases = [
        (
            "reviews",
            "{fallback: {}}",
            "spec.circuitBreaker.fallback",
            "name a subset of this service (fallback: {subset: {version: v1}}) or another service",
        ),
        ("reviews", "{fallback: {subset: {version: v1}, service: legacy}}", "spec.circuitBreaker.fallback", "not both"),
        (
            "reviews",
            "{scope: service, fallback: {subset: {version: v1}}}",
            "spec.circuitBreaker.fallback.subset",
            "with scope: service the whole service shares one breaker",
        ),
        (
            "reviews",
            "{fallback: {subset: {version: v3}}}",
            "spec.circuitBreaker.fallback.subset",
            "{version: v3} matches no endpoint of service \"reviews\" (endpoint labels: {version: v1}, {version: v2})",
        ),
        (
            "reviews",
            "{fallback: {service: nope}}",
            "spec.circuitBreaker.fallback.service",
            "no Service named \"nope\" (known services: db, legacy, reviews)",
        ),
        ("reviews", "{fallback: {service: reviews}}", "spec.circuitBreaker.fallback.service", "own service"),
        (
            "reviews",
            "{fallback: {service: db}}",
            "spec.circuitBreaker.fallback.service",
            "service \"db\" is tcp; an HTTP service can only fall back to an HTTP service",
        ),
        ("db", "{fallback: {service: legacy}}", "spec.circuitBreaker.fallback", "fallback is HTTP only"),
        (
            "reviews",
            "{scope: pod}",
            "spec.circuitBreaker.scope",
            "unknown value \"pod\", expected one of endpoint, service",
        ),
    ];
    for (service, breaker, field, message) in cases {
        let errors = match load_str("policy.yaml", &fallback_set(service, breaker)) {
            Ok(_) => panic!("{breaker}: expected an error"),
            Err(errors) => errors,
        };
        assert_eq!(errors.len(), 1, "{breaker}: {errors}");
        let error = errors.iter().next().unwrap();
        assert_eq!(error.file, "policy.yaml", "{error}");
        assert_eq!(error.document, Some(3), "{error}");
        assert_eq!(error.field.as_deref(), Some(field), "{breaker}: {error}");
        assert!(error.message.contains(message), "{breaker}: {error}");
    }
}

#[test]
fn the_design_example_loads_with_its_values() {
    let spec = load(
        "  connectTimeout: 1s
  timeout: 3s
  idleTimeout: 5m
  retries:
    attempts: 3
    perTryTimeout: 1s
    retryOn: [connect-failure, reset, 5xx, gateway-error, retriable-status-codes, non-idempotent]
    retriableStatusCodes: [503]
    backoff: {base: 25ms, max: 250ms}
    budget: {ratio: 0.5, minPerSecond: 3, window: 20s}
  circuitBreaker:
    maxConnections: 100
    maxPendingRequests: 50
    maxRequests: 200
    maxRetries: 4
    failureRateThreshold: 40
    slowCallDuration: 2s
    slowCallRateThreshold: 90
    window: 20
    minimumCalls: 10
    openDuration: 30s
    halfOpenCalls: 3
  outlierDetection: {consecutive5xx: 7, consecutiveGatewayErrors: 4, interval: 5s}
  faults:
    delay: {percent: 0.5, duration: 2s}
    abort: {percent: 5, status: 503}
",
    );
    assert_eq!(spec.timeout, Some(Duration::from_secs(3)));
    assert_eq!(spec.idle_timeout, Some(Duration::from_secs(300)));
    let retries = spec.retries.unwrap();
    assert_eq!(retries.attempts, 3);
    assert!(retries.retry_non_idempotent());
    assert_eq!(retries.conditions(), ["connect-failure", "reset", "5xx", "gateway-error", "retriable-status-codes"]);
    assert_eq!(retries.budget.ratio, 0.5);
    let machine = spec.circuit_breaker.unwrap().state_machine().unwrap();
    assert_eq!((machine.failure_rate_threshold, machine.minimum_calls), (40, 10));
    let outlier = spec.outlier_detection.unwrap();
    assert_eq!(outlier.consecutive_5xx(), 7);
    assert_eq!(outlier.consecutive_gateway_errors(), 4);
    let faults = spec.faults.unwrap();
    assert_eq!(faults.delay.unwrap().percent, 0.5);
    assert_eq!(faults.abort.unwrap().status, 503);
}

#[test]
fn every_range_error_names_its_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("  retries: {attempts: 11}\n", "spec.retries.attempts", "between 0 and 10 (got 11)"),
        (
            "  retries: {retryOn: [retriable-status-codes], retriableStatusCodes: [503, 600]}\n",
            "spec.retries.retriableStatusCodes[1]",
            "between 100 and 599 (got 600)",
        ),
        (
            "  retries: {retryOn: [retriable-status-codes], retriableStatusCodes: [99]}\n",
            "spec.retries.retriableStatusCodes[0]",
            "between 100 and 599 (got 99)",
        ),
        ("  retries: {budget: {ratio: 1.5}}\n", "spec.retries.budget.ratio", "between 0 and 1 (got 1.5)"),
        ("  retries: {budget: {window: 0s}}\n", "spec.retries.budget.window", "more than 0s"),
        ("  retries: {backoff: {base: 0s, max: 1s}}\n", "spec.retries.backoff.base", "more than 0s"),
        (
            "  retries: {backoff: {base: 100ms, max: 50ms}}\n",
            "spec.retries.backoff.max",
            "at least backoff.base (100ms) (got 50ms)",
        ),
        ("  retries: {backoff: {max: 10ms}}\n", "spec.retries.backoff.max", "at least backoff.base (25ms)"),
        ("  retries: {perTryTimeout: 0s}\n", "spec.retries.perTryTimeout", "more than 0s"),
        ("  timeout: 0s\n", "spec.timeout", "more than 0s"),
        ("  idleTimeout: 0s\n", "spec.idleTimeout", "more than 0s"),
        (
            "  circuitBreaker: {maxConnections: 0}\n",
            "spec.circuitBreaker.maxConnections",
            "between 1 and 1000000 (got 0)",
        ),
        (
            "  circuitBreaker: {maxPendingRequests: 1000001}\n",
            "spec.circuitBreaker.maxPendingRequests",
            "between 1 and 1000000 (got 1000001)",
        ),
        ("  circuitBreaker: {maxRequests: 0}\n", "spec.circuitBreaker.maxRequests", "between 1 and 1000000"),
        ("  circuitBreaker: {maxRetries: 1000001}\n", "spec.circuitBreaker.maxRetries", "between 0 and 1000000"),
        (
            "  circuitBreaker: {failureRateThreshold: 0}\n",
            "spec.circuitBreaker.failureRateThreshold",
            "between 1 and 100 (got 0)",
        ),
        (
            "  circuitBreaker: {slowCallRateThreshold: 101}\n",
            "spec.circuitBreaker.slowCallRateThreshold",
            "between 1 and 100 (got 101)",
        ),
        ("  circuitBreaker: {window: 10001}\n", "spec.circuitBreaker.window", "between 1 and 10000"),
        (
            "  circuitBreaker: {window: 20, minimumCalls: 21}\n",
            "spec.circuitBreaker.minimumCalls",
            "between 1 and 20, window (got 21)",
        ),
        (
            "  circuitBreaker: {minimumCalls: 101}\n",
            "spec.circuitBreaker.minimumCalls",
            "between 1 and 100, the default window (got 101)",
        ),
        ("  circuitBreaker: {minimumCalls: 0}\n", "spec.circuitBreaker.minimumCalls", "between 1 and 100"),
        ("  circuitBreaker: {halfOpenCalls: 1001}\n", "spec.circuitBreaker.halfOpenCalls", "between 1 and 1000"),
        ("  circuitBreaker: {slowCallDuration: 0s}\n", "spec.circuitBreaker.slowCallDuration", "more than 0s"),
        ("  circuitBreaker: {openDuration: 0s}\n", "spec.circuitBreaker.openDuration", "more than 0s"),
        (
            "  outlierDetection: {failurePercentageThreshold: 101}\n",
            "spec.outlierDetection.failurePercentageThreshold",
            "between 0 and 100 (got 101)",
        ),
        (
            "  outlierDetection: {maxEjectionPercent: 150}\n",
            "spec.outlierDetection.maxEjectionPercent",
            "between 0 and 100 (got 150)",
        ),
        ("  outlierDetection: {interval: 0s}\n", "spec.outlierDetection.interval", "more than 0s"),
        ("  outlierDetection: {baseEjectionTime: 0s}\n", "spec.outlierDetection.baseEjectionTime", "more than 0s"),
        (
            "  outlierDetection: {baseEjectionTime: 10m}\n",
            "spec.outlierDetection.maxEjectionTime",
            "at least baseEjectionTime (10m) (got 5m",
        ),
        (
            "  faults: {delay: {percent: 100.5, duration: 1s}}\n",
            "spec.faults.delay.percent",
            "between 0 and 100 (got 100.5)",
        ),
        ("  faults: {delay: {percent: 1, duration: 0s}}\n", "spec.faults.delay.duration", "more than 0s"),
        ("  faults: {abort: {percent: -1, status: 503}}\n", "spec.faults.abort.percent", "between 0 and 100 (got -1)"),
        ("  faults: {abort: {percent: 1, status: 600}}\n", "spec.faults.abort.status", "between 200 and 599 (got 600)"),
        ("  faults: {abort: {percent: 1, status: 199}}\n", "spec.faults.abort.status", "between 200 and 599 (got 199)"),
        (
            "  routes:\n    - split: [{weight: 100}]\n      faults: {abort: {percent: 1, status: 100}}\n",
            "spec.routes[0].faults.abort.status",
            "between 200 and 599 (got 100)",
        ),
    ];
    for (spec, field, message) in cases {
        let (got_field, got_message) = only("http", spec);
        assert_eq!(&got_field, field, "{spec}");
        assert!(got_message.contains(message), "{spec}: {got_message}");
    }
    // Full message, for the display format.
    let errors = errors_for("http", "  retries: {attempts: 11}\n");
    assert_eq!(
        errors.to_string(),
        "policy.yaml:11:13: document 2 (TrafficPolicy/reviews): spec.retries.attempts: must be between \
         0 and 10 (got 11)"
    );
}

#[test]
fn bounds_themselves_are_accepted() {
    load(
        "  retries: {attempts: 10, budget: {ratio: 1.0}, backoff: {base: 1s, max: 1s}}
  circuitBreaker: {maxConnections: 1000000, maxRetries: 0, window: 10000, minimumCalls: 10000, halfOpenCalls: 1000, failureRateThreshold: 100}
  outlierDetection: {failurePercentageThreshold: 100, maxEjectionPercent: 0, baseEjectionTime: 5m, maxEjectionTime: 5m}
  faults: {delay: {percent: 100, duration: 1ms}, abort: {percent: 0, status: 200}}
",
    );
    load("  retries: {attempts: 0, budget: {ratio: 0}}\n  faults: {abort: {percent: 0.0001, status: 599}}\n");
}

#[test]
fn retriable_status_codes_go_with_their_retry_on_token() {
    let (field, message) = only("http", "  retries: {retryOn: [5xx, retriable-status-codes]}\n");
    assert_eq!(field, "spec.retries.retriableStatusCodes");
    assert!(message.contains("list the codes here"), "{message}");
    let (field, message) = only("http", "  retries: {retriableStatusCodes: [503]}\n");
    assert_eq!(field, "spec.retries.retriableStatusCodes");
    assert!(message.contains("unless retryOn lists retriable-status-codes"), "{message}");
    let ok = load("  retries: {retryOn: [retriable-status-codes], retriableStatusCodes: [503, 429]}\n");
    assert_eq!(ok.retries.unwrap().retriable_status_codes, [503, 429]);
}

#[test]
fn retry_on_needs_a_condition_and_known_tokens() {
    let (field, message) = only("http", "  retries: {retryOn: [non-idempotent]}\n");
    assert_eq!(field, "spec.retries.retryOn");
    assert!(message.contains("at least one condition"), "{message}");
    let (field, _) = only("http", "  retries: {retryOn: []}\n");
    assert_eq!(field, "spec.retries.retryOn");
    let (field, message) = only("http", "  retries: {retryOn: [5xx, timeout]}\n");
    assert_eq!(field, "spec.retries.retryOn[1]");
    assert!(message.starts_with("unknown value \"timeout\", expected one of connect-failure"), "{message}");
    let (field, message) = only("http", "  retries: {attempt: 3}\n");
    assert_eq!(field, "spec.retries.attempt");
    assert!(message.starts_with("unknown field"), "{message}");
}

#[test]
fn per_try_timeout_must_fit_in_the_timeout() {
    let (field, message) = only("http", "  timeout: 1s\n  retries: {perTryTimeout: 1500ms}\n");
    assert_eq!(field, "spec.retries.perTryTimeout");
    assert!(message.contains("at most spec.timeout (1s)"), "{message}");
    assert!(message.contains("(got 1s500ms)"), "{message}");
    load("  timeout: 1s\n  retries: {perTryTimeout: 1s}\n");
    load("  retries: {perTryTimeout: 1h}\n");
}

#[test]
fn tcp_services_reject_http_only_fields() {
    let spec = "  timeout: 1s
  retries: {}
  faults: {abort: {percent: 1, status: 503}}
";
    let errors = errors_for("tcp", spec);
    let fields: Vec<&str> = errors.iter().filter_map(|e| e.field.as_deref()).collect();
    assert_eq!(fields, ["spec.timeout", "spec.retries", "spec.faults"], "{errors}");
    for error in &errors {
        assert!(error.message.contains("service \"reviews\" is tcp"), "{error}");
    }
    // What a tcp service may have.
    let set = load_str(
        "policy.yaml",
        &policy_for(
            "tcp",
            "  connectTimeout: 1s
  idleTimeout: 10m
  circuitBreaker: {maxConnections: 10, failureRateThreshold: 50}
  outlierDetection: {consecutive5xx: 3, consecutiveGatewayErrors: 2, failurePercentageThreshold: 50}
",
        ),
    )
    .unwrap_or_else(|errors| panic!("{errors}"));
    // Failed connects count as 5xx and gateway errors (Envoy's reading).
    let spec = &set.traffic_policies["reviews"].spec;
    let outlier = spec.outlier_detection.as_ref().unwrap();
    assert_eq!(outlier.consecutive_5xx(), 3);
    assert_eq!(outlier.consecutive_gateway_errors(), 2);
}

#[test]
fn the_examples_in_docs_policy_md_load() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policy.md");
    let docs = std::fs::read_to_string(path).unwrap();
    let blocks: Vec<&str> =
        docs.split("```yaml\n").skip(1).filter_map(|rest| rest.split_once("```").map(|(block, _)| block)).collect();
    assert!(blocks.len() >= 2, "expected the Service and TrafficPolicy examples");
    let set = load_str("policy.md", &blocks.join("---\n")).unwrap_or_else(|e| panic!("{e}"));
    let spec = &set.traffic_policies["echo"].spec;
    assert!(spec.retries.is_some() && spec.faults.is_some());
    assert!(spec.faults_for(Some(&spec.routes[0])).is_none());
}

#[test]
fn durations_have_an_upper_bound_per_field() {
    // (spec at the limit, the same one millisecond over it, field, limit as written)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("  connectTimeout: 5m\n", "  connectTimeout: 5m1ms\n", "spec.connectTimeout", "5m"),
        ("  timeout: 24h\n", "  timeout: 24h1ms\n", "spec.timeout", "24h"),
        ("  idleTimeout: 168h\n", "  idleTimeout: 168h1ms\n", "spec.idleTimeout", "168h"),
        (
            "  timeout: 24h\n  retries: {perTryTimeout: 24h}\n",
            "  retries: {perTryTimeout: 24h1ms}\n",
            "spec.retries.perTryTimeout",
            "24h",
        ),
        (
            "  retries: {backoff: {base: 1h, max: 1h}}\n",
            "  retries: {backoff: {base: 1h1ms, max: 1h1ms}}\n",
            "spec.retries.backoff.base",
            "1h",
        ),
        (
            "  retries: {backoff: {base: 1s, max: 1h}}\n",
            "  retries: {backoff: {base: 1s, max: 1h1ms}}\n",
            "spec.retries.backoff.max",
            "1h",
        ),
        (
            "  retries: {budget: {window: 1h}}\n",
            "  retries: {budget: {window: 1h1ms}}\n",
            "spec.retries.budget.window",
            "1h",
        ),
        (
            "  circuitBreaker: {slowCallDuration: 24h}\n",
            "  circuitBreaker: {slowCallDuration: 24h1ms}\n",
            "spec.circuitBreaker.slowCallDuration",
            "24h",
        ),
        (
            "  circuitBreaker: {openDuration: 24h}\n",
            "  circuitBreaker: {openDuration: 24h1ms}\n",
            "spec.circuitBreaker.openDuration",
            "24h",
        ),
        (
            "  outlierDetection: {interval: 1h}\n",
            "  outlierDetection: {interval: 1h1ms}\n",
            "spec.outlierDetection.interval",
            "1h",
        ),
        (
            "  outlierDetection: {baseEjectionTime: 24h, maxEjectionTime: 24h}\n",
            "  outlierDetection: {baseEjectionTime: 24h1ms, maxEjectionTime: 24h1ms}\n",
            "spec.outlierDetection.baseEjectionTime",
            "24h",
        ),
        (
            "  outlierDetection: {maxEjectionTime: 24h}\n",
            "  outlierDetection: {maxEjectionTime: 24h1ms}\n",
            "spec.outlierDetection.maxEjectionTime",
            "24h",
        ),
        (
            "  faults: {delay: {percent: 1, duration: 1h}}\n",
            "  faults: {delay: {percent: 1, duration: 1h1ms}}\n",
            "spec.faults.delay.duration",
            "1h",
        ),
    ];
    for (ok, over, field, limit) in cases {
        load(ok);
        let errors = errors_for("http", over);
        let error =
            errors.iter().find(|e| e.field.as_deref() == Some(*field)).unwrap_or_else(|| panic!("{over}: {errors}"));
        assert!(error.message.starts_with(&format!("must be at most {limit} (got {limit}1ms)")), "{over}: {error}");
    }
    // Envoy's own limit (315,576,000,000 s) and more: the same error, never an overflow.
    let (field, message) = only("http", "  timeout: 87660000h\n");
    assert_eq!((field.as_str(), message.as_str()), ("spec.timeout", "must be at most 24h (got 87660000h)"));
    let errors = errors_for("http", "  timeout: 99999999999999999999s\n");
    assert!(errors.to_string().contains("too large"), "{errors}");
    // The whole message names file (with line and column), document, kind/name and field.
    let errors = errors_for("http", "  faults: {delay: {percent: 100, duration: 2h}}\n");
    assert_eq!(
        errors.to_string(),
        "policy.yaml:11:34: document 2 (TrafficPolicy/reviews): spec.faults.delay.duration: must be at most 1h (got 2h)"
    );
}
