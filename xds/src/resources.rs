//! Names, type URLs and small helpers shared by the translation and its consumers.
//!
//! # Resilience fields, as the translation writes them
//!
//! Routes (every route of the service's virtual host in `outbound_http`):
//! - `RouteAction.timeout`: the policy's `timeout`. **Unset means no overall timeout** (the
//!   Outrider proxy's reading); the translation never writes a zero duration. Envoy itself
//!   would apply its 15 s default to an unset timeout; Outrider deliberately does not, as it
//!   kills long streams.
//! - `RouteAction.idle_timeout`: `idleTimeout`; unset means the 1 h default.
//! - `RouteAction.retry_policy`: only when the policy has `retries`; `retry_on` never holds
//!   `non-idempotent`, which is `Route.metadata.filter_metadata["outrider"]`
//!   [`RETRY_NON_IDEMPOTENT_FIELD`] instead.
//! - `Route.typed_per_filter_config[`[`FAULT_FILTER`]`]`: an `HTTPFault`, only when the route
//!   has faults (its own, else the policy's); the fault filter then sits before the router
//!   in every HTTP connection manager.
//!
//! Clusters `outbound|PORT||SERVICE`:
//! - `circuit_breakers.thresholds`: always one `DEFAULT`-priority entry (1024/1024/1024/3
//!   without a `circuitBreaker`).
//! - `outlier_detection`: only with `outlierDetection`.
//! - `typed_extension_protocol_options[`[`RESILIENCE_KEY`]`]`: a [`Resilience`], when the
//!   policy has a breaker state machine (with its scope and fallback), retries or an
//!   `idleTimeout`.
//! - the HTTP protocol options' `common_http_protocol_options.idle_timeout` = `idleTimeout`.
//! - `load_balancing_policy` (gRFC A52): an ordered list, each client using the first it
//!   supports: `p2c-ewma` → least_request (choice_count 2), round_robin; `round-robin` →
//!   round_robin; `random` → random, round_robin. gRPC proxyless clients know round_robin but
//!   not least_request or random, so every list ends with it. The legacy `lb_policy` is left at
//!   `ROUND_ROBIN`, the one value every xDS client accepts; clients that read
//!   `load_balancing_policy` ignore it.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};

/// `outrider.v1.Resilience`, Outrider's typed cluster extension.
pub mod ext;

pub use ext::{BreakerScope, BreakerStateMachine, Fallback, Resilience, RetryBudget};

/// Name of the outbound listener.
pub const OUTBOUND_LISTENER: &str = "outbound";
/// Address of the outbound listener.
pub const OUTBOUND_LISTENER_ADDRESS: &str = "127.0.0.1";
/// Port of the outbound listener.
pub const OUTBOUND_LISTENER_PORT: u16 = 15001;
/// Prefix of the inbound listener of a service: `inbound|NAME`, served only to its sidecars.
pub const INBOUND_LISTENER_PREFIX: &str = "inbound|";
/// Address of the inbound listener.
pub const INBOUND_LISTENER_ADDRESS: &str = "0.0.0.0";
/// Port of the inbound listener.
pub const INBOUND_LISTENER_PORT: u16 = 15006;
/// Cluster an inbound listener delivers to: the local application.
pub const INBOUND_CLUSTER: &str = "InboundPassthroughCluster";
/// Filter chain of an inbound listener for mutual TLS from another proxy.
pub const INBOUND_MTLS_CHAIN: &str = "mtls";
/// Filter chain of an inbound listener for plaintext (present only in permissive mode).
pub const INBOUND_PLAINTEXT_CHAIN: &str = "plaintext";
/// `FilterChainMatch.transport_protocol` of the mutual-TLS chain.
pub const TRANSPORT_TLS: &str = "tls";
/// `FilterChainMatch.transport_protocol` of the plaintext chain.
pub const TRANSPORT_RAW: &str = "raw_buffer";
/// `Endpoint` metadata field (under [`OUTRIDER_METADATA`]): the endpoint's SPIFFE ID.
pub const IDENTITY_FIELD: &str = "identity";
/// `Endpoint` metadata field (under [`OUTRIDER_METADATA`]): bool, reached over HBONE.
pub const HBONE_FIELD: &str = "hbone";

/// ALPN id between proxies: HTTP (any version from the app) multiplexed over one HTTP/2
/// connection; the original version travels in [`ORIG_PROTO_HEADER`].
pub const ALPN_MESH_H2: &str = "outrider/1";
/// ALPN id between proxies: one HTTP/1.1 connection (upgrades such as WebSocket).
pub const ALPN_MESH_HTTP1: &str = "outrider-http1/1";
/// ALPN id between proxies: opaque TCP.
pub const ALPN_MESH_TCP: &str = "outrider-tcp/1";
/// All of them, as the inbound listener's mTLS chain matches them.
pub const ALPN_MESH: [&str; 3] = [ALPN_MESH_H2, ALPN_MESH_HTTP1, ALPN_MESH_TCP];
/// Request header carrying the app's HTTP version across the proxy-to-proxy HTTP/2 hop
/// (`HTTP/1.1`); absent when the app spoke HTTP/2.
pub const ORIG_PROTO_HEADER: &str = "x-outrider-orig-proto";

