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

use std::collections::{BTreeMap, BTreeSet};

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
use outrider_xds::resources::{
    HTTP_CONNECTION_MANAGER_TYPE_URL, LB_METADATA, ROUTER_FILTER, ROUTER_TYPE_URL, any, parse_cluster_name,
    struct_strings,
};

/// A subset of a service's cluster: the parent cluster's name and the labels it selects.
pub(super) type SubsetKey = (String, BTreeMap<String, String>);

/// The name of the cluster of one subset: `outbound|PORT|k=v,k2=v2|NAME`.
pub(super) fn subset_cluster_name(parent: &str, labels: &BTreeMap<String, String>) -> String {
    let subset: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    match parse_cluster_name(parent) {
        Some((service, port)) => format!("outbound|{port}|{}|{service}", subset.join(",")),
        None => format!("{parent}|{}", subset.join(",")),
    }
}

/// The API listeners gRPC asks for as `xds:///NAME` and `xds:///NAME:PORT`, for service `name`
/// of `port`, with `vhost` (the virtual host whose domains first include `name`, rewritten by
/// [`with_subset_clusters`]) inline.
pub(super) fn api_listeners(name: &str, port: u16, vhost: VirtualHost) -> [Listener; 2] {
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
    [name.to_owned(), format!("{name}:{port}")].map(|listener_name| Listener {
        name: listener_name,
        api_listener: Some(api.clone()),
        ..Default::default()
    })
}

/// The cluster of one subset of `parent` (the service's cluster), named `name`.
pub(super) fn subset_cluster(parent: &Cluster, name: &str) -> Cluster {
    Cluster { name: name.to_owned(), lb_subset_config: None, ..parent.clone() }
}

/// Rewrites every weighted-cluster entry that selects a subset to name the subset's own
/// cluster (collected in `subsets`, weight 0 or not), and drops entries of weight 0 from the
/// routes.
pub(super) fn with_subset_clusters(mut vhost: VirtualHost, subsets: &mut BTreeSet<SubsetKey>) -> VirtualHost {
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
pub(super) fn subset_endpoints(
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

    /// The resources the generator serves by name only (to proxyless clients), decoded.
    struct ByName {
        listeners: Vec<Listener>,
        clusters: Vec<Cluster>,
        endpoints: Vec<ClusterLoadAssignment>,
    }

    fn served_by_name(set: &outrider_xds::PolicySet) -> ByName {
        use outrider_xds::resources::{CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, LISTENER_TYPE_URL};
        let snapshot = crate::snapshot::Generator::new().generate(set);
        fn decoded<M: prost::Message + Default>(snapshot: &crate::snapshot::Snapshot, type_url: &str) -> Vec<M> {
            snapshot
                .get(type_url)
                .unwrap()
                .resources
                .values()
                .filter(|r| r.scope == crate::snapshot::Scope::ByName)
                .map(|r| outrider_xds::resources::decode_any(type_url, &r.any().unwrap()).unwrap())
                .collect()
        }
        ByName {
            listeners: decoded(&snapshot, LISTENER_TYPE_URL),
            clusters: decoded(&snapshot, CLUSTER_TYPE_URL),
            endpoints: decoded(&snapshot, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL),
        }
    }

    #[test]
    fn subsets_get_clusters_of_their_own_in_the_api_listeners_only() {
        let set = outrider_xds::load_str("t.yaml", SET).unwrap();
        let mut translated = outrider_xds::translate(&set);
        for cla in &mut translated.endpoints {
            grpc_friendly_localities(cla);
        }
        let out = served_by_name(&set);

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
