//! Results as JSON and as markdown tables with ratios against the direct path
//! and HAProxy (ratios hold on a noisy machine; absolute numbers do not), and
//! the goals, each with its measured value.
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::run::{Settings, TargetReport, Workload};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Run {
    pub machine: String,
    pub command: String,
    pub quick: bool,
    /// 1-, 5- and 15-minute load averages before and after the run.
    pub load_before: String,
    pub load_after: String,
    pub pinning: String,
    pub settings: Settings,
    pub notes: Vec<String>,
    pub targets: Vec<TargetReport>,
    /// The mTLS-between-sidecars scenario (`--only mtls` updates just this part).
    #[serde(default)]
    pub mtls: Option<crate::mtls::MtlsReport>,
    /// Idle connections per mode, a fresh process each (`--only idle` updates just this part).
    #[serde(default)]
    pub idle: Option<crate::idle::IdleReport>,
}

impl Run {
    pub fn target(&self, name: &str) -> Option<&TargetReport> {
        self.targets.iter().find(|t| t.target == name && t.skipped.is_none() && t.error.is_none())
    }
    fn wl(&self, target: &str, workload: &str) -> Option<&Workload> {
        self.target(target)?.workload(workload)
    }
    /// A workload's CPU cost: µs per request, or µs per MB for tcp.
    fn cpu(&self, target: &str, workload: &str) -> Option<f64> {
        let w = self.wl(target, workload)?;
        w.cpu_us_per_request.or(w.cpu_us_per_mb)
    }
    /// Requests per second, or MB/s for tcp.
    fn rate(&self, target: &str, workload: &str) -> Option<f64> {
        let w = self.wl(target, workload)?;
        w.mb_per_s.or(Some(w.rps))
    }
    /// The cheaper of HAProxy and nginx for a workload.
    fn best_peer_cpu(&self, workload: &str) -> Option<(f64, &'static str)> {
        let h = self.cpu("haproxy", workload).map(|c| (c, "HAProxy"));
        let n = self.cpu("nginx", workload).map(|c| (c, "nginx"));
        match (h, n) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

pub fn write(dir: &Path, run: &Run) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(run)?)?;
    std::fs::write(dir.join("results.md"), markdown(run))?;
    Ok(())
}

pub fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    // Count the machine's processors, not this (pinned) process's.
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn mb(kb: Option<u64>) -> Option<f64> {
    kb.map(|k| k as f64 / 1024.0)
}

pub fn markdown(run: &Run) -> String {
    let mut s = if run.targets.is_empty() { String::new() } else { targets_markdown(run) };
    if let Some(m) = &run.mtls {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&crate::mtls::markdown(m));
    }
    if let Some(i) = &run.idle {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&crate::idle::markdown(i));
    }
    s
}

