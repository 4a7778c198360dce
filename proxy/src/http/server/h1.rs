//! HTTP/1.1 downstream connections, served on the connection's own task.
//!
//! hyper's server keeps a read buffer (8 KiB reserved before every read, the one that waits
//! for the next request included) and a write buffer for a connection's whole life, and runs
//! every request through its dispatcher. Here the connection's task reads a request head with
//! `httparse`, calls the handler, and writes the response itself; the request body reads the
//! connection as the handler asks for it. Between requests a connection holds its socket (and,
//! over mutual TLS, the session) and nothing else: the next head is read through a buffer on
//! the stack and copied out once bytes are there, and what is left of a buffer once its bytes
//! are used is freed.
//!
//! What it does, as RFC 9112 asks of a server (and as hyper did before it, where RFC 9112
//! leaves a choice):
//! - the head: at most [`MAX_HEADERS`] fields and the configured size (else `431`); anything
//!   `httparse` refuses (HTTP/0.9, versions other than 1.0 and 1.1, obs-fold, spaces before a
//!   colon, bare CR) is `400` and the connection is closed; the header read timeout runs from
//!   the end of the last response (or the accept) to the head's end: then a connection with
//!   part of a head gets `408`, one with nothing is closed silently;
//! - the body (§6): `Transfer-Encoding` must be exactly `chunked` (another coding is `501`;
//!   in an HTTP/1.0 request, or beside a `Content-Length`, it is `400`: request smuggling
//!   rides on such disagreements); else one `Content-Length` (every value the same digits),
//!   else none. Chunk-size lines and trailers are strict (see the HTTP/1.1 client);
//! - `Expect: 100-continue` (HTTP/1.1) is answered `100 Continue` when the handler first reads
//!   the body, never once the final response has started;
//! - the response: framed by its `Content-Length`, else by the body's known length, else
//!   chunked (HTTP/1.0: until the close); none for `HEAD`, 1xx, 204 and 304; `date` added
//!   when absent; trailers only to a client that sent `TE: trailers`;
//! - keep-alive: HTTP/1.1 unless `Connection: close`, HTTP/1.0 with `Connection: keep-alive`;
//!   a response that closes says `Connection: close`; a request body the handler left unread
//!   is read and dropped after the response if it is small (at most 64 KiB more, within the
//!   header read timeout), else the connection is closed; pipelined requests are answered in
//!   order;
//! - a client that closes its side while its request is handled cancels it (the handler's
//!   future is dropped), as hyper does without half-close;
//! - upgrades: a request with `Upgrade` (and `Connection: upgrade`) carries an [`OnUpgrade`];
//!   once its `101` response is written the connection is handed over, with any bytes already
//!   read after the head;
//! - drain: an idle connection closes; a request in flight is answered with
//!   `Connection: close`; a connection accepted while draining has its first request answered
//!   so.
use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

use crate::drain;
use crate::http::Body;
use crate::http::client::h1::{self as codec, Decoder, Framing, Length, Step, Writer, content_length, itoa, tokens};

/// Request header fields at most (as hyper's server); more is `431`.
pub const MAX_HEADERS: usize = 100;
/// The largest request head [`Limits::max_header_size`] may allow (offsets into a head fit a
/// `u16`).
pub const MAX_HEAD: usize = 64 * 1024;
/// A request body the handler did not read is read and dropped after the response when at
/// most this much of it is still to come; a larger rest closes the connection.
const DRAIN_MAX: u64 = 64 * 1024;
/// How much one read asks for while the connection holds no bytes (a head, mostly): on the
/// stack, copied into a buffer of the size read.
const HEAD_READ: usize = 8 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    /// At most [`MAX_HEAD`].
    pub max_header_size: usize,
}

/// Why a request body (or the connection under it) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the client closed the connection {0} bytes before the end of the request body")]
    ClosedInBody(u64),
    #[error("the client closed the connection in the middle of a chunked request body")]
    ClosedInChunked,
    #[error("malformed chunked request body: {0}")]
    Chunked(&'static str),
    #[error("the connection has ended")]
    Gone,
}

impl From<codec::Error> for Error {
    fn from(e: codec::Error) -> Self {
        match e {
            codec::Error::Chunked(what) => Error::Chunked(what),
            codec::Error::Io(e) => Error::Io(e),
            _ => Error::Chunked("malformed"),
        }
    }
}

