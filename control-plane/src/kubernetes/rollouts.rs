//! Rollouts in Kubernetes mode: the `Rollout` custom resource, run by the leader with the same
//! controller as in file mode ([`crate::rollout::Controller`]).
//!
//! - **Which rollouts**: the accepted Rollout objects of the policy set (judged like every
//!   `outrider.io` object; a rejected one has its `Accepted` condition say why, and nothing is
//!   applied), keyed `NAMESPACE/NAME`.
//! - **Who runs them**: the replica holding the Lease, only while it holds it
//!   ([`ClusterRollouts::spawn`]); a replica that stops leading stops every driver at once.
//! - **Their state** lives in each Rollout's status ([`backend`]): written before the split it
//!   implies, with optimistic concurrency, so a new leader continues each rollout from there —
//!   the same step, the same failed checks, the split written again if it had not been — and a
//!   leader that finds a state it did not write takes that one over instead of writing its own.
//! - **The split** is a patch of the TrafficPolicy object of the Rollout's Service (created when
//!   there is none), read and written with its `resourceVersion`: an edit made meanwhile makes
//!   the write fail and the rollout reads the object again, so nobody's other fields are lost.
//! - **Commands**: `outrider rollout pause|resume|promote|abort|start` through any replica, and
//!   edits of the object: `spec.paused: true` pauses (false resumes), and the annotation
//!   `outrider.io/command: promote|abort|start|resume|pause` gives a one-time command, which the
//!   leader carries out and then removes (a refused one is recorded in the history).

mod backend;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::Cluster;
use super::crds;
use super::status::api_resource;
use super::store::Compact;
use crate::metrics::Metrics;
use crate::rollout::state::{RolloutState, revision};
use crate::rollout::view::{self, Running};
use crate::rollout::{Command, CommandError, Controller, StoreError};
use crate::stats::Stats;
use backend::ClusterBackend;

/// The kind.
pub const KIND: &str = "Rollout";
/// The annotation that gives a rollout a one-time command.
pub const COMMAND_ANNOTATION: &str = "outrider.io/command";
/// How long a command through the API waits to see the leader carry it out.
const COMMAND_WAIT: Duration = Duration::from_secs(5);
/// How often the leader writes what changed of the statuses besides transitions (the message).
const STATUS_REFRESH: Duration = Duration::from_secs(2);
/// How often a command the leader could not carry out yet is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What is kept of a Rollout object besides its spec (which the policy set holds).
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutObject {
    pub uid: String,
    pub resource_version: String,
    /// `outrider.io/command`, when set.
    pub command: Option<String>,
    pub status: Value,
}

impl Compact for RolloutObject {}

pub fn compact(object: &DynamicObject) -> Option<RolloutObject> {
    Some(RolloutObject {
        uid: object.metadata.uid.clone().unwrap_or_default(),
        resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
        command: object.metadata.annotations.as_ref().and_then(|a| a.get(COMMAND_ANNOTATION)).cloned(),
        status: object.data.get("status").cloned().unwrap_or(Value::Null),
    })
}

impl RolloutObject {
    /// The controller's state as stored in the status.
    pub fn state(&self) -> Option<RolloutState> {
        state_of(&self.status)
    }
}

/// The controller's state in a status, if it holds one.
fn state_of(status: &Value) -> Option<RolloutState> {
    serde_json::from_value(status.get("state")?.clone()).ok()
}

/// `NAMESPACE/NAME`.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// `(namespace, name)` of a key.
fn split(key: &str) -> Option<(&str, &str)> {
    key.split_once('/').filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
}

/// The objects of the `outrider.io` kind `kind` in `namespace`.
fn kind_api(cluster: &Cluster, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let resource = crds::kind(kind).map(api_resource).unwrap_or_else(|| {
        kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(super::GROUP, super::VERSION, kind))
    });
    Api::namespaced_with(cluster.kube.client.clone(), namespace, &resource)
}

