//! Latency histograms with one fixed bucket scheme, shared by the proxies (which count in it),
//! the load reports (which carry it) and the control plane (which merges it across proxies and
//! reads percentiles from it).
//!
//! Buckets are log-linear in microseconds: values below 4 µs have a bucket each; above, every
//! power of two is split into four equal buckets (`[4·2ᵏ, 5·2ᵏ)`, `[5·2ᵏ, 6·2ᵏ)`, …), up to
//! 2²⁷ µs (about 134 s); longer values share one overflow bucket. So a bucket is at most 25 %
//! of its lower bound wide and a percentile read from a merged histogram lies in the bucket that
//! holds the true value. Because the bounds are fixed, histograms from any number of proxies
//! merge by adding counts.
//!
//! In a load report a bucket travels as a named load metric (`EndpointLoadMetricStats`):
//! [`bucket_metric_name`] = `outrider.latency_bucket_us.<lower bound in µs>` with the count in
//! `num_requests_finished_with_metric`; the sum of the latencies travels as
//! [`LATENCY_SUM_METRIC`] (`total_metric_value` in milliseconds).

use std::fmt;

/// Bits of the sub-bucket index: 2ᴮ buckets per power of two.
pub const SUB_BITS: u32 = 2;
/// Buckets per power of two.
pub const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Values of 2ᴹ µs and more go to the overflow bucket.
pub const MAX_EXPONENT: u32 = 27;
/// Number of buckets, the overflow bucket included.
pub const BUCKETS: usize = (SUB_BUCKETS + (MAX_EXPONENT - SUB_BITS) as u64 * SUB_BUCKETS + 1) as usize;
/// Index of the overflow bucket.
pub const OVERFLOW: usize = BUCKETS - 1;

/// Load metric carrying the latency sum: `num_requests_finished_with_metric` requests,
/// `total_metric_value` milliseconds in all.
pub const LATENCY_SUM_METRIC: &str = "outrider.latency_ms";
/// Prefix of the per-bucket load metrics; the lower bound in µs follows.
pub const BUCKET_METRIC_PREFIX: &str = "outrider.latency_bucket_us.";

/// Endpoint load metric: the reporting proxy's peak-EWMA latency estimate of the endpoint,
/// `total_metric_value` milliseconds (`num_requests_finished_with_metric` = 1).
pub const EWMA_METRIC: &str = "outrider.ewma_ms";
/// Endpoint load metric, present while the reporting proxy has the endpoint ejected (outlier
/// detection): `total_metric_value` = seconds of ejection left.
pub const EJECTED_METRIC: &str = "outrider.ejected_s";
/// Locality load metric: the reporting proxy's circuit breaker state of the cluster,
/// `total_metric_value` 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE_METRIC: &str = "outrider.breaker_state";
/// Locality load metric: retries sent since the last report (`num_requests_finished_with_metric`).
pub const RETRIES_METRIC: &str = "outrider.retries";
/// `dropped_requests` category: requests and retries the circuit breaker rejected.
pub const DROPPED_BREAKER: &str = "circuit_breaker";
/// `dropped_requests` category: retries not sent because the retry budget was spent.
pub const DROPPED_RETRY_BUDGET: &str = "retry_budget_exhausted";

/// The bucket of a latency in microseconds.
#[inline]
pub fn bucket_of(us: u64) -> usize {
    if us < SUB_BUCKETS {
        return us as usize;
    }
    if us >= 1 << MAX_EXPONENT {
        return OVERFLOW;
    }
    // 2 ≤ exponent < MAX_EXPONENT here.
    let exponent = 63 - us.leading_zeros();
    let sub = (us >> (exponent - SUB_BITS)) & (SUB_BUCKETS - 1);
    (SUB_BUCKETS + u64::from(exponent - SUB_BITS) * SUB_BUCKETS + sub) as usize
}

/// The smallest value (µs) of bucket `index`.
pub fn lower_bound(index: usize) -> u64 {
    let index = index.min(OVERFLOW) as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    if index == OVERFLOW as u64 {
        return 1 << MAX_EXPONENT;
    }
    let j = index - SUB_BUCKETS;
    let exponent = j / SUB_BUCKETS + u64::from(SUB_BITS);
    let sub = j % SUB_BUCKETS;
    (SUB_BUCKETS + sub) << (exponent - u64::from(SUB_BITS))
}

/// The first value (µs) past bucket `index`; `None` for the overflow bucket.
pub fn upper_bound(index: usize) -> Option<u64> {
    (index < OVERFLOW).then(|| lower_bound(index + 1))
}

/// `outrider.latency_bucket_us.<lower bound>`.
pub fn bucket_metric_name(index: usize) -> String {
    format!("{BUCKET_METRIC_PREFIX}{}", lower_bound(index))
}

/// The bucket a load metric name stands for, if it is one of the bucket names.
pub fn parse_bucket_metric(name: &str) -> Option<usize> {
    let lower: u64 = name.strip_prefix(BUCKET_METRIC_PREFIX)?.parse().ok()?;
    let index = bucket_of(lower);
    (lower_bound(index) == lower).then_some(index)
}

/// Counts per bucket, mergeable by addition.
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: Box::new([0; BUCKETS]) }
    }
}

impl fmt::Debug for Histogram {
    /// The non-empty buckets as `lower_bound_µs: count`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter().map(|(i, c)| (lower_bound(i), c))).finish()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one latency.
    pub fn record_us(&mut self, us: u64) {
        self.add(bucket_of(us), 1);
    }