/// The stream a connection is served on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

// ------------------------------------------------------------------ the connection

/// `100 Continue` for the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    No,
    /// Asked for, not yet sent: sent when the body is first read.
    Wanted,
    /// This many bytes of it are written.
    Writing(usize),
    /// Sent, or forgone because the response has started.
    Done,
}

/// What the connection's task and its current request body share.
struct Shared<I> {
    /// `None` once handed to an upgrade or closed.
    io: Option<I>,
    /// Bytes read and not yet used: the rest of a head, of a body, or a next request.
    buf: BytesMut,
    /// The current request's body.
    body: Decoder,
    /// A [`RequestBody`] of the current request is alive.
    held: bool,
    expect: Expect,
    /// No further request on this connection: its read side ended or failed, or a body broke.
    broken: bool,
}

type Conn<I> = Mutex<Shared<I>>;

fn lock<I>(conn: &Conn<I>) -> MutexGuard<'_, Shared<I>> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<I: Io> Shared<I> {
    /// Read what the socket has. While the connection holds no bytes (waiting for a head),
    /// through a buffer on the stack, so an idle connection holds no allocation; inside a
    /// message, into the buffer's room for up to `want` more bytes.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else { return Poll::Ready(Ok(0)) };
        if self.buf.is_empty() && want <= HEAD_READ {
            let mut stack = [MaybeUninit::<u8>::uninit(); HEAD_READ];
            let mut rb = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(io).poll_read(cx, &mut rb))?;
            self.buf.extend_from_slice(rb.filled());
            return Poll::Ready(Ok(rb.filled().len()));
        }
        self.buf.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.buf)
    }

    /// Write what is left of `100 Continue`, if it is being written.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Expect::Writing(at) = self.expect {
            let Some(io) = self.io.as_mut() else { return Poll::Ready(Err(io::ErrorKind::NotConnected.into())) };
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &CONTINUE[at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.expect = if at + n == CONTINUE.len() { Expect::Done } else { Expect::Writing(at + n) };
            if self.expect == Expect::Done {
                ready!(Pin::new(io).poll_flush(cx))?;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The next frame of the current request's body.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.expect == Expect::Wanted {
            self.expect = Expect::Writing(0);
        }
        if let Err(e) = ready!(self.poll_continue(cx)) {
            return self.fail(e.into());
        }
        loop {
            match codec::step(&mut self.body, &mut self.buf) {
                Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::Read(want)) => match ready!(self.poll_fill(cx, want)) {
                    Ok(0) => {
                        let e = match self.body {
                            Decoder::Length(left) => Error::ClosedInBody(left),
                            Decoder::Done => return Poll::Ready(None),
                            _ => Error::ClosedInChunked,
                        };
                        return self.fail(e);
                    }
                    Ok(_) => {}
                    Err(e) => return self.fail(e.into()),
                },
                Err(e) => return self.fail(e.into()),
            }
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.body = Decoder::Done;
        self.broken = true;
        Poll::Ready(Some(Err(e)))
    }
}

/// The connection as the response sees it: every call locks, so the request body can read
/// the connection in between (on this task or another).
struct Locked<'a, I>(&'a Conn<I>);

impl<I: Io> AsyncWrite for Locked<'_, I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = lock(self.0);
        ready!(s.poll_continue(cx))?;
        match s.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(self.0);
        match s.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(self.0);
        match s.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

// ------------------------------------------------------------------ the request body

trait Source: Send + Sync {
    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>>;
    fn is_end_stream(&self) -> bool;
    fn size_hint(&self) -> SizeHint;
    fn release(&self);
}

impl<I: Io> Source for Conn<I> {
    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        lock(self).poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        matches!(lock(self).body, Decoder::Done | Decoder::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match lock(self).body {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    fn release(&self) {
        lock(self).held = false;
    }
}

/// A downstream HTTP/1.1 request's body: it reads the connection as it is polled.
pub struct RequestBody(Arc<dyn Source>);

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

impl RequestBody {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.0.poll_frame(cx)
    }

    pub fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.0.release();
    }
}

// ------------------------------------------------------------------ upgrades

/// An upgraded connection: the bytes read after the request head, then the stream.
pub struct Upgraded {
    io: Box<dyn UpgradedIo>,
    prefix: Bytes,
}

