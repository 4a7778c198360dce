//! The control plane in-process (its own runtime and thread, so killing it drops every stream
//! like a crashed process), an API client shared with the control plane as a child process
//! ([`crate::cp_process`]), and proxies that take their config from it.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use outrider_control_plane::server::{self, Running, ServerConfig};
use outrider_proxy::app::App;
use outrider_proxy::source::xds::{Protocol, XdsConfig};
use outrider_proxy::telemetry::log::LogHandle;
use serde_json::Value;

use crate::client::{self, Client};
use crate::harness::{self, TempDir};
use crate::wait;

/// Bearer token the test control planes use.
pub const TOKEN: &str = "test-token";

/// A control plane running in this process.
#[derive(Debug)]
pub struct ControlPlane {
    running: Option<Running>,
    pub xds: SocketAddr,
    pub api: SocketAddr,
    pub data_dir: PathBuf,
    client: ApiClient,
}

impl std::ops::Deref for ControlPlane {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

/// A client of a control plane's HTTP API, wherever the control plane runs (in this process
/// or as a child process): the API calls and the waits the tests share.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub api: SocketAddr,
    client: Client,
}

/// An API reply.
#[derive(Debug, Clone)]
pub struct ApiReply {
    pub status: StatusCode,
    pub etag: Option<String>,
    pub json: Value,
}

impl ControlPlane {
    /// Start on ephemeral loopback ports with `data_dir` as its store.
    pub fn start(data_dir: &Path) -> Self {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        Self::start_on(data_dir, any, any, None)
    }

    /// Start on the given addresses (e.g. those of a killed one), optionally watching a dir.
    pub fn start_on(data_dir: &Path, xds: SocketAddr, api: SocketAddr, policy_dir: Option<&Path>) -> Self {
        Self::start_with(data_dir, xds, api, policy_dir, server::REGISTRATION_GRACE)
    }

    /// Start with a given grace period for sidecar registrations.
    pub fn start_with(
        data_dir: &Path,
        xds: SocketAddr,
        api: SocketAddr,
        policy_dir: Option<&Path>,
        registration_grace: std::time::Duration,
    ) -> Self {
        Self::start_config(ServerConfig {
            xds,
            api,
            policy_dir: policy_dir.map(Path::to_path_buf),
            token: Some(TOKEN.into()),
            registration_grace,
            ..ServerConfig::local(data_dir)
        })
    }

    /// Start with `--insecure-registration` (sidecars without identity register their
    /// workloads over plaintext xDS) and the given registration grace period.
    pub fn start_insecure_registration(data_dir: &Path, registration_grace: std::time::Duration) -> Self {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        Self::start_config(ServerConfig {
            xds: any,
            api: any,
            token: Some(TOKEN.into()),
            registration_grace,
            insecure_registration: true,
            ..ServerConfig::local(data_dir)
        })
    }

    /// Start with a full configuration (e.g. `tls`, `workload_cert_ttl`).
    pub fn start_config(config: ServerConfig) -> Self {
        let data_dir = config.data_dir.clone();
        let running = server::start(config).unwrap_or_else(|e| panic!("the control plane did not start: {e}"));
        Self {
            xds: running.xds_addr,
            api: running.api_addr,
            client: ApiClient::new(running.api_addr),
            running: Some(running),
            data_dir,
        }
    }

    /// Stop at once, as if the process died.
    pub fn kill(&mut self) {
        if let Some(r) = self.running.take() {
            r.kill();
        }
    }

    /// Start again on the same ports and data dir.
    pub fn restart(&mut self) {
        self.kill();
        let again = Self::start_on(&self.data_dir, self.xds, self.api, None);
        *self = again;
    }

    /// `http://ADDR` of the xDS server, as proxies take it.
    pub fn xds_url(&self) -> String {
        format!("http://{}", self.xds)
    }
}

