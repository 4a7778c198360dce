//! Where the rollout controller keeps its state and writes its splits in Kubernetes mode.
//!
//! - **State**: each Rollout's status holds the controller's state (`status.state`) and what
//!   people read of it (`phase`, `step`, `weight`, `message`, `reason`, `lastCheck`, …). It is
//!   written with a JSON patch that sets the `resourceVersion` last seen, so the API server
//!   refuses it (409) when the object changed since: the object is read again and, when its
//!   state is still the one this controller knew (someone edited the spec, the leader wrote the
//!   `Accepted` condition), the write is made again over the new version; when its state is
//!   another one (another replica led meanwhile), that one is taken over instead.
//! - **Split**: the TrafficPolicy of the Rollout's Service — the one in force, else the object
//!   named after the Service, created when there is none — is read, given the split of the
//!   position ([`traffic_policy_document`]: only the routes the rollout owns change), judged as
//!   the control plane would judge the object (a result that would be rejected stops the
//!   rollout with the message), and patched over the version read; a conflict reads it again.
//!   The write is done when the API server has it; the controller then waits (a bounded time)
//!   for this replica's policy set to carry it, and records that set's xDS version.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use outrider_xds::policy::SplitEntry;
use outrider_xds::translate::rollout::traffic_policy_document;
use outrider_xds::{PolicySet, Position, Rollout};
use serde_json::{Value, json};

use super::{split, state_of};
use crate::kubernetes::Cluster;
use crate::kubernetes::crds;
use crate::rollout::state::RolloutState;
use crate::rollout::{Backend, SplitError, StoreError, Superseded};

/// Writes of one object tried before giving up for now (each conflict reads it again).
const ATTEMPTS: usize = 5;
/// How long a written split may take to reach this replica's policy set.
const IN_FORCE: Duration = Duration::from_secs(10);

/// What this controller last saw of a Rollout object.
#[derive(Clone, Debug)]
struct Known {
    resource_version: String,
    status: Value,
    state: Option<RolloutState>,
}

impl Known {
    fn of(object: &DynamicObject) -> Self {
        let status = object.data.get("status").cloned().unwrap_or(Value::Null);
        Self {
            resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
            state: state_of(&status),
            status,
        }
    }
}

/// The rollout controller's backend on a cluster.
#[derive(Debug)]
pub struct ClusterBackend {
    cluster: Arc<Cluster>,
    known: tokio::sync::Mutex<HashMap<String, Known>>,
}

impl ClusterBackend {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster, known: tokio::sync::Mutex::new(HashMap::new()) }
    }

    fn api(&self, kind: &str, namespace: &str) -> Api<DynamicObject> {
        super::kind_api(&self.cluster, kind, namespace)
    }

    /// The Rollout object `key` now (`None`: it does not exist).
    async fn read(&self, key: &str) -> Result<Option<Known>, StoreError> {
        let error = |reason: String| StoreError::Status { key: key.to_owned(), reason };
        let (namespace, name) = split(key).ok_or_else(|| error("not a NAMESPACE/NAME key".into()))?;
        let api = self.api(super::KIND, namespace);
        let object = api.get_opt(name).await.map_err(|e| error(e.to_string()))?;
        Ok(object.as_ref().map(Known::of))
    }

    /// Patch `fields` into the status of `key` over the version `known` was read at.
    async fn patch_status(&self, key: &str, known: &Known, fields: &Value) -> Result<DynamicObject, kube::Error> {
        let (namespace, name) = split(key).unwrap_or_default();
        let api = self.api(super::KIND, namespace);
        let mut ops =
            vec![json!({"op": "replace", "path": "/metadata/resourceVersion", "value": known.resource_version})];
        match known.status.as_object() {
            Some(status) => {
                for (field, value) in fields.as_object().into_iter().flatten() {
                    if !value.is_null() {
                        ops.push(json!({"op": "add", "path": format!("/status/{field}"), "value": value}));
                    } else if status.contains_key(field) {
                        ops.push(json!({"op": "remove", "path": format!("/status/{field}")}));
                    }
                }
            }
            None => {
                let present: serde_json::Map<String, Value> = fields
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                ops.push(json!({"op": "add", "path": "/status", "value": present}));
            }
        }
        let ops: json_patch::Patch = serde_json::from_value(Value::Array(ops)).map_err(kube::Error::SerdeError)?;
        api.patch_status(name, &PatchParams::default(), &Patch::Json::<()>(ops)).await
    }

    /// The TrafficPolicy object the split of `rollout` lives in: the one in force for its
    /// Service, else the one named after the Service.
    fn policy_name(set: &PolicySet, rollout: &Rollout) -> String {
        set.traffic_policy(&rollout.spec.service)
            .filter(|p| p.metadata.namespace == rollout.metadata.namespace)
            .map_or_else(|| kube_service(rollout), |p| p.metadata.name.clone())
    }

    /// Wait (a bounded time) until this replica's policy set carries `routes` for `service`;
    /// that set's xDS version.
    async fn in_force(&self, service: &str, routes: &Value) -> Option<String> {
        let wanted: Vec<(String, Vec<SplitEntry>)> = routes
            .as_array()?
            .iter()
            .map(|r| {
                let name = r["name"].as_str()?.to_owned();
                Some((name, serde_json::from_value(r["split"].clone()).ok()?))
            })
            .collect::<Option<_>>()?;
        let carries = |set: &Arc<PolicySet>| {
            set.traffic_policy(service).is_some_and(|p| {
                p.spec.routes.len() == wanted.len()
                    && wanted.iter().all(|(name, split)| {
                        p.spec.routes.iter().any(|r| r.name.as_deref() == Some(name) && r.split == *split)
                    })
            })
        };
        let mut sets = self.cluster.sets();
        let set = tokio::time::timeout(IN_FORCE, async { sets.wait_for(carries).await.map(|s| s.clone()).ok() })
            .await
            .ok()
            .flatten()?;
        Some(outrider_xds::translate(&set).version)
    }
}

