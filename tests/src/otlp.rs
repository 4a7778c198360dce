//! A trace collector for tests: an OTLP/gRPC receiver (tonic and the `opentelemetry-proto`
//! types) that keeps every span it is sent, with the `service.name` of the proxy that sent it.
//! It serves a listener the test binds, so it can sit in another network namespace.
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::task::AbortHandle;

/// OTLP's `SpanKind` values.
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;

/// A span as received.
#[derive(Clone, Debug)]
pub struct Got {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub span: Span,
}

impl Got {
    /// A string or integer attribute, as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
    pub fn id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    pub fn trace(&self) -> String {
        hex(&self.span.trace_id)
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).map(|v| match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("the span list");
        for rs in req.into_inner().resource_spans {
            let service = rs.resource.as_ref().and_then(|r| attr(&r.attributes, "service.name")).unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|span| Got { service: service.clone(), span }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A running collector; stops when dropped.
pub struct Collector {
    receiver: Receiver,
    task: AbortHandle,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// Serve OTLP/gRPC (HTTP/2 cleartext) on `listener`.
    pub fn serve(listener: tokio::net::TcpListener) -> Self {
        let receiver = Receiver::default();
        let svc = TraceServiceServer::new(receiver.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
                conns.spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
        .abort_handle();
        Self { receiver, task }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Got> {
        self.receiver.spans.lock().expect("the span list").clone()
    }
}
