//! gRPC proxyless: a Python grpcio client with target `xds:///echo` and a bootstrap pointing at
//! the control plane resolves the service over xDS and balances across both endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;

use outrider_tests::control_plane::ControlPlane;
use outrider_tests::harness::TempDir;
use outrider_tests::{policy, skip, wait};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const CALLS: u32 = 40;

fn grpcio_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_proxyless_client_resolves_and_balances_over_xds() {
    if !grpcio_available() {
        skip("skipping: python3 with grpcio is needed (pip install grpcio)");
        return;
    }
    let data = TempDir::new("cp-grpc");
    let cp = ControlPlane::start(data.path());
    let bootstrap = data.write(
        "bootstrap.json",
        &serde_json::json!({
            "xds_servers": [{
                "server_uri": cp.xds.to_string(),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": "grpc-python", "cluster": "grpc-client", "locality": {}},
        })
        .to_string(),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/grpc_xds.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg("echo")
        .arg(CALLS.to_string())
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = wait::within("the gRPC servers' ports", lines.next_line()).await.unwrap().expect("a line");
    let ports: serde_json::Value = serde_json::from_str(&first).unwrap();
    let ports: Vec<u64> = ports["ports"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();

    let service = policy::service("echo")
        .protocol("grpc")
        .port(50051)
        .endpoint(format!("127.0.0.1:{}", ports[0]))
        .endpoint(format!("127.0.0.1:{}", ports[1]))
        .yaml();
    let rr = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: echo}\nspec: {service: echo, loadBalancer: round-robin}\n";
    cp.apply(&policy::docs(&[service, rr.to_owned()])).await;

    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    stdin.flush().await.unwrap();
    let result = wait::within("the gRPC client's calls", lines.next_line()).await.unwrap();
    let Some(result) = result else {
        let out = child.wait_with_output().await.unwrap();
        panic!("the gRPC client failed:\n{}", String::from_utf8_lossy(&out.stderr));
    };
    let answers: serde_json::Value = serde_json::from_str(&result).unwrap();
    let one = answers["answers"]["one"].as_u64().unwrap_or(0);
    let two = answers["answers"]["two"].as_u64().unwrap_or(0);
    assert_eq!(one + two, u64::from(CALLS), "{answers}");
    assert!(one > 0 && two > 0, "calls were not balanced over both endpoints: {answers}");

    // The client shows up in the control plane's status with its ACKs.
    let status = cp.status().await;
    let grpc = status["proxies"].as_array().unwrap().iter().find(|p| p["nodeId"] == "grpc-python").cloned();
    let grpc = grpc.expect("the gRPC client is listed in /v1/status");
    assert!(grpc["types"]["Listener"]["nack"].is_null(), "{grpc}");
    assert!(!grpc["types"]["Listener"]["acked"].as_str().unwrap_or("").is_empty(), "{grpc}");
    stdin.write_all(b"done\n").await.unwrap();
    let _ = wait::within("the gRPC client to exit", child.wait()).await;
}
