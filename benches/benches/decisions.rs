//! Micro-benchmarks of the per-request decisions, on a snapshot built from a
//! policy file through the real path (load → translate → Builder): virtual-host
//! lookup and route match, balancer picks, header hygiene, the retry budget and
//! the breaker state machine.
//!
//! Run: `cargo bench -p outrider-benches --bench decisions`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request};
use outrider_proxy::balance::{Balancer, LbPolicy};
use outrider_proxy::http::headers::strip_hop_by_hop;
use outrider_proxy::policy::breaker::StateMachine;
use outrider_proxy::policy::budget::RetryBudget;
use outrider_proxy::policy::config::{BreakerConfig, BreakerScope, BudgetConfig};
use outrider_proxy::state::{Builder, Endpoint, Snapshot};

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

criterion_group!(benches, route_match, balancer, headers, policy);
criterion_main!(benches);
