//! What a soak run reports: `soak.json` (everything measured), `soak.md` (the tables) and
//! `soak.svg` (the plot), and the summary printed at the end.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

/// Goal: RSS growth after the warm-up.
pub const GOAL_RSS_GROWTH_PCT: f64 = 5.0;

/// One sample of one process.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcSample {
    pub rss_kb: Option<u64>,
    pub fds: Option<u64>,
}

/// A sidecar's workload certificate at a sample (from its `/config_dump`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CertSample {
    /// Certificates installed so far: the first one plus every rotation.
    pub installed: Option<u64>,
    pub not_after_unix: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub t_s: f64,
    /// By process: `control-plane`, `client-sidecar`, `server-sidecar`, `tcp-server-sidecar`,
    /// `harness` (this process, with the upstream).
    pub procs: BTreeMap<String, ProcSample>,
    /// By sidecar.
    pub certs: BTreeMap<String, CertSample>,
}

/// One minute of one leg.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MinuteStats {
    pub minute: usize,
    pub leg: String,
    /// What `count` counts: `request`, `exchange`, `stream` or `message`.
    pub unit: String,
    /// Passed and failed.
    pub count: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One leg over the whole run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LegStats {
    pub leg: String,
    pub unit: String,
    /// What the leg does, at what rate.
    pub what: String,
    pub count: u64,
    pub errors: u64,
}

/// Failures of one leg that differ only in their numbers.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct FailureKind {
    pub leg: String,
    /// The message with every number written `N`.
    pub kind: String,
    pub count: u64,
    pub first_s: f64,
    pub first: String,
}

/// The long-lived sessions (TCP connections or gRPC streams) of one leg.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LongLivedStats {
    pub leg: String,
    /// The sidecars on their path, whose certificates rotate under them.
    pub sidecars: Vec<String>,
    /// Sessions opened (more than the number kept open when one broke and was opened again).
    pub sessions: u64,
    pub broken: u64,
    pub messages: u64,
    /// Sessions that carried messages before and after a rotation of every sidecar on their path.
    pub across_rotation: u64,
    /// Sessions that still carried messages after the certificates of their handshake had
    /// expired (after the `notAfter` of the newest certificate each sidecar had when they opened).
    pub outlived_certificates: u64,
    pub longest_s: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SoakReport {
    pub command: String,
    pub machine: String,
    pub load_before: String,
    pub load_after: String,
    pub duration_s: f64,
    /// `--soak-rate`: requests, exchanges or messages per second of each leg.
    pub rate: u32,
    pub cert_ttl_s: f64,
    pub legs: Vec<LegStats>,
    /// Legs that did not run, and why.
    pub skipped: Vec<String>,
    /// Failures of every leg (and failed closes of long-lived sessions).
    pub errors: u64,
    /// The first few failures, as the client saw them.
    pub first_errors: Vec<String>,
    /// Every failure by leg and kind.
    pub failure_kinds: Vec<FailureKind>,
    /// The client sidecar's counters at the end that tell a failure the policy chose (a
    /// breaker's rejection) from one it could not save, and what retries saved:
    /// `retries SERVICE (REASON)` and `breaker rejections SERVICE (REASON)`, those above 0.
    pub client_counters: BTreeMap<String, f64>,
    pub long_lived: Vec<LongLivedStats>,
    pub policy_changes: u64,
    pub policy_change_errors: u64,
    /// Every policy change: when, how long its API call took, whether it was taken.
    pub policy_change_log: Vec<super::stalls::PolicyChange>,
    /// Where the run stalled, and what was near it ([`super::stalls`]).
    pub stalls: Vec<super::stalls::Stall>,
    /// Certificate rotations (installs after the first) of each sidecar.
    pub rotations: BTreeMap<String, u64>,
    pub warmup_s: f64,
    /// The RSS at the end of the warm-up and at the end are each the lowest sample in a window
    /// this long (the sidecars' RSS saws between their heap releases).
    #[serde(default)]
    pub rss_window_s: f64,
    /// Per process: RSS at the end of the warm-up, at the end, growth in %, fds min/max after
    /// the warm-up.
    pub growth: BTreeMap<String, Growth>,
    pub samples: Vec<Sample>,
    pub minutes: Vec<MinuteStats>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Growth {
    pub rss_warm_kb: u64,
    pub rss_end_kb: u64,
    pub rss_max_kb: u64,
    pub rss_growth_pct: f64,
    pub fds_warm: u64,
    pub fds_min: u64,
    pub fds_max: u64,
    pub fds_end: u64,
}

pub fn write(dir: &Path, rep: &SoakReport) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("soak.json"), serde_json::to_string_pretty(rep)?)?;
    std::fs::write(dir.join("soak.md"), markdown(rep))?;
    super::plot::write(&dir.join("soak.svg"), rep)?;
    Ok(())
}

