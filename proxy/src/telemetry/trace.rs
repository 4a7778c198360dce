//! Distributed tracing: one span per proxied request on each side (outbound =
//! CLIENT, inbound = SERVER), one child span per try when a route retries, W3C
//! `traceparent` / `tracestate` propagation with B3 accepted, parent-based ratio
//! sampling, and export over OTLP/gRPC.
//!
//! The data path only fills a small [`SpanData`] (ids, times, `Arc`s it already
//! holds) and hands it to a bounded queue with `try_send`: a full queue drops the
//! span and counts it, it never waits. Turning spans into OTLP protobuf, batching
//! and the gRPC call happen in the exporter task on the control runtime
//! ([`export`]). With no OTLP endpoint configured there is no [`Tracer`] at all
//! and the request path pays one `Option` check.
//!
//! We use the `opentelemetry-proto` wire types with our own recorder rather than
//! the OpenTelemetry SDK: the SDK's span builder allocates a `Vec<KeyValue>` of
//! owned strings per span on the request path and its batch processor runs its own
//! thread; here attributes stay typed until the exporter formats them.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Version};
use tokio::sync::{Notify, mpsc};

use super::metrics::{Metrics, TraceDropLabels};
use crate::state::Store;

/// Tracing configuration from the `OTEL_*` environment variables.
pub mod config;
/// The batch exporter task on the control runtime: OTLP protobuf over gRPC.
pub mod export;
/// W3C Trace Context and B3 headers.
pub mod propagation;
/// OTLP/gRPC and OTLP/HTTP (protobuf), plain or TLS.
pub mod transport;

pub use config::{Pushed, Sampler, TraceConfig};
use propagation::B3Style;

/// Span kinds we produce (values as in OTLP's `SpanKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

/// Identifies a span and carries what propagates with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// The caller's `tracestate`, passed on unchanged.
    pub trace_state: Option<HeaderValue>,
    /// How the caller spoke B3, so the next hop hears it the same way.
    pub b3: B3Style,
}

/// Starts spans and queues finished ones for export. One per proxy.
#[derive(Debug)]
pub struct Tracer {
    /// From `OTEL_TRACES_SAMPLER`; a `Telemetry` policy in the snapshot replaces it.
    sampler: Sampler,
    /// Export the spans of failed requests that the sampler left out (`--trace-errors`).
    errors: bool,
    /// Where a pushed `Telemetry` policy is read from (one `ArcSwap` load per request).
    store: Option<Arc<Store>>,
    queue: mpsc::Sender<SpanData>,
    /// Wakes the exporter once a full batch is waiting. The exporter never waits
    /// on the channel itself, so a span push is a few atomics, not a thread wake-up.
    full: Arc<Notify>,
    batch: usize,
    metrics: Metrics,
}

/// The exporter's end of the span queue.
#[derive(Debug)]
pub struct SpanQueue {
    pub rx: mpsc::Receiver<SpanData>,
    pub full: Arc<Notify>,
}

impl Tracer {
    /// A tracer and the receiving end of its queue (for [`export::Exporter`]):
    /// at most `queue_size` spans wait; the exporter is woken per `batch`.
    /// `store`: the snapshot a pushed `Telemetry` policy is read from (`None`:
    /// the environment's sampler and `errors` only).
    pub fn new(
        sampler: Sampler,
        errors: bool,
        store: Option<Arc<Store>>,
        queue_size: usize,
        batch: usize,
        metrics: Metrics,
    ) -> (Arc<Self>, SpanQueue) {
        let (tx, rx) = mpsc::channel(queue_size.max(1));
        let full = Arc::new(Notify::new());
        let batch = batch.clamp(1, queue_size.max(1));
        let tracer = Self { sampler, errors, store, queue: tx, full: full.clone(), batch, metrics };
        (Arc::new(tracer), SpanQueue { rx, full })
    }

    /// The sampler and error recording in force: the pushed `Telemetry` policy's
    /// where it sets them, else the environment's.
    fn policy(&self) -> (Sampler, bool) {
        let pushed = self.store.as_ref().and_then(|s| s.load().tracing);
        match pushed {
            None => (self.sampler, self.errors),
            Some(p) => (p.sampler().unwrap_or(self.sampler), p.errors.unwrap_or(self.errors)),
        }
    }

