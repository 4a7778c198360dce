//! Peak-EWMA latency estimate (Finagle / Linkerd): a slower response raises the
//! estimate at once; faster ones pull it down with a time-based decay. The cost
//! of an endpoint is its estimate times (in-flight requests + 1).
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Decay window, as in Linkerd.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

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
    at: Instant,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new(DEFAULT_DECAY)
    }
}

/// Decrements the in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight<'a> {
    ewma: &'a PeakEwma,
    start: Instant,
}

impl PeakEwma {
    pub fn new(decay: Duration) -> Self {
        Self {
            decay_ns: decay.as_nanos() as f64,
            estimate: Mutex::new(Estimate { rtt_ns: None, at: Instant::now() }),
            pending: AtomicU32::new(0),
        }
    }

    /// Cost used by P2C. An endpoint never measured costs 0, so new endpoints are tried.
    pub fn cost(&self) -> f64 {
        let rtt = self.estimate.lock().rtt_ns.unwrap_or(0.0);
        rtt * f64::from(self.pending.load(Ordering::Relaxed) + 1)
    }

    /// Current estimate, for `/clusters`.
    pub fn rtt(&self) -> Option<Duration> {
        self.estimate.lock().rtt_ns.map(|ns| Duration::from_nanos(ns as u64))
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Count a request as in flight until the guard is dropped or `observe`d.
    pub fn start(&self) -> InFlight<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight { ewma: self, start: Instant::now() }
    }

    /// Count one more request in flight (pair with [`PeakEwma::remove_pending`]).
    pub fn add_pending(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    pub fn remove_pending(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// Feed one observed latency.
    pub fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        let sample = rtt.as_nanos() as f64;
        let mut e = self.estimate.lock();
        e.rtt_ns = Some(match e.rtt_ns {
            None => sample,
            Some(prev) if sample > prev => sample,
            Some(prev) => {
                let elapsed = now.saturating_duration_since(e.at).as_nanos() as f64;
                let w = (-elapsed / self.decay_ns).exp();
                prev * w + sample * (1.0 - w)
            }
        });
        e.at = now;
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
        self.ewma.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peak_is_taken_at_once_and_decays_with_time() {
        let e = PeakEwma::new(Duration::from_secs(10));
        assert_eq!(e.cost(), 0.0, "unmeasured endpoints cost nothing");
        e.observe(Duration::from_millis(10));
        assert_eq!(e.rtt(), Some(Duration::from_millis(10)));
        e.observe(Duration::from_millis(50));
        assert_eq!(e.rtt(), Some(Duration::from_millis(50)), "a peak is taken at once");
        // A fast sample right away barely moves it...
        e.observe(Duration::from_millis(1));
        assert!(e.rtt().unwrap() > Duration::from_millis(49));
        // ...but after a decay period it moves most of the way.
        tokio::time::advance(Duration::from_secs(10)).await;
        e.observe(Duration::from_millis(1));
        let rtt = e.rtt().unwrap();
        assert!(rtt < Duration::from_millis(20) && rtt > Duration::from_millis(1), "{rtt:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn pending_requests_raise_the_cost() {
        let e = PeakEwma::default();
        e.observe(Duration::from_millis(2));
        let base = e.cost();
        let a = e.start();
        let b = e.start();
        assert_eq!(e.pending(), 2);
        assert!((e.cost() - base * 3.0).abs() < 1.0);
        a.complete();
        drop(b);
        assert_eq!(e.pending(), 0);
    }
}
