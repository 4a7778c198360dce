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
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::{MetricsService, MetricsServiceServer};
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
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
/// Path prefix of the metrics service (a client stream).
pub const METRICS_PREFIX: &str = "/envoy.service.metrics.v3.MetricsService/";

/// Builds a gRPC upstream.
///
/// - `Authorization/Check` answers OK with `status.message = "NAME checked PATH"`, where
///   PATH is `attributes.request.http.path` of the request.
/// - `StreamAggregatedResources` answers each request with a response carrying its
///   `version_info`, `type_url`, its `response_nonce` as `nonce`, and
///   `control_plane.identifier = NAME`. A request whose `error_detail.code` is not 0 ends the
///   stream after its response with that status (in the trailers, after a body); a call whose
///   metadata has `x-grpc-status: N` is answered with status N and nothing else (a
///   trailers-only response).
///
/// - `MetricsService/StreamMetrics` (a client stream) reads the whole stream, records it
///   as one request whose body is the `help` texts of every metric family sent, in
///   order, then answers OK — or `UNAVAILABLE` while [`GrpcBuilder::unavailable`]'s
///   [`Switch`] says so (`grpc_unavailable_next`).
///
/// Responses carry `x-upstream: NAME` metadata.
#[derive(Clone, Debug)]
pub struct GrpcBuilder {
    name: String,
    switch: Option<super::Switch>,
}

impl Default for GrpcBuilder {
    fn default() -> Self {
        Self { name: "grpc".into(), switch: None }
    }
}

/// `MetricsService`: records whole client streams.
#[derive(Clone, Debug)]
struct StreamSink {
    name: Arc<str>,
    log: Arc<Log>,
    switch: Option<super::Switch>,
}

#[tonic::async_trait]
impl MetricsService for StreamSink {
    async fn stream_metrics(
        &self,
        request: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        let (meta, _, mut stream) = request.into_parts();
        let mut body = Vec::new();
        while let Some(msg) = stream.message().await? {
            for family in msg.envoy_metrics {
                body.extend_from_slice(family.help.unwrap_or_default().as_bytes());
            }
        }
        self.log.record(Seen {
            method: http::Method::POST,
            path: format!("{METRICS_PREFIX}StreamMetrics"),
            version: http::Version::HTTP_2,
            headers: meta.into_headers(),
            body: bytes::Bytes::from(body),
            trailers: None,
            // Read to the end of the stream (an error above returns before this).
            complete: true,
        });
        if self.switch.as_ref().is_some_and(super::Switch::take_grpc_unavailable) {
            return Err(Status::unavailable("try again"));
        }
        let mut resp = Response::new(StreamMetricsResponse {});
        if let Ok(v) = self.name.parse() {
            resp.metadata_mut().insert(X_UPSTREAM, v);
        }
        Ok(resp)
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
        if let Some(code) = request.metadata().get("x-grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok()) {
            return Err(Status::new(tonic::Code::from(code), "x-grpc-status asked for it"));
        }
        let name = self.name.to_string();
        let out = request.into_inner().flat_map(move |r| {
            let mut items = Vec::with_capacity(2);
            match r {
                Ok(req) => {
                    let end = req
                        .error_detail
                        .as_ref()
                        .filter(|s| s.code != 0)
                        .map(|s| Status::new(tonic::Code::from(s.code), ""));
                    items.push(Ok(DiscoveryResponse {
                        version_info: req.version_info,
                        type_url: req.type_url,
                        nonce: req.response_nonce,
                        control_plane: Some(ControlPlane { identifier: name.clone() }),
                        ..Default::default()
                    }));
                    // tonic ends the stream at an error, its status in the trailers.
                    items.extend(end.map(Err));
                }
                Err(e) => items.push(Err(e)),
            }
            futures_util::stream::iter(items)
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

    /// `StreamMetrics` answers `UNAVAILABLE` as `switch.grpc_unavailable_next` says.
    pub fn unavailable(mut self, switch: &super::Switch) -> Self {
        self.switch = Some(switch.clone());
        self
    }

    pub async fn start(self) -> Upstream {
        let echo = Echo { name: Arc::from(self.name.as_str()) };
        let auth = AuthorizationServer::new(echo.clone());
        let ads = AggregatedDiscoveryServiceServer::new(echo);
        let name: Arc<str> = Arc::from(self.name.as_str());
        let switch = self.switch.clone();
        super::serve(self.name, move |stream, log| {
            let auth = auth.clone();
            let ads = ads.clone();
            let sink =
                MetricsServiceServer::new(StreamSink { name: name.clone(), log: log.clone(), switch: switch.clone() });
            async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    if !req.uri().path().starts_with(METRICS_PREFIX) {
                        record(&log, &req);
                    }
                    let auth = auth.clone();
                    let ads = ads.clone();
                    let sink = sink.clone();
                    async move {
                        let path = req.uri().path();
                        let resp = if path.starts_with(AUTH_PREFIX) {
                            auth.oneshot(req).await?
                        } else if path.starts_with(METRICS_PREFIX) {
                            sink.oneshot(req).await?
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
