//! Chaos in the config, every process real (`outrider control-plane` and `outrider-proxy` as
//! child processes): a policy push every 100 ms for 30 s under load, and endpoints flapping in
//! and out of the config under load. The client sees no failed request; nothing piles up (one
//! xDS stream per proxy at the control plane, upstream connections bounded by the load's
//! concurrency, and the file descriptors of both processes back to where they were, not grown
//! with the number of pushes); the last push is the one in force.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrider_tests::binary::{ProxyProcess, xds_proxy_command};
use outrider_tests::client::{self, Client};
use outrider_tests::control_plane::ApiClient;
use outrider_tests::cp_process::CpProcess;
use outrider_tests::harness::TempDir;
use outrider_tests::upstream::{self, Upstream};
use outrider_tests::wait;

const PUSH_EVERY: Duration = Duration::from_millis(100);
const WORKERS: usize = 4;

fn policy(endpoints: &[&Upstream], timeout_ms: u64) -> String {
    let eps: String = endpoints.iter().map(|u| format!("    - {{address: \"{}\"}}\n", u.endpoint())).collect();
    format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: echo}}\nspec:\n  protocol: http\n  port: 8080\n  endpoints:\n{eps}---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: echo}}\nspec:\n  service: echo\n  timeout: {timeout_ms}ms\n  retries:\n    attempts: 3\n    retryOn: [connect-failure, refused-stream, reset]\n"
    )
}

/// `WORKERS` clients (each its own connection pool) sending GETs until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(outbound: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..WORKERS)
            .map(|_| {
                let c: Client = client::http1(outbound);
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r =
                            tokio::time::timeout(wait::deadline(), c.request(client::get("http://echo:8080/x"))).await;
                        match r {
                            Ok(Ok(resp)) if resp.status() == 200 => {
                                let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                                match body {
                                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                                    Err(e) => {
                                        failures.lock().unwrap().push(format!("body: {e:?}"));
                                        0
                                    }
                                };
                            }
                            Ok(Ok(resp)) => failures.lock().unwrap().push(format!("status {}", resp.status())),
                            Ok(Err(e)) => failures.lock().unwrap().push(format!("{e:?}")),
                            Err(_) => failures.lock().unwrap().push("no answer".into()),
                        }
                    }
                })
            })
            .collect();
        Self { stop, ok, failures, tasks }
    }

    async fn more(&self, what: &str, n: usize) {
        let at = self.ok.load(Ordering::Relaxed);
        wait::wait_until(what, || async { self.ok.load(Ordering::Relaxed) >= at + n }).await;
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.ok.load(Ordering::Relaxed), std::mem::take(&mut *self.failures.lock().unwrap()))
    }
}

/// Apply `policy_at(i)` every 100 ms `pushes` times under load; then check nothing failed,
/// the last push is in force and nothing piled up.
async fn storm(
    pushes: u32,
    policy_at: impl Fn(u32) -> String,
    ups: &[&Upstream],
    cp: &CpProcess,
    proxy: &ProxyProcess,
) {
    let load = Load::start(proxy.addrs.outbound);
    load.more("load before the storm", 50).await;
    // File descriptors under load before the storm: the load's own connections, the upstream
    // pools, the xDS stream, the API client's connection.
    let (proxy_fds, cp_fds) = (proxy.open_fds(), cp.open_fds());
    let mut tick = tokio::time::interval(PUSH_EVERY);
    let mut last = String::new();
    for i in 0..pushes {
        tick.tick().await;
        last = cp.apply(&policy_at(i)).await;
    }
    wait_applied(cp, &last).await;
    load.more("load after the storm", 50).await;
    let (ok, failures) = load.stop().await;
    assert!(failures.is_empty(), "requests failed during {pushes} pushes ({ok} succeeded): {failures:?}");
    // No stream or connection piles up: one proxy at the control plane, one xDS stream open;
    // upstream connections bounded by the load's concurrency (each worker holds at most one
    // per endpoint), once the pools of replaced configs are closed.
    assert_eq!(cp.status().await["proxies"].as_array().unwrap().len(), 1, "one proxy at the control plane");
    let metrics = cp.metrics().await;
    let streams = metrics.lines().find(|l| l.starts_with("outrider_xds_connected_proxies "));
    assert_eq!(streams, Some("outrider_xds_connected_proxies 1"), "one xDS stream per proxy");
    let bound = WORKERS * ups.len();
    wait::wait_until(&format!("at most {bound} open upstream connections"), || async {
        ups.iter().map(|u| u.open_connections()).sum::<usize>() <= bound
    })
    .await;
    // Neither process holds more descriptors than before the storm, give or take the pools'
    // connections (`bound`): a leak of one per push would be hundreds.
    wait::wait_until(&format!("the proxy's open fds back to at most {proxy_fds} + {bound}"), || async {
        proxy.open_fds() <= proxy_fds + bound
    })
    .await;
    wait::wait_until(&format!("the control plane's open fds back to at most {cp_fds} + {bound}"), || async {
        cp.open_fds() <= cp_fds + bound
    })
    .await;
}

