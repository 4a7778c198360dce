//! Envoy-style thresholds: the live counts of one cluster (requests, pending requests,
//! connections, retries), carried across snapshots. Over a limit, the caller rejects at once.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// A counter with a limit; acquiring hands out a guard that gives the slot back on drop.
#[derive(Debug, Default)]
pub struct Gauge {
    active: AtomicU32,
}

#[derive(Debug)]
pub struct GaugeGuard {
    gauge: Arc<ClusterThresholds>,
    which: Which,
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Requests,
    Pending,
    Connections,
    Retries,
}

/// The live counts behind a cluster's thresholds (scope: the cluster, as in Envoy).
#[derive(Debug, Default)]
pub struct ClusterThresholds {
    pub requests: Gauge,
    pub pending: Gauge,
    pub connections: Gauge,
    pub retries: Gauge,
    /// Woken when one of the cluster's upstream connections closes, for the
    /// requests waiting for a connection (`maxConnections`).
    pub connection_closed: tokio::sync::Notify,
}

impl ClusterThresholds {
    fn gauge(&self, w: Which) -> &Gauge {
        match w {
            Which::Requests => &self.requests,
            Which::Pending => &self.pending,
            Which::Connections => &self.connections,
            Which::Retries => &self.retries,
        }
    }

    fn acquire(self: &Arc<Self>, which: Which, limit: u32) -> Option<GaugeGuard> {
        let g = self.gauge(which);
        let mut cur = g.active.load(Ordering::Relaxed);
        loop {
            if cur >= limit {
                return None;
            }
            match g.active.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(GaugeGuard { gauge: self.clone(), which }),
                Err(now) => cur = now,
            }
        }
    }

    pub fn acquire_request(self: &Arc<Self>, limit: u32) -> Option<GaugeGuard> {
        self.acquire(Which::Requests, limit)
    }
    pub fn acquire_pending(self: &Arc<Self>, limit: u32) -> Option<GaugeGuard> {
        self.acquire(Which::Pending, limit)
    }
    pub fn acquire_connection(self: &Arc<Self>, limit: u32) -> Option<GaugeGuard> {
        self.acquire(Which::Connections, limit)
    }
    pub fn acquire_retry(self: &Arc<Self>, limit: u32) -> Option<GaugeGuard> {
        self.acquire(Which::Retries, limit)
    }

    /// (requests, pending, connections, retries) in use now.
    pub fn active(&self) -> (u32, u32, u32, u32) {
        let l = |g: &Gauge| g.active.load(Ordering::Relaxed);
        (l(&self.requests), l(&self.pending), l(&self.connections), l(&self.retries))
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.gauge(self.which).active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_limit_and_release() {
        let c = Arc::new(ClusterThresholds::default());
        let a = c.acquire_request(2).unwrap();
        let _b = c.acquire_request(2).unwrap();
        assert!(c.acquire_request(2).is_none());
        drop(a);
        assert!(c.acquire_request(2).is_some());
        assert_eq!(c.active().0, 1);
    }
}
