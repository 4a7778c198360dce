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
