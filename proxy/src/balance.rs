//! Load balancing over a set of endpoints: power-of-two-choices over peak-EWMA
//! latency (the default, as Linkerd does it), weighted round robin and weighted
//! random. Sets are built once per snapshot; a pick takes no lock beyond reading
//! two endpoints' estimates.
//!
//! Why our own rather than `tower::balance::p2c`: tower's balancer is a `Service` that owns
//! its endpoint services and needs `&mut self` (one instance per connection, or a `Buffer`
//! task and channel per request to share it), takes endpoints from a `Discover` stream, has
//! no weights, and cannot skip endpoints per request. Here one immutable set per snapshot
//! serves every connection, endpoints carry weights and state carried across snapshots, and
//! each pick must skip what is ejected, breaker-open or already tried by this request
//! ([`Balancer::pick_where`]). The peak-EWMA estimate is tower's formula, tested against it.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod ewma;

pub use ewma::PeakEwma;

/// What a balancer needs to know of an endpoint.
pub trait Balanced {
    /// Relative weight, at least 1.
    fn weight(&self) -> u32;
    /// Its latency estimate and in-flight count.
    fn load(&self) -> &PeakEwma;
}

impl<T: Balanced> Balanced for Arc<T> {
    fn weight(&self) -> u32 {
        (**self).weight()
    }
    fn load(&self) -> &PeakEwma {
        (**self).load()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbPolicy {
    P2cEwma,
    RoundRobin,
    Random,
}

impl LbPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            LbPolicy::P2cEwma => "p2c-ewma",
            LbPolicy::RoundRobin => "round-robin",
            LbPolicy::Random => "random",
        }
    }
}

/// An immutable set of endpoints with a policy.
#[derive(Debug)]
pub struct Balancer<T> {
    policy: LbPolicy,
    items: Vec<T>,
    /// Cumulative weights, for weighted random choice.
    cumulative: Vec<u64>,
    total: u64,
    /// Smooth weighted round-robin order, computed once.
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl<T: Balanced> Balancer<T> {
    pub fn new(policy: LbPolicy, items: Vec<T>) -> Self {
        let mut cumulative = Vec::with_capacity(items.len());
        let mut total = 0u64;
        for it in &items {
            total += u64::from(it.weight().max(1));
            cumulative.push(total);
        }
        let schedule = if policy == LbPolicy::RoundRobin { smooth_schedule(&items) } else { Vec::new() };
        // Start round robin at a random place so many proxies do not move in lockstep.
        let start = if schedule.is_empty() { 0 } else { fastrand::usize(..schedule.len()) };
        Self { policy, items, cumulative, total, schedule, next: AtomicUsize::new(start) }
    }

    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    pub fn items(&self) -> &[T] {
        &self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Choose an endpoint, or `None` when the set is empty.
    pub fn pick(&self) -> Option<&T> {
        match self.items.len() {
            0 => None,
            1 => self.items.first(),
            _ => match self.policy {
                LbPolicy::RoundRobin => {
                    let i = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
                    self.items.get(self.schedule[i] as usize)
                }
                LbPolicy::Random => self.items.get(self.weighted_index()),
                LbPolicy::P2cEwma => self.items.get(self.p2c()),
            },
        }
    }

    /// Choose among the endpoints that pass `ok`, or `None` when none does.
    /// Tries the policy's choice a few times, then scans.
    pub fn pick_where(&self, ok: impl Fn(&T) -> bool) -> Option<&T> {
        for _ in 0..4 {
            match self.pick() {
                Some(t) if ok(t) => return Some(t),
                Some(_) => continue,
                None => return None,
            }
        }
        let n = self.items.len();
        let start = if n > 0 { fastrand::usize(..n) } else { 0 };
        (0..n).map(|i| &self.items[(start + i) % n]).find(|t| ok(t))
    }

    fn weighted_index(&self) -> usize {
        let r = fastrand::u64(..self.total);
        self.cumulative.partition_point(|&c| c <= r)
    }

    fn p2c(&self) -> usize {
        let a = self.weighted_index();
        let mut b = self.weighted_index();
        if a == b {
            // A second, different candidate (uniformly) so two are always compared.
            b = (a + 1 + fastrand::usize(..self.items.len() - 1)) % self.items.len();
        }
        let cost = |i: usize| {
            let it = &self.items[i];
            it.load().cost() / f64::from(it.weight().max(1))
        };
        if cost(b) < cost(a) { b } else { a }
    }
}

/// The longest round-robin order kept: weights whose sum is larger (an xDS
/// server may send any `u32`) are scaled down to it, keeping their ratios to
/// within one part in this.
const MAX_SCHEDULE: u64 = 1 << 16;

/// nginx's smooth weighted round robin, unrolled into a fixed order.
fn smooth_schedule<T: Balanced>(items: &[T]) -> Vec<u32> {
    let raw: Vec<u64> = items.iter().map(|i| u64::from(i.weight().max(1))).collect();
    let sum: u64 = raw.iter().sum();
    let weights: Vec<i64> = raw
        .iter()
        .map(|&w| if sum > MAX_SCHEDULE { (w * MAX_SCHEDULE / sum).max(1) } else { w })
        .map(|w| i64::try_from(w).unwrap_or(i64::MAX))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; items.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests;
