//! Circuit-breaker thresholds mean what Envoy means by them, end to end:
//! `maxConnections` caps a cluster's upstream connections and requests wait for
//! one; `maxPendingRequests` bounds the wait; `maxRequests` holds a request's
//! slot until its response body ends; `maxRetries` bounds retries waiting or in
//! flight. And pooled connections close when idle past `idleTimeout`, by a timer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::ProxyHarness;
use outrider_tests::client::{self, Reply};
use outrider_tests::policy::{docs, service};
use outrider_tests::prom::sum;
use outrider_tests::upstream::{self, Gate, Switch};
use outrider_tests::wait::{self, wait_until};
use tokio::task::JoinHandle;

fn policy(service: &str, spec: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {service}}}\nspec:\n  service: {service}\n{spec}"
    )
}

/// A field of the service's `circuit_breaker` in the admin `/clusters` view
/// (`active_requests`, `pending_requests`, `connections`, `active_retries`).
async fn breaker(proxy: &ProxyHarness, service: &str, field: &str) -> u64 {
    let text = proxy.admin("GET", "/clusters").await.text();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = v["clusters"].as_array().unwrap().iter().find(|c| c["service"] == service).expect("the cluster");
    c["circuit_breaker"][field].as_u64().unwrap_or_else(|| panic!("{field} in {c}"))
}

