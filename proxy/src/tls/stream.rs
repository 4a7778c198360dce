//! A TLS stream whose idle connection holds no buffer: rustls' unbuffered API, with the
//! ciphertext buffers borrowed from a small per-thread pool only while bytes are in them.
//!
//! why not tokio-rustls: a buffered rustls connection keeps its incoming-record buffer (never
//! below 4 KiB once used) and its queues for the session's whole life, so every idle
//! mutual-TLS connection held ~4.5 KB of buffers on top of the session itself (measured with a
//! heap profile, docs/benchmarks.md). Here:
//! - a read borrows a buffer, reads what the socket has (up to 64 KiB), decrypts every whole
//!   record in it, and gives the buffer back unless part of a record is left;
//! - a write encrypts into a borrowed buffer and gives it back once the socket took it all;
//! - plaintext that did not fit the reader's buffer waits in a buffer of its own until read.
//!
//! So when a read ends pending with nothing held, the stream holds the session and the socket
//! only ([`TlsStream::buffered`] says what it holds; a test guards it).
//!
//! Behaviour matches tokio-rustls where a caller can see it: the handshake completes in
//! [`Acceptor::accept`] / [`Connector::connect`]; a fatal error sends its alert when the socket
//! takes it; `poll_shutdown` sends `close_notify` and then shuts the socket's write side; a
//! `close_notify` from the peer is the end of the stream, and the end of the socket without
//! one is an `UnexpectedEof` error (a truncation).
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The pool's buffers: a read takes in up to this much ciphertext at once.
const BUF_LEN: usize = 64 * 1024;
/// Plaintext encrypted per write: three full records and their overhead fit one buffer.
const MAX_PLAIN: usize = 3 * 16 * 1024;
/// The least room a read is given (a buffer holding part of a record grows by this).
const READ_MIN: usize = 4 * 1024;
/// The most ciphertext held unprocessed: rustls joins a handshake message of up to 64 KiB
/// from several records in place, so the buffer holds all of them while it arrives.
const MAX_INCOMING: usize = 96 * 1024;
/// Buffers a thread keeps for the next connection that needs one: what the pool holds is
/// per thread, not per connection.
const POOL_MAX: usize = 4;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

// (`try_with`: a stream dropped while its thread ends, after the pool is gone, allocates or
// frees as if there were none.)
fn take_pooled() -> Vec<u8> {
    POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten().unwrap_or_else(|| vec![0; BUF_LEN])
}

fn give_back(data: Vec<u8>) {
    // A buffer that grew (a large handshake message) or a small one is not kept.
    if data.len() == BUF_LEN {
        let _ = POOL.try_with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOL_MAX {
                pool.push(data);
            }
        });
    }
}

/// Bytes in `data[start..end]`; `data` is borrowed from the pool while it holds any (its whole
/// length is initialized, so rustls can be given `&mut [u8]` room).
#[derive(Default)]
struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    /// Makes room for at least `n` more bytes after what the buffer holds.
    fn reserve(&mut self, n: usize) {
        if self.data.is_empty() {
            self.data = take_pooled();
        }
        self.make_room(n);
    }

    /// [`Buf::reserve`] without a pooled buffer: an empty one gets just `n` bytes (and grows as
    /// needed). For a peer not yet authenticated, which must not hold 64 KiB per connection by
    /// sending part of a record (or by not reading what the handshake wrote).
    fn reserve_small(&mut self, n: usize) {
        if self.data.is_empty() {
            self.data = vec![0; n];
        }
        self.make_room(n);
    }

    fn make_room(&mut self, n: usize) {
        if self.data.len() - self.end < n && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() - self.end < n {
            // Exactly: a peer's partial record holds what it sent and room for `n` more.
            self.data.reserve_exact(self.end + n - self.data.len());
            self.data.resize(self.end + n, 0);
        }
    }

    /// The room after what the buffer holds (see [`Buf::reserve`]).
    fn spare(&mut self) -> &mut [u8] {
        &mut self.data[self.end..]
    }

    fn push(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.data[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Drops `n` bytes from the front; an emptied buffer goes back to the pool.
    fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start >= self.end {
            self.release();
        }
    }

    fn release(&mut self) {
        self.start = 0;
        self.end = 0;
        if !self.data.is_empty() {
            give_back(std::mem::take(&mut self.data));
        }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.release();
    }
}

