//! Node mode (`outrider-proxy --mode node`): one proxy serving every workload of a machine,
//! each workload in its own network namespace (a pod).
//!
//! For each workload the node proxy enters the workload's namespace, binds its listeners there
//! (outbound `127.0.0.1:15001`, inbound `:15006`, HBONE `:15008`; the same on IPv6 where the
//! namespace has IPv6) and installs the namespace's redirect rules (iptables, and ip6tables
//! then), then returns: the workload's traffic reaches the node proxy with its
//! original destination, and the proxy's upstream sockets for that workload are created in the
//! same namespace, so they leave from the workload's own address. Each workload has its own
//! certificate (issued to the node proxy only for workloads registered on this node), its own
//! config store (so breakers, pools and outlier state are its own, as with a sidecar), and the
//! same outbound and inbound code a sidecar runs.
//!
//! Workloads come and go through the local API on a Unix socket ([`api`]); the node's xDS
//! stream tells the control plane which workloads it hosts, which registers them as HBONE
//! endpoints of their services.

/// The local workload API (Unix socket) and its CLI, `outrider-proxy node …`.
pub mod api;
/// Workload certificates, issued on the node's own credential.
pub mod identity;
/// The served workloads kept across restarts.
pub mod state;
/// One workload: its namespace, listeners, rules, certificate and config.
pub mod workload;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use envoy_types::pb::envoy::config::core::v3::Node as XdsNode;
use envoy_types::pb::google::protobuf::{ListValue, Value, value::Kind};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::http::server::HttpServer;
use crate::source::xds::Fanout;
use crate::telemetry::access::Recorder;
use workload::Workload;

/// Where the local API listens unless `--node-socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/outrider/node.sock";

/// A workload as the local API receives it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    /// The workload's network namespace (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
    pub namespace: String,
    pub service_account: String,
    /// The Service the workload is an endpoint of.
    pub service: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The workload's IP (default: the namespace's first non-loopback address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// The port the workload serves (default: the Service's port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A workload the node serves, as the local API lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    #[serde(flatten)]
    pub spec: WorkloadSpec,
    /// The address found (or given).
    pub ip: IpAddr,
    /// Its SPIFFE ID.
    pub identity: String,
    /// Whether its certificate is installed (it accepts traffic only then).
    pub ready: bool,
    /// Its current certificate, once one is installed (each workload's is renewed on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateInfo>,
}

/// A served workload's current certificate, as the local API lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Serial number, lower-case hex.
    pub serial: String,
    pub not_after_unix: u64,
    /// When it is renewed (a random point between 50 % and 80 % of its lifetime).
    pub rotates_at_unix: u64,
    /// The same, in milliseconds.
    #[serde(default)]
    pub rotates_at_unix_ms: u64,
    /// Certificates installed for the workload so far: the first plus every renewal.
    pub installs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("network namespace {path}: {reason}")]
    Netns { path: String, reason: String },
    #[error("the workload in {0} is already served; remove it first")]
    Exists(String),
    #[error("no workload is served from {0}")]
    Unknown(String),
    #[error("cannot listen in {path} on {addr}: {error}; is another proxy serving this namespace?")]
    Bind { path: String, addr: std::net::SocketAddr, error: std::io::Error },
    #[error("redirect rules in {path}: {reason}")]
    Iptables { path: String, reason: String },
    #[error("the node has no identity yet (waiting for its certificate)")]
    NotReady,
}

