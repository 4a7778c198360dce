//! Load balancing and weighted splits, counted by which upstream answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use outrider_tests::ProxyHarness;
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream;

/// Send `n` GETs to `uri`, `concurrency` at a time; count answers by `x-upstream`.
async fn distribution(proxy: &ProxyHarness, uri: &str, n: usize, concurrency: usize) -> BTreeMap<String, usize> {
    let replies: Vec<_> =
        futures_util::stream::iter(0..n).map(|_| proxy.get(uri)).buffer_unordered(concurrency).collect().await;
    let mut counts = BTreeMap::new();
    for r in replies {
        r.assert_status(200);
        *counts.entry(r.upstream().expect("x-upstream").to_string()).or_insert(0) += 1;
    }
    counts
}

fn traffic_policy(service: &str, lb: &str, routes: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {service}}}\nspec:\n  service: {service}\n  loadBalancer: {lb}\n{routes}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_even() {
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let c = upstream::http1().name("c").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("rr").endpoint(a.addr).endpoint(b.addr).endpoint(c.addr).yaml(),
        traffic_policy("rr", "round-robin", ""),
    ]))
    .await;
    let counts = distribution(&proxy, "http://rr:8080/", 300, 6).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (name, n) in &counts {
        assert!((99..=101).contains(n), "round robin gave {name} {n} of 300: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_prefers_the_fast_endpoint() {
    // The slow endpoint is tried once (never measured yet), and its answer of at least
    // 500 ms, which decays over tens of seconds, keeps it costlier than the fast one for
    // the whole run. Counted by what each upstream saw.
    let fast = upstream::http1().name("fast").start().await;
    let slow = upstream::http1().name("slow").delay(Duration::from_millis(500)).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("lat").endpoint(fast.addr).endpoint(slow.addr).yaml(),
        traffic_policy("lat", "p2c-ewma", ""),
    ]))
    .await;
    let counts = distribution(&proxy, "http://lat:8080/", 200, 4).await;
    assert_eq!(counts.values().sum::<usize>(), 200);
    assert!(slow.request_count() <= 2, "the slow endpoint got {} of 200: {counts:?}", slow.request_count());
    assert_eq!(fast.request_count() + slow.request_count(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_endpoint_gets_one_request_until_its_timeout_is_its_latency() {
    // Never measured, it is tried once; while that request is out it costs more than any
    // measured endpoint, and once the timeout fires the timeout is its latency.
    let gate = upstream::Gate::new();
    let hole = upstream::http1().name("hole").gate(&gate).start().await;
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("bh").endpoint(hole.addr).endpoint(a.addr).endpoint(b.addr).yaml(),
        traffic_policy("bh", "p2c-ewma", "  timeout: 1s\n"),
    ]))
    .await;
    let replies: Vec<_> =
        futures_util::stream::iter(0..300).map(|_| proxy.get("http://bh:8080/")).buffer_unordered(8).collect().await;
    let ok = replies.iter().filter(|r| r.status.as_u16() == 200).count();
    // Each probe is held until its 1 s timeout; after it the decaying estimate lets P2C try the
    // hole again now and then (by design: a slow endpoint is not starved forever), so how many
    // probes fit depends on how long the 300 requests take. A balancer that ignored the timeouts
    // would send it about 100; a handful means it is probed, not used.
    assert!(hole.request_count() <= 5, "the black hole got {} of 300", hole.request_count());
    assert_eq!(ok + hole.request_count(), 300, "everything else was answered");
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_by_subset() {
    let v1 = upstream::http1().name("v1").start().await;
    let v2 = upstream::http1().name("v2").start().await;
    let routes = "  routes:\n    - name: main\n      match: {pathPrefix: /}\n      split:\n        - {subset: {version: v1}, weight: 90}\n        - {subset: {version: v2}, weight: 10}\n";
    let proxy = ProxyHarness::start(&docs(&[
        service("split")
            .endpoint_labeled(v1.addr, &[("version", "v1")])
            .endpoint_labeled(v2.addr, &[("version", "v2")])
            .yaml(),
        traffic_policy("split", "round-robin", routes),
    ]))
    .await;
    let counts = distribution(&proxy, "http://split:8080/", 1000, 8).await;
    let n1 = counts.get("v1").copied().unwrap_or(0);
    let n2 = counts.get("v2").copied().unwrap_or(0);
    // Binomial(1000, 0.9): mean 900, sd 9.5; 850..950 is more than 5 sd either side.
    assert!((850..=950).contains(&n1), "90/10 split gave {counts:?}");
    assert_eq!(n1 + n2, 1000, "{counts:?}");
}
