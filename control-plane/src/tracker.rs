//! What each connected proxy has: node id, service, and per resource type the version sent, the
//! version ACKed, the last NACK with its error, and when it was last heard from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use parking_lot::Mutex;
use serde::Serialize;

use crate::ca::serving::PeerIdentity;
use crate::endpoints::{Origin, Registry};
use crate::metrics::{Metrics, TypeLabels};

/// Status of one resource type on one proxy.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    /// Version of the last response sent.
    pub sent: String,
    /// Last version the proxy ACKed.
    pub acked: String,
    /// The NACK of the last version the proxy answered, while it rejects it (cleared by an
    /// ACK).
    pub nack: Option<Nack>,
    /// The newest NACK of this type on this stream, kept after a later ACK (the dashboard's
    /// "last NACK").
    pub last_nack: Option<Nack>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Nack {
    pub version: String,
    pub error: String,
    /// Unix seconds when the proxy sent it.
    pub at: u64,
}

/// One proxy (one stream).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub node_id: String,
    pub service: String,
    /// The node names its service in its metadata (an Outrider sidecar), rather than only an
    /// Envoy `cluster`.
    pub sidecar: bool,
    pub user_agent: String,
    /// The node's `user_agent_version` (the proxy's version), if it sent one.
    pub version: String,
    /// `delta` or `sotw`.
    pub protocol: &'static str,
    /// The SPIFFE ID the stream authenticated as (client certificate or join token).
    pub identity: Option<String>,
    /// How the stream authenticated: `certificate`, `join-token` or `none`.
    pub authentication: &'static str,
    /// The workload address registered for this proxy, if any.
    pub registered: Option<String>,
    /// Why the proxy's registration was refused (an unauthenticated stream without
    /// `--insecure-registration`), if it was.
    pub registration_refused: Option<String>,
    pub connected_at: u64,
    /// Unix seconds of the last request on the stream.
    pub last_seen: u64,
    /// The proxy said it is draining (its workload is no longer an endpoint).
    pub draining: bool,
    /// By type name (`Listener`, `Cluster`, ...).
    pub types: BTreeMap<String, TypeStatus>,
    /// Unix seconds when the newest certificate this control plane issued for the proxy's
    /// identity expires (`null`: no identity, or none issued since the control plane started).
    pub cert_expires_at: Option<u64>,
}

/// All connected proxies.
#[derive(Debug, Default)]
pub struct Tracker {
    proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
    next_id: AtomicU64,
    /// SPIFFE ID → expiry (unix seconds) of the newest certificate issued for it.
    certificates: Mutex<std::collections::HashMap<String, u64>>,
}

/// Identities whose certificate expiry is remembered (one entry per SPIFFE ID).
pub const MAX_CERTIFICATE_IDENTITIES: usize = 65_536;

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Tracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Register a stream; the returned guard unregisters it on drop.
    pub fn connect(
        self: &Arc<Self>,
        protocol: &'static str,
        metrics: &Metrics,
        registry: &Arc<Registry>,
    ) -> StreamHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = unix_now();
        self.proxies.lock().insert(
            id,
            ProxyStatus {
                node_id: String::new(),
                service: String::new(),
                sidecar: false,
                user_agent: String::new(),
                version: String::new(),
                protocol,
                identity: None,
                authentication: "none",
                registered: None,
                registration_refused: None,
                connected_at: now,
                last_seen: now,
                draining: false,
                types: BTreeMap::new(),
                cert_expires_at: None,
            },
        );
        metrics.connected_proxies.inc();
        StreamHandle {
            id,
            tracker: self.clone(),
            metrics: metrics.clone(),
            registry: registry.clone(),
            registration: None,
            peer: None,
            refusal: None,
            namespace_of: None,
            workloads: BTreeMap::new(),
        }
    }

    /// Every connected proxy, by node id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        let mut list: Vec<_> = self.proxies.lock().values().cloned().collect();
        list.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let certificates = self.certificates.lock();
        for p in &mut list {
            p.cert_expires_at = p.identity.as_ref().and_then(|id| certificates.get(id)).copied();
        }
        list
    }

    /// A certificate for `spiffe_id` was issued, valid until `not_after` (unix seconds).
    pub fn certificate_issued(&self, spiffe_id: &str, not_after: u64) {
        let mut certificates = self.certificates.lock();
        let now = unix_now();
        if certificates.len() >= MAX_CERTIFICATE_IDENTITIES {
            certificates.retain(|_, at| *at > now);
        }
        if let Some(at) = certificates.get_mut(spiffe_id) {
            *at = (*at).max(not_after);
        } else if certificates.len() < MAX_CERTIFICATE_IDENTITIES {
            certificates.insert(spiffe_id.to_owned(), not_after);
        }
    }
}

