//! Outlier detection end to end: what ejects an endpoint (consecutive 5xx, consecutive gateway
//! errors, a failure percentage, timeouts), and the ejection limit across config changes. Counts
//! are the ones the upstreams observed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::ProxyHarness;
use outrider_tests::policy::{docs, service};
use outrider_tests::prom::sum;
use outrider_tests::upstream::{self, Gate};
use outrider_tests::wait::wait_until;

fn policy(service: &str, spec: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {service}}}\nspec:\n  service: {service}\n{spec}"
    )
}

/// `n` GETs one after another; how many were not answered 200.
async fn failures_of(proxy: &ProxyHarness, uri: &str, n: usize) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        if proxy.get(uri).await.status.as_u16() != 200 {
            failed += 1;
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_endpoint_is_ejected_by_its_timeouts() {
    let gate = Gate::new();
    let hole = upstream::http1().name("hole").gate(&gate).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("bh").endpoint(hole.addr).endpoint(good.addr).yaml(),
        policy(
            "bh",
            "  loadBalancer: round-robin\n  timeout: 200ms\n  \
             outlierDetection: {consecutive5xx: 0, consecutiveGatewayErrors: 2, baseEjectionTime: 60s, maxEjectionPercent: 50}\n",
        ),
    ]))
    .await;
    assert_eq!(failures_of(&proxy, "http://bh:8080/", 24).await, 2, "two timeouts in a row eject it");
    assert_eq!(hole.request_count(), 2);
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_outlier_ejections_total", &[("service", "bh")]), 1.0);
    assert_eq!(sum(&m, "outrider_endpoints", &[("service", "bh"), ("state", "ejected")]), 1.0);
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_gateway_errors_eject_on_502_but_not_on_500() {
    let gw = upstream::http1().name("gw").status(502).start().await;
    let app = upstream::http1().name("app").status(500).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("g").endpoint(gw.addr).endpoint(app.addr).endpoint(good.addr).yaml(),
        policy(
            "g",
            "  loadBalancer: round-robin\n  \
             outlierDetection: {consecutive5xx: 0, consecutiveGatewayErrors: 3, baseEjectionTime: 60s, maxEjectionPercent: 100}\n",
        ),
    ]))
    .await;
    failures_of(&proxy, "http://g:8080/", 60).await;
    assert_eq!(gw.request_count(), 3, "three 502s in a row eject it");
    assert!(app.request_count() >= 20, "a 500 is not a gateway error: never ejected ({})", app.request_count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_percentage_over_the_interval_ejects() {
    let switch = upstream::Switch::new();
    let half = upstream::http1().name("half").switch(&switch).start().await;
    let good = upstream::http1().name("good").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("fp").endpoint(half.addr).endpoint(good.addr).yaml(),
        policy(
            "fp",
            "  loadBalancer: round-robin\n  outlierDetection: {consecutive5xx: 0, failurePercentageThreshold: 40, \
             failurePercentageMinimumRequests: 5, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50}\n",
        ),
    ]))
    .await;
    // Half of its answers fail, never enough in a row to matter: only the percentage can eject it.
    switch.fail_rate(0.5);
    wait_until("the half-failing endpoint is ejected", || async {
        // Enough requests within one interval for its percentage to count.
        failures_of(&proxy, "http://fp:8080/", 20).await;
        sum(&proxy.metrics().await, "outrider_outlier_ejections_total", &[("service", "fp")]) == 1.0
    })
    .await;
    let seen = half.request_count();
    assert_eq!(failures_of(&proxy, "http://fp:8080/", 20).await, 0);
    assert_eq!(half.request_count(), seen, "ejected: it gets nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_ejected_endpoint_frees_its_ejection_slot() {
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let (dead1, dead2) = (upstream::closed_port(), upstream::closed_port());
    let spec = "  loadBalancer: round-robin\n  \
                outlierDetection: {consecutive5xx: 2, baseEjectionTime: 60s, maxEjectionPercent: 34}\n";
    let proxy = ProxyHarness::start(&docs(&[
        service("three").endpoint(a.addr).endpoint(b.addr).endpoint(dead1).yaml(),
        policy("three", spec),
    ]))
    .await;
    assert_eq!(failures_of(&proxy, "http://three:8080/", 12).await, 2, "the first dead endpoint is ejected");
    // dead1 leaves the config while ejected; dead2 joins. At most one of three may be ejected,
    // and none is now: dead2 is ejected in turn.
    proxy
        .reload(&docs(&[
            service("three").endpoint(a.addr).endpoint(b.addr).endpoint(dead2).yaml(),
            policy("three", spec),
        ]))
        .await;
    assert_eq!(failures_of(&proxy, "http://three:8080/", 12).await, 2, "the second dead endpoint is ejected too");
    assert_eq!(failures_of(&proxy, "http://three:8080/", 20).await, 0);
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_outlier_ejections_total", &[("service", "three")]), 2.0);
}
