//! One record per request or connection. It is written exactly once — on
//! `finish`, or on drop when the caller went away first — and feeds both the
//! metrics and the access log, so the two always agree.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::metrics::{Direction, DirectionLabels, DurationLabels, LocalReplyLabels, Metrics, RequestLabels};

/// Shared by every connection: where records go.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub metrics: Metrics,
    pub access_log: bool,
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
    pub upstream: Option<SocketAddr>,
    /// Tries sent upstream (retries + 1); 0 when none was.
    pub attempts: u32,
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
            upstream: None,
            attempts: 0,
            done: false,
        }
    }

    /// Record the outcome: the status sent downstream and, for a local reply, why.
    pub fn finish(mut self, status: u16, local_reply: Option<&'static str>) {
        self.write(status, local_reply);
    }

    fn write(&mut self, status: u16, local_reply: Option<&'static str>) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed();
        let m = &self.recorder.metrics;
        m.requests
            .get_or_create(&RequestLabels {
                direction: self.direction,
                service: self.service.clone(),
                route: self.route.clone(),
                code: status,
            })
            .inc();
        m.request_duration
            .get_or_create(&DurationLabels { direction: self.direction, service: self.service.clone() })
            .observe(elapsed.as_secs_f64());
        if let Some(reason) = local_reply {
            m.local_replies.get_or_create(&LocalReplyLabels { direction: self.direction, reason }).inc();
        }
        if self.recorder.access_log {
            let authority = self.authority.as_ref().map(|a| a.as_str()).unwrap_or("");
            let path = self.path.as_ref().map(|p| p.as_str()).unwrap_or("");
            let request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
            let upstream = self.upstream.map(|u| u.to_string());
            tracing::info!(
                target: "outrider::access",
                kind = "http",
                direction = ?self.direction,
                client = %self.client,
                method = %self.method,
                authority,
                path,
                protocol = ?self.version,
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                service = &*self.service,
                route = &*self.route,
                upstream = upstream.as_deref().unwrap_or(""),
                attempts = self.attempts,
                local_reply = local_reply.unwrap_or(""),
                request_id,
            );
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        // The caller went away before a response was produced (Envoy logs this as 0).
        self.write(0, Some("downstream-cancelled"));
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
}

impl TcpRecord {
    pub fn start(recorder: &Arc<Recorder>, direction: Direction, client: SocketAddr, service: Arc<str>) -> Self {
        Self { recorder: recorder.clone(), start: Instant::now(), direction, client, service, upstream: None }
    }

    /// `sent` went client → upstream, `received` upstream → client.
    pub fn finish(self, sent: u64, received: u64, error: Option<&str>) {
        let m = &self.recorder.metrics;
        // Bytes by the direction of the proxied connection they belong to.
        m.tcp_bytes.get_or_create(&DirectionLabels { direction: self.direction }).inc_by(sent + received);
        if self.recorder.access_log {
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
                duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
                error = error.unwrap_or(""),
            );
        }
    }
}
