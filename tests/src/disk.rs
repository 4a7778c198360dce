//! Disk faults for a data directory: a small tmpfs of a fixed size mounted on a temp dir (root
//! only), that a test fills up or remounts read-only, unmounted on drop. Root ignores file
//! permissions, so `chmod` cannot make a directory unwritable for it; a read-only mount can.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::TempDir;

/// A tmpfs mounted on a fresh temp dir; unmounted (lazily, so a process still holding a file
/// cannot keep it) and removed on drop.
#[derive(Debug)]
pub struct SmallDisk {
    dir: TempDir,
    filler: PathBuf,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl SmallDisk {
    /// Mount a tmpfs of `size` (e.g. `"2m"`); `Err` says why it cannot (not root, no mount).
    pub fn mount(size: &str) -> Result<Self, String> {
        let uid = Command::new("id").arg("-u").output().map_err(|e| format!("cannot run id: {e}"))?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("mounting a tmpfs needs root".into());
        }
        let dir = TempDir::new("outrider-disk");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path()))?;
        let filler = dir.path().join("filler");
        Ok(Self { dir, filler })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill every free byte with a file of its own (`dd` until ENOSPC).
    pub fn fill(&self) {
        // dd stops with "No space left on device" and a non-zero status: that is the point.
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k", "status=none"])
            .arg(format!("of={}", self.filler.display()))
            .status()
            .expect("run dd");
        let free = Command::new("df").args(["--output=avail", "-B1"]).arg(self.path()).output().expect("run df");
        let avail = String::from_utf8_lossy(&free.stdout);
        assert_eq!(avail.lines().nth(1).map(str::trim), Some("0"), "the small disk is not full: {avail}");
    }

    /// Free what [`SmallDisk::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(&self.filler).expect("remove the filler");
    }

    /// Remount read-only (`true`) or read-write (`false`).
    pub fn read_only(&self, ro: bool) {
        let opts = if ro { "remount,ro" } else { "remount,rw" };
        run(Command::new("mount").args(["-o", opts]).arg(self.path())).expect("remount the small disk");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
