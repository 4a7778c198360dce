//! What the xDS server serves: the resources of the current policy set, with a version per
//! resource (the set version at which it last changed) and per type, so that a push carries
//! only what changed.
//!
//! Besides `outrider_xds::translate`, the control plane adds what gRPC proxyless clients need
//! ([`proxyless`]): an API listener per HTTP service (named `NAME` and `NAME:PORT`, as gRPC
//! requests them for `xds:///NAME[:PORT]`) with the service's virtual host inline, and a cluster
//! per subset its splits select. They are served only to clients that subscribe to them by
//! name, never to wildcard (sidecar) subscriptions.
//!
//! Resources named `inbound|<service>` (the inbound listener of a service, with its mTLS mode
//! and authorization rules) are scoped to that service: served only to the proxies whose node
//! names it, and versioned apart from the rest of their type so that a change to one service's
//! inbound listener changes nothing any other proxy sees. Outbound resources go to every proxy.
//!
//! Each resource is encoded once, as an `Any` that both its SotW and its Delta response entry
//! carry behind a few bytes of their own; streams send those shared bytes (see `xds::encode`)
//! instead of copying the resource. A snapshot keeps only the encoded resources: the next one
//! is compared with them (by bytes, and typed where the bytes differ).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use outrider_xds::PolicySet;
use outrider_xds::resources::{
    CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, LISTENER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL,
};
use outrider_xds::translate::{Mesh, ServiceInputs, authorization_by_service};
use prost::Message as _;
use tokio::time::Instant;

mod proxyless;
mod services;

use services::{Entry, Subset};

/// Who a resource is served to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every client: wildcard subscriptions and requests by name (outbound resources).
    All,
    /// Only clients that ask for it by name (the API listeners of gRPC proxyless clients).
    ByName,
    /// Only proxies of this service (node metadata `service`, else the node's `cluster`),
    /// wildcard or by name: resources named `inbound|<service>[|...]`.
    Service(String),
}

/// The prefix of resources that belong to one service's proxies.
pub const INBOUND_PREFIX: &str = "inbound|";

impl Scope {
    /// `inbound|<service>[|...]` is scoped to `<service>`; anything else gets `default`.
    fn of(name: &str, default: Scope) -> Scope {
        match name.strip_prefix(INBOUND_PREFIX) {
            Some(rest) => Scope::Service(rest.split('|').next().unwrap_or(rest).to_owned()),
            None => default,
        }
    }
}

/// One resource ready to send, encoded once for every stream that sends it.
///
/// Its encoded `Any` is held once: a SotW response entry is that `Any` behind a key and length,
/// a Delta one is a `Resource` (name, version, then the `Any`), whose fields before the `Any`
/// are [`XdsResource::delta_head`]. Streams send the shared `Any` bytes after the head.
#[derive(Debug)]
pub struct XdsResource {
    pub name: String,
    /// The snapshot version at which this resource last changed.
    pub version: String,
    pub scope: Scope,
    /// The encoded `Any` (type URL and message).
    encoded: Bytes,
    /// The SotW entry's head (bytes `..sotw_head`) and then the Delta entry's head.
    heads: Box<[u8]>,
    sotw_head: usize,
}

/// Response field of the resources in `DiscoveryResponse` and `DeltaDiscoveryResponse` (2),
/// and of the `Any` in a `Resource` (2).
const RESOURCES_FIELD: u32 = 2;
/// `Resource` fields.
const RESOURCE_NAME: u32 = 3;
const RESOURCE_VERSION: u32 = 1;

impl XdsResource {
    /// `encoded` is the `Any` (see [`encode_any`]).
    pub(crate) fn new(name: String, version: String, encoded: Bytes, scope: Scope) -> Self {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        let field = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
        let any_field = field(RESOURCES_FIELD, encoded.len());
        let mut resource_len = any_field;
        for (tag, value) in [(RESOURCE_NAME, &name), (RESOURCE_VERSION, &version)] {
            if !value.is_empty() {
                resource_len += field(tag, value.len());
            }
        }
        let mut heads = Vec::with_capacity(any_field - encoded.len() + resource_len - encoded.len() + 8);
        encode_key(RESOURCES_FIELD, WireType::LengthDelimited, &mut heads);
        encode_varint(encoded.len() as u64, &mut heads);
        let sotw_head = heads.len();
        encode_key(RESOURCES_FIELD, WireType::LengthDelimited, &mut heads);
        encode_varint(resource_len as u64, &mut heads);
        for (tag, value) in [(RESOURCE_NAME, &name), (RESOURCE_VERSION, &version)] {
            if !value.is_empty() {
                encode_key(tag, WireType::LengthDelimited, &mut heads);
                encode_varint(value.len() as u64, &mut heads);
                heads.extend_from_slice(value.as_bytes());
            }
        }
        encode_key(RESOURCES_FIELD, WireType::LengthDelimited, &mut heads);
        encode_varint(encoded.len() as u64, &mut heads);
        Self { name, version, scope, encoded, heads: heads.into_boxed_slice(), sotw_head }
    }

