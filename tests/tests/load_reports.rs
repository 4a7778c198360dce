//! Load reports end to end: two real proxies send requests to real upstreams and report over
//! LRS; the control plane's numbers for a subset match what the clients saw — the request and
//! error counts exactly, the p99 within the histogram's bucket. gRPC calls count by their
//! status, in the response headers or in the trailers after a body.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outrider_control_plane::server::ServerConfig;
use outrider_proxy::source::xds::Protocol;
use outrider_tests::control_plane::{ControlPlane, MeshProxy, TOKEN};
use outrider_tests::harness::TempDir;
use outrider_tests::load::{Load, Plan, Sample};
use outrider_tests::upstream::{self, Switch};
use outrider_tests::wait;
use outrider_xds::latency::{bucket_of, lower_bound, upper_bound};
use serde_json::Value;

/// The exact `q` quantile of the samples' latencies, ms.
fn quantile_ms(samples: &[&Sample], q: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|s| s.latency.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
    ms[rank - 1]
}

/// A control plane on ephemeral ports that asks its proxies for a load report every 200 ms.
fn reporting_control_plane(dir: &TempDir) -> ControlPlane {
    let any = "127.0.0.1:0".parse().unwrap();
    ControlPlane::start_config(ServerConfig {
        xds: any,
        api: any,
        token: Some(TOKEN.into()),
        load_report_interval: Duration::from_millis(200),
        ..ServerConfig::local(dir.path())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_control_planes_numbers_for_a_subset_match_what_the_clients_of_two_proxies_saw() {
    let dir = TempDir::new("outrider-lrs");
    let cp = reporting_control_plane(&dir);
    let flaky = Switch::new();
    flaky.fail_rate(0.1);
    let v1 = upstream::http1().name("v1").start().await;
    let v2 = upstream::http1().name("v2").switch(&flaky).start().await;
    let yaml = format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: reviews}}\nspec:\n  port: 8080\n  endpoints:\n    \
         - {{address: \"{}\", labels: {{version: v1}}}}\n    - {{address: \"{}\", labels: {{version: v2}}}}\n---\n\
         apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: reviews}}\nspec:\n  service: reviews\n  \
         routes: [{{name: main, split: [{{subset: {{version: v1}}, weight: 50}}, {{subset: {{version: v2}}, weight: 50}}]}}]\n",
        v1.endpoint(),
        v2.endpoint()
    );
    let version = cp.apply(&yaml).await;
    let a = MeshProxy::start(&cp.xds_url(), "client-a", "client", Protocol::Delta).await;
    let b = MeshProxy::start(&cp.xds_url(), "client-b", "client", Protocol::Sotw).await;
    a.wait_ready().await;
    b.wait_ready().await;
    cp.wait_converged(&version, 2).await;
    cp.wait_reporting(2).await;

    // Latencies spread over two decades, so the p99 is a real percentile.
    let uris: Vec<String> =
        [2, 5, 10, 20, 40, 60, 80, 120].iter().map(|ms| format!("http://reviews:8080/?delay_ms={ms}")).collect();
    let plan = Plan { rate: 150, uris, headers: Vec::new() };
    let (load_a, load_b) = (Load::start(a.client.clone(), plan.clone()), Load::start(b.client.clone(), plan));
    wait::wait_until("600 requests from each client", || async {
        load_a.samples().len() >= 600 && load_b.samples().len() >= 600
    })
    .await;
    let mut samples = load_a.stop().await;
    samples.extend(load_b.stop().await);
    let v2_seen: Vec<&Sample> = samples.iter().filter(|s| s.upstream == "v2").collect();
    let v2_errors = v2_seen.iter().filter(|s| s.status == 503).count() as u64;
    assert!(v2_errors > 0 && v2_seen.iter().all(|s| s.status == 200 || s.status == 503));

    // Every report in: the control plane has counted as many v2 requests as the clients saw.
    let stats: Value = wait::wait_for("the reports of every v2 request", || async {
        let reply = cp.stats("reviews", "labels=version=v2&window=15m").await;
        (reply.json["total"]["requests"].as_u64() == Some(v2_seen.len() as u64)).then_some(reply.json)
    })
    .await;
    let total = &stats["total"];
    assert_eq!(total["errors"].as_u64(), Some(v2_errors), "{stats:#}");
    let client_rate = 100.0 * (v2_seen.len() as u64 - v2_errors) as f64 / v2_seen.len() as f64;
    let cp_rate = total["successRate"].as_f64().unwrap();
    assert!((cp_rate - client_rate).abs() < 0.001, "control plane {cp_rate} vs clients {client_rate}");
    // The p99 is within the histogram's error of the clients' exact p99: a bucket is at most
    // 25 % of its lower bound wide, and the estimate lies in the bucket of the true value (the
    // clients also count their own hop through the proxy, a few ms on a busy machine).
    let client_p99 = quantile_ms(&v2_seen, 0.99);
    let cp_p99 = total["latencyMs"]["p99"].as_f64().unwrap();
    let bucket = bucket_of((cp_p99 * 1000.0) as u64);
    let (low, high) = (lower_bound(bucket) as f64 / 1000.0, upper_bound(bucket).unwrap() as f64 / 1000.0);
    eprintln!(
        "v2: {} requests, {v2_errors} errors; success rate clients {client_rate:.3}% control plane {cp_rate:.3}%; \
         p99 clients {client_p99:.2}ms control plane {cp_p99:.2}ms (its bucket {low}..{high}ms)",
        v2_seen.len()
    );
    assert!((cp_p99 - client_p99).abs() <= 0.25 * client_p99, "control plane p99 {cp_p99}ms vs clients {client_p99}ms");
    // Both subsets, both endpoints, both proxies.
    let all: Value = wait::wait_for("the reports of every request", || async {
        let json = cp.stats("reviews", "window=15m").await.json;
        (json["total"]["requests"].as_u64() == Some(samples.len() as u64)).then_some(json)
    })
    .await;
    assert_eq!(all["subsets"].as_array().map(Vec::len), Some(2));
    assert_eq!(all["endpoints"].as_array().map(Vec::len), Some(2));
    let v1_line = all["subsets"].as_array().unwrap().iter().find(|s| s["labels"]["version"] == "v1").unwrap();
    assert_eq!(v1_line["errors"], 0);
    assert_eq!(v1_line["successRate"], 100.0);
    let summary = cp.call("GET", "/v1/stats?window=15m", "", false, None).await.json;
    assert_eq!(summary["reportingProxies"], 2, "{summary:#}");
    assert_eq!(summary["reportInterval"], "200ms");
    assert_eq!(summary["services"][0]["service"], "reviews");
    assert_eq!(cp.call("GET", "/v1/stats/nope", "", false, None).await.status, 404);
    assert_eq!(cp.call("GET", "/v1/stats/reviews?window=2h", "", false, None).await.status, 400);
}

/// The counts the proxy holds for the endpoint at `addr` of `service` (taken: reset).
fn endpoint_counts(
    proxy: &outrider_tests::ProxyHarness,
    service: &str,
    addr: std::net::SocketAddr,
) -> outrider_proxy::load_report::LoadSample {
    let snapshot = proxy.store.load();
    let cluster = &snapshot.clusters[outrider_tests::policy::cluster_name(service, 8080).as_str()];
    cluster.endpoints.items().iter().find(|e| e.addr == addr).unwrap().shared.load.take()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_counts_at_its_endpoint_retried_failures_and_timeouts_included() {
    use outrider_tests::ProxyHarness;
    use outrider_tests::policy::{docs, service};
    let bad = upstream::http1().name("bad").status(503).start().await;
    let good = upstream::http1().name("good").start().await;
    let slow = upstream::http1().name("slow").delay(Duration::from_secs(5)).start().await;
    let policy = |name: &str, spec: &str| {
        format!(
            "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {name}}}\nspec:\n  service: {name}\n{spec}"
        )
    };
    let proxy = ProxyHarness::start(&docs(&[
        service("mixed").endpoint(bad.addr).endpoint(good.addr).yaml(),
        policy(
            "mixed",
            "  loadBalancer: round-robin\n  retries:\n    attempts: 1\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n",
        ),
        service("slowsvc").endpoint(slow.addr).yaml(),
        policy("slowsvc", "  timeout: 100ms\n"),
    ]))
    .await;
    // Callers see only successes: the 503s are retried on the good endpoint. The bad endpoint's
    // attempts still count as its errors.
    for _ in 0..10 {
        proxy.get("http://mixed:8080/").await.assert_status(200);
    }
    let bad_counts = endpoint_counts(&proxy, "mixed", bad.addr);
    let good_counts = endpoint_counts(&proxy, "mixed", good.addr);
    assert_eq!(bad_counts.failed as usize, bad.request_count());
    assert!(bad_counts.failed > 0);
    assert_eq!((bad_counts.succeeded, good_counts.succeeded, good_counts.failed), (0, 10, 0));
    assert_eq!(bad_counts.issued + good_counts.issued, 10 + bad_counts.failed);
    // An attempt abandoned by the request's timeout is an error, with the time it took.
    for _ in 0..3 {
        proxy.get("http://slowsvc:8080/").await.assert_status(504);
    }
    let slow_counts = endpoint_counts(&proxy, "slowsvc", slow.addr);
    assert_eq!((slow_counts.succeeded, slow_counts.failed), (0, 3));
    assert!(slow_counts.latency_us >= 3 * 100_000, "{slow_counts:?}");
    assert!(slow_counts.buckets.iter().all(|(b, _)| lower_bound(*b) >= 80_000), "{slow_counts:?}");
    proxy.shutdown().await;
}

/// One `StreamAggregatedResources` call through `channel`: one request (its `error_detail` asks
/// the upstream to end the stream with `in_trailers` after its response), read to its end; or,
/// with `trailers_only`, a call the upstream answers with that status alone.
async fn ads_call(channel: &tonic::transport::Channel, in_trailers: i32, trailers_only: Option<i32>) -> tonic::Code {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    let req = DiscoveryRequest {
        version_info: "v1".into(),
        error_detail: Some(RpcStatus { code: in_trailers, ..Default::default() }),
        ..Default::default()
    };
    let mut call = tonic::Request::new(tokio_stream::iter([req]));
    if let Some(code) = trailers_only {
        call.metadata_mut().insert("x-grpc-status", code.to_string().parse().unwrap());
    }
    let mut stream = match wait::within("the stream to open", client.stream_aggregated_resources(call)).await {
        Ok(resp) => resp.into_inner(),
        Err(status) => return status.code(),
    };
    let first = wait::within("the response", stream.message()).await.expect("a response before any status");
    assert_eq!(first.map(|r| r.version_info).as_deref(), Some("v1"), "a body before the status");
    match wait::within("the end of the stream", stream.message()).await {
        Ok(None) => tonic::Code::Ok,
        Ok(Some(more)) => panic!("one response only: {more:?}"),
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_status_counts_in_the_trailers_after_a_body_as_in_a_trailers_only_response() {
    let dir = TempDir::new("outrider-lrs-grpc");
    let cp = reporting_control_plane(&dir);
    let up = upstream::grpc().name("g1").start().await;
    let yaml = format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: echo}}\nspec:\n  port: 50051\n  protocol: grpc\n  \
         endpoints:\n    - {{address: \"{}\", labels: {{version: v1}}}}\n",
        up.endpoint()
    );
    let version = cp.apply(&yaml).await;
    let proxy = MeshProxy::start(&cp.xds_url(), "client-a", "client", Protocol::Delta).await;
    proxy.wait_ready().await;
    cp.wait_converged(&version, 1).await;
    cp.wait_reporting(1).await;
    let outbound = proxy.app.as_ref().unwrap().addrs.outbound;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
        .unwrap()
        .origin("http://echo:50051".parse().unwrap())
        .connect()
        .await
        .expect("connect to the proxy");

    // (status in the trailers after a body, or alone in the headers; calls; an error?)
    // UNAVAILABLE is an error; OK and NOT_FOUND (the caller's problem) are not: Envoy's rule.
    let calls =
        [(0, None, 4, false), (14, None, 3, true), (5, None, 2, false), (0, Some(14), 2, true), (0, Some(5), 1, false)];
    let (mut requests, mut errors) = (0, 0);
    for (in_trailers, trailers_only, n, error) in calls {
        for _ in 0..n {
            let code = ads_call(&channel, in_trailers, trailers_only).await;
            assert_eq!(code, tonic::Code::from(trailers_only.unwrap_or(in_trailers)), "the client sees the status");
            requests += 1;
            errors += u64::from(error);
        }
    }
    assert_eq!((requests, errors), (12, 5));

    let stats: Value = wait::wait_for("the reports of every call", || async {
        let reply = cp.stats("echo", "labels=version=v1&window=15m").await;
        (reply.json["total"]["requests"].as_u64() == Some(requests)).then_some(reply.json)
    })
    .await;
    assert_eq!(stats["total"]["errors"].as_u64(), Some(errors), "{stats:#}");
    proxy.shutdown().await;
}
