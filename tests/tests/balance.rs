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
    let fast = upstream::http1().name("fast").start().await;
    let slow = upstream::http1().name("slow").delay(Duration::from_millis(20)).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("lat").endpoint(fast.addr).endpoint(slow.addr).yaml(),
        traffic_policy("lat", "p2c-ewma", ""),
    ]))
    .await;
    let counts = distribution(&proxy, "http://lat:8080/", 200, 4).await;
    let fast_n = counts.get("fast").copied().unwrap_or(0);
    assert!(fast_n > 160, "the fast endpoint should get more than 80% of 200: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 200);
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
