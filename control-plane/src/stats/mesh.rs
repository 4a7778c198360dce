//! What the dashboard shows beyond per-endpoint numbers, from the same load reports: the calls
//! between services (source service → destination service, the source being the reporting
//! proxy's service) and each destination's resilience as its callers see it — circuit breaker
//! state per reporting proxy, breaker rejections, retries and retries the budget refused.
//!
//! Bounded: at most [`MAX_EDGES`] edges (a report's edge past the limit is dropped and counted
//! as `edge-limit`), each a [`Series`] like an endpoint's; per service at most
//! [`MAX_BREAKERS`] proxies' breaker states, each forgotten [`BREAKER_TTL`] after its last
//! report, and 90 windows of three counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterStats;
use outrider_xds::latency::{BREAKER_STATE_METRIC, DROPPED_BREAKER, DROPPED_RETRY_BUDGET, RETRIES_METRIC};
use serde::Serialize;
use tokio::time::Instant;

use super::{Aggregate, Numbers, Sample, Series, WINDOWS};

/// Edges (source → destination) kept at most.
pub const MAX_EDGES: usize = 4096;
/// Proxies whose breaker state is kept per destination service.
pub const MAX_BREAKERS: usize = 1024;
/// A proxy's breaker state is forgotten this long after its last report of it.
pub const BREAKER_TTL: Duration = Duration::from_secs(30);
/// Longest service name taken from a node's metadata; longer ones count as unknown.
const MAX_NAME: usize = 253;
/// The source of calls from a proxy that names no service.
pub const UNKNOWN_SOURCE: &str = "(unknown)";

/// Breaker state as the proxies report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Breaker {
    Closed,
    Open,
    HalfOpen,
}

impl Breaker {
    fn of(value: f64) -> Self {
        match value.round() as i64 {
            1 => Breaker::Open,
            2 => Breaker::HalfOpen,
            _ => Breaker::Closed,
        }
    }
}

/// One 10-second window of resilience counts.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    slot: u64,
    rejected: u64,
    retries: u64,
    budget_exhausted: u64,
}

/// One destination service's resilience, as its callers report it.
#[derive(Debug, Default)]
pub(super) struct Resilience {
    windows: VecDeque<Window>,
    /// Node id → (state, when reported).
    breakers: HashMap<String, (Breaker, Instant)>,
}

impl Resilience {
    fn add(&mut self, slot: u64, rejected: u64, retries: u64, budget_exhausted: u64) {
        if rejected == 0 && retries == 0 && budget_exhausted == 0 {
            return;
        }
        if self.windows.back().is_none_or(|w| w.slot < slot) {
            self.windows.push_back(Window { slot, ..Default::default() });
        }
        if let Some(w) = self.windows.back_mut() {
            w.rejected = w.rejected.saturating_add(rejected);
            w.retries = w.retries.saturating_add(retries);
            w.budget_exhausted = w.budget_exhausted.saturating_add(budget_exhausted);
        }
        self.expire(slot);
    }

    fn expire(&mut self, now_slot: u64) {
        while self.windows.front().is_some_and(|w| w.slot + WINDOWS as u64 <= now_slot) {
            self.windows.pop_front();
        }
        let now = Instant::now();
        self.breakers.retain(|_, (_, at)| now.duration_since(*at) < BREAKER_TTL);
    }

    fn is_idle(&self) -> bool {
        self.windows.is_empty() && self.breakers.is_empty()
    }

    fn view(&self, from: u64, to: u64) -> ResilienceView {
        let now = Instant::now();
        let mut view = ResilienceView::default();
        for (state, at) in self.breakers.values() {
            if now.duration_since(*at) >= BREAKER_TTL {
                continue;
            }
            match state {
                Breaker::Closed => view.breaker.closed += 1,
                Breaker::Open => view.breaker.open += 1,
                Breaker::HalfOpen => view.breaker.half_open += 1,
            }
        }
        view.breaker.state = if view.breaker.open > 0 {
            "open"
        } else if view.breaker.half_open > 0 {
            "half-open"
        } else if view.breaker.closed > 0 {
            "closed"
        } else {
            "unknown"
        };
        for w in self.windows.iter().filter(|w| (from..=to).contains(&w.slot)) {
            view.rejected += w.rejected;
            view.retries += w.retries;
            view.retry_budget_exhausted += w.budget_exhausted;
        }
        view
    }
}

/// Breaker states of the proxies that call a service and reported one recently.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    /// `open` when any proxy has it open, else `half-open`, `closed`, or `unknown` (no
    /// proxy with a breaker for it reported within 30 s).
    pub state: &'static str,
    pub open: usize,
    pub half_open: usize,
    pub closed: usize,
}