impl ApiClient {
    /// A client of the API at `api`.
    pub fn new(api: SocketAddr) -> Self {
        Self { api, client: client::cp_api(api) }
    }

    /// A request to the API; `token` adds the bearer token.
    pub async fn call(&self, method: &str, path: &str, body: &str, token: bool, if_match: Option<&str>) -> ApiReply {
        let mut req = Request::builder().method(method).uri(format!("http://cp{path}"));
        if token {
            req = req.header("authorization", format!("Bearer {TOKEN}"));
        }
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).expect("a request");
        let reply = client::send(&self.client, req).await;
        ApiReply {
            status: reply.status,
            etag: reply.header("etag").map(|s| s.trim_matches('"').to_owned()),
            json: serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
        }
    }

    /// `PUT /v1/policies` with the token; panics unless 200. Returns the resulting config
    /// version (`configVersion`).
    pub async fn apply(&self, yaml: &str) -> String {
        let r = self.call("PUT", "/v1/policies", yaml, true, None).await;
        assert_eq!(r.status, 200, "apply failed: {}", r.json);
        r.json["configVersion"].as_str().expect("a configVersion").to_owned()
    }

    /// `GET /metrics` (text).
    pub async fn metrics(&self) -> String {
        client::send(&self.client, client::get("http://cp/metrics")).await.assert_status(200).text()
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Value {
        self.call("GET", "/v1/status", "", false, None).await.json
    }

    /// `GET /v1/rollouts/NAME` (null when there is none).
    pub async fn rollout(&self, name: &str) -> Value {
        self.call("GET", &format!("/v1/rollouts/{name}"), "", false, None).await.json
    }

    /// `POST /v1/rollouts/NAME/COMMAND` with the token.
    pub async fn rollout_command(&self, name: &str, command: &str) -> ApiReply {
        self.call("POST", &format!("/v1/rollouts/{name}/{command}"), "", true, None).await
    }

    /// Poll the rollout until `done` holds of its status; returns that status.
    pub async fn wait_rollout(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let limit = wait::deadline();
        let end = tokio::time::Instant::now() + limit;
        loop {
            let status = self.rollout(name).await;
            if done(&status) {
                return status;
            }
            if tokio::time::Instant::now() >= end {
                panic!("timed out after {limit:?} waiting until {what}; rollout status:\n{status:#}");
            }
            tokio::time::sleep(wait::POLL_INTERVAL).await;
        }
    }

    /// Wait until the control plane serves policy version `version` and every one of `n`
    /// proxies has ACKed it, whichever types the change touched (nothing sent and unanswered,
    /// and the served version ACKed for at least one type).
    pub async fn wait_applied(&self, version: &str, n: usize) -> Value {
        wait::wait_for(&format!("{n} proxies to ACK the config of policy version {version}"), || async {
            let s = self.status().await;
            if s["policyVersion"] != version {
                return None;
            }
            let served = s["version"].as_str()?.to_owned();
            let proxies = s["proxies"].as_array()?;
            let types = ["Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"];
            let done = proxies.len() == n
                && proxies.iter().all(|p| {
                    types.iter().all(|t| {
                        let ts = &p["types"][*t];
                        ts["nack"].is_null() && ts["acked"] == ts["sent"]
                    }) && types.iter().any(|t| p["types"][*t]["acked"] == served.as_str())
                });
            done.then_some(s)
        })
        .await
    }

    /// `GET /v1/stats/SERVICE?QUERY`.
    pub async fn stats(&self, service: &str, query: &str) -> ApiReply {
        self.call("GET", &format!("/v1/stats/{service}?{query}"), "", false, None).await
    }

    /// Wait until `n` proxies have each sent a load report on their report stream. From then on
    /// every request they carry is counted: a proxy drops what it counted before its report
    /// stream was set up (a report covers one interval), so load started earlier can go
    /// partly uncounted.
    pub async fn wait_reporting(&self, n: u64) {
        wait::wait_until(&format!("{n} proxies to send load reports"), || async {
            self.call("GET", "/v1/stats", "", false, None).await.json["reportingProxies"] == n
        })
        .await;
    }

    /// Wait until `version` is served, `n` proxies are connected and every one has ACKed all
    /// four types (clusters at `version`).
    pub async fn wait_converged(&self, version: &str, n: usize) -> Value {
        wait::wait_for(&format!("{n} proxies to ACK config version {version}"), || async {
            let s = self.status().await;
            if s["policyVersion"] != version {
                return None;
            }
            let served = s["version"].as_str()?.to_owned();
            let proxies = s["proxies"].as_array()?;
            let done = proxies.len() == n
                && proxies.iter().all(|p| {
                    ["Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"].iter().all(|t| {
                        let ts = &p["types"][*t];
                        ts["nack"].is_null() && !ts["acked"].as_str().unwrap_or("").is_empty()
                    }) && p["types"]["Cluster"]["acked"] == served.as_str()
                });
            done.then_some(s)
        })
        .await
    }
}

