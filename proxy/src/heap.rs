//! Giving the memory the allocator holds free back to the system.
//!
//! glibc's allocator returns memory to the kernel only from the top of an arena. After a burst
//! — many connections at once, each with its relay buffers; a large config being decoded — the
//! chunks freed below a still-live allocation stay resident, so a proxy's RSS stays at the
//! highest it ever reached although its live heap is back to a fraction of that (seen in the soak:
//! a hiccup that held ~30 opaque TCP connections open at once left 2.5 MB of freed 32 KiB relay
//! buffers resident for good). `malloc_trim(0)` gives every whole free page of every arena back
//! (`madvise(MADV_DONTNEED)`); live allocations are not moved or touched.
//!
//! The proxy calls it every `--heap-release-interval` (10 s) from its control thread, not from
//! the request path: the same idea as Envoy's `shrink_heap` overload action (tcmalloc's release
//! of free memory) and jemalloc's dirty-page decay (10 s by default), which Linkerd's proxy uses.
//! A released page that is needed again costs a page fault to get back.

use std::time::{Duration, Instant};

/// Gives the allocator's free memory back to the system; `true` when some was released.
/// Does nothing (and returns `false`) off glibc.
pub fn release_free_memory() -> bool {
    imp::trim()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    /// The proxy's one `unsafe` block (tests/tests/unsafe_code.rs keeps it the only one).
    #[allow(unsafe_code)]
    pub(super) fn trim() -> bool {
        // SAFETY: `malloc_trim` takes no pointer and reads or writes no memory of its caller. It
        // walks glibc's own arenas, each under the lock that malloc and free take on it (glibc's
        // manual marks it MT-Safe), and only gives back whole pages inside free chunks; a live
        // allocation is neither moved nor touched, so no Rust reference can be invalidated.
        // It is safe to call from any thread at any time, which is all Rust needs.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn trim() -> bool {
        false
    }
}

/// Every `interval`, releases free memory if the process's RSS grew since the last release
/// ([`worth_releasing`]), forever (`0s`: never; returns at once).
///
/// `malloc_trim` walks every free chunk of every arena, holding each arena's lock, and asks the
/// kernel for each one's pages again even when it gave them back before: with 10,000 idle
/// HTTP/1.1 connections' worth of heap it took 15 ms (a worker allocating from that arena waits
/// meanwhile). So it runs only after the RSS grew, not every period of a steady heap.
pub async fn run(interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval's first tick is immediate: there is nothing to release yet.
    tick.tick().await;
    let mut after_last: Option<u64> = None;
    loop {
        tick.tick().await;
        let now = resident_kib();
        if !worth_releasing(now, after_last) {
            continue;
        }
        let start = Instant::now();
        let released = release_free_memory();
        let took_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        after_last = resident_kib();
        tracing::debug!(
            released,
            took_us,
            rss_kib = now,
            after_kib = after_last,
            "gave the allocator's free memory back to the system"
        );
    }
}

/// Whether to release now: the RSS grew by 256 KiB or 2 % (the larger) over what it was right
/// after the last release, or either is unknown.
fn worth_releasing(now_kib: Option<u64>, after_last_kib: Option<u64>) -> bool {
    match (now_kib, after_last_kib) {
        (Some(now), Some(last)) => now >= last.saturating_add((last / 50).max(256)),
        _ => true,
    }
}

/// This process's resident set (`VmRSS` of `/proc/self/status`), in KiB.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Anonymous resident memory of this process, in KiB.
    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The burst the soak showed: many 32 KiB buffers, each followed by a small allocation that
    /// stays live, so freeing the buffers leaves holes below live memory that free() alone never
    /// returns. Releasing gives (nearly) all of them back.
    #[test]
    fn memory_freed_below_live_allocations_goes_back_to_the_system() {
        const BUFFERS: usize = 2048; // 64 MiB of 32 KiB buffers
        let mut buffers = Vec::with_capacity(BUFFERS);
        let mut pins = Vec::with_capacity(BUFFERS);
        for i in 0..BUFFERS {
            // Written, so every page is resident.
            buffers.push(vec![(i % 251) as u8 + 1; 32 * 1024]);
            pins.push(Box::new(i));
        }
        let before_free = rss_anon_kib();
        drop(buffers);
        let after_free = rss_anon_kib();
        assert!(
            before_free - after_free.min(before_free) < 16 * 1024,
            "free() alone gave back {} KiB of 64 MiB: the test no longer builds the holes it means to",
            before_free - after_free.min(before_free)
        );
        assert!(release_free_memory(), "malloc_trim reported nothing released");
        let after_release = rss_anon_kib();
        assert!(
            after_free - after_release.min(after_free) >= 48 * 1024,
            "released only {} KiB of the 64 MiB freed",
            after_free - after_release.min(after_free)
        );
        // The live allocations are untouched.
        assert!(pins.iter().enumerate().all(|(i, b)| **b == i));
    }

    #[test]
    fn a_release_follows_growth_only() {
        // The first time, or without a reading: release.
        assert!(worth_releasing(Some(13_000), None));
        assert!(worth_releasing(None, Some(13_000)));
        // A small heap: 256 KiB of growth.
        assert!(!worth_releasing(Some(10_255), Some(10_000)));
        assert!(worth_releasing(Some(10_256), Some(10_000)));
        assert!(!worth_releasing(Some(12_000), Some(13_000)));
        // A large one: 2 %.
        assert!(!worth_releasing(Some(45_000 + 899), Some(45_000)));
        assert!(worth_releasing(Some(45_000 + 900), Some(45_000)));
        // No overflow at the edge.
        assert!(!worth_releasing(Some(u64::MAX - 1), Some(u64::MAX - 1)));
        assert!(worth_releasing(Some(u64::MAX), Some(u64::MAX - 1)));
    }

    #[test]
    fn the_resident_set_is_read() {
        assert!(resident_kib().is_some_and(|kib| kib > 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_never_runs() {
        // Returns at once: `--heap-release-interval 0s` turns the release off (a zero-period
        // tokio interval would panic, which aborts the proxy).
        run(Duration::ZERO).await;
    }
}
