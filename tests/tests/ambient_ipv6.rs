//! Node (ambient) mode for IPv6 workloads: two "nodes" (a namespace each with a bridge, linked
//! by a veth pair, IPv6 only), one workload on each, a node proxy per node and the control plane
//! in a "host" namespace (as in `ambient.rs`, smaller). A workload calls the other across nodes
//! by an IPv6 service address, over HBONE (`CONNECT [ip]:port`) with its own identity, for HTTP
//! and TCP; plaintext IPv6 to the strict workload is refused, not let past the proxy. Needs
//! root, `ip`, `iptables`, `ip6tables` and `python3`; skipped otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use outrider_tests::binary::{ProxyProcess, proxy_bin, run_to_exit};
use outrider_tests::control_plane::outrider_bin;
use outrider_tests::harness::TempDir;
use outrider_tests::netns::{Background, Netns, TCP_CLIENT_PY, TCP_ECHO_PY, unsupported};
use outrider_tests::wait;

const API_TOKEN: &str = "ambient6-test-token";
const HTTP_VIP: &str = "fd96::10";
const TCP_VIP: &str = "fd96::11";

/// Answers the caller's identity header (IPv6 socket).
const HTTP_APP: &str = r#"
import http.server, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("xfcc=" + str(self.headers.get("x-forwarded-client-cert")) + " path=" + self.path).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
S(("::", int(sys.argv[1])), H).serve_forever()
"#;

/// `GET url`: prints the status (or ERR) on one line, then the body.
const HTTP_GET: &str = r#"
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    r = opener.open(sys.argv[1], timeout=5)
    print(r.status)
    print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
    print(e.read().decode())
except Exception as e:
    print("ERR", type(e).__name__)
"#;

