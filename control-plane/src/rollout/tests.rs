//! Tests of the rollout controller in paused time: real policies store (persisted in a temp
//! dir), real stats store fed with reports from the proxy's own encoder.

use std::path::PathBuf;
use std::time::Duration;

use outrider_proxy::load_report::{AllClusters, collect};
use serde_json::Value;

use super::*;
use crate::policies::persist::DataDir;
use crate::policies::{Policies, WriteError};

const SERVICE: &str = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  port: 80\n  endpoints:\n    - {address: \"127.0.0.1:1\", labels: {version: v1}}\n    - {address: \"127.0.0.1:2\", labels: {version: v2}}\n";

fn rollout(strategy: &str, analysis: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: Rollout\nmetadata: {{name: reviews}}\nspec:\n  service: reviews\n  \
         stable: {{version: v1}}\n  canary: {{version: v2}}\n  strategy: {strategy}\n  interval: 1s\n  analysis: {analysis}\n"
    )
}

fn temp() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("outrider-rollout-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Fixture {
    dir: PathBuf,
    policies: Arc<Policies>,
    stats: Arc<Stats>,
    controller: Arc<Controller>,
    task: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn start(dir: PathBuf, yaml: Option<&str>) -> Self {
        let policies = Policies::open(DataDir::new(dir.clone()), None).unwrap();
        if let Some(yaml) = yaml {
            policies.apply(yaml, None, false).await.unwrap();
        }
        let stats = Stats::new(Duration::from_secs(5), Metrics::new());
        stats.update_mesh(&policies.current());
        let controller =
            Controller::open(policies.clone(), stats.clone(), DataDir::new(dir.clone()), Metrics::new()).unwrap();
        let task = tokio::spawn(controller.clone().run());
        Self { dir, policies, stats, controller, task }
    }

    fn status(&self) -> Value {
        self.controller.status("reviews").unwrap_or(Value::Null)
    }

    /// The canary's weight on the (one) route of the service's TrafficPolicy.
    fn canary_weight(&self) -> Option<u32> {
        let set = self.policies.current();
        let route = set.traffic_policies.get("reviews")?.spec.routes.first()?.clone();
        route.split.iter().find(|s| s.subset.get("version").map(String::as_str) == Some("v2")).map(|s| s.weight)
    }

    /// One proxy's report: `v1` and `v2` requests as (ok, failed, ms).
    fn traffic(&self, v1: (u64, u64, u64), v2: (u64, u64, u64)) {
        let (snapshot, _) =
            outrider_proxy::state::Builder::new().build(&outrider_xds::translate(&self.policies.current()));
        for cluster in snapshot.clusters.values() {
            for e in cluster.endpoints.items() {
                let (ok, failed, ms) = if e.addr.port() == 1 { v1 } else { v2 };
                for i in 0..ok + failed {
                    e.shared.load.issue();
                    e.shared.load.finish(i >= ok, Duration::from_millis(ms));
                }
            }
        }
        self.stats.ingest("proxy", "", &collect(&snapshot, &AllClusters, Duration::from_millis(100)));
    }

    /// Every 100 ms (paused time) send `traffic` until `done` holds of the status; at most 60 s.
    async fn until(
        &self,
        what: &str,
        v1: (u64, u64, u64),
        v2: (u64, u64, u64),
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        for _ in 0..600 {
            let status = self.status();
            if done(&status) {
                return status;
            }
            self.traffic(v1, v2);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: not reached; status {:#}", self.status());
    }

    fn stop(self) -> PathBuf {
        self.task.abort();
        if let Some(rt) = self.controller.inner.lock().runtime.values().find_map(|r| r.driver.clone()) {
            rt.abort();
        }
        self.dir
    }
}

const HEALTHY: (u64, u64, u64) = (20, 0, 5);

#[tokio::test(start_paused = true)]
async fn a_healthy_canary_is_promoted_through_every_step() {
    let yaml = format!("{SERVICE}---\n{}", rollout("{canary: {steps: [10, 50]}}", "{minRequests: 10}"));
    let f = Fixture::start(temp(), Some(&yaml)).await;
    let status =
        f.until("promotion", HEALTHY, HEALTHY, |s| s["phase"] == "promoted" && s["splitWritten"] == true).await;
    let mut weights = Vec::new();
    for event in status["history"].as_array().unwrap() {
        if let Some(w) = event["weight"].as_u64()
            && weights.last() != Some(&w)
        {
            weights.push(w);
        }
    }
    assert_eq!(weights, [0, 10, 50, 100], "{status:#}");
    assert_eq!(f.canary_weight(), Some(100));
    let events: Vec<&str> =
        status["history"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["started", "step", "check-passed", "step", "check-passed", "promoted"]);
    // Promoted: the split is the operator's again.
    let mut doc = f.policies.document("TrafficPolicy", "reviews").await.unwrap();
    doc["spec"]["routes"][0]["split"][0]["weight"] = serde_json::json!(100);
    doc["spec"]["routes"][0]["split"][1]["weight"] = serde_json::json!(0);
    f.policies.apply(&doc.to_string(), None, false).await.unwrap();
    let dir = f.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failing_canary_is_aborted_and_its_weight_goes_back_to_zero() {
    let yaml = format!(
        "{SERVICE}---\n{}",
        rollout("{canary: {steps: [10, 50]}}", "{minRequests: 10, minSuccessRate: 99, abortAfterFailures: 1}")
    );
    let f = Fixture::start(temp(), Some(&yaml)).await;
    f.until("the first step", HEALTHY, HEALTHY, |s| s["step"] == 1 && s["splitWritten"] == true).await;
    assert_eq!(f.canary_weight(), Some(10));
    let status =
        f.until("the abort", HEALTHY, (18, 2, 5), |s| s["phase"] == "aborted" && s["splitWritten"] == true).await;
    assert_eq!(f.canary_weight(), Some(0));
    assert_eq!(status["failedChecks"], 1);
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.contains("success rate 90.00% < 99%"), "{reason}");
    let dir = f.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_slow_canary_is_aborted_on_its_p99() {
    let yaml = format!(
        "{SERVICE}---\n{}",
        rollout("{linear: {stepWeight: 25}}", "{minRequests: 10, maxP99Latency: 100ms, abortAfterFailures: 2}")
    );
    let f = Fixture::start(temp(), Some(&yaml)).await;
    let status = f.until("the abort", HEALTHY, (20, 0, 400), |s| s["phase"] == "aborted").await;
    assert_eq!(status["failedChecks"], 2, "two failed checks abort");
    assert!(status["reason"].as_str().unwrap().contains("p99 latency"), "{status:#}");
    assert_eq!(status["step"], 0, "aborted back to the stable version");
    let dir = f.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_step_without_enough_requests_waits_instead_of_passing() {
    let yaml = format!("{SERVICE}---\n{}", rollout("{canary: {steps: [10, 50]}}", "{minRequests: 1000}"));
    let f = Fixture::start(temp(), Some(&yaml)).await;
    f.until("the first step", (0, 0, 0), (0, 0, 0), |s| s["step"] == 1).await;
    // Thirty intervals of a trickle (2 canary requests every 100 ms: 600 in all) never judge it.
    for _ in 0..300 {
        f.traffic((5, 0, 1), (2, 0, 1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = f.status();
    assert_eq!((status["phase"].as_str(), status["step"].as_u64()), (Some("progressing"), Some(1)), "{status:#}");
    assert!(status["message"].as_str().unwrap().contains("waiting for requests"), "{status:#}");
    assert_eq!(status["failedChecks"], 0);
    // Enough requests, and it moves on.
    f.until("the second step", (5, 0, 1), (400, 0, 1), |s| s["step"] == 2).await;
    let dir = f.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_split_is_refused_to_others_unless_paused_and_commands_follow_the_state_machine() {
    let yaml = format!("{SERVICE}---\n{}", rollout("{canary: {steps: [10, 50]}}", "{minRequests: 100000}"));
    let f = Fixture::start(temp(), Some(&yaml)).await;
    f.until("the first step", HEALTHY, HEALTHY, |s| s["step"] == 1 && s["splitWritten"] == true).await;
    let doc = f.policies.document("TrafficPolicy", "reviews").await.unwrap();
    let mut edited = doc.clone();
    edited["spec"]["routes"][0]["split"][1]["weight"] = serde_json::json!(90);
    edited["spec"]["routes"][0]["split"][0]["weight"] = serde_json::json!(10);
    let Err(WriteError::Owned(why)) = f.policies.apply(&edited.to_string(), None, false).await else {
        panic!("a manual edit of the split was accepted while progressing")
    };
    assert!(why.contains("run by Rollout reviews (progressing, step 1 of 2, canary at 10%)"), "{why}");
    assert!(matches!(f.policies.delete("TrafficPolicy", "reviews", None).await, Err(WriteError::Owned(_))));
    // Anything else in the document may change.
    let mut timeout = doc.clone();
    timeout["spec"]["timeout"] = serde_json::json!("3s");
    f.policies.apply(&timeout.to_string(), None, false).await.unwrap();

    let conflict = |r: Result<Value, CommandError>| matches!(r, Err(CommandError::Conflict(_)));
    assert!(conflict(f.controller.command("reviews", Command::Resume).await));
    assert!(conflict(f.controller.command("reviews", Command::Start).await));
    assert!(matches!(f.controller.command("nope", Command::Pause).await, Err(CommandError::NotFound(_))));
    let paused = f.controller.command("reviews", Command::Pause).await.unwrap();
    assert_eq!(paused["phase"], "paused");
    edited["spec"]["timeout"] = serde_json::json!("3s");
    f.policies.apply(&edited.to_string(), None, false).await.unwrap();
    assert_eq!(f.canary_weight(), Some(90), "paused: the operator's split");
    f.controller.command("reviews", Command::Resume).await.unwrap();
    f.until("the step's split back", HEALTHY, HEALTHY, |s| s["splitWritten"] == true).await;
    assert_eq!(f.canary_weight(), Some(10), "resumed: the rollout's split again");
    assert_eq!(f.policies.current().traffic_policies["reviews"].spec.timeout, Some(Duration::from_secs(3)));
    f.controller.command("reviews", Command::Promote).await.unwrap();
    f.until("the promotion", HEALTHY, HEALTHY, |s| s["phase"] == "promoted" && s["splitWritten"] == true).await;
    assert_eq!(f.canary_weight(), Some(100));
    let rolled_back = f.controller.command("reviews", Command::Abort).await.unwrap();
    assert_eq!(rolled_back["reason"], "rolled back by an operator");
    f.until("the rollback", HEALTHY, HEALTHY, |s| s["splitWritten"] == true).await;
    assert_eq!(f.canary_weight(), Some(0));
    let again = f.controller.command("reviews", Command::Start).await.unwrap();
    assert_eq!((again["phase"].as_str(), again["step"].as_u64()), (Some("progressing"), Some(0)));
    let dir = f.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_restarted_controller_continues_at_the_step_it_was() {
    let yaml = format!("{SERVICE}---\n{}", rollout("{canary: {steps: [10, 50, 80]}}", "{minRequests: 10}"));
    let f = Fixture::start(temp(), Some(&yaml)).await;
    f.until("the second step", HEALTHY, HEALTHY, |s| s["step"] == 2 && s["splitWritten"] == true).await;
    let before = f.status();
    let dir = f.stop();
    // A new controller on the same data dir, with no traffic: it stays at step 2 (50%).
    let f = Fixture::start(dir, None).await;
    f.until("the restored state", (0, 0, 0), (0, 0, 0), |s| s["step"] == 2).await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = f.status();
    assert_eq!((after["phase"].as_str(), after["step"].as_u64()), (Some("progressing"), Some(2)), "{after:#}");
    assert_eq!(after["history"], before["history"], "nothing happened without numbers");
    assert_eq!(f.canary_weight(), Some(50));
    f.until("the next step", HEALTHY, HEALTHY, |s| s["step"] == 3).await;
    let dir = f.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn blue_green_previews_by_header_then_switches_at_once() {
    let yaml =
        format!("{SERVICE}---\n{}", rollout("{blueGreen: {previewHeaders: {x-env: preview}}}", "{minRequests: 10}"));
    let f = Fixture::start(temp(), Some(&yaml)).await;
    f.until("the preview", (0, 0, 0), (0, 0, 0), |s| s["preview"] == true && s["splitWritten"] == true).await;
    let set = f.policies.current();
    let routes = &set.traffic_policies["reviews"].spec.routes;
    assert_eq!(routes[0].name.as_deref(), Some(outrider_xds::policy::PREVIEW_ROUTE));
    assert_eq!(routes[0].matcher.headers["x-env"], "preview");
    assert_eq!(routes[1].split.iter().map(|s| s.weight).collect::<Vec<_>>(), [100, 0]);
    let status =
        f.until("the switch", (0, 0, 0), HEALTHY, |s| s["phase"] == "promoted" && s["splitWritten"] == true).await;
    let set = f.policies.current();
    let routes = &set.traffic_policies["reviews"].spec.routes;
    assert_eq!(routes.len(), 1, "the preview route is gone");
    assert_eq!(routes[0].split.iter().map(|s| s.weight).collect::<Vec<_>>(), [0, 100]);
    assert!(status["history"].as_array().unwrap().iter().any(|e| e["event"] == "check-passed"));
    let dir = f.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_deleted_rollout_stops_and_leaves_the_split_as_it_is() {
    let yaml = format!("{SERVICE}---\n{}", rollout("{canary: {steps: [10, 50]}}", "{minRequests: 100000}"));
    let f = Fixture::start(temp(), Some(&yaml)).await;
    f.until("the first step", HEALTHY, HEALTHY, |s| s["step"] == 1 && s["splitWritten"] == true).await;
    let driver = f.controller.inner.lock().runtime["reviews"].driver.clone().unwrap();
    f.policies.delete("Rollout", "reviews", None).await.unwrap();
    for _ in 0..20 {
        if driver.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(driver.is_finished(), "the driver ended");
    assert!(f.controller.status("reviews").is_none());
    assert!(f.controller.list(None).is_empty());
    assert_eq!(f.canary_weight(), Some(10), "the split stays");
    // Nobody owns the split now.
    let mut doc = f.policies.document("TrafficPolicy", "reviews").await.unwrap();
    doc["spec"]["routes"][0]["split"][1]["weight"] = serde_json::json!(30);
    doc["spec"]["routes"][0]["split"][0]["weight"] = serde_json::json!(70);
    f.policies.apply(&doc.to_string(), None, false).await.unwrap();
    let stored = state::load(&DataDir::new(f.dir.clone())).unwrap();
    assert!(stored.is_empty(), "the stored state is gone too");
    let dir = f.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

/// The Fixture's controller over policies read from a watched directory `dir`.
async fn from_dir(data: PathBuf, dir: PathBuf) -> Fixture {
    let policies = Policies::open(DataDir::new(data.clone()), Some(dir)).unwrap();
    let stats = Stats::new(Duration::from_secs(5), Metrics::new());
    stats.update_mesh(&policies.current());
    let controller =
        Controller::open(policies.clone(), stats.clone(), DataDir::new(data.clone()), Metrics::new()).unwrap();
    let task = tokio::spawn(controller.clone().run());
    Fixture { dir: data, policies, stats, controller, task }
}

#[tokio::test(start_paused = true)]
async fn a_rollout_from_the_watched_dir_runs_and_one_whose_split_is_a_file_stops_with_the_reason() {
    // The Rollout and the Service are files; the TrafficPolicy does not exist: the rollout
    // writes it through the API path and runs.
    let dir = temp();
    let files = dir.join("policies");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("reviews.yaml"),
        format!("{SERVICE}---\n{}", rollout("{canary: {steps: [50]}}", "{minRequests: 10}")),
    )
    .unwrap();
    let f = from_dir(dir.join("data"), files.clone()).await;
    let status =
        f.until("the promotion", HEALTHY, HEALTHY, |s| s["phase"] == "promoted" && s["splitWritten"] == true).await;
    assert_eq!(status["failedChecks"], 0);
    assert_eq!(f.canary_weight(), Some(100));
    let data = f.stop();
    std::fs::remove_dir_all(data.parent().unwrap()).unwrap();

    // The TrafficPolicy is a file too: the rollout cannot own its split and says why.
    let dir = temp();
    let files = dir.join("policies");
    std::fs::create_dir_all(&files).unwrap();
    let tp = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: reviews}\nspec:\n  service: reviews\n  \
              routes: [{name: main, split: [{subset: {version: v1}, weight: 100}]}]\n";
    std::fs::write(
        files.join("reviews.yaml"),
        format!("{SERVICE}---\n{tp}---\n{}", rollout("{canary: {steps: [50]}}", "{minRequests: 10}")),
    )
    .unwrap();
    let f = from_dir(dir.join("data"), files).await;
    let status = f.until("the stop", HEALTHY, HEALTHY, |s| s["phase"] == "aborted").await;
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.starts_with("cannot write the split: ") && reason.contains("reviews.yaml"), "{reason}");
    let route = &f.policies.current().traffic_policies["reviews"].spec.routes[0];
    assert_eq!(route.split.len(), 1, "the file's split is untouched");
    let data = f.stop();
    std::fs::remove_dir_all(data.parent().unwrap()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn spec_paused_pauses_the_rollout_and_setting_it_back_to_false_resumes_it() {
    let yaml = format!("{SERVICE}---\n{}", rollout("{canary: {steps: [10, 50]}}", "{minRequests: 10}"));
    let paused = format!("{yaml}  paused: true\n");
    // Applied paused: started, then paused at once, on the stable split.
    let f = Fixture::start(temp(), Some(&paused)).await;
    let status = f.until("the pause", HEALTHY, HEALTHY, |s| s["phase"] == "paused" && s["splitWritten"] == true).await;
    assert_eq!((status["step"].as_u64(), status["paused"].as_bool()), (Some(0), Some(true)), "{status:#}");
    assert_eq!(f.canary_weight(), Some(0));
    let events: Vec<&str> =
        status["history"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["started", "paused"]);
    assert_eq!(status["history"][1]["message"], "paused: spec.paused is true");
    // Healthy numbers for many intervals move nothing while it is paused.
    for _ in 0..30 {
        f.traffic(HEALTHY, HEALTHY);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((f.status()["phase"].as_str(), f.status()["step"].as_u64()), (Some("paused"), Some(0)));
    // A resume command cannot undo the document's pause.
    let Err(CommandError::Conflict(why)) = f.controller.command("reviews", Command::Resume).await else {
        panic!("resumed while spec.paused is true")
    };
    assert!(why.contains("spec.paused is true: set it to false"), "{why}");
    // Back to false: resumed (not started over), and on to the promotion.
    f.policies.apply(&yaml, None, false).await.unwrap();
    let status =
        f.until("the promotion", HEALTHY, HEALTHY, |s| s["phase"] == "promoted" && s["splitWritten"] == true).await;
    let events: Vec<&str> =
        status["history"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(&events[..3], ["started", "paused", "resumed"], "{status:#}");
    assert_eq!(events.iter().filter(|e| **e == "started").count(), 1, "{status:#}");
    // The last judged check is kept with its numbers.
    let last = &status["lastCheck"];
    assert_eq!((last["passed"].as_bool(), last["step"].as_u64()), (Some(true), Some(2)), "{status:#}");
    assert!(last["requests"].as_u64().unwrap() >= 10 && last["successRate"].as_f64() == Some(100.0), "{last}");

    // Paused again while progressing (a spec edit), mid-rollout: it stays at its step.
    f.controller.command("reviews", Command::Start).await.unwrap();
    f.until("the first step again", HEALTHY, HEALTHY, |s| s["step"] == 1 && s["splitWritten"] == true).await;
    f.policies.apply(&paused, None, false).await.unwrap();
    let status = f.until("the pause", HEALTHY, HEALTHY, |s| s["phase"] == "paused").await;
    assert_eq!(status["step"], 1, "{status:#}");
    assert_eq!(f.canary_weight(), Some(10));
    let dir = f.stop();
    std::fs::remove_dir_all(dir).unwrap();
}
