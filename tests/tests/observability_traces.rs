//! Traces end to end: an OTLP/gRPC receiver in the test (tonic + the
//! `opentelemetry-proto` types) gets the spans of real proxies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outrider_proxy::telemetry::trace::TraceConfig;
use outrider_tests::client;
use outrider_tests::otlp::{CLIENT, Collector, Got, SERVER};
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream::{self, Switch};
use outrider_tests::wait::{wait_for, wait_until};
use outrider_tests::{ProxyHarness, prom};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The trace of the sentinel requests [`Running::settled`] waits for.
const SENTINEL: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
const PARENT: &str = "00f067aa0ba902b7";

struct Running {
    addr: SocketAddr,
    collector: Collector,
}

impl Running {
    fn spans(&self) -> Vec<Got> {
        self.collector.spans()
    }

    /// Every span that was on its way when `sentinel` ran, the sentinel's own left out.
    /// `sentinel` sends a request of the [`SENTINEL`] trace (sampled) through the proxies named
    /// in `services`; each proxy exports its spans in the order they ended, so once a sentinel
    /// span of every one of them has arrived, nothing that ended before the sentinel was sent is
    /// still on its way: extra spans (and spans that must not be exported) would be here.
    async fn settled(&self, services: &[&str], sentinel: impl std::future::Future<Output = ()>) -> Vec<Got> {
        sentinel.await;
        wait_until("the sentinel's spans at the collector", || async {
            let spans = self.spans();
            services.iter().all(|svc| spans.iter().any(|s| s.trace() == SENTINEL && s.service == *svc))
        })
        .await;
        self.spans().into_iter().filter(|s| s.trace() != SENTINEL).collect()
    }