fn targets_markdown(run: &Run) -> String {
    let mut s = String::new();
    let st = &run.settings;
    let _ = writeln!(s, "Machine: {}  ", run.machine);
    let _ = writeln!(s, "Load average (1/5/15 min): {} before, {} after  ", run.load_before, run.load_after);
    let _ = writeln!(s, "Command: `{}`  ", run.command);
    let _ = writeln!(s, "Pinning: {}  ", run.pinning);
    let _ = writeln!(
        s,
        "Workloads: {} s each (TCP {} s); HTTP/1.1 closed loop wrk -t1 -c{}; open loop at {:?} req/s over {} connections; h2c and gRPC h2load -t1 -c{} -m{}; 1 kB responses; {} idle connections.\n",
        st.duration_s,
        st.tcp_duration_s,
        st.connections,
        st.rates,
        st.open_connections,
        st.h2_connections,
        st.h2_streams,
        st.idle_connections
    );
    let all: Vec<&TargetReport> = run.targets.iter().filter(|t| t.skipped.is_none() && t.error.is_none()).collect();
    let proxies: Vec<&TargetReport> = all.iter().copied().filter(|t| t.target != "direct").collect();

    let _ = writeln!(s, "### Proxy CPU per request (the headline)\n");
    let _ = writeln!(
        s,
        "User + system CPU of the proxy process over the measurement, divided by the requests served (TCP: by the megabytes moved). Lower is better.\n"
    );
    let _ = writeln!(
        s,
        "| target | HTTP/1.1 µs/req | vs HAProxy | h2c µs/req | vs HAProxy | gRPC µs/req | vs HAProxy | TCP µs/MB | vs HAProxy | open loop {} req/s µs/req |",
        st.rates.first().copied().unwrap_or(0)
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let open1 = st.rates.first().map(|r| format!("http1-open-{r}")).unwrap_or_default();
    for t in &proxies {
        let n = t.target.as_str();
        let _ = write!(s, "| {n} |");
        for w in ["http1", "h2c", "grpc", "tcp"] {
            let c = run.cpu(n, w);
            let _ = write!(s, " {} | {} |", f(c, 1), f(ratio(c, run.cpu("haproxy", w)), 2));
        }
        let _ = writeln!(s, " {} |", f(run.cpu(n, &open1), 1));
    }

    let _ = writeln!(s, "\n### Throughput (closed loop)\n");
    let _ = writeln!(
        s,
        "| target | HTTP/1.1 req/s | vs direct | vs HAProxy | h2c req/s | vs direct | vs HAProxy | gRPC req/s | vs direct | vs HAProxy | TCP MB/s | vs direct | vs HAProxy |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in &all {
        let n = t.target.as_str();
        let _ = write!(s, "| {n} |");
        for w in ["http1", "h2c", "grpc", "tcp"] {
            let r = run.rate(n, w);
            let _ = write!(
                s,
                " {} | {} | {} |",
                f(r, 0),
                f(ratio(r, run.rate("direct", w)), 2),
                f(ratio(r, run.rate("haproxy", w)), 2)
            );
        }
        s.push('\n');
    }

    let _ = writeln!(s, "\n### Latency at a fixed rate (open loop, corrected for coordinated omission)\n");
    let _ = writeln!(
        s,
        "Microseconds from each request's intended send time to the end of its response. \"Added\" is the target's percentile minus the direct path's.\n"
    );
    let _ =
        writeln!(s, "| target | rate | p50 µs | p90 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | errors |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for rate in &st.rates {
        let w = format!("http1-open-{rate}");
        let d = run.wl("direct", &w).and_then(|w| w.latency.clone());
        for t in &all {
            let Some(wl) = run.wl(&t.target, &w) else { continue };
            let Some(l) = &wl.latency else { continue };
            let add = |v: f64, dv: Option<f64>| f(dv.map(|dv| v - dv), 0);
            let _ = writeln!(
                s,
                "| {} | {rate} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
                t.target,
                l.p50_us,
                l.p90_us,
                l.p99_us,
                l.p999_us,
                add(l.p50_us, d.as_ref().map(|d| d.p50_us)),
                add(l.p99_us, d.as_ref().map(|d| d.p99_us)),
                wl.errors
            );
        }
    }

    let _ = writeln!(s, "\n### Latency under closed-loop load\n");
    let _ = writeln!(
        s,
        "| target | HTTP/1.1 p50 µs | p99 µs | h2c p50 µs | p99 µs | p99.9 µs | gRPC p50 µs | p99 µs | p99.9 µs |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in &all {
        let l = |w: &str| run.wl(&t.target, w).and_then(|w| w.latency.clone());
        let (h1, h2, g) = (l("http1"), l("h2c"), l("grpc"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.target,
            f(h1.as_ref().map(|l| l.p50_us), 0),
            f(h1.as_ref().map(|l| l.p99_us), 0),
            f(h2.as_ref().map(|l| l.p50_us), 0),
            f(h2.as_ref().map(|l| l.p99_us), 0),
            f(h2.as_ref().map(|l| l.p999_us), 0),
            f(g.as_ref().map(|l| l.p50_us), 0),
            f(g.as_ref().map(|l| l.p99_us), 0),
            f(g.as_ref().map(|l| l.p999_us), 0),
        );
    }

    let _ = writeln!(s, "\n### Memory and start-up\n");
    let _ = writeln!(
        s,
        "| target | version | ready ms | idle RSS MB | RSS at {} req/s MB | peak RSS (VmHWM) MB | idle conns | RSS with them MB | KB per idle conn |",
        st.rates.first().copied().unwrap_or(0)
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for t in &proxies {
        let per_conn = match (t.idle_connections_rss_kb, t.idle_rss_kb, t.idle_connections) {
            (Some(a), Some(b), Some(n)) if n > 0 => Some((a as f64 - b as f64) / n as f64),
            _ => None,
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.target,
            t.version,
            f(t.ready_ms, 1),
            f(mb(t.idle_rss_kb), 1),
            f(mb(t.rss_open_loop_kb), 1),
            f(mb(t.peak_rss_kb), 1),
            t.idle_connections.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            f(mb(t.idle_connections_rss_kb), 1),
            f(per_conn, 1)
        );
    }

    let _ = writeln!(s, "\n### Goals (outrider, this run)\n");
    let _ = writeln!(s, "| goal | target | measured | |");
    let _ = writeln!(s, "|---|---|---|---|");
    for g in goals(run) {
        let _ = writeln!(s, "| {} | {} | {} | {} |", g.name, g.target, g.measured, g.verdict());
    }

    let mut notes: Vec<String> = run.notes.clone();
    for t in &run.targets {
        if let Some(why) = &t.skipped {
            notes.push(format!("{}: skipped: {why}", t.target));
        }
        if let Some(e) = &t.error {
            notes.push(format!("{}: FAILED to start: {e}", t.target));
        }
        for n in &t.notes {
            notes.push(format!("{}: {n}", t.target));
        }
        for w in &t.workloads {
            if let Some(why) = &w.skipped {
                notes.push(format!("{} {}: skipped: {why}", t.target, w.name));
            }
            if let Some(e) = &w.error {
                notes.push(format!("{} {}: FAILED: {e}", t.target, w.name));
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes:\n");
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

pub struct Goal {
    pub name: &'static str,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

impl Goal {
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        }
    }
}

pub fn goals(run: &Run) -> Vec<Goal> {
    let mut g = Vec::new();
    for (name, w) in [
        ("CPU per HTTP/1.1 request", "http1"),
        ("CPU per h2c request", "h2c"),
        ("CPU per gRPC request", "grpc"),
        ("CPU per TCP MB", "tcp"),
    ] {
        let o = run.cpu("outrider", w);
        let peer = run.best_peer_cpu(w);
        let r = ratio(o, peer.map(|p| p.0));
        g.push(Goal {
            name,
            target: "≤ 1.0× the better of HAProxy and nginx".into(),
            measured: format!(
                "{} vs {} ({}) = {}×",
                f(o, 1),
                f(peer.map(|p| p.0), 1),
                peer.map(|p| p.1).unwrap_or("-"),
                f(r, 2)
            ),
            met: r.map(|r| r <= 1.0),
        });
    }
    if run.target("outrider-log").is_some() {
        for (name, w) in [
            ("Access log on: CPU per HTTP/1.1 request", "http1"),
            ("Access log on: CPU per h2c request", "h2c"),
            ("Access log on: CPU per gRPC request", "grpc"),
        ] {
            let (on, off) = (run.cpu("outrider-log", w), run.cpu("outrider", w));
            let r = ratio(on, off);
            g.push(Goal {
                name,
                target: "≤ 1.1× with the access log off".into(),
                measured: format!("{} vs {} = {}×", f(on, 1), f(off, 1), f(r, 2)),
                met: r.map(|r| r <= 1.1),
            });
        }
    }
    let r = ratio(run.rate("outrider", "http1"), run.rate("haproxy", "http1"));
    g.push(Goal {
        name: "HTTP/1.1 throughput, one worker",
        target: "≥ 1.0× HAProxy".into(),
        measured: format!("{}×", f(r, 2)),
        met: r.map(|r| r >= 1.0),
    });
    let rate = run.settings.rates.first().copied().unwrap_or(0);
    let w = format!("http1-open-{rate}");
    let lat = |t: &str| run.wl(t, &w).and_then(|w| w.latency.clone());
    let (o, d) = (lat("outrider"), lat("direct"));
    for (name, limit, pick) in [
        ("added latency p50", 50.0, (|l: &crate::latency::Latency| l.p50_us) as fn(&crate::latency::Latency) -> f64),
        ("added latency p99", 200.0, |l| l.p99_us),
    ] {
        let added = match (&o, &d) {
            (Some(o), Some(d)) => Some(pick(o) - pick(d)),
            _ => None,
        };
        g.push(Goal {
            name,
            target: format!("≤ {limit:.0} µs at {rate} req/s"),
            measured: format!("{} µs", f(added, 0)),
            met: added.map(|a| a <= limit),
        });
    }
    let o = run.target("outrider");
    let mem = |name: &'static str, limit: f64, kb: Option<u64>, what: String| Goal {
        name,
        target: format!("≤ {limit:.0} MB{what}"),
        measured: format!("{} MB", f(mb(kb), 1)),
        met: mb(kb).map(|m| m <= limit),
    };
    g.push(mem("idle RSS", 8.0, o.and_then(|o| o.idle_rss_kb), String::new()));
    g.push(mem("RSS under load", 12.0, o.and_then(|o| o.rss_open_loop_kb), format!(" at {rate} req/s")));
    g.push(mem(
        "RSS with idle connections",
        64.0,
        o.and_then(|o| o.idle_connections_rss_kb),
        format!(" with {} idle connections", o.and_then(|o| o.idle_connections).unwrap_or(0)),
    ));
    let r = ratio(run.rate("outrider", "tcp"), run.rate("direct", "tcp"));
    g.push(Goal {
        name: "TCP bulk",
        target: "≥ 0.9× direct".into(),
        measured: format!("{}×", f(r, 2)),
        met: r.map(|r| r >= 0.9),
    });
    let ready = o.and_then(|o| o.ready_ms);
    g.push(Goal {
        name: "start to ready",
        target: "≤ 50 ms".into(),
        measured: format!("{} ms", f(ready, 1)),
        met: ready.map(|r| r <= 50.0),
    });
    g
}

/// A few lines for the terminal.
pub fn summary(run: &Run) -> String {
    let mut s = String::new();
    for t in &run.targets {
        if let Some(why) = t.skipped.as_ref().or(t.error.as_ref()) {
            let _ = writeln!(s, "{:<9} not measured: {why}", t.target);
            continue;
        }
        let _ = writeln!(
            s,
            "{:<9} http1 {:>7} req/s {:>6} µs/req | h2c {:>7} req/s {:>6} µs/req | grpc {:>7} req/s {:>6} µs/req | tcp {:>6} MB/s",
            t.target,
            f(run.rate(&t.target, "http1"), 0),
            f(run.cpu(&t.target, "http1"), 1),
            f(run.rate(&t.target, "h2c"), 0),
            f(run.cpu(&t.target, "h2c"), 1),
            f(run.rate(&t.target, "grpc"), 0),
            f(run.cpu(&t.target, "grpc"), 1),
            f(run.rate(&t.target, "tcp"), 0),
        );
    }
    if let Some(m) = &run.mtls {
        s.push_str(&crate::mtls::summary(m));
    }
    if let Some(i) = &run.idle {
        s.push_str(&crate::idle::summary(i));
    }
    let mut all = if run.targets.is_empty() { Vec::new() } else { goals(run) };
    all.extend(run.mtls.as_ref().map(crate::mtls::goals).unwrap_or_default());
    all.extend(run.idle.as_ref().map(crate::idle::goals).unwrap_or_default());
    for g in all {
        let _ = writeln!(s, "goal {:<28} {:<45} {:<40} {}", g.name, g.target, g.measured, g.verdict());
    }
    s
}
