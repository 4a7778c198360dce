//! One state-of-the-world stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
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
    /// What the last response left the client with, `None` before the first.
    sent: Option<Has>,
    sent_version: String,
    nonce: String,
    /// The view version when the stream last compared it with what the client has.
    seen_version: Option<String>,
    /// When the snapshot of the unacknowledged response was made.
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
    requests: Streaming<DiscoveryRequest>,
    pusher: Pusher,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    handle: StreamHandle,
    metrics: Metrics,
) {
    let stream = Stream { pusher, handle, metrics, types: BTreeMap::new(), nonce: 0, peer: Peer::default() };
    super::drive(requests, snapshots, stream).await;
}

impl super::AdsStream for Stream {
    type Request = DiscoveryRequest;

    fn type_urls(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    fn pusher(&mut self) -> &mut Pusher {
        &mut self.pusher
    }

    fn handle(&mut self) -> &mut StreamHandle {
        &mut self.handle
    }

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn peer_and_handle(&mut self) -> (&mut Peer, &mut StreamHandle) {
        (&mut self.peer, &mut self.handle)
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
        force: bool,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send {
        self.push(type_url, snapshot, since, force)
    }
}

impl Stream {
    async fn request(&mut self, request: DiscoveryRequest, snapshot: &Snapshot) -> Result<(), ()> {
        let type_url = request.type_url;
        if type_url.is_empty() {
            return Ok(());
        }
        let name = type_name(&type_url);
        let subscription = Subscription::from_names(&request.resource_names);
        let Some(state) = self.types.get_mut(&type_url) else {
            // First request for this type: a reconnecting client tells what it has.
            let mut state = TypeState { subscription, ..Default::default() };
            if let Some(current) = snapshot.get(&type_url)
                && !request.version_info.is_empty()
                && self.peer.serves.view_version(current) == request.version_info
            {
                state.sent = Some(Has::view(current, &state.subscription, &self.peer.serves));
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
        self.pusher.answered(&type_url);
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
    /// `force`: evaluate even if the view's version did not change (new or changed
    /// subscription).
    async fn push(&mut self, type_url: &str, snapshot: &Snapshot, since: Instant, force: bool) -> Result<(), ()> {
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let serves = &self.peer.serves;
        let current = snapshot.get(type_url).cloned().unwrap_or_else(|| Arc::new(TypeSnapshot::default()));
        let version = serves.view_version(&current);
        if !force && state.sent.is_some() && state.seen_version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        state.seen_version = Some(version.clone());
        if let Some(sent) = &state.sent
            && sent.diff(&current, &state.subscription, serves).is_empty()
        {
            state.sent = Some(Has::view(&current, &state.subscription, serves));
            return Ok(());
        }
        // A wildcard client gets every resource of the type: wait for a permit first when that
        // is a large response.
        if state.subscription.wildcard && current.resources.len() >= super::LARGE_RESPONSE {
            self.pusher.reserve().await?;
        }
        let resources = current.resources.values().filter(|r| state.subscription.wants(r, serves)).cloned().collect();
        self.nonce += 1;
        state.nonce = self.nonce.to_string();
        state.sent = Some(Has::view(&current, &state.subscription, serves));
        state.sent_version.clone_from(&version);
        state.pending_since = Some(since);
        let head = DiscoveryResponse {
            version_info: version.clone(),
            type_url: type_url.to_owned(),
            nonce: state.nonce.clone(),
            ..Default::default()
        };
        self.handle.sent(type_name(type_url), &version);
        self.pusher.send(type_url, Encoded::sotw(&head, resources)).await
    }
}
