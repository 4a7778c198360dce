//! The original destination of a connection redirected by iptables (`REDIRECT`
//! in the nat table). Behind socket2's safe wrapper; no `unsafe` here.
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Where the client meant to go, or `None` when the connection was not
/// redirected (the original destination is the listener itself).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let orig = match local {
        SocketAddr::V4(_) => sock.original_dst_v4().ok()?,
        SocketAddr::V6(_) => sock.original_dst_v6().or_else(|_| sock.original_dst_v4()).ok()?,
    };
    let orig = orig.as_socket()?;
    let orig = SocketAddr::new(orig.ip().to_canonical(), orig.port());
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    (orig != local).then_some(orig)
}
