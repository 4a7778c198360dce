//! One record per request or connection. It is written exactly once — on
//! `finish`, or on drop when the caller went away first — and feeds both the
//! metrics and the access log, so the two always agree.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body as _, Frame};
use tokio::time::Instant;

use super::metrics::{
    Direction, DirectionLabels, DurationLabels, LocalReplyLabels, Metrics, SeriesCell, WorkloadLabel,
};
use super::trace::{self, HttpAttrs, Span, SpanKind, TraceCx, Tracer};
use crate::http::Body;
use crate::http::body::BodyError;
use crate::http::client::ConnectTime;

mod json;

/// Shared by every connection: where records go.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub metrics: Metrics,
    pub access_log: bool,
    /// Share of successful requests and connections that are logged (errors always are).
    pub access_log_sample: f64,
    /// Spans per request, when tracing is on.
    pub tracer: Option<Arc<Tracer>>,
    /// Node mode: the served workload (`NAMESPACE/SERVICE_ACCOUNT`) this recorder's requests
    /// and connections belong to; a label of the request metrics and a field of access logs.
    pub workload: Option<Arc<str>>,
}

impl Recorder {
    /// Access log on or off, every line kept, no tracing.
    pub fn new(metrics: Metrics, access_log: bool) -> Self {
        Self { metrics, access_log, access_log_sample: 1.0, tracer: None, workload: None }
    }

    /// The same recorder for one served workload (node mode).
    pub fn for_workload(&self, workload: &str) -> Self {
        Self { workload: Some(Arc::from(workload)), ..self.clone() }
    }

    /// Does this request or connection get an access-log line?
    fn log_this(&self, error: bool) -> bool {
        self.access_log
            // The log filter (`OUTRIDER_LOG=warn`) may drop the line anyway: then
            // skip the work of waiting for the body's end.
            && tracing::enabled!(target: "outrider::access", tracing::Level::INFO)
            && (error
                || self.access_log_sample >= 1.0
                || (self.access_log_sample > 0.0 && fastrand::f64() < self.access_log_sample))
    }
}

