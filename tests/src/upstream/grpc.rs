use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::{Request, Response, Status, Streaming};
use tower::ServiceExt;

use super::{Log, Seen, Upstream, X_UPSTREAM};

/// Path prefix of the Authorization service.
pub const AUTH_PREFIX: &str = "/envoy.service.auth.v3.Authorization/";
/// Path prefix of the ADS service.
pub const ADS_PREFIX: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/";

/// Builds a gRPC upstream.
///
/// - `Authorization/Check` answers OK with `status.message = "NAME checked PATH"`, where
///   PATH is `attributes.request.http.path` of the request.
/// - `StreamAggregatedResources` answers each request with a response carrying its
///   `version_info`, `type_url`, its `response_nonce` as `nonce`, and
///   `control_plane.identifier = NAME`.
///
/// Responses carry `x-upstream: NAME` metadata.
#[derive(Clone, Debug)]
pub struct GrpcBuilder {
    name: String,
}

impl Default for GrpcBuilder {
    fn default() -> Self {
        Self { name: "grpc".into() }
    }
}

#[derive(Clone, Debug)]
struct Echo {
    name: Arc<str>,
}

impl Echo {
    fn tag<T>(&self, mut resp: Response<T>) -> Response<T> {
        if let Ok(v) = self.name.parse() {
            resp.metadata_mut().insert(X_UPSTREAM, v);
        }
        resp
    }
}

#[tonic::async_trait]
impl Authorization for Echo {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let path = request
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .map(|h| h.path)
            .unwrap_or_default();
        let status = RpcStatus { code: 0, message: format!("{} checked {path}", self.name), details: vec![] };
        Ok(self.tag(Response::new(CheckResponse { status: Some(status), ..Default::default() })))
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Echo {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let name = self.name.to_string();
        let out = request.into_inner().map(move |r| {
            r.map(|req| DiscoveryResponse {
                version_info: req.version_info,
                type_url: req.type_url,
                nonce: req.response_nonce,
                control_plane: Some(ControlPlane { identifier: name.clone() }),
                ..Default::default()
            })
        });
        Ok(self.tag(Response::new(Box::pin(out) as Self::StreamAggregatedResourcesStream)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("the test upstream does not do delta xDS"))
    }
}

impl GrpcBuilder {
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    pub async fn start(self) -> Upstream {
        let echo = Echo { name: Arc::from(self.name.as_str()) };
        let auth = AuthorizationServer::new(echo.clone());
        let ads = AggregatedDiscoveryServiceServer::new(echo);
        super::serve(self.name, move |stream, log| {
            let auth = auth.clone();
            let ads = ads.clone();
            async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    record(&log, &req);
                    let auth = auth.clone();
                    let ads = ads.clone();
                    async move {
                        let path = req.uri().path();
                        let resp = if path.starts_with(AUTH_PREFIX) {
                            auth.oneshot(req).await?
                        } else if path.starts_with(ADS_PREFIX) {
                            ads.oneshot(req).await?
                        } else {
                            Status::unimplemented(format!("no service for {path}")).into_http()
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        })
        .await
    }
}

fn record<B>(log: &Log, req: &http::Request<B>) {
    log.record(Seen {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
        body: bytes::Bytes::new(),
        trailers: None,
        // Recorded at the request head: the gRPC upstream does not follow the body.
        complete: true,
    });
}
