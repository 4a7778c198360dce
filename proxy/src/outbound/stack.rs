//! The per-request tower stack below the router: everything between "this
//! request goes to that split of that cluster" and the bytes on an upstream
//! connection. Stages are cheap structs holding `Arc`s, assembled per request
//! without allocation; only the endpoint stage boxes its future.
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::Authority;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder};

use crate::balance::Balancer;
use crate::http::Body;
use crate::http::client::{ConnectConfig, UpstreamError};
use crate::http::forward;
use crate::http::headers::X_ATTEMPT;
use crate::policy::config::RoutePolicy;
use crate::policy::layers::{BreakerLayer, FaultLayer, TimeoutLayer};
use crate::policy::outcome::{Outcome, grpc};
use crate::policy::retry::RetryLayer;
use crate::rescue::ProxyError;
use crate::state::{Cluster, Endpoint};
use crate::telemetry::metrics::{Metrics, ServiceLabels, ServiceReasonLabels};
use crate::telemetry::trace::TraceCx;

/// A request on its way to an upstream, with what the stages decided so far.
#[derive(Debug)]
pub struct Upstream {
    pub req: Request<Body>,
    /// The caller, for `x-forwarded-for`.
    pub client: SocketAddr,
    /// The authority the caller named (kept on the upstream request).
    pub authority: Option<Authority>,
    /// Chosen by the balance stage.
    pub endpoint: Option<Arc<Endpoint>>,
    /// 1 for the first try; sent as `x-outrider-attempt`.
    pub attempt: u32,
    /// Endpoints earlier tries went to (the balancer avoids them when it can).
    pub tried: Vec<SocketAddr>,
    /// When the whole request must be answered (the timeout stage sets it).
    pub deadline: Option<Instant>,
    /// The span the upstream request is sent under (tracing on): the request's,
    /// or the retry stage's span for this try.
    pub trace: Option<TraceCx>,
}

impl Upstream {
    pub fn new(req: Request<Body>, client: SocketAddr, authority: Option<Authority>) -> Self {
        Self { req, client, authority, endpoint: None, attempt: 1, tried: Vec::new(), deadline: None, trace: None }
    }
}

/// The response with the endpoint that produced it (for the access log).
#[derive(Debug)]
pub struct Answered {
    pub resp: Response<Body>,
    pub endpoint: SocketAddr,
    /// Which try produced it.
    pub attempt: u32,
}

/// What the stack needs besides the request.
#[derive(Clone, Debug)]
pub struct StackParams<'a> {
    pub cluster: &'a Arc<Cluster>,
    pub endpoints: &'a Arc<Balancer<Arc<Endpoint>>>,
    pub route: &'a RoutePolicy,
    pub socket: &'a crate::transport::socket::SocketOptions,
    pub metrics: &'a Metrics,
    /// This proxy's identity, once it has one: meshed endpoints are then reached over mTLS.
    pub mesh: &'a crate::mesh::MeshHandle,
    /// The caller's `grpc-timeout`, when it sent one.
    pub grpc_timeout: Option<Duration>,
}

/// Build the stack for one request to `cluster`, balancing over `endpoints`
/// (the split's subset). Stages a route does not configure are left out.
///
/// Layers, outer → inner:
pub fn stack(
    p: StackParams<'_>,
) -> impl Service<Upstream, Response = Answered, Error = ProxyError, Future: Send> + Send {
    let timeout = match (p.route.timeout, p.grpc_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    ServiceBuilder::new()
        // why: Envoy's fault filter runs before the router, so an injected delay
        // does not eat into the request's timeout.
        .option_layer(p.route.fault.clone().map(|f| FaultLayer {
            fault: f,
            service: p.cluster.service.clone(),
            metrics: p.metrics.clone(),
        }))
        // why: the whole request, retries and backoff included, until response headers.
        .option_layer(timeout.map(|t| TimeoutLayer { timeout: t }))
        // why: try again on retriable failures, within budget and deadline.
        .option_layer(p.route.retry.clone().map(|policy| RetryLayer {
            policy,
            cluster: p.cluster.clone(),
            metrics: p.metrics.clone(),
        }))
        // why: per attempt: reject at once when the cluster is over a threshold or
        // its breaker is open; feed every outcome to the state machine.
        .layer(BreakerLayer { cluster: p.cluster.clone(), metrics: p.metrics.clone() })
        // why: pick one endpoint of the subset (not ejected, not tried before) and
        // count the request in flight on it until its response arrives.
        .layer(BalanceLayer { endpoints: p.endpoints.clone(), cluster: p.cluster.clone() })
        // why: the endpoint stage owns the connection pool, header hygiene and
        // outlier detection.
        .service(EndpointStage {
            cluster: p.cluster.clone(),
            socket: p.socket.clone(),
            metrics: p.metrics.clone(),
            mesh: p.mesh.clone(),
        })
}

/// Chooses the endpoint.
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    endpoints: Arc<Balancer<Arc<Endpoint>>>,
    cluster: Arc<Cluster>,
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Balance<S> {
        Balance { endpoints: self.endpoints.clone(), cluster: self.cluster.clone(), inner }
    }
}

