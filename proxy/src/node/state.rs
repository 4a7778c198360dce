//! The node's workloads kept across restarts: a JSON file written (atomically: a temporary file
//! in the same directory, then a rename) after every add and remove, and read when the proxy
//! starts, which serves each workload again without its node agent adding it.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::WorkloadSpec;

/// The file format's version; a file of another version is not read.
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("node state {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("node state {path}: not a workload list: {reason}")]
    Format { path: String, reason: String },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    workloads: Vec<WorkloadSpec>,
}

/// Beside the workload API's socket: `<socket>.workloads.json`. Like the socket (and the
/// network namespaces under `/var/run/netns`) it survives a restart of the proxy, not of the
/// machine.
pub fn default_path(socket: &Path) -> PathBuf {
    let mut name = socket.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".workloads.json");
    socket.with_file_name(name)
}

/// The workloads of `path`; none when it does not exist.
pub fn load(path: &Path) -> Result<Vec<WorkloadSpec>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(StateError::Io { path: path.display().to_string(), error }),
    };
    let format = |reason: String| StateError::Format { path: path.display().to_string(), reason };
    let file: File = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
    if file.version != VERSION {
        return Err(format(format!("version {} (this proxy reads version {VERSION})", file.version)));
    }
    Ok(file.workloads)
}

/// Replace `path` with `workloads`: readers see the old list or the new one, never a part.
pub fn save(path: &Path, workloads: &[WorkloadSpec]) -> Result<(), StateError> {
    use std::io::Write as _;
    let io = |error| StateError::Io { path: path.display().to_string(), error };
    let text = serde_json::to_vec_pretty(&File { version: VERSION, workloads: workloads.to_vec() })
        .map_err(|e| StateError::Format { path: path.display().to_string(), reason: e.to_string() })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io)?;
    f.write_all(&text).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename is durable only once the directory is: a crash right after it must not bring
    // back the previous list.
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(netns: &str) -> WorkloadSpec {
        WorkloadSpec {
            netns: netns.into(),
            namespace: "shop".into(),
            service_account: "reviews".into(),
            service: "reviews".into(),
            labels: [("version".to_owned(), "v2".to_owned())].into(),
            address: Some("10.1.2.3".parse().unwrap()),
            port: Some(9080),
        }
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "outrider-node-state-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn workloads_round_trip_and_a_missing_file_is_none() {
        let d = dir();
        let path = d.join("sub/node.sock.workloads.json");
        assert!(load(&path).unwrap().is_empty());
        let list = vec![spec("/var/run/netns/a"), spec("/proc/7/ns/net")];
        save(&path, &list).unwrap();
        assert_eq!(load(&path).unwrap(), list);
        save(&path, &list[1..]).unwrap();
        assert_eq!(load(&path).unwrap(), list[1..]);
        assert!(!path.with_extension("json.tmp").exists(), "the temporary file is renamed into place");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_or_foreign_file_is_an_error_naming_it() {
        let d = dir();
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("state.json");
        for (text, says) in [
            ("{\"version\": 1, \"workloads\": [", "not a workload list"),
            ("{\"version\": 2, \"workloads\": []}", "version 2"),
            ("{\"version\": 1, \"workloads\": [{\"netns\": \"/x\"}]}", "missing field"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()) && e.contains(says), "{text}: {e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_default_is_beside_the_socket() {
        assert_eq!(
            default_path(Path::new("/var/run/outrider/node.sock")),
            Path::new("/var/run/outrider/node.sock.workloads.json")
        );
    }
}
