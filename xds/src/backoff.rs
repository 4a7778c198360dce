//! The one jittered exponential backoff (docs/architecture.md): full jitter, as in
//! "Exponential Backoff And Jitter" (AWS): `sleep = random(0, min(max, base * 2^n))`.
//! Used for xDS reconnects; the proxy reuses it for retries and breaker probation.

use std::time::Duration;

/// `sleep = random(0, min(max, base * 2^attempt))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExponentialBackoff {
    /// The ceiling of the first delay.
    pub base: Duration,
    /// No delay is ever longer than this.
    pub max: Duration,
}

impl ExponentialBackoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The ceiling for `attempt` (0-based): `min(max, base * 2^attempt)`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A random delay in `[0, ceiling(attempt)]` (full jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    /// A stateful sequence of delays, reset after success.
    pub fn iter(&self) -> Attempts {
        Attempts { backoff: *self, attempt: 0 }
    }
}

/// The delays of consecutive failures.
#[derive(Clone, Debug)]
pub struct Attempts {
    backoff: ExponentialBackoff,
    attempt: u32,
}

impl Attempts {
    /// The delay before the next attempt; each call backs off further.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Start again from `base` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases() -> impl Iterator<Item = ExponentialBackoff> {
        // A spread of (base, max), including max < base and zero.
        let ms = Duration::from_millis;
        (0..200).map(move |i| {
            let base = ms(fastrand::u64(0..=500));
            let max = if i % 7 == 0 { base / 2 } else { ms(fastrand::u64(0..=60_000)) };
            ExponentialBackoff::new(base, max)
        })
    }

    #[test]
    fn every_delay_is_within_zero_and_the_ceiling() {
        for b in cases() {
            for attempt in 0..80 {
                let ceiling = b.ceiling(attempt);
                assert!(ceiling <= b.max, "{b:?} attempt {attempt}");
                let d = b.delay(attempt);
                assert!(d <= ceiling, "{b:?} attempt {attempt}: {d:?} > {ceiling:?}");
            }
        }
    }

    #[test]
    fn the_ceiling_doubles_until_max_and_never_decreases() {
        for b in cases() {
            let mut last = Duration::ZERO;
            for attempt in 0..80 {
                let c = b.ceiling(attempt);
                assert!(c >= last, "{b:?}: ceiling went down at {attempt}");
                if attempt < 20 {
                    let doubled = b.base.saturating_mul(1 << attempt);
                    assert_eq!(c, doubled.min(b.max), "{b:?} attempt {attempt}");
                }
                last = c;
            }
            assert_eq!(b.ceiling(u32::MAX), b.max.min(b.base.saturating_mul(u32::MAX)));
        }
    }

    #[test]
    fn delays_are_jittered_not_constant() {
        let b = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let delays: std::collections::BTreeSet<_> = (0..50).map(|_| b.delay(3)).collect();
        assert!(delays.len() > 10, "full jitter spreads delays: {delays:?}");
        let mean = delays.iter().map(Duration::as_secs_f64).sum::<f64>() / delays.len() as f64;
        assert!(mean > 0.1 && mean < 0.7, "mean {mean} should be near 0.4 (ceiling 0.8s)");
    }

    #[test]
    fn delays_cover_the_whole_range_for_every_attempt() {
        // Full jitter, not half or none: over many draws, every attempt's delays
        // reach both the lowest and the highest quarter of [0, ceiling].
        let b = ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(1));
        for attempt in 0..12 {
            let c = b.ceiling(attempt);
            let draws: Vec<Duration> = (0..2000).map(|_| b.delay(attempt)).collect();
            assert!(draws.iter().any(|d| *d < c / 4), "attempt {attempt}: low quarter never drawn");
            assert!(draws.iter().any(|d| *d > c * 3 / 4), "attempt {attempt}: high quarter never drawn");
        }
    }

    #[test]
    fn attempts_grow_and_reset() {
        let b = ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let mut it = b.iter();
        for _ in 0..5 {
            it.next_delay();
        }
        assert_eq!(it.attempt(), 5);
        it.reset();
        assert_eq!(it.attempt(), 0);
        assert!(it.next_delay() <= Duration::from_millis(10));
    }
}
