//! Reading policy files: YAML documents → typed documents. Every error of a file is reported at
//! once (see [`recover`]), in the policy's words, with its line and column (see [`locate`]).

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::policy::{
    API_VERSION, AuthorizationPolicy, KINDS, Metadata, PolicySet, Rollout, Service, Telemetry, TrafficPolicy,
};
use crate::validate::{self, PolicyError, PolicyErrors};

/// Line and column of a field path in the text.
mod locate;
/// serde's messages in the policy's words, and "did you mean".
mod messages;
/// Decoding that collects every error instead of stopping at the first.
mod recover;

pub(crate) use recover::{Seg, parse as parse_path};

/// Where a document came from, for error messages.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub(crate) file: String,
    pub(crate) document: usize,
    pub(crate) kind: Option<String>,
    pub(crate) name: Option<String>,
    /// Finds line and column of a field in the source text.
    locator: Option<Arc<locate::Locator>>,
}

impl Origin {
    /// An error about this document (its field, when given, is located in the text).
    pub(crate) fn error(&self, field: Option<String>, message: impl Into<String>) -> PolicyError {
        let path = field.as_deref().map(recover::parse).unwrap_or_default();
        let position = self.locator.as_ref().and_then(|l| l.locate(self.document, &path));
        PolicyError {
            file: self.file.clone(),
            document: Some(self.document),
            kind: self.kind.clone(),
            name: self.name.clone(),
            field,
            message: message.into(),
            line: position.map(|p| p.line),
            column: position.map(|p| p.column),
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
    /// Documents that decoded only once their errors were repaired (already reported), with
    /// the repaired paths: checked on their own, never used by other documents.
    pub(crate) repaired: Vec<(Origin, Document, Vec<Vec<Seg>>)>,
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
    let locator = Arc::new(locate::Locator::new(text));
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(err) => {
                let location = err.location();
                let message = err.to_string();
                // The position goes in front, as for every other error.
                let message = match &location {
                    Some(l) => message.replacen(&format!(" at line {} column {}", l.line(), l.column()), "", 1),
                    None => message,
                };
                parsed.errors.push(PolicyError {
                    document: Some(index),
                    line: location.as_ref().map(|l| l.line()),
                    column: location.as_ref().map(|l| l.column()),
                    ..PolicyError::file(source, format!("invalid YAML: {message}"))
                });
                // The YAML stream cannot be trusted past a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        parse_document(source, index, value, &locator, parsed);
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

fn parse_document(source: &str, index: usize, value: Value, locator: &Arc<locate::Locator>, parsed: &mut Parsed) {
    let mut origin = Origin {
        file: source.to_owned(),
        document: index,
        kind: value.get("kind").and_then(Value::as_str).map(str::to_owned),
        name: value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(str::to_owned),
        locator: Some(locator.clone()),
    };
    if !value.is_mapping() {
        parsed.errors.push(origin.error(None, "a document must be a mapping with apiVersion, kind, metadata and spec"));
        return;
    }
    let mut repaired = Vec::new();
    let Some(envelope) = decode::<Envelope>(value, &[], &origin, parsed, &mut repaired) else {
        mark_broken(&origin, parsed);
        return;
    };
    let intact = |path: &[&str]| {
        let path: Vec<Seg> = path.iter().map(|key| Seg::Key((*key).to_owned())).collect();
        !repaired.iter().any(|r| recover::within(&path, r))
    };
    let kind_intact = intact(&["kind"]);
    let spec_intact = intact(&["spec"]);
    let metadata = envelope.metadata;
    if kind_intact {
        origin.kind = Some(envelope.kind.clone());
    }
    // Checked here so that a name is reported even when the spec does not decode.
    if intact(&["metadata", "name"]) {
        origin.name = Some(metadata.name.clone());
        validate::check_dns_label(&origin, "metadata.name", &metadata.name, &mut parsed.errors);
    }
    if intact(&["metadata", "namespace"]) {
        validate::check_dns_label(&origin, "metadata.namespace", &metadata.namespace, &mut parsed.errors);
    }
    if intact(&["apiVersion"]) && envelope.api_version != API_VERSION {
        parsed.errors.push(origin.error(
            Some("apiVersion".into()),
            format!("unsupported apiVersion \"{}\": use \"{API_VERSION}\"", envelope.api_version),
        ));
    }
    if !kind_intact || !spec_intact {
        mark_broken(&origin, parsed);
        return;
    }
    let spec = envelope.spec;
    let at = [Seg::Key("spec".into())];
    let document =
        match envelope.kind.as_str() {
            "Service" => decode(spec, &at, &origin, parsed, &mut repaired)
                .map(|spec| Document::Service(Service { metadata, spec })),
            "TrafficPolicy" => decode(spec, &at, &origin, parsed, &mut repaired)
                .map(|spec| Document::TrafficPolicy(TrafficPolicy { metadata, spec })),
            "AuthorizationPolicy" => decode(spec, &at, &origin, parsed, &mut repaired)
                .map(|spec| Document::AuthorizationPolicy(AuthorizationPolicy { metadata, spec })),
            "Telemetry" => decode(spec, &at, &origin, parsed, &mut repaired)
                .map(|spec| Document::Telemetry(Telemetry { metadata, spec })),
            "Rollout" => decode(spec, &at, &origin, parsed, &mut repaired)
                .map(|spec| Document::Rollout(Rollout { metadata, spec })),
            other => {
                let kinds: Vec<String> = KINDS.iter().map(|k| (*k).to_owned()).collect();
                let mut message = format!("unknown kind \"{other}\": expected one of {}", KINDS.join(", "));
                if let Some(best) = messages::did_you_mean(other, &kinds) {
                    message.push_str(&format!("; did you mean \"{best}\"?"));
                }
                parsed.errors.push(origin.error(Some("kind".into()), message));
                return;
            }
        };
    match document {
        Some(document) if repaired.is_empty() => parsed.documents.push((origin, document)),
        Some(document) => {
            mark_broken(&origin, parsed);
            parsed.repaired.push((origin, document, repaired));
        }
        None => mark_broken(&origin, parsed),
    }
}

/// Remembers (kind, name) of a document that has errors, so that references to it do not
/// produce a second, misleading error.
fn mark_broken(origin: &Origin, parsed: &mut Parsed) {
    if let (Some(kind), Some(name)) = (&origin.kind, &origin.name) {
        parsed.broken.push((kind.clone(), name.clone()));
    }
}

/// Decodes `value` (found at `at` in the document), reporting every error and adding the
/// repaired paths to `repaired`.
fn decode<T: DeserializeOwned>(
    value: Value,
    at: &[Seg],
    origin: &Origin,
    parsed: &mut Parsed,
    repaired: &mut Vec<Vec<Seg>>,
) -> Option<T> {
    let rounds = recover::max_rounds(origin.locator.as_ref().map_or(0, |l| l.text_len()));
    let decoded = recover::decode::<T>(value, rounds);
    let full = |path: &[Seg]| at.iter().chain(path).cloned().collect::<Vec<Seg>>();
    for error in decoded.errors {
        let path = full(&error.path);
        let field = if path.is_empty() { "document".to_owned() } else { recover::display(&path) };
        parsed.errors.push(origin.error(Some(field), error.message));
    }
    repaired.extend(decoded.repaired.iter().map(|path| full(path)));
    decoded.value
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
