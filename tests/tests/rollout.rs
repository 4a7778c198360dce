//! Rollouts end to end: a control plane, a real proxy sending load to real upstreams (v1
//! stable, v2 canary), load reports over LRS, and the rollout judged on them with one-second
//! steps. Every wait is on the rollout's state (its API) or on what the clients saw.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outrider_proxy::source::xds::Protocol;
use outrider_tests::control_plane::{ControlPlane, MeshProxy};
use outrider_tests::harness::TempDir;
use outrider_tests::load::{Load, Plan};
use outrider_tests::upstream::{self, Switch, Upstream};
use outrider_tests::{eventually, wait};
use serde_json::Value;

const URI: &str = "http://reviews:8080/";

struct Mesh {
    cp: ControlPlane,
    proxy: MeshProxy,
    v1: Upstream,
    v2: Upstream,
    _dir: TempDir,
}

/// A control plane serving `reviews` (v1 and v2 static endpoints, all traffic on v1), and a
/// proxy that has its config.
async fn mesh(v2: Upstream) -> Mesh {
    let dir = TempDir::new("outrider-rollout");
    let cp = ControlPlane::start(dir.path());
    let v1 = upstream::http1().name("v1").start().await;
    let yaml = format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: reviews}}\nspec:\n  port: 8080\n  endpoints:\n    \
         - {{address: \"{}\", labels: {{version: v1}}}}\n    - {{address: \"{}\", labels: {{version: v2}}}}\n---\n\
         apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: reviews}}\nspec:\n  service: reviews\n  \
         routes: [{{name: main, split: [{{subset: {{version: v1}}, weight: 100}}]}}]\n",
        v1.endpoint(),
        v2.endpoint()
    );
    let version = cp.apply(&yaml).await;
    let proxy = MeshProxy::start(&cp.xds_url(), "client-1", "client", Protocol::Delta).await;
    proxy.wait_ready().await;
    cp.wait_converged(&version, 1).await;
    Mesh { cp, proxy, v1, v2, _dir: dir }
}

fn rollout(strategy: &str, analysis: &str, extra: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: Rollout\nmetadata: {{name: reviews}}\nspec:\n  service: reviews\n  \
         stable: {{version: v1}}\n  canary: {{version: v2}}\n  strategy: {strategy}\n  interval: 1s\n  \
         analysis: {analysis}\n{extra}"
    )
}

