//! Configuration from an xDS server (`--xds-address`): the `outrider-xds` ADS client feeds each
//! update to [`XdsHandler`], which decodes it, builds a candidate snapshot from the latest
//! accepted resources of every type plus the update, and either applies it (ACK) or rejects it
//! with the builder's readable reasons (NACK; the previous config stays). The snapshot is
//! swapped in only once all four types have arrived (or from the start when `--policy` gave a
//! config to begin with), so `/ready` means "the first complete config is applied".
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Struct;
use outrider_xds::Resources;
use outrider_xds::ads::{self, AdsClient, ClientConfig, Handler, Update};
use outrider_xds::resources::{
    self as names, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, LISTENER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL,
    decode_any,
};
use parking_lot::Mutex;

use crate::state::{Builder, Dump, ResourceVersions, Store, Versions};
use crate::telemetry::metrics::{Metrics, TypeLabels, XdsLabels, version_value};

/// Which ADS variant to use (`--xds-protocol`).
pub use outrider_xds::ads::Protocol;

/// `--xds-address` and friends.
#[derive(Clone, Debug)]
pub struct XdsConfig {
    /// `http://host:port`.
    pub address: String,
    pub protocol: Protocol,
    /// The workload address to register for the service (`--advertise`).
    pub advertise: Option<std::net::SocketAddr>,
    /// Labels of the registered workload (`--label`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Largest xDS response decoded (`--xds-max-message`).
    pub max_message: usize,
}

impl XdsConfig {
    /// `address` over `protocol`, nothing to advertise, no labels, the default decode limit.
    pub fn new(address: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            address: address.into(),
            protocol,
            advertise: None,
            labels: Default::default(),
            max_message: outrider_xds::ads::DEFAULT_MAX_MESSAGE,
        }
    }
}

/// The latest accepted resources of every type.
#[derive(Clone, Debug, Default)]
struct Accepted {
    /// Shared with the [`Fanout`] (a node proxy keeps one copy of the mesh's config).
    resources: Arc<Resources>,
    versions: Versions,
    /// Each resource's own version, for `/config_dump` (shared with the snapshot in force).
    resource_versions: Arc<ResourceVersions>,
    /// Types received from the server so far.
    received: BTreeSet<&'static str>,
}

/// More stores fed from the same xDS stream, each with its own builder so that the state that
/// outlives snapshots (breakers, pools, outlier ejections) is its own: a node proxy keeps one
/// per workload, so each workload's calls are as isolated as its own sidecar's would be.
#[derive(Debug, Default)]
pub struct Fanout {
    stores: Mutex<Vec<(std::sync::Weak<Store>, Builder)>>,
    /// The last complete config, to build a store attached later.
    latest: Mutex<Option<(Arc<Resources>, Versions)>>,
}

impl Fanout {
    /// Feed `store` from now on (built at once from the last complete config, if any).
    pub fn attach(&self, store: &Arc<Store>) {
        // The node's own store has the `/config_dump` view of the same config.
        let builder = Builder::without_dump();
        if let Some((resources, versions)) = self.latest.lock().as_ref() {
            let (mut snapshot, _) = builder.build(resources);
            snapshot.versions = versions.clone();
            store.apply(snapshot);
        }
        self.stores.lock().push((Arc::downgrade(store), builder));
    }

    fn apply(&self, resources: &Arc<Resources>, versions: &Versions) {
        *self.latest.lock() = Some((resources.clone(), versions.clone()));
        let mut stores = self.stores.lock();
        stores.retain(|(store, _)| store.strong_count() > 0);
        for (store, builder) in stores.iter() {
            if let Some(store) = store.upgrade() {
                let (mut snapshot, _) = builder.build(resources);
                snapshot.versions = versions.clone();
                store.apply(snapshot);
            }
        }
    }
}

/// Validates and applies updates; one per proxy.
#[derive(Debug)]
pub struct XdsHandler {
    store: Arc<Store>,
    builder: Builder,
    metrics: Metrics,
    /// Whether a config was applied before the first update (from `--policy`).
    started: bool,
    accepted: Mutex<Accepted>,
    /// Set once the control plane has taken the notice that this proxy is draining.
    left: tokio::sync::watch::Sender<bool>,
    /// Other stores to feed (node mode: one per workload).
    fanout: Arc<Fanout>,
}

