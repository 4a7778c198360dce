//! State-of-the-world xDS (`StreamAggregatedResources`): every response carries all resources of
//! its type; ACK echoes its version and nonce, NACK its nonce with the previous version.

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::stream::Variant;
use super::{AdsClient, Handler, Resource, TypeResources, Update, nack_status};

pub(super) struct Sotw;

impl Variant for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "state of the world";

    fn subscribe(client: &AdsClient, type_url: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            node: Some(client.config.node.clone()),
            type_url: type_url.to_owned(),
            version_info: client.accepted.get(type_url).map(|a| a.version.clone()).unwrap_or_default(),
            ..Default::default()
        }
    }

    fn notice(client: &AdsClient, type_url: &str) -> DiscoveryRequest {
        // No nonce: not an answer to any response, so a server takes it as stale (Envoy's
        // servers ignore those) and only reads the node.
        Self::subscribe(client, type_url)
    }

    async fn open(
        ads: &mut AggregatedDiscoveryServiceClient<Channel>,
        requests: tonic::Request<ReceiverStream<DiscoveryRequest>>,
    ) -> Result<Streaming<DiscoveryResponse>, tonic::Status> {
        Ok(ads.stream_aggregated_resources(requests).await?.into_inner())
    }

    fn apply(client: &mut AdsClient, handler: &dyn Handler, response: DiscoveryResponse) -> DiscoveryRequest {
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
        DiscoveryRequest { type_url, version_info, response_nonce: response.nonce, error_detail, ..Default::default() }
    }
}
