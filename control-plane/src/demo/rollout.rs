//! `outrider demo --rollout`: progressive delivery in the demo mesh. `reviews` v1 serves; a
//! good v2 is released by a Rollout (canary steps, one-second checks on the sidecars' load
//! reports) and promoted step by step; then a bad v3 (a quarter of its answers are 503s) is
//! released after it and aborted on its first step. A line per second shows the rollout (step,
//! weight, canary and stable numbers) next to what the caller sees; like the main story, every
//! line fits 100 columns, and with `--keep-running` the mesh stays up afterwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::apps::{self, Reviews};
use super::report::wrap;
use super::{EVENT_INDENT, LOOPBACK_ANY, SERVICES, apply, join_token, sidecar, until_stopped, wait_for};
use crate::cli::client;

/// All traffic on v1 before the first release.
const START: &str = "apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {name: reviews}
spec:
  service: reviews
  routes:
    - name: main
      split: [{subset: {version: v1}, weight: 100}]
";

/// The Rollout of `canary` after `stable`. The latency bound is loose (2 s): the demo runs on
/// busy laptops and debug builds, where a loopback call's p99 can reach hundreds of
/// milliseconds for the stable version too; the bad version fails on its errors.
fn rollout(stable: &str, canary: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1
kind: Rollout
metadata: {{name: reviews}}
spec:
  service: reviews
  stable: {{version: {stable}}}
  canary: {{version: {canary}}}
  strategy: {{canary: {{steps: [10, 25, 50]}}}}
  interval: 1s
  analysis: {{minSuccessRate: 99, maxP99Latency: 2s, minRequests: 15, abortAfterFailures: 1}}
"
    )
}

