//! Request metrics through the resolved series of a snapshot's splits equal those of a
//! family lookup per request, across config pushes.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::state::Snapshot;

fn snapshot(yaml: &str) -> Snapshot {
    let resources = outrider_xds::translate(&outrider_xds::load_str("t.yaml", yaml).unwrap());
    let (snap, rejected) = crate::state::Builder::new().build(&resources);
    assert!(rejected.is_empty(), "{rejected:?}");
    snap
}

const SERVICE_A: &str =
    "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  port: 80\n  endpoints:\n";
const POLICY_A: &str =
    "---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: a}\nspec:\n  service: a\n  routes:\n";
const SERVICE_B: &str = "---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: b}\nspec: {port: 81, endpoints: [{address: \"127.0.0.1:3\"}]}\n";
const SERVICE_C: &str = "---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: c}\nspec: {port: 82, endpoints: [{address: \"127.0.0.1:4\"}]}\n";

/// Two versions of a config: the second changes a's endpoints and routes, drops b, adds c.
fn configs() -> [Snapshot; 2] {
    let first = format!(
        "{SERVICE_A}    - {{address: \"127.0.0.1:1\", labels: {{version: v1}}}}\n    - {{address: \"127.0.0.1:2\", labels: {{version: v2}}}}\n{POLICY_A}    - name: canary\n      match: {{pathPrefix: /canary}}\n      split: [{{subset: {{version: v2}}, weight: 100}}]\n    - name: main\n      split: [{{subset: {{version: v1}}, weight: 50}}, {{subset: {{version: v2}}, weight: 50}}]\n{SERVICE_B}"
    );
    let second = format!(
        "{SERVICE_A}    - {{address: \"127.0.0.1:5\", labels: {{version: v1}}}}\n{POLICY_A}    - name: main\n      split: [{{subset: {{version: v1}}, weight: 100}}]\n    - name: new\n      match: {{pathPrefix: /new}}\n      split: [{{subset: {{version: v1}}, weight: 100}}]\n{SERVICE_C}"
    );
    [snapshot(&first), snapshot(&second)]
}

/// Every split of every route of `snap`, with the codes and workloads of the traffic.
fn traffic(snap: &Snapshot, recorders: &[Arc<Recorder>], resolved: bool) {
    let req = http::Request::get("http://x/").body(()).unwrap();
    let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut vhosts: Vec<_> = snap.vhosts.values().collect();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    // A virtual host is there under each of its domains.
    vhosts.dedup_by(|a, b| a.name == b.name);
    for vh in vhosts {
        for route in &vh.routes {
            for split in &route.splits {
                // More codes than a cell keeps resolved, and one with no status (caller left);
                // node mode's peer workloads vary between requests (a sidecar has no such label).
                for (i, code) in [200u16, 200, 404, 200, 503, 201, 500, 0, 200].into_iter().enumerate() {
                    let recorder = &recorders[i % recorders.len()];
                    let mut rec = RequestRecord::start(recorder, Direction::outbound, client, &req);
                    rec.service = split.cluster.service.clone();
                    rec.route = route.name.clone();
                    rec.peer_workload = match i {
                        7 => None,
                        1 | 5 => Some(Arc::from("shop/ratings")),
                        3 => Some(Arc::from("shop/details")),
                        _ => Some(Arc::from("shop/sidecar-ignores-it")),
                    };
                    if resolved {
                        rec.series = Some(split.series.clone());
                    }
                    rec.finish(code, None);
                }
            }
        }
    }
}

fn sorted(metrics: &Metrics) -> Vec<String> {
    let mut lines: Vec<String> = metrics.encode().lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[tokio::test(start_paused = true)]
async fn resolved_series_count_exactly_what_family_lookups_do_across_config_pushes() {
    let [first, second] = configs();
    let mut outputs = Vec::new();
    for resolved in [false, true] {
        let metrics = Metrics::new();
        let plain = Arc::new(Recorder::new(metrics.clone(), false));
        // Node mode: two workloads' recorders share the snapshot's cells.
        let node = Arc::new(plain.for_workload("shop/reviews"));
        let recorders = [plain, node];
        traffic(&first, &recorders, resolved);
        let after_first = sorted(&metrics);
        // The same snapshot again (no push), then a push that changes endpoints and routes.
        traffic(&first, &recorders, resolved);
        traffic(&second, &recorders, resolved);
        outputs.push((after_first, sorted(&metrics)));
    }
    assert_eq!(outputs[0], outputs[1], "resolved series differ from family lookups");
    let (after_first, end) = &outputs[1];
    let line = |l: &str| l.to_owned();
    // The first snapshot's series: two splits of `main`, one of `canary`, and b.
    assert!(after_first.contains(&line(
        "outrider_requests_total{direction=\"outbound\",service=\"a\",route=\"main\",code=\"200\"} 4"
    )));
    assert!(after_first.contains(&line(
        "outrider_requests_total{direction=\"outbound\",service=\"a\",route=\"canary\",code=\"201\",workload=\"shop/reviews\",peer_workload=\"shop/ratings\"} 1"
    )));
    assert!(!after_first.iter().any(|l| l.contains("route=\"new\"") || l.contains("service=\"c\"")));
    assert!(!after_first.iter().any(|l| l.contains("sidecar-ignores-it")), "a sidecar's series have no peer label");
    // After the push: counts continue for series both snapshots have, the new route's and
    // service's series appear, and those of routes and services that left keep their counts.
    for expected in [
        "outrider_requests_total{direction=\"outbound\",service=\"a\",route=\"main\",code=\"200\"} 10",
        "outrider_requests_total{direction=\"outbound\",service=\"a\",route=\"main\",code=\"0\",workload=\"shop/reviews\",peer_workload=\"\"} 5",
        "outrider_requests_total{direction=\"outbound\",service=\"a\",route=\"main\",code=\"200\",workload=\"shop/reviews\",peer_workload=\"shop/details\"} 5",
        "outrider_requests_total{direction=\"outbound\",service=\"a\",route=\"canary\",code=\"200\"} 4",
        "outrider_requests_total{direction=\"outbound\",service=\"a\",route=\"new\",code=\"200\"} 2",
        "outrider_requests_total{direction=\"outbound\",service=\"a\",route=\"new\",code=\"201\",workload=\"shop/reviews\",peer_workload=\"shop/ratings\"} 1",
        "outrider_requests_total{direction=\"outbound\",service=\"b\",route=\"default\",code=\"503\"} 2",
        "outrider_requests_total{direction=\"outbound\",service=\"c\",route=\"default\",code=\"404\"} 1",
        "outrider_request_duration_seconds_count{direction=\"outbound\",service=\"a\"} 40",
        "outrider_request_duration_seconds_count{direction=\"outbound\",service=\"c\",workload=\"shop/reviews\",peer_workload=\"shop/ratings\"} 2",
    ] {
        assert!(end.contains(&line(expected)), "{expected} in {end:#?}");
    }
}
