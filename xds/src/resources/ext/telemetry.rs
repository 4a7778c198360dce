//! `outrider.v1.Telemetry`: the tracing settings of a `Telemetry` policy, in the outbound
//! listener's `metadata.typed_filter_metadata["outrider.telemetry"]` (Envoy ignores metadata
//! namespaces it does not know). Schema: `xds/proto/outrider/v1/telemetry.proto`; keep the tags
//! in step.

/// Mesh-wide tracing settings; an absent field keeps the proxy's own setting.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Telemetry {
    /// Percent of new traces sampled, 0..=100 (parent-based: callers' decisions are followed).
    #[prost(double, optional, tag = "1")]
    pub sampling_percent: Option<f64>,
    /// Export spans of failed requests that sampling left out.
    #[prost(bool, optional, tag = "2")]
    pub trace_errors: Option<bool>,
}

impl prost::Name for Telemetry {
    const NAME: &'static str = "Telemetry";
    const PACKAGE: &'static str = "outrider.v1";
    fn full_name() -> String {
        "outrider.v1.Telemetry".into()
    }
    fn type_url() -> String {
        "type.googleapis.com/outrider.v1.Telemetry".into()
    }
}
