//! One Delta (incremental) stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
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
    /// name → version the client has (from `initial_resource_versions`, then what was sent).
    has: BTreeMap<String, String>,
    /// Whether a response was sent for this type (the first one goes out even when empty).
    responded: bool,
    /// The type's version when the stream last compared it with what the client has.
    seen_type_version: Option<String>,
    sent_version: String,
    nonce: String,
    pending_since: Option<Instant>,
}

struct Stream {
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    handle: StreamHandle,
    metrics: Metrics,
    types: BTreeMap<String, TypeState>,
    nonce: u64,
    identified: bool,
}

pub(super) async fn run(
    requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    handle: StreamHandle,
    metrics: Metrics,
) {
    let stream = Stream { tx, handle, metrics, types: BTreeMap::new(), nonce: 0, identified: false };
    super::drive(requests, snapshots, stream).await;
}

impl super::AdsStream for Stream {
    type Request = DeltaDiscoveryRequest;

    fn type_urls(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
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
    async fn request(&mut self, request: DeltaDiscoveryRequest, snapshot: &Snapshot) -> Result<(), ()> {
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
        let Some(state) = self.types.get_mut(&type_url) else {
            let subscription = Subscription::from_names(&request.resource_names_subscribe);
            let state = TypeState {
                subscription,
                has: request.initial_resource_versions.into_iter().collect(),
                ..Default::default()
            };
            self.types.insert(type_url.clone(), state);
            return self.push(&type_url, snapshot, Instant::now(), true).await;
        };
        if !request.response_nonce.is_empty() && request.response_nonce == state.nonce {
            if let Some(error) = &request.error_detail {
                self.handle.nacked(name, &state.sent_version, &error.message);
                tracing::warn!(%name, version = %state.sent_version, error = %error.message, "NACK");
                state.pending_since = None;
            } else if let Some(since) = state.pending_since.take() {
                self.handle.acked(name, &state.sent_version);
                self.metrics.push_latency.observe(since.elapsed().as_secs_f64());
            }
        }
        let mut changed = false;
        for n in &request.resource_names_subscribe {
            if n == "*" {
                changed |= !state.subscription.wildcard;
                state.subscription.wildcard = true;
            } else {
                changed |= state.subscription.names.insert(n.clone());
            }
        }
        for n in &request.resource_names_unsubscribe {
            if n == "*" {
                changed |= state.subscription.wildcard;
                state.subscription.wildcard = false;
            } else {
                changed |= state.subscription.names.remove(n);
                state.has.remove(n);
            }
        }
        if changed {
            return self.push(&type_url, snapshot, Instant::now(), true).await;
        }
        Ok(())
    }

    /// Send what changed for the client since what it has.
    /// `force`: evaluate even if the type's version did not change (new or changed
    /// subscription).
    async fn push(&mut self, type_url: &str, snapshot: &Snapshot, since: Instant, force: bool) -> Result<(), ()> {
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let Some(current) = snapshot.get(type_url) else {
            return Ok(());
        };
        // Nothing of this type changed since the stream last looked: skip the scan (with
        // thousands of streams, this is most of the work of a push).
        if !force && state.responded && state.seen_type_version.as_deref() == Some(current.version.as_str()) {
            return Ok(());
        }
        state.seen_type_version = Some(current.version.clone());
        let mut resources = Vec::new();
        for r in current.resources.values() {
            if state.subscription.wants(r) && state.has.get(&r.name) != Some(&r.version) {
                resources.push(Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                });
            }
        }
        let removed_resources: Vec<String> = state
            .has
            .keys()
            .filter(|n| current.resources.get(*n).is_none_or(|r| !state.subscription.wants(r)))
            .cloned()
            .collect();
        if resources.is_empty() && removed_resources.is_empty() && state.responded {
            return Ok(());
        }
        self.nonce += 1;
        state.nonce = self.nonce.to_string();
        for name in &removed_resources {
            state.has.remove(name);
        }
        for r in &resources {
            state.has.insert(r.name.clone(), r.version.clone());
        }
        state.responded = true;
        state.sent_version.clone_from(&current.version);
        state.pending_since = Some(since);
        let response = DeltaDiscoveryResponse {
            system_version_info: current.version.clone(),
            resources,
            removed_resources,
            type_url: type_url.to_owned(),
            nonce: state.nonce.clone(),
            ..Default::default()
        };
        self.handle.sent(type_name(type_url), &current.version);
        self.tx.send(Ok(response)).await.map_err(|_| ())
    }
}
