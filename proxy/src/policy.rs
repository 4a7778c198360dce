//! Resilience policies as tower layers and the state behind them: timeouts,
//! retries (with backoff and budgets), circuit breakers (thresholds and the
//! state machine), outlier detection and fault injection. State that must
//! survive a config change is keyed by cluster / endpoint and carried over.

/// Circuit breaking: Envoy-style thresholds per cluster and the Resilience4j-style state
/// machine per endpoint (or per service).
pub mod breaker;
/// The Linkerd-style retry budget: a ratio of retries to requests over a window.
pub mod budget;
/// Saturating time for policy state kept in atomics.
pub mod clock;
/// The policy of a route and of a cluster, as read from the snapshot.
pub mod config;
/// Fault injection: delays and aborts by percentage.
pub mod fault;
/// Fault, timeout and circuit-breaker stages.
pub mod layers;
/// Classifying an attempt's outcome (success, 5xx, gateway error, ...).
pub mod outcome;
/// Per-endpoint outlier detection and ejection.
pub mod outlier;
/// Replayable request bodies (buffered up to a cap) for retries.
pub mod replay;
/// Retries: conditions, replayable bodies, backoff, budget, attempts.
pub mod retry;
