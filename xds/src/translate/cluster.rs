//! Clusters (one per service, plus the passthrough) and their load assignments.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, LoadBalancingPolicy,
    cluster::{
        ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy, LbSubsetConfig,
        lb_subset_config::LbSubsetSelector,
    },
    load_balancing_policy::Policy,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions, SocketAddress,
    TypedExtensionConfig, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::{
    least_request::v3::LeastRequest, random::v3::Random, round_robin::v3::RoundRobin,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig},
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::{ads, metadata, proto_duration, resilience};
use crate::policy::{LoadBalancer, Protocol, Service, TrafficPolicy, defaults};
use crate::resources::{
    HTTP_PROTOCOL_OPTIONS_KEY, HTTP_PROTOCOL_OPTIONS_TYPE_URL, IDENTITY_FIELD, LB_METADATA,
    LEAST_REQUEST_POLICY_TYPE_URL, OUTRIDER_METADATA, PASSTHROUGH_CLUSTER, RANDOM_POLICY_TYPE_URL, RESILIENCE_KEY,
    RESILIENCE_TYPE_URL, ROUND_ROBIN_POLICY_TYPE_URL, any, bool_value, cluster_name, number_value, string_struct,
    string_value, struct_of,
};

/// `PassthroughCluster`: connects to the original destination.
pub(super) fn passthrough() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(proto_duration(defaults::CONNECT_TIMEOUT)),
        ..Default::default()
    }
}

/// The EDS cluster of a service (`fallback`: see [`resilience::extension`]).
pub(super) fn service_cluster(
    service: &Service,
    policy: Option<&TrafficPolicy>,
    fallback: Option<(&str, u16)>,
) -> Cluster {
    let spec = &service.spec;
    let connect_timeout = policy.map_or(defaults::CONNECT_TIMEOUT, |p| p.spec.connect_timeout);
    let balancer = policy.map_or(LoadBalancer::default(), |p| p.spec.load_balancer);
    let protocol_config = match spec.protocol {
        Protocol::Http => Some(ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())),
        Protocol::Http2 | Protocol::Grpc => Some(ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())),
        Protocol::Tcp => None,
    };
    let idle_timeout = policy.and_then(|p| p.spec.idle_timeout);
    let mut typed_extension_protocol_options = protocol_config
        .map(|config| {
            let options = HttpProtocolOptions {
                common_http_protocol_options: idle_timeout
                    .map(|idle| CommonHttpOptions { idle_timeout: Some(proto_duration(idle)), ..Default::default() }),
                upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                    protocol_config: Some(config),
                })),
                ..Default::default()
            };
            (HTTP_PROTOCOL_OPTIONS_KEY.to_owned(), any(HTTP_PROTOCOL_OPTIONS_TYPE_URL, &options))
        })
        .into_iter()
        .collect::<HashMap<_, _>>();
    if let Some(extension) = resilience::extension(service, policy, fallback) {
        typed_extension_protocol_options.insert(RESILIENCE_KEY.to_owned(), any(RESILIENCE_TYPE_URL, &extension));
    }
    let policy_spec = policy.map(|p| &p.spec);
    let circuit_breakers = resilience::circuit_breakers(policy_spec.and_then(|p| p.circuit_breaker.as_ref()));
    let outlier_detection = policy_spec.and_then(|p| p.outlier_detection.as_ref()).map(resilience::outlier_detection);
    let outrider = struct_of([
        ("service", string_value(service.name())),
        ("protocol", string_value(spec.protocol.as_str())),
        ("port", number_value(f64::from(spec.port))),
    ]);
    Cluster {
        name: cluster_name(service.name(), spec.port),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() }),
        connect_timeout: Some(proto_duration(connect_timeout)),
        // The legacy field every client accepts; `load_balancing_policy` overrides it.
        lb_policy: LbPolicy::RoundRobin as i32,
        load_balancing_policy: Some(load_balancing_policy(balancer)),
        typed_extension_protocol_options,
        metadata: Some(metadata([(OUTRIDER_METADATA, outrider)])),
        lb_subset_config: subset_config(policy),
        circuit_breakers: Some(circuit_breakers),
        outlier_detection,
        ..Default::default()
    }
}

