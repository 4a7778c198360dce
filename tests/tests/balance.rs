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

/// Each endpoint's `(ewma_ms, pending)` of service `service`, by address, from `/clusters`.
async fn estimates(proxy: &ProxyHarness, service: &str) -> BTreeMap<String, (Option<f64>, u64)> {
    let clusters: serde_json::Value = serde_json::from_str(&proxy.admin("GET", "/clusters").await.text()).unwrap();
    let cluster = clusters["clusters"].as_array().unwrap().iter().find(|c| c["service"] == service).unwrap().clone();
    cluster["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let addr = e["address"].as_str().unwrap().to_string();
            (addr, (e["ewma_ms"].as_f64(), e["pending"].as_u64().unwrap_or(0)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_prefers_the_fast_endpoint() {
    // One request at a time, so each pick compares the two estimates alone (nothing in flight).
    // The slow endpoint is tried once while it is unmeasured (cost 0); its answer of at least
    // 500 ms then makes it the costlier one until its estimate, decaying on every read, has
    // fallen to the fast one's. The proxy's own estimates (`/clusters`) are read before every
    // request, and the test stops sending once the slow one's is no longer above the fast
    // one's: from then on P2C may rightly try it again. So the count below holds however fast
    // the machine runs the requests.
    let fast = upstream::http1().name("fast").start().await;
    let slow = upstream::http1().name("slow").delay(Duration::from_millis(500)).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("lat").endpoint(fast.addr).endpoint(slow.addr).yaml(),
        traffic_policy("lat", "p2c-ewma", ""),
    ]))
    .await;
    let (fast_addr, slow_addr) = (fast.addr.to_string(), slow.addr.to_string());
    let mut sent = 0;
    let mut last = BTreeMap::new();
    while sent < 200 {
        last = estimates(&proxy, "lat").await;
        if let (Some(f), Some(s)) = (last[&fast_addr].0, last[&slow_addr].0)
            && s <= f
        {
            break;
        }
        proxy.get("http://lat:8080/").await.assert_status(200);
        sent += 1;
    }
    assert_eq!(slow.request_count(), 1, "the slow endpoint got {} of {sent}: {last:?}", slow.request_count());
    assert_eq!(fast.request_count() + slow.request_count(), sent);
    let (f, s) = (last[&fast_addr].0.unwrap(), last[&slow_addr].0.unwrap());
    assert!(s > f, "the slow endpoint's estimate ({s} ms) stays above the fast one's ({f} ms)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_endpoint_gets_one_request_until_its_timeout_is_its_latency() {
    // Never measured, the hole is tried once; while that request is out it costs more than any
    // measured endpoint, so it gets no second one however many requests pass meanwhile; once
    // the 1 s timeout fires, the timeout is its latency. Load runs in the background while the
    // test waits on the proxy's own state (`/clusters`): the hole measured.
    let gate = upstream::Gate::new();
    let hole = upstream::http1().name("hole").gate(&gate).start().await;
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let proxy = std::sync::Arc::new(
        ProxyHarness::start(&docs(&[
            service("bh").endpoint(hole.addr).endpoint(a.addr).endpoint(b.addr).yaml(),
            traffic_policy("bh", "p2c-ewma", "  timeout: 1s\n"),
        ]))
        .await,
    );
    // One request at a time until the hole holds one and a and b have each answered once: no
    // two picks race on an idle endpoint's state, and the others are measured (an unmeasured
    // endpoint with requests out costs the same penalty as the hole, plus its in-flight count).
    let mut first = Vec::new();
    let mut probe = None;
    while probe.is_none() || a.request_count() == 0 || b.request_count() == 0 {
        let p = proxy.clone();
        let held = hole.request_count();
        let req = tokio::spawn(async move { p.get("http://bh:8080/").await.status.as_u16() });
        outrider_tests::eventually!("the request is answered, or held by the hole", {
            req.is_finished() || hole.request_count() > held
        });
        if hole.request_count() > held {
            assert!(probe.is_none(), "a second request went to the hole while its probe was out");
            probe = Some(req);
        } else {
            first.push(req.await.unwrap());
        }
    }
    let probe = probe.unwrap();
    // Then eight requests in flight at all times until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (proxy, stop) = (proxy.clone(), stop.clone());
        async move {
            let more = std::iter::from_fn(move || (!stop.load(std::sync::atomic::Ordering::Relaxed)).then_some(()));
            futures_util::stream::iter(more)
                .map(|()| proxy.get("http://bh:8080/"))
                .buffer_unordered(8)
                .map(|r| r.status.as_u16())
                .collect::<Vec<u16>>()
                .await
        }
    });
    let hole_addr = hole.addr.to_string();
    let before = a.request_count() + b.request_count();
    // Once the timeout has fired, the hole's estimate is that timeout.
    let hole_ms = outrider_tests::wait::wait_for("the hole to be measured by its timeout", || async {
        estimates(&proxy, "bh").await[&hole_addr].0
    })
    .await;
    let balanced = a.request_count() + b.request_count() - before;
    let others = estimates(&proxy, "bh").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.await.unwrap();
    assert_eq!(probe.await.unwrap(), 504, "the probe ends with the timeout's 504");
    assert!(first.iter().all(|&s| s == 200), "{first:?}");
    assert!(balanced >= 8, "requests kept flowing to the others while the probe was out: {balanced}");
    let attempts: Vec<_> = hole.requests().iter().map(|r| r.header("x-outrider-attempt").map(str::to_owned)).collect();
    let failed: Vec<u16> = statuses.iter().copied().filter(|&s| s != 200).collect();
    assert_eq!(
        hole.request_count(),
        1,
        "one probe while it was unmeasured and out ({balanced} others meanwhile; attempts {attempts:?}; failed {failed:?})"
    );
    assert!(hole_ms >= 500.0, "the 1 s timeout is the hole's latency, a little decayed: {hole_ms} ms");
    let worst = [&a, &b].iter().filter_map(|u| others[&u.addr.to_string()].0).fold(0.0, f64::max);
    assert!(hole_ms > 10.0 * worst, "the hole ({hole_ms} ms) is far costlier than the others ({worst} ms)");
    assert!(statuses.iter().all(|&s| s == 200), "everything else was answered: {statuses:?}");
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
