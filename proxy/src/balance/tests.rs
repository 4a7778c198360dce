use std::collections::HashMap;
use std::time::Duration;

use super::*;

#[derive(Debug)]
struct Ep {
    id: usize,
    weight: u32,
    load: PeakEwma,
}

impl Balanced for Ep {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> &PeakEwma {
        &self.load
    }
}

fn eps(weights: &[u32]) -> Vec<Ep> {
    weights.iter().enumerate().map(|(id, &weight)| Ep { id, weight, load: PeakEwma::default() }).collect()
}

fn counts(b: &Balancer<Ep>, n: usize) -> HashMap<usize, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        *m.entry(b.pick().unwrap().id).or_default() += 1;
    }
    m
}

#[test]
fn empty_set_picks_nothing() {
    let b = Balancer::<Ep>::new(LbPolicy::P2cEwma, vec![]);
    assert!(b.pick().is_none());
}

#[test]
fn round_robin_is_exactly_even() {
    let b = Balancer::new(LbPolicy::RoundRobin, eps(&[1, 1, 1]));
    let c = counts(&b, 300);
    assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![100, 100, 100]);
}

#[test]
fn round_robin_follows_weights_and_interleaves() {
    let b = Balancer::new(LbPolicy::RoundRobin, eps(&[3, 1]));
    let c = counts(&b, 400);
    assert_eq!(c[&0], 300);
    assert_eq!(c[&1], 100);
    // Smooth: never four in a row of the heavy one.
    let order: Vec<u32> = b.schedule.clone();
    assert_eq!(order.len(), 4);
    assert!(order.contains(&1));
}

#[test]
fn random_follows_weights() {
    let b = Balancer::new(LbPolicy::Random, eps(&[9, 1]));
    let c = counts(&b, 10_000);
    let share = c[&0] as f64 / 10_000.0;
    assert!((0.87..0.93).contains(&share), "share {share}");
}

#[tokio::test(start_paused = true)]
async fn p2c_prefers_the_faster_endpoint() {
    let b = Balancer::new(LbPolicy::P2cEwma, eps(&[1, 1, 1]));
    b.items()[0].load.observe(Duration::from_millis(20));
    b.items()[1].load.observe(Duration::from_millis(1));
    b.items()[2].load.observe(Duration::from_millis(1));
    let c = counts(&b, 3000);
    // With two choices the slow one only wins when paired with itself, which P2C avoids.
    assert_eq!(c.get(&0).copied().unwrap_or(0), 0);
}

#[tokio::test(start_paused = true)]
async fn p2c_accounts_for_in_flight_requests() {
    let b = Balancer::new(LbPolicy::P2cEwma, eps(&[1, 1]));
    b.items()[0].load.observe(Duration::from_millis(1));
    b.items()[1].load.observe(Duration::from_millis(1));
    let _busy: Vec<_> = (0..5).map(|_| b.items()[0].load.start()).collect();
    let c = counts(&b, 100);
    assert_eq!(c[&1], 100);
}

#[test]
fn huge_weights_keep_their_ratio_in_a_bounded_schedule() {
    // Weights from any xDS server: the round-robin order stays small (no huge
    // allocation, no endless loop building it) and the ratio holds.
    let b = Balancer::new(LbPolicy::RoundRobin, eps(&[u32::MAX, u32::MAX / 2, 1]));
    assert!(b.schedule.len() as u64 <= MAX_SCHEDULE + 3, "{}", b.schedule.len());
    let c = counts(&b, b.schedule.len());
    let (a, h, one) = (c[&0], c[&1], c.get(&2).copied().unwrap_or(0));
    assert!((a as f64 / h as f64 - 2.0).abs() < 0.01, "{a} vs {h}");
    assert_eq!(one, 1, "the smallest weight still gets its turn");
    let r = Balancer::new(LbPolicy::Random, eps(&[u32::MAX; 4]));
    assert!(r.pick().is_some());
}

/// One request at a time, `gap` apart: pick, wait the endpoint's latency, feed it. Returns
/// how many requests each endpoint got.
async fn drive(b: &Balancer<Ep>, latency: &[Duration], n: usize, gap: Duration) -> Vec<usize> {
    let mut counts = vec![0; latency.len()];
    for _ in 0..n {
        let ep = b.pick().unwrap();
        counts[ep.id] += 1;
        let g = ep.load.start();
        tokio::time::advance(latency[ep.id]).await;
        g.complete();
        tokio::time::advance(gap).await;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn traffic_leaves_a_slow_endpoint_and_comes_back_when_it_is_fast_again() {
    let b = Balancer::new(LbPolicy::P2cEwma, eps(&[1, 1, 1]));
    let fast = Duration::from_millis(10);
    let slow = Duration::from_millis(500);
    let gap = Duration::from_millis(100);
    let even = drive(&b, &[fast, fast, fast], 300, gap).await;
    assert!(even.iter().all(|&n| n >= 60), "all fast: each gets a fair share {even:?}");

    // Endpoint 0 turns slow: it gets almost nothing.
    let away = drive(&b, &[slow, fast, fast], 300, gap).await;
    assert!(away[0] <= 10, "traffic moves away from the slow endpoint {away:?}");

    // Fast again: its old peak decays on read until P2C tries it, and its fast answers bring
    // it back to a fair share.
    let _settle = drive(&b, &[fast, fast, fast], 600, gap).await;
    let back = drive(&b, &[fast, fast, fast], 300, gap).await;
    assert!(back[0] >= 60, "traffic comes back once it is fast again {back:?}");
}

#[tokio::test(start_paused = true)]
async fn a_new_endpoint_does_not_take_all_traffic_before_it_answers() {
    let b = Balancer::new(LbPolicy::P2cEwma, eps(&[1, 1, 1]));
    for ep in &b.items()[..2] {
        ep.load.observe(Duration::from_millis(10));
    }
    // Endpoint 2 is new (never measured) and 30 requests go out before any answer.
    let mut in_flight = Vec::new();
    let mut counts = [0usize; 3];
    for _ in 0..30 {
        let ep = b.pick().unwrap();
        counts[ep.id] += 1;
        in_flight.push(ep.load.start());
    }
    assert_eq!(counts[2], 1, "one request to try it, then it waits for its answer {counts:?}");
}
