//! The policy documents the control plane serves, from two sources: a watched directory of YAML
//! files (GitOps) and the HTTP API. Every change is validated together with everything else as
//! one set (an invalid change changes nothing), API writes are durable before they are answered,
//! and each API document has a resource version for optimistic concurrency (`If-Match`).

pub mod persist;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outrider_xds::sources::{Source, load_sources};
use outrider_xds::{PolicyError, PolicyErrors, PolicySet};
use serde::Serialize;
use tokio::sync::{Mutex, watch};

use persist::{DataDir, PersistError, State, StoredDoc};

/// How often the policy directory is checked for changes.
pub const DIR_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// (kind, name) of a document.
pub type Key = (String, String);

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Invalid(PolicyErrors),
    #[error(
        "resource version conflict: If-Match {expected:?} but the current version is {actual}; read it again and retry"
    )]
    Conflict { expected: String, actual: u64 },
    #[error("{kind}/{name} not found")]
    NotFound { kind: String, name: String },
    #[error("{kind}/{name} is defined in the policy directory ({file}); change the file instead")]
    OwnedByDir { kind: String, name: String, file: String },
    /// Part of the document is run by something else (a rollout's split).
    #[error("{0}")]
    Owned(String),
    #[error("{0}")]
    Persist(#[from] PersistError),
}

/// Why the control plane cannot start with its stored or watched policies.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Persist(#[from] PersistError),
    #[error("the stored policies in {dir} are not valid:\n{errors}")]
    Stored { dir: String, errors: PolicyErrors },
    #[error("the policy directory is not valid:\n{0}")]
    Dir(PolicyErrors),
}

/// What a write did to one document.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub kind: String,
    pub name: String,
    /// `created`, `updated`, `unchanged` or `deleted`.
    pub action: &'static str,
    pub resource_version: u64,
}

/// The result of a write (or of a dry run).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteOutcome {
    pub revision: u64,
    /// The xDS version of the resulting set (what `GET /v1/status` shows once it is pushed).
    pub config_version: String,
    pub changes: Vec<Change>,
}

/// A document as `GET /v1/policies` lists it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub kind: String,
    pub name: String,
    /// `api` or `file:PATH`.
    pub source: String,
    pub resource_version: u64,
    pub document: serde_json::Value,
}

#[derive(Debug)]
struct Inner {
    dir_sources: Vec<Source>,
    dir_docs: BTreeMap<Key, (String, serde_json::Value)>,
    dir_fingerprint: Option<u64>,
    api: BTreeMap<Key, StoredDoc>,
    revision: u64,
}

/// One document a write changes: its key, what is stored now, what it would become (`None`:
/// absent / deleted).
pub type DocChange<'a> = (&'a Key, Option<&'a serde_json::Value>, Option<&'a serde_json::Value>);

