//! The durable copy of the API's documents: one JSON file in `--data-dir`, replaced atomically
//! (write a temp file, fsync it, rename it over the old one, fsync the directory) before a write
//! is answered.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name inside the data dir.
pub const FILE: &str = "policies.json";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot write {path}: {source}; is the data dir writable and the disk not full?")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt: {source}; restore it from a backup or move it away")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

/// One stored document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredDoc {
    pub kind: String,
    pub name: String,
    pub resource_version: u64,
    pub document: serde_json::Value,
}

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub revision: u64,
    pub documents: Vec<StoredDoc>,
}

/// The data dir.
#[derive(Clone, Debug)]
pub struct DataDir {
    dir: PathBuf,
}

impl DataDir {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The stored state, or an empty one when nothing was stored yet.
    pub fn load(&self) -> Result<State, PersistError> {
        let path = self.dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| PersistError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(PersistError::Read { path, source }),
        }
    }

    /// Replace the stored state durably. Blocking: call from `spawn_blocking`.
    pub fn store(&self, state: &State) -> Result<(), PersistError> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| PersistError::Write { path: self.dir.join(FILE), source: std::io::Error::other(e) })?;
        self.write_atomic(FILE, &bytes)
    }

    /// Replace `file` in the data dir durably: write a temp file, fsync it, rename it over the
    /// old one, fsync the directory. Blocking.
    pub fn write_atomic(&self, file: &str, bytes: &[u8]) -> Result<(), PersistError> {
        let path = self.dir.join(file);
        let err = |source| PersistError::Write { path: path.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let tmp = self.dir.join(format!(".{file}.tmp"));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            // A half-written temp file (disk full) would keep the space the next write needs.
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("outrider-persist-{}", std::process::id()));
        let data = DataDir::new(dir.clone());
        assert_eq!(data.load().unwrap(), State::default());
        let state = State {
            revision: 3,
            documents: vec![StoredDoc {
                kind: "Service".into(),
                name: "a".into(),
                resource_version: 2,
                document: serde_json::json!({"kind": "Service"}),
            }],
        };
        data.store(&state).unwrap();
        assert_eq!(data.load().unwrap(), state);
        assert!(!dir.join(format!(".{FILE}.tmp")).exists());
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        assert!(matches!(data.load(), Err(PersistError::Corrupt { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
