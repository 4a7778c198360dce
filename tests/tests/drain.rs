//! Graceful drain of the real binary on SIGTERM: in-flight requests finish, new
//! connections are refused, the process exits 0.
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
