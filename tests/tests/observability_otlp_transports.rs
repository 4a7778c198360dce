//! Span export over every OTLP transport the proxy speaks: gRPC and HTTP/protobuf,
//! plain and TLS. The receivers are real servers on 127.0.0.1 decoding the
//! `opentelemetry-proto` messages; the TLS ones use a certificate from a CA made
//! here, which the proxy trusts through `OTEL_EXPORTER_OTLP_CERTIFICATE`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use outrider_proxy::telemetry::trace::TraceConfig;
use outrider_tests::ProxyHarness;
use outrider_tests::harness::TempDir;
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream;
use outrider_tests::wait::wait_until;
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::task::AbortHandle;

/// What a receiver got: spans, and the request line and headers of each export.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
}

impl Received {
    fn keep(&self, req: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    fn paths(&self) -> Vec<String> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| s.attributes.iter().find(|a| a.key == "url.path"))
            .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = req.metadata().clone().into_headers();
        self.requests.lock().unwrap().push(("grpc".into(), headers));
        self.keep(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// OTLP/HTTP: `POST /v1/traces` with a protobuf body.
async fn http_export(
    rx: Received,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let line = format!("{} {}", req.method(), req.uri().path());
    let headers = req.headers().clone();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let ok = line == "POST /v1/traces"
        && headers.get("content-type").is_some_and(|v| v == "application/x-protobuf")
        && ExportTraceServiceRequest::decode(body.clone()).map(|r| rx.keep(r)).is_ok();
    rx.requests.lock().unwrap().push((line, headers));
    let resp = if ok {
        http::Response::builder()
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(ExportTraceServiceResponse::default().encode_to_vec())))
    } else {
        http::Response::builder().status(400).body(Full::new(Bytes::new()))
    };
    Ok(resp.unwrap())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Grpc,
    Http,
}

struct Receiver {
    addr: SocketAddr,
    got: Received,
    task: AbortHandle,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A receiver of `kind`, over TLS with `tls`.
async fn receiver(kind: Kind, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Received::default();
    let rx = got.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (rx, tls) = (rx.clone(), tls.clone());
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let grpc = hyper_util::service::TowerToHyperService::new(TraceServiceServer::new(rx.clone()));
                let http = hyper::service::service_fn(move |req| http_export(rx.clone(), req));
                macro_rules! serve {
                    ($io:expr) => {
                        match kind {
                            Kind::Grpc => drop(builder.serve_connection($io, grpc).await),
                            Kind::Http => drop(builder.serve_connection($io, http).await),
                        }
                    };
                }
                match tls {
                    None => serve!(hyper_util::rt::TokioIo::new(tcp)),
                    Some(cfg) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else { return };
                        serve!(hyper_util::rt::TokioIo::new(stream))
                    }
                }
            });
        }
    })
    .abort_handle();
    Receiver { addr, got, task }
}

/// A CA (its PEM) and a server config for 127.0.0.1 signed by it.
fn test_pki() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca_pem, Arc::new(cfg))
}

/// The proxy's tracing config from OTEL_* variables, as the binary reads them.
fn from_env(vars: &[(&str, &str)]) -> TraceConfig {
    let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut t = TraceConfig::from_lookup(|k| m.get(k).cloned(), "proxy").unwrap().expect("tracing on");
    t.delay = std::time::Duration::from_millis(50);
    t
}

/// Two requests through a proxy exporting with `cfg` arrive at `rx`.
async fn spans_arrive(rx: &Receiver, cfg: TraceConfig) {
    let up = upstream::http1().name("echo").start().await;
    let proxy =
        ProxyHarness::start_configured(&docs(&[service("echo").endpoint(up.addr).yaml()]), |c| c.tracing = Some(cfg))
            .await;
    proxy.get("http://echo:8080/one").await.assert_status(200);
    proxy.get("http://echo:8080/two").await.assert_status(200);
    wait_until("2 spans at the receiver", || async { rx.got.paths().len() >= 2 }).await;
    let mut paths = rx.got.paths();
    paths.sort();
    assert_eq!(paths, ["/one", "/two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_over_otlp_http_protobuf() {
    let rx = receiver(Kind::Http, None).await;
    let base = format!("http://{}", rx.addr);
    let cfg = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &base),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret"),
    ]);
    assert_eq!(cfg.endpoint, format!("{base}/v1/traces"));
    spans_arrive(&rx, cfg).await;
    let requests = rx.got.requests.lock().unwrap().clone();
    assert!(requests.iter().all(|(line, h)| line == "POST /v1/traces" && h["x-api-key"] == "secret"), "{requests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_over_otlp_http_protobuf_with_tls() {
    let (ca_pem, server) = test_pki();
    let dir = TempDir::new("otlp-ca");
    let ca = dir.write("ca.pem", &ca_pem);
    let rx = receiver(Kind::Http, Some(server)).await;
    let cfg = from_env(&[
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &format!("https://{}/v1/traces", rx.addr)),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.to_str().unwrap()),
    ]);
    assert!(cfg.tls.is_some());
    spans_arrive(&rx, cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_over_otlp_grpc_with_tls() {
    let (ca_pem, server) = test_pki();
    let dir = TempDir::new("otlp-ca");
    let ca = dir.write("ca.pem", &ca_pem);
    let rx = receiver(Kind::Grpc, Some(server)).await;
    let cfg = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("https://{}", rx.addr)),
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca.to_str().unwrap()),
    ]);
    spans_arrive(&rx, cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_with_a_certificate_from_another_ca_gets_nothing() {
    let (_, server) = test_pki();
    let (other_ca, _) = test_pki();
    let dir = TempDir::new("otlp-ca");
    let ca = dir.write("ca.pem", &other_ca);
    let rx = receiver(Kind::Http, Some(server)).await;
    let cfg = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("https://{}", rx.addr)),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.to_str().unwrap()),
    ]);
    let up = upstream::http1().name("echo").start().await;
    let proxy =
        ProxyHarness::start_configured(&docs(&[service("echo").endpoint(up.addr).yaml()]), |c| c.tracing = Some(cfg))
            .await;
    proxy.get("http://echo:8080/one").await.assert_status(200);
    let m = outrider_tests::wait::wait_for("the failed export to be counted", || async {
        let m = proxy.metrics().await;
        (outrider_tests::prom::sum(&m, "outrider_trace_spans_dropped_total", &[("reason", "export-failed")]) > 0.0)
            .then_some(m)
    })
    .await;
    assert_eq!(outrider_tests::prom::sum(&m, "outrider_trace_spans_exported_total", &[]), 0.0, "{m}");
    assert!(rx.got.requests.lock().unwrap().is_empty(), "the handshake failed: nothing was sent");
}
