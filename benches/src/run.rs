//! One target through every workload, in a fixed order: warm-up, HTTP/1.1
//! closed loop, HTTP/1.1 open loop at each rate, h2c, gRPC, TCP bulk, then the
//! idle connections (last: they raise the peak RSS).
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::latency::Latency;
use crate::peers::Target;
use crate::upstream::Upstream;
use crate::{h2load, idle, openloop, procstat, tcpbulk, wrk};

/// What every target is put through.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub quick: bool,
    pub duration_s: u64,
    pub tcp_duration_s: u64,
    /// Closed-loop HTTP/1.1 connections (wrk).
    pub connections: u32,
    /// Open-loop rates, requests per second.
    pub rates: Vec<u32>,
    pub open_connections: u32,
    pub h2_connections: u32,
    pub h2_streams: u32,
    pub idle_connections: u64,
    pub proxy_core: usize,
    pub load_core: usize,
    /// `--unpinned`: the cores above are not enforced.
    #[serde(default)]
    pub unpinned: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    /// `http1`, `http1-open-RATE`, `h2c`, `grpc` or `tcp`.
    pub name: String,
    pub tool: String,
    /// Why this target does not run this workload.
    pub skipped: Option<String>,
    /// The workload ran and failed: the harness or the target is broken.
    pub error: Option<String>,
    /// Successful requests (for tcp: bytes).
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub mb_per_s: Option<f64>,
    pub latency: Option<Latency>,
    /// Proxy CPU seconds (user + system) over the measurement.
    pub cpu_s: Option<f64>,
    pub cpu_us_per_request: Option<f64>,
    pub cpu_us_per_mb: Option<f64>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TargetReport {
    pub target: String,
    pub version: String,
    /// Why the whole target was skipped (not installed).
    pub skipped: Option<String>,
    /// The target was installed but could not be started.
    pub error: Option<String>,
    pub notes: Vec<String>,
    pub ready_ms: Option<f64>,
    pub idle_rss_kb: Option<u64>,
    /// Highest RSS seen while the first open-loop rate ran.
    pub rss_open_loop_kb: Option<u64>,
    /// VmHWM after every load workload (before the idle connections).
    pub peak_rss_kb: Option<u64>,
    pub idle_connections: Option<u64>,
    pub idle_connections_rss_kb: Option<u64>,
    pub workloads: Vec<Workload>,
}

impl TargetReport {
    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name == name && w.skipped.is_none() && w.error.is_none())
    }
}

/// The progress line: step, elapsed and estimated time left.
#[derive(Debug)]
pub struct Progress {
    pub total: usize,
    pub done: usize,
    pub start: Instant,
}

impl Progress {
    pub fn step(&mut self, target: &str, what: &str) {
        self.done += 1;
        let el = self.start.elapsed().as_secs_f64();
        let left = if self.done > 1 { el / (self.done - 1) as f64 * (self.total + 1 - self.done) as f64 } else { 0.0 };
        eprintln!("[{:>2}/{} {:>4.0}s, ~{:.0}s left] {target}: {what}", self.done, self.total, el, left);
    }
}

/// Steps of one target: warm-up, http1, h2c, grpc, tcp, idle, plus one per open-loop rate.
pub fn steps_per_target(s: &Settings) -> usize {
    6 + s.rates.len()
}

fn cpu_s(pid: Option<u32>) -> Option<f64> {
    let pid = pid?;
    procstat::cpu_ticks(pid).ok().map(|t| t as f64 / procstat::ticks_per_second())
}

/// Run `f`, and put the proxy CPU it took into the workload.
async fn with_cpu<F>(pid: Option<u32>, mut w: Workload, f: F) -> Workload
where
    F: Future<Output = Result<Workload>>,
{
    let before = cpu_s(pid);
    match f.await {
        Ok(mut r) => {
            if let (Some(b), Some(a)) = (before, cpu_s(pid)) {
                let cpu = a - b;
                r.cpu_s = Some(cpu);
                if r.mb_per_s.is_some() {
                    r.cpu_us_per_mb = (r.requests > 0).then(|| cpu * 1e6 / (r.requests as f64 / 1e6));
                } else {
                    r.cpu_us_per_request = (r.requests > 0).then(|| cpu * 1e6 / r.requests as f64);
                }
            }
            r.name = w.name;
            r.tool = w.tool;
            r
        }
        Err(e) => {
            eprintln!("  {} failed: {e:#}", w.name);
            w.error = Some(format!("{e:#}"));
            w
        }
    }
}

fn named(name: &str, tool: &str) -> Workload {
    Workload { name: name.into(), tool: tool.into(), ..Workload::default() }
}

