//! Transparent interception in a network namespace: iptables REDIRECT sends an
//! application's connection to a virtual IP through the proxy (HTTP and opaque TCP).
//! Needs root, `ip`, `iptables` and `python3`; skipped otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::binary::{ProxyProcess, ephemeral_args, proxy_bin};
use outrider_tests::harness::TempDir;
use outrider_tests::netns::{Background, Netns, unsupported};
use outrider_tests::policy::{docs, service};
use outrider_tests::{prom, wait};

const WEB_PORT: &str = "18080";
/// Not 127.0.0.1, which the rules exempt anyway: the proxy's own connection to this
/// endpoint is only left alone because of its socket mark (else it would loop back).
const WEB_IP: &str = "127.0.0.2";
const ECHO_PORT: &str = "19000";
const MARK: &str = "1337";
const TRAILER: &str = "<end of echo>";

const ECHO_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print("echo ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.sendall(sys.argv[2].encode())
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    c.close()
"#;

const HTTP_GET: &str = r#"
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
r = opener.open(sys.argv[1], timeout=10)
sys.stdout.write(str(r.status) + "\n" + r.read().decode())
"#;

const TCP_CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(sys.argv[3].encode())
c.shutdown(socket.SHUT_WR)
out = b""
while True:
    d = c.recv(65536)
    if not d:
        break
    out += d
sys.stdout.write(out.decode())
"#;

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "the command failed ({:?}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh namespace, or `None` after saying why the test is skipped (not root, no `ip`, ...).
fn namespace_or_skip() -> Option<Netns> {
    if let Some(why) = unsupported() {
        outrider_tests::skip(&format!("skipping: needs root, ip and iptables ({why})"));
        return None;
    }
    match Netns::create() {
        Ok(ns) => Some(ns),
        Err(e) => {
            outrider_tests::skip(&format!(
                "skipping: needs root, ip and iptables (cannot create a network namespace: {e})"
            ));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_interception_in_a_namespace() {
    // Declared first so it is dropped last, after every process inside it is killed.
    let Some(ns) = namespace_or_skip() else { return };
    let dir = TempDir::new("outrider-netns");
    let page = "hello from the python server in the namespace\n";
    std::fs::write(dir.path().join("hello.txt"), page).unwrap();

    let mut web = ns.python();
    web.args(["-m", "http.server", WEB_PORT, "--bind", WEB_IP, "--directory"]).arg(dir.path());
    let mut web = Background::spawn(web);
    web.wait_for_line("Serving HTTP").await;
    let mut echo = ns.python();
    echo.args(["-c", ECHO_SERVER, ECHO_PORT, TRAILER]);
    let mut echo = Background::spawn(echo);
    echo.wait_for_line("echo ready").await;

    let policy = dir.write(
        "policy.yaml",
        &docs(&[
            service("web").port(80).address("127.100.0.5").endpoint(format!("{WEB_IP}:{WEB_PORT}")).yaml(),
            service("echo-tcp")
                .protocol("tcp")
                .port(9000)
                .address("127.100.0.6")
                .endpoint(format!("127.0.0.1:{ECHO_PORT}"))
                .yaml(),
        ]),
    );
    let mut cmd = ns.command(proxy_bin());
    cmd.args(ephemeral_args(&policy)).args(["--socket-mark", MARK]);
    let proxy = ProxyProcess::spawn(cmd).await;

    let mut rules = ns.command(proxy_bin());
    rules.args(["iptables", "--apply", "--proxy-mark", MARK]);
    rules.args(["--outbound-port", &proxy.addrs.outbound.port().to_string()]);
    rules.args(["--inbound-port", &proxy.addrs.inbound.port().to_string()]);
    let out = outrider_tests::binary::run_to_exit(rules).await;
    assert!(out.status.success(), "installing the rules failed: {}", String::from_utf8_lossy(&out.stderr));

    let admin_metrics = format!("http://127.0.0.1:{}/metrics", proxy.addrs.admin.port());
    let metrics = || async { stdout(&ns.run_python(HTTP_GET, &[&admin_metrics]).await) };

    // HTTP to the virtual IP, on port 80: intercepted, routed by original destination.
    let got = stdout(&ns.run_python(HTTP_GET, &["http://127.100.0.5/hello.txt"]).await);
    assert_eq!(got, format!("200\n{page}"), "the python server's page, through the proxy");
    let m = metrics().await;
    assert!(
        prom::sum(&m, "outrider_requests_total", &[("direction", "outbound"), ("service", "web"), ("code", "200")])
            >= 1.0,
        "the proxy counted the intercepted request:\n{m}"
    );

    // Opaque TCP to the other virtual IP, with a half-close.
    let got = stdout(&ns.run_python(TCP_CLIENT, &["127.100.0.6", "9000", "hello over intercepted tcp"]).await);
    assert_eq!(got, format!("hello over intercepted tcp{TRAILER}"));
    wait::wait_until("the proxy counts the intercepted TCP bytes", || async {
        prom::sum(&metrics().await, "outrider_tcp_bytes_total", &[("direction", "outbound")]) > 0.0
    })
    .await;

    drop(proxy);
    drop(echo);
    drop(web);
    drop(ns);
}

const CP_API: &str = "127.0.0.1:15014";
const API_TOKEN: &str = "netns-test-token";

/// Opaque TCP from an intercepted app to a meshed endpoint travels inside mutual TLS: the
/// endpoint's sidecar is `strict`, so a plaintext connection would be refused; both proxies got
/// their certificates from a control plane's CA in the same namespace (standalone policy files
/// plus `--identity-token`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_tcp_reaches_a_strict_meshed_endpoint_over_mtls() {
    let Some(ns) = namespace_or_skip() else { return };
    let dir = TempDir::new("outrider-netns-mtls");
    let mut echo = ns.python();
    echo.args(["-c", ECHO_SERVER, ECHO_PORT, TRAILER]);
    let mut echo = Background::spawn(echo);
    echo.wait_for_line("echo ready").await;

    // The control plane (its CA) inside the namespace, and a join token per workload.
    let mut cp = ns.command(outrider_tests::control_plane::outrider_bin());
    cp.args(["control-plane", "--xds-port", "15010", "--api-port", "15014", "--api-token", API_TOKEN, "--data-dir"])
        .arg(dir.path().join("cp"));
    let mut cp = Background::spawn(cp);
    cp.wait_for_line("listening").await;
    let token = |sa: &'static str| {
        let mut cmd = ns.command(outrider_tests::control_plane::outrider_bin());
        cmd.args(["token", "create", "--namespace", "default", "--service-account", sa, "-q"]);
        cmd.args(["--server", &format!("http://{CP_API}"), "--token", API_TOKEN]);
        cmd
    };
    let db_token = dir.write("db.token", &stdout(&outrider_tests::binary::run_to_exit(token("db")).await));
    let app_token = dir.write("app.token", &stdout(&outrider_tests::binary::run_to_exit(token("app")).await));

    // The endpoint's sidecar: strict, delivering to the echo server.
    let db = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: db}\nspec: {protocol: tcp, port: 9001, addresses: [\"127.100.0.7\"], mtls: strict}\n";
    let server_policy = dir.write("server.yaml", db);
    let mut cmd = ns.command(proxy_bin());
    cmd.args(ephemeral_args(&server_policy)).args(["--socket-mark", MARK, "--service", "db", "--app-port", ECHO_PORT]);
    cmd.args(["--ca-address", &format!("http://{CP_API}"), "--identity-token"]).arg(&db_token);
    let server = ProxyProcess::spawn(cmd).await;
    let server_inbound = server.addrs.inbound.port();

    // The caller's sidecar, intercepting: the db endpoint is the server sidecar, meshed.
    let client_policy = dir.write(
        "client.yaml",
        &format!(
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: db}}\nspec:\n  protocol: tcp\n  port: 9001\n  \
             addresses: [\"127.100.0.7\"]\n  endpoints: [{{address: \"127.0.0.1:{server_inbound}\", meshed: true, \
             identity: \"spiffe://outrider.local/ns/default/sa/db\"}}]\n"
        ),
    );
    let mut cmd = ns.command(proxy_bin());
    cmd.args(ephemeral_args(&client_policy)).args(["--socket-mark", MARK]);
    cmd.args(["--ca-address", &format!("http://{CP_API}"), "--identity-token"]).arg(&app_token);
    cmd.args(["--service-account", "app"]);
    let client = ProxyProcess::spawn(cmd).await;
    for p in [&server, &client] {
        let ready = format!("http://127.0.0.1:{}/ready", p.addrs.admin.port());
        wait::wait_until("the sidecar has its certificate", || async {
            ns.run_python(HTTP_GET, &[&ready]).await.status.success()
        })
        .await;
    }
    let mut rules = ns.command(proxy_bin());
    rules.args(["iptables", "--apply", "--proxy-mark", MARK]);
    rules.args(["--outbound-port", &client.addrs.outbound.port().to_string()]);
    rules.args(["--inbound-port", &client.addrs.inbound.port().to_string()]);
    let out = outrider_tests::binary::run_to_exit(rules).await;
    assert!(out.status.success(), "installing the rules failed: {}", String::from_utf8_lossy(&out.stderr));

    let got = stdout(&ns.run_python(TCP_CLIENT, &["127.100.0.7", "9001", "hello over mtls"]).await);
    assert_eq!(got, format!("hello over mtls{TRAILER}"));
    let server_metrics = format!("http://127.0.0.1:{}/metrics", server.addrs.admin.port());
    let m = stdout(&ns.run_python(HTTP_GET, &[&server_metrics]).await);
    assert_eq!(
        prom::sum(&m, "outrider_tls_connections_total", &[("direction", "inbound"), ("alpn", "outrider-tcp/1")]),
        1.0,
        "the hop between the sidecars was mTLS:\n{m}"
    );
    let client_metrics = format!("http://127.0.0.1:{}/metrics", client.addrs.admin.port());
    let m = stdout(&ns.run_python(HTTP_GET, &[&client_metrics]).await);
    assert_eq!(
        prom::sum(&m, "outrider_tls_connections_total", &[("direction", "outbound"), ("alpn", "outrider-tcp/1")]),
        1.0,
        "{m}"
    );

    drop(client);
    drop(server);
    drop(cp);
    drop(echo);
    drop(ns);
}

/// A TCP echo server on `HOST PORT` (IPv6 or IPv4), answering with what it got plus a trailer.
const ECHO_SERVER_ON: &str = r#"
import socket, sys
host, port, trailer = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
print("echo ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.sendall(trailer.encode())
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    c.close()
"#;

/// `ip -n NS ...`, which must succeed.
fn ip(ns: &Netns, args: &[&str]) {
    let out = std::process::Command::new("ip").args(["-n", &ns.name]).args(args).output().unwrap();
    assert!(out.status.success(), "ip -n {} {}: {}", ns.name, args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// IPv6 cannot bypass the proxy: with the rules installed, an IPv6 caller from another namespace
/// reaching the workload's port lands on the proxy's inbound listener, where the service's
/// strict mode refuses its plaintext; and the workload's own IPv6 connection out goes through
/// the proxy's outbound listener on [::1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_traffic_is_intercepted_like_ipv4() {
    let Some(workload) = namespace_or_skip() else { return };
    let Some(peer) = namespace_or_skip() else { return };
    if !std::path::Path::new("/proc/net/if_inet6").exists() {
        outrider_tests::skip("skipping: the kernel has no IPv6");
        return;
    }
    // A veth pair between the two, with an IPv4 and an IPv6 address on each side.
    let out = std::process::Command::new("ip")
        .args([
            "link",
            "add",
            "orw",
            "netns",
            &workload.name,
            "type",
            "veth",
            "peer",
            "name",
            "orp",
            "netns",
            &peer.name,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "veth: {}", String::from_utf8_lossy(&out.stderr));
    for (ns, dev, v4, v6) in
        [(&workload, "orw", "10.99.0.1/24", "fd00:99::1/64"), (&peer, "orp", "10.99.0.2/24", "fd00:99::2/64")]
    {
        ip(ns, &["addr", "add", v4, "dev", dev]);
        ip(ns, &["-6", "addr", "add", v6, "dev", dev, "nodad"]);
        ip(ns, &["link", "set", dev, "up"]);
    }
    let dir = TempDir::new("outrider-netns-v6");
    std::fs::write(dir.path().join("hello.txt"), "the app\n").unwrap();

    // The app listens on every address, IPv6 and IPv4; an echo server in the peer namespace.
    let mut app = workload.python();
    app.args(["-m", "http.server", WEB_PORT, "--bind", "::", "--directory"]).arg(dir.path());
    let mut app = Background::spawn(app);
    app.wait_for_line("Serving HTTP").await;
    let mut echo = peer.python();
    echo.args(["-c", ECHO_SERVER_ON, "fd00:99::2", ECHO_PORT, TRAILER]);
    let mut echo = Background::spawn(echo);
    echo.wait_for_line("echo ready").await;

    // Its sidecar: strict mTLS for the app's service, inbound on every address (IPv6 too).
    let policy = dir.write(
        "policy.yaml",
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: web}\nspec: {port: 18080, mtls: strict}\n",
    );
    let mut cmd = workload.command(proxy_bin());
    cmd.args(["--policy"]).arg(&policy);
    for flag in ["--outbound-port", "--inbound-port", "--admin-port", "--metrics-port", "--health-port"] {
        cmd.args([flag, "0"]);
    }
    cmd.args(["--inbound-bind", "::", "--service", "web", "--app-port", WEB_PORT, "--socket-mark", MARK]);
    cmd.args(["--log-format", "json", "--workers", "1"]);
    let proxy = ProxyProcess::spawn(cmd).await;
    let mut rules = workload.command(proxy_bin());
    rules.args(["iptables", "--apply", "--proxy-mark", MARK]);
    rules.args(["--outbound-port", &proxy.addrs.outbound.port().to_string()]);
    rules.args(["--inbound-port", &proxy.addrs.inbound.port().to_string()]);
    let out = outrider_tests::binary::run_to_exit(rules).await;
    assert!(out.status.success(), "installing the rules failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ip6tables"), "{}", String::from_utf8_lossy(&out.stderr));

    let admin_metrics = format!("http://127.0.0.1:{}/metrics", proxy.addrs.admin.port());
    let metrics = || async { stdout(&workload.run_python(HTTP_GET, &[&admin_metrics]).await) };

    // Inbound, plaintext over IPv6 (and IPv4): refused by the strict sidecar, never the app's page.
    for url in ["http://[fd00:99::1]:18080/hello.txt", "http://10.99.0.1:18080/hello.txt"] {
        let out = peer.run_python(HTTP_GET, &[url]).await;
        assert!(
            !out.status.success(),
            "{url} reached the app around the strict sidecar: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let m = metrics().await;
    assert_eq!(prom::sum(&m, "outrider_plaintext_refused_total", &[("service", "web")]), 2.0, "{m}");

    // Outbound over IPv6: through the proxy's [::1] listener (passthrough to the peer).
    let got = stdout(&workload.run_python(TCP_CLIENT, &["fd00:99::2", ECHO_PORT, "hello over ipv6"]).await);
    assert_eq!(got, format!("hello over ipv6{TRAILER}"));
    wait::wait_until("the proxy counts the IPv6 connection out", || async {
        prom::sum(&metrics().await, "outrider_tcp_connections_total", &[("direction", "outbound")]) >= 1.0
    })
    .await;

    drop(proxy);
    drop(echo);
    drop(app);
    drop(peer);
    drop(workload);
}
