//! Chaos between meshed sidecars (mutual TLS, identities from the control plane's CA): SIGTERM
//! to a server sidecar (the real binary) under HTTP/1.1, h2 and gRPC-streaming load; the CA
//! unreachable while certificates rotate; and the fault relay on the proxy-to-proxy hop
//! (delay, bandwidth, resets, dropped connections, a black hole). Every process is real: the
//! control plane is `outrider control-plane` and each sidecar an `outrider-proxy`, as child
//! processes. Each test checks what the client sees and that nothing a policy could have saved
//! was lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use outrider_tests::binary::ProxyProcess;
use outrider_tests::client::{self, Client};
use outrider_tests::cp_process::CpProcess;
use outrider_tests::fault::{self, OnConnect};
use outrider_tests::harness::TempDir;
use outrider_tests::mesh::{self, sidecar_process};
use outrider_tests::{upstream, wait};
use tokio_stream::wrappers::ReceiverStream;

/// A Service and a TrafficPolicy retrying what is safe to retry for GETs, `attempts` times.
fn service(name: &str, protocol: &str, port: u16, attempts: u32, extra: &str) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  protocol: {protocol}\n  port: {port}\n---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {name}}}\nspec:\n  service: {name}\n  retries:\n    attempts: {attempts}\n    retryOn: [connect-failure, refused-stream, reset, unavailable]\n{extra}"
    )
}

/// `GET uri` on a pooled client; `Ok((status, x-upstream))` or the transport error.
async fn try_get(c: &Client, uri: &str) -> Result<(u16, String), String> {
    let resp = tokio::time::timeout(wait::deadline(), c.request(client::get(uri)))
        .await
        .map_err(|_| format!("GET {uri}: no answer"))?
        .map_err(|e| format!("GET {uri}: {e:?}"))?;
    let status = resp.status().as_u16();
    let up = resp.headers().get("x-upstream").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let local = resp.headers().get("x-outrider-local-reply").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| format!("GET {uri}: body: {e:?}"))?;
    Ok((status, if status == 200 { up } else { format!("{up}{local}") }))
}

