//! Load reports to the control plane over Envoy's Load Reporting Service
//! (`envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats`), on the same address
//! and TLS as the ADS stream.
//!
//! The request path counts each attempt at the endpoint it went to ([`EndpointLoad`]: atomic
//! counters and a latency histogram, no lock, no allocation per request); a gRPC response whose
//! status is in its trailers is counted when its body ends ([`PendingLoad`]). The reporter opens a
//! stream, says who it is, and waits for the server's `LoadStatsResponse`: the interval and the
//! clusters it wants (or all of them). Every interval it takes the counts of the clusters'
//! endpoints, resetting them, and sends the ones that saw traffic: per cluster one locality
//! (this proxy's) with the totals, and per endpoint requests issued, succeeded, failed, in
//! progress, and the latency as named load metrics — the sum (`outrider.latency_ms`) and the
//! histogram's non-empty buckets (`outrider.latency_bucket_us.<lower bound>`, see
//! [`outrider_xds::latency`]) — and, for the dashboard, the proxy's peak-EWMA estimate of the
//! endpoint and the ejection time left while it is ejected; per cluster its circuit breaker's
//! state (with `scope: endpoint`, the most open of its endpoints' breakers), retries sent, and requests dropped by the breaker or the retry budget (an endpoint
//! that is ejected, or a cluster whose breaker is not closed or that rejected or retried, is
//! reported without traffic too). A new response may change the interval or the clusters at any
//! time. Counts made while no stream is up are dropped when the next stream starts, so that a
//! report never covers more than about one interval. A server without the service
//! (UNIMPLEMENTED), or that takes reports only from proxies with an identity
//! (UNAUTHENTICATED), is not asked again.

mod endpoint;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::endpoint::v3::cluster_stats::DroppedRequests;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterStats, EndpointLoadMetricStats, UpstreamEndpointStats, UpstreamLocalityStats,
};
use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use outrider_xds::ads::{self, AdsError, ClientConfig};
use outrider_xds::latency::{
    BREAKER_STATE_METRIC, DROPPED_BREAKER, DROPPED_RETRY_BUDGET, EJECTED_METRIC, EWMA_METRIC, LATENCY_SUM_METRIC,
    RETRIES_METRIC, bucket_metric_name,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

pub use endpoint::{ClusterLoad, ClusterSample, EndpointLoad, LoadSample, PendingLoad};

use crate::state::{Snapshot, Store};

/// The client feature that lets the server answer `send_all_clusters`.
pub const SEND_ALL_CLUSTERS_FEATURE: &str = "envoy.lrs.supports_send_all_clusters";

/// The shortest interval followed, whatever the server asks.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Connect(#[from] AdsError),
    #[error("the load report stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the control plane closed the load report stream")]
    Closed,
}

/// What the server asked for.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    interval: Duration,
    /// `None`: every cluster.
    clusters: Option<BTreeSet<String>>,
}

impl Plan {
    fn from(response: &LoadStatsResponse) -> Self {
        let interval = response
            .load_reporting_interval
            .as_ref()
            .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
            .unwrap_or(Duration::from_secs(10))
            .max(MIN_INTERVAL);
        let clusters = (!response.send_all_clusters).then(|| response.clusters.iter().cloned().collect());
        Self { interval, clusters }
    }
}

/// The LRS client of one proxy.
#[derive(Debug)]
pub struct LoadReporter {
    config: ClientConfig,
    store: Arc<Store>,
}

impl LoadReporter {
    /// Reports to the server of `config` (the ADS client's: same address, node and TLS).
    pub fn new(mut config: ClientConfig, store: Arc<Store>) -> Self {
        if !config.node.client_features.iter().any(|f| f == SEND_ALL_CLUSTERS_FEATURE) {
            config.node.client_features.push(SEND_ALL_CLUSTERS_FEATURE.to_owned());
        }
        Self { config, store }
    }

