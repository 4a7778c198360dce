//! Metrics as operators consume them: bounded label cardinality, `promtool`, a
//! real Prometheus scraping a proxy, and the Grafana dashboard in docker/
//! querying only metrics the proxy exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use outrider_tests::harness::TempDir;
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream::{self, Switch};
use outrider_tests::wait::wait_for;
use outrider_tests::{ProxyHarness, client, prom, wait};
use serde_json::Value;

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A proxy whose families all have samples: retries, a breaker, outlier
/// detection, a TCP service, tracing (to a dead collector), local replies.
async fn busy_proxy() -> (Vec<upstream::Upstream>, ProxyHarness) {
    let switch = Switch::new();
    let flaky = upstream::http1().name("flaky").switch(&switch).start().await;
    let echo = upstream::tcp_echo().start().await;
    let policy = docs(&[
        service("flaky").endpoint(flaky.addr).yaml(),
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: flaky}\nspec:\n  service: flaky\n  \
         retries:\n    attempts: 1\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n  \
         circuitBreaker:\n    failureRateThreshold: 90\n    window: 100\n    minimumCalls: 100\n  \
         outlierDetection:\n    consecutive5xx: 100\n"
            .to_string(),
        service("store").protocol("tcp").port(9000).address("127.100.0.6").endpoint(echo.addr).yaml(),
    ]);
    let closed = upstream::closed_port();
    let proxy = ProxyHarness::start_configured(&policy, |c| {
        let mut t = outrider_proxy::telemetry::trace::TraceConfig::new(format!("http://{closed}"), "p");
        t.delay = Duration::from_millis(10);
        c.tracing = Some(t);
    })
    .await;
    switch.fail_next(1);
    proxy.get("http://flaky:8080/").await.assert_status(200);
    proxy.get("http://nope:1/").await.assert_status(404);
    (vec![flaky, echo], proxy)
}

/// Series (sample lines) in an exposition.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()).unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_paths_and_hosts_does_not_grow_the_series() {
    let up = upstream::http1().name("echo").start().await;
    let proxy = ProxyHarness::start(&docs(&[service("echo").endpoint(up.addr).yaml()])).await;
    // Every label combination these requests can produce, once.
    proxy.get("http://echo:8080/warm").await.assert_status(200);
    proxy.get("http://unknown.example/warm").await.assert_status(404);
    let before = series(&proxy.metrics().await);

    let client = proxy.client().clone();
    let results: Vec<(u16, u16)> = futures_util::stream::iter(0..1000)
        .map(|i| {
            let client = client.clone();
            async move {
                let a = client::send(&client, client::get(&format!("http://echo:8080/item/{i}?q={i}"))).await;
                let b =
                    client::send(&client, client::get(&format!("http://host-{i}.example:{}/p/{i}", 1000 + i))).await;
                (a.status.as_u16(), b.status.as_u16())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(results.iter().all(|&r| r == (200, 404)), "1000 good paths, 1000 unknown hosts");

    let text = proxy.metrics().await;
    let after = series(&text);
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(new.is_empty(), "2000 distinct paths and hosts added series: {new:#?}");
    assert_eq!(prom::sum(&text, "outrider_requests_total", &[("service", "echo"), ("code", "200")]), 1001.0);
    assert_eq!(prom::sum(&text, "outrider_requests_total", &[("code", "404")]), 1001.0);
}

/// The families the busy proxy has series in (the rest of `Metrics::FAMILIES`
/// needs intercepted TCP or exhausted budgets).
const EXERCISED: &[&str] = &[
    "outrider_requests_total",
    "outrider_request_duration_seconds_bucket",
    "outrider_retries_total",
    "outrider_circuit_breaker_state",
    "outrider_endpoints",
    "outrider_tcp_connections_open",
    "outrider_tcp_connections_total",
    "outrider_xds_updates_total",
    "outrider_config_version",
    "outrider_local_replies_total",
    "outrider_trace_spans_dropped_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_control_plane_metrics_pass_promtool() {
    let (_ups, proxy) = busy_proxy().await;
    let text = wait_for("spans to be dropped by the dead collector", || async {
        let t = proxy.metrics().await;
        (prom::sum(&t, "outrider_trace_spans_dropped_total", &[]) > 0.0).then_some(t)
    })
    .await;
    for name in EXERCISED {
        assert!(prom::samples(&text).iter().any(|s| s.name == *name), "{name} is exported:\n{text}");
    }
    assert!(prom::sum(&text, "outrider_retries_total", &[("service", "flaky")]) >= 1.0, "{text}");
    if !prom::promtool_check("the proxy", &text).await {
        return;
    }

    let data = TempDir::new("cp-data");
    let cp = outrider_tests::control_plane::ControlPlane::start(data.path());
    let cp_text = cp.metrics().await;
    assert!(cp_text.contains("outrider_"), "the control plane exports its families:\n{cp_text}");
    prom::promtool_check("the control plane", &cp_text).await;
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_proxy_and_promql_counts_the_requests() {
    let up = upstream::http1().name("echo").start().await;
    let proxy = ProxyHarness::start(&docs(&[service("echo").endpoint(up.addr).yaml()])).await;
    for i in 0..7 {
        proxy.get(&format!("http://echo:8080/{i}")).await.assert_status(200);
    }

    let dir = TempDir::new("prometheus");
    let config = dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: outrider-proxy\n    \
             static_configs:\n      - targets: [\"{}\"]\n",
            proxy.addrs.metrics
        ),
    );
    let port = free_port();
    let spawned = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let _prometheus = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            outrider_tests::skip("skipping: the prometheus binary is not installed (CI installs Debian's prometheus)");
            return;
        }
        Err(e) => panic!("cannot run prometheus: {e}"),
    };
    let api = client::http1(format!("127.0.0.1:{port}").parse().unwrap());
    let query = "sum(outrider_requests_total%7Bservice%3D%22echo%22%2Cdirection%3D%22outbound%22%7D)";
    let value = wait_for("Prometheus to have scraped the proxy's 7 requests", || {
        let api = api.clone();
        async move {
            let req = client::get(&format!("http://prometheus/api/v1/query?query={query}"));
            let resp = tokio::time::timeout(Duration::from_secs(2), api.request(req)).await.ok()?.ok()?;
            let reply = client::read(resp).await;
            let v: Value = serde_json::from_slice(&reply.body).ok()?;
            let s = v.pointer("/data/result/0/value/1")?.as_str()?.to_string();
            (s == "7").then_some(s)
        }
    })
    .await;
    assert_eq!(value, "7");
}

