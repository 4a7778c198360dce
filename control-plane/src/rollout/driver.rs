//! The task that drives one rollout: write its split when a transition asks for it, enter the
//! next step, run checks and act on them. Each pass reads the rollout's state, does one thing,
//! and waits (for a deadline, for more numbers, or for a wake-up: a command, a changed spec).

use std::sync::Arc;
use std::time::Duration;

use outrider_xds::policy::Step;
use outrider_xds::{Position, Rollout};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::analysis::{Verdict, judge};
use super::state::{LastCheck, Phase, RolloutState, now_ms};
use super::{Check, Controller, RETRY, SplitError, webhook};

/// Reports are asked for this many times per check interval while a rollout progresses.
const REPORTS_PER_INTERVAL: u32 = 4;

/// Drive rollout `name` until it is deleted.
pub(super) async fn drive(controller: Arc<Controller>, name: String, wake: Arc<Notify>) {
    loop {
        let Some((rollout, state)) = controller.snapshot(&name) else {
            if !controller.inner.lock().runtime.get(&name).is_some_and(|rt| Arc::ptr_eq(&rt.wake, &wake)) {
                return;
            }
            wake.notified().await;
            continue;
        };
        if !state.split_written {
            match controller.write_split(&rollout, &state).await {
                Ok(()) => continue,
                Err(wait) => {
                    controller.set_message(&name, wait);
                    sleep_or_wake(&wake, RETRY).await;
                    continue;
                }
            }
        }
        if state.phase != Phase::Progressing {
            controller.stats.want_interval(&name, None);
            controller.set_message(&name, String::new());
            wake.notified().await;
            continue;
        }
        let fast = (rollout.spec.interval / REPORTS_PER_INTERVAL).max(crate::stats::MIN_REPORT_INTERVAL);
        controller.stats.want_interval(&name, Some(fast));
        let wait = match Position::from(state.position) {
            Position::Stable => controller.advance(&rollout, &state, Position::Step(0)).await,
            Position::Step(i) => controller.check(&rollout, &state, i).await,
            // Promotion sets the phase with the position; nothing to do until that is seen.
            Position::Promoted => Some(RETRY),
        };
        if let Some(wait) = wait {
            sleep_or_wake(&wake, wait).await;
        }
    }
}

async fn sleep_or_wake(wake: &Notify, wait: Duration) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = wake.notified() => {}
    }
}

impl Controller {
    fn set_message(&self, name: &str, message: String) {
        if let Some(rt) = self.inner.lock().runtime.get_mut(name) {
            rt.message = message;
        }
    }

    /// A new check of the current step, from now.
    fn new_check(&self, rollout: &Rollout, remaining: Duration) -> Check {
        let spec = &rollout.spec;
        Check {
            deadline: Instant::now() + remaining,
            canary: self.stats.totals(&spec.service, &spec.canary),
            stable: self.stats.totals(&spec.service, &spec.stable),
        }
    }

