//! Node (ambient) mode in a network-namespace test bed: two "nodes" (a namespace each, with a
//! bridge, linked by a veth pair), two workload namespaces on each, a node proxy per node and
//! the control plane (with `--tls`: the node proxies authenticate with their node
//! certificates) in a "host" namespace. Workloads talk across nodes over HBONE with their own
//! identities. Smaller beds of the same shape (see [`small_bed`]) hold the focused tests:
//! traces across node proxies, L7 policy per workload with a drain, and certificate rotation
//! per workload with a killed node proxy. Needs root, `ip`, `iptables` and `python3`; skipped
//! otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use outrider_tests::binary::{ProxyProcess, proxy_bin, run_to_exit};
use outrider_tests::control_plane::outrider_bin;
use outrider_tests::harness::TempDir;
use outrider_tests::netns::{Background, Netns, TCP_CLIENT_PY, TCP_ECHO_PY, unsupported};
use outrider_tests::wait;

const API_TOKEN: &str = "ambient-test-token";
const HTTP_VIP: &str = "10.96.0.10";
const TCP_VIP: &str = "10.96.0.11";
const GRPC_VIP: &str = "10.96.0.13";
const POOL_VIP: &str = "10.96.0.14";

/// Echoes what the app learnt: the caller's identity header, the path.
const HTTP_APP: &str = r#"
import http.server, sys, time
calls = {"n": 0}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(60)
        if self.path == "/fail" or (len(sys.argv) > 3 and sys.argv[3] == "bad"):
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if self.path == "/flaky":
            calls["n"] += 1
            if calls["n"] % 2 == 1:
                self.send_response(503)
                self.send_header("content-length", "0")
                self.end_headers()
                return
        body = ("attempt=" + str(self.headers.get("x-outrider-attempt")) + " xfcc=" + str(self.headers.get("x-forwarded-client-cert")) + " path=" + self.path + " app=" + sys.argv[2]).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_DELETE = do_GET
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// A gRPC service without protos (bytes in, bytes out): `echo.Echo/Say` answers with the request
/// and the identity the proxy told the app; a request `fail` gets NOT_FOUND.
const GRPC_APP: &str = r#"
import grpc, sys
from concurrent import futures
def say(req, ctx):
    if req == b"fail":
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    xfcc = dict(ctx.invocation_metadata()).get("x-forwarded-client-cert", "")
    return b"said:" + req + b" xfcc=" + xfcc.encode()
