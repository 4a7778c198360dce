//! HBONE: TCP connections tunnelled between proxies as HTTP/2 `CONNECT` streams inside mutual
//! TLS on port 15008, wire-compatible with Istio's ztunnel (see `docs/ambient.md`).
//!
//! - [`server`]: accepts the TLS connection on a workload's port 15008 with that workload's
//!   certificate, then checks each `CONNECT` (authority `IP:PORT`, the IP the client dialled,
//!   not one of the proxy's own ports) and hands the stream to the caller.
//! - [`client`]: one pooled TLS + HTTP/2 connection per (source identity, destination address,
//!   destination identity), many streams on it; the server's SAN must be the destination's.
//! - [`stream::Stream`]: one tunnelled connection as `AsyncRead + AsyncWrite`; a half-close is
//!   an empty DATA frame with END_STREAM.
//!
//! Both sides PING every [`PING_INTERVAL`] and drop a connection whose peer has not answered
//! within [`PING_TIMEOUT`].

/// The pooled client side.
pub mod client;
/// The 15008 server side.
pub mod server;
/// One tunnelled connection.
pub mod stream;
#[cfg(test)]
pub(crate) mod tests;

use std::time::Duration;

use http::HeaderName;

/// The tunnel port.
pub const PORT: u16 = 15008;
/// Ports a `CONNECT` may not target: the proxy's own (outbound, inbound, tunnel). 503.
pub const ILLEGAL_PORTS: [u16; 3] = [15001, 15006, PORT];
/// How often each side PINGs an HBONE connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// A PING unanswered for this long drops the connection.
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// The TLS handshake must finish within this, and then the HTTP/2 client preface.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 settings of both sides: per-stream and per-connection flow-control windows, frame
/// size, concurrent streams. The windows are limits, not allocations.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
pub const MAX_STREAMS: u32 = 1024;
/// Largest header block accepted (the `CONNECT` request is small).
pub const MAX_HEADER_LIST: u32 = 64 << 10;

/// `forwarded: for="<source ip:port>"` (RFC 7239).
pub static FORWARDED: HeaderName = http::header::FORWARDED;
/// W3C trace context: optional on receipt; sent when the client's `Target` carries one — the
/// proxy's tunnels carry that of the HTTP request that opens them (`http::client`), TCP
/// connections none. The receiver makes it the parent of the spans of requests in the tunnel
/// that bring no trace context of their own.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C baggage: optional on receipt; sent as the opening request's `baggage`, as above.
pub static BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// Errors of the HBONE client.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("HBONE connect to {0}: {1}")]
    Connect(std::net::SocketAddr, String),
    #[error("HBONE mTLS handshake with {0} failed: {1}")]
    Tls(std::net::SocketAddr, String),
    #[error("HBONE HTTP/2 handshake with {0} failed: {1}")]
    Handshake(std::net::SocketAddr, h2::Error),
    #[error("HBONE CONNECT to {target} via {via} failed: {error}")]
    Request { via: std::net::SocketAddr, target: std::net::SocketAddr, error: h2::Error },
    #[error("HBONE CONNECT to {target} via {via} was answered {status}")]
    Status { via: std::net::SocketAddr, target: std::net::SocketAddr, status: http::StatusCode },
}

/// `for="1.2.3.4:5"` / `for="[::1]:5"` (quoted: the value holds a colon).
pub fn forwarded_for(addr: std::net::SocketAddr) -> String {
    format!("for=\"{addr}\"")
}

/// The `for` address of a `forwarded` header, when it is an `IP:port` (or a bare IP, port 0).
pub fn parse_forwarded_for(value: &str) -> Option<std::net::SocketAddr> {
    let first = value.split(',').next()?;
    let item = first.split(';').map(str::trim).find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })?;
    let item = item.trim_matches('"');
    item.parse::<std::net::SocketAddr>()
        .ok()
        .or_else(|| item.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok().map(|ip| (ip, 0).into()))
}