/// Network filter name of RBAC (TCP services).
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// HTTP filter name of RBAC (HTTP services).
pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// Type URL of `envoy.extensions.filters.network.rbac.v3.RBAC`.
pub const NETWORK_RBAC_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
/// Type URL of `envoy.extensions.filters.http.rbac.v3.RBAC`.
pub const HTTP_RBAC_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// Transport socket name of TLS.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
/// Type URL of `envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext`.
pub const DOWNSTREAM_TLS_CONTEXT_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// Name of the inbound listener of `service`.
pub fn inbound_listener_name(service: &str) -> String {
    format!("{INBOUND_LISTENER_PREFIX}{service}")
}

/// Name of the route configuration holding every HTTP service.
pub const OUTBOUND_ROUTE_CONFIG: &str = "outbound_http";
/// Cluster for connections to destinations no service claims.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Filter-metadata namespace for Outrider's own metadata.
pub const OUTRIDER_METADATA: &str = "outrider";
/// Filter-metadata namespace Envoy uses for subset load balancing.
pub const LB_METADATA: &str = "envoy.lb";

/// Network filter name of the HTTP connection manager.
pub const HTTP_CONNECTION_MANAGER_FILTER: &str = "envoy.filters.network.http_connection_manager";
/// Network filter name of the TCP proxy.
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// HTTP filter name of the router.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// Key of `Cluster.typed_extension_protocol_options` holding the upstream HTTP options.
pub const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// HTTP filter name of the fault filter (also the `Route.typed_per_filter_config` key).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// Retry host predicate that avoids endpoints already tried.
pub const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.retry_host_predicates.previous_hosts";
/// Key of `Cluster.typed_extension_protocol_options` holding [`Resilience`].
pub const RESILIENCE_KEY: &str = "outrider.resilience";
/// `Route.metadata.filter_metadata["outrider"]` field: bool, whether retries may replay
/// non-idempotent methods (`retryOn: [..., non-idempotent]`). Present when retries are set.
pub const RETRY_NON_IDEMPOTENT_FIELD: &str = "retryNonIdempotent";

/// Key of the outbound listener's `metadata.typed_filter_metadata` holding an
/// [`ext::Telemetry`] (present when the policy set has a `Telemetry`).
pub const TELEMETRY_KEY: &str = "outrider.telemetry";
/// Type URL of [`ext::Telemetry`].
pub const TELEMETRY_TYPE_URL: &str = "type.googleapis.com/outrider.v1.Telemetry";

/// Type URL of [`Resilience`].
pub const RESILIENCE_TYPE_URL: &str = "type.googleapis.com/outrider.v1.Resilience";
/// Type URL of `envoy.extensions.filters.http.fault.v3.HTTPFault`.
pub const HTTP_FAULT_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
/// Type URL of the previous-hosts retry predicate's (empty) config.
pub const PREVIOUS_HOSTS_PREDICATE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// Type URL of `envoy.config.listener.v3.Listener`.
pub const LISTENER_TYPE_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of `envoy.config.route.v3.RouteConfiguration`.
pub const ROUTE_CONFIGURATION_TYPE_URL: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of `envoy.config.cluster.v3.Cluster`.
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of `envoy.config.endpoint.v3.ClusterLoadAssignment`.
pub const CLUSTER_LOAD_ASSIGNMENT_TYPE_URL: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of the HTTP connection manager's config.
pub const HTTP_CONNECTION_MANAGER_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// Type URL of the TCP proxy's config.
pub const TCP_PROXY_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// Type URL of the router's config.
pub const ROUTER_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
/// Type URL of the upstream HTTP protocol options.
pub const HTTP_PROTOCOL_OPTIONS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Type URL of `envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest`.
pub const LEAST_REQUEST_POLICY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
/// Type URL of `envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin`.
pub const ROUND_ROBIN_POLICY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin";
/// Type URL of `envoy.extensions.load_balancing_policies.random.v3.Random`.
pub const RANDOM_POLICY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random";
/// Type URL of `envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality` (a
/// wrapper around an endpoint-picking policy; read, never written).
pub const WRR_LOCALITY_POLICY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality";

/// Istio-style cluster name of a service port: `outbound|{port}||{service}`.
pub fn cluster_name(service: &str, port: u16) -> String {
    format!("outbound|{port}||{service}")
}

/// The (service, port) of a name made by [`cluster_name`], if it is one.
pub fn parse_cluster_name(name: &str) -> Option<(&str, u16)> {
    let rest = name.strip_prefix("outbound|")?;
    let (port, service) = rest.split_once("||")?;
    Some((service, port.parse().ok()?))
}

