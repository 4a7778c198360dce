//! Telemetry: one metrics registry, logs, the access log, traces.

/// One record per request / connection, feeding metrics and the access log.
pub mod access;
/// Logging setup (JSON or text) with a runtime-adjustable level.
pub mod log;
/// The metrics registry and the families of the data path.
pub mod metrics;
/// Spans per request (OpenTelemetry over OTLP/gRPC), W3C and B3 propagation.
pub mod trace;
