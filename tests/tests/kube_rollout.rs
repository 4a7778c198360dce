//! Rollouts in Kubernetes mode, on the real API server of tests/src/kube.rs: `Rollout` objects
//! run by the leader replica, the split written to the TrafficPolicy object step by step, the
//! state in the Rollout's status (what `kubectl get rollouts` shows), a new leader continuing
//! from that status, commands through the API and by editing the object, and an invalid
//! object reported in its status. Traffic goes through real `outrider-proxy` sidecars to
//! upstreams in a network namespace (PodNetwork: needs root), and the rollout is judged on the
//! proxies' own load reports. Skips when the test bed's binaries (or root) are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use outrider_tests::client::{self, Client};
use outrider_tests::kube::{ApiServer, SA_ISSUER};
use outrider_tests::kube_mesh::{self, PodNetwork, Replica, SYSTEM, accepted_condition, apply};
use outrider_tests::load::{Load, Plan};
use outrider_tests::upstream::{self, Switch};
use outrider_tests::wait;
use serde_json::{Value, json};

const POLICIES: &str = "/apis/outrider.io/v1/namespaces/shop/trafficpolicies";
const ROLLOUTS: &str = "/apis/outrider.io/v1/namespaces/shop/rollouts";
const ROLLOUT: &str = "/apis/outrider.io/v1/namespaces/shop/rollouts/reviews";
const POLICY: &str = "/apis/outrider.io/v1/namespaces/shop/trafficpolicies/reviews";
const URI: &str = "http://reviews.shop/";
const LEASE: Duration = Duration::from_secs(2);

/// The cluster: the system and `shop` namespaces, the CRDs, Service `reviews` with one ready
/// endpoint per `(pod, address, version)`, and its TrafficPolicy: route `main`, all traffic on
/// v1, and a timeout (a field the rollout does not own).
async fn cluster(api: &ApiServer, pods: &[(&str, SocketAddr, &str)]) {
    kube_mesh::reviews_cluster(api, pods).await;
    apply(
        api,
        POLICIES,
        &json!({"apiVersion": "outrider.io/v1", "kind": "TrafficPolicy", "metadata": {"name": "reviews"},
            "spec": {"service": "reviews", "timeout": "3s",
                "routes": [{"name": "main", "split": [{"subset": {"version": "v1"}, "weight": 100}]}]}}),
    )
    .await;
}

/// A Rollout of `reviews` from v1 to v2, one-second steps.
fn rollout(strategy: Value, analysis: Value) -> Value {
    json!({"apiVersion": "outrider.io/v1", "kind": "Rollout", "metadata": {"name": "reviews"},
        "spec": {"service": "reviews", "stable": {"version": "v1"}, "canary": {"version": "v2"},
            "strategy": strategy, "interval": "1s", "analysis": analysis, "routes": ["main"]}})
}

/// The weights of route `main` of the TrafficPolicy object.
async fn weights(api: &ApiServer) -> Vec<u64> {
    let tp = api.get(POLICY).await;
    let routes = tp["spec"]["routes"].as_array().cloned().unwrap_or_default();
    let main = routes.iter().find(|r| r["name"] == "main").cloned().unwrap_or(Value::Null);
    main["split"].as_array().into_iter().flatten().map(|e| e["weight"].as_u64().unwrap()).collect()
}

/// The Rollout's status.
async fn status(api: &ApiServer) -> Value {
    api.get(ROLLOUT).await["status"].clone()
}

/// The status once `done` holds of it.
async fn status_until(api: &ApiServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let limit = wait::deadline();
    let end = tokio::time::Instant::now() + limit;
    loop {
        let status = status(api).await;
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {limit:?} waiting until {what}; status:\n{status:#}"
        );
        tokio::time::sleep(wait::POLL_INTERVAL).await;
    }
}

fn settled(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |s| s["phase"] == phase && s["splitWritten"] == true
}

