//! TCP + TLS for gRPC channels to `https://` endpoints (the xDS server, an OTLP collector):
//! tonic's own TLS feature would bring a second rustls setup; this uses the caller's config.

use std::future::Future;
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

/// tonic's connector for `https://` endpoints: TCP (no delay) then TLS with `config`.
#[derive(Clone, Debug)]
pub struct TlsConnector {
    pub config: Arc<rustls::ClientConfig>,
    /// What to check when the handshake fails.
    pub hint: &'static str,
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (tls, hint) = (self.config.clone(), self.hint);
        Box::pin(async move {
            let io_err = |m: String| std::io::Error::other(m);
            let host = uri.host().ok_or_else(|| io_err("the URL names no host".into()))?;
            let host = host.trim_matches(['[', ']']).to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(handshake(tls, &host, tcp, hint).await.map_err(io_err)?))
        })
    }
}
