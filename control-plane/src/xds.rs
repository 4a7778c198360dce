//! The ADS server (gRPC, Envoy v3): `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources`, serving the current [`Snapshot`]. Each stream runs in its own
//! task, subscribes to snapshot changes and pushes a type only when what the client should have
//! differs from what it was sent. Versions and nonces as Envoy does them; ACK/NACK per type are
//! recorded in the [`Tracker`].
//!
//! What a proxy should have is its view of the snapshot: every outbound resource, plus the
//! resources scoped to its own service (its inbound listener), never another service's. A node
//! proxy's own services are those of the workloads it serves now.
//!
//! Memory is what bounds how many proxies one control plane serves, so the streams share
//! rather than copy: responses are written from each resource's encoded bytes, encoded once
//! per snapshot (`encode`), what a client holds is a reference to the type snapshot it was sent
//! (`view`), large responses (initial configs) are sent by a bounded number of streams at a
//! time, each holding its permit until the client has answered, and the HTTP/2 windows and send
//! buffers are small.

/// Who a stream is: client certificate, join token, or nobody.
pub mod auth;
mod delta;
pub(crate) mod encode;
mod sotw;
mod view;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tonic::Streaming;

use crate::ca::serving::{self, PeerIdentity};
use crate::endpoints::Registry;
use crate::metrics::Metrics;
use crate::snapshot::{Scope, Snapshot, XdsResource};
use crate::tracker::{StreamHandle, Tracker};
use encode::{AdsBody, Encoded};

/// Responses queued per stream before the stream's task waits for the transport. They hold
/// references to shared encoded resources, not copies.
const STREAM_BUFFER: usize = 8;

/// A response with at least this many resources is large (an initial config, or a change to
/// most of the mesh): only [`LARGE_PUSHES`] streams send one at a time.
const LARGE_RESPONSE: usize = 64;

/// How many streams may have a large response unanswered at once (istiod bounds its
/// concurrent pushes the same way, `PILOT_PUSH_THROTTLE`, default 100).
const LARGE_PUSHES: usize = 64;

/// A client that neither ACKs nor NACKs a large response within this gives its permit back.
const PERMIT_HOLD: Duration = Duration::from_secs(5);

/// HTTP/2 flow-control windows for what clients send (requests are small; a reconnecting
/// client's list of what it has is paced by window updates). What the server sends is bounded
/// by [`SEND_BUFFER`] and by the response body handing over at most one chunk at a time.
const STREAM_WINDOW: u32 = 64 << 10;
const CONNECTION_WINDOW: u32 = 256 << 10;
/// Bytes the transport buffers per stream beyond the peer's window.
const SEND_BUFFER: usize = 64 << 10;

const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct AdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    tracker: Arc<Tracker>,
    metrics: Metrics,
    registry: Arc<Registry>,
    large_pushes: Arc<Semaphore>,
    /// Binds authenticated proxies to the namespace of the Service they claim.
    namespace_of: Option<crate::tracker::NamespaceOf>,
    /// Where load reports (LRS on the same port) go; without it the method is UNIMPLEMENTED.
    stats: Option<Arc<crate::stats::Stats>>,
    /// Served over TLS: load reports then need a client certificate (they decide rollouts).
    reports_need_identity: bool,
    /// Who each stream is, and whether unauthenticated ones may register endpoints.
    auth: auth::Authenticator,
}

