use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Bind a TCP listener (port 0 picks a free port; the caller logs the result). An IPv6
/// address listens for IPv4 too (IPv4-mapped), except with [`bind_v6_only`].
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind_with(addr, false)
}

/// Bind an IPv6 listener for IPv6 only, beside an IPv4 one on the same port.
pub fn bind_v6_only(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind_with(addr, true)
}

fn bind_with(addr: SocketAddr, v6_only: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6_only)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Options for accepted connections.
pub fn accepted(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}