/// The `grpc-status` header or trailer, when present and numeric.
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get(&crate::policy::outcome::GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// Errors are always logged: no status (the caller left), 4xx, 5xx, or a local reply.
fn is_error(status: u16, local_reply: Option<&'static str>) -> bool {
    status == 0 || status >= 400 || local_reply.is_some()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What an HTTP request did, filled in as it goes.
#[derive(Debug)]
pub struct RequestRecord {
    recorder: Arc<Recorder>,
    start: Instant,
    pub direction: Direction,
    pub client: SocketAddr,
    pub method: http::Method,
    pub authority: Option<http::uri::Authority>,
    pub path: Option<http::uri::PathAndQuery>,
    pub version: http::Version,
    pub request_id: Option<http::HeaderValue>,
    pub service: Arc<str>,
    pub route: Arc<str>,
    /// The resolved request series of the route (see [`SeriesCell`]); `None`: family lookup.
    pub series: Option<Arc<SeriesCell>>,
    pub upstream: Option<SocketAddr>,
    /// Tries sent upstream (retries + 1); 0 when none was.
    pub attempts: u32,
    /// This request's span (tracing on).
    pub span: Option<Span>,
    /// The trace this request belongs to: its span's, or (tracing off) the caller's.
    pub trace_id: Option<[u8; 16]>,
    /// The request's `Content-Length`, when it sent one (access log on).
    pub request_bytes: Option<u64>,
    /// Time to open a new upstream connection (`None`: a pooled one was reused).
    pub connect: Option<Duration>,
    /// The caller's verified SPIFFE ID (inbound over mTLS).
    pub peer: Option<crate::tls::Identity>,
    /// Node mode: the workload on the other side (`NAMESPACE/SERVICE_ACCOUNT`), the
    /// `peer_workload` label: inbound the caller, outbound the meshed endpoint that answered.
    pub peer_workload: Option<Arc<str>>,
    /// `grpc-status` of the response, from its headers or trailers (span attribute).
    grpc_status: Option<u32>,
    done: bool,
}

/// Label used before routing decided (or when it could not).
pub fn unknown() -> Arc<str> {
    static UNKNOWN: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    UNKNOWN.get_or_init(|| Arc::from("unknown")).clone()
}

impl RequestRecord {
    pub fn start<B>(
        recorder: &Arc<Recorder>,
        direction: Direction,
        client: SocketAddr,
        req: &http::Request<B>,
    ) -> Self {
        let span = recorder.tracer.as_ref().map(|t| {
            let kind = match direction {
                Direction::outbound => SpanKind::Client,
                Direction::inbound => SpanKind::Server,
            };
            t.start(req.headers(), kind)
        });
        // Tracing off: the access log still names the caller's trace, if any.
        let log = recorder.access_log;
        let trace_id = span
            .as_ref()
            .map(Span::trace_id)
            .or_else(|| log.then(|| trace::propagation::trace_id(req.headers())).flatten());
        let request_bytes = log
            .then(|| req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()))
            .flatten();
        Self {
            recorder: recorder.clone(),
            start: Instant::now(),
            direction,
            client,
            method: req.method().clone(),
            authority: None,
            path: req.uri().path_and_query().cloned(),
            version: req.version(),
            request_id: None,
            service: unknown(),
            route: unknown(),
            series: None,
            upstream: None,
            attempts: 0,
            span,
            trace_id,
            request_bytes,
            connect: None,
            peer: None,
            peer_workload: None,
            grpc_status: None,
            done: false,
        }
    }

    /// The span to name as the next hop's parent (tracing on).
    pub fn trace_context(&self) -> Option<TraceCx> {
        self.span.as_ref().map(|s| s.context().clone())
    }

    /// Record the outcome without a response body to wait for: the status sent
    /// downstream and, for a local reply, why.
    pub fn finish(mut self, status: u16, local_reply: Option<&'static str>) {
        self.write(status, local_reply, true);
    }

    /// Record the outcome of `resp` (`status`: the code for metrics, which for a
    /// gRPC local reply is the HTTP equivalent). Metrics are counted now, at
    /// response headers; the access-log line and the span wait for the end of
    /// the body (total time, bytes) when either is wanted.
    pub fn respond(mut self, resp: Response<Body>, status: u16, local_reply: Option<&'static str>) -> Response<Body> {
        self.done = true;
        let first_byte = self.start.elapsed();
        self.count(status, first_byte, local_reply);
        let log = self.recorder.log_this(is_error(status, local_reply));
        // A span is ended at the body's end when it is sampled, and also when it
        // is not but errors are recorded: the body may still reset or end with a
        // gRPC error, and only then is it known whether to export it.
        if !log && !self.span.as_ref().is_some_and(Span::may_export) {
            return resp;
        }
        self.grpc_status = grpc_status(resp.headers());
        self.connect = resp.extensions().get::<ConnectTime>().map(|c| c.0);
        let tail = Tail { rec: self, status, local_reply, first_byte, log, bytes: 0 };
        if resp.body().is_end_stream() {
            tail.complete(true);
            return resp;
        }
        resp.map(|inner| Body::Recorded(Box::new(RecordedBody { inner, tail: Some(tail) })))
    }

    fn write(&mut self, status: u16, local_reply: Option<&'static str>, complete: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed();
        self.count(status, elapsed, local_reply);
        let log = self.recorder.log_this(is_error(status, local_reply));
        self.emit(status, local_reply, elapsed, elapsed, None, complete, log);
    }

    /// Metrics, at response headers.
    fn count(&self, status: u16, elapsed: Duration, local_reply: Option<&'static str>) {
        let m = &self.recorder.metrics;
        m.count_request(
            self.series.as_deref(),
            DurationLabels {
                direction: self.direction,
                service: self.service.clone(),
                workload: match &self.recorder.workload {
                    None => WorkloadLabel::default(),
                    w => WorkloadLabel { workload: w.clone(), peer: self.peer_workload.clone() },
                },
            },
            &self.route,
            status,
            elapsed.as_secs_f64(),
        );
        if let Some(reason) = local_reply {
            m.local_replies.get_or_create(&LocalReplyLabels { direction: self.direction, reason }).inc();
        }
    }

    /// The access-log line (when `log`) and the span, once the response is done.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        status: u16,
        local_reply: Option<&'static str>,
        first_byte: Duration,
        total: Duration,
        response_bytes: Option<u64>,
        complete: bool,
        log: bool,
    ) {
        if log {
            let o = json::Outcome { status, local_reply, first_byte, total, response_bytes, complete };
            if crate::telemetry::log::json_on_stdout() {
                json::write(self, &o);
            } else {
                self.log_with_tracing(&o);
            }
        }
        if let Some(span) = self.span.take() {
            span.end(HttpAttrs {
                method: self.method.clone(),
                version: self.version,
                route: Some(self.route.clone()),
                service: Some(self.service.clone()),
                authority: self.authority.take(),
                path: self.path.take(),
                status,
                local_reply,
                upstream: self.upstream,
                client: (self.direction == Direction::inbound).then_some(self.client),
                attempts: self.attempts,
                attempt: None,
                grpc_status: self.grpc_status,
                incomplete: !complete,
                workload: self.recorder.workload.clone(),
                peer: self.peer.take(),
            });
        }
    }
}