/// Something that runs part of some documents (a rollout runs the split of its service's
/// TrafficPolicy) and refuses writes by anyone else that would change it.
pub trait WriteGuard: Send + Sync + std::fmt::Debug {
    /// `Err(why)` refuses the write (409).
    fn check(&self, changes: &[DocChange<'_>]) -> Result<(), String>;
}

/// The documents, the validated set, and their durable copy.
#[derive(Debug)]
pub struct Policies {
    inner: Mutex<Inner>,
    current: watch::Sender<Arc<PolicySet>>,
    data: DataDir,
    dir: Option<PathBuf>,
    guard: std::sync::OnceLock<Arc<dyn WriteGuard>>,
}

impl Policies {
    /// Restore the stored documents and read the policy directory.
    pub fn open(data: DataDir, dir: Option<PathBuf>) -> Result<Arc<Self>, OpenError> {
        let state = data.load()?;
        let api: BTreeMap<Key, StoredDoc> =
            state.documents.into_iter().map(|d| ((d.kind.clone(), d.name.clone()), d)).collect();
        let (dir_sources, dir_fingerprint) = match &dir {
            Some(d) => {
                let (sources, fp) = read_dir(d).map_err(OpenError::Dir)?;
                (sources, Some(fp))
            }
            None => (Vec::new(), None),
        };
        let stored = stored_sources(&api, None);
        let set = match load_sources(dir_sources.iter().chain(&stored)) {
            Ok(set) => set,
            Err(errors) => {
                // The stored set alone must be valid: it was, when it was written.
                load_sources(&stored)
                    .map_err(|errors| OpenError::Stored { dir: data.path().display().to_string(), errors })?;
                return Err(OpenError::Dir(errors));
            }
        };
        let inner =
            Inner { dir_docs: documents_of(&dir_sources), dir_sources, dir_fingerprint, api, revision: state.revision };
        Ok(Arc::new(Self {
            inner: Mutex::new(inner),
            current: watch::channel(Arc::new(set)).0,
            data,
            dir,
            guard: std::sync::OnceLock::new(),
        }))
    }

    /// Install the guard every API write and delete is checked against (once).
    pub fn set_guard(&self, guard: Arc<dyn WriteGuard>) {
        let _ = self.guard.set(guard);
    }

    fn check_guard(&self, changes: &[DocChange<'_>]) -> Result<(), WriteError> {
        match self.guard.get() {
            Some(guard) => guard.check(changes).map_err(WriteError::Owned),
            None => Ok(()),
        }
    }

    /// No documents, no directory, nothing read from `data` (the Kubernetes mode, where the
    /// cluster holds the policies and API writes are refused).
    pub fn empty(data: DataDir) -> Arc<Self> {
        let inner = Inner {
            dir_sources: Vec::new(),
            dir_docs: BTreeMap::new(),
            dir_fingerprint: None,
            api: BTreeMap::new(),
            revision: 0,
        };
        Arc::new(Self {
            inner: Mutex::new(inner),
            current: watch::channel(Arc::new(PolicySet::default())).0,
            data,
            dir: None,
            guard: std::sync::OnceLock::new(),
        })
    }

    /// The validated set now in force, and its changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicySet>> {
        self.current.subscribe()
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.current.borrow().clone()
    }

    /// Create or replace the documents of `body` (YAML or JSON, one or many documents).
    /// `if_match`: the resource version the writer read (of its one document, or the revision
    /// of the whole store for several). `dry_run` validates and reports without writing.
    pub async fn apply(&self, body: &str, if_match: Option<&str>, dry_run: bool) -> Result<WriteOutcome, WriteError> {
        let request = Source::new("request", body);
        let docs = match split_documents(body) {
            Some(docs) => docs,
            None => {
                return Err(WriteError::Invalid(match load_sources([&request]) {
                    Err(errors) => errors,
                    Ok(_) => PolicyErrors::from(PolicyError::file(
                        "request",
                        "every document needs a kind and a metadata.name",
                    )),
                }));
            }
        };
        let mut inner = self.inner.lock().await;
        if let Some(expected) = if_match {
            let actual = match docs.as_slice() {
                [(key, _)] => inner.api.get(key).map_or(0, |d| d.resource_version),
                _ => inner.revision,
            };
            check_if_match(expected, actual)?;
        }
        let changes: Vec<DocChange<'_>> =
            docs.iter().map(|(key, value)| (key, inner.api.get(key).map(|d| &d.document), Some(value))).collect();
        self.check_guard(&changes)?;
        self.write_docs(&mut inner, docs, &request, dry_run).await
    }

    /// Validate `docs` (from `request`) with everything else and, unless `dry_run`, store them.
    async fn write_docs(
        &self,
        inner: &mut Inner,
        docs: Vec<(Key, serde_json::Value)>,
        request: &Source,
        dry_run: bool,
    ) -> Result<WriteOutcome, WriteError> {
        let replaced: Vec<&Key> = docs.iter().map(|(k, _)| k).collect();
        let stored = stored_sources(&inner.api, Some(&replaced));
        let set =
            load_sources(inner.dir_sources.iter().chain(&stored).chain([request])).map_err(WriteError::Invalid)?;
        let revision = inner.revision + 1;
        let mut next = inner.api.clone();
        let mut changes = Vec::new();
        for (key, value) in docs {
            let (action, resource_version) = match inner.api.get(&key) {
                Some(old) if old.document == value => ("unchanged", old.resource_version),
                Some(_) => ("updated", revision),
                None => ("created", revision),
            };
            changes.push(Change { kind: key.0.clone(), name: key.1.clone(), action, resource_version });
            next.insert(key.clone(), StoredDoc { kind: key.0, name: key.1, resource_version, document: value });
        }
        let changed = changes.iter().any(|c| c.action != "unchanged");
        let config_version = outrider_xds::translate(&set).version;
        if dry_run || !changed {
            return Ok(WriteOutcome { revision: inner.revision, config_version, changes });
        }
        self.commit(inner, next, revision, set).await?;
        Ok(WriteOutcome { revision, config_version, changes })
    }

    /// Read-modify-write of one API document by `owner` (a rollout writing its split): `edit`
    /// gets the stored document (`None` when there is none) and returns the new one, or `None`
    /// to write nothing. Validated with everything else like any write; not checked against
    /// the guard (the owner is the one it protects). A document of the policy directory cannot
    /// be written ([`WriteError::OwnedByDir`]).
    pub async fn write_owned(
        &self,
        kind: &str,
        name: &str,
        owner: &str,
        edit: impl FnOnce(Option<&serde_json::Value>) -> Option<serde_json::Value>,
    ) -> Result<Option<WriteOutcome>, WriteError> {
        let key = (kind.to_owned(), name.to_owned());
        let mut inner = self.inner.lock().await;
        if let Some((file, _)) = inner.dir_docs.get(&key) {
            return Err(WriteError::OwnedByDir { kind: key.0, name: key.1, file: file.clone() });
        }
        let Some(next) = edit(inner.api.get(&key).map(|d| &d.document)) else {
            return Ok(None);
        };
        let request = Source::new(owner, next.to_string());
        self.write_docs(&mut inner, vec![(key, next)], &request, false).await.map(Some)
    }

    /// The stored API document `kind/name`, if any.
    pub async fn document(&self, kind: &str, name: &str) -> Option<serde_json::Value> {
        self.inner.lock().await.api.get(&(kind.to_owned(), name.to_owned())).map(|d| d.document.clone())
    }

    /// Delete one API document; the rest must still be a valid set.
    pub async fn delete(&self, kind: &str, name: &str, if_match: Option<&str>) -> Result<WriteOutcome, WriteError> {
        let key = (kind.to_owned(), name.to_owned());
        let mut inner = self.inner.lock().await;
        let Some(doc) = inner.api.get(&key) else {
            if let Some((file, _)) = inner.dir_docs.get(&key) {
                return Err(WriteError::OwnedByDir {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    file: file.clone(),
                });
            }
            return Err(WriteError::NotFound { kind: kind.to_owned(), name: name.to_owned() });
        };
        if let Some(expected) = if_match {
            check_if_match(expected, doc.resource_version)?;
        }
        self.check_guard(&[(&key, Some(&doc.document), None)])?;
        let stored = stored_sources(&inner.api, Some(&[&key]));
        let set = load_sources(inner.dir_sources.iter().chain(&stored)).map_err(WriteError::Invalid)?;
        let revision = inner.revision + 1;
        let mut next = inner.api.clone();
        next.remove(&key);
        let config_version = outrider_xds::translate(&set).version;
        self.commit(&mut inner, next, revision, set).await?;
        Ok(WriteOutcome {
            revision,
            config_version,
            changes: vec![Change { kind: key.0, name: key.1, action: "deleted", resource_version: revision }],
        })
    }

    /// Persist, then swap in and publish.
    async fn commit(
        &self,
        inner: &mut Inner,
        next: BTreeMap<Key, StoredDoc>,
        revision: u64,
        set: PolicySet,
    ) -> Result<(), WriteError> {
        let state = State { revision, documents: next.values().cloned().collect() };
        let data = self.data.clone();
        tokio::task::spawn_blocking(move || data.store(&state)).await.map_err(|e| PersistError::Write {
            path: self.data.path().to_path_buf(),
            source: std::io::Error::other(e),
        })??;
        inner.api = next;
        inner.revision = revision;
        self.current.send_replace(Arc::new(set));
        Ok(())
    }

    /// The store's revision and the documents matching `kind` / `name` (both optional).
    pub async fn list(&self, kind: Option<&str>, name: Option<&str>) -> (u64, Vec<Listed>) {
        self.list_where(kind, name, None).await
    }

    /// [`Policies::list`], and with `service` only the documents that name it (see
    /// [`names_service`]); the others are not copied.
    pub async fn list_where(
        &self,
        kind: Option<&str>,
        name: Option<&str>,
        service: Option<&str>,
    ) -> (u64, Vec<Listed>) {
        let inner = self.inner.lock().await;
        let matches = |k: &Key, doc: &serde_json::Value| {
            kind.is_none_or(|kind| k.0 == kind)
                && name.is_none_or(|n| k.1 == n)
                && service.is_none_or(|s| names_service(&k.0, &k.1, doc, s))
        };
        let mut out: Vec<Listed> = inner
            .dir_docs
            .iter()
            .filter(|(k, (_, value))| matches(k, value))
            .map(|(k, (file, value))| Listed {
                kind: k.0.clone(),
                name: k.1.clone(),
                source: format!("file:{file}"),
                resource_version: 0,
                document: value.clone(),
            })
            .collect();
        out.extend(inner.api.iter().filter(|(k, d)| matches(k, &d.document)).map(|(k, d)| Listed {
            kind: k.0.clone(),
            name: k.1.clone(),
            source: "api".into(),
            resource_version: d.resource_version,
            document: d.document.clone(),
        }));
        out.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
        (inner.revision, out)
    }

    /// Re-read the policy directory if it changed; a set that does not validate is reported
    /// and the previous one stays in force.
    pub async fn reload_dir(&self) -> Result<bool, PolicyErrors> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let mut inner = self.inner.lock().await;
        let (sources, fingerprint) = read_dir(dir)?;
        if inner.dir_fingerprint == Some(fingerprint) {
            return Ok(false);
        }
        inner.dir_fingerprint = Some(fingerprint);
        let stored = stored_sources(&inner.api, None);
        let set = load_sources(sources.iter().chain(&stored))?;
        inner.dir_docs = documents_of(&sources);
        inner.dir_sources = sources;
        self.current.send_replace(Arc::new(set));
        Ok(true)
    }

    /// Poll the policy directory until the task is dropped.
    pub async fn watch_dir(self: Arc<Self>) {
        if self.dir.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(DIR_POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // While the directory does not validate: since when. Its end is logged, so that the
        // last line about the directory is not a stale error.
        let mut failing_since = None;
        loop {
            tick.tick().await;
            match (self.reload_dir().await, failing_since.take()) {
                (Ok(true), None) => tracing::info!("policy directory changed; new set applied"),
                (Ok(true), Some(since)) => tracing::info!(
                    "policy directory changed; new set applied; it was failing since {}",
                    outrider_proxy::telemetry::log::since(since)
                ),
                // Unchanged (a rejected directory that has not changed since is still failing).
                (Ok(false), since) => failing_since = since,
                (Err(errors), since) => {
                    failing_since = Some(since.unwrap_or_else(std::time::SystemTime::now));
                    tracing::error!(
                        errors = %errors,
                        "policy directory change rejected; the previous set stays in force"
                    );
                }
            }
        }
    }
}

fn check_if_match(expected: &str, actual: u64) -> Result<(), WriteError> {
    let trimmed = expected.trim().trim_start_matches("W/").trim_matches('"');
    if trimmed == "*" || trimmed.parse::<u64>().ok() == Some(actual) {
        return Ok(());
    }
    Err(WriteError::Conflict { expected: expected.to_owned(), actual })
}

/// The API documents as sources (each its own, named after it), minus `except`.
fn stored_sources(api: &BTreeMap<Key, StoredDoc>, except: Option<&[&Key]>) -> Vec<Source> {
    api.iter()
        .filter(|(k, _)| except.is_none_or(|e| !e.contains(k)))
        .map(|((kind, name), d)| Source::new(format!("stored {kind}/{name}"), d.document.to_string()))
        .collect()
}

/// The documents of a YAML/JSON stream with their keys, or `None` when one is not a readable
/// document with a kind and a name (validation then says why).
pub fn split_documents(text: &str) -> Option<Vec<(Key, serde_json::Value)>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_yaml_ng::Value::deserialize(document).ok()?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value).ok()?;
        let kind = json.get("kind")?.as_str()?.to_owned();
        let name = json.get("metadata")?.get("name")?.as_str()?.to_owned();
        out.push(((kind, name), json));
    }
    Some(out)
}

