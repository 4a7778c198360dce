//! The dashboard in a real browser: a control plane with real proxies and traffic, and Debian's
//! headless chromium driven by playwright-core (`tests/browser/check.mjs`, one check per run).
//! The checks' screenshots go to `target/dashboard-screenshots/`, or, with
//! `OUTRIDER_UPDATE_SCREENSHOTS=1`, to `docs/dashboard/` (the ones docs/dashboard.md shows).
//! Skips, saying why, without node, chromium or `npm ci` in tests/browser; under
//! `OUTRIDER_REQUIRE_ALL=1` that fails instead (.ci/run installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outrider_control_plane::server::ServerConfig;
use outrider_proxy::source::xds::Protocol;
use outrider_tests::control_plane::{ControlPlane, MeshProxy, TOKEN};
use outrider_tests::harness::TempDir;
use outrider_tests::load::{Load, Plan};
use outrider_tests::upstream::{self, Switch};
use outrider_tests::wait;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("OUTRIDER_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Why the browser tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is not installed".into());
    }
    if !chromium().exists() {
        return Some(format!("{} is missing (apt install chromium)", chromium().display()));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed (npm ci in tests/browser)".into());
    }
    None
}

/// Where the checks' screenshots go: the docs' only when asked to update them, so a test run
/// does not rewrite tracked files.
fn screenshots() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if std::env::var("OUTRIDER_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        root.join("docs/dashboard")
    } else {
        std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root.join("target"), PathBuf::from)
            .join("dashboard-screenshots")
    }
}

/// Run one check of tests/browser/check.mjs against the dashboard at `base`.
async fn check(base: &str, name: &str, args: &[&str]) {
    let shots = screenshots();
    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join("check.mjs"))
        .arg(base)
        .arg(name)
        .args(args)
        .env("OUTRIDER_SCREENSHOTS", &shots)
        // Each wait in the page: the test deadline plus the page's 2-second poll and a report.
        .env("OUTRIDER_BROWSER_DEADLINE_MS", (wait::deadline() * 2).as_millis().to_string())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("[browser {name}] {stdout}{stderr}");
    assert!(out.status.success(), "browser check {name} failed:\n{stdout}\n{stderr}");
}

/// Rejects the cluster of `reviews` like a proxy that cannot run its policy, while `reject`
/// holds.
struct RejectReviews {
    reject: Arc<std::sync::atomic::AtomicBool>,
}