fn rollout_api(cluster: &Cluster, namespace: &str) -> Api<DynamicObject> {
    kind_api(cluster, KIND, namespace)
}

/// The rollouts as every replica's API shows them and takes commands for them; and, on the
/// leader, the controller that runs them.
#[derive(Debug)]
pub struct ClusterRollouts {
    cluster: Arc<Cluster>,
    stats: Arc<Stats>,
    metrics: Metrics,
    /// The controller, while this replica leads.
    leading: Mutex<Option<Arc<Controller>>>,
}

/// What a command writes to the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    /// `spec.paused`.
    Paused(bool),
    /// The command annotation.
    Annotation(Command),
}

impl ClusterRollouts {
    pub fn new(cluster: Arc<Cluster>, stats: Arc<Stats>, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self { cluster, stats, metrics, leading: Mutex::new(None) })
    }

    /// Run the rollouts whenever this replica leads.
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        self.cluster.leadership().spawn_while_leader("rollouts", move || me.clone().lead());
    }

    /// The controller running the rollouts, on the leader.
    pub fn controller(&self) -> Option<Arc<Controller>> {
        self.leading.lock().clone()
    }

    /// One term as the leader: a controller that starts from the statuses, takes the commands
    /// off the objects and keeps the statuses current; stopped when the future is dropped.
    async fn lead(self: Arc<Self>) {
        let backend = Arc::new(ClusterBackend::new(self.cluster.clone()));
        let controller =
            Controller::new(backend, self.cluster.sets(), self.stats.clone(), self.metrics.clone(), BTreeMap::new());
        *self.leading.lock() = Some(controller.clone());
        let _term = Term { rollouts: self.clone(), controller: controller.clone() };
        let refresh = async {
            let mut tick = tokio::time::interval(STATUS_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = controller.store().await {
                    tracing::debug!(error = %e, "cannot refresh the rollouts' statuses; trying again");
                }
            }
        };
        tokio::select! {
            () = controller.clone().run() => {}
            () = self.take_commands(&controller) => {}
            () = refresh => {}
        }
    }

    /// Carry out the command annotations, then take them off their objects.
    async fn take_commands(&self, controller: &Arc<Controller>) {
        let (store, mut changes) = self.cluster.rollout_objects();
        // The command carried out on each object, until it is seen removed (the removal may
        // come after other writes to the object, such as the status).
        let mut handled: HashMap<String, (String, Option<String>)> = HashMap::new();
        loop {
            let pending: Vec<(String, RolloutObject)> = store
                .read()
                .iter()
                .filter(|(_, o)| o.command.is_some())
                .map(|((ns, name), o)| (key(ns, name), o.clone()))
                .collect();
            handled.retain(|k, _| pending.iter().any(|(p, _)| p == k));
            let mut waiting = false;
            for (k, object) in pending {
                let version = (object.uid.clone(), object.command.clone());
                if handled.get(&k) == Some(&version) {
                    continue;
                }
                // Not started (or taken over) yet, or not applied: looked at again.
                if controller.state(&k).is_none() {
                    waiting = true;
                    continue;
                }
                let text = object.command.clone().unwrap_or_default();
                match Command::parse(text.trim()) {
                    None => {
                        let why = format!(
                            "{COMMAND_ANNOTATION}: unknown command {text:?}: use start, pause, resume, promote or abort"
                        );
                        controller.note(&k, "command-refused", why).await;
                    }
                    Some(command) => match controller.command(&k, command).await {
                        Ok(_) => {
                            tracing::info!(rollout = %k, command = command.as_str(), "command from the annotation")
                        }
                        Err(CommandError::Conflict(why)) => {
                            let why = format!("{COMMAND_ANNOTATION}: {text}: {why}");
                            tracing::warn!(rollout = %k, reason = %why, "command refused");
                            controller.note(&k, "command-refused", why).await;
                        }
                        // Carried out; the status is written at the next store.
                        Err(CommandError::Store(e)) => {
                            tracing::warn!(rollout = %k, error = %e, "command carried out; its status is written later");
                        }
                        // Gone meanwhile: looked at again.
                        Err(CommandError::NotFound(_) | CommandError::NotAccepted(_)) => {
                            waiting = true;
                            continue;
                        }
                    },
                }
                handled.insert(k.clone(), version);
                self.remove_command(&k, &object).await;
            }
            let retry = async {
                if !waiting {
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

    /// Take the command annotation off an object, unless it changed meanwhile (a new command).
    async fn remove_command(&self, key: &str, seen: &RolloutObject) {
        let Some((namespace, name)) = split(key) else { return };
        let api = rollout_api(&self.cluster, namespace);
        let mut version = seen.resource_version.clone();
        for _ in 0..5 {
            let ops = json!([
                {"op": "replace", "path": "/metadata/resourceVersion", "value": version},
                {"op": "remove", "path": format!("/metadata/annotations/{}", COMMAND_ANNOTATION.replace('/', "~1"))},
            ]);
            let Ok(ops) = serde_json::from_value::<json_patch::Patch>(ops) else { return };
            match api.patch(name, &PatchParams::default(), &Patch::Json::<()>(ops)).await {
                Ok(_) => return,
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => match api.get_opt(name).await {
                    Ok(Some(now)) if compact(&now).is_some_and(|o| o.uid == seen.uid && o.command == seen.command) => {
                        version = now.metadata.resource_version.unwrap_or_default();
                    }
                    _ => return,
                },
                Err(kube::Error::Api(s)) if s.is_not_found() => return,
                Err(e) => {
                    tracing::warn!(rollout = %key, error = %e, "cannot remove the command annotation");
                    return;
                }
            }
        }
    }

    /// Every rollout's view.
    pub fn list(&self, service: Option<&str>) -> Vec<Value> {
        let keys: Vec<String> = self
            .cluster
            .sets()
            .borrow()
            .rollouts
            .iter()
            .filter(|(_, r)| service.is_none_or(|s| r.spec.service == s))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| self.status(k).ok()).collect()
    }

    /// The view of rollout `key` (`NAMESPACE/NAME`): the leader's own; elsewhere, from the
    /// object's status (without the numbers of the check in progress, which only the leader has).
    pub fn status(&self, key: &str) -> Result<Value, CommandError> {
        if let Some(view) = self.controller().and_then(|c| c.status(key)) {
            return Ok(view);
        }
        let object = self.object(key)?;
        let set = self.cluster.sets().borrow().clone();
        let rollout = set.rollouts.get(key).ok_or_else(|| self.not_applied(key))?;
        let stored = object.state().filter(|s| s.revision == revision(&rollout.spec));
        let message = match &stored {
            Some(_) => object.status["message"].as_str().unwrap_or_default().to_owned(),
            None => "waiting for the leader to start it".to_owned(),
        };
        let state = stored.unwrap_or_else(|| RolloutState::start(key, &rollout.spec, 0));
        Ok(view::view(key, rollout, &state, &message, &Running::default(), &self.stats))
    }

    fn object(&self, key: &str) -> Result<RolloutObject, CommandError> {
        let not_found = || CommandError::NotFound(key.to_owned());
        let (namespace, name) = split(key).ok_or_else(not_found)?;
        let (store, _) = self.cluster.rollout_objects();
        let object = store.read().get(&(namespace.to_owned(), name.to_owned())).cloned();
        object.ok_or_else(not_found)
    }

    /// Why an existing Rollout is not in the set.
    fn not_applied(&self, key: &str) -> CommandError {
        let (namespace, name) = split(key).unwrap_or_default();
        let verdicts = self.cluster.verdicts().borrow().clone();
        let why = verdicts
            .get(&(KIND, namespace.to_owned(), name.to_owned()))
            .map_or_else(|| "it has not been judged yet".to_owned(), |v| format!("{}: {}", v.reason, v.message));
        CommandError::NotAccepted(format!("Rollout {key} is not applied ({why})"))
    }

    /// Carry out an operator's command by editing the object (the leader acts on it): the
    /// view, and whether the leader was seen carrying it out within a few seconds.
    pub async fn command(&self, key: &str, command: Command) -> Result<(Value, bool), CommandError> {
        let object = self.object(key)?;
        let set = self.cluster.sets().borrow().clone();
        let rollout = set.rollouts.get(key).ok_or_else(|| self.not_applied(key))?;
        let spec = &rollout.spec;
        let state = self
            .controller()
            .and_then(|c| c.state(key))
            .or_else(|| object.state())
            .filter(|s| s.revision == revision(spec));
        let check =
            |state: &RolloutState| state.clone().command(command, spec, 0).map(|_| ()).map_err(CommandError::Conflict);
        let write = match (command, &state) {
            (Command::Pause, _) if spec.paused => {
                return Err(CommandError::Conflict(format!("Rollout {key}'s spec.paused is true already")));
            }
            (Command::Pause, Some(s)) => check(s).map(|()| Write::Paused(true))?,
            (Command::Pause, None) => Write::Paused(true),
            (Command::Resume, _) if spec.paused => Write::Paused(false),
            (_, None) => {
                return Err(CommandError::Conflict(format!(
                    "Rollout {key} has not started yet; try again in a moment"
                )));
            }
            (other, Some(s)) => check(s).map(|()| Write::Annotation(other))?,
        };
        // The last event before the command: those after it are the command's.
        let last_before = self.status(key).ok().and_then(|v| v["history"].as_array()?.last().cloned());
        let (namespace, name) = split(key).unwrap_or_default();
        let patch = match write {
            Write::Paused(paused) => json!({"spec": {"paused": paused}}),
            Write::Annotation(c) => json!({"metadata": {"annotations": {COMMAND_ANNOTATION: c.as_str()}}}),
        };
        let written = rollout_api(&self.cluster, namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.is_not_found() => CommandError::NotFound(key.to_owned()),
                e => CommandError::Store(StoreError::Status { key: key.to_owned(), reason: e.to_string() }),
            })?;
        let written_version = written.metadata.resource_version.unwrap_or_default();
        tracing::info!(rollout = %key, command = command.as_str(), "command written to the Rollout");
        // Until the leader is seen carrying it out.
        let end = tokio::time::Instant::now() + COMMAND_WAIT;
        loop {
            let view = self.status(key)?;
            let done = match write {
                Write::Paused(true) => view["phase"] == "paused",
                Write::Paused(false) => view["phase"] != "paused",
                Write::Annotation(_) => self.object(key).is_ok_and(|o| {
                    o.command.is_none()
                        && o.resource_version != written_version
                        && o.resource_version != object.resource_version
                }),
            };
            // Refused after all (the rollout moved on since it was checked above).
            let history = view["history"].as_array().cloned().unwrap_or_default();
            let since = last_before.as_ref().and_then(|l| history.iter().rposition(|e| e == l)).map_or(0, |i| i + 1);
            let refused = history[since.min(history.len())..].iter().find(|e| e["event"] == "command-refused");
            if done && let Some(event) = refused {
                return Err(CommandError::Conflict(event["message"].as_str().unwrap_or_default().to_owned()));
            }
            if done || tokio::time::Instant::now() >= end {
                return Ok((view, done));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One term of leadership: when it ends (the future running it is dropped), the drivers stop.
struct Term {
    rollouts: Arc<ClusterRollouts>,
    controller: Arc<Controller>,
}

impl Drop for Term {
    fn drop(&mut self) {
        self.controller.stop();
        let mut leading = self.rollouts.leading.lock();
        if leading.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.controller)) {
            *leading = None;
        }
    }
}
