use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

use super::client::Lease;
use super::client::h1::Http1Body;
use crate::load_report::PendingLoad;
use crate::policy::breaker::GaugeGuard;
use crate::policy::outcome::trailers_load_error;

/// A request or response body: a peer's stream, a small buffer, or nothing.
/// An enum rather than a box, so the common path allocates nothing for it.
#[derive(Debug, Default)]
pub enum Body {
    Incoming(Incoming),
    /// A downstream HTTP/1.1 request's body, read from its connection as it is polled.
    Downstream(super::server::h1::RequestBody),
    /// An upstream response and what it holds until its end (its HTTP/1.1
    /// connection, its HTTP/2 stream, its `maxRequests` slot, the load-report count of a gRPC
    /// response whose status is in its trailers).
    Pooled(Pooled),
    /// A request body that a retry can send again.
    Replay(crate::policy::replay::ReplayBody),
    /// A body that fails when no frame arrives within its idle timeout.
    Idle(Box<IdleBody>),
    /// A response body whose end writes the access-log line and ends the span.
    Recorded(Box<crate::telemetry::access::RecordedBody>),
    Full(Option<Bytes>),
    #[default]
    Empty,
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() { Body::Empty } else { Body::Full(Some(b)) }
    }
}

/// An upstream response's stream: hyper's (HTTP/2, upgrades), or our own HTTP/1.1 client's.
#[derive(Debug)]
pub enum Upstream {
    Hyper(Incoming),
    Http1(Box<dyn Http1Body>),
}

impl Upstream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self {
            Upstream::Hyper(i) => Pin::new(i).poll_frame(cx).map(|o| o.map(|r| r.map_err(BodyError::from))),
            Upstream::Http1(b) => b.poll_frame(cx).map(|o| o.map(|r| r.map_err(BodyError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Hyper(i) => i.is_end_stream(),
            Upstream::Http1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Upstream::Hyper(i) => i.size_hint(),
            Upstream::Http1(b) => b.size_hint(),
        }
    }
}

/// An upstream response body with its [`Lease`], given back at its end.
#[derive(Debug)]
pub struct Pooled {
    inner: Upstream,
    lease: Lease,
    /// Set on a gRPC response whose headers carry no grpc-status: counted for the load reports
    /// by the trailers' status when the body ends ([`Body::judge_by_trailers`]).
    load: Option<PendingLoad>,
}

impl Pooled {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let res = self.inner.poll_frame(cx);
        if let Poll::Ready(None) = res {
            self.lease.finish();
        }
        if self.load.is_some()
            && let Poll::Ready(end) = &res
        {
            let error = match end {
                // A data frame says nothing yet; trailers end the body.
                Some(Ok(frame)) => frame.trailers_ref().map(|t| trailers_load_error(Some(t))),
                // Reset: the stream or the connection broke.
                Some(Err(_)) => Some(true),
                // Ended without trailers.
                None => Some(trailers_load_error(None)),
            };
            if let Some(error) = error
                && let Some(load) = self.load.take()
            {
                load.end(error);
            }
        }
        res
    }

    /// The response stalled past its idle timeout: an error at the endpoint.
    fn fail_load(&mut self) {
        if let Some(load) = self.load.take() {
            load.end(true);
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.lease.finish();
            // Read to a last data frame whose end-of-stream flag ended it: no trailers came.
            if let Some(load) = self.load.take() {
                load.end(trailers_load_error(None));
            }
        }
        // Dropped before its end, a pending load count is the caller's cancel: see
        // `PendingLoad`.
    }
}

impl Body {
    /// An upstream response body holding `lease` until it ends.
    pub fn leased(inner: Incoming, lease: Lease) -> Self {
        Self::leased_upstream(Upstream::Hyper(inner), lease)
    }

    /// An upstream HTTP/1.1 response body (our own client's; it gives its connection back
    /// itself), holding nothing yet.
    pub fn http1(inner: Box<dyn Http1Body>) -> Self {
        Self::leased_upstream(Upstream::Http1(inner), Lease::default())
    }

    fn leased_upstream(inner: Upstream, lease: Lease) -> Self {
        let mut p = Pooled { inner, lease, load: None };
        if p.inner.is_end_stream() {
            p.lease.finish();
        }
        Body::Pooled(p)
    }

