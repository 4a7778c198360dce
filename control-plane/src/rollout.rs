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
//! start a finished one again; `spec.paused: true` pauses it too, and setting it back to false
//! resumes it.
//!
//! The controller is the same in every mode; a [`Backend`] says where the state is kept and
//! how a split is written. With files and the API ([`files`]) every change of the split goes
//! through [`crate::policies::Policies::write_owned`] — validated and persisted like an
//! `apply` — and the state is kept in `rollouts.json`; in Kubernetes mode
//! (`crate::kubernetes::rollouts`) the split is a patch of the TrafficPolicy object and the
//! state lives in the Rollout's status. Either way the state is stored before the split it
//! implies is written, so a restarted control plane (or a new leader) writes it again if needed
//! and continues the step where it was (the check in progress starts its numbers over: they
//! were in memory).

pub mod analysis;
mod driver;
pub mod files;
pub mod state;
pub mod view;
pub mod webhook;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use outrider_xds::{PolicySet, Position, Rollout};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::metrics::{EventLabels, Metrics};
use crate::policies::persist::PersistError;
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

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Promote => "promote",
            Command::Abort => "abort",
        }
    }
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no Rollout named {0:?}")]
    NotFound(String),
    /// The Rollout exists but is not applied (Kubernetes mode: its `Accepted` condition says why).
    #[error("{0}")]
    NotAccepted(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Why a rollout's state could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    File(#[from] PersistError),
    /// The Kubernetes API server did not take or give the Rollout's status.
    #[error("the status of Rollout {key}: {reason}")]
    Status { key: String, reason: String },
}

/// Why a split was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// Not now (the store or the API server is unavailable): try again.
    Retry(String),
    /// Never (the document belongs to the policy directory, or the result would not be valid):
    /// the rollout is stopped with this reason.
    Fatal(String),
}

/// States stored by someone else since this controller last stored them (a replica that led
/// before), to be taken over: the key and the state found (`None`: none, the object is new).
pub type Superseded = Vec<(String, Option<RolloutState>)>;

/// Where a controller keeps its rollouts' state and how it writes their splits.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// The stored state of rollout `key` that this controller does not hold yet (a new leader
    /// reads the Rollout's status), if there is one.
    fn stored<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<RolloutState>, StoreError>>;

    /// Store every state durably (`views`: each one's view, when [`Backend::wants_views`]).
    fn store<'a>(
        &'a self,
        states: &'a BTreeMap<String, RolloutState>,
        views: &'a BTreeMap<String, Value>,
    ) -> BoxFuture<'a, Result<Superseded, StoreError>>;

    /// Whether [`Backend::store`] needs the views.
    fn wants_views(&self) -> bool {
        false
    }

    /// Write `rollout`'s split at `position`, unless `current()` turns false before it is
    /// written (the state moved on). The xDS version of the policy set that carries it, when known.
    fn write_split<'a>(
        &'a self,
        rollout: &'a Rollout,
        position: Position,
        current: &'a (dyn Fn() -> bool + Send + Sync),
    ) -> BoxFuture<'a, Result<Option<String>, SplitError>>;
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
    /// Every state of a generation up to this one has been stored.
    stored: u64,
}

/// Runs every rollout of the policy set.
#[derive(Debug)]
pub struct Controller {
    backend: Arc<dyn Backend>,
    /// The policy set in force: its rollouts, keyed as the API names them.
    sets: watch::Receiver<Arc<PolicySet>>,
    stats: Arc<Stats>,
    metrics: Metrics,
    inner: Mutex<Inner>,
    /// Persisting is done one at a time, in order.
    persist: tokio::sync::Mutex<()>,
}

/// How often a waiting rollout looks again (endpoints, persistence errors).
const RETRY: Duration = Duration::from_secs(1);

impl Controller {
    /// A controller of the rollouts of `sets`, starting from `states`.
    pub fn new(
        backend: Arc<dyn Backend>,
        sets: watch::Receiver<Arc<PolicySet>>,
        stats: Arc<Stats>,
        metrics: Metrics,
        states: BTreeMap<String, RolloutState>,
    ) -> Arc<Self> {
        let generation = states.values().map(|s| s.generation).max().unwrap_or(0);
        Arc::new(Self {
            backend,
            sets,
            stats,
            metrics,
            inner: Mutex::new(Inner { states, runtime: BTreeMap::new(), generation, stored: generation }),
            persist: tokio::sync::Mutex::new(()),
        })
    }

    /// The rollouts in force.
    fn rollouts(&self) -> Arc<PolicySet> {
        self.sets.borrow().clone()
    }

