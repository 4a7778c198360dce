//! One endpoint's numbers, merged from every proxy that reports it: running totals since the
//! control plane started (exact differences for rollout checks) and a ring of 10-second windows
//! over the last 15 minutes (history and sliding windows), each window's histogram kept sparse.

use std::collections::VecDeque;

use outrider_xds::latency::{BUCKETS, Histogram};

/// Width of a window, seconds.
pub const WINDOW_SECS: u64 = 10;
/// Windows kept: 15 minutes.
pub const WINDOWS: usize = 90;

/// Counts that add up: requests, their results and their latencies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aggregate {
    /// Requests that finished (succeeded + failed).
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Sum of the latencies, milliseconds.
    pub latency_ms: f64,
    pub histogram: Histogram,
}

impl Aggregate {
    pub fn merge(&mut self, other: &Aggregate) {
        self.requests = self.requests.saturating_add(other.requests);
        self.succeeded = self.succeeded.saturating_add(other.succeeded);
        self.failed = self.failed.saturating_add(other.failed);
        self.latency_ms += other.latency_ms;
        self.histogram.merge(&other.histogram);
    }

    /// `self - earlier`, for running totals.
    pub fn since(&self, earlier: &Aggregate) -> Aggregate {
        Aggregate {
            requests: self.requests.saturating_sub(earlier.requests),
            succeeded: self.succeeded.saturating_sub(earlier.succeeded),
            failed: self.failed.saturating_sub(earlier.failed),
            latency_ms: (self.latency_ms - earlier.latency_ms).max(0.0),
            histogram: self.histogram.since(&earlier.histogram),
        }
    }

    /// Percent of requests that succeeded; `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 100.0 * self.succeeded as f64 / self.requests as f64)
    }

    /// Mean latency, ms.
    pub fn mean_ms(&self) -> Option<f64> {
        let n = self.histogram.count();
        (n > 0).then(|| self.latency_ms / n as f64)
    }

    /// The `q` quantile of the latency, ms.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.histogram.quantile_us(q).map(|us| us / 1000.0)
    }
}

/// One report's numbers for one endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub succeeded: u64,
    pub failed: u64,
    pub latency_ms: f64,
    /// (bucket, count), any order.
    pub buckets: Vec<(usize, u64)>,
}

/// A 10-second window. Counts are per window, so 32 bits hold them (they saturate).
#[derive(Clone, Debug, Default)]
struct Window {
    /// Unix seconds / [`WINDOW_SECS`].
    slot: u64,
    succeeded: u32,
    failed: u32,
    latency_ms: f64,
    /// Sorted by bucket; each entry is `bucket << 24 | count` (counts saturate at 2²⁴ − 1 per
    /// bucket and window).
    buckets: Vec<u32>,
}

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u32 = (1 << COUNT_BITS) - 1;

impl Window {
    fn add(&mut self, sample: &Sample) {
        let sat = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        self.succeeded = self.succeeded.saturating_add(sat(sample.succeeded));
        self.failed = self.failed.saturating_add(sat(sample.failed));
        self.latency_ms += sample.latency_ms;
        for &(bucket, count) in &sample.buckets {
            let bucket = bucket.min(BUCKETS - 1) as u32;
            let count = u32::try_from(count).unwrap_or(COUNT_MASK).min(COUNT_MASK);
            match self.buckets.binary_search_by_key(&bucket, |e| e >> COUNT_BITS) {
                Ok(i) => {
                    let have = self.buckets[i] & COUNT_MASK;
                    self.buckets[i] = bucket << COUNT_BITS | (have + count).min(COUNT_MASK);
                }
                Err(i) => self.buckets.insert(i, bucket << COUNT_BITS | count),
            }
        }
    }

    fn add_to(&self, out: &mut Aggregate) {
        let (succeeded, failed) = (u64::from(self.succeeded), u64::from(self.failed));
        out.requests = out.requests.saturating_add(succeeded + failed);
        out.succeeded = out.succeeded.saturating_add(succeeded);
        out.failed = out.failed.saturating_add(failed);
        out.latency_ms += self.latency_ms;
        for e in &self.buckets {
            out.histogram.add((e >> COUNT_BITS) as usize, u64::from(e & COUNT_MASK));
        }
    }

    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.buckets.capacity() * 4
    }
}

/// One endpoint of one service.
#[derive(Clone, Debug, Default)]
pub struct Series {
    total: Aggregate,
    /// Oldest first; only windows that saw a report.
    windows: VecDeque<Window>,
}

impl Series {
    /// Add a report's numbers, arrived in `slot`.
    pub fn add(&mut self, slot: u64, sample: &Sample) {
        self.total.requests = self.total.requests.saturating_add(sample.succeeded.saturating_add(sample.failed));
        self.total.succeeded = self.total.succeeded.saturating_add(sample.succeeded);
        self.total.failed = self.total.failed.saturating_add(sample.failed);
        self.total.latency_ms += sample.latency_ms;
        for &(bucket, count) in &sample.buckets {
            self.total.histogram.add(bucket, count);
        }
        if self.windows.back().is_none_or(|w| w.slot < slot) {
            if let Some(last) = self.windows.back_mut() {
                last.buckets.shrink_to_fit();
            }
            self.windows.push_back(Window { slot, ..Default::default() });
        }
        // A report never lands in an older window than the newest (slots come from one clock).
        if let Some(window) = self.windows.back_mut() {
            window.add(sample);
        }
        self.expire(slot);
    }