/// A stream's entry in the tracker.
#[derive(Debug)]
pub struct StreamHandle {
    id: u64,
    tracker: Arc<Tracker>,
    metrics: Metrics,
    registry: Arc<Registry>,
    /// The workload this sidecar registered (node metadata `advertise`), if any.
    registration: Option<u64>,
    /// The identity the stream authenticated as (client certificate or join token).
    peer: Option<PeerIdentity>,
    /// Why this stream may not register its workload, when it may not.
    refusal: Option<String>,
    /// The namespace of a Service by name, to bind authenticated proxies to their namespace.
    namespace_of: Option<NamespaceOf>,
    /// Node mode: the workloads this node proxy registered, by (service, address).
    workloads: BTreeMap<(String, SocketAddr), u64>,
}

/// Node metadata `mode: node`: a node proxy serving many workloads.
pub fn is_node_mode(node: &Node) -> bool {
    metadata_string(node, "mode").as_deref() == Some("node")
}

/// A node proxy's workloads as its node metadata `workloads` lists them: (service, address,
/// identity, labels); malformed entries are skipped.
fn node_workloads(node: &Node) -> Vec<(String, SocketAddr, String, BTreeMap<String, String>)> {
    let list = match node.metadata.as_ref().and_then(|m| m.fields.get("workloads")).and_then(|v| v.kind.as_ref()) {
        Some(Kind::ListValue(l)) => l.values.as_slice(),
        _ => &[],
    };
    let mut out = Vec::new();
    for item in list {
        let Some(Kind::StructValue(s)) = &item.kind else { continue };
        let field = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => Some(v.clone()),
            _ => None,
        };
        let (Some(service), Some(address), Some(identity)) = (field("service"), field("address"), field("identity"))
        else {
            continue;
        };
        let Ok(address) = address.parse::<SocketAddr>() else { continue };
        let labels = match s.fields.get("labels").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(l)) => outrider_xds::resources::struct_strings(l),
            _ => BTreeMap::new(),
        };
        out.push((service, address, identity, labels));
    }
    out
}

/// The services of the workloads a node proxy serves (whose inbound config it gets).
pub fn node_workload_services(node: &Node) -> std::collections::BTreeSet<String> {
    node_workloads(node).into_iter().map(|(service, ..)| service).collect()
}

/// Looks up the `metadata.namespace` of a Service by name.
pub trait ServiceNamespaces: Send + Sync + std::fmt::Debug {
    fn namespace_of(&self, service: &str) -> Option<String>;
}

/// Shared [`ServiceNamespaces`].
pub type NamespaceOf = Arc<dyn ServiceNamespaces>;

impl StreamHandle {
    fn with(&self, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(p) = self.tracker.proxies.lock().get_mut(&self.id) {
            p.last_seen = unix_now();
            f(p);
        }
    }

    /// The node of the first request. A sidecar that names its service and an `advertise`
    /// address in its metadata registers that workload as an endpoint of the service, unless it
    /// is already `draining`.
    pub fn identify(&mut self, node: &Node, draining: bool) {
        let service = node_service(node);
        let sidecar = metadata_string(node, "service").is_some();
        self.with(|p| {
            node.id.clone_into(&mut p.node_id);
            service.clone_into(&mut p.service);
            p.sidecar = sidecar;
            node.user_agent_name.clone_into(&mut p.user_agent);
            p.version = match &node.user_agent_version_type {
                Some(envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(v)) => {
                    v.chars().take(64).collect()
                }
                _ => String::new(),
            };
            p.draining = draining;
        });
        let advertise = metadata_string(node, "advertise");
        let Some(advertise) = advertise else {
            return;
        };
        if draining {
            // A registration of its previous stream (in its grace period) goes too.
            if let Ok(addr) = advertise.parse::<SocketAddr>() {
                self.registry.unregister(&service, addr, &Origin::Sidecar(node.id.clone()));
            }
            tracing::info!(node = %node.id, %service, "draining sidecar connected: not registered");
            return;
        }
        if let Some(reason) = &self.refusal {
            tracing::warn!(
                node = %node.id, %service, %advertise, %reason,
                "workload NOT registered: the xDS stream is not authenticated (give the proxy --identity-token, or connect over mTLS; `outrider control-plane --insecure-registration` allows plaintext registration)"
            );
            let refused = format!("not authenticated ({reason})");
            self.with(|p| p.registration_refused = Some(refused));
            return;
        }
        match advertise.parse::<SocketAddr>() {
            Ok(addr) if !service.is_empty() => {
                let labels = metadata_labels(node);
                // A sidecar with a workload certificate says so; callers then use mTLS to it.
                let identity = metadata_string(node, "identity");
                let id = self.registry.register(
                    &service,
                    addr,
                    labels,
                    Origin::Sidecar(node.id.clone()),
                    None,
                    identity.clone(),
                    Some(self.id),
                );
                tracing::info!(node = %node.id, %service, %addr, identity = identity.as_deref().unwrap_or("none"), "workload registered");
                self.with(|p| p.registered = Some(addr.to_string()));
                self.registration = Some(id);
            }
            Ok(_) => tracing::warn!(node = %node.id, "advertise without a service: not registered"),
            Err(e) => {
                tracing::warn!(node = %node.id, %advertise, error = %e, "advertise is not IP:port: not registered")
            }
        }
    }

