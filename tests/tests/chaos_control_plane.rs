//! Chaos at the control plane, every process real: `outrider control-plane` as a child process
//! killed with SIGKILL under load and right after a push, then started again on the same ports
//! and data dir; and its data dir full or read-only. The proxies are `outrider-proxy`
//! processes. What the API client sees (a clear 5xx for writes, reads served), what the
//! proxies' clients see (no failed request), and that nothing accepted is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use outrider_tests::binary::{ProxyProcess, xds_proxy_command};
use outrider_tests::cp_process::CpProcess;
use outrider_tests::disk::SmallDisk;
use outrider_tests::harness::TempDir;
use outrider_tests::{policy, skip, upstream, wait};

/// An `outrider-proxy` process taking its config from `cp`, as node `p` of `frontend`.
async fn proxy(cp: &CpProcess) -> ProxyProcess {
    ProxyProcess::spawn(xds_proxy_command(&cp.xds_url(), "p", "frontend", &[])).await
}

fn service(upstream: &upstream::Upstream) -> String {
    policy::service("echo").endpoint(upstream.endpoint()).yaml()
}

/// Requests through `proxy` until stopped, counting answers by upstream and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(proxy: Arc<ProxyProcess>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let task = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = proxy.get("http://echo:8080/load").await;
                    if r.status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Self { stop, ok, failed, task }
    }

    async fn more_than(&self, what: &str, n: usize) {
        let at = self.ok.load(Ordering::Relaxed);
        wait::wait_until(what, || async { self.ok.load(Ordering::Relaxed) > at + n }).await;
    }

    /// Stop and return the number of failed requests.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.failed.load(Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_under_load_fails_no_request_and_proxies_reconnect() {
    let data = TempDir::new("cp-kill");
    let mut cp = CpProcess::start(data.path()).await;
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let proxy = Arc::new(proxy(&cp).await);
    let version = cp.apply(&service(&a)).await;
    cp.wait_converged(&version, 1).await;
    wait::wait_until("traffic to reach a", || async { proxy.get("http://echo:8080/").await.upstream() == Some("a") })
        .await;
    let load = Load::start(proxy.clone());
    load.more_than("load before the kill", 50).await;

    cp.kill().await;
    load.more_than("load while the control plane is down", 200).await;
    assert_eq!(proxy.ready().await, 200, "the last good config stays");

    // Back on the same ports: the policies are still there and the proxy reconnects.
    cp.restart().await;
    let listed = cp.call("GET", "/v1/policies/Service/echo", "", false, None).await;
    assert_eq!(listed.status, 200, "the policy survived the kill");
    cp.wait_converged(&version, 1).await;
    assert_eq!(
        cp.metrics().await.lines().find(|l| l.starts_with("outrider_xds_connected_proxies ")),
        Some("outrider_xds_connected_proxies 1"),
        "one xDS stream: the proxy's, reconnected"
    );
    load.more_than("load after the restart", 50).await;
    assert_eq!(load.stop().await, 0, "requests failed while the control plane was away");

    // And it still takes changes.
    cp.apply(&service(&b)).await;
    wait::wait_until("traffic to move to b", || async { proxy.get("http://echo:8080/").await.upstream() == Some("b") })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_during_a_push_under_load_fails_nothing_and_the_push_lands() {
    let data = TempDir::new("cp-chaos");
    let mut cp = CpProcess::start(data.path()).await;
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let proxy = Arc::new(proxy(&cp).await);
    let v1 = cp.apply(&service(&a)).await;
    cp.wait_converged(&v1, 1).await;
    wait::wait_until("traffic to reach a", || async { proxy.get("http://echo:8080/").await.upstream() == Some("a") })
        .await;
    let load = Load::start(proxy.clone());
    load.more_than("load before the push", 50).await;

    // The write is accepted (persisted), then the process dies (SIGKILL) before or while it
    // is pushed.
    let v2 = cp.apply(&service(&b)).await;
    cp.kill().await;
    load.more_than("load while the control plane is down", 100).await;
    assert_eq!(proxy.ready().await, 200, "the last good config stays");

    cp.restart().await;
    cp.wait_converged(&v2, 1).await;
    wait::wait_until("traffic to move to b", || async { proxy.get("http://echo:8080/").await.upstream() == Some("b") })
        .await;
    load.more_than("load after the restart", 50).await;
    assert_eq!(load.stop().await, 0, "requests failed while the control plane died during a push");
}

