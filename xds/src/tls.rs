//! TCP + TLS for gRPC channels to `https://` endpoints (the xDS server, an OTLP collector):
//! tonic's own TLS feature would bring a second rustls setup; this uses the caller's config.
//! Both connectors can record the local address of the connection they make ([`LocalAddr`]):
//! a sidecar registers that address (its pod IP) as its workload's.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A TLS handshake over `tcp` with `host` as the server name; `hint` ends the error message
/// (what the operator should check).
pub async fn handshake(
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
    hint: &str,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?} as a TLS server name: {e}"))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}: {e}; {hint}"))
}

/// Where a connector writes the local address of the last connection it made.
pub type LocalAddr = Arc<parking_lot::Mutex<Option<SocketAddr>>>;

/// TCP (no delay) to the URI's host and port (`default_port` when it has none).
async fn tcp(uri: &Uri, default_port: u16, local: Option<&LocalAddr>) -> std::io::Result<(String, TcpStream)> {
    let host = uri.host().ok_or_else(|| std::io::Error::other("the URL names no host"))?;
    let host = host.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(default_port);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    if let (Some(slot), Ok(addr)) = (local, tcp.local_addr()) {
        *slot.lock() = Some(addr);
    }
    Ok((host, tcp))
}

/// tonic's connector for `https://` endpoints: TCP (no delay) then TLS with `config`.
#[derive(Clone, Debug)]
pub struct TlsConnector {
    pub config: Arc<rustls::ClientConfig>,
    /// What to check when the handshake fails.
    pub hint: &'static str,
    /// Records the local address of each connection, if set.
    pub local: Option<LocalAddr>,
}

/// tonic's connector for `http://` endpoints: TCP (no delay), recording the local address.
#[derive(Clone, Debug)]
pub struct TcpConnector {
    pub local: LocalAddr,
}

impl tower::Service<Uri> for TcpConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let local = self.local.clone();
        Box::pin(async move { Ok(TokioIo::new(tcp(&uri, 80, Some(&local)).await?.1)) })
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (tls, hint, local) = (self.config.clone(), self.hint, self.local.clone());
        Box::pin(async move {
            let (host, tcp) = tcp(&uri, 443, local.as_ref()).await?;
            Ok(TokioIo::new(handshake(tls, &host, tcp, hint).await.map_err(std::io::Error::other)?))
        })
    }
}
