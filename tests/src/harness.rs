//! The proxy run in-process: a policy file in a temp dir, `App::build` on the
//! test's runtime, every port on 127.0.0.1:0, and clients aimed at it.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use outrider_proxy::app::{App, BoundAddrs};
use outrider_proxy::config::ProxyConfig;
use outrider_proxy::state::Store;
use outrider_proxy::telemetry::log::LogHandle;

use crate::client::{self, Client, Reply};
use crate::wait;

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let name = format!("{prefix}-{}-{}-{nanos}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `name` in the dir atomically (temp file + rename), so a watcher never
    /// reads half a file. Returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).expect("write a temp file");
        std::fs::rename(&tmp, &path).expect("rename into place");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// File name of the policy inside the harness's temp dir.
pub const POLICY_FILE: &str = "policy.yaml";

/// A proxy running in this process.
#[derive(Debug)]
pub struct ProxyHarness {
    app: Option<App>,
    pub addrs: BoundAddrs,
    pub store: Arc<Store>,
    pub policy_path: PathBuf,
    client: Client,
    dir: TempDir,
}

/// The config the harness uses; `app_port` is where inbound traffic is delivered.
pub fn config(policy: PathBuf, app_port: Option<u16>) -> ProxyConfig {
    ProxyConfig { policy: Some(policy), app_port, ..ProxyConfig::local("test") }
}

impl ProxyHarness {
    /// Start a proxy with this policy. Must run in a multi-threaded tokio runtime.
    pub async fn start(policy: &str) -> Self {
        Self::start_with(policy, None).await
    }

    /// Start a proxy that delivers inbound traffic to 127.0.0.1:`app_port`.
    pub async fn start_with(policy: &str, app_port: Option<u16>) -> Self {
        Self::start_configured(policy, |c| c.app_port = app_port).await
    }

    /// Start a proxy with the harness's config changed by `edit` (tracing, access log, ...).
    pub async fn start_configured(policy: &str, edit: impl FnOnce(&mut ProxyConfig)) -> Self {
        let dir = TempDir::new("outrider-test");
        let policy_path = dir.write(POLICY_FILE, policy);
        let mut cfg = config(policy_path.clone(), None);
        edit(&mut cfg);
        let app = App::build(cfg, LogHandle::disabled())
            .await
            .unwrap_or_else(|e| panic!("the proxy did not start: {e}\npolicy:\n{policy}"));
        let addrs = app.addrs;
        let store = app.store.clone();
        let h = Self { app: Some(app), addrs, store, policy_path, client: client::http1(addrs.outbound), dir };
        // An answer from the admin server means the control runtime is running, and with
        // it the policy watcher, which was spawned before it. Without this a rewrite made
        // right after start can be missed: the watcher takes its baseline when it first
        // runs, not when the file was loaded (reported as a proxy bug).
        h.admin("GET", "/ready").await.assert_status(200);
        h
    }

    /// The pooled HTTP/1.1 client to the outbound port.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A new HTTP/2 (h2c) client to the outbound port.
    pub fn h2_client(&self) -> Client {
        client::h2(self.addrs.outbound)
    }

    /// Send through the outbound port (HTTP/1.1).
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        client::send(&self.client, req).await
    }

    /// `GET uri` through the outbound port, e.g. `http://echo:8080/x`.
    pub async fn get(&self, uri: &str) -> Reply {
        self.send(client::get(uri)).await
    }

    /// A request to the admin port (`/ready`, `/config_dump`, ...).
    pub async fn admin(&self, method: &str, path: &str) -> Reply {
        let c = client::http1(self.addrs.admin);
        client::send(&c, client::request(method, &format!("http://admin{path}"), Bytes::new())).await
    }

    /// `/metrics` from the metrics port.
    pub async fn metrics(&self) -> String {
        let c = client::http1(self.addrs.metrics);
        client::send(&c, client::get("http://metrics/metrics")).await.assert_status(200).text()
    }

    /// Replace the policy file without waiting for anything.
    ///
    /// The proxy notices changes by (modification time, length). A same-length
    /// rewrite within one file-system timestamp tick would look unchanged, so in
    /// that case the new file's mtime is moved one second on (reported as a proxy
    /// weakness: a content hash would not need this).
    pub fn write_policy(&self, policy: &str) {
        let fingerprint = |m: std::fs::Metadata| m.modified().ok().map(|t| (t, m.len()));
        let before = std::fs::metadata(&self.policy_path).ok().and_then(fingerprint);
        let path = self.dir.write(POLICY_FILE, policy);
        let after = std::fs::metadata(&path).ok().and_then(fingerprint);
        if let (Some((t, _)), true) = (before, before == after) {
            let f = std::fs::File::options().write(true).open(&path).expect("open the policy file");
            f.set_modified(t + Duration::from_secs(1)).expect("set the policy file's mtime");
        }
    }

    /// Replace the policy file and wait until the proxy has applied a new config.
    pub async fn reload(&self, policy: &str) {
        let mut changed = self.store.subscribe();
        changed.mark_unchanged();
        self.write_policy(policy);
        wait::within("the proxy to apply the rewritten policy file", changed.changed())
            .await
            .expect("the store is alive");
    }

    /// Drain and stop the proxy.
    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}