    /// Add `count` to bucket `index` (saturating; an index past the end goes to the overflow bucket).
    pub fn add(&mut self, index: usize, count: u64) {
        let slot = &mut self.counts[index.min(OVERFLOW)];
        *slot = slot.saturating_add(count);
    }

    /// Add every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// `self - earlier`, bucket by bucket (for counts that only grow, the counts in between).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut out = Histogram::default();
        for ((slot, now), then) in out.counts.iter_mut().zip(self.counts.iter()).zip(earlier.counts.iter()) {
            *slot = now.saturating_sub(*then);
        }
        out
    }

    /// The count of bucket `index`.
    pub fn get(&self, index: usize) -> u64 {
        self.counts.get(index).copied().unwrap_or(0)
    }

    /// The non-empty buckets as (index, count), in order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i, *c))
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, c| a.saturating_add(*c))
    }

    /// The `q` quantile (0..=1) in microseconds, `None` when empty: the bucket holding the
    /// value of rank `q · count` is found, and the value interpolated linearly inside it (as
    /// Prometheus' `histogram_quantile` does). The true value lies in the same bucket, so the
    /// error is below the bucket's width (≤ 25 % of its lower bound). In the overflow bucket
    /// the result is its lower bound.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(f64::MIN_POSITIVE);
        let mut below = 0u64;
        for (index, count) in self.iter() {
            if below.saturating_add(count) as f64 >= rank {
                let lower = lower_bound(index) as f64;
                let Some(upper) = upper_bound(index) else {
                    return Some(lower);
                };
                let within = (rank - below as f64) / count as f64;
                return Some(lower + (upper as f64 - lower) * within);
            }
            below = below.saturating_add(count);
        }
        // Rounding: the last non-empty bucket.
        self.iter().last().map(|(index, _)| upper_bound(index).unwrap_or(lower_bound(index)) as f64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_the_bucket_whose_bounds_hold_it() {
        assert_eq!(BUCKETS, 105);
        let mut values: Vec<u64> = (0..5000).collect();
        values.extend((0..MAX_EXPONENT + 3).flat_map(|e| {
            let p = 1u64 << e;
            [p.saturating_sub(1), p, p + 1, p + p / 3]
        }));
        for v in values {
            let i = bucket_of(v);
            assert!(lower_bound(i) <= v, "{v} in bucket {i} starting at {}", lower_bound(i));
            if let Some(upper) = upper_bound(i) {
                assert!(v < upper, "{v} in bucket {i} ending at {upper}");
            } else {
                assert!(v >= 1 << MAX_EXPONENT);
            }
        }
        // Bounds are increasing, contiguous, and at most 25 % wide.
        for i in 0..OVERFLOW {
            let (lower, upper) = (lower_bound(i), upper_bound(i).unwrap());
            assert!(upper > lower);
            assert_eq!(bucket_of(lower), i);
            assert_eq!(bucket_of(upper - 1), i);
            if lower >= SUB_BUCKETS {
                assert!((upper - lower) * 4 <= lower, "bucket {i}: [{lower}, {upper})");
            }
        }
        assert_eq!(bucket_of(u64::MAX), OVERFLOW);
    }

    #[test]
    fn metric_names_round_trip_and_reject_anything_else() {
        for i in 0..BUCKETS {
            assert_eq!(parse_bucket_metric(&bucket_metric_name(i)), Some(i));
        }
        assert_eq!(bucket_metric_name(bucket_of(1000)), "outrider.latency_bucket_us.896");
        for bad in ["outrider.latency_bucket_us.897", "outrider.latency_bucket_us.", "latency", "outrider.latency_ms"] {
            assert_eq!(parse_bucket_metric(bad), None, "{bad}");
        }
    }

    #[test]
    fn quantiles_are_within_the_bucket_of_the_true_value() {
        // 1..=10_000 µs, uniform: the true p50 is 5000, p99 9900.
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record_us(v);
        }
        for (q, truth) in [(0.5, 5000.0), (0.9, 9000.0), (0.99, 9900.0)] {
            let got = h.quantile_us(q).unwrap();
            let i = bucket_of(truth as u64);
            assert!(
                got >= lower_bound(i) as f64 && got <= upper_bound(i).unwrap() as f64,
                "q{q}: {got} outside the bucket of {truth}"
            );
            assert!((got - truth).abs() / truth < 0.05, "q{q}: {got} vs {truth}");
        }
        assert_eq!(Histogram::new().quantile_us(0.5), None);
        let mut over = Histogram::new();
        over.record_us(u64::MAX);
        assert_eq!(over.quantile_us(0.99), Some((1u64 << MAX_EXPONENT) as f64));
        // Counts at the limit (a report may say anything) neither overflow nor panic.
        let mut full = Histogram::new();
        for i in 0..BUCKETS {
            full.add(i, u64::MAX);
        }
        assert_eq!(full.count(), u64::MAX);
        assert!(full.quantile_us(0.5).is_some());
    }

    #[test]
    fn histograms_merge_by_addition_and_subtract_for_intervals() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        for v in [10, 20, 30] {
            a.record_us(v);
        }
        for v in [20, 5000] {
            b.record_us(v);
        }
        let before = a.clone();
        a.merge(&b);
        assert_eq!(a.count(), 5);
        assert_eq!(a.get(bucket_of(20)), 2);
        assert_eq!(a.since(&before), b);
        assert_eq!(format!("{b:?}"), "{20: 1, 4096: 1}");
    }
}
