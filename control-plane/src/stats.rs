//! Load reports from the proxies (LRS, [`lrs`]) merged per service, subset (endpoint labels)
//! and endpoint: running totals for exact differences (what a rollout check reads) and
//! 10-second windows over the last 15 minutes (what `GET /v1/stats` and history read).
//!
//! Only endpoints of the mesh are kept: a report about a cluster or an endpoint the control
//! plane does not serve is dropped, so the number of series is bounded by the mesh's endpoints
//! (plus those removed within the last 15 minutes, kept until their windows age out). A series
//! costs its running histogram (105 buckets × 8 bytes) plus, per window that saw traffic, 48
//! bytes and 4 bytes per non-empty latency bucket — at most 90 × (48 + 105 × 4) ≈ 42 KB with
//! every bucket of every window in use. docs/control-plane.md has the bound for 2,000 proxies ×
//! 1,000 services and its measurement.

pub mod lrs;
pub mod mesh;
mod series;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterStats, UpstreamEndpointStats};
use outrider_xds::PolicySet;
use outrider_xds::latency::{EJECTED_METRIC, EWMA_METRIC, LATENCY_SUM_METRIC, parse_bucket_metric};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

pub use mesh::{EdgeView, MeshView, NodeView, ResilienceView};
pub use series::{Aggregate, Sample, Series, WINDOW_SECS, WINDOWS};

/// Endpoint labels.
pub type Labels = BTreeMap<String, String>;

/// How often proxies report when nothing asks for more (`--load-report-interval`).
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest interval a running rollout may ask for.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(200);
/// Distinct reporting nodes remembered (for `reportingProxies`); more are counted but not named.
pub const MAX_REPORTERS: usize = 65_536;
/// Longest window a query may ask for.
pub const MAX_WINDOW: Duration = Duration::from_secs(WINDOW_SECS * WINDOWS as u64);

/// Why a report, or part of one, was not counted (the `reason` of the dropped counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// A cluster the control plane does not serve.
    UnknownCluster,
    /// An endpoint that is not (or no longer) one of its service's.
    UnknownEndpoint,
    /// No readable address.
    BadAddress,
    /// A new source → destination edge past [`mesh::MAX_EDGES`].
    EdgeLimit,
}

impl Dropped {
    pub fn label(self) -> &'static str {
        match self {
            Dropped::UnknownCluster => "unknown-cluster",
            Dropped::UnknownEndpoint => "unknown-endpoint",
            Dropped::BadAddress => "bad-address",
            Dropped::EdgeLimit => "edge-limit",
        }
    }
}

/// One endpoint of a service, as tracked.
#[derive(Debug)]
struct Entry {
    labels: Arc<Labels>,
    series: Series,
    /// The last reported peak-EWMA latency estimate, ms, and when.
    ewma: Option<(f64, Instant)>,
    /// Until when a reporting proxy has it ejected (the latest end reported).
    ejected_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    /// service → endpoint → numbers.
    services: BTreeMap<String, BTreeMap<SocketAddr, Entry>>,
    /// The mesh's endpoints now: service → address → labels.
    mesh: HashMap<String, HashMap<SocketAddr, Arc<Labels>>>,
    /// Cluster name → service.
    clusters: HashMap<String, String>,
    /// Node id → last report.
    reporters: HashMap<String, Instant>,
    /// Faster intervals asked for (by running rollouts), by who asked.
    fast: BTreeMap<String, Duration>,
    /// Source → destination edges and resilience, for the dashboard.
    calls: mesh::MeshState,
}

