//! Endpoints that are not in Service documents: a sidecar registers its workload for as long
//! as its xDS stream lives (plus a grace period), and `POST /v1/endpoints` registers one with a
//! TTL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outrider_proxy::source::xds::Protocol;
use outrider_tests::control_plane::{ControlPlane, MeshProxy};
use outrider_tests::harness::TempDir;
use outrider_tests::{policy, upstream, wait};

const GRACE: Duration = Duration::from_millis(300);

fn start_cp(data: &TempDir) -> ControlPlane {
    let any = "127.0.0.1:0".parse().unwrap();
    ControlPlane::start_with(data.path(), any, any, None, GRACE)
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

    let sidecar = MeshProxy::start_advertising(&cp.xds_url(), "echo-1", "echo", Protocol::Sotw, Some(app.addr)).await;
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

    // The sidecar goes away: after the grace period its workload is no longer an endpoint.
    sidecar.shutdown().await;
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