fn policy() -> String {
    format!(
        "apiVersion: outrider.io/v1
kind: Service
metadata: {{name: echo6-http}}
spec: {{protocol: http, port: 8080, addresses: [\"{HTTP_VIP}\"], mtls: strict}}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {{name: echo6-tcp}}
spec: {{protocol: tcp, port: 9000, addresses: [\"{TCP_VIP}\"], mtls: strict}}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {{name: client6}}
spec: {{protocol: http, port: 80}}
"
    )
}

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

fn sysctl(ns: &Netns, setting: &str) {
    let out = std::process::Command::new("ip").args(["netns", "exec", &ns.name, "sysctl", "-qw", setting]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "sysctl {setting}: {}", String::from_utf8_lossy(&out.stderr));
}

fn path(ns: &Netns) -> PathBuf {
    Path::new("/var/run/netns").join(&ns.name)
}

/// A namespace on `node`'s bridge at `addr`/64 (no IPv4 address), default route via the bridge.
fn attach(node: &Netns, n: u8, name: &str, addr: &str) -> Netns {
    let w = Netns::create().unwrap();
    // No duplicate address detection: addresses are usable at once.
    sysctl(&w, "net.ipv6.conf.all.accept_dad=0");
    sysctl(&w, "net.ipv6.conf.default.accept_dad=0");
    ip(&["-n", &node.name, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", &w.name]);
    ip(&["-n", &node.name, "link", "set", name, "master", "br0", "up"]);
    ip(&["-n", &w.name, "addr", "add", &format!("{addr}/64"), "dev", "eth0", "nodad"]);
    ip(&["-n", &w.name, "link", "set", "eth0", "up"]);
    ip(&["-n", &w.name, "-6", "route", "add", "default", "via", &format!("fd81:{n}::1")]);
    w
}

/// A node namespace with a bridge at `fd81:N::1/64`, forwarding IPv6.
fn node(n: u8) -> Netns {
    let ns = Netns::create().unwrap();
    sysctl(&ns, "net.ipv6.conf.all.forwarding=1");
    sysctl(&ns, "net.ipv6.conf.all.accept_dad=0");
    sysctl(&ns, "net.ipv6.conf.default.accept_dad=0");
    ip(&["-n", &ns.name, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &ns.name, "addr", "add", &format!("fd81:{n}::1/64"), "dev", "br0", "nodad"]);
    ip(&["-n", &ns.name, "link", "set", "br0", "up"]);
    ns
}

fn link_nodes(a: &Netns, b: &Netns) {
    ip(&["-n", &a.name, "link", "add", "peer0", "type", "veth", "peer", "name", "peer0", "netns", &b.name]);
    ip(&["-n", &a.name, "addr", "add", "fd81::1/64", "dev", "peer0", "nodad"]);
    ip(&["-n", &b.name, "addr", "add", "fd81::2/64", "dev", "peer0", "nodad"]);
    ip(&["-n", &a.name, "link", "set", "peer0", "up"]);
    ip(&["-n", &b.name, "link", "set", "peer0", "up"]);
    ip(&["-n", &a.name, "-6", "route", "add", "fd81:2::/64", "via", "fd81::2"]);
    ip(&["-n", &b.name, "-6", "route", "add", "fd81:1::/64", "via", "fd81::1"]);
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
        let sa = format!("node-{name}");
        let token =
            self.outrider(&["token", "create", "--namespace", "outrider-system", "-q", "--service-account", &sa]);
        let token = self.dir.write(&format!("{name}.token"), &ok(&run_to_exit(token).await));
        let socket = self.dir.path().join(format!("{name}.sock"));
        let mut cmd = self.host.command(proxy_bin());
        cmd.args(["--mode", "node", "--xds-address", "https://127.0.0.1:15010"]);
        cmd.args(["--ca-address", "https://127.0.0.1:15014", "--ca-root"]).arg(self.dir.path().join("cp/root.pem"));
        cmd.arg("--identity-token").arg(&token);
        cmd.args(["--namespace", "outrider-system", "--service-account", &sa]);
        cmd.arg("--node-socket").arg(&socket);
        cmd.args(["--node-id", &sa]);
        for flag in ["--admin-port", "--metrics-port", "--health-port"] {
            cmd.args([flag, "0"]);
        }
        cmd.args(["--log-format", "json", "--workers", "1"]);
        (ProxyProcess::spawn(cmd).await, socket)
    }

    async fn node_cli(&self, socket: &Path, args: &[&str]) -> std::process::Output {
        let mut cmd = self.host.command(proxy_bin());
        cmd.arg("node").arg("--socket").arg(socket).args(args);
        run_to_exit(cmd).await
    }

    /// Add the workload of `ns` (address found in the namespace), once the node can.
    async fn add(&self, socket: &Path, ns: &Netns, sa: &str, service: &str) {
        let p = path(ns);
        let args = ["add-workload", "--netns", p.to_str().unwrap(), "--namespace", "default", "--service-account", sa];
        wait::wait_until(&format!("{sa} added"), || async {
            self.node_cli(socket, &[&args[..], &["--service", service]].concat()).await.status.success()
        })
        .await;
    }

    async fn ready(&self, socket: &Path, n: usize) -> Vec<outrider_proxy::node::WorkloadInfo> {
        wait::wait_for(&format!("{n} workloads with certificates"), || async {
            let out = self.node_cli(socket, &["list"]).await;
            let list = outrider_proxy::node::api::parse_list(&String::from_utf8_lossy(&out.stdout)).unwrap_or_default();
            (list.len() == n && list.iter().all(|w| w.ready)).then_some(list)
        })
        .await
    }
}

async fn get(ns: &Netns, url: &str) -> (String, String) {
    let out = ok(&ns.run_python(HTTP_GET, &[url]).await);
    let (status, body) = out.split_once('\n').unwrap_or((out.as_str(), ""));
    (status.trim().to_owned(), body.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_workloads_talk_across_nodes_over_hbone_and_plaintext_ipv6_is_refused() {
    if let Some(why) = unsupported() {
        outrider_tests::skip(&format!("skipping: needs root, ip, iptables and python3 ({why})"));
        return;
    }
    if std::process::Command::new("ip6tables").arg("-L").output().map(|o| !o.status.success()).unwrap_or(true)
        || !Path::new("/proc/net/if_inet6").exists()
    {
        outrider_tests::skip("skipping: needs ip6tables and IPv6");
        return;
    }
    let host = Netns::create().unwrap();
    let (na, nb) = (node(1), node(2));
    link_nodes(&na, &nb);
    let a1 = attach(&na, 1, "a1", "fd81:1::11");
    let b1 = attach(&nb, 2, "b1", "fd81:2::11");
    let b2 = attach(&nb, 2, "b2", "fd81:2::12");
    // Not meshed: a namespace on node b's bridge calling b1 directly.
    let stranger = attach(&nb, 2, "x1", "fd81:2::99");
    let bed = Bed { dir: TempDir::new("outrider-ambient6"), host };

    let mut cp = bed.host.command(outrider_bin());
    cp.args(["control-plane", "--xds-port", "15010", "--api-port", "15014", "--tls", "--api-token", API_TOKEN]);
    cp.arg("--data-dir").arg(bed.dir.path().join("cp"));
    let mut cp = Background::spawn(cp);
    cp.wait_for_line("listening").await;
    let policy = bed.dir.write("policy.yaml", &policy());
    ok(&run_to_exit(bed.outrider(&["apply", "-f", policy.to_str().unwrap()])).await);

    let mut http_app = b1.python();
    http_app.args(["-c", HTTP_APP, "8080"]);
    let _http_app = Background::spawn(http_app);
    let mut tcp_app = b2.python();
    tcp_app.args(["-c", TCP_ECHO_PY, "9000", "::"]);
    let mut tcp_app = Background::spawn(tcp_app);
    tcp_app.wait_for_line("echo ready").await;
    // The app answers plaintext IPv6 before any proxy serves b1 (the bed itself works).
    let direct = wait::wait_for("the app answers on IPv6", || async {
        let (status, body) = get(&stranger, "http://[fd81:2::11]:8080/direct").await;
        (status == "200").then_some(body)
    })
    .await;
    assert!(direct.contains("xfcc=None"), "{direct}");
    let out = ok(&stranger.run_python(TCP_CLIENT_PY, &["fd81:2::12", "9000", "direct"]).await);
    assert_eq!(out, "echo:direct", "the TCP app answers plaintext IPv6 before any proxy serves b2");

    let (_node_a, sock_a) = bed.node_proxy("a").await;
    let (_node_b, sock_b) = bed.node_proxy("b").await;
    bed.add(&sock_a, &a1, "a1", "client6").await;
    bed.add(&sock_b, &b1, "b1", "echo6-http").await;
    bed.add(&sock_b, &b2, "b2", "echo6-tcp").await;
    let list = bed.ready(&sock_b, 2).await;
    let ips: Vec<String> = list.iter().map(|w| w.ip.to_string()).collect();
    assert!(ips.contains(&"fd81:2::11".to_owned()), "the namespace's IPv6 address is found: {ips:?}");
    bed.ready(&sock_a, 1).await;

    // HTTP across nodes by the IPv6 service address: b1's app sees a1's identity (the HBONE
    // client certificate; the service is strict, so nothing else would be let in).
    let url = format!("http://[{HTTP_VIP}]:8080/hello");
    let body = wait::wait_for("a1 reaches echo6-http over HBONE on IPv6", || async {
        let (status, body) = get(&a1, &url).await;
        (status == "200").then_some(body)
    })
    .await;
    assert!(body.contains("URI=spiffe://outrider.local/ns/default/sa/a1"), "{body}");
    assert!(body.contains("By=spiffe://outrider.local/ns/default/sa/b1"), "{body}");
    assert!(body.contains("path=/hello"), "{body}");

    // TCP across nodes: the raw tunnel (`CONNECT [fd81:2::12]:9000`), with a half-close.
    let echoed = wait::wait_for("a1 reaches echo6-tcp over HBONE on IPv6", || async {
        let out = ok(&a1.run_python(TCP_CLIENT_PY, &[TCP_VIP, "9000", "ping over hbone"]).await);
        out.starts_with("echo:").then_some(out)
    })
    .await;
    assert_eq!(echoed, "echo:ping over hbone");

    // Plaintext IPv6 straight to the strict workload: the ip6tables rules take it to the node
    // proxy's inbound listener, which refuses it (without them it would reach the app).
    let (status, body) = get(&stranger, "http://[fd81:2::11]:8080/plain").await;
    assert_ne!(status, "200", "plaintext IPv6 reached a strict workload: {body}");
    let out = ok(&stranger.run_python(TCP_CLIENT_PY, &["fd81:2::12", "9000", "plain"]).await);
    assert!(!out.contains("echo:"), "plaintext IPv6 TCP reached a strict workload: {out}");
}