    /// Follow the policy set (rollouts created, changed, deleted) until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.sets.clone();
        loop {
            let set = changes.borrow_and_update().clone();
            let complete = match self.reconcile(&set).await {
                Ok(complete) => complete,
                Err(e) => {
                    tracing::error!(error = %e, "cannot store the rollouts' state");
                    true
                }
            };
            // A rollout whose stored state could not be read is looked at again soon.
            let retry = async {
                if complete {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(RETRY).await;
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = retry => {}
            }
        }
    }

    /// Stop every driver (the task running [`Controller::run`] is dropped separately): a
    /// replica that stops leading stops acting at once.
    pub fn stop(&self) {
        let mut inner = self.inner.lock();
        for (name, rt) in std::mem::take(&mut inner.runtime) {
            if let Some(driver) = rt.driver {
                driver.abort();
            }
            self.stats.want_interval(&name, None);
        }
    }

    /// Start rollouts that are new or whose release changed, take over the stored state of
    /// those this controller does not hold yet, follow `spec.paused`, forget deleted rollouts,
    /// and make sure each has its driver. False when a stored state could not be read (that
    /// rollout waits).
    async fn reconcile(self: &Arc<Self>, set: &PolicySet) -> Result<bool, StoreError> {
        let unknown: Vec<String> = {
            let inner = self.inner.lock();
            set.rollouts.keys().filter(|k| !inner.states.contains_key(*k)).cloned().collect()
        };
        let mut stored = BTreeMap::new();
        let mut unreadable = Vec::new();
        for key in unknown {
            match self.backend.stored(&key).await {
                Ok(Some(state)) => {
                    stored.insert(key, state);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(rollout = %key, error = %e, "cannot read the rollout's stored state; trying again");
                    unreadable.push(key);
                }
            }
        }
        let mut events = Vec::new();
        let changed = {
            let mut guard = self.inner.lock();
            let inner = &mut *guard;
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
                if unreadable.contains(name) {
                    continue;
                }
                let revision = state::revision(&rollout.spec);
                inner.generation += 1;
                let generation = inner.generation;
                if !inner.states.contains_key(name)
                    && let Some(mut state) = stored.remove(name).filter(|s| s.revision == revision)
                {
                    tracing::info!(rollout = %name, phase = state.phase.as_str(), step = state.step_number(&rollout.spec),
                        "took over the rollout where it was");
                    state.generation = generation;
                    inner.states.insert(name.clone(), state);
                    inner.runtime.entry(name.clone()).or_default().check = None;
                }
                let fresh = inner.states.get(name).is_none_or(|s| s.revision != revision);
                let rt = inner.runtime.entry(name.clone()).or_default();
                if fresh {
                    rt.check = None;
                    rt.message = "starting".into();
                    let state = RolloutState::start(name, &rollout.spec, generation);
                    events.push((name.clone(), "started"));
                    if state.phase == Phase::Paused {
                        events.push((name.clone(), "paused"));
                    }
                    inner.states.insert(name.clone(), state);
                    changed = true;
                    continue;
                }
                let Some(state) = inner.states.get_mut(name) else { continue };
                let was = state.spec_paused;
                let event = state.follow_spec_paused(&rollout.spec);
                if was != state.spec_paused {
                    state.generation = generation;
                    inner.runtime.entry(name.clone()).or_default().check = None;
                    changed = true;
                }
                if let Some(event) = event {
                    events.push((name.clone(), event));
                }
            }
            changed
        };
        // The state is stored before a driver acts on it.
        let stored = if changed { self.persist().await } else { Ok(()) };
        {
            let mut inner = self.inner.lock();
            for name in set.rollouts.keys().filter(|k| inner.states.contains_key(*k)).cloned().collect::<Vec<_>>() {
                let rt = inner.runtime.entry(name.clone()).or_default();
                if rt.driver.is_none() {
                    let task = tokio::spawn(driver::drive(self.clone(), name.clone(), rt.wake.clone()));
                    rt.driver = Some(task.abort_handle());
                }
                rt.wake.notify_one();
            }
        }
        for (name, event) in events {
            self.count_event(event);
            self.notify(&name, event);
            tracing::info!(rollout = %name, event, "rollout event");
        }
        stored.map(|()| unreadable.is_empty())
    }

    /// Store every state (in order with other stores), then take over those another writer
    /// stored meanwhile.
    async fn persist(&self) -> Result<(), StoreError> {
        let _order = self.persist.lock().await;
        let (states, generation) = {
            let inner = self.inner.lock();
            (inner.states.clone(), inner.generation)
        };
        let views: BTreeMap<String, Value> = if self.backend.wants_views() {
            states.keys().filter_map(|k| Some((k.clone(), self.status(k)?))).collect()
        } else {
            BTreeMap::new()
        };
        let superseded = self.backend.store(&states, &views).await?;
        {
            let mut inner = self.inner.lock();
            inner.stored = inner.stored.max(generation);
        }
        for (key, state) in superseded {
            self.adopt(&key, state);
        }
        Ok(())
    }

    /// Store every state now (and so the status of each, in Kubernetes mode).
    pub async fn store(&self) -> Result<(), StoreError> {
        self.persist().await
    }

    /// Record an event that changes nothing else (a command that was refused), and store it.
    pub async fn note(&self, key: &str, event: &str, message: String) {
        let Some(rollout) = self.rollouts().rollouts.get(key).cloned() else { return };
        if let Some(state) = self.inner.lock().states.get_mut(key) {
            state.record(&rollout.spec, event, message);
        }
        if let Err(e) = self.persist().await {
            tracing::warn!(rollout = %key, error = %e, "cannot store the rollout's state; trying again later");
        }
    }

    /// Whether the state of generation `generation` has been stored.
    fn is_stored(&self, generation: u64) -> bool {
        self.inner.lock().stored >= generation
    }

    /// Replace the state of `key` by one another writer stored (`None`: start it afresh): the
    /// work in progress on the old one is dropped.
    fn adopt(&self, key: &str, stored: Option<RolloutState>) {
        let Some(rollout) = self.rollouts().rollouts.get(key).cloned() else { return };
        let mut inner = self.inner.lock();
        inner.generation += 1;
        let generation = inner.generation;
        let revision = state::revision(&rollout.spec);
        let mut state = match stored {
            Some(state) if state.revision == revision => state,
            _ => RolloutState::start(key, &rollout.spec, generation),
        };
        tracing::warn!(rollout = %key, phase = state.phase.as_str(), step = state.step_number(&rollout.spec),
            "the rollout's state was stored by another writer; continuing from it");
        state.generation = generation;
        inner.states.insert(key.to_owned(), state);
        if let Some(rt) = inner.runtime.get_mut(key) {
            rt.check = None;
            rt.wake.notify_one();
        }
    }

    /// The Rollout document and the state of `name`.
    fn snapshot(&self, name: &str) -> Option<(Rollout, RolloutState)> {
        let rollout = self.rollouts().rollouts.get(name)?.clone();
        let state = self.inner.lock().states.get(name)?.clone();
        Some((rollout, state))
    }

    /// Carry out an operator's command.
    pub async fn command(&self, name: &str, command: Command) -> Result<Value, CommandError> {
        let rollout = self.rollouts().rollouts.get(name).cloned().ok_or_else(|| CommandError::NotFound(name.into()))?;
        let event = {
            let mut inner = self.inner.lock();
            inner.generation += 1;
            let generation = inner.generation;
            let state = inner.states.get_mut(name).ok_or_else(|| CommandError::NotFound(name.into()))?;
            let event = state.command(command, &rollout.spec, generation).map_err(CommandError::Conflict)?;
            inner.runtime.entry(name.to_owned()).or_default().check = None;
            event
        };
        self.persist().await?;
        if let Some(rt) = self.inner.lock().runtime.get(name) {
            rt.wake.notify_one();
        }
        self.count_event(event);
        self.notify(name, event);
        tracing::info!(rollout = %name, event, "rollout command");
        Ok(self.status(name).unwrap_or(Value::Null))
    }

    /// The state of rollout `key`, as this controller holds it.
    pub fn state(&self, key: &str) -> Option<RolloutState> {
        self.inner.lock().states.get(key).cloned()
    }

    /// Every rollout's status, by name.
    pub fn list(&self, service: Option<&str>) -> Vec<Value> {
        let set = self.rollouts();
        let names: Vec<String> = self
            .inner
            .lock()
            .states
            .keys()
            .filter(|n| service.is_none_or(|s| set.rollouts.get(*n).is_some_and(|r| r.spec.service == s)))
            .cloned()
            .collect();
        names.iter().filter_map(|n| self.status(n)).collect()
    }

    /// The status of one rollout (`GET /v1/rollouts/NAME`).
    pub fn status(&self, name: &str) -> Option<Value> {
        let (rollout, state) = self.snapshot(name)?;
        let inner = self.inner.lock();
        let rt = inner.runtime.get(name);
        let message = rt.map(|r| r.message.as_str()).unwrap_or_default();
        let check = rt.and_then(|r| r.check.as_ref());
        let running = view::Running {
            canary: check.map(|c| &c.canary),
            stable: check.map(|c| &c.stable),
            remaining: check.map(|c| c.deadline.saturating_duration_since(Instant::now())),
        };
        Some(view::view(name, &rollout, &state, message, &running, &self.stats))
    }

    fn count_event(&self, event: &'static str) {
        self.metrics.rollout_events.get_or_create(&EventLabels { event }).inc();
    }

    /// Send a notification (when the rollout has a notify webhook).
    fn notify(&self, name: &str, event: &str) {
        let Some(rollout) = self.rollouts().rollouts.get(name).cloned() else { return };
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
