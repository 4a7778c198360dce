//! Releasing an idle HTTP/1.1 keep-alive connection's memory.
//!
//! hyper keeps a server connection's read buffer (it reserves 8 KiB before every read,
//! including the one that waits for the next request) and its write buffer (8 KiB,
//! allocated when the connection is built) for the connection's whole life; no builder
//! option releases them. So an idle connection is *parked*: once the last response has been
//! flushed and the caller has sent nothing more for the quiet period (`park_after`),
//! [`ParkIo`] ends hyper's read with an end-of-file, hyper ends the connection cleanly
//! without closing the socket, and the server ([`super::server`]) waits for the socket to
//! become readable again, holding only the socket, before it serves it with a new hyper
//! connection.
//!
//! why a quiet period: a busy connection (a request every few milliseconds) that parked
//! between every two requests would build a new hyper connection per request (about 6 µs of
//! CPU each, measured). One timer per busy period, re-armed only when it fires: a connection
//! parks between `park_after` and twice that after its last request, and a request costs
//! no timer operation.
//!
//! A connection is parked only when it is exactly between two messages:
//! - no request is in flight and every response body has been sent and flushed;
//! - the last request had no body (hyper has then read all of it; a body it may not have
//!   read to its end must never be parsed as a next request) and asked for no upgrade.
//!
//! Bytes of a next request that hyper read already (a pipelined head that arrived in
//! part) are handed back by hyper and given to the next connection first; a connection
//! holding such a partial head is not parked again before that request, so hyper's
//! header read timeout bounds it as before.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::Request;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant, Sleep};

use super::Body;
use super::body::BodyError;

/// What the connection's requests tell its [`ParkIo`]. One per connection; the
/// connection's requests and its I/O run on the connection's task, so the
/// orderings are only there to make the type `Sync`.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Requests whose response body has not been sent to its end.
    in_flight: AtomicUsize,
    /// The last request had no body and no upgrade.
    may_park: AtomicBool,
    /// Requests started on the connection (the quiet timer's "anything since?").
    pub(super) started: AtomicUsize,
}

impl Exchange {
    /// A request starts; the guard is held until its response body is done (or dropped).
    pub fn start<B: http_body::Body>(self: &Arc<Self>, req: &Request<B>) -> InFlight {
        let bodyless = req.body().is_end_stream();
        let upgrade = req.headers().contains_key(http::header::UPGRADE) || req.method() == http::Method::CONNECT;
        self.may_park.store(bodyless && !upgrade, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.may_park.load(Ordering::Relaxed)
    }
}

/// One request in flight (see [`Exchange::start`]).
#[derive(Debug)]
pub struct InFlight(Arc<Exchange>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request's [`InFlight`] until hyper has sent it
/// (hyper drops a body when it has written its end, or when the connection fails).
#[derive(Debug)]
pub struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl TrackedBody {
    pub fn new(inner: Body, in_flight: InFlight) -> Self {
        Self { inner, _in_flight: in_flight }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The downstream socket as one hyper connection sees it: after `prefix` (bytes an
/// earlier connection read but did not use), the socket; an end-of-file instead of
/// waiting once the connection may park and the caller has been silent for `park_after`.
#[derive(Debug)]
pub struct ParkIo {
    io: TcpStream,
    prefix: Bytes,
    exchange: Arc<Exchange>,
    /// Written since the last completed flush (hyper flushes only once its own
    /// buffer is empty, so `false` means nothing of a response is left to send).
    unflushed: bool,
    parked: bool,
    /// The quiet period before an idle connection parks (zero: at once).
    park_after: Duration,
    /// Armed while the connection is busy; freed when it parks.
    quiet: Option<Pin<Box<Sleep>>>,
    /// `Exchange::started` when `quiet` was last armed.
    armed_at: usize,
}

impl ParkIo {
    pub fn new(io: TcpStream, exchange: Arc<Exchange>, park_after: Duration) -> Self {
        Self {
            io,
            prefix: Bytes::new(),
            exchange,
            unflushed: false,
            parked: false,
            park_after,
            quiet: None,
            armed_at: 0,
        }
    }

    /// Idle and silent: has it been so for the quiet period? Arms the timer (and
    /// registers `cx` with it) when not.
    fn quiet_long_enough(&mut self, cx: &mut Context<'_>) -> bool {
        if self.park_after.is_zero() {
            return true;
        }
        let started = self.exchange.started.load(Ordering::Relaxed);
        let timer = match &mut self.quiet {
            Some(t) => t,
            None => {
                self.armed_at = started;
                self.quiet.insert(Box::pin(tokio::time::sleep(self.park_after)))
            }
        };
        while timer.as_mut().poll(cx).is_ready() {
            if self.armed_at == started {
                self.quiet = None;
                return true;
            }
            // Requests came in since it was armed: another quiet period from now.
            self.armed_at = started;
            timer.as_mut().reset(Instant::now() + self.park_after);
        }
        false
    }

    /// Did this connection end by parking (rather than by the caller's end-of-file)?
    pub fn parked(&self) -> bool {
        self.parked
    }

    /// Bytes of a next request kept from the last hyper connection.
    pub fn holds(&self) -> usize {
        self.prefix.len()
    }

    /// Wait until the caller sends more (or closes), holding only the socket and
    /// `leftover` (copied, so hyper's read buffer is freed).
    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// Ready for the next hyper connection: `leftover` is read first. A connection
    /// holding part of a request head does not park again before that request.
    pub fn resume(&mut self, leftover: &[u8]) {
        self.parked = false;
        self.unflushed = false;
        if !leftover.is_empty() {
            self.prefix = Bytes::copy_from_slice(leftover);
            self.exchange.may_park.store(false, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for ParkIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending if !this.unflushed && this.exchange.idle() && this.quiet_long_enough(cx) => {
                this.parked = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for ParkIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.unflushed = true;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.unflushed = true;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = res {
            this.unflushed = false;
        }
        res
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            // The socket outlives this hyper connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
