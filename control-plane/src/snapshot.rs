//! What the xDS server serves: the resources of the current policy set, with a version per
//! resource (the set version at which it last changed) and per type, so that a push carries
//! only what changed.
//!
//! Besides `outrider_xds::translate`, the control plane adds what gRPC proxyless clients need:
//! an API listener per HTTP service (named `NAME` and `NAME:PORT`, as gRPC requests them for
//! `xds:///NAME[:PORT]`), with the service's virtual host inline. They are served only to
//! clients that subscribe to them by name, never to wildcard (sidecar) subscriptions.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use outrider_xds::PolicySet;
use outrider_xds::resources::{
    CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, HTTP_CONNECTION_MANAGER_TYPE_URL, LISTENER_TYPE_URL,
    ROUTE_CONFIGURATION_TYPE_URL, ROUTER_FILTER, ROUTER_TYPE_URL, any,
};
use tokio::time::Instant;

/// One resource ready to send.
#[derive(Debug)]
pub struct XdsResource {
    pub name: String,
    /// The snapshot version at which this resource last changed.
    pub version: String,
    pub any: Any,
    /// Served to wildcard subscriptions (false: only when asked for by name).
    pub wildcard: bool,
}

/// All resources of one type.
#[derive(Debug, Default)]
pub struct TypeSnapshot {
    /// Changes whenever any resource of the type changes.
    pub version: String,
    pub resources: BTreeMap<String, Arc<XdsResource>>,
}

/// Everything the server serves at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// Version of everything served (policies and registered endpoints).
    pub version: String,
    /// Version of the policy documents alone (`configVersion` of API writes).
    pub policy_version: String,
    pub types: BTreeMap<&'static str, TypeSnapshot>,
    /// When it was generated (push latency is measured from here).
    pub created: Instant,
}

impl Snapshot {
    pub fn empty() -> Self {
        Self { version: String::new(), policy_version: String::new(), types: BTreeMap::new(), created: Instant::now() }
    }

    pub fn get(&self, type_url: &str) -> Option<&TypeSnapshot> {
        self.types.get(type_url)
    }
}

/// Typed resources of one type with the version at which each last changed.
type Versioned<M> = BTreeMap<String, (M, String)>;

/// Produces snapshots, remembering the previous one to keep versions of unchanged resources.
#[derive(Debug, Default)]
pub struct Generator {
    listeners: Versioned<Listener>,
    routes: Versioned<RouteConfiguration>,
    clusters: Versioned<Cluster>,
    endpoints: Versioned<ClusterLoadAssignment>,
    type_versions: BTreeMap<&'static str, String>,
}

impl Generator {
    pub fn new() -> Self {
        Self::default()
    }

    /// The snapshot of `set`.
    pub fn generate(&mut self, set: &PolicySet) -> Snapshot {
        let mut resources = outrider_xds::translate(set);
        let version = resources.version.clone();
        for cla in &mut resources.endpoints {
            grpc_friendly_localities(cla);
        }
        let mut listeners: Vec<(String, Listener, bool)> =
            resources.listeners.into_iter().map(|l| (l.name.clone(), l, true)).collect();
        listeners.extend(api_listeners(set, &resources.routes).into_iter().map(|l| (l.name.clone(), l, false)));
        let routes = named(resources.routes, |r| r.name.clone());
        let clusters = named(resources.clusters, |c| c.name.clone());
        let endpoints = named(resources.endpoints, |e| e.cluster_name.clone());

        let mut types = BTreeMap::new();
        let tv = &mut self.type_versions;
        types.insert(LISTENER_TYPE_URL, update(&mut self.listeners, listeners, &version, LISTENER_TYPE_URL, tv));
        types.insert(
            ROUTE_CONFIGURATION_TYPE_URL,
            update(&mut self.routes, routes, &version, ROUTE_CONFIGURATION_TYPE_URL, tv),
        );
        types.insert(CLUSTER_TYPE_URL, update(&mut self.clusters, clusters, &version, CLUSTER_TYPE_URL, tv));
        types.insert(
            CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
            update(&mut self.endpoints, endpoints, &version, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, tv),
        );
        Snapshot { policy_version: version.clone(), version, types, created: Instant::now() }
    }
}

fn named<M>(items: Vec<M>, name: impl Fn(&M) -> String) -> Vec<(String, M, bool)> {
    items.into_iter().map(|m| (name(&m), m, true)).collect()
}

