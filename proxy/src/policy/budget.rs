//! The retry budget (Finagle / Linkerd): over a sliding window, retries may be
//! at most `ratio` × original requests, plus `min_per_second` × window seconds so
//! that a quiet service can still retry. Counted in ten slices of the window.
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::config::BudgetConfig;

const SLICES: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Start of slice 0 of the ring.
    epoch: Instant,
    /// Index of the newest slice since `epoch`.
    newest: u64,
    requests: [u64; SLICES],
    retries: [u64; SLICES],
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryBudget {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Window { epoch: Instant::now(), newest: 0, requests: [0; SLICES], retries: [0; SLICES] }),
        }
    }

    /// An original request (not a retry) was sent.
    pub fn deposit(&self, cfg: &BudgetConfig) {
        let mut w = self.inner.lock();
        let i = w.advance(cfg.window);
        w.requests[i] += 1;
    }

    /// May one more retry go out? Takes it from the budget if so.
    pub fn try_withdraw(&self, cfg: &BudgetConfig) -> bool {
        let mut w = self.inner.lock();
        let i = w.advance(cfg.window);
        let requests: u64 = w.requests.iter().sum();
        let retries: u64 = w.retries.iter().sum();
        let allowed = cfg.ratio * requests as f64 + f64::from(cfg.min_per_second) * cfg.window.as_secs_f64();
        if (retries + 1) as f64 <= allowed {
            w.retries[i] += 1;
            true
        } else {
            false
        }
    }
}

impl Window {
    /// Move the ring to now, clearing slices that fell out of the window;
    /// returns the index of the current slice.
    fn advance(&mut self, window: Duration) -> usize {
        let slice = (window / SLICES as u32).max(Duration::from_millis(1));
        let now_slice = (Instant::now().saturating_duration_since(self.epoch).as_nanos() / slice.as_nanos()) as u64;
        if now_slice > self.newest {
            let stale = (now_slice - self.newest).min(SLICES as u64);
            for k in 1..=stale {
                let idx = ((self.newest + k) % SLICES as u64) as usize;
                self.requests[idx] = 0;
                self.retries[idx] = 0;
            }
            self.newest = now_slice;
        }
        (self.newest % SLICES as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ratio: f64, min: u32) -> BudgetConfig {
        BudgetConfig { ratio, min_per_second: min, window: Duration::from_secs(10) }
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_of_requests_plus_a_floor() {
        let b = RetryBudget::new();
        let c = cfg(0.2, 1); // floor: 1/s × 10 s = 10 retries
        for _ in 0..100 {
            b.deposit(&c);
        }
        // 0.2 × 100 + 10 = 30 retries allowed, the 31st is not.
        for i in 0..30 {
            assert!(b.try_withdraw(&c), "retry {i} should be allowed");
        }
        assert!(!b.try_withdraw(&c));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let b = RetryBudget::new();
        let c = cfg(0.0, 1);
        for _ in 0..10 {
            assert!(b.try_withdraw(&c));
        }
        assert!(!b.try_withdraw(&c));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.try_withdraw(&c), "old retries left the window");
    }

    #[tokio::test(start_paused = true)]
    async fn no_floor_and_no_requests_means_no_retries() {
        let b = RetryBudget::new();
        assert!(!b.try_withdraw(&cfg(0.2, 0)));
    }
}
