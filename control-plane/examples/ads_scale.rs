//! ADS scale benchmark: N simulated Delta xDS clients connected to one `outrider control-plane`
//! process serving S services. Applies a change to one service and measures, per client, the
//! time from the `apply` answer to the client having the new endpoints (p50/p99/max), plus the
//! control plane's RSS and CPU time (from /proc).
//!
//! ```sh
//! cargo build --release -p outrider-control-plane --bins --examples
//! target/release/examples/ads_scale --clients 2000 --services 1000 --rounds 5
//! ```
//! The control plane binary is `target/release/outrider` (or `--outrider PATH`); it gets
//! `--workers 1` so the numbers are for one core.
//!
//! `--lrs SECONDS` then also opens a load-report stream (LRS) per client, as a proxy does,
//! reporting every interval the control plane asks for (`--lrs-interval`) on `--lrs-calls`
//! services (both endpoints each, 8 latency buckets), and prints the control plane's memory and
//! CPU with them and what its stats store holds (`GET /v1/stats`).
//!
//! With `--kubeconfig FILE --replicas N` the control planes are N replicas of
//! `outrider control-plane --kubernetes` fed by that cluster's API server (the test bed's:
//! `cargo run -p outrider-tests --bin kube-testbed` prints a kubeconfig): the S services are
//! Kubernetes Services with an EndpointSlice each, created through the API server; clients are
//! spread over the replicas in turn; a change is one EndpointSlice moving its port, timed from
//! the API server's answer to each client holding a new load assignment.
//!
//! Simulated clients are lean by default: each opens a real Delta xDS stream, subscribes to
//! the four types as a proxy does, ACKs every response and keeps only when each load
//! assignment version arrived — not the resources (10,000 clients holding 5,000 services'
//! decoded config each need about 20 GB, more than this machine has; it does not even decode
//! them). `--full-clients` runs
//! the proxy's own ADS client instead (it keeps what it accepted, as a proxy does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use outrider_xds::ads::{AdsClient, ClientConfig, Handler, Update};
use outrider_xds::resources::CLUSTER_LOAD_ASSIGNMENT_TYPE_URL;
use parking_lot::Mutex;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long)]
    outrider: Option<PathBuf>,
    /// Seconds of load reports from every client after the rounds (0: none).
    #[arg(long, default_value_t = 0)]
    lrs: u64,
    /// `--load-report-interval` of the control plane.
    #[arg(long, default_value = "5s")]
    lrs_interval: String,
    /// Services each client reports on.
    #[arg(long, default_value_t = 10)]
    lrs_calls: usize,
    /// Kubernetes mode: the cluster whose API server feeds the replicas.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: how many control plane replicas.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Run the proxy's ADS client per simulated proxy (it keeps every accepted resource)
    /// instead of the lean client that keeps nothing.
    #[arg(long)]
    full_clients: bool,
    /// Kubernetes mode: glibc's `MALLOC_ARENA_MAX` for the replicas (the manifests set 2);
    /// unset when absent. The bench's own process is not affected.
    #[arg(long)]
    malloc_arena_max: Option<u32>,
}

/// One simulated proxy: `--full-clients` picks the proxy's ADS client, else [`lean_client`].
fn spawn_client(args: &Args, xds: SocketAddr, id: usize, recorder: Arc<Recorder>) {
    let node = Node { id: format!("sim-{id}"), ..Default::default() };
    let config = ClientConfig::new(format!("http://{xds}"), node);
    if args.full_clients {
        tokio::spawn(AdsClient::new(config).run(recorder));
    } else {
        tokio::spawn(lean_client(config, recorder));
    }
}