/// A client or server session of rustls' unbuffered API.
pub trait Session: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Send + Sync + Unpin + 'static {
    type Data;

    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Session for UnbufferedServerConnection {
    type Data = ServerConnectionData;

    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.deref_mut().process_tls_records(incoming)
    }
}

impl Session for UnbufferedClientConnection {
    type Data = ClientConnectionData;

    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.deref_mut().process_tls_records(incoming)
    }
}

/// A TLS stream over `IO` (see the module's documentation).
pub struct TlsStream<IO, S> {
    io: IO,
    session: S,
    /// Ciphertext read and not yet processed: at most part of a record outside a read.
    incoming: Buf,
    /// Ciphertext not yet written, sent before anything else.
    outgoing: Buf,
    /// Plaintext decrypted and not yet read.
    plain: Buf,
    /// The peer's `close_notify` came: reads end once `plain` is empty.
    read_closed: bool,
    /// Our `close_notify` is queued.
    write_closed: bool,
}

/// A server side stream.
pub type ServerStream<IO> = TlsStream<IO, UnbufferedServerConnection>;
/// A client side stream.
pub type ClientStream<IO> = TlsStream<IO, UnbufferedClientConnection>;

impl<IO, S> std::fmt::Debug for TlsStream<IO, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .field("plain", &self.plain.len())
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

/// What the session needs next, once it has processed what it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// More ciphertext (the handshake is not done).
    Handshake,
    /// The session is open: application data may be written; reading needs more ciphertext.
    Open,
    /// Both sides sent `close_notify`.
    Closed,
}

