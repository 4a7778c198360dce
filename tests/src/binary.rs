//! The `outrider-proxy` binary as a child process: locating it, starting it with
//! every port on 0, and reading the addresses from its `listening` log line.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::client::{self, Client};
use crate::wait;

/// The proxy binary: `$OUTRIDER_PROXY_BIN`, else `target/debug/outrider-proxy`
/// next to this test executable (`target/debug/deps/NAME-HASH`).
pub fn proxy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTRIDER_PROXY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("the test executable has a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("outrider-proxy");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build -p outrider-proxy --bins` first, or set OUTRIDER_PROXY_BIN",
        bin.display()
    );
    bin
}

/// The flags that put every port on 0 and every listener on 127.0.0.1.
pub fn ephemeral_args(policy: &Path) -> Vec<String> {
    let mut args = vec!["--policy".to_string(), policy.display().to_string()];
    args.extend(ephemeral_ports());
    args.extend(["--workers", "2"].map(String::from));
    args
}

/// Every port on 0, every listener on 127.0.0.1, JSON logs.
fn ephemeral_ports() -> Vec<String> {
    let mut args = Vec::new();
    for flag in ["--outbound-port", "--inbound-port", "--admin-port", "--metrics-port", "--health-port"] {
        args.push(flag.into());
        args.push("0".into());
    }
    args.extend(["--inbound-bind", "127.0.0.1", "--log-format", "json"].map(String::from));
    args
}

/// `outrider-proxy` taking its config from the control plane at `xds_url` (`http://ADDR`), as
/// node `node` and the sidecar of `service`, every port on 0, one worker. Flags in `extra`
/// replace the defaults of the same name (`--inbound-port`, `--workers`, ...).
pub fn xds_proxy_command(xds_url: &str, node: &str, service: &str, extra: &[String]) -> Command {
    let mut args: Vec<String> =
        ["--xds-address", xds_url, "--node-id", node, "--service", service, "--workers", "1"].map(String::from).into();
    args.extend(ephemeral_ports());
    let mut cmd = Command::new(proxy_bin());
    let mut kept = Vec::new();
    for pair in args.chunks(2) {
        if !extra.contains(&pair[0]) {
            kept.extend_from_slice(pair);
        }
    }
    cmd.args(kept).args(extra);
    cmd
}

/// `outrider-proxy` with [`ephemeral_args`].
pub fn proxy_command(policy: &Path) -> Command {
    let mut cmd = Command::new(proxy_bin());
    cmd.args(ephemeral_args(policy));
    cmd
}

/// Run a command to its exit (within the test deadline), capturing its output.
pub async fn run_to_exit(cmd: Command) -> Output {
    run_to_exit_after(cmd, std::time::Duration::ZERO).await
}

/// Run a command that works for `runs_for` by design (a demo with `--duration`) to its exit,
/// within that time plus the test deadline, capturing its output.
pub async fn run_to_exit_after(mut cmd: Command, runs_for: std::time::Duration) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let limit = runs_for.saturating_add(wait::deadline());
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.expect("wait for the process"),
        Err(_) => panic!("timed out after {limit:?} waiting for {cmd:?} to exit"),
    }
}

/// Addresses from the `listening` line.
#[derive(Clone, Copy, Debug)]
pub struct ListenAddrs {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub health: SocketAddr,
}

/// A running proxy process; killed (SIGKILL) if still running when dropped.
#[derive(Debug)]
pub struct ProxyProcess {
    child: Child,
    pub pid: u32,
    pub addrs: ListenAddrs,
    /// A pooled HTTP/1.1 client to the outbound listener.
    pub client: Client,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

fn parse_listening(line: &str) -> Option<ListenAddrs> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let msg = v.get("message").or_else(|| v.pointer("/fields/message"))?;
    if msg.as_str()? != "listening" {
        return None;
    }
    let field = |k: &str| -> Option<SocketAddr> {
        v.get(k).or_else(|| v.pointer(&format!("/fields/{k}")))?.as_str()?.parse().ok()
    };
    Some(ListenAddrs {
        outbound: field("outbound")?,
        inbound: field("inbound")?,
        admin: field("admin")?,
        metrics: field("metrics")?,
        health: field("health")?,
    })
}

