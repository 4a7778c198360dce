//! One Delta (incremental) stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Streaming;

use super::encode::Encoded;
use super::view::Has;
use super::{Peer, Pusher, Subscription};
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, TypeSnapshot};
use crate::tracker::{StreamHandle, type_name};

/// What the stream did for one type.
#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// What the client has (from `initial_resource_versions`, then what was sent).
    has: Has,
    /// Whether a response was sent for this type (the first one goes out even when empty).
    responded: bool,
    /// The view version when the stream last compared it with what the client has.
    seen_version: Option<String>,
    sent_version: String,
    nonce: String,
    pending_since: Option<Instant>,
}

struct Stream {
    pusher: Pusher,
    handle: StreamHandle,
    metrics: Metrics,
    types: BTreeMap<String, TypeState>,
    nonce: u64,
    peer: Peer,
}

pub(super) async fn run(
    requests: Streaming<DeltaDiscoveryRequest>,
    pusher: Pusher,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    handle: StreamHandle,
    metrics: Metrics,
) {
    let stream = Stream { pusher, handle, metrics, types: BTreeMap::new(), nonce: 0, peer: Peer::default() };
    super::drive(requests, snapshots, stream).await;
}

impl super::AdsStream for Stream {
    type Request = DeltaDiscoveryRequest;

    fn type_urls(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    fn pusher(&mut self) -> &mut Pusher {
        &mut self.pusher
    }

    fn handle(&mut self) -> &mut StreamHandle {
        &mut self.handle
    }

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn peer_and_handle(&mut self) -> (&mut Peer, &mut StreamHandle) {
        (&mut self.peer, &mut self.handle)
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
        force: bool,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send {
        self.push(type_url, snapshot, since, force)
    }
}

impl Stream {
    async fn request(&mut self, request: DeltaDiscoveryRequest, snapshot: &Snapshot) -> Result<(), ()> {
        let type_url = request.type_url;
        if type_url.is_empty() {
            return Ok(());
        }
        let name = type_name(&type_url);
        let Some(state) = self.types.get_mut(&type_url) else {
            let subscription = Subscription::from_names(&request.resource_names_subscribe);
            let state = TypeState {
                subscription,
                has: Has::Listed(request.initial_resource_versions.into_iter().collect()),
                ..Default::default()
            };
            self.types.insert(type_url.clone(), state);
            return self.push(&type_url, snapshot, Instant::now(), true).await;
        };
        if !request.response_nonce.is_empty() && request.response_nonce == state.nonce {
            self.pusher.answered(&type_url);
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
        if !request.resource_names_unsubscribe.is_empty() {
            // The client drops what it unsubscribes from: it no longer has it.
            let mut has = state.has.listed();
            for n in &request.resource_names_unsubscribe {
                if n == "*" {
                    changed |= state.subscription.wildcard;
                    state.subscription.wildcard = false;
                } else {
                    changed |= state.subscription.names.remove(n);
                    has.remove(n);
                }
            }
            state.has = Has::Listed(has);
        }
        if changed {
            return self.push(&type_url, snapshot, Instant::now(), true).await;
        }
        Ok(())
    }

    /// Send what changed for the client since what it has.
    /// `force`: evaluate even if the view's version did not change (new or changed
    /// subscription).
    async fn push(&mut self, type_url: &str, snapshot: &Snapshot, since: Instant, force: bool) -> Result<(), ()> {
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let serves = &self.peer.serves;
        let current = snapshot.get(type_url).cloned().unwrap_or_else(|| Arc::new(TypeSnapshot::default()));
        let version = serves.view_version(&current);
        // Nothing this client sees of the type changed since the stream last looked: skip the
        // comparison.
        if !force && state.responded && state.seen_version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        state.seen_version = Some(version.clone());
        // A wildcard client holding a list (its first request, or what it kept after
        // unsubscribing) likely gets much of the type: wait for a permit first.
        if state.subscription.wildcard
            && matches!(state.has, Has::Listed(_))
            && current.resources.len() >= super::LARGE_RESPONSE
        {
            self.pusher.reserve().await?;
        }
        let diff = state.has.diff(&current, &state.subscription, serves);
        state.has = Has::view(&current, &state.subscription, serves);
        if diff.is_empty() && state.responded {
            return Ok(());
        }
        self.nonce += 1;
        state.nonce = self.nonce.to_string();
        state.responded = true;
        state.sent_version.clone_from(&version);
        state.pending_since = Some(since);
        let head = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            removed_resources: diff.removed,
            type_url: type_url.to_owned(),
            nonce: state.nonce.clone(),
            ..Default::default()
        };
        self.handle.sent(type_name(type_url), &version);
        self.pusher.send(type_url, Encoded::delta(&head, diff.send)).await
    }
}
