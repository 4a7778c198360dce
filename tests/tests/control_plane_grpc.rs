//! gRPC proxyless clients against the control plane: Python grpcio and Node's
//! `@grpc/grpc-js-xds`, each with target `xds:///echo` and a bootstrap pointing at the control
//! plane, resolve the service over xDS, ACK every resource (no NACK in `/v1/status`), balance
//! over both endpoints with the default policy (no `loadBalancer`: least_request, which neither
//! client knows, then round_robin) and follow weighted subsets (100/0, then 0/100).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Stdio;

use outrider_tests::control_plane::ControlPlane;
use outrider_tests::harness::TempDir;
use outrider_tests::{policy, skip, wait};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const CALLS: u32 = 40;
/// What a proxyless client asks for (its routes come inline in the API listener, no RDS).
const TYPES: [&str; 3] = ["Listener", "Cluster", "ClusterLoadAssignment"];

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// grpcio (C-core).
    Python,
    /// @grpc/grpc-js-xds.
    Node,
}

impl Kind {
    fn node_id(self) -> &'static str {
        match self {
            Kind::Python => "grpc-python",
            Kind::Node => "grpc-node",
        }
    }

    /// The command, or why it cannot run here.
    fn command(self) -> Result<Command, String> {
        let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
        match self {
            Kind::Python => {
                let ok = std::process::Command::new("python3")
                    .args(["-c", "import grpc"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    return Err("skipping: python3 with grpcio is needed (pip install grpcio)".into());
                }
                let mut c = Command::new("python3");
                c.arg(format!("{scripts}/grpc_xds.py"));
                Ok(c)
            }
            Kind::Node => {
                let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/node_modules/@grpc/grpc-js-xds");
                let node =
                    std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
                if !node || !std::path::Path::new(modules).exists() {
                    return Err("skipping: node and tests/node_modules are needed (npm ci --prefix tests)".into());
                }
                let mut c = Command::new("node");
                c.arg(format!("{scripts}/grpc_xds.js"));
                Ok(c)
            }
        }
    }
}

/// A running client script: its two servers' ports and its command channel.
struct Client {
    kind: Kind,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    ports: Vec<u64>,
    dir: TempDir,
}

impl Client {
    /// Starts the script against `cp`; `None` (after saying why) when it cannot run here.
    async fn start(kind: Kind, cp: &ControlPlane) -> Option<Self> {
        let mut command = match kind.command() {
            Ok(c) => c,
            Err(why) => {
                skip(&why);
                return None;
            }
        };
        let dir = TempDir::new("cp-grpc");
        let bootstrap = dir.write(
            "bootstrap.json",
            &serde_json::json!({
                "xds_servers": [{
                    "server_uri": cp.xds.to_string(),
                    "channel_creds": [{"type": "insecure"}],
                    "server_features": ["xds_v3"],
                }],
                "node": {"id": kind.node_id(), "cluster": "grpc-client", "locality": {}},
            })
            .to_string(),
        );
        // stderr to a file: a pipe nobody reads would block a client that logs a lot.
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = command
            .arg("echo")
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("run the gRPC client");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Loading grpc-js-xds takes a while on a busy machine.
        let first = tokio::time::timeout(wait::deadline() * 3, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the {kind:?} gRPC client printed no ports"))
            .unwrap();
        let mut client = Self { kind, child, stdin, lines, ports: Vec::new(), dir };
        let Some(first) = first else { client.failed().await };
        let ports: serde_json::Value = serde_json::from_str(&first).unwrap();
        client.ports = ports["ports"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
        Some(client)
    }

    async fn failed(mut self) -> ! {
        let _ = wait::within("the gRPC client to exit", self.child.wait()).await;
        panic!("the {:?} gRPC client failed:\n{}", self.kind, self.stderr());
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Runs a command; the answers of its calls by server name.
    async fn command(&mut self, line: &str) -> BTreeMap<String, u64> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        // The client bounds its own waits (one deadline for the change, one per call).
        let limit = wait::deadline() * 3;
        let result = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!("the {:?} gRPC client did not answer {line:?} within {limit:?}:\n{}", self.kind, self.stderr())
            })
            .unwrap();
        let Some(result) = result else {
            let _ = wait::within("the gRPC client to exit", self.child.wait()).await;
            panic!("the {:?} gRPC client failed on {line:?}:\n{}", self.kind, self.stderr());
        };
        let answers: serde_json::Value = serde_json::from_str(&result).unwrap();
        answers["answers"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
    }

    /// The client is connected to the control plane and has ACKed every type it asked for,
    /// NACKed none.
    async fn assert_acked_everything(&self, cp: &ControlPlane) {
        let status = cp.status().await;
        let me = status["proxies"].as_array().unwrap().iter().find(|p| p["nodeId"] == self.kind.node_id()).cloned();
        let me = me.unwrap_or_else(|| panic!("the {:?} client is not listed in /v1/status: {status}", self.kind));
        for t in TYPES {
            assert!(me["types"][t]["nack"].is_null(), "{:?} NACKed a {t}: {me}", self.kind);
            assert!(me["types"]["RouteConfiguration"]["nack"].is_null(), "{:?} NACKed routes: {me}", self.kind);
            assert!(!me["types"][t]["acked"].as_str().unwrap_or("").is_empty(), "{:?} ACKed no {t}: {me}", self.kind);
        }
    }

    async fn done(mut self) {
        let _ = self.stdin.write_all(b"done\n").await;
        let _ = wait::within("the gRPC client to exit", self.child.wait()).await;
    }
}

fn echo(ports: &[u64], labeled: bool) -> String {
    let service = policy::service("echo").protocol("grpc").port(50051);
    let service = if labeled {
        service
            .endpoint_labeled(format!("127.0.0.1:{}", ports[0]), &[("version", "v1")])
            .endpoint_labeled(format!("127.0.0.1:{}", ports[1]), &[("version", "v2")])
    } else {
        service.endpoint(format!("127.0.0.1:{}", ports[0])).endpoint(format!("127.0.0.1:{}", ports[1]))
    };
    service.yaml()
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: echo}}\nspec:\n  service: echo\n  routes:\n    - split: [{{subset: {{version: v1}}, weight: {v1}}}, {{subset: {{version: v2}}, weight: {v2}}}]\n"
    )
}