h = grpc.method_handlers_generic_handler("echo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
s = grpc.server(futures.ThreadPoolExecutor(4), handlers=[h])
s.add_insecure_port("0.0.0.0:" + sys.argv[1])
s.start()
print("grpc ready", flush=True)
s.wait_for_termination()
"#;

/// Calls `echo.Echo/Say` at `target` with each argument; prints `OK <answer>` or
/// `ERR <code> <details>` per call.
const GRPC_CALL: &str = r#"
import grpc, sys
ch = grpc.insecure_channel(sys.argv[1], options=[("grpc.enable_http_proxy", 0)])
say = ch.unary_unary("/echo.Echo/Say")
for msg in sys.argv[2:]:
    try:
        print("OK", say(msg.encode(), timeout=5).decode(), flush=True)
    except grpc.RpcError as e:
        print("ERR", e.code().name, e.details(), flush=True)
"#;

/// `GET url` n times; prints one status (or ERR) per line, then the last body.
const HTTP_GET: &str = r#"
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
body = ""
method = sys.argv[3] if len(sys.argv) > 3 else "GET"
for _ in range(int(sys.argv[2])):
    try:
        r = opener.open(urllib.request.Request(sys.argv[1], method=method), timeout=5)
        body = r.read().decode()
        print(r.status)
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        print(e.code)
    except Exception as e:
        print("ERR", type(e).__name__)
print(body.replace("\n", " ").strip())
"#;

/// A long-lived TCP connection: `HOST PORT GO [FIRST]`; sends `FIRST` (default `before`),
/// prints `open`, waits until the file `GO` exists, sends `after`, half-closes and prints
/// `result <answer>` (`result ERR <exception>` when the connection fails).
const TCP_LONG_LIVED: &str = r#"
import os, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall((sys.argv[4] if len(sys.argv) > 4 else "before").encode())
print("open", flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.01)
try:
    c.sendall(b"after")
    c.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        out += d
    print("result", out.decode(), flush=True)
except Exception as e:
    print("result ERR", type(e).__name__, flush=True)
"#;

/// Load: `GET URL` again and again until the file `STOP` exists; prints `status <code>` per
/// request (`marked status` once the file `MARK` exists), then
/// `done ok=<n> marked=<n> bad=<codes>`.
const HTTP_LOAD: &str = r#"
import os, sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
url, mark, stop = sys.argv[1:4]
ok, marked, bad = 0, 0, []
while not os.path.exists(stop):
    after = os.path.exists(mark)
    try:
        r = opener.open(url, timeout=5)
        r.read()
        code = str(r.status)
    except urllib.error.HTTPError as e:
        code = str(e.code)
    except Exception as e:
        code = "ERR-" + type(e).__name__
    if code == "200":
        ok += 1
        marked += after
    else:
        bad.append(code)
    print("marked status" if after else "status", code, flush=True)
print("done ok=%d marked=%d bad=%s" % (ok, marked, ",".join(bad)), flush=True)
"#;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "the command failed ({:?}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn path(ns: &Netns) -> PathBuf {
    Path::new("/var/run/netns").join(&ns.name)
}

/// A node: its namespace with a bridge `br0` at `10.81.N.1/24`, and workload namespaces at
/// `10.81.N.11`, `.12`, … behind it.
struct NodeNet {
    ns: Netns,
    workloads: Vec<(Netns, String)>,
}

/// `node add-workload` arguments for the workload in `ns` (`labels`: `KEY=VALUE`).
fn add_args(ns: &Netns, sa: &str, service: &str, labels: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["add-workload", "--netns"].map(String::from).into();
    args.push(path(ns).to_string_lossy().into_owned());
    args.extend(["--namespace", "default", "--service-account", sa, "--service", service].map(String::from));
    for l in labels {
        args.extend(["--label".to_owned(), (*l).to_owned()]);
    }
    args
}

fn node_net(n: u8, workloads: usize) -> NodeNet {
    let ns = Netns::create().unwrap();
    ip(&["-n", &ns.name, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &ns.name, "addr", "add", &format!("10.81.{n}.1/24"), "dev", "br0"]);
    ip(&["-n", &ns.name, "link", "set", "br0", "up"]);
    let fwd = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .status()
        .unwrap();
    assert!(fwd.success());
    let mut list = Vec::new();
    for i in 0..workloads {
        let w = Netns::create().unwrap();
        let host_end = format!("w{i}");
        let addr = format!("10.81.{n}.{}", 11 + i);
        ip(&["-n", &ns.name, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &w.name]);
        ip(&["-n", &ns.name, "link", "set", &host_end, "master", "br0", "up"]);
        ip(&["-n", &w.name, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&["-n", &w.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &w.name, "route", "add", "default", "via", &format!("10.81.{n}.1")]);
        list.push((w, addr));
    }
    NodeNet { ns, workloads: list }
}

fn link_nodes(a: &NodeNet, b: &NodeNet) {
    ip(&["-n", &a.ns.name, "link", "add", "peer0", "type", "veth", "peer", "name", "peer0", "netns", &b.ns.name]);
    ip(&["-n", &a.ns.name, "addr", "add", "10.81.0.1/30", "dev", "peer0"]);
    ip(&["-n", &b.ns.name, "addr", "add", "10.81.0.2/30", "dev", "peer0"]);
    ip(&["-n", &a.ns.name, "link", "set", "peer0", "up"]);
    ip(&["-n", &b.ns.name, "link", "set", "peer0", "up"]);
    ip(&["-n", &a.ns.name, "route", "add", "10.81.2.0/24", "via", "10.81.0.2"]);
    ip(&["-n", &b.ns.name, "route", "add", "10.81.1.0/24", "via", "10.81.0.1"]);
}

/// The host namespace (control plane, node proxies) reachable from the workloads at 10.81.9.1,
/// for the sidecar of the mixed-mesh check.
fn link_host(host: &Netns, a: &NodeNet, b: &NodeNet) {
    ip(&["-n", &host.name, "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", &a.ns.name]);
    ip(&["-n", &host.name, "addr", "add", "10.81.9.1/30", "dev", "up0"]);
    ip(&["-n", &a.ns.name, "addr", "add", "10.81.9.2/30", "dev", "up0"]);
    ip(&["-n", &host.name, "link", "set", "up0", "up"]);
    ip(&["-n", &a.ns.name, "link", "set", "up0", "up"]);
    ip(&["-n", &host.name, "route", "add", "10.81.0.0/16", "via", "10.81.9.2"]);
    ip(&["-n", &b.ns.name, "route", "add", "10.81.9.0/30", "via", "10.81.0.1"]);
}

fn policy() -> String {
    format!(
        "apiVersion: outrider.io/v1
kind: Service
metadata: {{name: echo-http}}
spec: {{protocol: http, port: 8080, addresses: [\"{HTTP_VIP}\"], mtls: strict}}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {{name: echo-tcp}}
spec: {{protocol: tcp, port: 9000, addresses: [\"{TCP_VIP}\"], mtls: strict}}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {{name: client}}
spec: {{protocol: http, port: 80}}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {{name: side}}
spec: {{protocol: http, port: 8081, addresses: [\"10.96.0.12\"]}}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {{name: echo-grpc}}
spec: {{protocol: grpc, port: 50051, addresses: [\"{GRPC_VIP}\"], mtls: strict}}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {{name: pool}}
spec: {{protocol: http, port: 8080, addresses: [\"{POOL_VIP}\"], mtls: strict}}
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {{name: pool}}
spec:
  service: pool
  loadBalancer: round-robin
  outlierDetection: {{consecutive5xx: 2, baseEjectionTime: 5m, maxEjectionPercent: 50}}
  circuitBreaker: {{scope: service, window: 10, minimumCalls: 10, failureRateThreshold: 100, openDuration: 1h}}
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {{name: echo-http}}
spec:
  service: echo-http
  retries: {{attempts: 2, retryOn: [5xx], backoff: {{base: 1ms, max: 2ms}}}}
---
apiVersion: outrider.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo-http-callers}}
spec:
  service: echo-http
  from: [{{identities: [\"spiffe://outrider.local/ns/default/sa/a1\", \"spiffe://outrider.local/ns/default/sa/s1\"]}}]
---
apiVersion: outrider.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo-tcp-callers}}
spec:
  service: echo-tcp
  from: [{{identities: [\"spiffe://outrider.local/ns/default/sa/a1\"]}}]
"
    )
}

struct Bed {
    dir: TempDir,
    host: Netns,
}

impl Bed {
    fn outrider(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.host.command(outrider_bin());
        cmd.args(args);
        cmd.args(["--server", "https://127.0.0.1:15014", "--token", API_TOKEN, "--ca-root"]);
        cmd.arg(self.dir.path().join("cp/root.pem"));
        cmd
    }

    async fn node_proxy(&self, name: &str) -> (ProxyProcess, PathBuf) {
        self.node_proxy_env(name, &[]).await
    }

    /// A node proxy with `env` set (tracing's `OTEL_*`).
    async fn node_proxy_env(&self, name: &str, env: &[(&str, &str)]) -> (ProxyProcess, PathBuf) {
        let sa = format!("node-{name}");
        let token =
            self.outrider(&["token", "create", "--namespace", "outrider-system", "-q", "--service-account", &sa]);
        let token = self.dir.write(&format!("{name}.token"), &ok(&run_to_exit(token).await));
        let socket = self.dir.path().join(format!("{name}.sock"));
        let mut cmd = self.host.command(proxy_bin());
        cmd.args(["--mode", "node", "--xds-address", "https://127.0.0.1:15010"]);
        cmd.args(["--ca-address", "https://127.0.0.1:15014", "--ca-root"]).arg(self.dir.path().join("cp/root.pem"));
        cmd.arg("--identity-token").arg(&token);
        cmd.args(["--namespace", "outrider-system", "--service-account", &format!("node-{name}")]);
        cmd.arg("--node-socket").arg(&socket);
        cmd.args(["--node-id", &format!("node-{name}")]);
        for flag in ["--admin-port", "--metrics-port", "--health-port"] {
            cmd.args([flag, "0"]);
        }
        cmd.args(["--log-format", "json", "--workers", "2"]);
        cmd.envs(env.iter().copied());
        (ProxyProcess::spawn(cmd).await, socket)
    }

    async fn node_cli(&self, socket: &Path, args: &[&str]) -> std::process::Output {
        let mut cmd = self.host.command(proxy_bin());
        cmd.arg("node").arg("--socket").arg(socket).args(args);
        run_to_exit(cmd).await
    }

    async fn add(&self, socket: &Path, ns: &Netns, sa: &str, service: &str) {
        let args = add_args(ns, sa, service, &[]);
        ok(&self.node_cli(socket, &args.iter().map(String::as_str).collect::<Vec<_>>()).await);
    }

    async fn wait_ready(&self, socket: &Path, n: usize) {
        wait::wait_until(&format!("{n} workloads with certificates"), || async {
            let out = self.node_cli(socket, &["list"]).await;
            let list = outrider_proxy::node::api::parse_list(&String::from_utf8_lossy(&out.stdout)).unwrap_or_default();
            list.len() == n && list.iter().all(|w| w.ready)
        })
        .await;
    }
}

async fn get(ns: &Netns, url: &str, n: usize) -> (Vec<String>, String) {
    request(ns, "GET", url, n).await
}

/// `n` requests with `method` (the app answers GET and DELETE alike): the status of each, then
/// the last body.
async fn request(ns: &Netns, method: &str, url: &str, n: usize) -> (Vec<String>, String) {
    let out = ok(&ns.run_python(HTTP_GET, &[url, &n.to_string(), method]).await);
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    let body = lines.pop().unwrap_or_default();
    (lines, body)
}

async fn tcp(ns: &Netns, host: &str, port: &str, msg: &str) -> String {
    ok(&ns.run_python(TCP_CLIENT_PY, &[host, port, msg]).await)
}

/// The Prometheus exposition of a node proxy (it runs in the host namespace).
async fn scrape(host: &Netns, addr: std::net::SocketAddr) -> String {
    const GET: &str = "import sys, urllib.request\nsys.stdout.write(urllib.request.build_opener(urllib.request.ProxyHandler({})).open(sys.argv[1], timeout=5).read().decode())";
    ok(&host.run_python(GET, &[&format!("http://127.0.0.1:{}/metrics", addr.port())]).await)
}

/// A node proxy's inbound mutual-TLS connections: (HBONE, Outrider's own). HBONE connections
/// (port 15008) count under ALPN `h2`; a workload's inbound port also accepts Outrider's mTLS,
/// which counts under Outrider's ALPN ids.
async fn inbound_tls(host: &Netns, addr: std::net::SocketAddr) -> (f64, f64) {
    let text = scrape(host, addr).await;
    let all = outrider_tests::prom::sum(&text, "outrider_tls_connections_total", &[("direction", "inbound")]);
    let hbone =
        outrider_tests::prom::sum(&text, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", "h2")]);
    (hbone, all - hbone)
}

/// The access-log lines (JSON) among a proxy's output.
fn access_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("target").and_then(|t| t.as_str()) == Some("outrider::access"))
        .collect()
}

/// A field of a JSON log line (top level or under `fields`).
fn field<'a>(line: &'a serde_json::Value, key: &str) -> &'a str {
    line.get(key).or_else(|| line.pointer(&format!("/fields/{key}"))).and_then(|v| v.as_str()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_talk_across_nodes_over_hbone_with_their_own_identities() {
    if let Some(why) = unsupported() {
        outrider_tests::skip(&format!("skipping: needs root, ip, iptables and python3 ({why})"));
        return;
    }
    let host = Netns::create().unwrap();
    // Node a has a third namespace, s1, for a workload with its own sidecar.
    let a = node_net(1, 3);
    // Node b: b1 echo-http, b2 echo-tcp, b3 and b4 the two endpoints of pool (b4 failing
    // every request), b5 echo-grpc.
    let b = node_net(2, 5);
    link_nodes(&a, &b);
    link_host(&host, &a, &b);
    let bed = Bed { dir: TempDir::new("outrider-ambient"), host };

    let mut cp = bed.host.command(outrider_bin());
    cp.args(["control-plane", "--xds-port", "15010", "--api-port", "15014", "--tls", "--api-token", API_TOKEN]);
    cp.args(["--tls-san", "10.81.9.1", "--bind", "0.0.0.0"]);
    cp.arg("--data-dir").arg(bed.dir.path().join("cp"));
    let mut cp = Background::spawn(cp);
    cp.wait_for_line("listening").await;
    let policy = bed.dir.write("policy.yaml", &policy());
    ok(&run_to_exit(bed.outrider(&["apply", "-f", policy.to_str().unwrap()])).await);

    // The apps: HTTP on b1, TCP echo on b2.
    let (b1, b1_ip) = &b.workloads[0];
    let (b2, b2_ip) = &b.workloads[1];
    let (a1, _) = &a.workloads[0];
    let (a2, _) = &a.workloads[1];
    let mut http_app = b1.python();
    http_app.args(["-c", HTTP_APP, "8080", "b1"]);
    let _http_app = Background::spawn(http_app);
    let mut tcp_app = b2.python();
    tcp_app.args(["-c", TCP_ECHO_PY, "9000", "0.0.0.0"]);
    let mut tcp_app = Background::spawn(tcp_app);
    tcp_app.wait_for_line("echo ready").await;
    let (b3, b4, b5) = (&b.workloads[2].0, &b.workloads[3].0, &b.workloads[4].0);
    let mut good = b3.python();
    good.args(["-c", HTTP_APP, "8080", "b3"]);
    let _good = Background::spawn(good);
    let mut bad = b4.python();
    bad.args(["-c", HTTP_APP, "8080", "b4", "bad"]);
    let _bad = Background::spawn(bad);
    let mut grpc_app = b5.python();
    grpc_app.args(["-c", GRPC_APP, "50051"]);
    let mut grpc_app = Background::spawn(grpc_app);
    grpc_app.wait_for_line("grpc ready").await;

    let (node_a, sock_a) = bed.node_proxy("a").await;
    let (node_b, sock_b) = bed.node_proxy("b").await;
    wait::wait_until("both node proxies have their identity", || async {
        let out = bed.node_cli(&sock_a, &["list"]).await;
        let out_b = bed.node_cli(&sock_b, &["list"]).await;
        out.status.success() && out_b.status.success()
    })
    .await;
    // Adding waits for the node's own certificate (503 before).
    wait::wait_until("node a accepts workloads", || async {
        let p = path(a1);
        let out = bed
            .node_cli(
                &sock_a,
                &[
                    "add-workload",
                    "--netns",
                    p.to_str().unwrap(),
                    "--namespace",
                    "default",
                    "--service-account",
                    "a1",
                    "--service",
                    "client",
                ],
            )
            .await;
        out.status.success()
    })
    .await;
    bed.add(&sock_a, a2, "a2", "client").await;
    wait::wait_until("node b accepts workloads", || async {
        let p = path(b1);
        let out = bed
            .node_cli(
                &sock_b,
                &[
                    "add-workload",
                    "--netns",
                    p.to_str().unwrap(),
                    "--namespace",
                    "default",
                    "--service-account",
                    "b1",
                    "--service",
                    "echo-http",
                ],
            )
            .await;
        out.status.success()
    })
    .await;
    bed.add(&sock_b, b2, "b2", "echo-tcp").await;
    bed.add(&sock_b, b3, "b3", "pool").await;
    bed.add(&sock_b, b4, "b4", "pool").await;
    bed.add(&sock_b, b5, "b5", "echo-grpc").await;
    bed.wait_ready(&sock_a, 2).await;
    bed.wait_ready(&sock_b, 5).await;

    // Adding a namespace twice is refused; a bad one names what is wrong.
    let p = path(a1);
    let again = bed
        .node_cli(
            &sock_a,
            &[
                "add-workload",
                "--netns",
                p.to_str().unwrap(),
                "--namespace",
                "default",
                "--service-account",
                "a1",
                "--service",
                "client",
            ],
        )
        .await;
    assert_eq!(again.status.code(), Some(2), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already served"));

    // HTTP across nodes: b1's app sees a1's identity (the HBONE client certificate).
    let url = format!("http://{HTTP_VIP}:8080/hello");
    let body = wait::wait_for("a1 reaches echo-http over HBONE", || async {
        let (codes, body) = get(a1, &url, 1).await;
        (codes == ["200"]).then_some(body)
    })
    .await;
    assert!(body.contains("URI=spiffe://outrider.local/ns/default/sa/a1"), "{body}");
    assert!(body.contains("By=spiffe://outrider.local/ns/default/sa/b1"), "{body}");
    assert!(body.contains("path=/hello app=b1"), "{body}");
    // It went over HBONE: node b accepted an HBONE connection (ALPN h2 on port 15008), and none
    // over Outrider's own mTLS, which b1's inbound port would also accept.
    let (hbone, other) = inbound_tls(&bed.host, node_b.addrs.metrics).await;
    assert!(hbone >= 1.0, "a1's call reached node b over HBONE");
    assert_eq!(other, 0.0, "a1's call reached node b over Outrider's mTLS, not HBONE");

    // The TrafficPolicy's retry applies in node mode: every other /flaky call is a 503 at the
    // app, a1 always gets 200 (on the second try when the first failed).
    let flaky = format!("http://{HTTP_VIP}:8080/flaky");
    let mut retried = 0;
    for _ in 0..4 {
        let (codes, body) = get(a1, &flaky, 1).await;
        assert_eq!(codes, ["200"], "{body}");
        if body.starts_with("attempt=2 ") {
            retried += 1;
        }
    }
    assert!(retried >= 2, "half of the calls needed a retry");

    // a2 is a valid identity that no policy allows: 403 from b1's side.
    let (codes, body) = get(a2, &url, 1).await;
    assert_eq!(codes, ["403"], "{body}");
    assert!(body.contains("no AuthorizationPolicy allows it"), "{body}");

    // TCP across nodes, with a half-close: allowed for a1, refused for a2.
    let echoed = tcp(a1, TCP_VIP, "9000", "ping over hbone").await;
    assert_eq!(echoed, "echo:ping over hbone");
    let refused = tcp(a2, TCP_VIP, "9000", "ping").await;
    assert!(!refused.contains("echo:"), "a2 must not reach the TCP app: {refused}");

    // Metrics and access logs name the served workload: on node a the caller (outbound), on
    // node b the callee (inbound); promtool accepts both expositions.
    use outrider_tests::prom::{promtool_check, samples, sum};
    let metrics_a = scrape(&bed.host, node_a.addrs.metrics).await;
    let metrics_b = scrape(&bed.host, node_b.addrs.metrics).await;
    promtool_check("node a's metrics", &metrics_a).await;
    promtool_check("node b's metrics", &metrics_b).await;
    let requests = |text: &str, labels: &[(&str, &str)]| sum(text, "outrider_requests_total", labels);
    let out_a1 = [("direction", "outbound"), ("service", "echo-http"), ("code", "200"), ("workload", "default/a1")];
    assert!(requests(&metrics_a, &out_a1) >= 5.0, "{metrics_a}");
    let out_a2 = [("direction", "outbound"), ("service", "echo-http"), ("code", "403"), ("workload", "default/a2")];
    assert_eq!(requests(&metrics_a, &out_a2), 1.0, "{metrics_a}");
    assert_eq!(requests(&metrics_a, &[("workload", "default/a2"), ("code", "200")]), 0.0, "{metrics_a}");
    let in_b1 = [("direction", "inbound"), ("service", "echo-http"), ("code", "200"), ("workload", "default/b1")];
    assert!(requests(&metrics_b, &in_b1) >= 5.0, "{metrics_b}");
    assert_eq!(requests(&metrics_b, &[("direction", "inbound"), ("code", "403"), ("workload", "default/b1")]), 1.0);
    assert!(
        sum(
            &metrics_b,
            "outrider_request_duration_seconds_count",
            &[("direction", "inbound"), ("workload", "default/b1")]
        ) >= 5.0,
        "{metrics_b}"
    );
    // The workload on the other side: b1 answered a1's calls (outbound, the endpoint's
    // identity); a1 and a2 called b1 (inbound, the caller's verified identity).
    let out_a1_b1 = [("direction", "outbound"), ("workload", "default/a1"), ("peer_workload", "default/b1")];
    assert!(requests(&metrics_a, &out_a1_b1) >= 5.0, "{metrics_a}");
    let in_b1_a1 = [("direction", "inbound"), ("workload", "default/b1"), ("peer_workload", "default/a1")];
    assert!(requests(&metrics_b, &in_b1_a1) >= 5.0, "{metrics_b}");
    let in_b1_a2 =
        [("direction", "inbound"), ("code", "403"), ("workload", "default/b1"), ("peer_workload", "default/a2")];
    assert_eq!(requests(&metrics_b, &in_b1_a2), 1.0, "{metrics_b}");
    let in_b1_a2_seconds = [("direction", "inbound"), ("workload", "default/b1"), ("peer_workload", "default/a2")];
    assert_eq!(sum(&metrics_b, "outrider_request_duration_seconds_count", &in_b1_a2_seconds), 1.0, "{metrics_b}");
    for (node, text) in [("a", &metrics_a), ("b", &metrics_b)] {
        for s in samples(text).iter().filter(|s| s.name == "outrider_requests_total") {
            assert!(
                s.labels.iter().any(|(k, _)| k == "workload") && s.labels.iter().any(|(k, _)| k == "peer_workload"),
                "node {node}: a request series without its workloads: {s:?}"
            );
        }
    }
    for (name, node) in [("a", &node_a), ("b", &node_b)] {
        let said = format!("{}\n{}", node.stdout().join("\n"), node.stderr());
        assert!(!said.contains("no --service"), "node {name} warns as a sidecar without --service:\n{said}");
    }
    // Access-log lines are batched (written within --access-log-flush-interval): wait for them.
    wait::wait_until("the access-log lines of nodes b and a", || async {
        let (b, a) = (access_lines(&node_b.stdout()), access_lines(&node_a.stdout()));
        b.iter().any(|l| field(l, "kind") == "http" && field(l, "workload") == "default/b1")
            && b.iter().any(|l| field(l, "kind") == "tcp" && field(l, "workload") == "default/b2")
            && a.iter().any(|l| field(l, "direction") == "outbound" && field(l, "workload") == "default/a1")
    })
    .await;
    let logs = access_lines(&node_b.stdout());
    assert!(
        logs.iter().any(|l| field(l, "kind") == "http"
            && field(l, "workload") == "default/b1"
            && field(l, "peer_identity") == "spiffe://outrider.local/ns/default/sa/a1"),
        "node b logs b1's inbound request from a1 with the workload: {logs:?}"
    );
    assert!(
        logs.iter().any(|l| field(l, "kind") == "tcp" && field(l, "workload") == "default/b2"),
        "node b logs b2's inbound connection with the workload: {logs:?}"
    );
    let logs = access_lines(&node_a.stdout());
    assert!(
        logs.iter().any(|l| field(l, "direction") == "outbound" && field(l, "workload") == "default/a1"),
        "node a logs a1's outbound request with the workload: {logs:?}"
    );

    // gRPC across nodes over HBONE: the answer, the caller's identity at the app, and a gRPC
    // error status carried back as it is.
    let grpc_target = format!("{GRPC_VIP}:50051");
    let out = wait::wait_for("a1 reaches echo-grpc over HBONE", || async {
        let out = ok(&a1.run_python(GRPC_CALL, &[&grpc_target, "hello", "fail"]).await);
        out.starts_with("OK ").then_some(out)
    })
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("OK said:hello xfcc="), "{out}");
    assert!(lines[0].contains("URI=spiffe://outrider.local/ns/default/sa/a1"), "{out}");
    assert_eq!(lines[1], "ERR NOT_FOUND no such thing", "{out}");

    // Outlier detection in node mode: pool's b4 fails every request; after two in a row a1's
    // view ejects it and every call reaches b3.
    let pool = format!("http://{POOL_VIP}:8080/hello");
    wait::wait_until("a1's calls to pool all reach b3 (b4 ejected)", || async {
        let (codes, body) = get(a1, &pool, 10).await;
        codes.iter().all(|c| c == "200") && body.ends_with("app=b3")
    })
    .await;
    let metrics_a = scrape(&bed.host, node_a.addrs.metrics).await;
    assert!(sum(&metrics_a, "outrider_outlier_ejections_total", &[("service", "pool")]) >= 1.0, "{metrics_a}");

    // The circuit breaker in node mode: ten failed calls in a row (`/fail`, a 503 from both
    // apps) open a1's breaker for pool; then a1's calls are rejected without reaching an app,
    // while a2 — another workload on the same node, with its own breakers — still gets through.
    let (codes, _) = get(a1, &format!("http://{POOL_VIP}:8080/fail"), 10).await;
    assert!(codes.iter().all(|c| c == "503"), "{codes:?}");
    let (codes, _) = get(a1, &pool, 5).await;
    assert_eq!(codes, ["503"; 5], "a1's open breaker rejects its calls");
    let metrics_a = scrape(&bed.host, node_a.addrs.metrics).await;
    let open = sum(&metrics_a, "outrider_circuit_breaker_rejections_total", &[("service", "pool"), ("reason", "open")]);
    assert_eq!(open, 5.0, "{metrics_a}");
    let (codes, body) = get(a2, &pool, 6).await;
    assert!(codes.iter().any(|c| c == "200"), "a2 is not behind a1's breaker: {codes:?} {body}");
    let metrics_a = scrape(&bed.host, node_a.addrs.metrics).await;
    assert_eq!(
        sum(&metrics_a, "outrider_circuit_breaker_rejections_total", &[("service", "pool"), ("reason", "open")]),
        5.0,
        "none of a2's calls was rejected by a breaker"
    );

    // Plaintext straight to a strict workload (from node a's own namespace, not intercepted).
    let plain = a.ns.run_python(HTTP_GET, &[&format!("http://{b1_ip}:8080/"), "1"]).await;
    let plain = String::from_utf8_lossy(&plain.stdout);
    assert!(plain.starts_with("ERR"), "plaintext to a strict workload is refused: {plain}");
    let plain_tcp = tcp(&a.ns, b2_ip, "9000", "plain").await;
    assert!(!plain_tcp.contains("echo:"), "{plain_tcp}");

    // Removing and adding a workload under load: a1's requests never fail, and a1's TCP
    // connection opened before keeps working across the changes.
    let (mark, stop, go) =
        (bed.dir.path().join("load.mark"), bed.dir.path().join("load.stop"), bed.dir.path().join("tcp.go"));
    let mut load = a1.python();
    load.args(["-c", HTTP_LOAD, &url]).arg(&mark).arg(&stop);
    let mut load = Background::spawn(load);
    let mut long = a1.python();
    long.args(["-c", TCP_LONG_LIVED, TCP_VIP, "9000"]).arg(&go);
    let mut long = Background::spawn(long);
    long.wait_for_line("open").await;
    for _ in 0..3 {
        load.wait_for_line("status").await;
    }
    let p2 = path(a2);
    ok(&bed.node_cli(&sock_a, &["remove-workload", "--netns", p2.to_str().unwrap()]).await);
    bed.add(&sock_a, a2, "a2", "client").await;
    ok(&bed.node_cli(&sock_a, &["remove-workload", "--netns", p2.to_str().unwrap()]).await);
    // The load still runs after the last change: a request started after it completes.
    std::fs::write(&mark, "").unwrap();
    load.wait_for_line("marked status").await;
    std::fs::write(&stop, "").unwrap();
    let done = load.wait_for_line("done").await;
    let ok_n: u32 = done.split_whitespace().find_map(|w| w.strip_prefix("ok=")).unwrap().parse().unwrap();
    assert!(ok_n >= 4, "{done}");
    assert!(!done.contains("marked=0 "), "{done}");
    assert!(done.ends_with(" bad="), "a request of a1 failed while a2 was removed and added: {done}");
    std::fs::write(&go, "").unwrap();
    let echoed = long.wait_for_line("result").await;
    assert_eq!(echoed, "result echo:beforeafter", "a1's TCP connection survived a2's removal and addition");
    // a2 is no longer intercepted: its connection to the VIP goes nowhere.
    let gone = bed.node_cli(&sock_a, &["list"]).await;
    let list = outrider_proxy::node::api::parse_list(&String::from_utf8_lossy(&gone.stdout)).unwrap();
    assert_eq!(list.len(), 1);

    // Mixed mesh: s1 runs its own sidecar (interception in its namespace). It calls b1 over
    // HBONE with its own identity, and a1 (ambient) calls s1's sidecar over Outrider's mTLS.
    let (s1, s1_ip) = &a.workloads[2];
    let mut side_app = s1.python();
    side_app.args(["-c", HTTP_APP, "8081", "s1"]);
    let _side_app = Background::spawn(side_app);
    let s1_token = {
        let token = bed.outrider(&["token", "create", "--namespace", "default", "-q", "--service-account", "s1"]);
        bed.dir.write("s1.token", &ok(&run_to_exit(token).await))
    };
    let mut sidecar = s1.command(proxy_bin());
    sidecar.args(["--xds-address", "https://10.81.9.1:15010", "--ca-address", "https://10.81.9.1:15014", "--ca-root"]);
    sidecar.arg(bed.dir.path().join("cp/root.pem")).arg("--identity-token").arg(&s1_token);
    sidecar.args(["--service", "side", "--service-account", "s1", "--app-port", "8081", "--socket-mark", "1337"]);
    sidecar.args(["--advertise", &format!("{s1_ip}:8081"), "--node-id", "s1-sidecar"]);
    for flag in ["--admin-port", "--metrics-port", "--health-port"] {
        sidecar.args([flag, "0"]);
    }
    sidecar.args(["--log-format", "json", "--workers", "1"]);
    let sidecar = ProxyProcess::spawn(sidecar).await;
    let mut rules = s1.command(proxy_bin());
    rules.args(["iptables", "--apply", "--proxy-mark", "1337", "--outbound-port", "15001", "--inbound-port", "15006"]);
    // The sidecar's own calls to the control plane are not intercepted.
    rules.args(["--exclude-outbound-cidrs", "10.81.9.1/32"]);
    ok(&run_to_exit(rules).await);
    let (hbone_before, _) = inbound_tls(&bed.host, node_b.addrs.metrics).await;
    let body = wait::wait_for("the sidecar of s1 reaches the ambient b1 over HBONE", || async {
        let (codes, body) = get(s1, &url, 1).await;
        (codes == ["200"]).then_some(body)
    })
    .await;
    assert!(body.contains("URI=spiffe://outrider.local/ns/default/sa/s1"), "{body}");
    // The sidecar opened its own HBONE connection to node b (s1's identity), not Outrider's mTLS.
    let (hbone, other) = inbound_tls(&bed.host, node_b.addrs.metrics).await;
    assert!(hbone > hbone_before, "the sidecar's call reached node b over HBONE");
    assert_eq!(other, 0.0, "a call reached node b over Outrider's mTLS, not HBONE");
    let body = wait::wait_for("the ambient a1 reaches the sidecar of s1", || async {
        let (codes, body) = get(a1, "http://10.96.0.12:8081/mixed", 1).await;
        (codes == ["200"]).then_some(body)
    })
    .await;
    assert!(body.contains("URI=spiffe://outrider.local/ns/default/sa/a1"), "{body}");
    assert!(body.contains("app=s1"), "{body}");
    drop(sidecar);

    // The node proxy is killed (SIGKILL) with a connection in flight, one that gets its answer
    // while the proxy lives (as a1's long-lived connection above did: it sends again,
    // half-closes, and the echo app answers everything it read). It has reached the app when
    // the proxy dies, and sends the rest only after: it must end in an error — EOF before any
    // answer, or a reset — never hang or get an answer. Then the restarted proxy serves the
    // workloads it served before (its state file, beside its socket) without the node agent
    // adding them again, and new connections work.
    let go = bed.dir.path().join("inflight.go");
    let mut inflight = a1.python();
    inflight.args(["-c", TCP_LONG_LIVED, TCP_VIP, "9000"]).arg(&go).arg("inflight");
    let mut inflight = Background::spawn(inflight);
    inflight.wait_for_line("open").await;
    tcp_app.wait_for_line("recv inflight").await;
    let mut node_a = node_a;
    node_a.signal("KILL");
    node_a.wait().await;
    drop(node_a);
    std::fs::write(&go, "").unwrap();
    let ended = inflight.wait_for_line("result").await;
    assert!(
        ended.trim_end() == "result" || ended.starts_with("result ERR "),
        "the in-flight connection fails (EOF without the answer, or a reset) when its proxy dies: {ended}"
    );
    let (node_a, sock_a) = bed.node_proxy("a").await;
    wait::wait_until("the restarted node a serves a1 again, unasked", || async { get(a1, &url, 1).await.0 == ["200"] })
        .await;
    let out = bed.node_cli(&sock_a, &["list"]).await;
    let list = outrider_proxy::node::api::parse_list(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let restored: Vec<_> = list.iter().map(|w| (w.spec.netns.clone(), w.spec.service_account.clone())).collect();
    assert_eq!(restored, [(path(a1), "a1".to_owned())], "a1 restored, a2 (removed before) not");
    let again = bed
        .node_cli(
            &sock_a,
            &[
                "add-workload",
                "--netns",
                path(a1).to_str().unwrap(),
                "--namespace",
                "default",
                "--service-account",
                "a1",
                "--service",
                "client",
            ],
        )
        .await;
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already served"),
        "a node agent replaying a1 is told it is served"
    );
    assert_eq!(tcp(a1, TCP_VIP, "9000", "after restart").await, "echo:after restart");

    drop(node_a);
    drop(node_b);
    drop(cp);
}

// ------------------------------------------------------------ focused beds

/// `GET /v1/endpoints` of the control plane (`URL ROOT TOKEN`): prints the JSON.
const ENDPOINTS: &str = r#"
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
req = urllib.request.Request(sys.argv[1], headers={"authorization": "Bearer " + sys.argv[3]})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
print(opener.open(req, timeout=5).read().decode())
"#;

/// A smaller bed for the focused tests: node a with `na` workload namespaces, node b with
/// `nb`, and the control plane (`--tls`, plus `cp_args`) in the host namespace with
/// [`policy`] and `extra` applied. Node proxies are started by the test.
struct Small {
    bed: Bed,
    a: NodeNet,
    b: NodeNet,
    _cp: Background,
}

async fn small_bed(na: usize, nb: usize, cp_args: &[&str], extra: &str) -> Small {
    let host = Netns::create().unwrap();
    let a = node_net(1, na);
    let b = node_net(2, nb);
    link_nodes(&a, &b);
    let bed = Bed { dir: TempDir::new("outrider-ambient"), host };
    let mut cp = bed.host.command(outrider_bin());
    cp.args(["control-plane", "--xds-port", "15010", "--api-port", "15014", "--tls", "--api-token", API_TOKEN]);
    cp.args(cp_args);
    cp.arg("--data-dir").arg(bed.dir.path().join("cp"));
    let mut cp = Background::spawn(cp);
    cp.wait_for_line("listening").await;
    let policy = bed.dir.write("policy.yaml", &format!("{}---\n{extra}", policy()));
    ok(&run_to_exit(bed.outrider(&["apply", "-f", policy.to_str().unwrap()])).await);
    Small { bed, a, b, _cp: cp }
}

impl Bed {
    /// Add a workload (`labels`: `KEY=VALUE`), once the node has its own certificate (503
    /// before).
    async fn join(&self, socket: &Path, ns: &Netns, sa: &str, service: &str, labels: &[&str]) {
        let args = add_args(ns, sa, service, labels);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        wait::wait_until(&format!("the node accepts workload {sa}"), || async {
            let out = self.node_cli(socket, &args).await;
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already served")
        })
        .await;
    }

    async fn list(&self, socket: &Path) -> Vec<outrider_proxy::node::WorkloadInfo> {
        let out = self.node_cli(socket, &["list"]).await;
        outrider_proxy::node::api::parse_list(&ok(&out)).unwrap()
    }

    /// The control plane's registrations of `service`: (address, expires_in).
    async fn endpoints(&self, service: &str) -> Vec<(String, Option<f64>)> {
        let root = self.dir.path().join("cp/root.pem");
        let out = self
            .host
            .run_python(ENDPOINTS, &["https://127.0.0.1:15014/v1/endpoints", root.to_str().unwrap(), API_TOKEN])
            .await;
        let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["service"] == service)
            .map(|e| (e["address"].as_str().unwrap_or("").to_owned(), e["expiresIn"].as_f64()))
            .collect()
    }
}

fn app(ns: &Netns, port: &str, name: &str) -> Background {
    let mut cmd = ns.python();
    cmd.args(["-c", HTTP_APP, port, name]);
    Background::spawn(cmd)
}

/// With tracing on (OTLP to a collector in the host namespace), one request of a1 (node a)
/// to b1 (node b, over HBONE) is one trace: node a's client span names a1 as its workload,
/// node b's server span names b1 and a1's verified identity, and is a child of node a's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_requests_spans_on_both_node_proxies_are_one_trace_with_the_workloads() {
    if let Some(why) = unsupported() {
        outrider_tests::skip(&format!("skipping: needs root, ip, iptables and python3 ({why})"));
        return;
    }
    let s = small_bed(1, 1, &[], "").await;
    let (a1, b1) = (&s.a.workloads[0].0, &s.b.workloads[0].0);
    let _app = app(b1, "8080", "b1");
    // The collector listens in the host namespace, where the node proxies run.
    let host_ns = outrider_proxy::transport::netns::Netns::open(&path(&s.bed.host)).unwrap();
    let listener = host_ns.run(|| std::net::TcpListener::bind("127.0.0.1:0")).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let collector = outrider_tests::otlp::Collector::serve(tokio::net::TcpListener::from_std(listener).unwrap());
    let otel = |name| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", name),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ]
    };
    let (_node_a, sock_a) = s.bed.node_proxy_env("a", &otel("node-a")).await;
    let (_node_b, sock_b) = s.bed.node_proxy_env("b", &otel("node-b")).await;
    s.bed.join(&sock_a, a1, "a1", "client", &[]).await;
    s.bed.join(&sock_b, b1, "b1", "echo-http", &[]).await;
    s.bed.wait_ready(&sock_a, 1).await;
    s.bed.wait_ready(&sock_b, 1).await;

    let url = format!("http://{HTTP_VIP}:8080/traced");
    wait::wait_until("a1 reaches b1", || async { get(a1, &url, 1).await.0 == ["200"] }).await;
    let server = wait::wait_for("node b's server span of a1's request", || async {
        collector.spans().into_iter().find(|g| {
            g.service == "node-b"
                && g.span.kind == outrider_tests::otlp::SERVER
                && g.attr("url.path").as_deref() == Some("/traced")
        })
    })
    .await;
    assert_eq!(server.attr("outrider.workload").as_deref(), Some("default/b1"), "{server:?}");
    assert_eq!(
        server.attr("outrider.peer_identity").as_deref(),
        Some("spiffe://outrider.local/ns/default/sa/a1"),
        "{server:?}"
    );
    let trace = server.trace();
    let parent = server.parent();
    let on_a = wait::wait_for("node a's spans of the same trace, the server span's parent among them", || async {
        let spans: Vec<_> =
            collector.spans().into_iter().filter(|g| g.service == "node-a" && g.trace() == trace).collect();
        spans.iter().any(|g| g.id() == parent).then_some(spans)
    })
    .await;
    let client = on_a
        .iter()
        .find(|g| g.span.kind == outrider_tests::otlp::CLIENT && g.attr("outrider.workload").is_some())
        .unwrap_or_else(|| panic!("node a's client span with its workload: {on_a:?}"));
    assert_eq!(client.attr("outrider.workload").as_deref(), Some("default/a1"), "{client:?}");
    assert_eq!(client.attr("peer.service").as_deref(), Some("echo-http"), "{client:?}");
    assert!(client.parent().chars().all(|c| c == '0'), "a1 sent no trace context: node a's span is the root");
}

const SHOP_VIP: &str = "10.96.0.20";

/// `shop`: two versions on node b; an abort on `/broken`, a 1 s timeout, `/v2` all to v2 and
/// the rest split half and half; `DELETE /admin/*` denied to every caller (path and method).
const SHOP: &str = "apiVersion: outrider.io/v1
kind: Service
metadata: {name: shop}
spec: {protocol: http, port: 8080, addresses: [\"10.96.0.20\"], mtls: strict}
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {name: shop}
spec:
  service: shop
  timeout: 1s
  routes:
    - name: broken
      match: {pathPrefix: /broken}
      split: [{weight: 100}]
      faults: {abort: {percent: 100, status: 418}}
    - name: canary
      match: {pathPrefix: /v2}
      split: [{subset: {version: v2}, weight: 100}]
    - name: main
      match: {pathPrefix: /}
      split: [{subset: {version: v1}, weight: 50}, {subset: {version: v2}, weight: 50}]
---
apiVersion: outrider.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-no-admin-deletes}
spec:
  service: shop
  action: deny
  from: [{identities: [\"*\"]}]
  to: [{paths: [\"/admin/*\"], methods: [DELETE]}]
";

/// A TrafficPolicy's fault (abort), timeout and weighted split apply to an ambient workload's
/// calls, on its node; and a node proxy that drains (SIGTERM) withdraws its workloads'
/// endpoints at once (the registration grace is an hour: only the drain can explain it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_timeouts_and_splits_apply_per_workload_and_a_draining_node_withdraws_its_workloads() {
    if let Some(why) = unsupported() {
        outrider_tests::skip(&format!("skipping: needs root, ip, iptables and python3 ({why})"));
        return;
    }
    let s = small_bed(1, 2, &["--registration-grace", "1h"], SHOP).await;
    let a1 = &s.a.workloads[0].0;
    let ((b1, b1_ip), (b2, b2_ip)) = (&s.b.workloads[0], &s.b.workloads[1]);
    let _v1 = app(b1, "8080", "v1");
    let _v2 = app(b2, "8080", "v2");
    let (node_a, sock_a) = s.bed.node_proxy("a").await;
    let (mut node_b, sock_b) = s.bed.node_proxy("b").await;
    s.bed.join(&sock_a, a1, "a1", "client", &[]).await;
    s.bed.join(&sock_b, b1, "b1", "shop", &["version=v1"]).await;
    s.bed.join(&sock_b, b2, "b2", "shop", &["version=v2"]).await;
    s.bed.wait_ready(&sock_a, 1).await;
    s.bed.wait_ready(&sock_b, 2).await;
    let url = |p: &str| format!("http://{SHOP_VIP}:8080{p}");
    wait::wait_until("a1 reaches both versions of shop", || async {
        let (codes, _) = get(a1, &url("/v2"), 1).await;
        let (codes1, body) = get(a1, &url("/"), 1).await;
        codes == ["200"] && codes1 == ["200"] && body.contains("app=")
    })
    .await;

    // The split: /v2 always reaches v2; the rest reaches both.
    for _ in 0..5 {
        let (codes, body) = get(a1, &url("/v2"), 1).await;
        assert_eq!(codes, ["200"], "{body}");
        assert!(body.ends_with("app=v2"), "/v2 goes to v2 only: {body}");
    }
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    wait::wait_until("a1's calls to / reach v1 and v2", || async {
        let (codes, body) = get(a1, &url("/"), 1).await;
        assert_eq!(codes, ["200"], "{body}");
        let mut seen = seen.lock().unwrap();
        seen.insert(body.rsplit("app=").next().unwrap_or("").to_owned());
        seen.len() == 2
    })
    .await;

    // The fault: /broken is answered 418 on node a, without calling the service.
    let (codes, _) = get(a1, &url("/broken"), 3).await;
    assert_eq!(codes, ["418"; 3]);
    let metrics_a = scrape(&s.bed.host, node_a.addrs.metrics).await;
    use outrider_tests::prom::sum;
    assert_eq!(sum(&metrics_a, "outrider_faults_injected_total", &[("service", "shop"), ("kind", "abort")]), 3.0);
    let metrics_b = scrape(&s.bed.host, node_b.addrs.metrics).await;
    assert_eq!(
        sum(&metrics_b, "outrider_requests_total", &[("direction", "inbound"), ("route", "broken")]),
        0.0,
        "{metrics_b}"
    );

    // Authorization by path and method, at the destination's node: DELETE on /admin/* is
    // denied (to both versions), GET on it and DELETE elsewhere are served.
    let (codes, body) = request(a1, "DELETE", &url("/admin/users"), 4).await;
    assert_eq!(codes, ["403"; 4], "{body}");
    let (codes, body) = get(a1, &url("/admin/users"), 2).await;
    assert_eq!(codes, ["200"; 2], "GET is not denied: {body}");
    let (codes, body) = request(a1, "DELETE", &url("/v2/cart"), 1).await;
    assert_eq!(codes, ["200"], "DELETE outside /admin is not denied: {body}");
    let metrics_b = scrape(&s.bed.host, node_b.addrs.metrics).await;
    let denied = |w: &str| {
        sum(&metrics_b, "outrider_requests_total", &[("direction", "inbound"), ("code", "403"), ("workload", w)])
    };
    assert_eq!(denied("default/b1") + denied("default/b2"), 4.0, "{metrics_b}");

    // The timeout: the app takes a minute on /slow; a1 gets 504 from its node's timeout.
    let (codes, body) = get(a1, &url("/slow"), 1).await;
    assert_eq!(codes, ["504"], "{body}");
    let metrics_a = scrape(&s.bed.host, node_a.addrs.metrics).await;
    assert!(
        sum(&metrics_a, "outrider_requests_total", &[("workload", "default/a1"), ("code", "504")]) >= 1.0,
        "{metrics_a}"
    );

    // Node b drains: both of its workloads leave shop's endpoints at once, not after the grace.
    let mut registered = s.bed.endpoints("shop").await;
    registered.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(registered, [(format!("{b1_ip}:0"), None), (format!("{b2_ip}:0"), None)]);
    node_b.signal("TERM");
    wait::wait_until("node b's workloads withdrawn", || async { s.bed.endpoints("shop").await.is_empty() }).await;
    node_b.wait().await;
    drop(node_a);
}

/// Workload certificates of 10 s: each workload's is renewed on its own (its own serials, its
/// own schedule) while a1 and a2 call b1 without a failure; then node b's proxy is killed
/// (SIGKILL, not restarted) and the control plane withdraws b1's endpoint after the
/// registration grace (2 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workload_certificate_rotates_on_its_own_and_a_killed_nodes_workloads_leave_after_the_grace() {
    if let Some(why) = unsupported() {
        outrider_tests::skip(&format!("skipping: needs root, ip, iptables and python3 ({why})"));
        return;
    }
    const OPEN: &str = "apiVersion: outrider.io/v1
kind: Service
metadata: {name: open}
spec: {protocol: http, port: 8080, addresses: [\"10.96.0.21\"], mtls: strict}
";
    let s = small_bed(2, 1, &["--workload-cert-ttl", "10s", "--registration-grace", "2s"], OPEN).await;
    let ((a1, _), (a2, _), (b1, b1_ip)) = (&s.a.workloads[0], &s.a.workloads[1], &s.b.workloads[0]);
    let _app = app(b1, "8080", "b1");
    let (_node_a, sock_a) = s.bed.node_proxy("a").await;
    let (mut node_b, sock_b) = s.bed.node_proxy("b").await;
    s.bed.join(&sock_a, a1, "a1", "client", &[]).await;
    s.bed.join(&sock_a, a2, "a2", "client", &[]).await;
    s.bed.join(&sock_b, b1, "b1", "open", &[]).await;
    s.bed.wait_ready(&sock_a, 2).await;
    s.bed.wait_ready(&sock_b, 1).await;
    let url = "http://10.96.0.21:8080/";
    wait::wait_until("a1 and a2 reach b1", || async {
        get(a1, url, 1).await.0 == ["200"] && get(a2, url, 1).await.0 == ["200"]
    })
    .await;

    // Load from a1 and a2 while every certificate turns over twice.
    let (mark, stop) = (s.bed.dir.path().join("load.mark"), s.bed.dir.path().join("load.stop"));
    std::fs::write(&mark, "").unwrap();
    let mut loads = Vec::new();
    for w in [a1, a2] {
        let mut load = w.python();
        load.args(["-c", HTTP_LOAD, url]).arg(&mark).arg(&stop);
        loads.push(Background::spawn(load));
    }
    // workload → the serials it has had, in order; (workload, installs, rotates_at) seen.
    let seen = std::sync::Mutex::new((
        std::collections::BTreeMap::<String, Vec<String>>::new(),
        std::collections::BTreeSet::<(String, u64, u64, u64)>::new(),
    ));
    wait::wait_until("every workload's certificate renewed twice", || async {
        let mut all = s.bed.list(&sock_a).await;
        all.extend(s.bed.list(&sock_b).await);
        let mut seen = seen.lock().unwrap();
        let (serials, schedules) = &mut *seen;
        for w in &all {
            let Some(c) = &w.certificate else { continue };
            let mine = serials.entry(w.spec.service_account.clone()).or_default();
            if mine.last() != Some(&c.serial) {
                mine.push(c.serial.clone());
            }
            schedules.insert((w.spec.service_account.clone(), c.installs, c.rotates_at_unix_ms, c.not_after_unix));
        }
        serials.len() == 3 && serials.values().all(|v| v.len() >= 3)
    })
    .await;
    let (serials, schedules) = seen.into_inner().unwrap();
    std::fs::write(&stop, "").unwrap();
    for mut load in loads {
        let done = load.wait_for_line("done").await;
        assert!(done.ends_with(" bad="), "a request failed while the certificates rotated: {done}");
        let ok_n: u32 = done.split_whitespace().find_map(|w| w.strip_prefix("ok=")).unwrap().parse().unwrap();
        assert!(ok_n >= 1, "{done}");
    }
    // No serial is shared: each workload got certificates of its own.
    let every: Vec<&String> = serials.values().flatten().collect();
    let distinct: std::collections::BTreeSet<_> = every.iter().collect();
    assert_eq!(distinct.len(), every.len(), "{serials:?}");
    // Each renewal is on the workload's own schedule: a1's and a2's certificates (one node,
    // one control plane, joined together) do not share their renewal times. (In milliseconds:
    // in whole seconds, a 10 s certificate's renewal falls in one of about four seconds, and
    // three renewals of both matched about one run in ten.)
    let times = |sa: &str| -> std::collections::BTreeSet<(u64, u64)> {
        schedules.iter().filter(|(w, ..)| w == sa).map(|(_, _, r, n)| (*r, *n)).collect()
    };
    assert_ne!(times("a1"), times("a2"), "{schedules:?}");
    // A new connection after the rotations handshakes with the new certificates.
    assert_eq!(get(a1, url, 1).await.0, ["200"]);

    // Node b's proxy dies and is not restarted: b1 stays registered for the grace (its stream
    // broke; the grace is counting), then leaves.
    assert_eq!(s.bed.endpoints("open").await, [(format!("{b1_ip}:0"), None)], "registered, no grace counting");
    node_b.signal("KILL");
    node_b.wait().await;
    wait::wait_until("b1's endpoint withdrawn after the grace", || async { s.bed.endpoints("open").await.is_empty() })
        .await;
}