/// Compares with the previous resources of the type (typed `==`: the encoded bytes of equal
/// messages may differ, their maps being `HashMap`s) and assigns versions.
fn update<M: prost::Message + PartialEq + Clone>(
    prev: &mut Versioned<M>,
    items: Vec<(String, M, bool)>,
    version: &str,
    type_url: &'static str,
    type_versions: &mut BTreeMap<&'static str, String>,
) -> TypeSnapshot {
    let mut next = Versioned::new();
    let mut out = BTreeMap::new();
    let mut changed = items.len() != prev.len();
    for (name, message, wildcard) in items {
        let resource_version = match prev.get(&name) {
            Some((old, v)) if *old == message => v.clone(),
            _ => {
                changed = true;
                version.to_owned()
            }
        };
        out.insert(
            name.clone(),
            Arc::new(XdsResource {
                name: name.clone(),
                version: resource_version.clone(),
                any: any(type_url, &message),
                wildcard,
            }),
        );
        next.insert(name, (message, resource_version));
    }
    *prev = next;
    let type_version = match type_versions.get(type_url) {
        Some(v) if !changed => v.clone(),
        _ => version.to_owned(),
    };
    type_versions.insert(type_url, type_version.clone());
    TypeSnapshot { version: type_version, resources: out }
}

/// gRPC ignores localities without a weight; give the single locality one (Envoy ignores it
/// unless locality-weighted balancing is on).
fn grpc_friendly_localities(cla: &mut ClusterLoadAssignment) {
    for locality in &mut cla.endpoints {
        if locality.load_balancing_weight.is_none() {
            locality.load_balancing_weight = Some(UInt32Value { value: 1 });
        }
        if locality.locality.is_none() {
            locality.locality = Some(Locality::default());
        }
    }
}

/// An API listener per HTTP service, for gRPC proxyless clients.
fn api_listeners(set: &PolicySet, routes: &[RouteConfiguration]) -> Vec<Listener> {
    let mut out = Vec::new();
    for service in set.services.values() {
        if !service.spec.protocol.is_http() {
            continue;
        }
        let name = service.name();
        let Some(vhost) =
            routes.iter().flat_map(|r| r.virtual_hosts.iter()).find(|vh| vh.domains.iter().any(|d| d == name))
        else {
            continue;
        };
        let hcm = HttpConnectionManager {
            stat_prefix: name.to_owned(),
            route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
                name: format!("grpc|{name}"),
                virtual_hosts: vec![vhost.clone()],
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
            out.push(Listener { name: listener_name, api_listener: Some(api.clone()), ..Default::default() });
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn set(port: u16) -> PolicySet {
        outrider_xds::load_str(
            "t.yaml",
            &format!(
                "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: a}}\nspec: {{port: 80, endpoints: [{{address: \"127.0.0.1:81\"}}]}}\n---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: b}}\nspec: {{port: {port}}}\n"
            ),
        )
        .unwrap()
    }

    #[test]
    fn unchanged_resources_keep_their_version() {
        let mut g = Generator::new();
        let first = g.generate(&set(90));
        let second = g.generate(&set(91));
        assert_ne!(first.version, second.version);
        let clusters = |s: &Snapshot| {
            s.get(CLUSTER_TYPE_URL)
                .unwrap()
                .resources
                .iter()
                .map(|(n, r)| (n.clone(), r.version.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let (c1, c2) = (clusters(&first), clusters(&second));
        assert_eq!(c1["outbound|80||a"], c2["outbound|80||a"], "a did not change");
        assert!(c2.contains_key("outbound|91||b") && !c2.contains_key("outbound|90||b"));
        // Regenerating the same set changes no version at all.
        let third = g.generate(&set(91));
        for t in [LISTENER_TYPE_URL, CLUSTER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL] {
            assert_eq!(second.get(t).unwrap().version, third.get(t).unwrap().version);
        }
    }

    #[test]
    fn api_listeners_are_named_after_grpc_targets_and_not_wildcard() {
        let snapshot = Generator::new().generate(&set(90));
        let listeners = &snapshot.get(LISTENER_TYPE_URL).unwrap().resources;
        assert!(listeners["outbound"].wildcard);
        for name in ["a", "a:80", "b", "b:90"] {
            assert!(!listeners[name].wildcard, "{name}");
        }
        let cla = &snapshot.get(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL).unwrap().resources;
        let decoded: ClusterLoadAssignment =
            outrider_xds::resources::decode_any(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, &cla["outbound|80||a"].any).unwrap();
        assert_eq!(decoded.endpoints[0].load_balancing_weight, Some(UInt32Value { value: 1 }));
    }
}