/// What to encrypt when the session is open.
enum Out<'a> {
    Data(&'a [u8]),
    CloseNotify,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO, S: Session> TlsStream<IO, S> {
    fn new(io: IO, session: S) -> Self {
        Self {
            io,
            session,
            incoming: Buf::default(),
            outgoing: Buf::default(),
            plain: Buf::default(),
            read_closed: false,
            write_closed: false,
        }
    }

    /// The socket and the session (the peer's certificates, the ALPN id).
    pub fn get_ref(&self) -> (&IO, &CommonState) {
        (&self.io, &self.session)
    }

    /// Bytes of buffer the stream holds (ciphertext either way, plaintext not yet read):
    /// zero between messages.
    pub fn buffered(&self) -> usize {
        self.incoming.data.capacity() + self.outgoing.data.capacity() + self.plain.data.capacity()
    }

    /// Processes what the session has: plaintext goes to `dest` while it has room, then to
    /// `plain`; handshake and alert records go to `outgoing`; `out` is encrypted (and taken)
    /// once the session is open. Ends when the session needs more ciphertext or is closed.
    fn process(&mut self, mut dest: Option<&mut ReadBuf<'_>>, out: &mut Option<Out<'_>>) -> io::Result<Next> {
        loop {
            let Self { session, incoming, outgoing, plain, read_closed, .. } = self;
            let UnbufferedStatus { mut discard, state } = session.process(incoming.bytes());
            let next = match state {
                Err(e) => {
                    incoming.consume(discard);
                    self.last_gasp();
                    return Err(tls_error(e));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        let payload = record.payload;
                        let n = match dest.as_deref_mut() {
                            Some(dest) => {
                                let n = payload.len().min(dest.remaining());
                                dest.put_slice(&payload[..n]);
                                n
                            }
                            None => 0,
                        };
                        if n < payload.len() {
                            plain.push(&payload[n..]);
                        }
                    }
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    // (Handshake records, mostly: a few KiB.)
                    outgoing.reserve_small(READ_MIN);
                    loop {
                        match encode.encode(outgoing.spare()) {
                            Ok(n) => outgoing.end += n,
                            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                                outgoing.reserve(required_size);
                                continue;
                            }
                            Err(EncodeError::AlreadyEncoded) => {}
                        }
                        break;
                    }
                    None
                }
                // Queued in `outgoing`, which goes out in order before anything written later.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    None
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Next::Handshake),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    if let Some(what) = out.take() {
                        let res = loop {
                            outgoing.reserve(READ_MIN);
                            let r = match what {
                                Out::Data(data) => traffic.encrypt(data, outgoing.spare()),
                                Out::CloseNotify => traffic.queue_close_notify(outgoing.spare()),
                            };
                            match r {
                                Ok(n) => {
                                    outgoing.end += n;
                                    break Ok(());
                                }
                                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                                    outgoing.reserve(required_size)
                                }
                                Err(EncryptError::EncryptExhausted) => {
                                    break Err(io::Error::other("the TLS session's keys are exhausted"));
                                }
                            }
                        };
                        if let Err(e) = res {
                            incoming.consume(discard);
                            return Err(e);
                        }
                    }
                    Some(Next::Open)
                }
                Ok(ConnectionState::PeerClosed) => {
                    *read_closed = true;
                    None
                }
                Ok(ConnectionState::Closed) => {
                    *read_closed = true;
                    Some(Next::Closed)
                }
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    // The configurations never accept early data; rustls refuses it before this.
                    incoming.consume(discard);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected TLS early data"));
                }
                Ok(other) => {
                    let e = io::Error::other(format!("unexpected TLS state {other:?}"));
                    incoming.consume(discard);
                    return Err(e);
                }
            };
            incoming.consume(discard);
            if let Some(next) = next {
                return Ok(next);
            }
        }
    }

    /// After a fatal error: queue the alert rustls made for it (written if the socket takes
    /// it at once; see `send_alert`). Only what rustls has queued is taken: processing the
    /// records that failed again would fail (and alert) again.
    fn last_gasp(&mut self) {
        let Self { session, incoming, outgoing, .. } = self;
        while session.wants_write() {
            // Queued records come first, before any incoming record is looked at.
            let UnbufferedStatus { discard, state } = session.process(incoming.bytes());
            let encoded = match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    outgoing.reserve_small(READ_MIN);
                    encode.encode(outgoing.spare()).map(|n| outgoing.end += n).is_ok()
                }
                _ => false,
            };
            incoming.consume(discard);
            if !encoded {
                break;
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, S: Session> TlsStream<IO, S> {
    /// Reads more ciphertext into `incoming`. `Ok(0)`: the end of the socket.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {MAX_INCOMING} bytes of TLS records without a whole message"),
            )));
        }
        if self.session.is_handshaking() {
            self.incoming.reserve_small(READ_MIN);
        } else {
            self.incoming.reserve(READ_MIN);
        }
        let mut buf = ReadBuf::new(self.incoming.spare());
        let res = Pin::new(&mut self.io).poll_read(cx, &mut buf);
        let n = buf.filled().len();
        self.incoming.end += n;
        if self.incoming.is_empty() {
            // Nothing came (pending, the end, an error): an idle stream holds no buffer.
            self.incoming.release();
        }
        match res {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes what `outgoing` holds; ready once it is all written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, self.outgoing.bytes()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.consume(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Writes an alert queued by a failure, if the socket takes it now; the failure is what
    /// the caller reports either way.
    fn send_alert(&mut self) {
        if !self.outgoing.is_empty() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = self.poll_drain(&mut cx);
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let next = self.process(None, &mut None).inspect_err(|_| self.send_alert())?;
            // Each flight goes out before the next one is awaited.
            ready!(self.poll_drain(cx))?;
            match next {
                Next::Open => return Poll::Ready(Ok(())),
                Next::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the TLS session during the handshake",
                    )));
                }
                Next::Handshake => {
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed the connection during the TLS handshake",
                        )));
                    }
                }
            }
        }
    }
}

/// A handshake in progress: the stream, once it is done. (A future of its own, not an `async`
/// block, so that it holds the stream once: a connection's task keeps its room.)
#[must_use = "futures do nothing unless polled"]
pub struct Handshake<IO, S>(Option<io::Result<TlsStream<IO, S>>>);

