//! The tracing settings of a `Telemetry` policy, from the outbound listener's typed metadata
//! (`outrider.v1.Telemetry`), for the tracer to read from the snapshot.
use envoy_types::pb::envoy::config::listener::v3::Listener;
use outrider_xds::resources::{self as names, ext};

use super::build::decode_any;
use crate::telemetry::trace::Pushed;

/// `Ok(None)`: the listener carries no Telemetry (the proxy's own settings apply).
pub(super) fn tracing_from(l: &Listener) -> Result<Option<Pushed>, String> {
    let Some(any) = l.metadata.as_ref().and_then(|m| m.typed_filter_metadata.get(names::TELEMETRY_KEY)) else {
        return Ok(None);
    };
    let t: ext::Telemetry = decode_any(any).map_err(|e| format!("metadata {}: {e}", names::TELEMETRY_KEY))?;
    if let Some(p) = t.sampling_percent
        && !(0.0..=100.0).contains(&p)
    {
        return Err(format!("metadata {}: sampling_percent {p} is not between 0 and 100", names::TELEMETRY_KEY));
    }
    Ok(Some(Pushed { sampling_ratio: t.sampling_percent.map(|p| p / 100.0), errors: t.trace_errors }))
}

/// The `/config_dump` view.
pub(super) fn dump(t: &Option<Pushed>) -> serde_json::Value {
    match t {
        None => serde_json::Value::Null,
        Some(p) => serde_json::json!({
            "sampling_percent": p.sampling_ratio.map(|r| r * 100.0),
            "errors": p.errors,
        }),
    }
}