/// Metric names (`outrider_...`) an expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("outrider_") {
        let start = i + pos;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let path = repo_file("docker/grafana/outrider-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dash: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(dash["title"].is_string() && dash["panels"].is_array(), "a Grafana dashboard");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], &mut exprs);
    exprs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_the_proxy_exports() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10, "the dashboard has its panels: {exprs:#?}");
    // What a running proxy exports (families with series), and the full list
    // (a unit test in the proxy keeps `FAMILIES` equal to its registry).
    let (_ups, proxy) = busy_proxy().await;
    let text = proxy.metrics().await;
    let mut known: BTreeSet<String> = prom::samples(&text).into_iter().map(|s| s.name).collect();
    known.extend(outrider_proxy::telemetry::metrics::Metrics::FAMILIES.iter().map(|s| s.to_string()));
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "every query reads an Outrider metric: {expr}");
        for n in names {
            let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| n.strip_suffix(s)).unwrap_or(&n);
            assert!(
                known.contains(&n) || known.contains(base),
                "the dashboard queries {n}, which the proxy does not export ({expr})"
            );
        }
    }

    // The queries are valid PromQL: promtool checks them as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "1m").replace("$service", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = TempDir::new("dashboard-rules");
    let file = dir.write("rules.yml", &rules);
    let checks = [
        vec!["check".to_string(), "rules".into(), file.display().to_string()],
        vec!["check".into(), "config".into(), repo_file("docker/prometheus/prometheus.yml").display().to_string()],
    ];
    for args in checks {
        let out = match tokio::process::Command::new("promtool").args(&args).output().await {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                outrider_tests::skip("skipping the PromQL check: promtool is not installed (CI installs it)");
                return;
            }
            Err(e) => panic!("cannot run promtool: {e}"),
        };
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}\n{rules}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names("sum(rate(outrider_requests_total{a=\"b\"}[1m])) / x_outrider_no + outrider_endpoints"),
        ["outrider_requests_total", "outrider_endpoints"]
    );
}

/// Whether the exposition has a sample `name` with exactly these labels (any value), and its value.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    prom::samples(text)
        .into_iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
}

