//! Upstream connection pools, one per endpoint, carried across config snapshots.
//! HTTP/1.1 connections are kept alive and reused one request at a time;
//! an HTTP/2 connection is shared by all requests to the endpoint.
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Body;
use crate::policy::breaker::{ClusterThresholds, GaugeGuard};
use crate::policy::config::Thresholds;

/// Idle HTTP/1.1 connections kept per endpoint.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

/// Response extension: how long opening a new upstream connection for this
/// request took (absent when a pooled connection carried it). For the access log.
#[derive(Clone, Copy, Debug)]
pub struct ConnectTime(pub Duration);

/// How to open a connection.
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    pub timeout: Duration,
    /// Mark and (node mode) network namespace of the socket.
    pub socket: crate::transport::socket::SocketOptions,
    /// The cluster's live counts and thresholds: new connections and requests
    /// waiting for one are limited (circuit-breaker thresholds).
    pub limits: Option<(Arc<ClusterThresholds>, Thresholds)>,
    /// Pooled connections unused for longer than this are closed.
    pub idle_timeout: Option<Duration>,
    /// A meshed endpoint: mutual TLS with its expected identity, HTTP multiplexed over h2.
    pub mesh: Option<crate::mesh::MeshTarget>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {0} timed out after {1:?}; is the endpoint listening?")]
    ConnectTimeout(SocketAddr, Duration),
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, #[source] io::Error),
    #[error("HTTP handshake with {0} failed: {1}")]
    Handshake(SocketAddr, #[source] hyper::Error),
    #[error("request to {0} failed: {1}")]
    Request(SocketAddr, #[source] hyper::Error),
    #[error("no new connection to {0}: the cluster is at its {1} limit")]
    Overflow(SocketAddr, &'static str),
    #[error("mTLS handshake with {0} failed: {1}")]
    Tls(SocketAddr, String),
    #[error("tunnel to {0} failed: {1}")]
    Hbone(SocketAddr, String),
}

impl UpstreamError {
    /// The endpoint the error is about.
    pub fn addr(&self) -> SocketAddr {
        match self {
            UpstreamError::ConnectTimeout(a, _)
            | UpstreamError::Connect(a, _)
            | UpstreamError::Handshake(a, _)
            | UpstreamError::Request(a, _)
            | UpstreamError::Overflow(a, _)
            | UpstreamError::Tls(a, _)
            | UpstreamError::Hbone(a, _) => *a,
        }
    }

    /// Did we never reach the endpoint (so nothing was sent)?
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout(..)
                | UpstreamError::Connect(..)
                | UpstreamError::Handshake(..)
                | UpstreamError::Tls(..)
                | UpstreamError::Hbone(..)
        )
    }
}

/// Open a TCP connection with a deadline and the proxy's socket options.
pub async fn connect_tcp(addr: SocketAddr, cfg: &ConnectConfig) -> Result<TcpStream, UpstreamError> {
    let socket = cfg.socket.tcp_socket(addr).map_err(|e| UpstreamError::Connect(addr, e))?;
    match tokio::time::timeout(cfg.timeout, socket.connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(UpstreamError::Connect(addr, e)),
        Err(_) => Err(UpstreamError::ConnectTimeout(addr, cfg.timeout)),
    }
}

/// Mutual TLS to a meshed endpoint, offering the ALPN id of what the connection carries.
pub async fn connect_mesh(
    addr: SocketAddr,
    cfg: &ConnectConfig,
    target: &crate::mesh::MeshTarget,
    carry: crate::mesh::Carry,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let config = target.mesh.client(&target.identity, carry).map_err(|e| UpstreamError::Tls(addr, e.to_string()))?;
    let tcp = connect_tcp(addr, cfg).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    match tokio::time::timeout(cfg.timeout, tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(UpstreamError::Tls(addr, format!("{e} (expected peer identity {})", target.identity))),
        Err(_) => Err(UpstreamError::Tls(addr, format!("no handshake within {:?}", cfg.timeout))),
    }
}

/// A shared HTTP/2 connection, when it was last used, and (mTLS) the peer identity it was
/// verified for: a connection is reused only for the same expected identity.
type H2Slot = Mutex<Option<(http2::SendRequest<Body>, Instant, Option<crate::tls::Identity>)>>;

