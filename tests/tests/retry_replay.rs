//! Retries never send a truncated or empty body: a request body without
//! `Content-Length` (chunked HTTP/1.1, HTTP/2, gRPC streams) is kept for replay
//! up to 64 KiB; once it outgrows that the request is no longer retried, and
//! `outrider_retries_skipped_total{reason="body-too-large"}` says so. Real
//! clients, a real proxy, real upstreams that fail on command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::io::prometheus::client::MetricFamily;
use outrider_tests::ProxyHarness;
use outrider_tests::client::{fed, pattern, send_streamed, streamed};
use outrider_tests::policy::{docs, service};
use outrider_tests::prom::sum;
use outrider_tests::upstream::{self, Switch};
use outrider_tests::wait::{self, wait_until};

const KIB: usize = 1024;

fn policy(service: &str, retry_on: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {service}}}\nspec:\n  service: {service}\n  retries:\n    attempts: 2\n    retryOn: [{retry_on}]\n    backoff: {{base: 1ms, max: 2ms}}\n"
    )
}

async fn skipped(proxy: &ProxyHarness, service: &str) -> f64 {
    let m = proxy.metrics().await;
    sum(&m, "outrider_retries_skipped_total", &[("service", service), ("reason", "body-too-large")])
}

async fn retries(proxy: &ProxyHarness, service: &str) -> f64 {
    sum(&proxy.metrics().await, "outrider_retries_total", &[("service", service)])
}

/// The bodies the upstream read, in order, each as (length, where it first
/// differs from `whole`): `(len, None)` is a whole, exact copy. Short enough for
/// an assertion message, unlike 100 KiB of bytes.
fn bodies(up: &upstream::Upstream, whole: &Bytes) -> Vec<(usize, Option<usize>)> {
    up.requests().into_iter().map(|s| compare(&s.body, whole)).collect()
}

fn compare(got: &Bytes, whole: &Bytes) -> (usize, Option<usize>) {
    let differs = got.iter().zip(whole.iter()).position(|(a, b)| a != b);
    let differs = differs.or((got.len() != whole.len()).then_some(got.len().min(whole.len())));
    (got.len(), differs)
}

/// A whole, exact copy of a body of `len` bytes.
fn exact(len: usize) -> (usize, Option<usize>) {
    (len, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_http1_body_over_the_cap_is_sent_once_whole_and_not_retried() {
    let switch = Switch::new();
    let up = upstream::http1().name("big").switch(&switch).start().await;
    let proxy =
        ProxyHarness::start(&docs(&[service("big").endpoint(up.addr).yaml(), policy("big", "5xx, non-idempotent")]))
            .await;
    switch.fail_next(1);
    let (whole, chunks) = pattern(100 * KIB, 4 * KIB);
    let r = send_streamed(proxy.addrs.outbound, false, "POST", "http://big:8080/upload", streamed(chunks)).await;
    r.assert_status(503);
    assert!(r.header("x-outrider-local-reply").is_none(), "the upstream's own 503 reaches the caller");
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "over the replay cap: one try only");
    assert_eq!(seen[0].header("transfer-encoding"), Some("chunked"), "no Content-Length was sent");
    assert_eq!(compare(&seen[0].body, &whole), exact(100 * KIB), "the one try carried the whole body");
    assert_eq!(skipped(&proxy, "big").await, 1.0);
    assert_eq!(retries(&proxy, "big").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_chunked_http1_body_is_retried_whole() {
    let switch = Switch::new();
    let up = upstream::http1().name("small").switch(&switch).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("small").endpoint(up.addr).yaml(),
        policy("small", "5xx, non-idempotent"),
    ]))
    .await;
    switch.fail_next(1);
    let (whole, chunks) = pattern(10 * KIB, KIB);
    let r = send_streamed(proxy.addrs.outbound, false, "POST", "http://small:8080/upload", streamed(chunks)).await;
    r.assert_status(200);
    assert_eq!(bodies(&up, &whole), [exact(10 * KIB); 2], "two tries, each with the whole body");
    assert_eq!(retries(&proxy, "small").await, 1.0);
    assert_eq!(skipped(&proxy, "small").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_body_over_the_cap_is_sent_once_and_a_small_one_is_retried_whole() {
    let switch = Switch::new();
    let up = upstream::h2().name("h2").switch(&switch).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("h2").protocol("http2").endpoint(up.addr).yaml(),
        policy("h2", "5xx, non-idempotent"),
    ]))
    .await;
    switch.fail_next(1);
    let (whole, chunks) = pattern(100 * KIB, 8 * KIB);
    let r = send_streamed(proxy.addrs.outbound, true, "POST", "http://h2:8080/upload", streamed(chunks)).await;
    r.assert_status(503);
    assert_eq!(bodies(&up, &whole), [exact(100 * KIB)], "one try, the whole body");
    assert_eq!(skipped(&proxy, "h2").await, 1.0);

    switch.fail_next(1);
    let (small, chunks) = pattern(10 * KIB, KIB);
    let r = send_streamed(proxy.addrs.outbound, true, "POST", "http://h2:8080/upload", streamed(chunks)).await;
    r.assert_status(200);
    assert_eq!(bodies(&up, &small)[1..], [exact(10 * KIB); 2], "retried with the whole body");
    assert_eq!(skipped(&proxy, "h2").await, 1.0);
}