/// The fields of a `DeltaDiscoveryResponse` the lean client reads.
#[derive(Clone, PartialEq, prost::Message)]
struct DeltaHead {
    #[prost(string, tag = "1")]
    system_version_info: String,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// Reads gRPC messages as they stream in without holding them: of each message it keeps only
/// the bytes before its first `resources` field (2), which the control plane writes after the
/// response's own fields (control-plane/src/xds/encode.rs), and skips the rest.
#[derive(Default)]
struct Heads {
    prefix: Vec<u8>,
    /// Bytes of the current message still to come (`None`: reading a prefix).
    remaining: Option<usize>,
    head: Vec<u8>,
    head_done: bool,
}

impl Heads {
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<DeltaHead>) -> Result<(), prost::DecodeError> {
        while !data.is_empty() || self.remaining == Some(0) {
            let Some(remaining) = self.remaining else {
                let n = (5 - self.prefix.len()).min(data.len());
                self.prefix.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.prefix.len() == 5 {
                    let len = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]);
                    self.remaining = Some(len as usize);
                    self.prefix.clear();
                    self.head.clear();
                    self.head_done = false;
                }
                continue;
            };
            let n = remaining.min(data.len());
            if !self.head_done {
                self.head.extend_from_slice(&data[..n]);
                if let Some(end) = first_resource(&self.head) {
                    self.head.truncate(end);
                    self.head_done = true;
                }
            }
            data = &data[n..];
            self.remaining = Some(remaining - n);
            if remaining == n {
                out.push(<DeltaHead as prost::Message>::decode(self.head.as_slice())?);
                self.remaining = None;
            }
        }
        Ok(())
    }
}

/// Where field 2 starts in an encoded message's first bytes, once they show it.
fn first_resource(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let mut rest = &bytes[at..];
        let before = rest.len();
        let key = prost::encoding::decode_varint(&mut rest).ok()?;
        if key >> 3 == 2 {
            return Some(at);
        }
        let skip = match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut rest).ok()?;
                0
            }
            1 => 8,
            2 => usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?,
            5 => 4,
            _ => return None,
        };
        if rest.len() < skip {
            return None;
        }
        at += before - rest.len() + skip;
    }
}

/// One gRPC message on the wire.
fn grpc_message(message: &impl prost::Message) -> bytes::Bytes {
    let body = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(&body);
    framed.into()
}

