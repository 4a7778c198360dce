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

/// Every family, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub connected_proxies: Gauge,
    pub pushes: Family<TypeLabels, Counter>,
    pub nacks: Family<TypeLabels, Counter>,
    pub push_latency: Histogram,
    pub policy_writes: Family<ResultLabels, Counter>,
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
        Self { registry: Arc::new(registry), connected_proxies, pushes, nacks, push_latency, policy_writes }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