/// The aggregated load reports.
#[derive(Debug)]
pub struct Stats {
    inner: Mutex<Inner>,
    base_interval: Duration,
    interval: watch::Sender<Duration>,
    metrics: crate::metrics::Metrics,
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The window of `unix` seconds.
pub fn slot_of(unix: u64) -> u64 {
    unix / WINDOW_SECS
}

impl Stats {
    /// Proxies are asked to report every `interval` (shorter while a rollout asks).
    pub fn new(interval: Duration, metrics: crate::metrics::Metrics) -> Arc<Self> {
        let interval = interval.max(MIN_REPORT_INTERVAL);
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            base_interval: interval,
            interval: watch::channel(interval).0,
            metrics,
        })
    }

    /// The interval proxies are asked to report at, and its changes.
    pub fn report_interval(&self) -> watch::Receiver<Duration> {
        self.interval.subscribe()
    }

    /// `who` (a running rollout) needs reports at least every `interval`; `None` withdraws it.
    pub fn want_interval(&self, who: &str, interval: Option<Duration>) {
        let mut inner = self.inner.lock();
        match interval {
            Some(d) => inner.fast.insert(who.to_owned(), d.max(MIN_REPORT_INTERVAL)),
            None => inner.fast.remove(who),
        };
        let effective = inner.fast.values().copied().chain([self.base_interval]).min().unwrap_or(self.base_interval);
        self.interval.send_if_modified(|now| {
            let changed = *now != effective;
            *now = effective;
            changed
        });
    }

    /// The mesh changed (policies or registered endpoints): which clusters and endpoints count.
    pub fn update_mesh(&self, set: &PolicySet) {
        let mut mesh: HashMap<String, HashMap<SocketAddr, Arc<Labels>>> = HashMap::new();
        let mut clusters = HashMap::new();
        for (name, service) in &set.services {
            clusters.insert(outrider_xds::resources::cluster_name(name, service.spec.port), name.clone());
            let endpoints = mesh.entry(name.clone()).or_default();
            for e in &service.spec.endpoints {
                endpoints.insert(e.address, Arc::new(e.labels.clone()));
            }
        }
        let mut inner = self.inner.lock();
        // Labels follow the endpoint (a re-registration may change them).
        for (service, entries) in inner.services.iter_mut() {
            if let Some(now) = mesh.get(service) {
                for (addr, entry) in entries.iter_mut() {
                    if let Some(labels) = now.get(addr) {
                        entry.labels = labels.clone();
                    }
                }
            }
        }
        inner.mesh = mesh;
        inner.clusters = clusters;
        Self::sweep(&mut inner, slot_of(unix_now()));
    }

    /// Forget windows older than 15 minutes and endpoints that left the mesh and have none.
    fn sweep(inner: &mut Inner, now_slot: u64) {
        inner.calls.sweep(now_slot);
        let Inner { services, mesh, .. } = inner;
        services.retain(|service, entries| {
            let known = mesh.get(service);
            entries.retain(|addr, entry| {
                entry.series.expire(now_slot);
                known.is_some_and(|k| k.contains_key(addr)) || !entry.series.is_idle()
            });
            !entries.is_empty()
        });
    }

    /// Run the sweep every window until the task is dropped.
    pub async fn sweep_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(WINDOW_SECS));
        loop {
            tick.tick().await;
            let mut inner = self.inner.lock();
            Self::sweep(&mut inner, slot_of(unix_now()));
            let now = Instant::now();
            inner.reporters.retain(|_, seen| now.duration_since(*seen) < MAX_WINDOW);
            self.metrics.stats_series.set(inner.services.values().map(|e| e.len() as i64).sum());
        }
    }

    /// Count one report of `node`, a proxy of service `source` (empty: unknown).
    pub fn ingest(&self, node: &str, source: &str, report: &[ClusterStats]) {
        self.ingest_at(node, source, slot_of(unix_now()), report);
    }

    /// [`Stats::ingest`] as if it arrived in window `slot`.
    pub fn ingest_at(&self, node: &str, source: &str, slot: u64, report: &[ClusterStats]) {
        let mut dropped: Vec<Dropped> = Vec::new();
        {
            let mut inner = self.inner.lock();
            let now = Instant::now();
            if let Some(seen) = inner.reporters.get_mut(node) {
                *seen = now;
            } else if !node.is_empty() && inner.reporters.len() < MAX_REPORTERS {
                inner.reporters.insert(node.to_owned(), now);
            }
            let Inner { services, mesh, clusters, calls, .. } = &mut *inner;
            for cluster in report {
                let Some(service) = clusters.get(&cluster.cluster_name) else {
                    dropped.push(Dropped::UnknownCluster);
                    continue;
                };
                if !calls.ingest(node, source, service, slot, cluster) {
                    dropped.push(Dropped::EdgeLimit);
                }
                let known = mesh.get(service);
                for locality in &cluster.upstream_locality_stats {
                    for stats in &locality.upstream_endpoint_stats {
                        let Some(addr) = endpoint_address(stats) else {
                            dropped.push(Dropped::BadAddress);
                            continue;
                        };
                        let Some(labels) = known.and_then(|k| k.get(&addr)) else {
                            dropped.push(Dropped::UnknownEndpoint);
                            continue;
                        };
                        let entry = services.entry(service.clone()).or_default().entry(addr).or_insert_with(|| Entry {
                            labels: labels.clone(),
                            series: Series::default(),
                            ewma: None,
                            ejected_until: None,
                        });
                        entry.series.add(slot, &sample_of(stats));
                        for m in &stats.load_metric_stats {
                            let v = m.total_metric_value;
                            if !v.is_finite() || v < 0.0 {
                                continue;
                            }
                            if m.metric_name == EWMA_METRIC {
                                entry.ewma = Some((v, now));
                            } else if m.metric_name == EJECTED_METRIC {
                                let until = now + Duration::from_secs_f64(v.min(MAX_WINDOW.as_secs_f64()));
                                entry.ejected_until = Some(entry.ejected_until.map_or(until, |u| u.max(until)));
                            }
                        }
                    }
                }
            }
        }
        self.metrics.load_reports.inc();
        for d in dropped {
            self.metrics.load_reports_dropped.get_or_create(&crate::metrics::ReasonLabels { reason: d.label() }).inc();
        }
    }

    /// How many endpoints of `service` in the mesh now carry the labels of `subset`.
    pub fn endpoints_matching(&self, service: &str, subset: &Labels) -> usize {
        let inner = self.inner.lock();
        inner.mesh.get(service).map_or(0, |eps| eps.values().filter(|l| selects(subset, l)).count())
    }

    /// Names of the clusters reports are taken for.
    pub fn cluster_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.lock().clusters.keys().cloned().collect();
        names.sort();
        names
    }

    /// Proxies that reported within the last three intervals.
    pub fn reporting_proxies(&self) -> usize {
        let horizon = *self.interval.borrow() * 3 + self.base_interval;
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.reporters.retain(|_, seen| now.duration_since(*seen) <= horizon.max(Duration::from_secs(60)));
        inner.reporters.values().filter(|seen| now.duration_since(**seen) <= horizon).count()
    }

    /// Running totals of each endpoint of `service` whose labels include `subset`.
    pub fn totals(&self, service: &str, subset: &Labels) -> BTreeMap<SocketAddr, Aggregate> {
        let inner = self.inner.lock();
        let Some(entries) = inner.services.get(service) else { return BTreeMap::new() };
        entries
            .iter()
            .filter(|(_, e)| selects(subset, &e.labels))
            .map(|(addr, e)| (*addr, e.series.total().clone()))
            .collect()
    }

    /// The sum over endpoints of (totals now − `baseline`): what happened since the baseline
    /// was taken (endpoints new since then count whole).
    pub fn since(&self, service: &str, subset: &Labels, baseline: &BTreeMap<SocketAddr, Aggregate>) -> Aggregate {
        let mut out = Aggregate::default();
        for (addr, now) in self.totals(service, subset) {
            match baseline.get(&addr) {
                Some(then) => out.merge(&now.since(then)),
                None => out.merge(&now),
            }
        }
        out
    }

    /// Services with numbers over the last `window`.
    pub fn summary(&self, window: Duration) -> Vec<ServiceSummary> {
        let (from, to, secs) = span(window);
        let inner = self.inner.lock();
        inner
            .services
            .iter()
            .filter_map(|(service, entries)| {
                let mut total = Aggregate::default();
                for e in entries.values() {
                    e.series.add_windows(from, to, &mut total);
                }
                (total.requests > 0)
                    .then(|| ServiceSummary { service: service.clone(), numbers: Numbers::of(&total, secs) })
            })
            .collect()
    }

    /// One service over the last `window`: in all, per subset, per endpoint, and its history
    /// (every 10-second window of the last 15 minutes), for the endpoints whose labels
    /// include `subset`. `None` when the service is not in the mesh and has no numbers.
    pub fn service(&self, service: &str, subset: &Labels, window: Duration) -> Option<ServiceStats> {
        let (from, to, secs) = span(window);
        let inner = self.inner.lock();
        let entries = inner.services.get(service);
        if entries.is_none() && !inner.mesh.contains_key(service) {
            return None;
        }
        let mut total = Aggregate::default();
        let mut subsets: BTreeMap<Arc<Labels>, (usize, Aggregate)> = BTreeMap::new();
        let mut endpoints = Vec::new();
        let history_from = to + 1 - WINDOWS as u64;
        let mut history = vec![Aggregate::default(); WINDOWS];
        let now = Instant::now();
        for (addr, e) in entries.into_iter().flatten().filter(|(_, e)| selects(subset, &e.labels)) {
            let mut mine = Aggregate::default();
            e.series.add_windows(from, to, &mut mine);
            e.series.add_history(history_from, to, &mut history);
            total.merge(&mine);
            let group = subsets.entry(e.labels.clone()).or_default();
            group.0 += 1;
            group.1.merge(&mine);
            endpoints.push(EndpointStats {
                address: addr.to_string(),
                labels: (*e.labels).clone(),
                numbers: Numbers::of(&mine, secs),
                ewma_ms: e
                    .ewma
                    .filter(|(_, at)| now.duration_since(*at) < MAX_WINDOW)
                    .map(|(v, _)| (v * 1000.0).round() / 1000.0),
                ejected_seconds: e
                    .ejected_until
                    .filter(|u| *u > now)
                    .map(|u| (u.duration_since(now).as_secs_f64() * 10.0).round() / 10.0),
            });
        }
        let history = history
            .iter()
            .enumerate()
            .map(|(i, a)| HistoryPoint::of((history_from + i as u64) * WINDOW_SECS, a))
            .collect();
        Some(ServiceStats {
            service: service.to_owned(),
            window_seconds: secs,
            total: Numbers::of(&total, secs),
            subsets: subsets
                .into_iter()
                .map(|(labels, (n, a))| SubsetStats {
                    labels: (*labels).clone(),
                    endpoints: n,
                    numbers: Numbers::of(&a, secs),
                })
                .collect(),
            endpoints,
            history,
            resilience: inner.calls.resilience(service, from, to),
        })
    }

    /// The services of the mesh and those with numbers, and the calls between them, over the
    /// last `window`: what the dashboard's graph shows. Costs one pass over the series (bounded
    /// by the mesh's endpoints and edges), whatever the number of proxies.
    pub fn mesh(&self, window: Duration) -> MeshView {
        let (from, to, secs) = span(window);
        let inner = self.inner.lock();
        let mut names: std::collections::BTreeSet<&String> = inner.mesh.keys().collect();
        names.extend(inner.services.keys());
        let services = names
            .into_iter()
            .map(|service| {
                let mut total = Aggregate::default();
                for e in inner.services.get(service).into_iter().flat_map(BTreeMap::values) {
                    e.series.add_windows(from, to, &mut total);
                }
                NodeView {
                    service: service.clone(),
                    endpoints: inner.mesh.get(service).map_or(0, HashMap::len),
                    numbers: Numbers::of(&total, secs),
                    resilience: inner.calls.resilience(service, from, to),
                }
            })
            .collect();
        MeshView { window_seconds: secs, services, edges: inner.calls.edges(from, to, secs) }
    }

    /// Source → destination edges kept (whatever the age of their windows).
    pub fn edge_count(&self) -> usize {
        self.inner.lock().calls.edge_count()
    }

    /// Series tracked and the bytes they hold.
    pub fn footprint(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        let series: usize = inner.services.values().map(BTreeMap::len).sum();
        let bytes = inner
            .services
            .values()
            .flat_map(BTreeMap::values)
            .map(|e| e.series.bytes() + std::mem::size_of::<Entry>() + std::mem::size_of::<SocketAddr>())
            .sum::<usize>()
            + inner.calls.bytes();
        (series, bytes)
    }
}

