//! The config snapshot the data path reads: built from Envoy v3 resources off
//! the hot path, validated, then swapped in with one `ArcSwap::store`. State that
//! must outlive a snapshot (latency estimates, connection pools, breaker state,
//! outlier ejections) is keyed by cluster and endpoint and carried over while they
//! still exist.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use tokio::sync::watch;

use crate::balance::{Balanced, Balancer, LbPolicy, PeakEwma};
use crate::http::client::{EndpointPool, UpstreamProtocol};
use crate::policy::breaker::{ClusterThresholds, EndpointBreaker, ServiceBreaker};
use crate::policy::budget::RetryBudget;
use crate::policy::config::{ClusterPolicy, RoutePolicy};
use crate::policy::outlier::{ClusterOutliers, EndpointHealth};

mod build;
mod lb;
mod policy;
mod telemetry;

pub use build::{Builder, Rejection, inbound_policy};

/// One consistent view of the configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Version of each resource type, as received.
    pub versions: Versions,
    /// Outbound listener: original destination → what to do.
    pub outbound: OutboundMatch,
    /// HTTP virtual hosts by lower-cased domain (`name`, `name:port`, `vip:port`, ...).
    pub vhosts: HashMap<Box<str>, Arc<VirtualHost>>,
    pub clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
    /// Inbound mTLS mode and authorization, by service (`inbound|SERVICE` listeners).
    pub inbound: HashMap<Arc<str>, Arc<crate::authz::InboundPolicy>>,
    /// What `/config_dump` shows of it (see [`Snapshot::dump`]).
    pub dump: Dump,
    /// Tracing settings of a `Telemetry` policy, if one is in force (read by the
    /// tracer per request; `None`: the `OTEL_*` environment's).
    pub tracing: Option<crate::telemetry::trace::Pushed>,
}

/// Versions of single resources as received, by `/config_dump` section (`listeners`, `routes`,
/// `clusters`, `endpoints`) and resource name: Delta xDS gives each resource its own; SotW and
/// the policy file only a version per type.
pub type ResourceVersions = BTreeMap<&'static str, BTreeMap<String, String>>;

/// The `/config_dump` view of a snapshot: a JSON rendering of every resource.
///
/// As a `serde_json` tree the view is larger than the snapshot it describes (about 0.5 MB for 50
/// Services) and is rarely asked for, so where the resources are kept anyway — the xDS source
/// keeps the latest of every type to build the next snapshot from — it is rendered from them on
/// request instead of being kept.
#[derive(Debug, Default)]
pub enum Dump {
    /// No view: a node proxy's workload stores, fed the same config as the node's own store,
    /// which has the view.
    #[default]
    None,
    /// Built with the snapshot (the `--policy` file, whose resources are not kept).
    Built(serde_json::Value),
    /// Rendered on request from the resources the snapshot was built from, with each
    /// resource's own version (by `/config_dump` section and name).
    Lazy { resources: Arc<outrider_xds::Resources>, resource_versions: Arc<ResourceVersions> },
}

/// The `/config_dump` sections, and the field that names a resource in each.
const DUMP_SECTIONS: [(&str, &str); 4] =
    [("listeners", "name"), ("routes", "name"), ("clusters", "name"), ("endpoints", "cluster_name")];

impl Snapshot {
    /// The `/config_dump` view (`null` when the snapshot has none); a [`Dump::Lazy`] one is
    /// rendered now, by building a throw-away snapshot of the same resources.
    pub fn dump(&self) -> serde_json::Value {
        match &self.dump {
            Dump::None => serde_json::Value::Null,
            Dump::Built(view) => view.clone(),
            Dump::Lazy { resources, resource_versions } => {
                let (mut rendered, _) = Builder::new().build(resources);
                rendered.versions = self.versions.clone();
                rendered.stamp_versions(resource_versions);
                match rendered.dump {
                    Dump::Built(view) => view,
                    Dump::None | Dump::Lazy { .. } => serde_json::Value::Null,
                }
            }
        }
    }

