//! Retries (docs/policy.md, "Which tries are retried"): only for requests whose body
//! can be replayed (none, or under the cap); non-idempotent methods only for
//! failures where the upstream cannot have processed the request, unless the
//! policy says `non-idempotent`; full-jitter backoff, or the server's
//! `Retry-After` up to the backoff's max; never past the overall deadline;
//! within the retry budget and `maxRetries` (retries waiting or in flight); a different
//! endpoint per try where one exists; `x-outrider-attempt: N` on each try.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Method, Request, StatusCode};
use http_body::Body as _;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::breaker::GaugeGuard;
use super::config::{RetryOn, RetryPolicy};
use super::outcome::{Outcome, grpc};
use super::replay::{DEFAULT_CAP, NotReplayable, Replay};
use crate::http::Body;
use crate::http::headers::X_REQUEST_ID;
use crate::outbound::stack::{Answered, Upstream};
use crate::rescue::ProxyError;
use crate::state::Cluster;
use crate::telemetry::metrics::{Metrics, ServiceLabels, ServiceReasonLabels};
use crate::telemetry::trace::{HttpAttrs, Span, SpanKind};

#[derive(Clone, Debug)]
pub struct RetryLayer {
    pub policy: RetryPolicy,
    pub cluster: Arc<Cluster>,
    pub metrics: Metrics,
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry { layer: self.clone(), inner }
    }
}

#[derive(Clone, Debug)]
pub struct Retry<S> {
    layer: RetryLayer,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Upstream> for Retry<S>
where
    S: Service<Upstream, Response = Answered, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Answered;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Answered, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Each attempt drives the inner service to readiness itself (oneshot).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, up: Upstream) -> Self::Future {
        let layer = self.layer.clone();
        let inner = self.inner.clone();
        Box::pin(run(layer, inner, up))
    }
}

/// Methods that may be sent twice without changing the outcome (RFC 9110 §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Would this outcome be retried under `policy` (ignoring budgets)? Envoy's
/// meanings of the `retry_on` tokens, plus one rule of ours: a try the
/// application may have processed is retried only for an idempotent method,
/// unless the policy says `non-idempotent`. The table is in docs/policy.md.
///
/// | outcome | retried when `on` has | methods |
/// |---|---|---|
/// | connect failure | connect-failure, 5xx, gateway-error, reset | any: never reached the app |
/// | REFUSED_STREAM | refused-stream, 5xx, gateway-error, reset | any: not processed (RFC 9113 §8.7) |
/// | reset after sending, per-try timeout | 5xx, gateway-error, reset | idempotent |
/// | 5xx status | 5xx; gateway-error for 502–504; retriable-status-codes if listed | idempotent |
/// | 4xx status | retriable-status-codes if listed | idempotent |
/// | gRPC status 1, 4, 8, 13, 14 | cancelled, deadline-exceeded, resource-exhausted, internal, unavailable | any gRPC call; else idempotent |
pub fn retriable(policy: &RetryPolicy, outcome: Outcome, idempotent: bool, is_grpc: bool) -> bool {
    let on = policy.on;
    let any_of = |conds: &[RetryOn]| conds.iter().any(|c| on.contains(*c));
    let no_response = [RetryOn::SERVER_5XX, RetryOn::GATEWAY_ERROR, RetryOn::RESET];
    let may_repeat = idempotent || policy.non_idempotent;
    match outcome {
        // Never reached the application: safe for any method.
        Outcome::ConnectFailure => on.contains(RetryOn::CONNECT_FAILURE) || any_of(&no_response),
        Outcome::RefusedStream => on.contains(RetryOn::REFUSED_STREAM) || any_of(&no_response),
        Outcome::Reset | Outcome::Timeout => may_repeat && any_of(&no_response),
        Outcome::Status(s) => {
            may_repeat
                && ((s >= 500 && on.contains(RetryOn::SERVER_5XX))
                    || (matches!(s, 502..=504) && on.contains(RetryOn::GATEWAY_ERROR))
                    || (on.contains(RetryOn::RETRIABLE_STATUS_CODES) && policy.status_codes.contains(&s)))
        }
        // A gRPC status the server chose to send is the server saying "try
        // again"; gRPC calls are all POST, so the method says nothing.
        Outcome::Grpc(c) => {
            let listed = match c {
                grpc::CANCELLED => on.contains(RetryOn::GRPC_CANCELLED),
                grpc::DEADLINE_EXCEEDED => on.contains(RetryOn::GRPC_DEADLINE_EXCEEDED),
                grpc::RESOURCE_EXHAUSTED => on.contains(RetryOn::GRPC_RESOURCE_EXHAUSTED),
                grpc::INTERNAL => on.contains(RetryOn::GRPC_INTERNAL),
                grpc::UNAVAILABLE => on.contains(RetryOn::GRPC_UNAVAILABLE),
                _ => false,
            };
            listed && (is_grpc || may_repeat)
        }
        Outcome::Success | Outcome::Local => false,
    }
}