    /// Report until the task is dropped, reconnecting with the jittered backoff.
    pub async fn run(self) {
        let mut attempts = self.config.backoff.iter();
        loop {
            let mut delivered = false;
            let result = self.run_once(&mut delivered).await;
            if delivered {
                attempts.reset();
            }
            let delay = attempts.next_delay();
            match result {
                Err(ReportError::Stream(status)) if status.code() == tonic::Code::Unimplemented => {
                    tracing::info!(server = %self.config.address, "the xDS server takes no load reports; not sending any");
                    return;
                }
                Err(ReportError::Stream(status)) if status.code() == tonic::Code::Unauthenticated => {
                    tracing::warn!(
                        server = %self.config.address, reason = status.message(),
                        "the xDS server takes load reports only from proxies with a workload identity; not sending any"
                    );
                    return;
                }
                Err(e) => tracing::debug!(error = %e, retry_in = ?delay, "load report stream ended; reconnecting"),
                Ok(()) => {}
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn run_once(&self, delivered: &mut bool) -> Result<(), ReportError> {
        let channel = ads::connect(&self.config, None).await?;
        let (tx, rx) = mpsc::channel::<LoadStatsRequest>(2);
        let hello = LoadStatsRequest { node: Some(self.config.node.clone()), cluster_stats: Vec::new() };
        tx.send(hello).await.map_err(|_| ReportError::Closed)?;
        let mut client = LoadReportingServiceClient::new(channel);
        let mut responses = client.stream_load_stats(ReceiverStream::new(rx)).await?.into_inner();
        let first = responses.message().await?.ok_or(ReportError::Closed)?;
        let mut plan = Plan::from(&first);
        tracing::debug!(interval = ?plan.interval, "load reports requested");
        // Counts from before this stream are dropped: a report covers one interval.
        drain(&self.store.load());
        let mut last = Instant::now();
        let mut next = last + plan.interval;
        loop {
            tokio::select! {
                response = responses.message() => {
                    let response = response?.ok_or(ReportError::Closed)?;
                    let new = Plan::from(&response);
                    if new.interval != plan.interval {
                        next = last + new.interval;
                    }
                    plan = new;
                }
                () = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    let stats = collect(&self.store.load(), &plan, now - last);
                    last = now;
                    next = now + plan.interval;
                    let report = LoadStatsRequest { node: None, cluster_stats: stats };
                    tx.send(report).await.map_err(|_| ReportError::Closed)?;
                    *delivered = true;
                }
            }
        }
    }
}

/// Reset every endpoint's counts.
/// The state a cluster's breaker is reported in: the service breaker's with `scope: service`;
/// with per-endpoint breakers the most open of its endpoints' (open, then half-open), so the
/// dashboard shows a breaker open while any endpoint's is.
fn cluster_breaker_state(cluster: &crate::state::Cluster) -> crate::policy::breaker::State {
    use crate::policy::breaker::State;
    let scope = cluster.policy.breaker.as_ref().map(|b| b.scope);
    if scope != Some(crate::policy::config::BreakerScope::Endpoint) {
        return cluster.state.breaker.state();
    }
    let rank = |s: State| match s {
        State::Closed => 0,
        State::HalfOpen => 1,
        State::Open => 2,
    };
    cluster.endpoints.items().iter().map(|e| e.shared.breaker.state()).max_by_key(|s| rank(*s)).unwrap_or(State::Closed)
}

fn drain(snapshot: &Snapshot) {
    for cluster in snapshot.clusters.values() {
        for endpoint in cluster.endpoints.items() {
            endpoint.shared.load.take();
        }
        cluster.state.load.take();
    }
}

/// One report: the counts of the wanted clusters' endpoints that saw traffic, reset.
pub fn collect(snapshot: &Snapshot, wanted: &impl Wants, interval: Duration) -> Vec<ClusterStats> {
    let mut out = Vec::new();
    for (name, cluster) in &snapshot.clusters {
        if !wanted.wants(name) {
            continue;
        }
        let mut locality = UpstreamLocalityStats::default();
        for endpoint in cluster.endpoints.items() {
            let sample = endpoint.shared.load.take();
            let in_progress = u64::from(endpoint.shared.ewma.pending());
            let ejected = endpoint.shared.health.ejected_for();
            if sample.is_empty() && in_progress == 0 && ejected.is_none() {
                continue;
            }
            locality.total_successful_requests += sample.succeeded;
            locality.total_error_requests += sample.failed;
            locality.total_issued_requests += sample.issued;
            locality.total_requests_in_progress += in_progress;
            let mut stats = endpoint_stats(endpoint.addr, &sample, in_progress);
            if let Some(rtt) = endpoint.shared.ewma.rtt() {
                stats.load_metric_stats.push(EndpointLoadMetricStats {
                    metric_name: EWMA_METRIC.to_owned(),
                    num_requests_finished_with_metric: 1,
                    total_metric_value: rtt.as_secs_f64() * 1000.0,
                });
            }
            if let Some(left) = ejected {
                stats.load_metric_stats.push(EndpointLoadMetricStats {
                    metric_name: EJECTED_METRIC.to_owned(),
                    num_requests_finished_with_metric: 1,
                    total_metric_value: left.as_secs_f64(),
                });
            }
            locality.upstream_endpoint_stats.push(stats);
        }
        let resilience = cluster.state.load.take();
        let breaker = cluster_breaker_state(cluster);
        if locality.upstream_endpoint_stats.is_empty()
            && resilience.is_empty()
            && breaker == crate::policy::breaker::State::Closed
        {
            continue;
        }
        if cluster.policy.breaker.is_some() {
            locality.load_metric_stats.push(EndpointLoadMetricStats {
                metric_name: BREAKER_STATE_METRIC.to_owned(),
                num_requests_finished_with_metric: 1,
                total_metric_value: breaker.metric() as f64,
            });
        }
        if resilience.retries > 0 {
            locality.load_metric_stats.push(EndpointLoadMetricStats {
                metric_name: RETRIES_METRIC.to_owned(),
                num_requests_finished_with_metric: resilience.retries,
                total_metric_value: 0.0,
            });
        }
        let dropped: Vec<DroppedRequests> =
            [(DROPPED_BREAKER, resilience.rejected), (DROPPED_RETRY_BUDGET, resilience.budget_exhausted)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(category, dropped_count)| DroppedRequests { category: category.to_owned(), dropped_count })
                .collect();
        out.push(ClusterStats {
            cluster_name: name.to_string(),
            cluster_service_name: cluster.service.to_string(),
            upstream_locality_stats: vec![locality],
            total_dropped_requests: resilience.rejected + resilience.budget_exhausted,
            dropped_requests: dropped,
            load_report_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(interval.subsec_nanos()).unwrap_or(0),
            }),
        });
    }
    out
}

