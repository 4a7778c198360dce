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

use crate::state::{Builder, Store, Versions};
use crate::telemetry::metrics::{Metrics, TypeLabels, XdsLabels, version_value};

/// Which ADS variant to use (`--xds-protocol`).
pub use outrider_xds::ads::Protocol;

/// `--xds-address` and friends.
#[derive(Clone, Debug)]
pub struct XdsConfig {
    /// `http://host:port`.
    pub address: String,
    pub protocol: Protocol,
}

/// The latest accepted resources of every type.
#[derive(Clone, Debug, Default)]
struct Accepted {
    resources: Resources,
    versions: Versions,
    /// Types received from the server so far.
    received: BTreeSet<&'static str>,
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
            accepted.resources = resources;
        }
        Self { store, builder: Builder::new(), metrics, started, accepted: Mutex::new(accepted) }
    }

    fn try_update(&self, update: &Update<'_>) -> Result<(), String> {
        let mut accepted = self.accepted.lock();
        let mut next = accepted.clone();
        let version = update.version.to_owned();
        match update.type_url {
            LISTENER_TYPE_URL => {
                next.resources.listeners = decode_all(update)?;
                next.versions.listeners = version;
            }
            ROUTE_CONFIGURATION_TYPE_URL => {
                next.resources.routes = decode_all(update)?;
                next.versions.routes = version;
            }
            CLUSTER_TYPE_URL => {
                next.resources.clusters = decode_all(update)?;
                next.versions.clusters = version;
            }
            CLUSTER_LOAD_ASSIGNMENT_TYPE_URL => {
                next.resources.endpoints = decode_all(update)?;
                next.versions.endpoints = version;
            }
            other => return Err(format!("unsupported resource type {other}")),
        }
        next.resources.version = update.version.to_owned();
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
        let complete = next.received.len() == ALL_TYPES.len();
        if complete || self.started {
            self.store.apply(snapshot);
        }
        *accepted = next;
        Ok(())
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
}

/// The node this proxy reports: id, service (as `cluster` and `metadata.service`), namespace.
pub fn node(node_id: &str, service: Option<&str>, namespace: &str) -> Node {
    let mut fields = vec![("namespace", names::string_value(namespace))];
    if let Some(s) = service {
        fields.push(("service", names::string_value(s)));
    }
    let metadata: Struct = names::struct_of(fields);
    Node {
        id: node_id.to_owned(),
        cluster: service.unwrap_or_default().to_owned(),
        metadata: Some(metadata),
        user_agent_name: "outrider-proxy".into(),
        ..Default::default()
    }
}

/// The client and its handler, ready to run on the control runtime.
#[derive(Debug)]
pub struct XdsSource {
    client: ClientConfig,
    handler: Arc<XdsHandler>,
}

impl XdsSource {
    /// `policy`: the file already loaded into `store` as the config to start from, if any.
    pub fn new(config: &XdsConfig, node: Node, store: Arc<Store>, metrics: Metrics, policy: Option<&Path>) -> Self {
        let initial = policy.and_then(|p| outrider_xds::load_file(p).ok()).map(|set| outrider_xds::translate(&set));
        let mut client = ClientConfig::new(config.address.clone(), node);
        client.protocol = config.protocol;
        Self { client, handler: Arc::new(XdsHandler::new(store, metrics, initial)) }
    }

    /// Run until the task is dropped.
    pub async fn run(self) {
        AdsClient::new(self.client).run(self.handler).await;
    }
}
