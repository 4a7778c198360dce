//! The load harness: one run measures the direct path, outrider-proxy, HAProxy
//! and nginx with the same load generator (wrk) and the same upstream, and
//! writes the numbers to docs/benchmarks/.
//!
//! Pinning on a 2-core machine: the proxy under test runs on core 0; wrk and
//! the upstream (this process) share core 1, so the generator never steals the
//! proxy's core. Peers are configured like the proxy: one worker, keep-alive
//! to the upstream, logging off.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

mod peers;
mod procstat;
mod report;
mod upstream;
mod wrk;

#[derive(Debug, Parser)]
#[command(about = "Outrider load harness: direct vs outrider-proxy vs HAProxy vs nginx")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent connections of the closed-loop load.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// outrider-proxy binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/outrider-proxy")]
    proxy: PathBuf,
    /// Where the JSON and markdown results go.
    #[arg(long, default_value = "docs/benchmarks")]
    out: PathBuf,
    /// Only these targets (comma separated: direct,outrider,haproxy,nginx).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,outrider,haproxy,nginx"
    )]
    targets: Vec<String>,
}

/// One target's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetResult {
    pub target: String,
    pub version: String,
    pub requests: u64,
    pub rps: f64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    /// Proxy CPU time (user + system) per request, microseconds; none for direct.
    pub cpu_us_per_request: Option<f64>,
    pub idle_rss_kb: Option<u64>,
    pub peak_rss_kb: Option<u64>,
    pub ready_ms: Option<f64>,
}

fn pin_self_to(core: usize) {
    let pid = std::process::id().to_string();
    let ok = std::process::Command::new("taskset")
        .args(["-a", "-cp", &core.to_string(), &pid])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("warning: could not pin the harness to core {core} (taskset missing?)");
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !wrk::available() {
        bail!("wrk is not installed: apt-get install wrk (see benches/README.md)");
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (proxy_core, load_core) = if cores >= 2 { (0, 1) } else { (0, 0) };
    pin_self_to(load_core);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let upstream = upstream::start()?;
    eprintln!("upstream listening on {upstream} (1 kB responses)");
    let dur = Duration::from_secs(args.duration);
    let mut results = Vec::new();
    for t in &args.targets {
        let load = Load {
            connections: args.connections,
            dur,
            core: load_core,
        };
        let res = match t.as_str() {
            "direct" => {
                eprintln!(
                    "[direct] {}s, {} connections",
                    args.duration, args.connections
                );
                let w = rt.block_on(wrk::run(
                    &format!("http://{upstream}/"),
                    None,
                    load.connections,
                    load.dur,
                    load.core,
                ))?;
                Some(TargetResult::from_wrk("direct", "-", &w, None))
            }
            "outrider" => {
                let p = peers::Outrider::start(&args.proxy, upstream, proxy_core)
                    .with_context(|| format!("starting {}", args.proxy.display()))?;
                Some(rt.block_on(measure(&p.proc, &p.url, Some(peers::OUTRIDER_HOST), load))?)
            }
            "haproxy" => match peers::Haproxy::start(upstream, proxy_core)? {
                Some(p) => Some(rt.block_on(measure(&p.proc, &p.url, None, load))?),
                None => None,
            },
            "nginx" => match peers::Nginx::start(upstream, proxy_core)? {
                Some(p) => Some(rt.block_on(measure(&p.proc, &p.url, None, load))?),
                None => None,
            },
            other => bail!("unknown target {other}"),
        };
        if let Some(r) = res {
            eprintln!(
                "[{}] {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, cpu/req {}",
                r.target,
                r.rps,
                r.latency_p50_ms,
                r.latency_p99_ms,
                r.cpu_us_per_request
                    .map(|c| format!("{c:.1} µs"))
                    .unwrap_or("-".into())
            );
            results.push(r);
        }
    }
    report::write(&args.out, &results, args.connections, args.duration)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

#[derive(Clone, Copy, Debug)]
struct Load {
    connections: u32,
    dur: Duration,
    core: usize,
}

async fn measure(
    proc_: &peers::Proc,
    url: &str,
    host: Option<&str>,
    load: Load,
) -> Result<TargetResult> {
    eprintln!("[{}] warm-up", proc_.name);
    // Warm-up opens the upstream connections; it is not measured.
    let _ = wrk::run(url, host, 4, Duration::from_secs(1), load.core).await?;
    let idle = procstat::rss_kb(proc_.pid);
    let before = procstat::cpu_ticks(proc_.pid)?;
    eprintln!("[{}] measuring", proc_.name);
    let w = wrk::run(url, host, load.connections, load.dur, load.core).await?;
    let after = procstat::cpu_ticks(proc_.pid)?;
    let cpu_s = (after - before) as f64 / procstat::ticks_per_second();
    let mut r = TargetResult::from_wrk(&proc_.name, &proc_.version, &w, Some(cpu_s));
    r.idle_rss_kb = idle;
    r.peak_rss_kb = procstat::peak_rss_kb(proc_.pid);
    r.ready_ms = proc_.ready.map(|d| d.as_secs_f64() * 1000.0);
    Ok(r)
}

impl TargetResult {
    fn from_wrk(target: &str, version: &str, w: &wrk::WrkResult, cpu_s: Option<f64>) -> Self {
        Self {
            target: target.into(),
            version: version.into(),
            requests: w.requests,
            rps: w.rps,
            latency_p50_ms: w.p50_ms,
            latency_p90_ms: w.p90_ms,
            latency_p99_ms: w.p99_ms,
            cpu_us_per_request: cpu_s
                .filter(|_| w.requests > 0)
                .map(|s| s * 1e6 / w.requests as f64),
            idle_rss_kb: None,
            peak_rss_kb: None,
            ready_ms: None,
        }
    }
}
