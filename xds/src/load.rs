//! Reading policy files: YAML documents → typed documents, with serde errors made readable.

use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::policy::{
    API_VERSION, AuthorizationPolicy, KINDS, Metadata, PolicySet, Rollout, Service, Telemetry, TrafficPolicy,
};
use crate::validate::{self, PolicyError, PolicyErrors};

/// Where a document came from, for error messages.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub(crate) file: String,
    pub(crate) document: usize,
    pub(crate) kind: Option<String>,
    pub(crate) name: Option<String>,
}

impl Origin {
    /// An error about this document.
    pub(crate) fn error(&self, field: Option<String>, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.file.clone(),
            document: Some(self.document),
            kind: self.kind.clone(),
            name: self.name.clone(),
            field,
            message: message.into(),
        }
    }

    /// `file document N` as people count (from 1).
    pub(crate) fn describe(&self) -> String {
        format!("{} document {}", self.file, self.document + 1)
    }
}

/// A document that deserialized; it still has to be validated.
// Lives only while a set is loaded, a handful at a time: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(crate) enum Document {
    Service(Service),
    TrafficPolicy(TrafficPolicy),
    AuthorizationPolicy(AuthorizationPolicy),
    Telemetry(Telemetry),
    Rollout(Rollout),
}

/// The documents of one or more files, plus what went wrong reading them.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) documents: Vec<(Origin, Document)>,
    /// (kind, name) of documents that were present but did not deserialize, so that references
    /// to them do not produce a second, misleading error.
    pub(crate) broken: Vec<(String, String)>,
    pub(crate) errors: Vec<PolicyError>,
}

/// Parse + validate YAML text; `source` is the file name used in messages.
pub fn load_str(source: &str, text: &str) -> Result<PolicySet, PolicyErrors> {
    let mut parsed = Parsed::default();
    parse_str(source, text, &mut parsed);
    validate::validate(parsed)
}

/// Read the file (a read error is a [`PolicyErrors`] with one entry naming the file), then
/// [`load_str`].
pub fn load_file(path: &Path) -> Result<PolicySet, PolicyErrors> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&source, &text),
        Err(err) => Err(PolicyErrors::from(PolicyError::file(&source, format!("cannot read the policy file: {err}")))),
    }
}

/// Read every `*.yaml` / `*.yml` file of a directory (sorted by name) and validate all their
/// documents as one set.
pub fn load_dir(path: &Path) -> Result<PolicySet, PolicyErrors> {
    let source = path.display().to_string();
    let entries = std::fs::read_dir(path).map_err(|err| {
        PolicyErrors::from(PolicyError::file(&source, format!("cannot read the policy directory: {err}")))
    })?;
    let mut parsed = Parsed::default();
    let mut files = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let file = entry.path();
                let is_yaml =
                    file.extension().and_then(|ext| ext.to_str()).is_some_and(|ext| ext == "yaml" || ext == "yml");
                if is_yaml && file.is_file() {
                    files.push(file);
                }
            }
            Err(err) => {
                parsed.errors.push(PolicyError::file(&source, format!("cannot list the policy directory: {err}")))
            }
        }
    }
    files.sort();
    for file in files {
        let name = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => parse_str(&name, &text, &mut parsed),
            Err(err) => parsed.errors.push(PolicyError::file(&name, format!("cannot read the policy file: {err}"))),
        }
    }
    validate::validate(parsed)
}

/// Adds the documents of one file to `parsed`.
pub(crate) fn parse_str(source: &str, text: &str, parsed: &mut Parsed) {
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(err) => {
                parsed.errors.push(PolicyError {
                    document: Some(index),
                    ..PolicyError::file(source, format!("invalid YAML: {err}"))
                });
                // The YAML stream cannot be trusted past a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        parse_document(source, index, value, parsed);
    }
}

/// The envelope every document shares; `spec` is decoded once the kind is known.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Value,
}