#[derive(Clone, Debug)]
pub struct Balance<S> {
    endpoints: Arc<Balancer<Arc<Endpoint>>>,
    cluster: Arc<Cluster>,
    inner: S,
}

impl<S> Service<Upstream> for Balance<S>
where
    S: Service<Upstream, Response = Answered, Error = ProxyError>,
{
    type Response = Answered;
    type Error = ProxyError;
    type Future = BalanceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut up: Upstream) -> Self::Future {
        let Some(ep) = pick(&self.endpoints, &self.cluster, &up.tried).cloned() else {
            return BalanceFuture::Failed {
                error: Some(ProxyError::NoHealthyUpstream { service: self.cluster.service.to_string() }),
            };
        };
        let pending = Pending::start(ep.clone());
        up.endpoint = Some(ep);
        BalanceFuture::Inner { fut: self.inner.call(up), pending: Some(pending) }
    }
}

/// Prefer endpoints that are neither ejected nor tried already; then any not
/// ejected; then (all ejected: Envoy's panic mode) any.
fn pick<'a>(b: &'a Balancer<Arc<Endpoint>>, cluster: &Cluster, tried: &[SocketAddr]) -> Option<&'a Arc<Endpoint>> {
    if cluster.policy.outlier.is_none() && tried.is_empty() {
        return b.pick();
    }
    let healthy = |e: &Arc<Endpoint>| !e.shared.health.is_ejected(&cluster.state.outliers);
    b.pick_where(|e| healthy(e) && !tried.contains(&e.addr)).or_else(|| b.pick_where(healthy)).or_else(|| b.pick())
}

/// Counts one attempt in flight on an endpoint; at its end feeds its latency to the EWMA (on
/// success) and its result to the endpoint's load counters (exactly once: on completion, or on
/// drop when the attempt was abandoned, e.g. by a timeout).
#[derive(Debug)]
struct Pending {
    endpoint: Arc<Endpoint>,
    start: Instant,
    counted: bool,
}

impl Pending {
    fn start(endpoint: Arc<Endpoint>) -> Self {
        endpoint.shared.ewma.add_pending();
        endpoint.shared.load.issue();
        Self { endpoint, start: Instant::now(), counted: false }
    }

    fn complete(mut self, out: &Result<Answered, ProxyError>) {
        let elapsed = self.start.elapsed();
        if out.is_ok() {
            self.endpoint.shared.ewma.observe(elapsed);
        }
        if let Some(error) = load_error(out) {
            self.endpoint.shared.load.finish(error, elapsed);
        }
        self.counted = true;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.endpoint.shared.ewma.remove_pending();
        if !self.counted {
            self.endpoint.shared.load.finish(true, self.start.elapsed());
        }
    }
}

/// Whether an attempt failed at the endpoint, for the load reports (Envoy's LRS rules: 5xx, a
/// gRPC error status, or no response); `None` for a local rejection, which never reached it.
fn load_error(out: &Result<Answered, ProxyError>) -> Option<bool> {
    match out {
        Ok(answered) => {
            let resp = &answered.resp;
            // gRPC answers over HTTP/2 only: HTTP/1.1 responses skip the header lookup.
            let grpc = resp.version() == http::Version::HTTP_2
                && crate::policy::outcome::grpc_status(resp.headers()).is_some_and(grpc::is_load_error);
            Some(resp.status().is_server_error() || grpc)
        }
        Err(e) => match Outcome::of_error(e) {
            Outcome::Local => None,
            _ => Some(true),
        },
    }
}

