//! Rollouts: one state machine per `kind: Rollout`, run by the control plane.
//!
//! A rollout is **progressing** from the moment its document is applied (or its release —
//! service, subsets, strategy, routes — changes): it puts its service's split at the stable
//! version, then enters each step in turn (the canary's weight, or for blue/green the preview
//! route), and at each step runs checks of `interval` on the canary's numbers from the load
//! reports ([`analysis`]). A passing check moves it to the next step (after the gate webhook
//! says 200, when there is one); after the last, it is **promoted** (all traffic on the canary,
//! the stable version kept at weight 0). `abortAfterFailures` failed checks **abort** it: all
//! traffic back on the stable version, in one write, with the reason. An operator may **pause**
//! it (it stays at its step; its split may then be edited), resume, promote or abort it, and
//! start a finished one again.
//!
//! Every change of the split goes through [`Policies::write_owned`] — validated and persisted
//! like an `apply` — and while a rollout progresses any other write that would change the split
//! it owns is refused (409, [`WriteGuard`]). The state is persisted (`rollouts.json`) before the
//! split it implies is written, so a restarted control plane writes it again if needed and
//! continues the step where it was (the check in progress starts its numbers over: they were in
//! memory).

pub mod analysis;
mod driver;
pub mod state;
pub mod webhook;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use outrider_xds::translate::rollout::owned_part;
use outrider_xds::{PolicySet, Position, Rollout};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::{EventLabels, Metrics};
use crate::policies::persist::{DataDir, PersistError};
use crate::policies::{DocChange, Policies, WriteGuard};
use crate::stats::{Aggregate, Stats};
use state::{Phase, RolloutState, now_ms};

