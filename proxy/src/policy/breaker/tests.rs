use super::*;

fn cfg() -> BreakerConfig {
    BreakerConfig {
        failure_rate_threshold: 50,
        slow_call_duration: Duration::from_secs(2),
        slow_call_rate_threshold: 100,
        window: 10,
        minimum_calls: 4,
        open_duration: Duration::from_secs(30),
        half_open_calls: 2,
    }
}

fn call(sm: &StateMachine, c: &BreakerConfig, failed: bool) -> Option<State> {
    let p = sm.try_acquire(c).expect("permitted");
    sm.record(c, p, failed)
}

#[tokio::test(start_paused = true)]
async fn opens_only_after_minimum_calls_and_at_the_threshold() {
    let sm = StateMachine::new();
    let c = cfg();
    assert_eq!(call(&sm, &c, true), None);
    assert_eq!(call(&sm, &c, true), None);
    assert_eq!(call(&sm, &c, false), None, "2 of 3 failed, but 3 calls < minimum 4");
    assert_eq!(sm.state(), State::Closed);
    // The 4th call makes 2 failures of 4 = 50%: at the threshold, it opens.
    assert_eq!(call(&sm, &c, false), Some(State::Open));
    assert_eq!(sm.state(), State::Open);
    assert_eq!(sm.try_acquire(&c).unwrap_err(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_threshold() {
    let sm = StateMachine::new();
    let c = cfg();
    for i in 0..40 {
        // one failure in four: 25% < 50%
        call(&sm, &c, i % 4 == 0);
    }
    assert_eq!(sm.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_after_successful_probes_and_reopens_on_failure() {
    let sm = StateMachine::new();
    let c = cfg();
    for _ in 0..4 {
        call(&sm, &c, true);
    }
    assert_eq!(sm.state(), State::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(sm.state(), State::HalfOpen);
    let p1 = sm.try_acquire(&c).unwrap();
    let p2 = sm.try_acquire(&c).unwrap();
    assert_eq!(sm.try_acquire(&c).unwrap_err(), State::HalfOpen, "only 2 probes");
    assert_eq!(sm.record(&c, p1, false), None);
    assert_eq!(sm.record(&c, p2, false), Some(State::Closed));

    for _ in 0..4 {
        call(&sm, &c, true);
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    let p = sm.try_acquire(&c).unwrap();
    assert_eq!(sm.record(&c, p, true), Some(State::Open), "a failed probe reopens");
    assert_eq!(sm.try_acquire(&c).unwrap_err(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_count() {
    let sm = StateMachine::new();
    let c = BreakerConfig { slow_call_rate_threshold: 50, ..cfg() };
    for _ in 0..4 {
        let p = sm.try_acquire(&c).unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        sm.record(&c, p, false);
    }
    assert_eq!(sm.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn cancelled_probe_gives_its_slot_back() {
    let sm = StateMachine::new();
    let c = cfg();
    for _ in 0..4 {
        call(&sm, &c, true);
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    let p1 = sm.try_acquire(&c).unwrap();
    let _p2 = sm.try_acquire(&c).unwrap();
    sm.forget(p1);
    assert!(sm.try_acquire(&c).is_ok());
}

#[test]
fn thresholds_limit_and_release() {
    let c = Arc::new(ClusterCounters::default());
    let a = c.acquire_request(2).unwrap();
    let _b = c.acquire_request(2).unwrap();
    assert!(c.acquire_request(2).is_none());
    drop(a);
    assert!(c.acquire_request(2).is_some());
    assert_eq!(c.active().0, 1);
}
