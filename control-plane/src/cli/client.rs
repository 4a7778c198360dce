//! A small HTTP/1.1 client for the API.

use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;

/// The server's answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Send one request; errors are about reaching the server.
pub async fn send(
    server: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<Reply> {
    send_with_root(server, None, method, path, token, body).await
}

/// [`send`], where an `https://` server is reached over TLS 1.3, trusting the roots in
/// `ca_root`.
pub async fn send_with_root(
    server: &str,
    ca_root: Option<&Path>,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<Reply> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let mut req = Request::builder().method(method).uri(&url);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(b) = &body {
        let json = b.trim_start().starts_with('{');
        req = req.header(header::CONTENT_TYPE, if json { "application/json" } else { "application/yaml" });
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let unreachable = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("cannot reach the control plane at {server}: {e}; is it running? (--server / OUTRIDER_SERVER)")
    };
    let exchange = async {
        if url.starts_with("https://") {
            send_tls(req, ca_root).await
        } else {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            client.request(req).await.map_err(|e| unreachable(&e))
        }
    };
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{url}: no answer within 30s"))??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok(Reply { status, body: String::from_utf8_lossy(&bytes).into_owned() })
}

/// One request over its own TLS connection (the CLI sends one per run).
async fn send_tls(
    mut req: Request<Full<Bytes>>,
    ca_root: Option<&Path>,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let Some(ca_root) = ca_root else {
        anyhow::bail!(
            "an https:// server needs the root to trust: --ca-root FILE / OUTRIDER_CA_ROOT (the control plane's DATA_DIR/root.pem)"
        );
    };
    let pem = std::fs::read(ca_root).map_err(|e| anyhow::anyhow!("--ca-root {}: {e}", ca_root.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.map_err(|e| anyhow::anyhow!("--ca-root {}: {e}", ca_root.display()))?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(outrider_proxy::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    let uri = req.uri().clone();
    let host = uri.host().ok_or_else(|| anyhow::anyhow!("{uri}: no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let name = rustls::pki_types::ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())?;
    let tcp = tokio::net::TcpStream::connect((name.to_str().as_ref(), port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the control plane at {uri}: {e}; is it running?"))?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| anyhow::anyhow!("TLS with {uri} failed: {e}; is --ca-root the control plane's root?"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    if let Some(authority) = uri.authority()
        && let Ok(v) = authority.as_str().parse()
    {
        req.headers_mut().insert(header::HOST, v);
    }
    *req.uri_mut() = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse()?;
    Ok(sender.send_request(req).await?)
}
