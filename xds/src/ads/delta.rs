//! Delta xDS (`DeltaAggregatedResources`): wildcard subscriptions, per-resource versions,
//! `initial_resource_versions` on reconnect.

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{AdsClient, AdsError, Handler, Resource, Update, nack_status};

pub(super) async fn run(
    client: &mut AdsClient,
    channel: Channel,
    handler: &dyn Handler,
    delivered: &mut bool,
) -> Result<(), AdsError> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    for type_url in &client.config.type_urls {
        let initial_resource_versions = client
            .accepted
            .get(type_url)
            .map(|a| a.resources.iter().map(|(name, r)| (name.clone(), r.version.clone())).collect())
            .unwrap_or_default();
        let request = DeltaDiscoveryRequest {
            node: Some(client.config.node.clone()),
            type_url: type_url.clone(),
            initial_resource_versions,
            ..Default::default()
        };
        tx.send(request).await.map_err(|_| AdsError::RequestChannel)?;
    }
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let mut responses = ads.delta_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
    handler.connected(true);
    tracing::info!(server = %client.config.address, "xDS stream (delta) established");
    while let Some(response) = responses.message().await? {
        let type_url = response.type_url.clone();
        let accepted = client.accepted.entry(type_url.clone()).or_default();
        let mut next = accepted.resources.clone();
        for name in &response.removed_resources {
            next.remove(name);
        }
        for r in response.resources {
            let Some(any) = r.resource else {
                // A resource without a body is the server telling us it does not exist.
                next.remove(&r.name);
                continue;
            };
            next.insert(r.name, Resource { version: r.version, any });
        }
        let update = Update { type_url: &type_url, version: &response.system_version_info, resources: &next };
        let error_detail = match handler.update(&update) {
            Ok(()) => {
                accepted.resources = next;
                accepted.version = response.system_version_info.clone();
                None
            }
            Err(detail) => {
                tracing::warn!(r#type = %super::type_name(&type_url), error = %detail, "xDS update rejected (NACK)");
                Some(nack_status(detail))
            }
        };
        *delivered = true;
        let ack =
            DeltaDiscoveryRequest { type_url, response_nonce: response.nonce, error_detail, ..Default::default() };
        tx.send(ack).await.map_err(|_| AdsError::RequestChannel)?;
    }
    Err(AdsError::Closed)
}
