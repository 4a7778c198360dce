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
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder};

use crate::balance::Balancer;
use crate::http::Body;
use crate::http::client::ConnectConfig;
use crate::http::forward;
use crate::rescue::ProxyError;
use crate::state::{Cluster, Endpoint};

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
}

/// The response with the endpoint that produced it (for the access log).
#[derive(Debug)]
pub struct Answered {
    pub resp: Response<Body>,
    pub endpoint: SocketAddr,
}

/// Build the stack for one request to `cluster`, balancing over `endpoints`
/// (the split's subset).
///
/// Layers, outer → inner:
pub fn stack(
    cluster: &Arc<Cluster>,
    endpoints: &Arc<Balancer<Arc<Endpoint>>>,
    mark: Option<u32>,
) -> impl Service<Upstream, Response = Answered, Error = ProxyError, Future: Send> + Send {
    ServiceBuilder::new()
        // why: pick one endpoint of the subset by P2C-EWMA / round robin / random,
        // and count the request in flight on it until its response arrives.
        .layer(BalanceLayer {
            endpoints: endpoints.clone(),
            service: cluster.service.clone(),
        })
        // why: the endpoint stage owns the connection pool and header hygiene.
        .service(EndpointStage {
            cluster: cluster.clone(),
            mark,
        })
}

/// Chooses the endpoint.
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    endpoints: Arc<Balancer<Arc<Endpoint>>>,
    service: Arc<str>,
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;
    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            endpoints: self.endpoints.clone(),
            service: self.service.clone(),
            inner,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Balance<S> {
    endpoints: Arc<Balancer<Arc<Endpoint>>>,
    service: Arc<str>,
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
        let Some(ep) = self.endpoints.pick().cloned() else {
            return BalanceFuture::Failed {
                error: Some(ProxyError::NoHealthyUpstream {
                    service: self.service.to_string(),
                }),
            };
        };
        let pending = Pending::start(ep.clone());
        up.endpoint = Some(ep);
        BalanceFuture::Inner {
            fut: self.inner.call(up),
            pending: Some(pending),
        }
    }
}

/// Counts one request in flight on an endpoint; feeds its latency on success.
#[derive(Debug)]
struct Pending {
    endpoint: Arc<Endpoint>,
    start: Instant,
}

impl Pending {
    fn start(endpoint: Arc<Endpoint>) -> Self {
        endpoint.shared.ewma.add_pending();
        Self {
            endpoint,
            start: Instant::now(),
        }
    }

    fn complete(self) {
        self.endpoint.shared.ewma.observe(self.start.elapsed());
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.endpoint.shared.ewma.remove_pending();
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
            BalanceProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or(ProxyError::BadRequest("request polled after completion")))),
            BalanceProj::Inner { fut, pending } => {
                let out = std::task::ready!(fut.poll(cx));
                if let Some(p) = pending.take()
                    && out.is_ok()
                {
                    p.complete();
                }
                Poll::Ready(out)
            }
        }
    }
}

/// Sends the request on a pooled connection to the chosen endpoint.
#[derive(Clone, Debug)]
pub struct EndpointStage {
    cluster: Arc<Cluster>,
    mark: Option<u32>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<Upstream> for EndpointStage {
    type Response = Answered;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Answered, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, up: Upstream) -> Self::Future {
        let cluster = self.cluster.clone();
        let cfg = ConnectConfig {
            timeout: cluster.connect_timeout,
            mark: self.mark,
        };
        Box::pin(async move {
            let Some(ep) = up.endpoint else {
                return Err(ProxyError::NoHealthyUpstream {
                    service: cluster.service.to_string(),
                });
            };
            let proto = cluster.protocol.upstream();
            let resp = forward::forward(
                &ep.shared.pool,
                up.req,
                proto,
                &cfg,
                up.client,
                up.authority.as_ref(),
            )
            .await?;
            Ok(Answered {
                resp,
                endpoint: ep.addr,
            })
        })
    }
}
