//! What gRPC proxyless clients (`xds:///NAME`) need on top of the translation, served only to
//! clients that ask for it by name (sidecars subscribe by wildcard and never see it):
//!
//! - an API listener per HTTP service, named `NAME` and `NAME:PORT` (the names gRPC asks for),
//!   with the service's virtual host inline;
//! - a cluster per subset a split selects, `outbound|PORT|k=v,…|NAME`, with the endpoints of
//!   that subset: gRPC has no subset balancing and ignores a weighted cluster's
//!   `metadata_match`, so inside the API listener's routes each subset entry names its own
//!   cluster (Outrider sidecars and Envoy keep the one cluster with `metadata_match`);
//! - a weight and a locality on every locality of a load assignment (gRPC ignores localities
//!   without a weight).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost, route, route_action};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use outrider_xds::PolicySet;
use outrider_xds::resources::{
    HTTP_CONNECTION_MANAGER_TYPE_URL, LB_METADATA, ROUTER_FILTER, ROUTER_TYPE_URL, any, parse_cluster_name,
    struct_strings,
};

/// A subset of a service's cluster: the parent cluster's name and the labels it selects.
type SubsetKey = (String, BTreeMap<String, String>);

/// The resources added for proxyless clients.
#[derive(Debug, Default)]
pub(super) struct Proxyless {
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
}

/// The name of the cluster of one subset: `outbound|PORT|k=v,k2=v2|NAME`.
pub(super) fn subset_cluster_name(parent: &str, labels: &BTreeMap<String, String>) -> String {
    let subset: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    match parse_cluster_name(parent) {
        Some((service, port)) => format!("outbound|{port}|{}|{service}", subset.join(",")),
        None => format!("{parent}|{}", subset.join(",")),
    }
}

/// API listeners for every HTTP service, plus the subset clusters (and their endpoints) their
/// routes use. `clusters` and `endpoints` are the translation's (with gRPC-friendly localities).
pub(super) fn resources(
    set: &PolicySet,
    routes: &[RouteConfiguration],
    clusters: &[Cluster],
    endpoints: &[ClusterLoadAssignment],
) -> Proxyless {
    let mut out = Proxyless::default();
    let mut subsets = BTreeSet::new();
    // Indexed once: looking each service up by scanning every virtual host was quadratic
    // (5,000 services took about a second of CPU per snapshot). The first match wins, as a
    // scan in order would find it.
    let mut vhosts: HashMap<&str, &VirtualHost> = HashMap::new();
    for vh in routes.iter().flat_map(|r| r.virtual_hosts.iter()) {
        for domain in &vh.domains {
            vhosts.entry(domain.as_str()).or_insert(vh);
        }
    }
    for service in set.services.values() {
        if !service.spec.protocol.is_http() {
            continue;
        }
        let name = service.name();
        let Some(vhost) = vhosts.get(name).copied() else {
            continue;
        };
        let vhost = with_subset_clusters(vhost.clone(), &mut subsets);
        let hcm = HttpConnectionManager {
            stat_prefix: name.to_owned(),
            route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
                name: format!("grpc|{name}"),
                virtual_hosts: vec![vhost],
                ..Default::default()
            })),
            http_filters: vec![HttpFilter {
                name: ROUTER_FILTER.to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(ROUTER_TYPE_URL, &Router::default()))),
                ..Default::default()
            }],
            ..Default::default()
        };
        let api = ApiListener { api_listener: Some(any(HTTP_CONNECTION_MANAGER_TYPE_URL, &hcm)) };
        for listener_name in [name.to_owned(), format!("{name}:{}", service.spec.port)] {
            out.listeners.push(Listener { name: listener_name, api_listener: Some(api.clone()), ..Default::default() });
        }
    }
    let mut clusters_by_name: HashMap<&str, &Cluster> = HashMap::new();
    for c in clusters {
        clusters_by_name.entry(c.name.as_str()).or_insert(c);
    }
    let mut endpoints_by_cluster: HashMap<&str, &ClusterLoadAssignment> = HashMap::new();
    for e in endpoints {
        endpoints_by_cluster.entry(e.cluster_name.as_str()).or_insert(e);
    }
    for (parent, labels) in subsets {
        let name = subset_cluster_name(&parent, &labels);
        if let Some(cluster) = clusters_by_name.get(parent.as_str()) {
            out.clusters.push(Cluster { name: name.clone(), lb_subset_config: None, ..(*cluster).clone() });
        }
        if let Some(cla) = endpoints_by_cluster.get(parent.as_str()).copied() {
            out.endpoints.push(subset_endpoints(cla, &name, &labels));
        }
    }
    out
}

