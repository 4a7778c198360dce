//! Throw-away network namespaces for interception tests (root, `ip`, `iptables`).
//! Everything runs inside the namespace through `ip netns exec`, so its traffic
//! stays on the namespace's loopback.
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::wait;

/// Why the namespace tests cannot run here, or `None` when they can.
pub fn unsupported() -> Option<String> {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("not root".into());
    }
    for (tool, arg) in [("ip", "-V"), ("iptables", "--version"), ("python3", "--version")] {
        let ok = std::process::Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// A network namespace, deleted on drop (even when the test panics).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    python: String,
}

impl Netns {
    /// Create a uniquely named namespace with its loopback up.
    pub fn create() -> Result<Self, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("outrider-t{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        run_ok(std::process::Command::new("ip").args(["netns", "add", &name]))?;
        // From here on the guard exists, so a failure below still deletes the namespace.
        let ns = Self { name, python: python_path() };
        run_ok(std::process::Command::new("ip").args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// `ip netns exec NAME program`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Python 3 inside the namespace (the interpreter itself, not a pyenv shim).
    pub fn python(&self) -> Command {
        let mut cmd = self.command(&self.python);
        cmd.arg("-u");
        cmd
    }

    /// Run a Python script inside the namespace to its exit.
    pub async fn run_python(&self, script: &str, args: &[&str]) -> Output {
        let mut cmd = self.python();
        cmd.arg("-c").arg(script).args(args);
        crate::binary::run_to_exit(cmd).await
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn run_ok(cmd: &mut std::process::Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn python_path() -> String {
    std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// A background process whose output lines (stdout and stderr) can be awaited;
/// killed on drop.
#[derive(Debug)]
pub struct Background {
    _child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Background {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = tx.send(l);
            }
        });
        tokio::spawn(async move {
            let mut r = BufReader::new(err).lines();
            while let Ok(Some(l)) = r.next_line().await {
                let _ = tx2.send(l);
            }
        });
        Self { _child: child, lines, seen: Vec::new() }
    }

    /// Wait for a line containing `needle`.
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        let what = format!("a line containing {needle:?}");
        let found = wait::within(&what, async {
            while let Some(l) = self.lines.recv().await {
                self.seen.push(l.clone());
                if l.contains(needle) {
                    return Some(l);
                }
            }
            None
        })
        .await;
        found.unwrap_or_else(|| {
            panic!("the process ended without printing {needle:?}; output:\n{}", self.seen.join("\n"))
        })
    }
}

/// A TCP echo app for a namespace: `PORT BIND_ADDR` (`0.0.0.0` or `::`); it reads until the
/// caller half-closes, answers `echo:` and what it read, prints `echo ready` once listening and
/// `recv <bytes>` for the first bytes of each connection (so a test knows one reached it).
pub const TCP_ECHO_PY: &str = r#"
import socket, sys, threading
bind = sys.argv[2]
s = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((bind, int(sys.argv[1])))
s.listen(64)
print("echo ready", flush=True)
def serve(c):
    try:
        data = b""
        while True:
            d = c.recv(65536)
            if not d:
                break
            if not data:
                print("recv", d.decode(errors="replace"), flush=True)
            data += d
        c.sendall(b"echo:" + data)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A TCP client: `HOST PORT MESSAGE`; sends the message, half-closes, prints the answer (or
/// `ERR <exception>`).
pub const TCP_CLIENT_PY: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    c.sendall(sys.argv[3].encode())
    c.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        out += d
    sys.stdout.write(out.decode())
except Exception as e:
    sys.stdout.write("ERR " + type(e).__name__)
"#;
