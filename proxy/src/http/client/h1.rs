//! HTTP/1.1 to an upstream, on the request's own task.
//!
//! hyper's client connection runs a task per connection and hands each request to it over a
//! channel; its buffers stay with the connection while it idles in the pool. Here the request's
//! task writes the request and reads the response head itself, and the response body reads the
//! connection as the downstream asks for data, then gives the connection back to the pool with
//! no buffer held. (Measured in docs/benchmarks.md, "An HTTP/1.1 client of our own".)
//!
//! What it does, as RFC 9112 asks of a client:
//! - the request: origin-form target, the fields as they are, framed by the `Content-Length` it
//!   carries, else the body's exact length, else chunked (trailers included); a body shorter or
//!   longer than its `Content-Length` is an error and the connection is closed;
//! - the response: `httparse` reads the head (at most [`MAX_HEADERS`] fields and
//!   [`MAX_HEAD_BYTES`]); 1xx heads are skipped; the body is framed by §6.3 — none for `HEAD`,
//!   204 and 304; `Transfer-Encoding` ending in `chunked`, else read to the close; else one
//!   `Content-Length` (all values equal, digits only), else read to the close. A response with
//!   both `Transfer-Encoding` and `Content-Length` is read as chunked, its `Content-Length` is
//!   dropped, and the connection is closed after it (§6.1);
//! - the request body is still written while the response arrives (a server may answer early,
//!   or stream its answer while it reads); a connection whose request or response did not end
//!   cleanly, that said `Connection: close` (or HTTP/1.0 without `keep-alive`), or that sent
//!   bytes after the response, is closed, never reused;
//! - upgrades (`Upgrade`, 101) are not carried here: the pool sends them through hyper.
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::Either;
use crate::http::Body;

/// Response header fields at most (as hyper's client).
pub const MAX_HEADERS: usize = 100;
/// A response head (status line and fields), or a trailer section, at most (Envoy's default
/// header limit is 60 KiB). Offsets into a head fit in a `u16`.
pub const MAX_HEAD_BYTES: usize = 64 * 1024 - 1;
/// Informational (1xx) heads before the final one at most.
const MAX_INFORMATIONAL: usize = 16;
/// A chunk-size line (size and extensions) at most.
const MAX_CHUNK_LINE: usize = 4096;
/// How much one read asks for while reading a head or a body of unknown length.
const READ_SIZE: usize = 8 * 1024;
/// The most one read of a body of known length asks for.
const MAX_READ_SIZE: usize = 64 * 1024;
/// Body bytes collected before they are written.
const MAX_QUEUED: usize = 64 * 1024;

