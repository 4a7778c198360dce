//! Options for the proxy's own upstream sockets: the mark that iptables rules exempt from
//! interception, and (node mode) the workload's network namespace they are created in, so a
//! workload's upstream connections leave from its own network.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpSocket;

use super::netns::Netns;

#[derive(Clone, Debug, Default)]
pub struct SocketOptions {
    /// `SO_MARK` (`--socket-mark`).
    pub mark: Option<u32>,
    /// Create sockets in this namespace (node mode: the workload's).
    pub netns: Option<Arc<Netns>>,
}

impl SocketOptions {
    pub fn marked(mark: Option<u32>) -> Self {
        Self { mark, netns: None }
    }

    /// A TCP socket for a connection to `addr`, in the namespace, marked, without Nagle.
    pub fn tcp_socket(&self, addr: SocketAddr) -> io::Result<TcpSocket> {
        let make = || -> io::Result<TcpSocket> {
            let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
            socket.set_nodelay(true)?;
            if let Some(mark) = self.mark {
                socket2::SockRef::from(&socket).set_mark(mark)?;
            }
            Ok(socket)
        };
        match &self.netns {
            None => make(),
            Some(ns) => ns.run(make)?,
        }
    }
}
