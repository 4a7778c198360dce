//! The one stream loop shared by both ADS variants: subscribe to every type (saying what the
//! client already has), apply each response and answer it (ACK or NACK), and when the proxy
//! starts draining, send the notice and close the request side.

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::{AdsClient, AdsError, Handler};

/// Requests queued before the stream's task waits for the transport.
const REQUEST_BUFFER: usize = 16;

/// What differs between state of the world and Delta.
pub(super) trait Variant {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// For logs: `delta`, `state of the world`.
    const NAME: &'static str;

    /// The first request for `type_url` on a new stream, telling what the client has.
    fn subscribe(client: &AdsClient, type_url: &str) -> Self::Request;

    /// A request that changes nothing but carries the (draining) node.
    fn notice(client: &AdsClient, type_url: &str) -> Self::Request;

    fn open(
        ads: &mut AggregatedDiscoveryServiceClient<Channel>,
        requests: tonic::Request<ReceiverStream<Self::Request>>,
    ) -> impl std::future::Future<Output = Result<Streaming<Self::Response>, tonic::Status>> + Send;

    /// Apply a response through `handler`; returns its ACK or NACK.
    fn apply(client: &mut AdsClient, handler: &dyn Handler, response: Self::Response) -> Self::Request;
}

/// One stream, until it ends. `Ok` when the server ended it after the drain notice.
pub(super) async fn run<V: Variant>(
    client: &mut AdsClient,
    channel: Channel,
    handler: &dyn Handler,
    delivered: &mut bool,
) -> Result<(), AdsError> {
    // Already draining: the node says so on the first request, no notice needed.
    let mut noticed = client.draining();
    let (tx, rx) = mpsc::channel::<V::Request>(REQUEST_BUFFER);
    for type_url in &client.config.type_urls {
        tx.send(V::subscribe(client, type_url)).await.map_err(|_| AdsError::RequestChannel)?;
    }
    let mut tx = Some(tx);
    let mut ads = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(client.config.max_message);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(path) = &client.config.join_token {
        // Read at every connect: a replaced token file is picked up.
        let token = crate::join_token::read(path)
            .map_err(|e| e.to_string())
            .and_then(|t| crate::join_token::bearer(&t).parse().map_err(|e| format!("{e}")));
        match token {
            Ok(value) => {
                request.metadata_mut().insert(crate::join_token::METADATA_KEY, value);
            }
            Err(error) => tracing::warn!(
                %error,
                "connecting to the xDS server without the join token: the control plane will not register this workload"
            ),
        }
    }
    let mut responses = V::open(&mut ads, request).await?;
    handler.connected(true);
    tracing::info!(server = %client.config.address, protocol = V::NAME, "xDS stream established");
    let mut draining = client.draining.clone();
    let mut nodes = client.node_updates.clone();
    loop {
        tokio::select! {
            response = responses.message() => {
                let Some(response) = response? else {
                    if tx.is_none() {
                        handler.left();
                        return Ok(());
                    }
                    return Err(AdsError::Closed);
                };
                let answer = V::apply(client, handler, response);
                *delivered = true;
                // After the notice the request side is closed: the server is ending the stream.
                if let Some(tx) = &tx {
                    tx.send(answer).await.map_err(|_| AdsError::RequestChannel)?;
                }
            }
            () = node_changed(&mut nodes) => {
                client.refresh_node();
                if let (Some(first), Some(tx)) = (client.config.type_urls.first(), &tx) {
                    tx.send(V::notice(client, first)).await.map_err(|_| AdsError::RequestChannel)?;
                }
            }
            () = drain_started(&mut draining), if !noticed => {
                noticed = client.draining();
                if let (Some(first), Some(tx)) = (client.config.type_urls.first(), tx.take()) {
                    tracing::info!(server = %client.config.address, "draining: telling the xDS server this workload is leaving");
                    tx.send(V::notice(client, first)).await.map_err(|_| AdsError::RequestChannel)?;
                }
            }
        }
    }
}

/// Resolves when a new node was published; never without updates.
async fn node_changed(
    nodes: &mut Option<tokio::sync::watch::Receiver<envoy_types::pb::envoy::config::core::v3::Node>>,
) {
    match nodes {
        Some(n) => {
            if n.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Resolves when the watched drain flag is (or becomes) true; never without one.
async fn drain_started(draining: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match draining {
        Some(d) => {
            if d.wait_for(|d| *d).await.is_err() {
                // The drain root is gone: nothing more will be said.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
