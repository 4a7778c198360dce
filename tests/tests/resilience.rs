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
    // Two services with the same breaker but for openDuration: one stays open for the whole
    // test (so "open rejects" cannot race the clock), the other half-opens quickly.
    let switch = Switch::new();
    let up = upstream::http1().name("b").switch(&switch).start().await;
    let breaker = |open: &str| {
        format!(
            "  circuitBreaker:\n    failureRateThreshold: 50\n    window: 4\n    minimumCalls: 4\n    openDuration: {open}\n    halfOpenCalls: 1\n"
        )
    };
    let proxy = ProxyHarness::start(&docs(&[
        service("b").endpoint(up.addr).yaml(),
        policy("b", &breaker("60s")),
        service("b2").endpoint(up.addr).yaml(),
        policy("b2", &breaker("200ms")),
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

    // b2 opens the same way; once healed, after openDuration one probe goes through and
    // closes it.
    for _ in 0..4 {
        proxy.get("http://b2:8080/").await.assert_status(503);
    }
    assert_eq!(up.request_count(), 8);
    switch.set_status(0);
    wait_until("the breaker lets a probe through and closes", || async {
        proxy.get("http://b2:8080/").await.status.as_u16() == 200
    })
    .await;
    proxy.get("http://b2:8080/").await.assert_status(200);
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_circuit_breaker_state", &[("service", "b2")]), 0.0);
    assert_eq!(sum(&m, "outrider_circuit_breaker_state", &[("service", "b")]), 1.0, "b is still open");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_get_deadline_exceeded_and_their_grpc_timeout_is_honoured() {
    let slow = upstream::h2().name("slow-grpc").delay(Duration::from_secs(5)).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("g").protocol("grpc").endpoint(slow.addr).yaml(),
        policy("g", "  timeout: 3s\n"),
    ]))
    .await;
    // The caller's grpc-timeout (150 ms) is shorter than the route's 3 s: it wins.
    let req = http::Request::builder()
        .method("POST")
        .uri("http://g:8080/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "150m")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let r = outrider_tests::wait::within(
        "a gRPC call with a 150 ms deadline",
        outrider_tests::client::send(&proxy.h2_client(), req),
    )
    .await;
    r.assert_status(200);
    assert_eq!(r.header("grpc-status"), Some("4"), "DEADLINE_EXCEEDED");
    assert_eq!(r.header("x-outrider-local-reply"), Some("timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_up_to_the_backoff_max() {
    let switch = Switch::new();
    let up = upstream::http1().name("ra").switch(&switch).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("ra").endpoint(up.addr).yaml(),
        policy("ra", "  retries:\n    attempts: 1\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 20ms}\n"),
    ]))
    .await;
    // The server asks for an hour; the policy's max (20 ms) caps it, so the retry
    // happens well within the test deadline.
    switch.retry_after(3600);
    switch.fail_next(1);
    let r = outrider_tests::wait::within("a retry after Retry-After: 3600", proxy.get("http://ra:8080/")).await;
    r.assert_status(200);
    assert_eq!(up.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_stream_is_cut_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends headers and one chunk, then nothing, forever.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n").await;
                // Hold the connection open without sending more.
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let proxy = ProxyHarness::start(&docs(&[
        service("stall").endpoint(addr).yaml(),
        policy("stall", "  idleTimeout: 200ms\n"),
    ]))
    .await;
    let resp = outrider_tests::wait::within(
        "response headers",
        proxy.client().request(outrider_tests::client::get("http://stall:8080/")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body = outrider_tests::wait::within("the stalled body to fail", resp.into_body().collect()).await;
    assert!(body.is_err(), "the stream must fail, not end cleanly with a truncated body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_percent_failing_upstream_looks_healthy_with_retries() {
    let switch = Switch::new();
    switch.fail_rate(0.3);
    let up = upstream::http1().name("flaky30").switch(&switch).start().await;
    // 5 retries: a request fails only if all 6 tries fail (0.3^6 ≈ 0.07%, so more
    // than 10 failures of 2000 — below 99.5% — has odds of about 1 in 10^6). With 8
    // callers, more than Envoy's default of 3 concurrent retries are needed.
    let proxy = ProxyHarness::start(&docs(&[
        service("f30").endpoint(up.addr).yaml(),
        policy(
            "f30",
            "  circuitBreaker: {maxRetries: 64}\n  retries:\n    attempts: 5\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 4ms}\n    budget: {ratio: 1.0, minPerSecond: 10, window: 10s}\n",
        ),
    ]))
    .await;
    let n = 2000;
    let ok = futures_util::stream::iter(0..n)
        .map(|_| proxy.get("http://f30:8080/"))
        .buffer_unordered(8)
        .filter(|r| std::future::ready(r.status.as_u16() == 200))
        .count()
        .await;
    assert!(ok as f64 / n as f64 >= 0.995, "{ok} of {n} succeeded");
    let m = proxy.metrics().await;
    let retries = sum(&m, "outrider_retries_total", &[("service", "f30")]);
    // Within budget: ratio 1.0 × 2000 requests + 10/s × 10 s.
    assert!(retries > 0.0 && retries <= 2100.0, "{retries} retries");
    assert_eq!(up.request_count() as f64, n as f64 + retries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_replay_cap_is_not_retried() {
    let switch = Switch::new();
    let up = upstream::http1().name("big").switch(&switch).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("big").endpoint(up.addr).yaml(),
        policy("big", "  retries:\n    attempts: 2\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n"),
    ]))
    .await;
    switch.fail_next(1);
    let r = proxy.send(request("PUT", "http://big:8080/blob", vec![b'x'; 100 * 1024])).await;
    r.assert_status(503);
    assert_eq!(up.request_count(), 1, "100 KiB is over the 64 KiB replay cap: one try only");
    switch.fail_next(1);
    let r = proxy.send(request("PUT", "http://big:8080/blob", vec![b'y'; 1024])).await;
    r.assert_status(200);
    assert_eq!(up.request_count(), 3, "a 1 KiB PUT is retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_of_three_is_ejected() {
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let dead = upstream::closed_port();
    let proxy = ProxyHarness::start(&docs(&[
        service("three").endpoint(a.addr).endpoint(b.addr).endpoint(dead).yaml(),
        policy(
            "three",
            "  loadBalancer: round-robin\n  outlierDetection: {consecutive5xx: 2, baseEjectionTime: 30s, maxEjectionPercent: 34}\n",
        ),
    ]))
    .await;
    let mut failures = 0;
    for _ in 0..9 {
        if proxy.get("http://three:8080/").await.status.as_u16() != 200 {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "two connect failures in a row eject the dead endpoint");
    for _ in 0..30 {
        proxy.get("http://three:8080/").await.assert_status(200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried() {
    let switch = Switch::new();
    let up = upstream::h2().name("g").switch(&switch).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("gr").protocol("grpc").endpoint(up.addr).yaml(),
        policy("gr", "  retries:\n    attempts: 2\n    retryOn: [unavailable]\n    backoff: {base: 1ms, max: 2ms}\n"),
    ]))
    .await;
    switch.grpc_unavailable_next(2);
    let req = http::Request::builder()
        .method("POST")
        .uri("http://gr:8080/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let r = outrider_tests::client::send(&proxy.h2_client(), req).await;
    r.assert_status(200);
    assert_eq!(r.header("grpc-status"), None, "the third try succeeded");
    assert_eq!(up.request_count(), 3);
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_retries_total", &[("service", "gr"), ("reason", "grpc-status")]), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_are_injected_at_the_configured_rate() {
    let up = upstream::http1().name("fr").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("fr").endpoint(up.addr).yaml(),
        policy("fr", "  faults: {abort: {percent: 30, status: 503}}\n"),
    ]))
    .await;
    let n = 1000;
    let aborted = futures_util::stream::iter(0..n)
        .map(|_| proxy.get("http://fr:8080/"))
        .buffer_unordered(8)
        .filter(|r| std::future::ready(r.header("x-outrider-local-reply") == Some("fault-injected")))
        .count()
        .await;
    // Binomial(1000, 0.3): mean 300, sd ≈ 14.5; ±5 sd.
    assert!((228..=372).contains(&aborted), "{aborted} of {n} aborted");
    assert_eq!(up.request_count(), n - aborted);
}

/// A fault delay holds the request before it goes upstream, for the whole
/// delay, and is counted when it starts. Checked by what the proxy and the
/// upstream observe, not by a stopwatch: the delay is counted while the upstream
/// has seen nothing; a request sent after it overtakes it; and the proxy's own
/// latency histogram puts the delayed request above the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_delay_holds_the_request_and_is_counted() {
    let up = upstream::http1().name("d").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("slow").endpoint(up.addr).yaml(),
        policy("slow", "  faults: {delay: {percent: 100, duration: 3s}}\n"),
        service("fast").endpoint(up.addr).yaml(),
    ]))
    .await;
    let c = outrider_tests::client::http1(proxy.addrs.outbound);
    let slow = tokio::spawn(async move {
        outrider_tests::client::send(&c, outrider_tests::client::get("http://slow:8080/slow")).await
    });
    wait_until("the delay to be injected", || async {
        let m = proxy.metrics().await;
        sum(&m, "outrider_faults_injected_total", &[("service", "slow"), ("kind", "delay")]) == 1.0
    })
    .await;
    assert_eq!(up.request_count(), 0, "the delayed request waits in the proxy");
    proxy.get("http://fast:8080/fast").await.assert_status(200);
    let r = outrider_tests::wait::within("the delayed reply", slow).await.unwrap();
    r.assert_status(200);
    assert!(r.header("x-outrider-local-reply").is_none());
    let paths: Vec<_> = up.requests().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/fast", "/slow"], "the request sent later overtook the delayed one");
    let m = proxy.metrics().await;
    let bucket = |le: f64| {
        outrider_tests::prom::samples(&m)
            .into_iter()
            .filter(|s| s.name == "outrider_request_duration_seconds_bucket")
            .filter(|s| s.labels.iter().any(|(k, v)| k == "service" && v == "slow"))
            .find(|s| s.labels.iter().any(|(k, v)| k == "le" && v.parse::<f64>().ok() == Some(le)))
            .map(|s| s.value)
            .expect("a bucket")
    };
    assert_eq!(bucket(2.5), 0.0, "the proxy measured the delayed request at more than 2.5 s");
    assert_eq!(sum(&m, "outrider_request_duration_seconds_count", &[("service", "slow")]), 1.0);
    assert_eq!(sum(&m, "outrider_faults_injected_total", &[("service", "fast")]), 0.0);
}
