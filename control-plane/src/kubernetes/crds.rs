//! The `outrider.io/v1` custom resources: one table of kinds, and their
//! CustomResourceDefinitions generated from the same Rust types the policy files are read into
//! (`deploy/kubernetes/crds.yaml` is this module's output; a test fails when it differs).
//!
//! The generated schemas describe structure and types only. Everything else — ranges, formats,
//! references to Services, cross-field rules — is checked by the control plane with the
//! validation files get, and the verdict is written to the object's `Accepted` condition with the
//! message `outrider validate` prints. Defaults are left out of the schemas on purpose: the API
//! server would write them into stored objects, and the policy model keeps its defaults in one
//! place.

use kube::core::schema::{OptionalEnum, OptionalIntOrString, StructuralSchemaRewriter};
use outrider_xds::TrafficPolicySpec;
use outrider_xds::policy::{AuthorizationPolicySpec, RolloutSpec, TelemetrySpec};
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use schemars::transform::AddNullable;
use serde_json::{Value, json};

use super::{GROUP, VERSION};

/// One kind of custom resource.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    /// As in a policy file's `kind`.
    pub kind: &'static str,
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
    /// The JSON schema of `spec`, from the policy model's type.
    pub spec_schema: fn() -> Value,
    /// Applies to the whole mesh: accepted only in the control plane's own namespace.
    pub mesh_wide: bool,
    /// What the control plane writes into `status` besides the `Accepted` condition
    /// (properties of the status schema), and the printer columns that show it.
    pub progress: Option<Progress>,
}

/// The status fields of a kind the control plane runs (a Rollout), and their columns.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub properties: fn() -> Value,
    /// `(name, type, jsonPath)`, shown after `Service`.
    pub columns: &'static [(&'static str, &'static str, &'static str)],
}

impl Kind {
    pub fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }

    /// `plural.group`, the CRD's name.
    pub fn crd_name(&self) -> String {
        format!("{}.{GROUP}", self.plural)
    }
}

/// The kinds, in the order the CRDs are written. A new policy kind is one line here (and its
/// documents' place in `PolicySet`).
pub const KINDS: &[Kind] = &[
    Kind {
        kind: "TrafficPolicy",
        plural: "trafficpolicies",
        short_names: &["tp"],
        spec_schema: spec_schema::<TrafficPolicySpec>,
        mesh_wide: false,
        progress: None,
    },
    Kind {
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        short_names: &["ap"],
        spec_schema: spec_schema::<AuthorizationPolicySpec>,
        mesh_wide: false,
        progress: None,
    },
    Kind {
        kind: "Telemetry",
        plural: "telemetries",
        short_names: &[],
        spec_schema: spec_schema::<TelemetrySpec>,
        mesh_wide: true,
        progress: None,
    },
    Kind {
        kind: "Rollout",
        plural: "rollouts",
        short_names: &["ro"],
        spec_schema: spec_schema::<RolloutSpec>,
        mesh_wide: false,
        progress: Some(Progress {
            properties: rollout_status,
            columns: &[
                ("Phase", "string", ".status.phase"),
                ("Step", "integer", ".status.step"),
                ("Weight", "integer", ".status.weight"),
            ],
        }),
    },
];

/// The kind named `kind`.
pub fn kind(kind: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// A structural OpenAPI v3 schema of `T` (as kube's `CustomResource` derive makes them),
/// without `default`s.
fn spec_schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(AddNullable::default())
        .with_transform(StructuralSchemaRewriter)
        .with_transform(OptionalEnum)
        .with_transform(OptionalIntOrString)
        .into_generator();
    let mut schema = serde_json::to_value(generator.into_root_schema_for::<T>()).unwrap_or(Value::Null);
    if let Some(object) = schema.as_object_mut() {
        // The root's title is the Rust type's name: not part of the API.
        object.remove("title");
    }
    strip(&mut schema, "default");
    schema
}

