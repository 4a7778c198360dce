//! What a rollout has done, as stored in `DATA_DIR/rollouts.json` (replaced atomically on every
//! transition, before the split it implies is written), so that a restarted control plane
//! continues each rollout where it was.

use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use outrider_xds::{Position, RolloutSpec};
use serde::{Deserialize, Serialize};

use super::Command;
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
    /// `promoted`, `aborted`, and in Kubernetes mode `command-refused` (an `outrider.io/command`
    /// annotation that could not be carried out).
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
    /// `spec.paused` as last acted on: a change of it pauses or resumes the rollout.
    #[serde(default)]
    pub spec_paused: bool,
    /// The last check that was judged, with its numbers.
    #[serde(default)]
    pub last_check: Option<LastCheck>,
}

/// A judged check and the canary's numbers over it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastCheck {
    /// Unix milliseconds when it was judged.
    pub at: u64,
    /// 1-based step it judged.
    pub step: usize,
    pub passed: bool,
    pub requests: u64,
    pub errors: u64,
    /// Percent.
    pub success_rate: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
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
            spec_paused: spec.paused,
            last_check: None,
        };
        state.record(spec, "started", format!("{} rollout of {} started", spec.strategy_name(), spec.service));
        if spec.paused {
            state.pause_for_spec(spec);
        }
        state
    }

    /// Pause a progressing rollout because its `spec.paused` is true; whether it did.
    pub fn pause_for_spec(&mut self, spec: &RolloutSpec) -> bool {
        if self.phase != Phase::Progressing {
            return false;
        }
        self.phase = Phase::Paused;
        self.record(spec, "paused", "paused: spec.paused is true".into());
        true
    }

    /// Follow a change of `spec.paused` (true pauses a progressing rollout, false resumes a
    /// paused one); the event it makes, if any.
    pub fn follow_spec_paused(&mut self, spec: &RolloutSpec) -> Option<&'static str> {
        if self.spec_paused == spec.paused {
            return None;
        }
        self.spec_paused = spec.paused;
        if spec.paused {
            return self.pause_for_spec(spec).then_some("paused");
        }
        if self.phase != Phase::Paused {
            return None;
        }
        self.resume();
        self.record(spec, "resumed", "resumed: spec.paused is false; the split is set again".into());
        Some("resumed")
    }

    fn resume(&mut self) {
        self.phase = Phase::Progressing;
        self.split_written = false;
        self.check_started_at = now_ms();
    }

    /// Carry out an operator's command (the state then has `generation`): the event it makes,
    /// or why it cannot be done.
    pub fn command(&mut self, command: Command, spec: &RolloutSpec, generation: u64) -> Result<&'static str, String> {
        let phase = self.phase.as_str();
        let name = self.name.clone();
        let refuse = |what: &str| Err(format!("Rollout {name} is {phase}: {what}"));
        let event = match (command, self.phase) {
            (Command::Pause, Phase::Progressing) => {
                self.phase = Phase::Paused;
                self.record(spec, "paused", "paused by an operator".into());
                "paused"
            }
            (Command::Pause, _) => return refuse("only a progressing rollout can be paused"),
            (Command::Resume, Phase::Paused) if spec.paused => {
                return refuse("its spec.paused is true: set it to false to resume it");
            }
            (Command::Resume, Phase::Paused) => {
                self.resume();
                self.record(spec, "resumed", "resumed by an operator; the split is set again".into());
                "resumed"
            }
            (Command::Resume, _) => return refuse("only a paused rollout can be resumed"),
            (Command::Promote, Phase::Progressing | Phase::Paused) => {
                self.phase = Phase::Promoted;
                self.position = Position::Promoted.into();
                self.split_written = false;
                self.record(spec, "promoted", "promoted by an operator".into());
                "promoted"
            }
            (Command::Promote, _) => return refuse("start it again to release the canary"),
            (Command::Abort, Phase::Progressing | Phase::Paused | Phase::Promoted) => {
                let why =
                    if self.phase == Phase::Promoted { "rolled back by an operator" } else { "aborted by an operator" };
                self.phase = Phase::Aborted;
                self.reason = Some(why.into());
                self.position = Position::Stable.into();
                self.split_written = false;
                self.record(spec, "aborted", why.into());
                "aborted"
            }
            (Command::Abort, _) => return refuse("it already is"),
            (Command::Start, Phase::Promoted | Phase::Aborted) => {
                *self = RolloutState::start(&name, spec, generation);
                "started"
            }
            (Command::Start, _) => return refuse("abort it first to start it over"),
        };
        self.generation = generation;
        Ok(event)
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