trait UpgradedIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> UpgradedIo for T {}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded").field("prefix", &self.prefix.len()).finish()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// In the extensions of a request that asks for an upgrade ([`OnUpgrade::take`]).
#[derive(Debug, Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    /// The upgrade `req` asked for: ready with the connection once the `101` response is
    /// written; an error if the response was another.
    pub fn take<B>(req: &mut Request<B>) -> Option<Upgrading> {
        let on = req.extensions_mut().remove::<OnUpgrade>()?;
        let rx = on.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        rx.map(Upgrading)
    }
}

/// See [`OnUpgrade::take`].
#[derive(Debug)]
pub struct Upgrading(oneshot::Receiver<Upgraded>);

impl Future for Upgrading {
    type Output = Result<Upgraded, io::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0)
            .poll(cx)
            .map(|r| r.map_err(|_| io::Error::other("the connection was not upgraded")))
    }
}

// ------------------------------------------------------------------ the head

/// A request head, and what the server needs to know about its message.
struct Head {
    req: Request<()>,
    body: Decoder,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
    /// The client said `TE: trailers`.
    trailers: bool,
}

/// Why a head is refused: the status it is answered with.
#[derive(Debug, Clone, Copy)]
enum Refused {
    BadRequest(&'static str),
    TooLarge,
    NotImplemented(&'static str),
    /// Part of a head came, not all of it within the header read timeout.
    Timeout,
}

impl Refused {
    fn response(self) -> &'static [u8] {
        match self {
            Refused::BadRequest(_) => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            Refused::TooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            Refused::NotImplemented(_) => {
                b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            Refused::Timeout => b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        }
    }
}

/// Parse one request head off the front of `buf`: `None` until all of it is there.
fn parse_head(buf: &mut BytesMut, max: usize) -> Result<Option<Head>, Refused> {
    let max = max.min(MAX_HEAD);
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, &buf[..], &mut fields)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max => return Err(Refused::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refused::TooLarge),
        Err(_) => return Err(Refused::BadRequest("malformed request head")),
    };
    if len > max {
        return Err(Refused::TooLarge);
    }
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| Refused::BadRequest("the method is not a token"))?;
    let version = if req.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Where the target and each field lie in the head, so they share its bytes once frozen.
    // why `u16`: zeroing this array is paid on every request (as `usize`s, 3.2 KB: 3,200
    // instructions of `memset` per request, measured); a head is at most `MAX_HEAD` bytes.
    let base = buf.as_ptr() as usize;
    let off = |s: &[u8]| (s.as_ptr() as usize - base) as u16;
    let path = req.path.unwrap_or_default().as_bytes();
    let target = (usize::from(off(path)), path.len());
    let mut at = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let n = req.headers.len();
    for (slot, f) in at.iter_mut().zip(req.headers.iter()) {
        *slot = (off(f.name.as_bytes()), f.name.len() as u16, off(f.value), f.value.len() as u16);
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| Refused::BadRequest("the request target is not a URI"))?;
    // Room for what the proxy adds (request id, x-forwarded-for, trace context) without
    // growing the map (hyper's server reuses the last request's map; measured: ~900
    // instructions per request more when the map grows).
    let mut headers = HeaderMap::with_capacity(n + 4);
    // What the server needs to know, gathered in the same pass (a lookup per field name after
    // would hash each name again).
    let (mut length, mut bad_length) = (None, false);
    let (mut codings, mut last_chunked) = (0usize, false);
    let (mut close, mut keep_alive_token, mut upgrade_token, mut upgrade_field) = (false, false, false, false);
    let (mut expect_continue, mut trailers) = (false, false);
    for &(ns, nl, vs, vl) in &at[..n] {
        let (ns, nl, vs, vl) = (usize::from(ns), usize::from(nl), usize::from(vs), usize::from(vl));
        let name = HeaderName::from_bytes(&head[ns..ns + nl]).map_err(|_| Refused::BadRequest("a field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
            .map_err(|_| Refused::BadRequest("a field value"))?;
        let v = value.as_bytes();
        if name == header::CONTENT_LENGTH {
            bad_length |= codec::content_length_value(v, &mut length).is_err();
        } else if name == header::TRANSFER_ENCODING {
            for t in tokens(v) {
                codings += 1;
                last_chunked = t.eq_ignore_ascii_case(b"chunked");
            }
        } else if name == header::CONNECTION {
            for t in tokens(v) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive_token |= t.eq_ignore_ascii_case(b"keep-alive");
                upgrade_token |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name == header::UPGRADE {
            upgrade_field = true;
        } else if name == header::EXPECT {
            expect_continue |= v.eq_ignore_ascii_case(b"100-continue");
        } else if name == header::TE {
            trailers |= tokens(v).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        }
        headers.append(name, value);
    }

    let body = if codings > 0 {
        if version == Version::HTTP_10 {
            return Err(Refused::BadRequest("transfer-encoding in an HTTP/1.0 request"));
        }
        if length.is_some() || bad_length {
            return Err(Refused::BadRequest("both transfer-encoding and content-length"));
        }
        if !last_chunked {
            return Err(Refused::BadRequest("a transfer-encoding that does not end in chunked"));
        }
        if codings > 1 {
            return Err(Refused::NotImplemented("a transfer coding other than chunked"));
        }
        Decoder::Chunked(codec::Chunk::Size)
    } else if bad_length {
        return Err(Refused::BadRequest("content-length is not one number"));
    } else {
        Decoder::Length(length.unwrap_or(0))
    };
    let http11 = version == Version::HTTP_11;
    let keep_alive = if http11 { !close } else { keep_alive_token && !close };
    let expect_continue = http11 && expect_continue;
    let upgrade = http11 && method != Method::CONNECT && upgrade_field && upgrade_token;

    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(Head { req, body, keep_alive, expect_continue, upgrade, trailers }))
}

// ------------------------------------------------------------------ serving

/// What follows a request.
enum Next {
    KeepAlive,
    Close,
    /// The connection belongs to an upgrade now.
    Upgraded,
}

/// Serve HTTP/1.x on `io` until the connection ends (or the proxy drains).
///
/// why a function returning the future, not an `async fn`: an `async fn` keeps its arguments in
/// its future for its whole life, `io` included after it has moved into the shared state: over
/// mutual TLS a second, dead copy of the TLS session (1.1 KB) in every connection's task
/// (measured: 8.8 against 7.3 KB per idle mTLS connection).
pub fn serve<I, S, F>(
    io: I,
    handler: Arc<S>,
    limits: Limits,
    drain: drain::Signal,
) -> impl Future<Output = ()> + Send + 'static + use<I, S, F>
where
    I: Io,
    S: Fn(Request<Body>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    run(new_conn(io), handler, limits, drain)
}

async fn run<I, S, F>(conn: Arc<Conn<I>>, handler: Arc<S>, limits: Limits, drain: drain::Signal)
where
    I: Io,
    S: Fn(Request<Body>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut first = true;
    let mut wait = Wait::new(&drain, limits.header_read_timeout);
    loop {
        let exchanging = match read_head(&conn, &limits, &mut wait, first).await {
            // Boxed: the handler's future and the response are there only while a request is.
            Ok(Some(head)) => Box::pin(exchange(&conn, head, &handler, &drain, limits.header_read_timeout)),
            Ok(None) => break,
            Err(refused) => {
                Box::pin(refuse(&conn, refused)).await;
                break;
            }
        };
        first = false;
        match exchanging.await {
            Next::KeepAlive => {}
            Next::Close => break,
            Next::Upgraded => return,
        }
    }
    // Boxed: its timer would otherwise take room in every idle connection's task.
    Box::pin(close(&conn, limits.header_read_timeout)).await;
}

/// Answer a head that cannot be served.
async fn refuse<I: Io>(conn: &Conn<I>, refused: Refused) {
    if let Refused::BadRequest(why) | Refused::NotImplemented(why) = refused {
        tracing::debug!(why, "HTTP/1.1 request refused");
    }
    let mut w = Locked(conn);
    if w.write_all(refused.response()).await.is_ok() {
        let _ = w.flush().await;
    }
}

fn new_conn<I>(io: I) -> Arc<Conn<I>> {
    Arc::new(Mutex::new(Shared {
        io: Some(io),
        buf: BytesMut::new(),
        body: Decoder::Done,
        held: false,
        expect: Expect::No,
        broken: false,
    }))
}

/// End the connection: its write side shut (a FIN; over TLS, `close_notify` first), within
/// `limit`. A request body still held elsewhere fails from now on.
async fn close<I: Io>(conn: &Conn<I>, limit: Duration) {
    let io = lock(conn).io.take();
    if let Some(mut io) = io {
        let _ = tokio::time::timeout(limit, io.shutdown()).await;
    }
}

/// Wait for and read the next request head. `None`: the client closed (or, between requests,
/// the proxy drains, or the header read timeout passed with nothing of a head read: with part
/// of one, [`Refused::Timeout`]).
async fn read_head<I: Io>(
    conn: &Conn<I>,
    limits: &Limits,
    wait: &mut Wait,
    first: bool,
) -> Result<Option<Head>, Refused> {
    // The timer is armed at the first wait only: a head already read (pipelined) costs none.
    let mut armed = false;
    std::future::poll_fn(|cx| {
        let mut s = lock(conn);
        loop {
            if !s.buf.is_empty()
                && let Some(head) = parse_head(&mut s.buf, limits.max_header_size)?
            {
                return Poll::Ready(Ok(Some(head)));
            }
            if s.broken {
                return Poll::Ready(Ok(None));
            }
            match s.poll_fill(cx, HEAD_READ) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    s.broken = true;
                    return Poll::Ready(Ok(None));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        // Between requests a drain closes the connection; the caller's bytes, once some came,
        // are answered (with `Connection: close`), as is the first request of a connection
        // accepted while draining.
        if !first && s.buf.is_empty() && wait.draining.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(None));
        }
        drop(s);
        if !armed {
            wait.timer.as_mut().reset(tokio::time::Instant::now() + limits.header_read_timeout);
            armed = true;
        }
        if wait.timer.as_mut().poll(cx).is_ready() {
            tracing::debug!("no whole request head within the header read timeout");
            let partial = !lock(conn).buf.is_empty();
            return Poll::Ready(if partial { Err(Refused::Timeout) } else { Ok(None) });
        }
        Poll::Pending
    })
    .await
}