/// Why an exchange, or a response body, failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before it sent a response")]
    ClosedBeforeResponse,
    #[error("the upstream closed the connection in the middle of the response head")]
    ClosedInHead,
    #[error("the upstream closed the connection {0} bytes before the end of the response body")]
    ClosedInBody(u64),
    #[error("the upstream closed the connection in the middle of a chunked response body")]
    ClosedInChunked,
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("malformed response head: {0}")]
    Invalid(&'static str),
    #[error("the response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed chunked response body: {0}")]
    Chunked(&'static str),
    #[error("the request body failed: {0}")]
    RequestBody(String),
    #[error("the request body is {0} than its content-length")]
    RequestLength(&'static str),
}

/// An open connection: the socket, and the bytes read and not yet used (none while it idles).
#[derive(Debug)]
pub struct Conn<G> {
    io: Either,
    buf: BytesMut,
    /// Has carried a response before (a reused keep-alive connection).
    reused: bool,
    /// Held while the connection lives (the pool's count of open connections).
    guard: G,
}

impl<G> Conn<G> {
    pub fn new(io: impl Into<Either>, guard: G) -> Self {
        Self { io: io.into(), buf: BytesMut::new(), reused: false, guard }
    }

    /// Still open, with nothing to read: the server has not closed it (or written to it)
    /// since its last response ([`Either::is_idle_and_open`]).
    pub fn is_idle_and_open(&mut self) -> bool {
        self.io.is_idle_and_open()
    }

    /// What the connection holds while it lives (the pool's claim).
    pub fn guard(&self) -> &G {
        &self.guard
    }

    /// Read what is there, up to `want` more bytes. Through `AsyncRead` (not `try_read_buf`):
    /// a read shorter than asked tells tokio the socket is drained, so the next look at the
    /// socket (the next read, or [`Self::is_idle_and_open`]) costs no system call until the
    /// reactor sees it readable again. With `try_read_buf` every request paid one more
    /// `recvfrom` (measured: 3.03 instead of 2.03 per proxied request, `strace -c`).
    fn poll_read(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// A request, written out: its head, and its body with how the body is framed.
#[derive(Debug)]
pub struct Outgoing {
    head: Bytes,
    body: Option<(Body, Framing)>,
    /// A `HEAD` request: its response has no body.
    head_method: bool,
    /// Safe to send again on another connection if this one turns out closed before any of the
    /// response came: idempotent (RFC 9110 §9.2.2) and without a body.
    resendable: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Framing {
    /// The bytes still to come of a `Content-Length` body.
    Length(u64),
    Chunked,
    /// Until the connection closes (a response to an HTTP/1.0 request whose length is not
    /// known beforehand).
    Close,
}

impl Outgoing {
    /// The request's head and framing. The URI's path and query are the target; fields are
    /// written as they are, with `Content-Length` or `Transfer-Encoding: chunked` added when the
    /// body needs one and has none.
    pub fn new(req: Request<Body>) -> Result<Self, Error> {
        let (parts, body) = req.into_parts();
        let declared = match content_length(&parts.headers) {
            Length::None => None,
            Length::One(n) => Some(n),
            Length::Invalid => return Err(Error::Invalid("the request's content-length is not one number")),
        };
        let chunked_field = parts.headers.contains_key(header::TRANSFER_ENCODING);
        let body = if body.is_end_stream() {
            match declared {
                Some(n) if n > 0 => return Err(Error::RequestLength("shorter")),
                _ => None,
            }
        } else {
            Some(body)
        };
        // Added to the head: the framing field the body needs.
        let mut added: Option<(&'static [u8], u64)> = None;
        let framing = match (&body, declared) {
            (None, _) => None,
            (Some(_), Some(n)) if !chunked_field => Some(Framing::Length(n)),
            (Some(b), None) if !chunked_field && b.size_hint().exact().is_some() => {
                let n = b.size_hint().exact().unwrap_or(0);
                added = Some((b"content-length: ", n));
                Some(Framing::Length(n))
            }
            (Some(_), _) => Some(Framing::Chunked),
        };
        let mut head = BytesMut::with_capacity(256);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.extend_from_slice(b" ");
        head.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            // A chunked body says so once, below; a body framed by its length has no coding.
            if name == header::TRANSFER_ENCODING
                || (framing.is_some() && chunked_field && name == header::CONTENT_LENGTH)
            {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if let Some((name, n)) = added {
            head.extend_from_slice(name);
            head.extend_from_slice(itoa(n, &mut [0u8; 20]));
            head.extend_from_slice(b"\r\n");
        } else if matches!(framing, Some(Framing::Chunked)) {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
        Ok(Self {
            head: head.freeze(),
            resendable: idempotent && body.is_none(),
            head_method: parts.method == Method::HEAD,
            body: body.zip(framing),
        })
    }
}

/// Why [`exchange`] failed.
#[derive(Debug)]
pub enum Failed<G> {
    /// A reused connection was closed before any of the response came, and the request may be
    /// sent again (it is handed back, with the connection's guard).
    Stale(Outgoing, G),
    Error(Error),
}

/// Where a connection goes when its response has ended cleanly.
pub trait Return<G>: Send + Sync + 'static {
    fn give_back(self, conn: Conn<G>);
}

/// Send `out` on `conn` and read the response head. The body reads the rest of the response
/// (and writes the rest of the request) as the downstream asks for it, and hands the
/// connection to `ret` when both ended cleanly.
pub async fn exchange<G, R>(mut conn: Conn<G>, out: Outgoing, ret: R) -> Result<Response<Body>, Failed<G>>
where
    G: Send + Sync + std::fmt::Debug + 'static,
    R: Return<G> + std::fmt::Debug,
{
    let resendable = out.resendable && conn.reused;
    let kept = resendable.then(|| out.head.clone());
    let head_method = out.head_method;
    let mut writer = Writer::new(out);
    let mut write_error: Option<Error> = None;
    let mut reading = Reading::default();
    let head = std::future::poll_fn(|cx| {
        if write_error.is_none() && !writer.done {
            match writer.poll_write(&mut conn.io, cx) {
                // Read on: the server may have answered before it stopped reading.
                Poll::Ready(Err(e @ Error::Io(_))) => write_error = Some(e),
                // The request itself broke (its body failed, or disagreed with its length):
                // nothing sensible can follow on this connection.
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                _ => {}
            }
        }
        conn.poll_head(cx, head_method, &mut reading)
    })
    .await;
    let head = match head {
        Ok(h) => h,
        Err(e) => {
            let closed = matches!(e, Error::ClosedBeforeResponse)
                || matches!(&e, Error::Io(io) if is_closed(io))
                || matches!(&write_error, Some(Error::Io(io)) if is_closed(io));
            if let Some(head) = kept
                && closed
                && !reading.seen
            {
                let out = Outgoing { head, body: None, head_method, resendable: true };
                return Err(Failed::Stale(out, conn.guard));
            }
            return Err(Failed::Error(write_error.unwrap_or(e)));
        }
    };
    let Head { parts, decoder, mut keep_alive } = head;
    if write_error.is_some() {
        keep_alive = false;
    }
    conn.reused = true;
    let writer = (!writer.done && write_error.is_none()).then_some(writer);
    let mut body = ResponseBody { conn: Some(conn), decoder, writer, keep_alive, ret: Some(ret), deferred: None };
    if body.decoder.is_done() {
        body.end();
        return Ok(Response::from_parts(parts, Body::Empty));
    }
    Ok(Response::from_parts(parts, Body::http1(Box::new(body))))
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

// ------------------------------------------------------------------ writing

/// The request's bytes still to write: the head, then the body's frames as they come.
#[derive(Debug)]
pub(crate) struct Writer {
    head: Bytes,
    queue: std::collections::VecDeque<Bytes>,
    queued: usize,
    body: Option<(Body, Framing)>,
    /// Everything is written.
    done: bool,
    /// Trailers are sent (in a chunked body); else dropped.
    trailers: bool,
}

const CRLF: &[u8] = b"\r\n";
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

impl Writer {
    fn new(out: Outgoing) -> Self {
        Self::with(out.head, out.body)
    }

    /// Drop the body's trailers (a server sends them only to a client that said `TE: trailers`).
    pub(crate) fn without_trailers(mut self) -> Self {
        self.trailers = false;
        self
    }

    /// A message's head and its body, framed as `body` says.
    pub(crate) fn with(head: Bytes, body: Option<(Body, Framing)>) -> Self {
        Self { head, queue: Default::default(), queued: 0, body, done: false, trailers: true }
    }

    fn push(&mut self, b: Bytes) {
        self.queued += b.len();
        self.queue.push_back(b);
    }

    /// Take the body's frames that are ready, write what is queued; `Ready(Ok)` when all is.
    pub(crate) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        loop {
            while self.queued < MAX_QUEUED
                && let Some((body, framing)) = &mut self.body
            {
                let frame = match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(f) => f,
                };
                let framing = *framing;
                match frame {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => self.encode(data, framing)?,
                        Err(frame) => {
                            // Trailers end the body; a body framed by its length has no place
                            // for them.
                            if let (Ok(trailers), Framing::Chunked, true) =
                                (frame.into_trailers(), framing, self.trailers)
                            {
                                let mut t = BytesMut::with_capacity(64);
                                t.extend_from_slice(b"0\r\n");
                                for (name, value) in &trailers {
                                    t.extend_from_slice(name.as_str().as_bytes());
                                    t.extend_from_slice(b": ");
                                    t.extend_from_slice(value.as_bytes());
                                    t.extend_from_slice(CRLF);
                                }
                                t.extend_from_slice(CRLF);
                                self.push(t.freeze());
                                self.body = None;
                            } else {
                                self.end_body(framing)?;
                            }
                        }
                    },
                    Some(Err(e)) => {
                        self.body = None;
                        return Poll::Ready(Err(Error::RequestBody(e.to_string())));
                    }
                    None => self.end_body(framing)?,
                }
            }
            if self.head.is_empty() && self.queue.is_empty() {
                // What the TLS session still holds of it goes out too (a TCP socket holds
                // nothing: a no-op).
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                if self.body.is_none() {
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                return Poll::Pending;
            }
            ready!(self.poll_flush(io, cx))?;
        }
    }

    fn encode(&mut self, data: Bytes, framing: Framing) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match framing {
            Framing::Length(left) => {
                let Some(left) = left.checked_sub(data.len() as u64) else {
                    self.body = None;
                    return Err(Error::RequestLength("longer"));
                };
                if let Some((_, Framing::Length(l))) = &mut self.body {
                    *l = left;
                }
                self.push(data);
            }
            Framing::Chunked => {
                let mut size = [0u8; 18];
                let n = hex(data.len() as u64, &mut size);
                self.push(Bytes::copy_from_slice(n));
                self.push(data);
                self.push(Bytes::from_static(CRLF));
            }
            Framing::Close => self.push(data),
        }
        Ok(())
    }

    fn end_body(&mut self, framing: Framing) -> Result<(), Error> {
        self.body = None;
        match framing {
            Framing::Length(0) | Framing::Close => Ok(()),
            Framing::Length(_) => Err(Error::RequestLength("shorter")),
            Framing::Chunked => {
                self.push(Bytes::from_static(LAST_CHUNK));
                Ok(())
            }
        }
    }

    /// Write the head and the queue, as many pieces per system call as fit.
    fn poll_flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while !(self.head.is_empty() && self.queue.is_empty()) {
            let written = {
                let mut slices = [IoSlice::new(&[]); 16];
                let mut n = 0;
                if !self.head.is_empty() {
                    slices[0] = IoSlice::new(&self.head);
                    n = 1;
                }
                for b in &self.queue {
                    if n == slices.len() {
                        break;
                    }
                    slices[n] = IoSlice::new(b);
                    n += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?
            };
            if written == 0 {
                return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
            }
            self.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        let h = n.min(self.head.len());
        self.head.advance(h);
        n -= h;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else { return };
            let k = n.min(front.len());
            front.advance(k);
            self.queued -= k;
            n -= k;
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
        while self.queue.front().is_some_and(Bytes::is_empty) {
            self.queue.pop_front();
        }
    }
}

// ------------------------------------------------------------------ reading

struct Head {
    parts: http::response::Parts,
    decoder: Decoder,
    keep_alive: bool,
}

/// What [`Conn::poll_head`] has read so far of one response.
#[derive(Default)]
struct Reading {
    /// Some of the response has come.
    seen: bool,
    /// 1xx heads read and dropped.
    informational: usize,
}

impl<G> Conn<G> {
    /// Read until a final response head; 1xx heads (at most [`MAX_INFORMATIONAL`]) are read and
    /// dropped.
    fn poll_head(&mut self, cx: &mut Context<'_>, head_method: bool, at: &mut Reading) -> Poll<Result<Head, Error>> {
        loop {
            if !self.buf.is_empty() {
                at.seen = true;
                match parse_head(&mut self.buf, head_method)? {
                    Parsed::Final(head) => return Poll::Ready(Ok(head)),
                    Parsed::Informational if at.informational >= MAX_INFORMATIONAL => {
                        return Poll::Ready(Err(Error::Invalid("more than 16 informational (1xx) responses")));
                    }
                    Parsed::Informational => {
                        at.informational += 1;
                        continue;
                    }
                    Parsed::Partial if self.buf.len() >= MAX_HEAD_BYTES => {
                        return Poll::Ready(Err(Error::HeadTooLarge));
                    }
                    Parsed::Partial => {}
                }
            }
            if ready!(self.poll_read(cx, READ_SIZE))? == 0 {
                return Poll::Ready(Err(if at.seen { Error::ClosedInHead } else { Error::ClosedBeforeResponse }));
            }
        }
    }
}

enum Parsed {
    Final(Head),
    /// A 1xx head, taken off the front: the final one follows.
    Informational,
    Partial,
}

/// Parse one response head off the front of `buf`.
fn parse_head(buf: &mut BytesMut, head_method: bool) -> Result<Parsed, Error> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, &buf[..], &mut fields) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(e) => return Err(Error::Head(e)),
        };
    if len > MAX_HEAD_BYTES {
        return Err(Error::HeadTooLarge);
    }
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("the status code is not 100-999"))?;
    let version = if res.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::Invalid("101 Switching Protocols to a request that asked for no upgrade"));
        }
        buf.advance(len);
        return Ok(Parsed::Informational);
    }
    let reason = res.reason.filter(|r| Some(*r) != status.canonical_reason()).map(str::as_bytes).map(<[u8]>::to_vec);
    // Where each field lies in the head, so the values can share its bytes once it is frozen.
    let base = buf.as_ptr() as usize;
    let mut at = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let n = res.headers.len();
    for (slot, f) in at.iter_mut().zip(res.headers.iter()) {
        let off = |s: &[u8]| (s.as_ptr() as usize - base) as u16;
        *slot = (off(f.name.as_bytes()), f.name.len() as u16, off(f.value), f.value.len() as u16);
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(n);
    // What the framing needs, gathered in the same pass: a lookup per field name afterwards
    // hashed each name again (measured: ~900 instructions per response).
    let (mut length, mut bad_length) = (None, false);
    let (mut codings, mut last_chunked) = (0usize, false);
    let (mut close, mut keep_alive_token) = (false, false);
    for &(ns, nl, vs, vl) in &at[..n] {
        let (ns, nl, vs, vl) = (usize::from(ns), usize::from(nl), usize::from(vs), usize::from(vl));
        let name = HeaderName::from_bytes(&head[ns..ns + nl]).map_err(|_| Error::Invalid("a field name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(vs..vs + vl)).map_err(|_| Error::Invalid("a field value"))?;
        let v = value.as_bytes();
        if name == header::CONTENT_LENGTH {
            bad_length |= content_length_value(v, &mut length).is_err();
        } else if name == header::TRANSFER_ENCODING {
            for t in tokens(v) {
                codings += 1;
                last_chunked = t.eq_ignore_ascii_case(b"chunked");
            }
        } else if name == header::CONNECTION {
            let mut names_other = false;
            for t in tokens(v) {
                let c = t.eq_ignore_ascii_case(b"close");
                let k = t.eq_ignore_ascii_case(b"keep-alive");
                close |= c;
                keep_alive_token |= k;
                names_other |= !(c || k || t.is_empty());
            }
            // why: a `Connection` that only says keep-alive or close (every keep-alive response
            // of nginx and most servers) is this hop's framing, read above, and would be
            // stripped before the response goes on (RFC 9110 §7.6.1); one that names other
            // fields stays for the strip to read.
            if !names_other {
                continue;
            }
        }
        headers.append(name, value);
    }

    let mut keep_alive = match version {
        Version::HTTP_10 => keep_alive_token,
        _ => !close,
    };
    let decoder = if head_method || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Decoder::Length(0)
    } else if codings > 0 {
        if version == Version::HTTP_10 {
            return Err(Error::Invalid("transfer-encoding in an HTTP/1.0 response"));
        }
        if length.is_some() || bad_length {
            // RFC 9112 §6.1: the coding wins, and the connection is not trusted after.
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        if last_chunked {
            Decoder::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Decoder::Eof
        }
    } else if bad_length {
        return Err(Error::Invalid("content-length is not one number"));
    } else if let Some(n) = length {
        Decoder::Length(n)
    } else {
        keep_alive = false;
        Decoder::Eof
    };

    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    if let Some(reason) = reason
        && let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason)
    {
        resp.extensions_mut().insert(r);
    }
    let (parts, ()) = resp.into_parts();
    Ok(Parsed::Final(Head { parts, decoder, keep_alive }))
}

pub(crate) enum Length {
    None,
    One(u64),
    Invalid,
}

/// The `Content-Length` of a message: every value (and every item of a list) the same number
/// of digits only (RFC 9110 §8.6).
pub(crate) fn content_length(headers: &HeaderMap) -> Length {
    let mut found = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        if content_length_value(v.as_bytes(), &mut found).is_err() {
            return Length::Invalid;
        }
    }
    found.map_or(Length::None, Length::One)
}