/// Remove `key` from every object of a schema (not from inside `properties`, where it would
/// be a field name).
fn strip(value: &mut Value, key: &str) {
    match value {
        Value::Object(object) => {
            object.remove(key);
            for (k, v) in object.iter_mut() {
                if k == "properties" {
                    if let Value::Object(properties) = v {
                        properties.values_mut().for_each(|p| strip(p, key));
                    }
                } else {
                    strip(v, key);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| strip(v, key)),
        _ => {}
    }
}

/// `status` of `kind`: the `Accepted` condition (metav1.Condition), and what the control plane
/// writes of a kind it runs.
fn status_schema(kind: &Kind) -> Value {
    let mut schema = json!({
        "type": "object",
        "description": "What the control plane made of the object.",
        "properties": {
            "conditions": {
                "type": "array",
                "description": "Accepted: whether the control plane applies the object; when False, \
                    the message is the one `outrider validate` prints for the same document.",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {
                    "type": "object",
                    "required": ["type", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                        "observedGeneration": {"type": "integer", "format": "int64"},
                        "lastTransitionTime": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    });
    if let (Some(progress), Some(properties)) = (kind.progress, schema["properties"].as_object_mut())
        && let Value::Object(more) = (progress.properties)()
    {
        properties.extend(more);
    }
    schema
}

/// What the leader writes into a Rollout's status (`crate::kubernetes::rollouts`).
fn rollout_status() -> Value {
    let number = |description: &str| json!({"type": "number", "description": description});
    json!({
        "phase": {"type": "string", "enum": ["progressing", "paused", "promoted", "aborted"],
            "description": "Where the rollout is: progressing, paused, promoted or aborted."},
        "step": {"type": "integer", "description": "The current step, 1-based (0 before the first, the number of steps + 1 once promoted)."},
        "steps": {"type": "integer", "description": "How many steps the strategy has."},
        "weight": {"type": "integer", "description": "The canary's weight (percent) on the routes the rollout runs."},
        "preview": {"type": "boolean", "description": "A blue/green preview: only requests with the preview headers reach the canary."},
        "message": {"type": "string", "description": "What it is doing now."},
        "reason": {"type": "string", "description": "Why it was aborted."},
        "failedChecks": {"type": "integer", "description": "Failed checks so far."},
        "splitWritten": {"type": "boolean", "description": "Whether the TrafficPolicy holds the split of the current step."},
        "trafficPolicy": {"type": "string", "description": "The TrafficPolicy (of this namespace) the split is written to."},
        "configVersion": {"type": "string", "description": "The xDS version of the policy set that carries the split."},
        "lastCheck": {
            "type": "object",
            "description": "The last judged check and the canary's numbers over it.",
            "properties": {
                "at": {"type": "integer", "format": "int64", "description": "Unix milliseconds."},
                "step": {"type": "integer"},
                "passed": {"type": "boolean"},
                "requests": {"type": "integer", "format": "int64"},
                "errors": {"type": "integer", "format": "int64"},
                "successRate": number("Percent."),
                "p99Ms": number("99th percentile latency, milliseconds."),
                "meanMs": number("Mean latency, milliseconds."),
            },
        },
        "state": {
            "type": "object",
            "description": "The controller's state, from which a new leader continues the rollout.",
            "x-kubernetes-preserve-unknown-fields": true,
        },
    })
}

/// The CustomResourceDefinition of `kind`.
pub fn definition(kind: &Kind) -> Value {
    let spec = (kind.spec_schema)();
    let mut columns = Vec::new();
    if spec.pointer("/properties/service").is_some() {
        columns.push(json!({"name": "Service", "type": "string", "jsonPath": ".spec.service"}));
    }
    for (name, type_, path) in kind.progress.map_or(&[][..], |p| p.columns) {
        columns.push(json!({"name": name, "type": type_, "jsonPath": path}));
    }
    columns.push(json!({"name": "Accepted", "type": "string",
        "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}));
    columns.push(json!({"name": "Reason", "type": "string",
        "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].reason"}));
    columns.push(json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}));
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name(),
            "labels": {"app.kubernetes.io/part-of": "outrider"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": format!("{}List", kind.kind),
                "plural": kind.plural,
                "singular": kind.singular(),
                "shortNames": kind.short_names,
                "categories": ["outrider"],
            },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": format!("An Outrider {}: the document of a policy file, as a Kubernetes object.", kind.kind),
                    "required": ["spec"],
                    "properties": {
                        "spec": spec,
                        "status": status_schema(kind),
                    },
                }},
            }],
        },
    })
}

