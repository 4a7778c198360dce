//! Istio's own Go HBONE implementation (`istio.io/istio/pkg/hbone`) as a peer: the small
//! program in `tests/interop/istio-hbone/` (its `go.mod` pins the Istio version, [`ISTIO`]),
//! built with the local `go` into the target directory, then run in `dial` or `serve` mode.
//!
//! Go ≥ 1.26 is needed (the `go` line of Istio's `go.mod`); the modules come from the Go module
//! proxy, or from the module cache `.ci/run` fills (`go mod download`), so a build needs no
//! network once they are there.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// The `istio.io/istio` version of `tests/interop/istio-hbone/go.mod` (a pseudo-version: Istio
/// tags no Go module releases).
pub const ISTIO: &str = "v0.0.0-20260827124520-eed52ebb66ad";

/// The program's source directory.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/istio-hbone")
}

/// The `go` command: `$OUTRIDER_GO`, else `go` on `PATH`.
fn go() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OUTRIDER_GO") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join("go")).find(|p| p.is_file())
}

/// The built program, or why there is none (for [`crate::skip`]). Built once per test process
/// into `target/<profile>/istio-hbone/` (beside the test executables' directory); Go's build
/// cache makes a rebuild of an unchanged program take a second or two.
pub fn binary() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|why| format!("no Istio HBONE peer, skipping the interop test: {why}")))
        .clone()
}

fn build() -> Result<PathBuf, String> {
    let go = go().ok_or("Go is not installed (`go` not on PATH, OUTRIDER_GO unset)")?;
    let exe = std::env::current_exe().map_err(|e| format!("the test executable's path: {e}"))?;
    // target/<profile>/deps/<test> → target/<profile>/istio-hbone/
    let dir =
        exe.parent().and_then(Path::parent).ok_or("no target directory above the test executable")?.join("istio-hbone");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Built under a name of its own, then renamed: test processes running at once never see a
    // half-written binary.
    let tmp = dir.join(format!("istio-hbone.{}", std::process::id()));
    let out = std::process::Command::new(&go)
        .current_dir(source_dir())
        .args(["build", "-trimpath", "-o"])
        .arg(&tmp)
        .arg(".")
        // The versions of go.mod and go.sum exactly, never an update.
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", go.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`go build` of {} failed (Go ≥ 1.26 and istio.io/istio@{ISTIO} from the module proxy or cache are \
             needed; `.ci/run` downloads them):\n{}",
            source_dir().display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bin = dir.join("istio-hbone");
    std::fs::rename(&tmp, &bin).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    Ok(bin)
}

/// What a `dial` run printed up to its `done` (or `error`) line.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// `key value` lines of stdout, in order.
    pub facts: Vec<(String, String)>,
    pub stdout: String,
}

impl Run {
    /// The value of the first line `key …`.
    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The exchange ran to its end (`done ok`).
    pub fn done(&self) -> bool {
        self.fact("done") == Some("ok")
    }
}

/// Starts `cmd` with its stdout read as lines (stderr shows in the test's output).
fn spawn(mut cmd: Command) -> (Child, mpsc::UnboundedReceiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).kill_on_drop(true).spawn().expect("start istio-hbone");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, lines)
}

/// A running `istio-hbone dial` (killed on drop). After its exchange it waits for its stdin
/// to close ([`Dial::finish`]), so that the frames Istio's dialer sends last still go out.
#[derive(Debug)]
pub struct Dial {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// What it printed so far.
    seen: Run,
}

/// Starts `istio-hbone dial ARGS`.
pub fn dial(bin: &Path, args: &[&str]) -> Dial {
    let mut cmd = Command::new(bin);
    cmd.arg("dial").args(args).stdin(Stdio::piped());
    let (mut child, lines) = spawn(cmd);
    let stdin = child.stdin.take();
    Dial { child, stdin, lines, seen: Run::default() }
}

impl Dial {
    /// Reads its output up to a line `key …` (or `error …`, or the end of its output), bounded
    /// by the test deadline; what it printed so far.
    pub async fn until(&mut self, key: &str) -> &Run {
        let (lines, seen) = (&mut self.lines, &mut self.seen);
        crate::wait::within(&format!("istio-hbone dial to print `{key}`"), async {
            while let Some(line) = lines.recv().await {
                seen.stdout.push_str(&line);
                seen.stdout.push('\n');
                let Some((k, v)) = line.split_once(' ') else { continue };
                seen.facts.push((k.to_owned(), v.to_owned()));
                if k == key || k == "error" {
                    return;
                }
            }
        })
        .await;
        &self.seen
    }

    /// Its output up to the `done` or `error` line, or the end of its output.
    pub async fn run(&mut self) -> Run {
        self.until("done").await.clone()
    }

    /// Lets a run started with `-pause` go on.
    pub async fn resume(&mut self) {
        use tokio::io::AsyncWriteExt as _;
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(b"go\n").await.expect("write to istio-hbone's stdin");
        stdin.flush().await.expect("flush istio-hbone's stdin");
    }

    /// Closes its stdin and waits for it to exit; whether it succeeded.
    pub async fn finish(mut self) -> bool {
        drop(self.stdin.take());
        crate::wait::within("istio-hbone dial to exit", self.child.wait())
            .await
            .expect("wait for istio-hbone")
            .success()
    }
}

/// A running `istio-hbone serve` (killed on drop), with its stdout as lines.
#[derive(Debug)]
pub struct Server {
    pub addr: std::net::SocketAddr,
    lines: mpsc::UnboundedReceiver<String>,
    _child: Child,
}

impl Server {
    /// Starts `istio-hbone serve ARGS` and waits for its `listening` line.
    pub async fn start(bin: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("serve").args(args).stdin(Stdio::null());
        let (child, mut lines) = spawn(cmd);
        let first = crate::wait::within("istio-hbone serve to listen", lines.recv()).await;
        let first = first.expect("istio-hbone serve exited before listening (its stderr is above)");
        let addr = first
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("istio-hbone serve did not start: {first}"));
        Self { addr, lines, _child: child }
    }

    /// The next stdout line (bounded by the test deadline).
    pub async fn next_line(&mut self) -> String {
        crate::wait::within("a line from istio-hbone serve", self.lines.recv()).await.expect("istio-hbone serve exited")
    }
}