/// Packs a message into an `Any` with the given type URL.
pub fn any<M: prost::Message>(type_url: &str, message: &M) -> Any {
    Any { type_url: type_url.to_owned(), value: message.encode_to_vec() }
}

/// Why an `Any` could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum AnyError {
    #[error("expected a {expected} but got a {got}")]
    WrongType { expected: String, got: String },
    #[error("cannot decode {type_url}: {source}")]
    Decode { type_url: String, source: prost::DecodeError },
}

/// Unpacks an `Any`, checking its type URL first.
pub fn decode_any<M: prost::Message + Default>(type_url: &str, any: &Any) -> Result<M, AnyError> {
    if any.type_url != type_url {
        return Err(AnyError::WrongType { expected: type_url.to_owned(), got: any.type_url.clone() });
    }
    M::decode(any.value.as_slice()).map_err(|source| AnyError::Decode { type_url: type_url.to_owned(), source })
}

/// A protobuf string value.
pub fn string_value(text: &str) -> Value {
    Value { kind: Some(Kind::StringValue(text.to_owned())) }
}

/// A protobuf number value.
pub fn number_value(number: f64) -> Value {
    Value { kind: Some(Kind::NumberValue(number)) }
}

/// A protobuf bool value.
pub fn bool_value(flag: bool) -> Value {
    Value { kind: Some(Kind::BoolValue(flag)) }
}

/// A `Struct` from (key, value) pairs.
pub fn struct_of<K: Into<String>>(fields: impl IntoIterator<Item = (K, Value)>) -> Struct {
    Struct { fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect() }
}

/// A `Struct` of string values, e.g. endpoint labels.
pub fn string_struct(labels: &BTreeMap<String, String>) -> Struct {
    struct_of(labels.iter().map(|(k, v)| (k.clone(), string_value(v))))
}

/// The string fields of a `Struct` (other kinds are skipped), sorted.
pub fn struct_strings(fields: &Struct) -> BTreeMap<String, String> {
    fields
        .fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    };
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    use envoy_types::pb::envoy::extensions::filters::{
        http::router::v3::Router,
        network::{http_connection_manager::v3::HttpConnectionManager, tcp_proxy::v3::TcpProxy},
    };
    use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use prost::Name;

    #[test]
    fn type_urls_match_the_generated_types() {
        assert_eq!(LISTENER_TYPE_URL, Listener::type_url());
        assert_eq!(ROUTE_CONFIGURATION_TYPE_URL, RouteConfiguration::type_url());
        assert_eq!(CLUSTER_TYPE_URL, Cluster::type_url());
        assert_eq!(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, ClusterLoadAssignment::type_url());
        assert_eq!(HTTP_CONNECTION_MANAGER_TYPE_URL, HttpConnectionManager::type_url());
        assert_eq!(TCP_PROXY_TYPE_URL, TcpProxy::type_url());
        assert_eq!(ROUTER_TYPE_URL, Router::type_url());
        assert_eq!(HTTP_PROTOCOL_OPTIONS_TYPE_URL, HttpProtocolOptions::type_url());
        assert_eq!(format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS_KEY}"), HTTP_PROTOCOL_OPTIONS_TYPE_URL);
        assert_eq!(HTTP_FAULT_TYPE_URL, HttpFault::type_url());
        assert_eq!(PREVIOUS_HOSTS_PREDICATE_TYPE_URL, PreviousHostsPredicate::type_url());
        assert_eq!(RESILIENCE_TYPE_URL, Resilience::type_url());
        use envoy_types::pb::envoy::extensions::load_balancing_policies as lb;
        assert_eq!(LEAST_REQUEST_POLICY_TYPE_URL, lb::least_request::v3::LeastRequest::type_url());
        assert_eq!(ROUND_ROBIN_POLICY_TYPE_URL, lb::round_robin::v3::RoundRobin::type_url());
        assert_eq!(RANDOM_POLICY_TYPE_URL, lb::random::v3::Random::type_url());
        assert_eq!(WRR_LOCALITY_POLICY_TYPE_URL, lb::wrr_locality::v3::WrrLocality::type_url());
        assert_eq!(Resilience::full_name(), "outrider.v1.Resilience");
    }

    #[test]
    fn cluster_names_round_trip() {
        let name = cluster_name("reviews", 9080);
        assert_eq!(name, "outbound|9080||reviews");
        assert_eq!(parse_cluster_name(&name), Some(("reviews", 9080)));
        assert_eq!(parse_cluster_name(PASSTHROUGH_CLUSTER), None);
    }

    #[test]
    fn any_checks_the_type_url() {
        let proxy = TcpProxy { stat_prefix: "x".into(), ..Default::default() };
        let packed = any(TCP_PROXY_TYPE_URL, &proxy);
        let back: TcpProxy = decode_any(TCP_PROXY_TYPE_URL, &packed).unwrap();
        assert_eq!(back, proxy);
        let err = decode_any::<Router>(ROUTER_TYPE_URL, &packed).unwrap_err();
        assert!(matches!(err, AnyError::WrongType { .. }), "{err}");
    }
}
