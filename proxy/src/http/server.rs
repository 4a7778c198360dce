//! Serving one downstream connection (HTTP/1.x or HTTP/2), with limits and graceful shutdown
//! on drain. Which HTTP a connection speaks is known before a byte is parsed: from its first
//! bytes on a plaintext listener ([`super::preface`]), from ALPN on mutual TLS. HTTP/1.x is
//! served by the server of [`h1`] (no buffer held between requests); HTTP/2 by hyper, read
//! through [`H2Guard`].
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Body;
use super::h2_guard::{self, H2Guard};
use super::preface::{self, First};
use crate::drain;

pub mod h1;

/// Limits on downstream connections (every limit has a default).
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Slowloris guard: the request head (or the HTTP/2 preface) must arrive within this.
    pub header_read_timeout: Duration,
    /// Largest HTTP/1.1 request head (bytes: request line, headers and the blank line); a
    /// larger one is answered `431`. At most 64 KiB ([`h1::MAX_HEAD`]).
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

/// A downstream connection and how its HTTP version is known.
#[derive(Debug)]
pub enum Downstream<T> {
    /// Plaintext: HTTP/1.x or HTTP/2 with prior knowledge, told apart by the first bytes.
    Plain(TcpStream),
    /// ALPN chose HTTP/1.1.
    Http1(T),
    /// ALPN chose HTTP/2.
    Http2(T),
}

/// The configured servers, shared by all connections of a listener (a clone is one `Arc`:
/// a connection's task holds it while the connection lives).
#[derive(Clone, Debug)]
pub struct HttpServer(Arc<Servers>);

#[derive(Debug)]
struct Servers {
    h1: h1::Limits,
    h2: http2::Builder<TokioExecutor>,
}

impl HttpServer {
    pub fn new(limits: &ServerLimits) -> Self {
        let h1 =
            h1::Limits { header_read_timeout: limits.header_read_timeout, max_header_size: limits.max_header_size };
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
            .max_header_list_size(limits.max_header_list_size)
            // The guard leaves larger HEADERS frames to h2, so both must agree on the limit.
            .max_frame_size(h2_guard::MAX_FRAME_SIZE)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .keep_alive_timeout(Duration::from_secs(20));
        Self(Arc::new(Servers { h1, h2 }))
    }

    /// Serve one connection with `handler`.
    ///
    /// The returned future is part of the connection's task for the connection's life, and it
    /// is all an idle HTTP/1.1 connection holds, so it is kept small: what is large and only
    /// needed for a while (peeking, a rejection, a request in flight, hyper's HTTP/2
    /// connection) is boxed where it starts; the handler (whatever it captures) sits behind one
    /// `Arc`; and this is a function returning a future rather than an `async fn`, which would
    /// hold its arguments twice.
    pub fn serve<T, S, F>(
        &self,
        conn: Downstream<T>,
        handler: S,
        drain: drain::Signal,
    ) -> impl Future<Output = ()> + Send + 'static + use<T, S, F>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Fn(Request<Body>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let server = self.clone();
        let handler = Arc::new(handler);
        match conn {
            Downstream::Plain(stream) => Either::Left(Either::Left(server.serve_plain(stream, handler, drain))),
            Downstream::Http1(io) => Either::Left(Either::Right(h1::serve(io, handler, server.0.h1, drain))),
            // Boxed: hyper's connections live as long as the connection.
            Downstream::Http2(io) => Either::Right(server.serve_h2(io, handler, drain).boxed()),
        }
    }

    /// A plaintext connection: HTTP/1.x or HTTP/2, told apart by its first bytes, which are
    /// peeked in a box of their own.
    // why not `async fn`: it would hold its arguments twice.
    #[allow(clippy::manual_async_fn)]
    fn serve_plain<S, F>(
        self,
        stream: TcpStream,
        handler: Arc<S>,
        drain: drain::Signal,
    ) -> impl Future<Output = ()> + Send + 'static + use<S, F>
    where
        S: Fn(Request<Body>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        async move {
            match Box::pin(preface::peek_first(&stream, self.0.h1.header_read_timeout)).await {
                Ok(Some(First::Http1)) => h1::serve(stream, handler, self.0.h1, drain).await,
                Ok(Some(First::Http2)) => Box::pin(self.serve_h2(stream, handler, drain)).await,
                Ok(Some(First::Invalid)) => {
                    tracing::debug!("neither an HTTP/1.x request line nor the HTTP/2 preface: GOAWAY");
                    Box::pin(preface::reject(stream)).await;
                }
                // Closed, or nothing decisive before the header read timeout.
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "downstream connection failed before its first bytes"),
            }
        }
    }

    async fn serve_h2<I, S, F>(self, io: I, handler: Arc<S>, mut drain: drain::Signal)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Fn(Request<Body>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let mut io = H2Guard::new(io);
        match tokio::time::timeout(self.0.h1.header_read_timeout, io.read_preface()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::debug!("invalid HTTP/2 connection preface: GOAWAY");
                // Boxed: its 4 KiB read buffer would otherwise be in every HTTP/2 connection's state.
                return Box::pin(preface::reject(io.get_mut())).await;
            }
            Ok(Err(e)) => return tracing::debug!(error = %e, "downstream connection failed in the HTTP/2 preface"),
            Err(_) => return tracing::debug!("no HTTP/2 preface within the header read timeout"),
        }
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| handler(req.map(Body::Incoming)));
        let conn = self.0.h2.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let res = tokio::select! {
            res = conn.as_mut() => res,
            _ = drain.draining() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, protocol = "HTTP/2", "downstream connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests;
