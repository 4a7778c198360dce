//! The `outrider.io/v1` objects of the cluster → the policy documents in force, and a verdict
//! per object (its `Accepted` condition).
//!
//! Each object is validated on its own, as the document it is (`apiVersion`, `kind`,
//! `metadata.name`, `metadata.namespace`, `spec`) beside the discovered Services, by the same
//! code that validates files: its errors are the ones `outrider validate` prints for that
//! document. One object's error never keeps another out (in a file set, one error rejects the
//! set; in a cluster, teams share the mesh). Then, oldest first, accepted objects join the set;
//! one that would take the place of an earlier one (a second TrafficPolicy for a Service, a
//! second Telemetry) is refused with reason `Conflict`.
//!
//! `spec.service` names a Kubernetes Service of the object's own namespace (a policy cannot
//! reach into another team's namespace); the object applies to every routed port of it. A
//! Rollout releases a Service of one port, and is judged after every other object, together
//! with the accepted TrafficPolicy of its Service (the routes it names must be that policy's).
//! Services are validated without their endpoints: which pods are up changes by the second, and
//! a canary split whose pods are not up yet must not drop the whole policy.

use std::collections::{BTreeMap, HashMap};

use kube::api::DynamicObject;
use outrider_xds::sources::{Source, load_sources_with};
use outrider_xds::{PolicyErrors, PolicySet, Service};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::crds::Kind;
use super::discovery::Discovered;
use super::store::{Compact, ObjectKey};

/// The condition every object gets.
pub const ACCEPTED: &str = "Accepted";

/// A condition as in `status.conditions` (metav1.Condition).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub last_transition_time: String,
}

/// What is kept of an `outrider.io` object.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyObject {
    pub generation: i64,
    /// `metadata.creationTimestamp` (RFC 3339): older objects win conflicts.
    pub created: String,
    pub spec: Value,
    /// Its `Accepted` condition as stored (status is written only when it would change).
    pub accepted: Option<Condition>,
}

impl Compact for PolicyObject {
    /// A status write is not a configuration change.
    fn same_config(&self, other: &Self) -> bool {
        self.generation == other.generation && self.created == other.created && self.spec == other.spec
    }
}

pub fn compact_object(object: &DynamicObject) -> Option<PolicyObject> {
    let accepted = object
        .data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok())
        .find(|c| c.type_ == ACCEPTED);
    Some(PolicyObject {
        generation: object.metadata.generation.unwrap_or(0),
        created: object.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
        spec: object.data.get("spec").cloned().unwrap_or(Value::Null),
        accepted,
    })
}

/// The control plane's verdict on one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub generation: i64,
    pub accepted: bool,
    /// `Accepted`, `Invalid`, `Conflict` or `WrongNamespace`.
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    fn accepted(generation: i64) -> Self {
        Self { generation, accepted: true, reason: "Accepted", message: "applied to the mesh".to_owned() }
    }

    fn rejected(generation: i64, reason: &'static str, message: String) -> Self {
        Self { generation, accepted: false, reason, message }
    }
}