/// The default policy (no `loadBalancer`): the client accepts the clusters and spreads its
/// calls over both endpoints.
async fn default_policy(kind: Kind) {
    let data = TempDir::new("cp-grpc");
    let cp = ControlPlane::start(data.path());
    let Some(mut client) = Client::start(kind, &cp).await else { return };
    cp.apply(&echo(&client.ports, false)).await;

    let answers = client.command(&format!("spread {CALLS}")).await;
    let (one, two) = (answers.get("one").copied().unwrap_or(0), answers.get("two").copied().unwrap_or(0));
    assert_eq!(one + two, u64::from(CALLS), "{answers:?}");
    // Round robin over two ready endpoints alternates; a quarter each is a bound it cannot miss.
    assert!(one >= u64::from(CALLS / 4) && two >= u64::from(CALLS / 4), "not balanced over both: {answers:?}");
    client.assert_acked_everything(&cp).await;
    client.done().await;
}

/// Weighted subsets: 100/0 sends every call to v1; 0/100 (applied while the client runs)
/// every call to v2.
async fn weighted_subsets(kind: Kind) {
    let data = TempDir::new("cp-grpc");
    let cp = ControlPlane::start(data.path());
    let Some(mut client) = Client::start(kind, &cp).await else { return };
    cp.apply(&policy::docs(&[echo(&client.ports, true), split(100, 0)])).await;

    let answers = client.command(&format!("until one {CALLS}")).await;
    assert_eq!(answers, BTreeMap::from([("one".to_owned(), u64::from(CALLS))]), "100/0 to v1");
    client.assert_acked_everything(&cp).await;

    cp.apply(&policy::docs(&[echo(&client.ports, true), split(0, 100)])).await;
    // Once v2 has answered, the new route is in force: every call after it goes to v2.
    let answers = client.command(&format!("until two {CALLS}")).await;
    assert_eq!(answers, BTreeMap::from([("two".to_owned(), u64::from(CALLS))]), "0/100 to v2");
    client.assert_acked_everything(&cp).await;
    client.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_accepts_the_default_policy_and_balances_over_both_endpoints() {
    default_policy(Kind::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_follows_weighted_subsets() {
    weighted_subsets(Kind::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_xds_accepts_the_default_policy_and_balances_over_both_endpoints() {
    default_policy(Kind::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_xds_follows_weighted_subsets() {
    weighted_subsets(Kind::Node).await;
}