impl outrider_xds::ads::Handler for RejectReviews {
    fn update(&self, update: &outrider_xds::ads::Update<'_>) -> Result<(), String> {
        if self.reject.load(std::sync::atomic::Ordering::SeqCst)
            && update.type_url == outrider_xds::resources::CLUSTER_TYPE_URL
            && update.resources.keys().any(|k| k.contains("reviews"))
        {
            return Err("Cluster \"outbound|8080||reviews\": lb_policy MAGLEV is not supported".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_the_mesh_failures_breakers_nacks_and_drives_a_rollout_with_the_token() {
    if let Some(why) = missing() {
        outrider_tests::skip(&format!("skipping the dashboard browser test: {why}"));
        return;
    }
    let dir = TempDir::new("outrider-dashboard");
    let any = "127.0.0.1:0".parse().unwrap();
    let cp = ControlPlane::start_config(ServerConfig {
        xds: any,
        api: any,
        token: Some(TOKEN.into()),
        load_report_interval: Duration::from_millis(250),
        ..ServerConfig::local(dir.path())
    });
    let base = format!("http://{}", cp.api);
    let switch = Switch::new();
    let reviews = upstream::http1().name("reviews").switch(&switch).start().await;
    let (r1, r2) = (upstream::http1().name("r1").start().await, upstream::http1().name("r2").start().await);
    // details: one good endpoint and one that always fails, which the frontend's outlier
    // detection ejects.
    let (d1, d2) = (upstream::http1().name("d1").start().await, upstream::http1().name("d2").status(503).start().await);
    // reviews has a breaker that only a failing upstream trips (90 % of 20 calls); ratings runs
    // a rollout whose first check is an hour away (it stays progressing until a button moves it).
    let yaml = format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: reviews}}\nspec:\n  port: 8080\n  endpoints:\n    \
         - {{address: \"{}\"}}\n---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: reviews}}\nspec:\n  \
         service: reviews\n  circuitBreaker:\n    failureRateThreshold: 90\n    window: 20\n    minimumCalls: 20\n    \
         openDuration: 1h\n---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: ratings}}\nspec:\n  port: 8080\n  \
         endpoints:\n    - {{address: \"{}\", labels: {{version: v1}}}}\n    - {{address: \"{}\", labels: {{version: v2}}}}\n---\n\
         apiVersion: outrider.io/v1\nkind: Rollout\nmetadata: {{name: ratings}}\nspec:\n  service: ratings\n  \
         stable: {{version: v1}}\n  canary: {{version: v2}}\n  strategy: {{canary: {{steps: [10, 50]}}}}\n  interval: 1h\n\
         ---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: details}}\nspec:\n  port: 8080\n  endpoints:\n    \
         - {{address: \"{}\"}}\n    - {{address: \"{}\"}}\n---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\n\
         metadata: {{name: details}}\nspec:\n  service: details\n  outlierDetection: {{consecutive5xx: 2, \
         baseEjectionTime: 5m, maxEjectionPercent: 50}}\n",
        reviews.endpoint(),
        r1.endpoint(),
        r2.endpoint(),
        d1.endpoint(),
        d2.endpoint()
    );
    cp.apply(&yaml).await;
    let frontend = MeshProxy::start(&cp.xds_url(), "frontend-1", "frontend", Protocol::Delta).await;
    frontend.wait_ready().await;
    let load = Load::start(
        frontend.client.clone(),
        Plan {
            rate: 40,
            uris: vec!["http://reviews:8080/".into(), "http://ratings:8080/".into(), "http://details:8080/".into()],
            headers: Vec::new(),
        },
    );
    wait::wait_for("the frontend → reviews edge in /v1/mesh", || async {
        let mesh = cp.call("GET", "/v1/mesh", "", false, None).await.json;
        mesh["edges"]
            .as_array()?
            .iter()
            .any(|e| e["source"] == "frontend" && e["destination"] == "reviews")
            .then_some(())
    })
    .await;
    check(&base, "mesh", &["reviews", "ratings"]).await;

    // The frontend's outlier detection ejects the failing details endpoint; its report says so
    // and the service page shows the endpoint ejected, the good one ok.
    wait::wait_for("details' failing endpoint ejected in /v1/stats", || async {
        let stats = cp.stats("details", "window=1m").await.json;
        stats["endpoints"]
            .as_array()?
            .iter()
            .any(|e| e["address"] == d2.endpoint().as_str() && e["ejectedSeconds"].as_f64().is_some_and(|s| s > 0.0))
            .then_some(())
    })
    .await;
    check(&base, "ejected", &["details", &d2.endpoint(), &d1.endpoint()]).await;

    // reviews starts failing 40 % of its requests: the edge's success rate drops.
    switch.fail_rate(0.4);
    check(&base, "edgeDrops", &["frontend", "reviews", "90"]).await;

    // Then all of them: the breaker opens and rejects.
    switch.set_status(503);
    check(&base, "breakerOpen", &["reviews"]).await;

    // A proxy that cannot take the reviews cluster NACKs it, with its message.
    let node = envoy_types::pb::envoy::config::core::v3::Node { id: "picky-1".into(), ..Default::default() };
    let client = outrider_xds::ads::AdsClient::new(outrider_xds::ads::ClientConfig::new(cp.xds_url(), node));
    let reject = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let nacker = tokio::spawn(client.run(Arc::new(RejectReviews { reject: reject.clone() })));
    check(&base, "nack", &["picky-1", "lb_policy MAGLEV is not supported"]).await;
    // It takes the next version: in sync, and its last NACK stays on the page with its time.
    reject.store(false, std::sync::atomic::Ordering::SeqCst);
    cp.apply(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: reviews}\nspec:\n  service: reviews\n  \
         connectTimeout: 2s\n  circuitBreaker:\n    failureRateThreshold: 90\n    window: 20\n    minimumCalls: 20\n    \
         openDuration: 1h\n",
    )
    .await;
    let picky = wait::wait_for("picky-1 ACKs the next version and keeps its last NACK", || async {
        let status = cp.status().await;
        let p = status["proxies"].as_array()?.iter().find(|p| p["nodeId"] == "picky-1")?.clone();
        let cluster = &p["types"]["Cluster"];
        (cluster["nack"].is_null() && cluster["acked"] == cluster["sent"] && !cluster["lastNack"].is_null())
            .then_some(p)
    })
    .await;
    let last = &picky["types"]["Cluster"]["lastNack"];
    assert!(last["error"].as_str().unwrap().contains("MAGLEV"), "{picky:#}");
    assert!(last["at"].as_u64().is_some_and(|at| at >= picky["connectedAt"].as_u64().unwrap()), "{picky:#}");
    assert_ne!(last["version"], picky["types"]["Cluster"]["acked"], "{picky:#}");
    check(&base, "nackKept", &["picky-1", "lb_policy MAGLEV is not supported"]).await;
    nacker.abort();

    // A write the control plane refuses: its errors are on the policies page.
    let bad = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: broken}\nspec:\n  service: reviews\n  timeout: soon\n";
    let reply = cp.call("PUT", "/v1/policies", bad, true, None).await;
    assert_eq!(reply.status, 400, "{:?}", reply.json);
    check(&base, "rejected", &["timeout"]).await;

    check(&base, "rollout", &["ratings", "ratings", TOKEN]).await;
    let status = cp.rollout("ratings").await;
    assert_eq!(status["phase"], "promoted", "{status:#}");
    load.stop().await;
}

/// Without a browser: the assets come from the binary with their types and policy, the graph's
/// data names the real proxy's service as the source, and a refused write is kept for the
/// policies page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_the_dashboard_the_graph_and_the_last_rejected_write() {
    use outrider_tests::client;
    let dir = TempDir::new("outrider-dashboard-api");
    let any = "127.0.0.1:0".parse().unwrap();
    let cp = ControlPlane::start_config(ServerConfig {
        xds: any,
        api: any,
        token: Some(TOKEN.into()),
        load_report_interval: Duration::from_millis(200),
        ..ServerConfig::local(dir.path())
    });
    let http = client::cp_api(cp.api);
    for (path, kind) in
        [("/ui/", "text/html"), ("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")]
    {
        let r = client::send(&http, client::get(&format!("http://cp{path}"))).await;
        r.assert_status(200);
        assert!(r.header("content-type").unwrap().starts_with(kind), "{path}");
        assert!(r.header("content-security-policy").unwrap().contains("default-src 'none'"), "{path}");
    }
    client::send(&http, client::get("http://cp/ui/../../etc/passwd")).await.assert_status(404);
    assert_eq!(cp.call("POST", "/ui/", "", true, None).await.status, 405);