/// An `outrider-proxy` process taking its config from `cp`, as node `p` of `frontend`.
async fn proxy(cp: &CpProcess) -> ProxyProcess {
    ProxyProcess::spawn(xds_proxy_command(&cp.xds_url(), "p", "frontend", &[])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_push_every_100ms_for_30s_under_load_fails_nothing_and_leaks_nothing() {
    let data = TempDir::new("chaos-pushes");
    let cp = CpProcess::start(data.path()).await;
    let (a, b) = (upstream::http1().name("a").start().await, upstream::http1().name("b").start().await);
    let proxy = proxy(&cp).await;
    let v = cp.apply(&policy(&[&a, &b], 5000)).await;
    cp.wait_converged(&v, 1).await;
    // 300 pushes (30 s at 10 per second), each changing the route's timeout.
    storm(300, |i| policy(&[&a, &b], 5000 + u64::from(i) + 1), &[&a, &b], &cp, &proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_flapping_in_and_out_of_the_config_under_load_fail_nothing() {
    let data = TempDir::new("chaos-flap");
    let cp = CpProcess::start(data.path()).await;
    let (a, b) = (upstream::http1().name("a").start().await, upstream::http1().name("b").start().await);
    let proxy = proxy(&cp).await;
    let v = cp.apply(&policy(&[&a, &b], 5000)).await;
    cp.wait_converged(&v, 1).await;
    // Every 100 ms for 10 s: {a, b}, {a}, {a, b}, {b}, ... Each endpoint leaves and comes back
    // 25 times while requests run; there is always one to go to.
    let sets: [Vec<&Upstream>; 4] = [vec![&a, &b], vec![&a], vec![&a, &b], vec![&b]];
    let (a_before, b_before) = (a.request_count(), b.request_count());
    storm(100, |i| policy(&sets[i as usize % 4], 5000), &[&a, &b], &cp, &proxy).await;
    assert!(a.request_count() > a_before && b.request_count() > b_before, "both endpoints served while flapping");
}

/// Wait until the control plane serves `version` and the proxy has ACKed what that push
/// changed (a route-only or endpoint-only change re-sends only that type) and NACKed nothing.
async fn wait_applied(cp: &ApiClient, version: &str) {
    wait::wait_until(&format!("the proxy to ACK the push of {version}"), || async {
        let s = cp.status().await;
        let Some(served) = s["version"].as_str() else { return false };
        let Some(p) = s["proxies"].as_array().and_then(|p| p.first()).cloned() else { return false };
        let types = ["Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"];
        s["policyVersion"] == version
            && types.iter().all(|t| p["types"][*t]["nack"].is_null())
            && types.iter().any(|t| p["types"][*t]["acked"] == served)
    })
    .await;
}