/// Every CRD as one YAML stream (`deploy/kubernetes/crds.yaml`).
pub fn manifests() -> String {
    let mut out = String::from(
        "# Generated by the control plane from the policy model (control-plane/src/kubernetes/crds.rs);\n\
         # do not edit. Regenerate: OUTRIDER_UPDATE_CRDS=1 cargo test -p outrider-control-plane crds\n",
    );
    for kind in KINDS {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&definition(kind)).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/crds.yaml");

    #[test]
    fn crds_yaml_is_the_generated_one() {
        let generated = manifests();
        if std::env::var_os("OUTRIDER_UPDATE_CRDS").is_some() {
            std::fs::create_dir_all(std::path::Path::new(PATH).parent().unwrap()).unwrap();
            std::fs::write(PATH, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(PATH).unwrap_or_default();
        assert!(
            on_disk == generated,
            "deploy/kubernetes/crds.yaml differs from the policy model's CRDs; regenerate it with \
             OUTRIDER_UPDATE_CRDS=1 cargo test -p outrider-control-plane crds"
        );
    }

    #[test]
    fn schemas_are_structural_and_follow_the_policy_model() {
        let tp = definition(kind("TrafficPolicy").unwrap());
        let spec = &tp["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        // Field names in the files' spelling, types from the Rust types.
        assert_eq!(spec["properties"]["service"]["type"], "string");
        assert_eq!(spec["required"], json!(["service"]));
        assert_eq!(spec["properties"]["retries"]["properties"]["attempts"]["type"], "integer");
        assert_eq!(spec["properties"]["connectTimeout"]["type"], "string");
        let mut balancers: Vec<&str> =
            spec["properties"]["loadBalancer"]["enum"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        balancers.sort_unstable();
        assert_eq!(balancers, ["p2c-ewma", "random", "round-robin"]);
        assert!(spec["properties"]["routes"]["items"]["properties"]["match"].is_object());
        let text = tp.to_string();
        // Structural: no $ref, no additionalProperties: false, no defaults written by the server.
        for forbidden in ["$ref", "\"additionalProperties\":false", "\"default\"", "$schema"] {
            assert!(!text.contains(forbidden), "{forbidden} in {text}");
        }
    }

    #[test]
    fn the_rollout_crd_takes_the_policy_files_spec_and_shows_phase_step_and_weight() {
        let ro = definition(kind("Rollout").unwrap());
        let version = &ro["spec"]["versions"][0];
        let schema = &version["schema"]["openAPIV3Schema"]["properties"];
        let spec = &schema["spec"];
        let mut required: Vec<&str> = spec["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        required.sort_unstable();
        assert_eq!(required, ["canary", "service", "stable", "strategy"]);
        assert_eq!(spec["properties"]["paused"]["type"], "boolean");
        assert_eq!(spec["properties"]["interval"]["type"], "string");
        let strategy = &spec["properties"]["strategy"]["properties"];
        assert_eq!(strategy["canary"]["properties"]["steps"]["items"]["type"], "integer");
        assert_eq!(strategy["blueGreen"]["properties"]["previewHeaders"]["type"], "object");
        assert_eq!(spec["properties"]["analysis"]["properties"]["maxP99Latency"]["type"], "string");
        let status = &schema["status"]["properties"];
        assert!(status["conditions"].is_object(), "the Accepted condition too");
        assert_eq!(status["phase"]["enum"], json!(["progressing", "paused", "promoted", "aborted"]));
        assert_eq!(status["state"]["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(version["subresources"], json!({"status": {}}));
        let columns: Vec<&str> =
            version["additionalPrinterColumns"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(columns, ["Service", "Phase", "Step", "Weight", "Accepted", "Reason", "Age"]);
        assert_eq!(ro["spec"]["names"]["shortNames"], json!(["ro"]));
        // The other kinds' status is the condition alone.
        let tp = definition(kind("TrafficPolicy").unwrap());
        let tp_status = &tp["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(tp_status.as_object().unwrap().keys().collect::<Vec<_>>(), ["conditions"]);
    }
}