/// The Kubernetes Service of a rollout (its Outrider service is `NAME.NAMESPACE`).
fn kube_service(rollout: &Rollout) -> String {
    let suffix = format!(".{}", rollout.metadata.namespace);
    rollout.spec.service.strip_suffix(&suffix).unwrap_or(&rollout.spec.service).to_owned()
}

/// What the status shows of `state` (`view`: the controller's view of it); `null` removes a
/// field.
fn status_fields(state: &RolloutState, view: Option<&Value>, traffic_policy: &str) -> Value {
    let view = view.cloned().unwrap_or(Value::Null);
    json!({
        "phase": state.phase.as_str(),
        "step": view["step"],
        "steps": view["steps"].as_array().map(Vec::len),
        "weight": view["weight"],
        "preview": view["preview"],
        "message": view["message"].as_str().filter(|m| !m.is_empty()),
        "reason": state.reason,
        "failedChecks": state.failed_checks,
        "splitWritten": state.split_written,
        "trafficPolicy": traffic_policy,
        "configVersion": state.config_version,
        // (A number the check did not have is left out: the schema's numbers are not nullable.)
        "lastCheck": state.last_check.as_ref().map(|c| {
            let mut check = json!(c);
            if let Some(fields) = check.as_object_mut() {
                fields.retain(|_, v| !v.is_null());
            }
            check
        }),
        "state": state,
    })
}

/// Whether the stored status already shows `fields` (numbers compared as numbers: the API
/// server may write `100.0` as `100`).
fn shows(status: &Value, fields: &Value) -> bool {
    fields.as_object().into_iter().flatten().all(|(k, v)| match status.get(k) {
        None => v.is_null(),
        Some(stored) => same(stored, v),
    })
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            // A null is an absent field.
            let present = |m: &serde_json::Map<String, Value>| m.iter().filter(|(_, v)| !v.is_null()).count();
            present(x) == present(y)
                && y.iter().filter(|(_, v)| !v.is_null()).all(|(k, v)| x.get(k).is_some_and(|w| same(w, v)))
        }
        _ => a == b,
    }
}

impl Backend for ClusterBackend {
    fn stored<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<RolloutState>, StoreError>> {
        async move {
            let Some(known) = self.read(key).await? else { return Ok(None) };
            let state = known.state.clone();
            self.known.lock().await.insert(key.to_owned(), known);
            Ok(state)
        }
        .boxed()
    }

    fn wants_views(&self) -> bool {
        true
    }

