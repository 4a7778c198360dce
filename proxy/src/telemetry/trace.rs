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

/// Tracing configuration from the `OTEL_*` environment variables.
pub mod config;
/// The batch exporter task on the control runtime: OTLP protobuf over gRPC.
pub mod export;
/// W3C Trace Context and B3 headers.
pub mod propagation;

pub use config::{Sampler, TraceConfig};
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
    sampler: Sampler,
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
    pub fn new(sampler: Sampler, queue_size: usize, batch: usize, metrics: Metrics) -> (Arc<Self>, SpanQueue) {
        let (tx, rx) = mpsc::channel(queue_size.max(1));
        let full = Arc::new(Notify::new());
        let batch = batch.clamp(1, queue_size.max(1));
        (Arc::new(Self { sampler, queue: tx, full: full.clone(), batch, metrics }), SpanQueue { rx, full })
    }

    /// Start the span of a request that arrived with `headers`: continue the
    /// caller's trace (W3C, else B3) or start a new one, and decide sampling.
    pub fn start(self: &Arc<Self>, headers: &HeaderMap, kind: SpanKind) -> Span {
        let parent = propagation::extract(headers);
        let (trace_id, parent_id, parent_sampled, trace_state, b3) = match parent {
            Some((p, decided)) => (p.trace_id, Some(p.span_id), decided.then_some(p.sampled), p.trace_state, p.b3),
            None => (new_trace_id(), None, None, None, B3Style::None),
        };
        let sampled = self.sampler.should_sample(parent_sampled, &trace_id);
        Span {
            cx: TraceCx {
                tracer: self.clone(),
                cx: SpanContext { trace_id, span_id: new_span_id(), sampled, trace_state, b3 },
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

    /// End the span now with these attributes; queued for export when sampled.
    pub fn end(self, http: HttpAttrs) {
        if !self.cx.cx.sampled {
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
        }
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
