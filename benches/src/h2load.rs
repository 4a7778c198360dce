//! Closed-loop HTTP/2 (h2c, prior knowledge) and gRPC unary load with h2load
//! (Debian's nghttp2-client), pinned to a core. Latency percentiles come from
//! h2load's per-request log, put through an HDR histogram.
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::latency::{self, Latency};

#[derive(Debug, Clone)]
pub struct H2Result {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub latency: Latency,
}

pub fn available() -> bool {
    std::process::Command::new("h2load").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[derive(Debug, Clone, Copy)]
pub struct H2Load<'a> {
    pub url: &'a str,
    /// `:authority` (outrider routes on it).
    pub authority: Option<&'a str>,
    /// gRPC unary: POST a framed message with gRPC headers.
    pub grpc: bool,
    pub connections: u32,
    /// Concurrent streams per connection.
    pub streams: u32,
    pub dur: Duration,
    pub core: usize,
}

pub async fn run(p: H2Load<'_>, scratch: &Path) -> Result<H2Result> {
    let log = scratch.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = tokio::process::Command::new("taskset");
    cmd.args(["-c", &crate::peers::cpu_list(p.core), "h2load", "-t1"]);
    cmd.args(["-c", &p.connections.to_string(), "-m", &p.streams.to_string()]);
    cmd.args(["-D", &p.dur.as_secs().max(1).to_string()]);
    // One second of unmeasured load first, quick runs too: the connections are made then, so a
    // 1 s measurement on a busy machine (CI's test run) still sees answers.
    cmd.arg("--warm-up-time=1");
    cmd.arg(format!("--log-file={}", log.display()));
    if let Some(a) = p.authority {
        cmd.args(["-H", &format!(":authority: {a}")]);
    }
    if p.grpc {
        let data = scratch.join("grpc-request.bin");
        std::fs::write(&data, crate::upstream::grpc_frame(64))?;
        cmd.arg("-d").arg(&data);
        cmd.args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
    }
    cmd.arg(p.url);
    let out = cmd.output().await.context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed: {}{text}", String::from_utf8_lossy(&out.stderr));
    }
    let mut r = parse(&text)?;
    let mut h = latency::histogram();
    let rows = std::fs::read_to_string(&log).unwrap_or_default();
    for row in rows.lines() {
        let mut cols = row.split('\t');
        let status: u16 = cols.nth(1).and_then(|c| c.trim().parse().ok()).unwrap_or(0);
        let us: u64 = cols.next().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
        if (200..300).contains(&status) {
            let _ = h.record((us * 1000).max(1));
        }
    }
    r.latency = Latency::from_histogram(&h);
    Ok(r)
}

/// Reads `requests: ... succeeded, F failed, E errored, T timeout`, the 2xx
/// count and `finished in Xs, Y req/s`.
pub fn parse(text: &str) -> Result<H2Result> {
    let mut r = H2Result { requests: 0, errors: 0, rps: 0.0, latency: Latency::default() };
    let num_before = |l: &str, word: &str| -> Option<u64> {
        let i = l.find(word)?;
        l[..i].split_whitespace().last()?.trim_end_matches(',').parse().ok()
    };
    let mut ok2xx = None;
    for l in text.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix("requests:") {
            r.errors = ["failed", "errored", "timeout"].iter().filter_map(|w| num_before(rest, w)).sum();
        } else if let Some(rest) = l.strip_prefix("status codes:") {
            ok2xx = num_before(rest, "2xx");
        } else if let Some(rest) = l.strip_prefix("finished in") {
            r.rps = rest.split(',').nth(1).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0.0);
        }
    }
    r.requests = ok2xx.context("could not read h2load's status codes")?;
    if r.requests == 0 {
        bail!("h2load got no 2xx response:\n{text}");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_h2load_output() {
        let out = "finished in 2.00s, 45123.50 req/s, 50.21MB/s\nrequests: 90247 total, 90300 started, 90247 done, 90240 succeeded, 7 failed, 0 errored, 1 timeout\nstatus codes: 90240 2xx, 0 3xx, 0 4xx, 7 5xx\n";
        let r = super::parse(out).unwrap();
        assert_eq!(r.requests, 90240);
        assert_eq!(r.errors, 8);
        assert!((r.rps - 45123.5).abs() < 1e-6);
    }
}
