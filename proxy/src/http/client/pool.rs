//! Connections to one endpoint, carried across config snapshots.
//!
//! - HTTP/1.1: idle keep-alive connections are reused one request at a time. A
//!   request that finds none opens one while the cluster is under
//!   `maxConnections`; else it waits, as a pending request (at most
//!   `maxPendingRequests` per cluster, beyond that it is rejected at once), until
//!   a connection of its endpoint is returned or one of the cluster's closes. An
//!   endpoint without any connection may always open one (as in Envoy), so that
//!   connections held by other endpoints never starve it.
//!   To a meshed endpoint these are mutual-TLS connections (ALPN `outrider-http1/1`) to
//!   the peer proxy, reused only for the identity they verified and kept idle at most
//!   [`MESH_IDLE`].
//! - HTTP/2: one connection shared by every request to the endpoint; one request
//!   opens it while the others wait for it (pending).
//! - Connections idle past the cluster's idle timeout are closed by a timer (a
//!   task per pool, alive while the pool holds connections to watch), not only
//!   when next looked at; the same timer drops, every [`CLOSED_SWEEP`], idle
//!   HTTP/1.1 connections the upstream has closed.
//! - An upstream response holds a [`Lease`] until its body ends: its HTTP/1.1
//!   connection goes back to the pool then, its HTTP/2 stream counts as active
//!   on the connection until then, and the request keeps its `maxRequests` slot.
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use super::{ConnectConfig, ConnectTime, UpstreamError, UpstreamProtocol, connect_tcp_or_mesh, h1};
use crate::http::Body;
use crate::policy::breaker::{ClusterThresholds, GaugeGuard};
use crate::tls::Identity;

/// Idle HTTP/1.1 connections kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// How often idle HTTP/1.1 connections are looked at for an upstream that closed them (servers
/// close idle keep-alive connections after a few seconds: Node.js after 5 s). Such a connection
/// is never used — it is looked at again when taken — but holds its descriptor until then.
pub const CLOSED_SWEEP: Duration = Duration::from_secs(5);

/// The longest a pooled mutual-TLS HTTP/1.1 connection to a peer proxy stays idle (shorter when
/// the cluster's idle timeout is). The peer closes a connection on which no request comes within
/// its header read timeout (30 s by default); a request written as it closes could not be sent
/// again unless idempotent, so the caller lets the connection go well before.
pub const MESH_IDLE: Duration = Duration::from_secs(10);

/// How long a pooled HTTP/1.1 connection may stay idle: the cluster's idle timeout, at most
/// [`MESH_IDLE`] to a peer proxy.
fn h1_idle_timeout(cluster: Option<Duration>, meshed: bool) -> Option<Duration> {
    if meshed { Some(cluster.map_or(MESH_IDLE, |t| t.min(MESH_IDLE))) } else { cluster }
}

/// An HTTP/1.1 connection of our own client, holding its claim on the connection counts.
type H1Conn = h1::Conn<Opened>;

/// An idle HTTP/1.1 connection.
#[derive(Debug)]
struct Idle {
    conn: H1Conn,
    /// When it is closed if still unused (`None`: no idle timeout).
    expires: Option<Instant>,
}

/// The shared HTTP/2 connection of an endpoint.
#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<Body>,
    /// The peer identity it was verified for (mTLS): reused only for the same one.
    identity: Option<Identity>,
    streams: Arc<Streams>,
    idle_timeout: Option<Duration>,
}

impl H2Conn {
    /// When it is closed if no stream starts before (`None`: streams are open,
    /// or no idle timeout).
    fn idle_deadline(&self) -> Option<Instant> {
        let timeout = self.idle_timeout?;
        if self.streams.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_nanos(self.streams.idle_since.load(Ordering::Acquire));
        // Past the clock's range: never.
        self.streams.opened.checked_add(since)?.checked_add(timeout)
    }
}