    /// The encoded `Any`: what follows either head in a response entry.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// What precedes [`XdsResource::encoded`] in a `DiscoveryResponse.resources` entry (field
    /// 2): its key and length.
    pub fn sotw_head(&self) -> &[u8] {
        &self.heads[..self.sotw_head]
    }

    /// What precedes [`XdsResource::encoded`] in a `DeltaDiscoveryResponse.resources` entry
    /// (field 2, a `Resource`): its key and length, the name and version, and the key and
    /// length of the `Resource`'s `resource` field.
    pub fn delta_head(&self) -> &[u8] {
        &self.heads[self.sotw_head..]
    }

    /// The resource as an `Any` (decoded again from what is sent).
    pub fn any(&self) -> Result<Any, prost::DecodeError> {
        Any::decode(self.encoded.clone())
    }
}

/// Whether two encoded `Any`s of `M` are the same resource: the same bytes, or different bytes
/// that decode to equal messages (the generated Envoy types keep `Struct` and metadata maps in
/// `HashMap`s, whose encoding order differs between maps).
pub(crate) fn same_encoding<M: prost::Message + Default + PartialEq>(a: &Bytes, b: &Bytes) -> bool {
    let decode = |bytes: &Bytes| Any::decode(bytes.clone()).ok().and_then(|any| M::decode(any.value.as_slice()).ok());
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b || decode(a).is_some_and(|x| decode(b) == Some(x))
}

/// `message` as an encoded `Any` of `type_url`, in one pass.
pub(crate) fn encode_any<M: prost::Message>(type_url: &str, message: &M) -> Bytes {
    encode_any_with(type_url, message, std::iter::empty())
}

/// All resources of one type.
#[derive(Debug, Default)]
pub struct TypeSnapshot {
    /// Changes whenever a resource of the type that is not scoped to a service changes.
    pub version: String,
    /// Per service, the version at which its scoped resources last changed: a change to one
    /// service's inbound listener changes neither [`TypeSnapshot::version`] nor what any
    /// other service's proxies see.
    pub scoped: BTreeMap<String, String>,
    pub resources: BTreeMap<String, Arc<XdsResource>>,
    /// What changed since the type snapshot this one replaced, so a stream that holds that one
    /// looks only at the changed names instead of walking every resource.
    pub since: Option<Since>,
}

/// The names whose resource differs between a type snapshot and the one it replaced.
#[derive(Debug)]
pub struct Since {
    /// The replaced snapshot (weak: it is freed once no stream holds it).
    pub previous: std::sync::Weak<TypeSnapshot>,
    /// New, changed and removed names, in name order.
    pub changed: Vec<String>,
}

impl TypeSnapshot {
    /// The version of what a proxy of `service` sees of this type: the type's version, plus the
    /// version of the service's own scoped resources when it has any.
    pub fn view_version(&self, service: &str) -> String {
        match self.scoped.get(service) {
            Some(v) if !service.is_empty() => format!("{}+{v}", self.version),
            _ => self.version.clone(),
        }
    }
}

/// Everything the server serves at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// Version of everything served (policies and registered endpoints).
    pub version: String,
    /// Version of the policy documents alone (`configVersion` of API writes).
    pub policy_version: String,
    /// Shared with the previous snapshot when nothing of the type changed.
    pub types: BTreeMap<&'static str, Arc<TypeSnapshot>>,
    /// When it was generated (push latency is measured from here).
    pub created: Instant,
}

impl Snapshot {
    pub fn empty() -> Self {
        Self { version: String::new(), policy_version: String::new(), types: BTreeMap::new(), created: Instant::now() }
    }

    pub fn get(&self, type_url: &str) -> Option<&Arc<TypeSnapshot>> {
        self.types.get(type_url)
    }
}

/// Produces snapshots, remembering the previous one to keep versions of unchanged resources
/// (compared with what the previous snapshot holds of each type), and each service's encoded
/// resources with the inputs they were translated from ([`services`]), so that a new set
/// translates only the services whose inputs changed.
#[derive(Debug, Default)]
pub struct Generator {
    types: BTreeMap<&'static str, Arc<TypeSnapshot>>,
    /// By service name.
    services: BTreeMap<String, Entry>,
    /// Tests: inbound listeners `(service, stat prefix)` to serve instead of the translated
    /// ones, in the next snapshot.
    #[cfg(test)]
    inbound: Option<Vec<(String, String)>>,
}

