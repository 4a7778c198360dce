use super::*;

fn cfg() -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: 3,
        consecutive_gateway: 0,
        failure_percentage: 0,
        failure_percentage_min_requests: 5,
        interval: Duration::from_secs(10),
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(300),
        max_ejection_percent: 50,
    }
}

fn ejected(hs: &[EndpointHealth]) -> usize {
    hs.iter().filter(|h| h.is_ejected()).count()
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_ejects_and_time_brings_it_back() {
    let c = cfg();
    let cl = ClusterOutliers::default();
    let hs: Vec<EndpointHealth> = (0..4).map(|_| EndpointHealth::default()).collect();
    let h = &hs[0];
    assert!(!h.record(Outcome::Status(503), &c, &cl, hs.iter()));
    assert!(!h.record(Outcome::Status(500), &c, &cl, hs.iter()));
    assert!(h.record(Outcome::ConnectFailure, &c, &cl, hs.iter()), "third 5xx in a row ejects");
    assert!(h.is_ejected());
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(h.is_ejected());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(!h.is_ejected());
    assert_eq!(ejected(&hs), 0);
    // Second ejection lasts twice as long.
    for _ in 0..3 {
        h.record(Outcome::Status(503), &c, &cl, hs.iter());
    }
    tokio::time::advance(Duration::from_secs(45)).await;
    assert!(h.is_ejected(), "base × 2 = 60 s");
    tokio::time::advance(Duration::from_secs(16)).await;
    assert!(!h.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn success_resets_the_streak() {
    let c = cfg();
    let cl = ClusterOutliers::default();
    let hs: Vec<EndpointHealth> = (0..4).map(|_| EndpointHealth::default()).collect();
    let h = &hs[0];
    h.record(Outcome::Status(503), &c, &cl, hs.iter());
    h.record(Outcome::Status(503), &c, &cl, hs.iter());
    h.record(Outcome::Success, &c, &cl, hs.iter());
    assert!(!h.record(Outcome::Status(503), &c, &cl, hs.iter()));
    assert!(!h.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn consecutive_gateway_errors_count_only_502_to_504_and_connection_failures() {
    let c = OutlierConfig { consecutive_5xx: 0, consecutive_gateway: 2, ..cfg() };
    let cl = ClusterOutliers::default();
    let hs: Vec<EndpointHealth> = (0..2).map(|_| EndpointHealth::default()).collect();
    let h = &hs[0];
    assert!(!h.record(Outcome::Status(500), &c, &cl, hs.iter()));
    assert!(!h.record(Outcome::Status(502), &c, &cl, hs.iter()));
    assert!(!h.record(Outcome::Status(500), &c, &cl, hs.iter()), "a 500 breaks the gateway streak");
    assert!(!h.record(Outcome::Timeout, &c, &cl, hs.iter()));
    assert!(h.record(Outcome::Status(504), &c, &cl, hs.iter()), "timeout then 504: two gateway errors");
    assert!(h.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_but_always_one() {
    let c = OutlierConfig { max_ejection_percent: 10, ..cfg() };
    let cl = ClusterOutliers::default();
    let hs: Vec<EndpointHealth> = (0..3).map(|_| EndpointHealth::default()).collect();
    let mut n = 0;
    for h in &hs {
        for _ in 0..3 {
            if h.record(Outcome::Status(503), &c, &cl, hs.iter()) {
                n += 1;
            }
        }
    }
    assert_eq!(n, 1, "10% of 3 rounds to 0, but one is always allowed");
    assert_eq!(ejected(&hs), 1);
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_that_leaves_the_config_frees_its_slot() {
    let c = OutlierConfig { max_ejection_percent: 34, ..cfg() };
    let cl = ClusterOutliers::default();
    let hs: Vec<EndpointHealth> = (0..3).map(|_| EndpointHealth::default()).collect();
    for _ in 0..3 {
        hs[0].record(Outcome::ConnectFailure, &c, &cl, hs.iter());
    }
    assert!(hs[0].is_ejected());
    for _ in 0..3 {
        assert!(!hs[1].record(Outcome::ConnectFailure, &c, &cl, hs.iter()), "34% of 3: one at a time");
    }
    // The next config no longer lists endpoint 0: the cluster has one slot again.
    let remaining = &hs[1..];
    assert!(hs[1].record(Outcome::ConnectFailure, &c, &cl, remaining.iter()));
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_over_the_interval() {
    let c = OutlierConfig { consecutive_5xx: 0, failure_percentage: 50, ..cfg() };
    let cl = ClusterOutliers::default();
    let hs = [EndpointHealth::default(), EndpointHealth::default()];
    let (bad, good) = (&hs[0], &hs[1]);
    assert_eq!(cl.evaluate(&c, hs.iter()), 0, "the first interval starts now");
    for i in 0..10 {
        bad.record(if i % 2 == 0 { Outcome::Status(500) } else { Outcome::Success }, &c, &cl, hs.iter());
        good.record(Outcome::Success, &c, &cl, hs.iter());
    }
    assert_eq!(cl.evaluate(&c, hs.iter()), 0, "interval not over yet");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(cl.evaluate(&c, hs.iter()), 1);
    assert!(bad.is_ejected());
    assert!(!good.is_ejected());
    // Connect failures (opaque TCP) count the same way.
    let c = OutlierConfig { max_ejection_percent: 100, ..c };
    for _ in 0..5 {
        good.record(Outcome::ConnectFailure, &c, &cl, hs.iter());
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(cl.evaluate(&c, hs.iter()), 1);
    assert!(good.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn no_ejection_time_or_count_overflows() {
    // Base and max as large as a Duration goes, ejected as often as a u32 counts: no panic,
    // and the endpoint stays ejected.
    let c = OutlierConfig {
        consecutive_5xx: 1,
        base_ejection: Duration::MAX,
        max_ejection: Duration::MAX,
        interval: Duration::MAX,
        failure_percentage: 1,
        max_ejection_percent: u32::MAX,
        ..cfg()
    };
    let cl = ClusterOutliers::default();
    let hs = [EndpointHealth::default()];
    hs[0].times_ejected.store(u32::MAX, Ordering::Relaxed);
    assert!(hs[0].record(Outcome::Status(503), &c, &cl, hs.iter()));
    assert!(hs[0].is_ejected());
    assert_eq!(cl.evaluate(&c, hs.iter()), 0);
    tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
    assert!(hs[0].is_ejected());
    assert!(hs[0].ejected_for().is_some());
}
