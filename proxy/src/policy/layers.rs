//! The small policy stages: fault injection, the request timeout, and the
//! circuit breaker (thresholds + state machine) around each attempt.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::breaker::{GaugeGuard, Permit};
use super::config::FaultPolicy;
use super::outcome::Outcome;
use crate::outbound::stack::{Answered, Upstream};
use crate::rescue::ProxyError;
use crate::state::Cluster;
use crate::telemetry::metrics::{Metrics, ServiceKindLabels, ServiceLabels, ServiceReasonLabels};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

// ---------------------------------------------------------------- faults

#[derive(Clone, Debug)]
pub struct FaultLayer {
    pub fault: FaultPolicy,
    /// For `outrider_faults_injected_total{service}`.
    pub service: Arc<str>,
    pub metrics: Metrics,
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;
    fn layer(&self, inner: S) -> Fault<S> {
        Fault { layer: self.clone(), inner }
    }
}

#[derive(Clone, Debug)]
pub struct Fault<S> {
    layer: FaultLayer,
    inner: S,
}

impl<S> Fault<S> {
    fn count(&self, kind: &'static str) {
        let labels = ServiceKindLabels { service: self.layer.service.clone(), kind };
        self.layer.metrics.faults_injected.get_or_create(&labels).inc();
    }
}

impl<S> Service<Upstream> for Fault<S>
where
    S: Service<Upstream, Response = Answered, Error = ProxyError> + Send + 'static,
    S::Future: Send,
{
    type Response = Answered;
    type Error = ProxyError;
    type Future = Either<S::Future, BoxFuture<Result<Answered, ProxyError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, up: Upstream) -> Self::Future {
        let injected = self.layer.fault.roll();
        if let Some(status) = injected.abort {
            self.count("abort");
            return Either::Right(Box::pin(async move { Err(ProxyError::FaultAbort { status }) }));
        }
        let fut = self.inner.call(up);
        match injected.delay {
            // Not injected this time: no extra allocation.
            None => Either::Left(fut),
            Some(d) => {
                // Counted when the delay starts, so a delayed request shows at once.
                self.count("delay");
                Either::Right(Box::pin(async move {
                    tokio::time::sleep(d).await;
                    fut.await
                }))
            }
        }
    }
}

// ---------------------------------------------------------------- timeout

#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    pub timeout: Duration,
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { timeout: self.timeout, inner }
    }
}

#[derive(Clone, Debug)]
pub struct Timeout<S> {
    timeout: Duration,
    inner: S,
}

pin_project! {
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        after: Duration,
    }
}

impl<F: Future<Output = Result<Answered, ProxyError>>> Future for TimeoutFuture<F> {
    type Output = Result<Answered, ProxyError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match std::task::ready!(this.inner.poll(cx)) {
            Ok(r) => Poll::Ready(r),
            Err(_) => Poll::Ready(Err(ProxyError::Timeout { after: *this.after, per_try: false })),
        }
    }
}

impl<S> Service<Upstream> for Timeout<S>
where
    S: Service<Upstream, Response = Answered, Error = ProxyError>,
{
    type Response = Answered;
    type Error = ProxyError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut up: Upstream) -> Self::Future {
        let deadline = crate::clock::deadline(self.timeout);
        up.deadline = Some(up.deadline.map_or(deadline, |d| d.min(deadline)));
        TimeoutFuture { inner: tokio::time::timeout_at(deadline, self.inner.call(up)), after: self.timeout }
    }
}

/// A caller's `grpc-timeout` header (gRPC over HTTP/2 spec: digits + H M S m u n).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

// ---------------------------------------------------------------- breaker

#[derive(Clone, Debug)]
pub struct BreakerLayer {
    pub cluster: Arc<Cluster>,
    pub metrics: Metrics,
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker { cluster: self.cluster.clone(), metrics: self.metrics.clone(), inner }
    }
}

#[derive(Clone, Debug)]
pub struct Breaker<S> {
    cluster: Arc<Cluster>,
    metrics: Metrics,
    inner: S,
}

/// A state-machine permit that is handed back if the call is abandoned.
#[derive(Debug)]
struct Probe {
    cluster: Arc<Cluster>,
    permit: Option<Permit>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.cluster.state.breaker.forget(p);
        }
    }
}

pin_project! {
    #[project = BreakerProj]
    pub enum BreakerFuture<F> {
        Rejected { error: Option<ProxyError> },
        Called {
            #[pin]
            fut: F,
            probe: Option<Probe>,
            metrics: Metrics,
            // The `maxRequests` slot, handed to the response body (held until its end).
            slot: Option<GaugeGuard>,
        },
    }
}

impl<F: Future<Output = Result<Answered, ProxyError>>> Future for BreakerFuture<F> {
    type Output = Result<Answered, ProxyError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BreakerProj::Rejected { error } => {
                Poll::Ready(Err(error.take().unwrap_or(ProxyError::BadRequest("request polled after completion"))))
            }
            BreakerProj::Called { fut, probe, metrics, slot } => {
                let mut out = std::task::ready!(fut.poll(cx));
                if let (Ok(a), Some(slot)) = (&mut out, slot.take()) {
                    let body = std::mem::take(a.resp.body_mut());
                    *a.resp.body_mut() = body.hold(slot);
                }
                if let Some(mut probe) = probe.take()
                    && let (Some(permit), Some(cfg)) = (probe.permit.take(), probe.cluster.policy.breaker.as_ref())
                {
                    let outcome = match &out {
                        Ok(a) => Outcome::of_response(a.resp.status(), a.resp.headers()),
                        Err(e) => Outcome::of_error(e),
                    };
                    if outcome != Outcome::Local {
                        let c = &probe.cluster;
                        if let Some(state) = c.state.breaker.record(cfg, permit, outcome.is_breaker_failure()) {
                            metrics
                                .circuit_breaker_state
                                .get_or_create(&ServiceLabels { service: c.service.clone() })
                                .set(state.metric());
                            tracing::warn!(
                                service = &*c.service,
                                state = state.as_str(),
                                "circuit breaker changed state"
                            );
                        }
                    } else {
                        probe.cluster.state.breaker.forget(permit);
                    }
                }
                Poll::Ready(out)
            }
        }
    }
}

impl<S> Service<Upstream> for Breaker<S>
where
    S: Service<Upstream, Response = Answered, Error = ProxyError>,
{
    type Response = Answered;
    type Error = ProxyError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, up: Upstream) -> Self::Future {
        let c = &self.cluster;
        let reject = |reason: &'static str| {
            c.state.load.reject();
            self.metrics
                .circuit_breaker_rejections
                .get_or_create(&ServiceReasonLabels { service: c.service.clone(), reason })
                .inc();
            BreakerFuture::Rejected { error: Some(ProxyError::Overloaded { service: c.service.to_string(), reason }) }
        };
        let probe = match &c.policy.breaker {
            None => None,
            Some(cfg) => match c.state.breaker.try_acquire(cfg) {
                Ok(p) => Some(Probe { cluster: c.clone(), permit: Some(p) }),
                Err(_) => return reject("open"),
            },
        };
        let Some(slot) = c.state.counters.acquire_request(c.policy.thresholds.max_requests) else {
            return reject("max-requests");
        };
        BreakerFuture::Called { fut: self.inner.call(up), probe, metrics: self.metrics.clone(), slot: Some(slot) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&h), Some(Duration::from_millis(250)));
        h.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(grpc_timeout(&h), Some(Duration::from_secs(3)));
        h.insert("grpc-timeout", "1x".parse().unwrap());
        assert_eq!(grpc_timeout(&h), None);
    }
}