/// `GET uri` on a connection of its own, in the background.
fn get(proxy: &ProxyHarness, uri: &str) -> JoinHandle<Reply> {
    let c = client::http1(proxy.addrs.outbound);
    let uri = uri.to_string();
    tokio::spawn(async move { client::send(&c, client::get(&uri)).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_caps_http1_connections_and_requests_wait_for_one() {
    let gate = Gate::new();
    let up = upstream::http1().name("capped").gate(&gate).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("capped").endpoint(up.addr).yaml(),
        policy("capped", "  circuitBreaker: {maxConnections: 2}\n"),
    ]))
    .await;
    let calls: Vec<_> = (0..5).map(|i| get(&proxy, &format!("http://capped:8080/{i}"))).collect();
    wait_until("two requests held at the upstream, three waiting for a connection", || async {
        up.request_count() == 2 && breaker(&proxy, "capped", "pending_requests").await == 3
    })
    .await;
    assert_eq!(up.connections(), 2, "no third connection while two are busy");
    assert_eq!(breaker(&proxy, "capped", "connections").await, 2);
    gate.open();
    for call in calls {
        wait::within("a reply", call).await.unwrap().assert_status(200);
    }
    assert_eq!(up.request_count(), 5);
    assert_eq!(up.connections(), 2, "the waiting requests reused the two connections");
    let m = proxy.metrics().await;
    assert_eq!(sum(&m, "outrider_circuit_breaker_rejections_total", &[("service", "capped")]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_requests_bounds_the_wait_and_rejects_beyond_it() {
    let gate = Gate::new();
    let up = upstream::http1().name("queue").gate(&gate).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("queue").endpoint(up.addr).yaml(),
        policy("queue", "  circuitBreaker: {maxConnections: 1, maxPendingRequests: 1}\n"),
    ]))
    .await;
    let first = get(&proxy, "http://queue:8080/first");
    wait_until("the first request at the upstream", || async { up.request_count() == 1 }).await;
    let second = get(&proxy, "http://queue:8080/second");
    wait_until("the second request waiting for the connection", || async {
        breaker(&proxy, "queue", "pending_requests").await == 1
    })
    .await;
    let third = proxy.get("http://queue:8080/third").await;
    third.assert_status(503);
    assert_eq!(third.header("x-outrider-overloaded"), Some("true"));
    assert_eq!(third.header("x-outrider-local-reply"), Some("overloaded"));
    gate.open();
    wait::within("the first reply", first).await.unwrap().assert_status(200);
    wait::within("the second reply", second).await.unwrap().assert_status(200);
    let paths: Vec<_> = up.requests().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/first", "/second"], "the rejected request never reached the upstream");
    assert_eq!(up.connections(), 1);
    let m = proxy.metrics().await;
    assert_eq!(
        sum(&m, "outrider_circuit_breaker_rejections_total", &[("service", "queue"), ("reason", "max-pending")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_holds_the_slot_until_the_response_body_ends() {
    use http_body_util::BodyExt;
    for protocol in ["http", "http2"] {
        let gate = Gate::new();
        let builder = if protocol == "http" { upstream::http1() } else { upstream::h2() };
        let up = builder.name("stream").hold_body(&gate).start().await;
        let proxy = ProxyHarness::start(&docs(&[
            service("stream").protocol(protocol).endpoint(up.addr).yaml(),
            policy("stream", "  circuitBreaker: {maxRequests: 1}\n"),
        ]))
        .await;
        // A long stream: headers and a first chunk, then nothing until the gate opens.
        let c = client::http1(proxy.addrs.outbound);
        let resp = wait::within("response headers", c.request(client::get("http://stream:8080/long"))).await.unwrap();
        assert_eq!(resp.status(), 200, "{protocol}");
        let mut body = resp.into_body();
        let chunk = wait::within("the first chunk", body.frame()).await.unwrap().unwrap();
        assert!(chunk.data_ref().is_some_and(|d| !d.is_empty()), "{protocol}");
        assert_eq!(breaker(&proxy, "stream", "active_requests").await, 1, "{protocol}: the stream holds its slot");
        let r = proxy.get("http://stream:8080/other").await;
        r.assert_status(503);
        assert_eq!(r.header("x-outrider-overloaded"), Some("true"), "{protocol}");
        assert_eq!(up.request_count(), 1, "{protocol}: the second request never reached the upstream");
        // The stream ends: its slot is free again.
        gate.open();
        wait::within("the end of the stream", body.collect()).await.unwrap();
        wait_until("the slot released", || async { breaker(&proxy, "stream", "active_requests").await == 0 }).await;
        proxy.get("http://stream:8080/after").await.assert_status(200);
        let m = proxy.metrics().await;
        assert_eq!(
            sum(&m, "outrider_circuit_breaker_rejections_total", &[("service", "stream"), ("reason", "max-requests")]),
            1.0,
            "{protocol}"
        );
    }
}

/// Many callers, an upstream that fails every first try and holds every retry:
/// at most `maxRetries` retries are out at once; the others are not made and
/// their callers get the first try's 503 straight away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_bounds_retries_in_flight() {
    let switch = Switch::new();
    let held = Gate::new();
    let up = upstream::http1().name("flaky").switch(&switch).gate_retries(&held).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("flaky").endpoint(up.addr).yaml(),
        policy(
            "flaky",
            "  retries:\n    attempts: 1\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n  circuitBreaker: {maxRetries: 2}\n",
        ),
    ]))
    .await;
    switch.fail_next(5);
    let calls: Vec<_> = (0..5).map(|i| get(&proxy, &format!("http://flaky:8080/{i}"))).collect();
    // Three callers are answered (the first try's 503) while two retries are held.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for call in calls {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(call.await.unwrap());
        });
    }
    drop(tx);
    let mut early = Vec::new();
    for _ in 0..3 {
        early.push(wait::within("a caller answered without a retry", rx.recv()).await.unwrap());
    }
    for r in &early {
        r.assert_status(503);
        assert!(r.header("x-outrider-local-reply").is_none(), "the upstream's 503: the retry was just not made");
    }
    wait_until("two retries held at the upstream", || async { up.request_count() == 7 }).await;
    assert_eq!(breaker(&proxy, "flaky", "active_retries").await, 2, "retries in flight count");
    let m = proxy.metrics().await;
    assert_eq!(
        sum(&m, "outrider_circuit_breaker_rejections_total", &[("service", "flaky"), ("reason", "max-retries")]),
        3.0
    );
    held.open();
    for _ in 0..2 {
        wait::within("a retried caller", rx.recv()).await.unwrap().assert_status(200);
    }
    assert_eq!(up.request_count(), 7, "five first tries and two retries");
    wait_until("the retry slots released", || async { breaker(&proxy, "flaky", "active_retries").await == 0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pooled_connection_is_closed_by_a_timer() {
    for protocol in ["http", "http2"] {
        let builder = if protocol == "http" { upstream::http1() } else { upstream::h2() };
        let up = builder.name("idle").start().await;
        let proxy = ProxyHarness::start(&docs(&[
            service("idle").protocol(protocol).endpoint(up.addr).yaml(),
            policy("idle", "  idleTimeout: 300ms\n"),
        ]))
        .await;
        proxy.get("http://idle:8080/").await.assert_status(200);
        assert_eq!(up.connections(), 1, "{protocol}");
        // No further request: the proxy closes the pooled connection by itself.
        wait_until("the upstream sees the idle connection closed", || async { up.open_connections() == 0 }).await;
        assert_eq!(breaker(&proxy, "idle", "connections").await, 0, "{protocol}: its slot is free");
        let clusters = proxy.admin("GET", "/clusters").await.text();
        assert!(clusters.contains("\"idle_http1_connections\": 0"), "{protocol}: {clusters}");
        // A new request opens a new connection.
        proxy.get("http://idle:8080/").await.assert_status(200);
        assert_eq!(up.connections(), 2, "{protocol}");
    }
}

/// Concurrent first requests to an HTTP/2 service wait (pending) for the one
/// connection the first of them opens, instead of each opening its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_http2_connection() {
    let gate = Gate::new();
    let up = upstream::h2().name("h2").gate(&gate).start().await;
    let proxy = ProxyHarness::start(&docs(&[service("h2").protocol("http2").endpoint(up.addr).yaml()])).await;
    let calls: Vec<_> = (0..5).map(|i| get(&proxy, &format!("http://h2:8080/{i}"))).collect();
    wait_until("five requests held at the upstream", || async { up.request_count() == 5 }).await;
    assert_eq!(up.connections(), 1);
    assert_eq!(breaker(&proxy, "h2", "connections").await, 1);
    gate.open();
    for call in calls {
        wait::within("a reply", call).await.unwrap().assert_status(200);
    }
}