/// A client stream of `total` bytes of `help` text in messages of `per` bytes.
fn metric_stream(total: usize, per: usize) -> (Bytes, Vec<StreamMetricsMessage>) {
    let text: String = (0..total).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let messages = (0..total)
        .step_by(per)
        .map(|at| StreamMetricsMessage {
            identifier: None,
            envoy_metrics: vec![MetricFamily {
                name: Some(format!("m{at}")),
                help: Some(text[at..(at + per).min(total)].to_string()),
                ..Default::default()
            }],
        })
        .collect();
    (Bytes::from(text), messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_stream_over_the_cap_gets_unavailable_once_and_a_small_one_is_retried_whole() {
    let switch = Switch::new();
    let up = upstream::grpc().name("sink").unavailable(&switch).start().await;
    let proxy = ProxyHarness::start(&docs(&[
        service("sink").protocol("grpc").endpoint(up.addr).yaml(),
        policy("sink", "unavailable"),
    ]))
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.addrs.outbound))
        .unwrap()
        .origin("http://sink:8080".parse().unwrap())
        .connect()
        .await
        .expect("connect to the proxy");
    let mut client = MetricsServiceClient::new(channel);

    switch.grpc_unavailable_next(1);
    let (whole, messages) = metric_stream(100 * KIB, 10 * KIB);
    let status = wait::within("a 100 KiB client stream", client.stream_metrics(futures_util::stream::iter(messages)))
        .await
        .expect_err("UNAVAILABLE reaches the caller");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(bodies(&up, &whole), [exact(100 * KIB)], "the upstream read one whole stream");
    assert_eq!(skipped(&proxy, "sink").await, 1.0);
    assert_eq!(retries(&proxy, "sink").await, 0.0);

    switch.grpc_unavailable_next(1);
    let (small, messages) = metric_stream(10 * KIB, KIB);
    wait::within("a 10 KiB client stream", client.stream_metrics(futures_util::stream::iter(messages)))
        .await
        .expect("the retry succeeds");
    assert_eq!(bodies(&up, &small)[1..], [exact(10 * KIB); 2], "retried with the whole stream");
    assert_eq!(retries(&proxy, "sink").await, 1.0);
}

/// The upstream answers 503 before it has read the body while the caller is
/// still sending it: the retry replays what was kept and reads on, so the second
/// try carries the whole body — also when the body then grows past the cap
/// during the retry (the retry is the only reader; it is just the last try).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_mid_body_is_retried_with_the_whole_body() {
    for (total, label) in [(10 * KIB, "10 KiB"), (100 * KIB, "100 KiB")] {
        let switch = Switch::new();
        let up = upstream::http1().name("early").switch(&switch).start().await;
        let proxy = ProxyHarness::start(&docs(&[
            service("early").endpoint(up.addr).yaml(),
            policy("early", "5xx, non-idempotent"),
        ]))
        .await;
        switch.fail_early_next(1);
        let (whole, chunks) = pattern(total, 4 * KIB);
        let (tx, body) = fed();
        let mut chunks = chunks.into_iter();
        tx.send(chunks.next().unwrap()).unwrap();
        let addr = proxy.addrs.outbound;
        let call = tokio::spawn(send_streamed(addr, false, "PUT", "http://early:8080/upload", body));
        // The first try is answered (503, body unread) and the retry is on its way
        // before the caller sends the rest.
        wait_until("the early 503 and the retry", || async { retries(&proxy, "early").await == 1.0 }).await;
        for c in chunks {
            tx.send(c).unwrap();
        }
        drop(tx);
        let r = wait::within("the reply", call).await.unwrap();
        r.assert_status(200);
        assert_eq!(
            bodies(&up, &whole),
            [(0, Some(0)), exact(total)],
            "{label}: the first try's body was never read; the retry carried the whole body"
        );
    }
}
