//! A request body that can be sent again. The first attempt streams the
//! caller's body as it arrives and keeps a copy of each chunk while the total
//! stays under the cap (DESIGN: 64 KiB); a later attempt replays the copy, then
//! goes on reading the caller's body where the previous attempt stopped. Once
//! the body outgrows the cap the copy is dropped and the request can no longer
//! be retried.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use parking_lot::Mutex;

use crate::http::Body;
use crate::http::body::BodyError;

/// Default cap on what is kept for replay.
pub const DEFAULT_CAP: usize = 64 * 1024;

#[derive(Debug)]
struct Shared {
    inner: Body,
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    overflow: bool,
    /// The caller's body has ended (trailers, if any, are kept).
    complete: bool,
    trailers: Option<HeaderMap>,
    failed: bool,
}

/// One attempt's view of the shared body.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Next chunk of the copy this attempt sends.
    pos: usize,
    sent_trailers: bool,
}

impl ReplayBody {
    pub fn new(inner: Body, cap: usize) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                inner,
                chunks: Vec::new(),
                len: 0,
                cap,
                overflow: false,
                complete: false,
                trailers: None,
                failed: false,
            })),
            pos: 0,
            sent_trailers: false,
        }
    }

    /// A fresh view for another attempt, or `None` when the body can no longer
    /// be replayed (it outgrew the cap, or reading it failed).
    pub fn try_clone(&self) -> Option<ReplayBody> {
        let s = self.shared.lock();
        (!s.overflow && !s.failed).then(|| ReplayBody { shared: self.shared.clone(), pos: 0, sent_trailers: false })
    }

    pub fn is_replayable(&self) -> bool {
        let s = self.shared.lock();
        !s.overflow && !s.failed
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut s = self.shared.lock();
        if self.pos < s.chunks.len() {
            let b = s.chunks[self.pos].clone();
            self.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if s.complete {
            if !self.sent_trailers
                && let Some(t) = s.trailers.clone()
            {
                self.sent_trailers = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        }
        if s.overflow && self.pos < s.len {
            // Another attempt consumed bytes we no longer have: cannot happen when
            // callers check `try_clone`, but never send a truncated body.
            return Poll::Ready(None);
        }
        match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.complete = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !s.overflow {
                        s.len += data.len();
                        if s.len > s.cap {
                            s.overflow = true;
                            s.chunks = Vec::new();
                        } else {
                            s.chunks.push(data.clone());
                        }
                    }
                    self.pos = s.chunks.len();
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.complete = true;
                    self.sent_trailers = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        let s = self.shared.lock();
        s.complete && self.pos >= s.chunks.len() && (self.sent_trailers || s.trailers.is_none())
            || (self.pos == 0 && s.chunks.is_empty() && !s.complete && s.inner.is_end_stream())
    }

    pub fn size_hint(&self) -> SizeHint {
        let s = self.shared.lock();
        if s.complete {
            let rest: usize = s.chunks[self.pos.min(s.chunks.len())..].iter().map(Bytes::len).sum();
            return SizeHint::with_exact(rest as u64);
        }
        if self.pos == 0 && s.chunks.is_empty() {
            return s.inner.size_hint();
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    async fn collect(b: &mut ReplayBody) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(f) = poll_fn(|cx| b.poll_frame(cx)).await {
            if let Ok(d) = f.unwrap().into_data() {
                out.extend_from_slice(&d);
            }
        }
        out
    }

    #[tokio::test]
    async fn replays_a_small_body() {
        let mut first = ReplayBody::new(Body::full("hello world"), 1024);
        let mut second = first.try_clone().unwrap();
        assert_eq!(collect(&mut first).await, b"hello world");
        assert_eq!(collect(&mut second).await, b"hello world");
        assert!(second.is_end_stream());
    }

    #[tokio::test]
    async fn a_failed_first_attempt_that_never_read_is_fine() {
        let first = ReplayBody::new(Body::full("abc"), 1024);
        let mut second = first.try_clone().unwrap();
        drop(first);
        assert_eq!(collect(&mut second).await, b"abc");
    }

    #[tokio::test]
    async fn over_the_cap_it_streams_but_cannot_replay() {
        let mut first = ReplayBody::new(Body::full(vec![7u8; 100]), 10);
        assert_eq!(collect(&mut first).await.len(), 100);
        assert!(first.try_clone().is_none());
    }
}