/// Which clusters a report covers.
pub trait Wants {
    fn wants(&self, cluster: &str) -> bool;
}

impl Wants for Plan {
    fn wants(&self, cluster: &str) -> bool {
        self.clusters.as_ref().is_none_or(|c| c.contains(cluster))
    }
}

/// Every cluster.
#[derive(Debug, Clone, Copy)]
pub struct AllClusters;

impl Wants for AllClusters {
    fn wants(&self, _: &str) -> bool {
        true
    }
}

fn endpoint_stats(addr: std::net::SocketAddr, sample: &LoadSample, in_progress: u64) -> UpstreamEndpointStats {
    let finished = sample.succeeded + sample.failed;
    let mut metrics = Vec::with_capacity(sample.buckets.len() + 1);
    if finished > 0 {
        metrics.push(EndpointLoadMetricStats {
            metric_name: LATENCY_SUM_METRIC.to_owned(),
            num_requests_finished_with_metric: finished,
            total_metric_value: sample.latency_us as f64 / 1000.0,
        });
    }
    metrics.extend(sample.buckets.iter().map(|(index, count)| EndpointLoadMetricStats {
        metric_name: bucket_metric_name(*index),
        num_requests_finished_with_metric: *count,
        total_metric_value: 0.0,
    }));
    UpstreamEndpointStats {
        address: Some(socket_address(addr)),
        total_successful_requests: sample.succeeded,
        total_error_requests: sample.failed,
        total_issued_requests: sample.issued,
        total_requests_in_progress: in_progress,
        load_metric_stats: metrics,
        ..Default::default()
    }
}