impl<IO: AsyncRead + AsyncWrite + Unpin, S: Session> Future for Handshake<IO, S> {
    type Output = io::Result<TlsStream<IO, S>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(Ok(stream)) = &mut this.0 {
            ready!(stream.poll_handshake(cx))?;
        }
        Poll::Ready(this.0.take().unwrap_or_else(|| Err(io::Error::other("a TLS handshake polled after it ended"))))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, S: Session> AsyncRead for TlsStream<IO, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.plain.is_empty() {
            let n = this.plain.len().min(buf.remaining());
            buf.put_slice(&this.plain.bytes()[..n]);
            this.plain.consume(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        loop {
            let next = this.process(Some(buf), &mut None).inspect_err(|_| this.send_alert())?;
            // What the session answers on its own (a key update) waits in `outgoing` for the
            // next write or flush: a read never writes, so a reader and a writer polled by two
            // tasks (`tokio::io::split`) never take each other's wake-ups.
            if buf.filled().len() > before || this.read_closed || next == Next::Closed {
                // Data, or the end of the stream (nothing filled).
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without a TLS close_notify",
                )));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, S: Session> AsyncWrite for TlsStream<IO, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the TLS session is shut down")));
        }
        // What an earlier write left goes first: a write waits until the socket took it.
        ready!(this.poll_drain(cx))?;
        let n = data.len().min(MAX_PLAIN);
        let mut out = Some(Out::Data(&data[..n]));
        match this.process(None, &mut out).inspect_err(|_| this.send_alert())? {
            Next::Open if out.is_none() => {}
            Next::Closed => {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the TLS session is closed")));
            }
            _ => return Poll::Ready(Err(io::Error::other("the TLS session cannot send application data"))),
        }
        // Sent as far as the socket takes it now; the rest goes before the next write or in
        // a flush. The bytes are accepted either way.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // One slice: no copy. Several (a head and a body): gathered into one buffer, so that
        // they go out as one record and not one record each.
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        let first = match (nonempty.next(), nonempty.next()) {
            (None, _) => return Poll::Ready(Ok(0)),
            (Some(only), None) => return self.poll_write(cx, only),
            (Some(first), Some(_)) => first,
        };
        let mut gathered = Buf::default();
        gathered.reserve(MAX_PLAIN);
        for b in bufs {
            let room = MAX_PLAIN - gathered.len();
            if room == 0 {
                break;
            }
            gathered.push(&b[..b.len().min(room)]);
        }
        debug_assert!(gathered.len() >= first.len().min(MAX_PLAIN));
        let res = self.poll_write(cx, gathered.bytes());
        drop(gathered);
        res
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            ready!(this.poll_drain(cx))?;
            let mut out = Some(Out::CloseNotify);
            // A session that is already closed (or failed) has nothing more to send.
            let _ = this.process(None, &mut out);
            this.write_closed = true;
        }
        ready!(this.poll_drain(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Accepts TLS connections with a server configuration.
#[derive(Clone)]
pub struct Acceptor(Arc<ServerConfig>);

impl From<Arc<ServerConfig>> for Acceptor {
    fn from(config: Arc<ServerConfig>) -> Self {
        Self(config)
    }
}

impl Acceptor {
    /// The server's side of the handshake; the stream is returned once it is done.
    pub fn accept<IO>(&self, io: IO) -> Handshake<IO, UnbufferedServerConnection> {
        let session = UnbufferedServerConnection::new(self.0.clone());
        Handshake(Some(session.map(|s| TlsStream::new(io, s)).map_err(tls_error)))
    }
}

/// Opens TLS connections with a client configuration.
#[derive(Clone)]
pub struct Connector(Arc<ClientConfig>);

impl From<Arc<ClientConfig>> for Connector {
    fn from(config: Arc<ClientConfig>) -> Self {
        Self(config)
    }
}

impl Connector {
    /// The client's side of the handshake with `name`; the stream is returned once it is done.
    pub fn connect<IO>(&self, name: ServerName<'static>, io: IO) -> Handshake<IO, UnbufferedClientConnection> {
        let session = UnbufferedClientConnection::new(self.0.clone(), name);
        Handshake(Some(session.map(|s| TlsStream::new(io, s)).map_err(tls_error)))
    }
}

#[cfg(test)]
mod tests;
