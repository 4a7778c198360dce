//! `outrider demo`: the whole mesh in one process on loopback. A control plane, three small
//! workloads (`frontend` → `reviews` v1 / v2) each with an in-process sidecar registered over
//! xDS, a demo policy applied through the API (retries with a budget, a circuit breaker per
//! endpoint with v1 as the fallback, a 90/10 canary), bounded load, and a live view every
//! second. The story, in four equal phases: steady; the canary v2 breaks completely (its
//! breaker opens, its share goes to v1, callers barely notice); v2 heals (a probe closes the
//! breaker); the canary moves to 50/50 with an `apply`. `-o json` prints the numbers as one
//! JSON document (the live view then goes to stderr).

mod apps;
mod report;
/// `outrider demo --rollout`: a good version promoted, a bad one aborted.
mod rollout;

pub use apps::{AppCommand, run as run_app};

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
use serde_json::{Value, json};

use crate::cli::client;
use crate::server::{self, ServerConfig};
use apps::Reviews;
use report::{Answers, Load, Phase, ms, pct, percentile, prom_sum, ratio, wrap};

/// `outrider demo` flags.
#[derive(Debug, Clone)]
pub struct DemoArgs {
    pub duration: Duration,
    pub no_policy: bool,
    pub rate: u32,
    /// Run the rollout story instead (`--rollout`).
    pub rollout: bool,
    /// Print the result as one JSON document on stdout (the live view goes to stderr).
    pub json: bool,
    /// After the run, keep the mesh up (idle) until Ctrl-C or SIGTERM, printing how to look
    /// at it.
    pub keep_running: bool,
}

/// The canary split before and after the promotion (v1, v2).
const CANARY: (u32, u32) = (90, 10);
const PROMOTED: (u32, u32) = (50, 50);
/// How often the demo's proxies send their load reports (the default is 5 s): often enough
/// that the dashboard sees v2's breaker while it is open (3 s).
const DEMO_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest run that gives each phase a second.
const MIN_SECONDS: u64 = 4;
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

/// The demo's TrafficPolicy: the canary split, with retries, a breaker and a fallback unless
/// `bare`.
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
    // The breaker is per endpoint (the default scope): v2's opens alone, and while it is open
    // the v2 share of the split falls back to v1. A retry of a failed v2 call goes to the
    // fallback too (v2 is the only endpoint of its subset), so callers barely notice v2 break.
    format!(
        "{head}  timeout: 2s
  retries:
    attempts: 2
    perTryTimeout: 500ms
    retryOn: [connect-failure, reset, gateway-error]
    backoff: {{base: 10ms, max: 50ms}}
    budget: {{ratio: 0.3, minPerSecond: 10, window: 5s}}
  circuitBreaker:
    failureRateThreshold: 50
    window: 6
    minimumCalls: 4
    openDuration: 3s
    halfOpenCalls: 2
    fallback: {{subset: {{version: v1}}}}
{routes}"
    )
}