/// What a connection waits for a head with, made with the connection and kept (a keep-alive
/// connection waits before every request): the header read timeout's timer and the drain's
/// watch. why boxed: inline, they took 352 bytes more of every connection's task (rustc did not
/// overlap them with the rest), and made anew per request they cost an allocation each time.
/// why made with the connection rather than at its first wait: made after the first request's
/// short-lived allocations, they kept pages of those resident (10,000 idle mTLS connections:
/// 93.0 MB made at the first wait, measured).
struct Wait {
    timer: Pin<Box<tokio::time::Sleep>>,
    draining: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Wait {
    fn new(drain: &drain::Signal, timeout: Duration) -> Self {
        let mut drain = drain.clone();
        Self { timer: Box::pin(tokio::time::sleep(timeout)), draining: Box::pin(async move { drain.draining().await }) }
    }
}

/// Serve one request: call the handler, write its response, and say what follows.
async fn exchange<I, S, F>(
    conn: &Arc<Conn<I>>,
    head: Head,
    handler: &Arc<S>,
    drain: &drain::Signal,
    limit: Duration,
) -> Next
where
    I: Io,
    S: Fn(Request<Body>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let Head { req, body, keep_alive, expect_continue, upgrade, trailers } = head;
    let head_method = req.method() == Method::HEAD;
    let http10 = req.version() == Version::HTTP_10;
    let has_body = !matches!(body, Decoder::Length(0));
    {
        let mut s = lock(conn);
        s.body = body;
        s.held = has_body;
        s.expect = if expect_continue && has_body { Expect::Wanted } else { Expect::No };
    }
    let mut req = req.map(|()| if has_body { Body::Downstream(RequestBody(conn.clone())) } else { Body::Empty });
    let upgraded = upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        req.extensions_mut().insert(OnUpgrade(Arc::new(Mutex::new(Some(rx)))));
        tx
    });

    // The handler runs; meanwhile, once the request is read, a close by the client cancels it.
    let mut fut = pin!(handler(req));
    let resp = std::future::poll_fn(|cx| {
        if let Poll::Ready(res) = fut.as_mut().poll(cx) {
            let Ok(resp) = res;
            return Poll::Ready(Some(resp));
        }
        let mut s = lock(conn);
        if matches!(s.body, Decoder::Done | Decoder::Length(0)) && s.buf.is_empty() && !s.broken {
            match s.poll_fill(cx, HEAD_READ) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    s.broken = true;
                    return Poll::Ready(None);
                }
                // A next request (pipelined): kept for later.
                Poll::Ready(Ok(_)) | Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await;
    let Some(resp) = resp else {
        tracing::debug!("the client closed the connection while its request was handled");
        return Next::Close;
    };

    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let upgrading = status == StatusCode::SWITCHING_PROTOCOLS && upgraded.is_some();
    let mut keep_alive = keep_alive && !drain.is_draining();
    {
        let mut s = lock(conn);
        keep_alive &= !s.broken;
        // The response starts: a `100 Continue` not yet begun is forgone, and the client, never
        // told to go on, may or may not send the body: the connection ends after the response.
        if s.expect == Expect::Wanted {
            s.expect = Expect::Done;
            if !matches!(s.body, Decoder::Done | Decoder::Length(0)) {
                keep_alive = false;
            }
        }
    }
    let bodyless = head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = match content_length(&parts.headers) {
        Length::One(n) => Some(n),
        _ => None,
    };
    let framing = if bodyless {
        None
    } else if let Some(n) = declared {
        Some(Framing::Length(n))
    } else if let Some(n) = body.size_hint().exact() {
        Some(Framing::Length(n))
    } else if http10 {
        keep_alive = false;
        Some(Framing::Close)
    } else {
        Some(Framing::Chunked)
    };

    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(r) => out.extend_from_slice(r.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        let skip = name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && (framing.is_some() || status == StatusCode::NO_CONTENT))
            || (name == header::CONNECTION && !upgrading);
        if skip {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Some(Framing::Length(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Some(Framing::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Some(Framing::Close) | None => {}
    }
    if !upgrading {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !parts.headers.contains_key(header::DATE) {
        date(&mut out);
    }
    out.extend_from_slice(b"\r\n");

    // A body shorter than its framing says fails the write (and closes the connection).
    let mut writer = Writer::with(out.freeze(), framing.map(|f| (body, f)));
    if !trailers {
        writer = writer.without_trailers();
    }
    let mut io = Locked(&**conn);
    if let Err(e) = std::future::poll_fn(|cx| writer.poll_write(&mut io, cx)).await {
        tracing::debug!(error = %e, "the response could not be written to the client");
        return Next::Close;
    }
    drop(writer);

    if upgrading && let Some(tx) = upgraded {
        let mut s = lock(conn);
        if let Some(io) = s.io.take() {
            let prefix = s.buf.split().freeze();
            let _ = tx.send(Upgraded { io: Box::new(io), prefix });
        }
        return Next::Upgraded;
    }
    if !keep_alive || drain.is_draining() {
        return Next::Close;
    }
    // What the handler left of the request body: read and dropped if small (and sent within
    // the header read timeout: a client that trickles it does not hold the connection), else
    // the end.
    let done = matches!(lock(conn).body, Decoder::Done | Decoder::Length(0));
    if !done && !matches!(tokio::time::timeout(limit, drain_body(conn)).await, Ok(true)) {
        return Next::Close;
    }
    let mut s = lock(conn);
    if s.broken {
        return Next::Close;
    }
    if s.buf.is_empty() {
        // Hold no buffer while idle.
        s.buf = BytesMut::new();
    }
    Next::KeepAlive
}

/// Read and drop what is left of the request body, if the handler has let go of it and at most
/// [`DRAIN_MAX`] more bytes of it are to come. `false`: the connection cannot go on.
async fn drain_body<I: Io>(conn: &Conn<I>) -> bool {
    let mut budget = DRAIN_MAX;
    std::future::poll_fn(|cx| {
        let mut s = lock(conn);
        loop {
            match s.body {
                Decoder::Done | Decoder::Length(0) => return Poll::Ready(true),
                _ if s.held || s.broken => return Poll::Ready(false),
                Decoder::Length(n) if n > budget => return Poll::Ready(false),
                _ => {}
            }
            match ready!(s.poll_body(cx)) {
                Some(Ok(frame)) => {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    let Some(left) = budget.checked_sub(n) else { return Poll::Ready(false) };
                    budget = left;
                }
                Some(Err(_)) => return Poll::Ready(false),
                None => return Poll::Ready(true),
            }
        }
    })
    .await
}

/// `date: <IMF-fixdate>\r\n`, formatted once per second per thread.
fn date(out: &mut BytesMut) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            c.1.clear();
            c.1.extend_from_slice(b"date: ");
            c.1.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            c.1.extend_from_slice(b"\r\n");
            c.0 = secs;
        }
        out.extend_from_slice(&c.1);
    });
}

#[cfg(test)]
mod tests;