impl AdsServer {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        tracker: Arc<Tracker>,
        metrics: Metrics,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            snapshots,
            tracker,
            metrics,
            registry,
            large_pushes: Arc::new(Semaphore::new(LARGE_PUSHES)),
            namespace_of: None,
            stats: None,
            reports_need_identity: false,
            auth: auth::Authenticator::default(),
        }
    }

    /// Serve load reports (LRS) into `stats`.
    pub fn with_stats(mut self, stats: Arc<crate::stats::Stats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// How streams authenticate (join tokens) and whether unauthenticated ones may register
    /// endpoints (`--insecure-registration`). Without it: certificates only, no plaintext
    /// registration.
    pub fn with_authenticator(mut self, auth: auth::Authenticator) -> Self {
        self.auth = auth;
        self
    }

    /// Authenticated proxies (xDS over mTLS) may only claim Services of their own namespace.
    pub fn with_service_namespaces(mut self, namespace_of: crate::tracker::NamespaceOf) -> Self {
        self.namespace_of = Some(namespace_of);
        self
    }

    /// Serve on `listener` until the task is dropped (HTTP/2 straight on hyper, with the two
    /// ADS methods written by hand: tonic's generated server encodes every response into a
    /// per-stream buffer that keeps the capacity of the largest response for the life of the
    /// stream, which at thousands of streams is most of the memory).
    pub async fn serve(self, listener: TcpListener) {
        self.serve_with(listener, None).await;
    }

    /// [`AdsServer::serve`], over TLS when `tls` is given: a client certificate, when presented,
    /// is verified and its identity passed to the streams ([`PeerIdentity`]).
    pub async fn serve_with(mut self, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        self.reports_need_identity = tls.is_some();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "xDS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let result = match tls {
                    None => serve_connection(stream, server, None).await,
                    Some(acceptor) => match serving::accept(&acceptor, stream).await {
                        Ok((stream, identity)) => serve_connection(stream, server, identity).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "xDS TLS handshake failed");
                            return;
                        }
                    },
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "xDS connection ended");
                }
            });
        }
    }

    fn call(&self, req: http::Request<Incoming>, identity: Option<&PeerIdentity>) -> http::Response<AdsBody> {
        if req.uri().path() == crate::stats::lrs::PATH
            && let Some(stats) = &self.stats
        {
            if self.reports_need_identity && identity.is_none() {
                return encode::refused(
                    tonic::Code::Unauthenticated,
                    "load reports over TLS need a client certificate of the mesh CA (a proxy with a workload identity)",
                );
            }
            return crate::stats::lrs::call(stats.clone(), req.into_body());
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let status = encode::EndStatus::default();
        let pusher = Pusher::new(tx, self.large_pushes.clone(), status.clone());
        let auth = self.auth.authenticate(req.headers(), identity);
        let limit = auth.max_request();
        match req.uri().path() {
            SOTW_PATH => {
                let requests = decode::<DiscoveryRequest>(req.into_body(), limit);
                let mut handle = self.tracker.connect("sotw", &self.metrics, &self.registry);
                handle.authenticated(auth, self.auth.insecure_registration);
                handle.scoped(self.namespace_of.clone());
                tokio::spawn(sotw::run(requests, pusher, self.snapshots.clone(), handle, self.metrics.clone()));
            }
            DELTA_PATH => {
                let requests = decode::<DeltaDiscoveryRequest>(req.into_body(), limit);
                let mut handle = self.tracker.connect("delta", &self.metrics, &self.registry);
                handle.authenticated(auth, self.auth.insecure_registration);
                handle.scoped(self.namespace_of.clone());
                tokio::spawn(delta::run(requests, pusher, self.snapshots.clone(), handle, self.metrics.clone()));
            }
            other => {
                tracing::debug!(path = %other, "unknown gRPC method");
                return encode::unimplemented(other);
            }
        }
        encode::response(AdsBody::new(rx, status))
    }
}

/// One HTTP/2 connection of gRPC; `identity` is the client certificate's (xDS over TLS).
async fn serve_connection<IO>(io: IO, server: AdsServer, identity: Option<PeerIdentity>) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let server = server.clone();
        let identity = identity.clone();
        async move { Ok::<_, Infallible>(server.call(req, identity.as_ref())) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buf_size(SEND_BUFFER)
        .serve_connection(TokioIo::new(io), service)
        .await
}

/// The stream's requests, each at most `limit` bytes (a larger one ends the stream with
/// `OUT_OF_RANGE`).
fn decode<M: prost::Message + Default + Send + 'static>(body: Incoming, limit: usize) -> Streaming<M> {
    Streaming::new_request(SmallBuffer(tonic_prost::ProstDecoder::<M>::default()), body, None, Some(limit))
}

/// What a stream's request buffer starts with. Most requests are ACKs of a few hundred bytes;
/// tonic's default (8 KiB, allocated when the stream starts) was held by every connected proxy.
/// A larger request grows the buffer as it comes.
const REQUEST_BUFFER: usize = 512;

/// A decoder that starts with a [`REQUEST_BUFFER`] instead of tonic's default.
#[derive(Debug)]
struct SmallBuffer<D>(D);

impl<D: tonic::codec::Decoder> tonic::codec::Decoder for SmallBuffer<D> {
    type Item = D::Item;
    type Error = D::Error;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        // The yield threshold (tonic's default) is for encoding, which this decoder does not do.
        tonic::codec::BufferSettings::new(REQUEST_BUFFER, 32 << 10)
    }
}

/// Which resources of a type a client asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Subscription {
    /// Everything served to wildcard subscriptions (sidecars).
    wildcard: bool,
    /// Resources asked for by name (gRPC clients, Envoy's RDS/EDS).
    names: BTreeSet<String>,
}

impl Subscription {
    /// A SotW request's `resource_names`: none (or `*`) means wildcard.
    fn from_names(names: &[String]) -> Self {
        let wildcard = names.is_empty() || names.iter().any(|n| n == "*");
        Self { wildcard, names: names.iter().filter(|n| *n != "*").cloned().collect() }
    }

