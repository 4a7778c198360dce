use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// A request or response body: a peer's stream, a small buffer, or nothing.
/// An enum rather than a box, so the common path allocates nothing for it.
#[derive(Debug, Default)]
pub enum Body {
    Incoming(Incoming),
    Full(Option<Bytes>),
    #[default]
    Empty,
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(b))
        }
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

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Incoming(i) => Pin::new(i).poll_frame(cx),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(i) => i.is_end_stream(),
            Body::Full(b) => b.is_none(),
            Body::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(i) => i.size_hint(),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) | Body::Empty => SizeHint::with_exact(0),
        }
    }
}
