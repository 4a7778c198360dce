//! The `outrider` binary: `control-plane` as a process, and the CLI verbs against it
//! (`apply`, `get`, `delete`, `status`) with their exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Output, Stdio};

use outrider_tests::control_plane::{TOKEN, outrider_bin, parse_listening};
use outrider_tests::harness::TempDir;
use outrider_tests::{binary, policy, wait};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn start(data: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(outrider_bin())
        .args(["control-plane", "--xds-port", "0", "--api-port", "0", "--api-token", TOKEN, "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start outrider control-plane");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let find = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addrs) = parse_listening(&line) {
                return Some(addrs);
            }
        }
        None
    };
    let (_, api) = wait::within("the control plane's listening line", find)
        .await
        .expect("the control plane exited before listening");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://{api}"))
}

async fn cli(server: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(outrider_bin());
    cmd.args(args).env("OUTRIDER_SERVER", server).env("OUTRIDER_TOKEN", TOKEN);
    binary::run_to_exit(cmd).await
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verbs_talk_to_the_control_plane_with_exit_codes() {
    let data = TempDir::new("cp-cli");
    let files = TempDir::new("cp-cli-files");
    let (mut cp, server) = start(&data.path().join("store")).await;

    let svc = policy::service("echo").endpoint("127.0.0.1:9").yaml();
    let good = files.write("good.yaml", &svc);
    let out = cli(&server, &["apply", "-f", good.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Service/echo created"), "{}", text(&out));

    // Invalid input: exit 2, the field named.
    let bad = files.write("bad.yaml", &svc.replace("port: 8080", "port: 70000"));
    let out = cli(&server, &["apply", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.port"), "{}", text(&out));

    // Without the token: refused, exit 1.
    let mut cmd = Command::new(outrider_bin());
    cmd.args(["apply", "-f", good.to_str().unwrap(), "--server", &server]).env_remove("OUTRIDER_TOKEN");
    let out = binary::run_to_exit(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let out = cli(&server, &["get", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"][0]["name"], "echo");
    let out = cli(&server, &["get", "services", "echo", "-o", "yaml"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("kind: Service"), "{}", text(&out));
    let out = cli(&server, &["get"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("echo"), "{}", text(&out));

    let out = cli(&server, &["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NODE"), "{}", text(&out));

    // SIGTERM stops it cleanly; a restart serves the same documents.
    let pid = cp.id().unwrap();
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let status = wait::within("the control plane to exit", cp.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let (_cp, server) = start(&data.path().join("store")).await;
    let out = cli(&server, &["get", "service", "echo", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = cli(&server, &["delete", "service", "echo"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = cli(&server, &["delete", "service", "echo"]).await;
    assert_eq!(out.status.code(), Some(2), "not found is bad input: {}", text(&out));

    // Nobody listening: a runtime failure, exit 1.
    let closed = format!("http://{}", outrider_tests::upstream::closed_port());
    let out = cli(&closed, &["status"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"), "{}", text(&out));
}
