//! `kind: Telemetry`: mesh-wide tracing settings the proxies apply without a restart (Istio's
//! Telemetry API, reduced to what the proxy's tracer can change at run time). The OTLP
//! endpoint is deliberately not here: it, its headers (API keys) and its CA are per-deployment
//! settings of the proxy (`OTEL_*`), as Istio keeps providers in the mesh config.

use serde::Deserialize;

use super::Metadata;

/// `kind: Telemetry`. At most one per policy set; it applies to every proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct Telemetry {
    pub metadata: Metadata,
    pub spec: TelemetrySpec,
}

/// `spec` of a Telemetry.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TelemetrySpec {
    /// Tracing settings; required (a Telemetry that sets nothing is rejected).
    #[serde(default)]
    pub tracing: Option<TracingSpec>,
}

/// `spec.tracing`. A field left out keeps each proxy's own setting (its `OTEL_*` / flags).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingSpec {
    /// Share of new traces sampled, in percent, 0..=100 (fractions allowed, e.g. 0.5). Callers'
    /// sampling decisions are still followed (parent-based).
    #[serde(default)]
    pub sampling_percent: Option<f64>,
    /// Export the spans of failed requests that sampling left out.
    #[serde(default)]
    pub errors: Option<bool>,
}
