//! `outrider demo`: the whole mesh in one process on loopback. A control plane, three small
//! workloads (`frontend` → `reviews` v1 / v2) each with an in-process sidecar registered over
//! xDS, a demo policy applied through the API (retries with a budget, a circuit breaker, a
//! 90/10 canary), bounded load, and a live view every second. Midway v2 breaks completely,
//! then heals, then the canary is promoted to 80/20 with an `apply`.

mod apps;
/// `outrider demo --rollout`: a good version promoted, a bad one aborted.
mod rollout;

pub use apps::{AppCommand, run as run_app};

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use outrider_proxy::app::App;
use outrider_proxy::config::ProxyConfig;
use outrider_proxy::source::xds::{Protocol, XdsConfig};
use outrider_proxy::telemetry::log::LogHandle;
use parking_lot::Mutex;

use crate::cli::client;
use crate::server::{self, ServerConfig};
use apps::Reviews;

/// `outrider demo` flags.
#[derive(Debug, Clone)]
pub struct DemoArgs {
    pub duration: Duration,
    pub no_policy: bool,
    pub rate: u32,
    /// Run the rollout story instead (`--rollout`).
    pub rollout: bool,
}

/// The demo's workloads bind a fresh loopback port.
const LOOPBACK_ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

const SERVICES: &str = "apiVersion: outrider.io/v1
kind: Service
metadata: {name: frontend}
spec: {protocol: http, port: 8080}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {name: reviews}
spec: {protocol: http, port: 8080}
";

/// The demo's TrafficPolicy: the canary split, with retries and a breaker unless `bare`.
fn traffic_policy(v1: u32, v2: u32, bare: bool) -> String {
    let routes = format!(
        "  routes:
    - name: main
      match: {{pathPrefix: /}}
      split: [{{subset: {{version: v1}}, weight: {v1}}}, {{subset: {{version: v2}}, weight: {v2}}}]
"
    );
    let head =
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: reviews}\nspec:\n  service: reviews\n";
    if bare {
        return format!("{head}{routes}");
    }
    format!(
        "{head}  timeout: 2s
  retries:
    attempts: 2
    perTryTimeout: 500ms
    retryOn: [connect-failure, reset, gateway-error]
    backoff: {{base: 10ms, max: 50ms}}
    budget: {{ratio: 0.3, minPerSecond: 10, window: 5s}}
  circuitBreaker:
    failureRateThreshold: 20
    window: 200
    minimumCalls: 100
    openDuration: 2s
    halfOpenCalls: 5
{routes}"
    )
}