/// The HTTP/2 connection of an endpoint (plaintext, or mTLS to its proxy).
#[derive(Debug, Default)]
struct H2Slot {
    conn: Mutex<Option<H2Conn>>,
    /// One request at a time opens the connection; the others wait for it.
    opening: tokio::sync::Mutex<()>,
    /// Attempts to open it that failed: requests that waited for a failed attempt
    /// fail with it at once instead of each trying again in turn.
    failures: AtomicU64,
}

/// The streams of one HTTP/2 connection: how many are open, and since when none is.
#[derive(Debug)]
struct Streams {
    active: AtomicU32,
    /// When the connection was opened; `idle_since` counts from here.
    opened: Instant,
    /// Nanoseconds after `opened` when the last stream ended.
    idle_since: AtomicU64,
    pool: Weak<EndpointPool>,
}

/// One open stream on an HTTP/2 connection, until its response ends.
#[derive(Debug)]
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn start(streams: &Arc<Streams>) -> Self {
        streams.active.fetch_add(1, Ordering::AcqRel);
        Self(streams.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let s = &self.0;
        let since = u64::try_from(s.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        s.idle_since.store(since, Ordering::Release);
        if s.active.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(pool) = s.pool.upgrade()
        {
            pool.watch_idle();
        }
    }
}

/// A live connection's claim on the cluster's `maxConnections` and on its
/// endpoint's count, released — and the requests waiting for a connection
/// woken — when the connection closes.
#[derive(Debug)]
pub(crate) struct Opened {
    slot: Option<GaugeGuard>,
    counters: Option<Arc<ClusterThresholds>>,
    /// HTTP/1.1: the endpoint whose open connections this one counts in.
    h1: Option<Weak<EndpointPool>>,
    /// HTTP/1.1 over mutual TLS: the peer proxy's identity the handshake verified. A pooled
    /// connection is reused only for a request that expects the same (`None`: plaintext).
    peer: Option<crate::tls::Identity>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        drop(self.slot.take());
        if let Some(c) = &self.counters {
            c.connection_closed.notify_waiters();
        }
        if let Some(pool) = self.h1.as_ref().and_then(Weak::upgrade) {
            pool.h1_open.fetch_sub(1, Ordering::AcqRel);
            pool.h1_available.notify_waiters();
        }
    }
}

/// What an upstream response holds until its body ends or is dropped. (An HTTP/1.1
/// response body gives its connection back itself: [`h1::ResponseBody`].)
#[derive(Debug, Default)]
pub struct Lease {
    /// HTTP/2: the stream, counted as active on its connection (idle timeout).
    stream: Option<StreamGuard>,
    /// The cluster's `maxRequests` slot (set by the breaker stage).
    slot: Option<GaugeGuard>,
}

impl Lease {
    /// Keep the request's `maxRequests` slot until the body ends.
    pub fn hold(&mut self, slot: GaugeGuard) {
        self.slot = Some(slot);
    }

    /// The body was read to its end: the connection is reusable.
    pub fn finish(&mut self) {
        self.stream = None;
        self.slot = None;
    }
}

/// Hands an HTTP/1.1 connection back to its pool once the response body it
/// carried has been read to the end. A body dropped early (the caller went away
/// mid-body) never uses it: the connection closes, it still holds unread bytes.
#[derive(Debug)]
struct PoolReturn {
    pool: Weak<EndpointPool>,
    idle_timeout: Option<Duration>,
}

impl h1::Return<Opened> for PoolReturn {
    fn give_back(self, conn: H1Conn) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put_h1(conn, self.idle_timeout);
        }
    }
}

/// Connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    addr: SocketAddr,
    /// Idle HTTP/1.1 connections, oldest first.
    h1: Mutex<Vec<Idle>>,
    /// HTTP/1.1 connections open to the endpoint, idle or busy (or being opened).
    h1_open: AtomicUsize,
    /// Wakes requests waiting for an HTTP/1.1 connection to this endpoint.
    h1_available: Notify,
    /// The shared HTTP/2 connection.
    h2: H2Slot,
    /// The shared mTLS HTTP/2 connection to the endpoint's proxy (meshed endpoints).
    mesh: H2Slot,
    /// A task is watching idle connections.
    reaper: AtomicBool,
}

