//! How an export reaches the collector: OTLP/gRPC (tonic) or OTLP/HTTP with a
//! protobuf body (a hyper HTTP/1.1 connection), each plain or over TLS
//! (tokio-rustls, ring). One TLS connector serves both, so `https://` needs no
//! TLS feature of tonic and no extra crate.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::TraceConfig;
use super::config::Protocol;

/// A collector's answer larger than this is not read (it is a few bytes normally).
const MAX_RESPONSE: usize = 64 * 1024;

/// Sends export requests, one at a time.
#[derive(Debug)]
pub enum Transport {
    Grpc(TraceServiceClient<Channel>),
    Http(HttpExporter),
}

impl Transport {
    /// The transport `cfg` asks for; connections are made on first use.
    pub fn new(cfg: &TraceConfig) -> Result<Self, String> {
        match cfg.protocol {
            Protocol::Grpc => {
                let endpoint = Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| e.to_string())?
                    .connect_timeout(cfg.timeout)
                    .timeout(cfg.timeout);
                let channel = match &cfg.tls {
                    Some(tls) => endpoint.connect_with_connector_lazy(outrider_xds::tls::TlsConnector {
                        config: tls.clone(),
                        hint: OTLP_TLS_HINT,
                        local: None,
                    }),
                    None => endpoint.connect_lazy(),
                };
                Ok(Self::Grpc(TraceServiceClient::new(channel)))
            }
            Protocol::HttpProtobuf => Ok(Self::Http(HttpExporter::new(cfg)?)),
        }
    }

    /// One export call; `Err` says why it failed, for the log.
    pub async fn export(
        &mut self,
        body: ExportTraceServiceRequest,
        cfg: &TraceConfig,
    ) -> Result<ExportTraceServiceResponse, String> {
        match self {
            Self::Grpc(client) => {
                let mut req = tonic::Request::new(body);
                for (k, v) in &cfg.headers {
                    if let (Ok(k), Ok(v)) = (
                        k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
                        v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
                    ) {
                        req.metadata_mut().insert(k, v);
                    }
                }
                req.set_timeout(cfg.timeout);
                match client.export(req).await {
                    Ok(resp) => Ok(resp.into_inner()),
                    Err(status) => Err(format!("{}: {}", status.code(), status.message())),
                }
            }
            Self::Http(http) => http.export(body).await,
        }
    }
}

/// OTLP/HTTP: `POST <endpoint>` with `Content-Type: application/x-protobuf`,
/// over one kept-alive HTTP/1.1 connection, reopened when it closes.
#[derive(Debug)]
pub struct HttpExporter {
    uri: Uri,
    host: String,
    port: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    conn: Option<http1::SendRequest<Full<Bytes>>>,
}

impl HttpExporter {
    fn new(cfg: &TraceConfig) -> Result<Self, String> {
        let uri: Uri = cfg.endpoint.parse().map_err(|e| format!("{e}"))?;
        let host = uri.host().ok_or("the URL names no host")?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(if cfg.tls.is_some() { 443 } else { 80 });
        let headers = cfg
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.parse::<HeaderName>().ok()?, v.parse::<HeaderValue>().ok()?)))
            .collect();
        Ok(Self { uri, host, port, headers, tls: cfg.tls.clone(), connect_timeout: cfg.timeout, conn: None })
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| format!("connect to {}:{} timed out", self.host, self.port))?
            .map_err(|e| format!("connect to {}:{}: {e}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some(tls) => handshake(TokioIo::new(tls_handshake(tls.clone(), &self.host, tcp).await?)).await,
        }
    }

    async fn export(&mut self, body: ExportTraceServiceRequest) -> Result<ExportTraceServiceResponse, String> {
        let mut conn = match self.conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        conn.ready().await.map_err(|e| format!("connection to the collector: {e}"))?;
        let mut req = Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(http::header::HOST, self.uri.authority().map(|a| a.as_str()).unwrap_or(&self.host))
            .body(Full::new(Bytes::from(body.encode_to_vec())))
            .map_err(|e| e.to_string())?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let resp = conn.send_request(req).await.map_err(|e| format!("POST {}: {e}", self.uri))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the collector's answer: {e}"))?
            .to_bytes();
        self.conn = Some(conn);
        if !status.is_success() {
            return Err(format!("HTTP {status}{}", retry_hint(status)));
        }
        // A collector may answer an empty body; a JSON one would not decode and is
        // taken as full success too.
        Ok(ExportTraceServiceResponse::decode(body).unwrap_or_default())
    }
}

fn retry_hint(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => " (is the endpoint the collector's OTLP/HTTP port, usually 4318, with /v1/traces?)",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => " (the collector does not take protobuf)",
        _ => "",
    }
}

async fn handshake<T>(io: TokioIo<T>) -> Result<http1::SendRequest<Full<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(io).await.map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "OTLP/HTTP connection ended");
        }
    });
    Ok(sender)
}

const OTLP_TLS_HINT: &str = "is OTEL_EXPORTER_OTLP_CERTIFICATE the collector's CA?";

async fn tls_handshake(
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    outrider_xds::tls::handshake(tls, host, tcp, OTLP_TLS_HINT).await
}

/// A rustls client config trusting the certificates in `pem` (all must parse),
/// offering `alpn`.
pub fn client_config(pem: &[u8], strict: bool, alpn: &[u8]) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        certs.push(cert.map_err(|e| format!("not a PEM certificate file: {e}"))?);
    }
    if strict {
        for c in certs {
            roots.add(c).map_err(|e| format!("unusable CA certificate: {e}"))?;
        }
    } else {
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err("it holds no usable certificate".into());
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}