/// Sequential GETs by `workers` tasks until stopped; failures kept as the client saw them.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    by_upstream: Arc<Mutex<std::collections::BTreeMap<String, usize>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(clients: Vec<Client>, uri: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let by_upstream = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let tasks = clients
            .into_iter()
            .map(|c| {
                let (stop, ok, failures, by) = (stop.clone(), ok.clone(), failures.clone(), by_upstream.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match try_get(&c, uri).await {
                            Ok((200, up)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                *by.lock().unwrap().entry(up).or_insert(0) += 1;
                            }
                            Ok((status, what)) => failures.lock().unwrap().push(format!("{status} {what}")),
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Self { stop, ok, failures, by_upstream, tasks }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    async fn more(&self, what: &str, n: usize) {
        let at = self.ok();
        wait::wait_until(what, || async { self.ok() >= at + n }).await;
    }

    fn served_by(&self, upstream: &str) -> usize {
        self.by_upstream.lock().unwrap().get(upstream).copied().unwrap_or(0)
    }

    /// Stop; the failures the clients saw.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.failures.lock().unwrap())
    }
}

/// The real `outrider-proxy` as the meshed sidecar of `service` in front of `app`, draining
/// for up to 60 s after SIGTERM.
async fn binary_sidecar(cp: &CpProcess, dir: &TempDir, service: &str, app: SocketAddr) -> ProxyProcess {
    sidecar_process(cp, &cp.xds_url(), dir, service, Some(app.port()), &["--drain-timeout", "60s"]).await
}

/// A bidirectional gRPC stream through the caller: send one message, read its answer; the
/// answer names the app that holds the stream.
struct GrpcStream {
    tx: tokio::sync::mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse>,
}

impl GrpcStream {
    async fn open(outbound: SocketAddr) -> Self {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
            .unwrap()
            .origin("http://grpc-echo:50051".parse().unwrap())
            .connect()
            .await
            .expect("connect to the caller sidecar");
        let mut c = AggregatedDiscoveryServiceClient::new(ch);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let rx = wait::within("the stream to open", c.stream_aggregated_resources(ReceiverStream::new(rx)))
            .await
            .expect("the stream opens")
            .into_inner();
        Self { tx, rx }
    }

    /// One round trip; the app's name.
    async fn ping(&mut self, i: u32) -> String {
        let req = DiscoveryRequest { version_info: format!("v{i}"), type_url: "t".into(), ..Default::default() };
        self.tx.send(req).await.unwrap();
        let resp = wait::within("an answer on the stream", self.rx.message())
            .await
            .expect("no stream error")
            .expect("an answer, not the end");
        assert_eq!(resp.version_info, format!("v{i}"));
        resp.control_plane.map(|c| c.identifier).unwrap_or_default()
    }

    /// Close our side; the stream must end with status OK.
    async fn close(self) {
        let Self { tx, mut rx } = self;
        drop(tx);
        let end = wait::within("the end of the stream", rx.message()).await;
        assert!(matches!(end, Ok(None)), "the stream ends cleanly: {end:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_server_sidecar_under_h1_h2_and_grpc_streaming_load_loses_nothing() {
    let dir = TempDir::new("chaos-sigterm");
    let cp = CpProcess::start(dir.path()).await;
    cp.apply(&format!("{}---\n{}", service("echo", "http", 8080, 3, ""), service("grpc-echo", "grpc", 50051, 3, "")))
        .await;
    let (a1, a2) = (upstream::http1().name("a1").start().await, upstream::http1().name("a2").start().await);
    let (g1, g2) = (upstream::grpc().name("g1").start().await, upstream::grpc().name("g2").start().await);
    let mut s1 = binary_sidecar(&cp, &dir, "echo", a1.addr).await;
    let _s2 = binary_sidecar(&cp, &dir, "echo", a2.addr).await;
    let mut sg = vec![
        ("g1", binary_sidecar(&cp, &dir, "grpc-echo", g1.addr).await),
        ("g2", binary_sidecar(&cp, &dir, "grpc-echo", g2.addr).await),
    ];
    let caller = sidecar_process(&cp, &cp.xds_url(), &dir, "frontend", None, &[]).await;
    mesh::wait_meshed_endpoints_at(caller.addrs.admin, "echo", 2).await;
    mesh::wait_meshed_endpoints_at(caller.addrs.admin, "grpc-echo", 2).await;
    let outbound = caller.addrs.outbound;

    // HTTP/1.1 and h2 clients to the caller, and a gRPC stream held open across the SIGTERM.
    let clients = vec![client::http1(outbound), client::http1(outbound), client::h2(outbound), client::h2(outbound)];
    let n_clients = clients.len();
    let load = Load::start(clients, "http://echo:8080/load");
    load.more("load on both server sidecars", 100).await;
    assert!(load.served_by("a1") > 0 && load.served_by("a2") > 0, "both endpoints carry the load");
    let mut stream = GrpcStream::open(outbound).await;
    let holder = stream.ping(1).await;
    let (held_by, other) = if holder == "g1" { ("g1", "g2") } else { ("g2", "g1") };
    let idx = sg.iter().position(|(n, _)| *n == held_by).unwrap();
    let (_, mut sg_held) = sg.remove(idx);

    s1.signal("TERM");
    sg_held.signal("TERM");
    // The sidecar of a1 drains: it keeps accepting (each connection served and closed) until
    // the control plane has withdrawn it from the caller; the load moves to a2 without a failure.
    load.more("load after the SIGTERM", 200).await;
    let status = s1.wait().await;
    assert_eq!(status.code(), Some(0), "a drained sidecar exits 0; stderr:\n{}", s1.stderr());
    // Only s1 forwards to a1: what a1 has seen by now is final.
    let a1_final = a1.request_count();
    let a2_at_exit = a2.request_count();
    load.more("load after the sidecar exited", 100).await;
    assert_eq!(a1.request_count(), a1_final, "nothing reaches the app of a sidecar that has exited");
    // Up to one answer per client was counted by a2 before `a2_at_exit` and by the load after.
    let moved = a2.request_count() - a2_at_exit;
    assert!(moved + n_clients >= 100, "the load goes to the other sidecar: {moved} of 100 answers reached a2");
    let failures = load.stop().await;
    assert!(failures.is_empty(), "GETs failed around the SIGTERM: {failures:?}");

    // The stream on the draining sidecar still carries messages, new streams go to the other.
    assert_eq!(stream.ping(2).await, held_by, "the in-flight stream stays on its sidecar while it drains");
    let mut fresh = GrpcStream::open(outbound).await;
    assert_eq!(fresh.ping(1).await, other, "a new stream goes to the sidecar that is not draining");
    assert!(sg_held.try_wait().is_none(), "the draining sidecar waits for the open stream");
    stream.close().await;
    let status = sg_held.wait().await;
    assert_eq!(status.code(), Some(0), "exits 0 once the stream ended; stderr:\n{}", sg_held.stderr());
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_unreachable_during_rotation_keeps_serving_retries_and_recovers() {
    let dir = TempDir::new("chaos-ca");
    // 60 s certificates rotate 30-48 s after issue; a failed renewal is retried within 1 s,
    // then 2 s, 4 s ... (full jitter). Each sidecar reaches the CA (the control plane's API)
    // only through a relay of its own, so each outage ends once that sidecar has been refused
    // and has retried, however far apart the two rotations fall: both renew well before expiry.
    let cp = CpProcess::start_with(dir.path(), &["--workload-cert-ttl", "60s"]).await;
    cp.apply(&service("reviews", "http", 9080, 3, "")).await;
    let (server_ca, caller_ca) = (fault::relay(cp.api).await, fault::relay(cp.api).await);
    let (server_url, caller_url) = (format!("http://{}", server_ca.addr), format!("http://{}", caller_ca.addr));
    let app = upstream::http1().name("reviews-app").start().await;
    let server =
        sidecar_process(&cp, &cp.xds_url(), &dir, "reviews", Some(app.addr.port()), &["--ca-address", &server_url])
            .await;
    let caller = sidecar_process(&cp, &cp.xds_url(), &dir, "frontend", None, &["--ca-address", &caller_url]).await;
    mesh::wait_meshed_endpoints_at(caller.addrs.admin, "reviews", 1).await;
    let load = Load::start(vec![client::http1(caller.addrs.outbound)], "http://reviews:9080/r");
    load.more("load before the outage", 20).await;

    // The CA goes away for both before either rotates.
    let installed = (installs(&caller).await, installs(&server).await);
    server_ca.set(|f| f.on_connect = OnConnect::Reset);
    caller_ca.set(|f| f.on_connect = OnConnect::Reset);
    tokio::join!(
        outage("the caller sidecar", &caller, &caller_ca, installed.0, &load),
        outage("the server sidecar", &server, &server_ca, installed.1, &load),
    );
    load.more("load after the renewals", 20).await;
    let failures = load.stop().await;
    assert!(failures.is_empty(), "requests failed while the CA was unreachable: {failures:?}");
    caller.get("http://reviews:9080/after").await.assert_status(200);
}

/// One sidecar's side of the CA outage: it tries to renew (at 50-80 % of the lifetime), is
/// refused and retries, renewing nothing and serving on; then the CA comes back (`ca` heals)
/// and it renews.
async fn outage(name: &str, sidecar: &ProxyProcess, ca: &fault::Relay, installed: u64, load: &Load) {
    let failed = || sidecar.stdout().iter().filter(|l| l.contains("certificate renewal failed")).count();
    // Rotation is up to 48 s away: the limit is that plus the deadline.
    let limit = wait::deadline() + Duration::from_secs(50);
    let refused = tokio::time::timeout(limit, async {
        while failed() < 2 {
            tokio::time::sleep(wait::POLL_INTERVAL).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "{name} was not refused twice (a renewal and its retry) within {limit:?}");
    assert_eq!(installs(sidecar).await, installed, "{name} renewed while its CA was unreachable");
    load.more(&format!("load while {name} cannot reach the CA"), 20).await;
    ca.heal();
    wait::wait_until(&format!("{name} to renew once the CA is back"), || async { installs(sidecar).await > installed })
        .await;
}

/// Certificates the sidecar has installed so far (`/config_dump`).
async fn installs(s: &ProxyProcess) -> u64 {
    s.config_dump().await["node"]["identity"]["certificates_installed"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_the_hop_between_two_sidecars() {
    let dir = TempDir::new("chaos-hop");
    let cp = CpProcess::start(dir.path()).await;
    // Ten attempts: with half the new hop connections dropped, a request fails only when all
    // eleven tries meet a dropped connection (one in 2048 for the few requests that need one).
    cp.apply(&service("reviews", "http", 9080, 10, "  timeout: 3s\n")).await;
    let app = upstream::http1().name("reviews-app").start().await;
    // The server sidecar's inbound port, chosen first so the relay can point at it; the
    // sidecar registers the relay's address as its endpoint.
    let inbound = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let hop = fault::relay(inbound).await;
    let (inbound_port, advertise) = (inbound.port().to_string(), hop.addr.to_string());
    let server = sidecar_process(
        &cp,
        &cp.xds_url(),
        &dir,
        "reviews",
        Some(app.addr.port()),
        &["--inbound-port", &inbound_port, "--advertise", &advertise],
    )
    .await;
    assert_eq!(server.addrs.inbound, inbound, "the sidecar listens where the relay forwards");
    let caller = sidecar_process(&cp, &cp.xds_url(), &dir, "frontend", None, &[]).await;
    mesh::wait_meshed_endpoints_at(caller.addrs.admin, "reviews", 1).await;
    let outbound = caller.addrs.outbound;
    caller.get("http://reviews:9080/first").await.assert_status(200);
    assert!(hop.forwarded() >= 1, "the hop goes through the relay");
    // Delay: every call still succeeds.
    hop.set(|f| f.delay = Duration::from_millis(20));
    let load = Load::start(vec![client::http1(outbound), client::h2(outbound)], "http://reviews:9080/load");
    load.more("load with 20 ms on the hop", 20).await;

    // Bandwidth: a 256 KiB body goes and comes back whole at 512 KiB/s.
    hop.set(|f| {
        f.delay = Duration::ZERO;
        f.bandwidth = Some(512 * 1024);
    });
    let body = "x".repeat(256 * 1024);
    let r =
        client::send(&client::http1(outbound), client::request("POST", "http://reviews:9080/big", body.clone())).await;
    r.assert_status(200);
    assert_eq!(r.echo().body.len(), body.len(), "the body crossed the slow hop whole");
    hop.set(|f| f.bandwidth = None);

    // Resets of every open hop connection, repeatedly, under load: retries save every GET.
    for round in 0..3 {
        let resets = hop.resets();
        hop.reset_all();
        wait::wait_until("the relay to reset the hop", || async { hop.resets() > resets }).await;
        load.more(&format!("load after reset {round}"), 20).await;
    }
    // Half the new hop connections dropped at once: reconnects and retries get through.
    hop.set(|f| f.drop_rate = 0.5);
    hop.reset_all();
    load.more("load with half the connections dropped", 20).await;
    hop.set(|f| f.drop_rate = 0.0);
    let failures = load.stop().await;
    assert!(failures.is_empty(), "GETs failed on a faulty hop that retries could save: {failures:?}");

    // A black hole: nothing to save, so a clear local reply within the route timeout.
    hop.set(|f| f.on_connect = OnConnect::Blackhole);
    hop.reset_all();
    let r = caller.get("http://reviews:9080/void").await;
    assert!(r.status == 504 || r.status == 503, "a black-holed hop answers 503/504, got {}", r.status);
    assert!(r.header("x-outrider-local-reply").is_some(), "the reply says it is the proxy's own: {:?}", r.headers);
    hop.heal();
    wait::wait_until("calls to work again once the hop is healed", || async {
        try_get(&caller.client, "http://reviews:9080/healed").await.is_ok_and(|(s, _)| s == 200)
    })
    .await;
}
