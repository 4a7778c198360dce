//! Each service's resources, encoded, kept beside the [`ServiceInputs`] they were translated
//! from: the next policy set translates and encodes again only the services whose inputs differ
//! (a changed EndpointSlice is one service's load assignment, not 5,000 services' resources).
//!
//! The inputs are everything `outrider_xds::translate::service` reads, compared by value, so a
//! kept entry is exactly what translating its service again would give; nothing depends on
//! guessing what a change touched. The outbound listener and route configuration, which hold
//! a piece of every service, are put together from the kept pieces (see [`super::Generator`]).

use std::collections::BTreeSet;

use bytes::Bytes;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use outrider_xds::resources::{CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, CLUSTER_TYPE_URL, LISTENER_TYPE_URL};
use outrider_xds::translate::ServiceInputs;
use prost::Message;

use super::{encode_any, proxyless, same_encoding};

/// `Listener.filter_chains` and `RouteConfiguration.virtual_hosts`: the fields the outbound
/// listener and route configuration hold a piece of each service in.
pub(super) const FILTER_CHAINS_FIELD: u32 = 3;
pub(super) const VIRTUAL_HOSTS_FIELD: u32 = 2;

/// A resource's name and its encoded `Any`.
#[derive(Debug, Clone)]
pub(super) struct Encoded {
    pub name: String,
    pub any: Bytes,
}

/// The cluster and load assignment of one subset a split of the service selects (served to
/// gRPC proxyless clients).
#[derive(Debug)]
pub(super) struct Subset {
    pub key: proxyless::SubsetKey,
    pub cluster: Encoded,
    pub load_assignment: Encoded,
}

/// One service's resources, translated from [`Entry::inputs`].
#[derive(Debug)]
pub(super) struct Entry {
    pub inputs: ServiceInputs<'static>,
    pub cluster: Encoded,
    pub load_assignment: Encoded,
    pub inbound: Encoded,
    /// Its entry in the outbound listener's `filter_chains` (key, length, `FilterChain`).
    pub filter_chain: Option<Bytes>,
    /// Its entry in the outbound route configuration's `virtual_hosts`.
    pub virtual_host: Option<Bytes>,
    /// The domains of its virtual host (empty without one).
    pub domains: Vec<String>,
    /// The API listeners named after it with its own virtual host inline: what gRPC clients
    /// get when its virtual host is the first whose domains include its name.
    pub api_listeners: Vec<Encoded>,
    /// The subsets its virtual host's splits select.
    pub subsets: Vec<Subset>,
}

