//! State-of-the-world xDS (`StreamAggregatedResources`): every response carries all resources of
//! its type; ACK echoes its version and nonce, NACK its nonce with the previous version.

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{AdsClient, AdsError, Handler, Resource, TypeResources, Update, nack_status};

pub(super) async fn run(
    client: &mut AdsClient,
    channel: Channel,
    handler: &dyn Handler,
    delivered: &mut bool,
) -> Result<(), AdsError> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    for type_url in &client.config.type_urls {
        let version_info = client.accepted.get(type_url).map(|a| a.version.clone()).unwrap_or_default();
        let request = DiscoveryRequest {
            node: Some(client.config.node.clone()),
            type_url: type_url.clone(),
            version_info,
            ..Default::default()
        };
        tx.send(request).await.map_err(|_| AdsError::RequestChannel)?;
    }
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let mut responses = ads.stream_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
    handler.connected(true);
    tracing::info!(server = %client.config.address, "xDS stream (state of the world) established");
    while let Some(response) = responses.message().await? {
        let type_url = response.type_url.clone();
        let accepted = client.accepted.entry(type_url.clone()).or_default();
        let mut next = TypeResources::new();
        let mut problems = Vec::new();
        for any in response.resources {
            match super::resource_name(&any) {
                Ok(name) => {
                    next.insert(name, Resource { version: response.version_info.clone(), any });
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        let result = if problems.is_empty() {
            handler.update(&Update { type_url: &type_url, version: &response.version_info, resources: &next })
        } else {
            Err(problems.join("; "))
        };
        let (version_info, error_detail) = match result {
            Ok(()) => {
                accepted.resources = next;
                accepted.version = response.version_info.clone();
                (response.version_info, None)
            }
            Err(detail) => {
                tracing::warn!(r#type = %super::type_name(&type_url), error = %detail, "xDS update rejected (NACK)");
                (accepted.version.clone(), Some(nack_status(detail)))
            }
        };
        *delivered = true;
        let ack = DiscoveryRequest {
            type_url,
            version_info,
            response_nonce: response.nonce,
            error_detail,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|_| AdsError::RequestChannel)?;
    }
    Err(AdsError::Closed)
}