/// `(event, step, weight)` of the status's history.
fn events(status: &Value) -> Vec<(String, u64, u64)> {
    status["state"]["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["event"].as_str().unwrap().to_owned(), e["step"].as_u64().unwrap(), e["weight"].as_u64().unwrap()))
        .collect()
}

/// A merge patch, as `kubectl patch --type merge` sends it.
async fn patch(api: &ApiServer, path: &str, body: Value) -> Value {
    api.request_as(Some(api.token()), Method::PATCH, path, Some(&body), "application/merge-patch+json")
        .await
        .unwrap()
        .expect(200)
}

/// A kubeconfig of the control plane's service account, with the manifests' RBAC installed.
async fn least_privilege(api: &ApiServer) -> std::path::PathBuf {
    let rbac = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/rbac.yaml")).unwrap();
    api.create_yaml(&rbac).await;
    let token = api.service_account_token(SYSTEM, "outrider-control-plane", SA_ISSUER).await;
    api.kubeconfig_with_token("outrider-control-plane", &token)
}

/// Once `client`'s sidecar routes every one of ten requests to `upstream`.
async fn routed_to(client: &Client, upstream: &str) {
    wait::wait_until(&format!("the sidecar to send everything to {upstream}"), || async {
        let mut all = true;
        for _ in 0..10 {
            all &= client::send(client, client::get(URI)).await.upstream() == Some(upstream);
        }
        all
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_rollout_moves_the_traffic_policys_split_step_by_step_to_promotion() {
    let Some(pods) = PodNetwork::create() else { return };
    let Some(api) = ApiServer::start().await else { return };
    let v1 = pods.upstream(upstream::http1().name("reviews-v1").start()).await;
    let v2 = pods.upstream(upstream::http1().name("reviews-v2").start()).await;
    cluster(&api, &[("reviews-v1", v1.addr, "v1"), ("reviews-v2", v2.addr, "v2")]).await;
    // The control plane as the manifests run it: its service account's RBAC, nothing more.
    let kubeconfig = least_privilege(&api).await;
    let cp = Replica::start_with("cp-a", LEASE, kubeconfig).await;
    wait::wait_until("the replica to lead", || async { cp.is_leader() }).await;
    let sidecar = kube_mesh::sidecar(cp.xds, "sidecar-0").await;
    let client = client::http1(sidecar.addrs.outbound);
    routed_to(&client, "reviews-v1").await;
    let load = Load::start(client.clone(), Plan::new(200, URI));

    apply(&api, ROLLOUTS, &rollout(json!({"canary": {"steps": [20, 50]}}), json!({"minRequests": 20}))).await;
    // Every split the TrafficPolicy object goes through, and, each time the status says its
    // split is written (read twice around the object, unchanged), that the object has it.
    let mut seen: Vec<Vec<u64>> = vec![weights(&api).await];
    let limit = wait::deadline();
    let end = tokio::time::Instant::now() + limit;
    let last = loop {
        let before = status(&api).await;
        let split = weights(&api).await;
        let after = status(&api).await;
        if seen.last() != Some(&split) {
            seen.push(split.clone());
        }
        if before["splitWritten"] == true && before["state"]["generation"] == after["state"]["generation"] {
            let w = before["weight"].as_u64().unwrap();
            assert_eq!(split, [100 - w, w], "the object holds the split the status says: {before:#}");
        }
        if settled("promoted")(&after) {
            break after;
        }
        assert!(tokio::time::Instant::now() < end, "no promotion within {limit:?}: {after:#}\nsplits seen {seen:?}");
        tokio::time::sleep(wait::POLL_INTERVAL).await;
    };
    let expected: Vec<Vec<u64>> = vec![vec![100], vec![100, 0], vec![80, 20], vec![50, 50], vec![0, 100]];
    let mut order = seen.iter().map(|s| expected.iter().position(|e| e == s).unwrap_or_else(|| panic!("{seen:?}")));
    assert!(order.clone().is_sorted() && order.any(|i| i == 2), "splits in order, each step seen: {seen:?}");
    assert!(seen.contains(&vec![50, 50]) && seen.last() == Some(&vec![0, 100]), "{seen:?}");

    // The status: where it is, the last check's numbers, what happened.
    assert_eq!((last["step"].as_u64(), last["weight"].as_u64()), (Some(3), Some(100)), "{last:#}");
    assert_eq!((last["steps"].as_u64(), last["trafficPolicy"].as_str()), (Some(2), Some("reviews")));
    let check = &last["lastCheck"];
    assert_eq!((check["passed"].as_bool(), check["step"].as_u64()), (Some(true), Some(2)), "{last:#}");
    assert!(check["requests"].as_u64().unwrap() >= 20 && check["successRate"].as_f64() == Some(100.0), "{check}");
    let seen_events: Vec<(String, u64, u64)> = events(&last).into_iter().filter(|e| e.0 != "check-passed").collect();
    assert_eq!(
        seen_events,
        [("started".into(), 0, 0), ("step".into(), 1, 20), ("step".into(), 2, 50), ("promoted".into(), 3, 100)],
        "{last:#}"
    );
    assert_eq!(accepted_condition(&api, ROLLOUT).await["status"], "True");
    // Only the split changed: the timeout stays as written.
    assert_eq!(api.get(POLICY).await["spec"]["timeout"], "3s");
    // `kubectl get rollouts`: the printer columns show the phase, step and weight.
    let table = api.table(ROLLOUTS).await;
    let columns: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Name", "Service", "Phase", "Step", "Weight", "Accepted", "Reason", "Age"]);
    let cells = &table["rows"][0]["cells"];
    assert_eq!(
        (&cells[0], &cells[2], &cells[3], &cells[4]),
        (&json!("reviews"), &json!("promoted"), &json!(3), &json!(100))
    );
    // The API (and `outrider rollout status reviews -n shop`) shows it too.
    let (code, view) = cp.call("GET", "/v1/rollouts/shop/reviews").await;
    assert_eq!((code, view["phase"].as_str(), view["name"].as_str()), (200, Some("promoted"), Some("shop/reviews")));
    // (The dashboard encodes the slash.)
    assert_eq!(cp.call("GET", "/v1/rollouts/shop%2Freviews").await.1["phase"], "promoted");
    let (code, list) = cp.call("GET", "/v1/rollouts").await;
    assert_eq!((code, list["items"].as_array().map(Vec::len)), (200, Some(1)), "{list}");
    // Promoted: every request goes to v2.
    routed_to(&client, "reviews-v2").await;
    let mark = tokio::time::Instant::now();
    assert!(load.sent_after(mark, 100).await.iter().all(|s| s.upstream == "reviews-v2" && s.status == 200));
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_aborted_the_stable_weights_come_back_and_an_operators_edit_is_kept() {
    let Some(pods) = PodNetwork::create() else { return };
    let Some(api) = ApiServer::start().await else { return };
    let flaky = Switch::new();
    let v1 = pods.upstream(upstream::http1().name("reviews-v1").start()).await;
    let v2 = pods.upstream(upstream::http1().name("reviews-v2").switch(&flaky).start()).await;
    cluster(&api, &[("reviews-v1", v1.addr, "v1"), ("reviews-v2", v2.addr, "v2")]).await;
    let cp = Replica::start(&api, "cp-a", LEASE).await;
    let sidecar = kube_mesh::sidecar(cp.xds, "sidecar-0").await;
    let client = client::http1(sidecar.addrs.outbound);
    routed_to(&client, "reviews-v1").await;
    let load = Load::start(client.clone(), Plan::new(200, URI));
    apply(
        &api,
        ROLLOUTS,
        &rollout(json!({"canary": {"steps": [50, 80]}}), json!({"minRequests": 50, "abortAfterFailures": 1})),
    )
    .await;
    status_until(&api, "the first step", |s| s["step"] == 1 && s["splitWritten"] == true).await;
    // An operator changes another field of the TrafficPolicy meanwhile (kubectl patch), and
    // the canary starts failing one request in five.
    patch(&api, POLICY, json!({"spec": {"timeout": "4s"}})).await;
    flaky.fail_rate(0.2);
    let last = status_until(&api, "the abort", settled("aborted")).await;
    assert!(last["reason"].as_str().unwrap().contains("success rate"), "{last:#}");
    let check = &last["lastCheck"];
    assert_eq!(check["passed"], false, "{last:#}");
    assert!(check["successRate"].as_f64().unwrap() < 99.0 && check["errors"].as_u64().unwrap() > 0, "{check}");
    assert_eq!(last["weight"], 0);
    let kinds: Vec<String> = events(&last).into_iter().map(|e| e.0).collect();
    assert_eq!(kinds, ["started", "step", "check-failed", "aborted"], "{last:#}");
    // The stable weights are back in the object, and the operator's edit is still there.
    let tp = api.get(POLICY).await;
    assert_eq!(weights(&api).await, [100, 0]);
    assert_eq!(tp["spec"]["timeout"], "4s", "{tp:#}");
    // v2 gets nothing once the sidecar has it.
    routed_to(&client, "reviews-v1").await;
    let mark = tokio::time::Instant::now();
    load.finished_before(mark).await;
    let v2_before = v2.request_count();
    assert!(load.sent_after(mark, 100).await.iter().all(|s| s.upstream == "reviews-v1"));
    assert_eq!(v2.request_count(), v2_before, "the aborted canary got traffic");
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_continues_the_rollout_from_its_status_and_never_steps_twice() {
    let Some(pods) = PodNetwork::create() else { return };
    let Some(api) = ApiServer::start().await else { return };
    let v1 = pods.upstream(upstream::http1().name("reviews-v1").start()).await;
    let v2 = pods.upstream(upstream::http1().name("reviews-v2").start()).await;
    cluster(&api, &[("reviews-v1", v1.addr, "v1"), ("reviews-v2", v2.addr, "v2")]).await;
    let (mut a, mut b) = tokio::join!(Replica::start(&api, "cp-a", LEASE), Replica::start(&api, "cp-b", LEASE));
    wait::wait_until("one replica to lead", || async { a.is_leader() != b.is_leader() }).await;
    let (leader, follower) = if a.is_leader() { (&mut a, &mut b) } else { (&mut b, &mut a) };
    // A sidecar on each replica, load through both: each replica hears its own sidecar's reports.
    let (near, far) = (
        kube_mesh::sidecar(leader.xds, "sidecar-leader").await,
        kube_mesh::sidecar(follower.xds, "sidecar-follower").await,
    );
    let clients = [client::http1(near.addrs.outbound), client::http1(far.addrs.outbound)];
    for c in &clients {
        routed_to(c, "reviews-v1").await;
    }
    let loads: Vec<Load> = clients.iter().map(|c| Load::start(c.clone(), Plan::new(150, URI))).collect();
    let steps = [10, 20, 30, 40, 50];
    apply(&api, ROLLOUTS, &rollout(json!({"canary": {"steps": steps}}), json!({"minRequests": 10}))).await;
    let before = status_until(&api, "the second step", |s| s["step"] == 2 && s["splitWritten"] == true).await;
    // The follower's API shows the rollout from the status.
    wait::wait_until("the follower to show the second step", || async {
        let (code, view) = follower.call("GET", "/v1/rollouts/shop/reviews").await;
        code == 200 && view["step"].as_u64() >= Some(2)
    })
    .await;

    // The leader dies mid-rollout; the other replica takes the Lease and the rollout with it.
    leader.kill();
    wait::wait_until("the other replica to lead", || async { follower.is_leader() }).await;
    let resumed = status_until(&api, "the new leader to act", |s| s["step"].as_u64() > before["step"].as_u64()).await;
    for step in 4..=5 {
        status_until(&api, &format!("step {step}"), |s| s["step"].as_u64() >= Some(step)).await;
    }
    let last = status_until(&api, "the promotion", settled("promoted")).await;
    // Started once, every step entered once and in order: continued, not started over, and
    // never a step twice.
    let all = events(&last);
    assert_eq!(all.iter().filter(|e| e.0 == "started").count(), 1, "{last:#}");
    let entered: Vec<u64> = all.iter().filter(|e| e.0 == "step").map(|e| e.2).collect();
    assert_eq!(entered, steps, "{last:#}");
    let old = before["state"]["history"].as_array().unwrap();
    let new = last["state"]["history"].as_array().unwrap();
    assert_eq!(&new[..old.len()], &old[..], "the history before the handover is kept");
    assert!(resumed["state"]["history"].as_array().unwrap().len() > old.len());
    assert_eq!(weights(&api).await, [0, 100]);
    let (code, view) = follower.call("GET", "/v1/rollouts/shop/reviews").await;
    assert_eq!((code, view["phase"].as_str()), (200, Some("promoted")));
    for load in loads {
        load.stop().await;
    }
}

/// A cluster whose `reviews` pods are never called: addresses no test sends to.
async fn quiet_cluster(api: &ApiServer) {
    cluster(
        api,
        &[
            ("reviews-v1", "100.64.250.1:9080".parse().unwrap(), "v1"),
            ("reviews-v2", "100.64.250.2:9080".parse().unwrap(), "v2"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_rollout_is_reported_in_its_status_with_the_field_and_nothing_is_applied() {
    let Some(api) = ApiServer::start().await else { return };
    quiet_cluster(&api).await;
    let cp = Replica::start(&api, "cp-a", LEASE).await;
    wait::wait_until("the replica to lead", || async { cp.is_leader() }).await;
    let policy_version = api.get(POLICY).await["metadata"]["resourceVersion"].clone();
    // A wrong type is refused by the API server itself (the CRD's schema).
    let mut wrong = rollout(json!({"canary": {"steps": "many"}}), json!({}));
    let refused = api.request(Method::POST, ROLLOUTS, Some(&wrong)).await.unwrap();
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body["message"].as_str().unwrap().contains("spec.strategy.canary.steps"), "{}", refused.body);
    // A bad value: the control plane's validation, its message in the Accepted condition.
    wrong = rollout(json!({"canary": {"steps": [50, 10]}}), json!({"minRequests": 0}));
    apply(&api, ROLLOUTS, &wrong).await;
    let condition = accepted_condition(&api, ROLLOUT).await;
    assert_eq!((condition["status"].as_str(), condition["reason"].as_str()), (Some("False"), Some("Invalid")));
    let message = condition["message"].as_str().unwrap();
    assert!(message.contains("spec.strategy.canary.steps[1]: weights must increase (got 10 after 50)"), "{message}");
    assert!(message.contains("spec.analysis.minRequests: must be at least 1"), "{message}");
    // Nothing applied: no state, the TrafficPolicy untouched, the API says why.
    let (code, answer) = cp.call("GET", "/v1/rollouts/shop/reviews").await;
    assert_eq!(code, 404, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("not applied (Invalid: spec.strategy.canary.steps[1]"),
        "{answer}"
    );
    assert_eq!(cp.call("POST", "/v1/rollouts/shop/reviews/pause").await.0, 409);
    assert!(status(&api).await.get("state").is_none(), "{:#}", status(&api).await);
    assert!(cp.rollouts().controller().unwrap().list(None).is_empty());
    assert_eq!(api.get(POLICY).await["metadata"]["resourceVersion"], policy_version);
    // Fixed: it runs (and waits for its canary with the stable split written).
    apply(&api, ROLLOUTS, &rollout(json!({"canary": {"steps": [10, 50]}}), json!({"minRequests": 1000000}))).await;
    let fixed = accepted_condition(&api, ROLLOUT).await;
    assert_eq!(fixed["status"], "True", "{fixed}");
    let running = status_until(&api, "the first step", |s| s["step"] == 1 && s["splitWritten"] == true).await;
    assert_eq!(running["phase"], "progressing");
    assert_eq!(weights(&api).await, [90, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_promote_and_abort_through_the_api_the_cli_and_the_object_and_a_deleted_rollout_stops() {
    use outrider_tests::control_plane::outrider_bin;
    let Some(api) = ApiServer::start().await else { return };
    quiet_cluster(&api).await;
    let cp = Replica::start(&api, "cp-a", LEASE).await;
    apply(&api, ROLLOUTS, &rollout(json!({"canary": {"steps": [30, 60]}}), json!({"minRequests": 1000000}))).await;
    status_until(&api, "the first step", |s| s["step"] == 1 && s["splitWritten"] == true).await;
    assert_eq!(weights(&api).await, [70, 30]);

    // kubectl patch … spec.paused: true — Argo Rollouts' way.
    patch(&api, ROLLOUT, json!({"spec": {"paused": true}})).await;
    let paused = status_until(&api, "the pause", |s| s["phase"] == "paused").await;
    assert_eq!(paused["step"], 1, "{paused:#}");
    assert_eq!(events(&paused).last().unwrap().0, "paused");
    // The CLI resumes it (it sets spec.paused back to false).
    let server = format!("http://{}", cp.api);
    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(outrider_bin());
        cmd.arg("rollout").args(args).args(["-n", "shop", "--server", &server, "--token", &cp.api_token()]);
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        cmd
    };
    let out = wait::within("the CLI", cli(&["resume", "reviews"]).output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("shop/reviews progressing step 1/2 weight 30%"), "{stdout}");
    assert_eq!(api.get(ROLLOUT).await["spec"]["paused"], false);
    // The API pauses it the same way; a second pause is refused.
    let (code, view) = cp.call("POST", "/v1/rollouts/shop/reviews/pause").await;
    assert_eq!((code, view["phase"].as_str()), (200, Some("paused")), "{view}");
    assert_eq!(api.get(ROLLOUT).await["spec"]["paused"], true);
    assert_eq!(cp.call("POST", "/v1/rollouts/shop/reviews/pause").await.0, 409);
    // Promote skips the rest: the annotation is taken off once done.
    let (code, view) = cp.call("POST", "/v1/rollouts/shop/reviews/promote").await;
    assert_eq!((code, view["phase"].as_str()), (200, Some("promoted")), "{view}");
    status_until(&api, "the promotion's split", settled("promoted")).await;
    assert_eq!(weights(&api).await, [0, 100]);
    assert!(api.get(ROLLOUT).await["metadata"]["annotations"].get("outrider.io/command").is_none());

    // kubectl annotate: a command that is refused is recorded, and taken off.
    patch(&api, ROLLOUT, json!({"metadata": {"annotations": {"outrider.io/command": "promote"}}})).await;
    let refused =
        status_until(&api, "the refusal", |s| events(s).last().is_some_and(|e| e.0 == "command-refused")).await;
    let message =
        refused["state"]["history"].as_array().unwrap().last().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("outrider.io/command: promote: Rollout shop/reviews is promoted"), "{message}");
    wait::wait_until("the refused command to be taken off", || async {
        api.get(ROLLOUT).await["metadata"]["annotations"].get("outrider.io/command").is_none()
    })
    .await;
    // … and one that is carried out: abort rolls the promotion back.
    patch(&api, ROLLOUT, json!({"metadata": {"annotations": {"outrider.io/command": "abort"}}})).await;
    let aborted = status_until(&api, "the rollback", settled("aborted")).await;
    assert_eq!(aborted["reason"], "rolled back by an operator");
    assert_eq!(weights(&api).await, [100, 0]);
    let out = cli(&["abort", "reviews"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "aborting an aborted rollout is a conflict");
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"), "{}", String::from_utf8_lossy(&out.stderr));

    // Deleted: its controller forgets it, the split stays as it is.
    let controller = cp.rollouts().controller().unwrap();
    kube_mesh::delete(&api, ROLLOUT).await;
    wait::wait_until("the leader to forget the rollout", || async { controller.list(None).is_empty() }).await;
    assert!(controller.status("shop/reviews").is_none());
    assert_eq!(cp.call("GET", "/v1/rollouts/shop/reviews").await.0, 404);
    assert_eq!(weights(&api).await, [100, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_the_lease_stops_its_rollouts_and_its_next_term_continues_them() {
    let Some(api) = ApiServer::start().await else { return };
    quiet_cluster(&api).await;
    let cp = Replica::start(&api, "cp-a", LEASE).await;
    apply(&api, ROLLOUTS, &rollout(json!({"canary": {"steps": [30, 60]}}), json!({"minRequests": 1000000}))).await;
    status_until(&api, "the first step", |s| s["step"] == 1 && s["splitWritten"] == true).await;

    // Someone else takes the Lease: the replica stops leading, and its rollouts with it.
    let lease_path = format!("/apis/coordination.k8s.io/v1/namespaces/{SYSTEM}/leases/outrider-control-plane");
    wait::wait_until("the Lease to be taken (over the version read)", || async {
        let mut lease = api.get(&lease_path).await;
        lease["spec"]["holderIdentity"] = json!("someone-else");
        lease["spec"]["leaseDurationSeconds"] = json!(3600);
        api.request(Method::PUT, &lease_path, Some(&lease)).await.unwrap().status == 200
    })
    .await;
    wait::wait_until("the replica to stop leading and running rollouts", || async {
        !cp.is_leader() && cp.rollouts().controller().is_none()
    })
    .await;
    // Nobody acts on a command now: it is written to the object and answered 202, unchanged.
    let (code, view) = cp.call("POST", "/v1/rollouts/shop/reviews/abort").await;
    assert_eq!((code, view["phase"].as_str()), (202, Some("progressing")), "{view}");
    assert_eq!(api.get(ROLLOUT).await["metadata"]["annotations"]["outrider.io/command"], "abort");
    assert_eq!(status(&api).await["phase"], "progressing");
    assert_eq!(weights(&api).await, [70, 30]);

    // The Lease is free again: the replica's next term continues the rollout from its status and
    // carries out the command that waited.
    api.request(Method::DELETE, &lease_path, None).await.unwrap().expect(200);
    wait::wait_until("the replica to lead again", || async { cp.is_leader() }).await;
    let aborted = status_until(&api, "the waiting abort", settled("aborted")).await;
    assert_eq!(aborted["reason"], "aborted by an operator");
    assert_eq!(weights(&api).await, [100, 0]);
    let kinds: Vec<String> = events(&aborted).into_iter().map(|e| e.0).collect();
    assert_eq!(kinds, ["started", "step", "aborted"], "continued, not started over: {aborted:#}");
    wait::wait_until("the command to be taken off", || async {
        api.get(ROLLOUT).await["metadata"]["annotations"].get("outrider.io/command").is_none()
    })
    .await;
}