/// The metrics label of a type URL (bounded).
fn label(type_url: &str) -> &'static str {
    match type_url {
        LISTENER_TYPE_URL => "listener",
        ROUTE_CONFIGURATION_TYPE_URL => "route",
        CLUSTER_TYPE_URL => "cluster",
        CLUSTER_LOAD_ASSIGNMENT_TYPE_URL => "endpoint",
        _ => "other",
    }
}

fn decode_all<M: prost::Message + Default>(update: &Update<'_>) -> Result<Vec<M>, String> {
    update
        .resources
        .iter()
        .map(|(name, r)| {
            decode_any::<M>(update.type_url, &r.any)
                .map_err(|e| format!("{} {name:?}: {e}", ads::type_name(update.type_url)))
        })
        .collect()
}

impl XdsHandler {
    /// `initial`: the resources translated from `--policy`, already applied to `store`.
    pub fn new(store: Arc<Store>, metrics: Metrics, initial: Option<Resources>) -> Self {
        let started = initial.is_some();
        let mut accepted = Accepted::default();
        if let Some(resources) = initial {
            let v = resources.version.clone();
            accepted.versions = Versions { listeners: v.clone(), routes: v.clone(), clusters: v.clone(), endpoints: v };
            accepted.resources = Arc::new(resources);
        }
        let left = tokio::sync::watch::channel(false).0;
        Self {
            store,
            // The `/config_dump` view is rendered on request from the accepted resources.
            builder: Builder::without_dump(),
            metrics,
            started,
            accepted: Mutex::new(accepted),
            left,
            fanout: Arc::default(),
        }
    }

    fn try_update(&self, update: &Update<'_>) -> Result<(), String> {
        let mut accepted = self.accepted.lock();
        let mut next = accepted.clone();
        let version = update.version.to_owned();
        let own: std::collections::BTreeMap<String, String> =
            update.resources.iter().map(|(name, r)| (name.clone(), r.version.clone())).collect();
        Arc::make_mut(&mut next.resource_versions).insert(label_section(update.type_url), own);
        match update.type_url {
            LISTENER_TYPE_URL => {
                Arc::make_mut(&mut next.resources).listeners = decode_all(update)?;
                next.versions.listeners = version;
            }
            ROUTE_CONFIGURATION_TYPE_URL => {
                Arc::make_mut(&mut next.resources).routes = decode_all(update)?;
                next.versions.routes = version;
            }
            CLUSTER_TYPE_URL => {
                Arc::make_mut(&mut next.resources).clusters = decode_all(update)?;
                next.versions.clusters = version;
            }
            CLUSTER_LOAD_ASSIGNMENT_TYPE_URL => {
                Arc::make_mut(&mut next.resources).endpoints = decode_all(update)?;
                next.versions.endpoints = version;
            }
            other => return Err(format!("unsupported resource type {other}")),
        }
        Arc::make_mut(&mut next.resources).version = update.version.to_owned();
        let (mut snapshot, rejected) = self.builder.build(&next.resources);
        let type_name = ads::type_name(update.type_url);
        let mine: Vec<String> = rejected.iter().filter(|r| r.type_name == type_name).map(|r| r.to_string()).collect();
        if !mine.is_empty() {
            return Err(mine.join("; "));
        }
        for r in &rejected {
            // Another type's resource refers to something this update changed; its own update
            // is on the way (the server sends clusters before the routes that use them).
            tracing::debug!(rejected = %r, "dropped until its type is updated");
        }
        if let Some(l) = ALL_TYPES.iter().find(|t| **t == update.type_url) {
            next.received.insert(l);
        }
        snapshot.versions = next.versions.clone();
        snapshot.dump =
            Dump::Lazy { resources: next.resources.clone(), resource_versions: next.resource_versions.clone() };
        let complete = next.received.len() == ALL_TYPES.len();
        if complete || self.started {
            self.store.apply(snapshot);
            self.fanout.apply(&next.resources, &next.versions);
        }
        *accepted = next;
        Ok(())
    }
}

/// The `/config_dump` section of a type URL.
fn label_section(type_url: &str) -> &'static str {
    match type_url {
        LISTENER_TYPE_URL => "listeners",
        ROUTE_CONFIGURATION_TYPE_URL => "routes",
        CLUSTER_TYPE_URL => "clusters",
        _ => "endpoints",
    }
}

