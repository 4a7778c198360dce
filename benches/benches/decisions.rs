//! Micro-benchmarks of the per-request decisions, on a snapshot built from a
//! policy file through the real path (load → translate → Builder): virtual-host
//! lookup and route match, balancer picks, header hygiene, the retry budget and
//! the breaker state machine; and the whole per-request policy path (route, the tower
//! stack with timeout + retries + thresholds + balancer + breaker + outlier detection,
//! over an endpoint that answers at once).
//!
//! Run: `cargo bench -p outrider-benches --bench decisions`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request};
use outrider_proxy::balance::{Balancer, LbPolicy};
use outrider_proxy::http::Body;
use outrider_proxy::http::headers::strip_hop_by_hop;
use outrider_proxy::mesh::MeshHandle;
use outrider_proxy::outbound::stack::{self, Answered, StackParams, Upstream};
use outrider_proxy::policy::breaker::StateMachine;
use outrider_proxy::policy::budget::RetryBudget;
use outrider_proxy::policy::config::{BreakerConfig, BreakerScope, BudgetConfig};
use outrider_proxy::rescue::ProxyError;
use outrider_proxy::state::{Builder, Endpoint, Snapshot};
use outrider_proxy::telemetry::metrics::Metrics;
use outrider_proxy::transport::socket::SocketOptions;
use tower::ServiceExt;

/// A service with `n` endpoints, a header route and a weighted prefix route,
/// plus 20 other services so the virtual-host map is not trivially small.
fn snapshot(n: usize) -> Snapshot {
    let mut text = String::from(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: bench}\nspec:\n  port: 8080\n  addresses: [\"10.0.0.1\"]\n  endpoints:\n",
    );
    for i in 0..n {
        let v = if i % 2 == 0 { "v1" } else { "v2" };
        text += &format!("    - {{address: \"10.1.{}.{}:8080\", labels: {{version: {v}}}}}\n", i / 250, i % 250 + 1);
    }
    text += "---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: bench}\nspec:\n  service: bench\n  routes:\n    - name: canary\n      match: {headers: {x-canary: \"true\"}}\n      split: [{subset: {version: v2}, weight: 100}]\n    - name: api\n      match: {pathPrefix: /api}\n      split: [{subset: {version: v1}, weight: 90}, {subset: {version: v2}, weight: 10}]\n    - name: main\n      match: {pathPrefix: /}\n      split: [{subset: {version: v1}, weight: 100}]\n";
    for i in 0..20 {
        text += &format!(
            "---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: other-{i}}}\nspec:\n  port: 8080\n  endpoints: [{{address: \"10.2.0.{}:8080\"}}]\n",
            i + 1
        );
    }
    let set = outrider_xds::load_str("bench.yaml", &text).expect("the benchmark policy is valid");
    let (snap, rejected) = Builder::new().build(&outrider_xds::translate(&set));
    assert!(rejected.is_empty(), "{rejected:?}");
    snap
}

fn endpoints(snap: &Snapshot) -> Vec<Arc<Endpoint>> {
    let c = snap.clusters.values().find(|c| &*c.service == "bench").expect("the bench cluster");
    c.endpoints.items().to_vec()
}

fn route_match(c: &mut Criterion) {
    let snap = snapshot(3);
    let req = Request::get("/api/items/42")
        .header("host", "bench:8080")
        .header("user-agent", "bench/1")
        .header("accept", "*/*")
        .body(())
        .unwrap();
    let canary = Request::get("/").header("host", "bench:8080").header("x-canary", "true").body(()).unwrap();
    let mut g = c.benchmark_group("route");
    // What outbound::http::route does: the virtual host by authority (exact,
    // then lower-cased), then the first route that matches, then a split.
    g.bench_function("vhost lookup + match (prefix, 2nd route)", |b| {
        b.iter(|| {
            let vh = snap.vhosts.get(black_box("bench:8080")).unwrap();
            let r = vh.routes.iter().find(|r| r.matches(black_box(&req))).unwrap();
            black_box(r.pick_split())
        })
    });
    g.bench_function("vhost lookup, mixed-case host", |b| {
        b.iter(|| {
            let a = black_box("Bench:8080");
            black_box(snap.vhosts.get(a).or_else(|| snap.vhosts.get(a.to_ascii_lowercase().as_str())))
        })
    });
    let vh = snap.vhosts.get("bench:8080").unwrap().clone();
    g.bench_function("Route::matches, header route", |b| {
        b.iter(|| black_box(vh.routes[0].matches(black_box(&canary))))
    });
    g.bench_function("Route::matches, header route misses", |b| {
        b.iter(|| black_box(vh.routes[0].matches(black_box(&req))))
    });
    g.finish();
}

fn balancer(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer pick");
    for n in [3, 100] {
        let eps = endpoints(&snapshot(n));
        assert_eq!(eps.len(), n);
        for policy in [LbPolicy::P2cEwma, LbPolicy::RoundRobin, LbPolicy::Random] {
            let b = Balancer::new(policy, eps.clone());
            g.bench_function(format!("{} {n} endpoints", policy.as_str()), |bench| bench.iter(|| black_box(b.pick())));
        }
    }
    g.finish();
}

