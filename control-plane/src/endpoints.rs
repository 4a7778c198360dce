//! Endpoints that are not written in `Service` documents: workloads registered by their sidecar
//! (for as long as its xDS stream lives, plus a grace period) and by `POST /v1/endpoints` (with
//! a TTL), behind [`EndpointSource`]. With `--kubernetes` the cluster's endpoints come from
//! EndpointSlices instead, written into the Services that [`crate::kubernetes`] discovery
//! builds; registrations are merged into those as into any Service.
//!
//! A sidecar that has a workload identity registers its workload as meshed, with that SPIFFE ID:
//! callers then use mutual TLS and verify it. Without an identity (or through the API) the
//! endpoint is plaintext.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outrider_xds::{Endpoint, PolicySet};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where endpoints come from besides the policy documents.
pub trait EndpointSource: Send + Sync + std::fmt::Debug {
    /// Registered endpoints by service name.
    fn endpoints(&self) -> BTreeMap<String, Vec<Endpoint>>;
    /// Bumped whenever [`EndpointSource::endpoints`] changes.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// Who registered an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A sidecar's xDS stream (its node id).
    Sidecar(String),
    /// `POST /v1/endpoints`.
    Api,
}

/// One registration.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub id: u64,
    pub service: String,
    pub address: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub origin: Origin,
    /// The SPIFFE ID of the sidecar in front of the workload: meshed when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// An ambient workload (a node proxy registered it): callers reach it over HBONE.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hbone: bool,
    /// The node proxy serving the workload (its authenticated SPIFFE ID), in node mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Seconds until it expires; `None` while its stream is up.
    pub expires_in: Option<f64>,
    #[serde(skip)]
    expires: Option<Instant>,
    /// The xDS stream that registered it last (`None`: the API). Only that stream's end starts
    /// its grace period or removes it: a proxy that reconnected and registered the same
    /// workload on a new stream owns it, whatever its old stream does afterwards.
    #[serde(skip)]
    owner: Option<u64>,
}

/// Registrations from sidecars and the API.
#[derive(Debug)]
pub struct Registry {
    entries: Mutex<BTreeMap<u64, Registration>>,
    next_id: Mutex<u64>,
    changed: watch::Sender<u64>,
    /// How long a sidecar's registration outlives its stream.
    pub grace: Duration,
}

/// Longest TTL accepted over the API.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

impl Registry {
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(BTreeMap::new()),
            next_id: Mutex::new(1),
            changed: watch::channel(0).0,
            grace,
        })
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Add or refresh (same service, address and origin) a registration; returns its id.
    /// `owner`: the xDS stream registering it (it takes the registration over from an older
    /// stream of the same proxy), `None` for the API.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        service: &str,
        address: SocketAddr,
        labels: BTreeMap<String, String>,
        origin: Origin,
        ttl: Option<Duration>,
        identity: Option<String>,
        owner: Option<u64>,
    ) -> u64 {
        let expires = ttl.map(|t| Instant::now() + t);
        let mut entries = self.entries.lock();
        let existing =
            entries.values_mut().find(|r| r.service == service && r.address == address && r.origin == origin);
        let id = match existing {
            Some(r) => {
                r.labels = labels;
                r.expires = expires;
                r.identity = identity;
                r.owner = owner;
                r.id
            }
            None => {
                let mut next = self.next_id.lock();
                let id = *next;
                *next += 1;
                entries.insert(
                    id,
                    Registration {
                        id,
                        service: service.to_owned(),
                        address,
                        labels,
                        weight: 1,
                        origin,
                        identity,
                        hbone: false,
                        node: None,
                        expires_in: None,
                        expires,
                        owner,
                    },
                );
                id
            }
        };
        drop(entries);
        self.bump();
        id
    }

    /// Add or refresh a workload a node proxy serves: reached over HBONE, with its identity;
    /// `node` is the node proxy's authenticated identity (it may then get the workload's
    /// certificate). Port 0 stands for the service's port. `owner`: the xDS stream registering it.
    #[allow(clippy::too_many_arguments)]
    pub fn register_workload(
        &self,
        service: &str,
        address: SocketAddr,
        labels: BTreeMap<String, String>,
        origin: Origin,
        identity: String,
        node: Option<String>,
        owner: u64,
    ) -> u64 {
        let id = self.register(service, address, labels, origin, None, Some(identity), Some(owner));
        if let Some(r) = self.entries.lock().get_mut(&id) {
            r.hbone = true;
            r.node = node;
        }
        self.bump();
        id
    }

    /// Let a registration expire after `after` (the stream `owner` ended), unless another
    /// stream has registered it since.
    pub fn release(&self, id: u64, owner: u64, after: Duration) {
        if let Some(r) = self.entries.lock().get_mut(&id)
            && r.owner == Some(owner)
        {
            r.expires = Some(Instant::now() + after);
        }
    }

    /// Remove a registration of the stream `owner` (it left, or dropped the workload); false
    /// when there was none or another stream has registered it since.
    pub fn remove_owned(&self, id: u64, owner: u64) -> bool {
        let mut entries = self.entries.lock();
        let removed = entries.get(&id).is_some_and(|r| r.owner == Some(owner)) && entries.remove(&id).is_some();
        drop(entries);
        if removed {
            self.bump();
        }
        removed
    }

    /// Remove one registration; false when there was none.
    pub fn remove(&self, id: u64) -> bool {
        let removed = self.entries.lock().remove(&id).is_some();
        if removed {
            self.bump();
        }
        removed
    }

    /// Remove the registration of `address` for `service` by `origin`, if there is one.
    pub fn unregister(&self, service: &str, address: SocketAddr, origin: &Origin) -> bool {
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|_, r| !(r.service == service && r.address == address && r.origin == *origin));
        let removed = entries.len() != before;
        drop(entries);
        if removed {
            self.bump();
        }
        removed
    }

    /// Every registration, with the time left.
    pub fn list(&self) -> Vec<Registration> {
        let now = Instant::now();
        self.entries
            .lock()
            .values()
            .cloned()
            .map(|mut r| {
                r.expires_in = r.expires.map(|e| e.saturating_duration_since(now).as_secs_f64());
                r
            })
            .collect()
    }

    /// Drop what expired; true when something did.
    pub fn sweep(&self) -> bool {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|_, r| r.expires.is_none_or(|e| e > now));
        let swept = entries.len() != before;
        drop(entries);
        if swept {
            self.bump();
        }
        swept
    }

    /// Sweep expired registrations until the task is dropped.
    pub async fn expire_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.sweep() {
                tracing::info!("expired endpoint registrations removed");
            }
        }
    }
}

