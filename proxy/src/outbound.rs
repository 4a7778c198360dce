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
    pub async fn serve(self: Arc<Self>, stream: TcpStream, client: SocketAddr, drain: drain::Signal) {
        let dst = orig_dst::original_dst(&stream);
        let target = dst.and_then(|d| self.store.load().outbound.lookup(d).cloned());
        match (dst, target) {
            (Some(_), Some(Target::Tcp(cluster))) => tcp::to_cluster(&self, stream, client, &cluster).await,
            (Some(d), Some(Target::Http(_))) => http::serve(self, stream, client, Some(d), drain).await,
            (Some(d), None) => tcp::passthrough(&self, stream, client, d).await,
            (None, _) => match detect::detect(&stream, detect::DETECT_TIMEOUT).await {
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