/// One `Content-Length` field value, against the length `found` so far (set to it): an error
/// when an item is not digits only, or differs from the others.
pub(crate) fn content_length_value(v: &[u8], found: &mut Option<u64>) -> Result<(), ()> {
    for item in v.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = item.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(());
        }
        *found = Some(n);
    }
    Ok(())
}

/// The items of a comma-separated field value, trimmed.
pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// Bytes of the body still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the connection closes.
    Eof,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

impl Decoder {
    fn is_done(self) -> bool {
        matches!(self, Decoder::Done | Decoder::Length(0))
    }
}

/// The rest of an upstream HTTP/1.1 response (and, if the server answered early, of its
/// request). Its connection goes back to the pool when both ended cleanly.
#[derive(Debug)]
pub struct ResponseBody<G: std::fmt::Debug, R> {
    conn: Option<Conn<G>>,
    decoder: Decoder,
    writer: Option<Writer>,
    keep_alive: bool,
    ret: Option<R>,
    /// The error that ended the body, held back until the task has yielded to the others: see
    /// [`Http1Body::poll_frame`].
    deferred: Option<(Error, Yielding)>,
}

/// A `tokio::task::yield_now` in progress.
struct Yielding(Pin<Box<dyn Future<Output = ()> + Send + Sync>>);

