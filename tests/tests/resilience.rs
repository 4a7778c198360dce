//! Resilience policies end to end: retries, budgets, timeouts, circuit breakers,
//! outlier detection and fault injection, against real upstreams that fail on
//! command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::StreamExt;
use outrider_tests::ProxyHarness;
use outrider_tests::client::request;
use outrider_tests::policy::{docs, service};
use outrider_tests::prom::sum;
use outrider_tests::upstream::{self, Gate, Switch};
use outrider_tests::wait::wait_until;

fn policy(service: &str, spec: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {service}}}\nspec:\n  service: {service}\n{spec}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_recover_from_503_and_number_each_attempt() {
    let switch = Switch::new();
    let up = upstream::http1().name("flaky").switch(&switch).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("flaky").endpoint(up.addr).yaml(),
        policy("flaky", "  retries:\n    attempts: 3\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 5ms}\n"),
    ]))
    .await;
    switch.fail_next(2);
    let r = proxy.get("http://flaky:8080/x").await;
    r.assert_status(200);
    let seen = up.requests();
    assert_eq!(seen.len(), 3, "two failed tries and one good one");
    let attempts: Vec<_> = seen.iter().map(|s| s.header("x-outrider-attempt").unwrap_or("").to_string()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_retries_total", &[("service", "flaky"), ("reason", "5xx")]), 2.0);

    // More failures than attempts: the caller sees the last upstream answer.
    switch.fail_next(10);
    let r = proxy.get("http://flaky:8080/y").await;
    r.assert_status(503);
    assert!(r.header("x-outrider-local-reply").is_none(), "an upstream 503, not a local reply");
    assert_eq!(up.requests().len(), 3 + 4, "first try + 3 retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_goes_to_another_endpoint() {
    let bad = upstream::http1().name("bad").status(503).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("two").endpoint(bad.addr).endpoint(good.addr).yaml(),
        policy(
            "two",
            "  loadBalancer: round-robin\n  retries:\n    attempts: 1\n    retryOn: [gateway-error]\n    backoff: {base: 1ms, max: 2ms}\n",
        ),
    ]))
    .await;
    for _ in 0..20 {
        let r = proxy.get("http://two:8080/").await;
        r.assert_status(200);
        assert_eq!(r.upstream(), Some("good"));
    }
    // Some first tries went to the bad one (round robin: each retry takes the
    // next slot, so here every first try did); each was retried once, and never
    // on the endpoint that just failed.
    assert!(bad.request_count() >= 1, "bad saw {}", bad.request_count());
    assert_eq!(good.request_count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_only_when_the_policy_says_non_idempotent() {
    let switch = Switch::new();
    let up = upstream::http1().name("p").switch(&switch).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("p").endpoint(up.addr).yaml(),
        policy("p", "  retries:\n    attempts: 2\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n"),
    ]))
    .await;
    switch.fail_next(1);
    let r = proxy.send(request("POST", "http://p:8080/orders", "{\"n\":1}")).await;
    r.assert_status(503);
    assert_eq!(up.request_count(), 1, "a POST that reached the app is not sent twice");

    proxy
        .reload(&docs(&[
            service("p").endpoint(up.addr).yaml(),
            policy(
                "p",
                "  retries:\n    attempts: 2\n    retryOn: [5xx, non-idempotent]\n    backoff: {base: 1ms, max: 2ms}\n",
            ),
        ]))
        .await;
    switch.fail_next(1);
    let r = proxy.send(request("POST", "http://p:8080/orders", "{\"n\":2}")).await;
    r.assert_status(200);
    let seen = up.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(&seen[2].body[..], b"{\"n\":2}", "the body is replayed on the retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_is_504_and_per_try_timeout_moves_on() {
    let slow = upstream::http1().name("slow").delay(Duration::from_secs(5)).start().await;
    let fast = upstream::http1().name("fast").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("slowsvc").endpoint(slow.addr).yaml(),
        policy("slowsvc", "  timeout: 200ms\n"),
        service("mixed").endpoint(slow.addr).endpoint(fast.addr).yaml(),
        policy(
            "mixed",
            "  loadBalancer: round-robin\n  timeout: 3s\n  retries:\n    attempts: 1\n    perTryTimeout: 200ms\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n",
        ),
    ]))
    .await;
    let r = proxy.get("http://slowsvc:8080/").await;
    r.assert_status(504);
    assert_eq!(r.header("x-outrider-local-reply"), Some("timeout"));

    for _ in 0..4 {
        let r = proxy.get("http://mixed:8080/").await;
        r.assert_status(200);
        assert_eq!(r.upstream(), Some("fast"), "a try that timed out is retried on the other endpoint");
    }
    let m = proxy.metrics().await;
    assert!(sum(&m, "outrider_retries_total", &[("service", "mixed"), ("reason", "per-try-timeout")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries_and_returns_the_original_failure() {
    let up = upstream::http1().name("down").status(503).start().await;
    // ratio 0 and 1 retry/s over a 10 s window: 10 retries, whatever the traffic.
    let proxy = ProxyHarness::start(&docs(&[
        service("down").endpoint(up.addr).yaml(),
        policy(
            "down",
            "  retries:\n    attempts: 1\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n    budget: {ratio: 0.0, minPerSecond: 1, window: 10s}\n",
        ),
    ]))
    .await;
    for _ in 0..30 {
        proxy.get("http://down:8080/").await.assert_status(503);
    }
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_retries_total", &[("service", "down")]), 10.0);
    assert_eq!(sum(&m, "outrider_retry_budget_exhausted_total", &[("service", "down")]), 20.0);
    assert_eq!(up.request_count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_threshold_rejects_at_once_with_overloaded() {
    let gate = Gate::new();
    let up = upstream::http1().name("busy").gate(&gate).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("busy").endpoint(up.addr).yaml(),
        policy("busy", "  circuitBreaker: {maxRequests: 2}\n"),
    ]))
    .await;
    let held = futures_util::future::join_all((0..2).map(|_| proxy.get("http://busy:8080/held")));
    let third = async {
        wait_until("two requests held at the upstream", || async { up.request_count() == 2 }).await;
        let r = proxy.get("http://busy:8080/third").await;
        gate.open();
        r
    };
    let (held, r) = tokio::join!(held, third);
    r.assert_status(503);
    assert_eq!(r.header("x-outrider-overloaded"), Some("true"));
    assert_eq!(r.header("x-outrider-local-reply"), Some("overloaded"));
    assert!(held.iter().all(|r| r.status.as_u16() == 200));
    let m = proxy.metrics().await;
    assert_eq!(
        sum(&m, "outrider_circuit_breaker_rejections_total", &[("service", "busy"), ("reason", "max-requests")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_failures_then_half_opens_and_closes() {
    let switch = Switch::new();
    let up = upstream::http1().name("b").switch(&switch).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("b").endpoint(up.addr).yaml(),
        policy(
            "b",
            "  circuitBreaker:\n    failureRateThreshold: 50\n    window: 4\n    minimumCalls: 4\n    openDuration: 300ms\n    halfOpenCalls: 1\n",
        ),
    ]))
    .await;
    switch.set_status(503);
    for _ in 0..4 {
        proxy.get("http://b:8080/").await.assert_status(503);
    }
    assert_eq!(up.request_count(), 4);
    let r = proxy.get("http://b:8080/").await;
    r.assert_status(503);
    assert_eq!(r.header("x-outrider-local-reply"), Some("circuit-open"));
    assert_eq!(r.header("x-outrider-overloaded"), Some("true"));
    assert_eq!(up.request_count(), 4, "open: nothing reaches the upstream");
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_circuit_breaker_state", &[("service", "b")]), 1.0);

    // Heal the upstream; after openDuration one probe goes through and closes it.
    switch.set_status(0);
    wait_until("the breaker lets a probe through and closes", || async {
        proxy.get("http://b:8080/").await.status.as_u16() == 200
    })
    .await;
    proxy.get("http://b:8080/").await.assert_status(200);
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_circuit_breaker_state", &[("service", "b")]), 0.0);
    assert!(sum(&m, "outrider_circuit_breaker_rejections_total", &[("service", "b"), ("reason", "open")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_the_failing_endpoint() {
    let bad = upstream::http1().name("bad").status(500).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("o").endpoint(bad.addr).endpoint(good.addr).yaml(),
        policy(
            "o",
            "  loadBalancer: round-robin\n  outlierDetection: {consecutive5xx: 3, baseEjectionTime: 30s, maxEjectionPercent: 50}\n",
        ),
    ]))
    .await;
    // Until the bad endpoint has failed 3 times in a row it still gets traffic.
    let replies: Vec<_> = futures_util::stream::iter(0..10).then(|_| proxy.get("http://o:8080/")).collect().await;
    assert_eq!(replies.iter().filter(|r| r.status.as_u16() == 500).count(), 3);
    // Ejected: everything goes to the good one now.
    for _ in 0..20 {
        proxy.get("http://o:8080/").await.assert_status(200);
    }
    assert_eq!(bad.request_count(), 3);
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_outlier_ejections_total", &[("service", "o")]), 1.0);
    assert_eq!(sum(&m, "outrider_endpoints", &[("service", "o"), ("state", "ejected")]), 1.0);
    let clusters = proxy.admin("GET", "/clusters").await.text();
    assert!(clusters.contains("\"health\": \"ejected\""), "{clusters}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_by_percentage() {
    let up = upstream::http1().name("f").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("f").endpoint(up.addr).yaml(),
        policy(
            "f",
            "  routes:\n    - name: teapot\n      match: {pathPrefix: /tea}\n      split: [{weight: 100}]\n      faults: {abort: {percent: 100, status: 418}}\n    - name: rest\n      match: {pathPrefix: /}\n      split: [{weight: 100}]\n",
        ),
    ]))
    .await;
    let r = proxy.get("http://f:8080/tea").await;
    r.assert_status(418);
    assert_eq!(r.header("x-outrider-local-reply"), Some("fault-injected"));
    proxy.get("http://f:8080/coffee").await.assert_status(200);
    assert_eq!(up.request_count(), 1, "the aborted request never reached the upstream");
}
