//! The circuit breaker's state machine end to end: per endpoint by default (an open endpoint is
//! skipped, the others keep serving), per service when asked, the fallback when every endpoint
//! of a split is open, and timeouts and slow calls counted as what they are. Counts are the ones
//! the upstreams observed, never times.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outrider_tests::ProxyHarness;
use outrider_tests::policy::{docs, service};
use outrider_tests::prom::sum;
use outrider_tests::upstream::{self, Gate};

fn policy(service: &str, spec: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {service}}}\nspec:\n  service: {service}\n{spec}"
    )
}

/// Opens after 4 calls of which half failed; stays open long past any test.
const BREAKER: &str = "failureRateThreshold: 50, window: 4, minimumCalls: 4, openDuration: 60s";

/// `n` GETs one after another; how many were answered 200.
async fn ok_of(proxy: &ProxyHarness, uri: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if proxy.get(uri).await.status.as_u16() == 200 {
            ok += 1;
        }
    }
    ok
}

fn endpoint_of<'a>(clusters: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
    clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["endpoints"].as_array().unwrap())
        .find(|e| e["address"] == addr)
        .unwrap_or_else(|| panic!("no endpoint {addr} in {clusters}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_endpoint_is_skipped_while_the_healthy_one_keeps_serving() {
    let bad = upstream::http1().name("bad").status(503).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("two").endpoint(bad.addr).endpoint(good.addr).yaml(),
        policy("two", &format!("  loadBalancer: round-robin\n  circuitBreaker: {{{BREAKER}}}\n")),
    ]))
    .await;
    let ok = ok_of(&proxy, "http://two:8080/", 40).await;
    assert_eq!(bad.request_count(), 4, "the bad endpoint's breaker opened after its 4 calls");
    assert_eq!(ok, 36, "everything else was served by the healthy endpoint");
    assert_eq!(good.request_count(), 36);

    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_circuit_breaker_endpoints", &[("service", "two"), ("state", "open")]), 1.0);
    assert_eq!(sum(&m, "outrider_circuit_breaker_endpoints", &[("service", "two"), ("state", "closed")]), 1.0);
    assert_eq!(sum(&m, "outrider_circuit_breaker_state", &[("service", "two")]), 1.0, "the worst endpoint's state");
    let clusters: serde_json::Value = serde_json::from_str(&proxy.admin("GET", "/clusters").await.text()).unwrap();
    assert_eq!(endpoint_of(&clusters, &bad.endpoint())["circuit_breaker"], "open");
    assert_eq!(endpoint_of(&clusters, &good.endpoint())["circuit_breaker"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_service_opens_for_the_whole_service() {
    let bad = upstream::http1().name("bad").status(503).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("two").endpoint(bad.addr).endpoint(good.addr).yaml(),
        policy("two", "  loadBalancer: round-robin\n  circuitBreaker: {scope: service, failureRateThreshold: 50, window: 4, minimumCalls: 4, openDuration: 60s}\n"),
    ]))
    .await;
    // Two of the first four calls fail: the service's one breaker opens and rejects
    // everything, the healthy endpoint's calls too.
    ok_of(&proxy, "http://two:8080/", 4).await;
    let r = proxy.get("http://two:8080/").await;
    r.assert_status(503);
    assert_eq!(r.header("x-outrider-local-reply"), Some("circuit-open"));
    assert_eq!(ok_of(&proxy, "http://two:8080/", 10).await, 0);
    assert_eq!(bad.request_count() + good.request_count(), 4);
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_circuit_breaker_state", &[("service", "two")]), 1.0);
    assert!(!outrider_tests::prom::has(&m, "outrider_circuit_breaker_endpoints"), "no per-endpoint view:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_skip_an_open_endpoint() {
    let bad = upstream::http1().name("bad").status(503).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("two").endpoint(bad.addr).endpoint(good.addr).yaml(),
        policy(
            "two",
            &format!(
                "  loadBalancer: round-robin\n  circuitBreaker: {{maxRetries: 100, {BREAKER}}}\n  retries:\n    \
                 attempts: 2\n    retryOn: [5xx]\n    backoff: {{base: 1ms, max: 2ms}}\n    budget: {{ratio: 1.0}}\n"
            ),
        ),
    ]))
    .await;
    assert_eq!(ok_of(&proxy, "http://two:8080/", 40).await, 40, "a failed try is retried on the healthy endpoint");
    assert_eq!(bad.request_count(), 4, "once open, neither first tries nor retries go to the bad endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_subset_serves_when_every_endpoint_of_the_split_is_open() {
    let v1 = upstream::http1().name("v1").start().await;
    let v2a = upstream::http1().name("v2a").status(503).start().await;
    let v2b = upstream::http1().name("v2b").status(503).start().await;
    let svc = service("canary")
        .endpoint_labeled(v1.addr, &[("version", "v1")])
        .endpoint_labeled(v2a.addr, &[("version", "v2")])
        .endpoint_labeled(v2b.addr, &[("version", "v2")])
        .yaml();
    let routes = "  routes:\n    - match: {pathPrefix: /}\n      split: [{subset: {version: v2}, weight: 100}]\n";
    let proxy = ProxyHarness::start(&docs(&[
        svc.clone(),
        policy("canary", &format!("  circuitBreaker: {{fallback: {{subset: {{version: v1}}}}, {BREAKER}}}\n{routes}")),
    ]))
    .await;
    let ok = ok_of(&proxy, "http://canary:8080/", 30).await;
    assert_eq!(v2a.request_count() + v2b.request_count(), 8, "each v2 endpoint got 4 calls, then opened");
    assert_eq!(ok, 22, "every later request was answered by the fallback subset");
    assert_eq!(v1.request_count(), 22);
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_circuit_breaker_fallbacks_total", &[("service", "canary")]), 22.0);

    // Without a fallback the same requests get the local 503.
    proxy.reload(&docs(&[svc, policy("canary", &format!("  circuitBreaker: {{{BREAKER}}}\n{routes}"))])).await;
    let r = proxy.get("http://canary:8080/").await;
    r.assert_status(503);
    assert_eq!(r.header("x-outrider-local-reply"), Some("circuit-open"), "the breakers' state was carried over");
    assert_eq!(r.header("x-outrider-overloaded"), Some("true"));
    assert_eq!(v1.request_count(), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_service_serves_when_the_service_breaker_is_open() {
    let bad = upstream::http1().name("bad").status(500).start().await;
    let legacy = upstream::http1().name("legacy").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("api").endpoint(bad.addr).yaml(),
        service("legacy").port(9090).endpoint(legacy.addr).yaml(),
        policy("api", "  circuitBreaker: {scope: service, fallback: {service: legacy}, failureRateThreshold: 50, window: 4, minimumCalls: 4, openDuration: 60s}\n"),
    ]))
    .await;
    assert_eq!(ok_of(&proxy, "http://api:8080/", 4).await, 0);
    for _ in 0..10 {
        let r = proxy.get("http://api:8080/x").await;
        r.assert_status(200);
        assert_eq!(r.upstream(), Some("legacy"), "the fallback service answers");
    }
    assert_eq!(bad.request_count(), 4);
    assert_eq!(legacy.last().path, "/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_count_as_failures_and_open_a_black_holed_endpoints_breaker() {
    let gate = Gate::new();
    let hole = upstream::http1().name("hole").gate(&gate).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("bh").endpoint(hole.addr).endpoint(good.addr).yaml(),
        policy(
            "bh",
            "  loadBalancer: round-robin\n  timeout: 200ms\n  circuitBreaker: {failureRateThreshold: 50, window: 2, minimumCalls: 2, openDuration: 60s}\n",
        ),
    ]))
    .await;
    let ok = ok_of(&proxy, "http://bh:8080/", 24).await;
    assert_eq!(hole.request_count(), 2, "two timed-out calls opened its breaker; nothing more was sent to it");
    assert_eq!(ok, 22);
    let clusters: serde_json::Value = serde_json::from_str(&proxy.admin("GET", "/clusters").await.text()).unwrap();
    let ep = endpoint_of(&clusters, &hole.endpoint());
    assert_eq!(ep["circuit_breaker"], "open");
    assert!(ep["ewma_ms"].as_f64().unwrap() >= 150.0, "the timeout was fed as its latency: {ep}");
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_open_the_breaker_while_retries_keep_callers_whole() {
    let gate = Gate::new();
    let hole = upstream::http1().name("hole").gate(&gate).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("bh").endpoint(hole.addr).endpoint(good.addr).yaml(),
        policy(
            "bh",
            "  loadBalancer: round-robin\n  timeout: 5s\n  retries:\n    attempts: 1\n    perTryTimeout: 200ms\n    \
             retryOn: [gateway-error]\n    backoff: {base: 1ms, max: 2ms}\n  \
             circuitBreaker: {failureRateThreshold: 50, window: 2, minimumCalls: 2, openDuration: 60s}\n",
        ),
    ]))
    .await;
    assert_eq!(ok_of(&proxy, "http://bh:8080/", 20).await, 20, "each timed-out try was retried on the other endpoint");
    assert_eq!(hole.request_count(), 2);
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_open_the_breaker_without_a_single_failure() {
    let slow = upstream::http1().name("slow").delay(Duration::from_millis(600)).start().await;
    let fast = upstream::http1().name("fast").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("sl").endpoint(slow.addr).endpoint(fast.addr).yaml(),
        policy(
            "sl",
            "  loadBalancer: round-robin\n  circuitBreaker: {failureRateThreshold: 100, slowCallDuration: 500ms, slowCallRateThreshold: 100, window: 2, minimumCalls: 2, openDuration: 60s}\n",
        ),
    ]))
    .await;
    assert_eq!(ok_of(&proxy, "http://sl:8080/", 20).await, 20, "slow calls still succeed");
    assert_eq!(slow.request_count(), 2, "two calls of 600 ms ≥ slowCallDuration: 100% slow, open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_endpoint_is_probed_after_open_duration_and_closes_when_healthy() {
    let switch = upstream::Switch::new();
    let flaky = upstream::http1().name("flaky").switch(&switch).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("hp").endpoint(flaky.addr).endpoint(good.addr).yaml(),
        policy(
            "hp",
            "  loadBalancer: round-robin\n  circuitBreaker: {failureRateThreshold: 50, window: 2, minimumCalls: 2, openDuration: 200ms, halfOpenCalls: 1}\n",
        ),
    ]))
    .await;
    switch.set_status(503);
    outrider_tests::wait::wait_until("the flaky endpoint's breaker opens", || async {
        proxy.get("http://hp:8080/").await;
        flaky.request_count() >= 2
    })
    .await;
    switch.set_status(0);
    // Healed: after openDuration a probe reaches it, succeeds, and it takes traffic again.
    outrider_tests::wait::wait_until("the healed endpoint serves again", || async {
        proxy.get("http://hp:8080/").await.upstream() == Some("flaky")
    })
    .await;
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_circuit_breaker_endpoints", &[("service", "hp"), ("state", "closed")]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_nothing_untried_in_its_split_goes_to_the_fallback() {
    let switch = upstream::Switch::new();
    let v1 = upstream::http1().name("v1").start().await;
    let v2 = upstream::http1().name("v2").switch(&switch).start().await;
    let svc = service("rf")
        .endpoint_labeled(v1.addr, &[("version", "v1")])
        .endpoint_labeled(v2.addr, &[("version", "v2")])
        .yaml();
    let spec = |fallback: &str| {
        format!(
            "  retries:\n    attempts: 1\n    retryOn: [5xx]\n    backoff: {{base: 1ms, max: 2ms}}\n  \
             circuitBreaker: {{{fallback}failureRateThreshold: 100, window: 100, minimumCalls: 100}}\n  \
             routes:\n    - match: {{pathPrefix: /}}\n      split: [{{subset: {{version: v2}}, weight: 100}}]\n"
        )
    };
    let proxy =
        ProxyHarness::start(&docs(&[svc.clone(), policy("rf", &spec("fallback: {subset: {version: v1}}, "))])).await;
    switch.fail_next(1);
    let r = proxy.get("http://rf:8080/").await;
    r.assert_status(200);
    assert_eq!(r.upstream(), Some("v1"), "v2, the only endpoint of the split, was tried: the retry went to v1");
    assert_eq!((v2.request_count(), v1.request_count()), (1, 1));
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_circuit_breaker_fallbacks_total", &[("service", "rf")]), 1.0);

    // Without a fallback the retry goes to v2 again.
    proxy.reload(&docs(&[svc, policy("rf", &spec(""))])).await;
    switch.fail_next(1);
    let r = proxy.get("http://rf:8080/").await;
    r.assert_status(200);
    assert_eq!(r.upstream(), Some("v2"));
    assert_eq!((v2.request_count(), v1.request_count()), (3, 1));
}

