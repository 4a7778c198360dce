use std::time::Duration;

use super::*;
use crate::policy::config::BreakerScope;

fn cfg() -> BreakerConfig {
    BreakerConfig {
        failure_rate_threshold: 50,
        slow_call_duration: Duration::from_secs(2),
        slow_call_rate_threshold: 100,
        window: 10,
        minimum_calls: 4,
        open_duration: Duration::from_secs(30),
        half_open_calls: 2,
        scope: BreakerScope::Endpoint,
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
    assert!(!sm.admits());
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
async fn the_window_forgets_old_calls() {
    let sm = StateMachine::new();
    let c = BreakerConfig { window: 4, minimum_calls: 4, ..cfg() };
    // S F S S S S: at most one failure in any four calls.
    for failed in [false, true, false, false, false, false] {
        assert_eq!(call(&sm, &c, failed), None);
    }
    // The window now holds S S S S; two failures make S S F F = 50%, while counting every
    // call so far would make 3 of 8.
    assert_eq!(call(&sm, &c, true), None);
    assert_eq!(call(&sm, &c, true), Some(State::Open), "the 5th-oldest failure had left the window");
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
    assert!(sm.admits());
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
async fn slow_call_rate_opens_it_without_any_failure() {
    let sm = StateMachine::new();
    let c = BreakerConfig { slow_call_rate_threshold: 50, ..cfg() };
    // Two fast and two slow (≥ 2 s) calls, none failed: 50% slow, at the threshold.
    for (i, slow) in [false, true, false, true].into_iter().enumerate() {
        let p = sm.try_acquire(&c).unwrap();
        tokio::time::advance(if slow { Duration::from_secs(2) } else { Duration::from_millis(1) }).await;
        let changed = sm.record(&c, p, false);
        assert_eq!(changed, (i == 3).then_some(State::Open), "call {i}");
    }
    // Below the slow-call duration, a call is not slow.
    let sm = StateMachine::new();
    for _ in 0..8 {
        let p = sm.try_acquire(&c).unwrap();
        tokio::time::advance(Duration::from_millis(1999)).await;
        sm.record(&c, p, false);
    }
    assert_eq!(sm.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_reopens() {
    let sm = StateMachine::new();
    let c = cfg();
    for _ in 0..4 {
        call(&sm, &c, true);
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    let p = sm.try_acquire(&c).unwrap();
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(sm.record(&c, p, false), Some(State::Open), "a successful but slow probe is no proof of health");
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

#[tokio::test(start_paused = true)]
async fn no_open_duration_overflows() {
    // openDuration as large as a Duration goes: the breaker stays open "forever", no panic.
    let sm = StateMachine::new();
    let c = BreakerConfig { open_duration: Duration::MAX, slow_call_duration: Duration::MAX, ..cfg() };
    for _ in 0..4 {
        call(&sm, &c, true);
    }
    assert_eq!(sm.state(), State::Open);
    tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
    assert_eq!(sm.try_acquire(&c).unwrap_err(), State::Open);
    // And the smallest: half-open at once.
    let sm = StateMachine::new();
    let c = BreakerConfig { open_duration: Duration::from_nanos(1), ..cfg() };
    for _ in 0..4 {
        call(&sm, &c, true);
    }
    tokio::time::advance(Duration::from_nanos(1)).await;
    assert!(sm.try_acquire(&c).is_ok());
}

#[tokio::test(start_paused = true)]
async fn extreme_windows_and_thresholds_do_not_panic() {
    let sm = StateMachine::new();
    let c = BreakerConfig { window: u32::MAX, minimum_calls: u32::MAX, half_open_calls: u32::MAX, ..cfg() };
    for i in 0..100 {
        call(&sm, &c, i % 2 == 0);
    }
    assert_eq!(sm.state(), State::Closed, "minimum_calls never reached");
    let c = BreakerConfig { window: 0, minimum_calls: 0, half_open_calls: 0, ..cfg() };
    assert_eq!(call(&sm, &c, true), Some(State::Open), "a window of 0 counts as 1");
}
