//! What one endpoint of one cluster did since the last load report: atomic counters and a
//! latency histogram, written by the request path without a lock or an allocation (the
//! histogram's buckets are allocated once, at the endpoint's first finished request), read and
//! reset by the reporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use outrider_xds::latency::{BUCKETS, bucket_of};

use crate::state::EndpointShared;

/// Counters of one endpoint, carried across snapshots with the endpoint's other state.
#[derive(Debug, Default)]
pub struct EndpointLoad {
    issued: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Sum of the latencies, µs.
    latency_us: AtomicU64,
    buckets: OnceLock<Box<[AtomicU64; BUCKETS]>>,
}

/// The counts taken by one report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadSample {
    /// Attempts started.
    pub issued: u64,
    /// Attempts answered without an error.
    pub succeeded: u64,
    /// Attempts that failed at the endpoint: 5xx, a gRPC error status in the response
    /// headers or trailers, a connect failure, a reset, or abandoned before the response
    /// (timeout).
    pub failed: u64,
    /// Sum of the finished attempts' latencies, µs.
    pub latency_us: u64,
    /// Non-empty latency buckets (index, count).
    pub buckets: Vec<(usize, u64)>,
}

impl LoadSample {
    pub fn is_empty(&self) -> bool {
        self.issued == 0 && self.succeeded == 0 && self.failed == 0
    }
}

impl EndpointLoad {
    /// An attempt is sent to the endpoint.
    #[inline]
    pub fn issue(&self) {
        self.issued.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt finished (its response headers arrived, or it failed or was abandoned)
    /// after `elapsed`.
    #[inline]
    pub fn finish(&self, error: bool, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if error { &self.failed } else { &self.succeeded }.fetch_add(1, Ordering::Relaxed);
        self.latency_us.fetch_add(us, Ordering::Relaxed);
        let buckets = self.buckets.get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last call, reset to zero.
    pub fn take(&self) -> LoadSample {
        let buckets = match self.buckets.get() {
            Some(b) => b
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let n = c.swap(0, Ordering::Relaxed);
                    (n > 0).then_some((i, n))
                })
                .collect(),
            None => Vec::new(),
        };
        LoadSample {
            issued: self.issued.swap(0, Ordering::Relaxed),
            succeeded: self.succeeded.swap(0, Ordering::Relaxed),
            failed: self.failed.swap(0, Ordering::Relaxed),
            latency_us: self.latency_us.swap(0, Ordering::Relaxed),
            buckets,
        }
    }
}

/// The load-report count of an attempt answered by a gRPC response whose headers carry no
/// grpc-status: the status comes in the trailers, so the response body carries this and the
/// attempt is counted when the body ends — exactly once, by [`PendingLoad::end`] or, when the
/// body is dropped before its end (the caller went away), as a success, like the `CANCELLED`
/// the caller's gRPC library reports, which is no error at the endpoint. Its latency is the
/// time to the response headers, as for every other attempt.
#[derive(Debug)]
pub struct PendingLoad {
    /// `None` once counted.
    endpoint: Option<Arc<EndpointShared>>,
    latency: Duration,
}

impl PendingLoad {
    pub fn new(endpoint: Arc<EndpointShared>, latency: Duration) -> Self {
        Self { endpoint: Some(endpoint), latency }
    }

    /// The body ended: with trailers that say `error` (see
    /// [`crate::policy::outcome::trailers_load_error`]), without trailers, reset, or stalled
    /// past its idle timeout (`error`).
    pub fn end(mut self, error: bool) {
        self.count(error);
    }

    fn count(&mut self, error: bool) {
        if let Some(ep) = self.endpoint.take() {
            ep.load.finish(error, self.latency);
        }
    }
}

impl Drop for PendingLoad {
    fn drop(&mut self) {
        self.count(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_once_and_reset() {
        let load = EndpointLoad::default();
        assert!(load.take().is_empty());
        assert!(load.buckets.get().is_none(), "nothing allocated before the first request");
        for ms in [1, 2, 2, 900] {
            load.issue();
            load.finish(ms == 900, Duration::from_millis(ms));
        }
        let sample = load.take();
        assert_eq!((sample.issued, sample.succeeded, sample.failed), (4, 3, 1));
        assert_eq!(sample.latency_us, 905_000);
        assert_eq!(sample.buckets, vec![(bucket_of(1000), 1), (bucket_of(2000), 2), (bucket_of(900_000), 1)]);
        assert!(load.take().is_empty(), "a second take finds nothing");
    }
}

/// What a cluster's resilience did since the last load report: breaker rejections, retries sent,
/// retries the budget refused. Carried across snapshots with the cluster's state.
#[derive(Debug, Default)]
pub struct ClusterLoad {
    rejected: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
}

/// The counts taken by one report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterSample {
    pub rejected: u64,
    pub retries: u64,
    pub budget_exhausted: u64,
}

impl ClusterSample {
    pub fn is_empty(&self) -> bool {
        self.rejected == 0 && self.retries == 0 && self.budget_exhausted == 0
    }
}

impl ClusterLoad {
    /// The circuit breaker (or a threshold) rejected a request, retry or connection.
    #[inline]
    pub fn reject(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A retry is sent.
    #[inline]
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A retry was not sent: the budget was spent.
    #[inline]
    pub fn budget_exhausted(&self) {
        self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last take, reset.
    pub fn take(&self) -> ClusterSample {
        ClusterSample {
            rejected: self.rejected.swap(0, Ordering::Relaxed),
            retries: self.retries.swap(0, Ordering::Relaxed),
            budget_exhausted: self.budget_exhausted.swap(0, Ordering::Relaxed),
        }
    }
}