    let empty = cp.call("GET", "/v1/policies/rejected", "", false, None).await.json;
    assert!(empty["at"].is_null() && empty["response"].is_null(), "{empty}");
    let bad = "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: broken}\nspec:\n  service: x\n  timeout: soon\n";
    assert_eq!(cp.call("PUT", "/v1/policies", bad, false, None).await.status, 401);
    let still = cp.call("GET", "/v1/policies/rejected", "", false, None).await.json;
    assert!(still["response"].is_null(), "a write without the token is not recorded: {still}");
    // A dry run needs the token too (docs/control-plane.md); with it, the errors are not recorded.
    assert_eq!(cp.call("POST", "/v1/validate", bad, false, None).await.status, 401);
    assert_eq!(cp.call("POST", "/v1/validate", bad, true, None).await.status, 400);
    assert!(cp.call("GET", "/v1/policies/rejected", "", false, None).await.json["response"].is_null(), "nor a dry run");
    assert_eq!(cp.call("PUT", "/v1/policies", bad, true, None).await.status, 400);
    let last = cp.call("GET", "/v1/policies/rejected", "", false, None).await.json;
    assert!(last["at"].as_u64().is_some_and(|at| at > 0), "{last}");
    let errors = last["response"]["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e["field"].as_str().is_some_and(|f| f.contains("timeout"))), "{last:#}");

    let up = upstream::http1().name("reviews").start().await;
    cp.apply(&format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: reviews}}\nspec:\n  port: 8080\n  endpoints:\n    \
         - {{address: \"{}\"}}\n",
        up.endpoint()
    ))
    .await;
    let frontend = MeshProxy::start(&cp.xds_url(), "frontend-1", "frontend", Protocol::Delta).await;
    frontend.wait_ready().await;
    let status = cp.status().await;
    assert_eq!(status["proxies"][0]["version"], env!("CARGO_PKG_VERSION"), "{status:#}");
    wait::wait_until("reviews reachable through the frontend proxy", || async {
        frontend.get("http://reviews:8080/").await.status == 200
    })
    .await;
    for _ in 0..10 {
        frontend.get("http://reviews:8080/").await.assert_status(200);
    }
    let mesh = wait::wait_for("the calls on the frontend → reviews edge", || async {
        let mesh = cp.call("GET", "/v1/mesh?window=1m", "", false, None).await.json;
        let edge = mesh["edges"].as_array()?.iter().find(|e| e["source"] == "frontend")?.clone();
        (edge["requests"].as_u64()? >= 11).then_some(mesh)
    })
    .await;
    let edge = &mesh["edges"][0];
    assert_eq!(
        (edge["destination"].as_str(), edge["successRate"].as_f64()),
        (Some("reviews"), Some(100.0)),
        "{mesh:#}"
    );
    assert_eq!(mesh["services"][0]["service"], "reviews");
    assert_eq!(mesh["services"][0]["endpoints"], 1);
    let stats = cp.stats("reviews", "window=1m").await.json;
    assert!(stats["endpoints"][0]["ewmaMs"].as_f64().is_some_and(|ms| ms > 0.0), "the caller's EWMA: {stats:#}");
    assert_eq!(stats["resilience"]["breaker"]["state"], "unknown", "no breaker policy: {stats:#}");
    assert_eq!(cp.call("GET", "/v1/mesh?window=2h", "", false, None).await.status, 400);

    // The Service page reads only what names its service.
    cp.apply(
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: reviews-timeouts}\nspec:\n  service: reviews\n  \
         timeout: 2s\n---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: ratings}\nspec:\n  port: 8080\n",
    )
    .await;
    let listed = cp.call("GET", "/v1/policies?service=reviews", "", false, None).await.json;
    let names: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, ["Service/reviews", "TrafficPolicy/reviews-timeouts"], "{listed:#}");
    let all = cp.call("GET", "/v1/policies", "", false, None).await.json;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(3), "{all:#}");
    let rollouts = cp.call("GET", "/v1/rollouts?service=reviews", "", false, None).await;
    assert_eq!((rollouts.status.as_u16(), rollouts.json["items"].as_array().map(Vec::len)), (200, Some(0)));
    assert_eq!(cp.call("GET", "/v1/policies?color=red", "", false, None).await.status, 400);
    assert_eq!(cp.call("GET", "/v1/rollouts?service=", "", false, None).await.status, 400);
}

