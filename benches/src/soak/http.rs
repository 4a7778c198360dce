//! The request legs: HTTP/1.1 (a pool of keep-alive connections), h2 and unary gRPC (one h2
//! connection, as a gRPC channel) to the `soak` Service through the client sidecar. A request
//! passes when the whole answer came: 200 with the upstream's body; for gRPC `grpc-status: 0`
//! in the trailers.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::load::{self, Shared};
use crate::upstream;

/// The Service port the client sidecar is asked for.
pub const PORT: u16 = 9080;
pub const SERVICE: &str = "soak";
pub const LEGS: [&str; 3] = ["http1", "h2", "grpc"];

pub fn host() -> String {
    format!("{SERVICE}:{PORT}")
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1_connect(addr: SocketAddr) -> Result<H1> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// An h2 connection shared by many streams (a gRPC channel), replaced when it breaks.
pub type Channel<B> = Arc<tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<B>>>>;

/// The channel's connection, a new one when there is none or it broke.
pub async fn h2_sender<B>(addr: SocketAddr, channel: &Channel<B>) -> Result<hyper::client::conn::http2::SendRequest<B>>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut c = channel.lock().await;
    if let Some(s) = c.as_ref().filter(|s| !s.is_closed()) {
        return Ok(s.clone());
    }
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await?;
    tokio::spawn(conn);
    *c = Some(send.clone());
    Ok(send)
}

fn request(proto: &str, i: u64) -> Result<http::Request<Full<Bytes>>> {
    let b = http::Request::builder().header(http::header::HOST, host());
    Ok(match proto {
        "grpc" => b
            .method("POST")
            .uri(format!("http://{}{}", host(), upstream::GRPC_PATH))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::new(upstream::grpc_frame(64)))?,
        "h2" => b.uri(format!("http://{}/soak/h2/{i}", host())).body(Full::new(Bytes::new()))?,
        _ => b.uri(format!("/soak/h1/{i}")).body(Full::new(Bytes::new()))?,
    })
}

/// Check a whole answer: 200 with the upstream's body; for gRPC `grpc-status: 0` in the
/// trailers. A failure names the proxy's local reply, if it was one.
async fn check(resp: http::Response<hyper::body::Incoming>, grpc: bool) -> Result<()> {
    let status = resp.status();
    let header = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let local = header("x-outrider-local-reply").map(|l| format!(" ({l})")).unwrap_or_default();
    // A trailers-only gRPC answer (a local reply's) has its status in the headers.
    let header_code = header("grpc-status");
    let body = resp.into_body().collect().await.context("reading the body")?;
    if status != 200 {
        bail!("status {status}{local}");
    }
    if grpc {
        let trailer = body.trailers().and_then(|t| t.get("grpc-status")).and_then(|v| v.to_str().ok());
        let code = trailer.map(str::to_owned).or(header_code);
        if code.as_deref() != Some("0") {
            bail!("grpc-status {}{local}", code.as_deref().unwrap_or("missing"));
        }
    } else if body.to_bytes().len() != upstream::BODY_SIZE {
        bail!("a short body");
    }
    Ok(())
}

/// Idle HTTP/1.1 connections to the client sidecar.
type Pool = Arc<Mutex<Vec<H1>>>;

async fn one_h1(addr: SocketAddr, pool: Pool, i: u64) -> Result<()> {
    let idle = pool.lock().ok().and_then(|mut p| p.pop());
    let mut send = match idle {
        Some(s) if !s.is_closed() => s,
        _ => h1_connect(addr).await?,
    };
    send.ready().await?;
    let resp = send.send_request(request("http1", i)?).await?;
    check(resp, false).await?;
    if let Ok(mut p) = pool.lock() {
        p.push(send);
    }
    Ok(())
}

async fn one_h2(addr: SocketAddr, channel: Channel<Full<Bytes>>, proto: &'static str, i: u64) -> Result<()> {
    let mut send = h2_sender(addr, &channel).await?;
    send.ready().await?;
    let resp = send.send_request(request(proto, i)?).await?;
    check(resp, proto == "grpc").await
}

/// The control probe: HTTP/1.1 requests straight to the upstream at `rate`, not through the
/// mesh. When it is slow in the same seconds as the legs, this process or the machine stalled,
/// not the sidecars.
pub async fn direct(upstream: SocketAddr, rate: f64, (start, end): (Instant, Instant), acc: Shared) {
    let pool: Pool = Arc::default();
    load::fixed_rate(super::stalls::DIRECT, (rate, load::TIMEOUT), (start, end), acc, |i| {
        one_h1(upstream, pool.clone(), i)
    })
    .await
}

/// `rate` requests per second of `proto` (one of [`LEGS`]) until `end`.
pub async fn run(addr: SocketAddr, proto: &'static str, rate: u32, (start, end): (Instant, Instant), acc: Shared) {
    let pool: Pool = Arc::default();
    let channel: Channel<Full<Bytes>> = Arc::default();
    load::fixed_rate(proto, (f64::from(rate), load::TIMEOUT), (start, end), acc, |i| {
        let (pool, channel) = (pool.clone(), channel.clone());
        async move {
            match proto {
                "http1" => one_h1(addr, pool, i).await,
                _ => one_h2(addr, channel, proto, i).await,
            }
        }
    })
    .await
}