fn rotations(r: &SoakReport) -> String {
    if r.rotations.is_empty() {
        return "?".into();
    }
    r.rotations.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

pub fn markdown(r: &SoakReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Soak run\n");
    let _ = writeln!(
        s,
        "`{}` on {}; load average before {}, after {}.\n",
        r.command, r.machine, r.load_before, r.load_after
    );
    let _ = writeln!(
        s,
        "{:.0} s through meshed sidecars (mutual TLS, {:.0} s certificates); **{} failed**; {} policy changes ({} refused); certificate rotations: {}.\n",
        r.duration_s,
        r.cert_ttl_s,
        r.errors,
        r.policy_changes,
        r.policy_change_errors,
        rotations(r),
    );
    let _ = writeln!(s, "| Leg | What | Count | Failed |\n|---|---|---|---|");
    for l in &r.legs {
        let _ = writeln!(s, "| {} | {} | {} {}s | {} |", l.leg, l.what, l.count, l.unit, l.errors);
    }
    for why in &r.skipped {
        let _ = writeln!(s, "\nNot run: {why}");
    }
    if !r.long_lived.is_empty() {
        let _ = writeln!(
            s,
            "\n| Long-lived | Sidecars | Sessions | Broken | Messages | Across a rotation of each sidecar | Outlived their handshake's certificates | Longest |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for l in &r.long_lived {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
                l.leg,
                l.sidecars.join(", "),
                l.sessions,
                l.broken,
                l.messages,
                l.across_rotation,
                l.outlived_certificates,
                l.longest_s
            );
        }
    }
    let _ = writeln!(
        s,
        "\n| Process | RSS after warm-up (lowest in {:.0}–{:.0} s) | RSS at the end (lowest in the last {:.0} s) | max | growth | fds after warm-up | fds min–max | fds at the end |",
        r.warmup_s,
        r.warmup_s + r.rss_window_s,
        r.rss_window_s
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for (name, g) in &r.growth {
        let _ = writeln!(
            s,
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.1} % | {} | {}–{} | {} |",
            g.rss_warm_kb as f64 / 1024.0,
            g.rss_end_kb as f64 / 1024.0,
            g.rss_max_kb as f64 / 1024.0,
            g.rss_growth_pct,
            g.fds_warm,
            g.fds_min,
            g.fds_max,
            g.fds_end
        );
    }
    let _ = writeln!(s, "\n| Minute | Leg | Count | Failed | p50 µs | p99 µs | p99.9 µs | max µs |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for m in &r.minutes {
        let _ = writeln!(
            s,
            "| {} | {} | {} {}s | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            m.minute + 1,
            m.leg,
            m.count,
            m.unit,
            m.errors,
            m.p50_us,
            m.p99_us,
            m.p999_us,
            m.max_us
        );
    }
    stalls_table(&mut s, r);
    if !r.client_counters.is_empty() {
        let _ = writeln!(s, "\nThe client sidecar's counters at the end:\n");
        for (k, v) in &r.client_counters {
            let _ = writeln!(s, "- {k}: {v}");
        }
    }
    if !r.failure_kinds.is_empty() {
        let _ = writeln!(s, "\n| Leg | Failure | Count | First at | First |\n|---|---|---|---|---|");
        for f in &r.failure_kinds {
            let _ = writeln!(s, "| {} | {} | {} | {:.1} s | {} |", f.leg, f.kind, f.count, f.first_s, f.first);
        }
    }
    if !r.first_errors.is_empty() {
        let _ = writeln!(s, "\nFirst failures:\n");
        for e in &r.first_errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    s
}

fn stalls_table(s: &mut String, r: &SoakReport) {
    let threshold = super::stalls::STALL.as_millis();
    if r.stalls.is_empty() {
        let _ = writeln!(s, "\nNo stall: no task of any leg took {threshold} ms or more from its intended start.");
        return;
    }
    let _ = writeln!(
        s,
        "\nStalls: seconds in which a task took {threshold} ms or more from its intended start. The control \
         probe sends {} HTTP/1.1 requests a second straight to the upstream, not through the mesh: slow \
         too, the harness or the machine stalled.\n",
        super::stalls::DIRECT_RATE
    );
    let _ = writeln!(
        s,
        "| Seconds | Legs | Latest task | Control probe's latest | Since the last policy change (its API call) | Rotations near |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for st in &r.stalls {
        let direct = st.direct_worst_ms.map_or("–".to_owned(), |ms| format!("{ms:.0} ms"));
        let change =
            st.after_policy_change.map_or("–".to_owned(), |(after, took)| format!("{after:.1} s ({took:.0} ms)"));
        let rotations = if st.rotations.is_empty() { "–".to_owned() } else { st.rotations.join(", ") };
        let _ = writeln!(
            s,
            "| {}–{} | {} | {:.0} ms | {direct} | {change} | {rotations} |",
            st.from_s,
            st.to_s + 1,
            st.legs.join(", "),
            st.worst_ms
        );
    }
}

pub fn summary(r: &SoakReport) -> String {
    let mut s = format!(
        "soak: {:.0} s, {} failed, {} policy changes ({} refused), rotations: {}\n",
        r.duration_s,
        r.errors,
        r.policy_changes,
        r.policy_change_errors,
        rotations(r)
    );
    for l in &r.legs {
        let _ = writeln!(s, "  {}: {} {}s, {} failed", l.leg, l.count, l.unit, l.errors);
    }
    for l in &r.long_lived {
        let _ = writeln!(
            s,
            "  {} sessions: {} opened, {} broken, {} across a rotation, {} outlived their handshake's certificates",
            l.leg, l.sessions, l.broken, l.across_rotation, l.outlived_certificates
        );
    }
    for why in &r.skipped {
        let _ = writeln!(s, "  not run: {why}");
    }
    for f in &r.failure_kinds {
        let _ = writeln!(s, "  {} failed {}x: {} (first at {:.1} s)", f.leg, f.count, f.kind, f.first_s);
    }
    for (k, v) in &r.client_counters {
        let _ = writeln!(s, "  client sidecar: {k}: {v}");
    }
    for st in &r.stalls {
        let _ = writeln!(
            s,
            "  stall {}-{} s: {} (latest {:.0} ms; control probe {}; {} after a policy change)",
            st.from_s,
            st.to_s + 1,
            st.legs.join(", "),
            st.worst_ms,
            st.direct_worst_ms.map_or("idle".to_owned(), |ms| format!("{ms:.0} ms")),
            st.after_policy_change.map_or("not".to_owned(), |(after, _)| format!("{after:.1} s")),
        );
    }
    for (name, g) in &r.growth {
        let goal = if name == "harness" {
            "the load generator, not judged"
        } else if g.rss_growth_pct < GOAL_RSS_GROWTH_PCT {
            "ok"
        } else {
            "ABOVE GOAL"
        };
        let _ = writeln!(
            s,
            "  {name}: RSS {:.1} -> {:.1} MiB ({:+.1} %, {goal}), fds {}..{}",
            g.rss_warm_kb as f64 / 1024.0,
            g.rss_end_kb as f64 / 1024.0,
            g.rss_growth_pct,
            g.fds_min,
            g.fds_max
        );
    }
    s
}