/// A proxy (in-process) that takes its config from a control plane.
#[derive(Debug)]
pub struct MeshProxy {
    pub app: Option<App>,
    pub client: Client,
    pub admin: SocketAddr,
    _dir: TempDir,
}

impl MeshProxy {
    /// Start with `--xds-address` (no policy file), `--node-id node`, `--service service`.
    pub async fn start(xds_url: &str, node: &str, service: &str, protocol: Protocol) -> Self {
        Self::start_advertising(xds_url, node, service, protocol, None).await
    }

    /// Start as the sidecar of `service`, registering `advertise` (e.g. an upstream standing in
    /// for the application) as its workload.
    pub async fn start_advertising(
        xds_url: &str,
        node: &str,
        service: &str,
        protocol: Protocol,
        advertise: Option<SocketAddr>,
    ) -> Self {
        let dir = TempDir::new("outrider-mesh");
        let mut config = harness::config(dir.path().join("unused.yaml"), None);
        config.policy = None;
        config.xds = Some(XdsConfig {
            advertise,
            labels: [("version".to_owned(), "v1".to_owned())].into(),
            ..XdsConfig::new(xds_url, protocol)
        });
        config.node_id = node.to_owned();
        config.service = Some(service.to_owned());
        let app =
            App::build(config, LogHandle::disabled()).await.unwrap_or_else(|e| panic!("the proxy did not start: {e}"));
        let client = client::http1(app.addrs.outbound);
        let admin = app.addrs.admin;
        Self { app: Some(app), client, admin, _dir: dir }
    }

    /// `GET /ready` on the admin port.
    pub async fn ready(&self) -> u16 {
        let c = client::http1(self.admin);
        client::send(&c, client::get("http://admin/ready")).await.status.as_u16()
    }

    /// Wait for `/ready` 200.
    pub async fn wait_ready(&self) {
        wait::wait_until("the proxy to be ready", || async { self.ready().await == 200 }).await;
    }

    /// `GET uri` through the outbound port.
    pub async fn get(&self, uri: &str) -> client::Reply {
        client::send(&self.client, client::get(uri)).await
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// The `outrider` binary: `$OUTRIDER_BIN`, else `target/debug/outrider` next to this test
/// executable (build it with `cargo build -p outrider-control-plane --bins`).
pub fn outrider_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTRIDER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("the test executable has a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("outrider");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build -p outrider-control-plane --bins` first, or set OUTRIDER_BIN",
        bin.display()
    );
    bin
}

/// The xDS and API addresses from `outrider control-plane`'s `listening` log line.
pub fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let field = |k: &str| v.get(k).or_else(|| v.pointer(&format!("/fields/{k}")))?.as_str()?.parse().ok();
    let msg = v.get("message").or_else(|| v.pointer("/fields/message"))?.as_str()?;
    (msg == "listening").then_some(())?;
    Some((field("xds")?, field("api")?))
}