/// A plaintext or mutual-TLS upstream connection; reads and writes go to whichever it is.
pub enum Either {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A stream of an HBONE connection (an ambient workload).
    Hbone(Box<crate::hbone::stream::Stream>),
}

impl tokio::io::AsyncRead for Either {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Either::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Either::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
            Either::Hbone(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Either {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Either::Plain(s) => std::pin::Pin::new(s).poll_write(cx, data),
            Either::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, data),
            Either::Hbone(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Either::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Either::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
            Either::Hbone(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Either::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Either::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
            Either::Hbone(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Plaintext, or mutual TLS carrying `carry` when the endpoint is meshed.
pub async fn connect_tcp_or_mesh(
    addr: SocketAddr,
    cfg: &ConnectConfig,
    carry: crate::mesh::Carry,
) -> Result<Either, UpstreamError> {
    match &cfg.mesh {
        None => Ok(Either::Plain(connect_tcp(addr, cfg).await?)),
        Some(target) if let Some(tunnel) = target.hbone => {
            let t = crate::hbone::client::Target {
                via: SocketAddr::new(addr.ip(), crate::hbone::PORT),
                target: addr,
                identity: target.identity.clone(),
                source: tunnel.source,
                traceparent: None,
                baggage: None,
            };
            let stream = target
                .mesh
                .hbone
                .connect(&t, &cfg.socket, cfg.timeout)
                .await
                .map_err(|e| UpstreamError::Hbone(addr, e.to_string()))?;
            Ok(Either::Hbone(Box::new(stream)))
        }
        Some(target) => Ok(Either::Tls(Box::new(connect_mesh(addr, cfg, target, carry).await?))),
    }
}

/// Connections to one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    addr: SocketAddr,
    /// Idle HTTP/1.1 connections and when each was last used.
    h1: Mutex<Vec<(http1::SendRequest<Body>, Instant)>>,
    /// The shared HTTP/2 connection and when it was last used.
    h2: H2Slot,
    /// The shared mTLS HTTP/2 connection to the endpoint's proxy (meshed endpoints).
    mesh: H2Slot,
}

impl EndpointPool {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, h1: Mutex::new(Vec::new()), h2: Mutex::new(None), mesh: Mutex::new(None) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Idle HTTP/1.1 connections and whether an HTTP/2 connection is open.
    pub fn stats(&self) -> (usize, bool) {
        let idle = self.h1.lock().len();
        let open = |slot: &H2Slot| slot.lock().as_ref().is_some_and(|(s, _, _)| !s.is_closed());
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
            UpstreamProtocol::Http2 => Ok(self.send_h2(req, cfg).await?.map(Body::Incoming)),
        }
    }

    /// An idle connection that is still open. It may not be ready this very
    /// moment (hyper marks it ready once it has read the previous response's end).
    fn idle_h1(&self, idle_timeout: Option<Duration>) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.h1.lock();
        if let Some(t) = idle_timeout {
            // The oldest are at the front: close those idle for too long.
            let stale = idle.iter().take_while(|(_, at)| at.elapsed() > t).count();
            idle.drain(..stale);
        }
        while let Some((s, _)) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_h1(&self, sender: http1::SendRequest<Body>) {
        let mut idle = self.h1.lock();
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push((sender, Instant::now()));
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<Body>,
        cfg: &ConnectConfig,
    ) -> Result<Response<Body>, UpstreamError> {
        // A pooled connection may have been closed by the server a moment ago. If the
        // request was not written, hyper hands it back and we use a fresh connection.
        // To a meshed endpoint (upgrades only) always a new mTLS connection: the pool holds
        // plaintext ones.
        while let Some(mut sender) = if cfg.mesh.is_some() { None } else { self.idle_h1(cfg.idle_timeout) } {
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.after_h1(sender, resp)),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(UpstreamError::Request(self.addr, e.into_error())),
                },
            }
        }
        let started = Instant::now();
        let mut sender = self.connect_h1(cfg).await?;
        let connect = started.elapsed();
        let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Request(self.addr, e))?;
        let mut resp = if cfg.mesh.is_some() {
            // Not pooled: closes when the response (or the upgrade) is done.
            resp.map(Body::Incoming)
        } else {
            self.after_h1(sender, resp)
        };
        resp.extensions_mut().insert(ConnectTime(connect));
        Ok(resp)
    }

    /// The connection goes back to the pool when the response body has been
    /// read to its end (see [`PoolReturn`]); an upgraded connection belongs to
    /// the upgrade.
    fn after_h1(self: &Arc<Self>, sender: http1::SendRequest<Body>, resp: Response<Incoming>) -> Response<Body> {
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(Body::Incoming);
        }
        let ret = PoolReturn { sender, pool: Arc::downgrade(self) };
        resp.map(|b| Body::pooled(b, ret))
    }

    /// Circuit-breaker thresholds for a new connection: a pending slot while it
    /// is being made, and a connection slot for as long as it lives.
    fn limits(&self, cfg: &ConnectConfig) -> Result<(Option<GaugeGuard>, Option<GaugeGuard>), UpstreamError> {
        let Some((counters, t)) = &cfg.limits else { return Ok((None, None)) };
        let pending = counters
            .acquire_pending(t.max_pending_requests)
            .ok_or(UpstreamError::Overflow(self.addr, "max-pending"))?;
        let conn = counters
            .acquire_connection(t.max_connections)
            .ok_or(UpstreamError::Overflow(self.addr, "max-connections"))?;
        Ok((Some(pending), Some(conn)))
    }

    async fn connect_h1(&self, cfg: &ConnectConfig) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let (pending, slot) = self.limits(cfg)?;
        let addr = self.addr;
        let io = connect_tcp_or_mesh(addr, cfg, crate::mesh::Carry::Http1).await?;
        let (sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(|e| UpstreamError::Handshake(addr, e))?;
        drop(pending);
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
            drop(slot);
        });
        Ok(sender)
    }

    async fn send_h2(&self, req: Request<Body>, cfg: &ConnectConfig) -> Result<Response<Incoming>, UpstreamError> {
        let slot = if cfg.mesh.is_some() { &self.mesh } else { &self.h2 };
        let expected = cfg.mesh.as_ref().map(|m| &m.identity);
        let existing = {
            let mut h2 = slot.lock();
            match h2.as_mut() {
                Some((s, at, id))
                    if !s.is_closed()
                        && id.as_ref() == expected
                        && cfg.idle_timeout.is_none_or(|t| at.elapsed() <= t) =>
                {
                    *at = Instant::now();
                    Some(s.clone())
                }
                _ => None,
            }
        };
        let mut connect = None;
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let started = Instant::now();
                let s = self.connect_h2(cfg).await?;
                connect = Some(started.elapsed());
                *slot.lock() = Some((s.clone(), Instant::now(), expected.cloned()));
                s
            }
        };
        sender.ready().await.map_err(|e| UpstreamError::Request(self.addr, e))?;
        let mut resp = sender.send_request(req).await.map_err(|e| UpstreamError::Request(self.addr, e))?;
        if let Some(c) = connect {
            resp.extensions_mut().insert(ConnectTime(c));
        }
        Ok(resp)
    }

    async fn connect_h2(&self, cfg: &ConnectConfig) -> Result<http2::SendRequest<Body>, UpstreamError> {
        let (pending, slot) = self.limits(cfg)?;
        let addr = self.addr;
        let io = connect_tcp_or_mesh(addr, cfg, crate::mesh::Carry::Http2).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Handshake(addr, e))?;
        drop(pending);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection ended");
            }
            drop(slot);
        });
        Ok(sender)
    }
}

/// Hands an HTTP/1.1 connection back to its pool once the response body it
/// carried has been read to the end. Dropped early (the caller went away
/// mid-body), the connection is closed instead: it still holds unread bytes.
#[derive(Debug)]
pub struct PoolReturn {
    sender: http1::SendRequest<Body>,
    pool: Weak<EndpointPool>,
}

impl PoolReturn {
    pub fn give_back(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put_h1(self.sender);
        }
    }
}
