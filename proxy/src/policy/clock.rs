//! Time for policy state kept in atomics: nanoseconds since a process-wide epoch, on tokio's
//! clock (so paused-time tests drive it), with saturating arithmetic: a deadline computed from
//! any policy duration, however large, never overflows or panics (release builds abort on a
//! panic). `u64::MAX` means "never" (about 584 years away).
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds since the epoch (at least 1, so 0 can mean "unset").
pub fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    nanos(Instant::now().saturating_duration_since(epoch)).saturating_add(1)
}

/// A duration in nanoseconds, saturating at `u64::MAX`.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `now_nanos() + d`, saturating.
pub fn after(d: Duration) -> u64 {
    now_nanos().saturating_add(nanos(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_saturate_instead_of_overflowing() {
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(after(Duration::MAX), u64::MAX);
        let a = now_nanos();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(now_nanos() - a, 5_000_000);
        assert!(after(Duration::from_secs(1)) > now_nanos());
    }
}