/// A resource to serve: its name, encoded `Any` and who gets it.
type Item = (String, Bytes, Scope);

impl Generator {
    pub fn new() -> Self {
        Self::default()
    }

    /// The snapshot of `set`.
    pub fn generate(&mut self, set: &PolicySet) -> Snapshot {
        let version = outrider_xds::translate::version(set);
        let items = self.items(set);
        #[cfg(test)]
        let (items, version) = tests::replace_inbound(items, version, self.inbound.take());
        let types = &mut self.types;
        update::<Listener>(items.listeners, &version, LISTENER_TYPE_URL, types);
        update::<RouteConfiguration>(items.routes, &version, ROUTE_CONFIGURATION_TYPE_URL, types);
        update::<Cluster>(items.clusters, &version, CLUSTER_TYPE_URL, types);
        update::<ClusterLoadAssignment>(items.endpoints, &version, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, types);
        Snapshot { policy_version: version.clone(), version, types: types.clone(), created: Instant::now() }
    }

    /// Every resource of `set`: each service's from its kept entry when its inputs are those
    /// the entry was translated from, else translated again; the outbound listener and route
    /// configuration put together from the services' pieces. In the order the translation
    /// lists them, the gRPC proxyless ones after the rest (a later resource of the same name
    /// takes the place of an earlier one).
    fn items(&mut self, set: &PolicySet) -> Items {
        let mesh = Mesh::of(set);
        let authorization = authorization_by_service(set);
        let mut previous = std::mem::take(&mut self.services);
        for (name, service) in &set.services {
            let inputs = ServiceInputs::of(set, service, &mesh, &authorization);
            let entry = match previous.remove(name) {
                Some(kept) if kept.inputs == inputs => kept,
                replaced => Entry::build(inputs.into_owned(), replaced.as_ref()),
            };
            self.services.insert(name.clone(), entry);
        }
        let entries = &self.services;

        let mut out = Items::default();
        let listener = outrider_xds::translate::outbound_listener(Vec::new(), mesh.telemetry);
        let chains = entries.values().filter_map(|e| e.filter_chain.as_ref());
        out.listeners.push((listener.name.clone(), encode_any_with(LISTENER_TYPE_URL, &listener, chains), Scope::All));
        let routes = outrider_xds::translate::outbound_routes(Vec::new());
        let vhosts = entries.values().filter_map(|e| e.virtual_host.as_ref());
        out.routes.push((
            routes.name.clone(),
            encode_any_with(ROUTE_CONFIGURATION_TYPE_URL, &routes, vhosts),
            Scope::All,
        ));
        let passthrough = outrider_xds::translate::passthrough_cluster();
        out.clusters.push((passthrough.name.clone(), encode_any(CLUSTER_TYPE_URL, &passthrough), Scope::All));
        for e in entries.values() {
            out.listeners.push(item(&e.inbound, Scope::All));
            out.clusters.push(item(&e.cluster, Scope::All));
            out.endpoints.push(item(&e.load_assignment, Scope::All));
        }

        // gRPC proxyless: the API listeners of each HTTP service hold the first virtual host
        // (in service order) whose domains include the service's name, which is normally its
        // own; the subsets of every virtual host so used get clusters of their own.
        let mut first_with: HashMap<&str, &str> = HashMap::new();
        for (name, e) in entries {
            for domain in &e.domains {
                first_with.entry(domain.as_str()).or_insert(name.as_str());
            }
        }
        let mut used: BTreeSet<&str> = BTreeSet::new();
        for (name, e) in entries.iter().filter(|(_, e)| e.inputs.service.spec.protocol.is_http()) {
            let Some(owner) = first_with.get(name.as_str()).copied() else { continue };
            used.insert(owner);
            if owner == name {
                out.listeners.extend(e.api_listeners.iter().map(|l| item(l, Scope::ByName)));
            } else if let Some(o) = entries.get(owner) {
                let listeners = o.api_listeners_for(name, e.inputs.service.spec.port);
                out.listeners.extend(listeners.iter().map(|l| item(l, Scope::ByName)));
            }
        }
        let mut subsets: Vec<&Subset> = used.iter().filter_map(|o| entries.get(*o)).flat_map(|e| &e.subsets).collect();
        subsets.sort_by(|a, b| a.key.cmp(&b.key));
        subsets.dedup_by(|a, b| a.key == b.key);
        out.clusters.extend(subsets.iter().map(|s| item(&s.cluster, Scope::ByName)));
        out.endpoints.extend(subsets.iter().map(|s| item(&s.load_assignment, Scope::ByName)));
        out
    }
}

