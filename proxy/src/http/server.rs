//! Serving one downstream connection with hyper (HTTP/1.x or HTTP/2), with limits and graceful
//! shutdown on drain. Which HTTP a connection speaks is known before hyper sees a byte: from its
//! first bytes on a plaintext listener ([`super::preface`]), from ALPN on mutual TLS; HTTP/2
//! connections are read through [`H2Guard`]. An HTTP/1.1 connection's hyper buffers are
//! released between requests, on a plaintext socket and over mutual TLS ([`super::park`]).
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Body;
use super::h2_guard::{self, H2Guard};
use super::park::{Exchange, ParkIo, Socket, TrackedBody, Woken};
use super::preface::{self, First};
use crate::drain;

/// The default quiet period before an idle HTTP/1.1 connection parks: long against the
/// gaps between a busy caller's requests (microseconds to a few milliseconds), short against
/// how long keep-alive connections sit idle (seconds to minutes). why not longer: freed
/// buffers stay in the allocator, so RSS follows the most connections unparked at once
/// (10,000 connections opened within a second: 32 MB parking at once, 45–47 MB at 50 ms,
/// 119 MB at 500 ms, measured).
pub const PARK_AFTER: Duration = Duration::from_millis(50);

/// Limits on downstream connections (every limit has a default).
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Slowloris guard: the request head (or the HTTP/2 preface) must arrive within this.
    pub header_read_timeout: Duration,
    /// Largest HTTP/1.1 request head (bytes: request line, headers and the blank line); a
    /// larger one is answered `431`.
    pub max_header_size: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 rapid reset (CVE-2023-44487): pending reset streams before GOAWAY.
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2 header list size (bytes).
    pub max_header_list_size: u32,
    /// An HTTP/1.1 keep-alive connection (plaintext or mTLS) whose caller has been silent this long
    /// after a response releases its buffers ([`super::park`]); zero parks at once.
    pub park_after: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_size: 64 * 1024,
            max_concurrent_streams: 1024,
            max_pending_accept_reset_streams: 20,
            max_header_list_size: 64 * 1024,
            park_after: PARK_AFTER,
        }
    }
}

/// A downstream connection and how its HTTP version is known.
#[derive(Debug)]
pub enum Downstream<T> {
    /// Plaintext: HTTP/1.x or HTTP/2 with prior knowledge, told apart by the first bytes.
    Plain(TcpStream),
    /// ALPN chose HTTP/1.1 (parked between requests when `T` can park: see [`Socket`]).
    Http1(T),
    /// ALPN chose HTTP/2.
    Http2(T),
}

/// Configured hyper servers, shared by all connections of a listener (a clone is one `Arc`:
/// a connection's task holds it while the connection lives).
#[derive(Clone, Debug)]
pub struct HttpServer(Arc<Servers>);

#[derive(Debug)]
struct Servers {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    park_after: Duration,
}

/// Serve `conn` until it ends, or until drain: then GOAWAY (HTTP/2) or `Connection: close`
/// after the in-flight response (HTTP/1.1). An HTTP/2 connection accepted while draining gets
/// its GOAWAY at once; the streams its client opened before the final GOAWAY (a PING round
/// trip later) are served.
macro_rules! run {
    ($conn:expr, $drain:expr, $version:literal) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let res = tokio::select! {
            res = conn.as_mut() => res,
            _ = $drain.draining() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, protocol = $version, "downstream connection ended with an error");
        }
    }};
}