impl NodeError {
    /// HTTP status of the local API for this error.
    pub fn status(&self) -> http::StatusCode {
        match self {
            NodeError::Invalid { .. } | NodeError::Netns { .. } => http::StatusCode::BAD_REQUEST,
            NodeError::Exists(_) => http::StatusCode::CONFLICT,
            NodeError::Unknown(_) => http::StatusCode::NOT_FOUND,
            NodeError::NotReady => http::StatusCode::SERVICE_UNAVAILABLE,
            NodeError::Bind { .. } | NodeError::Iptables { .. } => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What every workload shares.
#[derive(Debug)]
pub struct Shared {
    pub recorder: Arc<Recorder>,
    pub server: HttpServer,
    /// Feeds each workload's config store from the node's one xDS stream.
    pub fanout: Arc<Fanout>,
    /// `SO_MARK` of the proxy's sockets in workload namespaces (the rules exempt it).
    pub mark: u32,
    /// The node's own identity (its certificate proves who asks for workload certificates).
    pub node_mesh: crate::mesh::MeshHandle,
    /// The CA (the control plane's API).
    pub ca: Option<crate::mesh::CaClient>,
    /// Drains every workload when the proxy drains.
    pub drain: crate::drain::Drain,
    /// Where the served workloads are kept across restarts (none: not kept).
    pub state: Option<PathBuf>,
    /// The proxy's one cap on downstream connections (--max-connections).
    pub limit: crate::app::ConnectionLimit,
}

/// The workloads this node serves.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    workloads: Mutex<BTreeMap<PathBuf, Arc<Workload>>>,
    /// The node as the xDS stream reports it (without workloads), once known.
    base: Mutex<Option<XdsNode>>,
    updates: watch::Sender<XdsNode>,
    /// The state file is not written until the workloads it lists were restored.
    restoring: AtomicBool,
    /// Serializes writes of the state file (held while one is written, across the blocking
    /// write): the list is read under it, so the last write is always of the latest list.
    persisting: tokio::sync::Mutex<()>,
}

impl Node {
    pub fn new(shared: Shared) -> Arc<Self> {
        let restoring = AtomicBool::new(shared.state.is_some());
        Arc::new(Self {
            shared: Arc::new(shared),
            workloads: Mutex::default(),
            base: Mutex::default(),
            updates: watch::channel(XdsNode::default()).0,
            restoring,
            persisting: tokio::sync::Mutex::default(),
        })
    }

    /// Serve again the workloads of the state file (once the node has its identity: each needs
    /// its certificate). A workload that cannot be served again (its namespace is gone) is
    /// dropped from the file with a warning; a damaged file is set aside as `<file>.damaged`.
    pub async fn restore(self: Arc<Self>) {
        let Some(path) = self.shared.state.clone() else { return };
        let mut updates = self.updates.subscribe();
        loop {
            let based = self.base.lock().is_some();
            if based {
                break;
            }
            if updates.changed().await.is_err() {
                return;
            }
        }
        let specs = match state::load(&path) {
            Ok(specs) => specs,
            Err(error) => {
                let mut aside = path.clone().into_os_string();
                aside.push(".damaged");
                let moved = std::fs::rename(&path, &aside);
                tracing::error!(%error, set_aside = ?moved.is_ok(), "node state not restored");
                Vec::new()
            }
        };
        for spec in specs {
            let netns = spec.netns.display().to_string();
            match self.add(spec).await {
                Ok(info) => tracing::info!(%netns, identity = %info.identity, "workload restored"),
                Err(NodeError::Exists(_)) => {}
                Err(error) => tracing::warn!(%netns, %error, "workload not restored (dropped from the node state)"),
            }
        }
        self.restoring.store(false, Ordering::Release);
        self.persist().await;
    }

    /// Write the state file: the workloads served now. The write (with its fsync) runs on
    /// the blocking pool, so a slow disk never stalls the worker serving connections.
    async fn persist(&self) {
        let Some(path) = self.shared.state.clone() else { return };
        if self.restoring.load(Ordering::Acquire) {
            return;
        }
        let _one = self.persisting.lock().await;
        let specs: Vec<WorkloadSpec> = self.workloads.lock().values().map(|w| w.info().spec).collect();
        let written = tokio::task::spawn_blocking(move || state::save(&path, &specs)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "node state not written: a restart will not serve the workloads added or removed since");
            }
            Err(error) => tracing::error!(%error, "node state write did not complete"),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The xDS node without workloads (set once the node has its identity); from then on every
    /// change to the workloads publishes a new node for the xDS stream to send.
    pub fn set_base(&self, node: XdsNode) -> watch::Receiver<XdsNode> {
        *self.base.lock() = Some(node);
        self.publish();
        self.updates.subscribe()
    }

    /// Start serving a workload.
    pub async fn add(self: &Arc<Self>, spec: WorkloadSpec) -> Result<WorkloadInfo, NodeError> {
        for (field, value) in [("namespace", &spec.namespace), ("serviceAccount", &spec.service_account)] {
            if !outrider_xds::validate::is_dns_label(value) {
                return Err(NodeError::Invalid {
                    field,
                    reason: format!("{value:?} is not a DNS label ([a-z0-9-], 1-63)"),
                });
            }
        }
        if spec.service.is_empty() {
            return Err(NodeError::Invalid { field: "service", reason: "required".into() });
        }
        let trust_domain = match self.shared.node_mesh.load().as_ref() {
            Some(m) => m.identity().trust_domain().to_owned(),
            None => return Err(NodeError::NotReady),
        };
        let key = spec.netns.clone();
        if self.workloads.lock().contains_key(&key) {
            return Err(NodeError::Exists(key.display().to_string()));
        }
        let workload = Workload::start(self.shared.clone(), spec, &trust_domain).await?;
        let info = workload.info();
        let clash = {
            let mut all = self.workloads.lock();
            if all.contains_key(&key) {
                true
            } else {
                all.insert(key.clone(), workload.clone());
                false
            }
        };
        if clash {
            workload.stop().await;
            return Err(NodeError::Exists(key.display().to_string()));
        }
        tracing::info!(netns = %info.spec.netns.display(), identity = %info.identity, ip = %info.ip, "workload added");
        self.publish();
        self.persist().await;
        Ok(info)
    }

    /// Stop serving the workload of `netns`: its listeners close, its connections drain, its
    /// rules are removed; other workloads are not touched.
    pub async fn remove(&self, netns: &std::path::Path) -> Result<(), NodeError> {
        let Some(workload) = self.workloads.lock().remove(netns) else {
            return Err(NodeError::Unknown(netns.display().to_string()));
        };
        self.publish();
        self.persist().await;
        workload.stop().await;
        tracing::info!(netns = %netns.display(), "workload removed");
        Ok(())
    }

    pub fn list(&self) -> Vec<WorkloadInfo> {
        self.workloads.lock().values().map(|w| w.info()).collect()
    }

    /// Tell the control plane (node metadata `workloads`) which workloads this node hosts.
    fn publish(&self) {
        let Some(mut node) = self.base.lock().clone() else { return };
        let list: Vec<Value> = self.workloads.lock().values().map(|w| w.registration()).collect();
        let metadata = node.metadata.get_or_insert_with(Default::default);
        metadata.fields.insert("mode".into(), outrider_xds::resources::string_value("node"));
        metadata.fields.insert("workloads".into(), Value { kind: Some(Kind::ListValue(ListValue { values: list })) });
        self.updates.send_replace(node);
    }
}