impl std::fmt::Debug for Yielding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Yielding")
    }
}

/// What [`crate::http::body::Upstream::Http1`] holds: a response body over any pool.
pub trait Http1Body: std::fmt::Debug + Send + Sync {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>>;
    fn is_end_stream(&self) -> bool;
    fn size_hint(&self) -> SizeHint;
}

impl<G, R> ResponseBody<G, R>
where
    G: std::fmt::Debug + Send + Sync + 'static,
    R: Return<G> + std::fmt::Debug,
{
    /// The response has ended: the connection goes back, if it can be used again.
    fn end(&mut self) {
        self.decoder = Decoder::Done;
        let Some(conn) = self.conn.take() else { return };
        if self.keep_alive && self.writer.is_none() && conn.buf.is_empty() {
            let mut conn = conn;
            // Hold no buffer while idle.
            conn.buf = BytesMut::new();
            if let Some(ret) = self.ret.take() {
                ret.give_back(conn);
            }
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.decoder = Decoder::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    fn decode(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            match step(&mut self.decoder, &mut conn.buf) {
                Err(e) => return self.fail(e),
                Ok(Step::Frame(frame)) => {
                    if self.decoder.is_done() {
                        self.end();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    self.end();
                    return Poll::Ready(None);
                }
                Ok(Step::Read(want)) => match ready!(conn.poll_read(cx, want)) {
                    Ok(0) => {
                        return match self.decoder {
                            Decoder::Eof => {
                                self.end();
                                Poll::Ready(None)
                            }
                            Decoder::Length(left) => self.fail(Error::ClosedInBody(left)),
                            _ => self.fail(Error::ClosedInChunked),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => return self.fail(e.into()),
                },
            }
        }
    }
}

/// What [`step`] found.
pub(crate) enum Step {
    Frame(Frame<Bytes>),
    /// The body has ended (trailers, if any, were the last frame).
    End,
    /// More bytes are needed: read up to this many.
    Read(usize),
}

/// Decode the next frame of a body from the bytes read so far (`buf`), taking them off its
/// front. Once the body has ended, `decoder` is [`Decoder::Done`]; an end of file met on a
/// [`Step::Read`] is the body's end only for [`Decoder::Eof`].
pub(crate) fn step(decoder: &mut Decoder, buf: &mut BytesMut) -> Result<Step, Error> {
    loop {
        let buffered = buf.len();
        match *decoder {
            Decoder::Done | Decoder::Length(0) => {
                *decoder = Decoder::Done;
                return Ok(Step::End);
            }
            Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left)) if buffered > 0 => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buffered);
                let frame = Frame::data(buf.split_to(n).freeze());
                let left = left - n as u64;
                *decoder = match *decoder {
                    Decoder::Length(_) if left == 0 => Decoder::Done,
                    Decoder::Length(_) => Decoder::Length(left),
                    _ => Decoder::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) }),
                };
                return Ok(Step::Frame(frame));
            }
            Decoder::Length(left) => {
                return Ok(Step::Read(usize::try_from(left).unwrap_or(MAX_READ_SIZE).min(MAX_READ_SIZE)));
            }
            Decoder::Eof if buffered > 0 => return Ok(Step::Frame(Frame::data(buf.split().freeze()))),
            Decoder::Eof => return Ok(Step::Read(READ_SIZE)),
            Decoder::Chunked(state) => {
                let next = match state {
                    Chunk::Size => chunk_size(buf)?.map(|(used, size)| {
                        buf.advance(used);
                        Decoder::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) })
                    }),
                    Chunk::DataEnd => match buf.get(..2) {
                        Some(CRLF) => {
                            buf.advance(2);
                            Some(Decoder::Chunked(Chunk::Size))
                        }
                        Some(_) => return Err(Error::Chunked("a chunk's data does not end with CRLF")),
                        None if buffered == 1 && buf[0] != b'\r' => {
                            return Err(Error::Chunked("a chunk's data does not end with CRLF"));
                        }
                        None => None,
                    },
                    Chunk::Trailers => {
                        if let Some(t) = trailers(buf)? {
                            *decoder = Decoder::Done;
                            return Ok(t.map_or(Step::End, |t| Step::Frame(Frame::trailers(t))));
                        }
                        None
                    }
                    Chunk::Data(_) => None,
                };
                match next {
                    Some(next) => *decoder = next,
                    // Inside a large chunk, read as for a body of known length.
                    None => {
                        return Ok(Step::Read(match state {
                            Chunk::Data(left) => {
                                usize::try_from(left).unwrap_or(MAX_READ_SIZE).clamp(READ_SIZE, MAX_READ_SIZE)
                            }
                            _ => READ_SIZE,
                        }));
                    }
                }
            }
        }
    }
}

