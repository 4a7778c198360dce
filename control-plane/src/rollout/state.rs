//! What a rollout has done, as stored in `DATA_DIR/rollouts.json` (replaced atomically on every
//! transition, before the split it implies is written), so that a restarted control plane
//! continues each rollout where it was.

use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use outrider_xds::{Position, RolloutSpec};
use serde::{Deserialize, Serialize};

use crate::policies::persist::{DataDir, PersistError};

/// File name inside the data dir.
pub const FILE: &str = "rollouts.json";

/// Events kept per rollout.
pub const HISTORY: usize = 100;

/// Where a rollout is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Running its steps and checks; it owns its service's split.
    Progressing,
    /// Stopped by an operator at its current step; the split may be edited.
    Paused,
    /// All traffic on the canary (the stable version kept at weight 0).
    Promoted,
    /// All traffic back on the stable version, with the reason.
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::Aborted => "aborted",
        }
    }
}

/// [`Position`] as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "at", content = "step")]
pub enum Stored {
    Step(usize),
    Promoted,
    Stable,
}

impl From<Position> for Stored {
    fn from(p: Position) -> Self {
        match p {
            Position::Step(i) => Stored::Step(i),
            Position::Promoted => Stored::Promoted,
            Position::Stable => Stored::Stable,
        }
    }
}

impl From<Stored> for Position {
    fn from(s: Stored) -> Self {
        match s {
            Stored::Step(i) => Position::Step(i),
            Stored::Promoted => Position::Promoted,
            Stored::Stable => Position::Stable,
        }
    }
}

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Unix milliseconds.
    pub at: u64,
    /// `started`, `step`, `check-passed`, `check-failed`, `gate-closed`, `paused`, `resumed`,
    /// `promoted`, `aborted`.
    pub event: String,
    /// 1-based step (0: before the first).
    pub step: usize,
    /// The canary's weight after the event.
    pub weight: u32,
    pub message: String,
}

/// The stored state of one rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    pub name: String,
    pub service: String,
    /// [`revision`] of the spec this state belongs to: a new one starts the rollout over.
    pub revision: String,
    pub phase: Phase,
    /// Why it was aborted.
    pub reason: Option<String>,
    /// Where the split is (or is being put).
    pub position: Stored,
    /// Whether the split of `position` has been written (false between a transition and its
    /// write: a restart writes it again).
    pub split_written: bool,
    /// The xDS version of the policy set once the split was last written (what `outrider
    /// status` shows proxies converging on).
    #[serde(default)]
    pub config_version: Option<String>,
    /// Failed checks so far.
    pub failed_checks: u32,
    /// Unix milliseconds when the current step began, and the current check.
    pub step_started_at: u64,
    pub check_started_at: u64,
    /// Bumped by every transition, so that work started before one is not applied after it.
    pub generation: u64,
    pub history: VecDeque<Event>,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What identifies a release: the service, the two subsets, the strategy and the routes. A
/// change of anything else (interval, analysis, webhooks) applies to the running rollout.
pub fn revision(spec: &RolloutSpec) -> String {
    let text = format!("{:?}|{:?}|{:?}|{:?}|{:?}", spec.service, spec.stable, spec.canary, spec.strategy, spec.routes);
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

impl RolloutState {
    /// A rollout starting now: progressing, the split at the stable version until the first
    /// step is entered.
    pub fn start(name: &str, spec: &RolloutSpec, generation: u64) -> Self {
        let now = now_ms();
        let mut state = Self {
            name: name.to_owned(),
            service: spec.service.clone(),
            revision: revision(spec),
            phase: Phase::Progressing,
            reason: None,
            position: Stored::Stable,
            split_written: false,
            config_version: None,
            failed_checks: 0,
            step_started_at: now,
            check_started_at: now,
            generation,
            history: VecDeque::new(),
        };
        state.record(spec, "started", format!("{} rollout of {} started", spec.strategy_name(), spec.service));
        state
    }

    /// 1-based number of the current step (0 before the first, steps + 1 once promoted).
    pub fn step_number(&self, spec: &RolloutSpec) -> usize {
        match self.position {
            Stored::Step(i) => i + 1,
            Stored::Promoted => spec.steps().len() + 1,
            Stored::Stable => 0,
        }
    }

    /// Append an event (the oldest go past [`HISTORY`]).
    pub fn record(&mut self, spec: &RolloutSpec, event: &str, message: String) {
        let weight = spec.canary_weight(self.position.into());
        self.history.push_back(Event {
            at: now_ms(),
            event: event.to_owned(),
            step: self.step_number(spec),
            weight,
            message,
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }
}

/// Every rollout's state, as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub rollouts: Vec<RolloutState>,
}

/// Read the stored states (none when the file does not exist).
pub fn load(data: &DataDir) -> Result<BTreeMap<String, RolloutState>, PersistError> {
    let path = data.path().join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: StateFile =
                serde_json::from_slice(&bytes).map_err(|source| PersistError::Corrupt { path, source })?;
            Ok(stored.rollouts.into_iter().map(|r| (r.name.clone(), r)).collect())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(PersistError::Read { path, source }),
    }
}

/// Replace the stored states durably. Blocking.
pub fn store(data: &DataDir, states: &BTreeMap<String, RolloutState>) -> Result<(), PersistError> {
    let stored = StateFile { rollouts: states.values().cloned().collect() };
    let bytes = serde_json::to_vec_pretty(&stored)
        .map_err(|e| PersistError::Write { path: data.path().join(FILE), source: std::io::Error::other(e) })?;
    data.write_atomic(FILE, &bytes)
}