/// What the caller saw since the last line.
#[derive(Debug, Default)]
struct Seen {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// How a release ended.
struct Outcome {
    canary: &'static str,
    /// `promoted` or `aborted`.
    phase: String,
    reason: String,
}

/// Run the story; `rate` requests per second through the frontend. With `keep_running` the
/// mesh stays up (idle) afterwards until Ctrl-C or SIGTERM.
pub(super) async fn story(
    rate: u32,
    keep_running: bool,
    api: &str,
    xds: SocketAddr,
    token: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    println!(
        "{}\n",
        wrap(
            "outrider demo --rollout: ",
            "  ",
            "frontend → reviews v1; a Rollout releases v2 (good), then v3 (bad); loopback only"
        )
    );
    let versions = [Reviews::new("v1", 0, 0), Reviews::new("v2", 0, 0), Reviews::new("v3", 25, 0)];
    apply(api, token, SERVICES.to_owned()).await?;
    apply(api, token, START.to_owned()).await?;
    let front_token = join_token(api, token, "frontend", dir).await?;
    let reviews_token = join_token(api, token, "reviews", dir).await?;
    let front_car = sidecar(xds, api, front_token, "frontend-1", "frontend", "v1", None).await?;
    let upstream = format!("http://{}/reviews", front_car.addrs.outbound).parse()?;
    let front = apps::start_frontend(LOOPBACK_ANY, upstream, Some("reviews:8080")).await?;
    let mut cars = vec![front_car];
    for r in &versions {
        let addr = apps::start_reviews(r.clone(), LOOPBACK_ANY).await?;
        let node = format!("reviews-{}", r.version);
        cars.push(sidecar(xds, api, reviews_token.clone(), &node, "reviews", r.version, Some(addr.port())).await?);
    }
    wait_for("the three reviews workloads to register", || async {
        let r = client::send(api, Method::GET, "/v1/endpoints", None, None).await;
        let n = r.map(|r| {
            r.json()["items"].as_array().map_or(0, |items| items.iter().filter(|i| i["service"] == "reviews").count())
        });
        n.unwrap_or(0) >= 3
    })
    .await?;
    let probe: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let front_uri: http::Uri = format!("http://{front}/").parse()?;
    wait_for("frontend to reach reviews v1 through the mesh", || {
        let (probe, uri) = (probe.clone(), front_uri.clone());
        async move {
            let Ok(req) = Request::get(uri).body(Empty::new()) else { return false };
            matches!(probe.request(req).await, Ok(r) if r.status().is_success())
        }
    })
    .await?;
    println!("control plane API  {api}");
    println!(
        "{}",
        wrap(
            "dashboard          ",
            &" ".repeat(19),
            &format!("{api}/ui/#/service/reviews  (pause, promote, abort with the API token {token})")
        )
    );
    println!("watch it yourself  outrider rollout status reviews -w --server {api}");
    println!("columns: seconds, the Rollout (phase, step, canary weight, the canary's and the stable's");
    println!("         requests, success rate and p99 from the load reports), then what the caller saw\n");

    let seen = Arc::new(Seen::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(drive(format!("http://{front}/"), rate.max(1), seen.clone(), stop_rx));
    let start = Instant::now();
    let mut outcomes = Vec::new();
    for (stable, canary) in [("v1", "v2"), ("v2", "v3")] {
        println!("  --  t={}s apply Rollout reviews: {stable} → {canary}", start.elapsed().as_secs());
        apply(api, token, rollout(stable, canary)).await?;
        outcomes.push(watch(api, &seen, start, canary).await?);
    }
    let _ = stop_tx.send(true);
    let _ = load.await;
    let hits: Vec<String> = versions
        .iter()
        .map(|r| {
            let (ok, failed) = (r.counts.ok.load(Ordering::Relaxed), r.counts.failed.load(Ordering::Relaxed));
            format!("{} {} ({} failed)", r.version, ok + failed, failed)
        })
        .collect();
    let ends: Vec<String> = outcomes.iter().map(|o| format!("{} {}", o.canary, o.phase)).collect();
    println!("\nsummary: {}", ends.join(", "));
    for o in outcomes.iter().filter(|o| !o.reason.is_empty()) {
        println!("{}", wrap(&format!("  {}: ", o.canary), "      ", &o.reason));
    }
    println!("{}", wrap("  requests per version: ", "    ", &hits.join(", ")));
    println!(
        "{}",
        wrap(
            "  ",
            "  ",
            "the rollouts were judged on the sidecars' own load reports (GET /v1/stats/reviews); \
             docs/rollouts.md has the fields, the state machine and the analysis."
        )
    );
    let hint = |command: &str, what: &str| println!("  {command:<44} # {what}");
    if keep_running {
        println!("\nthe mesh stays up (no more load) until Ctrl-C; meanwhile:");
        hint(&format!("outrider rollout status reviews --server {api}"), "the last release and its numbers");
        hint(&format!("outrider get --server {api}"), "the services, the policy, the Rollout");
        hint(&format!("curl -s {api}/v1/stats/reviews"), "the load reports, per subset");
        until_stopped().await;
        println!("stopping the mesh");
    } else {
        println!("\nlook further (these work after the demo has ended):");
        hint("outrider demo --rollout --keep-running", "the same, then the mesh stays up to look around");
        hint("outrider demo", "the resilience story: a breaking canary");
        hint("outrider validate -f examples/policy.yaml", "check a policy file offline");
    }
    for car in cars {
        car.shutdown().await;
    }
    Ok(())
}

/// Requests at `rate` per second until stopped.
async fn drive(uri: String, rate: u32, seen: Arc<Seen>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let caller: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else { continue };
        let (caller, uri, seen) = (caller.clone(), uri.clone(), seen.clone());
        tokio::spawn(async move {
            let ok = match Request::get(uri).body(Empty::new()) {
                Ok(req) => matches!(caller.request(req).await, Ok(r) if r.status().is_success()),
                Err(_) => false,
            };
            if ok { &seen.ok } else { &seen.failed }.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    let _ = in_flight.acquire_many(256).await;
}

/// A line per second until the rollout of `canary` is promoted or aborted (and its split
/// written); returns how it ended.
async fn watch(api: &str, seen: &Seen, start: Instant, canary: &'static str) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut told = 0usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let reply = client::send(api, Method::GET, "/v1/rollouts/reviews", None, None).await?;
        let status: Value = reply.json();
        if status["canary"]["labels"]["version"] != canary {
            // Not the new Rollout's state yet.
            continue;
        }
        // The rollout's events, as they happen.
        let history = status["history"].as_array().cloned().unwrap_or_default();
        for event in history.iter().skip(told) {
            let t = start.elapsed().as_secs();
            println!("{}", wrap(&format!("  --  t={t}s "), EVENT_INDENT, event["message"].as_str().unwrap_or("")));
        }
        told = told.max(history.len());
        let (ok, failed) = (seen.ok.swap(0, Ordering::Relaxed), seen.failed.swap(0, Ordering::Relaxed));
        let caller = match (100 * ok).checked_div(ok + failed) {
            Some(p) => format!("{p}%"),
            None => "-".to_owned(),
        };
        let t = start.elapsed().as_secs().max(1);
        let row = format!("{} | caller {caller} of {}", crate::cli::rollout::line(&status), ok + failed);
        println!("{}", wrap(&format!("{t:>3}s  "), "      ", &row));
        let done = status["splitWritten"] == true;
        match status["phase"].as_str() {
            Some(phase @ ("promoted" | "aborted")) if done => {
                let reason = status["reason"].as_str().unwrap_or("").to_owned();
                return Ok(Outcome { canary, phase: phase.to_owned(), reason });
            }
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "the rollout of {canary} did not finish within 60s: {status}");
    }
}