    /// Node mode: make the registrations match the node's `workloads` metadata (each an
    /// HBONE endpoint of its service, with its identity). Only a node proxy authenticated as an
    /// identity of namespace `outrider-system` registers workloads; it may then get their
    /// certificates.
    pub fn sync_workloads(&mut self, node: &Node) {
        let Some(peer) = self.peer.clone() else {
            tracing::warn!(node = %node.id, "node proxy without a client certificate or join token: its workloads are not registered");
            return;
        };
        let node_identity = peer.0.to_string();
        let mut wanted = BTreeMap::new();
        for (service, address, identity, labels) in node_workloads(node) {
            wanted.insert((service, address), (identity, labels));
        }
        let gone: Vec<(String, SocketAddr)> =
            self.workloads.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for key in gone {
            if let Some(id) = self.workloads.remove(&key) {
                self.registry.remove_owned(id, self.id);
                tracing::info!(node = %node.id, service = %key.0, address = %key.1, "node workload deregistered");
            }
        }
        for ((service, address), (identity, labels)) in wanted {
            let known = self.workloads.contains_key(&(service.clone(), address));
            let id = self.registry.register_workload(
                &service,
                address,
                labels,
                Origin::Sidecar(node.id.clone()),
                identity.clone(),
                Some(node_identity.clone()),
                self.id,
            );
            if !known {
                tracing::info!(node = %node.id, %service, %address, %identity, "node workload registered");
            }
            self.workloads.insert((service, address), id);
        }
    }

    /// How the stream authenticated (shown in the status). An unauthenticated stream may only
    /// register its workload with `insecure_registration`.
    pub fn authenticated(&mut self, auth: crate::xds::auth::StreamAuth, insecure_registration: bool) {
        use crate::xds::auth::StreamAuth;
        let kind = auth.kind();
        let peer = auth.peer().cloned();
        self.with(|p| {
            p.authentication = kind;
            p.identity = peer.as_ref().map(|peer| peer.0.to_string());
        });
        if let StreamAuth::None(reason) = auth
            && !insecure_registration
        {
            self.refusal = Some(reason);
        }
        self.peer = peer;
    }