/// Rewrites every weighted-cluster entry that selects a subset to name the subset's own
/// cluster (collected in `subsets`, weight 0 or not), and drops entries of weight 0 from the
/// routes.
fn with_subset_clusters(mut vhost: VirtualHost, subsets: &mut BTreeSet<SubsetKey>) -> VirtualHost {
    for r in &mut vhost.routes {
        let Some(route::Action::Route(action)) = &mut r.action else { continue };
        let Some(route_action::ClusterSpecifier::WeightedClusters(weighted)) = &mut action.cluster_specifier else {
            continue;
        };
        for entry in &mut weighted.clusters {
            let labels = entry
                .metadata_match
                .as_ref()
                .and_then(|m| m.filter_metadata.get(LB_METADATA))
                .map(struct_strings)
                .unwrap_or_default();
            if labels.is_empty() {
                continue;
            }
            let name = subset_cluster_name(&entry.name, &labels);
            subsets.insert((std::mem::replace(&mut entry.name, name), labels));
        }
        // Entries of weight 0 get no traffic; their clusters stay (above), so that a call
        // still routed by the previous config (100/0 → 0/100) finds the cluster it picked.
        weighted.clusters.retain(|c| c.weight.is_none_or(|w| w.value > 0));
    }
    vhost
}

/// The endpoints of `cla` whose `envoy.lb` labels include every one of `labels`.
fn subset_endpoints(
    cla: &ClusterLoadAssignment,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> ClusterLoadAssignment {
    let mut out = ClusterLoadAssignment { cluster_name: name.to_owned(), ..cla.clone() };
    for locality in &mut out.endpoints {
        locality.lb_endpoints.retain(|e| {
            let have = e
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(LB_METADATA))
                .map(struct_strings)
                .unwrap_or_default();
            labels.iter().all(|(k, v)| have.get(k) == Some(v))
        });
    }
    out
}

/// gRPC ignores localities without a weight; give each one (Envoy ignores it unless
/// locality-weighted balancing is on).
pub(super) fn grpc_friendly_localities(cla: &mut ClusterLoadAssignment) {
    for locality in &mut cla.endpoints {
        if locality.load_balancing_weight.is_none() {
            locality.load_balancing_weight = Some(UInt32Value { value: 1 });
        }
        if locality.locality.is_none() {
            locality.locality = Some(Locality::default());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;

    use super::*;

    const SET: &str = "apiVersion: outrider.io/v1
kind: Service
metadata: {name: echo}
spec:
  protocol: grpc
  port: 50051
  endpoints:
    - {address: \"127.0.0.1:1\", labels: {version: v1}}
    - {address: \"127.0.0.1:2\", labels: {version: v2}}
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {name: echo}
spec:
  service: echo
  routes:
    - split: [{subset: {version: v1}, weight: 100}, {subset: {version: v2}, weight: 0}]
";

    fn addresses(cla: &ClusterLoadAssignment) -> Vec<u32> {
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| match &e.host_identifier {
                Some(HostIdentifier::Endpoint(ep)) => match &ep.address.as_ref()?.address {
                    Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                        match s.port_specifier {
                            Some(
                                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p),
                            ) => Some(p),
                            _ => None,
                        }
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn subsets_get_clusters_of_their_own_in_the_api_listeners_only() {
        let set = outrider_xds::load_str("t.yaml", SET).unwrap();
        let mut translated = outrider_xds::translate(&set);
        for cla in &mut translated.endpoints {
            grpc_friendly_localities(cla);
        }
        let out = resources(&set, &translated.routes, &translated.clusters, &translated.endpoints);

        // The weight-0 entry is gone; the v1 entry names v1's cluster.
        let l = out.listeners.iter().find(|l| l.name == "echo").unwrap();
        let hcm: HttpConnectionManager = outrider_xds::resources::decode_any(
            HTTP_CONNECTION_MANAGER_TYPE_URL,
            l.api_listener.as_ref().unwrap().api_listener.as_ref().unwrap(),
        )
        .unwrap();
        let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else { panic!("inline routes") };
        let Some(route::Action::Route(action)) = &rc.virtual_hosts[0].routes[0].action else { panic!("a route") };
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &action.cluster_specifier else {
            panic!("weighted")
        };
        let names: Vec<&str> = w.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["outbound|50051|version=v1|echo"]);

        // Every subset a split names gets a cluster (v2 too: a call routed by the previous
        // config may still pick it), with only its endpoints.
        let cluster_names: Vec<&str> = out.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cluster_names, ["outbound|50051|version=v1|echo", "outbound|50051|version=v2|echo"]);
        assert!(out.clusters[0].lb_subset_config.is_none());
        assert_eq!(out.clusters[0].load_balancing_policy, translated.clusters[1].load_balancing_policy);
        let cla_names: Vec<&str> = out.endpoints.iter().map(|e| e.cluster_name.as_str()).collect();
        assert_eq!(cla_names, cluster_names);
        assert_eq!(addresses(&out.endpoints[0]), [1]);
        assert_eq!(addresses(&out.endpoints[1]), [2]);
        assert_eq!(out.endpoints[0].endpoints[0].load_balancing_weight, Some(UInt32Value { value: 1 }));

        // The sidecars' route configuration is untouched: one cluster, metadata_match.
        let Some(route::Action::Route(action)) = &translated.routes[0].virtual_hosts[0].routes[0].action else {
            panic!("a route")
        };
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &action.cluster_specifier else {
            panic!("weighted")
        };
        assert!(w.clusters.iter().all(|c| c.name == "outbound|50051||echo"));
        assert_eq!(w.clusters.len(), 2);
    }
}