/// What an operator asks of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Start,
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Command {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "start" => Command::Start,
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "promote" => Command::Promote,
            "abort" => Command::Abort,
            _ => return None,
        })
    }
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no Rollout named {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Persist(#[from] PersistError),
}

/// What a check is measured against; not stored (a restart starts the check's numbers over).
#[derive(Debug)]
struct Check {
    deadline: Instant,
    canary: BTreeMap<SocketAddr, Aggregate>,
    stable: BTreeMap<SocketAddr, Aggregate>,
}

/// A rollout's state that lives in memory only.
#[derive(Debug, Default)]
struct Runtime {
    /// What it is doing now, for people.
    message: String,
    check: Option<Check>,
    wake: Arc<Notify>,
    driver: Option<tokio::task::AbortHandle>,
    notifier: Option<(String, webhook::Notifier)>,
}

#[derive(Debug, Default)]
struct Inner {
    states: BTreeMap<String, RolloutState>,
    runtime: BTreeMap<String, Runtime>,
    generation: u64,
}

/// Runs every rollout of the policy set.
#[derive(Debug)]
pub struct Controller {
    policies: Arc<Policies>,
    stats: Arc<Stats>,
    data: DataDir,
    metrics: Metrics,
    inner: Mutex<Inner>,
    /// Persisting is done one at a time, in order.
    persist: tokio::sync::Mutex<()>,
}

/// How often a waiting rollout looks again (endpoints, persistence errors).
const RETRY: Duration = Duration::from_secs(1);

impl Controller {
    /// Restore the stored states and install the split guard on `policies`.
    pub fn open(
        policies: Arc<Policies>,
        stats: Arc<Stats>,
        data: DataDir,
        metrics: Metrics,
    ) -> Result<Arc<Self>, PersistError> {
        let states = state::load(&data)?;
        let generation = states.values().map(|s| s.generation).max().unwrap_or(0);
        let controller = Arc::new(Self {
            policies: policies.clone(),
            stats,
            data,
            metrics,
            inner: Mutex::new(Inner { states, runtime: BTreeMap::new(), generation }),
            persist: tokio::sync::Mutex::new(()),
        });
        policies.set_guard(Arc::new(Guard(Arc::downgrade(&controller))));
        Ok(controller)
    }

    /// Follow the policy set (rollouts created, changed, deleted) until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.policies.subscribe();
        loop {
            let set = changes.borrow_and_update().clone();
            if let Err(e) = self.reconcile(&set).await {
                tracing::error!(error = %e, "cannot store the rollouts' state");
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Start rollouts that are new or whose release changed, forget deleted ones, and make
    /// sure each has its driver.
    async fn reconcile(self: &Arc<Self>, set: &PolicySet) -> Result<(), PersistError> {
        let mut started = Vec::new();
        let changed = {
            let mut inner = self.inner.lock();
            let mut changed = false;
            let gone: Vec<String> = inner.states.keys().filter(|n| !set.rollouts.contains_key(*n)).cloned().collect();
            for name in gone {
                inner.states.remove(&name);
                // Its driver sees it gone and ends (not aborted: it may be in a write).
                if let Some(rt) = inner.runtime.remove(&name) {
                    rt.wake.notify_one();
                }
                self.stats.want_interval(&name, None);
                tracing::info!(rollout = %name, "Rollout deleted; its split stays as it is");
                changed = true;
            }
            for (name, rollout) in &set.rollouts {
                let revision = state::revision(&rollout.spec);
                if inner.states.get(name).is_none_or(|s| s.revision != revision) {
                    inner.generation += 1;
                    let state = RolloutState::start(name, &rollout.spec, inner.generation);
                    inner.states.insert(name.clone(), state);
                    let rt = inner.runtime.entry(name.clone()).or_default();
                    rt.check = None;
                    rt.message = "starting".into();
                    started.push(name.clone());
                    changed = true;
                }
            }
            changed
        };
        // The state is stored before a driver acts on it.
        let stored = if changed { self.persist().await } else { Ok(()) };
        {
            let mut inner = self.inner.lock();
            for name in set.rollouts.keys() {
                let rt = inner.runtime.entry(name.clone()).or_default();
                if rt.driver.is_none() {
                    let task = tokio::spawn(driver::drive(self.clone(), name.clone(), rt.wake.clone()));
                    rt.driver = Some(task.abort_handle());
                }
                rt.wake.notify_one();
            }
        }
        for name in started {
            self.metrics.rollout_events.get_or_create(&EventLabels { event: "started" }).inc();
            self.notify(&name, "started");
        }
        stored
    }

    /// Store every state (in order with other stores).
    async fn persist(&self) -> Result<(), PersistError> {
        let _order = self.persist.lock().await;
        let states = self.inner.lock().states.clone();
        let data = self.data.clone();
        tokio::task::spawn_blocking(move || state::store(&data, &states)).await.map_err(|e| PersistError::Write {
            path: self.data.path().join(state::FILE),
            source: std::io::Error::other(e),
        })?
    }

    /// The Rollout document and the state of `name`.
    fn snapshot(&self, name: &str) -> Option<(Rollout, RolloutState)> {
        let rollout = self.policies.current().rollouts.get(name)?.clone();
        let state = self.inner.lock().states.get(name)?.clone();
        Some((rollout, state))
    }

    /// Carry out an operator's command.
    pub async fn command(&self, name: &str, command: Command) -> Result<Value, CommandError> {
        let rollout =
            self.policies.current().rollouts.get(name).cloned().ok_or_else(|| CommandError::NotFound(name.into()))?;
        let spec = &rollout.spec;
        let event = {
            let mut inner = self.inner.lock();
            inner.generation += 1;
            let generation = inner.generation;
            let state = inner.states.get_mut(name).ok_or_else(|| CommandError::NotFound(name.into()))?;
            let phase = state.phase.as_str();
            let refuse = |what: &str| Err(CommandError::Conflict(format!("Rollout {name} is {phase}: {what}")));
            let event = match (command, state.phase) {
                (Command::Pause, Phase::Progressing) => {
                    state.phase = Phase::Paused;
                    state.record(spec, "paused", "paused by an operator".into());
                    "paused"
                }
                (Command::Pause, _) => return refuse("only a progressing rollout can be paused"),
                (Command::Resume, Phase::Paused) => {
                    state.phase = Phase::Progressing;
                    state.split_written = false;
                    state.check_started_at = now_ms();
                    state.record(spec, "resumed", "resumed by an operator; the split is set again".into());
                    "resumed"
                }
                (Command::Resume, _) => return refuse("only a paused rollout can be resumed"),
                (Command::Promote, Phase::Progressing | Phase::Paused) => {
                    state.phase = Phase::Promoted;
                    state.position = Position::Promoted.into();
                    state.split_written = false;
                    state.record(spec, "promoted", "promoted by an operator".into());
                    "promoted"
                }
                (Command::Promote, _) => return refuse("start it again to release the canary"),
                (Command::Abort, Phase::Progressing | Phase::Paused | Phase::Promoted) => {
                    let why = if state.phase == Phase::Promoted {
                        "rolled back by an operator"
                    } else {
                        "aborted by an operator"
                    };
                    state.phase = Phase::Aborted;
                    state.reason = Some(why.into());
                    state.position = Position::Stable.into();
                    state.split_written = false;
                    state.record(spec, "aborted", why.into());
                    "aborted"
                }
                (Command::Abort, _) => return refuse("it already is"),
                (Command::Start, Phase::Promoted | Phase::Aborted) => {
                    *state = RolloutState::start(name, spec, generation);
                    "started"
                }
                (Command::Start, _) => return refuse("abort it first to start it over"),
            };
            state.generation = generation;
            inner.runtime.entry(name.to_owned()).or_default().check = None;
            event
        };
        self.persist().await?;
        if let Some(rt) = self.inner.lock().runtime.get(name) {
            rt.wake.notify_one();
        }
        self.metrics.rollout_events.get_or_create(&EventLabels { event }).inc();
        self.notify(name, event);
        tracing::info!(rollout = %name, event, "rollout command");
        Ok(self.status(name).unwrap_or(Value::Null))
    }

    /// Every rollout's status, by name.
    pub fn list(&self) -> Vec<Value> {
        let names: Vec<String> = self.inner.lock().states.keys().cloned().collect();
        names.iter().filter_map(|n| self.status(n)).collect()
    }

    /// The status of one rollout (`GET /v1/rollouts/NAME`).
    pub fn status(&self, name: &str) -> Option<Value> {
        let (rollout, state) = self.snapshot(name)?;
        let spec = &rollout.spec;
        let (message, check) = {
            let inner = self.inner.lock();
            let rt = inner.runtime.get(name);
            let message = rt.map(|r| r.message.clone()).unwrap_or_default();
            let check = rt.and_then(|r| r.check.as_ref()).map(|c| {
                let left = c.deadline.saturating_duration_since(Instant::now());
                (c.canary.clone(), c.stable.clone(), left)
            });
            (message, check)
        };
        let numbers = |labels: &BTreeMap<String, String>, baseline: Option<&BTreeMap<SocketAddr, Aggregate>>| {
            let a = match baseline {
                Some(b) => self.stats.since(&spec.service, labels, b),
                None => Aggregate::default(),
            };
            json!({
                "labels": labels,
                "endpoints": self.stats.endpoints_matching(&spec.service, labels),
                "requests": a.requests,
                "errors": a.failed,
                "successRate": a.success_rate(),
                "p99Ms": a.quantile_ms(0.99),
                "meanMs": a.mean_ms(),
            })
        };
        let position: Position = state.position.into();
        let steps: Vec<Value> = spec
            .steps()
            .iter()
            .map(|s| match s {
                outrider_xds::Step::Weight(w) => json!(w),
                outrider_xds::Step::Preview => json!("preview"),
            })
            .collect();
        Some(json!({
            "name": name,
            "service": spec.service,
            "strategy": spec.strategy_name(),
            "phase": state.phase.as_str(),
            "reason": state.reason,
            "message": message,
            "step": state.step_number(spec),
            "steps": steps,
            "weight": spec.canary_weight(position),
            "preview": matches!(position, Position::Step(i) if spec.steps().get(i) == Some(&outrider_xds::Step::Preview)),
            "interval": outrider_xds::duration::format(spec.interval),
            "failedChecks": state.failed_checks,
            "abortAfterFailures": spec.analysis.abort_after_failures,
            "splitWritten": state.split_written,
            "configVersion": state.config_version,
            "stepStartedAt": state.step_started_at,
            "checkStartedAt": state.check_started_at,
            "checkRemainingMs": check.as_ref().map(|c| c.2.as_millis() as u64),
            "canary": numbers(&spec.canary, check.as_ref().map(|c| &c.0)),
            "stable": numbers(&spec.stable, check.as_ref().map(|c| &c.1)),
            "analysis": {
                "minSuccessRate": spec.analysis.min_success_rate,
                "maxP99LatencyMs": spec.analysis.max_p99_latency.map(|d| d.as_secs_f64() * 1000.0),
                "maxMeanLatencyMs": spec.analysis.max_mean_latency.map(|d| d.as_secs_f64() * 1000.0),
                "minRequests": spec.analysis.min_requests,
            },
            "generation": state.generation,
            "history": state.history,
        }))
    }

    /// Send a notification (when the rollout has a notify webhook).
    fn notify(&self, name: &str, event: &str) {
        let Some(rollout) = self.policies.current().rollouts.get(name).cloned() else { return };
        let Some(hook) = rollout.spec.webhooks.notify.clone() else { return };
        let notifier = {
            let mut inner = self.inner.lock();
            let rt = inner.runtime.entry(name.to_owned()).or_default();
            match &rt.notifier {
                Some((url, n)) if *url == hook.url => n.clone(),
                _ => {
                    let n = webhook::Notifier::spawn(name.to_owned(), hook.clone());
                    rt.notifier = Some((hook.url.clone(), n.clone()));
                    n
                }
            }
        };
        let Some(status) = self.status(name) else { return };
        notifier.send(json!({
            "rollout": name,
            "service": rollout.spec.service,
            "event": event,
            "at": now_ms(),
            "phase": status["phase"],
            "reason": status["reason"],
            "step": status["step"],
            "steps": status["steps"].as_array().map_or(0, Vec::len),
            "weight": status["weight"],
            "failedChecks": status["failedChecks"],
            "canary": status["canary"],
            "stable": status["stable"],
        }));
    }

    /// The refusal for a write that would change the split `state`'s rollout runs.
    fn refusal(state: &RolloutState, rollout: &Rollout, kind_name: &str) -> String {
        let spec = &rollout.spec;
        let weight = spec.canary_weight(state.position.into());
        format!(
            "the split of {kind_name} is run by Rollout {} (progressing, step {} of {}, canary at {weight}%): pause \
             it first (outrider rollout pause {}), or abort it; edits of anything else in the document are accepted",
            state.name,
            state.step_number(spec),
            spec.steps().len(),
            state.name
        )
    }
}

/// Refuses writes that change a progressing rollout's split (held weakly by the policies, so
/// that the two do not keep each other alive).
#[derive(Debug)]
struct Guard(Weak<Controller>);

impl WriteGuard for Guard {
    fn check(&self, changes: &[DocChange<'_>]) -> Result<(), String> {
        let Some(controller) = self.0.upgrade() else { return Ok(()) };
        let set = controller.policies.current();
        let inner = controller.inner.lock();
        for (key, old, new) in changes {
            if key.0 != "TrafficPolicy" {
                continue;
            }
            let service_of = |d: &Option<&Value>| d.and_then(|d| d["spec"]["service"].as_str().map(str::to_owned));
            for service in [service_of(old), service_of(new)].into_iter().flatten() {
                let running = inner
                    .states
                    .values()
                    .filter(|s| s.service == service && s.phase == Phase::Progressing)
                    .filter_map(|s| Some((s, set.rollouts.get(&s.name)?)));
                for (state, rollout) in running {
                    if owned_part(*old, rollout) != owned_part(*new, rollout) {
                        return Err(Controller::refusal(state, rollout, &format!("TrafficPolicy/{}", key.1)));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