impl<G, R> Http1Body for ResponseBody<G, R>
where
    G: std::fmt::Debug + Send + Sync + 'static,
    R: Return<G> + std::fmt::Debug,
{
    /// A body that breaks is an error for the downstream, but only after what came before the
    /// break has left: the error is held back while the task yields to every other task ready
    /// to run (`tokio::task::yield_now`), so the server writing the response flushes the head and
    /// data it has buffered first (hyper's HTTP/1.1 server flushes when the body is pending).
    /// Else a response whose head and first bytes arrived in the same read as its break would
    /// reach an HTTP/1.1 client as a connection closed before any response. (An HTTP/2 client
    /// can still see the stream's reset without its head: h2 drops a reset stream's queued
    /// frames, and its connection task need not have written them by then.)
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some((_, yielded)) = &mut self.deferred {
            ready!(yielded.0.as_mut().poll(cx));
            if let Some((e, _)) = self.deferred.take() {
                return Poll::Ready(Some(Err(e)));
            }
        }
        // The request is still going out (the server answered before it had all of it).
        if let Some(w) = &mut self.writer
            && let Some(conn) = &mut self.conn
        {
            match w.poll_write(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => self.writer = None,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "the rest of the request could not be written");
                    self.writer = None;
                    self.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        match self.decode(cx) {
            Poll::Ready(None) => {
                // Ended with the request still going out: the connection closes (the server
                // has answered; it need not read the rest).
                self.conn = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let mut yielded = Yielding(Box::pin(tokio::task::yield_now()));
                match yielded.0.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(e))),
                    Poll::Pending => {
                        self.deferred = Some((e, yielded));
                        Poll::Pending
                    }
                }
            }
            res => res,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.deferred.is_none() && self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A chunk-size line at the front of `buf`: `(bytes, size)`, `None` until its CRLF is there.