    /// Whether a proxy serving `serves` with this subscription gets `resource`.
    fn wants(&self, resource: &XdsResource, serves: &Serves) -> bool {
        match &resource.scope {
            Scope::All => self.wildcard || self.names.contains(&resource.name),
            Scope::ByName => self.names.contains(&resource.name),
            Scope::Service(s) => serves.contains(s) && (self.wildcard || self.names.contains(&resource.name)),
        }
    }
}

/// Whose scoped resources (inbound config) a proxy gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Serves {
    /// A sidecar of one service (empty: a client of none, which gets no inbound config).
    Service(String),
    /// A node proxy: the services of the workloads it serves now (its node metadata
    /// `workloads`), never any other's.
    Node(Arc<BTreeSet<String>>),
}

impl Default for Serves {
    fn default() -> Self {
        Serves::Service(String::new())
    }
}

impl Serves {
    fn contains(&self, service: &str) -> bool {
        match self {
            Serves::Service(s) => !s.is_empty() && s == service,
            Serves::Node(set) => set.contains(service),
        }
    }

    /// The version of what this proxy sees of `t`: the type's version plus that of each
    /// served service's scoped resources (named, for a node proxy: its set changes).
    fn view_version(&self, t: &crate::snapshot::TypeSnapshot) -> String {
        match self {
            Serves::Service(s) => t.view_version(s),
            Serves::Node(set) => {
                let mut v = t.version.clone();
                for (service, scoped) in set.iter().filter_map(|s| Some((s, t.scoped.get(s)?))) {
                    v.push('+');
                    v.push_str(service);
                    v.push(':');
                    v.push_str(scoped);
                }
                v
            }
        }
    }
}

/// Node metadata `draining: true`: the proxy is leaving (it stopped accepting), so its
/// workload is no longer an endpoint.
fn node_draining(node: &Node) -> bool {
    use envoy_types::pb::google::protobuf::value::Kind;
    matches!(
        node.metadata.as_ref().and_then(|m| m.fields.get("draining")).and_then(|v| v.kind.as_ref()),
        Some(Kind::BoolValue(true))
    )
}

/// Who the stream serves, from the node of its requests.
#[derive(Debug, Default)]
struct Peer {
    identified: bool,
    /// Whose scoped resources the proxy gets.
    serves: Serves,
    node_mode: bool,
}