impl Entry {
    /// Translate and encode the service of `inputs`. Where `previous` (the entry this one
    /// replaces) has a resource equal to the new one but encoded otherwise (the generated types
    /// keep some maps in `HashMap`s), its bytes are kept, so that unchanged resources keep
    /// unchanged bytes.
    pub fn build(inputs: ServiceInputs<'static>, previous: Option<&Entry>) -> Self {
        let mut translated = outrider_xds::translate::service(&inputs);
        proxyless::grpc_friendly_localities(&mut translated.load_assignment);
        let prev = |pick: fn(&Entry) -> &Encoded| previous.map(pick);
        let cluster = resource(CLUSTER_TYPE_URL, &translated.cluster.name, &translated.cluster, prev(|e| &e.cluster));
        let load_assignment = resource(
            CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
            &translated.load_assignment.cluster_name,
            &translated.load_assignment,
            prev(|e| &e.load_assignment),
        );
        let inbound = resource(LISTENER_TYPE_URL, &translated.inbound.name, &translated.inbound, prev(|e| &e.inbound));
        let filter_chain = translated
            .filter_chain
            .as_ref()
            .map(|chain| piece::<Listener>(FILTER_CHAINS_FIELD, chain, previous.and_then(|e| e.filter_chain.as_ref())));
        let virtual_host = translated.virtual_host.as_ref().map(|vh| {
            piece::<RouteConfiguration>(VIRTUAL_HOSTS_FIELD, vh, previous.and_then(|e| e.virtual_host.as_ref()))
        });
        let mut entry = Self {
            cluster,
            load_assignment,
            inbound,
            filter_chain,
            virtual_host,
            domains: Vec::new(),
            api_listeners: Vec::new(),
            subsets: Vec::new(),
            inputs,
        };
        if let Some(vhost) = translated.virtual_host {
            entry.domains = vhost.domains.clone();
            let (vhost, keys) = rewritten(vhost);
            let service = &*entry.inputs.service;
            let prev_listeners = previous.map_or(&[][..], |e| &e.api_listeners);
            entry.api_listeners = proxyless::api_listeners(service.name(), service.spec.port, vhost)
                .iter()
                .map(|l| {
                    let prev = prev_listeners.iter().find(|p| p.name == l.name);
                    resource(LISTENER_TYPE_URL, &l.name, l, prev)
                })
                .collect();
            let prev_subsets = previous.map_or(&[][..], |e| &e.subsets);
            entry.subsets = keys
                .into_iter()
                .map(|key| {
                    let name = proxyless::subset_cluster_name(&key.0, &key.1);
                    let prev = prev_subsets.iter().find(|s| s.key == key);
                    let cluster = proxyless::subset_cluster(&translated.cluster, &name);
                    let cla = proxyless::subset_endpoints(&translated.load_assignment, &name, &key.1);
                    Subset {
                        cluster: resource(CLUSTER_TYPE_URL, &name, &cluster, prev.map(|s| &s.cluster)),
                        load_assignment: resource(
                            CLUSTER_LOAD_ASSIGNMENT_TYPE_URL,
                            &name,
                            &cla,
                            prev.map(|s| &s.load_assignment),
                        ),
                        key,
                    }
                })
                .collect();
        }
        entry
    }

    /// The API listeners named after `name` (of `port`) with this service's virtual host
    /// inline: for a service whose name another service's virtual host claims first. Translated
    /// again from the kept inputs (rare: only services with `hosts` of their own do this).
    pub fn api_listeners_for(&self, name: &str, port: u16) -> Vec<Encoded> {
        let Some(vhost) = outrider_xds::translate::service(&self.inputs).virtual_host else {
            return Vec::new();
        };
        proxyless::api_listeners(name, port, rewritten(vhost).0)
            .iter()
            .map(|l| Encoded { name: l.name.clone(), any: encode_any(LISTENER_TYPE_URL, l) })
            .collect()
    }
}

/// `vhost` as gRPC clients get it, and the subsets it selects.
fn rewritten(vhost: VirtualHost) -> (VirtualHost, BTreeSet<proxyless::SubsetKey>) {
    let mut keys = BTreeSet::new();
    let vhost = proxyless::with_subset_clusters(vhost, &mut keys);
    (vhost, keys)
}

/// `message` encoded; `previous`'s bytes when it is the same resource, equal but encoded
/// otherwise.
fn resource<M: Message + Default + PartialEq>(
    type_url: &str,
    name: &str,
    message: &M,
    previous: Option<&Encoded>,
) -> Encoded {
    let any = encode_any(type_url, message);
    match previous {
        Some(p) if p.name == name && same_encoding::<M>(&p.any, &any) => p.clone(),
        _ => Encoded { name: name.to_owned(), any },
    }
}

/// `message` as an entry of field `field` of the aggregate `A`; `previous` when it decodes to
/// the same.
fn piece<A: Message + Default + PartialEq>(field: u32, message: &impl Message, previous: Option<&Bytes>) -> Bytes {
    let mut buf = Vec::with_capacity(message.encoded_len() + 8);
    prost::encoding::message::encode(field, message, &mut buf);
    let bytes = Bytes::from(buf);
    match previous {
        Some(p)
            if p == &bytes || A::decode(p.as_ref()).is_ok_and(|a| A::decode(bytes.as_ref()).is_ok_and(|b| a == b)) =>
        {
            p.clone()
        }
        _ => bytes,
    }
}