impl RequestRecord {
    /// The access-log line through `tracing` (text logs, or a subscriber this process did
    /// not install); [`json::write`] writes the same JSON line without it.
    fn log_with_tracing(&self, o: &json::Outcome) {
        let authority = self.authority.as_ref().map(|a| a.as_str()).unwrap_or("");
        let path = self.path.as_ref().map(|p| p.as_str()).unwrap_or("");
        let request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
        let upstream = self.upstream.map(|u| u.to_string());
        let trace_id = self.trace_id.as_ref().map(trace::trace_id_hex);
        tracing::info!(
            target: "outrider::access",
            kind = "http",
            direction = ?self.direction,
            client = %self.client,
            method = %self.method,
            authority,
            path,
            protocol = ?self.version,
            status = o.status,
            service = &*self.service,
            route = &*self.route,
            upstream = upstream.as_deref().unwrap_or(""),
            attempts = self.attempts,
            local_reply = o.local_reply.unwrap_or(""),
            request_id,
            trace_id = trace_id.as_deref().unwrap_or(""),
            connect_ms = self.connect.map(ms),
            first_byte_ms = ms(o.first_byte),
            duration_ms = ms(o.total),
            request_bytes = self.request_bytes,
            response_bytes = o.response_bytes,
            complete = o.complete,
            peer_identity = self.peer.as_ref().map_or("", |p| p.as_str()),
            workload = self.recorder.workload.as_deref().unwrap_or(""),
        );
    }
}

/// What is left to record once the response body has been sent.
#[derive(Debug)]
struct Tail {
    rec: RequestRecord,
    status: u16,
    local_reply: Option<&'static str>,
    first_byte: Duration,
    log: bool,
    bytes: u64,
}

impl Tail {
    fn complete(mut self, complete: bool) {
        let total = self.rec.start.elapsed();
        // A response cut short is an error: always logged.
        let log = self.log || (!complete && self.rec.recorder.access_log);
        let (status, reply, first, bytes) = (self.status, self.local_reply, self.first_byte, self.bytes);
        self.rec.emit(status, reply, first, total, Some(bytes), complete, log);
    }
}

/// A response body that counts its bytes and, at its end (or when dropped
/// early), writes the access-log line and ends the span.
#[derive(Debug)]
pub struct RecordedBody {
    inner: Body,
    tail: Option<Tail>,
}

impl RecordedBody {
    pub fn inner(&self) -> &Body {
        &self.inner
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(t) = self.tail.as_mut() {
                    if let Some(d) = f.data_ref() {
                        t.bytes += d.len() as u64;
                    } else if let Some(code) = f.trailers_ref().and_then(grpc_status) {
                        t.rec.grpc_status = Some(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(t) = self.tail.take() {
                    t.complete(false);
                }
            }
            Poll::Ready(None) => {
                if let Some(t) = self.tail.take() {
                    t.complete(true);
                }
            }
            Poll::Pending => {}
        }
        res
    }
}

impl Drop for RecordedBody {
    fn drop(&mut self) {
        if let Some(t) = self.tail.take() {
            let complete = self.inner.is_end_stream();
            t.complete(complete);
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        // The caller went away before a response was produced (Envoy logs this as 0).
        self.write(0, Some("downstream-cancelled"), false);
    }
}

/// What an opaque TCP connection did.
#[derive(Debug)]
pub struct TcpRecord {
    recorder: Arc<Recorder>,
    start: Instant,
    pub direction: Direction,
    pub client: SocketAddr,
    pub service: Arc<str>,
    pub upstream: Option<SocketAddr>,
    /// Time to connect to the upstream.
    pub connect: Option<Duration>,
    /// The caller's verified SPIFFE ID (inbound over mTLS).
    pub peer: Option<crate::tls::Identity>,
}

impl TcpRecord {
    pub fn start(recorder: &Arc<Recorder>, direction: Direction, client: SocketAddr, service: Arc<str>) -> Self {
        Self {
            recorder: recorder.clone(),
            start: Instant::now(),
            direction,
            client,
            service,
            upstream: None,
            connect: None,
            peer: None,
        }
    }

    /// `sent` went client → upstream, `received` upstream → client.
    pub fn finish(self, sent: u64, received: u64, error: Option<&str>) {
        let m = &self.recorder.metrics;
        // Bytes by the direction of the proxied connection they belong to.
        m.tcp_bytes.get_or_create(&DirectionLabels { direction: self.direction }).inc_by(sent + received);
        if self.recorder.log_this(error.is_some()) {
            let upstream = self.upstream.map(|u| u.to_string());
            tracing::info!(
                target: "outrider::access",
                kind = "tcp",
                direction = ?self.direction,
                client = %self.client,
                service = &*self.service,
                upstream = upstream.as_deref().unwrap_or(""),
                bytes_sent = sent,
                bytes_received = received,
                connect_ms = self.connect.map(ms),
                duration_ms = ms(self.start.elapsed()),
                error = error.unwrap_or(""),
                peer_identity = self.peer.as_ref().map_or("", |p| p.as_str()),
                workload = self.recorder.workload.as_deref().unwrap_or(""),
            );
        }
    }
}

#[cfg(test)]
mod tests;