/// A Delta xDS client that subscribes to every type as a proxy does and ACKs every response,
/// keeping nothing of it but when each load assignment version arrived: it streams each
/// response through [`Heads`] instead of buffering it (a proxy holds the whole response;
/// 10,000 of those are more than this machine's memory). Its HTTP/2 windows are 256 KiB.
/// Reconnects (with a fresh subscription) when its stream ends.
async fn lean_client(config: ClientConfig, recorder: Arc<Recorder>) {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use http_body_util::BodyExt as _;
    type Frames = Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>;
    const DELTA: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
    let authority = config.address.trim_start_matches("http://").to_owned();
    loop {
        let stream = async {
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .initial_stream_window_size(256 << 10)
                .initial_connection_window_size(256 << 10)
                .handshake(hyper_util::rt::TokioIo::new(tcp))
                .await?;
            tokio::spawn(conn);
            let (tx, rx) = tokio::sync::mpsc::channel::<Frames>(config.type_urls.len() + 4);
            for type_url in &config.type_urls {
                let subscribe = DeltaDiscoveryRequest {
                    node: Some(config.node.clone()),
                    type_url: type_url.clone(),
                    ..Default::default()
                };
                tx.send(Ok(http_body::Frame::data(grpc_message(&subscribe)))).await?;
            }
            let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            let request = http::Request::post(format!("http://{authority}{DELTA}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(body)?;
            let mut responses = sender.send_request(request).await?.into_body();
            let (mut heads, mut got) = (Heads::default(), Vec::new());
            while let Some(frame) = responses.frame().await {
                let Ok(data) = frame?.into_data() else { continue };
                heads.feed(&data, &mut got)?;
                for response in got.drain(..) {
                    if response.type_url == CLUSTER_LOAD_ASSIGNMENT_TYPE_URL {
                        recorder.record(&response.system_version_info);
                    }
                    let ack = DeltaDiscoveryRequest {
                        type_url: response.type_url,
                        response_nonce: response.nonce,
                        ..Default::default()
                    };
                    tx.send(Ok(http_body::Frame::data(grpc_message(&ack)))).await?;
                }
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        };
        if let Err(e) = stream.await {
            eprintln!("{}: xDS stream ended: {e}", config.node.id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Records when each EDS version arrived.
#[derive(Default)]
struct Recorder {
    seen: Mutex<BTreeMap<String, Instant>>,
}

/// Versions recorded by all clients together: the waits below scan every client's record only
/// once this says enough have arrived (a scan of 10,000 records every few milliseconds took
/// much of the clients' one thread, and so delayed what it measures).
static ARRIVALS: AtomicUsize = AtomicUsize::new(0);

impl Recorder {
    fn record(&self, version: &str) {
        let mut seen = self.seen.lock();
        if !seen.contains_key(version) {
            seen.insert(version.to_owned(), Instant::now());
            ARRIVALS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Handler for Recorder {
    fn update(&self, update: &Update<'_>) -> Result<(), String> {
        if update.type_url == CLUSTER_LOAD_ASSIGNMENT_TYPE_URL {
            self.record(update.version);
        }
        Ok(())
    }
}

/// Wait until `scan` (what every client holds) counts `clients` entries, or until `deadline`;
/// scans only once [`ARRIVALS`] has grown by `clients` since `arrivals_before`, and then at most
/// every 100 ms.
async fn wait_for_all<T>(
    clients: usize,
    arrivals_before: usize,
    deadline: Instant,
    mut scan: impl FnMut() -> Vec<T>,
) -> Vec<T> {
    let mut last_scan: Option<Instant> = None;
    loop {
        let enough = ARRIVALS.load(Ordering::Relaxed) >= arrivals_before + clients;
        let expired = Instant::now() > deadline;
        if (enough && last_scan.is_none_or(|t| t.elapsed() >= Duration::from_millis(100))) || expired {
            let found = scan();
            if found.len() >= clients || expired {
                return found;
            }
            last_scan = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn policy(services: usize, round: usize) -> String {
    let mut out = String::new();
    for i in 0..services {
        // Round r moves service 0's endpoint: one service changes per round.
        let port = if i == 0 { 20000 + round } else { 10000 + i % 50000 };
        out.push_str(&format!(
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n  port: 8080\n  endpoints: [{{address: \"127.0.0.1:{port}\"}}, {{address: \"127.0.0.2:{port}\"}}]\n---\n"
        ));
    }
    out
}

/// A `/proc/PID/status` field in KiB (`VmHWM`: peak RSS, `VmRSS`: now).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn proc_stats(pid: u32) -> (u64, f64) {
    let rss_kb = status_kb(pid, "VmHWM:");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (rss_kb, ticks / 100.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn put(api: SocketAddr, body: String) -> String {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::put(format!("http://{api}/v1/policies"))
        .header("authorization", "Bearer bench")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.expect("the API answers");
    assert!(resp.status().is_success(), "apply failed: {}", resp.status());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["configVersion"].as_str().unwrap().to_owned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args = Args::parse();
    let bin = args.outrider.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        exe.parent().and_then(|p| p.parent()).unwrap().join("outrider")
    });
    if let Some(kubeconfig) = args.kubeconfig.clone() {
        kube_mode::run(&args, &bin, &kubeconfig).await;
        return;
    }
    let data = std::env::temp_dir().join(format!("outrider-ads-scale-{}", std::process::id()));
    let mut cp = Command::new(&bin)
        .args(["control-plane", "--xds-port", "0", "--api-port", "0", "--api-token", "bench", "--workers", "1"])
        .args(["--load-report-interval", &args.lrs_interval])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn,outrider=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let pid = cp.id();
    let mut lines = BufReader::new(cp.stdout.take().unwrap()).lines();
    let (xds, api) = loop {
        let line = lines.next().expect("the control plane exited").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "listening" {
            let xds: SocketAddr = v["xds"].as_str().unwrap().parse().unwrap();
            let api: SocketAddr = v["api"].as_str().unwrap().parse().unwrap();
            break (xds, api);
        }
    };
    std::thread::spawn(move || for _ in lines {});

    put(api, policy(args.services, 0)).await;
    // Let the first snapshot be generated before measuring what the clients add.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("control plane before clients: RSS {} MiB", status_kb(pid, "VmRSS:") / 1024);
    let recorders: Vec<Arc<Recorder>> = (0..args.clients).map(|_| Arc::new(Recorder::default())).collect();
    let arrivals = ARRIVALS.load(Ordering::Relaxed);
    for (i, r) in recorders.iter().enumerate() {
        spawn_client(&args, xds, i, r.clone());
    }
    let connect_start = Instant::now();
    // Wait until every client has the initial config.
    let deadline = connect_start + Duration::from_secs(120);
    let have = wait_for_all(args.clients, arrivals, deadline, || {
        recorders.iter().filter(|r| !r.seen.lock().is_empty()).map(|_| ()).collect()
    })
    .await;
    assert_eq!(have.len(), args.clients, "only {} clients got a config", have.len());
    println!("{} clients connected and configured in {:?}", args.clients, connect_start.elapsed());
    let (rss, cpu0) = proc_stats(pid);
    println!(
        "control plane after connect: peak RSS {} MiB, RSS now {} MiB, CPU {:.2}s",
        rss / 1024,
        status_kb(pid, "VmRSS:") / 1024,
        cpu0
    );

    let mut all = Vec::new();
    for round in 1..=args.rounds {
        let start = Instant::now();
        let arrivals = ARRIVALS.load(Ordering::Relaxed);
        let version = put(api, policy(args.services, round)).await;
        let applied = Instant::now();
        let deadline = applied + Duration::from_secs(60);
        let mut times = wait_for_all(args.clients, arrivals, deadline, || {
            recorders
                .iter()
                .filter_map(|r| r.seen.lock().get(&version).map(|t| t.saturating_duration_since(applied)))
                .collect()
        })
        .await;
        times.sort();
        println!(
            "round {round}: apply took {:?}; {} of {} clients updated: p50 {:?} p99 {:?} max {:?}",
            applied - start,
            times.len(),
            args.clients,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times.last().copied().unwrap_or_default()
        );
        all.extend(times);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    all.sort();
    let (rss, cpu1) = proc_stats(pid);
    println!(
        "all rounds: p50 {:?} p99 {:?}; control plane peak RSS {} MiB, RSS now {} MiB, CPU {:.2}s for {} rounds",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        rss / 1024,
        status_kb(pid, "VmRSS:") / 1024,
        cpu1 - cpu0,
        args.rounds
    );
    if args.lrs > 0 {
        load_reports(&args, xds, api, pid).await;
    }
    let _ = cp.kill();
    let _ = cp.wait();
    let _ = std::fs::remove_dir_all(&data);
}

/// One client's report: both endpoints of `calls` services (never svc-0, whose port moves).
fn report(args: &Args, client: usize, tick: usize) -> Vec<envoy_types::pb::envoy::config::endpoint::v3::ClusterStats> {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier};
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterStats, EndpointLoadMetricStats, UpstreamEndpointStats, UpstreamLocalityStats,
    };
    use outrider_xds::latency::{LATENCY_SUM_METRIC, bucket_metric_name};
    (0..args.lrs_calls)
        .map(|c| {
            let i = 1 + (client * 7 + c * 13) % (args.services - 1).max(1);
            let port = 10000 + i % 50000;
            let endpoints = ["127.0.0.1", "127.0.0.2"]
                .iter()
                .map(|ip| {
                    let mut metrics = vec![EndpointLoadMetricStats {
                        metric_name: LATENCY_SUM_METRIC.into(),
                        num_requests_finished_with_metric: 40,
                        total_metric_value: 200.0,
                    }];
                    let first = 40 + (i + tick) % 20;
                    metrics.extend((first..first + 8).map(|b| EndpointLoadMetricStats {
                        metric_name: bucket_metric_name(b),
                        num_requests_finished_with_metric: 5,
                        total_metric_value: 0.0,
                    }));
                    UpstreamEndpointStats {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: (*ip).into(),
                                port_specifier: Some(PortSpecifier::PortValue(port as u32)),
                                ..Default::default()
                            })),
                        }),
                        total_successful_requests: 39,
                        total_error_requests: 1,
                        total_issued_requests: 40,
                        load_metric_stats: metrics,
                        ..Default::default()
                    }
                })
                .collect();
            ClusterStats {
                cluster_name: outrider_xds::resources::cluster_name(&format!("svc-{i}"), 8080),
                upstream_locality_stats: vec![UpstreamLocalityStats {
                    upstream_endpoint_stats: endpoints,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect()
}

/// Every client reports over LRS for `--lrs` seconds; then the control plane's numbers.
async fn load_reports(args: &Args, xds: SocketAddr, api: SocketAddr, pid: u32) {
    use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
    use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
    let (_, cpu0) = proc_stats(pid);
    let start = Instant::now();
    let end = start + Duration::from_secs(args.lrs);
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let reports: Vec<_> = (0..4).map(|tick| report(args, client, tick)).collect();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let node = Node {
                id: format!("sim-{client}"),
                client_features: vec!["envoy.lrs.supports_send_all_clusters".into()],
                ..Default::default()
            };
            let config = ClientConfig::new(format!("http://{xds}"), node.clone());
            let channel = outrider_xds::ads::connect(&config, None).await.expect("a channel");
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            tx.send(LoadStatsRequest { node: Some(node), cluster_stats: Vec::new() }).await.unwrap();
            let mut lrs = LoadReportingServiceClient::new(channel);
            let mut responses =
                lrs.stream_load_stats(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
            let first = responses.message().await.unwrap().unwrap();
            let interval = first
                .load_reporting_interval
                .map_or(Duration::from_secs(5), |d| Duration::new(d.seconds as u64, d.nanos as u32));
            // Spread the clients over the interval, as independent proxies are.
            tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
            let mut tick = 0;
            while Instant::now() < end {
                let report = LoadStatsRequest { node: None, cluster_stats: reports[tick % reports.len()].clone() };
                if tx.send(report).await.is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tick += 1;
                tokio::time::sleep(interval).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let (rss, cpu1) = proc_stats(pid);
    let summary = get(api, "/v1/stats?window=15m").await;
    println!(
        "load reports: {} clients × {} services for {}s: {} reports; control plane CPU {:.2}s ({:.1} µs per report), \
         peak RSS {} MiB, RSS now {} MiB; stats: {} series, {:.1} MiB, {} proxies reporting",
        args.clients,
        args.lrs_calls,
        args.lrs,
        sent.load(std::sync::atomic::Ordering::Relaxed),
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1e6 / sent.load(std::sync::atomic::Ordering::Relaxed).max(1) as f64,
        rss / 1024,
        status_kb(pid, "VmRSS:") / 1024,
        summary["series"],
        summary["bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        summary["reportingProxies"],
    );
}

async fn get(api: SocketAddr, path: &str) -> serde_json::Value {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let resp = client.get(format!("http://{api}{path}").parse().unwrap()).await.expect("the API answers");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap_or_default()
}

/// `--kubeconfig`: replicas fed by an API server.
mod kube_mode {
    use std::collections::BTreeSet;

    use futures_util::StreamExt as _;
    use k8s_openapi::api::core::v1::{Namespace, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::Api;
    use kube::api::{Patch, PatchParams, PostParams};
    use serde_json::json;

    use super::*;

    const NS: &str = "bench";
    const SYSTEM: &str = "outrider-system";

    fn slice(i: usize, port: usize) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": NS,
                "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [format!("10.{}.{}.1", 1 + i / 250, i % 250)], "conditions": {"ready": true}},
                {"addresses": [format!("10.{}.{}.2", 1 + i / 250, i % 250)], "conditions": {"ready": true}}]
        }))
        .unwrap()
    }

    async fn populate(client: &kube::Client, services: usize) {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in [NS, SYSTEM] {
            let object = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
            let _ = namespaces.create(&PostParams::default(), &object).await;
        }
        // The outrider.io CRDs: replicas serve only once every kind they watch has been listed.
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for doc in serde_yaml_ng::Deserializer::from_str(&outrider_control_plane::kubernetes::crds::manifests()) {
            let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc).expect("a CRD");
            let name = crd.metadata.name.clone().unwrap_or_default();
            let _ = crds.create(&PostParams::default(), &crd).await;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let established = crds.get(&name).await.ok().and_then(|c| c.status).is_some_and(|s| {
                    s.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Established" && c.status == "True")
                });
                if established {
                    break;
                }
                assert!(Instant::now() < deadline, "CRD {name} not established");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
        let start = Instant::now();
        futures_util::stream::iter(0..services)
            .for_each_concurrent(16, |i| {
                let (svcs, slices) = (svcs.clone(), slices.clone());
                async move {
                    let svc: Service = serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}")},
                        "spec": {"ports": [{"name": "http", "port": 8080}]}}))
                    .unwrap();
                    let _ = svcs.create(&PostParams::default(), &svc).await;
                    let _ = slices.create(&PostParams::default(), &slice(i, 10000 + i % 50000)).await;
                }
            })
            .await;
        println!("created {services} Services and EndpointSlices in {:?}", start.elapsed());
    }

    struct Replica {
        child: std::process::Child,
        xds: SocketAddr,
        data: PathBuf,
    }

    fn start_replica(bin: &std::path::Path, kubeconfig: &std::path::Path, i: usize, arenas: Option<u32>) -> Replica {
        let data = std::env::temp_dir().join(format!("outrider-ads-scale-{}-{i}", std::process::id()));
        let mut command = Command::new(bin);
        match arenas {
            Some(n) => command.env("MALLOC_ARENA_MAX", n.to_string()),
            None => command.env_remove("MALLOC_ARENA_MAX"),
        };
        let mut child = command
            .args(["control-plane", "--kubernetes", "--xds-port", "0", "--api-port", "0", "--webhook-port", "0"])
            .args(["--workers", "1"])
            .args(["--namespace", SYSTEM, "--replica-name", &format!("cp-{i}")])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "warn,outrider=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let xds = loop {
            let line = lines.next().expect("the control plane exited").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "listening" {
                break v["xds"].as_str().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Replica { child, xds, data }
    }

    pub async fn run(args: &Args, bin: &std::path::Path, kubeconfig: &std::path::Path) {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(kubeconfig).expect("a kubeconfig"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("a usable kubeconfig");
        let client = kube::Client::try_from(config).expect("a client");
        populate(&client, args.services).await;
        let start = Instant::now();
        let mut replicas: Vec<Replica> =
            (0..args.replicas).map(|i| start_replica(bin, kubeconfig, i, args.malloc_arena_max)).collect();
        println!("{} replicas read the cluster and listen after {:?}", replicas.len(), start.elapsed());

        // Let the replicas settle before measuring what the clients add.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (i, r) in replicas.iter().enumerate() {
            println!("replica cp-{i} before clients: RSS {} MiB", status_kb(r.child.id(), "VmRSS:") / 1024);
        }
        let recorders: Vec<Arc<Recorder>> = (0..args.clients).map(|_| Arc::new(Recorder::default())).collect();
        let arrivals = ARRIVALS.load(Ordering::Relaxed);
        for (i, r) in recorders.iter().enumerate() {
            super::spawn_client(args, replicas[i % replicas.len()].xds, i, r.clone());
        }
        let connect_start = Instant::now();
        let deadline = connect_start + Duration::from_secs(300);
        let have = wait_for_all(args.clients, arrivals, deadline, || {
            recorders.iter().filter(|r| !r.seen.lock().is_empty()).map(|_| ()).collect()
        })
        .await;
        assert_eq!(have.len(), args.clients, "only {} clients got a config", have.len());
        println!("{} clients connected and configured in {:?}", args.clients, connect_start.elapsed());
        for (i, r) in replicas.iter().enumerate() {
            let id = r.child.id();
            println!(
                "replica cp-{i} after connect: peak RSS {} MiB, RSS now {} MiB",
                status_kb(id, "VmHWM:") / 1024,
                status_kb(id, "VmRSS:") / 1024
            );
        }
        let cpu0: Vec<f64> = replicas.iter().map(|r| proc_stats(r.child.id()).1).collect();

        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
        let mut all = Vec::new();
        for round in 1..=args.rounds {
            let before: Vec<BTreeSet<String>> =
                recorders.iter().map(|r| r.seen.lock().keys().cloned().collect()).collect();
            let arrivals = ARRIVALS.load(Ordering::Relaxed);
            // Ports no earlier run against the same cluster left (a round that restored the
            // state the clients started from would bring no new version).
            let port = 20000 + (std::process::id() as usize % 4000) * 10 + round;
            let patch = json!({"ports": [{"name": "http", "port": port, "protocol": "TCP"}]});
            slices.patch("svc-0", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch the slice");
            let applied = Instant::now();
            let deadline = applied + Duration::from_secs(60);
            let mut times = wait_for_all(args.clients, arrivals, deadline, || {
                recorders
                    .iter()
                    .zip(&before)
                    .filter_map(|(r, old)| {
                        r.seen
                            .lock()
                            .iter()
                            .filter(|(v, _)| !old.contains(*v))
                            .map(|(_, t)| t.saturating_duration_since(applied))
                            .min()
                    })
                    .collect()
            })
            .await;
            times.sort();
            println!(
                "round {round}: {} of {} clients updated: p50 {:?} p99 {:?} max {:?}",
                times.len(),
                args.clients,
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                times.last().copied().unwrap_or_default()
            );
            all.extend(times);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        all.sort();
        println!("all rounds: p50 {:?} p99 {:?}", percentile(&all, 0.5), percentile(&all, 0.99));
        for (i, r) in replicas.iter().enumerate() {
            let (peak, cpu) = proc_stats(r.child.id());
            println!(
                "replica cp-{i}: peak RSS {} MiB, RSS now {} MiB, CPU {:.2}s for {} rounds",
                peak / 1024,
                status_kb(r.child.id(), "VmRSS:") / 1024,
                cpu - cpu0[i],
                args.rounds
            );
        }
        for r in &mut replicas {
            let _ = r.child.kill();
            let _ = r.child.wait();
            let _ = std::fs::remove_dir_all(&r.data);
        }
    }
}
