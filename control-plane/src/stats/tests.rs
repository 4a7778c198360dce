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
    stats.ingest("a", "", &report(&set, &[(1, 90, 10, 20), (3, 10, 0, 200)]));
    stats.ingest("b", "", &report(&set, &[(2, 100, 0, 20), (3, 9, 1, 200)]));
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
    stats.ingest("a", "", &report(&set, &[(3, 50, 0, 5)]));
    let baseline = stats.totals("reviews", &v("v2"));
    stats.ingest("a", "", &report(&set, &[(3, 5, 5, 5)]));
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
    stats.ingest("x", "", &collect(&snapshot, &AllClusters, Duration::from_secs(1)));
    assert_eq!(stats.footprint().0, 0, "an unknown endpoint and an unknown cluster make no series");
    let text = stats.metrics.encode();
    assert!(text.contains("outrider_load_report_entries_dropped_total{reason=\"unknown-endpoint\"} 1"), "{text}");
    assert!(text.contains("outrider_load_report_entries_dropped_total{reason=\"unknown-cluster\"} 1"), "{text}");
}

#[test]
fn endpoints_that_left_are_forgotten_once_their_windows_age_out() {
    let stats = stats();
    let now = slot_of(unix_now());
    stats.ingest_at("a", "", now, &report(&mesh(), &[(3, 1, 0, 1)]));
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
fn a_window_counts_only_the_windows_it_covers_and_history_keeps_all_of_them() {
    let stats = stats();
    let set = mesh();
    let now = slot_of(unix_now());
    // 100 s ago, 30 s ago, and now (in ten-second windows); requests 1, 10 and 100.
    stats.ingest_at("a", "", now - 10, &report(&set, &[(1, 1, 0, 1)]));
    stats.ingest_at("a", "", now - 3, &report(&set, &[(1, 9, 1, 1)]));
    stats.ingest_at("a", "", now, &report(&set, &[(1, 100, 0, 1)]));
    // Should a window boundary pass meanwhile, every report is one window older: each window
    // below still covers the same reports.
    let requests = |window: u64| {
        let view = stats.service("reviews", &Labels::new(), Duration::from_secs(window)).unwrap();
        assert_eq!(
            view.history.iter().map(|h| h.requests).sum::<u64>(),
            111,
            "history is 15 minutes whatever the window"
        );
        let summary = stats.summary(Duration::from_secs(window));
        assert_eq!(summary[0].numbers.requests, view.total.requests, "the summary counts the same windows");
        (view.total.requests, view.total.errors)
    };
    assert_eq!(requests(20), (100, 0), "the last 20 s: this window and the one before");
    assert_eq!(requests(60), (110, 1), "the last minute leaves out 100 s ago");
    assert_eq!(requests(15 * 60), (111, 1), "15 minutes: all of it");
    assert_eq!(requests(24 * 3600), (111, 1), "a day is clamped to 15 minutes");
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

/// A proxy's snapshot of the test mesh, for tests that touch its cluster or endpoint state.
fn snapshot() -> Arc<outrider_proxy::state::Snapshot> {
    let (snapshot, _) = outrider_proxy::state::Builder::new().build(&outrider_xds::translate(&mesh()));
    Arc::new(snapshot)
}

#[test]
fn calls_are_counted_from_the_reporting_proxys_service_to_the_destination() {
    let stats = stats();
    let set = mesh();
    stats.ingest("frontend-1", "frontend", &report(&set, &[(1, 99, 1, 20)]));
    stats.ingest("frontend-2", "frontend", &report(&set, &[(2, 100, 0, 20)]));
    stats.ingest("ratings-1", "ratings", &report(&set, &[(3, 5, 5, 50)]));
    stats.ingest("anonymous", "", &report(&set, &[(3, 1, 0, 50)]));
    let view = stats.mesh(Duration::from_secs(60));
    let edge = |src: &str| view.edges.iter().find(|e| e.source == src && e.destination == "reviews").unwrap();
    assert_eq!((edge("frontend").numbers.requests, edge("frontend").numbers.errors), (200, 1));
    assert_eq!(edge("frontend").numbers.success_rate, Some(99.5));
    assert_eq!(edge("ratings").numbers.success_rate, Some(50.0));
    assert_eq!(edge(mesh::UNKNOWN_SOURCE).numbers.requests, 1, "a proxy without a service is counted, as unknown");
    assert_eq!(view.edges.len(), 3);
    assert_eq!(view.services.len(), 1, "only mesh services are nodes; callers come from the edges");
    assert_eq!((view.services[0].service.as_str(), view.services[0].endpoints), ("reviews", 3));
    assert_eq!(view.services[0].numbers.requests, 211);
}

#[test]
fn a_new_edge_past_the_limit_is_dropped_and_counted_and_old_ones_still_count() {
    let stats = stats();
    let one = report(&mesh(), &[(1, 1, 0, 1)]);
    for i in 0..mesh::MAX_EDGES {
        stats.ingest("n", &format!("caller-{i}"), &one);
    }
    stats.ingest("n", "one-too-many", &one);
    stats.ingest("n", "caller-0", &one);
    let view = stats.mesh(Duration::from_secs(60));
    assert_eq!(view.edges.len(), mesh::MAX_EDGES);
    assert!(!view.edges.iter().any(|e| e.source == "one-too-many"));
    assert_eq!(view.edges.iter().find(|e| e.source == "caller-0").unwrap().numbers.requests, 2);
    assert_eq!(view.services[0].numbers.requests, mesh::MAX_EDGES as u64 + 2, "the endpoint numbers keep all");
    let text = stats.metrics.encode();
    assert!(text.contains("outrider_load_report_entries_dropped_total{reason=\"edge-limit\"} 1"), "{text}");
}

#[test]
fn breaker_rejections_retries_and_budget_reach_the_destination_even_without_endpoint_traffic() {
    let stats = stats();
    let snapshot = snapshot();
    let cluster = snapshot.clusters.values().next().unwrap();
    for _ in 0..3 {
        cluster.state.load.reject();
    }
    cluster.state.load.retry();
    cluster.state.load.retry();
    cluster.state.load.budget_exhausted();
    let mut report = collect(&snapshot, &AllClusters, Duration::from_secs(1));
    assert_eq!(report.len(), 1, "rejections alone make the cluster reported");
    // The proxy's breaker for reviews is open (what a proxy with a breaker policy sends).
    report[0].upstream_locality_stats[0].load_metric_stats.push(
        envoy_types::pb::envoy::config::endpoint::v3::EndpointLoadMetricStats {
            metric_name: outrider_xds::latency::BREAKER_STATE_METRIC.to_owned(),
            num_requests_finished_with_metric: 1,
            total_metric_value: 1.0,
        },
    );
    stats.ingest("frontend-1", "frontend", &report);
    let view = stats.service("reviews", &Labels::new(), Duration::from_secs(60)).unwrap();
    let r = &view.resilience;
    assert_eq!((r.rejected, r.retries, r.retry_budget_exhausted), (3, 2, 1));
    assert_eq!((r.breaker.state, r.breaker.open, r.breaker.closed), ("open", 1, 0));
    assert!(view.total.requests == 0 && stats.mesh(Duration::from_secs(60)).edges.is_empty(), "no calls finished");
    // Another proxy reports it closed: open wins while the first one's report is fresh.
    report[0].upstream_locality_stats[0].load_metric_stats.last_mut().unwrap().total_metric_value = 0.0;
    report[0].dropped_requests.clear();
    stats.ingest("frontend-2", "frontend", &report);
    let r = stats.mesh(Duration::from_secs(60)).services[0].resilience.clone();
    assert_eq!((r.breaker.state, r.breaker.open, r.breaker.closed, r.rejected), ("open", 1, 1, 3));
    stats.ingest("frontend-1", "frontend", &report);
    assert_eq!(stats.mesh(Duration::from_secs(60)).services[0].resilience.breaker.state, "closed");
    // A second take reports nothing new.
    assert!(collect(&snapshot, &AllClusters, Duration::from_secs(1)).is_empty());
}

#[test]
fn endpoints_show_the_callers_ewma_and_ejection() {
    let stats = stats();
    let snapshot = snapshot();
    let cluster = snapshot.clusters.values().next().unwrap();
    for e in cluster.endpoints.items() {
        e.shared.ewma.observe(Duration::from_millis(if e.addr.port() == 3 { 80 } else { 8 }));
        e.shared.load.issue();
        e.shared.load.finish(false, Duration::from_millis(8));
    }
    let mut report = collect(&snapshot, &AllClusters, Duration::from_secs(1));
    let ep3 = report[0].upstream_locality_stats[0]
        .upstream_endpoint_stats
        .iter_mut()
        .find(|e| endpoint_address(e).is_some_and(|a| a.port() == 3))
        .unwrap();
    ep3.load_metric_stats.push(envoy_types::pb::envoy::config::endpoint::v3::EndpointLoadMetricStats {
        metric_name: outrider_xds::latency::EJECTED_METRIC.to_owned(),
        num_requests_finished_with_metric: 1,
        total_metric_value: 30.0,
    });
    stats.ingest("frontend-1", "frontend", &report);
    let view = stats.service("reviews", &Labels::new(), Duration::from_secs(60)).unwrap();
    let ep = |port: u16| view.endpoints.iter().find(|e| e.address.ends_with(&format!(":{port}"))).unwrap();
    let (e1, e3) = (ep(1), ep(3));
    assert!((e1.ewma_ms.unwrap() - 8.0).abs() < 1.0, "{:?}", e1.ewma_ms);
    assert!((e3.ewma_ms.unwrap() - 80.0).abs() < 5.0, "{:?}", e3.ewma_ms);
    assert_eq!(e1.ejected_seconds, None);
    assert!(e3.ejected_seconds.is_some_and(|s| s > 0.0 && s <= 30.0), "{:?}", e3.ejected_seconds);
}