pub async fn measure(t: &Target, s: &Settings, up: &Upstream, prog: &mut Progress, scratch: &Path) -> TargetReport {
    let pid = t.proc.as_ref().map(|p| p.pid);
    let name = t.name.as_str();
    let mut rep = TargetReport {
        target: t.name.clone(),
        version: t.version.clone(),
        notes: t.notes.clone(),
        ready_ms: t.proc.as_ref().map(|p| p.ready.as_secs_f64() * 1000.0),
        ..TargetReport::default()
    };
    if let Some(pid) = pid {
        // Idle: ready, no traffic yet; give it a moment to settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
        rep.idle_rss_kb = procstat::rss_kb(pid);
    }
    let dur = Duration::from_secs(s.duration_s);
    let wrk_ok = wrk::available();

    prog.step(name, "warm-up");
    if wrk_ok {
        let _ = wrk::run(&t.h1.url(), Some(&t.h1.host), 4, Duration::from_secs(1), s.load_core).await;
    } else {
        let _ = openloop::run(t.h1.addr, &t.h1.host, 1000, Duration::from_secs(1), 4).await;
    }

    prog.step(name, &format!("HTTP/1.1 closed loop, wrk, {} connections, {}s", s.connections, s.duration_s));
    let w = named("http1", "wrk");
    rep.workloads.push(if wrk_ok {
        with_cpu(pid, w, async {
            let r = wrk::run(&t.h1.url(), Some(&t.h1.host), s.connections, dur, s.load_core).await?;
            Ok(Workload { requests: r.requests, rps: r.rps, latency: Some(r.latency()), ..Workload::default() })
        })
        .await
    } else {
        Workload { skipped: Some("wrk is not installed (apt-get install wrk)".into()), ..w }
    });

    for (i, &rate) in s.rates.iter().enumerate() {
        prog.step(name, &format!("HTTP/1.1 open loop {rate} req/s, {}s", s.duration_s));
        let sampler = (i == 0).then(|| pid.map(|p| tokio::spawn(sample_rss(p, dur))));
        let w = named(&format!("http1-open-{rate}"), "outrider-benches open loop");
        rep.workloads.push(
            with_cpu(pid, w, async {
                let r = openloop::run(t.h1.addr, &t.h1.host, rate, dur, s.open_connections as usize).await?;
                Ok(Workload {
                    requests: r.requests,
                    errors: r.errors,
                    rps: r.rps,
                    latency: Some(r.latency),
                    ..Workload::default()
                })
            })
            .await,
        );
        if let Some(Some(h)) = sampler {
            rep.rss_open_loop_kb = h.await.ok().flatten();
        }
    }

    for (wname, ep, grpc) in [("h2c", &t.h2, false), ("grpc", &t.grpc, true)] {
        prog.step(name, &format!("{wname}, h2load, {}×{} streams, {}s", s.h2_connections, s.h2_streams, s.duration_s));
        let w = named(wname, "h2load");
        rep.workloads.push(match ep {
            Err(why) => Workload { skipped: Some(why.clone()), ..w },
            Ok(_) if !h2load::available() => {
                Workload { skipped: Some("h2load is not installed (apt-get install nghttp2-client)".into()), ..w }
            }
            Ok(ep) => {
                with_cpu(pid, w, async {
                    let url = if grpc { format!("http://{}{}", ep.addr, crate::upstream::GRPC_PATH) } else { ep.url() };
                    let p = h2load::H2Load {
                        url: &url,
                        authority: Some(&ep.host),
                        grpc,
                        connections: s.h2_connections,
                        streams: s.h2_streams,
                        dur,
                        core: s.load_core,
                    };
                    let r = h2load::run(p, scratch).await?;
                    Ok(Workload {
                        requests: r.requests,
                        errors: r.errors,
                        rps: r.rps,
                        latency: Some(r.latency),
                        ..Workload::default()
                    })
                })
                .await
            }
        });
    }

    prog.step(name, &format!("TCP bulk, {}s", s.tcp_duration_s));
    let w = named("tcp", "outrider-benches bulk writer");
    rep.workloads.push(match &t.tcp {
        Err(why) => Workload { skipped: Some(why.clone()), ..w },
        Ok(addr) => {
            with_cpu(pid, w, async {
                let r = tcpbulk::run(*addr, Duration::from_secs(s.tcp_duration_s), &up.sink_bytes).await?;
                Ok(Workload { requests: r.bytes, mb_per_s: Some(r.mb_per_s), ..Workload::default() })
            })
            .await
        }
    });

    rep.peak_rss_kb = pid.and_then(procstat::peak_rss_kb);
    let n_idle = t.max_idle.map_or(s.idle_connections, |m| m.min(s.idle_connections));
    prog.step(name, &format!("{n_idle} idle connections"));
    if let Some(pid) = pid {
        match idle::open(t.h1.addr, &t.h1.host, n_idle as usize, 100).await {
            Ok(conns) => {
                // Idle: silent for a while (every proxy has sent its responses and gone back
                // to waiting), for every peer alike.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                rep.idle_connections = Some(conns.len() as u64);
                rep.idle_connections_rss_kb = procstat::rss_kb(pid);
                drop(conns);
            }
            Err(e) => rep.notes.push(format!("idle connections failed: {e:#}")),
        }
    }
    rep
}

/// The highest RSS over `dur`, sampled every 100 ms.
async fn sample_rss(pid: u32, dur: Duration) -> Option<u64> {
    let end = tokio::time::Instant::now() + dur;
    let mut max = None;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        max = max.max(procstat::rss_kb(pid));
    }
    max
}
