//! A `Telemetry` → the outbound listener's typed metadata (`outrider.v1.Telemetry`, what the
//! Outrider proxy reads) and, for Envoy readers, `tracing.random_sampling` on its HTTP
//! connection managers.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::v3::Percent;

use crate::policy::Telemetry;
use crate::resources::{TELEMETRY_KEY, TELEMETRY_TYPE_URL, any, ext};

/// The listener metadata carrying the set's Telemetry; `None` without one.
pub(super) fn listener_metadata(telemetry: Option<&Telemetry>) -> Option<Metadata> {
    let tracing = telemetry?.spec.tracing.as_ref()?;
    let message = ext::Telemetry { sampling_percent: tracing.sampling_percent, trace_errors: tracing.errors };
    Some(Metadata {
        typed_filter_metadata: HashMap::from([(TELEMETRY_KEY.to_owned(), any(TELEMETRY_TYPE_URL, &message))]),
        ..Default::default()
    })
}

/// Envoy's equivalent of `samplingPercent` for an HTTP connection manager.
pub(super) fn hcm_tracing(telemetry: Option<&Telemetry>) -> Option<Tracing> {
    let percent = telemetry?.spec.tracing.as_ref()?.sampling_percent?;
    Some(Tracing {
        random_sampling: Some(Percent { value: percent }),
        overall_sampling: Some(Percent { value: 100.0 }),
        ..Default::default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use prost::Message;

    use crate::resources::{TELEMETRY_KEY, ext};
    use crate::{load_str, translate};

    const SET: &str = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: web}\nspec: {port: 80, \
                       addresses: [10.0.0.1]}\n---\napiVersion: outrider.io/v1\nkind: Telemetry\n\
                       metadata: {name: mesh}\nspec: {tracing: {samplingPercent: 25, errors: false}}\n";

    #[test]
    fn telemetry_travels_in_the_listener_metadata_and_the_hcm_tracing() {
        let res = translate(&load_str("t.yaml", SET).unwrap());
        let listener = &res.listeners[0];
        let any = &listener.metadata.as_ref().unwrap().typed_filter_metadata[TELEMETRY_KEY];
        let t = ext::Telemetry::decode(any.value.as_slice()).unwrap();
        assert_eq!((t.sampling_percent, t.trace_errors), (Some(25.0), Some(false)));
        let Some(ConfigType::TypedConfig(hcm)) = &listener.filter_chains[0].filters[0].config_type else {
            panic!("typed config")
        };
        let hcm = HttpConnectionManager::decode(hcm.value.as_slice()).unwrap();
        assert_eq!(hcm.tracing.unwrap().random_sampling.unwrap().value, 25.0);
    }

    #[test]
    fn no_telemetry_no_metadata() {
        let no = SET.split("---").next().unwrap();
        let a = translate(&load_str("t.yaml", no).unwrap());
        assert!(a.listeners[0].metadata.is_none());
        let b = translate(&load_str("t.yaml", SET).unwrap());
        assert_ne!(a.version, b.version, "adding a Telemetry changes the version");
    }
}
