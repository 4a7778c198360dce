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
use crate::policy::breaker::GaugeGuard;
use crate::policy::config::RoutePolicy;
use crate::policy::layers::{FaultLayer, ThresholdsLayer, TimeoutLayer};
use crate::policy::outcome::Outcome;
use crate::policy::retry::RetryLayer;
use crate::rescue::ProxyError;
use crate::state::{Cluster, Endpoint, Fallback};
use crate::telemetry::metrics::{Metrics, ServiceLabels, ServiceReasonLabels};
use crate::telemetry::trace::TraceCx;

use super::pick::{self, NoPick};

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
    /// When this try is abandoned by its per-try timeout (the retry stage sets it). The
    /// balance stage reports an attempt dropped at or after the earlier deadline as a timeout.
    pub try_deadline: Option<Instant>,
    /// Set by the balance stage when it fell back to another service's endpoints: the
    /// endpoint stage connects with that cluster's settings.
    pub fallback: Option<Arc<Cluster>>,
    /// The span the upstream request is sent under (tracing on): the request's,
    /// or the retry stage's span for this try.
    pub trace: Option<TraceCx>,
}

impl Upstream {
    pub fn new(req: Request<Body>, client: SocketAddr, authority: Option<Authority>) -> Self {
        Self {
            req,
            client,
            authority,
            endpoint: None,
            attempt: 1,
            tried: Vec::new(),
            deadline: None,
            try_deadline: None,
            fallback: None,
            trace: None,
        }
    }
}

/// The response with the endpoint that produced it (for the access log).
#[derive(Debug)]
pub struct Answered {
    pub resp: Response<Body>,
    pub endpoint: SocketAddr,
    /// The endpoint's workload (`NAMESPACE/SERVICE_ACCOUNT`) when it is meshed.
    pub workload: Option<Arc<str>>,
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
    /// Where requests go when every endpoint of the split is open.
    pub fallback: Option<&'a Arc<Fallback>>,
}

/// Build the stack for one request to `cluster`, balancing over `endpoints`
/// (the split's subset), sending on pooled upstream connections. Stages a route does
/// not configure are left out.
pub fn stack(
    p: StackParams<'_>,
) -> impl Service<Upstream, Response = Answered, Error = ProxyError, Future: Send> + Send {
    let endpoint = EndpointStage {
        cluster: p.cluster.clone(),
        socket: p.socket.clone(),
        metrics: p.metrics.clone(),
        mesh: p.mesh.clone(),
    };
    layered(&p, endpoint)
}

/// The stages of [`stack`] above the endpoint stage, over `endpoint`: what the
/// per-request policy benchmark (`benches/benches/decisions.rs`) runs with an endpoint
/// that answers at once.
///
/// Layers, outer → inner:
pub fn layered<S>(
    p: &StackParams<'_>,
    endpoint: S,
) -> impl Service<Upstream, Response = Answered, Error = ProxyError, Future: Send> + Send + use<S>
where
    S: Service<Upstream, Response = Answered, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
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
        // why: per attempt: reject at once when the cluster is at its maxRequests
        // threshold (per cluster, as in Envoy).
        .layer(ThresholdsLayer { cluster: p.cluster.clone(), metrics: p.metrics.clone() })
        // why: pick one endpoint of the subset whose breaker admits calls (not ejected,
        // not tried before), else the fallback; count it in flight and feed the outcome
        // (a timeout included) to its breaker, outlier detection and latency estimate.
        .layer(BalanceLayer {
            endpoints: p.endpoints.clone(),
            cluster: p.cluster.clone(),
            fallback: p.fallback.cloned(),
            metrics: p.metrics.clone(),
        })
        // why: the endpoint stage owns the connection pool and header hygiene.
        .service(endpoint)
}

/// Chooses the endpoint: breaker state, ejections, endpoints tried before, the fallback.
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    endpoints: Arc<Balancer<Arc<Endpoint>>>,
    cluster: Arc<Cluster>,
    fallback: Option<Arc<Fallback>>,
    metrics: Metrics,
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            endpoints: self.endpoints.clone(),
            cluster: self.cluster.clone(),
            fallback: self.fallback.clone(),
            metrics: self.metrics.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Balance<S> {
    endpoints: Arc<Balancer<Arc<Endpoint>>>,
    cluster: Arc<Cluster>,
    fallback: Option<Arc<Fallback>>,
    metrics: Metrics,
    inner: S,
}

impl<S> Balance<S> {
    fn reject(&self, error: ProxyError) -> BalanceFuture<S::Future>
    where
        S: Service<Upstream>,
    {
        BalanceFuture::Failed { error: Some(error) }
    }