const RESILIENT: &str = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: flaky}\nspec:\n  service: flaky\n  \
    retries: {attempts: 1, retryOn: [5xx]}\n  circuitBreaker: {maxRequests: 100, failureRateThreshold: 90}\n  \
    outlierDetection: {consecutive5xx: 100}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_the_config_names_are_exported_at_zero_before_their_first_event_and_go_with_their_service() {
    let flaky = upstream::http1().name("flaky").start().await;
    let plain = upstream::http1().name("plain").start().await;
    let services =
        [service("flaky").endpoint(flaky.addr).yaml(), service("plain").port(8081).endpoint(plain.addr).yaml()];
    let proxy = ProxyHarness::start(&docs(&[services[0].clone(), services[1].clone(), RESILIENT.to_string()])).await;

    // No request at all yet: every series the policy names is there, at 0.
    let text = wait_for("the zero series", || async {
        let text = proxy.metrics().await;
        sample(&text, "outrider_outlier_ejections_total", &[("service", "flaky")]).map(|_| text)
    })
    .await;
    let mut expected: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("outrider_outlier_ejections_total", vec![("service", "flaky")]),
        ("outrider_retry_budget_exhausted_total", vec![("service", "flaky")]),
    ];
    for reason in ["5xx", "grpc-status", "connect-failure", "refused-stream", "reset", "per-try-timeout"] {
        expected.push(("outrider_retries_total", vec![("service", "flaky"), ("reason", reason)]));
    }
    for reason in ["open", "max-requests", "max-pending", "max-connections", "max-retries"] {
        expected.push(("outrider_circuit_breaker_rejections_total", vec![("service", "flaky"), ("reason", reason)]));
    }
    for direction in ["outbound", "inbound"] {
        for reason in ["no-route", "no-healthy-upstream", "connect-failure", "circuit-open", "overloaded", "timeout"] {
            expected.push(("outrider_local_replies_total", vec![("direction", direction), ("reason", reason)]));
        }
    }
    for (name, labels) in &expected {
        assert_eq!(sample(&text, name, labels), Some(0.0), "{name}{labels:?} at 0:\n{text}");
    }
    // A service without a policy adds nothing but its endpoint gauges (bounded by the config).
    let own = |text: &str, service: &str| -> Vec<String> {
        let needle = format!("service=\"{service}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("outrider_endpoints{") && l.contains(&needle))
            .map(str::to_owned)
            .collect()
    };
    assert!(own(&text, "plain").is_empty(), "{:?}", own(&text, "plain"));
    prom::promtool_check("the proxy before any traffic", &text).await;

    // The policy goes: so do its series.
    proxy.reload(&docs(&services)).await;
    wait::wait_until("flaky's series to be removed", || async {
        sample(&proxy.metrics().await, "outrider_outlier_ejections_total", &[("service", "flaky")]).is_none()
    })
    .await;
    let text = proxy.metrics().await;
    assert!(own(&text, "flaky").is_empty(), "{:?}", own(&text, "flaky"));
    assert_eq!(
        sample(&text, "outrider_local_replies_total", &[("direction", "outbound"), ("reason", "no-route")]),
        Some(0.0)
    );
    prom::promtool_check("the proxy after the policy left", &text).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_flag_that_names_no_service_shows_in_the_gauge_and_the_config_dump() {
    let up = upstream::http1().name("echo").start().await;
    let echo = service("echo").endpoint(up.addr).yaml();
    let proxy = ProxyHarness::start_configured(&echo, |c| c.service = Some("reviews".into())).await;
    let text = wait_for("the service_missing gauge", || async {
        let text = proxy.metrics().await;
        sample(&text, "outrider_service_missing", &[("service", "reviews")]).map(|_| text)
    })
    .await;
    assert_eq!(sample(&text, "outrider_service_missing", &[("service", "reviews")]), Some(1.0), "{text}");
    prom::promtool_check("the proxy with a missing service", &text).await;
    let dump: Value =
        serde_json::from_str(&proxy.admin("GET", "/config_dump").await.assert_status(200).text()).unwrap();
    assert_eq!(dump["node"]["service"], "reviews");
    assert_eq!(dump["node"]["service_in_config"], false, "{}", dump["node"]);

    // The Service appears: the gauge goes to 0 and the dump says so.
    proxy.reload(&docs(&[echo, service("reviews").port(9080).endpoint(up.addr).yaml()])).await;
    wait::wait_until("the gauge to drop to 0", || async {
        sample(&proxy.metrics().await, "outrider_service_missing", &[("service", "reviews")]) == Some(0.0)
    })
    .await;
    let dump: Value =
        serde_json::from_str(&proxy.admin("GET", "/config_dump").await.assert_status(200).text()).unwrap();
    assert_eq!(dump["node"]["service_in_config"], true, "{}", dump["node"]);
}