/// Run the demo; blocks until it ends.
pub fn run(args: DemoArgs) -> ExitCode {
    let data_dir = std::env::temp_dir().join(format!("outrider-demo-{}", std::process::id()));
    let token = format!("demo-{:016x}", fastrand::u64(..));
    let cp = match server::start(ServerConfig {
        token: Some(token.clone()),
        workers: 1,
        registration_grace: Duration::from_secs(2),
        ..ServerConfig::local(data_dir.clone())
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outrider demo: the control plane did not start: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outrider demo: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let api = format!("http://{}", cp.api_addr);
    let result = rt.block_on(async {
        if args.rollout {
            rollout::story(args.rate, &api, cp.xds_addr, &token, &data_dir).await
        } else {
            demo(&args, &api, cp.xds_addr, &token, &data_dir).await
        }
    });
    drop(rt);
    cp.kill();
    let _ = std::fs::remove_dir_all(&data_dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outrider demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A join token for `default/<service>`, written to a file in `dir` for `--identity-token`.
async fn join_token(
    api: &str,
    token: &str,
    service: &str,
    dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let body = serde_json::json!({"namespace": "default", "serviceAccount": service}).to_string();
    let reply = client::send(api, Method::POST, "/v1/tokens", Some(token), Some(body)).await?;
    let json = reply.json();
    let Some(join) = json["token"].as_str() else { anyhow::bail!("no join token for {service}: {json}") };
    let path = dir.join(format!("{service}.token"));
    std::fs::write(&path, join)?;
    Ok(path)
}

/// A sidecar of `service` with a workload identity from the control plane's CA: sidecars talk
/// mutual TLS to each other.
async fn sidecar(
    xds: SocketAddr,
    api: &str,
    token_file: std::path::PathBuf,
    node: &str,
    service: &str,
    version: &str,
    app_port: Option<u16>,
) -> anyhow::Result<App> {
    let config = ProxyConfig {
        identity: Some(outrider_proxy::mesh::IdentityConfig {
            ca: api.parse()?,
            token_file,
            namespace: "default".into(),
            service_account: service.to_owned(),
            ca_root: None,
        }),
        xds: Some(XdsConfig {
            address: format!("http://{xds}"),
            protocol: Protocol::Delta,
            advertise: None,
            labels: [("version".to_owned(), version.to_owned())].into(),
        }),
        service: Some(service.to_owned()),
        app_port,
        drain_timeout: Duration::from_secs(1),
        ..ProxyConfig::local(node)
    };
    App::build(config, LogHandle::disabled()).await.map_err(|e| anyhow::anyhow!("sidecar {node} did not start: {e}"))
}

async fn apply(api: &str, token: &str, yaml: String) -> anyhow::Result<String> {
    let reply = client::send(api, Method::PUT, "/v1/policies", Some(token), Some(yaml)).await?;
    anyhow::ensure!(reply.status.is_success(), "apply failed: {} {}", reply.status, reply.body);
    Ok(reply.json()["configVersion"].as_str().unwrap_or("?").to_owned())
}

/// Wait up to 20 s for `check`.
async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("timed out waiting for {what}")
}

/// What the load generator saw in the current second, and overall.
#[derive(Debug, Default)]
struct Load {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Latencies (µs) of the current second.
    window: Mutex<Vec<u64>>,
    /// All latencies (µs).
    all: Mutex<Vec<u64>>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sum of the samples of `name` whose labels contain every `key="value"` of `labels`.
fn prom_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (lbl, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let end = r.find('}')?;
                    (&r[..end], r[end + 1..].trim())
                }
                None if rest.starts_with(' ') => ("", rest.trim()),
                None => return None,
            };
            labels.iter().all(|want| lbl.contains(want)).then(|| value.split(' ').next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// Microseconds as milliseconds, one decimal.
fn ms(us: u64) -> String {
    format!("{:.1}ms", us as f64 / 1000.0)
}

fn breaker_name(state: f64) -> &'static str {
    match state as i64 {
        1 => "OPEN",
        2 => "half-open",
        _ => "closed",
    }
}

fn pct(ok: u64, total: u64) -> String {
    if total == 0 { "    -".into() } else { format!("{:5.1}%", 100.0 * ok as f64 / total as f64) }
}

async fn scrape(addr: SocketAddr) -> String {
    client::send(&format!("http://{addr}"), Method::GET, "/metrics", None, None)
        .await
        .map(|r| r.body)
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Steady,
    Broken,
    Healed,
    Shifted,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Steady => "steady",
            Phase::Broken => "v2 down",
            Phase::Healed => "v2 back",
            Phase::Shifted => "80/20",
        }
    }
}

async fn demo(args: &DemoArgs, api: &str, xds: SocketAddr, token: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "outrider demo: a control plane, frontend → reviews (v1 healthy, v2 flaky), a sidecar each; loopback only\n"
    );
    let v1 = Reviews::new("v1", 0, 0);
    let v2 = Reviews::new("v2", 40, 10);
    let v1_addr = apps::start_reviews(v1.clone(), LOOPBACK_ANY).await?;
    let v2_addr = apps::start_reviews(v2.clone(), LOOPBACK_ANY).await?;

    apply(api, token, SERVICES.to_owned()).await?;
    let policy = !args.no_policy;
    apply(api, token, traffic_policy(90, 10, !policy)).await?;
    let front_token = join_token(api, token, "frontend", dir).await?;
    let reviews_token = join_token(api, token, "reviews", dir).await?;
    let front_car = sidecar(xds, api, front_token, "frontend-1", "frontend", "v1", None).await?;
    let upstream = format!("http://{}/reviews", front_car.addrs.outbound).parse()?;
    let front = apps::start_frontend(LOOPBACK_ANY, upstream, Some("reviews:8080")).await?;
    let v1_car = sidecar(xds, api, reviews_token.clone(), "reviews-v1", "reviews", "v1", Some(v1_addr.port())).await?;
    let v2_car = sidecar(xds, api, reviews_token, "reviews-v2", "reviews", "v2", Some(v2_addr.port())).await?;

    wait_for("both reviews workloads to register", || async {
        let r = client::send(api, Method::GET, "/v1/endpoints", None, None).await;
        let n = r.map(|r| {
            r.json()["items"].as_array().map_or(0, |items| items.iter().filter(|i| i["service"] == "reviews").count())
        });
        n.unwrap_or(0) >= 2
    })
    .await?;
    let caller: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let front_uri: http::Uri = format!("http://{front}/").parse()?;
    wait_for("frontend to reach reviews v1 and v2 through the mesh", || {
        let caller = caller.clone();
        let uri = front_uri.clone();
        let (v1, v2) = (v1.clone(), v2.clone());
        async move {
            if let Ok(req) = Request::get(uri).body(Empty::new()) {
                let _ = caller.request(req).await;
            }
            let hits = |r: &Reviews| r.counts.ok.load(Ordering::Relaxed) + r.counts.failed.load(Ordering::Relaxed);
            hits(&v1) > 0 && hits(&v2) > 0
        }
    })
    .await?;
    for r in [&v1, &v2] {
        r.counts.ok.store(0, Ordering::Relaxed);
        r.counts.failed.store(0, Ordering::Relaxed);
    }

    println!("control plane API  {api}   (while it runs: outrider status --server {api})");
    println!("dashboard          {api}/ui/   (the graph shows frontend → reviews and the breaker; API token {token})");
    println!(
        "mTLS               frontend → reviews over mutual TLS 1.3 (HTTP/2 between the sidecars), identities \
         spiffe://outrider.local/ns/default/sa/frontend → …/sa/reviews, issued by the control plane's CA"
    );
    println!("frontend sidecar   http://{}/metrics", front_car.addrs.metrics);
    println!("reviews v1 sidecar http://{}/metrics", v1_car.addrs.metrics);
    println!("reviews v2 sidecar http://{}/metrics", v2_car.addrs.metrics);
    println!(
        "policy: {}\nload: {} req/s for {}s\n",
        if policy {
            "retries (2, budget 30%), breaker (opens at 20% failures), canary v1 90 / v2 10"
        } else {
            "canary v1 90 / v2 10 only (--no-policy): no retries, no breaker"
        },
        args.rate,
        args.duration.as_secs()
    );
    println!(
        "{:>4}  {:<8} {:>6}  {:>8} {:>9}  {:>7}  {:<9} {:>7} {:>7}  {:>11}",
        "t", "phase", "req/s", "caller", "upstream", "retries", "breaker", "p50", "p99", "v1/v2 tries"
    );

    let load = Arc::new(Load::default());
    let start = Instant::now();
    let end = start + args.duration;
    let generator = {
        let load = load.clone();
        let caller = caller.clone();
        let uri = front_uri.clone();
        let rate = args.rate.max(1);
        tokio::spawn(async move {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while Instant::now() < end {
                tick.tick().await;
                let Ok(permit) = in_flight.clone().try_acquire_owned() else { continue };
                let (load, caller, uri) = (load.clone(), caller.clone(), uri.clone());
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    load.sent.fetch_add(1, Ordering::Relaxed);
                    let ok = match Request::get(uri).body(Empty::new()) {
                        Ok(req) => matches!(caller.request(req).await, Ok(r) if r.status().is_success()),
                        Err(_) => false,
                    };
                    let us = t0.elapsed().as_micros() as u64;
                    if ok { &load.ok } else { &load.failed }.fetch_add(1, Ordering::Relaxed);
                    load.window.lock().push(us);
                    load.all.lock().push(us);
                    drop(permit);
                });
            }
        })
    };

    let d = args.duration.as_secs_f64();
    let schedule = [(0.35 * d, Phase::Broken), (0.6 * d, Phase::Healed), (0.8 * d, Phase::Shifted)];
    let mut phase = Phase::Steady;
    let (mut last_ok, mut last_failed, mut last_retries) = (0u64, 0u64, 0f64);
    let (mut last_up_ok, mut last_up_failed) = (0u64, 0u64);
    let (mut last_v1, mut last_v2) = (0u64, 0u64);
    let mut last_breaker = "closed";
    let mut breaker_opened = 0u32;
    let mut events: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        if let Some(&(_, next)) = schedule.iter().rev().find(|(at, _)| t >= *at)
            && next != phase
        {
            phase = next;
            let what = match phase {
                Phase::Broken => {
                    v2.broken.store(true, Ordering::Relaxed);
                    "v2 broken: every call is now a 503".to_owned()
                }
                Phase::Healed => {
                    v2.broken.store(false, Ordering::Relaxed);
                    "v2 healed: back to its usual flakiness".to_owned()
                }
                Phase::Steady | Phase::Shifted => {
                    let v = apply(api, token, traffic_policy(80, 20, !policy)).await?;
                    format!("canary promoted to v1 80 / v2 20 (apply → config {v})")
                }
            };
            println!("  --  t={t:.0}s {what}");
            events.push(format!("t={t:.0}s {what}"));
        }
        let metrics = scrape(front_car.addrs.metrics).await;
        let retries = prom_sum(&metrics, "outrider_retries_total", &["service=\"reviews\""]);
        let state = breaker_name(prom_sum(&metrics, "outrider_circuit_breaker_state", &["service=\"reviews\""]));
        if state != last_breaker {
            if state == "OPEN" {
                breaker_opened += 1;
            }
            let line = format!("t={t:.0}s breaker {last_breaker} → {state}");
            println!("  --  {line}");
            events.push(line);
            last_breaker = state;
        }
        let (ok, failed) = (load.ok.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed));
        let (up_ok, up_failed) = (
            v1.counts.ok.load(Ordering::Relaxed) + v2.counts.ok.load(Ordering::Relaxed),
            v1.counts.failed.load(Ordering::Relaxed) + v2.counts.failed.load(Ordering::Relaxed),
        );
        let hits = |r: &Reviews| r.counts.ok.load(Ordering::Relaxed) + r.counts.failed.load(Ordering::Relaxed);
        let (h1, h2) = (hits(&v1), hits(&v2));
        let mut window = std::mem::take(&mut *load.window.lock());
        window.sort_unstable();
        let (dv1, dv2) = (h1 - last_v1, h2 - last_v2);
        let split = match (100 * dv1 + (dv1 + dv2) / 2).checked_div(dv1 + dv2) {
            Some(p1) => format!("{p1}/{}", 100 - p1),
            None => "-".to_owned(),
        };
        println!(
            "{:>3}s  {:<8} {:>6}  {:>8} {:>9}  {:>7}  {:<9} {:>7} {:>7}  {:>11}",
            t.round() as u64,
            phase.label(),
            (ok + failed) - (last_ok + last_failed),
            pct(ok - last_ok, (ok + failed) - (last_ok + last_failed)),
            pct(up_ok - last_up_ok, (up_ok + up_failed) - (last_up_ok + last_up_failed)),
            (retries - last_retries).max(0.0) as u64,
            state,
            ms(percentile(&window, 0.5)),
            ms(percentile(&window, 0.99)),
            split
        );
        (last_ok, last_failed, last_retries) = (ok, failed, retries);
        (last_up_ok, last_up_failed, last_v1, last_v2) = (up_ok, up_failed, h1, h2);
        if Instant::now() >= end {
            break;
        }
    }
    let _ = generator.await;
    // Let requests in flight finish (bounded by the policy's 2 s timeout).
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while load.ok.load(Ordering::Relaxed) + load.failed.load(Ordering::Relaxed) < load.sent.load(Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let metrics = scrape(front_car.addrs.metrics).await;
    let retries = prom_sum(&metrics, "outrider_retries_total", &["service=\"reviews\""]) as u64;
    let exhausted = prom_sum(&metrics, "outrider_retry_budget_exhausted_total", &["service=\"reviews\""]) as u64;
    let rejected = prom_sum(&metrics, "outrider_circuit_breaker_rejections_total", &["service=\"reviews\""]) as u64;
    let (ok, failed) = (load.ok.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed));
    let up_ok = v1.counts.ok.load(Ordering::Relaxed) + v2.counts.ok.load(Ordering::Relaxed);
    let up_all = up_ok + v1.counts.failed.load(Ordering::Relaxed) + v2.counts.failed.load(Ordering::Relaxed);
    let mut all = std::mem::take(&mut *load.all.lock());
    all.sort_unstable();
    println!("\nevents:");
    for e in &events {
        println!("  {e}");
    }
    println!(
        "\nsummary: {} requests in {}s; caller success {} vs raw upstream success {}; {retries} retries \
         ({exhausted} held back by the budget); breaker opened {breaker_opened}x, rejected {rejected}; \
         p50 {} p99 {}",
        ok + failed,
        args.duration.as_secs(),
        pct(ok, ok + failed).trim(),
        pct(up_ok, up_all).trim(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
    );
    let mut mtls = 0.0;
    for car in [&v1_car, &v2_car] {
        let text = scrape(car.addrs.metrics).await;
        mtls += prom_sum(&text, "outrider_tls_connections_total", &["direction=\"inbound\"", "alpn=\"outrider/1\""]);
    }
    println!(
        "mTLS: the reviews sidecars accepted {mtls} mutual-TLS connection(s) from the frontend's sidecar, \
         every request multiplexed over them (outrider_tls_connections_total)"
    );
    if policy {
        println!("contrast: run `outrider demo --no-policy` to see the same load without retries or a breaker.");
    } else {
        println!("contrast: run `outrider demo` to see the same load with the demo policy.");
    }
    println!(
        "\nlook further:\n  outrider control-plane --log-format text      # a control plane of your own\n  \
         outrider apply -f examples/policy.yaml         # apply a policy (docs/policy.md)\n  \
         outrider status                                # proxies, config versions, ACK/NACK\n  \
         each sidecar serves Prometheus text at http://<metrics-port>/metrics (docs/metrics.md); \
         during this run: http://{}/metrics",
        front_car.addrs.metrics
    );

    println!("  outrider demo --rollout                        # a release: v2 promoted step by step, v3 aborted");
    for app in [front_car, v1_car, v2_car] {
        app.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prom_sum_filters_by_name_and_labels() {
        let text = "# HELP x\noutrider_retries_total{service=\"reviews\",reason=\"5xx\"} 3\n\
                    outrider_retries_total{service=\"reviews\",reason=\"reset\"} 2\n\
                    outrider_retries_total{service=\"other\",reason=\"5xx\"} 7\n\
                    outrider_retries_total_x 9\nup 1\n";
        assert_eq!(prom_sum(text, "outrider_retries_total", &["service=\"reviews\""]), 5.0);
        assert_eq!(prom_sum(text, "up", &[]), 1.0);
    }
}
