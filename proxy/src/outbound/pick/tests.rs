use std::time::Duration;

use super::*;
use crate::state::{Builder, Snapshot};

/// A snapshot of service `s` with endpoints 127.0.0.1:1..=n (labels version v1 for odd ports,
/// v2 for even) and a policy made of `spec` lines.
fn snapshot(n: u16, spec: &str) -> Snapshot {
    let eps: String = (1..=n)
        .map(|p| format!("    - {{address: \"127.0.0.1:{p}\", labels: {{version: v{}}}}}\n", 2 - p % 2))
        .collect();
    let yaml = format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  port: 8080\n  endpoints:\n{eps}\
         ---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: s}}\nspec:\n  service: s\n{spec}"
    );
    let set = outrider_xds::load_str("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    let (snap, rejected) = Builder::new().build(&outrider_xds::translate(&set));
    assert!(rejected.is_empty(), "{rejected:?}");
    snap
}

fn cluster(snap: &Snapshot) -> Arc<Cluster> {
    snap.clusters.values().find(|c| &*c.service == "s").unwrap().clone()
}

fn port(c: &Choice) -> u16 {
    c.endpoint.addr.port()
}

/// Open the breaker of the endpoint on `port` by failing calls until it is.
fn open(c: &Arc<Cluster>, port: u16) {
    let cfg = c.policy.breaker.unwrap();
    let ep = c.endpoints.items().iter().find(|e| e.addr.port() == port).unwrap();
    while ep.shared.breaker.state() != State::Open {
        let p = ep.shared.breaker.try_acquire(&cfg).unwrap();
        ep.shared.breaker.record(&cfg, p, true);
    }
}

const BREAKER: &str = "  circuitBreaker: {failureRateThreshold: 50, window: 2, minimumCalls: 2, openDuration: 10s}\n";

