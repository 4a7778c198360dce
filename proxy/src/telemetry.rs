//! Telemetry: one metrics registry, logs, the access log, traces.

/// One record per request / connection, feeding metrics and the access log.
pub mod access;
/// Counters the config tells in advance, exported at 0 before their first event.
pub mod known;
/// Logging setup (JSON or text) with a runtime-adjustable level.
pub mod log;
/// The metrics registry and the families of the data path.
pub mod metrics;
/// Lines on stdout (JSON logs): access-log lines batched, others at once, in order.
pub mod stdout;
/// Spans per request (OpenTelemetry over OTLP/gRPC), W3C and B3 propagation.
pub mod trace;
