//! Endpoints that are not in Service documents: a sidecar registers its workload for as long
//! as its xDS stream lives (plus a grace period) and deregisters when it drains, and
//! `POST /v1/endpoints` registers one with a TTL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outrider_proxy::source::xds::Protocol;
use outrider_tests::binary::{ProxyProcess, proxy_bin};
use outrider_tests::client;
use outrider_tests::control_plane::{ControlPlane, MeshProxy};
use outrider_tests::harness::TempDir;
use outrider_tests::{policy, upstream, wait};

const GRACE: Duration = Duration::from_millis(300);

/// These sidecars have no identity: they register over plaintext xDS, which the control plane
/// allows only with `--insecure-registration` (see control_plane_registration.rs).
fn start_cp(data: &TempDir) -> ControlPlane {
    ControlPlane::start_insecure_registration(data.path(), GRACE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_registers_its_workload_while_its_stream_lives() {
    let data = TempDir::new("cp-reg");
    let cp = start_cp(&data);
    let app = upstream::http1().name("echo-app").start().await;
    let version = cp.apply(&policy::service("echo").yaml()).await;
    let caller = MeshProxy::start(&cp.xds_url(), "caller", "frontend", Protocol::Delta).await;
    cp.wait_converged(&version, 1).await;
    assert_eq!(caller.get("http://echo:8080/").await.status, 503, "no endpoint yet");

    let mut sidecar = sidecar_process(&cp.xds_url(), "echo-1", "echo", "sotw", app.addr).await;
    wait::wait_until("the caller to reach the registered workload", || async {
        caller.get("http://echo:8080/").await.upstream() == Some("echo-app")
    })
    .await;
    let listed = cp.call("GET", "/v1/endpoints", "", false, None).await;
    // The caller registered its own inbound listener for "frontend" (no such Service: unused).
    let items = listed.json["items"].as_array().unwrap();
    let item = items.iter().find(|i| i["service"] == "echo").expect("echo's workload is listed");
    assert_eq!(item["address"], app.addr.to_string());
    assert_eq!(item["labels"]["version"], "v1", "the sidecar's --label travels with it");
    assert!(item["expiresIn"].is_null(), "no expiry while the stream is up");

    // The sidecar dies without draining (its stream breaks): the registration lives on for
    // the grace period, then its workload is no longer an endpoint.
    sidecar.signal("KILL");
    sidecar.wait().await;
    wait::wait_until("the registration to get an expiry", || async {
        let listed = cp.call("GET", "/v1/endpoints", "", false, None).await;
        listed.json["items"].as_array().unwrap().iter().any(|i| i["service"] == "echo" && i["expiresIn"].is_number())
    })
    .await;
    wait::wait_until("the registration to expire", || async { caller.get("http://echo:8080/").await.status == 503 })
        .await;
    let listed = cp.call("GET", "/v1/endpoints", "", false, None).await;
    let echo = listed.json["items"].as_array().unwrap().iter().filter(|i| i["service"] == "echo").count();
    assert_eq!(echo, 0, "{}", listed.json);
    caller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_registrations_need_the_token_a_known_service_and_expire_with_their_ttl() {
    let data = TempDir::new("cp-reg");
    let cp = start_cp(&data);
    let b = upstream::http1().name("b").start().await;
    cp.apply(&policy::service("echo").yaml()).await;
    let caller = MeshProxy::start(&cp.xds_url(), "caller", "frontend", Protocol::Delta).await;
    caller.wait_ready().await;

    let body = format!(r#"{{"service": "echo", "address": "{}", "ttl": "1s"}}"#, b.addr);
    assert_eq!(cp.call("POST", "/v1/endpoints", &body, false, None).await.status, 401);
    let unknown = body.replace("\"echo\"", "\"nope\"");
    let r = cp.call("POST", "/v1/endpoints", &unknown, true, None).await;
    assert_eq!(r.status, 400);
    assert!(r.json["error"].as_str().unwrap().starts_with("service"), "{}", r.json);
    let r = cp.call("POST", "/v1/endpoints", &body.replace("1s", "soon"), true, None).await;
    assert_eq!(r.status, 400, "{}", r.json);

    let r = cp.call("POST", "/v1/endpoints", &body, true, None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    wait::wait_until("the caller to reach the registered endpoint", || async {
        caller.get("http://echo:8080/").await.upstream() == Some("b")
    })
    .await;
    wait::wait_until("the registration to expire", || async { caller.get("http://echo:8080/").await.status == 503 })
        .await;
    caller.shutdown().await;
}

/// The addresses the caller's proxy has for `service` (its admin `/clusters`).
async fn endpoints_of(caller: &MeshProxy, service: &str) -> Vec<String> {
    let admin = client::http1(caller.admin);
    let reply = client::send(&admin, client::get("http://admin/clusters")).await;
    reply.assert_status(200);
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let mut out: Vec<String> = json["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["service"] == service)
        .flat_map(|c| c["endpoints"].as_array().unwrap().iter().map(|e| e["address"].as_str().unwrap().to_owned()))
        .collect();
    out.sort();
    out
}

/// The proxy binary as the sidecar of `service` for the workload at `advertise`.
async fn sidecar_process(
    xds_url: &str,
    node: &str,
    service: &str,
    protocol: &str,
    advertise: std::net::SocketAddr,
) -> ProxyProcess {
    sidecar_process_with(xds_url, node, service, protocol, advertise, &[]).await
}

/// [`sidecar_process`] with more flags.
async fn sidecar_process_with(
    xds_url: &str,
    node: &str,
    service: &str,
    protocol: &str,
    advertise: std::net::SocketAddr,
    extra: &[&str],
) -> ProxyProcess {
    let mut cmd = tokio::process::Command::new(proxy_bin());
    cmd.args(extra);
    cmd.args(["--xds-address", xds_url, "--xds-protocol", protocol, "--node-id", node, "--service", service])
        .args(["--advertise", &advertise.to_string(), "--inbound-bind", "127.0.0.1", "--log-format", "json"])
        .args(["--label", "version=v1", "--workers", "1"]);
    for flag in ["--outbound-port", "--inbound-port", "--admin-port", "--metrics-port", "--health-port"] {
        cmd.args([flag, "0"]);
    }
    ProxyProcess::spawn(cmd).await
}

/// The labels the control plane registered for `service`'s endpoints, as `/v1/endpoints`
/// lists them.
async fn registered_labels(cp: &ControlPlane, service: &str) -> Vec<serde_json::Value> {
    let listed = cp.call("GET", "/v1/endpoints", "", false, None).await;
    listed.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["service"] == service)
        .map(|i| i["labels"].clone())
        .collect()
}

/// `--label` was read from `OUTRIDER_LABELS` before it followed the `OUTRIDER_<FLAG>` rule
/// (`OUTRIDER_LABEL`): a deployment that still sets the old name keeps its labels, and the new
/// name wins when both are set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_from_the_old_outrider_labels_variable_are_registered() {
    let data = TempDir::new("cp-legacy-labels");
    let cp = ControlPlane::start_insecure_registration(data.path(), Duration::from_secs(3600));
    cp.apply(&policy::service("echo").yaml()).await;
    let (one, two) = (upstream::http1().name("one").start().await, upstream::http1().name("two").start().await);
    let spawn = |node: &'static str, advertise: std::net::SocketAddr, env: &[(&str, &str)]| {
        let mut cmd = tokio::process::Command::new(proxy_bin());
        cmd.env_remove("OUTRIDER_LABEL").env_remove("OUTRIDER_LABELS").envs(env.iter().copied());
        cmd.args(["--xds-address", &cp.xds_url(), "--node-id", node, "--service", "echo"]).args([
            "--advertise",
            &advertise.to_string(),
            "--inbound-bind",
            "127.0.0.1",
            "--workers",
            "1",
        ]);
        for flag in ["--outbound-port", "--inbound-port", "--admin-port", "--metrics-port", "--health-port"] {
            cmd.args([flag, "0"]);
        }
        ProxyProcess::spawn(cmd)
    };
    let old = spawn("echo-old", one.addr, &[("OUTRIDER_LABELS", "version=v7,track=old")]).await;
    wait::wait_until("the workload registered with the labels of OUTRIDER_LABELS", || async {
        registered_labels(&cp, "echo").await == [serde_json::json!({"version": "v7", "track": "old"})]
    })
    .await;
    drop(old);
    let both =
        spawn("echo-both", two.addr, &[("OUTRIDER_LABELS", "version=v7"), ("OUTRIDER_LABEL", "version=v8")]).await;
    // Exactly `version: v8`: the old name is not read (nor merged) when the new one is set.
    wait::wait_until("the workload registered with the labels of OUTRIDER_LABEL, not the old name", || async {
        registered_labels(&cp, "echo").await.contains(&serde_json::json!({"version": "v8"}))
    })
    .await;
    drop(both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_drains_is_deregistered_at_once_not_after_the_grace_period() {
    let data = TempDir::new("cp-drain");
    // A grace period far beyond the test's deadline: only the drain notice can remove the endpoint in time.
    let cp = ControlPlane::start_insecure_registration(data.path(), Duration::from_secs(3600));
    let (one, two) = (upstream::http1().name("one").start().await, upstream::http1().name("two").start().await);
    let version = cp.apply(&policy::service("echo").yaml()).await;
    let caller = MeshProxy::start(&cp.xds_url(), "caller", "frontend", Protocol::Delta).await;
    cp.wait_converged(&version, 1).await;

    let mut leaving = sidecar_process(&cp.xds_url(), "echo-1", "echo", "delta", one.addr).await;
    let staying = MeshProxy::start_advertising(&cp.xds_url(), "echo-2", "echo", Protocol::Sotw, Some(two.addr)).await;
    let both = {
        let mut both = vec![one.addr.to_string(), two.addr.to_string()];
        both.sort();
        both
    };
    wait::wait_until("the caller to be sent both sidecars' workloads", || async {
        endpoints_of(&caller, "echo").await == both
    })
    .await;

    leaving.signal("TERM");
    wait::wait_until("the caller to stop being sent the drained workload", || async {
        endpoints_of(&caller, "echo").await == [two.addr.to_string()]
    })
    .await;
    let status = leaving.wait().await;
    assert!(status.success(), "the drained sidecar exits 0: {status:?}\n{}", leaving.stderr());
    let listed = cp.call("GET", "/v1/endpoints", "", false, None).await;
    let echo: Vec<&serde_json::Value> =
        listed.json["items"].as_array().unwrap().iter().filter(|i| i["service"] == "echo").collect();
    assert_eq!(echo.len(), 1, "{}", listed.json);
    assert_eq!(echo[0]["address"], two.addr.to_string());
    // Traffic goes to the workload that stayed.
    assert_eq!(caller.get("http://echo:8080/").await.upstream(), Some("two"));
    staying.shutdown().await;
    caller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_sidecar_keeps_accepting_until_its_endpoint_is_withdrawn_then_refuses() {
    let data = TempDir::new("cp-drain-accept");
    let cp = ControlPlane::start_insecure_registration(data.path(), Duration::from_secs(3600));
    let (one, two) = (upstream::http1().name("one").start().await, upstream::http1().name("two").start().await);
    let version = cp.apply(&policy::service("echo").yaml()).await;
    let caller = MeshProxy::start(&cp.xds_url(), "caller", "frontend", Protocol::Delta).await;
    cp.wait_converged(&version, 1).await;
    // A propagation window far longer than the checks below take: they run inside it.
    let flags = ["--drain-timeout", "60s", "--drain-propagation", "5s"];
    let mut leaving = sidecar_process_with(&cp.xds_url(), "echo-1", "echo", "delta", one.addr, &flags).await;
    let staying = MeshProxy::start_advertising(&cp.xds_url(), "echo-2", "echo", Protocol::Sotw, Some(two.addr)).await;
    wait::wait_until("the caller to be sent both workloads", || async {
        endpoints_of(&caller, "echo").await.len() == 2
    })
    .await;
    let outbound = leaving.addrs.outbound;

    leaving.signal("TERM");
    wait::wait_until("the caller to stop being sent the drained workload", || async {
        endpoints_of(&caller, "echo").await == [two.addr.to_string()]
    })
    .await;
    // Withdrawn, but a caller may not have heard yet: new connections are still accepted, each
    // answered and closed (`Connection: close`), not refused.
    for i in 0..2 {
        let mut conn = client::h1_connection(outbound).await;
        let r = client::send_h1(&mut conn, client::h1_get("echo:8080", &format!("/late/{i}"))).await;
        r.assert_status(200);
        assert_eq!(
            r.header("connection"),
            Some("close"),
            "a connection accepted while draining is closed: {:?}",
            r.headers
        );
        wait::wait_until("the draining sidecar to close the connection", || async { conn.is_closed() }).await;
    }
    let admin = client::http1(leaving.addrs.admin);
    assert_eq!(client::send(&admin, client::get("http://admin/ready")).await.status, 503, "draining is not ready");
    assert!(leaving.try_wait().is_none(), "still draining");
    // Once the propagation window has passed the listeners close and the process exits 0.
    let status = leaving.wait().await;
    assert!(status.success(), "the drained sidecar exits 0: {status:?}\n{}", leaving.stderr());
    assert!(tokio::net::TcpStream::connect(outbound).await.is_err(), "nothing listens after the exit");
    staying.shutdown().await;
    caller.shutdown().await;
}
