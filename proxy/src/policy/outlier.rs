//! Outlier detection per endpoint (Envoy): consecutive 5xx, consecutive gateway
//! errors, and failure percentage over each interval. An ejected endpoint gets
//! no traffic until base × times-ejected (capped) has passed; never more than
//! `max_ejection_percent` of a cluster's endpoints are ejected, but one always may be.
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::config::OutlierConfig;
use super::outcome::Outcome;

/// Nanoseconds since a process-wide epoch, so ejection deadlines fit an atomic.
fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(epoch).as_nanos() as u64 + 1
}

/// One endpoint's health, carried across snapshots.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// 0 = not ejected; else the deadline in `now_nanos` terms.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    interval_total: AtomicU32,
    interval_failed: AtomicU32,
}

/// Per-cluster bookkeeping.
#[derive(Debug)]
pub struct ClusterOutliers {
    ejected: AtomicU32,
    last_eval: Mutex<Instant>,
    /// `now_nanos` before which no evaluation is due (checked without the lock).
    next_eval: AtomicU64,
}

impl Default for ClusterOutliers {
    fn default() -> Self {
        Self { ejected: AtomicU32::new(0), last_eval: Mutex::new(Instant::now()), next_eval: AtomicU64::new(0) }
    }
}

impl EndpointHealth {
    /// Is it ejected now? An ejection whose time is up is lifted here.
    pub fn is_ejected(&self, cluster: &ClusterOutliers) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if now_nanos() < until {
            return true;
        }
        if self.ejected_until.compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            cluster.ejected.fetch_sub(1, Ordering::AcqRel);
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        false
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    /// Remaining ejection, for `/clusters`.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Acquire);
        let now = now_nanos();
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    fn try_eject(&self, cfg: &OutlierConfig, cluster: &ClusterOutliers, total: usize) -> bool {
        // At most max_ejection_percent of the endpoints, but at least one.
        let max = ((total as u64 * u64::from(cfg.max_ejection_percent)) / 100).max(1) as u32;
        let mut cur = cluster.ejected.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return false;
            }
            match cluster.ejected.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let times = self.times_ejected.fetch_add(1, Ordering::AcqRel) + 1;
        let d = cfg.base_ejection.saturating_mul(times).min(cfg.max_ejection.max(cfg.base_ejection));
        if self
            .ejected_until
            .compare_exchange(0, now_nanos() + d.as_nanos() as u64, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Someone else ejected it meanwhile.
            cluster.ejected.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Count one attempt's outcome; returns true when this ejected the endpoint.
    pub fn record(&self, outcome: Outcome, cfg: &OutlierConfig, cluster: &ClusterOutliers, total: usize) -> bool {
        if outcome == Outcome::Local {
            return false;
        }
        self.interval_total.fetch_add(1, Ordering::Relaxed);
        let five = outcome.is_5xx();
        let gw = outcome.is_gateway_error();
        if five || gw {
            self.interval_failed.fetch_add(1, Ordering::Relaxed);
        }
        let c5 = if five {
            self.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            0
        };
        let cg = if gw {
            self.consecutive_gateway.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let hit = (cfg.consecutive_5xx > 0 && c5 >= cfg.consecutive_5xx)
            || (cfg.consecutive_gateway > 0 && cg >= cfg.consecutive_gateway);
        if hit && self.ejected_until.load(Ordering::Acquire) == 0 && self.try_eject(cfg, cluster, total) {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }
}

impl ClusterOutliers {
    pub fn ejected(&self) -> u32 {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Once per interval: eject endpoints whose failure percentage over the
    /// interval is at or over the threshold. Returns how many were ejected.
    pub fn evaluate<'a>(
        &self,
        cfg: &OutlierConfig,
        endpoints: impl Iterator<Item = &'a EndpointHealth> + Clone,
    ) -> u32 {
        if cfg.failure_percentage == 0 || now_nanos() < self.next_eval.load(Ordering::Relaxed) {
            return 0;
        }
        {
            let mut last = self.last_eval.lock();
            if last.elapsed() < cfg.interval {
                self.next_eval
                    .store(now_nanos() + (cfg.interval - last.elapsed()).as_nanos() as u64, Ordering::Relaxed);
                return 0;
            }
            *last = Instant::now();
            self.next_eval.store(now_nanos() + cfg.interval.as_nanos() as u64, Ordering::Relaxed);
        }
        let total = endpoints.clone().count();
        let mut ejected = 0;
        for h in endpoints {
            let n = h.interval_total.swap(0, Ordering::AcqRel);
            let failed = h.interval_failed.swap(0, Ordering::AcqRel);
            if cfg.failure_percentage > 0
                && n >= cfg.failure_percentage_min_requests.max(1)
                && failed * 100 / n >= cfg.failure_percentage
                && h.ejected_until.load(Ordering::Acquire) == 0
                && h.try_eject(cfg, self, total)
            {
                ejected += 1;
            }
        }
        ejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            failure_percentage: 0,
            failure_percentage_min_requests: 5,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_ejects_and_time_brings_it_back() {
        let c = cfg();
        let cl = ClusterOutliers::default();
        let h = EndpointHealth::default();
        assert!(!h.record(Outcome::Status(503), &c, &cl, 4));
        assert!(!h.record(Outcome::Status(500), &c, &cl, 4));
        assert!(h.record(Outcome::ConnectFailure, &c, &cl, 4), "third 5xx in a row ejects");
        assert!(h.is_ejected(&cl));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(h.is_ejected(&cl));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!h.is_ejected(&cl));
        assert_eq!(cl.ejected(), 0);
        // Second ejection lasts twice as long.
        for _ in 0..3 {
            h.record(Outcome::Status(503), &c, &cl, 4);
        }
        tokio::time::advance(Duration::from_secs(45)).await;
        assert!(h.is_ejected(&cl), "base × 2 = 60 s");
        tokio::time::advance(Duration::from_secs(16)).await;
        assert!(!h.is_ejected(&cl));
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_streak() {
        let c = cfg();
        let cl = ClusterOutliers::default();
        let h = EndpointHealth::default();
        h.record(Outcome::Status(503), &c, &cl, 4);
        h.record(Outcome::Status(503), &c, &cl, 4);
        h.record(Outcome::Success, &c, &cl, 4);
        assert!(!h.record(Outcome::Status(503), &c, &cl, 4));
        assert!(!h.is_ejected(&cl));
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_but_always_one() {
        let c = OutlierConfig { max_ejection_percent: 10, ..cfg() };
        let cl = ClusterOutliers::default();
        let hs: Vec<EndpointHealth> = (0..3).map(|_| EndpointHealth::default()).collect();
        let mut ejected = 0;
        for h in &hs {
            for _ in 0..3 {
                if h.record(Outcome::Status(503), &c, &cl, 3) {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 1, "10% of 3 rounds to 0, but one is always allowed");
        assert_eq!(cl.ejected(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_percentage_over_the_interval() {
        let c = OutlierConfig { consecutive_5xx: 0, failure_percentage: 50, ..cfg() };
        let cl = ClusterOutliers::default();
        let bad = EndpointHealth::default();
        let good = EndpointHealth::default();
        for i in 0..10 {
            bad.record(if i % 2 == 0 { Outcome::Status(500) } else { Outcome::Success }, &c, &cl, 2);
            good.record(Outcome::Success, &c, &cl, 2);
        }
        assert_eq!(cl.evaluate(&c, [&bad, &good].into_iter()), 0, "interval not over yet");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(cl.evaluate(&c, [&bad, &good].into_iter()), 1);
        assert!(bad.is_ejected(&cl));
        assert!(!good.is_ejected(&cl));
    }
}