fn headers(c: &mut Criterion) {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "bench:8080"),
        ("user-agent", "curl/8.0"),
        ("accept", "*/*"),
        ("connection", "keep-alive, x-drop-me"),
        ("keep-alive", "timeout=5"),
        ("x-drop-me", "1"),
        ("te", "trailers"),
        ("x-request-id", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
        ("content-type", "application/json"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    let mut plain = HeaderMap::new();
    for (k, v) in [("host", "bench:8080"), ("user-agent", "wrk"), ("accept", "*/*")] {
        plain.insert(k, HeaderValue::from_static(v));
    }
    let mut g = c.benchmark_group("headers");
    g.bench_function("strip_hop_by_hop, 9 headers with connection tokens", |b| {
        b.iter_batched_ref(|| h.clone(), |m| strip_hop_by_hop(m, false), BatchSize::SmallInput)
    });
    g.bench_function("strip_hop_by_hop, 3 plain headers", |b| {
        b.iter_batched_ref(|| plain.clone(), |m| strip_hop_by_hop(m, false), BatchSize::SmallInput)
    });
    g.finish();
}

fn policy(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    let cfg = BudgetConfig::default();
    let budget = RetryBudget::new();
    g.bench_function("RetryBudget deposit", |b| b.iter(|| budget.deposit(black_box(&cfg))));
    g.bench_function("RetryBudget try_withdraw", |b| b.iter(|| black_box(budget.try_withdraw(black_box(&cfg)))));
    let bc = BreakerConfig {
        failure_rate_threshold: 50,
        slow_call_duration: Duration::from_secs(60),
        slow_call_rate_threshold: 100,
        window: 100,
        minimum_calls: 100,
        open_duration: Duration::from_secs(60),
        half_open_calls: 10,
        scope: BreakerScope::Endpoint,
    };
    let sm = StateMachine::new();
    g.bench_function("breaker try_acquire + record (closed)", |b| {
        b.iter(|| {
            let p = sm.try_acquire(black_box(&bc)).unwrap();
            black_box(sm.record(&bc, p, false))
        })
    });
    g.finish();
}

/// The policy file of [`request_path`]: `bench` with no TrafficPolicy, `guarded` with
/// the full resilience stack configured (not triggered: every answer is a 200).
const REQUEST_PATH_POLICY: &str = "\
apiVersion: outrider.io/v1
kind: Service
metadata: {name: bench}
spec:
  port: 8080
  endpoints: [{address: \"10.1.0.1:8080\"}, {address: \"10.1.0.2:8080\"}, {address: \"10.1.0.3:8080\"}]
---
apiVersion: outrider.io/v1
kind: Service
metadata: {name: guarded}
spec:
  port: 8080
  endpoints: [{address: \"10.2.0.1:8080\"}, {address: \"10.2.0.2:8080\"}, {address: \"10.2.0.3:8080\"}]
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {name: guarded}
spec:
  service: guarded
  timeout: 3s
  retries:
    attempts: 2
    perTryTimeout: 1s
    retryOn: [connect-failure, reset, 5xx, retriable-status-codes]
    retriableStatusCodes: [503]
  circuitBreaker: {failureRateThreshold: 50, window: 20, minimumCalls: 10, openDuration: 30s}
  outlierDetection: {consecutive5xx: 5, baseEjectionTime: 30s, maxEjectionPercent: 50}
";

/// The innermost service of the benchmarked stack: a 200 from the chosen endpoint, at once.
#[derive(Clone)]
struct AnswerNow;

impl tower::Service<Upstream> for AnswerNow {
    type Response = Answered;
    type Error = ProxyError;
    type Future = std::future::Ready<Result<Answered, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, up: Upstream) -> Self::Future {
        let endpoint = up.endpoint.as_ref().map(|e| e.addr).expect("the balance stage chose an endpoint");
        std::future::ready(Ok(Answered {
            resp: http::Response::new(Body::Empty),
            endpoint,
            workload: None,
            attempt: up.attempt,
        }))
    }
}

/// What `outbound::http` does per request below the access log, with the endpoint's
/// connection pool replaced by [`AnswerNow`]: virtual host + route + split, the stack
/// assembled for the request, one try through timeout, retries (budget, template),
/// thresholds, balancer (P2C-EWMA, breaker, outlier detection, in-flight count).
fn request_path(c: &mut Criterion) {
    let set = outrider_xds::load_str("bench.yaml", REQUEST_PATH_POLICY).expect("the benchmark policy is valid");
    let (snap, rejected) = Builder::new().build(&outrider_xds::translate(&set));
    assert!(rejected.is_empty(), "{rejected:?}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let metrics = Metrics::new();
    let socket = SocketOptions::marked(None);
    let mesh = MeshHandle::default();
    let client: std::net::SocketAddr = "10.9.0.1:40000".parse().unwrap();
    let mut g = c.benchmark_group("request path");
    for (service, authority) in
        [("no TrafficPolicy", "bench:8080"), ("timeout + retries + breaker + outlier", "guarded:8080")]
    {
        let serve = || {
            let vh = snap.vhosts.get(authority).unwrap();
            let req = Request::get("/items/42")
                .header("host", authority)
                .header("user-agent", "bench/1")
                .header("accept", "*/*")
                .body(Body::Empty)
                .unwrap();
            let route = vh.routes.iter().find(|r| r.matches(&req)).unwrap();
            let split = route.pick_split().unwrap();
            let params = StackParams {
                cluster: &split.cluster,
                endpoints: &split.endpoints,
                route: &route.policy,
                socket: &socket,
                metrics: &metrics,
                mesh: &mesh,
                grpc_timeout: None,
                fallback: split.fallback.as_ref(),
            };
            let up = Upstream::new(req, client, Some(http::uri::Authority::from_static("bench:8080")));
            rt.block_on(stack::layered(&params, AnswerNow).oneshot(up))
        };
        assert_eq!(serve().unwrap().resp.status(), 200);
        g.bench_function(service, |b| b.iter(|| black_box(serve().unwrap())));
    }
    g.finish();
}

criterion_group!(benches, route_match, balancer, headers, policy, request_path);
criterion_main!(benches);
