//! The one jittered exponential backoff, used for retries (and for any other
//! "try again later" in the proxy): full jitter, as AWS's architecture blog
//! describes it — `sleep = random(0, min(max, base · 2^n))`.
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExponentialBackoff {
    pub base: Duration,
    pub max: Duration,
}

impl ExponentialBackoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max: max.max(base) }
    }

    /// The ceiling for try `n` (0-based): `min(max, base · 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// A random delay in `[0, ceiling(n)]`.
    pub fn delay(&self, n: u32) -> Duration {
        let ceiling = self.ceiling(n).as_nanos() as u64;
        if ceiling == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(fastrand::u64(..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_and_caps() {
        let b = ExponentialBackoff::new(Duration::from_millis(25), Duration::from_millis(250));
        assert_eq!(b.ceiling(0), Duration::from_millis(25));
        assert_eq!(b.ceiling(1), Duration::from_millis(50));
        assert_eq!(b.ceiling(3), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(250));
        assert_eq!(b.ceiling(200), Duration::from_millis(250), "no overflow for large n");
    }

    #[test]
    fn delays_stay_within_the_ceiling_and_spread_out() {
        // Property: for every n, every delay is in [0, ceiling(n)], and over many
        // draws they cover the range (full jitter, not a fixed or half jitter).
        let b = ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(1));
        for n in 0..12 {
            let c = b.ceiling(n);
            let draws: Vec<Duration> = (0..2000).map(|_| b.delay(n)).collect();
            assert!(draws.iter().all(|d| *d <= c));
            assert!(draws.iter().any(|d| *d < c / 4), "n={n}: low quarter never drawn");
            assert!(draws.iter().any(|d| *d > c * 3 / 4), "n={n}: high quarter never drawn");
        }
    }

    #[test]
    fn max_below_base_is_raised_to_base() {
        let b = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_millis(1));
        assert_eq!(b.ceiling(5), Duration::from_millis(100));
    }
}
