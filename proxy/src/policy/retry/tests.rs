use super::*;
use crate::backoff::ExponentialBackoff;

/// Every `retryOn` condition (Envoy's `retry_on` tokens).
const CONDITIONS: [&str; 11] = [
    "connect-failure",
    "refused-stream",
    "reset",
    "5xx",
    "gateway-error",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "internal",
    "unavailable",
];

/// The kinds of request a policy sees.
#[derive(Clone, Copy, Debug)]
enum Call {
    /// GET (also HEAD, OPTIONS, TRACE, PUT, DELETE).
    Idempotent,
    /// POST / PATCH without `non-idempotent` in the policy.
    Post,
    /// POST / PATCH with `non-idempotent`.
    PostAllowed,
    /// A gRPC call (POST), without `non-idempotent`.
    Grpc,
}

const CALLS: [Call; 4] = [Call::Idempotent, Call::Post, Call::PostAllowed, Call::Grpc];

/// Which calls a row retries.
#[derive(Clone, Copy, Debug)]
enum Who {
    /// Every call: the application never saw the request.
    Any,
    /// Idempotent methods, and any with `non-idempotent`.
    Idempotent,
    /// As `Idempotent`, and every gRPC call.
    GrpcOrIdempotent,
}

impl Who {
    fn retries(self, call: Call) -> bool {
        matches!(
            (self, call),
            (Who::Any, _) | (_, Call::Idempotent | Call::PostAllowed) | (Who::GrpcOrIdempotent, Call::Grpc)
        )
    }
}

/// What docs/policy.md promises: for each outcome of a try, the conditions
/// that retry it and for which calls. Retriable status codes are [409, 503].
const TABLE: &[(Outcome, &[&str], Who)] = &[
    (Outcome::ConnectFailure, &["connect-failure", "5xx", "gateway-error", "reset"], Who::Any),
    (Outcome::RefusedStream, &["refused-stream", "5xx", "gateway-error", "reset"], Who::Any),
    (Outcome::Reset, &["5xx", "gateway-error", "reset"], Who::Idempotent),
    (Outcome::Timeout, &["5xx", "gateway-error", "reset"], Who::Idempotent),
    (Outcome::Status(500), &["5xx"], Who::Idempotent),
    (Outcome::Status(501), &["5xx"], Who::Idempotent),
    (Outcome::Status(502), &["5xx", "gateway-error"], Who::Idempotent),
    (Outcome::Status(503), &["5xx", "gateway-error", "retriable-status-codes"], Who::Idempotent),
    (Outcome::Status(504), &["5xx", "gateway-error"], Who::Idempotent),
    (Outcome::Status(409), &["retriable-status-codes"], Who::Idempotent),
    (Outcome::Grpc(grpc::CANCELLED), &["cancelled"], Who::GrpcOrIdempotent),
    (Outcome::Grpc(grpc::DEADLINE_EXCEEDED), &["deadline-exceeded"], Who::GrpcOrIdempotent),
    (Outcome::Grpc(grpc::RESOURCE_EXHAUSTED), &["resource-exhausted"], Who::GrpcOrIdempotent),
    (Outcome::Grpc(grpc::INTERNAL), &["internal"], Who::GrpcOrIdempotent),
    (Outcome::Grpc(grpc::UNAVAILABLE), &["unavailable"], Who::GrpcOrIdempotent),
    // NOT_FOUND, PERMISSION_DENIED: the caller's problem, never retried.
    (Outcome::Grpc(5), &[], Who::Any),
    (Outcome::Grpc(7), &[], Who::Any),
    (Outcome::Success, &[], Who::Any),
    (Outcome::Local, &[], Who::Any),
];

fn policy(on: &str, non_idempotent: bool) -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        on: RetryOn::parse(on).unwrap(),
        status_codes: vec![409, 503],
        backoff: ExponentialBackoff::new(Duration::from_millis(25), Duration::from_millis(250)),
        retry_after_max: None,
        non_idempotent,
    }
}

fn decide(on: &str, outcome: Outcome, call: Call) -> bool {
    let p = policy(on, matches!(call, Call::PostAllowed));
    let idempotent = matches!(call, Call::Idempotent);
    retriable(&p, outcome, idempotent, matches!(call, Call::Grpc))
}

#[test]
fn every_condition_for_every_outcome_and_method() {
    let mut checked = 0;
    for (outcome, conditions, who) in TABLE {
        for condition in CONDITIONS {
            for call in CALLS {
                let want = conditions.contains(&condition) && who.retries(call);
                assert_eq!(
                    decide(condition, *outcome, call),
                    want,
                    "{outcome:?} under retryOn [{condition}] for a {call:?} call"
                );
                checked += 1;
            }
        }
        // All conditions at once: the union of the rows.
        for call in CALLS {
            let want = !conditions.is_empty() && who.retries(call);
            assert_eq!(decide(&CONDITIONS.join(","), *outcome, call), want, "{outcome:?} under every condition");
        }
    }
    assert_eq!(checked, TABLE.len() * CONDITIONS.len() * CALLS.len());
}

#[test]
fn every_condition_is_in_the_table() {
    for condition in CONDITIONS {
        assert!(TABLE.iter().any(|(_, c, _)| c.contains(&condition)), "{condition} retries nothing");
    }
}

#[test]
fn methods_that_are_idempotent() {
    for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(is_idempotent(&m.parse().unwrap()), "{m}");
    }
    for m in ["POST", "PATCH", "CONNECT"] {
        assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
    }
}
