//! The ADS server (gRPC, Envoy v3): `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources`, serving the current [`Snapshot`]. Each stream runs in its own
//! task, subscribes to snapshot changes and pushes a type only when what the client should have
//! differs from what it was sent. Versions and nonces as Envoy does them; ACK/NACK per type are
//! recorded in the [`Tracker`].

mod delta;
mod sotw;

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ca::serving::{self, PeerIdentity, WithPeer};
use crate::endpoints::Registry;
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, XdsResource};
use crate::tracker::Tracker;

/// Responses queued per stream before the stream's task waits for the transport.
const STREAM_BUFFER: usize = 8;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct AdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    tracker: Arc<Tracker>,
    metrics: Metrics,
    registry: Arc<Registry>,
}

impl AdsServer {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        tracker: Arc<Tracker>,
        metrics: Metrics,
        registry: Arc<Registry>,
    ) -> Self {
        Self { snapshots, tracker, metrics, registry }
    }

    /// Serve on `listener` until the task is dropped (HTTP/2 straight on hyper: tonic's router
    /// would bring axum along for one service).
    pub async fn serve(self, listener: TcpListener) {
        self.serve_with(listener, None).await;
    }

    /// [`AdsServer::serve`], over TLS when `tls` is given: a client certificate, when presented,
    /// is verified and its identity passed to the streams ([`PeerIdentity`]).
    pub async fn serve_with(self, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        let service = AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(256 << 20);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "xDS accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let result = match tls {
                    None => serve_connection(stream, WithPeer::new(service, None)).await,
                    Some(acceptor) => match serving::accept(&acceptor, stream).await {
                        Ok((stream, identity)) => serve_connection(stream, WithPeer::new(service, identity)).await,
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
}

/// One HTTP/2 connection of gRPC.
async fn serve_connection<IO>(
    io: IO,
    service: WithPeer<AggregatedDiscoveryServiceServer<AdsServer>>,
) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .await
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut handle = self.tracker.connect("sotw", &self.metrics, &self.registry);
        handle.authenticated(request.extensions().get::<PeerIdentity>());
        tokio::spawn(sotw::run(request.into_inner(), tx, self.snapshots.clone(), handle, self.metrics.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut handle = self.tracker.connect("delta", &self.metrics, &self.registry);
        handle.authenticated(request.extensions().get::<PeerIdentity>());
        tokio::spawn(delta::run(request.into_inner(), tx, self.snapshots.clone(), handle, self.metrics.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

    fn wants(&self, resource: &XdsResource) -> bool {
        (self.wildcard && resource.wildcard) || self.names.contains(&resource.name)
    }
}

/// What the SotW and Delta streams have in common: they answer requests and push
/// snapshots; [`drive`] is the one loop that feeds them.
trait AdsStream: Send {
    type Request: Send + 'static;
    /// The type URLs the client has subscribed to.
    fn type_urls(&self) -> Vec<String>;
    fn on_request(
        &mut self,
        request: Self::Request,
        snapshot: &Snapshot,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send;
    fn on_push(
        &mut self,
        type_url: &str,
        snapshot: &Snapshot,
        since: tokio::time::Instant,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send;
}

/// Answer the client's requests and push every new snapshot (in push order)
/// until either side goes away.
async fn drive<S: AdsStream>(
    mut requests: tonic::Streaming<S::Request>,
    mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    mut stream: S,
) {
    loop {
        tokio::select! {
            request = requests.message() => {
                let request = match request {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "xDS stream ended");
                        break;
                    }
                };
                let snapshot = snapshots.borrow_and_update().clone();
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
                    if stream.on_push(&type_url, &snapshot, snapshot.created).await.is_err() {
                        return;
                    }
                }
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