/// Run the demo; blocks until it ends.
pub fn run(args: DemoArgs) -> ExitCode {
    if args.rollout && args.json {
        eprintln!("outrider demo: -o json is not available with --rollout (its live view is the output)");
        return ExitCode::from(2);
    }
    let data_dir = std::env::temp_dir().join(format!("outrider-demo-{}", std::process::id()));
    let token = match server::random_token() {
        Ok(t) => format!("demo-{t}"),
        Err(e) => {
            eprintln!("outrider demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cp = match server::start(ServerConfig {
        token: Some(token.clone()),
        workers: 1,
        registration_grace: Duration::from_secs(2),
        // Reports every second: the per-endpoint breaker opens for 3 s, and the dashboard's
        // graph shows it only if a report arrives while it is open.
        load_report_interval: DEMO_REPORT_INTERVAL,
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
            rollout::story(args.rate, args.keep_running, &api, cp.xds_addr, &token, &data_dir).await
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
            labels: [("version".to_owned(), version.to_owned())].into(),
            ..XdsConfig::new(format!("http://{xds}"), Protocol::Delta)
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

async fn scrape(addr: SocketAddr) -> String {
    client::send(&format!("http://{addr}"), Method::GET, "/metrics", None, None)
        .await
        .map(|r| r.body)
        .unwrap_or_default()
}

async fn config_dump(admin: SocketAddr) -> Value {
    client::send(&format!("http://{admin}"), Method::GET, "/config_dump", None, None)
        .await
        .map(|r| r.json())
        .unwrap_or(Value::Null)
}

/// The weight of the `version: v2` split of `reviews` in a sidecar's `/config_dump`.
fn v2_weight(dump: &Value) -> Option<u32> {
    let routes = dump["config"]["routes"]["resources"].as_array()?;
    let vhosts = routes.iter().flat_map(|r| r["virtual_hosts"].as_array().into_iter().flatten());
    let reviews = vhosts.filter(|v| v["name"] == "reviews");
    let splits = reviews
        .flat_map(|v| v["routes"].as_array().into_iter().flatten())
        .flat_map(|r| r["split"].as_array().into_iter().flatten());
    splits.filter(|s| s["subset"]["version"] == "v2").find_map(|s| s["weight"].as_u64()).map(|w| w as u32)
}

async fn clusters(admin: SocketAddr) -> Value {
    client::send(&format!("http://{admin}"), Method::GET, "/clusters", None, None)
        .await
        .map(|r| r.json())
        .unwrap_or(Value::Null)
}

/// Where the live view goes: stdout, or stderr when stdout carries the JSON document.
#[derive(Clone, Copy)]
struct Screen {
    json: bool,
}

impl Screen {
    fn line(self, text: impl std::fmt::Display) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}

/// The seconds at which the broken, healed and shifted phases start, for a run of `secs`.
fn schedule(secs: u64) -> [(u64, Phase); 3] {
    let at = |f: f64| (secs as f64 * f).round() as u64;
    let b1 = at(0.25).max(1);
    let b2 = at(0.5).max(b1 + 1);
    let b3 = at(0.75).max(b2 + 1);
    [(b1, Phase::Broken), (b2, Phase::Healed), (b3, Phase::Shifted)]
}

async fn demo(args: &DemoArgs, api: &str, xds: SocketAddr, token: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let screen = Screen { json: args.json };
    screen.line(wrap(
        "outrider demo: ",
        "  ",
        "a control plane, frontend → reviews (v1 healthy, v2 the canary, a little flaky), a sidecar each, \
         loopback only\n",
    ));
    let v1 = Reviews::new("v1", 0, 0);
    let v2 = Reviews::new("v2", 2, 10);
    let v1_addr = apps::start_reviews(v1.clone(), LOOPBACK_ANY).await?;
    let v2_addr = apps::start_reviews(v2.clone(), LOOPBACK_ANY).await?;

    apply(api, token, SERVICES.to_owned()).await?;
    let policy = !args.no_policy;
    apply(api, token, traffic_policy(CANARY.0, CANARY.1, !policy)).await?;
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
            let a = Answers::read(&v1, &v2);
            a.v1() > 0 && a.v2() > 0
        }
    })
    .await?;
    for r in [&v1, &v2] {
        r.counts.ok.store(0, Ordering::Relaxed);
        r.counts.failed.store(0, Ordering::Relaxed);
    }

    let secs = args.duration.as_secs().max(MIN_SECONDS);
    let schedule = schedule(secs);
    // What runs where: a label column of 20, the rest wrapped under it.
    let info = |label: &str, text: String| screen.line(wrap(&format!("{label:<20}"), &" ".repeat(20), &text));
    info("control plane API", format!("{api}  (outrider status --server {api})"));
    info("dashboard", format!("{api}/ui/  (the graph shows frontend → reviews and the breaker; API token {token})"));
    info(
        "mTLS",
        "frontend → reviews over mutual TLS 1.3, HTTP/1.1 on pooled connections between the sidecars; identities \
         spiffe://outrider.local/ns/default/sa/frontend → …/sa/reviews from the control plane's CA"
            .to_owned(),
    );
    info(
        "frontend sidecar",
        format!(
            "metrics http://{}/metrics, endpoints and breakers http://{}/clusters",
            front_car.addrs.metrics, front_car.addrs.admin
        ),
    );
    info("reviews v1 sidecar", format!("metrics http://{}/metrics", v1_car.addrs.metrics));
    info("reviews v2 sidecar", format!("metrics http://{}/metrics", v2_car.addrs.metrics));
    info(
        "policy",
        if policy {
            "retries (2, budget 30%), a breaker per endpoint (opens at 50% failures of its last 6 calls, \
             for 3s) with v1 as the fallback, canary v1 90 / v2 10"
        } else {
            "canary v1 90 / v2 10 only (--no-policy): no retries, no breaker, no fallback"
        }
        .to_owned(),
    );
    info(
        "load",
        format!(
            "{} req/s for {secs}s; v2 breaks at {}s, heals at {}s, the canary goes 50/50 at {}s",
            args.rate, schedule[0].0, schedule[1].0, schedule[2].0,
        ),
    );
    screen.line("");
    screen.line(wrap(
        "columns: ",
        "  ",
        "one row per second. caller = the frontend's calls that succeeded (what users see, after \
         retries and the fallback); upstream = the tries that reviews v1 and v2 answered with \
         success (raw, before the mesh helps); retries = tries sent again; fallback = tries sent to \
         v1 because v2's breaker was open; v1 brk, v2 brk = each version's breaker as the \
         frontend's sidecar sees it; p50, p99 = the caller's latency; v1/v2 = the tries each \
         version received.\n",
    ));
    screen.line(format!(
        "{:>4} {:<8}{:>6} {:>7} {:>8} {:>7} {:>8} {:<9} {:<9} {:>7} {:>8} {:>9}",
        "t", "phase", "req/s", "caller", "upstream", "retries", "fallback", "v1 brk", "v2 brk", "p50", "p99", "v1/v2"
    ));

    let load = Arc::new(Load::default());
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
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
                    let phase = load.phase.load(Ordering::Relaxed);
                    load.sent.fetch_add(1, Ordering::Relaxed);
                    let ok = match Request::get(uri).body(Empty::new()) {
                        Ok(req) => matches!(caller.request(req).await, Ok(r) if r.status().is_success()),
                        Err(_) => false,
                    };
                    load.record(phase, ok, t0.elapsed().as_micros() as u64);
                    drop(permit);
                });
            }
        })
    };

    let mut phase = Phase::Steady;
    let mut phase_answers = [Answers::default(); 4];
    let mut phase_start = Answers::read(&v1, &v2);
    let (mut last_ok, mut last_failed, mut last_retries, mut last_fallbacks) = (0u64, 0u64, 0f64, 0f64);
    let mut last_answers = phase_start;
    let mut last_v2 = "closed".to_owned();
    let mut v2_opened = 0u32;
    let mut events: Vec<Value> = Vec::new();
    let mut seconds: Vec<Value> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for t in 1..=secs {
        tick.tick().await;
        // The row of second t: what happened during it, under the phase that was in force.
        let metrics = scrape(front_car.addrs.metrics).await;
        let retries = prom_sum(&metrics, "outrider_retries_total", &["service=\"reviews\""]);
        let fallbacks = prom_sum(&metrics, "outrider_circuit_breaker_fallbacks_total", &["service=\"reviews\""]);
        let (b1, b2) = report::subset_breakers(&clusters(front_car.addrs.admin).await);
        if b2 != last_v2 {
            if b2 == "open" {
                v2_opened += 1;
            }
            let what = format!("v2's breaker {last_v2} → {b2}");
            screen.line(wrap(&format!("  --  t={t}s "), EVENT_INDENT, &what));
            events.push(json!({"t": t, "event": what}));
            last_v2 = b2.clone();
        }
        let (ok, failed) = (load.ok.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed));
        let answers = Answers::read(&v1, &v2);
        let second = answers.since(last_answers);
        let mut window = std::mem::take(&mut *load.window.lock().unwrap_or_else(|e| e.into_inner()));
        window.sort_unstable();
        let requests = (ok + failed) - (last_ok + last_failed);
        let caller_success = ratio(ok - last_ok, requests);
        let upstream_success = ratio(second.ok(), second.total());
        let (p50, p99) = (percentile(&window, 0.5), percentile(&window, 0.99));
        let brk = |s: &str| if policy { s.to_owned() } else { "-".to_owned() };
        screen.line(format!(
            "{:>3}s {:<8}{:>6} {:>7} {:>8} {:>7} {:>8} {:<9} {:<9} {:>7} {:>8} {:>9}",
            t,
            phase.label(),
            requests,
            pct(caller_success).trim(),
            pct(upstream_success).trim(),
            (retries - last_retries).max(0.0) as u64,
            (fallbacks - last_fallbacks).max(0.0) as u64,
            brk(&b1),
            if b2 == "open" && policy { "OPEN".to_owned() } else { brk(&b2) },
            ms(p50),
            ms(p99),
            format!("{}/{}", second.v1(), second.v2())
        ));
        seconds.push(json!({
            "t": t,
            "phase": phase.key(),
            "requests": requests,
            "caller_success": caller_success,
            "upstream_calls": second.total(),
            "upstream_success": upstream_success,
            "retries": (retries - last_retries).max(0.0) as u64,
            "fallbacks": (fallbacks - last_fallbacks).max(0.0) as u64,
            "breaker": {"v1": b1, "v2": b2},
            "v1_calls": second.v1(),
            "v2_calls": second.v2(),
            "p50_ms": p50 as f64 / 1000.0,
            "p99_ms": p99 as f64 / 1000.0,
        }));
        (last_ok, last_failed, last_retries, last_fallbacks, last_answers) = (ok, failed, retries, fallbacks, answers);

        let Some(&(_, next)) = schedule.iter().find(|(at, _)| *at == t) else { continue };
        phase_answers[phase.index()] = answers.since(phase_start);
        phase_start = answers;
        phase = next;
        load.phase.store(next.index(), Ordering::Relaxed);
        let what = match next {
            Phase::Broken => {
                v2.broken.store(true, Ordering::Relaxed);
                "v2 broken: every call to it is now a 503".to_owned()
            }
            Phase::Healed => {
                v2.heal();
                "v2 healed: back to its usual flakiness".to_owned()
            }
            Phase::Steady | Phase::Shifted => {
                let applied = Instant::now();
                let v = apply(api, token, traffic_policy(PROMOTED.0, PROMOTED.1, !policy)).await?;
                let admin = front_car.addrs.admin;
                wait_for("the frontend's sidecar to apply the 50/50 split", || async move {
                    v2_weight(&config_dump(admin).await) == Some(PROMOTED.1)
                })
                .await?;
                // The phase's upstream calls count from here: the new split is in force.
                phase_start = Answers::read(&v1, &v2);
                format!(
                    "canary moved to v1 {} / v2 {} (apply → config {v}, in force at the frontend's sidecar {} ms later)",
                    PROMOTED.0,
                    PROMOTED.1,
                    applied.elapsed().as_millis()
                )
            }
        };
        screen.line(wrap(&format!("  --  t={t}s "), EVENT_INDENT, &what));
        events.push(json!({"t": t, "event": what}));
    }
    let _ = generator.await;
    // Let requests in flight finish (bounded by the policy's 2 s timeout).
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while load.done() < load.sent.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let answers = Answers::read(&v1, &v2);
    phase_answers[phase.index()] = answers.since(phase_start);

    let metrics = scrape(front_car.addrs.metrics).await;
    let retries = prom_sum(&metrics, "outrider_retries_total", &["service=\"reviews\""]) as u64;
    let exhausted = prom_sum(&metrics, "outrider_retry_budget_exhausted_total", &["service=\"reviews\""]) as u64;
    let rejected = prom_sum(&metrics, "outrider_circuit_breaker_rejections_total", &["service=\"reviews\""]) as u64;
    let fallbacks = prom_sum(&metrics, "outrider_circuit_breaker_fallbacks_total", &["service=\"reviews\""]) as u64;
    let (ok, failed) = (load.ok.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed));
    let mut all = std::mem::take(&mut *load.all.lock().unwrap_or_else(|e| e.into_inner()));
    all.sort_unstable();
    let mut mtls = 0.0;
    for car in [&v1_car, &v2_car] {
        let text = scrape(car.addrs.metrics).await;
        mtls +=
            prom_sum(&text, "outrider_tls_connections_total", &["direction=\"inbound\"", "alpn=\"outrider-http1/1\""]);
    }
    let phases = report::phase_json(&load, &phase_answers, &seconds);
    let caller_success = ratio(ok, ok + failed);
    let upstream_success = ratio(answers.ok(), answers.total());

    screen.line("\nevents:");
    for e in &events {
        screen.line(wrap(&format!("  t={}s ", e["t"]), "        ", e["event"].as_str().unwrap_or_default()));
    }
    let broken = &phases["broken"];
    screen.line("");
    screen.line(wrap(
        "summary: ",
        "  ",
        &format!(
            "{} requests in {secs}s; caller success {} vs raw upstream success {}; while v2 was broken: \
         caller success {}, v2's breaker open {} of {} seconds, {fallbacks} calls sent to the v1 fallback; \
         {retries} retries ({exhausted} held back by the budget); v2's breaker opened {v2_opened}x, rejected \
         {rejected}; after the promotion v2 took {} of the calls; p50 {} p99 {}",
            ok + failed,
            pct(caller_success).trim(),
            pct(upstream_success).trim(),
            pct(broken["caller_success"].as_f64()).trim(),
            broken["seconds_v2_breaker_open"],
            broken["seconds"],
            pct(phases["shifted"]["v2_share"].as_f64()).trim(),
            ms(percentile(&all, 0.5)),
            ms(percentile(&all, 0.99)),
        ),
    ));
    screen.line(wrap(
        "mTLS: ",
        "  ",
        &format!(
            "the reviews sidecars accepted {mtls} mutual-TLS connection(s) from the frontend's sidecar, \
             each kept in its pool and reused for one request after another (outrider_tls_connections_total)"
        ),
    ));
    let hint = |command: &str, what: &str| screen.line(format!("  {command:<44} # {what}"));
    if args.keep_running {
        screen.line("\nthe mesh stays up (no more load) until Ctrl-C; meanwhile:");
        hint(&format!("outrider status --server {api}"), "proxies, config versions, ACK/NACK");
        hint(&format!("{api}/ui/"), "the dashboard, in a browser");
        hint(&format!("outrider get --server {api}"), "the services and the policy");
        hint(&format!("curl -s http://{}/clusters", front_car.addrs.admin), "endpoints, breakers, latency");
        hint(&format!("curl -s http://{}/metrics", front_car.addrs.metrics), "the frontend sidecar's metrics");
        hint(&format!("export OUTRIDER_TOKEN={token}"), "then `outrider apply --server …` works");
    } else {
        screen.line("\nlook further (these work after the demo has ended):");
        if policy {
            hint("outrider demo --no-policy", "the same load without retries, breaker, fallback");
        } else {
            hint("outrider demo", "the same load with the demo policy");
        }
        hint("outrider demo --keep-running", "the same, then the mesh stays up to look around");
        hint("outrider demo --rollout", "a release: v2 promoted step by step, v3 aborted");
        hint("outrider validate -f examples/policy.yaml", "check a policy file offline");
        hint("outrider control-plane --log-format text", "your own control plane: docs/control-plane.md");
        screen.line("  docs/policy.md, docs/metrics.md: the policy and the numbers behind each column");
    }
    if args.json {
        let doc = json!({
            "policy": policy,
            "duration_s": secs,
            "rate": args.rate,
            "canary": {"before": [CANARY.0, CANARY.1], "after": [PROMOTED.0, PROMOTED.1]},
            "schedule": schedule.iter().map(|(at, p)| json!({"t": at, "phase": p.key()})).collect::<Vec<_>>(),
            "seconds": seconds,
            "phases": phases,
            "events": events,
            "summary": {
                "requests": ok + failed,
                "caller_success": caller_success,
                "upstream_calls": answers.total(),
                "upstream_success": upstream_success,
                "retries": retries,
                "retries_held_back_by_budget": exhausted,
                "breaker_rejections": rejected,
                "fallbacks": fallbacks,
                "v2_breaker_opened": v2_opened,
                "p50_ms": percentile(&all, 0.5) as f64 / 1000.0,
                "p99_ms": percentile(&all, 0.99) as f64 / 1000.0,
                "mtls_connections": mtls,
            },
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }

    if args.keep_running {
        until_stopped().await;
        screen.line("stopping the mesh");
    }
    for app in [front_car, v1_car, v2_car] {
        app.shutdown().await;
    }
    Ok(())
}

/// Event lines wrap under their text.
const EVENT_INDENT: &str = "             ";

/// Until Ctrl-C (SIGINT) or SIGTERM.
async fn until_stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_gets_at_least_a_second() {
        assert_eq!(schedule(4).map(|(t, _)| t), [1, 2, 3]);
        assert_eq!(schedule(8).map(|(t, _)| t), [2, 4, 6]);
        assert_eq!(schedule(30).map(|(t, _)| t), [8, 15, 23]);
    }

    #[test]
    fn the_demo_policy_is_valid() {
        for bare in [false, true] {
            let text = format!("{SERVICES}---\n{}", traffic_policy(90, 10, bare));
            outrider_xds::load_str("demo.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
