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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;

use envoy_types::pb::google::protobuf::Any;
use outrider_xds::PolicySet;
use outrider_xds::resources::{
    CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, LISTENER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL,
};
use prost::Message as _;
use tokio::time::Instant;

mod proxyless;

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

    /// Whether this resource is `message`, which encodes to `encoded`: equal bytes are, and
    /// so are different bytes that decode to an equal message (the generated Envoy types keep
    /// `Struct` and metadata maps in `HashMap`s, whose encoding order differs between maps).
    fn is<M: prost::Message + Default + PartialEq>(&self, encoded: &[u8], message: &M) -> bool {
        self.encoded.as_ref() == encoded
            || self.any().is_ok_and(|a| M::decode(a.value.as_slice()).is_ok_and(|m| m == *message))
    }
}

/// `message` as an encoded `Any` of `type_url`, in one pass.
pub(crate) fn encode_any<M: prost::Message>(type_url: &str, message: &M) -> Bytes {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(type_url.len() + len + 12);
    encode_key(1, WireType::LengthDelimited, &mut buf);
    encode_varint(type_url.len() as u64, &mut buf);
    buf.extend_from_slice(type_url.as_bytes());
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(len as u64, &mut buf);
    message.encode_raw(&mut buf);
    buf.into()
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
/// (compared with what the previous snapshot holds of each type).
#[derive(Debug, Default)]
pub struct Generator {
    types: BTreeMap<&'static str, Arc<TypeSnapshot>>,
}

impl Generator {
    pub fn new() -> Self {
        Self::default()
    }

    /// The snapshot of `set`.
    pub fn generate(&mut self, set: &PolicySet) -> Snapshot {
        let resources = outrider_xds::translate(set);
        self.generate_from(set, resources)
    }

    /// The snapshot of `set` translated to `resources` (tests add resources of their own).
    fn generate_from(&mut self, set: &PolicySet, mut resources: outrider_xds::Resources) -> Snapshot {
        let version = resources.version.clone();
        for cla in &mut resources.endpoints {
            proxyless::grpc_friendly_localities(cla);
        }
        let extra = proxyless::resources(set, &resources.routes, &resources.clusters, &resources.endpoints);
        let listeners = with_by_name(resources.listeners, extra.listeners, |l| l.name.clone());
        let routes = named(resources.routes, |r| r.name.clone());
        let clusters = with_by_name(resources.clusters, extra.clusters, |c| c.name.clone());
        let endpoints = with_by_name(resources.endpoints, extra.endpoints, |e| e.cluster_name.clone());

        let types = &mut self.types;
        update(listeners, &version, LISTENER_TYPE_URL, types);
        update(routes, &version, ROUTE_CONFIGURATION_TYPE_URL, types);
        update(clusters, &version, CLUSTER_TYPE_URL, types);
        update(endpoints, &version, CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, types);
        Snapshot { policy_version: version.clone(), version, types: types.clone(), created: Instant::now() }
    }
}

fn named<M>(items: Vec<M>, name: impl Fn(&M) -> String) -> Vec<(String, M, Scope)> {
    items.into_iter().map(|m| (name(&m), m, Scope::All)).collect()
}

/// `items` for everyone, `by_name` only for clients asking for them by name.
fn with_by_name<M>(items: Vec<M>, by_name: Vec<M>, name: impl Fn(&M) -> String) -> Vec<(String, M, Scope)> {
    let mut out = named(items, &name);
    out.extend(by_name.into_iter().map(|m| (name(&m), m, Scope::ByName)));
    out
}

/// Compares with the resources of the type in the previous snapshot (by their encoding, and
/// typed when the bytes differ: see [`XdsResource::is`]), assigns versions and replaces the
/// type's entry in `types` (left as it was, shared, when nothing changed). A message is
/// dropped once encoded: a snapshot holds only the encoded resources.
fn update<M: prost::Message + Default + PartialEq>(
    items: Vec<(String, M, Scope)>,
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
    for (name, message, default_scope) in items {
        let scope = Scope::of(&name, default_scope);
        let encoded = encode_any(type_url, &message);
        let resource = match prev.get(&name) {
            Some(r) if r.scope == scope && r.is(&encoded, &message) => r.clone(),
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
pub(crate) mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;

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
    fn api_listeners_are_named_after_grpc_targets_and_served_by_name_only() {
        let snapshot = Generator::new().generate(&set(90));
        let listeners = &snapshot.get(LISTENER_TYPE_URL).unwrap().resources;
        assert_eq!(listeners["outbound"].scope, Scope::All);
        for name in ["a", "a:80", "b", "b:90"] {
            assert_eq!(listeners[name].scope, Scope::ByName, "{name}");
        }
        let cla = &snapshot.get(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL).unwrap().resources;
        let decoded: ClusterLoadAssignment = outrider_xds::resources::decode_any(
            CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
            &cla["outbound|80||a"].any().unwrap(),
        )
        .unwrap();
        assert_eq!(
            decoded.endpoints[0].load_balancing_weight,
            Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 })
        );
    }

    /// The translation of `set` plus an inbound listener per `(service, stat prefix)` (as the
    /// translation will add them, with the set's version covering them).
    pub(crate) fn with_inbound(g: &mut Generator, set: &PolicySet, inbound: &[(&str, &str)]) -> Snapshot {
        let mut resources = outrider_xds::translate(set);
        // Only the injected inbound listeners, so the test controls exactly which ones change.
        resources.listeners.retain(|l| !l.name.starts_with(INBOUND_PREFIX));
        resources.version = format!("{}-{inbound:?}", resources.version);
        for (service, marker) in inbound {
            resources.listeners.push(Listener {
                name: format!("{INBOUND_PREFIX}{service}"),
                stat_prefix: (*marker).to_owned(),
                ..Default::default()
            });
        }
        g.generate_from(set, resources)
    }

    #[test]
    fn inbound_listeners_are_scoped_and_versioned_per_service() {
        let mut g = Generator::new();
        let first = with_inbound(&mut g, &set(90), &[("a", "1"), ("b", "1")]);
        let l1 = first.get(LISTENER_TYPE_URL).unwrap().clone();
        assert_eq!(l1.resources["inbound|a"].scope, Scope::Service("a".into()));
        assert_eq!(l1.resources["inbound|b"].scope, Scope::Service("b".into()));
        assert_eq!(l1.view_version("c"), l1.version, "no scoped resources: the type's version");

        // b's inbound listener changes: a's view and the type's version stay; b's moves.
        let second = with_inbound(&mut g, &set(90), &[("a", "1"), ("b", "2")]);
        let l2 = second.get(LISTENER_TYPE_URL).unwrap();
        assert_eq!(l2.version, l1.version);
        assert_eq!(l2.view_version("a"), l1.view_version("a"));
        assert_ne!(l2.view_version("b"), l1.view_version("b"));
        assert!(Arc::ptr_eq(&l1.resources["inbound|a"], &l2.resources["inbound|a"]), "unchanged: reused");
        // Other types did not change at all: the same shared type snapshot.
        assert!(Arc::ptr_eq(first.get(CLUSTER_TYPE_URL).unwrap(), second.get(CLUSTER_TYPE_URL).unwrap()));

        // b's inbound listener goes away: b's view falls back to the shared part.
        let third = with_inbound(&mut g, &set(90), &[("a", "1")]);
        let l3 = third.get(LISTENER_TYPE_URL).unwrap();
        assert_eq!(l3.view_version("b"), l3.version);
        assert_eq!(l3.view_version("a"), l1.view_version("a"));
    }

    #[test]
    fn a_resource_is_a_message_whose_encoding_differs_only_in_order() {
        use envoy_types::pb::google::protobuf::Duration;
        let full = Cluster {
            name: "c".into(),
            connect_timeout: Some(Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        };
        let encoded = encode_any(CLUSTER_TYPE_URL, &full);
        let r = XdsResource::new("c".into(), "1".into(), encoded.clone(), Scope::All);
        assert!(r.is(&encoded, &full));
        // Served before: the same message with its fields in another order (as the entries of
        // two equal maps may come).
        let (timeout, name) = (
            Cluster { connect_timeout: full.connect_timeout, ..Default::default() },
            Cluster { name: full.name.clone(), ..Default::default() },
        );
        let value = [timeout.encode_to_vec(), name.encode_to_vec()].concat();
        let reordered = Any { type_url: CLUSTER_TYPE_URL.into(), value }.encode_to_vec();
        assert_ne!(reordered, encoded.as_ref());
        let served = XdsResource::new("c".into(), "1".into(), reordered.into(), Scope::All);
        assert!(served.is(&encoded, &full));
        let other = Cluster { name: "d".into(), ..full.clone() };
        assert!(!served.is(&encode_any(CLUSTER_TYPE_URL, &other), &other));
        assert!(!r.is(&encode_any(CLUSTER_TYPE_URL, &other), &other));
    }

    #[test]
    fn encoded_entries_decode_as_response_resources() {
        use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
        let snapshot = Generator::new().generate(&set(90));
        let r = &snapshot.get(CLUSTER_TYPE_URL).unwrap().resources["outbound|80||a"];
        let entry = |head: &[u8]| [head, r.encoded().as_ref()].concat();
        let any = r.any().unwrap();
        assert_eq!(any.type_url, CLUSTER_TYPE_URL);
        let cluster = Cluster::decode(any.value.as_slice()).unwrap();
        assert_eq!(cluster.name, "outbound|80||a");
        let sotw = DiscoveryResponse::decode(entry(r.sotw_head()).as_slice()).unwrap();
        assert_eq!(sotw.resources, vec![any.clone()]);
        let delta = DeltaDiscoveryResponse::decode(entry(r.delta_head()).as_slice()).unwrap();
        assert_eq!(delta.resources[0].name, "outbound|80||a");
        assert_eq!(delta.resources[0].version, r.version);
        assert_eq!(delta.resources[0].resource.as_ref(), Some(&any));
    }
}