/// A service's resilience over a window.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResilienceView {
    pub breaker: BreakerView,
    /// Requests, retries and connections rejected by the breaker or a threshold.
    pub rejected: u64,
    /// Retries sent.
    pub retries: u64,
    /// Retries not sent because the retry budget was spent.
    pub retry_budget_exhausted: u64,
}

/// Edges and resilience.
#[derive(Debug, Default)]
pub(super) struct MeshState {
    /// (source, destination) → numbers.
    edges: BTreeMap<(String, String), Series>,
    resilience: BTreeMap<String, Resilience>,
}

impl MeshState {
    /// Count one cluster of a report of `node` (whose service is `source`) for `destination`;
    /// `false` when the edge is new and the limit is reached.
    pub(super) fn ingest(
        &mut self,
        node: &str,
        source: &str,
        destination: &str,
        slot: u64,
        cluster: &ClusterStats,
    ) -> bool {
        let source = if source.is_empty() || source.len() > MAX_NAME { UNKNOWN_SOURCE } else { source };
        let mut sample = Sample::default();
        let mut retries = 0;
        let mut breaker = None;
        for locality in &cluster.upstream_locality_stats {
            for e in &locality.upstream_endpoint_stats {
                let s = super::sample_of(e);
                sample.succeeded += s.succeeded;
                sample.failed += s.failed;
                sample.latency_ms += s.latency_ms;
                sample.buckets.extend(s.buckets);
            }
            for m in &locality.load_metric_stats {
                if m.metric_name == RETRIES_METRIC {
                    retries += m.num_requests_finished_with_metric;
                } else if m.metric_name == BREAKER_STATE_METRIC && m.total_metric_value.is_finite() {
                    breaker = Some(Breaker::of(m.total_metric_value));
                }
            }
        }
        let dropped = |category: &str| {
            cluster.dropped_requests.iter().filter(|d| d.category == category).map(|d| d.dropped_count).sum::<u64>()
        };
        let resilience = self.resilience.entry(destination.to_owned()).or_default();
        resilience.add(slot, dropped(DROPPED_BREAKER), retries, dropped(DROPPED_RETRY_BUDGET));
        if let Some(state) = breaker
            && !node.is_empty()
            && (resilience.breakers.len() < MAX_BREAKERS || resilience.breakers.contains_key(node))
        {
            resilience.breakers.insert(node.to_owned(), (state, Instant::now()));
        }
        if sample.succeeded + sample.failed == 0 {
            return true;
        }
        let key = (source.to_owned(), destination.to_owned());
        let full = self.edges.len() >= MAX_EDGES;
        match self.edges.get_mut(&key) {
            Some(series) => series.add(slot, &sample),
            None if full => return false,
            None => self.edges.entry(key).or_default().add(slot, &sample),
        }
        true
    }

    /// Forget old windows, and edges and services with none left.
    pub(super) fn sweep(&mut self, now_slot: u64) {
        self.edges.retain(|_, series| {
            series.expire(now_slot);
            !series.is_idle()
        });
        self.resilience.retain(|_, r| {
            r.expire(now_slot);
            !r.is_idle()
        });
    }

    pub(super) fn resilience(&self, service: &str, from: u64, to: u64) -> ResilienceView {
        self.resilience.get(service).map(|r| r.view(from, to)).unwrap_or_else(|| Resilience::default().view(from, to))
    }

    pub(super) fn edges(&self, from: u64, to: u64, secs: f64) -> Vec<EdgeView> {
        self.edges
            .iter()
            .filter_map(|((source, destination), series)| {
                let mut total = Aggregate::default();
                series.add_windows(from, to, &mut total);
                (total.requests > 0).then(|| EdgeView {
                    source: source.clone(),
                    destination: destination.clone(),
                    numbers: Numbers::of(&total, secs),
                })
            })
            .collect()
    }

    pub(super) fn edge_count(&self) -> usize {
        self.edges.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.edges.iter().map(|((s, d), series)| series.bytes() + s.len() + d.len()).sum::<usize>()
            + self
                .resilience
                .values()
                .map(|r| {
                    r.windows.len() * std::mem::size_of::<Window>()
                        + r.breakers.keys().map(|k| k.len() + 32).sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// Calls from one service to another over a window.
#[derive(Clone, Debug, Serialize)]
pub struct EdgeView {
    pub source: String,
    pub destination: String,
    #[serde(flatten)]
    pub numbers: Numbers,
}

/// One service on the mesh graph.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub service: String,
    /// Endpoints in the mesh now.
    pub endpoints: usize,
    #[serde(flatten)]
    pub numbers: Numbers,
    pub resilience: ResilienceView,
}

/// `GET /v1/mesh`: the graph.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshView {
    pub window_seconds: f64,
    pub services: Vec<NodeView>,
    pub edges: Vec<EdgeView>,
}