/// Whether endpoint labels include every label of `subset`.
pub fn selects(subset: &Labels, labels: &Labels) -> bool {
    subset.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Windows `from..=to` covering the last `window`, and the seconds they span.
fn span(window: Duration) -> (u64, u64, f64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let window = window.clamp(Duration::from_secs(WINDOW_SECS), MAX_WINDOW);
    let to = slot_of(now.as_secs());
    let n = window.as_secs().div_ceil(WINDOW_SECS).max(1);
    let from = to + 1 - n.min(WINDOWS as u64);
    // The current window is partial: the span ends now.
    let into_current = now.as_secs_f64() - (to * WINDOW_SECS) as f64;
    let secs = ((n - 1) * WINDOW_SECS) as f64 + into_current.max(1.0);
    (from, to, secs)
}

fn endpoint_address(stats: &UpstreamEndpointStats) -> Option<SocketAddr> {
    let Some(address::Address::SocketAddress(sa)) = stats.address.as_ref()?.address.as_ref() else {
        return None;
    };
    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else { return None };
    let ip: std::net::IpAddr = sa.address.parse().ok()?;
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

pub(crate) fn sample_of(stats: &UpstreamEndpointStats) -> Sample {
    let mut sample =
        Sample { succeeded: stats.total_successful_requests, failed: stats.total_error_requests, ..Default::default() };
    for m in &stats.load_metric_stats {
        if m.metric_name == LATENCY_SUM_METRIC {
            if m.total_metric_value.is_finite() && m.total_metric_value > 0.0 {
                sample.latency_ms += m.total_metric_value;
            }
        } else if let Some(bucket) = parse_bucket_metric(&m.metric_name) {
            sample.buckets.push((bucket, m.num_requests_finished_with_metric));
        }
    }
    sample
}

/// The numbers of a span of time.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Numbers {
    pub requests: u64,
    pub errors: u64,
    /// Percent; `null` without requests.
    pub success_rate: Option<f64>,
    /// Requests per second over the span.
    pub rps: f64,
    pub latency_ms: Latency,
}

/// Latency percentiles and mean, ms (`null` without requests).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub mean: Option<f64>,
}