impl HttpServer {
    pub fn new(limits: &ServerLimits) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // The read buffer may grow past its maximum before the head is parsed (heads of
            // about 110 KiB got through a 64 KiB buffer): the head's parsed size is checked too.
            .max_buf_size(limits.max_header_size.max(8192))
            .max_header_size(limits.max_header_size)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
            .max_header_list_size(limits.max_header_list_size)
            // The guard leaves larger HEADERS frames to h2, so both must agree on the limit.
            .max_frame_size(h2_guard::MAX_FRAME_SIZE)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .keep_alive_timeout(Duration::from_secs(20));
        Self(Arc::new(Servers {
            h1,
            h2,
            header_read_timeout: limits.header_read_timeout,
            park_after: limits.park_after,
        }))
    }

    /// Serve one connection with `handler`.
    ///
    /// The returned future is part of the connection's task for the connection's life, and it
    /// is all a parked HTTP/1.1 connection holds, so it is kept small: what is large and only
    /// needed for a while (peeking, a rejection, hyper's connections) is boxed where it
    /// starts; the handler (whatever it captures) sits behind one `Arc`; and this is a function
    /// returning a future rather than an `async fn`, which would hold its arguments twice.
    pub fn serve<T, S, F>(
        &self,
        conn: Downstream<T>,
        handler: S,
        drain: drain::Signal,
    ) -> impl Future<Output = ()> + Send + 'static + use<T, S, F>
    where
        T: Socket,
        S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let server = self.clone();
        let handler = Arc::new(handler);
        match conn {
            Downstream::Plain(stream) => Either::Left(Either::Left(server.serve_plain(stream, handler, drain))),
            Downstream::Http1(io) if T::PARKS => {
                Either::Left(Either::Right(server.serve_h1_parking(io, handler, drain)))
            }
            // Boxed: hyper's connections live as long as the connection.
            Downstream::Http1(io) => Either::Right(server.serve_h1(io, handler, drain).boxed()),
            Downstream::Http2(io) => Either::Right(server.serve_h2(io, handler, drain).boxed()),
        }
    }

    /// A plaintext connection: HTTP/1.x (parked when idle) or HTTP/2, told apart by its first
    /// bytes, which are peeked in a box of their own.
    // why not `async fn`: it would hold its arguments twice.
    #[allow(clippy::manual_async_fn)]
    fn serve_plain<S, F>(
        self,
        stream: TcpStream,
        handler: Arc<S>,
        drain: drain::Signal,
    ) -> impl Future<Output = ()> + Send + 'static + use<S, F>
    where
        S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        async move {
            match Box::pin(preface::peek_first(&stream, self.0.header_read_timeout)).await {
                Ok(Some(First::Http1)) => self.serve_h1_parking(stream, handler, drain).await,
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

    async fn serve_h1<I, S, F>(self, io: I, handler: Arc<S>, mut drain: drain::Signal)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req| handler(req));
        if drain.is_draining() {
            let res = self.h1_while_draining().serve_connection(TokioIo::new(io), svc).with_upgrades().await;
            if let Err(e) = res {
                tracing::debug!(error = %e, protocol = "HTTP/1.1", "downstream connection ended with an error");
            }
            return;
        }
        run!(self.0.h1.serve_connection(TokioIo::new(io), svc).with_upgrades(), drain, "HTTP/1.1");
    }

    /// For a connection accepted while the proxy drains: its first request is answered with
    /// `Connection: close` and the connection ends. (hyper's graceful shutdown would close a
    /// connection that has not sent a byte yet, failing the request the caller is sending.)
    fn h1_while_draining(&self) -> http1::Builder {
        let mut h1 = self.0.h1.clone();
        h1.keep_alive(false);
        h1
    }

    /// Serve an HTTP/1.1 connection, parked once idle: one hyper connection per busy period,
    /// only the socket (and, over TLS, the session) while the caller is silent. A parked
    /// connection is closed when the caller sends nothing within the header read timeout (as
    /// hyper closes an idle keep-alive connection), and on drain. (A function returning a
    /// future, as [`HttpServer::serve`], so its arguments are held once.)
    fn serve_h1_parking<I, S, F>(
        &self,
        io: I,
        handler: Arc<S>,
        mut drain: drain::Signal,
    ) -> impl Future<Output = ()> + Send + 'static + use<I, S, F>
    where
        I: Socket,
        S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let server = self.clone();
        let exchange = Arc::new(Exchange::default());
        let mut io = ParkIo::new(io, exchange.clone(), self.0.park_after);
        async move {
            loop {
                // Boxed: hyper's connection is freed when the connection parks, and the
                // task of a parked connection is no larger than what it holds then.
                io = match Box::pin(server.h1_busy(io, &handler, &exchange, &mut drain)).await {
                    Some(io) => io,
                    None => return,
                };
                match io.wait(server.0.header_read_timeout, &mut drain).await {
                    Woken::Readable => {}
                    Woken::Failed(e) => return tracing::debug!(error = %e, "parked downstream connection failed"),
                    Woken::Draining => return,
                    Woken::TimedOut => {
                        return tracing::debug!(
                            "no request on an idle keep-alive connection within the header read timeout"
                        );
                    }
                }
            }
        }
    }

    /// One hyper connection on `io`, until the connection ends (`None`) or parks: then
    /// the socket, ready for the next one.
    async fn h1_busy<I, S, F>(
        &self,
        io: ParkIo<I>,
        handler: &Arc<S>,
        exchange: &Arc<Exchange>,
        drain: &mut drain::Signal,
    ) -> Option<ParkIo<I>>
    where
        I: Socket,
        S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let svc = {
            let (handler, exchange) = (handler.clone(), exchange.clone());
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let in_flight = exchange.start(&req);
                // why `map`, not an async block awaiting the handler's future: that would hold
                // the future twice (see `app::connection_task`).
                handler(req).map(move |resp| resp.map(|resp| resp.map(|b| TrackedBody::new(b, in_flight))))
            })
        };
        let res;
        let conn = if drain.is_draining() {
            // Accepted (or resumed) while draining: one response, `Connection: close`.
            let mut conn = self.h1_while_draining().serve_connection(TokioIo::new(io), svc).with_upgrades();
            res = (&mut conn).await;
            conn
        } else {
            let mut conn = self.0.h1.serve_connection(TokioIo::new(io), svc).with_upgrades();
            res = tokio::select! {
                res = &mut conn => res,
                _ = drain.draining() => {
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    (&mut conn).await
                }
            };
            conn
        };
        let log = |e: &hyper::Error| {
            tracing::debug!(error = %e, protocol = "HTTP/1.1", "downstream connection ended with an error");
        };
        // `None`: upgraded, the socket now belongs to the upgrade.
        let parts = conn.into_parts()?;
        let mut io = parts.io.into_inner();
        if !io.parked() || drain.is_draining() {
            if let Err(e) = &res {
                log(e);
            }
            return None;
        }
        match res {
            // Between two requests: hyper's read buffer holds nothing.
            Ok(()) if parts.read_buf.is_empty() => io.resume(&[]),
            // Part of a pipelined request head: given to the next connection first.
            Err(e) if e.is_incomplete_message() && !parts.read_buf.is_empty() => io.resume(&parts.read_buf),
            Ok(()) => return None,
            Err(e) => {
                log(&e);
                return None;
            }
        }
        Some(io)
    }

    async fn serve_h2<I, S, F>(self, io: I, handler: Arc<S>, mut drain: drain::Signal)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let mut io = H2Guard::new(io);
        match tokio::time::timeout(self.0.header_read_timeout, io.read_preface()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::debug!("invalid HTTP/2 connection preface: GOAWAY");
                // Boxed: its 4 KiB read buffer would otherwise be in every HTTP/2 connection's state.
                return Box::pin(preface::reject(io.get_mut())).await;
            }
            Ok(Err(e)) => return tracing::debug!(error = %e, "downstream connection failed in the HTTP/2 preface"),
            Err(_) => return tracing::debug!("no HTTP/2 preface within the header read timeout"),
        }
        let svc = hyper::service::service_fn(move |req| handler(req));
        run!(self.0.h2.serve_connection(TokioIo::new(io), svc), drain, "HTTP/2");
    }
}

#[cfg(test)]
mod tests;
