//! The LRS server: `envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats`, served
//! on the xDS port by the same HTTP/2 server as ADS.
//!
//! On a new stream the first request names the node; the server answers with the interval
//! and `send_all_clusters` (a client that does not advertise
//! `envoy.lrs.supports_send_all_clusters` gets the cluster names instead), asks for
//! endpoint granularity, and sends a new response whenever the interval changes (a rollout
//! that needs faster numbers). Every later request is counted into [`Stats`].

use std::sync::Arc;

use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tonic::Streaming;

use super::Stats;
use crate::xds::encode::{self, AdsBody, Encoded, EndStatus};

/// The method's path.
pub const PATH: &str = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats";

/// The client feature that allows `send_all_clusters`.
pub const SEND_ALL_CLUSTERS: &str = "envoy.lrs.supports_send_all_clusters";

/// Largest report accepted (a proxy calling 1,000 services of 2 endpoints sends about 1 MB).
const MAX_REPORT: usize = 8 << 20;

/// Start serving one stream; the response body carries the server's responses.
pub(crate) fn call(stats: Arc<Stats>, body: Incoming) -> http::Response<AdsBody> {
    let (tx, rx) = mpsc::channel(2);
    let status = EndStatus::default();
    let requests =
        Streaming::new_request(tonic_prost::ProstDecoder::<LoadStatsRequest>::default(), body, None, Some(MAX_REPORT));
    tokio::spawn(run(stats, requests, tx));
    encode::response(AdsBody::new(rx, status))
}

async fn run(stats: Arc<Stats>, mut requests: Streaming<LoadStatsRequest>, tx: mpsc::Sender<Encoded>) {
    let first = match requests.message().await {
        Ok(Some(first)) => first,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "load report stream ended before its first request");
            return;
        }
    };
    let node = first.node.unwrap_or_default();
    // Calls are counted as from the proxy's service (source → destination on the dashboard).
    let source = crate::tracker::node_service(&node);
    let all = node.client_features.iter().any(|f| f == SEND_ALL_CLUSTERS);
    let mut interval = stats.report_interval();
    let answer = |interval: std::time::Duration| {
        let clusters = if all { Vec::new() } else { stats.cluster_names() };
        Encoded::message(&LoadStatsResponse {
            clusters,
            send_all_clusters: all,
            load_reporting_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(interval.subsec_nanos()).unwrap_or(0),
            }),
            report_endpoint_granularity: true,
        })
    };
    let now = *interval.borrow_and_update();
    if tx.send(answer(now)).await.is_err() {
        return;
    }
    if !first.cluster_stats.is_empty() {
        stats.ingest(&node.id, &source, &first.cluster_stats);
    }
    tracing::debug!(node = %node.id, "load report stream established");
    loop {
        tokio::select! {
            request = requests.message() => match request {
                Ok(Some(report)) => stats.ingest(&node.id, &source, &report.cluster_stats),
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(node = %node.id, error = %e, "load report stream ended");
                    return;
                }
            },
            changed = interval.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *interval.borrow_and_update();
                if tx.send(answer(now)).await.is_err() {
                    return;
                }
            }
        }
    }
}
