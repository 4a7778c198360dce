//! Memory of the load-report store at mesh scale: P proxies report on S services of E endpoints
//! each, for the 90 ten-second windows kept (15 minutes, simulated: reports are counted as if
//! they arrived in each window in turn). Prints the series kept, the bytes they hold (the
//! store's own count) and the process' RSS growth, for a typical latency spread (`--buckets`
//! non-empty latency buckets per endpoint and report) and for the worst case (every bucket of
//! every window in use: `--buckets 105`).
//!
//! ```sh
//! cargo build --release -p outrider-control-plane --examples
//! target/release/examples/stats_scale --proxies 2000 --services 1000 --endpoints 2 --calls 10 --buckets 8
//! target/release/examples/stats_scale --proxies 2000 --services 1000 --endpoints 2 --calls 10 --buckets 105
//! # and the dashboard's edges at their limit (4,096): proxies of 1,000 services
//! target/release/examples/stats_scale --proxies 2000 --services 1000 --endpoints 2 --calls 10 --buckets 105 --sources 1000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterStats, EndpointLoadMetricStats, UpstreamEndpointStats, UpstreamLocalityStats,
};
use outrider_control_plane::metrics::Metrics;
use outrider_control_plane::stats::{Stats, WINDOWS, slot_of};
use outrider_xds::latency::{BUCKETS, LATENCY_SUM_METRIC, bucket_metric_name};

#[derive(Parser, Debug)]
struct Args {
    /// Proxies reporting.
    #[arg(long, default_value_t = 2000)]
    proxies: usize,
    /// Services in the mesh.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 2)]
    endpoints: usize,
    /// Services each proxy calls (every endpoint of each).
    #[arg(long, default_value_t = 10)]
    calls: usize,
    /// Non-empty latency buckets per endpoint and report (1..=105).
    #[arg(long, default_value_t = 8)]
    buckets: usize,
    /// Services the reporting proxies belong to (proxy P is a proxy of service P mod N), which
    /// makes the dashboard's source → destination edges; 0: the proxies name no service, and
    /// every edge comes from `(unknown)` (one per service called).
    #[arg(long, default_value_t = 0)]
    sources: usize,
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn address_of(service: usize, endpoint: usize) -> (String, u16) {
    (format!("10.{}.{}.{}", service / 250, service % 250, endpoint + 1), 8080)
}

fn mesh(args: &Args) -> outrider_xds::PolicySet {
    let mut yaml = String::new();
    for s in 0..args.services {
        yaml.push_str(&format!(
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: svc-{s}}}\nspec:\n  port: 8080\n  endpoints:\n"
        ));
        for e in 0..args.endpoints {
            let (ip, port) = address_of(s, e);
            yaml.push_str(&format!("    - {{address: \"{ip}:{port}\", labels: {{version: v{}}}}}\n", e % 2 + 1));
        }
        yaml.push_str("---\n");
    }
    outrider_xds::load_str("mesh.yaml", &yaml).expect("a valid mesh")
}

/// One proxy's report: every endpoint of the services it calls.
fn report(args: &Args, proxy: usize, round: usize) -> Vec<ClusterStats> {
    (0..args.calls)
        .map(|c| {
            let s = (proxy * 7 + c * 13) % args.services;
            let endpoints = (0..args.endpoints)
                .map(|e| {
                    let (ip, port) = address_of(s, e);
                    // One endpoint answers alike to every proxy; the buckets move with the window.
                    let first = (round + s + e) % (BUCKETS - args.buckets + 1);
                    let mut metrics = vec![EndpointLoadMetricStats {
                        metric_name: LATENCY_SUM_METRIC.into(),
                        num_requests_finished_with_metric: 50,
                        total_metric_value: 500.0,
                    }];
                    metrics.extend((first..first + args.buckets).map(|b| EndpointLoadMetricStats {
                        metric_name: bucket_metric_name(b),
                        num_requests_finished_with_metric: 1,
                        total_metric_value: 0.0,
                    }));
                    UpstreamEndpointStats {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: ip,
                                port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
                                ..Default::default()
                            })),
                        }),
                        total_successful_requests: 49,
                        total_error_requests: 1,
                        total_issued_requests: 50,
                        load_metric_stats: metrics,
                        ..Default::default()
                    }
                })
                .collect();
            ClusterStats {
                cluster_name: outrider_xds::resources::cluster_name(&format!("svc-{s}"), 8080),
                upstream_locality_stats: vec![UpstreamLocalityStats {
                    upstream_endpoint_stats: endpoints,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect()
}

fn main() {
    let args = Args::parse();
    assert!((1..=BUCKETS).contains(&args.buckets), "--buckets must be 1..={BUCKETS}");
    let set = mesh(&args);
    let stats = Stats::new(Duration::from_secs(5), Metrics::new());
    stats.update_mesh(&set);
    drop(set);
    let before = rss_kb();
    let now = slot_of(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    let start = Instant::now();
    let mut entries = 0usize;
    for window in 0..WINDOWS {
        let slot = now + 1 - WINDOWS as u64 + window as u64;
        for proxy in 0..args.proxies {
            let r = report(&args, proxy, window);
            entries += r.iter().map(|c| c.upstream_locality_stats[0].upstream_endpoint_stats.len()).sum::<usize>();
            let source = if args.sources == 0 { String::new() } else { format!("svc-{}", proxy % args.sources) };
            stats.ingest_at(&format!("proxy-{proxy}"), &source, slot, &r);
        }
    }
    let took = start.elapsed();
    let after = rss_kb();
    let (series, bytes) = stats.footprint();
    let edges = stats.edge_count();
    println!(
        "{} proxies × {} services × {} endpoints, {} calls each, {} buckets per report, {} windows, \
         proxies of {} services",
        args.proxies, args.services, args.endpoints, args.calls, args.buckets, WINDOWS, args.sources
    );
    println!(
        "ingested {entries} endpoint reports in {:.1}s ({:.2} µs each)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / entries.max(1) as f64
    );
    println!(
        "series {series} and {edges} edges; store {:.1} MiB ({:.1} KiB per series or edge); RSS {:.1} → {:.1} MiB (+{:.1} MiB)",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1024.0 / (series + edges).max(1) as f64,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / 1024.0
    );
}