/// A per-try timeout is a failed call and, when it lasted `slowCallDuration`, a slow one. One
/// endpoint, four calls: two abandoned by `perTryTimeout` (100 ms; the upstream would take
/// 300 ms) and two answered at once. The failure rate, 50 %, stays under its threshold (60 %);
/// the slow-call rate reaches its own (50 %) only if the timeouts count as slow — with
/// `slowCallDuration: 90ms` they do and the breaker opens, with `1s` they do not and it stays
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_is_a_slow_call_when_it_lasted_slow_call_duration() {
    for (slow_call, opens) in [("90ms", true), ("1s", false)] {
        let up = upstream::http1().name("st").start().await;
        let proxy = ProxyHarness::start(&docs(&[
            service("st").endpoint(up.addr).yaml(),
            policy(
                "st",
                &format!(
                    "  retries: {{attempts: 0, perTryTimeout: 100ms}}\n  circuitBreaker: {{failureRateThreshold: 60, \
                     slowCallDuration: {slow_call}, slowCallRateThreshold: 50, window: 4, minimumCalls: 4, \
                     openDuration: 60s}}\n"
                ),
            ),
        ]))
        .await;
        for i in 0..2 {
            proxy.get(&format!("http://st:8080/late/{i}?delay_ms=300")).await.assert_status(504);
            proxy.get(&format!("http://st:8080/fast/{i}")).await.assert_status(200);
        }
        let r = proxy.get("http://st:8080/after").await;
        let clusters: serde_json::Value = serde_json::from_str(&proxy.admin("GET", "/clusters").await.text()).unwrap();
        let state = endpoint_of(&clusters, &up.endpoint())["circuit_breaker"].clone();
        if opens {
            assert_eq!(state, "open", "slowCallDuration {slow_call}: two slow timeouts of four calls open it");
            assert_eq!(
                (r.status.as_u16(), r.header("x-outrider-local-reply")),
                (503, Some("circuit-open")),
                "slowCallDuration {slow_call}"
            );
            assert_eq!(up.request_count(), 4, "nothing reached the endpoint once it was open");
        } else {
            assert_eq!(state, "closed", "slowCallDuration {slow_call}: 100 ms timeouts are failures, not slow calls");
            r.assert_status(200);
        }
    }
}
