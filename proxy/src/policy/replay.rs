//! A request body that can be sent again, for retries.
//!
//! The caller's body is read once. The try that reads it streams each chunk
//! upstream as it arrives and keeps a copy while the total stays within the cap
//! (64 KiB by default); a retry sends the copy again, then goes on reading the
//! caller's body where the previous try stopped (an upstream may answer before
//! it has read the whole body).
//!
//! The rules that keep a retry from ever sending a prefix of the body:
//! - Only one try reads the caller's body at a time. [`Replay::next_try`] hands
//!   the body to a new try and fences every earlier one: polled again, an
//!   earlier try's body fails (its upstream request is aborted, never ended as
//!   if complete), and one waiting for the caller's body is woken to see that.
//! - The moment the body outgrows the cap the copy is dropped and the request
//!   can no longer be replayed: `next_try` answers [`NotReplayable::TooLarge`]
//!   from then on. The try reading it goes on streaming the whole body, as it is
//!   the one that sent every byte so far.
//! - The check and the fence are one step under the lock, so a try still
//!   streaming cannot push the body past the cap between the retry's decision
//!   and the retry.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use parking_lot::Mutex;

use crate::http::Body;
use crate::http::body::BodyError;

/// Default cap on what is kept for replay.
pub const DEFAULT_CAP: usize = 64 * 1024;

/// Why a request cannot be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotReplayable {
    /// The body outgrew the replay buffer (or announced, with `Content-Length`,
    /// that it would).
    TooLarge,
    /// Reading the caller's body failed.
    Failed,
}

impl NotReplayable {
    /// The `reason` label of `outrider_retries_skipped_total`.
    pub fn reason(self) -> &'static str {
        match self {
            NotReplayable::TooLarge => "body-too-large",
            NotReplayable::Failed => "body-error",
        }
    }
}

#[derive(Debug)]
struct Shared {
    inner: Body,
    /// The copy: every data frame read so far, while under the cap.
    chunks: Vec<Bytes>,
    /// Bytes read from the caller so far.
    len: usize,
    cap: usize,
    /// Set once the body can no longer be replayed.
    spoiled: Option<NotReplayable>,
    /// The caller's body has ended (trailers, if any, are kept).
    complete: bool,
    trailers: Option<HeaderMap>,
    /// The try whose view may read; views of earlier tries fail when polled.
    current: u32,
    /// The current view's waker while it waits for the caller's body, so that
    /// fencing it wakes it (else its connection would wait forever).
    parked: Option<Waker>,
}

/// The caller's body, shared by the tries of one request.
#[derive(Debug)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

impl Replay {
    /// The shared body and the first try's view of it.
    pub fn new(inner: Body, cap: usize) -> (Self, ReplayBody) {
        let shared = Arc::new(Mutex::new(Shared {
            inner,
            chunks: Vec::new(),
            len: 0,
            cap,
            spoiled: None,
            complete: false,
            trailers: None,
            current: 1,
            parked: None,
        }));
        let first = ReplayBody { shared: shared.clone(), id: 1, pos: 0, sent_trailers: false };
        (Self { shared }, first)
    }

    /// Whether a next try could still be made (without handing it the body).
    pub fn check(&self) -> Result<(), NotReplayable> {
        self.shared.lock().spoiled.map_or(Ok(()), Err)
    }

    /// The body for the next try, which from now on is the only one that may
    /// read; or why there can be no next try.
    pub fn next_try(&self) -> Result<ReplayBody, NotReplayable> {
        let mut s = self.shared.lock();
        if let Some(why) = s.spoiled {
            return Err(why);
        }
        s.current = s.current.wrapping_add(1);
        let id = s.current;
        let parked = s.parked.take();
        drop(s);
        if let Some(w) = parked {
            w.wake();
        }
        Ok(ReplayBody { shared: self.shared.clone(), id, pos: 0, sent_trailers: false })
    }
}

/// One try's view of the shared body.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Which try this is; only the newest may read.
    id: u32,
    /// Next chunk of the copy this try sends.
    pos: usize,
    sent_trailers: bool,
}

impl ReplayBody {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut s = self.shared.lock();
        if s.current != self.id {
            return Poll::Ready(Some(Err(BodyError::Superseded)));
        }
        if let Some(b) = s.chunks.get(self.pos).cloned() {
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
        // Everything kept was sent by this try: read on. (After an overflow the
        // copy is empty, but only the try that overflowed it can be here.)
        match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Pending => {
                if !s.parked.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.parked = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                s.complete = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.spoiled = Some(NotReplayable::Failed);
                s.chunks = Vec::new();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    s.len = s.len.saturating_add(data.len());
                    if s.spoiled.is_none() {
                        if s.len > s.cap {
                            s.spoiled = Some(NotReplayable::TooLarge);
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
        if s.current != self.id {
            // Must be polled to fail, not taken for a body that ended.
            return false;
        }
        if self.pos < s.chunks.len() {
            return false;
        }
        if s.complete { self.sent_trailers || s.trailers.is_none() } else { s.inner.is_end_stream() }
    }

    pub fn size_hint(&self) -> SizeHint {
        let s = self.shared.lock();
        let kept: u64 = s.chunks.get(self.pos..).unwrap_or_default().iter().map(|b| b.len() as u64).sum();
        if s.complete {
            return SizeHint::with_exact(kept);
        }
        let rest = s.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(kept.saturating_add(rest.lower()));
        if let Some(upper) = rest.upper().and_then(|u| u.checked_add(kept)) {
            hint.set_upper(upper);
        }
        hint
    }
}

#[cfg(test)]
mod tests;