/// The balancer as an ordered list of typed policies (gRFC A52): each client uses the first it
/// supports. Every list ends with round_robin, which every gRPC proxyless client knows (none of
/// them knows random; grpc-js-xds and grpcio do not know least_request).
pub(crate) fn load_balancing_policy(balancer: LoadBalancer) -> LoadBalancingPolicy {
    let least_request = || {
        let config = LeastRequest { choice_count: Some(UInt32Value { value: 2 }), ..Default::default() };
        policy("envoy.load_balancing_policies.least_request", any(LEAST_REQUEST_POLICY_TYPE_URL, &config))
    };
    let round_robin = || {
        policy("envoy.load_balancing_policies.round_robin", any(ROUND_ROBIN_POLICY_TYPE_URL, &RoundRobin::default()))
    };
    let random = || policy("envoy.load_balancing_policies.random", any(RANDOM_POLICY_TYPE_URL, &Random::default()));
    let policies = match balancer {
        LoadBalancer::P2cEwma => vec![least_request(), round_robin()],
        LoadBalancer::RoundRobin => vec![round_robin()],
        LoadBalancer::Random => vec![random(), round_robin()],
    };
    LoadBalancingPolicy { policies }
}

fn policy(name: &str, typed_config: envoy_types::pb::google::protobuf::Any) -> Policy {
    Policy {
        typed_extension_config: Some(TypedExtensionConfig { name: name.to_owned(), typed_config: Some(typed_config) }),
    }
}

/// One selector per distinct set of label keys the policy's splits select on.
fn subset_config(policy: Option<&TrafficPolicy>) -> Option<LbSubsetConfig> {
    let key_sets: BTreeSet<Vec<String>> = policy?
        .spec
        .routes
        .iter()
        .flat_map(|route| &route.split)
        .filter(|entry| !entry.subset.is_empty())
        .map(|entry| entry.subset.keys().cloned().collect())
        .collect();
    if key_sets.is_empty() {
        return None;
    }
    Some(LbSubsetConfig {
        subset_selectors: key_sets.into_iter().map(|keys| LbSubsetSelector { keys, ..Default::default() }).collect(),
        ..Default::default()
    })
}

/// `meshed` and, for meshed endpoints, the SPIFFE ID callers must verify.
fn endpoint_metadata(endpoint: &crate::policy::Endpoint) -> envoy_types::pb::google::protobuf::Struct {
    let mut fields = vec![("meshed", bool_value(endpoint.meshed))];
    if let Some(id) = endpoint.identity.as_deref().filter(|_| endpoint.meshed) {
        fields.push((IDENTITY_FIELD, crate::resources::string_value(id)));
        if endpoint.hbone {
            fields.push((crate::resources::HBONE_FIELD, bool_value(true)));
        }
    }
    struct_of(fields)
}

/// The static endpoints of a service, in one locality.
pub(super) fn load_assignment(service: &Service) -> ClusterLoadAssignment {
    let lb_endpoints = service
        .spec
        .endpoints
        .iter()
        .map(|endpoint| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(&endpoint.address.ip().to_string(), endpoint.address.port())),
                ..Default::default()
            })),
            load_balancing_weight: Some(UInt32Value { value: endpoint.weight }),
            // No empty `envoy.lb`: prost writes a map entry whose value is the default (an
            // empty Struct) without its value, which grpc-js-xds fails to decode.
            metadata: Some(metadata(
                (!endpoint.labels.is_empty())
                    .then(|| (LB_METADATA, string_struct(&endpoint.labels)))
                    .into_iter()
                    .chain([(OUTRIDER_METADATA, endpoint_metadata(endpoint))]),
            )),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name(service.name(), service.spec.port),
        endpoints: vec![LocalityLbEndpoints { lb_endpoints, ..Default::default() }],
        ..Default::default()
    }
}

/// A TCP socket address.
pub(super) fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}
