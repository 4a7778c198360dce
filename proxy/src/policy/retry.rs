//! Retries (DESIGN.md §4, Resilience semantics): only for requests whose body
//! can be replayed (none, or under the cap); non-idempotent methods only for
//! failures where the upstream cannot have processed the request, unless the
//! policy says `non-idempotent`; full-jitter backoff, or the server's
//! `Retry-After` up to the backoff's max; never past the overall deadline;
//! within the retry budget and the concurrent-retries threshold; a different
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

use super::config::{RetryOn, RetryPolicy};
use super::outcome::{Outcome, grpc};
use super::replay::{DEFAULT_CAP, ReplayBody};
use crate::http::Body;
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

/// Would this outcome be retried under `policy` (ignoring budgets)?
pub fn retriable(policy: &RetryPolicy, outcome: Outcome, idempotent: bool, is_grpc: bool) -> bool {
    let on = policy.on;
    // Never reached the application: safe for any method.
    let safe = match outcome {
        Outcome::ConnectFailure => on.contains(RetryOn::CONNECT_FAILURE),
        Outcome::RefusedStream => on.contains(RetryOn::REFUSED_STREAM),
        _ => false,
    };
    if safe {
        return true;
    }
    // A gRPC status the server chose to send is the server saying "try again".
    let grpc_ok = match outcome {
        Outcome::Grpc(c) => match c {
            grpc::CANCELLED => on.contains(RetryOn::GRPC_CANCELLED),
            grpc::DEADLINE_EXCEEDED => on.contains(RetryOn::GRPC_DEADLINE_EXCEEDED),
            grpc::RESOURCE_EXHAUSTED => on.contains(RetryOn::GRPC_RESOURCE_EXHAUSTED),
            grpc::INTERNAL => on.contains(RetryOn::GRPC_INTERNAL),
            grpc::UNAVAILABLE => on.contains(RetryOn::GRPC_UNAVAILABLE),
            _ => false,
        },
        _ => false,
    };
    if grpc_ok && is_grpc {
        return true;
    }
    if !idempotent && !policy.non_idempotent {
        return false;
    }
    match outcome {
        Outcome::Status(s) => {
            on.contains(RetryOn::SERVER_5XX)
                || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(s, 502..=504))
                || (on.contains(RetryOn::RETRIABLE_STATUS_CODES) && policy.status_codes.contains(&s))
        }
        Outcome::Reset => on.contains(RetryOn::RESET) || on.contains(RetryOn::SERVER_5XX),
        Outcome::Timeout => {
            on.contains(RetryOn::SERVER_5XX) || on.contains(RetryOn::GATEWAY_ERROR) || on.contains(RetryOn::RESET)
        }
        Outcome::ConnectFailure => on.contains(RetryOn::SERVER_5XX) || on.contains(RetryOn::GATEWAY_ERROR),
        Outcome::RefusedStream => on.contains(RetryOn::RESET) || on.contains(RetryOn::SERVER_5XX),
        Outcome::Grpc(_) => grpc_ok,
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

/// A request body as retries see it.
enum Replayable {
    Empty,
    Body(ReplayBody),
}

impl Replayable {
    fn try_clone(&self) -> Option<Replayable> {
        match self {
            Replayable::Empty => Some(Replayable::Empty),
            Replayable::Body(b) => b.try_clone().map(Replayable::Body),
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
    fn request(&self, body: Replayable) -> Request<Body> {
        let body = match body {
            Replayable::Empty => Body::Empty,
            Replayable::Body(b) => Body::Replay(b),
        };
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
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

    let too_big = up
        .req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > DEFAULT_CAP as u64);
    let upgrade = crate::http::headers::is_upgrade(up.req.headers());
    if too_big || upgrade {
        // Cannot be replayed: one attempt, as if there were no retry policy.
        return one_try(inner, up, policy.per_try_timeout).await;
    }
    let idempotent = is_idempotent(up.req.method());
    let is_grpc = crate::rescue::is_grpc(&up.req);
    let (parts, body) = std::mem::take(&mut up.req).into_parts();
    let template = Template { method: parts.method, uri: parts.uri, version: parts.version, headers: parts.headers };
    // No body (most retried requests): nothing to keep a copy of.
    let mut body =
        if body.is_end_stream() { Replayable::Empty } else { Replayable::Body(ReplayBody::new(body, DEFAULT_CAP)) };

    let mut attempt = 1u32;
    loop {
        let next_body = body.try_clone();
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
        let Some(replay) = next_body else { return res };
        let delay = match retry_after(&res) {
            Some(d) => d.min(policy.retry_after_max.unwrap_or(policy.backoff.max)),
            None => policy.backoff.delay(attempt - 1),
        };
        if let Some(deadline) = up.deadline
            && Instant::now() + delay >= deadline
        {
            return res;
        }
        let Some(_retrying) = cluster.state.counters.acquire_retry(cluster.policy.thresholds.max_retries) else {
            layer
                .metrics
                .circuit_breaker_rejections
                .get_or_create(&ServiceReasonLabels { service: cluster.service.clone(), reason: "max-retries" })
                .inc();
            return res;
        };
        if !cluster.state.budget.try_withdraw(&budget_cfg) {
            layer
                .metrics
                .retry_budget_exhausted
                .get_or_create(&ServiceLabels { service: cluster.service.clone() })
                .inc();
            return res;
        }
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
        body = replay;
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
mod tests {
    use super::*;
    use crate::backoff::ExponentialBackoff;

    fn policy(on: &str) -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn::parse(on).unwrap(),
            status_codes: vec![409],
            backoff: ExponentialBackoff::new(Duration::from_millis(25), Duration::from_millis(250)),
            retry_after_max: None,
            non_idempotent: false,
        }
    }

    #[test]
    fn conditions() {
        let p = policy("5xx,connect-failure");
        assert!(retriable(&p, Outcome::Status(500), true, false));
        assert!(!retriable(&p, Outcome::Status(500), false, false), "POST not retried on 5xx");
        assert!(retriable(&p, Outcome::ConnectFailure, false, false), "never sent: safe for POST");
        let p = policy("gateway-error");
        assert!(retriable(&p, Outcome::Status(503), true, false));
        assert!(!retriable(&p, Outcome::Status(500), true, false));
        let p = policy("retriable-status-codes");
        assert!(retriable(&p, Outcome::Status(409), true, false));
        assert!(!retriable(&p, Outcome::Status(503), true, false));
        let p = policy("unavailable");
        assert!(retriable(&p, Outcome::Grpc(14), false, true), "gRPC POST on UNAVAILABLE");
        assert!(!retriable(&p, Outcome::Grpc(13), false, true));
        let mut p = policy("5xx");
        p.non_idempotent = true;
        assert!(retriable(&p, Outcome::Status(502), false, false));
        assert!(!retriable(&policy("connect-failure"), Outcome::Reset, true, false));
    }
}