const ALL_TYPES: [&str; 4] =
    [LISTENER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL, CLUSTER_TYPE_URL, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL];

impl Handler for XdsHandler {
    fn update(&self, update: &Update<'_>) -> Result<(), String> {
        let result = self.try_update(update);
        let t = label(update.type_url);
        let outcome = if result.is_ok() { "accepted" } else { "rejected" };
        self.metrics.xds_updates.get_or_create(&XdsLabels { r#type: t, result: outcome }).inc();
        match &result {
            Ok(()) => {
                self.metrics.config_version.get_or_create(&TypeLabels { r#type: t }).set(version_value(update.version));
                tracing::info!(r#type = t, version = %update.version, resources = update.resources.len(), "xDS update applied");
            }
            Err(e) => tracing::warn!(
                r#type = t, version = %update.version, error = %e,
                "xDS update rejected (NACK); the previous config stays in force"
            ),
        }
        result
    }

    fn connected(&self, up: bool) {
        if !up {
            tracing::info!("xDS stream down; serving the last accepted config");
        }
    }

    fn left(&self) {
        tracing::info!("the control plane deregistered this workload (draining)");
        self.left.send_replace(true);
    }
}

/// The node this proxy reports: id, service (as `cluster` and `metadata.service`), namespace,
/// and for a sidecar of a service the `labels` of its workload and, when it knows it, the
/// address to register (`metadata.advertise`: `--advertise`, else the inbound listener when
/// bound to a specific IP). Without one, the ADS client adds the local address of its
/// connection with the inbound port (see [`advertise_local_port`]).
pub fn node(
    node_id: &str,
    service: Option<&str>,
    namespace: &str,
    config: &XdsConfig,
    inbound: std::net::SocketAddr,
) -> Node {
    let mut fields = vec![("namespace", names::string_value(namespace))];
    if let Some(s) = service {
        fields.push(("service", names::string_value(s)));
        if let Some(a) = advertise(config, inbound) {
            fields.push(("advertise", names::string_value(&a.to_string())));
        }
        let labels = names::string_struct(&config.labels);
        fields.push((
            "labels",
            envoy_types::pb::google::protobuf::Value {
                kind: Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(labels)),
            },
        ));
    }
    let metadata: Struct = names::struct_of(fields);
    Node {
        id: node_id.to_owned(),
        cluster: service.unwrap_or_default().to_owned(),
        metadata: Some(metadata),
        user_agent_name: "outrider-proxy".into(),
        user_agent_version_type: Some(
            envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            ),
        ),
        ..Default::default()
    }
}

/// The address a sidecar registers when it knows it: `--advertise`, else its inbound listener
/// when bound to a specific IP.
fn advertise(config: &XdsConfig, inbound: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
    config.advertise.or((!inbound.ip().is_unspecified()).then_some(inbound))
}

/// For a sidecar of a service that does not know its address (no `--advertise`, inbound
/// listener on every address): the inbound port, registered at the local address of the xDS
/// connection (the pod IP in a pod).
pub fn advertise_local_port(service: Option<&str>, config: &XdsConfig, inbound: std::net::SocketAddr) -> Option<u16> {
    (service.is_some() && advertise(config, inbound).is_none()).then_some(inbound.port())
}

/// The client and its handler, ready to run on the control runtime.
#[derive(Debug)]
pub struct XdsSource {
    client: ClientConfig,
    handler: Arc<XdsHandler>,
    node_updates: Option<tokio::sync::watch::Receiver<Node>>,
}

impl XdsSource {
    /// `policy`: the file already loaded into `store` as the config to start from, if any.
    pub fn new(config: &XdsConfig, node: Node, store: Arc<Store>, metrics: Metrics, policy: Option<&Path>) -> Self {
        let initial = policy.and_then(|p| outrider_xds::load_file(p).ok()).map(|set| outrider_xds::translate(&set));
        let mut client = ClientConfig::new(config.address.clone(), node);
        client.protocol = config.protocol;
        client.max_message = config.max_message;
        Self { client, handler: Arc::new(XdsHandler::new(store, metrics, initial)), node_updates: None }
    }

    /// Register at the local address of the xDS connection with this port (see
    /// [`advertise_local_port`]).
    pub fn advertise_local_port(&mut self, port: Option<u16>) {
        self.client.advertise_local_port = port;
    }

    /// Send the join token in this file with every xDS stream: the control plane then accepts
    /// the workload's registration without a client certificate.
    pub fn set_join_token(&mut self, path: std::path::PathBuf) {
        self.client.join_token = Some(path);
    }

    /// Adds the workload's SPIFFE ID to the node metadata: the control plane then registers the
    /// workload as a meshed endpoint that callers reach over mTLS.
    pub fn set_identity(&mut self, identity: &crate::tls::Identity) {
        let metadata = self.client.node.metadata.get_or_insert_with(Default::default);
        metadata.fields.insert("identity".to_owned(), names::string_value(identity.as_str()));
    }

    /// mTLS to an `https://` xDS address: this proxy's workload certificate as client
    /// certificate; the server must present the control plane's identity from the mesh CA.
    pub fn set_tls(&mut self, config: Arc<rustls::ClientConfig>) {
        self.client.tls = Some(config);
    }

    /// The load reporter for the same server: same address, node and TLS (call after
    /// [`XdsSource::set_identity`] and [`XdsSource::set_tls`]).
    pub fn load_reporter(&self, store: Arc<Store>) -> crate::load_report::LoadReporter {
        crate::load_report::LoadReporter::new(self.client.clone(), store)
    }

    /// The stores fed besides the proxy's own (node mode: one per workload).
    pub fn fanout(&self) -> Arc<Fanout> {
        self.handler.fanout.clone()
    }

    /// A node proxy: the node metadata changes as workloads come and go (see
    /// [`outrider_xds::ads::AdsClient::with_node_updates`]).
    pub fn set_node_updates(&mut self, updates: tokio::sync::watch::Receiver<Node>) {
        self.node_updates = Some(updates);
    }

    /// The node reported now.
    pub fn node(&self) -> &Node {
        &self.client.node
    }

    /// Becomes true once the control plane has taken the drain notice (see [`XdsSource::run`]).
    pub fn left(&self) -> tokio::sync::watch::Receiver<bool> {
        self.handler.left.subscribe()
    }

    /// Run until the task is dropped. When `draining` becomes true the client tells the
    /// control plane, which deregisters this workload at once (docs/architecture.md, "Design
    /// for failure") rather than after the stream's grace period.
    pub async fn run(self, draining: tokio::sync::watch::Receiver<bool>) {
        let mut client = AdsClient::new(self.client).with_drain(draining);
        if let Some(updates) = self.node_updates {
            client = client.with_node_updates(updates);
        }
        client.run(self.handler).await;
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    use outrider_xds::ads::{Resource, TypeResources};
    use prost::Message;

    use super::*;

    const POLICY: &str = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: echo}\nspec: {port: 8080, endpoints: [{address: \"127.0.0.1:9\"}]}\n";

    fn typed<M: Message>(type_url: &str, items: &[M], name: impl Fn(&M) -> String) -> TypeResources {
        items.iter().map(|m| (name(m), Resource { version: "v1".into(), any: names::any(type_url, m) })).collect()
    }

    fn updates(res: &Resources) -> Vec<(&'static str, TypeResources)> {
        vec![
            (CLUSTER_TYPE_URL, typed(CLUSTER_TYPE_URL, &res.clusters, |c| c.name.clone())),
            (
                CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
                typed(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, &res.endpoints, |c| c.cluster_name.clone()),
            ),
            (LISTENER_TYPE_URL, typed(LISTENER_TYPE_URL, &res.listeners, |l| l.name.clone())),
            (ROUTE_CONFIGURATION_TYPE_URL, typed(ROUTE_CONFIGURATION_TYPE_URL, &res.routes, |r| r.name.clone())),
        ]
    }

    #[test]
    fn ready_only_after_all_four_types_and_bad_resources_are_rejected_keeping_the_last_good() {
        let store = Arc::new(Store::new());
        let handler = XdsHandler::new(store.clone(), Metrics::new(), None);
        let res = outrider_xds::translate(&outrider_xds::load_str("t.yaml", POLICY).unwrap());
        let all = updates(&res);
        for (i, (type_url, resources)) in all.iter().enumerate() {
            assert!(!store.is_ready(), "ready before the {i}th type");
            handler.update(&Update { type_url, version: "v1", resources }).unwrap();
        }
        assert!(store.is_ready());
        assert!(store.load().clusters.contains_key("outbound|8080||echo"));

        // A cluster this proxy cannot use: NACKed with the reason, the snapshot stays.
        let before = store.load_full();
        let mut bad = res.clusters.clone();
        for c in &mut bad {
            c.lb_policy = LbPolicy::Maglev as i32;
            c.load_balancing_policy = None;
        }
        let bad = typed(CLUSTER_TYPE_URL, &bad, |c| c.name.clone());
        let err = handler.update(&Update { type_url: CLUSTER_TYPE_URL, version: "v2", resources: &bad }).unwrap_err();
        assert!(err.contains("outbound|8080||echo") && err.contains("lb_policy"), "{err}");
        assert!(Arc::ptr_eq(&before, &store.load_full()), "the previous snapshot stays");

        // Garbage that does not decode is rejected too.
        let mut garbage = TypeResources::new();
        garbage.insert(
            "x".into(),
            Resource {
                version: "v3".into(),
                any: envoy_types::pb::google::protobuf::Any {
                    type_url: CLUSTER_TYPE_URL.into(),
                    value: vec![0xff, 0xff, 0xff],
                },
            },
        );
        let err =
            handler.update(&Update { type_url: CLUSTER_TYPE_URL, version: "v3", resources: &garbage }).unwrap_err();
        assert!(err.contains("cannot decode"), "{err}");
        assert_eq!(store.load().versions.clusters, "v1");
    }

    /// `/config_dump` shows each resource's own version (Delta) and each type's version, not
    /// the version of whichever update came last.
    #[test]
    fn the_dump_has_the_version_of_each_resource_and_of_each_type() {
        let store = Arc::new(Store::new());
        let handler = XdsHandler::new(store.clone(), Metrics::new(), None);
        let res = outrider_xds::translate(&outrider_xds::load_str("t.yaml", POLICY).unwrap());
        for (type_url, resources) in updates(&res) {
            handler.update(&Update { type_url, version: "v1", resources: &resources }).unwrap();
        }
        let mut clusters = typed(CLUSTER_TYPE_URL, &res.clusters, |c| c.name.clone());
        for resource in clusters.values_mut() {
            resource.version = "c7".into();
        }
        handler.update(&Update { type_url: CLUSTER_TYPE_URL, version: "v2", resources: &clusters }).unwrap();
        let dump = store.load().dump();
        assert_eq!(dump["clusters"]["version"], "v2");
        assert_eq!(dump["listeners"]["version"], "v1", "a cluster update leaves the listeners' version");
        let echo =
            dump["clusters"]["resources"].as_array().unwrap().iter().find(|c| c["name"] == "outbound|8080||echo");
        assert_eq!(echo.unwrap()["version"], "c7");
        for section in ["listeners", "routes", "endpoints"] {
            for resource in dump[section]["resources"].as_array().unwrap() {
                assert_eq!(resource["version"], "v1", "{section}: {resource}");
            }
        }
    }

    /// The snapshot keeps no view of its own, only the accepted resources (which the handler
    /// keeps anyway), and the view rendered from them on request is the one a builder makes
    /// with the snapshot.
    #[test]
    fn the_dump_is_rendered_on_request_from_the_accepted_resources() {
        let store = Arc::new(Store::new());
        let handler = XdsHandler::new(store.clone(), Metrics::new(), None);
        let res = outrider_xds::translate(&outrider_xds::load_str("t.yaml", POLICY).unwrap());
        for (type_url, resources) in updates(&res) {
            handler.update(&Update { type_url, version: "v1", resources: &resources }).unwrap();
        }
        let snap = store.load_full();
        let accepted = handler.accepted.lock().resources.clone();
        match &snap.dump {
            Dump::Lazy { resources, .. } => assert!(Arc::ptr_eq(resources, &accepted), "not a copy"),
            other => panic!("expected a view rendered on request, got {other:?}"),
        }
        let (mut built, rejected) = Builder::new().build(&accepted);
        assert!(rejected.is_empty(), "{rejected:?}");
        built.versions = snap.versions.clone();
        built.stamp_versions(&ResourceVersions::new());
        assert!(matches!(built.dump, Dump::Built(_)));
        let dump = snap.dump();
        assert!(dump["clusters"]["resources"].as_array().is_some_and(|c| !c.is_empty()), "{dump}");
        assert_eq!(dump, built.dump());
    }

    #[test]
    fn a_listener_before_its_routes_is_accepted_and_its_chains_arrive_with_the_routes() {
        // Envoy's order (CDS, EDS, LDS, RDS): the outbound listener's filter chain for a service
        // with addresses names a virtual host of a route configuration that comes after it.
        const WITH_ADDRESS: &str = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: echo}\nspec: {port: 8080, addresses: [\"10.9.0.1\"], endpoints: [{address: \"127.0.0.1:9\"}]}\n";
        let store = Arc::new(Store::new());
        let handler = XdsHandler::new(store.clone(), Metrics::new(), None);
        let res = outrider_xds::translate(&outrider_xds::load_str("t.yaml", WITH_ADDRESS).unwrap());
        for (type_url, resources) in &updates(&res) {
            handler
                .update(&Update { type_url, version: "v1", resources })
                .unwrap_or_else(|e| panic!("{type_url}: NACK {e}"));
        }
        assert!(store.is_ready());
        let dst: std::net::SocketAddr = "10.9.0.1:8080".parse().unwrap();
        assert!(
            matches!(store.load().outbound.lookup(dst), Some(crate::state::Target::Http(_))),
            "the address routes to the service once the routes are in"
        );

        // A route configuration without the listener's virtual host is the one NACKed.
        let mut routes = res.routes.clone();
        for r in &mut routes {
            r.virtual_hosts.retain(|v| v.name != "echo");
        }
        let routes = typed(ROUTE_CONFIGURATION_TYPE_URL, &routes, |r| r.name.clone());
        let err = handler
            .update(&Update { type_url: ROUTE_CONFIGURATION_TYPE_URL, version: "v2", resources: &routes })
            .unwrap_err();
        assert!(err.contains("no virtual host echo"), "{err}");
        assert_eq!(store.load().versions.routes, "v1");
    }

    /// A node proxy's workload stores: the same routing as the node's store, their own state
    /// (breakers, pools), and no `/config_dump` view (the node's store has it) — the view is
    /// the largest part of a snapshot, and a node keeps one store per workload.
    #[test]
    fn fanout_stores_route_like_the_node_with_their_own_state_and_no_dump() {
        let store = Arc::new(Store::new());
        let handler = XdsHandler::new(store.clone(), Metrics::new(), None);
        let fanout = handler.fanout.clone();
        let early = Arc::new(Store::new());
        fanout.attach(&early);
        let res = outrider_xds::translate(&outrider_xds::load_str("t.yaml", POLICY).unwrap());
        for (type_url, resources) in updates(&res) {
            handler.update(&Update { type_url, version: "v1", resources: &resources }).unwrap();
        }
        let late = Arc::new(Store::new());
        fanout.attach(&late);
        let node = store.load_full();
        let dump = node.dump();
        assert!(dump["clusters"]["resources"].as_array().is_some_and(|c| !c.is_empty()), "{dump}");
        let cluster = "outbound|8080||echo";
        for workload in [&early, &late] {
            assert!(workload.is_ready());
            let snap = workload.load_full();
            assert_eq!(snap.versions.clusters, "v1");
            assert!(matches!(snap.dump, Dump::None), "a workload store has no dump: {:?}", snap.dump);
            let (ours, theirs) = (&snap.clusters[cluster], &node.clusters[cluster]);
            assert!(!Arc::ptr_eq(&ours.state, &theirs.state), "breaker state is the workload's own");
            let (ep, node_ep) = (&ours.endpoints.items()[0], &theirs.endpoints.items()[0]);
            assert_eq!(ep.addr, node_ep.addr);
            assert!(!Arc::ptr_eq(&ep.shared.pool, &node_ep.shared.pool), "connection pool is the workload's own");
        }
        assert!(!Arc::ptr_eq(&early.load().clusters[cluster].state, &late.load().clusters[cluster].state));
        // The fanout keeps the handler's copy of the config, not one of its own.
        let latest = fanout.latest.lock().as_ref().map(|(r, _)| r.clone()).unwrap();
        assert!(Arc::ptr_eq(&latest, &handler.accepted.lock().resources));
    }
}