    /// Start the span of a request that arrived with `headers`: continue the
    /// caller's trace (W3C, else B3) or start a new one, and decide sampling.
    pub fn start(self: &Arc<Self>, headers: &HeaderMap, kind: SpanKind) -> Span {
        let parent = propagation::extract(headers);
        let (trace_id, parent_id, parent_sampled, trace_state, b3) = match parent {
            Some((p, decided)) => (p.trace_id, Some(p.span_id), decided.then_some(p.sampled), p.trace_state, p.b3),
            None => (new_trace_id(), None, None, None, B3Style::None),
        };
        let (sampler, errors) = self.policy();
        let sampled = sampler.should_sample(parent_sampled, &trace_id);
        Span {
            cx: TraceCx {
                tracer: self.clone(),
                cx: SpanContext { trace_id, span_id: new_span_id(), sampled, trace_state, b3 },
                errors: errors && !sampled,
            },
            parent: parent_id,
            kind,
            start: now_unix_nanos(),
        }
    }

    fn submit(&self, span: SpanData) {
        let res = self.queue.try_send(span);
        if self.queue.max_capacity() - self.queue.capacity() >= self.batch {
            self.full.notify_one();
        }
        if let Err(e) = res {
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "queue-full",
                mpsc::error::TrySendError::Closed(_) => "exporter-stopped",
            };
            self.metrics.trace_spans_dropped.get_or_create(&TraceDropLabels { reason }).inc();
        }
    }
}

/// A span's context plus the tracer, for propagating it and starting children.
#[derive(Clone)]
pub struct TraceCx {
    tracer: Arc<Tracer>,
    cx: SpanContext,
    /// Not sampled, but a span of this trace that fails is exported anyway.
    errors: bool,
}

impl std::fmt::Debug for TraceCx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TraceCx").field(&self.cx).finish()
    }
}

impl TraceCx {
    pub fn context(&self) -> &SpanContext {
        &self.cx
    }

    /// Write this span as the parent of the next hop: `traceparent`, the caller's
    /// `tracestate`, and B3 headers rewritten when the caller sent B3.
    pub fn inject(&self, headers: &mut HeaderMap) {
        propagation::inject(&self.cx, headers);
    }

    /// A child span of this one, starting now.
    pub fn child(&self, kind: SpanKind) -> Span {
        let mut cx = self.clone();
        cx.cx.span_id = new_span_id();
        Span { cx, parent: Some(self.cx.span_id), kind, start: now_unix_nanos() }
    }
}

/// A span being timed. Dropping it without [`Span::end`] records nothing.
#[derive(Debug)]
pub struct Span {
    cx: TraceCx,
    parent: Option<[u8; 8]>,
    kind: SpanKind,
    start: u64,
}

impl Span {
    pub fn context(&self) -> &TraceCx {
        &self.cx
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.cx.cx.trace_id
    }

    pub fn is_sampled(&self) -> bool {
        self.cx.cx.sampled
    }

    /// Whether ending this span may export it: sampled, or recording errors.
    pub fn may_export(&self) -> bool {
        self.cx.cx.sampled || self.cx.errors
    }

    /// End the span now with these attributes; queued for export when sampled,
    /// or when it failed and errors are recorded (marked `sampled_reason=error`).
    /// The flag propagated to the next hop stays what the sampler decided.
    pub fn end(self, http: HttpAttrs) {
        let error_only = !self.cx.cx.sampled;
        if error_only && !(self.cx.errors && http.failed(self.kind)) {
            return;
        }
        let data = SpanData {
            trace_id: self.cx.cx.trace_id,
            span_id: self.cx.cx.span_id,
            parent: self.parent,
            trace_state: self.cx.cx.trace_state.clone(),
            kind: self.kind,
            start: self.start,
            end: now_unix_nanos().max(self.start),
            http,
            error_only,
        };
        self.cx.tracer.submit(data);
    }
}

