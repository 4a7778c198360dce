//! A rollout as the API shows it (`GET /v1/rollouts/NAME`, the CLI's view, the dashboard, the
//! notifications): its spec's steps and bounds, its stored state, what it is doing now and the
//! numbers of the check in progress. Built the same way by the controller that runs it and, in
//! Kubernetes mode, by a replica that only reads the Rollout's status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use outrider_xds::{Position, Rollout, Step};
use serde_json::{Value, json};

use super::state::RolloutState;
use crate::stats::{Aggregate, Stats};

/// The check in progress: the totals it started from, and the time left.
#[derive(Debug, Default)]
pub struct Running<'a> {
    pub canary: Option<&'a BTreeMap<SocketAddr, Aggregate>>,
    pub stable: Option<&'a BTreeMap<SocketAddr, Aggregate>>,
    pub remaining: Option<Duration>,
}

/// The steps as the API lists them: weights, or `"preview"`.
pub fn steps(rollout: &Rollout) -> Vec<Value> {
    rollout
        .spec
        .steps()
        .iter()
        .map(|s| match s {
            Step::Weight(w) => json!(w),
            Step::Preview => json!("preview"),
        })
        .collect()
}

/// The view of rollout `key`.
pub fn view(
    key: &str,
    rollout: &Rollout,
    state: &RolloutState,
    message: &str,
    check: &Running<'_>,
    stats: &Stats,
) -> Value {
    let spec = &rollout.spec;
    let numbers = |labels: &BTreeMap<String, String>, baseline: Option<&BTreeMap<SocketAddr, Aggregate>>| {
        let a = match baseline {
            Some(b) => stats.since(&spec.service, labels, b),
            None => Aggregate::default(),
        };
        json!({
            "labels": labels,
            "endpoints": stats.endpoints_matching(&spec.service, labels),
            "requests": a.requests,
            "errors": a.failed,
            "successRate": a.success_rate(),
            "p99Ms": a.quantile_ms(0.99),
            "meanMs": a.mean_ms(),
        })
    };
    let position: Position = state.position.into();
    json!({
        "name": key,
        "service": spec.service,
        "strategy": spec.strategy_name(),
        "phase": state.phase.as_str(),
        "reason": state.reason,
        "message": message,
        "step": state.step_number(spec),
        "steps": steps(rollout),
        "weight": spec.canary_weight(position),
        "preview": matches!(position, Position::Step(i) if spec.steps().get(i) == Some(&Step::Preview)),
        "paused": spec.paused,
        "interval": outrider_xds::duration::format(spec.interval),
        "failedChecks": state.failed_checks,
        "abortAfterFailures": spec.analysis.abort_after_failures,
        "splitWritten": state.split_written,
        "configVersion": state.config_version,
        "stepStartedAt": state.step_started_at,
        "checkStartedAt": state.check_started_at,
        "checkRemainingMs": check.remaining.map(|d| d.as_millis() as u64),
        "canary": numbers(&spec.canary, check.canary),
        "stable": numbers(&spec.stable, check.stable),
        "lastCheck": state.last_check,
        "analysis": {
            "minSuccessRate": spec.analysis.min_success_rate,
            "maxP99LatencyMs": spec.analysis.max_p99_latency.map(|d| d.as_secs_f64() * 1000.0),
            "maxMeanLatencyMs": spec.analysis.max_mean_latency.map(|d| d.as_secs_f64() * 1000.0),
            "minRequests": spec.analysis.min_requests,
        },
        "generation": state.generation,
        "history": state.history,
    })
}