    /// Hold the request's `maxRequests` slot until this (upstream) body ends; a
    /// body with no upstream stream behind it releases it now.
    pub fn hold(self, slot: GaugeGuard) -> Self {
        match self {
            Body::Pooled(mut p) => {
                if !p.inner.is_end_stream() {
                    p.lease.hold(slot);
                }
                Body::Pooled(p)
            }
            other => other,
        }
    }

    /// Count this (upstream gRPC) response for the load reports when it ends, by the
    /// grpc-status of its trailers; a body already at its end, or with no upstream stream
    /// behind it, has no trailers to come and is counted now, as an error.
    pub fn judge_by_trailers(self, load: PendingLoad) -> Self {
        match self {
            Body::Pooled(mut p) if !p.inner.is_end_stream() => {
                p.load = Some(load);
                Body::Pooled(p)
            }
            // An upstream response that holds nothing (a meshed HTTP/1.1 connection).
            Body::Incoming(inner) if !inner.is_end_stream() => {
                Body::Pooled(Pooled { inner: Upstream::Hyper(inner), lease: Lease::default(), load: Some(load) })
            }
            other => {
                load.end(trailers_load_error(None));
                other
            }
        }
    }
}

/// Why a body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// An upstream HTTP/1.1 response broke off or was malformed.
    #[error(transparent)]
    Http1(#[from] super::client::h1::Error),
    /// A downstream HTTP/1.1 request body broke off or was malformed.
    #[error(transparent)]
    Downstream(#[from] super::server::h1::Error),
    #[error("no data for {0:?} (stream idle timeout)")]
    Idle(std::time::Duration),
    /// This try's request body was handed to a retry; this try is abandoned.
    #[error("the request body was handed to a retry")]
    Superseded,
}

/// Fails the stream when the peer sends nothing for `timeout` (`idleTimeout`:
/// timeout per HTTP/2 stream / response body).
#[derive(Debug)]
pub struct IdleBody {
    inner: Body,
    timeout: std::time::Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl IdleBody {
    pub fn wrap(inner: Body, timeout: std::time::Duration) -> Body {
        if inner.is_end_stream() {
            return inner;
        }
        Body::Idle(Box::new(IdleBody { inner, timeout, sleep: Box::pin(tokio::time::sleep(timeout)) }))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                let deadline = crate::clock::deadline(self.timeout);
                self.sleep.as_mut().reset(deadline);
                Poll::Ready(r)
            }
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    if let Body::Pooled(p) = &mut self.inner {
                        p.fail_load();
                    }
                    Poll::Ready(Some(Err(BodyError::Idle(self.timeout))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Trailers from a downstream HTTP/2 connection carry the field the guard put first
/// ([`super::h2_guard`]); it never leaves the proxy.
fn unmark_trailers(mut frame: Frame<Bytes>) -> Frame<Bytes> {
    if let Some(t) = frame.trailers_mut() {
        t.remove(&super::h2_guard::MARKER_NAME);
    }
    frame
}

impl From<Incoming> for Body {
    fn from(i: Incoming) -> Self {
        Body::Incoming(i)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let hyper =
            |p: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>| p.map(|o| o.map(|r| r.map_err(BodyError::from)));
        match self.get_mut() {
            Body::Incoming(i) => hyper(Pin::new(i).poll_frame(cx).map(|f| f.map(|f| f.map(unmark_trailers)))),
            Body::Downstream(b) => b.poll_frame(cx).map(|o| o.map(|r| r.map_err(BodyError::from))),
            Body::Pooled(p) => p.poll_frame(cx),
            Body::Replay(r) => r.poll_frame(cx),
            Body::Idle(b) => b.poll_frame(cx),
            Body::Recorded(b) => b.poll_frame(cx),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(i) => i.is_end_stream(),
            Body::Downstream(b) => b.is_end_stream(),
            Body::Pooled(p) => p.inner.is_end_stream(),
            Body::Replay(r) => r.is_end_stream(),
            Body::Idle(b) => b.inner.is_end_stream(),
            Body::Recorded(b) => b.inner().is_end_stream(),
            Body::Full(b) => b.is_none(),
            Body::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(i) => i.size_hint(),
            Body::Downstream(b) => b.size_hint(),
            Body::Pooled(p) => p.inner.size_hint(),
            Body::Replay(r) => r.size_hint(),
            Body::Idle(b) => b.inner.size_hint(),
            Body::Recorded(b) => b.inner().size_hint(),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) | Body::Empty => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests;