fn socket_address(addr: std::net::SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider_xds::latency::{bucket_of, parse_bucket_metric};

    #[test]
    fn a_report_carries_the_counts_of_endpoints_with_traffic_and_resets_them() {
        let set = outrider_xds::load_str(
            "t.yaml",
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: echo}\nspec: {port: 80, endpoints: [{address: \"127.0.0.1:1\"}, {address: \"127.0.0.1:2\"}]}\n",
        )
        .unwrap();
        let (snapshot, rejected) = crate::state::Builder::new().build(&outrider_xds::translate(&set));
        assert!(rejected.is_empty());
        let cluster = snapshot.clusters.values().next().unwrap();
        let first = &cluster.endpoints.items()[0];
        for (error, ms) in [(false, 3), (false, 3), (true, 40)] {
            first.shared.load.issue();
            first.shared.load.finish(error, Duration::from_millis(ms));
        }
        let stats = collect(&snapshot, &AllClusters, Duration::from_secs(5));
        assert_eq!(stats.len(), 1);
        let cs = &stats[0];
        assert_eq!((cs.cluster_name.as_str(), cs.cluster_service_name.as_str()), ("outbound|80||echo", "echo"));
        assert_eq!(cs.load_report_interval.unwrap().seconds, 5);
        let locality = &cs.upstream_locality_stats[0];
        assert_eq!((locality.total_successful_requests, locality.total_error_requests), (2, 1));
        assert_eq!(locality.upstream_endpoint_stats.len(), 1, "the idle endpoint is left out");
        let ep = &locality.upstream_endpoint_stats[0];
        let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) else {
            panic!("no socket address")
        };
        assert_eq!((sa.address.as_str(), sa.port_specifier.clone()), ("127.0.0.1", Some(PortSpecifier::PortValue(1))));
        let sum = ep.load_metric_stats.iter().find(|m| m.metric_name == LATENCY_SUM_METRIC).unwrap();
        assert_eq!((sum.num_requests_finished_with_metric, sum.total_metric_value), (3, 46.0));
        let buckets: Vec<(usize, u64)> = ep
            .load_metric_stats
            .iter()
            .filter_map(|m| Some((parse_bucket_metric(&m.metric_name)?, m.num_requests_finished_with_metric)))
            .collect();
        assert_eq!(buckets, [(bucket_of(3000), 2), (bucket_of(40_000), 1)]);
        assert!(collect(&snapshot, &AllClusters, Duration::from_secs(5)).is_empty(), "counts were reset");
        let none = Plan { interval: Duration::from_secs(1), clusters: Some(BTreeSet::new()) };
        first.shared.load.issue();
        assert!(collect(&snapshot, &none, Duration::from_secs(1)).is_empty(), "only the clusters asked for");
    }

    #[test]
    fn the_plan_follows_the_response_with_a_floor() {
        let response = LoadStatsResponse {
            clusters: vec!["a".into()],
            load_reporting_interval: Some(envoy_types::pb::google::protobuf::Duration { seconds: 0, nanos: 1000 }),
            ..Default::default()
        };
        let plan = Plan::from(&response);
        assert_eq!(plan.interval, MIN_INTERVAL);
        assert!(plan.wants("a") && !plan.wants("b"));
        let all = Plan::from(&LoadStatsResponse { send_all_clusters: true, ..Default::default() });
        assert!(all.wants("b"));
        assert_eq!(all.interval, Duration::from_secs(10));
    }
}
