//! One state-of-the-world stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Status, Streaming};

use super::Subscription;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::tracker::{StreamHandle, type_name};

/// What the stream did for one type.
#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// (name → version) of the last response, `None` before the first.
    sent: Option<BTreeMap<String, String>>,
    sent_version: String,
    nonce: String,
    /// The type's version when the stream last compared it with what the client has.
    seen_type_version: Option<String>,
    /// When the snapshot of the unacknowledged response was made.
    pending_since: Option<Instant>,
}

struct Stream {
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    handle: StreamHandle,
    metrics: Metrics,
    types: BTreeMap<String, TypeState>,
    nonce: u64,
    identified: bool,
}

pub(super) async fn run(
    requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    handle: StreamHandle,
    metrics: Metrics,
) {
    let stream = Stream { tx, handle, metrics, types: BTreeMap::new(), nonce: 0, identified: false };
    super::drive(requests, snapshots, stream).await;
}

impl super::AdsStream for Stream {
    type Request = DiscoveryRequest;

    fn type_urls(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        snapshot: &Snapshot,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send {
        self.request(request, snapshot)
    }

    fn on_push(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
        since: Instant,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send {
        self.push(type_url, snapshot, since, false)
    }
}

impl Stream {
    async fn request(&mut self, request: DiscoveryRequest, snapshot: &Snapshot) -> Result<(), ()> {
        if !self.identified
            && let Some(node) = &request.node
        {
            self.identified = true;
            if let Err(status) = self.handle.authorize(node) {
                let _ = self.tx.send(Err(status)).await;
                return Err(());
            }
            self.handle.identify(node);
        }
        self.handle.seen();
        let type_url = request.type_url;
        if type_url.is_empty() {
            return Ok(());
        }
        let name = type_name(&type_url);
        let subscription = Subscription::from_names(&request.resource_names);
        let Some(state) = self.types.get_mut(&type_url) else {
            // First request for this type: a reconnecting client tells what it has.
            let mut state = TypeState { subscription, ..Default::default() };
            let current = snapshot.get(&type_url);
            if !request.version_info.is_empty() && current.is_some_and(|t| t.version == request.version_info) {
                state.sent = Some(wanted(snapshot, &type_url, &state.subscription));
                state.sent_version = request.version_info.clone();
                self.handle.acked(name, &request.version_info);
            }
            self.types.insert(type_url.clone(), state);
            return self.push(&type_url, snapshot, Instant::now(), true).await;
        };
        if request.response_nonce != state.nonce {
            // A stale request (for an older response): Envoy's servers ignore it.
            return Ok(());
        }
        if let Some(error) = &request.error_detail {
            self.handle.nacked(name, &state.sent_version, &error.message);
            tracing::warn!(%name, version = %state.sent_version, error = %error.message, "NACK");
            state.pending_since = None;
        } else if let Some(since) = state.pending_since.take() {
            self.handle.acked(name, &request.version_info);
            self.metrics.push_latency.observe(since.elapsed().as_secs_f64());
        }
        if state.subscription != subscription {
            state.subscription = subscription;
            return self.push(&type_url, snapshot, Instant::now(), true).await;
        }
        Ok(())
    }

    /// Send the type if what the client should have differs from what it was sent.
    /// `force`: evaluate even if the type's version did not change (new or changed
    /// subscription).
    async fn push(&mut self, type_url: &str, snapshot: &Snapshot, since: Instant, force: bool) -> Result<(), ()> {
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let type_version = snapshot.get(type_url).map(|t| t.version.as_str());
        if !force && state.sent.is_some() && state.seen_type_version.as_deref() == type_version {
            return Ok(());
        }
        state.seen_type_version = type_version.map(str::to_owned);
        let want = wanted(snapshot, type_url, &state.subscription);
        if state.sent.as_ref() == Some(&want) {
            return Ok(());
        }
        let version = snapshot.get(type_url).map(|t| t.version.clone()).unwrap_or_default();
        let resources = snapshot
            .get(type_url)
            .map(|t| t.resources.values().filter(|r| state.subscription.wants(r)).map(|r| r.any.clone()).collect())
            .unwrap_or_default();
        self.nonce += 1;
        state.nonce = self.nonce.to_string();
        state.sent = Some(want);
        state.sent_version.clone_from(&version);
        state.pending_since = Some(since);
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: type_url.to_owned(),
            nonce: state.nonce.clone(),
            ..Default::default()
        };
        self.handle.sent(type_name(type_url), &version);
        self.tx.send(Ok(response)).await.map_err(|_| ())
    }
}

/// name → version of what a subscription should have.
fn wanted(snapshot: &Snapshot, type_url: &str, subscription: &Subscription) -> BTreeMap<String, String> {
    snapshot
        .get(type_url)
        .map(|t| {
            t.resources
                .values()
                .filter(|r| subscription.wants(r))
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect()
        })
        .unwrap_or_default()
}
