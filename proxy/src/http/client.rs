//! Upstream connections: opening them (TCP or mutual TLS, with a deadline and
//! the proxy's socket options) and, in [`pool`], keeping them per endpoint.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::policy::breaker::ClusterThresholds;
use crate::policy::config::Thresholds;

/// Connections to one endpoint: HTTP/1.1 keep-alive and HTTP/2 multiplexed,
/// limits, idle timers, and what a response holds until its body ends.
pub mod pool;

/// HTTP/1.1 to an upstream on the request's own task: no connection task, no buffers while idle.
pub mod h1;

pub use pool::{EndpointPool, Lease, MAX_IDLE_PER_ENDPOINT};

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
    /// The cluster's live counts and thresholds: connections and requests
    /// waiting for one are limited (`maxConnections`, `maxPendingRequests`).
    pub limits: Option<(Arc<ClusterThresholds>, Thresholds)>,
    /// Pooled connections without a request for longer than this are closed.
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
    #[error("request to {0} failed: {1}")]
    Http1(SocketAddr, #[source] h1::Error),
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
            | UpstreamError::Http1(a, _)
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
) -> Result<crate::tls::stream::ClientStream<TcpStream>, UpstreamError> {
    let config = target.mesh.client(&target.identity, carry).map_err(|e| UpstreamError::Tls(addr, e.to_string()))?;
    let tcp = connect_tcp(addr, cfg).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    match tokio::time::timeout(cfg.timeout, crate::tls::stream::Connector::from(config).connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(UpstreamError::Tls(addr, format!("{e} (expected peer identity {})", target.identity))),
        Err(_) => Err(UpstreamError::Tls(addr, format!("no handshake within {:?}", cfg.timeout))),
    }
}

/// A plaintext or mutual-TLS upstream connection; reads and writes go to whichever it is.
pub enum Either {
    Plain(TcpStream),
    Tls(Box<crate::tls::stream::ClientStream<TcpStream>>),
    /// A stream of an HBONE connection (an ambient workload).
    Hbone(Box<crate::hbone::stream::Stream>),
}

impl std::fmt::Debug for Either {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Either::Plain(_) => "Plain",
            Either::Tls(_) => "Tls",
            Either::Hbone(_) => "Hbone",
        })
    }
}

impl From<TcpStream> for Either {
    fn from(s: TcpStream) -> Self {
        Either::Plain(s)
    }
}

impl Either {
    /// Still open, with nothing to read: the peer has not closed the connection (or sent
    /// anything) since it was last read. Asks the reactor what it has seen, without a system
    /// call unless the socket was marked readable.
    ///
    /// Over mutual TLS the check reads through the session, so that what TLS 1.3 sends after
    /// the handshake (session tickets, key updates) is taken in and not mistaken for bytes
    /// nobody asked for; a `close_notify` is a close. An HBONE stream is never kept idle.
    pub fn is_idle_and_open(&mut self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self {
            Either::Plain(s) => match s.poll_read_ready(&mut cx) {
                std::task::Poll::Pending => true,
                std::task::Poll::Ready(Err(_)) => false,
                // Readable: the end of the stream, bytes nobody asked for, or a stale mark.
                std::task::Poll::Ready(Ok(())) => {
                    matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            Either::Tls(s) => {
                let mut byte = [0u8; 1];
                let mut buf = tokio::io::ReadBuf::new(&mut byte);
                // Pending: nothing (or only TLS's own records) came. Ready: application data,
                // the end of the stream, or an error; none leaves the connection reusable.
                tokio::io::AsyncRead::poll_read(std::pin::Pin::new(s.as_mut()), &mut cx, &mut buf).is_pending()
            }
            Either::Hbone(_) => false,
        }
    }
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

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Either::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Either::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Either::Hbone(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Either::Plain(s) => s.is_write_vectored(),
            Either::Tls(s) => s.is_write_vectored(),
            Either::Hbone(s) => s.is_write_vectored(),
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
///
/// `opener`: the headers of the request that opens the connection (HTTP), `None` for a TCP
/// connection. Over HBONE its `traceparent` — the request's own span once tracing has injected
/// it, else what the caller sent — and `baggage` ride on the `CONNECT`, so the tunnel belongs to
/// the trace of the request that opened it. A TCP connection has no span in this proxy (spans
/// are per HTTP request), so its `CONNECT` carries neither. Read only when a tunnel is opened:
/// two header lookups and reference-counted clones, no allocation.
pub async fn connect_tcp_or_mesh(
    addr: SocketAddr,
    cfg: &ConnectConfig,
    carry: crate::mesh::Carry,
    opener: Option<&http::HeaderMap>,
) -> Result<Either, UpstreamError> {
    match &cfg.mesh {
        None => Ok(Either::Plain(connect_tcp(addr, cfg).await?)),
        Some(target) if let Some(tunnel) = target.hbone => {
            let t = crate::hbone::client::Target {
                via: SocketAddr::new(addr.ip(), crate::hbone::PORT),
                target: addr,
                identity: target.identity.clone(),
                source: tunnel.source,
                traceparent: opener.and_then(|h| h.get(&crate::hbone::TRACEPARENT)).cloned(),
                baggage: opener.and_then(|h| h.get(&crate::hbone::BAGGAGE)).cloned(),
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
