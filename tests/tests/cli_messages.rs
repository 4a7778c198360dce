//! What a new user sees from the real binaries: `--help`, mistyped flags, validation errors
//! (all at once, with positions), start-up failures (printed once, nothing left behind), the
//! 401 of a write without a token, the default data dir, `get`'s table, and the log line that
//! says a broken policy was fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

use outrider_tests::binary::{Captured, ProxyProcess, ephemeral_args, proxy_bin, proxy_command, run_to_exit};
use outrider_tests::control_plane::{TOKEN, outrider_bin, parse_listening};
use outrider_tests::eventually;
use outrider_tests::harness::TempDir;
use outrider_tests::policy::{docs, service};
use tokio::process::Command;

fn outrider() -> Command {
    Command::new(outrider_bin())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn both(out: &Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", out.status, stdout(out), stderr(out))
}

async fn run(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args);
    run_to_exit(cmd).await
}

/// `outrider control-plane` on ephemeral loopback ports, `data_dir` as its store.
fn control_plane(data_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = outrider();
    cmd.args(["control-plane", "--xds-port", "0", "--api-port", "0", "--data-dir"]).arg(data_dir).args(extra);
    cmd
}

/// The API URL from the control plane's `listening` line.
async fn api_url(cp: &Captured) -> String {
    let line = cp.line_containing("\"listening\"").await;
    let (_, api) = parse_listening(&line).expect("a listening line with addresses");
    format!("http://{api}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_says_what_is_required_and_mistyped_flags_get_a_suggestion() {
    let out = run(Command::new(proxy_bin()), &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("<--policy <POLICY>|--xds-address <XDS_ADDRESS>>"), "{}", both(&out));

    let out = run(Command::new(proxy_bin()), &["--help"]).await;
    assert!(stdout(&out).contains("one of the two is required"), "{}", both(&out));
    assert!(stdout(&out).contains("OUTRIDER_<FLAG>"), "{}", both(&out));

    let out = run(Command::new(proxy_bin()), &["--polcy", "p.yaml"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("tip: a similar argument exists: '--policy'"), "{}", both(&out));

    let out = run(outrider(), &["validate", "--filname", "p.yaml"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("tip: a similar argument exists: '--filename'"), "{}", both(&out));

    let out = run(outrider(), &["--help"]).await;
    assert!(stdout(&out).contains("two services (frontend, reviews"), "{}", both(&out));
}

/// The example of docs/policy.md's "Errors" section: several mistakes, all reported at once.
const SEVERAL_ERRORS: &str = "\
apiVersion: outrider.io/v1
kind: Service
metadata: {name: reviews}
spec:
  port: 9080
  endpoints:
    - {address: \"127.0.0.1:9081\", labels: {version: v1}}
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {name: reviews}
spec:
  service: reviews
  timout: 3s
  retries: {attempts: three}
  loadBalancer: round-robbin
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_every_error_with_its_position() {
    let dir = TempDir::new("outrider-cli-validate");
    let bad = dir.write("bad.yaml", SEVERAL_ERRORS);
    let out = run(outrider(), &["validate", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let file = bad.display();
    let expected = [
        format!(
            "{file}:14:3: document 2 (TrafficPolicy/reviews): spec.timout: unknown field; did you mean \
             `timeout`?"
        ),
        format!(
            "{file}:15:13: document 2 (TrafficPolicy/reviews): spec.retries.attempts: expected a whole \
             number ≥ 0, got \"three\""
        ),
        format!(
            "{file}:16:3: document 2 (TrafficPolicy/reviews): spec.loadBalancer: unknown value \
             \"round-robbin\", expected one of p2c-ewma, round-robin, random; did you mean \"round-robin\"?"
        ),
    ];
    let lines: Vec<String> = stderr(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), expected.len(), "{}", both(&out));
    for (line, expected) in lines.iter().zip(&expected) {
        assert!(line.starts_with(expected.as_str()), "{line}\ndoes not start with\n{expected}");
    }
    // The JSON form carries the same positions.
    let out = run(outrider(), &["validate", "-f", bad.to_str().unwrap(), "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["errors"][0]["line"].as_u64(), v["errors"][0]["column"].as_u64()), (Some(14), Some(3)));

    let good = dir.write(
        "good.yaml",
        &SEVERAL_ERRORS.replace("timout", "timeout").replace("three", "3").replace("robbin", "robin"),
    );
    let out = run(outrider(), &["validate", "-f", good.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(stdout(&out).contains("valid (1 service, 1 traffic policy; version "), "{}", both(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_busy_port_fails_once_and_leaves_nothing_behind() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let dir = TempDir::new("outrider-cli-busy");
    let data = dir.path().join("data");
    let mut cmd = outrider();
    cmd.args(["control-plane", "--xds-port", "0", "--api-port", &port, "--log-format", "text", "--data-dir"])
        .arg(&data);
    let out = run_to_exit(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(text.matches("is another process using the port?").count(), 1, "said once: {}", both(&out));
    assert!(stderr(&out).contains(&format!("cannot listen on API 127.0.0.1:{port}")), "{}", both(&out));
    assert!(!data.exists(), "no data dir (CA key, token) for a control plane that never ran");

    let mut args = ephemeral_args(&dir.write("p.yaml", &service("s").endpoint("127.0.0.1:9").yaml()));
    let at = args.iter().position(|a| a == "--outbound-port").unwrap();
    args[at + 1] = port.clone();
    let mut cmd = Command::new(proxy_bin());
    cmd.args(args);
    let out = run_to_exit(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(text.matches("is another process using the port?").count(), 1, "said once: {}", both(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_data_dir_is_per_user_state_and_a_git_checkout_is_flagged() {
    let home = TempDir::new("outrider-cli-home");
    let mut cmd = outrider();
    cmd.args(["control-plane", "--xds-port", "0", "--api-port", "0"])
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .env_remove("OUTRIDER_DATA_DIR")
        .current_dir(home.path());
    let cp = Captured::spawn(cmd);
    let line = cp.line_containing("\"listening\"").await;
    let expected = home.path().join(".local/state/outrider");
    assert!(line.contains(&format!("\"data_dir\":\"{}\"", expected.display())), "{line}");
    assert!(expected.join("api-token").exists(), "the generated token is in the state dir");
    drop(cp);

    let state = TempDir::new("outrider-cli-state");
    let mut cmd = outrider();
    cmd.args(["control-plane", "--xds-port", "0", "--api-port", "0"])
        .env("XDG_STATE_HOME", state.path())
        .env_remove("OUTRIDER_DATA_DIR");
    let cp = Captured::spawn(cmd);
    let line = cp.line_containing("\"listening\"").await;
    assert!(line.contains(&format!("\"data_dir\":\"{}\"", state.path().join("outrider").display())), "{line}");
    drop(cp);

    // Neither variable: --data-dir is required.
    let mut cmd = outrider();
    cmd.args(["control-plane", "--xds-port", "0", "--api-port", "0"])
        .env_remove("HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("OUTRIDER_DATA_DIR");
    let out = run_to_exit(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("--data-dir is required"), "{}", both(&out));

    // A data dir inside a git checkout is started, with a warning.
    let checkout = TempDir::new("outrider-cli-checkout");
    std::fs::create_dir(checkout.path().join(".git")).unwrap();
    let cp = Captured::spawn(control_plane(&checkout.path().join("outrider-data"), &[]));
    cp.line_containing("\"listening\"").await;
    let warning = cp.line_containing("inside a git checkout").await;
    assert!(warning.contains(&checkout.path().display().to_string()), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_the_token_says_where_it_is_and_get_lines_up_its_columns() {
    let dir = TempDir::new("outrider-cli-token");
    let cp = Captured::spawn(control_plane(&dir.path().join("data"), &["--api-token", TOKEN]));
    let server = api_url(&cp).await;
    let long = "a-service-name-longer-than-thirty-characters";
    let file = dir.write("s.yaml", &docs(&[service(long).endpoint("127.0.0.1:9").yaml(), service("b").yaml()]));

    let mut cmd = outrider();
    cmd.args(["apply", "-f", file.to_str().unwrap(), "--server", &server]).env_remove("OUTRIDER_TOKEN");
    let out = run_to_exit(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    for needle in ["401", "DATA_DIR/api-token", "--token", "OUTRIDER_TOKEN="] {
        assert!(stderr(&out).contains(needle), "mentions {needle}: {}", both(&out));
    }

    let mut cmd = outrider();
    cmd.args(["apply", "-f", file.to_str().unwrap(), "--server", &server]).env("OUTRIDER_TOKEN", TOKEN);
    let out = run_to_exit(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    let mut cmd = outrider();
    cmd.args(["get", "--server", &server]);
    let out = run_to_exit(cmd).await;
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{}", both(&out));
    let version = lines[0].find("VERSION").unwrap();
    for line in &lines[1..] {
        let cell = &line[version..];
        assert!(cell.starts_with(|c: char| c.is_ascii_digit()), "VERSION column lines up:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_policy_is_logged_when_it_applies_again() {
    let dir = TempDir::new("outrider-cli-fixed");
    let good = service("s").endpoint("127.0.0.1:9").yaml();
    let broken = good.replace("port:", "prot:");
    assert_ne!(good, broken);

    // The proxy's policy file.
    let path = dir.write("policy.yaml", &good);
    let proxy = ProxyProcess::spawn(proxy_command(&path)).await;
    dir.write("policy.yaml", &broken);
    eventually!("the proxy logs the broken file", proxy.stdout().iter().any(|l| l.contains("policy file rejected")));
    dir.write("policy.yaml", &good.replace("127.0.0.1:9", "127.0.0.1:10"));
    eventually!(
        "the proxy logs that the file is fixed",
        proxy.stdout().iter().any(|l| l.contains("policy file reloaded and applied; it was failing since"))
    );

    // The control plane's policy directory.
    let policies = TempDir::new("outrider-cli-fixed-dir");
    policies.write("s.yaml", &good);
    let cp = Captured::spawn(control_plane(
        &dir.path().join("data"),
        &["--api-token", TOKEN, "--policy-dir", policies.path().to_str().unwrap()],
    ));
    api_url(&cp).await;
    policies.write("s.yaml", &broken);
    cp.line_containing("policy directory change rejected").await;
    policies.write("s.yaml", &good.replace("127.0.0.1:9", "127.0.0.1:10"));
    let fixed = cp.line_containing("new set applied; it was failing since").await;
    assert!(fixed.contains(" UTC, "), "{fixed}");
}

/// In Kubernetes mode too: a busy webhook port (bound after xDS and API) fails the start before
/// the CA Secret, the data dir or the API token is created. Against the test API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_start_on_a_busy_webhook_port_creates_no_secret_and_no_files() {
    let Some(api) = outrider_tests::kube::ApiServer::start().await else { return };
    outrider_tests::kube_mesh::namespace(&api, outrider_tests::kube_mesh::SYSTEM).await;
    outrider_tests::kube_mesh::install_crds(&api).await;
    let secret = format!("/api/v1/namespaces/{}/secrets/outrider-ca", outrider_tests::kube_mesh::SYSTEM);
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let dir = TempDir::new("outrider-cli-busy-webhook");
    let data = dir.path().join("data");
    let mut cmd = outrider();
    cmd.args(["control-plane", "--kubernetes", "--kubeconfig"])
        .arg(api.kubeconfig())
        .args(["--xds-port", "0", "--api-port", "0", "--webhook-port", &port, "--log-format", "text", "--data-dir"])
        .arg(&data);
    let out = run_to_exit(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(text.matches("is another process using the port?").count(), 1, "said once: {}", both(&out));
    assert!(stderr(&out).contains(&format!("cannot listen on webhook 127.0.0.1:{port}")), "{}", both(&out));
    assert!(!data.exists(), "no data dir (CA key, token) for a control plane that never ran");
    let got = api.request(http::Method::GET, &secret, None).await.unwrap();
    assert_eq!(got.status, 404, "no CA Secret for a control plane that never ran");

    // The same start on a free webhook port does create them: the checks above can fail.
    drop(busy);
    let mut cmd = outrider();
    cmd.args(["control-plane", "--kubernetes", "--kubeconfig"])
        .arg(api.kubeconfig())
        .args(["--xds-port", "0", "--api-port", "0", "--webhook-port", &port, "--data-dir"])
        .arg(&data);
    let cp = Captured::spawn(cmd);
    cp.line_containing("\"listening\"").await;
    assert!(data.join("api-token").exists(), "the token of a control plane that runs");
    assert_eq!(api.request(http::Method::GET, &secret, None).await.unwrap().status, 200, "its CA Secret");
    drop(cp);
}
