//! The batch exporter: drains the span queue on the control runtime, turns spans
//! into OTLP protobuf and sends them with `TraceService/Export` over gRPC, or as
//! an OTLP/HTTP protobuf POST ([`super::transport`]). One
//! export at a time; while one is slow or failing the queue fills and the data
//! path drops (and counts) spans instead of waiting. A failed batch is dropped
//! and counted, not retried: retrying would only hold more memory while the
//! collector is down.
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{self as otlp, ResourceSpans, ScopeSpans};
use tokio::sync::{mpsc, oneshot};

use super::transport::Transport;
use super::{SpanData, SpanKind, SpanQueue, TraceConfig};
use crate::telemetry::metrics::{Metrics, TraceDropLabels};

/// The semantic-conventions version our attribute names follow.
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

/// Owns the receiving end of the span queue; [`Exporter::run`] on the control runtime.
#[derive(Debug)]
pub struct Exporter {
    queue: SpanQueue,
    cfg: TraceConfig,
    metrics: Metrics,
    node_id: String,
}

impl Exporter {
    pub fn new(queue: SpanQueue, cfg: TraceConfig, metrics: Metrics, node_id: String) -> Self {
        Self { queue, cfg, metrics, node_id }
    }

    /// Export until every sender is gone or `flush` fires; on `flush`, send what
    /// is queued (one last time) and return.
    pub async fn run(mut self, mut flush: oneshot::Receiver<()>) {
        let mut client = match Transport::new(&self.cfg) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(endpoint = %self.cfg.endpoint, error = %e, "invalid OTLP endpoint; spans are dropped");
                return;
            }
        };
        let resource = self.resource();
        let max = self.cfg.max_batch.max(1);
        let mut batch: Vec<SpanData> = Vec::with_capacity(max);
        let mut healthy = true;
        tracing::info!(endpoint = %self.cfg.endpoint, service = %self.cfg.service_name,
            protocol = self.cfg.protocol.as_str(), tls = self.cfg.tls.is_some(), "exporting spans over OTLP");
        let full = self.queue.full.clone();
        loop {
            // A full batch waiting, the schedule delay, or shutdown. (Never a wait on
            // the channel: that would wake this thread for every span.)
            let mut flushing = false;
            let mut timer = false;
            tokio::select! {
                _ = full.notified() => {}
                _ = tokio::time::sleep(self.cfg.delay) => timer = true,
                _ = &mut flush => flushing = true,
            }
            // Send full batches; on the timer (or at the end) the partial one too.
            let mut closed = false;
            loop {
                while batch.len() < max {
                    match self.queue.rx.try_recv() {
                        Ok(s) => batch.push(s),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                let partial_too = timer || flushing || closed;
                let send = batch.len() >= max || (partial_too && !batch.is_empty());
                if !send {
                    break;
                }
                self.export(&mut client, &resource, &mut batch, &mut healthy).await;
            }
            if closed || flushing {
                return;
            }
        }
    }

    async fn export(&self, client: &mut Transport, resource: &Resource, batch: &mut Vec<SpanData>, healthy: &mut bool) {
        let n = batch.len() as u64;
        let spans: Vec<otlp::Span> = batch.drain(..).map(to_otlp).collect();
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "outrider-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: SCHEMA_URL.into(),
                }],
                schema_url: SCHEMA_URL.into(),
            }],
        };
        let call = client.export(body, &self.cfg);
        let failed = match tokio::time::timeout(self.cfg.timeout + Duration::from_millis(100), call).await {
            Ok(Ok(resp)) => {
                let rejected = resp.partial_success.as_ref().map_or(0, |p| p.rejected_spans.max(0) as u64);
                self.metrics.trace_spans_exported.inc_by(n.saturating_sub(rejected));
                if rejected > 0 {
                    self.drop_spans("rejected", rejected);
                }
                if !*healthy {
                    tracing::info!(endpoint = %self.cfg.endpoint, "span export works again");
                }
                *healthy = true;
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", self.cfg.timeout),
        };
        self.drop_spans("export-failed", n);
        if *healthy {
            tracing::warn!(endpoint = %self.cfg.endpoint, error = %failed, spans = n,
                "span export failed; dropping spans until the collector answers");
        } else {
            tracing::debug!(endpoint = %self.cfg.endpoint, error = %failed, spans = n, "span export failed");
        }
        *healthy = false;
    }

    fn drop_spans(&self, reason: &'static str, n: u64) {
        self.metrics.trace_spans_dropped.get_or_create(&TraceDropLabels { reason }).inc_by(n);
    }

    fn resource(&self) -> Resource {
        let mut attributes = vec![
            kv_str("service.name", self.cfg.service_name.clone()),
            kv_str("service.instance.id", self.node_id.clone()),
            kv_str("telemetry.sdk.name", "outrider".into()),
            kv_str("telemetry.sdk.language", "rust".into()),
            kv_str("telemetry.sdk.version", env!("CARGO_PKG_VERSION").into()),
        ];
        attributes.extend(self.cfg.resource.iter().map(|(k, v)| kv_str(k, v.clone())));
        Resource { attributes, ..Default::default() }
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn kv_str(key: &str, value: String) -> KeyValue {
    kv(key, any_value::Value::StringValue(value))
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// Split `host:port` (an authority) for `server.address` / `server.port`.
fn host_port(a: &http::uri::Authority) -> (&str, Option<u16>) {
    (a.host(), a.port_u16())
}

/// OTLP span from our record, with HTTP semantic-convention attributes.
pub fn to_otlp(s: SpanData) -> otlp::Span {
    let h = &s.http;
    let mut attrs = Vec::with_capacity(16);
    attrs.push(kv_str("http.request.method", h.method.as_str().to_string()));
    let version = match h.version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    };
    let route = h.route.as_deref().unwrap_or("");
    let name = match (h.attempt, route) {
        (Some(n), _) => format!("{} attempt {n}", h.method),
        (None, "") => h.method.to_string(),
        (None, r) => format!("{} {r}", h.method),
    };
    if h.attempt.is_none() {
        attrs.push(kv_str("network.protocol.version", version.into()));
        attrs.push(kv_str("url.scheme", "http".into()));
    }
    if !route.is_empty() {
        attrs.push(kv_str("http.route", route.to_string()));
    }
    if let Some(p) = &h.path {
        attrs.push(kv_str("url.path", p.path().to_string()));
    }
    if h.status != 0 {
        attrs.push(kv_int("http.response.status_code", i64::from(h.status)));
    }
    if let Some(a) = &h.authority {
        let (host, port) = host_port(a);
        attrs.push(kv_str("server.address", host.to_string()));
        if let Some(p) = port {
            attrs.push(kv_int("server.port", i64::from(p)));
        }
        if s.kind == SpanKind::Client
            && let Some(p) = &h.path
        {
            attrs.push(kv_str("url.full", format!("http://{a}{}", p.path())));
        }
    }
    if let Some(svc) = &h.service {
        let key = if s.kind == SpanKind::Client { "peer.service" } else { "outrider.service" };
        attrs.push(kv_str(key, svc.to_string()));
    }
    if let Some(c) = h.client {
        attrs.push(kv_str("client.address", c.ip().to_string()));
        attrs.push(kv_int("client.port", i64::from(c.port())));
    }
    if let Some(u) = h.upstream {
        attrs.push(kv_str("network.peer.address", u.ip().to_string()));
        attrs.push(kv_int("network.peer.port", i64::from(u.port())));
        attrs.push(kv_str("outrider.upstream", u.to_string()));
    }
    match h.attempt {
        Some(n) => {
            attrs.push(kv_int("outrider.attempt", i64::from(n)));
            if n > 1 {
                attrs.push(kv_int("http.request.resend_count", i64::from(n - 1)));
            }
        }
        None if s.kind == SpanKind::Client => {
            attrs.push(kv_int("outrider.attempts", i64::from(h.attempts)));
            attrs.push(kv_int("outrider.retries", i64::from(h.attempts.saturating_sub(1))));
        }
        None => {}
    }
    if let Some(w) = &h.workload {
        attrs.push(kv_str("outrider.workload", w.to_string()));
    }
    if let Some(p) = &h.peer {
        attrs.push(kv_str("outrider.peer_identity", p.as_str().to_string()));
    }
    if let Some(r) = h.local_reply {
        attrs.push(kv_str("outrider.local_reply", r.to_string()));
    }
    if let Some(c) = h.grpc_status {
        attrs.push(kv_int("rpc.grpc.status_code", i64::from(c)));
    }
    if h.incomplete {
        attrs.push(kv("outrider.response_complete", any_value::Value::BoolValue(false)));
    }
    if s.error_only {
        // The head sampler left this trace out; the span is here because it failed.
        attrs.push(kv_str("outrider.sampled_reason", "error".into()));
    }
    let status = if h.is_error(s.kind) {
        let error_type = match (h.local_reply, h.grpc_status) {
            (Some(r), _) => r.to_string(),
            (None, Some(c)) if c != 0 => format!("grpc-{c}"),
            _ if h.incomplete && h.status != 0 && h.status < 400 => "response-incomplete".to_string(),
            _ => h.status.to_string(),
        };
        attrs.push(kv_str("error.type", error_type.clone()));
        otlp::Status { code: otlp::status::StatusCode::Error as i32, message: error_type }
    } else {
        otlp::Status::default()
    };
    otlp::Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.trace_state.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("").to_string(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        // W3C flags: sampled (0x01, the trace's flag: clear on an error-only span);
        // bit 0x100 says whether the parent is remote known.
        flags: u32::from(!s.error_only)
            | 0x100
            | if s.parent.is_some() && s.http.attempt.is_none() { 0x200 } else { 0 },
        name,
        kind: match s.kind {
            SpanKind::Server => otlp::span::SpanKind::Server as i32,
            SpanKind::Client => otlp::span::SpanKind::Client as i32,
        },
        start_time_unix_nano: s.start,
        end_time_unix_nano: s.end,
        attributes: attrs,
        status: Some(status),
        ..Default::default()
    }
}