/// Strict: one to sixteen hex digits, then optional spaces or tabs and `;extensions` of
/// visible characters, then CRLF.
pub(crate) fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, Error> {
    let Some(end) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CHUNK_LINE {
            Err(Error::Chunked("a chunk-size line is too long"))
        } else {
            Ok(None)
        };
    };
    let line = match buf[..end].strip_suffix(b"\r") {
        Some(l) => l,
        None => return Err(Error::Chunked("a chunk-size line ends without CR")),
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Error::Chunked("a chunk size is not 1 to 16 hex digits"));
    }
    let rest = &line[digits..];
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';' && rest.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))) {
        return Err(Error::Chunked("a chunk size is followed by something other than an extension"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| (n << 4) | u64::from(hex_value(d)));
    Ok(Some((end + 1, size)))
}

fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

/// The trailer section at the front of `buf` (after the last chunk): `Some(None)` when empty,
/// `None` until its blank line is there.
pub(crate) fn trailers(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, Error> {
    if buf.starts_with(CRLF) {
        buf.advance(2);
        return Ok(Some(None));
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD_BYTES {
            Err(Error::Chunked("the trailer section is too large"))
        } else {
            Ok(None)
        };
    };
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let section = &buf[..end + 4];
    let fields = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(Error::Chunked("a malformed trailer section")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Error::Chunked("a trailer field name"))?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| Error::Chunked("a trailer field value"))?;
        map.append(name, value);
    }
    buf.advance(end + 4);
    Ok(Some(Some(map)))
}

/// `n` in decimal, written into `out`.
pub(crate) fn itoa(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// `n` in hex followed by CRLF (a chunk-size line), written into `out`.
pub(crate) fn hex(mut n: u64, out: &mut [u8; 18]) -> &[u8] {
    let mut i = out.len() - 2;
    out[16] = b'\r';
    out[17] = b'\n';
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            return &out[i..];
        }
    }
}

#[cfg(test)]
mod tests;
