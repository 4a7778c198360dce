//! Closed-loop HTTP/1.1 load with wrk (Debian's `wrk`), pinned to a core.
use std::time::Duration;

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p75_ms: f64,
}

impl WrkResult {
    /// wrk prints only p50/p75/p90/p99 (closed loop, not corrected for
    /// coordinated omission).
    pub fn latency(&self) -> crate::latency::Latency {
        let us = |ms: f64| ms * 1000.0;
        crate::latency::Latency {
            p50_us: us(self.p50_ms),
            p90_us: us(self.p90_ms),
            p99_us: us(self.p99_ms),
            curve: vec![
                (50.0, us(self.p50_ms)),
                (75.0, us(self.p75_ms)),
                (90.0, us(self.p90_ms)),
                (99.0, us(self.p99_ms)),
            ],
            ..Default::default()
        }
    }
}

pub fn available() -> bool {
    std::process::Command::new("wrk").arg("--version").output().is_ok()
}

pub async fn run(url: &str, host: Option<&str>, connections: u32, dur: Duration, core: usize) -> Result<WrkResult> {
    let mut cmd = tokio::process::Command::new("taskset");
    cmd.args(["-c", &crate::peers::cpu_list(core), "wrk", "-t1", "--latency"]);
    cmd.args(["-c", &connections.to_string(), "-d", &format!("{}s", dur.as_secs().max(1))]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    cmd.arg(url);
    let out = cmd.output().await.context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors; the target is misconfigured:\n{text}");
    }
    parse(&text)
}

fn ms(v: &str) -> Option<f64> {
    let (num, unit) = v.trim().split_at(v.trim().find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

pub fn parse(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("Requests/sec")?;
        } else if l.contains(" requests in ") {
            r.requests = l.split_whitespace().next().and_then(|n| n.parse().ok()).context("requests")?;
        } else if let Some(v) = l.strip_prefix("50%") {
            r.p50_ms = ms(v).context("p50")?;
        } else if let Some(v) = l.strip_prefix("75%") {
            r.p75_ms = ms(v).context("p75")?;
        } else if let Some(v) = l.strip_prefix("90%") {
            r.p90_ms = ms(v).context("p90")?;
        } else if let Some(v) = l.strip_prefix("99%") {
            r.p99_ms = ms(v).context("p99")?;
        }
    }
    if r.requests == 0 {
        bail!("could not read wrk's output:\n{text}");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_wrk_output() {
        let out = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 4 connections\n  Latency Distribution\n     50%   52.00us\n     75%   60.00us\n     90%    1.20ms\n     99%    2.00s\n  61234 requests in 1.00s, 70.00MB read\nRequests/sec:  61234.56\nTransfer/sec:     70.00MB\n";
        let r = super::parse(out).unwrap();
        assert_eq!(r.requests, 61234);
        assert!((r.p50_ms - 0.052).abs() < 1e-9);
        assert!((r.p90_ms - 1.2).abs() < 1e-9);
        assert!((r.p99_ms - 2000.0).abs() < 1e-9);
        assert!((r.rps - 61234.56).abs() < 1e-6);
    }
}
