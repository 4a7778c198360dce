//! Results as JSON and as a markdown table with ratios against the direct path
//! and HAProxy (ratios hold on a noisy machine; absolute numbers do not).
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::TargetResult;

pub fn write(dir: &Path, results: &[TargetResult], connections: u32, duration: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let machine = machine();
    let json = serde_json::json!({
        "machine": machine,
        "workload": {"kind": "http1-keepalive-closed-loop", "response_bytes": crate::upstream::BODY_SIZE, "connections": connections, "duration_s": duration},
        "results": results,
    });
    std::fs::write(dir.join("http1.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(dir.join("http1.md"), table(results, &machine))?;
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    // Count the machine's processors, not this (pinned) process's.
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

pub fn table(results: &[TargetResult], machine: &str) -> String {
    let direct = results.iter().find(|r| r.target == "direct").map(|r| r.rps);
    let haproxy = results.iter().find(|r| r.target == "haproxy");
    let mut s = String::new();
    let _ = writeln!(s, "Machine: {machine}\n");
    let _ = writeln!(
        s,
        "| target | version | req/s | vs direct | p50 ms | p90 ms | p99 ms | CPU µs/req | CPU vs HAProxy | idle RSS MB | peak RSS MB | ready ms |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let vs_direct = direct
            .map(|d| format!("{:.2}", r.rps / d))
            .unwrap_or("-".into());
        let cpu = r
            .cpu_us_per_request
            .map(|c| format!("{c:.1}"))
            .unwrap_or("-".into());
        let vs_h = match (
            r.cpu_us_per_request,
            haproxy.and_then(|h| h.cpu_us_per_request),
        ) {
            (Some(c), Some(h)) if h > 0.0 => format!("{:.2}", c / h),
            _ => "-".into(),
        };
        let mb = |kb: Option<u64>| {
            kb.map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or("-".into())
        };
        let ready = r.ready_ms.map(|m| format!("{m:.0}")).unwrap_or("-".into());
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} |",
            r.target,
            r.version,
            r.rps,
            vs_direct,
            r.latency_p50_ms,
            r.latency_p90_ms,
            r.latency_p99_ms,
            cpu,
            vs_h,
            mb(r.idle_rss_kb),
            mb(r.peak_rss_kb),
            ready
        );
    }
    s
}