impl EndpointPool {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            h1: Mutex::new(Vec::new()),
            h1_open: AtomicUsize::new(0),
            h1_available: Notify::new(),
            h2: H2Slot::default(),
            mesh: H2Slot::default(),
            reaper: AtomicBool::new(false),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Idle HTTP/1.1 connections and whether an HTTP/2 connection is open.
    pub fn stats(&self) -> (usize, bool) {
        let idle = self.h1.lock().len();
        let open = |slot: &H2Slot| slot.conn.lock().as_ref().is_some_and(|c| !c.sender.is_closed());
        (idle, open(&self.h2) || open(&self.mesh))
    }

    /// Send one request. For HTTP/1.1 the URI should be origin-form with a Host
    /// header; for HTTP/2 absolute-form (scheme + authority).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        proto: UpstreamProtocol,
        cfg: &ConnectConfig,
    ) -> Result<Response<Body>, UpstreamError> {
        match proto {
            UpstreamProtocol::Http1 => self.send_h1(req, cfg).await,
            UpstreamProtocol::Http2 => self.send_h2(req, cfg).await,
        }
    }

    /// A pending slot: this request waits for a connection (`maxPendingRequests`).
    fn pending(&self, cfg: &ConnectConfig) -> Result<Option<GaugeGuard>, UpstreamError> {
        let Some((counters, t)) = &cfg.limits else { return Ok(None) };
        match counters.acquire_pending(t.max_pending_requests) {
            Some(g) => Ok(Some(g)),
            None => Err(UpstreamError::Overflow(self.addr, "max-pending")),
        }
    }

    // ------------------------------------------------------------ HTTP/1.1

    async fn send_h1(
        self: &Arc<Self>,
        req: Request<Body>,
        cfg: &ConnectConfig,
    ) -> Result<Response<Body>, UpstreamError> {
        // Upgrades, and HTTP/1.1 through an HBONE tunnel, go through hyper on a connection of
        // their own; the rest through our client on pooled connections, plaintext or (to a
        // meshed endpoint) mutual TLS.
        if cfg.mesh.as_ref().is_some_and(|m| m.hbone.is_some()) || crate::http::headers::is_upgrade(req.headers()) {
            return self.send_h1_hyper(req, cfg).await;
        }
        let mut out = h1::Outgoing::new(req).map_err(|e| UpstreamError::Http1(self.addr, e))?;
        out = match self.send_idle(out, cfg).await? {
            Ok(resp) => return Ok(resp),
            Err(out) => out,
        };
        // No idle connection: pending until this request has one.
        let pending = self.pending(cfg)?;
        loop {
            // Listen before looking, so a connection freed in between is not missed.
            let freed = H1Freed::listen(self, cfg);
            out = match self.send_idle(out, cfg).await? {
                Ok(resp) => return Ok(resp),
                Err(out) => out,
            };
            if let Some(mut opened) = self.h1_connection(cfg) {
                let started = Instant::now();
                let io: super::Either = match &cfg.mesh {
                    None => super::connect_tcp(self.addr, cfg).await?.into(),
                    Some(target) => {
                        let tls = super::connect_mesh(self.addr, cfg, target, crate::mesh::Carry::Http1).await?;
                        opened.peer = Some(target.identity.clone());
                        super::Either::Tls(Box::new(tls))
                    }
                };
                let connect = started.elapsed();
                drop(pending);
                let conn = h1::Conn::new(io, opened);
                let mut resp = match h1::exchange(conn, out, self.h1_return(cfg)).await {
                    Ok(resp) => resp,
                    // A new connection is never stale.
                    Err(h1::Failed::Stale(..)) => {
                        return Err(UpstreamError::Http1(self.addr, h1::Error::ClosedBeforeResponse));
                    }
                    Err(h1::Failed::Error(e)) => return Err(UpstreamError::Http1(self.addr, e)),
                };
                resp.extensions_mut().insert(ConnectTime(connect));
                return Ok(resp);
            }
            freed.await;
        }
    }

    /// Send on an idle connection, or hand the request back when there is none. A pooled
    /// connection the server closed a moment ago, before any of the response came, is
    /// dropped and the next one tried when the request may be sent again (idempotent, no
    /// body; see [`h1::Outgoing`]); any other failure is the request's.
    async fn send_idle(
        self: &Arc<Self>,
        mut out: h1::Outgoing,
        cfg: &ConnectConfig,
    ) -> Result<Result<Response<Body>, h1::Outgoing>, UpstreamError> {
        while let Some(conn) = self.idle_h1(cfg.mesh.as_ref().map(|m| &m.identity)) {
            match h1::exchange(conn, out, self.h1_return(cfg)).await {
                Ok(resp) => return Ok(Ok(resp)),
                Err(h1::Failed::Stale(o, closed)) => {
                    tracing::debug!(upstream = %self.addr, "a pooled connection was closed by the server; trying another");
                    drop(closed);
                    out = o;
                }
                Err(h1::Failed::Error(e)) => return Err(UpstreamError::Http1(self.addr, e)),
            }
        }
        Ok(Err(out))
    }

    fn h1_return(self: &Arc<Self>, cfg: &ConnectConfig) -> PoolReturn {
        PoolReturn { pool: Arc::downgrade(self), idle_timeout: h1_idle_timeout(cfg.idle_timeout, cfg.mesh.is_some()) }
    }

    /// The newest idle connection that is still open and not expired, to the peer `expected`
    /// (mutual TLS to that identity; `None`: plaintext). One to another peer, or plaintext
    /// when TLS is expected (the endpoint's mesh membership or identity changed), is closed.
    fn idle_h1(&self, expected: Option<&crate::tls::Identity>) -> Option<H1Conn> {
        let mut idle = self.h1.lock();
        let now = Instant::now();
        while let Some(mut i) = idle.pop() {
            if i.conn.guard().peer.as_ref() == expected
                && i.conn.is_idle_and_open()
                && i.expires.is_none_or(|e| e > now)
            {
                return Some(i.conn);
            }
        }
        None
    }

    fn put_h1(self: &Arc<Self>, conn: H1Conn, idle_timeout: Option<Duration>) {
        let expires = idle_timeout.and_then(|t| Instant::now().checked_add(t));
        {
            let mut idle = self.h1.lock();
            if idle.len() >= MAX_IDLE_PER_ENDPOINT {
                // Dropped: the connection closes.
                return;
            }
            idle.push(Idle { conn, expires });
        }
        self.h1_available.notify_one();
        // Expiry, and connections the upstream closes while they idle.
        self.watch_idle();
    }

    /// An upgrade, or an HTTP/1.1 request through an HBONE tunnel: through hyper, on a new
    /// connection that is not pooled (it closes when the response, or the upgrade, is done).
    async fn send_h1_hyper(
        self: &Arc<Self>,
        req: Request<Body>,
        cfg: &ConnectConfig,
    ) -> Result<Response<Body>, UpstreamError> {
        let pending = self.pending(cfg)?;
        loop {
            let freed = H1Freed::listen(self, cfg);
            if let Some(opened) = self.h1_connection(cfg) {
                let started = Instant::now();
                let mut sender = self.open_h1(cfg, opened, req.headers()).await?;
                let connect = started.elapsed();
                drop(pending);
                let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Request(self.addr, e))?;
                let mut resp = resp.map(Body::Incoming);
                resp.extensions_mut().insert(ConnectTime(connect));
                return Ok(resp);
            }
            freed.await;
        }
    }

    /// A claim on a new HTTP/1.1 connection: under `maxConnections`, or the
    /// endpoint's first; `None` when the request must wait.
    fn h1_connection(self: &Arc<Self>, cfg: &ConnectConfig) -> Option<Opened> {
        let slot = match &cfg.limits {
            None => None,
            Some((counters, t)) => match counters.acquire_connection(t.max_connections) {
                Some(slot) => Some(slot),
                None => {
                    if self.h1_open.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
                        return None;
                    }
                    // The endpoint has no connection: it may open one over the limit.
                    return Some(Opened {
                        slot: counters.acquire_connection(u32::MAX),
                        counters: Some(counters.clone()),
                        h1: Some(Arc::downgrade(self)),
                        peer: None,
                    });
                }
            },
        };
        self.h1_open.fetch_add(1, Ordering::AcqRel);
        Some(Opened {
            slot,
            counters: cfg.limits.as_ref().map(|(c, _)| c.clone()),
            h1: Some(Arc::downgrade(self)),
            peer: None,
        })
    }

    /// A new HTTP/1.1 connection through hyper, opened for a request with `opener` headers
    /// (see [`connect_tcp_or_mesh`]).
    async fn open_h1(
        &self,
        cfg: &ConnectConfig,
        opened: Opened,
        opener: &http::HeaderMap,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let addr = self.addr;
        let io = connect_tcp_or_mesh(addr, cfg, crate::mesh::Carry::Http1, Some(opener)).await?;
        let (sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(|e| UpstreamError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
            drop(opened);
        });
        Ok(sender)
    }

    // ------------------------------------------------------------ HTTP/2

    async fn send_h2(
        self: &Arc<Self>,
        req: Request<Body>,
        cfg: &ConnectConfig,
    ) -> Result<Response<Body>, UpstreamError> {
        let slot = if cfg.mesh.is_some() { &self.mesh } else { &self.h2 };
        let expected = cfg.mesh.as_ref().map(|m| &m.identity);
        let mut connect = None;
        let (mut sender, streams) = match live_h2(&slot.conn, expected) {
            Some(c) => c,
            None => {
                // Pending until the connection is open; the first one opens it.
                let _pending = self.pending(cfg)?;
                let failures = slot.failures.load(Ordering::Acquire);
                let _opening = slot.opening.lock().await;
                match live_h2(&slot.conn, expected) {
                    Some(c) => c,
                    None if slot.failures.load(Ordering::Acquire) != failures => {
                        return Err(UpstreamError::Connect(
                            self.addr,
                            std::io::Error::other("the connection this request waited for failed to open"),
                        ));
                    }
                    None => {
                        let started = Instant::now();
                        let (sender, streams) = match self.open_h2(cfg, req.headers()).await {
                            Ok(c) => c,
                            Err(e) => {
                                slot.failures.fetch_add(1, Ordering::AcqRel);
                                return Err(e);
                            }
                        };
                        connect = Some(started.elapsed());
                        *slot.conn.lock() = Some(H2Conn {
                            sender: sender.clone(),
                            identity: expected.cloned(),
                            streams: streams.clone(),
                            idle_timeout: cfg.idle_timeout,
                        });
                        if cfg.idle_timeout.is_some() {
                            self.watch_idle();
                        }
                        (sender, streams)
                    }
                }
            }
        };
        let stream = StreamGuard::start(&streams);
        sender.ready().await.map_err(|e| UpstreamError::Request(self.addr, e))?;
        let mut resp = sender.send_request(req).await.map_err(|e| UpstreamError::Request(self.addr, e))?;
        if let Some(c) = connect {
            resp.extensions_mut().insert(ConnectTime(c));
        }
        Ok(resp.map(|b| Body::leased(b, Lease { stream: Some(stream), ..Lease::default() })))
    }

    /// The endpoint's HTTP/2 connection, opened for a request with `opener` headers (see
    /// [`connect_tcp_or_mesh`]).
    async fn open_h2(
        self: &Arc<Self>,
        cfg: &ConnectConfig,
        opener: &http::HeaderMap,
    ) -> Result<(http2::SendRequest<Body>, Arc<Streams>), UpstreamError> {
        // The endpoint's one HTTP/2 connection is always allowed (as an endpoint's
        // first connection is), but counts against maxConnections.
        let opened = Opened {
            slot: cfg.limits.as_ref().and_then(|(c, _)| c.acquire_connection(u32::MAX)),
            counters: cfg.limits.as_ref().map(|(c, _)| c.clone()),
            h1: None,
            peer: None,
        };
        let addr = self.addr;
        let io = connect_tcp_or_mesh(addr, cfg, crate::mesh::Carry::Http2, Some(opener)).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection ended");
            }
            drop(opened);
        });
        let streams = Arc::new(Streams {
            active: AtomicU32::new(0),
            opened: Instant::now(),
            idle_since: AtomicU64::new(0),
            pool: Arc::downgrade(self),
        });
        Ok((sender, streams))
    }

    // ------------------------------------------------------------ idle timer

    /// Make sure a task closes idle connections when their time is up.
    fn watch_idle(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime here (a drop outside one): idle connections are still
            // skipped when next used.
            self.reaper.store(false, Ordering::Release);
            return;
        };
        let pool = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                let Some(p) = pool.upgrade() else { return };
                match p.close_idle(Instant::now()) {
                    Some(next) => {
                        drop(p);
                        tokio::time::sleep_until(next).await;
                    }
                    None => {
                        p.reaper.store(false, Ordering::Release);
                        // A connection may have gone idle while we looked: carry on
                        // unless another task has taken over.
                        if p.close_idle(Instant::now()).is_none() || p.reaper.swap(true, Ordering::AcqRel) {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Close connections idle past their timeout; when the next one expires.
    fn close_idle(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut watch = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        {
            let mut idle = self.h1.lock();
            idle.retain_mut(|i| i.conn.is_idle_and_open() && i.expires.is_none_or(|e| e > now));
            for e in idle.iter().filter_map(|i| i.expires) {
                watch(e);
            }
            if !idle.is_empty()
                && let Some(at) = now.checked_add(CLOSED_SWEEP)
            {
                watch(at);
            }
        }
        for slot in [&self.h2, &self.mesh] {
            let mut s = slot.conn.lock();
            let Some(c) = s.as_ref() else { continue };
            if c.sender.is_closed() {
                *s = None;
                continue;
            }
            match c.idle_deadline() {
                // Dropping the last handle closes the connection (no stream is open).
                Some(at) if at <= now => *s = None,
                Some(at) => watch(at),
                None => {}
            }
        }
        next
    }
}

/// Wakes a request waiting for an HTTP/1.1 connection: one of the endpoint's was given back,
/// or one of the cluster's closed (under `maxConnections`). Listening starts when it is made,
/// before the request looks for a connection, so one freed in between is not missed. (Boxed:
/// made only by a request that found no idle connection.)
struct H1Freed<'a> {
    available: Pin<Box<Notified<'a>>>,
    closed: Option<Pin<Box<Notified<'a>>>>,
}

impl<'a> H1Freed<'a> {
    fn listen(pool: &'a EndpointPool, cfg: &'a ConnectConfig) -> Self {
        let mut available = Box::pin(pool.h1_available.notified());
        available.as_mut().enable();
        let closed = cfg.limits.as_ref().map(|(c, _)| {
            let mut n = Box::pin(c.connection_closed.notified());
            n.as_mut().enable();
            n
        });
        Self { available, closed }
    }
}

impl Future for H1Freed<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.available.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        match &mut self.closed {
            Some(c) => c.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// The shared HTTP/2 connection, if open, verified for `expected`, and not idle
/// past its timeout.
fn live_h2(
    slot: &Mutex<Option<H2Conn>>,
    expected: Option<&Identity>,
) -> Option<(http2::SendRequest<Body>, Arc<Streams>)> {
    let s = slot.lock();
    let c = s.as_ref()?;
    let expired = c.idle_deadline().is_some_and(|at| at <= Instant::now());
    (!c.sender.is_closed() && c.identity.as_ref() == expected && !expired)
        .then(|| (c.sender.clone(), c.streams.clone()))
}

#[cfg(test)]
mod tests;
