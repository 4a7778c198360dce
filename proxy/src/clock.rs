//! Deadlines from durations that came from configuration (any policy file, any
//! xDS server): `now + duration` never panics. A deadline past the clock's range
//! is "far in the future" (about 30 years), as tokio's own `sleep` treats one.
use std::time::Duration;

use tokio::time::Instant;

/// What "far in the future" is.
pub const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `at + after`, or as close to it as the clock can go.
pub fn after(at: Instant, after: Duration) -> Instant {
    at.checked_add(after.min(FAR_FUTURE)).or_else(|| at.checked_add(FAR_FUTURE)).unwrap_or(at)
}

/// `now + after`, saturating.
pub fn deadline(after: Duration) -> Instant {
    self::after(Instant::now(), after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_panics_and_keeps_order() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        for d in [Duration::MAX, Duration::from_secs(u64::MAX), Duration::from_secs(315_576_000_000), FAR_FUTURE] {
            let at = after(now, d);
            assert!(at > now + Duration::from_secs(3600 * 24 * 365), "{d:?}");
            assert_eq!(at, after(now, FAR_FUTURE), "{d:?} saturates to far in the future");
        }
        assert_eq!(deadline(Duration::ZERO), Instant::now());
    }
}
