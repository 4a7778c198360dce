//! Outlier detection per endpoint (Envoy): consecutive 5xx, consecutive gateway errors, and
//! failure percentage over each interval. A failed connect, a reset and a timeout count as a
//! 5xx and as a gateway error (Envoy's reading of local-origin failures), so opaque TCP is
//! covered too. An ejected endpoint gets no traffic until base × times-ejected (capped) has
//! passed; never more than `max_ejection_percent` of a cluster's endpoints are ejected, but one
//! always may be.
//!
//! How many are ejected is counted from the endpoints themselves when an ejection is decided
//! (rare), never kept in a counter of its own: an ejected endpoint removed from the config
//! cannot leave a count behind that stops the cluster from ever ejecting again.
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::clock;
use super::config::OutlierConfig;
use super::outcome::Outcome;

/// One endpoint's health, carried across snapshots.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// 0 = not ejected; else the deadline in `clock::now_nanos` terms.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    interval_total: AtomicU32,
    interval_failed: AtomicU32,
}

/// Per-cluster bookkeeping.
#[derive(Debug, Default)]
pub struct ClusterOutliers {
    /// Held while an ejection is decided, so two endpoints cannot both take the last slot.
    ejecting: Mutex<()>,
    /// `now_nanos` from which the next failure-percentage evaluation is due.
    next_eval: AtomicU64,
}

impl EndpointHealth {
    /// Is it ejected now? An ejection whose time is up is lifted here.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if clock::now_nanos() < until {
            return true;
        }
        if self.ejected_until.compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
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
        let now = clock::now_nanos();
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Eject this endpoint unless `max_ejection_percent` of `peers` (the cluster's endpoints,
    /// this one among them) are ejected already.
    fn try_eject<'a>(
        &self,
        cfg: &OutlierConfig,
        cluster: &ClusterOutliers,
        peers: impl Iterator<Item = &'a EndpointHealth>,
    ) -> bool {
        let _deciding = cluster.ejecting.lock();
        if self.is_ejected() {
            return false;
        }
        let (mut total, mut ejected) = (0u64, 0u64);
        for peer in peers {
            total += 1;
            ejected += u64::from(peer.is_ejected());
        }
        // At most max_ejection_percent of the endpoints, but at least one.
        let max = (total.max(1) * u64::from(cfg.max_ejection_percent.min(100)) / 100).max(1);
        if ejected >= max {
            return false;
        }
        let times = self.times_ejected.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let d = cfg.base_ejection.saturating_mul(times).min(cfg.max_ejection.max(cfg.base_ejection));
        // Never 0 (which means "not ejected").
        self.ejected_until.store(clock::after(d).max(1), Ordering::Release);
        true
    }

    /// Count one attempt's outcome; returns true when this ejected the endpoint. `peers` are
    /// the cluster's endpoints (to keep within `max_ejection_percent`).
    pub fn record<'a>(
        &self,
        outcome: Outcome,
        cfg: &OutlierConfig,
        cluster: &ClusterOutliers,
        peers: impl Iterator<Item = &'a EndpointHealth>,
    ) -> bool {
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
            self.consecutive_5xx.fetch_add(1, Ordering::AcqRel).saturating_add(1)
        } else {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            0
        };
        let cg = if gw {
            self.consecutive_gateway.fetch_add(1, Ordering::AcqRel).saturating_add(1)
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let hit = (cfg.consecutive_5xx > 0 && c5 >= cfg.consecutive_5xx)
            || (cfg.consecutive_gateway > 0 && cg >= cfg.consecutive_gateway);
        if hit && self.ejected_until.load(Ordering::Acquire) == 0 && self.try_eject(cfg, cluster, peers) {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }
}

impl ClusterOutliers {
    /// Once per interval: eject endpoints whose failure percentage over the interval is at
    /// or over the threshold. Returns how many were ejected.
    pub fn evaluate<'a>(
        &self,
        cfg: &OutlierConfig,
        endpoints: impl Iterator<Item = &'a EndpointHealth> + Clone,
    ) -> u32 {
        if cfg.failure_percentage == 0 {
            return 0;
        }
        let now = clock::now_nanos();
        let due = self.next_eval.load(Ordering::Acquire);
        if due == 0 {
            // The first interval starts with the first outcome.
            let _ = self.next_eval.compare_exchange(
                0,
                now.saturating_add(clock::nanos(cfg.interval)),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            return 0;
        }
        if now < due
            || self
                .next_eval
                .compare_exchange(
                    due,
                    now.saturating_add(clock::nanos(cfg.interval)),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return 0;
        }
        let mut ejected = 0;
        for h in endpoints.clone() {
            let n = h.interval_total.swap(0, Ordering::AcqRel);
            let failed = h.interval_failed.swap(0, Ordering::AcqRel);
            if n >= cfg.failure_percentage_min_requests.max(1)
                && u64::from(failed) * 100 / u64::from(n) >= u64::from(cfg.failure_percentage)
                && h.ejected_until.load(Ordering::Acquire) == 0
                && h.try_eject(cfg, self, endpoints.clone())
            {
                ejected += 1;
            }
        }
        ejected
    }
}

#[cfg(test)]
mod tests;