fn events(status: &Value) -> Vec<(String, u64, u64)> {
    status["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or("").to_owned(),
                e["step"].as_u64().unwrap_or(0),
                e["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn done(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |s| s["phase"] == phase && s["splitWritten"] == true
}

/// The policy store's revision (one more per write).
async fn revision(cp: &ControlPlane) -> u64 {
    cp.call("GET", "/v1/policies", "", false, None).await.json["revision"].as_u64().unwrap()
}

/// The store's revision once the rollout's state satisfies `at`, read while the state stays
/// the same (same generation before and after), so that it is the revision of that state.
async fn revision_at(cp: &ControlPlane, what: &str, at: impl Fn(&Value) -> bool) -> (Value, u64) {
    loop {
        let status = cp.wait_rollout("reviews", what, &at).await;
        let revision = revision(cp).await;
        if cp.rollout("reviews").await["generation"] == status["generation"] {
            return (status, revision);
        }
    }
}

/// The weights of the first route's split of the service's TrafficPolicy, as stored.
async fn split(cp: &ControlPlane) -> Vec<u64> {
    let tp = cp.call("GET", "/v1/policies/TrafficPolicy/reviews", "", false, None).await;
    let routes = tp.json["document"]["spec"]["routes"].as_array().cloned().unwrap_or_default();
    let main = routes.iter().find(|r| r["name"] != "rollout-preview").cloned().unwrap_or(Value::Null);
    main["split"].as_array().into_iter().flatten().map(|e| e["weight"].as_u64().unwrap()).collect()
}

/// Once the proxy has `status`'s split: every request sent from then on goes to `upstream`,
/// and the other one gets no request at all.
async fn only_to(m: &Mesh, load: &Load, status: &Value, upstream: &str) {
    m.cp.wait_applied(status["configVersion"].as_str().unwrap(), 1).await;
    let mark = tokio::time::Instant::now();
    load.finished_before(mark).await;
    let other = if upstream == "v1" { &m.v2 } else { &m.v1 };
    let other_before = other.request_count();
    let after = load.sent_after(mark, 200).await;
    assert!(after.iter().all(|s| s.upstream == upstream), "{after:?}");
    assert_eq!(other.request_count(), other_before, "the other version got traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_is_promoted_through_every_step() {
    let m = mesh(upstream::http1().name("v2").start().await).await;
    let load = Load::start(m.proxy.client.clone(), Plan::new(200, URI));
    m.cp.apply(&rollout("{canary: {steps: [20, 50]}}", "{minRequests: 20}", "")).await;
    let status = m.cp.wait_rollout("reviews", "the promotion", done("promoted")).await;
    let applied = status["configVersion"].as_str().unwrap().to_owned();
    let steps: Vec<(String, u64, u64)> = events(&status).into_iter().filter(|e| e.0 != "check-passed").collect();
    assert_eq!(
        steps,
        [("started".into(), 0, 0), ("step".into(), 1, 20), ("step".into(), 2, 50), ("promoted".into(), 3, 100)],
        "{status:#}"
    );
    assert_eq!(status["failedChecks"], 0);
    // Promoted: every request goes to v2 once the proxy has the new split.
    m.cp.wait_applied(&applied, 1).await;
    let after = load.sent_after(tokio::time::Instant::now(), 100).await;
    assert!(after.iter().all(|s| s.upstream == "v2" && s.status == 200), "{after:?}");
    assert!(m.v1.request_count() > 0 && m.v2.request_count() > 0);
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_ten_percent_is_aborted_at_its_first_step_and_gets_no_more_traffic() {
    let flaky = Switch::new();
    flaky.fail_rate(0.1);
    let notify = upstream::http1().name("notify").start().await;
    let m = mesh(upstream::http1().name("v2").switch(&flaky).start().await).await;
    let load = Load::start(m.proxy.client.clone(), Plan::new(200, URI));
    let hooks = format!("  webhooks:\n    notify: {{url: \"http://{}/events\"}}\n", notify.addr);
    m.cp.apply(&rollout(
        "{canary: {steps: [50, 80]}}",
        "{minRequests: 100, minSuccessRate: 99, abortAfterFailures: 1}",
        &hooks,
    ))
    .await;
    let (_, at_step) = revision_at(&m.cp, "the first step", |s| s["step"] == 1 && s["splitWritten"] == true).await;
    let status = m.cp.wait_rollout("reviews", "the abort", done("aborted")).await;
    // Aborted by the first check of the first step, which lasts one interval: straight from
    // weight 50 to 0.
    let seen: Vec<(String, u64, u64)> = events(&status);
    assert_eq!(
        seen,
        [("started".into(), 0, 0), ("step".into(), 1, 50), ("check-failed".into(), 1, 50), ("aborted".into(), 0, 0)],
        "{status:#}"
    );
    assert!(status["reason"].as_str().unwrap().contains("success rate"), "{status:#}");
    // In one write of the policies (so one push to the proxies), the canary's weight is 0.
    assert_eq!(revision(&m.cp).await, at_step + 1, "the abort took more than one write");
    assert_eq!(split(&m.cp).await, [100, 0]);
    // Once the proxy has the abort's split, v2 gets nothing more.
    only_to(&m, &load, &status, "v1").await;
    // The notifications reached a real HTTP server, the abort with its reason.
    eventually!(
        "the abort to be notified",
        notify.requests().iter().any(|r| String::from_utf8_lossy(&r.body).contains("\"event\":\"aborted\""))
    );
    let told: Vec<Value> = notify.requests().iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
    let kinds: Vec<&str> = told.iter().map(|t| t["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["started", "step", "aborted"]);
    let abort = &told[2];
    assert_eq!((abort["phase"].as_str(), abort["weight"].as_u64()), (Some("aborted"), Some(0)), "{abort:#}");
    assert!(abort["reason"].as_str().unwrap().contains("success rate"), "{abort:#}");
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_canary_is_aborted_on_its_p99() {
    let m = mesh(upstream::http1().name("v2").delay(Duration::from_millis(150)).start().await).await;
    let load = Load::start(m.proxy.client.clone(), Plan::new(200, URI));
    m.cp.apply(&rollout(
        "{linear: {stepWeight: 25}}",
        "{minRequests: 20, maxP99Latency: 50ms, abortAfterFailures: 1}",
        "",
    ))
    .await;
    let status = m.cp.wait_rollout("reviews", "the abort", done("aborted")).await;
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.contains("p99 latency") && reason.contains("> 50ms"), "{reason}");
    assert!(!reason.contains("success rate"), "{reason}");
    assert!(!events(&status).iter().any(|e| e.0 == "step" && e.1 > 1), "{status:#}");
    only_to(&m, &load, &status, "v1").await;
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_switches_only_after_the_header_routed_checks_pass() {
    let m = mesh(upstream::http1().name("v2").start().await).await;
    let load = Load::start(m.proxy.client.clone(), Plan::new(100, URI));
    m.cp.apply(&rollout("{blueGreen: {}}", "{minRequests: 50}", "")).await;
    let preview =
        m.cp.wait_rollout("reviews", "the preview", |s| s["preview"] == true && s["splitWritten"] == true).await;
    m.cp.wait_applied(preview["configVersion"].as_str().unwrap(), 1).await;
    // In preview: requests without the header stay on v1, requests with it reach v2.
    assert!(load.sent_after(tokio::time::Instant::now(), 100).await.iter().all(|s| s.upstream == "v1"));
    for _ in 0..10 {
        let req = http::Request::get(URI)
            .header("x-outrider-preview", "true")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let reply = outrider_tests::client::send(&m.proxy.client, req).await;
        assert_eq!(reply.upstream(), Some("v2"));
    }
    let waiting = m.cp.rollout("reviews").await;
    assert_eq!((waiting["phase"].as_str(), waiting["preview"].as_bool()), (Some("progressing"), Some(true)));
    assert!(m.v2.requests().iter().all(|r| r.header("x-outrider-preview") == Some("true")));
    // Header traffic lets the checks pass; then all traffic moves at once.
    let header_load = Load::start(m.proxy.client.clone(), Plan::new(50, URI).header("x-outrider-preview", "true"));
    let status = m.cp.wait_rollout("reviews", "the switch", done("promoted")).await;
    let kinds: Vec<String> = events(&status).into_iter().map(|e| e.0).collect();
    assert_eq!(kinds, ["started", "step", "check-passed", "promoted"], "{status:#}");
    header_load.stop().await;
    only_to(&m, &load, &status, "v2").await;
    // The old version is kept (weight 0, its endpoint still in the service): rolling back is
    // one write, and traffic is back on v1 as soon as the proxy has it.
    assert_eq!(split(&m.cp).await, [0, 100]);
    assert_eq!(status["stable"]["endpoints"], 1, "{status:#}");
    let before = revision(&m.cp).await;
    let rolled_back = m.cp.rollout_command("reviews", "abort").await;
    assert_eq!(rolled_back.json["reason"], "rolled back by an operator", "{}", rolled_back.json);
    let status = m.cp.wait_rollout("reviews", "the rollback's split", done("aborted")).await;
    assert_eq!(revision(&m.cp).await, before + 1, "the rollback took more than one write");
    assert_eq!(split(&m.cp).await, [100, 0]);
    only_to(&m, &load, &status, "v1").await;
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blue_green_preview_that_fails_its_checks_never_gets_the_traffic() {
    let flaky = Switch::new();
    flaky.fail_rate(0.2);
    let m = mesh(upstream::http1().name("v2").switch(&flaky).start().await).await;
    let load = Load::start(m.proxy.client.clone(), Plan::new(100, URI));
    m.cp.apply(&rollout("{blueGreen: {}}", "{minRequests: 50, abortAfterFailures: 1}", "")).await;
    m.cp.wait_rollout("reviews", "the preview", |s| s["preview"] == true && s["splitWritten"] == true).await;
    let header_load = Load::start(m.proxy.client.clone(), Plan::new(100, URI).header("x-outrider-preview", "true"));
    let status = m.cp.wait_rollout("reviews", "the abort", done("aborted")).await;
    let kinds: Vec<String> = events(&status).into_iter().map(|e| e.0).collect();
    assert_eq!(kinds, ["started", "step", "check-failed", "aborted"], "{status:#}");
    assert!(status["reason"].as_str().unwrap().contains("success rate"), "{status:#}");
    // The preview route is gone; requests without the header never reached v2.
    let tp = m.cp.call("GET", "/v1/policies/TrafficPolicy/reviews", "", false, None).await;
    let routes = tp.json["document"]["spec"]["routes"].as_array().unwrap().clone();
    assert!(routes.iter().all(|r| r["name"] != "rollout-preview"), "{routes:?}");
    assert_eq!(split(&m.cp).await, [100, 0]);
    assert!(load.samples().iter().all(|s| s.upstream == "v1"), "a request without the header reached v2");
    assert!(m.v2.requests().iter().all(|r| r.header("x-outrider-preview") == Some("true")));
    m.cp.wait_applied(status["configVersion"].as_str().unwrap(), 1).await;
    let mark = tokio::time::Instant::now();
    header_load.finished_before(mark).await;
    let v2_before = m.v2.request_count();
    let after = header_load.sent_after(mark, 100).await;
    assert!(after.iter().all(|s| s.upstream == "v1"), "the header still reaches the aborted version: {after:?}");
    assert_eq!(m.v2.request_count(), v2_before);
    header_load.stop().await;
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_linear_rollout_adds_its_step_weight_each_interval_until_promoted() {
    let m = mesh(upstream::http1().name("v2").start().await).await;
    let load = Load::start(m.proxy.client.clone(), Plan::new(200, URI));
    m.cp.apply(&rollout("{linear: {stepWeight: 30}}", "{minRequests: 20}", "")).await;
    let status = m.cp.wait_rollout("reviews", "the promotion", done("promoted")).await;
    assert_eq!(status["strategy"], "linear");
    assert_eq!(status["steps"], serde_json::json!([30, 60, 90]));
    let steps: Vec<(String, u64, u64)> = events(&status).into_iter().filter(|e| e.0 != "check-passed").collect();
    assert_eq!(
        steps,
        [
            ("started".into(), 0, 0),
            ("step".into(), 1, 30),
            ("step".into(), 2, 60),
            ("step".into(), 3, 90),
            ("promoted".into(), 4, 100)
        ],
        "{status:#}"
    );
    assert_eq!(events(&status).iter().filter(|e| e.0 == "check-passed").count(), 3, "each step judged: {status:#}");
    only_to(&m, &load, &status, "v2").await;
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_restart_mid_step_resumes_the_rollout_where_it_was() {
    let mut m = mesh(upstream::http1().name("v2").start().await).await;
    let load = Load::start(m.proxy.client.clone(), Plan::new(200, URI));
    m.cp.apply(&rollout("{canary: {steps: [10, 20, 40, 60, 80]}}", "{minRequests: 20}", "")).await;
    let before = m.cp.wait_rollout("reviews", "the second step", |s| s["step"] == 2 && s["splitWritten"] == true).await;
    m.cp.restart();
    let after = m.cp.wait_rollout("reviews", "the restarted control plane to answer", |s| s["phase"].is_string()).await;
    assert!(after["step"].as_u64() >= before["step"].as_u64(), "went back: {after:#}");
    let history = |s: &Value| s["history"].as_array().cloned().unwrap_or_default();
    let (old, new) = (history(&before), history(&after));
    assert_eq!(new[..old.len()], old[..], "the history before the restart is kept");
    let status = m.cp.wait_rollout("reviews", "the promotion after the restart", done("promoted")).await;
    let started = events(&status).iter().filter(|e| e.0 == "started").count();
    assert_eq!(started, 1, "the rollout did not start over: {status:#}");
    let steps: Vec<u64> = events(&status).iter().filter(|e| e.0 == "step").map(|e| e.2).collect();
    assert_eq!(steps, [10, 20, 40, 60, 80], "{status:#}");
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_that_never_sees_enough_requests_waits_instead_of_passing() {
    let m = mesh(upstream::http1().name("v2").start().await).await;
    let load = Load::start(m.proxy.client.clone(), Plan::new(100, URI));
    m.cp.apply(&rollout("{canary: {steps: [50, 80]}}", "{minRequests: 1000000}", "")).await;
    // Several intervals' worth of canary requests, still short of the minimum: the step waits.
    let status =
        m.cp.wait_rollout("reviews", "a check waiting with 150 canary requests", |s| {
            s["canary"]["requests"].as_u64().unwrap_or(0) >= 150
                && s["message"].as_str().unwrap_or("").contains("waiting for requests")
        })
        .await;
    assert_eq!((status["phase"].as_str(), status["step"].as_u64()), (Some("progressing"), Some(1)), "{status:#}");
    assert_eq!(status["failedChecks"], 0);
    assert!(!events(&status).iter().any(|e| e.0.starts_with("check")), "a check was judged: {status:#}");
    assert!(status["message"].as_str().unwrap().contains("of 1000000 needed"), "{status:#}");
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gate_holds_each_step_until_it_answers_200_and_every_step_is_notified() {
    let gate_switch = Switch::new();
    gate_switch.set_status(503);
    let gate = upstream::http1().name("gate").switch(&gate_switch).start().await;
    let notify = upstream::http1().name("notify").start().await;
    let m = mesh(upstream::http1().name("v2").start().await).await;
    let load = Load::start(m.proxy.client.clone(), Plan::new(200, URI));
    let hooks = format!(
        "  webhooks:\n    gate: {{url: \"http://{}/gate\"}}\n    notify: {{url: \"http://{}/events\"}}\n",
        gate.addr, notify.addr
    );
    m.cp.apply(&rollout("{canary: {steps: [50]}}", "{minRequests: 20}", &hooks)).await;
    // Closed: asked again every interval; the first step is not entered.
    eventually!("the gate to be asked twice", gate.request_count() >= 2);
    let held = m.cp.rollout("reviews").await;
    assert_eq!(held["step"], 0, "{held:#}");
    assert!(held["message"].as_str().unwrap().contains("the gate answered 503"), "{held:#}");
    assert_eq!(m.v2.request_count(), 0, "the canary got traffic past a closed gate");
    let asked: Value = serde_json::from_slice(&gate.last().body).unwrap();
    assert_eq!(
        (asked["rollout"].as_str(), asked["step"].as_u64(), asked["weight"].as_u64()),
        (Some("reviews"), Some(1), Some(50))
    );
    assert_eq!(gate.last().method, http::Method::POST);
    // Open: the step, then (asked again) the promotion.
    gate_switch.set_status(0);
    m.cp.wait_rollout("reviews", "the promotion", done("promoted")).await;
    let promotion: Value = serde_json::from_slice(&gate.last().body).unwrap();
    assert_eq!(promotion["promotion"], true);
    eventually!(
        "the promotion to be notified",
        notify.requests().iter().any(|r| String::from_utf8_lossy(&r.body).contains("\"event\":\"promoted\""))
    );
    let told: Vec<String> = notify
        .requests()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(told, ["started", "step", "promoted"]);
    let step: Value = serde_json::from_slice(&notify.requests()[1].body).unwrap();
    assert_eq!(
        (step["step"].as_u64(), step["weight"].as_u64(), step["service"].as_str()),
        (Some(1), Some(50), Some("reviews"))
    );
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_edit_of_the_split_is_refused_while_progressing_and_accepted_when_paused() {
    let m = mesh(upstream::http1().name("v2").start().await).await;
    m.cp.apply(&rollout("{canary: {steps: [30, 60]}}", "{minRequests: 1000000}", "")).await;
    m.cp.wait_rollout("reviews", "the first step", |s| s["step"] == 1 && s["splitWritten"] == true).await;
    let manual = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: reviews}\nspec:\n  service: reviews\n  \
                  routes: [{name: main, split: [{subset: {version: v1}, weight: 50}, {subset: {version: v2}, weight: 50}]}]\n";
    let refused = m.cp.call("PUT", "/v1/policies", manual, true, None).await;
    assert_eq!(refused.status, 409, "{}", refused.json);
    let why = refused.json["error"].as_str().unwrap();
    assert!(why.contains("run by Rollout reviews") && why.contains("outrider rollout pause reviews"), "{why}");
    assert_eq!(m.cp.call("DELETE", "/v1/policies/TrafficPolicy/reviews", "", true, None).await.status, 409);
    let paused = m.cp.rollout_command("reviews", "pause").await;
    assert_eq!((paused.status.as_u16(), paused.json["phase"].as_str()), (200, Some("paused")));
    assert_eq!(m.cp.call("PUT", "/v1/policies", manual, true, None).await.status, 200);
    assert_eq!(m.cp.rollout_command("reviews", "pause").await.status, 409, "pausing a paused rollout");
    assert_eq!(m.cp.rollout_command("reviews", "fly").await.status, 400);
    assert_eq!(m.cp.rollout_command("nope", "pause").await.status, 404);
    let unauthorized = m.cp.call("POST", "/v1/rollouts/reviews/abort", "", false, None).await;
    assert_eq!(unauthorized.status, 401);
    let aborted = m.cp.rollout_command("reviews", "abort").await;
    assert_eq!(aborted.json["reason"], "aborted by an operator");
    m.cp.wait_rollout("reviews", "the abort's split", done("aborted")).await;
    let tp = m.cp.call("GET", "/v1/policies/TrafficPolicy/reviews", "", false, None).await;
    let split = &tp.json["document"]["spec"]["routes"][0]["split"];
    assert_eq!((split[0]["weight"].as_u64(), split[1]["weight"].as_u64()), (Some(100), Some(0)), "{split}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_watches_a_rollout_to_its_end_and_its_commands_say_what_they_did() {
    use outrider_tests::control_plane::{TOKEN, outrider_bin};
    let m = mesh(upstream::http1().name("v2").start().await).await;
    let load = Load::start(m.proxy.client.clone(), Plan::new(200, URI));
    // Steps of 3 s: the watch polls every second, so each step is on screen at least once (with
    // 1 s steps a step could begin and end between two polls and never be printed).
    let spec = rollout("{canary: {steps: [20, 50]}}", "{minRequests: 20}", "").replace("interval: 1s", "interval: 3s");
    m.cp.apply(&spec).await;
    let server = format!("http://{}", m.cp.api);
    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(outrider_bin());
        cmd.arg("rollout").args(args).args(["--server", &server, "--token", TOKEN]);
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        cmd
    };
    // Off a terminal, -w prints a line per change and exits 0 once promoted.
    let out = wait::within("the watch to end", cli(&["status", "reviews", "-w"]).output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains('\x1b'), "no terminal codes in a pipe:\n{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(last.contains("reviews promoted weight 100%"), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("progressing step 2/2 weight 50%")), "{stdout}");
    // The table view once, and a command's answer.
    let out = cli(&["status", "reviews"]).output().await.unwrap();
    let view = String::from_utf8_lossy(&out.stdout);
    assert!(view.contains("Status    ✔ promoted") && view.contains("canary version=v2"), "{view}");
    let out = cli(&["abort", "reviews"]).output().await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("reviews aborted weight 0%"));
    let out = cli(&["abort", "reviews"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "aborting an aborted rollout is a conflict");
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["status", "nope"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown rollout");
    let json = cli(&["status", "reviews", "-o", "json"]).output().await.unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["phase"], "aborted");
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_starts_pauses_resumes_and_promotes_a_rollout() {
    use outrider_tests::control_plane::{TOKEN, outrider_bin};
    let m = mesh(upstream::http1().name("v2").start().await).await;
    // No traffic and a check that needs a million requests: nothing moves but the commands.
    m.cp.apply(&rollout("{canary: {steps: [30, 60]}}", "{minRequests: 1000000}", "")).await;
    m.cp.wait_rollout("reviews", "the first step", |s| s["step"] == 1 && s["splitWritten"] == true).await;
    assert_eq!(m.cp.rollout_command("reviews", "abort").await.status, 200);
    m.cp.wait_rollout("reviews", "the abort's split", done("aborted")).await;
    assert_eq!(split(&m.cp).await, [100, 0]);

    let server = format!("http://{}", m.cp.api);
    // `outrider rollout VERB reviews`: its exit code and its one line.
    let cli = |verb: &'static str| {
        let server = server.clone();
        async move {
            let out = tokio::process::Command::new(outrider_bin())
                .args(["rollout", verb, "reviews", "--server", &server, "--token", TOKEN])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
    };
    let progressing_at_step_1 = |s: &Value| s["phase"] == "progressing" && s["step"] == 1 && s["splitWritten"] == true;

    // start: an aborted rollout over from its first step.
    let (code, line) = cli("start").await;
    assert_eq!(code, Some(0), "{line}");
    assert!(line.starts_with("reviews progressing"), "{line}");
    m.cp.wait_rollout("reviews", "the first step again", progressing_at_step_1).await;
    assert_eq!(split(&m.cp).await, [70, 30]);

    // pause: stays at its step.
    let (code, line) = cli("pause").await;
    assert_eq!(code, Some(0), "{line}");
    assert!(line.starts_with("reviews paused step 1/2 weight 30%"), "{line}");
    let paused = m.cp.rollout("reviews").await;
    assert_eq!((paused["phase"].as_str(), paused["step"].as_u64()), (Some("paused"), Some(1)), "{paused:#}");

    // resume: the same step, its split set again.
    let (code, line) = cli("resume").await;
    assert_eq!(code, Some(0), "{line}");
    assert!(line.starts_with("reviews progressing step 1/2 weight 30%"), "{line}");
    m.cp.wait_rollout("reviews", "the step's split again", progressing_at_step_1).await;
    assert_eq!(split(&m.cp).await, [70, 30]);

    // promote: the remaining step skipped, all traffic on the canary.
    let (code, line) = cli("promote").await;
    assert_eq!(code, Some(0), "{line}");
    assert!(line.starts_with("reviews promoted weight 100%"), "{line}");
    let promoted = m.cp.wait_rollout("reviews", "the promotion's split", done("promoted")).await;
    assert_eq!(split(&m.cp).await, [0, 100]);
    let history: Vec<String> = events(&promoted).into_iter().map(|(e, _, _)| e).collect();
    let after_start = &history[history.iter().rposition(|e| e == "started").unwrap()..];
    assert_eq!(after_start, ["started", "step", "paused", "resumed", "promoted"], "{history:?}");

    // A command its phase does not allow: exit 1, the API's 409.
    let (code, line) = cli("resume").await;
    assert_eq!(code, Some(1), "resuming a promoted rollout: {line}");
    assert_eq!(m.cp.rollout("reviews").await["phase"], "promoted");
}