impl Peer {
    /// The first node identifies the proxy (and registers its workload); a node that says it
    /// is draining deregisters it. A node proxy sends its node again whenever its workloads
    /// change: `Ok(true)` when what it serves changed (every type is then evaluated again).
    /// `Err` (PermissionDenied) when the node claims another identity than its certificate's.
    fn on_node(&mut self, node: Option<&Node>, handle: &mut StreamHandle) -> Result<bool, tonic::Status> {
        let Some(node) = node else {
            return Ok(false);
        };
        let draining = node_draining(node);
        if !self.identified {
            handle.authorize(node)?;
            self.identified = true;
            self.node_mode = crate::tracker::is_node_mode(node);
            handle.identify(node, draining);
            self.serves = if self.node_mode {
                if !draining {
                    handle.sync_workloads(node);
                }
                Serves::Node(Arc::new(crate::tracker::node_workload_services(node)))
            } else {
                Serves::Service(crate::tracker::node_service(node))
            };
            return Ok(false);
        }
        if draining {
            handle.leave();
        } else if self.node_mode {
            handle.sync_workloads(node);
            let serves = Serves::Node(Arc::new(crate::tracker::node_workload_services(node)));
            if serves != self.serves {
                self.serves = serves;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Sends a stream's responses; a large one first takes one of the shared permits, held until
/// the client has answered every large response (or for [`PERMIT_HOLD`]).
#[derive(Debug)]
struct Pusher {
    tx: mpsc::Sender<Encoded>,
    permits: Arc<Semaphore>,
    permit: Option<(OwnedSemaphorePermit, Instant)>,
    /// Types with a large response not yet answered.
    unanswered: BTreeSet<String>,
    /// The status the stream ends with.
    status: encode::EndStatus,
}

impl Pusher {
    fn new(tx: mpsc::Sender<Encoded>, permits: Arc<Semaphore>, status: encode::EndStatus) -> Self {
        Self { tx, permits, permit: None, unanswered: BTreeSet::new(), status }
    }

    /// Ends the stream with this gRPC status instead of OK (once the caller returns).
    fn fail(&self, status: &tonic::Status) {
        self.status.set(status);
    }

    /// Take a permit (if the stream holds none) before building a response that may be large:
    /// a stream that waits for one then holds nothing of it yet. When thousands of proxies
    /// connect at once, each had built its first responses (references to every resource of
    /// a type, tens of KB) before waiting, and the allocator kept that memory afterwards.
    async fn reserve(&mut self) -> Result<(), ()> {
        if self.permit.is_none() {
            let permit = self.permits.clone().acquire_owned().await.map_err(|_| ())?;
            self.permit = Some((permit, Instant::now() + PERMIT_HOLD));
        }
        Ok(())
    }

    async fn send(&mut self, type_url: &str, message: Encoded) -> Result<(), ()> {
        if message.resources() >= LARGE_RESPONSE {
            self.reserve().await?;
            self.unanswered.insert(type_url.to_owned());
        } else if self.unanswered.is_empty() {
            // Reserved for a response that turned out small.
            self.permit = None;
        }
        self.tx.send(message).await.map_err(|_| ())
    }

    /// The client ACKed or NACKed the latest response of `type_url`.
    fn answered(&mut self, type_url: &str) {
        self.unanswered.remove(type_url);
        if self.unanswered.is_empty() {
            self.permit = None;
        }
    }

    fn permit_deadline(&self) -> Option<Instant> {
        self.permit.as_ref().map(|(_, deadline)| *deadline)
    }

    fn release(&mut self) {
        tracing::debug!(types = ?self.unanswered, "no answer to a large response in time; permit released");
        self.unanswered.clear();
        self.permit = None;
    }
}

/// What the SotW and Delta streams have in common: they answer requests and push
/// snapshots; [`drive`] is the one loop that feeds them.
trait AdsStream: Send {
    type Request: Send + 'static;
    /// The type URLs the client has subscribed to.
    fn type_urls(&self) -> Vec<String>;
    fn pusher(&mut self) -> &mut Pusher;
    fn handle(&mut self) -> &mut StreamHandle;
    /// The node a request carries (the first one identifies the proxy).
    fn node(request: &Self::Request) -> Option<&Node>;
    fn peer_and_handle(&mut self) -> (&mut Peer, &mut StreamHandle);
    fn on_request(
        &mut self,
        request: Self::Request,
        snapshot: &Snapshot,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send;
    /// `force`: evaluate even if the view's version did not change.
    fn on_push(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
        since: Instant,
        force: bool,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send;
}

/// Answer the client's requests and push every new snapshot (in push order)
/// until either side goes away. A client that closes its side cleanly is leaving: its
/// workload is deregistered at once (a broken stream keeps it for the grace period).
async fn drive<S: AdsStream>(
    mut requests: tonic::Streaming<S::Request>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut stream: S,
) {
    loop {
        let deadline = stream.pusher().permit_deadline();
        tokio::select! {
            request = requests.message() => {
                let request = match request {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        stream.handle().leave();
                        break;
                    }
                    Err(status) if status.code() == tonic::Code::OutOfRange => {
                        // A request over the stream's limit (much smaller when unauthenticated).
                        tracing::warn!(%status, "xDS stream ended: request too large");
                        stream.pusher().fail(&status);
                        break;
                    }
                    Err(status) => {
                        tracing::debug!(%status, "xDS stream ended");
                        break;
                    }
                };
                // Identify (and authorize) the proxy before anything it asks for.
                let (peer, handle) = stream.peer_and_handle();
                let rescoped = match peer.on_node(S::node(&request), handle) {
                    Ok(rescoped) => rescoped,
                    Err(status) => {
                        stream.pusher().fail(&status);
                        break;
                    }
                };
                stream.handle().seen();
                let snapshot = snapshots.borrow_and_update().clone();
                if rescoped {
                    // A node proxy's workloads changed: what it should have of every type too.
                    for type_url in push_order(stream.type_urls().iter()) {
                        if stream.on_push(&type_url, &snapshot, Instant::now(), true).await.is_err() {
                            return;
                        }
                    }
                }
                if stream.on_request(request, &snapshot).await.is_err() {
                    break;
                }
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                let types = stream.type_urls();
                for type_url in push_order(types.iter()) {
                    if stream.on_push(&type_url, &snapshot, snapshot.created, false).await.is_err() {
                        return;
                    }
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                stream.pusher().release();
            }
        }
    }
}

/// The resource types in push order: clusters and endpoints before the listeners and routes
/// that refer to them.
fn push_order<'a>(types: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut list: Vec<String> = types.cloned().collect();
    let rank = |t: &str| outrider_xds::ads::TYPE_URLS.iter().position(|u| *u == t).unwrap_or(usize::MAX);
    list.sort_by_key(|t| rank(t));
    list
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
