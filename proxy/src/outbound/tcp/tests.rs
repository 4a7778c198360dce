use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::telemetry::metrics::Metrics;

async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let addr = l.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.unwrap(), b.unwrap().0)
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mut client, down) = pair(&l).await;
    let (up, mut server) = pair(&l).await;
    let recorder = Arc::new(Recorder {
        metrics: Metrics::new(),
        access_log: false,
        access_log_sample: 1.0,
        tracer: None,
        workload: None,
    });
    let rec = TcpRecord::start(&recorder, Direction::outbound, client.local_addr().unwrap(), Arc::from("t"));
    let task = tokio::spawn(copy(down, Ok(up), rec, Some(Duration::from_secs(30))));
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping", "traffic flows before the timeout");
    let start = Instant::now();
    // Nothing moves now: paused time runs ahead to the idle deadline.
    task.await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(30), "closed only after 30 s of silence");
    assert_eq!(client.read(&mut buf).await.unwrap(), 0, "the client sees the connection closed");
}

/// An echo server: each connection gets its bytes back until EOF.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A local port nothing listens on, held (bound, never listening) by the returned socket so
/// no other socket takes it while the test runs: connects to it are refused.
fn closed_port() -> (SocketAddr, socket2::Socket) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (addr, s)
}

/// The outbound context with a snapshot of tcp service `db` (endpoints `eps`, policy `spec`).
fn outbound(eps: &[SocketAddr], spec: &str) -> (Arc<Outbound>, Arc<Cluster>) {
    let list: String = eps.iter().map(|e| format!("    - {{address: \"{e}\"}}\n")).collect();
    let yaml = format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: db}}\nspec:\n  protocol: tcp\n  port: 5432\n  \
         addresses: [\"127.100.0.9\"]\n  endpoints:\n{list}---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\n\
         metadata: {{name: db}}\nspec:\n  service: db\n  loadBalancer: round-robin\n{spec}"
    );
    let set = outrider_xds::load_str("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    let (snap, rejected) = crate::state::Builder::new().build(&outrider_xds::translate(&set));
    assert!(rejected.is_empty(), "{rejected:?}");
    let cluster = snap.clusters.values().find(|c| &*c.service == "db").unwrap().clone();
    let store = Arc::new(crate::state::Store::new());
    store.apply(snap);
    let recorder = Arc::new(Recorder {
        metrics: Metrics::new(),
        access_log: false,
        access_log_sample: 1.0,
        tracer: None,
        workload: None,
    });
    let ctx = Arc::new(Outbound {
        store,
        recorder,
        server: crate::http::server::HttpServer::new(&crate::http::server::ServerLimits::default()),
        socket: Default::default(),
        mesh: Arc::default(),
    });
    (ctx, cluster)
}

/// One client connection through `to_cluster`: whether the echo came back.
async fn connect_once(front: &TcpListener, ctx: &Arc<Outbound>, cluster: &Arc<Cluster>) -> bool {
    let (mut client, down) = pair(front).await;
    let (ctx2, cluster2) = (ctx.clone(), cluster.clone());
    let peer = client.local_addr().unwrap();
    let task = tokio::spawn(async move { to_cluster(&ctx2, down, peer, &cluster2).await });
    client.write_all(b"ping").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got).await;
    task.await.unwrap();
    got == b"ping"
}

/// `n` connections one after another; how many did not get their echo.
async fn failures(ctx: &Arc<Outbound>, cluster: &Arc<Cluster>, n: usize) -> usize {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut failed = 0;
    for _ in 0..n {
        let ok = tokio::time::timeout(Duration::from_secs(10), connect_once(&front, ctx, cluster))
            .await
            .expect("a connection through the proxy ends within 10 s");
        failed += usize::from(!ok);
    }
    failed
}

fn is_ejected(cluster: &Cluster, addr: SocketAddr) -> bool {
    cluster.endpoints.items().iter().find(|e| e.addr == addr).unwrap().shared.health.is_ejected()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_connect_failures_eject_a_tcp_endpoint() {
    let (a, b, (dead, _held)) = (echo_server().await, echo_server().await, closed_port());
    let (ctx, cluster) = outbound(
        &[a, b, dead],
        "  outlierDetection: {consecutive5xx: 2, baseEjectionTime: 60s, maxEjectionPercent: 34}\n",
    );
    assert_eq!(failures(&ctx, &cluster, 12).await, 2, "two failed connects in a row eject it");
    assert!(is_ejected(&cluster, dead));
    assert_eq!(failures(&ctx, &cluster, 10).await, 0);
    let m = ctx.recorder.metrics.encode();
    assert!(m.contains("outrider_outlier_ejections_total{service=\"db\"} 1"), "{m}");
}

#[tokio::test(start_paused = true)]
async fn a_failure_percentage_of_connects_ejects_a_tcp_endpoint() {
    let (a, (dead, _held)) = (echo_server().await, closed_port());
    let (ctx, cluster) = outbound(
        &[a, dead],
        "  outlierDetection: {consecutive5xx: 0, failurePercentageThreshold: 50, failurePercentageMinimumRequests: 3, \
         interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50}\n",
    );
    // Round robin: half the connects go to the dead endpoint, and every one of those fails. The
    // first outcome starts the first interval; the interval is judged when the first attempt
    // after its end reports — paused time is moved past it, so nothing here waits on the wall
    // clock.
    let failed = failures(&ctx, &cluster, 10).await;
    assert!(failed >= 3, "enough failed connects for the failure percentage to count: {failed}");
    tokio::time::advance(Duration::from_secs(1)).await;
    failures(&ctx, &cluster, 1).await;
    assert!(is_ejected(&cluster, dead), "ejected for its failure percentage");
    assert_eq!(failures(&ctx, &cluster, 10).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_endpoints_breaker_opens_on_connect_failures_and_it_is_skipped() {
    let (a, (dead, _held)) = (echo_server().await, closed_port());
    let (ctx, cluster) = outbound(
        &[a, dead],
        "  circuitBreaker: {failureRateThreshold: 50, window: 3, minimumCalls: 3, openDuration: 60s}\n",
    );
    assert_eq!(failures(&ctx, &cluster, 20).await, 3, "three failed connects open the dead endpoint's breaker");
    let ep = cluster.endpoints.items().iter().find(|e| e.addr == dead).unwrap();
    assert_eq!(ep.shared.breaker.state(), crate::policy::breaker::State::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_is_one_request_in_the_load_reports_failed_when_the_connect_fails() {
    let (open, (dead, _held)) = (echo_server().await, closed_port());
    let load = |cluster: &Cluster, addr: SocketAddr| {
        cluster.endpoints.items().iter().find(|e| e.addr == addr).unwrap().shared.load.take()
    };
    let (ctx, cluster) = outbound(&[open], "");
    assert_eq!(failures(&ctx, &cluster, 1).await, 0);
    let sample = load(&cluster, open);
    assert_eq!((sample.issued, sample.succeeded, sample.failed), (1, 1, 0));

    let (ctx, cluster) = outbound(&[dead], "");
    assert_eq!(failures(&ctx, &cluster, 1).await, 1);
    let sample = load(&cluster, dead);
    assert_eq!((sample.issued, sample.succeeded, sample.failed), (1, 0, 1));
    assert_eq!(sample.buckets.iter().map(|(_, n)| n).sum::<u64>(), 1, "its connect time is in the histogram");
}
