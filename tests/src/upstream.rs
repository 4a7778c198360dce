//! Real upstream servers on 127.0.0.1:0 for the proxy to talk to. Each returns an
//! [`Upstream`]: its address, what it saw, and a guard that stops it on drop.
//!
//! ```ignore
//! let slow = upstream::http1().name("slow").delay(Duration::from_millis(20)).start().await;
//! let h2 = upstream::h2().name("h2").start().await;
//! let ws = upstream::websocket().start().await;
//! let echo = upstream::tcp_echo().trailer(b"bye").start().await;
//! let g = upstream::grpc().name("g1").start().await;
//! ```
//! Every HTTP response carries `x-upstream: NAME`; its body is a JSON echo of the request
//! (see [`http::Echo`]). A request whose query has `delay_ms=N` is answered N ms later.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

/// gRPC (tonic) services: Authorization/Check and ADS StreamAggregatedResources.
pub mod grpc;
/// HTTP/1.1 and HTTP/2 servers that echo the request.
pub mod http;
/// A TCP echo server with a trailer after the client's EOF.
pub mod tcp;

pub use self::grpc::GrpcBuilder;
pub use self::http::{Echo, Gate, HttpBuilder, Protocol, Switch};
pub use self::tcp::TcpEchoBuilder;

/// Response header naming the upstream that answered.
pub const X_UPSTREAM: &str = "x-upstream";

/// An HTTP/1.1 server (keep-alive; answers upgrades with 400 unless built by [`websocket`]).
pub fn http1() -> HttpBuilder {
    HttpBuilder::new(Protocol::Http1)
}

/// An HTTP/2 server with prior knowledge (h2c), no HTTP/1.1.
pub fn h2() -> HttpBuilder {
    HttpBuilder::new(Protocol::Http2)
}

/// An HTTP/1.1 server that accepts `Upgrade` requests with 101, then writes
/// `hello from NAME\n` and echoes bytes until EOF.
pub fn websocket() -> HttpBuilder {
    HttpBuilder::new(Protocol::Http1).upgrades(true)
}

/// A TCP server that echoes until EOF, then writes a trailer and shuts down its write side.
pub fn tcp_echo() -> TcpEchoBuilder {
    TcpEchoBuilder::default()
}

/// A gRPC server (HTTP/2) with the Authorization and ADS services.
pub fn grpc() -> GrpcBuilder {
    GrpcBuilder::default()
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: ::http::Method,
    /// Path and query.
    pub path: String,
    pub version: ::http::Version,
    pub headers: ::http::HeaderMap,
    pub body: Bytes,
    /// The request's trailers, if it had any.
    pub trailers: Option<::http::HeaderMap>,
    /// The body ended cleanly; false when it was cut off (the proxy reset or closed the
    /// request mid-way), so the request never reached the application whole.
    pub complete: bool,
}

impl Seen {
    /// A header's value as a string (the first one), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What an upstream has seen, shared with its handle.
#[derive(Debug, Default)]
pub struct Log {
    requests: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    /// Connections open now (accepted and not yet closed by either side).
    open: AtomicUsize,
}

impl Log {
    pub fn record(&self, seen: Seen) {
        self.requests.lock().unwrap().push(seen);
    }
}

/// A running upstream; stops (listener and every connection) when dropped.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    log: Arc<Log>,
    task: AbortHandle,
}

impl Upstream {
    /// Requests seen so far, in arrival order (recorded once the body was read).
    pub fn requests(&self) -> Vec<Seen> {
        self.log.requests.lock().unwrap().clone()
    }

    /// Requests whose body arrived whole (see [`Seen::complete`]).
    pub fn complete_requests(&self) -> Vec<Seen> {
        self.requests().into_iter().filter(|s| s.complete).collect()
    }

    pub fn request_count(&self) -> usize {
        self.log.requests.lock().unwrap().len()
    }

    /// The last request seen. Panics if there was none.
    pub fn last(&self) -> Seen {
        self.log.requests.lock().unwrap().last().cloned().expect("the upstream saw no request")
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    /// Connections open now: accepted, and not yet closed by the peer or the server.
    pub fn open_connections(&self) -> usize {
        self.log.open.load(Ordering::SeqCst)
    }

    /// `IP:port` as a policy file writes endpoints.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind 127.0.0.1:0 and serve each connection with `handle` until the returned
/// [`Upstream`] is dropped. Connection tasks live in a `JoinSet` owned by the
/// accept task, so aborting it ends them too.
pub(crate) async fn serve<F, Fut>(name: String, handle: F) -> Upstream
where
    F: Fn(TcpStream, Arc<Log>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = match BIND_IN.with(|b| b.borrow_mut().take()) {
        Some(l) => TcpListener::from_std(l).expect("register a pre-bound upstream listener"),
        None => TcpListener::bind("127.0.0.1:0").await.expect("bind an upstream on 127.0.0.1:0"),
    };
    let addr = listener.local_addr().expect("local_addr");
    let log = Arc::new(Log::default());
    let task_log = log.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            task_log.connections.fetch_add(1, Ordering::SeqCst);
            task_log.open.fetch_add(1, Ordering::SeqCst);
            while conns.try_join_next().is_some() {}
            let served = handle(stream, task_log.clone());
            let log = task_log.clone();
            conns.spawn(async move {
                served.await;
                log.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    })
    .abort_handle();
    Upstream { addr, name, log, task }
}

/// A server that runs `script` on each accepted connection, for upstreams that misbehave on
/// purpose (broken chunked encoding, h2 protocol errors): the script owns the raw socket.
pub async fn scripted<F, Fut>(name: &str, script: F) -> Upstream
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve(name.to_owned(), move |stream, _log| script(stream)).await
}

/// An HTTP/1.1 upstream that answers each request at once with a chunked `200` and echoes the
/// request's (chunked) body bytes, framing included, as they arrive: a client sees each piece
/// back only if everything between carries the request and the response at the same time.
pub async fn duplex_echo(name: &str) -> Upstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    scripted(name, |mut s| async move {
        if !crate::raw::read_request_head(&mut s).await {
            return;
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await.is_err() {
            return;
        }
        let mut seen = Vec::new();
        let mut b = [0u8; 4096];
        while !seen.ends_with(b"0\r\n\r\n") {
            let n = match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            seen.extend_from_slice(&b[..n]);
            if s.write_all(&b[..n]).await.is_err() {
                return;
            }
        }
    })
    .await
}

thread_local! {
    /// A listener the next upstream started on this thread serves on (see [`start_on`]).
    static BIND_IN: std::cell::RefCell<Option<std::net::TcpListener>> = const { std::cell::RefCell::new(None) };
}

/// Start an upstream that serves on `listener` (bound elsewhere, e.g. inside a network
/// namespace) instead of 127.0.0.1:0: `upstream::start_on(l, upstream::http1().name("a").start())`.
pub async fn start_on(listener: std::net::TcpListener, start: impl Future<Output = Upstream>) -> Upstream {
    listener.set_nonblocking(true).expect("a non-blocking listener");
    // The builders bind in their first poll, on this thread.
    BIND_IN.with(|b| *b.borrow_mut() = Some(listener));
    let upstream = start.await;
    BIND_IN.with(|b| b.borrow_mut().take());
    upstream
}

/// A local port with nothing listening on it (bound, then closed).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local_addr");
    drop(l);
    addr
}
