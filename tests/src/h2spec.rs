//! Running the h2spec HTTP/2 conformance tool against a listener and reading its summary.
//!
//! The binary is looked up at `$OUTRIDER_H2SPEC`, then in the tools cache `.ci/run` fills
//! (`${OUTRIDER_TOOLS:-/var/cache/outrider-tools}/h2spec-VERSION/h2spec`), then on `PATH`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// The h2spec release `.ci/run` installs (the newest the Go module proxy serves).
pub const VERSION: &str = "2.2.1";
/// How long one whole h2spec run may take: it waits up to `-o` seconds (2 by default) in the
/// tests that expect no answer, so a run takes well under a minute; this only bounds a hang.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The h2spec binary, if installed.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OUTRIDER_H2SPEC") {
        return Some(PathBuf::from(p));
    }
    let tools =
        std::env::var_os("OUTRIDER_TOOLS").map_or_else(|| PathBuf::from("/var/cache/outrider-tools"), PathBuf::from);
    let cached = tools.join(format!("h2spec-{VERSION}")).join("h2spec");
    if cached.is_file() {
        return Some(cached);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join("h2spec")).find(|p| p.is_file())
}

/// The counts h2spec prints at the end of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub total: u32,
    pub passed: u32,
    pub skipped: u32,
    pub failed: u32,
}

/// One run: the summary and the whole report (to show which tests failed).
#[derive(Debug)]
pub struct Run {
    pub summary: Summary,
    pub report: String,
}

/// Run h2spec (plaintext, prior knowledge) against `addr`; `strict` adds `--strict`.
pub async fn run(bin: &PathBuf, addr: SocketAddr, strict: bool) -> Run {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if strict {
        cmd.arg("--strict");
    }
    let out = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("h2spec did not finish within {RUN_LIMIT:?}"))
        .expect("run h2spec");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let summary = parse_summary(&report).unwrap_or_else(|| panic!("no summary line in h2spec's output:\n{report}"));
    Run { summary, report }
}

/// Reads `146 tests, 145 passed, 0 skipped, 1 failed`.
pub fn parse_summary(report: &str) -> Option<Summary> {
    let line = report.lines().rev().find(|l| l.contains(" tests, ") && l.contains(" failed"))?;
    let mut nums = line.split(", ").map(|part| part.trim().split(' ').next().and_then(|n| n.parse::<u32>().ok()));
    let total = nums.next()??;
    let passed = nums.next()??;
    let skipped = nums.next()??;
    let failed = nums.next()??;
    Some(Summary { total, passed, skipped, failed })
}

/// The failed tests' part of a report (h2spec lists them after "Failures:").
pub fn failures(report: &str) -> &str {
    report.find("Failures:").map_or("", |i| &report[i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_line() {
        let report = "Generic tests\n  1. ok\n\nFinished in 3.1 seconds\n146 tests, 140 passed, 1 skipped, 5 failed\n";
        assert_eq!(parse_summary(report), Some(Summary { total: 146, passed: 140, skipped: 1, failed: 5 }));
        assert_eq!(parse_summary("nothing here"), None);
    }
}
