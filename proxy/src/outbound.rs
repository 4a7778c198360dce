//! Outbound: connections from the local application to other services.
//!
//! A redirected connection is matched by its original destination first: a TCP
//! service is proxied as bytes, an HTTP service is served as HTTP, and anything
//! else passes through untouched (like Istio's ALLOW_ANY). A connection made
//! straight to the outbound port must be HTTP and is routed by its authority.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::drain;
use crate::http::client::ConnectConfig;
use crate::http::server::HttpServer;
use crate::state::{Store, Target};
use crate::telemetry::access::Recorder;
use crate::transport::{detect, orig_dst};

/// HTTP routing and forwarding.
pub mod http;
/// Choosing an endpoint per attempt (breakers, ejections, fallback) and reporting the outcome.
pub mod pick;
/// The tower stack below the router: balance → endpoint.
pub mod stack;
/// Opaque TCP proxying.
pub mod tcp;

/// A redirected connection's original destination, as its task needs it.
enum Dst {
    /// A TCP service.
    Tcp(Arc<crate::state::Cluster>),
    /// An HTTP service's address.
    Http(SocketAddr),
    /// No service: passed through as it is.
    Passthrough(SocketAddr),
}

/// What every outbound connection shares.
#[derive(Debug)]
pub struct Outbound {
    pub store: Arc<Store>,
    pub recorder: Arc<Recorder>,
    pub server: HttpServer,
    /// Mark and (node mode) namespace of upstream sockets.
    pub socket: crate::transport::socket::SocketOptions,
    /// This proxy's identity, once it has one.
    pub mesh: crate::mesh::MeshHandle,
}

impl Outbound {
    pub fn connect_config(&self, timeout: std::time::Duration) -> ConnectConfig {
        ConnectConfig { timeout, socket: self.socket.clone(), limits: None, idle_timeout: None, mesh: None }
    }

    /// Handle one accepted connection to the end.
    ///
    /// The returned future is the connection's task (see `app::accept_loop`): a connection's
    /// task is as large as its largest state, and a parked HTTP/1.1 connection holds nothing
    /// else, so every other branch (the TCP paths, detection) is boxed where it starts, and
    /// this is a function returning a future rather than an `async fn`, which would hold its
    /// arguments twice.
    pub fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        drain: drain::Signal,
    ) -> impl Future<Output = ()> + Send + 'static {
        // Only the TCP path keeps what the lookup found: an HTTP connection routes each request
        // against the snapshot of its time, and must not pin this one for its life.
        let dst = orig_dst::original_dst(&stream).map(|d| match self.store.load().outbound.lookup(d) {
            Some(Target::Tcp(cluster)) => Dst::Tcp(cluster.clone()),
            Some(Target::Http(_)) => Dst::Http(d),
            None => Dst::Passthrough(d),
        });
        async move {
            match dst {
                Some(Dst::Tcp(cluster)) => Box::pin(tcp::to_cluster(&self, stream, client, &cluster)).await,
                Some(Dst::Http(d)) => http::serve(self, stream, client, Some(d), drain).await,
                Some(Dst::Passthrough(d)) => Box::pin(tcp::passthrough(&self, stream, client, d)).await,
                None => match Box::pin(detect::detect(&stream, detect::DETECT_TIMEOUT)).await {
                    Ok(detect::Detected::Http1 | detect::Detected::Http2) => {
                        http::serve(self, stream, client, None, drain).await
                    }
                    Ok(detect::Detected::Opaque) => tracing::info!(
                        %client,
                        "closing a non-HTTP connection made straight to the outbound port: \
                         opaque TCP is routed by original destination (use iptables interception)"
                    ),
                    Ok(detect::Detected::Closed) => {}
                    Err(e) => tracing::debug!(%client, error = %e, "protocol detection failed"),
                },
            }
        }
    }
}
