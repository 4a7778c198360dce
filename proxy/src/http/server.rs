//! Serving one downstream connection with hyper (HTTP/1.1 or HTTP/2, detected
//! from the first bytes), with limits and graceful shutdown on drain.
use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use super::Body;
use crate::drain;

/// Limits on downstream connections (DESIGN.md §5: every limit has a default).
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Slowloris guard: the request head must arrive within this.
    pub header_read_timeout: Duration,
    /// Largest HTTP/1.1 request head (bytes).
    pub max_header_size: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 rapid reset (CVE-2023-44487): pending reset streams before GOAWAY.
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2 header list size (bytes).
    pub max_header_list_size: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_size: 64 * 1024,
            max_concurrent_streams: 1024,
            max_pending_accept_reset_streams: 20,
            max_header_list_size: 64 * 1024,
        }
    }
}

/// A configured hyper server, shared by all connections of a listener.
#[derive(Clone, Debug)]
pub struct HttpServer {
    builder: auto::Builder<TokioExecutor>,
}

impl HttpServer {
    pub fn new(limits: &ServerLimits) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_size.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
            .max_header_list_size(limits.max_header_list_size)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .keep_alive_timeout(Duration::from_secs(20));
        Self { builder }
    }

    /// Serve until the peer closes, or until drain: then GOAWAY (HTTP/2) or
    /// `Connection: close` after the in-flight response (HTTP/1.1).
    pub async fn serve<I, S, F>(&self, io: I, handler: S, mut drain: drain::Signal)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let svc = hyper::service::service_fn(handler);
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let res = tokio::select! {
            res = conn.as_mut() => res,
            _ = drain.draining() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "downstream connection ended with an error");
        }
    }
}