/// The resources of a snapshot, by type.
#[derive(Debug, Default)]
struct Items {
    listeners: Vec<Item>,
    routes: Vec<Item>,
    clusters: Vec<Item>,
    endpoints: Vec<Item>,
}

fn item(encoded: &services::Encoded, scope: Scope) -> Item {
    (encoded.name.clone(), encoded.any.clone(), scope)
}

/// `message` followed by `pieces` (encoded fields of it, key and length included) as an
/// encoded `Any` of `type_url`: protobuf reads the fields of a message in any order and
/// appends the entries of a repeated field, so this is `message` with the pieces in its
/// repeated field.
fn encode_any_with<'a, M: prost::Message>(
    type_url: &str,
    message: &M,
    pieces: impl Iterator<Item = &'a Bytes> + Clone,
) -> Bytes {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let len = message.encoded_len() + pieces.clone().map(Bytes::len).sum::<usize>();
    let mut buf = Vec::with_capacity(type_url.len() + len + 12);
    encode_key(1, WireType::LengthDelimited, &mut buf);
    encode_varint(type_url.len() as u64, &mut buf);
    buf.extend_from_slice(type_url.as_bytes());
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(len as u64, &mut buf);
    message.encode_raw(&mut buf);
    for piece in pieces {
        buf.extend_from_slice(piece);
    }
    buf.into()
}

/// Compares with the resources of the type in the previous snapshot (by their encoding, and
/// typed when the bytes differ: see [`same_encoding`]), assigns versions and replaces the
/// type's entry in `types` (left as it was, shared, when nothing changed).
fn update<M: prost::Message + Default + PartialEq>(
    items: Vec<Item>,
    version: &str,
    type_url: &'static str,
    types: &mut BTreeMap<&'static str, Arc<TypeSnapshot>>,
) {
    let before = types.get(type_url).cloned();
    let no_resources = BTreeMap::new();
    let prev = before.as_ref().map_or(&no_resources, |t| &t.resources);
    let mut out = BTreeMap::new();
    let mut changed_names = BTreeSet::new();
    // Whether an unscoped resource changed, and which services' scoped ones did.
    let mut changed = false;
    let mut changed_services = BTreeSet::new();
    let mut touched = |scope: &Scope, changed: &mut bool| match scope {
        Scope::Service(s) => {
            changed_services.insert(s.clone());
        }
        _ => *changed = true,
    };
    for (name, encoded, default_scope) in items {
        let scope = Scope::of(&name, default_scope);
        let resource = match prev.get(&name) {
            Some(r) if r.scope == scope && same_encoding::<M>(&r.encoded, &encoded) => r.clone(),
            Some(r) => {
                touched(&r.scope, &mut changed);
                touched(&scope, &mut changed);
                changed_names.insert(name.clone());
                Arc::new(XdsResource::new(name.clone(), version.to_owned(), encoded, scope))
            }
            None => {
                touched(&scope, &mut changed);
                changed_names.insert(name.clone());
                Arc::new(XdsResource::new(name.clone(), version.to_owned(), encoded, scope))
            }
        };
        out.insert(name, resource);
    }
    // What the previous snapshot has and this one does not was removed.
    for (name, r) in prev {
        if !out.contains_key(name) {
            touched(&r.scope, &mut changed);
            changed_names.insert(name.clone());
        }
    }
    let before = before.as_ref();
    if before.is_some() && !changed && changed_services.is_empty() {
        return;
    }
    let type_version = match before {
        Some(t) if !changed => t.version.clone(),
        _ => version.to_owned(),
    };
    let mut scoped: BTreeMap<String, String> = BTreeMap::new();
    for r in out.values() {
        if let Scope::Service(s) = &r.scope
            && !scoped.contains_key(s)
        {
            let v = match before.and_then(|t| t.scoped.get(s)) {
                Some(v) if !changed_services.contains(s) => v.clone(),
                _ => version.to_owned(),
            };
            scoped.insert(s.clone(), v);
        }
    }
    let since = before.map(|b| Since { previous: Arc::downgrade(b), changed: changed_names.into_iter().collect() });
    types.insert(type_url, Arc::new(TypeSnapshot { version: type_version, scoped, resources: out, since }));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod incremental_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests;
