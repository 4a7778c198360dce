use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

use super::client::PoolReturn;

/// A request or response body: a peer's stream, a small buffer, or nothing.
/// An enum rather than a box, so the common path allocates nothing for it.
#[derive(Debug, Default)]
pub enum Body {
    Incoming(Incoming),
    /// An upstream HTTP/1.1 response: its connection returns to the pool at the end.
    Pooled(Pooled),
    /// A request body that a retry can send again.
    Replay(crate::policy::replay::ReplayBody),
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

/// A response body whose connection goes back to the pool once it is complete.
#[derive(Debug)]
pub struct Pooled {
    inner: Incoming,
    ret: Option<PoolReturn>,
}

impl Pooled {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = res {
            self.finish();
        }
        res
    }

    fn finish(&mut self) {
        if let Some(r) = self.ret.take() {
            r.give_back();
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

impl Body {
    pub fn pooled(inner: Incoming, ret: PoolReturn) -> Self {
        let mut p = Pooled { inner, ret: Some(ret) };
        if p.inner.is_end_stream() {
            p.finish();
        }
        Body::Pooled(p)
    }
}

impl From<Incoming> for Body {
    fn from(i: Incoming) -> Self {
        Body::Incoming(i)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Incoming(i) => Pin::new(i).poll_frame(cx),
            Body::Pooled(p) => p.poll_frame(cx),
            Body::Replay(r) => r.poll_frame(cx),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(i) => i.is_end_stream(),
            Body::Pooled(p) => p.inner.is_end_stream(),
            Body::Replay(r) => r.is_end_stream(),
            Body::Full(b) => b.is_none(),
            Body::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(i) => i.size_hint(),
            Body::Pooled(p) => p.inner.size_hint(),
            Body::Replay(r) => r.size_hint(),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) | Body::Empty => SizeHint::with_exact(0),
        }
    }
}
