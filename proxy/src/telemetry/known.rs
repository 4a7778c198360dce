//! Counters whose labels the config tells in advance are exported at 0 before their first
//! event, so dashboards and alerts see 0 rather than "no data":
//!
//! - `outrider_local_replies_total{direction, reason}`: every direction and reason, from the
//!   start;
//! - per service, for what its policy turns on (so a big mesh without policies exports no
//!   extra series): retries → `outrider_retries_total{reason}` for every retry reason,
//!   `outrider_retry_budget_exhausted_total` and `outrider_circuit_breaker_rejections_total
//!   {reason="max-retries"}`; a breaker state machine → `…rejections_total{reason="open"}` and
//!   `outrider_circuit_breaker_fallbacks_total`;
//!   thresholds other than the defaults → `…rejections_total{reason="max-requests" |
//!   "max-pending" | "max-connections"}`; outlier detection → `outrider_outlier_ejections_total`.
//!
//! Applied at every snapshot. When a service leaves the config (or its policy stops turning a
//! feature on), its series are removed, so the number of series stays bounded by the config;
//! they start again at 0 if it comes back.

use std::collections::HashMap;
use std::sync::Arc;

use crate::policy::config::Thresholds;
use crate::policy::outcome::Outcome;
use crate::state::Snapshot;
use crate::telemetry::metrics::{Direction, LocalReplyLabels, Metrics, ServiceLabels, ServiceReasonLabels};

/// Breaker rejection reasons of the thresholds (`max-retries` goes with retries).
const THRESHOLD_REASONS: [&str; 3] = ["max-requests", "max-pending", "max-connections"];

/// What a service's policy turns on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Features {
    retries: bool,
    breaker: bool,
    thresholds: bool,
    outlier: bool,
}

/// The series exported for the current snapshot, to remove what the next one drops.
#[derive(Debug, Default)]
pub struct KnownSeries {
    services: HashMap<Arc<str>, Features>,
}

/// Every direction and reason of `outrider_local_replies_total` at 0 (once, at start).
pub fn local_replies(metrics: &Metrics) {
    for direction in [Direction::outbound, Direction::inbound] {
        for reason in crate::rescue::LOCAL_REPLY_REASONS {
            let _ = metrics.local_replies.get_or_create(&LocalReplyLabels { direction, reason });
        }
    }
}

impl KnownSeries {
    /// Export (at 0, or leave as they are) the series `snap` tells, and remove those of
    /// services or features it no longer has.
    pub fn apply(&mut self, metrics: &Metrics, snap: &Snapshot) {
        let next = features(snap);
        for (service, old) in &self.services {
            let new = next.get(service).copied().unwrap_or_default();
            series(
                metrics,
                service,
                Features {
                    retries: old.retries && !new.retries,
                    breaker: old.breaker && !new.breaker,
                    thresholds: old.thresholds && !new.thresholds,
                    outlier: old.outlier && !new.outlier,
                },
                Op::Remove,
            );
        }
        for (service, new) in &next {
            series(metrics, service, *new, Op::Create);
        }
        self.services = next;
    }
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Remove,
}

fn series(metrics: &Metrics, service: &Arc<str>, f: Features, op: Op) {
    let service_labels = ServiceLabels { service: service.clone() };
    let reasons = |reasons: &[&'static str]| -> Vec<ServiceReasonLabels> {
        reasons.iter().map(|reason| ServiceReasonLabels { service: service.clone(), reason }).collect()
    };
    let mut retries = Vec::new();
    let mut rejections = Vec::new();
    let mut by_service = Vec::new();
    if f.retries {
        retries = reasons(&Outcome::RETRY_REASONS);
        rejections.extend(reasons(&["max-retries"]));
        by_service.push(&metrics.retry_budget_exhausted);
    }
    if f.breaker {
        rejections.extend(reasons(&["open"]));
        by_service.push(&metrics.circuit_breaker_fallbacks);
    }
    if f.thresholds {
        rejections.extend(reasons(&THRESHOLD_REASONS));
    }
    if f.outlier {
        by_service.push(&metrics.outlier_ejections);
    }
    match op {
        Op::Create => {
            for l in &retries {
                let _ = metrics.retries.get_or_create(l);
            }
            for l in &rejections {
                let _ = metrics.circuit_breaker_rejections.get_or_create(l);
            }
            for family in by_service {
                let _ = family.get_or_create(&service_labels);
            }
        }
        Op::Remove => {
            for l in &retries {
                metrics.retries.remove(l);
            }
            for l in &rejections {
                metrics.circuit_breaker_rejections.remove(l);
            }
            for family in by_service {
                family.remove(&service_labels);
            }
        }
    }
}

