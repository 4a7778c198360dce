//! `outrider demo` end to end: the real binary runs its whole scenario, and its JSON document
//! (`-o json`) tells the story in numbers: with the canary v2 broken, callers still succeed and
//! v2's breaker is open while v1 serves; the canary then moves to 50/50; the mesh does better
//! than the raw upstreams; the sidecars talked mutual TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outrider_tests::binary::run_to_exit_after;
use outrider_tests::client;
use outrider_tests::control_plane::outrider_bin;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tells_its_story_in_numbers() {
    let mut cmd = Command::new(outrider_bin());
    cmd.args(["demo", "--duration", "8s", "-o", "json"]);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("run outrider demo");
    let mut out_pipe = child.stdout.take().expect("stdout");
    let stdout_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut out_pipe, &mut buf).await.map(|_| buf)
    });
    // Read the live view as it comes; from the dashboard line on, watch the graph's API while
    // the demo runs.
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut stderr_lines = Vec::new();
    let mut watcher = None;
    let ran = tokio::time::timeout(Duration::from_secs(8) + outrider_tests::wait::deadline(), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if watcher.is_none()
                && let Some(url) = line.strip_prefix("dashboard ").and_then(|l| l.split_whitespace().next())
            {
                let api: std::net::SocketAddr =
                    url.trim_start_matches("http://").trim_end_matches("/ui/").parse().expect("an address");
                watcher = Some(tokio::spawn(watch_graph(api)));
            }
            stderr_lines.push(line);
        }
        child.wait().await
    })
    .await;
    let stderr = stderr_lines.join("\n");
    let status = ran.unwrap_or_else(|_| panic!("the demo did not end; it printed:\n{stderr}")).expect("wait");
    let stdout = stdout_task.await.expect("stdout read").expect("stdout");
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(status.success(), "exit {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    // On the dashboard's graph: the reviews box with its (v2's) breaker open while v1 serves.
    // (The edge's success rate counts the attempts v2 failed, so it is not the callers' success,
    // which the JSON below checks.)
    let seen = watcher.unwrap_or_else(|| panic!("no dashboard line:\n{stderr}")).await.expect("the watcher");
    assert!(
        seen.iter().any(|g| g.breaker == "open" && g.open_callers >= 1 && g.v1_requests > 0),
        "the graph never showed reviews' breaker open while v1 served; it showed:\n{seen:#?}\nthe demo printed:\n{stderr}"
    );
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    let ctx = format!("live view:\n{stderr}");
    // The screen fits a terminal of 100 columns and explains its columns once.
    for line in stderr.lines() {
        assert!(line.chars().count() <= 100, "a line over 100 columns: {line:?}\n{ctx}");
    }
    assert_eq!(stderr.matches("columns: ").count(), 1, "the columns are explained once\n{ctx}");
    // Off a terminal the demo ends, and its last hints need nothing that ended with it.
    let hints = &stderr[stderr.find("look further").unwrap_or_else(|| panic!("hints at the end\n{ctx}"))..];
    assert!(!hints.contains("127.0.0.1"), "hints that name the ended run's ports: {hints}");
    // While it runs, the dashboard's address.
    let dashboard =
        stderr.lines().find(|l| l.starts_with("dashboard ")).unwrap_or_else(|| panic!("a dashboard line\n{ctx}"));
    assert!(dashboard.contains("http://127.0.0.1:") && dashboard.contains("/ui/"), "{dashboard}");

    // v2 broken: callers keep succeeding, served by v1 through the fallback.
    let broken = &doc["phases"]["broken"];
    let caller = num(&broken["caller_success"], "the broken phase's caller success");
    assert!(caller >= 0.995, "caller success with v2 broken: {caller}\n{ctx}");
    assert!(num(&broken["requests"], "requests") >= 50.0, "load ran while v2 was broken\n{ctx}");
    // The live view shows v2's breaker open while v1's is closed and v1 serves.
    let seconds = doc["seconds"].as_array().expect("per-second rows");
    let open_while_v1_serves = seconds.iter().filter(|s| {
        s["phase"] == "broken"
            && s["breaker"]["v2"] == "open"
            && s["breaker"]["v1"] == "closed"
            && num(&s["v1_calls"], "v1 calls") > 0.0
    });
    assert!(open_while_v1_serves.count() >= 1, "no second with v2's breaker open while v1 serves\n{ctx}");
    assert!(num(&doc["summary"]["fallbacks"], "fallbacks") > 0.0, "v2's share went to v1\n{ctx}");
    // Before it broke, the canary took about 10% of the calls.
    let share = num(&doc["phases"]["steady"]["v2_share"], "v2's share before");
    assert!((0.02..0.25).contains(&share), "v2's share before the promotion: {share}\n{ctx}");

    // The canary moves to 50/50, as intended.
    assert_eq!(doc["canary"]["after"], serde_json::json!([50, 50]));
    let share = num(&doc["phases"]["shifted"]["v2_share"], "v2's share after");
    assert!((0.35..=0.65).contains(&share), "v2's share after the promotion: {share}\n{ctx}");

    // The mesh does better than the upstreams it calls.
    let summary = &doc["summary"];
    let (caller, upstream) = (num(&summary["caller_success"], "caller"), num(&summary["upstream_success"], "upstream"));
    assert!(caller > upstream, "caller success {caller} is not above raw upstream success {upstream}\n{ctx}");
    assert!(num(&summary["mtls_connections"], "mTLS connections") >= 1.0, "the sidecars talked mutual TLS\n{ctx}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_rollout_promotes_the_good_version_and_aborts_the_bad_one() {
    let mut cmd = Command::new(outrider_bin());
    cmd.arg("demo").arg("--rollout");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // The story takes its own time (one-second steps); this only guards against a hang.
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the rollout demo ended")
        .expect("the demo ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    // The screen fits a terminal of 100 columns, as the main story's does.
    for line in stdout.lines() {
        assert!(line.chars().count() <= 100, "a line over 100 columns: {line:?}\n{stdout}");
    }
    assert_eq!(stdout.matches("columns: ").count(), 1, "the columns are explained once\n{stdout}");
    let summary = stdout.lines().find(|l| l.starts_with("summary: ")).expect("a summary line");
    assert_eq!(summary, "summary: v2 promoted, v3 aborted", "{stdout}");
    for step in ["step 1: canary at 10%", "step 2: canary at 25%", "step 3: canary at 50%"] {
        assert!(stdout.contains(step), "v2 goes through {step}:\n{stdout}");
    }
    assert!(stdout.contains("reviews promoted weight 100%"), "the live view shows the promotion:\n{stdout}");
    assert!(stdout.contains("reviews aborted weight 0%"), "the live view shows the abort:\n{stdout}");
    let v3 = stdout.split("apply Rollout reviews: v2 → v3").nth(1).expect("the v3 rollout");
    assert!(!v3.contains("step 2:"), "v3 was aborted on its first step:\n{v3}");
    assert!(stdout.contains("outrider rollout status reviews -w"), "it says how to watch:\n{stdout}");
    assert!(stdout.contains("/ui/#/service/reviews"), "it gives the dashboard's page of the rollout:\n{stdout}");
    // Off a terminal the demo ends, and its last hints need nothing that ended with it.
    let hints = &stdout[stdout.find("look further").expect("hints at the end")..];
    assert!(!hints.contains("127.0.0.1"), "hints that name the ended run's ports: {hints}");
}

/// `--keep-running`: after the run the mesh stays up until Ctrl-C, and the commands the demo
/// prints work meanwhile (here: `outrider status` against its control plane, a sidecar's
/// `/clusters`); SIGINT then ends it with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_running_holds_the_mesh_until_ctrl_c() {
    let mut cmd = Command::new(outrider_bin());
    cmd.args(["demo", "--duration", "4s", "--keep-running"]);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().expect("run outrider demo");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let (mut status, mut clusters) = (None, None);
    run_to_line(&mut lines, &mut seen, Duration::from_secs(4), |line| line.contains("until Ctrl-C")).await;
    // The hints under it, up to the last one.
    while status.is_none() || clusters.is_none() {
        let line = run_to_line(&mut lines, &mut seen, Duration::ZERO, |l| {
            l.trim_start().starts_with("outrider status")
                || l.trim_start().starts_with("curl -s http://") && l.contains("/clusters")
        })
        .await;
        let command = line.trim().split(" # ").next().unwrap_or_default().trim().to_owned();
        if command.starts_with("outrider status") {
            status = Some(command);
        } else {
            clusters = Some(command);
        }
    }
    let status = status.unwrap();
    let server = status.split_whitespace().last().unwrap().to_owned();
    let out = run_to_exit_after(
        {
            let mut c = Command::new(outrider_bin());
            c.args(["status", "--server", &server]);
            c
        },
        Duration::ZERO,
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status}: {:?}\n{text}", out.status);
    assert!(text.contains("frontend"), "{status} lists the demo's proxies:\n{text}");
    // The dashboard it names serves meanwhile.
    let ui = format!("{server}/ui/");
    assert!(seen.iter().any(|l| l.trim_start().starts_with(&ui)), "a hint names {ui}:\n{}", seen.join("\n"));
    let api: std::net::SocketAddr = server.trim_start_matches("http://").parse().expect("an address");
    let page = client::send(&client::http1(api), client::get(&ui)).await;
    page.assert_status(200);
    assert!(page.text().contains("<html"), "{ui}: {}", page.text());
    let url = clusters.unwrap().split_whitespace().last().unwrap().to_owned();
    let admin: std::net::SocketAddr =
        url.trim_start_matches("http://").split('/').next().unwrap().parse().expect("an address");
    let reply = client::send(&client::http1(admin), client::get(&url)).await;
    reply.assert_status(200);
    assert!(reply.text().contains("reviews"), "{url}: {}", reply.text());

    // Ctrl-C ends it.
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill").args(["-INT", &pid]).status().expect("run kill");
    assert!(sent.success(), "kill -INT {pid}");
    let exit = outrider_tests::wait::within("the demo to stop on SIGINT", child.wait()).await.unwrap();
    assert!(exit.success(), "exit {exit:?}");
    let rest = run_to_line(&mut lines, &mut seen, Duration::ZERO, |l| l.contains("stopping the mesh")).await;
    assert!(rest.contains("stopping"));
}

/// What the dashboard's API showed of reviews at one moment.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug in the failure message
struct GraphMoment {
    /// The reviews box's breaker (`GET /v1/mesh`).
    breaker: String,
    open_callers: u64,
    /// The frontend → reviews edge's success rate over the last minute, percent (for the
    /// failure message).
    edge_success: f64,
    /// Requests v1 served in the current 10-second window (`GET /v1/stats/reviews`).
    v1_requests: u64,
}

/// Read the graph's data (what the dashboard's Mesh page reads) every 100 ms until the control
/// plane goes away with the demo; every answer that names reviews is kept.
async fn watch_graph(api: std::net::SocketAddr) -> Vec<GraphMoment> {
    let http = client::cp_api(api);
    let mut seen = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut failures = 0;
    while failures < 20 {
        tick.tick().await;
        let (Some(mesh), Some(stats)) = (
            get_json(&http, "http://cp/v1/mesh?window=1m").await,
            get_json(&http, "http://cp/v1/stats/reviews?window=10s").await,
        ) else {
            failures += 1;
            continue;
        };
        failures = 0;
        let Some(node) = mesh["services"].as_array().and_then(|s| s.iter().find(|n| n["service"] == "reviews")) else {
            continue;
        };
        let edge = mesh["edges"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["source"] == "frontend" && e["destination"] == "reviews"));
        let v1_requests = stats["endpoints"]
            .as_array()
            .map(|eps| {
                eps.iter().filter(|e| e["labels"]["version"] == "v1").filter_map(|e| e["requests"].as_u64()).sum()
            })
            .unwrap_or(0);
        seen.push(GraphMoment {
            breaker: node["resilience"]["breaker"]["state"].as_str().unwrap_or_default().to_owned(),
            open_callers: node["resilience"]["breaker"]["open"].as_u64().unwrap_or(0),
            edge_success: edge.and_then(|e| e["successRate"].as_f64()).unwrap_or(0.0),
            v1_requests,
        });
    }
    seen
}

/// `GET uri` as JSON; `None` when the control plane does not answer (the demo has ended).
async fn get_json(http: &client::Client, uri: &str) -> Option<Value> {
    use http_body_util::BodyExt;
    let resp = tokio::time::timeout(Duration::from_secs(2), http.request(client::get(uri))).await.ok()?.ok()?;
    let body = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect()).await.ok()?.ok()?;
    serde_json::from_slice(&body.to_bytes()).ok()
}

/// Read stdout lines until one matches (within the demo's own `runs_for` plus the test
/// deadline); panics with what was seen.
async fn run_to_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut Vec<String>,
    runs_for: Duration,
    matches: impl Fn(&str) -> bool,
) -> String {
    let limit = runs_for + outrider_tests::wait::deadline();
    let found = tokio::time::timeout(limit, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if matches(&line) {
                return Some(line);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        _ => panic!("no such line within {limit:?}; the demo printed:\n{}", seen.join("\n")),
    }
}
