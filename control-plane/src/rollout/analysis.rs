//! A check: the canary's requests since the check began, against the rollout's bounds.
//!
//! The numbers are the canary subset's, merged from every proxy's load reports: success rate =
//! succeeded / (succeeded + failed) over the check; p99 is read from the merged latency
//! histogram (within a bucket of the true value: ≤ 25 % of it); mean = summed latency /
//! requests. A check with fewer than `minRequests` is not judged: it goes on until it has them.

use outrider_xds::policy::Analysis;

use crate::stats::Aggregate;

/// What a check came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every bound holds.
    Pass,
    /// These bounds do not hold (readable, e.g. `success rate 90.0% < 99%`).
    Fail(Vec<String>),
    /// Not enough requests yet (how many there are).
    Wait(u64),
}

/// Judge the canary's numbers of one check.
pub fn judge(canary: &Aggregate, analysis: &Analysis) -> Verdict {
    if canary.requests < analysis.min_requests {
        return Verdict::Wait(canary.requests);
    }
    let mut failed = Vec::new();
    if let Some(rate) = canary.success_rate()
        && rate < analysis.min_success_rate
    {
        failed.push(format!("success rate {rate:.2}% < {}%", analysis.min_success_rate));
    }
    let bounds = [
        ("p99", analysis.max_p99_latency, canary.quantile_ms(0.99)),
        ("mean", analysis.max_mean_latency, canary.mean_ms()),
    ];
    for (what, bound, value) in bounds {
        if let (Some(bound), Some(value)) = (bound, value) {
            let bound_ms = bound.as_secs_f64() * 1000.0;
            if value > bound_ms {
                failed.push(format!("{what} latency {value:.1}ms > {}", outrider_xds::duration::format(bound)));
            }
        }
    }
    if failed.is_empty() { Verdict::Pass } else { Verdict::Fail(failed) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn canary(ok: u64, failed: u64, ms: u64) -> Aggregate {
        let mut a = Aggregate { requests: ok + failed, succeeded: ok, failed, ..Default::default() };
        for _ in 0..ok + failed {
            a.histogram.record_us(ms * 1000);
            a.latency_ms += ms as f64;
        }
        a
    }

    fn analysis(min_requests: u64) -> Analysis {
        Analysis { min_requests, ..Analysis::default() }
    }

    #[test]
    fn too_few_requests_wait_then_each_bound_is_judged() {
        assert_eq!(judge(&canary(5, 0, 1), &analysis(10)), Verdict::Wait(5));
        assert_eq!(judge(&canary(99, 1, 1), &analysis(10)), Verdict::Pass);
        assert_eq!(judge(&canary(90, 10, 1), &analysis(10)), Verdict::Fail(vec!["success rate 90.00% < 99%".into()]));
        let slow = Analysis {
            max_p99_latency: Some(Duration::from_millis(100)),
            max_mean_latency: Some(Duration::from_millis(150)),
            ..analysis(10)
        };
        let Verdict::Fail(why) = judge(&canary(100, 0, 200), &slow) else { panic!("a slow canary passed") };
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].starts_with("p99 latency ") && why[0].ends_with("> 100ms"), "{why:?}");
        assert_eq!(why[1], "mean latency 200.0ms > 150ms");
        assert_eq!(judge(&canary(100, 0, 50), &slow), Verdict::Pass);
    }
}
