//! The control plane as a child process (`outrider control-plane`): started on ports 0 or on
//! given ones, killed with SIGKILL (nothing flushed, nothing said to the proxies) and started
//! again on the same ports and data dir. Its API is the same [`ApiClient`] as the in-process
//! control plane's, so `apply`, `status`, `wait_converged` and the rest read the same.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::binary::{self, Captured};
use crate::control_plane::{ApiClient, TOKEN, outrider_bin, parse_listening};
use crate::wait;

/// A running `outrider control-plane`; killed (SIGKILL) if still running when dropped.
#[derive(Debug)]
pub struct CpProcess {
    process: Option<Captured>,
    pub xds: SocketAddr,
    pub api: SocketAddr,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    client: ApiClient,
}

impl std::ops::Deref for CpProcess {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

impl CpProcess {
    /// Start on free loopback ports with `data_dir` as its store and [`TOKEN`] as its API token.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[]).await
    }

    /// Start with more flags (e.g. `["--workload-cert-ttl", "60s"]`), kept across restarts.
    pub async fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let (process, xds, api) = spawn(data_dir, 0, 0, &extra).await;
        Self { process: Some(process), xds, api, data_dir: data_dir.to_path_buf(), extra, client: ApiClient::new(api) }
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().and_then(Captured::pid).expect("the control plane is running")
    }

    /// SIGKILL, and wait until the process is gone: its streams are cut without a word, as
    /// when a machine dies.
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill().await;
        }
    }

    /// Start again on the same ports and data dir (killing it first if it runs).
    pub async fn restart(&mut self) {
        self.kill().await;
        let (process, xds, api) = spawn(&self.data_dir, self.xds.port(), self.api.port(), &self.extra).await;
        assert_eq!((xds, api), (self.xds, self.api), "the restarted control plane listens on the same ports");
        self.process = Some(process);
    }

    /// `http://ADDR` of the xDS server, as proxies take it.
    pub fn xds_url(&self) -> String {
        format!("http://{}", self.xds)
    }

    /// How many file descriptors the process holds open now.
    pub fn open_fds(&self) -> usize {
        binary::open_fds(self.pid())
    }

    /// Log lines so far (JSON, one per line).
    pub fn stdout(&self) -> Vec<String> {
        self.process.as_ref().map(Captured::stdout).unwrap_or_default()
    }
}

/// `outrider control-plane` on 127.0.0.1 with the given ports (0: any free one); waits for its
/// `listening` line and returns the addresses it names.
async fn spawn(data_dir: &Path, xds_port: u16, api_port: u16, extra: &[String]) -> (Captured, SocketAddr, SocketAddr) {
    let mut cmd = tokio::process::Command::new(outrider_bin());
    cmd.args(["control-plane", "--xds-port", &xds_port.to_string(), "--api-port", &api_port.to_string()]);
    cmd.args(["--api-token", TOKEN, "--log-format", "json", "--data-dir"]).arg(data_dir).args(extra);
    let mut process = Captured::spawn(cmd);
    let (xds, api) = wait::wait_for("the control plane's \"listening\" log line", || {
        let found = process.stdout().iter().find_map(|l| parse_listening(l));
        if found.is_none()
            && let Some(status) = process.try_wait()
        {
            panic!(
                "the control plane exited ({status}) before listening\nstdout:\n{}\nstderr:\n{}",
                process.stdout().join("\n"),
                process.stderr()
            );
        }
        async move { found }
    })
    .await;
    (process, xds, api)
}