    /// At step `step`: wait for the check's end and enough requests, then judge. Returns how
    /// long to wait before looking again (`None`: at once).
    async fn check(&self, rollout: &Rollout, state: &RolloutState, step: usize) -> Option<Duration> {
        let spec = &rollout.spec;
        let name = state.name.as_str();
        let (deadline, canary) = {
            let mut inner = self.inner.lock();
            let rt = inner.runtime.entry(name.to_owned()).or_default();
            if rt.check.is_none() {
                // A new step, a resume, or a restart: the check runs to its stored end.
                let elapsed = Duration::from_millis(now_ms().saturating_sub(state.check_started_at));
                rt.check = Some(self.new_check(rollout, spec.interval.saturating_sub(elapsed)));
            }
            let check = rt.check.as_ref()?;
            (check.deadline, check.canary.clone())
        };
        let now = Instant::now();
        let step_text = format!("step {} of {}", step + 1, spec.steps().len());
        if now < deadline {
            self.set_message(name, format!("{step_text}: checking the canary"));
            return Some(deadline - now);
        }
        let numbers = self.stats.since(&spec.service, &spec.canary, &canary);
        match judge(&numbers, &spec.analysis) {
            Verdict::Wait(have) => {
                self.set_message(
                    name,
                    format!(
                        "{step_text}: waiting for requests to the canary ({have} of {} needed)",
                        spec.analysis.min_requests
                    ),
                );
                Some(*self.stats.report_interval().borrow())
            }
            Verdict::Pass => {
                let summary = describe(&numbers);
                let recorded = self.transition(name, state.generation, |state| {
                    state.last_check = Some(last_check(step, true, &numbers));
                    state.record(&rollout.spec, "check-passed", format!("check passed: {summary}"));
                });
                if !recorded {
                    return None;
                }
                let next = if step + 1 < spec.steps().len() { Position::Step(step + 1) } else { Position::Promoted };
                let generation = self.generation_of(name)?;
                let mut now_state = state.clone();
                now_state.generation = generation;
                self.advance(rollout, &now_state, next).await
            }
            Verdict::Fail(why) => {
                let why = why.join(", ");
                let limit = spec.analysis.abort_after_failures;
                let mut aborted = false;
                let ok = self.transition(name, state.generation, |state| {
                    state.last_check = Some(last_check(step, false, &numbers));
                    state.failed_checks += 1;
                    state.record(
                        &rollout.spec,
                        "check-failed",
                        format!("check failed ({} of {limit}): {why}", state.failed_checks),
                    );
                    if state.failed_checks >= limit {
                        aborted = true;
                        state.phase = Phase::Aborted;
                        state.reason = Some(format!("{} failed checks; the last: {why}", state.failed_checks));
                        state.position = Position::Stable.into();
                        state.split_written = false;
                        state.record(&rollout.spec, "aborted", format!("aborted: {why}"));
                    } else {
                        state.check_started_at = now_ms();
                    }
                });
                if ok {
                    let _ = self.persist().await;
                    self.count_event(if aborted { "aborted" } else { "check-failed" });
                    self.notify(name, if aborted { "aborted" } else { "check-failed" });
                    if aborted {
                        tracing::warn!(rollout = %name, reason = %why, "rollout aborted");
                    }
                }
                None
            }
        }
    }

    /// Move to `next` (the first step, the next one, or the promotion): once the canary has
    /// endpoints and the gate (if any) says 200. Returns how long to wait when it cannot yet.
    pub(super) async fn advance(&self, rollout: &Rollout, state: &RolloutState, next: Position) -> Option<Duration> {
        let spec = &rollout.spec;
        let name = state.name.as_str();
        let needs_canary = next == Position::Promoted
            || spec.canary_weight(next) > 0
            || matches!(next, Position::Step(i) if spec.steps().get(i) == Some(&Step::Preview));
        if needs_canary && self.stats.endpoints_matching(&spec.service, &spec.canary) == 0 {
            self.set_message(
                name,
                format!(
                    "waiting for endpoints of {} with the canary's labels {}",
                    spec.service,
                    labels_text(&spec.canary)
                ),
            );
            return Some(RETRY);
        }
        let next_number = match next {
            Position::Step(i) => i + 1,
            _ => spec.steps().len() + 1,
        };
        if let Some(gate) = &spec.webhooks.gate {
            let body = json!({
                "rollout": name,
                "service": spec.service,
                "event": "gate",
                "step": next_number,
                "steps": spec.steps().len(),
                "weight": spec.canary_weight(next),
                "promotion": next == Position::Promoted,
            });
            let answer = webhook::post(gate, &body).await;
            if answer != Ok(200) {
                let why = match answer {
                    Ok(status) => format!("the gate answered {status}"),
                    Err(e) => format!("the gate did not answer: {e}"),
                };
                let message = format!("waiting for the gate before step {next_number}: {why}");
                let wait = spec.interval;
                let changed = self.transition(name, state.generation, |state| {
                    let again = state.history.back().is_some_and(|e| e.event == "gate-closed" && e.message == message);
                    if !again {
                        state.record(&rollout.spec, "gate-closed", message.clone());
                    }
                    state.check_started_at = now_ms();
                });
                if changed {
                    let _ = self.persist().await;
                }
                // The current step goes on being checked while the gate is closed.
                self.set_message(name, message);
                return Some(wait);
            }
        }
        let promoted = next == Position::Promoted;
        let ok = self.transition(name, state.generation, |state| {
            state.position = next.into();
            state.split_written = false;
            state.step_started_at = now_ms();
            state.check_started_at = now_ms();
            if promoted {
                state.phase = Phase::Promoted;
                state.record(&rollout.spec, "promoted", "every check passed: all traffic on the canary".into());
            } else {
                let weight = rollout.spec.canary_weight(next);
                let what =
                    if weight == 0 { "preview (header-routed)".to_owned() } else { format!("canary at {weight}%") };
                state.record(&rollout.spec, "step", format!("step {next_number}: {what}"));
            }
        });
        if ok {
            let what = if promoted { "promoted".to_owned() } else { format!("entered step {next_number}") };
            self.set_message(name, what);
            let _ = self.persist().await;
            let event = if promoted { "promoted" } else { "step" };
            self.count_event(event);
            self.notify(name, event);
            tracing::info!(rollout = %name, step = next_number, promoted, "rollout advanced");
        }
        None
    }

