//! `outrider demo-app`: the demo's workloads as processes of their own (what docker/demo.sh runs
//! beside sidecars): `reviews` answers by version or fails as told, `frontend` calls its upstream
//! and answers with what it got.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;

use bytes::Bytes;
use http_body_util::Full;
use outrider_tests::client;
use outrider_tests::control_plane::outrider_bin;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Start `outrider demo-app ARGS` and return it with the address from its "listening on" line.
async fn start(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(outrider_bin())
        .arg("demo-app")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("outrider demo-app starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = outrider_tests::wait::within("the \"listening on\" line", lines.next_line())
        .await
        .expect("readable")
        .expect("a line before exit");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (child, addr)
}

async fn get(addr: SocketAddr) -> client::Reply {
    let req = http::Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new())).unwrap();
    client::send(&client::http1(addr), req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_calls_its_upstream_and_answers_with_what_it_got() {
    let (_v7, v7) = start(&["reviews", "--listen", "127.0.0.1:0", "--version", "v7"]).await;
    let direct = get(v7).await;
    assert_eq!(direct.status, 200);
    assert_eq!(direct.headers["x-reviews-version"], "v7");

    let upstream = format!("http://{v7}/reviews");
    let (_front, front) = start(&["frontend", "--listen", "127.0.0.1:0", "--upstream", &upstream]).await;
    let reply = get(front).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "reviews v7: 5 stars\n");

    // A reviews that always fails: the frontend passes the 503 on.
    let (_broken, broken) =
        start(&["reviews", "--listen", "127.0.0.1:0", "--version", "v2", "--fail-percent", "100"]).await;
    let upstream = format!("http://{broken}/reviews");
    let (_front2, front2) = start(&["frontend", "--listen", "127.0.0.1:0", "--upstream", &upstream]).await;
    let reply = get(front2).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "reviews v2 unavailable\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_answers_502_when_its_upstream_is_unreachable() {
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let upstream = format!("http://{closed}/reviews");
    let (_front, front) = start(&["frontend", "--listen", "127.0.0.1:0", "--upstream", &upstream]).await;
    let reply = get(front).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "reviews unreachable\n");
}

#[tokio::test]
async fn a_percentage_over_100_is_refused() {
    let out = Command::new(outrider_bin())
        .args(["demo-app", "reviews", "--fail-percent", "101"])
        .output()
        .await
        .expect("outrider runs");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fail-percent"), "names the flag");
}