impl crate::ca::issuance::NodeWorkloads for Registry {
    fn hosts(&self, node: &str, workload: &str) -> bool {
        self.entries
            .lock()
            .values()
            .any(|r| r.hbone && r.node.as_deref() == Some(node) && r.identity.as_deref() == Some(workload))
    }
}

impl EndpointSource for Registry {
    fn endpoints(&self) -> BTreeMap<String, Vec<Endpoint>> {
        let mut out: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
        for r in self.entries.lock().values() {
            out.entry(r.service.clone()).or_default().push(Endpoint {
                address: r.address,
                labels: r.labels.clone(),
                weight: r.weight,
                meshed: r.identity.is_some(),
                identity: r.identity.clone(),
                hbone: r.hbone && r.identity.is_some(),
            });
        }
        out
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// The policy set with registered endpoints added to their services (unknown services are
/// skipped: a registration does not create a service).
pub fn merge(set: &PolicySet, registered: &BTreeMap<String, Vec<Endpoint>>) -> PolicySet {
    if registered.is_empty() {
        return set.clone();
    }
    let mut merged = set.clone();
    for (service, endpoints) in registered {
        if let Some(s) = merged.services.get_mut(service) {
            for e in endpoints {
                let mut e = e.clone();
                // A node proxy that did not say the workload's port: the service's.
                if e.address.port() == 0 {
                    e.address.set_port(s.spec.port);
                }
                if !s.spec.endpoints.iter().any(|have| have.address == e.address) {
                    s.spec.endpoints.push(e);
                }
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn registrations_expire_after_their_ttl_or_grace() {
        let r = Registry::new(Duration::from_secs(5));
        let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let api = r.register("a", addr, BTreeMap::new(), Origin::Api, Some(Duration::from_secs(2)), None, None);
        let side = r.register("b", addr, BTreeMap::new(), Origin::Sidecar("n".into()), None, None, Some(7));
        // Refreshing the same registration keeps its id.
        assert_eq!(r.register("a", addr, BTreeMap::new(), Origin::Api, Some(Duration::from_secs(2)), None, None), api);
        assert_eq!(r.endpoints().len(), 2);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(r.sweep());
        assert_eq!(r.endpoints().keys().collect::<Vec<_>>(), ["b"]);
        r.release(side, 7, r.grace);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!r.sweep(), "still within the grace period");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(r.sweep());
        assert!(r.endpoints().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_streams_end_never_expires_or_removes_a_newer_streams_registration() {
        let r = Registry::new(Duration::from_secs(5));
        let addr: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let node = || Origin::Sidecar("node-a".into());
        let spiffe = "spiffe://t/ns/default/sa/w".to_owned();
        let old = r.register_workload("w", addr, BTreeMap::new(), node(), spiffe.clone(), None, 1);
        // The node reconnects: its new stream (2) registers the same workload before the old
        // stream (1) is torn down. Same registration, now owned by stream 2.
        let new = r.register_workload("w", addr, BTreeMap::new(), node(), spiffe.clone(), None, 2);
        assert_eq!(old, new);
        // Then the old stream ends: by breaking (grace) or by leaving (removal).
        r.release(old, 1, r.grace);
        assert!(!r.remove_owned(old, 1));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!r.sweep(), "the newer stream's registration did not expire");
        assert_eq!(r.endpoints()["w"].len(), 1);
        // The owner's own end still counts.
        r.release(new, 2, r.grace);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(r.sweep());
        assert!(r.endpoints().is_empty());
        let again = r.register_workload("w", addr, BTreeMap::new(), node(), spiffe, None, 3);
        assert!(r.remove_owned(again, 3));
    }

    #[test]
    fn merge_adds_endpoints_to_known_services_only() {
        let set = outrider_xds::load_str(
            "t.yaml",
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: a}\nspec: {port: 80}\n",
        )
        .unwrap();
        let e = Endpoint {
            address: "127.0.0.1:1".parse().unwrap(),
            labels: BTreeMap::new(),
            weight: 1,
            meshed: false,
            identity: None,
            hbone: false,
        };
        let registered = BTreeMap::from([("a".to_owned(), vec![e.clone()]), ("zz".to_owned(), vec![e])]);
        let merged = merge(&set, &registered);
        assert_eq!(merged.services["a"].spec.endpoints.len(), 1);
        assert!(!merged.services.contains_key("zz"));
    }
}