/// Files the control plane left in its data dir that start with a dot (temp files).
fn temp_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_data_dir_refuses_writes_with_a_5xx_serves_reads_and_loses_nothing() {
    let disk = match SmallDisk::mount("4m") {
        Ok(d) => d,
        Err(why) => return skip(&format!("skipping the data-dir fault test: {why}")),
    };
    let mut cp = CpProcess::start(disk.path()).await;
    let a = upstream::http1().name("a").start().await;
    let b = upstream::http1().name("b").start().await;
    let proxy = proxy(&cp).await;
    let v1 = cp.apply(&service(&a)).await;
    cp.wait_converged(&v1, 1).await;
    let token_request = r#"{"namespace": "default", "serviceAccount": "web"}"#;

    // Disk full: writes get a 500 naming the file and the cause; nothing changes.
    disk.fill();
    let r = cp.call("PUT", "/v1/policies", &service(&b), true, None).await;
    assert_eq!(r.status, 500, "{}", r.json);
    let message = r.json["error"].as_str().unwrap();
    assert!(message.contains("No space left on device") && message.contains("disk not full"), "{message}");
    let r = cp.call("POST", "/v1/tokens", token_request, true, None).await;
    assert_eq!(r.status, 500, "{}", r.json);
    assert!(r.json["error"].as_str().unwrap().contains("No space left on device"), "{}", r.json);
    assert_eq!(temp_files(disk.path()), Vec::<String>::new(), "a refused write left a temp file taking space");
    // Reads are served, the proxies keep the accepted config.
    let listed = cp.call("GET", "/v1/policies/Service/echo", "", false, None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json["document"]["spec"]["endpoints"][0]["address"], a.endpoint(), "{}", listed.json);
    assert_eq!(cp.status().await["policyVersion"], v1.as_str());
    assert_eq!(proxy.get("http://echo:8080/").await.upstream(), Some("a"));

    // Space back: the same write is accepted and pushed.
    disk.free();
    // Only the endpoint changes, so only the assignment is pushed: wait for the traffic.
    let v2 = cp.apply(&service(&b)).await;
    wait::wait_until("traffic to move to b", || async { proxy.get("http://echo:8080/").await.upstream() == Some("b") })
        .await;
    assert_eq!(cp.call("POST", "/v1/tokens", token_request, true, None).await.status, 200);

    // Read-only: same story, with its own cause.
    disk.read_only(true);
    let r = cp.call("PUT", "/v1/policies", &service(&a), true, None).await;
    assert_eq!(r.status, 500, "{}", r.json);
    assert!(r.json["error"].as_str().unwrap().contains("Read-only file system"), "{}", r.json);
    assert_eq!(cp.call("GET", "/v1/policies", "", false, None).await.status, 200);
    assert_eq!(cp.status().await["policyVersion"], v2.as_str());
    assert_eq!(proxy.get("http://echo:8080/").await.upstream(), Some("b"));
    disk.read_only(false);

    // A restart (after SIGKILL) serves exactly what was accepted: the write on the full disk
    // and the one on the read-only disk never happened, the one in between did.
    cp.restart().await;
    assert_eq!(cp.status().await["policyVersion"], v2.as_str());
    let listed = cp.call("GET", "/v1/policies/Service/echo", "", false, None).await;
    assert_eq!(listed.json["document"]["spec"]["endpoints"][0]["address"], b.endpoint(), "{}", listed.json);
    cp.wait_converged(&v2, 1).await;
    assert_eq!(proxy.get("http://echo:8080/").await.upstream(), Some("b"));
    // Killed before the disk is unmounted (the process holds files on it).
    cp.kill().await;
}