/// `(kind, namespace, name)` of an object.
pub type VerdictKey = (&'static str, String, String);

/// The set in force and every object's verdict.
#[derive(Debug, Default)]
pub struct Assembled {
    pub set: PolicySet,
    pub verdicts: BTreeMap<VerdictKey, Verdict>,
}

/// `field: message` per error, one per line: what `outrider validate` prints after the file and
/// document of each error.
pub fn message_of(errors: &PolicyErrors) -> String {
    let mut lines: Vec<String> = Vec::new();
    for e in errors {
        let line = match &e.field {
            Some(field) => format!("{field}: {}", e.message),
            None => e.message.clone(),
        };
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    lines.join("\n")
}

/// The set of the cluster: discovered Services plus the accepted objects. `objects` are the
/// objects of each kind; `root_namespace` is the control plane's (mesh-wide kinds live there).
pub fn assemble(
    discovered: Discovered,
    objects: &[(&'static Kind, &HashMap<ObjectKey, PolicyObject>)],
    root_namespace: &str,
) -> Assembled {
    let mut ordered: Vec<(&'static Kind, &ObjectKey, &PolicyObject)> =
        objects.iter().flat_map(|(kind, map)| map.iter().map(move |(key, object)| (*kind, key, object))).collect();
    // Validation sees the Services without endpoints (see the module's doc); a copy of every
    // Service, made only when there is an object to validate.
    let bare = if ordered.is_empty() { BTreeMap::new() } else { bare_services(&discovered) };
    // Oldest first; Rollouts after everything else (they are judged with their TrafficPolicy).
    ordered.sort_by(|a, b| {
        (a.0.kind == ROLLOUT, &a.2.created, &a.1, a.0.kind).cmp(&(b.0.kind == ROLLOUT, &b.2.created, &b.1, b.0.kind))
    });

    let mut set = PolicySet { services: discovered.services, ..PolicySet::default() };
    let mut verdicts = BTreeMap::new();
    // The accepted TrafficPolicy of each Kubernetes Service: (namespace, Service) → object.
    let mut policies: HashMap<ObjectKey, (&'static Kind, &str, &PolicyObject)> = HashMap::new();
    for (kind, (namespace, name), object) in ordered {
        let companion = match kind.kind {
            ROLLOUT => service_of(object).and_then(|s| policies.get(&(namespace.clone(), s.to_owned()))).copied(),
            _ => None,
        };
        let judged = judge(kind, namespace, name, object, companion, &discovered.by_kube_name, &bare, root_namespace);
        let verdict = match judged {
            Ok(parts) => match absorb_all(&mut set, parts) {
                Ok(()) => {
                    if kind.kind == "TrafficPolicy"
                        && let Some(service) = service_of(object)
                    {
                        policies.insert((namespace.clone(), service.to_owned()), (kind, name.as_str(), object));
                    }
                    Verdict::accepted(object.generation)
                }
                Err(conflict) => Verdict::rejected(object.generation, "Conflict", conflict),
            },
            Err((reason, message)) => Verdict::rejected(object.generation, reason, message),
        };
        verdicts.insert((kind.kind, namespace.clone(), name.clone()), verdict);
    }
    Assembled { set, verdicts }
}

/// The kind judged last.
const ROLLOUT: &str = "Rollout";

fn service_of(object: &PolicyObject) -> Option<&str> {
    object.spec.get("service").and_then(Value::as_str)
}

/// Judge one object as [`assemble`] would (without the conflicts with other objects): `Err` with
/// the reason and message of its `Accepted` condition.
pub fn check(
    discovered: &Discovered,
    kind: &Kind,
    namespace: &str,
    name: &str,
    spec: Value,
    root_namespace: &str,
) -> Result<(), (&'static str, String)> {
    let bare = bare_services(discovered);
    let object = PolicyObject { generation: 0, created: String::new(), spec, accepted: None };
    judge(kind, namespace, name, &object, None, &discovered.by_kube_name, &bare, root_namespace).map(|_| ())
}

/// The discovered Services without their endpoints (see the module's doc).
fn bare_services(discovered: &Discovered) -> BTreeMap<String, Service> {
    discovered
        .services
        .iter()
        .map(|(k, s)| {
            let mut s = s.clone();
            s.spec.endpoints.clear();
            (k.clone(), s)
        })
        .collect()
}

/// All of `parts` or none.
fn absorb_all(set: &mut PolicySet, parts: Vec<PolicySet>) -> Result<(), String> {
    let mut trial = PolicySet::default();
    for part in parts {
        trial.absorb(part)?;
    }
    // `absorb` checks everything before it changes anything.
    set.absorb(trial)
}

/// Validate one object (with `companion`, the TrafficPolicy a Rollout acts on, as another
/// document of the same set): the validated set of each Outrider Service it applies to, or why
/// not.
#[allow(clippy::too_many_arguments)]
fn judge(
    kind: &Kind,
    namespace: &str,
    name: &str,
    object: &PolicyObject,
    companion: Option<(&Kind, &str, &PolicyObject)>,
    by_kube_name: &HashMap<ObjectKey, Vec<String>>,
    services: &BTreeMap<String, Service>,
    root_namespace: &str,
) -> Result<Vec<PolicySet>, (&'static str, String)> {
    if kind.mesh_wide && namespace != root_namespace {
        return Err((
            "WrongNamespace",
            format!(
                "a {} applies to the whole mesh, so it is read only from the control plane's namespace \
                 \"{root_namespace}\"; create it there",
                kind.kind
            ),
        ));
    }
    // The Outrider Services `spec.service` stands for; `None`: leave the document as written.
    let targets: Vec<Option<String>> = match object.spec.get("service").and_then(Value::as_str) {
        Some(service) if service.contains('.') => {
            return Err((
                "Invalid",
                format!(
                    "spec.service: \"{service}\": name a Service of this object's namespace (\"{namespace}\") \
                     by its name alone; a policy cannot apply to another namespace's Service"
                ),
            ));
        }
        Some(service) => match by_kube_name.get(&(namespace.to_owned(), service.to_owned())) {
            Some(names) => names.iter().cloned().map(Some).collect(),
            // Not discovered: validation names it as it would in a file.
            None => vec![Some(format!("{service}.{namespace}"))],
        },
        None => vec![None],
    };
    if kind.kind == ROLLOUT && targets.len() > 1 {
        let service = service_of(object).unwrap_or_default();
        let ports: Vec<String> = targets.iter().flatten().cloned().collect();
        return Err((
            "Invalid",
            format!(
                "spec.service: Service \"{service}\" has several ports ({}); a Rollout releases a Service of one \
                 port: give the new version a Service of its own port, or roll it out with a TrafficPolicy split",
                ports.join(", ")
            ),
        ));
    }
    let mut parts = Vec::new();
    let mut errors = PolicyErrors::default();
    for target in targets {
        let document = |kind: &Kind, name: &str, spec: &Value| {
            let mut spec = spec.clone();
            if let (Some(target), Some(fields)) = (&target, spec.as_object_mut()) {
                fields.insert("service".to_owned(), Value::String(target.clone()));
            }
            let document = json!({
                "apiVersion": format!("{}/{}", super::GROUP, super::VERSION),
                "kind": kind.kind,
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            });
            Source::new(format!("{}/{namespace}/{name}", kind.plural), document.to_string())
        };
        let mut sources = vec![document(kind, name, &object.spec)];
        if let Some((kind, name, object)) = companion {
            sources.push(document(kind, name, &object.spec));
        }
        match load_sources_with(services, &sources) {
            Ok(mut part) => {
                if companion.is_some() {
                    // The companion is in the set already: only the object's own documents join.
                    part.traffic_policies.clear();
                }
                parts.push(part);
            }
            Err(e) => errors.0.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(("Invalid", message_of(&errors)));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests;