/// What a request (or one try of it) did, kept typed until export.
#[derive(Clone, Debug)]
pub struct HttpAttrs {
    pub method: Method,
    pub version: Version,
    /// The route name (`http.route`).
    pub route: Option<Arc<str>>,
    /// The destination service (outbound) or the local service (inbound).
    pub service: Option<Arc<str>>,
    pub authority: Option<Authority>,
    pub path: Option<PathAndQuery>,
    /// Status sent downstream (0: the caller went away first).
    pub status: u16,
    /// Why the proxy answered itself, if it did.
    pub local_reply: Option<&'static str>,
    /// The endpoint the request went to.
    pub upstream: Option<SocketAddr>,
    /// The caller (inbound spans).
    pub client: Option<SocketAddr>,
    /// Tries sent upstream (outbound request spans).
    pub attempts: u32,
    /// Which try this is (attempt spans).
    pub attempt: Option<u32>,
    /// `grpc-status` of the response (headers of a trailers-only reply, or trailers).
    pub grpc_status: Option<u32>,
    /// The response body ended early (reset or error after the headers).
    pub incomplete: bool,
    /// Node mode: the served workload (`NAMESPACE/SERVICE_ACCOUNT`): the caller on outbound
    /// spans, the callee on inbound ones (`outrider.workload`).
    pub workload: Option<Arc<str>>,
    /// The caller's verified SPIFFE ID (inbound spans over mTLS or HBONE).
    pub peer: Option<crate::tls::Identity>,
}

impl HttpAttrs {
    /// Attributes of one try: method, try number, endpoint, and its answer or failure.
    pub fn attempt(
        method: Method,
        attempt: u32,
        upstream: Option<SocketAddr>,
        status: u16,
        error: Option<&'static str>,
    ) -> Self {
        Self {
            method,
            version: Version::HTTP_11,
            route: None,
            service: None,
            authority: None,
            path: None,
            status,
            local_reply: error,
            upstream,
            client: None,
            attempts: 0,
            attempt: Some(attempt),
            grpc_status: None,
            incomplete: false,
            workload: None,
            peer: None,
        }
    }

    /// The span's status is an error, as the semantic conventions put it: 5xx
    /// (servers), 4xx and 5xx (clients), no status at all, a failed try, a gRPC
    /// error status (any for clients; for servers the server-side codes), or a
    /// response cut short.
    pub fn is_error(&self, kind: SpanKind) -> bool {
        self.status == 0
            || self.status >= 500
            || (kind == SpanKind::Client && self.status >= 400)
            || (self.attempt.is_some() && self.local_reply.is_some())
            || self.grpc_status.is_some_and(|c| grpc_is_error(c, kind))
            || self.incomplete
    }

    /// The request failed, for error recording of unsampled traces: no answer,
    /// 5xx, a local reply, a gRPC error, or a reset. Unlike [`Self::is_error`] a
    /// client's 4xx is not a failure here (it is the caller's own mistake and
    /// would flood the collector).
    pub fn failed(&self, kind: SpanKind) -> bool {
        self.status == 0
            || self.status >= 500
            || self.local_reply.is_some()
            || self.grpc_status.is_some_and(|c| grpc_is_error(c, kind))
            || self.incomplete
    }
}

/// gRPC codes that make a span an error (OpenTelemetry RPC conventions): every
/// non-OK code for clients; UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE and DATA_LOSS for servers.
fn grpc_is_error(code: u32, kind: SpanKind) -> bool {
    match kind {
        SpanKind::Client => code != 0,
        SpanKind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// A finished span, as queued for the exporter.
#[derive(Debug)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub trace_state: Option<HeaderValue>,
    pub kind: SpanKind,
    pub start: u64,
    pub end: u64,
    pub http: HttpAttrs,
    /// Not sampled: exported only because it failed (`outrider.sampled_reason=error`).
    pub error_only: bool,
}

fn now_unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn new_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// Lower-case hex of `bytes` into `out` (twice as long).
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// A trace id as 32 lower-case hex digits (the access log's `trace_id`).
pub fn trace_id_hex(id: &[u8; 16]) -> String {
    let mut buf = [0u8; 32];
    hex_into(id, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests;
