//! Where configuration comes from. Today: the `--policy` file, translated to
//! Envoy resources in-process by `outrider-xds` and applied through the same
//! snapshot builder the xDS client will use. Reloaded on SIGHUP and when the
//! file changes; a bad file is reported and the previous config stays.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Configuration from an xDS server (`--xds-address`).
pub mod xds;

use crate::state::{Builder, Rejection, Store};
use crate::telemetry::metrics::{Metrics, TypeLabels, XdsLabels, version_value};

/// How often the policy file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

const TYPES: [&str; 4] = ["listener", "route", "cluster", "endpoint"];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Policy(#[from] outrider_xds::PolicyErrors),
    #[error("the translated resources were rejected:\n{}", .0.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n"))]
    Rejected(Vec<Rejection>),
}

/// The policy file, applied to a store.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    store: Arc<Store>,
    builder: Builder,
    metrics: Metrics,
    applied_version: parking_lot::Mutex<Option<String>>,
    /// When the file started failing to load, while it does.
    failing_since: parking_lot::Mutex<Option<SystemTime>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
}

impl FileSource {
    pub fn new(path: PathBuf, store: Arc<Store>, metrics: Metrics) -> Self {
        Self {
            path,
            store,
            builder: Builder::new(),
            metrics,
            applied_version: parking_lot::Mutex::new(None),
            failing_since: parking_lot::Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Load, translate, build and apply. On error nothing changes.
    pub fn load(&self) -> Result<Outcome, LoadError> {
        let result = self.try_load();
        let result_label = if result.is_ok() { "accepted" } else { "rejected" };
        for t in TYPES {
            self.metrics.xds_updates.get_or_create(&XdsLabels { r#type: t, result: result_label }).inc();
        }
        result
    }

    fn try_load(&self) -> Result<Outcome, LoadError> {
        let set = outrider_xds::load_file(&self.path)?;
        let resources = outrider_xds::translate(&set);
        if self.applied_version.lock().as_deref() == Some(resources.version.as_str()) {
            return Ok(Outcome::Unchanged);
        }
        let (snapshot, rejected) = self.builder.build(&resources);
        if !rejected.is_empty() {
            return Err(LoadError::Rejected(rejected));
        }
        self.store.apply(snapshot);
        let v = version_value(&resources.version);
        for t in TYPES {
            self.metrics.config_version.get_or_create(&TypeLabels { r#type: t }).set(v);
        }
        tracing::info!(file = %self.path.display(), version = %resources.version, "config applied");
        *self.applied_version.lock() = Some(resources.version);
        Ok(Outcome::Applied)
    }

    fn reload(&self, why: &str) {
        let result = self.load();
        // A file that was failing and loads again says so, so that the last line about it is
        // not a stale error.
        let fixed = match &result {
            Ok(_) => self.failing_since.lock().take(),
            Err(_) => {
                self.failing_since.lock().get_or_insert_with(SystemTime::now);
                None
            }
        };
        match (result, fixed) {
            (Ok(Outcome::Applied), None) => tracing::info!(reason = why, "policy file reloaded"),
            (Ok(Outcome::Unchanged), None) => tracing::debug!(reason = why, "policy file unchanged"),
            (Ok(outcome), Some(since)) => {
                let what = match outcome {
                    Outcome::Applied => "policy file reloaded and applied",
                    Outcome::Unchanged => "policy file valid again (the config in force is unchanged)",
                };
                tracing::info!(
                    reason = why,
                    file = %self.path.display(),
                    "{what}; it was failing since {}",
                    crate::telemetry::log::since(since)
                );
            }
            (Err(e), _) => tracing::error!(
                reason = why,
                file = %self.path.display(),
                error = %e,
                "policy file rejected; the previous config stays in force"
            ),
        }
    }

    /// What the file holds now: modification time, length and a hash of the
    /// content (timestamps alone miss a same-length rewrite on coarse clocks).
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        let m = std::fs::metadata(&self.path).ok()?;
        let content = std::fs::read(&self.path).ok()?;
        let mut h: u64 = 0xcbf29ce484222325;
        for b in &content {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        Some(Fingerprint { modified: m.modified().ok(), len: m.len(), hash: h })
    }

    /// Reload when `reload` is notified (SIGHUP, forwarded by the app) and when
    /// the file changes from `initial` (taken before the first load, so no
    /// change made during startup is missed).
    pub async fn watch(self: Arc<Self>, initial: Option<Fingerprint>, reload: Arc<tokio::sync::Notify>) {
        let mut last = initial;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = reload.notified() => {
                    last = self.fingerprint();
                    self.reload("SIGHUP");
                }
                _ = tick.tick() => {
                    let now = self.fingerprint();
                    if now != last {
                        last = now;
                        self.reload("file changed");
                    }
                }
            }
        }
    }
}

/// Identity of the policy file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    hash: u64,
}

/// Turn SIGHUP into a reload request. Installed before the app reports that it
/// is listening, so an early SIGHUP never hits the default (terminate) action.
pub fn forward_sighup(reload: Arc<tokio::sync::Notify>) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload.notify_one();
        }
    });
    Ok(())
}