    /// Refuses a node that claims (node metadata `identity`) another identity than the one its
    /// stream authenticated as (client certificate or join token). Call before
    /// [`StreamHandle::identify`].
    ///
    /// An authenticated proxy may also only act for (get the inbound config of, and register
    /// endpoints of) a Service of its own namespace: `spiffe://…/ns/shop/…` cannot claim a
    /// Service whose `metadata.namespace` is `payments`.
    pub fn authorize(&self, node: &Node) -> Result<(), tonic::Status> {
        let Some(peer) = &self.peer else {
            return Ok(());
        };
        if let Some(claimed) = metadata_string(node, "identity")
            && claimed != peer.0.as_str()
        {
            tracing::warn!(node = %node.id, %claimed, authenticated = %peer.0, "xDS stream refused: identity mismatch");
            return Err(tonic::Status::permission_denied(format!(
                "node {:?} claims identity {claimed} in its metadata, but its credential (client certificate or join token) is for {}",
                node.id, peer.0
            )));
        }
        if is_node_mode(node) {
            let own = peer.0.namespace_and_service_account().map(|(ns, _)| ns);
            if own != Some(crate::ca::issuance::NODE_NAMESPACE) {
                tracing::warn!(node = %node.id, certificate = %peer.0, "xDS stream refused: node mode needs a node identity");
                return Err(tonic::Status::permission_denied(format!(
                    "{} may not act as a node proxy: node proxies run as identities of namespace {}",
                    peer.0,
                    crate::ca::issuance::NODE_NAMESPACE
                )));
            }
        }
        let service = node_service(node);
        if let Some(namespace_of) = &self.namespace_of
            && !service.is_empty()
            && let Some(namespace) = namespace_of.namespace_of(&service)
        {
            let own = peer.0.namespace_and_service_account().map(|(ns, _)| ns);
            if own != Some(namespace.as_str()) {
                tracing::warn!(node = %node.id, %service, %namespace, certificate = %peer.0, "xDS stream refused: service of another namespace");
                return Err(tonic::Status::permission_denied(format!(
                    "{} may not act as service {service:?}: the Service is in namespace {namespace:?}, the identity in {:?}",
                    peer.0,
                    own.unwrap_or("none")
                )));
            }
        }
        Ok(())
    }

    /// Binds authenticated streams to the namespace of the Service they claim.
    pub fn scoped(&mut self, namespace_of: Option<NamespaceOf>) {
        self.namespace_of = namespace_of;
    }

    /// The proxy is leaving (it said it is draining, or closed its stream cleanly): its
    /// workload stops being an endpoint now, not after the grace period.
    pub fn leave(&mut self) {
        self.with(|p| p.draining = true);
        for (_, id) in std::mem::take(&mut self.workloads) {
            self.registry.remove_owned(id, self.id);
        }
        if let Some(id) = self.registration.take()
            && self.registry.remove_owned(id, self.id)
        {
            tracing::info!(registration = id, "draining sidecar deregistered");
        }
    }

    pub fn seen(&self) {
        self.with(|_| {});
    }