/// The Proxies page's certificate expiry and uptime: a sidecar that got its certificate from
/// this control plane (join token, then `POST /v1/certificates`) is listed with the
/// certificate's expiry (issued now, living the CA's workload TTL) and when its stream
/// connected; a proxy without identity has neither certificate nor expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxies_page_has_a_sidecars_certificate_expiry_and_connection_time() {
    use outrider_tests::mesh;
    let unix = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let dir = TempDir::new("outrider-dashboard-certs");
    let ttl = Duration::from_secs(6 * 3600);
    let cp = mesh::control_plane(dir.path(), ttl);
    cp.apply("apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  port: 9080\n").await;
    let token = mesh::join_token(&cp, "reviews").await;
    let before = unix();
    let sidecar = mesh::Sidecar::start(&cp, "reviews", None, Some(&token)).await;
    let plain = MeshProxy::start(&cp.xds_url(), "plain-1", "frontend", Protocol::Delta).await;
    plain.wait_ready().await;
    let after = unix();
    let status = wait::wait_for("both proxies in /v1/status, the sidecar with its certificate's expiry", || async {
        let status = cp.status().await;
        let proxies = status["proxies"].as_array()?;
        let with =
            proxies.iter().any(|p| p["identity"] == mesh::identity("reviews").as_str() && p["certExpiresAt"].is_u64());
        (with && proxies.len() == 2).then_some(status)
    })
    .await;
    let proxies = status["proxies"].as_array().unwrap();
    let meshed = proxies.iter().find(|p| p["identity"] == mesh::identity("reviews").as_str()).unwrap();
    let expires = meshed["certExpiresAt"].as_u64().unwrap();
    assert!(
        (before + ttl.as_secs()..=after + ttl.as_secs()).contains(&expires),
        "expiry {expires} is not issuance ({before}..={after}) + {} s: {meshed:#}",
        ttl.as_secs()
    );
    let connected = meshed["connectedAt"].as_u64().unwrap();
    assert!((before..=after).contains(&connected), "connectedAt {connected} not in {before}..={after}: {meshed:#}");
    let other = proxies.iter().find(|p| p["nodeId"] == "plain-1").unwrap();
    assert!(other["identity"].is_null() && other["certExpiresAt"].is_null(), "{other:#}");
    assert!((before..=after).contains(&other["connectedAt"].as_u64().unwrap()), "{other:#}");
    drop(sidecar);
}