/// Per service, what its clusters' and routes' policies turn on.
fn features(snap: &Snapshot) -> HashMap<Arc<str>, Features> {
    let mut out: HashMap<Arc<str>, Features> = HashMap::new();
    for c in snap.clusters.values() {
        let f = out.entry(c.service.clone()).or_default();
        f.retries |= c.policy.budget.is_some();
        f.breaker |= c.policy.breaker.is_some();
        f.thresholds |= c.policy.thresholds != Thresholds::default();
        f.outlier |= c.policy.outlier.is_some();
    }
    for vhost in snap.vhosts.values() {
        for route in vhost.routes.iter().filter(|r| r.policy.retry.is_some()) {
            for split in &route.splits {
                out.entry(split.cluster.service.clone()).or_default().retries = true;
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str) -> Snapshot {
        let resources = outrider_xds::translate(&outrider_xds::load_str("t.yaml", yaml).unwrap());
        let (snap, rejected) = crate::state::Builder::new().build(&resources);
        assert!(rejected.is_empty(), "{rejected:?}");
        snap
    }

    const SERVICES: &str = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: a}\nspec: {port: 80, endpoints: [{address: \"127.0.0.1:1\"}]}\n---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: b}\nspec: {port: 81, endpoints: [{address: \"127.0.0.1:2\"}]}\n";
    const POLICY: &str = "---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: a}\nspec:\n  service: a\n  retries: {attempts: 2}\n  circuitBreaker: {maxRequests: 10, failureRateThreshold: 50}\n  outlierDetection: {consecutive5xx: 3}\n";

    fn lines(metrics: &Metrics, service: &str) -> Vec<String> {
        let needle = format!("service=\"{service}\"");
        metrics.encode().lines().filter(|l| l.contains(&needle)).map(str::to_owned).collect()
    }

    #[test]
    fn a_services_policy_decides_its_zero_series_and_leaving_removes_them() {
        let metrics = Metrics::new();
        let mut known = KnownSeries::default();
        known.apply(&metrics, &snapshot(&format!("{SERVICES}{POLICY}")));
        let a = lines(&metrics, "a");
        for reason in Outcome::RETRY_REASONS {
            assert!(a.contains(&format!("outrider_retries_total{{service=\"a\",reason=\"{reason}\"}} 0")), "{a:?}");
        }
        for reason in ["open", "max-requests", "max-pending", "max-connections", "max-retries"] {
            let line = format!("outrider_circuit_breaker_rejections_total{{service=\"a\",reason=\"{reason}\"}} 0");
            assert!(a.contains(&line), "{line} in {a:?}");
        }
        assert!(a.contains(&"outrider_outlier_ejections_total{service=\"a\"} 0".to_owned()), "{a:?}");
        assert!(a.contains(&"outrider_retry_budget_exhausted_total{service=\"a\"} 0".to_owned()), "{a:?}");
        assert!(a.contains(&"outrider_circuit_breaker_fallbacks_total{service=\"a\"} 0".to_owned()), "{a:?}");
        // b has no policy: nothing of its own.
        assert!(lines(&metrics, "b").is_empty(), "{:?}", lines(&metrics, "b"));

        // An event keeps its count across snapshots.
        metrics.retries.get_or_create(&ServiceReasonLabels { service: Arc::from("a"), reason: "5xx" }).inc();
        known.apply(&metrics, &snapshot(&format!("{SERVICES}{POLICY}")));
        assert!(lines(&metrics, "a").contains(&"outrider_retries_total{service=\"a\",reason=\"5xx\"} 1".to_owned()));

        // The policy goes: a's series go too.
        known.apply(&metrics, &snapshot(SERVICES));
        assert!(lines(&metrics, "a").is_empty(), "{:?}", lines(&metrics, "a"));
    }

    #[test]
    fn every_local_reply_reason_starts_at_zero() {
        let metrics = Metrics::new();
        local_replies(&metrics);
        let text = metrics.encode();
        for reason in crate::rescue::LOCAL_REPLY_REASONS {
            for direction in ["outbound", "inbound"] {
                let line = format!("outrider_local_replies_total{{direction=\"{direction}\",reason=\"{reason}\"}} 0");
                assert!(text.contains(&line), "{line}");
            }
        }
    }
}
