//! The small policy stages: fault injection, the request timeout, and the
//! cluster's request threshold around each attempt.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::breaker::GaugeGuard;
use super::config::FaultPolicy;
use crate::outbound::stack::{Answered, Upstream};
use crate::rescue::ProxyError;
use crate::state::Cluster;
use crate::telemetry::metrics::{Metrics, ServiceKindLabels, ServiceReasonLabels};

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

// ---------------------------------------------------------------- thresholds

/// The cluster's `maxRequests` threshold, per attempt (the breaker state machine is
/// consulted where the endpoint is chosen, see `outbound::pick`).
#[derive(Clone, Debug)]
pub struct ThresholdsLayer {
    pub cluster: Arc<Cluster>,
    pub metrics: Metrics,
}

impl<S> Layer<S> for ThresholdsLayer {
    type Service = Thresholds<S>;
    fn layer(&self, inner: S) -> Thresholds<S> {
        Thresholds { cluster: self.cluster.clone(), metrics: self.metrics.clone(), inner }
    }
}

#[derive(Clone, Debug)]
pub struct Thresholds<S> {
    cluster: Arc<Cluster>,
    metrics: Metrics,
    inner: S,
}

pin_project! {
    #[project = ThresholdsProj]
    pub enum ThresholdsFuture<F> {
        Rejected { error: Option<ProxyError> },
        Called {
            #[pin]
            fut: F,
            // The `maxRequests` slot, handed to the response body (held until its end).
            slot: Option<GaugeGuard>,
        },
    }
}

impl<F: Future<Output = Result<Answered, ProxyError>>> Future for ThresholdsFuture<F> {
    type Output = Result<Answered, ProxyError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ThresholdsProj::Rejected { error } => {
                Poll::Ready(Err(error.take().unwrap_or(ProxyError::BadRequest("request polled after completion"))))
            }
            ThresholdsProj::Called { fut, slot } => {
                let mut out = std::task::ready!(fut.poll(cx));
                if let (Ok(a), Some(slot)) = (&mut out, slot.take()) {
                    let body = std::mem::take(a.resp.body_mut());
                    *a.resp.body_mut() = body.hold(slot);
                }
                Poll::Ready(out)
            }
        }
    }
}

impl<S> Service<Upstream> for Thresholds<S>
where
    S: Service<Upstream, Response = Answered, Error = ProxyError>,
{
    type Response = Answered;
    type Error = ProxyError;
    type Future = ThresholdsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, up: Upstream) -> Self::Future {
        let c = &self.cluster;
        let Some(slot) = c.state.counters.acquire_request(c.policy.thresholds.max_requests) else {
            let reason = "max-requests";
            c.state.load.reject();
            self.metrics
                .circuit_breaker_rejections
                .get_or_create(&ServiceReasonLabels { service: c.service.clone(), reason })
                .inc();
            return ThresholdsFuture::Rejected {
                error: Some(ProxyError::Overloaded { service: c.service.to_string(), reason }),
            };
        };
        ThresholdsFuture::Called { fut: self.inner.call(up), slot: Some(slot) }
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
