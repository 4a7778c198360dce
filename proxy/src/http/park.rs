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
//! connection. Over mutual TLS (a peer proxy's `outrider-http1` connection) the TLS session
//! is kept across hyper connections the same way ([`Socket`]); rustls' own per-connection
//! state stays with it.
//!
//! What a parked connection holds is its task: the future the accept loop spawned, as large
//! as that future's largest state. The server and the listeners keep everything else out of
//! it (boxed where it starts, freed when it ends); `app::tests` guards its size.
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
use crate::drain;

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

/// A downstream stream an idle HTTP/1.1 connection can park on: while it is parked nothing
/// reads it, and the connection waits until the socket under it has something to read.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    /// Whether a connection on this stream parks (false: it keeps its hyper connection).
    const PARKS: bool;

    /// Ready once the socket under the stream is readable (bytes, end of file or an error).
    /// Called only on a parked connection, whose last read ended pending.
    fn poll_socket_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Socket for TcpStream {
    const PARKS: bool = true;

    fn poll_socket_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// Mutual TLS: the session (keys, sequence numbers) stays; hyper's buffers go. A parked
/// connection's last read ended pending, so the stream holds no plaintext the socket would not
/// announce (at most part of a record, whose rest makes the socket readable) and, mostly, no
/// buffer at all ([`crate::tls::stream`]).
impl Socket for crate::tls::stream::ServerStream<TcpStream> {
    const PARKS: bool = true;

    fn poll_socket_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// An HTTP stream tunnelled in HBONE: its bytes arrive through the tunnel's HTTP/2
/// connection, not a socket of its own, so it does not park.
impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Socket for crate::hbone::stream::Rewind<S> {
    const PARKS: bool = false;

    fn poll_socket_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::Error::new(io::ErrorKind::Unsupported, "an HBONE stream does not park")))
    }
}

/// An in-memory pipe (the fuzz targets serve their input through one): no socket under it.
impl Socket for tokio::io::DuplexStream {
    const PARKS: bool = false;

    fn poll_socket_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::Error::new(io::ErrorKind::Unsupported, "an in-memory pipe does not park")))
    }
}

/// Why a parked connection's wait ended.
#[derive(Debug)]
pub enum Woken {
    /// The caller sent more (or closed): serve it with a new hyper connection.
    Readable,
    Failed(io::Error),
    /// Nothing within the limit.
    TimedOut,
    /// The proxy drains: close.
    Draining,
}

/// The downstream socket as one hyper connection sees it: after `prefix` (bytes an
/// earlier connection read but did not use), the socket; an end-of-file instead of
/// waiting once the connection may park and the caller has been silent for `park_after`.
#[derive(Debug)]
pub struct ParkIo<I = TcpStream> {
    io: I,
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

impl<I: Socket> ParkIo<I> {
    /// The stream under the connection.
    #[cfg(test)]
    pub(crate) fn get_ref(&self) -> &I {
        &self.io
    }

    pub fn new(io: I, exchange: Arc<Exchange>, park_after: Duration) -> Self {
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

    /// Wait, parked, until the caller sends more (or closes), at most `limit`, or until the
    /// proxy drains. The caller's bytes win over the drain: they are answered once, with
    /// `Connection: close`. (One poll function rather than a `select!` of futures: this
    /// future is what a parked connection's task holds besides the socket.)
    pub async fn wait(&self, limit: Duration, drain: &mut drain::Signal) -> Woken {
        let deadline = tokio::time::sleep(limit);
        let draining = drain.draining();
        tokio::pin!(deadline, draining);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.io.poll_socket_readable(cx) {
                return Poll::Ready(r.map_or_else(Woken::Failed, |()| Woken::Readable));
            }
            if draining.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woken::Draining);
            }
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woken::TimedOut);
            }
            Poll::Pending
        })
        .await
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

impl<I: Socket> AsyncRead for ParkIo<I> {
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

impl<I: Socket> AsyncWrite for ParkIo<I> {
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
