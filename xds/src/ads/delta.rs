//! Delta xDS (`DeltaAggregatedResources`): wildcard subscriptions, per-resource versions,
//! `initial_resource_versions` on reconnect.

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::stream::Variant;
use super::{AdsClient, Handler, Resource, Update, nack_status};

pub(super) struct Delta;

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn subscribe(client: &AdsClient, type_url: &str) -> DeltaDiscoveryRequest {
        let initial_resource_versions = client
            .accepted
            .get(type_url)
            .map(|a| a.resources.iter().map(|(name, r)| (name.clone(), r.version.clone())).collect())
            .unwrap_or_default();
        DeltaDiscoveryRequest {
            node: Some(client.config.node.clone()),
            type_url: type_url.to_owned(),
            initial_resource_versions,
            ..Default::default()
        }
    }

    fn notice(client: &AdsClient, type_url: &str) -> DeltaDiscoveryRequest {
        // No nonce and no (un)subscription: it only carries the node.
        DeltaDiscoveryRequest {
            node: Some(client.config.node.clone()),
            type_url: type_url.to_owned(),
            ..Default::default()
        }
    }

    async fn open(
        ads: &mut AggregatedDiscoveryServiceClient<Channel>,
        requests: tonic::Request<ReceiverStream<DeltaDiscoveryRequest>>,
    ) -> Result<Streaming<DeltaDiscoveryResponse>, tonic::Status> {
        Ok(ads.delta_aggregated_resources(requests).await?.into_inner())
    }

    fn apply(client: &mut AdsClient, handler: &dyn Handler, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
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
        DeltaDiscoveryRequest { type_url, response_nonce: response.nonce, error_detail, ..Default::default() }
    }
}