    fn store<'a>(
        &'a self,
        states: &'a BTreeMap<String, RolloutState>,
        views: &'a BTreeMap<String, Value>,
    ) -> BoxFuture<'a, Result<Superseded, StoreError>> {
        async move {
            let set = self.cluster.sets().borrow().clone();
            let mut known = self.known.lock().await;
            known.retain(|k, _| states.contains_key(k));
            let mut superseded = Vec::new();
            for (key, state) in states {
                let traffic_policy = set.rollouts.get(key).map(|r| Self::policy_name(&set, r)).unwrap_or_default();
                let fields = status_fields(state, views.get(key), &traffic_policy);
                let mut current = match known.get(key) {
                    Some(k) => k.clone(),
                    None => match self.read(key).await? {
                        Some(k) => k,
                        None => continue,
                    },
                };
                if shows(&current.status, &fields) {
                    known.insert(key.clone(), current);
                    continue;
                }
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match self.patch_status(key, &current, &fields).await {
                        Ok(object) => {
                            known.insert(key.clone(), Known::of(&object));
                            break;
                        }
                        Err(kube::Error::Api(s)) if (s.code == 409 || s.code == 422) && attempts < ATTEMPTS => {
                            let Some(now) = self.read(key).await? else {
                                known.remove(key);
                                break;
                            };
                            if now.state != current.state {
                                // Another writer's state: taken over, not overwritten.
                                superseded.push((key.clone(), now.state.clone()));
                                known.insert(key.clone(), now);
                                break;
                            }
                            current = now;
                        }
                        Err(kube::Error::Api(s)) if s.is_not_found() => {
                            known.remove(key);
                            break;
                        }
                        Err(e) => return Err(StoreError::Status { key: key.clone(), reason: e.to_string() }),
                    }
                }
            }
            Ok(superseded)
        }
        .boxed()
    }

    fn write_split<'a>(
        &'a self,
        rollout: &'a Rollout,
        position: Position,
        current: &'a (dyn Fn() -> bool + Send + Sync),
    ) -> BoxFuture<'a, Result<Option<String>, SplitError>> {
        async move {
            let namespace = rollout.metadata.namespace.as_str();
            let service = kube_service(rollout);
            let name = Self::policy_name(&self.cluster.sets().borrow(), rollout);
            let kind = crds::kind("TrafficPolicy").ok_or_else(|| SplitError::Fatal("no TrafficPolicy kind".into()))?;
            let api = self.api(kind.kind, namespace);
            let what = format!("TrafficPolicy {namespace}/{name}");
            let retry = |e: kube::Error| SplitError::Retry(format!("cannot write the split of {what}: {e}"));
            // The documents name the Kubernetes Service, as the objects do.
            let mut local = rollout.clone();
            local.spec.service = service.clone();
            for _ in 0..ATTEMPTS {
                let object = api.get_opt(&name).await.map_err(retry)?;
                if let Some(other) = object.as_ref().and_then(|o| o.data["spec"]["service"].as_str())
                    && other != service
                {
                    return Err(SplitError::Fatal(format!(
                        "{what} is the policy of Service \"{other}\", not of \"{service}\"; rename one of them"
                    )));
                }
                let document = object.as_ref().map(|o| {
                    json!({"apiVersion": "outrider.io/v1", "kind": kind.kind,
                        "metadata": {"name": name, "namespace": namespace}, "spec": o.data["spec"]})
                });
                let next = traffic_policy_document(document.as_ref(), &local, position);
                let routes = next["spec"]["routes"].clone();
                if document.as_ref().is_some_and(|d| d["spec"]["routes"] == routes) {
                    return Ok(self.in_force(&rollout.spec.service, &routes).await);
                }
                self.cluster
                    .check(kind, namespace, &name, next["spec"].clone())
                    .await
                    .map_err(|message| SplitError::Fatal(format!("{what} would not be valid: {message}")))?;
                if !current() {
                    return Ok(None);
                }
                let written = match object {
                    None => {
                        let created: DynamicObject = serde_json::from_value(next.clone())
                            .map_err(|e| SplitError::Fatal(format!("{what}: {e}")))?;
                        api.create(&PostParams::default(), &created).await.map(|_| ())
                    }
                    Some(o) => {
                        let ops = json!([
                            {"op": "replace", "path": "/metadata/resourceVersion", "value": o.metadata.resource_version},
                            {"op": "add", "path": "/spec/routes", "value": routes},
                        ]);
                        let ops: json_patch::Patch =
                            serde_json::from_value(ops).map_err(|e| SplitError::Fatal(format!("{what}: {e}")))?;
                        api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(ops)).await.map(|_| ())
                    }
                };
                match written {
                    Ok(()) => {
                        tracing::info!(rollout = %rollout.metadata.name, namespace, policy = %name,
                            weight = rollout.spec.canary_weight(position), "wrote the split");
                        return Ok(self.in_force(&rollout.spec.service, &routes).await);
                    }
                    // Changed or created meanwhile: read it again.
                    Err(kube::Error::Api(s)) if s.code == 409 || s.is_not_found() || s.is_already_exists() => {}
                    Err(e) => return Err(retry(e)),
                }
            }
            Err(SplitError::Retry(format!("{what} kept changing while the split was written; trying again")))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_compared_as_numbers_and_nulls_as_absent() {
        let stored = json!({"phase": "progressing", "lastCheck": {"successRate": 100, "p99Ms": 1.5}});
        assert!(shows(
            &stored,
            &json!({"phase": "progressing", "reason": null, "lastCheck": {"successRate": 100.0, "p99Ms": 1.5, "meanMs": null}})
        ));
        assert!(!shows(&stored, &json!({"phase": "paused"})));
        assert!(!shows(&stored, &json!({"reason": "x"})));
        assert!(!shows(&stored, &json!({"lastCheck": {"successRate": 99.5, "p99Ms": 1.5}})));
    }
}
