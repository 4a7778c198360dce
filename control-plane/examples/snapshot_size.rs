//! How large the xDS responses of a big mesh are: S services (each with three labeled
//! endpoints and a TrafficPolicy with retries, a breaker, outlier detection and a 90/10 split)
//! through the control plane's snapshot generator, and the encoded size of the full
//! state-of-the-world response of each type. Picks the ADS client's decode limit
//! (`outrider-proxy --xds-max-message`; docs/operations.md).
//!
//! ```sh
//! cargo run --release -p outrider-control-plane --example snapshot_size -- --services 10000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use outrider_control_plane::snapshot::Generator;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Then time this many snapshots, each after one endpoint of one service moved (as an
    /// EndpointSlice change does), and print the CPU time of one.
    #[arg(long, default_value_t = 0)]
    changes: usize,
}

fn policy(services: usize) -> String {
    let mut out = String::new();
    for i in 0..services {
        let (a, b) = (i / 250, i % 250);
        out.push_str(&format!(
            "apiVersion: outrider.io/v1
kind: Service
metadata: {{name: service-{i:05}, namespace: team-{t}}}
spec:
  protocol: http
  port: 8080
  endpoints:
    - {{address: \"10.{a}.{b}.1:8080\", labels: {{version: v1, zone: zone-a}}}}
    - {{address: \"10.{a}.{b}.2:8080\", labels: {{version: v1, zone: zone-b}}}}
    - {{address: \"10.{a}.{b}.3:8080\", labels: {{version: v2, zone: zone-a}}}}
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {{name: service-{i:05}, namespace: team-{t}}}
spec:
  service: service-{i:05}
  timeout: 3s
  retries: {{attempts: 2, perTryTimeout: 1s, retryOn: [connect-failure, reset, 5xx]}}
  circuitBreaker: {{failureRateThreshold: 50, window: 20, minimumCalls: 10, openDuration: 30s}}
  outlierDetection: {{consecutive5xx: 5, interval: 10s, baseEjectionTime: 30s}}
  routes:
    - split: [{{subset: {{version: v1}}, weight: 90}}, {{subset: {{version: v2}}, weight: 10}}]
---
",
            t = i % 20
        ));
    }
    out
}

fn main() {
    let args = Args::parse();
    let mut set = outrider_xds::load_str("mesh.yaml", &policy(args.services)).expect("a valid policy set");
    let mut generator = Generator::new();
    let start = std::time::Instant::now();
    let snapshot = generator.generate(&set);
    println!("first snapshot in {:?}", start.elapsed());
    println!("{} services", args.services);
    for (type_url, t) in &snapshot.types {
        // Everything a wildcard subscriber gets (a sidecar); by-name resources are for gRPC.
        let (count, bytes) = t
            .resources
            .values()
            .filter(|r| r.scope == outrider_control_plane::snapshot::Scope::All)
            .fold((0usize, 0usize), |(n, b), r| (n + 1, b + r.sotw_head().len() + r.encoded().len()));
        let name = type_url.rsplit('.').next().unwrap_or(type_url);
        println!("{name:<24} {count:>6} resources  {:>8.2} MiB", bytes as f64 / (1 << 20) as f64);
    }
    if args.changes > 0 {
        let start = std::time::Instant::now();
        for change in 0..args.changes {
            let name = format!("service-{:05}", change % args.services);
            let service = set.services.get_mut(&name).expect("the service");
            let endpoint = &mut service.spec.endpoints[0];
            endpoint.address.set_port(endpoint.address.port() ^ 1);
            let next = generator.generate(&set);
            assert_ne!(next.version, snapshot.version);
        }
        println!("{} changes of one endpoint: {:?} per snapshot", args.changes, start.elapsed() / args.changes as u32);
    }
}