    /// Going to the fallback: count it; for another service, take a slot of its
    /// `maxRequests` threshold and have the endpoint stage use its settings.
    fn fall_back(&self, fb: &Fallback, up: &mut Upstream) -> Result<Option<GaugeGuard>, ProxyError> {
        let mut slot = None;
        if !Arc::ptr_eq(&fb.cluster, &self.cluster) {
            let c = &fb.cluster;
            let Some(s) = c.state.counters.acquire_request(c.policy.thresholds.max_requests) else {
                let reason = "max-requests";
                self.metrics
                    .circuit_breaker_rejections
                    .get_or_create(&ServiceReasonLabels { service: c.service.clone(), reason })
                    .inc();
                return Err(ProxyError::Overloaded { service: c.service.to_string(), reason });
            };
            slot = Some(s);
            up.fallback = Some(c.clone());
        }
        self.metrics
            .circuit_breaker_fallbacks
            .get_or_create(&ServiceLabels { service: self.cluster.service.clone() })
            .inc();
        Ok(slot)
    }

    fn rejected_open(&self, service: &Arc<str>) -> ProxyError {
        // For the load reports (the dashboard's breaker rejections).
        self.cluster.state.load.reject();
        self.metrics
            .circuit_breaker_rejections
            .get_or_create(&ServiceReasonLabels { service: service.clone(), reason: "open" })
            .inc();
        ProxyError::Overloaded { service: service.to_string(), reason: "open" }
    }
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
        let deadline = match (up.deadline, up.try_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let primary = pick::choose(&self.cluster, &self.endpoints, &up.tried);
        let (choice, cluster, slot) = match (primary, &self.fallback) {
            (Ok(choice), None) => (choice, self.cluster.clone(), None),
            (Ok(choice), Some(_)) if choice.untried => (choice, self.cluster.clone(), None),
            // A retry that only finds endpoints it tried already: the fallback's, if it has one
            // to use, else the tried one again.
            (Ok(choice), Some(fb)) => match pick::choose(&fb.cluster, &fb.endpoints, &up.tried) {
                Ok(other) if other.untried => {
                    choice.release(&self.cluster);
                    match self.fall_back(fb, &mut up) {
                        Ok(slot) => (other, fb.cluster.clone(), slot),
                        Err(e) => {
                            other.release(&fb.cluster);
                            return self.reject(e);
                        }
                    }
                }
                Ok(other) => {
                    other.release(&fb.cluster);
                    (choice, self.cluster.clone(), None)
                }
                Err(_) => (choice, self.cluster.clone(), None),
            },
            (Err(why), None) => {
                let e = match why {
                    NoPick::Empty => ProxyError::NoHealthyUpstream { service: self.cluster.service.to_string() },
                    NoPick::Open => self.rejected_open(&self.cluster.service),
                };
                return self.reject(e);
            }
            // Every endpoint of the split is open (or there is none): the fallback.
            (Err(_), Some(fb)) => match pick::choose(&fb.cluster, &fb.endpoints, &up.tried) {
                Ok(other) => match self.fall_back(fb, &mut up) {
                    Ok(slot) => (other, fb.cluster.clone(), slot),
                    Err(e) => {
                        other.release(&fb.cluster);
                        return self.reject(e);
                    }
                },
                Err(NoPick::Empty) => {
                    return self.reject(ProxyError::NoHealthyUpstream { service: self.cluster.service.to_string() });
                }
                Err(NoPick::Open) => {
                    let e = self.rejected_open(&self.cluster.service);
                    return self.reject(e);
                }
            },
        };
        let attempt = pick::Attempt::start(choice, cluster, deadline, true, self.metrics.clone());
        up.endpoint = Some(attempt.endpoint().clone());
        BalanceFuture::Inner { fut: self.inner.call(up), attempt: Some(attempt), slot }
    }
}

pin_project! {
    #[project = BalanceProj]
    pub enum BalanceFuture<F> {
        Failed { error: Option<ProxyError> },
        Inner {
            #[pin]
            fut: F,
            // Dropped unfinished (a timeout fired), it reports the timeout.
            attempt: Option<pick::Attempt>,
            // The fallback service's `maxRequests` slot, if it is one, handed to the
            // response body (held until its end, as the Thresholds stage does).
            slot: Option<GaugeGuard>,
        },
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
            BalanceProj::Inner { fut, attempt, slot } => {
                let mut out = std::task::ready!(fut.poll(cx));
                if let (Ok(a), Some(slot)) = (&mut out, slot.take()) {
                    let body = std::mem::take(a.resp.body_mut());
                    *a.resp.body_mut() = body.hold(slot);
                }
                if let Some(a) = attempt.take() {
                    match &mut out {
                        Ok(answered) => a.answered(&mut answered.resp),
                        Err(e) => a.finish(Outcome::of_error(e), false),
                    }
                }
                Poll::Ready(out)
            }
        }
    }
}

/// Sends the request on a pooled connection to the chosen endpoint (the balance
/// stage's attempt guard reports the outcome).
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
        // A fallback to another service connects with that service's settings.
        let cluster = up.fallback.take().unwrap_or_else(|| self.cluster.clone());
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
            Ok(Answered { resp: res?, endpoint: ep.addr, workload: ep.workload.clone(), attempt: up.attempt })
        })
    }
}