/// Also a 4xx listed in retriable status codes (e.g. 409, 429) is retried.
fn outcome_of(res: &Result<Answered, ProxyError>, policy: &RetryPolicy) -> Outcome {
    match res {
        Ok(a) => {
            let s = a.resp.status();
            if s.is_client_error()
                && policy.on.contains(RetryOn::RETRIABLE_STATUS_CODES)
                && policy.status_codes.contains(&s.as_u16())
            {
                return Outcome::Status(s.as_u16());
            }
            Outcome::of_response(s, a.resp.headers())
        }
        Err(e) => Outcome::of_error(e),
    }
}

/// `Retry-After: <seconds>` on a 503 or 429.
fn retry_after(res: &Result<Answered, ProxyError>) -> Option<Duration> {
    let a = res.as_ref().ok()?;
    if !matches!(a.resp.status(), StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
        return None;
    }
    let secs: u64 = a.resp.headers().get(http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// The request's body as the tries see it.
enum Source {
    /// No body: every try sends none.
    Empty,
    /// Kept for replay while it stays under the cap.
    Replay(Replay),
    /// Announced (`Content-Length`) as larger than the cap: streamed by the
    /// first try, never kept.
    Once,
}

impl Source {
    /// Could a next try send the whole body? (Does not take it from the try
    /// that may still be streaming it.)
    fn check(&self) -> Result<(), NotReplayable> {
        match self {
            Source::Empty => Ok(()),
            Source::Replay(r) => r.check(),
            Source::Once => Err(NotReplayable::TooLarge),
        }
    }

    /// The whole body for the next try, which from now on is the only one
    /// reading it.
    fn next_try(&self) -> Result<Body, NotReplayable> {
        match self {
            Source::Empty => Ok(Body::Empty),
            Source::Replay(r) => r.next_try().map(Body::Replay),
            Source::Once => Err(NotReplayable::TooLarge),
        }
    }
}

struct Template {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: HeaderMap,
}

impl Template {
    fn request(&self, body: Body) -> Request<Body> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Count and log a retry the policy called for but the proxy does not make.
fn skipped(layer: &RetryLayer, template: &Template, attempt: u32, reason: &'static str) {
    let service = &layer.cluster.service;
    layer.metrics.retries_skipped.get_or_create(&ServiceReasonLabels { service: service.clone(), reason }).inc();
    let request_id = template.headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
    tracing::info!(
        service = &**service,
        request_id,
        attempt,
        retry_skipped = reason,
        "not retrying: {}",
        match reason {
            "body-too-large" => "the request body is larger than the 64 KiB replay buffer",
            "body-error" => "the caller's request body failed",
            _ => "the request's timeout would pass during the backoff",
        }
    );
}

async fn run<S>(layer: RetryLayer, inner: S, mut up: Upstream) -> Result<Answered, ProxyError>
where
    S: Service<Upstream, Response = Answered, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    let policy = &layer.policy;
    let cluster = &layer.cluster;
    let budget_cfg = cluster.policy.budget.unwrap_or_default();
    cluster.state.budget.deposit(&budget_cfg);

    if policy.attempts == 0 || crate::http::headers::is_upgrade(up.req.headers()) {
        // No retry to make (or an upgrade, which cannot be replayed): one try,
        // without keeping a copy of the body.
        return one_try(inner, up, policy.per_try_timeout).await;
    }
    let too_big = up
        .req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > DEFAULT_CAP as u64);
    let idempotent = is_idempotent(up.req.method());
    let is_grpc = crate::rescue::is_grpc(&up.req);
    let (parts, body) = std::mem::take(&mut up.req).into_parts();
    let template = Template { method: parts.method, uri: parts.uri, version: parts.version, headers: parts.headers };
    // No body (most retried requests): nothing to keep a copy of. Announced as
    // too big: streamed as it is, without a copy.
    let (source, mut body) = if body.is_end_stream() {
        (Source::Empty, Body::Empty)
    } else if too_big {
        (Source::Once, body)
    } else {
        let (replay, first) = Replay::new(body, DEFAULT_CAP);
        (Source::Replay(replay), Body::Replay(first))
    };

    let mut attempt = 1u32;
    // Held from the decision to retry until that retry is answered
    // (`maxRetries` bounds retries waiting in backoff or in flight).
    let mut retry_slot: Option<GaugeGuard> = None;
    loop {
        // Tracing on: each try is a child span of the request's, and the upstream
        // hears this try's span as its parent.
        let span = up.trace.as_ref().map(|t| AttemptSpan {
            span: Some(t.child(SpanKind::Client)),
            method: template.method.clone(),
            attempt,
        });
        let mut this = Upstream {
            req: template.request(body),
            client: up.client,
            authority: up.authority.clone(),
            endpoint: None,
            attempt,
            tried: std::mem::take(&mut up.tried),
            deadline: up.deadline,
            try_deadline: None,
            fallback: None,
            trace: span.as_ref().and_then(|s| s.span.as_ref()).map(|s| s.context().clone()),
        };
        this.req.extensions_mut().clear();
        let tried_before = this.tried.clone();
        let res = one_try(inner.clone(), this, policy.per_try_timeout).await;
        // This try, if it was a retry, is answered.
        drop(retry_slot.take());
        if let Some(s) = span {
            s.end(&res);
        }
        let outcome = outcome_of(&res, policy);
        if matches!(outcome, Outcome::Success | Outcome::Local) || attempt > policy.attempts {
            return res;
        }
        if !retriable(policy, outcome, idempotent, is_grpc) {
            return res;
        }
        // A try may still be streaming the body: whether it outgrew the cap is
        // checked now, and again when the retry takes the body over.
        if let Err(why) = source.check() {
            skipped(&layer, &template, attempt, why.reason());
            return res;
        }
        let delay = match retry_after(&res) {
            Some(d) => d.min(policy.retry_after_max.unwrap_or(policy.backoff.max)),
            None => policy.backoff.delay(attempt - 1),
        };
        if let Some(deadline) = up.deadline
            && Instant::now().checked_add(delay).is_none_or(|at| at >= deadline)
        {
            skipped(&layer, &template, attempt, "deadline");
            return res;
        }
        let Some(slot) = cluster.state.counters.acquire_retry(cluster.policy.thresholds.max_retries) else {
            cluster.state.load.reject();
            layer
                .metrics
                .circuit_breaker_rejections
                .get_or_create(&ServiceReasonLabels { service: cluster.service.clone(), reason: "max-retries" })
                .inc();
            return res;
        };
        if !cluster.state.budget.try_withdraw(&budget_cfg) {
            cluster.state.load.budget_exhausted();
            layer
                .metrics
                .retry_budget_exhausted
                .get_or_create(&ServiceLabels { service: cluster.service.clone() })
                .inc();
            return res;
        }
        // From here on the earlier try no longer reads the caller's body.
        body = match source.next_try() {
            Ok(b) => b,
            Err(why) => {
                skipped(&layer, &template, attempt, why.reason());
                return res;
            }
        };
        retry_slot = Some(slot);
        cluster.state.load.retry();
        layer
            .metrics
            .retries
            .get_or_create(&ServiceReasonLabels { service: cluster.service.clone(), reason: outcome.reason() })
            .inc();
        let failed_endpoint = match &res {
            Ok(a) => Some(a.endpoint),
            Err(ProxyError::Upstream(u)) => Some(u.addr()),
            Err(_) => None,
        };
        drop(res);
        up.tried = tried_before;
        up.tried.extend(failed_endpoint);
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// The span of one try. Dropped unfinished (the request's timeout fired during
/// the try), it ends as `cancelled`.
struct AttemptSpan {
    span: Option<Span>,
    method: Method,
    attempt: u32,
}

impl AttemptSpan {
    fn end(mut self, res: &Result<Answered, ProxyError>) {
        let Some(span) = self.span.take() else { return };
        let method = std::mem::replace(&mut self.method, Method::GET);
        let attrs = match res {
            Ok(a) => HttpAttrs::attempt(method, self.attempt, Some(a.endpoint), a.resp.status().as_u16(), None),
            Err(e) => {
                let endpoint = match e {
                    ProxyError::Upstream(u) => Some(u.addr()),
                    _ => None,
                };
                HttpAttrs::attempt(method, self.attempt, endpoint, 0, Some(e.classify().1))
            }
        };
        span.end(attrs);
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            span.end(HttpAttrs::attempt(self.method.clone(), self.attempt, None, 0, Some("cancelled")));
        }
    }
}

async fn one_try<S>(inner: S, mut up: Upstream, per_try: Option<Duration>) -> Result<Answered, ProxyError>
where
    S: Service<Upstream, Response = Answered, Error = ProxyError>,
{
    match per_try {
        None => inner.oneshot(up).await,
        Some(d) => {
            // Before the timer below: when it fires, the try is dropped past this deadline
            // and its balance stage reports the timeout to the breaker, outlier detection and
            // the latency estimate.
            up.try_deadline = Instant::now().checked_add(d);
            match tokio::time::timeout(d, inner.oneshot(up)).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::Timeout { after: d, per_try: true }),
            }
        }
    }
}

#[cfg(test)]
mod tests;
