//! HTTP: the body type, header hygiene, upstream pools, and serving a connection.

/// The one body type of the proxy: streamed from a peer, or a local reply.
pub mod body;
/// Upstream connection pools per endpoint: HTTP/1.1 keep-alive and HTTP/2 multiplexed.
pub mod client;
/// Forwarding one request to an endpoint: header hygiene, URI form, upgrades.
pub mod forward;
/// HTTP/2 frames and HPACK, our own (the layers of a server that holds no idle buffers).
pub mod h2;
/// The read side of downstream HTTP/2 in front of hyper: preface check, trailers guard.
pub mod h2_guard;
/// Hop-by-hop headers, `x-forwarded-for`, `x-request-id`.
pub mod headers;
/// What the first bytes of a downstream connection must be: HTTP/1.x or the HTTP/2 preface.
pub mod preface;
/// Serving a downstream connection (HTTP/1.1 and HTTP/2) with drain support.
pub mod server;
/// HTTP/1.1 upgrades (WebSocket) spliced through.
pub mod upgrade;

pub use body::Body;
