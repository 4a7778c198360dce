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
    let mtls = stdout.lines().find(|l| l.starts_with("mTLS: ")).expect("an mTLS line");
    assert!(!mtls.contains("accepted 0 "), "the sidecars talked mutual TLS: {mtls}");
}
