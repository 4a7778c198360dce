//! The `outbound` listener: a filter chain per service with virtual addresses, chosen by
//! original destination, and a passthrough default.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, filter::ConfigType,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy::ClusterSpecifier};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::cluster::socket_address;
use super::{ads, proto_duration, telemetry};
use crate::policy::{Service, Telemetry, TrafficPolicy};
use crate::resources::{
    FAULT_FILTER, HTTP_CONNECTION_MANAGER_FILTER, HTTP_CONNECTION_MANAGER_TYPE_URL, HTTP_FAULT_TYPE_URL,
    OUTBOUND_LISTENER, OUTBOUND_LISTENER_ADDRESS, OUTBOUND_LISTENER_PORT, OUTBOUND_ROUTE_CONFIG, PASSTHROUGH_CLUSTER,
    ROUTER_FILTER, ROUTER_TYPE_URL, TCP_PROXY_FILTER, TCP_PROXY_TYPE_URL, any, cluster_name,
};

/// The outbound listener around `filter_chains` (one per service with virtual addresses, in
/// service-name order; see [`filter_chain`]).
pub(super) fn outbound(filter_chains: Vec<FilterChain>, telemetry: Option<&Telemetry>) -> Listener {
    Listener {
        name: OUTBOUND_LISTENER.to_owned(),
        address: Some(socket_address(OUTBOUND_LISTENER_ADDRESS, OUTBOUND_LISTENER_PORT)),
        filter_chains,
        default_filter_chain: Some(FilterChain {
            name: PASSTHROUGH_CLUSTER.to_owned(),
            filters: vec![tcp_proxy(PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER, None)],
            ..Default::default()
        }),
        metadata: telemetry::listener_metadata(telemetry),
        ..Default::default()
    }
}

/// The outbound filter chain of a service with virtual addresses. `faults`: whether the HTTP
/// connection manager needs the fault filter (any route of the mesh injects faults).
pub(super) fn filter_chain(
    service: &Service,
    policy: Option<&TrafficPolicy>,
    faults: bool,
    telemetry: Option<&Telemetry>,
) -> FilterChain {
    let name = service.name();
    let cluster = cluster_name(name, service.spec.port);
    let prefix_ranges = service
        .spec
        .addresses
        .iter()
        .map(|address| CidrRange {
            address_prefix: address.to_string(),
            prefix_len: Some(UInt32Value { value: if address.is_ipv4() { 32 } else { 128 } }),
        })
        .collect();
    let filter = if service.spec.protocol.is_http() {
        http_connection_manager(name, faults, telemetry)
    } else {
        let idle = policy.and_then(|policy| policy.spec.idle_timeout);
        tcp_proxy(name, &cluster, idle)
    };
    FilterChain {
        name: name.to_owned(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: u32::from(service.spec.port) }),
            prefix_ranges,
            ..Default::default()
        }),
        filters: vec![filter],
        ..Default::default()
    }
}

/// `idle_timeout`: the policy's `idleTimeout` (unset: Envoy's and Outrider's 1 h default).
pub(super) fn tcp_proxy(stat_prefix: &str, cluster: &str, idle_timeout: Option<Duration>) -> Filter {
    let config = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_owned())),
        idle_timeout: idle_timeout.map(proto_duration),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY_FILTER.to_owned(),
        config_type: Some(ConfigType::TypedConfig(any(TCP_PROXY_TYPE_URL, &config))),
    }
}

/// With `faults`, the fault filter (empty config; routes carry their own) goes before the
/// router.
fn http_connection_manager(stat_prefix: &str, faults: bool, telemetry: Option<&Telemetry>) -> Filter {
    let mut http_filters = Vec::new();
    if faults {
        http_filters.push(HttpFilter {
            name: FAULT_FILTER.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(HTTP_FAULT_TYPE_URL, &HttpFault::default()))),
            ..Default::default()
        });
    }
    http_filters.push(HttpFilter {
        name: ROUTER_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(ROUTER_TYPE_URL, &Router::default()))),
        ..Default::default()
    });
    let config = HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: OUTBOUND_ROUTE_CONFIG.to_owned(),
        })),
        http_filters,
        tracing: telemetry::hcm_tracing(telemetry),
        ..Default::default()
    };
    Filter {
        name: HTTP_CONNECTION_MANAGER_FILTER.to_owned(),
        config_type: Some(ConfigType::TypedConfig(any(HTTP_CONNECTION_MANAGER_TYPE_URL, &config))),
    }
}