impl Latency {
    pub fn of(a: &Aggregate) -> Self {
        let round = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
        Self {
            p50: round(a.quantile_ms(0.5)),
            p90: round(a.quantile_ms(0.9)),
            p99: round(a.quantile_ms(0.99)),
            mean: round(a.mean_ms()),
        }
    }
}

impl Numbers {
    pub fn of(a: &Aggregate, secs: f64) -> Self {
        Self {
            requests: a.requests,
            errors: a.failed,
            success_rate: a.success_rate().map(|r| (r * 1000.0).round() / 1000.0),
            rps: ((a.requests as f64 / secs.max(1.0)) * 100.0).round() / 100.0,
            latency_ms: Latency::of(a),
        }
    }
}

/// `GET /v1/stats`: one line per service.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceSummary {
    pub service: String,
    #[serde(flatten)]
    pub numbers: Numbers,
}

/// `GET /v1/stats/SERVICE`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStats {
    pub service: String,
    pub window_seconds: f64,
    pub total: Numbers,
    pub subsets: Vec<SubsetStats>,
    pub endpoints: Vec<EndpointStats>,
    pub history: Vec<HistoryPoint>,
    /// Breaker state, rejections, retries and retry budget, as the callers report them.
    pub resilience: ResilienceView,
}

/// Endpoints with the same labels.
#[derive(Clone, Debug, Serialize)]
pub struct SubsetStats {
    pub labels: Labels,
    pub endpoints: usize,
    #[serde(flatten)]
    pub numbers: Numbers,
}

/// One endpoint.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStats {
    pub address: String,
    pub labels: Labels,
    #[serde(flatten)]
    pub numbers: Numbers,
    /// The peak-EWMA latency estimate a caller last reported, ms.
    pub ewma_ms: Option<f64>,
    /// Seconds of outlier ejection left, when a caller has it ejected.
    pub ejected_seconds: Option<f64>,
}

/// One 10-second window.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPoint {
    /// Unix seconds at the window's start.
    pub start: u64,
    pub requests: u64,
    pub errors: u64,
    pub success_rate: Option<f64>,
    pub latency_ms: Latency,
}

impl HistoryPoint {
    fn of(start: u64, a: &Aggregate) -> Self {
        Self {
            start,
            requests: a.requests,
            errors: a.failed,
            success_rate: a.success_rate().map(|r| (r * 1000.0).round() / 1000.0),
            latency_ms: Latency::of(a),
        }
    }
}
