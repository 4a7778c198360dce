//! Peak-EWMA latency estimate, as Finagle and tower (`tower::load::PeakEwma`, which Linkerd
//! uses) compute it: a slower response raises the estimate at once (the peak); a faster one
//! pulls it down by `1 - e^(-elapsed/decay)`; and every read decays the estimate towards zero
//! by `e^(-elapsed/decay)` since the last update, so an endpoint that answered slowly once is
//! tried again as time passes instead of being starved. The cost P2C compares is the estimate
//! times (in-flight requests + 1).
//!
//! An endpoint never measured costs 0 while idle, so a new endpoint is tried, and a large
//! penalty plus its in-flight count while its first requests are out (Finagle's rule), so a new
//! or black-holed endpoint does not take all the traffic before it has answered once.
//!
//! Why not `tower::load::PeakEwma` itself: it wraps a `Service` and counts in-flight requests
//! with the strong count of an `Arc` held by each response, where our endpoints are plain
//! snapshot data shared by every connection, carried across snapshots, and fed by the attempt
//! guard that also feeds the breaker and outlier detection (a timeout is fed as its latency).
//! The formula is tower's, tested against tower's own implementation in `ewma/tests.rs`.
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Decay window, as in Linkerd.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// The cost of an endpoint never measured while it has requests in flight (plus their count):
/// larger than any real estimate, so it waits for its first answer. Finagle's value.
pub const UNMEASURED_PENALTY: f64 = (i64::MAX >> 16) as f64;

#[derive(Debug)]
pub struct PeakEwma {
    decay_ns: f64,
    estimate: Mutex<Estimate>,
    pending: AtomicU32,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// Nanoseconds; `None` until the first response.
    rtt_ns: Option<f64>,
    /// When `rtt_ns` was last updated (by a sample or a read).
    at: Instant,
}

impl Estimate {
    /// tower's `RttEstimate::update`: the sample replaces a lower estimate (peak); otherwise the
    /// estimate moves towards it by how long it has been since the last update. A read is an
    /// update with a sample of 0.
    fn update(&mut self, sample_ns: f64, now: Instant, decay_ns: f64) -> Option<f64> {
        let next = match self.rtt_ns {
            None if sample_ns > 0.0 => Some(sample_ns),
            None => None,
            Some(prev) if prev < sample_ns => Some(sample_ns),
            Some(prev) => {
                let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
                let decay = (-elapsed / decay_ns).exp();
                Some(prev * decay + sample_ns * (1.0 - decay))
            }
        };
        self.rtt_ns = next;
        self.at = now;
        next
    }
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new(DEFAULT_DECAY)
    }
}

/// Counts a request in flight until dropped; [`InFlight::complete`] also feeds its latency.
#[derive(Debug)]
pub struct InFlight<'a> {
    ewma: &'a PeakEwma,
    start: Instant,
}

impl PeakEwma {
    pub fn new(decay: Duration) -> Self {
        Self {
            decay_ns: (decay.as_nanos() as f64).max(1.0),
            estimate: Mutex::new(Estimate { rtt_ns: None, at: Instant::now() }),
            pending: AtomicU32::new(0),
        }
    }

    /// Cost used by P2C: the estimate, decayed to now, times (in-flight + 1). Unmeasured: 0
    /// when idle, else [`UNMEASURED_PENALTY`] + in-flight.
    pub fn cost(&self) -> f64 {
        let pending = f64::from(self.pending.load(Ordering::Relaxed));
        let rtt = self.estimate.lock().update(0.0, Instant::now(), self.decay_ns);
        match rtt {
            Some(rtt) => rtt * (pending + 1.0),
            None if pending == 0.0 => 0.0,
            None => UNMEASURED_PENALTY + pending,
        }
    }

    /// Current estimate (decayed to now), for `/clusters`.
    pub fn rtt(&self) -> Option<Duration> {
        let e = *self.estimate.lock();
        let rtt = e.rtt_ns?;
        let elapsed = Instant::now().saturating_duration_since(e.at).as_nanos() as f64;
        Some(Duration::from_nanos((rtt * (-elapsed / self.decay_ns).exp()) as u64))
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Count a request as in flight until the guard is dropped or `complete`d.
    pub fn start(&self) -> InFlight<'_> {
        self.add_pending();
        InFlight { ewma: self, start: Instant::now() }
    }

    /// Count one more request in flight (pair with [`PeakEwma::remove_pending`]).
    pub fn add_pending(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    pub fn remove_pending(&self) {
        // Never below 0, whatever the pairing.
        let _ = self.pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Feed one observed latency (a timeout is fed as the time waited).
    pub fn observe(&self, rtt: Duration) {
        let sample = (rtt.as_nanos() as f64).max(1.0);
        self.estimate.lock().update(sample, Instant::now(), self.decay_ns);
    }
}

impl InFlight<'_> {
    /// The response arrived: record its latency.
    pub fn complete(self) {
        self.ewma.observe(self.start.elapsed());
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ewma.remove_pending();
    }
}

#[cfg(test)]
mod tests;
