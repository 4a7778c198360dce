//! The `outbound_http` route configuration: a virtual host per HTTP service.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
    header_matcher::HeaderMatchSpecifier, route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::{metadata, resilience};
use crate::policy::{self, Service};
use crate::resources::{LB_METADATA, OUTBOUND_ROUTE_CONFIG, cluster_name, string_struct};

/// One route configuration holding the virtual host of every non-tcp service (in service-name
/// order; see [`virtual_host`]).
pub(super) fn outbound_http(virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration { name: OUTBOUND_ROUTE_CONFIG.to_owned(), virtual_hosts, ..Default::default() }
}

/// The virtual host of an HTTP service.
pub(super) fn virtual_host(service: &Service, policy: Option<&policy::TrafficPolicy>) -> VirtualHost {
    let cluster = cluster_name(service.name(), service.spec.port);
    let mut routes: Vec<Route> = match policy.map(|p| p.spec.routes.as_slice()) {
        Some(routes) if !routes.is_empty() => {
            routes.iter().enumerate().map(|(i, route)| policy_route(route, i, &cluster)).collect()
        }
        _ => vec![Route {
            name: "default".to_owned(),
            r#match: Some(prefix("/")),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
                ..Default::default()
            })),
            ..Default::default()
        }],
    };
    if let Some(policy) = policy {
        let spec = &policy.spec;
        for (i, route) in routes.iter_mut().enumerate() {
            resilience::apply_to_route(route, spec, spec.routes.get(i));
        }
    }
    VirtualHost { name: service.name().to_owned(), domains: domains(service), routes, ..Default::default() }
}

/// Host names a caller may use: the service's `hosts` when it has them (Kubernetes discovery
/// lists them exactly), else the name and `name.namespace`, each with and without the port;
/// plus its addresses, with and without the port.
pub(crate) fn domains(service: &Service) -> Vec<String> {
    let name = service.name();
    let port = service.spec.port;
    let mut domains = Vec::new();
    if service.spec.hosts.is_empty() {
        domains.push(name.to_owned());
        domains.push(format!("{name}:{port}"));
    } else {
        domains.extend(service.spec.hosts.iter().cloned());
    }
    for address in &service.spec.addresses {
        match address {
            IpAddr::V4(v4) => {
                domains.push(v4.to_string());
                domains.push(format!("{v4}:{port}"));
            }
            IpAddr::V6(v6) => {
                domains.push(v6.to_string());
                // A Host header carries an IPv6 literal in brackets, with or without a port.
                domains.push(format!("[{v6}]"));
                domains.push(format!("[{v6}]:{port}"));
            }
        }
    }
    if service.spec.hosts.is_empty() {
        let namespaced = format!("{name}.{}", service.metadata.namespace);
        domains.push(namespaced.clone());
        domains.push(format!("{namespaced}:{port}"));
    }
    domains
}

fn policy_route(route: &policy::Route, index: usize, cluster: &str) -> Route {
    let matcher = &route.matcher;
    let mut route_match = match (&matcher.path, &matcher.path_prefix) {
        (Some(path), _) => RouteMatch { path_specifier: Some(PathSpecifier::Path(path.clone())), ..Default::default() },
        (None, Some(path_prefix)) => prefix(path_prefix),
        (None, None) => prefix("/"),
    };
    route_match.headers = matcher
        .headers
        .iter()
        .map(|(name, value)| HeaderMatcher {
            name: name.to_ascii_lowercase(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(value.clone())),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    let cluster_specifier = match route.split.as_slice() {
        [only] if only.subset.is_empty() => ClusterSpecifier::Cluster(cluster.to_owned()),
        split => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: split
                .iter()
                .map(|entry| ClusterWeight {
                    name: cluster.to_owned(),
                    weight: Some(UInt32Value { value: entry.weight }),
                    metadata_match: (!entry.subset.is_empty())
                        .then(|| metadata([(LB_METADATA, string_struct(&entry.subset))])),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    Route {
        name: route.name_or_default(index),
        r#match: Some(route_match),
        action: Some(Action::Route(RouteAction { cluster_specifier: Some(cluster_specifier), ..Default::default() })),
        ..Default::default()
    }
}

fn prefix(prefix: &str) -> RouteMatch {
    RouteMatch { path_specifier: Some(PathSpecifier::Prefix(prefix.to_owned())), ..Default::default() }
}
