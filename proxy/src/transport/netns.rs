//! Network namespaces: run a small piece of work — create or bind a socket, start a command —
//! with the calling thread inside another network namespace, then come back (as Istio's ztunnel
//! does in its in-pod mode). A socket keeps the namespace it was created in for its whole life,
//! so accepting, connecting, reading and writing need nothing special afterwards, on any thread.
//!
//! `setns(2)` is per thread: [`Netns::run`] moves only the calling thread and moves it back
//! before returning, so work on other threads never sees the foreign namespace.
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::sched::{CloneFlags, setns};

/// An open network namespace (a file under `/var/run/netns/`, or `/proc/PID/ns/net`).
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
    /// The namespace's inode: two handles are the same namespace when these are equal.
    inode: u64,
}

/// The namespace the process started in (the main thread's, which never moves).
fn home() -> io::Result<&'static File> {
    static HOME: OnceLock<File> = OnceLock::new();
    if let Some(f) = HOME.get() {
        return Ok(f);
    }
    let f = File::open("/proc/self/ns/net")?;
    Ok(HOME.get_or_init(|| f))
}

impl Netns {
    /// Opens `path`; fails unless it is a network namespace this process may enter.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        // A namespace file lives on nsfs; entering it proves it is a network namespace.
        let ns = Self { path: path.to_owned(), file, inode: meta.ino() };
        ns.run(|| ())?;
        Ok(ns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is the namespace the proxy itself runs in (a workload must not be).
    pub fn is_home(&self) -> bool {
        home().and_then(|f| f.metadata()).is_ok_and(|m| m.ino() == self.inode)
    }

    /// Runs `f` with the calling thread inside this namespace, then returns the thread to the
    /// process's own namespace. `Err` when the namespace cannot be entered (`f` did not run).
    ///
    /// If the thread cannot be moved back, the process aborts: a worker thread left in a
    /// workload's namespace would open later connections from the wrong network.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let home = home()?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let out = f();
        if let Err(e) = setns(home, CloneFlags::CLONE_NEWNET) {
            tracing::error!(error = %e, namespace = %self.path.display(), "cannot leave a workload's network namespace; aborting");
            std::process::abort();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_namespace_is_recognised_and_entering_it_works() {
        let ns = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert!(ns.is_home());
        assert_eq!(ns.run(|| 7).unwrap(), 7);
        assert!(Netns::open(Path::new("/proc/self/ns/uts")).is_err(), "not a network namespace");
        assert!(Netns::open(Path::new("/nonexistent/ns")).is_err());
    }
}