    /// Wait until at least `n` spans have arrived (tests that assert on order
    /// use a marker request instead of waiting for stragglers).
    async fn wait_at_least(&self, n: usize) -> Vec<Got> {
        wait_until(&format!("{n} spans at the collector"), || async { self.spans().len() >= n }).await;
        self.spans()
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn collector() -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    Running { addr, collector: Collector::serve(listener) }
}

/// A sampled request of the [`SENTINEL`] trace.
fn sentinel(uri: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = client::get(uri);
    req.headers_mut().insert("traceparent", format!("00-{SENTINEL}-{PARENT}-01").parse().unwrap());
    req
}

/// Tracing to `endpoint` as `service`, with batches sent every 50 ms.
fn tracing(endpoint: &str, service: &str) -> TraceConfig {
    let mut t = TraceConfig::new(endpoint, service);
    t.delay = Duration::from_millis(50);
    t
}

fn retry_policy(svc: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {svc}}}\nspec:\n  service: {svc}\n  \
         retries:\n    attempts: 2\n    retryOn: [5xx]\n    backoff: {{base: 1ms, max: 2ms}}\n  routes:\n    \
         - name: orders\n      match: {{pathPrefix: /orders}}\n      split: [{{weight: 100}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chained_proxies_make_one_trace_with_a_span_per_attempt() {
    let otlp = collector().await;
    let switch = Switch::new();
    let app = upstream::http1().name("app").switch(&switch).start().await;
    // B: the callee's sidecar, delivering inbound traffic to the app.
    let b = ProxyHarness::start_configured(&docs(&[service("backend").endpoint(app.addr).yaml()]), |c| {
        c.app_port = Some(app.addr.port());
        c.service = Some("backend".into());
        c.tracing = Some(tracing(&otlp.endpoint(), "proxy-b"));
    })
    .await;
    // A: the caller's sidecar; the backend's endpoint is B's inbound port.
    let a = ProxyHarness::start_configured(
        &docs(&[service("backend").endpoint(b.addrs.inbound).yaml(), retry_policy("backend")]),
        |c| c.tracing = Some(tracing(&otlp.endpoint(), "proxy-a")),
    )
    .await;

    switch.fail_next(1);
    let mut req = client::get("http://backend:8080/orders/42?token=secret");
    req.headers_mut().insert("traceparent", format!("00-{TRACE}-{PARENT}-01").parse().unwrap());
    req.headers_mut().insert("tracestate", "vendor=x".parse().unwrap());
    a.send(req).await.assert_status(200);
    assert_eq!(app.request_count(), 2, "one failed try and one good one");
    let heard = app.last();

    // A: the request span + two attempt spans; B: one server span per attempt (and nothing
    // else: a sentinel request through both proxies is exported after them).
    let spans = otlp
        .settled(&["proxy-a", "proxy-b"], async {
            a.send(sentinel("http://backend:8080/orders/sentinel")).await.assert_status(200);
        })
        .await;
    assert_eq!(spans.len(), 5, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace() == TRACE), "one trace, the caller's: {spans:#?}");
    let a_spans: Vec<&Got> = spans.iter().filter(|s| s.service == "proxy-a").collect();
    let b_spans: Vec<&Got> = spans.iter().filter(|s| s.service == "proxy-b").collect();
    assert_eq!((a_spans.len(), b_spans.len()), (3, 2), "{spans:#?}");

    let outer = a_spans.iter().find(|s| s.attr("outrider.attempt").is_none()).expect("A's request span");
    assert_eq!(outer.span.kind, CLIENT);
    assert_eq!(outer.parent(), PARENT, "continues the incoming traceparent");
    assert_eq!(outer.span.trace_state, "vendor=x");
    assert_eq!(outer.span.name, "GET orders");
    for (k, v) in [
        ("http.request.method", "GET"),
        ("http.route", "orders"),
        ("http.response.status_code", "200"),
        ("url.path", "/orders/42"),
        ("server.address", "backend"),
        ("server.port", "8080"),
        ("peer.service", "backend"),
        ("outrider.attempts", "2"),
        ("outrider.retries", "1"),
    ] {
        assert_eq!(outer.attr(k).as_deref(), Some(v), "A's span has {k}={v}: {outer:#?}");
    }
    assert_eq!(outer.attr("outrider.upstream"), Some(b.addrs.inbound.to_string()));
    assert!(outer.span.attributes.iter().all(|a| !format!("{a:?}").contains("secret")), "no query string");

    let mut attempts: Vec<&Got> = a_spans.iter().copied().filter(|s| s.attr("outrider.attempt").is_some()).collect();
    attempts.sort_by_key(|s| s.attr("outrider.attempt"));
    assert_eq!(attempts.len(), 2);
    for (i, at) in attempts.iter().enumerate() {
        assert_eq!(at.parent(), outer.id(), "attempt spans are children of the request span");
        assert_eq!(at.span.kind, CLIENT);
        assert_eq!(at.attr("outrider.attempt"), Some((i + 1).to_string()));
        assert_eq!(at.attr("outrider.upstream"), Some(b.addrs.inbound.to_string()));
    }
    assert_eq!(attempts[0].attr("http.response.status_code").as_deref(), Some("503"));
    assert_eq!(attempts[0].span.status.as_ref().map(|s| s.code), Some(2), "a 503 try is an error");
    assert_eq!(attempts[1].attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attempts[1].attr("http.request.resend_count").as_deref(), Some("1"));

    // B's server spans hang off A's attempt spans, one each.
    let attempt_ids: HashSet<String> = attempts.iter().map(|s| s.id()).collect();
    let b_parents: HashSet<String> = b_spans.iter().map(|s| s.parent()).collect();
    assert_eq!(b_parents, attempt_ids, "each of B's spans is the child of one attempt");
    for s in &b_spans {
        assert_eq!(s.span.kind, SERVER);
        assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("url.path").as_deref(), Some("/orders/42"));
        assert_eq!(s.attr("outrider.upstream"), Some(app.addr.to_string()));
        assert!(s.attr("client.address").is_some());
    }
    let mut codes: Vec<String> = b_spans.iter().filter_map(|s| s.attr("http.response.status_code")).collect();
    codes.sort();
    assert_eq!(codes, ["200", "503"]);

    // The app hears B's span as its parent, in the same trace.
    let last_b = b_spans.iter().find(|s| s.attr("http.response.status_code").as_deref() == Some("200")).unwrap();
    assert_eq!(heard.header("traceparent"), Some(format!("00-{TRACE}-{}-01", last_b.id()).as_str()));
    assert_eq!(heard.header("tracestate"), Some("vendor=x"));

    // Nothing dropped, everything counted as exported: A's three spans and the sentinel's two
    // (its request and its one attempt), counted once the collector has answered.
    let m = wait_for("A's five spans counted as exported", || async {
        let m = a.metrics().await;
        (prom::sum(&m, "outrider_trace_spans_exported_total", &[]) >= 5.0).then_some(m)
    })
    .await;
    assert_eq!(prom::sum(&m, "outrider_trace_spans_exported_total", &[]), 5.0, "{m}");
    assert_eq!(prom::sum(&m, "outrider_trace_spans_dropped_total", &[]), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_headers_are_understood_and_a_new_trace_starts_without_context() {
    let otlp = collector().await;
    let up = upstream::http1().name("echo").start().await;
    let proxy = ProxyHarness::start_configured(&docs(&[service("echo").endpoint(up.addr).yaml()]), |c| {
        c.tracing = Some(tracing(&otlp.endpoint(), "proxy"))
    })
    .await;

    // B3 single header.
    let mut req = client::get("http://echo:8080/single");
    req.headers_mut().insert("b3", format!("{TRACE}-{PARENT}-1").parse().unwrap());
    proxy.send(req).await.assert_status(200);
    let spans = otlp.wait_at_least(1).await;
    let s = &spans[0];
    assert_eq!((s.trace(), s.parent()), (TRACE.to_string(), PARENT.to_string()));
    let seen = up.last();
    assert_eq!(seen.header("b3"), Some(format!("{TRACE}-{}-1", s.id()).as_str()), "B3 rewritten for the next hop");
    assert_eq!(seen.header("traceparent"), Some(format!("00-{TRACE}-{}-01", s.id()).as_str()));

    // B3 multi headers, 64-bit trace id.
    let mut req = client::get("http://echo:8080/multi");
    for (k, v) in [("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", PARENT), ("x-b3-sampled", "1")] {
        req.headers_mut().insert(k, v.parse().unwrap());
    }
    proxy.send(req).await.assert_status(200);
    let spans = otlp.wait_at_least(2).await;
    let s = spans.iter().find(|s| s.attr("url.path").as_deref() == Some("/multi")).unwrap();
    assert_eq!(s.trace(), format!("{}a3ce929d0e0e4736", "0".repeat(16)));
    assert_eq!(s.parent(), PARENT);
    let seen = up.last();
    assert_eq!(seen.header("x-b3-spanid"), Some(s.id().as_str()));
    assert_eq!(seen.header("x-b3-traceid"), Some(s.trace().as_str()));

    // No context at all: a new trace, with the proxy's span as the root.
    proxy.get("http://echo:8080/fresh").await.assert_status(200);
    let spans = otlp.wait_at_least(3).await;
    let s = spans.iter().find(|s| s.attr("url.path").as_deref() == Some("/fresh")).unwrap();
    assert!(s.span.parent_span_id.is_empty(), "a root span");
    assert_ne!(s.trace(), TRACE);
    assert_eq!(up.last().header("traceparent"), Some(format!("00-{}-{}-01", s.trace(), s.id()).as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_sampler_and_the_callers_decision() {
    let otlp = collector().await;
    let up = upstream::http1().name("echo").start().await;
    let proxy = ProxyHarness::start_configured(&docs(&[service("echo").endpoint(up.addr).yaml()]), |c| {
        let mut t = tracing(&otlp.endpoint(), "proxy");
        // parentbased_always_off: new traces are not sampled, callers' decisions are kept.
        t.sampler.root = outrider_proxy::telemetry::trace::config::Root::AlwaysOff;
        c.tracing = Some(t);
    })
    .await;
    proxy.get("http://echo:8080/root").await.assert_status(200);
    let tp = up.last().header("traceparent").map(str::to_string).expect("context propagates even when unsampled");
    assert!(tp.ends_with("-00"), "not sampled: {tp}");

    let mut req = client::get("http://echo:8080/sampled-by-caller");
    req.headers_mut().insert("traceparent", format!("00-{TRACE}-{PARENT}-01").parse().unwrap());
    proxy.send(req).await.assert_status(200);

    let mut req = client::get("http://echo:8080/unsampled-by-caller");
    req.headers_mut().insert("traceparent", format!("00-{TRACE}-{PARENT}-00").parse().unwrap());
    proxy.send(req).await.assert_status(200);
    assert!(up.last().header("traceparent").unwrap().starts_with(&format!("00-{TRACE}-")));
    // A sampled sentinel after them: once it is exported, so is anything before it.
    let spans = otlp
        .settled(&["proxy"], async {
            proxy.send(sentinel("http://echo:8080/sentinel")).await.assert_status(200);
        })
        .await;
    assert_eq!(spans.len(), 1, "only the caller-sampled request is exported: {spans:#?}");
    assert_eq!(spans[0].attr("url.path").as_deref(), Some("/sampled-by-caller"), "the caller's 'not sampled' is kept");
}

/// Requests must not wait for the exporter, whatever it does. `held`: how many export calls
/// the collector holds unanswered (the slow collector), checked to be at least one once the
/// requests are done.
async fn requests_unaffected(collector_endpoint: String, dropped_reason: &str, held: Option<Arc<AtomicUsize>>) {
    let up = upstream::http1().name("echo").start().await;
    let proxy = ProxyHarness::start_configured(&docs(&[service("echo").endpoint(up.addr).yaml()]), |c| {
        let mut t = TraceConfig::new(collector_endpoint, "proxy");
        t.max_queue = 4;
        t.max_batch = 2;
        t.delay = Duration::from_millis(5);
        // An export call that is not answered stays pending for the whole test.
        t.timeout = Duration::from_secs(3600);
        c.tracing = Some(t);
    })
    .await;
    // Had requests waited on an export that is never answered, they would hang: the deadline
    // only turns that hang into a failure.
    let requests = async {
        for i in 0..100 {
            proxy.get(&format!("http://echo:8080/{i}")).await.assert_status(200);
        }
    };
    tokio::time::timeout(outrider_tests::wait::deadline() * 3, requests)
        .await
        .expect("requests hung while the exporter was stuck");
    if let Some(held) = held {
        // The exporter's first call was never answered (and cannot time out during the test),
        // yet every request was answered: none waited on it.
        wait_until("an export call held by the collector", || async { held.load(Ordering::SeqCst) > 0 }).await;
    }
    let m = wait_for(&format!("spans dropped ({dropped_reason}) to be counted"), || async {
        let m = proxy.metrics().await;
        (prom::sum(&m, "outrider_trace_spans_dropped_total", &[("reason", dropped_reason)]) > 0.0).then_some(m)
    })
    .await;
    assert_eq!(prom::sum(&m, "outrider_trace_spans_exported_total", &[]), 0.0, "{m}");
    assert_eq!(prom::sum(&m, "outrider_requests_total", &[("code", "200")]), 100.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_exporter_does_not_slow_requests_and_drops_are_counted() {
    // A "collector" that accepts connections, reads what it is sent and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            held.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 64 * 1024];
                // The bytes of an export call (HTTP/2 preface, headers, the spans) arrive
                // and are never answered.
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.fetch_add(n, Ordering::SeqCst);
                }
                // Keep the socket open (unanswered) until the test ends.
                std::future::pending::<()>().await;
                drop(s);
            }));
        }
    });
    requests_unaffected(format!("http://{addr}"), "queue-full", Some(received)).await;
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_exporter_does_not_fail_requests_and_drops_are_counted() {
    let closed = upstream::closed_port();
    requests_unaffected(format!("http://{closed}"), "export-failed", None).await;
}

/// Tracing with a sampler that starts no trace (ratio 0, parent-based).
fn unsampled(endpoint: &str, errors: bool) -> TraceConfig {
    let mut t = tracing(endpoint, "proxy");
    t.sampler.root = outrider_proxy::telemetry::trace::config::Root::TraceIdRatio(0.0);
    t.errors = errors;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_are_exported_when_the_sampler_leaves_them_out() {
    let otlp = collector().await;
    let switch = Switch::new();
    let app = upstream::http1().name("app").switch(&switch).start().await;
    let proxy = ProxyHarness::start_configured(
        &docs(&[service("app").endpoint(app.addr).yaml(), service("empty").yaml()]),
        |c| c.tracing = Some(unsampled(&otlp.endpoint(), true)),
    )
    .await;
    // One connection: each response is recorded before the next request is read,
    // so spans are queued in request order.
    let mut conn = client::h1_connection(proxy.addrs.outbound).await;
    client::send_h1(&mut conn, client::h1_get("app:8080", "/ok")).await.assert_status(200);
    switch.fail_next(1);
    client::send_h1(&mut conn, client::h1_get("app:8080", "/upstream-503")).await.assert_status(503);
    let downstream = app.last().header("traceparent").map(str::to_string).expect("context propagates");
    assert!(downstream.ends_with("-00"), "the sampled flag sent on is the sampler's, not flipped: {downstream}");
    client::send_h1(&mut conn, client::h1_get("empty:8080", "/local-reply")).await.assert_status(503);
    switch.grpc_unavailable_next(1);
    let mut grpc = client::h1_get("app:8080", "/pkg.Svc/Call");
    grpc.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
    client::send_h1(&mut conn, grpc).await.assert_status(200);

    let spans = otlp.wait_at_least(3).await;
    let mut paths: Vec<String> = spans.iter().filter_map(|s| s.attr("url.path")).collect();
    paths.sort();
    assert_eq!(paths, ["/local-reply", "/pkg.Svc/Call", "/upstream-503"], "only the failures: {spans:#?}");
    for s in &spans {
        assert_eq!(s.attr("outrider.sampled_reason").as_deref(), Some("error"), "{s:#?}");
        assert_eq!(s.span.flags & 0x01, 0, "the trace's sampled flag is not claimed: {s:#?}");
        assert_eq!(s.span.status.as_ref().map(|st| st.code), Some(2), "status error: {s:#?}");
    }
    let by_path = |p: &str| spans.iter().find(|s| s.attr("url.path").as_deref() == Some(p)).unwrap();
    assert_eq!(by_path("/upstream-503").attr("http.response.status_code").as_deref(), Some("503"));
    assert_eq!(by_path("/upstream-503").trace(), downstream[3..35], "the span is in the trace the app was told of");
    assert_eq!(by_path("/local-reply").attr("outrider.local_reply").as_deref(), Some("no-healthy-upstream"));
    assert_eq!(by_path("/pkg.Svc/Call").attr("rpc.grpc.status_code").as_deref(), Some("14"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_are_not_exported_when_error_recording_is_off() {
    let otlp = collector().await;
    let switch = Switch::new();
    let app = upstream::http1().name("app").switch(&switch).start().await;
    let proxy = ProxyHarness::start_configured(&docs(&[service("app").endpoint(app.addr).yaml()]), |c| {
        c.tracing = Some(unsampled(&otlp.endpoint(), false))
    })
    .await;
    let mut conn = client::h1_connection(proxy.addrs.outbound).await;
    switch.fail_next(1);
    client::send_h1(&mut conn, client::h1_get("app:8080", "/upstream-503")).await.assert_status(503);
    // A caller-sampled request after it, as a marker: once its span is in, an
    // earlier span would be too.
    let mut marker = client::h1_get("app:8080", "/marker");
    marker.headers_mut().insert("traceparent", format!("00-{TRACE}-{PARENT}-01").parse().unwrap());
    client::send_h1(&mut conn, marker).await.assert_status(200);
    let spans = otlp.wait_at_least(1).await;
    let paths: Vec<String> = spans.iter().filter_map(|s| s.attr("url.path")).collect();
    assert_eq!(paths, ["/marker"], "{spans:#?}");
    assert_eq!(spans[0].attr("outrider.sampled_reason"), None);
}

/// The Telemetry settings in force at the proxy, from `/config_dump`.
async fn pushed_telemetry(proxy: &ProxyHarness) -> serde_json::Value {
    let dump: serde_json::Value = serde_json::from_str(&proxy.admin("GET", "/config_dump").await.text()).unwrap();
    dump["config"]["telemetry"].clone()
}

fn telemetry(percent: u32) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: Telemetry\nmetadata: {{name: mesh}}\nspec:\n  tracing: \
         {{samplingPercent: {percent}, errors: false}}\n"
    )
}

/// Tracing whose own sampler starts no trace and records no errors: whatever is
/// sampled below, a pushed Telemetry decided.
fn env_never(endpoint: &str) -> TraceConfig {
    let mut t = tracing(endpoint, "proxy");
    t.sampler.root = outrider_proxy::telemetry::trace::config::Root::AlwaysOff;
    t.errors = false;
    t
}

/// A caller-sampled request: its span is exported whatever the root sampler
/// says, so once it is in, every span queued before it is in too.
fn marker(authority: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = client::h1_get(authority, "/marker");
    req.headers_mut().insert("traceparent", format!("00-{TRACE}-{PARENT}-01").parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_policy_sets_the_sampling_ratio_on_reload() {
    let otlp = collector().await;
    let up = upstream::http1().name("echo").start().await;
    let svc = service("echo").endpoint(up.addr).yaml();
    // The environment would sample everything; the policy says 0 %.
    let proxy = ProxyHarness::start_configured(&docs(&[svc.clone(), telemetry(0)]), |c| {
        c.tracing = Some(tracing(&otlp.endpoint(), "proxy"))
    })
    .await;
    let mut conn = client::h1_connection(proxy.addrs.outbound).await;
    client::send_h1(&mut conn, client::h1_get("echo:8080", "/at-0")).await.assert_status(200);
    assert!(up.last().header("traceparent").unwrap().ends_with("-00"), "0 % samples nothing");

    proxy.reload(&docs(&[svc.clone(), telemetry(100)])).await;
    client::send_h1(&mut conn, client::h1_get("echo:8080", "/at-100")).await.assert_status(200);
    assert!(up.last().header("traceparent").unwrap().ends_with("-01"), "100 % samples every new trace");
    let spans = otlp.wait_at_least(1).await;
    let paths: Vec<String> = spans.iter().filter_map(|s| s.attr("url.path")).collect();
    assert_eq!(paths, ["/at-100"], "the request at 0 % was not exported: {spans:#?}");

    // Without the Telemetry the environment's sampler (always on here) applies again.
    proxy.reload(&svc).await;
    client::send_h1(&mut conn, client::h1_get("echo:8080", "/env")).await.assert_status(200);
    let spans = otlp.wait_at_least(2).await;
    assert_eq!(spans[1].attr("url.path").as_deref(), Some("/env"));
    assert_eq!(pushed_telemetry(&proxy).await, serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_applied_on_the_control_plane_reaches_the_proxy() {
    use outrider_tests::control_plane::ControlPlane;
    use outrider_tests::harness::TempDir;

    let otlp = collector().await;
    let data = TempDir::new("cp-data");
    let cp = ControlPlane::start(data.path());
    let up = upstream::http1().name("echo").start().await;
    let svc = service("echo").endpoint(up.addr).yaml();
    cp.apply(&docs(&[svc.clone(), telemetry(0)])).await;
    let proxy = ProxyHarness::start_configured(&svc, |c| {
        c.tracing = Some(env_never(&otlp.endpoint()));
        c.xds = Some(outrider_proxy::source::xds::XdsConfig::new(
            cp.xds_url(),
            outrider_proxy::source::xds::Protocol::Delta,
        ));
    })
    .await;
    let pushed = |percent: f64| {
        let proxy = &proxy;
        async move { pushed_telemetry(proxy).await["sampling_percent"].as_f64() == Some(percent) }
    };
    wait_until("the control plane's Telemetry (0 %) at the proxy", || pushed(0.0)).await;
    let mut conn = client::h1_connection(proxy.addrs.outbound).await;
    client::send_h1(&mut conn, client::h1_get("echo:8080", "/at-0")).await.assert_status(200);

    cp.apply(&telemetry(100)).await;
    wait_until("the control plane's Telemetry (100 %) at the proxy", || pushed(100.0)).await;
    client::send_h1(&mut conn, client::h1_get("echo:8080", "/at-100")).await.assert_status(200);
    client::send_h1(&mut conn, marker("echo:8080")).await.assert_status(200);
    let spans = otlp.wait_at_least(2).await;
    let paths: Vec<String> = spans.iter().filter_map(|s| s.attr("url.path")).collect();
    assert_eq!(paths, ["/at-100", "/marker"], "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_short_is_exported_as_an_error_when_unsampled() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let otlp = collector().await;
    // An upstream that sends headers and one chunk of a longer body, then closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello").await;
        }
    });
    let proxy = ProxyHarness::start_configured(&docs(&[service("cut").endpoint(addr).yaml()]), |c| {
        c.tracing = Some(unsampled(&otlp.endpoint(), true))
    })
    .await;
    let resp =
        outrider_tests::wait::within("response headers", proxy.client().request(client::get("http://cut:8080/r")))
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let body = outrider_tests::wait::within("the cut body", resp.into_body().collect()).await;
    assert!(body.is_err(), "the caller sees the reset too");
    let spans = otlp.wait_at_least(1).await;
    let s = &spans[0];
    assert_eq!(s.attr("url.path").as_deref(), Some("/r"));
    assert_eq!(s.attr("outrider.sampled_reason").as_deref(), Some("error"));
    assert_eq!(s.attr("outrider.response_complete").as_deref(), Some("false"));
    assert_eq!(s.attr("error.type").as_deref(), Some("response-incomplete"));
    task.abort();
}