pin_project! {
    #[project = BalanceProj]
    pub enum BalanceFuture<F> {
        Failed { error: Option<ProxyError> },
        Inner { #[pin] fut: F, pending: Option<Pending> },
    }
}

impl<F> Future for BalanceFuture<F>
where
    F: Future<Output = Result<Answered, ProxyError>>,
{
    type Output = Result<Answered, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BalanceProj::Failed { error } => {
                Poll::Ready(Err(error.take().unwrap_or(ProxyError::BadRequest("request polled after completion"))))
            }
            BalanceProj::Inner { fut, pending } => {
                let out = std::task::ready!(fut.poll(cx));
                if let Some(p) = pending.take() {
                    p.complete(&out);
                }
                Poll::Ready(out)
            }
        }
    }
}

/// Sends the request on a pooled connection to the chosen endpoint and feeds
/// the outcome to outlier detection.
#[derive(Clone, Debug)]
pub struct EndpointStage {
    cluster: Arc<Cluster>,
    socket: crate::transport::socket::SocketOptions,
    metrics: Metrics,
    mesh: crate::mesh::MeshHandle,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<Upstream> for EndpointStage {
    type Response = Answered;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Answered, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut up: Upstream) -> Self::Future {
        let cluster = self.cluster.clone();
        let metrics = self.metrics.clone();
        let mut cfg = ConnectConfig {
            timeout: cluster.connect_timeout,
            socket: self.socket.clone(),
            limits: Some((cluster.state.counters.clone(), cluster.policy.thresholds)),
            idle_timeout: cluster.policy.upstream_idle_timeout,
            mesh: None,
        };
        let mesh = self.mesh.clone();
        Box::pin(async move {
            let Some(ep) = up.endpoint.take() else {
                return Err(ProxyError::NoHealthyUpstream { service: cluster.service.to_string() });
            };
            cfg.mesh = crate::mesh::endpoint_target(&mesh, &ep, Some(up.client));
            up.req.headers_mut().insert(X_ATTEMPT.clone(), HeaderValue::from(up.attempt));
            if let Some(t) = &up.trace {
                t.inject(up.req.headers_mut());
            }
            let proto = cluster.protocol.upstream();
            let res =
                match forward::forward(&ep.shared.pool, up.req, proto, &cfg, up.client, up.authority.as_ref()).await {
                    Err(ProxyError::Upstream(UpstreamError::Overflow(_, reason))) => {
                        cluster.state.load.reject();
                        metrics
                            .circuit_breaker_rejections
                            .get_or_create(&ServiceReasonLabels { service: cluster.service.clone(), reason })
                            .inc();
                        return Err(ProxyError::Overloaded { service: cluster.service.to_string(), reason });
                    }
                    other => other,
                };
            if let Some(outlier) = &cluster.policy.outlier {
                let outcome = match &res {
                    Ok(resp) => Outcome::of_response(resp.status(), resp.headers()),
                    Err(e) => Outcome::of_error(e),
                };
                let total = cluster.endpoints.items().len();
                if ep.shared.health.record(outcome, outlier, &cluster.state.outliers, total) {
                    metrics.outlier_ejections.get_or_create(&ServiceLabels { service: cluster.service.clone() }).inc();
                    tracing::warn!(service = &*cluster.service, endpoint = %ep.addr, reason = outcome.reason(), "endpoint ejected");
                }
                let n = cluster
                    .state
                    .outliers
                    .evaluate(outlier, cluster.endpoints.items().iter().map(|e| &e.shared.health));
                if n > 0 {
                    metrics
                        .outlier_ejections
                        .get_or_create(&ServiceLabels { service: cluster.service.clone() })
                        .inc_by(u64::from(n));
                }
            }
            Ok(Answered { resp: res?, endpoint: ep.addr, attempt: up.attempt })
        })
    }
}