    /// Apply `change` to the state of rollout `key` if nothing else changed it since
    /// `generation` (then bump the generation and forget the running check); whether it was
    /// applied.
    fn transition(&self, key: &str, generation: u64, change: impl FnOnce(&mut RolloutState)) -> bool {
        let mut inner = self.inner.lock();
        inner.generation += 1;
        let next = inner.generation;
        let Some(state) = inner.states.get_mut(key) else { return false };
        if state.generation != generation {
            return false;
        }
        change(state);
        state.generation = next;
        if let Some(rt) = inner.runtime.get_mut(key) {
            rt.check = None;
        }
        true
    }

    fn generation_of(&self, name: &str) -> Option<u64> {
        self.inner.lock().states.get(name).map(|s| s.generation)
    }

    /// Write the split of `state`'s position through the backend, unless the state moved on
    /// meanwhile; then mark it written. The state is stored first (a new leader or a restart
    /// must find the position the split is being put at). `Err(why)` to wait and try again.
    async fn write_split(&self, rollout: &Rollout, state: &RolloutState) -> Result<(), String> {
        let name = state.name.as_str();
        let generation = state.generation;
        if !self.is_stored(generation) {
            self.persist().await.map_err(|e| format!("cannot store the rollout's state: {e}"))?;
        }
        let current = || self.generation_of(name) == Some(generation);
        let result = self.backend.write_split(rollout, state.position.into(), &current).await;
        let (version, fatal) = match result {
            Ok(version) => (version, None),
            Err(SplitError::Fatal(why)) => (None, Some(why)),
            Err(SplitError::Retry(why)) => return Err(why),
        };
        let aborted = fatal.is_some() && state.phase != Phase::Aborted;
        let written = self.transition(name, generation, |state| {
            state.split_written = true;
            if version.is_some() {
                state.config_version = version;
            }
            if let Some(why) = &fatal
                && state.phase != Phase::Aborted
            {
                // Nothing this rollout writes can be stored: stop it, and say why.
                state.phase = Phase::Aborted;
                let reason = format!("cannot write the split: {why}");
                state.reason = Some(reason.clone());
                state.record(&rollout.spec, "aborted", reason);
            }
        });
        if written {
            self.persist().await.map_err(|e| e.to_string())?;
            if aborted {
                self.count_event("aborted");
                self.notify(name, "aborted");
                tracing::error!(rollout = %name, reason = ?fatal, "rollout stopped: its split cannot be written");
            }
        }
        Ok(())
    }
}

/// The record of a judged check.
fn last_check(step: usize, passed: bool, a: &crate::stats::Aggregate) -> LastCheck {
    LastCheck {
        at: now_ms(),
        step: step + 1,
        passed,
        requests: a.requests,
        errors: a.failed,
        success_rate: a.success_rate(),
        p99_ms: a.quantile_ms(0.99),
        mean_ms: a.mean_ms(),
    }
}

/// `{version: v2}`.
fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// `120 requests, 99.2% success, p99 12.3ms`.
fn describe(a: &crate::stats::Aggregate) -> String {
    let rate = a.success_rate().map_or("-".to_owned(), |r| format!("{r:.2}%"));
    let p99 = a.quantile_ms(0.99).map_or("-".to_owned(), |p| format!("{p:.1}ms"));
    format!("{} requests, {rate} success, p99 {p99}", a.requests)
}
