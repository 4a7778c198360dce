//! Snapshot swaps under load: while HTTP/1.1 keep-alive connections, an h2 connection with
//! concurrent streams and a long gRPC bidi stream run through a proxy fed over xDS, the control
//! plane pushes 20+ policy changes. No request fails, no connection drops, the gRPC stream keeps
//! answering in order, and the proxy applies every version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use outrider_proxy::source::xds::Protocol;
use outrider_tests::client;
use outrider_tests::control_plane::{ControlPlane, MeshProxy};
use outrider_tests::harness::TempDir;
use outrider_tests::{policy, prom, upstream, wait};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// Policy changes pushed while the load runs.
const SWAPS: usize = 24;
/// HTTP/1.1 keep-alive connections.
const H1_CONNECTIONS: usize = 3;
/// Concurrent streams on the one h2 connection.
const H2_STREAMS: usize = 6;

/// Request and failure counts of one kind of load.
#[derive(Debug, Default)]
struct Counts {
    ok: AtomicUsize,
    failed: AtomicUsize,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 10 {
            errors.push(why);
        }
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

/// The mesh: three services, and for each a TrafficPolicy whose values depend on `round`, so
/// every round is a new config version (routes and clusters change, endpoints do not).
fn mesh(web: &upstream::Upstream, h2: &upstream::Upstream, grpc: &upstream::Upstream, round: usize) -> String {
    let tp = |svc: &str, spec: String| {
        format!(
            "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {svc}}}\nspec:\n  service: {svc}\n{spec}"
        )
    };
    policy::docs(&[
        policy::service("web").endpoint(web.endpoint()).yaml(),
        policy::service("h2svc").protocol("http2").endpoint(h2.endpoint()).yaml(),
        policy::service("grpc-echo").protocol("grpc").port(50051).endpoint(grpc.endpoint()).yaml(),
        tp("web", format!("  timeout: {}ms\n  connectTimeout: {}ms\n", 30_000 + round, 1_000 + round)),
        tp("h2svc", format!("  timeout: {}ms\n  connectTimeout: {}ms\n", 30_000 + round, 1_000 + round)),
        tp("grpc-echo", format!("  connectTimeout: {}ms\n", 1_000 + round)),
    ])
}

/// Requests in a loop on one HTTP/1.1 connection until `stop`; a closed connection counts as a
/// failure and ends the loop.
async fn h1_load(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut sender: http1::SendRequest<Full<Bytes>> = client::h1_connection(addr).await;
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = wait::within("the h1 connection to be ready", sender.ready()).await {
            counts.fail(format!("h1 connection {id} closed after {n} requests: {e}"));
            return;
        }
        let path = format!("/h1/{id}/{n}");
        let req = client::h1_get("web:8080", &path);
        match wait::within("an h1 response", sender.send_request(req)).await {
            Ok(resp) => {
                let reply = wait::within("an h1 body", client::read(resp)).await;
                if reply.status == 200 && reply.upstream() == Some("web") && reply.echo().path == path {
                    counts.ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    counts.fail(format!("h1 {path}: {} {}", reply.status, reply.text()));
                }
            }
            Err(e) => counts.fail(format!("h1 {path}: {e}")),
        }
        n += 1;
    }
}

/// Requests in a loop on a shared h2 connection until `stop`.
async fn h2_load(sender: http2::SendRequest<Full<Bytes>>, id: usize, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut sender = sender;
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = wait::within("the h2 connection to be ready", sender.ready()).await {
            counts.fail(format!("h2 connection closed (stream loop {id}, after {n}): {e}"));
            return;
        }
        let path = format!("/h2/{id}/{n}");
        let req = client::get(&format!("http://h2svc:8080{path}"));
        match wait::within("an h2 response", sender.send_request(req)).await {
            Ok(resp) => {
                let reply = wait::within("an h2 body", client::read(resp)).await;
                if reply.status == 200 && reply.upstream() == Some("h2") && reply.echo().path == path {
                    counts.ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    counts.fail(format!("h2 {path}: {} {}", reply.status, reply.text()));
                }
            }
            Err(e) => counts.fail(format!("h2 {path}: {e}")),
        }
        n += 1;
    }
}

/// One StreamAggregatedResources stream through the proxy: a message every few ms, each echoed
/// back in order, until `stop`; then the client closes and the stream must end with OK.
async fn grpc_stream(addr: SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .origin("http://grpc-echo:50051".parse().unwrap())
        .connect()
        .await
        .expect("connect to the proxy");
    let mut c = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = wait::within("the stream to open", c.stream_aggregated_resources(ReceiverStream::new(rx)))
        .await
        .expect("StreamAggregatedResources starts")
        .into_inner();
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let req = DiscoveryRequest {
            version_info: format!("v{i}"),
            response_nonce: format!("nonce-{i}"),
            type_url: "type.googleapis.com/test".into(),
            ..Default::default()
        };
        if tx.send(req).await.is_err() {
            counts.fail(format!("gRPC stream closed before message {i}"));
            return;
        }
        match wait::within("a response on the gRPC stream", responses.message()).await {
            Ok(Some(resp)) if resp.version_info == format!("v{i}") && resp.nonce == format!("nonce-{i}") => {
                counts.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Some(resp)) => {
                counts.fail(format!("gRPC message {i} answered out of order: {resp:?}"));
                return;
            }
            Ok(None) => {
                counts.fail(format!("gRPC stream ended after {i} messages"));
                return;
            }
            Err(e) => {
                counts.fail(format!("gRPC stream failed after {i} messages: {e:?}"));
                return;
            }
        }
        i += 1;
        // Pacing, not synchronization: a message every few ms for the whole run.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    drop(tx);
    match wait::within("the end of the gRPC stream", responses.message()).await {
        Ok(None) => {}
        other => counts.fail(format!("the gRPC stream did not end with OK: {other:?}")),
    }
}

