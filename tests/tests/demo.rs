//! `outrider demo` end to end: the real binary runs its whole scenario and ends with a summary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::binary::run_to_exit;
use outrider_tests::control_plane::outrider_bin;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_its_scenario_and_prints_a_summary() {
    let mut cmd = Command::new(outrider_bin());
    cmd.args(["demo", "--duration", "5s"]);
    let out = run_to_exit(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let summary = stdout.lines().find(|l| l.starts_with("summary: ")).expect("a summary line");
    assert!(summary.contains("caller success") && summary.contains("raw upstream success"), "{summary}");
    assert!(stdout.contains("v2 broken"), "the scenario breaks v2:\n{stdout}");
    assert!(stdout.contains("canary promoted"), "the scenario shifts the canary:\n{stdout}");
    assert!(stdout.contains("outrider status"), "it says how to look further:\n{stdout}");
    let dashboard = stdout.lines().find(|l| l.starts_with("dashboard ")).expect("a dashboard line");
    assert!(dashboard.contains("http://127.0.0.1:") && dashboard.contains("/ui/"), "{dashboard}");
    let mtls = stdout.lines().find(|l| l.starts_with("mTLS: ")).expect("an mTLS line");
    assert!(!mtls.contains("accepted 0 "), "the sidecars talked mutual TLS: {mtls}");
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
    let summary = stdout.lines().find(|l| l.starts_with("summary: ")).expect("a summary line");
    assert!(summary.contains("v2 promoted") && summary.contains("v3 aborted"), "{summary}");
    for step in ["step 1: canary at 10%", "step 2: canary at 25%", "step 3: canary at 50%"] {
        assert!(stdout.contains(step), "v2 goes through {step}:\n{stdout}");
    }
    assert!(stdout.contains("reviews promoted weight 100%"), "the live view shows the promotion:\n{stdout}");
    assert!(stdout.contains("reviews aborted weight 0%"), "the live view shows the abort:\n{stdout}");
    let v3 = stdout.split("apply Rollout reviews: v2 → v3").nth(1).expect("the v3 rollout");
    assert!(!v3.contains("step 2:"), "v3 was aborted on its first step:\n{v3}");
    assert!(stdout.contains("outrider rollout status reviews -w"), "it says how to watch:\n{stdout}");
    assert!(stdout.contains("/ui/#/service/reviews"), "it gives the dashboard's page of the rollout:\n{stdout}");
}