fn documents_of(sources: &[Source]) -> BTreeMap<Key, (String, serde_json::Value)> {
    let mut out = BTreeMap::new();
    for s in sources {
        for (key, value) in split_documents(&s.text).unwrap_or_default() {
            out.insert(key, (s.name.clone(), value));
        }
    }
    out
}

/// The `*.yaml` / `*.yml` files of a directory (sorted) and a hash of names and contents.
fn read_dir(dir: &Path) -> Result<(Vec<Source>, u64), PolicyErrors> {
    let name = dir.display().to_string();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| PolicyErrors::from(PolicyError::file(&name, format!("cannot read the policy directory: {e}"))))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()).is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut sources = Vec::new();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in files {
        let file_name = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|e| {
            PolicyErrors::from(PolicyError::file(&file_name, format!("cannot read the policy file: {e}")))
        })?;
        feed(file_name.as_bytes());
        feed(&[0]);
        feed(text.as_bytes());
        feed(&[0]);
        sources.push(Source::new(file_name, text));
    }
    Ok((sources, hash))
}

/// Whether a document names `service`: the Service of that name, or any document whose
/// `spec.service` it is (its TrafficPolicy, AuthorizationPolicies, Telemetry, Rollout).
pub fn names_service(kind: &str, name: &str, document: &serde_json::Value, service: &str) -> bool {
    (kind == "Service" && name == service) || document["spec"]["service"].as_str() == Some(service)
}

/// The canonical spelling of a kind in a URL (`services`, `service`, `Service` → `Service`).
pub fn canonical_kind(kind: &str) -> Option<&'static str> {
    match kind.to_ascii_lowercase().as_str() {
        "service" | "services" | "svc" => Some("Service"),
        "trafficpolicy" | "trafficpolicies" | "tp" => Some("TrafficPolicy"),
        "authorizationpolicy" | "authorizationpolicies" | "authz" | "ap" => Some("AuthorizationPolicy"),
        "telemetry" | "telemetries" => Some("Telemetry"),
        "rollout" | "rollouts" | "ro" => Some("Rollout"),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