#[tokio::test(start_paused = true)]
async fn an_open_endpoint_is_skipped_and_the_others_serve() {
    let snap = snapshot(3, BREAKER);
    let c = cluster(&snap);
    open(&c, 2);
    for _ in 0..200 {
        let choice = choose(&c, &c.endpoints, &[]).unwrap();
        assert_ne!(port(&choice), 2, "the open endpoint is never picked");
        assert!(choice.permit.is_some());
    }
    // A retry avoids what it tried, and never goes to the open one either.
    let tried = ["127.0.0.1:1".parse().unwrap()];
    for _ in 0..50 {
        let choice = choose(&c, &c.endpoints, &tried).unwrap();
        assert_eq!((port(&choice), choice.untried), (3, true));
    }
    // Everything that admits calls was tried: one of them again, and the caller knows.
    let tried = ["127.0.0.1:1".parse().unwrap(), "127.0.0.1:3".parse().unwrap()];
    let choice = choose(&c, &c.endpoints, &tried).unwrap();
    assert!(!choice.untried && port(&choice) != 2);
    // All open: nothing to pick; after openDuration, probes go through again.
    open(&c, 1);
    open(&c, 3);
    assert_eq!(choose(&c, &c.endpoints, &[]).unwrap_err(), NoPick::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(choose(&c, &c.endpoints, &[]).is_ok(), "half-open: a probe may go");
}

#[tokio::test(start_paused = true)]
async fn service_scope_rejects_the_whole_service() {
    let snap = snapshot(
        2,
        "  circuitBreaker: {scope: service, failureRateThreshold: 50, window: 2, minimumCalls: 2, openDuration: 10s}\n",
    );
    let c = cluster(&snap);
    let cfg = c.policy.breaker.unwrap();
    for _ in 0..2 {
        let choice = choose(&c, &c.endpoints, &[]).unwrap();
        c.state.breaker.record(&cfg, choice.permit.unwrap(), true);
    }
    assert_eq!(choose(&c, &c.endpoints, &[]).unwrap_err(), NoPick::Open, "one breaker for all endpoints");
    let empty = Balancer::new(c.lb, Vec::new());
    assert_eq!(choose(&c, &empty, &[]).unwrap_err(), NoPick::Empty);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_abandoned_by_its_timeout_counts_as_a_failed_slow_call_and_a_gateway_error() {
    let snap = snapshot(
        2,
        "  circuitBreaker: {failureRateThreshold: 100, slowCallDuration: 1s, window: 2, minimumCalls: 2}\n  \
         outlierDetection: {consecutiveGatewayErrors: 2, consecutive5xx: 0, maxEjectionPercent: 50}\n",
    );
    let c = cluster(&snap);
    let ep = c.endpoints.items().iter().find(|e| e.addr.port() == 1).unwrap().clone();
    let metrics = Metrics::new();
    for i in 0..2 {
        let permit = ep.shared.breaker.try_acquire(&c.policy.breaker.unwrap()).unwrap();
        let choice = Choice { endpoint: ep.clone(), permit: Some(permit), untried: true };
        let deadline = Instant::now() + Duration::from_secs(2);
        let attempt = Attempt::start(choice, c.clone(), Some(deadline), true, metrics.clone());
        assert_eq!(ep.shared.ewma.pending(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(attempt); // what the timeout does to the future holding it
        assert_eq!(ep.shared.ewma.pending(), 0);
        assert_eq!(ep.shared.ewma.rtt(), Some(Duration::from_secs(2)), "the time waited is the latency");
        assert_eq!(ep.shared.health.is_ejected(), i == 1, "two gateway errors eject it");
    }
    assert_eq!(ep.shared.breaker.state(), State::Open, "two failed calls of two");
    let other = c.endpoints.items().iter().find(|e| e.addr.port() == 2).unwrap();
    assert!(!other.shared.health.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn an_attempt_its_caller_abandoned_records_nothing() {
    let snap = snapshot(
        1,
        "  circuitBreaker: {failureRateThreshold: 50, window: 1, minimumCalls: 1, openDuration: 1s, halfOpenCalls: 1}\n  \
         outlierDetection: {consecutive5xx: 1}\n",
    );
    let c = cluster(&snap);
    let metrics = Metrics::new();
    for _ in 0..5 {
        let choice = choose(&c, &c.endpoints, &[]).unwrap();
        let ep = choice.endpoint.clone();
        let attempt =
            Attempt::start(choice, c.clone(), Some(Instant::now() + Duration::from_secs(5)), true, metrics.clone());
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(attempt);
        assert_eq!(ep.shared.breaker.state(), State::Closed);
        assert!(!ep.shared.health.is_ejected());
        assert_eq!(ep.shared.ewma.rtt(), None, "no answer, no timeout: no latency sample");
    }
    // A half-open probe whose caller went away gives its slot back.
    open(&c, 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    let probe = choose(&c, &c.endpoints, &[]).unwrap();
    assert_eq!(choose(&c, &c.endpoints, &[]).unwrap_err(), NoPick::Open, "one probe at a time");
    drop(Attempt::start(probe, c.clone(), None, true, metrics));
    assert!(choose(&c, &c.endpoints, &[]).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_finished_attempt_feeds_breaker_outlier_and_estimate_once() {
    let snap = snapshot(
        2,
        "  circuitBreaker: {failureRateThreshold: 50, window: 2, minimumCalls: 2}\n  outlierDetection: {consecutive5xx: 2}\n",
    );
    let c = cluster(&snap);
    let metrics = Metrics::new();
    let ep = c.endpoints.items()[0].clone();
    for _ in 0..2 {
        let permit = ep.shared.breaker.try_acquire(&c.policy.breaker.unwrap()).unwrap();
        let a = Attempt::start(
            Choice { endpoint: ep.clone(), permit: Some(permit), untried: true },
            c.clone(),
            None,
            true,
            metrics.clone(),
        );
        tokio::time::advance(Duration::from_millis(7)).await;
        a.finish(Outcome::Status(503), true);
    }
    assert_eq!(ep.shared.breaker.state(), State::Open);
    assert!(ep.shared.health.is_ejected());
    assert_eq!(ep.shared.ewma.rtt(), Some(Duration::from_millis(7)));
    assert_eq!(ep.shared.ewma.pending(), 0);
    let text = metrics.encode();
    assert!(text.contains("outrider_outlier_ejections_total{service=\"s\"} 1"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_response_is_counted_for_the_load_reports_by_the_status_it_carries() {
    let snap = snapshot(1, "");
    let c = cluster(&snap);
    let ep = c.endpoints.items()[0].clone();
    let counted = |headers: &[(&'static str, &str)]| {
        let a = Attempt::start(
            Choice { endpoint: ep.clone(), permit: None, untried: true },
            c.clone(),
            None,
            true,
            Metrics::new(),
        );
        let mut resp = Response::new(Body::Empty);
        for (k, v) in headers {
            resp.headers_mut().insert(*k, v.parse().unwrap());
        }
        a.answered(&mut resp);
        let s = ep.shared.load.take();
        (s.issued, s.succeeded, s.failed)
    };
    assert_eq!(counted(&[]), (1, 1, 0), "plain HTTP");
    let grpc = ("content-type", "application/grpc");
    // Trailers-only responses: the status of the headers, by Envoy's rule.
    assert_eq!(counted(&[grpc, ("grpc-status", "14")]), (1, 0, 1), "UNAVAILABLE");
    assert_eq!(counted(&[grpc, ("grpc-status", "5")]), (1, 1, 0), "NOT_FOUND");
    assert_eq!(counted(&[grpc, ("grpc-status", "0")]), (1, 1, 0), "OK");
    // No status in the headers and a body that has ended: no trailers will bring one.
    assert_eq!(counted(&[grpc]), (1, 0, 1), "no status at all");
}
