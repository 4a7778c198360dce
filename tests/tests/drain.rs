//! Graceful drain of the real binary on SIGTERM: in-flight requests finish, new
//! connections are refused, the process exits 0 — also configured as the injector configures a
//! pod's sidecar.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::binary::{ProxyProcess, proxy_command};
use outrider_tests::client::{self, h1_get};
use outrider_tests::harness::TempDir;
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream::{self, Gate};
use outrider_tests::{client::Reply, eventually, wait};
use tokio::net::TcpStream;

const IN_FLIGHT: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0() {
    let gate = Gate::new();
    let slow = upstream::http1().name("slow").gate(&gate).start().await;
    let dir = TempDir::new("outrider-drain");
    let policy = dir.write("policy.yaml", &docs(&[service("slow").endpoint(slow.addr).yaml()]));
    let mut cmd = proxy_command(&policy);
    cmd.args(["--drain-timeout", "60s"]);
    let mut proxy = ProxyProcess::spawn(cmd).await;
    let outbound = proxy.addrs.outbound;

    // Requests held at the upstream, each on its own connection.
    let in_flight: Vec<tokio::task::JoinHandle<Reply>> = (0..IN_FLIGHT)
        .map(|i| {
            tokio::spawn(async move {
                let mut conn = client::h1_connection(outbound).await;
                client::send_h1(&mut conn, h1_get("slow:8080", &format!("/held/{i}"))).await
            })
        })
        .collect();
    eventually!("every request has reached the upstream", slow.request_count() == IN_FLIGHT);

    proxy.signal("TERM");
    eventually!("the outbound port refuses new connections", TcpStream::connect(outbound).await.is_err());
    let admin = client::http1(proxy.addrs.admin);
    let ready = client::send(&admin, client::get("http://admin/ready")).await;
    assert_eq!(ready.status, 503, "draining is not ready: {}", ready.text());
    assert!(proxy.try_wait().is_none(), "the proxy waits for in-flight requests before exiting");
    assert!(in_flight.iter().all(|t| !t.is_finished()), "the held requests are still in flight");

    gate.open();
    for (i, t) in in_flight.into_iter().enumerate() {
        let r = wait::within("an in-flight request", t).await.expect("the request task");
        r.assert_status(200);
        assert_eq!(r.echo().path, format!("/held/{i}"));
    }
    let status = proxy.wait().await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}; stderr:\n{}", proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_bounds_shutdown() {
    let gate = Gate::new();
    let stuck = upstream::http1().name("stuck").gate(&gate).start().await;
    let dir = TempDir::new("outrider-drain");
    let policy = dir.write("policy.yaml", &docs(&[service("stuck").endpoint(stuck.addr).yaml()]));
    let mut cmd = proxy_command(&policy);
    cmd.args(["--drain-timeout", "200ms"]);
    let mut proxy = ProxyProcess::spawn(cmd).await;
    let outbound = proxy.addrs.outbound;
    let held = tokio::spawn(async move {
        let mut conn = client::h1_connection(outbound).await;
        conn.send_request(h1_get("stuck:8080", "/never")).await
    });
    eventually!("the request has reached the upstream", stuck.request_count() == 1);

    proxy.signal("TERM");
    // The upstream never answers; the proxy must still exit once the deadline passes.
    let status = proxy.wait().await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}; stderr:\n{}", proxy.stderr());
    let res = wait::within("the cut request to fail", held).await.unwrap();
    assert!(res.is_err(), "the request cut by the deadline fails: {res:?}");
    drop(gate);
}

/// The sidecar as the injector configures it (`outrider inject`: the webhook's code): a native
/// sidecar (Kubernetes sends it SIGTERM after the app's containers have stopped), its drain
/// timeout from the environment the injected container carries, within the pod's grace period;
/// on SIGTERM with that environment it stops being ready, finishes in-flight requests and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_sidecar_drains_on_sigterm_with_the_environment_it_was_given() {
    let dir = TempDir::new("outrider-drain-injected");
    let app = dir.write(
        "app.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews, namespace: shop, labels: {app: reviews}}\nspec:\n  terminationGracePeriodSeconds: 90\n  containers: [{name: app, image: example.org/reviews:1}]\n",
    );
    let root = dir.write("root.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    let out = std::process::Command::new(outrider_tests::control_plane::outrider_bin())
        .args(["inject", "-f"])
        .arg(&app)
        .arg("--ca-root")
        .arg(&root)
        .args(["--proxy-drain-timeout", "60s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "outrider inject: {}", String::from_utf8_lossy(&out.stderr));
    let pod: serde_json::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "outrider-proxy"))
        .unwrap_or_else(|| panic!("no sidecar injected: {pod}"))
        .clone();
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar: stopped after the app");
    let env: std::collections::BTreeMap<String, String> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect();
    assert_eq!(env["OUTRIDER_DRAIN_TIMEOUT"], "60s", "{sidecar}");
    // The pod's grace period (kept by the injector) covers the drain.
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 90, "{pod}");

    let gate = Gate::new();
    let slow = upstream::http1().name("slow").gate(&gate).start().await;
    let policy = dir.write("policy.yaml", &docs(&[service("slow").endpoint(slow.addr).yaml()]));
    // Ephemeral ports on loopback; the rest from the injected environment.
    let mut cmd = tokio::process::Command::new(outrider_tests::binary::proxy_bin());
    cmd.arg("--policy").arg(&policy);
    for flag in ["--outbound-port", "--inbound-port", "--admin-port", "--metrics-port", "--health-port"] {
        cmd.args([flag, "0"]);
    }
    cmd.args(["--inbound-bind", "127.0.0.1", "--log-format", "json"]);
    for name in ["OUTRIDER_DRAIN_TIMEOUT", "OUTRIDER_WORKERS"] {
        cmd.env(name, &env[name]);
    }
    let mut proxy = ProxyProcess::spawn(cmd).await;
    let outbound = proxy.addrs.outbound;
    let held = tokio::spawn(async move {
        let mut conn = client::h1_connection(outbound).await;
        client::send_h1(&mut conn, h1_get("slow:8080", "/held")).await
    });
    eventually!("the request has reached the upstream", slow.request_count() == 1);

    proxy.signal("TERM");
    let admin = client::http1(proxy.addrs.admin);
    eventually!(
        "the draining sidecar is not ready",
        client::send(&admin, client::get("http://admin/ready")).await.status == 503
    );
    assert!(proxy.try_wait().is_none(), "the sidecar waits for the in-flight request");
    gate.open();
    let r = wait::within("the in-flight request", held).await.unwrap();
    r.assert_status(200);
    let status = proxy.wait().await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}; stderr:\n{}", proxy.stderr());
}
