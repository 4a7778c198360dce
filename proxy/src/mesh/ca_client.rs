//! A small HTTP(S)/1.1 client for the control plane's CA endpoints.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{CaRoots, MeshError};

/// Each call to the CA must finish within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: usize = 1 << 20;

/// The CA's answer to an issuance.
#[derive(Debug)]
pub struct Issued {
    /// Leaf first.
    pub chain: Vec<String>,
    pub trust_bundle: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleAnswer {
    trust_domain: String,
    roots: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IssueAnswer {
    certificate_chain: Vec<String>,
    #[serde(default)]
    trust_bundle: Vec<String>,
}

/// The control plane's API at `base` (`http://…` or, with roots, `https://…`).
#[derive(Clone)]
pub struct CaClient {
    base: Uri,
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient").field("base", &self.base).field("tls", &self.tls.is_some()).finish()
    }
}

impl CaClient {
    pub fn new(base: Uri, roots: Option<&CaRoots>) -> Result<Self, MeshError> {
        let fail = |reason: String| MeshError::Ca { ca: base.to_string(), reason };
        let tls = match (base.scheme_str(), roots) {
            (Some("http"), _) => None,
            (Some("https"), Some(roots)) => {
                let (pem, source) = match roots {
                    CaRoots::File(path) => (
                        std::fs::read(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?,
                        path.display().to_string(),
                    ),
                    CaRoots::Pem(text) => (text.as_bytes().to_vec(), "--ca-root-pem".to_owned()),
                };
                let mut store = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| fail(format!("{source}: {e}")))?;
                    store.add(cert).map_err(|e| fail(format!("{source}: {e}")))?;
                }
                if store.is_empty() {
                    return Err(fail(format!("{source}: no PEM CERTIFICATE in it")));
                }
                let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(|e| fail(e.to_string()))?
                    .with_root_certificates(store)
                    .with_no_client_auth();
                Some(TlsConnector::from(Arc::new(config)))
            }
            (Some("https"), None) => {
                return Err(fail("an https CA address needs --ca-root FILE (or --ca-root-pem PEM)".into()));
            }
            _ => return Err(fail("the CA address must be http://HOST:PORT or https://HOST:PORT".into())),
        };
        if base.authority().is_none() {
            return Err(fail("the CA address has no host".into()));
        }
        Ok(Self { base, tls })
    }

    /// Whether requests go in clear (`http://`).
    pub fn is_plaintext(&self) -> bool {
        self.tls.is_none()
    }

    /// Trust domain and roots.
    pub async fn bundle(&self) -> Result<(String, Vec<String>), MeshError> {
        let body = self.call(Method::GET, "/v1/ca/bundle", None, None).await?;
        let answer: BundleAnswer = serde_json::from_slice(&body).map_err(|e| self.fail(format!("bad bundle: {e}")))?;
        Ok((answer.trust_domain, answer.roots))
    }

    /// First certificate, authenticated by the join token.
    pub async fn issue(&self, csr_pem: &str, token: &str) -> Result<Issued, MeshError> {
        let body = json!({ "csr": csr_pem });
        self.certificates(body, Some(token)).await
    }

    /// Renewal, authenticated by the current chain and a signature over the new CSR.
    pub async fn renew(&self, csr_pem: &str, chain: &[String], signature: &[u8]) -> Result<Issued, MeshError> {
        let hex: String = signature.iter().map(|b| format!("{b:02x}")).collect();
        let body = json!({ "csr": csr_pem, "renewal": { "certificateChain": chain, "signature": hex } });
        self.certificates(body, None).await
    }

    /// A certificate for a workload this node serves, authenticated by the node's current chain
    /// and its signature over the CSR (node mode).
    pub async fn issue_for_node(
        &self,
        csr_pem: &str,
        node_chain: &[String],
        signature: &[u8],
    ) -> Result<Issued, MeshError> {
        let hex: String = signature.iter().map(|b| format!("{b:02x}")).collect();
        let body = json!({ "csr": csr_pem, "node": { "certificateChain": node_chain, "signature": hex } });
        self.certificates(body, None).await
    }

    async fn certificates(&self, body: serde_json::Value, token: Option<&str>) -> Result<Issued, MeshError> {
        let answer = self.call(Method::POST, "/v1/certificates", Some(body.to_string()), token).await?;
        let answer: IssueAnswer =
            serde_json::from_slice(&answer).map_err(|e| self.fail(format!("bad issuance answer: {e}")))?;
        Ok(Issued { chain: answer.certificate_chain, trust_bundle: answer.trust_bundle })
    }

    fn fail(&self, reason: String) -> MeshError {
        MeshError::Ca { ca: self.base.to_string(), reason }
    }

    /// One request, answered within [`CALL_TIMEOUT`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> Result<Bytes, MeshError> {
        tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, body, token))
            .await
            .unwrap_or_else(|_| Err(self.fail(format!("{path}: no answer within {CALL_TIMEOUT:?}"))))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> Result<Bytes, MeshError> {
        let authority = self.base.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let host = self.base.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = self.base.port_u16().unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| self.fail(format!("connect to {authority} failed: {e}; is the control plane running?")))?;
        let mut req = Request::builder().method(method).uri(path).header(header::HOST, &authority);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.fail(format!("cannot build the request: {e}")))?;
        let resp = match &self.tls {
            None => send(TokioIo::new(tcp), req).await,
            Some(connector) => {
                let name =
                    ServerName::try_from(host.clone()).map_err(|e| self.fail(format!("bad host {host}: {e}")))?;
                let stream =
                    connector.connect(name, tcp).await.map_err(|e| self.fail(format!("TLS handshake failed: {e}")))?;
                send(TokioIo::new(stream), req).await
            }
        }
        .map_err(|e| self.fail(format!("{path}: {e}")))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| self.fail(format!("{path}: reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(self.fail(format!("{path}: {status}: {message}")));
        }
        Ok(bytes)
    }
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await
}