    /// Writes into a [`Dump::Built`] view the version of each type (from `versions`) and of
    /// each resource (from `resources`, else its type's).
    pub fn stamp_versions(&mut self, resources: &ResourceVersions) {
        for (section, key) in DUMP_SECTIONS {
            let type_version = match section {
                "listeners" => &self.versions.listeners,
                "routes" => &self.versions.routes,
                "clusters" => &self.versions.clusters,
                _ => &self.versions.endpoints,
            };
            let Dump::Built(view) = &mut self.dump else { return };
            let Some(dump) = view.get_mut(section).and_then(serde_json::Value::as_object_mut) else { continue };
            dump.insert("version".into(), type_version.clone().into());
            let Some(list) = dump.get_mut("resources").and_then(serde_json::Value::as_array_mut) else { continue };
            for resource in list.iter_mut().filter_map(serde_json::Value::as_object_mut) {
                let name = resource.get(key).and_then(serde_json::Value::as_str).unwrap_or_default();
                let version = resources.get(section).and_then(|r| r.get(name)).unwrap_or(type_version);
                resource.insert("version".into(), version.clone().into());
            }
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Versions {
    pub listeners: String,
    pub routes: String,
    pub clusters: String,
    pub endpoints: String,
}

/// What a connection to an original destination is.
#[derive(Clone, Debug)]
pub enum Target {
    /// An HTTP service: serve HTTP, with this virtual host when Host names none.
    Http(Arc<VirtualHost>),
    /// An opaque TCP service.
    Tcp(Arc<Cluster>),
}

#[derive(Debug, Default)]
pub struct OutboundMatch {
    pub exact: HashMap<SocketAddr, Target>,
    pub ranges: Vec<(IpRange, Option<u16>, Target)>,
}

#[derive(Clone, Copy, Debug)]
pub struct IpRange {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl OutboundMatch {
    pub fn lookup(&self, dst: SocketAddr) -> Option<&Target> {
        let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        if let Some(t) = self.exact.get(&dst) {
            return Some(t);
        }
        self.ranges
            .iter()
            .find(|(range, port, _)| port.is_none_or(|p| p == dst.port()) && range.contains(dst.ip()))
            .map(|(_, _, t)| t)
    }
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: Arc<str>,
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// Timeout, retries and faults of this route.
    pub policy: Arc<RoutePolicy>,
    pub path: PathMatch,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub splits: Vec<Split>,
    pub total_weight: u32,
}

impl Route {
    pub fn matches<B>(&self, req: &http::Request<B>) -> bool {
        let path = req.uri().path();
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        };
        path_ok && self.headers.iter().all(|(n, v)| req.headers().get_all(n).iter().any(|have| have == v))
    }

    /// Pick a split by weight.
    pub fn pick_split(&self) -> Option<&Split> {
        match self.splits.len() {
            0 => None,
            1 => self.splits.first(),
            _ => {
                let mut r = fastrand::u32(..self.total_weight.max(1));
                for s in &self.splits {
                    if r < s.weight {
                        return Some(s);
                    }
                    r -= s.weight;
                }
                self.splits.last()
            }
        }
    }
}

#[derive(Debug)]
pub struct Split {
    pub cluster: Arc<Cluster>,
    pub weight: u32,
    pub subset: Option<BTreeMap<String, String>>,
    /// The endpoints of the cluster that carry the subset's labels.
    pub endpoints: Arc<Balancer<Arc<Endpoint>>>,
    /// Where requests go when every endpoint of this split is open (the cluster's
    /// `fallback`, resolved; `None` when it has none or it is this very subset).
    pub fallback: Option<Arc<Fallback>>,
    /// The request metric series of this split's route and service, resolved by its first
    /// request (fresh with every snapshot).
    pub series: Arc<crate::telemetry::metrics::SeriesCell>,
}

/// A resolved fallback: the endpoints of `cluster` that carry the fallback's labels.
#[derive(Debug)]
pub struct Fallback {
    /// The cluster whose settings (connect timeout, protocol, pool, thresholds, breaker,
    /// outlier detection) the fallback request uses: this service's, or another's.
    pub cluster: Arc<Cluster>,
    pub endpoints: Arc<Balancer<Arc<Endpoint>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterProtocol {
    Http1,
    Http2,
    Tcp,
}

impl ClusterProtocol {
    pub fn upstream(self) -> UpstreamProtocol {
        match self {
            ClusterProtocol::Http2 => UpstreamProtocol::Http2,
            _ => UpstreamProtocol::Http1,
        }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    /// Service name, the `service` metrics label.
    pub service: Arc<str>,
    pub protocol: ClusterProtocol,
    pub connect_timeout: Duration,
    pub lb: LbPolicy,
    pub endpoints: Arc<Balancer<Arc<Endpoint>>>,
    /// Thresholds, breaker, budget and outlier detection.
    pub policy: ClusterPolicy,
    /// Their live state, carried across snapshots.
    pub state: Arc<ClusterState>,
}

/// A cluster's resilience state that outlives snapshots.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// The live counts behind the thresholds (maxRequests, …), per cluster as in Envoy.
    pub counters: Arc<ClusterThresholds>,
    /// The state machine of `scope: service` (unused with `scope: endpoint`).
    pub breaker: ServiceBreaker,
    pub budget: RetryBudget,
    pub outliers: ClusterOutliers,
    /// What it did since the last load report.
    pub load: crate::load_report::ClusterLoad,
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
    pub meshed: bool,
    /// The SPIFFE ID a meshed endpoint's sidecar must present; callers use mTLS when set.
    pub identity: Option<crate::tls::Identity>,
    /// An ambient workload behind a node proxy: reached over HBONE on `IP:15008`.
    pub hbone: bool,
    /// `NAMESPACE/SERVICE_ACCOUNT` of `identity`, made once per snapshot: node mode's
    /// `peer_workload` label of the requests it answers.
    pub workload: Option<Arc<str>>,
    pub shared: Arc<EndpointShared>,
}

/// Per-endpoint state that survives config changes (keyed by cluster and address).
#[derive(Debug)]
pub struct EndpointShared {
    pub ewma: PeakEwma,
    pub pool: Arc<EndpointPool>,
    pub health: EndpointHealth,
    /// What it did since the last load report.
    pub load: crate::load_report::EndpointLoad,
    /// The state machine of `scope: endpoint` (unused with `scope: service`).
    pub breaker: EndpointBreaker,
}

impl Balanced for Endpoint {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> &PeakEwma {
        &self.shared.ewma
    }
}

/// The handle every part of the proxy shares: the current snapshot, readiness,
/// and a channel that says when it changed.
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<Snapshot>,
    ready: AtomicBool,
    changed: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            ready: AtomicBool::new(false),
            changed: watch::channel(0).0,
        }
    }

    /// The snapshot in force (one atomic load).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swap in a new snapshot; the first one makes the proxy ready.
    pub fn apply(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.ready.store(true, Ordering::Release);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
