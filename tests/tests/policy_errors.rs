//! A bad policy file at startup: the binary exits 2 and stderr names the file and
//! the field path of each problem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::binary::{proxy_command, run_to_exit};
use outrider_tests::harness::TempDir;

const SERVICE: &str = "apiVersion: outrider.io/v1
kind: Service
metadata: {name: echo}
spec:
  port: 8080
  endpoints:
    - {address: \"127.0.0.1:9081\", labels: {version: v1}}
";

fn traffic_policy(spec: &str) -> String {
    format!(
        "---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: echo}}\nspec:\n  service: echo\n{spec}"
    )
}

/// Start the binary on `policy` (in a file called `file_name`); expect exit 2 and
/// every one of `needles` on stderr, plus the file name.
async fn rejects(file_name: &str, policy: &str, needles: &[&str]) {
    let dir = TempDir::new("outrider-policy-errors");
    let path = dir.write(file_name, policy);
    let out = run_to_exit(proxy_command(&path)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit status {:?}; stderr:\n{stderr}", out.status);
    assert!(stderr.contains(file_name), "stderr names the file {file_name}:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr mentions {n:?}:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typo_in_a_field_name() {
    let policy = format!(
        "{SERVICE}{}",
        traffic_policy("  routes:\n    - name: main\n      split: [{subset: {version: v1}, wieght: 100}]\n")
    );
    rejects("typo-policy.yaml", &policy, &["spec.routes[0].split[0].wieght", "unknown field"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_duration() {
    let policy = format!("{SERVICE}{}", traffic_policy("  connectTimeout: 5 secs\n"));
    rejects("duration-policy.yaml", &policy, &["spec.connectTimeout", "5 secs"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_that_matches_no_endpoint() {
    let policy = format!(
        "{SERVICE}{}",
        traffic_policy("  routes:\n    - name: main\n      split: [{subset: {version: v9}, weight: 100}]\n")
    );
    rejects("subset-policy.yaml", &policy, &["spec.routes[0].split[0].subset"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file() {
    let dir = TempDir::new("outrider-policy-errors");
    let out = run_to_exit(proxy_command(&dir.path().join("absent-policy.yaml"))).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("absent-policy.yaml"), "{stderr}");
}
