//! The rollout's webhooks: a `POST` of a JSON body to an `http://` or `https://` URL, one
//! connection per call, bounded by the hook's timeout. `https://` servers are verified against
//! the system's trust store (`$SSL_CERT_FILE`, else the usual bundle paths).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use outrider_xds::policy::Webhook;
use rustls::pki_types::pem::PemObject as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The most of an answer's body that is read (and thrown away).
const MAX_ANSWER: usize = 64 << 10;

/// Where the system's CA bundle usually is.
const BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// `POST body` to the hook; the answer's status, or why there is none.
pub async fn post(hook: &Webhook, body: &serde_json::Value) -> Result<u16, String> {
    match tokio::time::timeout(hook.timeout, exchange(&hook.url, body)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}", outrider_xds::duration::format(hook.timeout))),
    }
}

async fn exchange(url: &str, body: &serde_json::Value) -> Result<u16, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("the URL names no host")?.trim_matches(['[', ']']).to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_else(|| host.clone());
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "outrider-rollout")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    if https {
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(client_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(TokioIo::new(tls), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
}

async fn send<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<u16, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let _ = Limited::new(response.into_body(), MAX_ANSWER).collect().await;
    Ok(status)
}

/// TLS 1.2/1.3 with the system's roots, built once.
fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let path = std::env::var("SSL_CERT_FILE")
                .ok()
                .or_else(|| BUNDLES.iter().find(|p| std::path::Path::new(p).exists()).map(|p| (*p).to_owned()))
                .ok_or("no system CA bundle found (set SSL_CERT_FILE)")?;
            let pem = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(format!("{path} holds no certificate"));
            }
            let config = rustls::ClientConfig::builder_with_provider(outrider_proxy::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// Notifications of one rollout, sent in order by a task of their own so that a slow receiver
/// never holds the rollout up; a failed one is logged and dropped.
#[derive(Clone, Debug)]
pub struct Notifier {
    tx: mpsc::Sender<serde_json::Value>,
}

/// Notifications waiting to be sent before new ones are dropped.
const QUEUE: usize = 64;

impl Notifier {
    /// Spawn the sending task (it ends when every [`Notifier`] is dropped).
    pub fn spawn(rollout: String, hook: Webhook) -> Self {
        let (tx, mut rx) = mpsc::channel::<serde_json::Value>(QUEUE);
        tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                match post(&hook, &body).await {
                    Ok(status) if (200..300).contains(&status) => {}
                    Ok(status) => tracing::warn!(%rollout, url = %hook.url, status, "rollout notification refused"),
                    Err(error) => {
                        tracing::warn!(%rollout, url = %hook.url, %error, "rollout notification not delivered")
                    }
                }
            }
        });
        Self { tx }
    }

    /// Queue one notification.
    pub fn send(&self, body: serde_json::Value) {
        if self.tx.try_send(body).is_err() {
            tracing::warn!("rollout notification queue full; one notification dropped");
        }
    }
}
