//! One pass reports every error of a file, each with its line and column.

use crate::{PolicyErrors, load_str};

fn errors(text: &str) -> PolicyErrors {
    match load_str("policy.yaml", text) {
        Ok(set) => panic!("expected errors, got {set:?}"),
        Err(errors) => errors,
    }
}

fn lines(text: &str) -> Vec<String> {
    errors(text).iter().map(ToString::to_string).collect()
}

const SEVERAL: &str = "\
apiVersion: outrider.io/v1
kind: Service
metadata: {name: reviews}
spec:
  port: 9080
  protocl: http
  endpoints:
    - {address: \"127.0.0.1:9081\", labels: {version: v1}}
    - {address: \"reviews-v2:9082\", labels: {version: v2}, weight: many}
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {name: reviews}
spec:
  service: reviews
  timout: 3s
  connectTimeout: 5 secs
  retries:
    attempts: three
    retryOn: [5xx, connect-falure]
  routes:
    - split: [{subset: {version: v1}, weight: 80}, {subset: {version: v2}, weight: 10}]
";

#[test]
fn every_error_of_a_file_is_reported_with_its_position() {
    assert_eq!(
        lines(SEVERAL),
        [
            "policy.yaml:6:3: document 1 (Service/reviews): spec.protocl: unknown field; did you mean \
             `protocol`? (expected one of protocol, port, addresses, mtls, endpoints)",
            "policy.yaml:9:8: document 1 (Service/reviews): spec.endpoints[1].address: invalid endpoint \
             address \"reviews-v2:9082\": \"reviews-v2\" is a host name, but endpoints must be IP addresses \
             (e.g. 127.0.0.1:9082); host names are not resolved",
            "policy.yaml:9:59: document 1 (Service/reviews): spec.endpoints[1].weight: expected a whole \
             number ≥ 0, got \"many\"",
            "policy.yaml:16:3: document 2 (TrafficPolicy/reviews): spec.timout: unknown field; did you mean \
             `timeout`? (expected one of service, connectTimeout, loadBalancer, routes, timeout, idleTimeout, \
             retries, circuitBreaker, outlierDetection, faults)",
            "policy.yaml:17:3: document 2 (TrafficPolicy/reviews): spec.connectTimeout: invalid duration \
             \"5 secs\": use a number followed by ms, s, m or h, e.g. 250ms or 2s",
            "policy.yaml:19:5: document 2 (TrafficPolicy/reviews): spec.retries.attempts: expected a whole \
             number ≥ 0, got \"three\"",
            "policy.yaml:20:20: document 2 (TrafficPolicy/reviews): spec.retries.retryOn[1]: unknown value \
             \"connect-falure\", expected one of connect-failure, refused-stream, reset, 5xx, gateway-error, \
             retriable-status-codes, non-idempotent, unavailable, cancelled, deadline-exceeded, \
             resource-exhausted, internal; did you mean \"connect-failure\"?",
            "policy.yaml:22:7: document 2 (TrafficPolicy/reviews): spec.routes[0].split: weights of a split \
             must add up to 100 (got 90)",
        ]
    );
}

#[test]
fn a_fixed_file_loads() {
    let fixed = SEVERAL
        .replace("  protocl: http\n", "")
        .replace("reviews-v2:9082", "127.0.0.1:9082")
        .replace(", weight: many", "")
        .replace("timout", "timeout")
        .replace("5 secs", "5s")
        .replace("three", "3")
        .replace("connect-falure", "connect-failure")
        .replace("weight: 80", "weight: 90");
    let set = load_str("policy.yaml", &fixed).unwrap();
    assert_eq!(set.traffic_policies["reviews"].spec.retries.as_ref().unwrap().attempts, 3);
}

#[test]
fn checks_that_a_repair_would_mislead_are_left_out() {
    // The weight that does not decode is not counted as a stand-in in the sum of the split.
    let text = SEVERAL.split("---\n").nth(1).unwrap().replace("weight: 80", "weight: lots");
    let service = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec: {port: 80}\n---\n";
    let found = lines(&format!("{service}{text}"));
    assert!(found.iter().any(|l| l.contains("split[0].weight: expected a whole number")), "{found:#?}");
    assert!(!found.iter().any(|l| l.contains("add up to 100")), "{found:#?}");
}

#[test]
fn a_missing_field_points_at_its_mapping_and_an_unknown_kind_gets_a_suggestion() {
    let text = "apiVersion: outrider.io/v1\nkind: Servcie\nmetadata: {name: a}\nspec: {}\n---\n\
                apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: b}\nspec:\n  protocol: http\n";
    assert_eq!(
        lines(text),
        [
            "policy.yaml:2:1: document 1 (Servcie/a): kind: unknown kind \"Servcie\": expected one of Service, \
             TrafficPolicy, AuthorizationPolicy, Telemetry, Rollout; did you mean \"Service\"?",
            "policy.yaml:9:1: document 2 (Service/b): spec.port: required field is missing",
        ]
    );
}

#[test]
fn yaml_syntax_errors_carry_their_position_in_front() {
    let found = lines("apiVersion: outrider.io/v1\nkind: Service\nspec: {port: 80\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("policy.yaml:4:1: document 1: invalid YAML: did not find expected ','"), "{found:?}");
}

#[test]
fn a_bad_name_is_reported_once() {
    let found = lines("apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: A_b}\nspec: {port: 80}\n");
    assert_eq!(found.len(), 1, "{found:#?}");
}