impl ProxyProcess {
    /// Spawn `cmd` (the proxy, possibly behind a wrapper such as `ip netns exec`)
    /// and wait for its `listening` line.
    pub async fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = child.id().expect("the child has a pid");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = oneshot::channel();
        let out = child.stdout.take().expect("piped stdout");
        let lines = stdout.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut reader = BufReader::new(out).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(addrs) = parse_listening(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addrs);
                }
                lines.lock().unwrap().push(line);
            }
        });
        drain_stderr(child.stderr.take().expect("piped stderr"), stderr.clone());
        let addrs = match wait::within("the proxy's \"listening\" log line", rx).await {
            Ok(a) => a,
            Err(_) => {
                let status = child.wait().await;
                panic!(
                    "the proxy exited ({status:?}) before logging \"listening\"\nstdout:\n{}\nstderr:\n{}",
                    stdout.lock().unwrap().join("\n"),
                    stderr.lock().unwrap()
                );
            }
        };
        Self { child, pid, client: client::http1(addrs.outbound), addrs, stdout, stderr }
    }

    /// `GET uri` through the outbound port.
    pub async fn get(&self, uri: &str) -> client::Reply {
        client::send(&self.client, client::get(uri)).await
    }

    /// The status of `GET /ready` on the admin port.
    pub async fn ready(&self) -> u16 {
        client::send(&client::http1(self.addrs.admin), client::get("http://admin/ready")).await.status.as_u16()
    }

    /// Wait for `/ready` 200 (config, and the certificate when it has an identity).
    pub async fn wait_ready(&self) {
        wait::wait_until("the proxy process to be ready", || async { self.ready().await == 200 }).await;
    }

    /// `GET /config_dump` on the admin port.
    pub async fn config_dump(&self) -> serde_json::Value {
        let r = client::send(&client::http1(self.addrs.admin), client::get("http://admin/config_dump")).await;
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).expect("config_dump is JSON")
    }

    /// How many file descriptors the process holds open now (sockets, files, pipes).
    pub fn open_fds(&self) -> usize {
        open_fds(self.pid)
    }

    /// Send a signal by name (`TERM`, `HUP`, ...) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// Wait for the process to exit (within the deadline).
    pub async fn wait(&mut self) -> ExitStatus {
        wait::within("the proxy to exit", self.child.wait()).await.expect("wait for the proxy")
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("query the proxy's status")
    }

    /// Log lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// Any of our binaries as a child process, its stdout lines and stderr collected as it runs;
/// killed (SIGKILL) if still running when dropped.
#[derive(Debug)]
pub struct Captured {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Captured {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let lines = stdout.clone();
        let mut reader = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        drain_stderr(child.stderr.take().expect("piped stderr"), stderr.clone());
        Self { child, stdout, stderr }
    }

    /// The first stdout line containing `needle` (waiting for it within the deadline).
    pub async fn line_containing(&self, needle: &str) -> String {
        let stdout = self.stdout.clone();
        wait::wait_for(&format!("a stdout line containing {needle:?}"), || {
            let found = stdout.lock().unwrap().iter().find(|l| l.contains(needle)).cloned();
            async move { found }
        })
        .await
    }

    /// Stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("query the process's status")
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) -> ExitStatus {
        wait::within("the killed process to exit", self.child.kill()).await.expect("kill the process");
        wait::within("the killed process to exit", self.child.wait()).await.expect("wait for the process")
    }
}

/// How many file descriptors process `pid` holds open (`/proc/PID/fd`).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}")).count()
}

/// Collect a child's stderr into `into` as it comes (for the failure messages).
fn drain_stderr(mut err: tokio::process::ChildStderr, into: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf).await {
            if n == 0 {
                break;
            }
            into.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}