fn parse_document(source: &str, index: usize, value: Value, parsed: &mut Parsed) {
    let mut origin = Origin {
        file: source.to_owned(),
        document: index,
        kind: value.get("kind").and_then(Value::as_str).map(str::to_owned),
        name: value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(str::to_owned),
    };
    let mark_broken = |parsed: &mut Parsed, origin: &Origin| {
        if let (Some(kind), Some(name)) = (&origin.kind, &origin.name) {
            parsed.broken.push((kind.clone(), name.clone()));
        }
    };
    if !value.is_mapping() {
        parsed.errors.push(origin.error(None, "a document must be a mapping with apiVersion, kind, metadata and spec"));
        return;
    }
    let envelope: Envelope = match decode(value, "") {
        Ok(envelope) => envelope,
        Err((field, message)) => {
            parsed.errors.push(origin.error(Some(field), message));
            mark_broken(parsed, &origin);
            return;
        }
    };
    origin.kind = Some(envelope.kind.clone());
    origin.name = Some(envelope.metadata.name.clone());
    // Checked here so that a name is reported even when the spec does not deserialize.
    let metadata = &envelope.metadata;
    validate::check_dns_label(&origin, "metadata.name", &metadata.name, &mut parsed.errors);
    validate::check_dns_label(&origin, "metadata.namespace", &metadata.namespace, &mut parsed.errors);
    if envelope.api_version != API_VERSION {
        parsed.errors.push(origin.error(
            Some("apiVersion".into()),
            format!("unsupported apiVersion \"{}\": use \"{API_VERSION}\"", envelope.api_version),
        ));
    }
    let metadata = envelope.metadata;
    let document =
        match envelope.kind.as_str() {
            "Service" => decode(envelope.spec, "spec").map(|spec| Document::Service(Service { metadata, spec })),
            "TrafficPolicy" => {
                decode(envelope.spec, "spec").map(|spec| Document::TrafficPolicy(TrafficPolicy { metadata, spec }))
            }
            "AuthorizationPolicy" => decode(envelope.spec, "spec")
                .map(|spec| Document::AuthorizationPolicy(AuthorizationPolicy { metadata, spec })),
            "Telemetry" => decode(envelope.spec, "spec").map(|spec| Document::Telemetry(Telemetry { metadata, spec })),
            "Rollout" => decode(envelope.spec, "spec").map(|spec| Document::Rollout(Rollout { metadata, spec })),
            other => {
                parsed.errors.push(origin.error(
                    Some("kind".into()),
                    format!("unknown kind \"{other}\": expected one of {}", KINDS.join(", ")),
                ));
                return;
            }
        };
    match document {
        Ok(document) => parsed.documents.push((origin, document)),
        Err((field, message)) => {
            parsed.errors.push(origin.error(Some(field), message));
            mark_broken(parsed, &origin);
        }
    }
}

/// Deserializes `value`, returning (field path, message) on failure; `prefix` is the path of
/// `value` inside the document.
fn decode<T: serde::de::DeserializeOwned>(value: Value, prefix: &str) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let mut path = prefix.to_owned();
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key } | serde_path_to_error::Segment::Enum { variant: key } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        readable(path, err.inner().to_string())
    })
}

/// Rewrites serde's messages into the policy's wording: field names without backticks, and a
/// missing field named in the path rather than in the message.
fn readable(path: String, message: String) -> (String, String) {
    let join = |path: &str, field: &str| {
        if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") }
    };
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        return (join(&path, field), "required field is missing".to_owned());
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let expected = rest.split_once(", expected ").map(|(_, e)| e).unwrap_or("");
        let message = if expected.is_empty() || expected == "there are no fields" {
            "unknown field".to_owned()
        } else {
            format!("unknown field, expected one of {}", one_of(expected))
        };
        return (path, message);
    }
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((value, expected)) = rest.split_once("`, expected ")
    {
        let message = format!("unknown value \"{value}\", expected one of {}", one_of(expected));
        return (path, message);
    }
    let field = if path.is_empty() { "document".to_owned() } else { path };
    (field, message)
}

/// serde's "`a`", "`a` or `b`", "one of `a`, `b`" → "a, b".
fn one_of(expected: &str) -> String {
    expected.trim_start_matches("one of ").replace(" or ", ", ").replace('`', "")
}
