//! Tests of the stats store, fed with reports the proxy's own encoder produced.

use std::time::Duration;

use outrider_proxy::load_report::{AllClusters, collect};
use outrider_xds::latency::{bucket_of, lower_bound, upper_bound};

use super::*;

const MESH: &str = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  port: 80\n  endpoints:\n    - {address: \"127.0.0.1:1\", labels: {version: v1}}\n    - {address: \"127.0.0.1:2\", labels: {version: v1}}\n    - {address: \"127.0.0.1:3\", labels: {version: v2}}\n";

fn mesh() -> PolicySet {
    outrider_xds::load_str("t.yaml", MESH).unwrap()
}

/// A proxy's snapshot of `set`, whose endpoint at `port` saw `ok` successes and `failed`
/// errors of `ms` each; returns that proxy's report.
fn report(set: &PolicySet, traffic: &[(u16, u64, u64, u64)]) -> Vec<ClusterStats> {
    let (snapshot, _) = outrider_proxy::state::Builder::new().build(&outrider_xds::translate(set));
    for cluster in snapshot.clusters.values() {
        for e in cluster.endpoints.items() {
            for &(port, ok, failed, ms) in traffic {
                if e.addr.port() == port {
                    for i in 0..ok + failed {
                        e.shared.load.issue();
                        e.shared.load.finish(i >= ok, Duration::from_millis(ms));
                    }
                }
            }
        }
    }
    collect(&snapshot, &AllClusters, Duration::from_secs(5))
}

fn stats() -> Arc<Stats> {
    let stats = Stats::new(DEFAULT_REPORT_INTERVAL, crate::metrics::Metrics::new());
    stats.update_mesh(&mesh());
    stats
}

fn v(version: &str) -> Labels {
    [("version".to_owned(), version.to_owned())].into()
}

#[test]
fn reports_of_several_proxies_merge_per_subset_and_endpoint() {
    let stats = stats();
    let set = mesh();
    // Two proxies call reviews.
    stats.ingest("a", &report(&set, &[(1, 90, 10, 20), (3, 10, 0, 200)]));
    stats.ingest("b", &report(&set, &[(2, 100, 0, 20), (3, 9, 1, 200)]));
    let v1 = stats.since("reviews", &v("v1"), &BTreeMap::new());
    assert_eq!((v1.requests, v1.succeeded, v1.failed), (200, 190, 10));
    assert_eq!(v1.success_rate(), Some(95.0));
    let v2 = stats.since("reviews", &v("v2"), &BTreeMap::new());
    assert_eq!((v2.requests, v2.failed), (20, 1));
    let p99 = v2.quantile_ms(0.99).unwrap();
    let bucket = bucket_of(200_000);
    assert!((lower_bound(bucket) as f64 / 1000.0..=upper_bound(bucket).unwrap() as f64 / 1000.0).contains(&p99));
    assert_eq!(v2.mean_ms(), Some(200.0));

    let view = stats.service("reviews", &Labels::new(), Duration::from_secs(60)).unwrap();
    assert_eq!(view.total.requests, 220);
    assert_eq!(view.subsets.len(), 2);
    assert_eq!(view.subsets.iter().map(|s| (s.endpoints, s.numbers.requests)).collect::<Vec<_>>(), [(2, 200), (1, 20)]);
    assert_eq!(view.endpoints.len(), 3);
    assert_eq!(view.history.len(), WINDOWS);
    assert_eq!(view.history.iter().map(|h| h.requests).sum::<u64>(), 220);
    let only_v2 = stats.service("reviews", &v("v2"), Duration::from_secs(60)).unwrap();
    assert_eq!(only_v2.total.requests, 20);
    let summary = stats.summary(Duration::from_secs(60));
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].numbers.errors, 11);
    assert!(stats.service("nope", &Labels::new(), Duration::from_secs(60)).is_none());
}

#[test]
fn a_baseline_gives_what_happened_since() {
    let stats = stats();
    let set = mesh();
    stats.ingest("a", &report(&set, &[(3, 50, 0, 5)]));
    let baseline = stats.totals("reviews", &v("v2"));
    stats.ingest("a", &report(&set, &[(3, 5, 5, 5)]));
    let since = stats.since("reviews", &v("v2"), &baseline);
    assert_eq!((since.requests, since.failed), (10, 5));
    assert_eq!(since.success_rate(), Some(50.0));
}

#[test]
fn reports_about_what_the_mesh_does_not_have_are_dropped() {
    let stats = stats();
    let other = outrider_xds::load_str(
        "t.yaml",
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: reviews}\nspec: {port: 80, endpoints: [{address: \"10.9.9.9:1\"}]}\n---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: ghost}\nspec: {port: 81, endpoints: [{address: \"127.0.0.1:1\"}]}\n",
    )
    .unwrap();
    let (snapshot, _) = outrider_proxy::state::Builder::new().build(&outrider_xds::translate(&other));
    for c in snapshot.clusters.values() {
        for e in c.endpoints.items() {
            e.shared.load.issue();
            e.shared.load.finish(false, Duration::from_millis(1));
        }
    }
    stats.ingest("x", &collect(&snapshot, &AllClusters, Duration::from_secs(1)));
    assert_eq!(stats.footprint().0, 0, "an unknown endpoint and an unknown cluster make no series");
    let text = stats.metrics.encode();
    assert!(text.contains("outrider_load_report_entries_dropped_total{reason=\"unknown-endpoint\"} 1"), "{text}");
    assert!(text.contains("outrider_load_report_entries_dropped_total{reason=\"unknown-cluster\"} 1"), "{text}");
}

#[test]
fn endpoints_that_left_are_forgotten_once_their_windows_age_out() {
    let stats = stats();
    let now = slot_of(unix_now());
    stats.ingest_at("a", now, &report(&mesh(), &[(3, 1, 0, 1)]));
    let without_v2 = outrider_xds::load_str(
        "t.yaml",
        &MESH.replace("    - {address: \"127.0.0.1:3\", labels: {version: v2}}\n", ""),
    )
    .unwrap();
    stats.update_mesh(&without_v2);
    assert_eq!(stats.footprint().0, 1, "kept while it has windows");
    {
        let mut inner = stats.inner.lock();
        Stats::sweep(&mut inner, now + WINDOWS as u64);
    }
    assert_eq!(stats.footprint().0, 0);
}

#[test]
fn rollouts_can_ask_for_faster_reports() {
    let stats = stats();
    let rx = stats.report_interval();
    assert_eq!(*rx.borrow(), DEFAULT_REPORT_INTERVAL);
    stats.want_interval("r1", Some(Duration::from_millis(250)));
    stats.want_interval("r2", Some(Duration::from_millis(50)));
    assert_eq!(*rx.borrow(), MIN_REPORT_INTERVAL, "never below the floor");
    stats.want_interval("r2", None);
    assert_eq!(*rx.borrow(), Duration::from_millis(250));
    stats.want_interval("r1", None);
    assert_eq!(*rx.borrow(), DEFAULT_REPORT_INTERVAL);
}