/// Sum of `outrider_xds_updates_total{result="accepted"}` on the proxy.
async fn accepted_updates(proxy: &MeshProxy) -> f64 {
    let admin = client::http1(proxy.admin);
    let text = client::send(&admin, client::get("http://admin/metrics")).await.assert_status(200).text();
    prom::sum(&text, "outrider_xds_updates_total", &[("result", "accepted")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_swaps_under_h1_h2_and_grpc_load_drop_nothing() {
    let data = TempDir::new("cp-data");
    let cp = ControlPlane::start(data.path());
    let web = upstream::http1().name("web").start().await;
    let h2 = upstream::h2().name("h2").start().await;
    let grpc = upstream::grpc().name("grpc-up").start().await;
    let proxy = MeshProxy::start(&cp.xds_url(), "swapper", "frontend", Protocol::Delta).await;
    let first = cp.apply(&mesh(&web, &h2, &grpc, 0)).await;
    cp.wait_converged(&first, 1).await;
    proxy.wait_ready().await;
    wait::wait_until("web to be routed", || async { proxy.get("http://web:8080/").await.upstream() == Some("web") })
        .await;
    let outbound = proxy.app.as_ref().expect("the proxy runs").addrs.outbound;

    let stop = Arc::new(AtomicBool::new(false));
    let (h1, h2c, g) = (Arc::new(Counts::default()), Arc::new(Counts::default()), Arc::new(Counts::default()));
    let mut tasks = Vec::new();
    for id in 0..H1_CONNECTIONS {
        tasks.push(tokio::spawn(h1_load(outbound, id, stop.clone(), h1.clone())));
    }
    let h2_conn = client::h2_connection(outbound).await;
    for id in 0..H2_STREAMS {
        tasks.push(tokio::spawn(h2_load(h2_conn.clone(), id, stop.clone(), h2c.clone())));
    }
    drop(h2_conn);
    tasks.push(tokio::spawn(grpc_stream(outbound, stop.clone(), g.clone())));

    let some_load = |what: &'static str| {
        let (h1, h2c, g) = (h1.clone(), h2c.clone(), g.clone());
        let (b1, b2, bg) = (h1.ok(), h2c.ok(), g.ok());
        async move {
            wait::wait_until(what, || async {
                (h1.ok() > b1 + 20 && h2c.ok() > b2 + 20 && g.ok() > bg + 5)
                    || h1.failed() + h2c.failed() + g.failed() > 0
            })
            .await;
        }
    };
    some_load("load on h1, h2 and gRPC before the swaps").await;
    let accepted_before = accepted_updates(&proxy).await;
    let upstream_conns_before = (web.connections(), h2.connections(), grpc.connections());

    let mut versions = HashSet::from([first.clone()]);
    for round in 1..=SWAPS {
        let version = cp.apply(&mesh(&web, &h2, &grpc, round)).await;
        assert!(versions.insert(version.clone()), "round {round} did not change the config version");
        cp.wait_converged(&version, 1).await;
    }
    let accepted_after = accepted_updates(&proxy).await;
    // The load is still flowing after the last swap.
    some_load("load on h1, h2 and gRPC after the swaps").await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("a load task panicked");
    }

    assert_eq!(h1.failed(), 0, "h1 requests failed across the swaps: {:?}", h1.errors());
    assert_eq!(h2c.failed(), 0, "h2 requests failed across the swaps: {:?}", h2c.errors());
    assert_eq!(g.failed(), 0, "the gRPC stream broke across the swaps: {:?}", g.errors());
    assert_eq!(versions.len(), SWAPS + 1);
    assert!(
        accepted_after - accepted_before >= SWAPS as f64,
        "the proxy accepted {} updates for {SWAPS} swaps",
        accepted_after - accepted_before
    );
    let upstream_conns_after = (web.connections(), h2.connections(), grpc.connections());
    eprintln!("upstream connections (web, h2, grpc) before {upstream_conns_before:?} after {upstream_conns_after:?}");
    eprintln!(
        "{SWAPS} swaps: {} h1, {} h2 requests, {} gRPC messages; {} updates accepted",
        h1.ok(),
        h2c.ok(),
        g.ok(),
        accepted_after - accepted_before
    );
    proxy.shutdown().await;
}
