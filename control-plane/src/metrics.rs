//! The control plane's own metrics (Prometheus text, prefix `outrider_`), served on the API
//! port at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `type` label: the xDS resource type (`Listener`, `Cluster`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: &'static str,
}

/// `result` label of policy writes: `accepted`, `invalid`, `conflict`, `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// `reason` label of certificate issuance errors (`bad_csr`, `token_expired`, ...; bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Every family, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub connected_proxies: Gauge,
    pub pushes: Family<TypeLabels, Counter>,
    pub nacks: Family<TypeLabels, Counter>,
    pub push_latency: Histogram,
    pub policy_writes: Family<ResultLabels, Counter>,
    pub ca_issued: Counter,
    pub ca_issue_errors: Family<ReasonLabels, Counter>,
    pub load_reports: Counter,
    pub load_reports_dropped: Family<ReasonLabels, Counter>,
    pub stats_series: Gauge,
    pub rollout_events: Family<EventLabels, Counter>,
    /// Pods reviewed by the injection webhook, by result (`injected`, `skipped`, `refused`,
    /// `ignored`).
    pub injections: Family<ResultLabels, Counter>,
}

/// `event` label of rollout transitions (`started`, `step`, `promoted`, `aborted`, ...; bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("outrider");
        let connected_proxies = Gauge::default();
        registry.register("xds_connected_proxies", "xDS streams open now", connected_proxies.clone());
        let pushes = Family::<TypeLabels, Counter>::default();
        registry.register("xds_pushes", "xDS responses sent, by resource type", pushes.clone());
        let nacks = Family::<TypeLabels, Counter>::default();
        registry.register("xds_nacks", "xDS responses a client rejected, by resource type", nacks.clone());
        // 1 ms .. ~16 s.
        let push_latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "xds_push_latency_seconds",
            "Time from a config change to a client's ACK of it",
            push_latency.clone(),
        );
        let policy_writes = Family::<ResultLabels, Counter>::default();
        registry.register("policy_writes", "Policy writes over the API, by result", policy_writes.clone());
        let ca_issued = Counter::default();
        registry.register("ca_certificates_issued", "Workload certificates issued over the API", ca_issued.clone());
        let ca_issue_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ca_issue_errors",
            "Certificate requests refused or failed, by reason",
            ca_issue_errors.clone(),
        );
        let load_reports = Counter::default();
        registry.register("load_reports", "Load reports (LRS) received from proxies", load_reports.clone());
        let load_reports_dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "load_report_entries_dropped",
            "Parts of load reports not counted: unknown-cluster, unknown-endpoint, bad-address",
            load_reports_dropped.clone(),
        );
        let stats_series = Gauge::default();
        registry.register("stats_series", "Endpoints with load numbers kept", stats_series.clone());
        let rollout_events = Family::<EventLabels, Counter>::default();
        registry.register("rollout_events", "Rollout transitions, by event", rollout_events.clone());
        let injections = Family::<ResultLabels, Counter>::default();
        registry.register(
            "injections",
            "Pods reviewed by the sidecar injection webhook, by result (injected, skipped, refused, ignored)",
            injections.clone(),
        );
        Self {
            registry: Arc::new(registry),
            connected_proxies,
            pushes,
            nacks,
            push_latency,
            policy_writes,
            ca_issued,
            ca_issue_errors,
            load_reports,
            load_reports_dropped,
            stats_series,
            rollout_events,
            injections,
        }
    }

    /// The text exposition.
    /// Content type of [`Metrics::encode`].
    pub const CONTENT_TYPE: &'static str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // The Prometheus text format (0.0.4), as the proxy serves it: what `promtool check
        // metrics` and every scraper read, with HELP on the `_total` name of counters.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
