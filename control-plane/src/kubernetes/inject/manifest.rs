//! `outrider inject -f FILE`: Kubernetes YAML in, injected YAML out. Every document of a
//! multi-document stream is read; the pod templates of Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, ReplicationControllers, Jobs and CronJobs, and Pods themselves, get what the
//! webhook gives a pod ([`super::inject`], the same code); every other document is passed
//! through. A `List` is walked item by item.

use serde::Deserialize as _;
use serde_json::Value;

use super::{InjectConfig, InjectError, Outcome, Skip, inject};

/// What happened to one document (or one item of a `List`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// 1-based index of the document in the stream.
    pub document: usize,
    pub kind: String,
    pub name: String,
    pub outcome: DocOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocOutcome {
    Injected,
    Skipped(Skip),
    /// Not a Pod and has no pod template: passed through.
    NotAWorkload,
}

/// Why a stream could not be injected. Nothing is written when any document fails.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {document}: not valid YAML: {reason}")]
    Yaml { document: usize, reason: String },
    #[error("document {document} ({kind}/{name}): {field}: {reason}")]
    Template { document: usize, kind: String, name: String, field: &'static str, reason: String },
    #[error("document {document} ({kind}/{name}): {error}")]
    Inject { document: usize, kind: String, name: String, error: InjectError },
}

/// Injects every workload of `text` (YAML, one or more documents); returns the documents as
/// YAML and a report per document.
pub fn inject_stream(text: &str, config: &InjectConfig) -> Result<(String, Vec<Report>), ManifestError> {
    let mut out = String::new();
    let mut reports = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let mut value = Value::deserialize(doc).map_err(|e| ManifestError::Yaml { document, reason: e.to_string() })?;
        if value.is_null() {
            continue; // an empty document (a stray `---`)
        }
        inject_object(&mut value, document, config, &mut reports)?;
        let yaml =
            serde_yaml_ng::to_string(&value).map_err(|e| ManifestError::Yaml { document, reason: e.to_string() })?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&yaml);
    }
    Ok((out, reports))
}

/// Where a kind keeps its pod template; `None`: it has none.
fn template_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn inject_object(
    value: &mut Value,
    document: usize,
    config: &InjectConfig,
    reports: &mut Vec<Report>,
) -> Result<(), ManifestError> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    if kind == "List" {
        if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_object(item, document, config, reports)?;
            }
        }
        return Ok(());
    }
    let Some(path) = template_path(&kind) else {
        reports.push(Report { document, kind, name, outcome: DocOutcome::NotAWorkload });
        return Ok(());
    };
    let Some(template) = value.pointer_mut(path).filter(|t| t.is_object()) else {
        let field = if kind == "CronJob" { "spec.jobTemplate.spec.template" } else { "spec.template" };
        return Err(ManifestError::Template { document, kind, name, field, reason: "missing or not an object".into() });
    };
    let outcome = match inject(template, config) {
        Ok(Outcome::Injected) => DocOutcome::Injected,
        Ok(Outcome::Skipped(why)) => DocOutcome::Skipped(why),
        Err(error) => return Err(ManifestError::Inject { document, kind, name, error }),
    };
    reports.push(Report { document, kind, name, outcome });
    Ok(())
}