    /// Drop windows older than [`WINDOWS`] before `now_slot`.
    pub fn expire(&mut self, now_slot: u64) {
        while self.windows.front().is_some_and(|w| w.slot + WINDOWS as u64 <= now_slot) {
            self.windows.pop_front();
        }
    }

    /// Whether no window is left.
    pub fn is_idle(&self) -> bool {
        self.windows.is_empty()
    }

    /// Running totals.
    pub fn total(&self) -> &Aggregate {
        &self.total
    }

    /// Add the windows of slots `from..=to` to `out`.
    pub fn add_windows(&self, from: u64, to: u64, out: &mut Aggregate) {
        for w in self.windows.iter().filter(|w| (from..=to).contains(&w.slot)) {
            w.add_to(out);
        }
    }

    /// Add each window of slots `from..=to` to `out[slot - from]`.
    pub fn add_history(&self, from: u64, to: u64, out: &mut [Aggregate]) {
        for w in self.windows.iter().filter(|w| (from..=to).contains(&w.slot)) {
            if let Some(slot) = out.get_mut((w.slot - from) as usize) {
                w.add_to(slot);
            }
        }
    }

    /// Heap and inline bytes this series holds (for the memory bound).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + BUCKETS * 8
            + self.windows.capacity().saturating_sub(self.windows.len()) * std::mem::size_of::<Window>()
            + self.windows.iter().map(Window::bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use outrider_xds::latency::bucket_of;

    use super::*;

    fn sample(ok: u64, failed: u64, us: &[u64]) -> Sample {
        let mut buckets: Vec<(usize, u64)> = Vec::new();
        for &v in us {
            match buckets.iter_mut().find(|(b, _)| *b == bucket_of(v)) {
                Some((_, c)) => *c += 1,
                None => buckets.push((bucket_of(v), 1)),
            }
        }
        Sample { succeeded: ok, failed, latency_ms: us.iter().sum::<u64>() as f64 / 1000.0, buckets }
    }

    #[test]
    fn windows_and_totals_agree_and_old_windows_expire() {
        let mut s = Series::default();
        s.add(100, &sample(2, 1, &[1000, 1000, 50_000]));
        s.add(100, &sample(1, 0, &[2000]));
        s.add(101, &sample(0, 1, &[90_000]));
        let mut w100 = Aggregate::default();
        s.add_windows(100, 100, &mut w100);
        assert_eq!((w100.requests, w100.succeeded, w100.failed), (4, 3, 1));
        assert_eq!(w100.histogram.get(bucket_of(1000)), 2);
        let mut both = Aggregate::default();
        s.add_windows(0, 200, &mut both);
        assert_eq!(&both, s.total());
        let mut history = vec![Aggregate::default(); 3];
        s.add_history(99, 101, &mut history);
        assert_eq!(history.iter().map(|a| a.requests).collect::<Vec<_>>(), [0, 4, 1]);
        s.expire(100 + WINDOWS as u64);
        let mut left = Aggregate::default();
        s.add_windows(0, 1000, &mut left);
        assert_eq!(left.requests, 1, "window 100 expired, 101 not yet");
        assert_eq!(s.total().requests, 5, "totals stay");
        s.expire(101 + WINDOWS as u64);
        assert!(s.is_idle());
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let mut s = Series::default();
        let big = Sample { succeeded: u64::MAX, failed: 0, latency_ms: 1.0, buckets: vec![(5, u64::MAX), (5, 7)] };
        s.add(1, &big);
        s.add(1, &big);
        let mut w = Aggregate::default();
        s.add_windows(1, 1, &mut w);
        assert_eq!(w.succeeded, u64::from(u32::MAX));
        assert_eq!(w.histogram.get(5), u64::from(COUNT_MASK));
        assert_eq!(s.total().succeeded, u64::MAX);
    }

    #[test]
    fn success_rate_mean_and_percentiles() {
        let mut a = Aggregate::default();
        assert_eq!((a.success_rate(), a.mean_ms(), a.quantile_ms(0.99)), (None, None, None));
        let mut s = Series::default();
        s.add(1, &sample(99, 1, &(1..=100).map(|i| i * 1000).collect::<Vec<_>>()));
        s.add_windows(1, 1, &mut a);
        assert_eq!(a.success_rate(), Some(99.0));
        assert_eq!(a.mean_ms(), Some(50.5));
        let p99 = a.quantile_ms(0.99).unwrap();
        assert!((p99 - 99.0).abs() / 99.0 < 0.25, "{p99}");
        assert_eq!(a.since(&a), Aggregate::default());
    }
}