    pub fn sent(&self, type_name: &'static str, version: &str) {
        self.metrics.pushes.get_or_create(&TypeLabels { r#type: type_name }).inc();
        self.with(|p| {
            version.clone_into(&mut p.types.entry(type_name.to_owned()).or_default().sent);
        });
    }

    pub fn acked(&self, type_name: &'static str, version: &str) {
        self.with(|p| {
            let t = p.types.entry(type_name.to_owned()).or_default();
            version.clone_into(&mut t.acked);
            // The NACK is over; `last_nack` keeps it for the record.
            t.nack = None;
        });
    }

    pub fn nacked(&self, type_name: &'static str, version: &str, error: &str) {
        self.metrics.nacks.get_or_create(&TypeLabels { r#type: type_name }).inc();
        let nack = Nack { version: version.to_owned(), error: error.to_owned(), at: unix_now() };
        self.with(|p| {
            let t = p.types.entry(type_name.to_owned()).or_default();
            t.last_nack = Some(nack.clone());
            t.nack = Some(nack);
        });
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        // Only what this stream still owns: a proxy that reconnected and registered the same
        // workload again on a new stream keeps it, however late this stream ends.
        if let Some(id) = self.registration {
            self.registry.release(id, self.id, self.registry.grace);
        }
        for id in self.workloads.values() {
            self.registry.release(*id, self.id, self.registry.grace);
        }
        self.tracker.proxies.lock().remove(&self.id);
        self.metrics.connected_proxies.dec();
    }
}

/// `Listener`, `Cluster`, ... for a type URL (static, for labels).
pub fn type_name(type_url: &str) -> &'static str {
    use outrider_xds::resources::*;
    match type_url {
        LISTENER_TYPE_URL => "Listener",
        ROUTE_CONFIGURATION_TYPE_URL => "RouteConfiguration",
        CLUSTER_TYPE_URL => "Cluster",
        CLUSTER_LOAD_ASSIGNMENT_TYPE_URL => "ClusterLoadAssignment",
        _ => "other",
    }
}

/// The service a proxy serves: node metadata `service` (Outrider sidecars), else the node's
/// `cluster` (Envoy's convention).
pub fn node_service(node: &Node) -> String {
    metadata_string(node, "service").unwrap_or_else(|| node.cluster.clone())
}

fn metadata_string(node: &Node, key: &str) -> Option<String> {
    match &node.metadata.as_ref()?.fields.get(key)?.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Node metadata `labels` (a struct of strings).
fn metadata_labels(node: &Node) -> BTreeMap<String, String> {
    match node.metadata.as_ref().and_then(|m| m.fields.get("labels")).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => outrider_xds::resources::struct_strings(s),
        _ => BTreeMap::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::endpoints::EndpointSource as _;
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};
    use std::time::Duration;

    fn node_with(workloads: &[(&str, &str, &str)]) -> Node {
        let s = outrider_xds::resources::string_value;
        let list = workloads
            .iter()
            .map(|(service, address, identity)| Value {
                kind: Some(Kind::StructValue(outrider_xds::resources::struct_of(vec![
                    ("service", s(service)),
                    ("address", s(address)),
                    ("identity", s(identity)),
                ]))),
            })
            .collect();
        let mut fields = BTreeMap::new();
        fields.insert("mode".to_owned(), s("node"));
        fields.insert("workloads".to_owned(), Value { kind: Some(Kind::ListValue(ListValue { values: list })) });
        Node {
            id: "node-a".into(),
            metadata: Some(Struct { fields: fields.into_iter().collect() }),
            ..Default::default()
        }
    }

    fn stream(tracker: &Arc<Tracker>, registry: &Arc<Registry>) -> StreamHandle {
        let mut h = tracker.connect("delta", &Metrics::new(), registry);
        let peer =
            PeerIdentity(outrider_proxy::tls::Identity::parse("spiffe://t/ns/outrider-system/sa/node-a").unwrap());
        h.authenticated(crate::xds::auth::StreamAuth::Certificate(peer), false);
        h
    }

    /// A node proxy reconnects: its new stream registers its workloads, then the old stream is
    /// torn down (late: a broken connection is noticed after the new one is up). The workloads
    /// stay registered past the grace period, and leave with the new stream.
    #[tokio::test(start_paused = true)]
    async fn a_reconnected_node_keeps_its_workloads_when_the_old_stream_ends_late() {
        let tracker = Tracker::new();
        let registry = Registry::new(Duration::from_secs(5));
        let node = node_with(&[("w", "10.0.0.7:8080", "spiffe://t/ns/default/sa/w")]);
        let mut old = stream(&tracker, &registry);
        old.identify(&node, false);
        old.sync_workloads(&node);
        let mut new = stream(&tracker, &registry);
        new.identify(&node, false);
        new.sync_workloads(&node);
        drop(old);
        tokio::time::advance(registry.grace * 3).await;
        registry.sweep();
        assert_eq!(registry.endpoints()["w"].len(), 1, "the new stream's registration outlived the old stream's grace");

        // An old stream that closes cleanly (leave) does not take it either.
        let mut older = stream(&tracker, &registry);
        older.identify(&node, false);
        older.sync_workloads(&node);
        let mut newest = stream(&tracker, &registry);
        newest.identify(&node, false);
        newest.sync_workloads(&node);
        older.leave();
        assert_eq!(registry.endpoints()["w"].len(), 1);
        // The owner's workload list dropping it does.
        newest.sync_workloads(&node_with(&[]));
        assert!(registry.endpoints().is_empty());
        drop((new, newest));
    }

    /// A NACK shows while the proxy rejects the version; after a later ACK it is no longer the
    /// state, but stays as the last NACK with its version, message and time.
    #[tokio::test]
    async fn an_ack_ends_the_nack_and_the_last_nack_is_kept() {
        let tracker = Tracker::new();
        let registry = Registry::new(Duration::from_secs(5));
        let s = stream(&tracker, &registry);
        s.sent("Cluster", "1");
        s.acked("Cluster", "1");
        s.sent("Cluster", "2");
        s.nacked("Cluster", "2", "lb_policy MAGLEV is not supported");
        let t = tracker.list()[0].types["Cluster"].clone();
        assert_eq!(t.acked, "1", "the ACKed version stays what the proxy runs");
        assert_eq!(t.nack.as_ref().map(|n| n.version.as_str()), Some("2"));
        s.sent("Cluster", "3");
        s.acked("Cluster", "3");
        let t = tracker.list()[0].types["Cluster"].clone();
        assert!(t.nack.is_none());
        assert_eq!(t.acked, "3");
        let last = t.last_nack.expect("the last NACK is kept");
        assert_eq!((last.version.as_str(), last.error.as_str()), ("2", "lb_policy MAGLEV is not supported"));
        assert!(last.at > 0);
    }
}
