//! HTTP clients aimed at the proxy. The connector ignores the URI's host and always
//! dials the proxy, so a test writes `http://echo:8080/path` and the proxy sees
//! `echo:8080` as the Host / `:authority`, as an application in the mesh would send it.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use http::{HeaderMap, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::upstream::{Echo, X_UPSTREAM};
use crate::wait;

/// Dials one fixed address whatever the URI says.
#[derive(Clone, Copy, Debug)]
pub struct FixedConnector(pub SocketAddr);

impl tower::Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(TokioIo::new(s))
        })
    }
}

/// A pooled client (hyper-util's legacy client) to the proxy.
pub type Client = legacy::Client<FixedConnector, Full<Bytes>>;

/// HTTP/1.1 client with keep-alive, dialing `addr`.
pub fn http1(addr: SocketAddr) -> Client {
    legacy::Client::builder(TokioExecutor::new()).build(FixedConnector(addr))
}

/// HTTP/1.1 client of the control plane's API at `addr`. The API closes a connection that
/// stays idle for `api::IDLE_TIMEOUT`; a request written on it as it closes is reset, and a
/// `PUT` cannot be sent again. So the pool forgets a connection after half that time.
pub fn cp_api(addr: SocketAddr) -> Client {
    legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(outrider_control_plane::api::IDLE_TIMEOUT / 2)
        .build(FixedConnector(addr))
}

/// HTTP/2 prior-knowledge (h2c) client, dialing `addr`.
pub fn h2(addr: SocketAddr) -> Client {
    legacy::Client::builder(TokioExecutor::new()).http2_only(true).build(FixedConnector(addr))
}

/// A fully read response.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-upstream` header: which upstream answered.
    pub fn upstream(&self) -> Option<&str> {
        self.header(X_UPSTREAM)
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The upstream's JSON echo of the request.
    pub fn echo(&self) -> Echo {
        Echo::parse(&self.body)
    }

    /// Panic with the whole reply unless the status is `status`.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status.as_u16(), status, "unexpected reply: {self:?} body: {}", self.text());
        self
    }
}

/// Read a response to the end.
pub async fn read<B>(resp: http::Response<B>) -> Reply
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("read the response body").to_bytes();
    Reply { status: parts.status, version: parts.version, headers: parts.headers, body }
}

/// A request with a body (empty for GET-like use).
pub fn request(method: &str, uri: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder().method(method).uri(uri).body(Full::new(body.into())).expect("a valid request")
}

/// `GET uri`.
pub fn get(uri: &str) -> Request<Full<Bytes>> {
    request("GET", uri, Bytes::new())
}

/// Send on a pooled client and read the response, within the test deadline.
pub async fn send(client: &Client, req: Request<Full<Bytes>>) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    let resp = wait::within(&what, client.request(req)).await.unwrap_or_else(|e| panic!("{what} failed: {e:?}"));
    wait::within(&what, read(resp)).await
}

/// One HTTP/1.1 connection (no pool): every request goes over the same socket.
pub async fn h1_connection(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.expect("connect to the proxy");
    let (sender, conn) = http1::handshake(TokioIo::new(s)).await.expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

/// One HTTP/2 prior-knowledge connection.
pub async fn h2_connection(addr: SocketAddr) -> http2::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.expect("connect to the proxy");
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.expect("HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}

/// Send on one HTTP/1.1 connection and read the response, within the deadline.
pub async fn send_h1(sender: &mut http1::SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    wait::within(&what, sender.ready()).await.unwrap_or_else(|e| panic!("connection not ready for {what}: {e}"));
    let resp = wait::within(&what, sender.send_request(req)).await.unwrap_or_else(|e| panic!("{what} failed: {e}"));
    wait::within(&what, read(resp)).await
}

/// Origin-form request for a single HTTP/1.1 connection: `Host: authority`.
pub fn h1_get(authority: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header(http::header::HOST, authority)
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

/// A request body sent in pieces as they come, without `Content-Length`: chunked
/// on HTTP/1.1, DATA frames on HTTP/2.
pub type Streamed = StreamBody<BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>>;

/// A body of these chunks, in order.
pub fn streamed(chunks: Vec<Bytes>) -> Streamed {
    use futures_util::StreamExt;
    StreamBody::new(futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c)))).boxed())
}

/// `len` bytes (a repeating pattern, so a truncated or reordered copy differs) in
/// chunks of `chunk` bytes.
pub fn pattern(len: usize, chunk: usize) -> (Bytes, Vec<Bytes>) {
    let whole = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let chunks = (0..len).step_by(chunk.max(1)).map(|at| whole.slice(at..(at + chunk).min(len))).collect();
    (whole, chunks)
}

/// A body the test feeds as it goes: each `Bytes` sent is one chunk; dropping the
/// sender ends the body.
pub fn fed() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Streamed) {
    use futures_util::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    (tx, StreamBody::new(stream.map(|b| Ok(Frame::data(b))).boxed()))
}

/// `method http://AUTHORITY/PATH` with a streamed body on a new connection to `addr`
/// (HTTP/1.1 with `Host`, or HTTP/2 with prior knowledge), read within the deadline.
pub async fn send_streamed(addr: SocketAddr, http2: bool, method: &str, uri: &str, body: Streamed) -> Reply {
    let what = format!("{method} {uri} (streamed, {})", if http2 { "h2c" } else { "HTTP/1.1" });
    let uri: Uri = uri.parse().expect("a valid URI");
    let s = TcpStream::connect(addr).await.expect("connect to the proxy");
    let io = TokioIo::new(s);
    let resp = if http2 {
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io).await.expect("HTTP/2 handshake");
        tokio::spawn(conn);
        let req = Request::builder().method(method).uri(uri).body(body).expect("a valid request");
        wait::within(&what, sender.send_request(req)).await
    } else {
        let (mut sender, conn) = http1::handshake(io).await.expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        let authority = uri.authority().expect("an authority").to_string();
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
            .body(body)
            .expect("a valid request");
        wait::within(&what, sender.send_request(req)).await
    };
    let resp = resp.unwrap_or_else(|e| panic!("{what} failed: {e}"));
    wait::within(&what, read(resp)).await
}
