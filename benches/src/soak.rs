//! The soak: a control plane and meshed sidecars (mutual TLS, workload certificates from the
//! control plane's CA) carry traffic at a fixed rate for a long time, with retries and circuit
//! breakers configured, a policy change every 10 s and workload certificates that rotate about
//! once a minute (90 s lifetime by default, renewed at 50–80 % of it). The legs:
//!
//! - `http1`, `h2`, `grpc`: requests to the `soak` Service ([`http`]);
//! - `grpc-stream`, `grpc-stream-long`: bidirectional gRPC streams to `soak-stream`, short ones
//!   opened at a fixed rate and long-lived ones open for the whole run ([`grpc_stream`]);
//! - `tcp`, `tcp-long`: opaque TCP to `soak-tcp` (intercepted, as an app's connection would
//!   be), short exchanges at a fixed rate and long-lived connections ([`tcp`]).
//!
//! Sampled every 5 s: RSS and open file descriptors of every process (control plane, the
//! sidecars, this harness with its upstream) and every sidecar's certificate; per minute:
//! count, failures and latency of each leg. The whole soak runs in a network namespace of its
//! own ([`netns`]); without one (not root) it runs without the TCP legs and says so.
//!
//! Goals (from the reliability plan): no failure, RSS growth under 5 % after the warm-up (the
//! first minute, or the first tenth of a shorter run; each end of the growth is the lowest RSS
//! sample in 30 s, as the sidecars' RSS saws between their heap releases), open fds flat.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use tokio::time::Instant;

use crate::mtls::{API_TOKEN, api};
use crate::{procstat, upstream};

mod grpc_stream;
mod http;
mod load;
mod mesh;
pub mod netns;
mod plot;
mod report;
mod stalls;
mod tcp;

pub use report::{SoakReport, summary, write};

use load::{Life, Shared};
use report::{Growth, LegStats, LongLivedStats, MinuteStats, ProcSample, Sample};

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const POLICY_EVERY: Duration = Duration::from_secs(10);
/// Long-lived TCP connections, and long-lived gRPC streams.
const LONG_LIVED: usize = 8;
/// Each long-lived session sends a message this often.
const LONG_EVERY: Duration = Duration::from_secs(1);
/// How long a new leg's first answer may take to come through the mesh before the soak starts.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Every leg and what it counts.
const LEGS: [(&str, &str); 7] = [
    ("http1", "request"),
    ("h2", "request"),
    ("grpc", "request"),
    (grpc_stream::SHORT, "stream"),
    (grpc_stream::LONG, "message"),
    (tcp::SHORT, "exchange"),
    (tcp::LONG, "message"),
];

#[derive(Debug)]
pub struct Config {
    pub proxy: PathBuf,
    pub control_plane: PathBuf,
    pub duration: Duration,
    /// Requests, exchanges or messages per second of each leg (long-lived sessions aside).
    pub rate: u32,
    /// Lifetime of the workload certificates.
    pub cert_ttl: Duration,
    /// Whether the soak has a network namespace of its own for the TCP leg's interception
    /// rule, or why not ([`netns::isolate`]).
    pub isolated: Result<(), String>,
    pub command: String,
}

/// What each leg does, at what rate.
fn what(leg: &str, rate: u32) -> String {
    let every = LONG_EVERY.as_secs_f64();
    match leg {
        "http1" => format!("HTTP/1.1 requests to `soak` at {rate}/s"),
        "h2" => format!("h2 requests to `soak` at {rate}/s"),
        "grpc" => format!("unary gRPC calls to `soak` at {rate}/s"),
        grpc_stream::SHORT => format!(
            "bidirectional gRPC streams to `soak-stream` at {}/s, {} messages each",
            stream_rate(rate),
            grpc_stream::MESSAGES
        ),
        grpc_stream::LONG => format!("{LONG_LIVED} gRPC streams open for the whole run, a message each {every} s each"),
        tcp::SHORT => format!("TCP exchanges with `soak-tcp` at {rate}/s (connect, 1 KiB echoed, close)"),
        tcp::LONG => format!("{LONG_LIVED} TCP connections open for the whole run, a message each {every} s each"),
        _ => String::new(),
    }
}

/// Short streams per second: as many messages per second as the other legs' requests.
fn stream_rate(rate: u32) -> f64 {
    f64::from(rate) / grpc_stream::MESSAGES as f64
}

/// Poll `attempt` until it passes, or fail after [`READY_WITHIN`].
async fn ready<F, Fut>(what: &str, mut attempt: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        match load::within(load::TIMEOUT * 4, attempt()).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what} did not answer through the mesh within {READY_WITHIN:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Run the soak; the report has what was measured even when the mesh failed part-way.
pub async fn run(cfg: &Config) -> Result<SoakReport> {
    for bin in [&cfg.proxy, &cfg.control_plane] {
        if !bin.exists() {
            bail!("{} not found: build the binaries first (cargo build --release --workspace --bins)", bin.display());
        }
    }
    let mut rep = SoakReport {
        command: cfg.command.clone(),
        machine: crate::report::machine(),
        load_before: procstat::loadavg(),
        rate: cfg.rate,
        cert_ttl_s: cfg.cert_ttl.as_secs_f64(),
        ..SoakReport::default()
    };
    let with_tcp = cfg.isolated.is_ok();
    if let Err(why) = &cfg.isolated {
        rep.skipped.push(format!("{} and {}: {why}", tcp::SHORT, tcp::LONG));
        eprintln!("[soak] not running the TCP legs: {why}");
    }
    let up = upstream::start()?;
    let bins = mesh::Binaries { proxy: &cfg.proxy, control_plane: &cfg.control_plane, cert_ttl: cfg.cert_ttl };
    let mesh = mesh::start(&bins, &up, with_tcp)?;
    let addr = mesh.outbound;
    let channel: grpc_stream::StreamChannel = Default::default();
    ready("soak-stream", || grpc_stream::short(addr, channel.clone(), 0)).await?;
    if with_tcp {
        ready("soak-tcp", || tcp::exchange(0)).await?;
    }

    let legs: Vec<(&'static str, &'static str)> =
        LEGS.into_iter().filter(|(l, _)| with_tcp || (*l != tcp::SHORT && *l != tcp::LONG)).collect();
    let acc = load::shared(legs.iter().map(|(l, _)| *l).collect());
    let pids = mesh.pids();
    let admins = mesh.admins();
    let start = Instant::now();
    let start_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let end = start + cfg.duration;
    let span = (start, end);
    let (loads, longs) = spawn_legs(addr, cfg.rate, with_tcp, span, &acc, &channel);
    let control = load::shared(vec![stalls::DIRECT]);
    let probe = tokio::spawn(http::direct(up.http, stalls::DIRECT_RATE, span, control.clone()));

    // Policy changes and samples, until the end.
    let mut policy_tick = tokio::time::interval_at(start + POLICY_EVERY, POLICY_EVERY);
    let mut sample_tick = tokio::time::interval(SAMPLE_EVERY);
    let mut n = 0u32;
    let (api_addr, stream_endpoint) = (mesh.api, mesh.server_inbound);
    loop {
        tokio::select! {
            at = sample_tick.tick() => {
                if at > end { break; }
                let t = at.duration_since(start).as_secs_f64();
                let (p, a) = (pids.clone(), admins.clone());
                if let Ok(s) = tokio::task::spawn_blocking(move || mesh::sample(&p, &a, t)).await {
                    eprintln!("[soak {t:>5.0}s] {}", progress(&s));
                    rep.samples.push(s);
                }
            }
            at = policy_tick.tick() => {
                if at > end { continue; }
                n += 1;
                let body = mesh::policy(n, stream_endpoint);
                let sent = Instant::now();
                let ok = tokio::task::spawn_blocking(move || api(api_addr, "PUT", "/v1/policies", Some(API_TOKEN), &body))
                    .await
                    .is_ok_and(|r| r.is_ok_and(|(s, _)| s == 200));
                rep.policy_changes += 1;
                if !ok { rep.policy_change_errors += 1; }
                rep.policy_change_log.push(stalls::PolicyChange {
                    at_s: at.duration_since(start).as_secs_f64(),
                    took_ms: sent.elapsed().as_secs_f64() * 1000.0,
                    ok,
                });
            }
        }
    }
    for l in loads {
        l.await.context("a leg's task failed")?;
    }
    probe.await.context("the control probe's task failed")?;
    let mut lives: Vec<(&'static str, Vec<Life>)> = Vec::new();
    for (leg, l) in longs {
        lives.push((leg, l.await.context("a long-lived session's task failed")?));
    }
    rep.duration_s = start.elapsed().as_secs_f64();
    let t_end = end.duration_since(start).as_secs_f64();
    let last = tokio::task::spawn_blocking(move || mesh::sample(&pids, &admins, t_end)).await?;
    rep.samples.push(last);
    rep.load_after = procstat::loadavg();
    let client_admin = mesh.client.admin;
    rep.client_counters = tokio::task::spawn_blocking(move || mesh::policy_counters(client_admin)).await?;
    finish(&mut rep, &acc, &legs, cfg.duration);
    if let (Ok(a), Ok(c)) = (acc.lock(), control.lock()) {
        rep.stalls = stalls::find(&a.worst, &c.worst, &rep.policy_change_log, &rep.samples);
    }
    for (leg, sidecars) in
        [(grpc_stream::LONG, [mesh::CLIENT, mesh::SERVER]), (tcp::LONG, [mesh::CLIENT, mesh::TCP_SERVER])]
    {
        let of_leg: Vec<&Life> = lives.iter().filter(|(l, _)| *l == leg).flat_map(|(_, v)| v).collect();
        if legs.iter().any(|(l, _)| *l == leg) {
            rep.long_lived.push(long_lived(leg, &sidecars, &of_leg, &rep.samples, start_unix));
        }
    }
    drop(mesh);
    Ok(rep)
}

type LongLived = Vec<(&'static str, tokio::task::JoinHandle<Vec<Life>>)>;

/// Start every leg's load on the client sidecar at `addr` (short streams on `channel`, the
/// long-lived ones on a channel of their own).
fn spawn_legs(
    addr: std::net::SocketAddr,
    rate: u32,
    with_tcp: bool,
    span: (Instant, Instant),
    acc: &Shared,
    channel: &grpc_stream::StreamChannel,
) -> (Vec<tokio::task::JoinHandle<()>>, LongLived) {
    let mut loads = Vec::new();
    for proto in http::LEGS {
        loads.push(tokio::spawn(http::run(addr, proto, rate, span, acc.clone())));
    }
    let (short_channel, acc2) = (channel.clone(), acc.clone());
    let streams = (stream_rate(rate), grpc_stream::LIMIT);
    loads.push(tokio::spawn(load::fixed_rate(grpc_stream::SHORT, streams, span, acc2, move |i| {
        grpc_stream::short(addr, short_channel.clone(), i)
    })));
    if with_tcp {
        let exchanges = (f64::from(rate), load::TIMEOUT);
        loads.push(tokio::spawn(load::fixed_rate(tcp::SHORT, exchanges, span, acc.clone(), tcp::exchange)));
    }
    let long_channel: grpc_stream::StreamChannel = Default::default();
    let mut longs: LongLived = Vec::new();
    for k in 0..LONG_LIVED {
        let offset = LONG_EVERY.mul_f64(k as f64 / LONG_LIVED as f64);
        let timing = (LONG_EVERY, offset);
        // Each life of session k has its own id, so its messages are its own.
        let id = move |life: &mut u64| {
            *life += 1;
            ((k as u64) << 32) | *life
        };
        let (channel, mut life) = (long_channel.clone(), 0u64);
        let open = move || {
            let (channel, id) = (channel.clone(), id(&mut life));
            async move { grpc_stream::Stream::open(addr, &channel, id).await }
        };
        longs.push((
            grpc_stream::LONG,
            tokio::spawn(load::long_lived(grpc_stream::LONG, k, timing, span, acc.clone(), open)),
        ));
        if with_tcp {
            let mut life = 0u64;
            let open = move || tcp::Long::open(id(&mut life));
            longs.push((tcp::LONG, tokio::spawn(load::long_lived(tcp::LONG, k, timing, span, acc.clone(), open))));
        }
    }

    (loads, longs)
}

/// A sample as one line of progress.
fn progress(s: &Sample) -> String {
    let rss =
        s.procs.iter().map(|(k, p)| format!("{k} {}", p.rss_kb.unwrap_or(0) / 1024)).collect::<Vec<_>>().join(", ");
    let certs = s.certs.iter().map(|(k, c)| format!("{k} {:?}", c.installed)).collect::<Vec<_>>().join(", ");
    format!("RSS MiB: {rss}; certificates installed: {certs}")
}

/// Per-minute rows, totals per leg, rotations and growth.
fn finish(rep: &mut SoakReport, acc: &Shared, legs: &[(&'static str, &'static str)], duration: Duration) {
    let unit = |leg: &str| legs.iter().find(|(l, _)| *l == leg).map_or("", |(_, u)| *u);
    if let Ok(a) = acc.lock() {
        rep.first_errors = a.first_errors.clone();
        rep.failure_kinds = a
            .kinds
            .iter()
            .map(|((leg, kind), (count, first_s, first))| report::FailureKind {
                leg: (*leg).into(),
                kind: kind.clone(),
                count: *count,
                first_s: *first_s,
                first: first.clone(),
            })
            .collect();
        for (minute, m) in a.minutes.iter().enumerate() {
            for (leg, (h, errors)) in m {
                let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                rep.minutes.push(MinuteStats {
                    minute,
                    leg: (*leg).into(),
                    unit: unit(leg).into(),
                    count: h.len() + errors,
                    errors: *errors,
                    p50_us: us(0.5),
                    p99_us: us(0.99),
                    p999_us: us(0.999),
                    max_us: h.max() as f64 / 1000.0,
                });
            }
        }
    }
    rep.minutes.sort_by_key(|m| (m.minute, legs.iter().position(|(l, _)| *l == m.leg)));
    for (leg, unit) in legs {
        let rows = rep.minutes.iter().filter(|m| m.leg == *leg);
        let (count, errors) = rows.fold((0, 0), |(c, e), m| (c + m.count, e + m.errors));
        rep.errors += errors;
        rep.legs.push(LegStats { leg: (*leg).into(), unit: (*unit).into(), what: what(leg, rep.rate), count, errors });
    }
    let installed = |s: &Sample, name: &str| s.certs.get(name).and_then(|c| c.installed);
    if let (Some(first), Some(last)) = (rep.samples.first(), rep.samples.last()) {
        for name in last.certs.keys() {
            if let (Some(a), Some(b)) = (installed(first, name), installed(last, name)) {
                rep.rotations.insert(name.clone(), b.saturating_sub(a));
            }
        }
    }
    rep.warmup_s = (duration.as_secs_f64() / 10.0).min(60.0);
    rep.rss_window_s = (duration.as_secs_f64() / 4.0).min(RSS_WINDOW_S);
    rep.growth = growth(&rep.samples, rep.warmup_s, rep.rss_window_s);
}

/// How long a window the RSS at the end of the warm-up and at the end is the lowest sample of:
/// three of the sidecars' `--heap-release-interval` (10 s). A sidecar gives the memory its
/// allocator holds free back every 10 s, so its RSS saws between releases and one sample can land
/// on either side of one; the lowest in a window is what the process keeps, not what it freed
/// and has not yet given back.
const RSS_WINDOW_S: f64 = 30.0;

/// Per process, from the samples after `warm`: RSS (the lowest sample in the first `window`
/// seconds and in the last `window` seconds), its growth, its max, and the fds.
fn growth(samples: &[Sample], warm: f64, window: f64) -> BTreeMap<String, Growth> {
    let mut out = BTreeMap::new();
    let names: Vec<String> = samples.first().map(|s| s.procs.keys().cloned().collect()).unwrap_or_default();
    let end_t = samples.last().map_or(0.0, |s| s.t_s);
    for name in names {
        let after: Vec<(f64, &ProcSample)> =
            samples.iter().filter(|s| s.t_s >= warm).filter_map(|s| Some((s.t_s, s.procs.get(&name)?))).collect();
        let (Some((_, w)), Some((_, e))) = (after.first(), after.last()) else { continue };
        let lowest = |from: f64, to: f64| {
            after.iter().filter(|(t, _)| *t >= from && *t <= to).filter_map(|(_, p)| p.rss_kb).min().unwrap_or(0)
        };
        let rss_warm = lowest(warm, warm + window);
        let rss_end = lowest(end_t - window, end_t);
        let fds: Vec<u64> = after.iter().filter_map(|(_, p)| p.fds).collect();
        out.insert(
            name,
            Growth {
                rss_warm_kb: rss_warm,
                rss_end_kb: rss_end,
                rss_max_kb: after.iter().filter_map(|(_, p)| p.rss_kb).max().unwrap_or(0),
                rss_growth_pct: if rss_warm > 0 {
                    (rss_end as f64 - rss_warm as f64) * 100.0 / rss_warm as f64
                } else {
                    0.0
                },
                fds_warm: w.fds.unwrap_or(0),
                fds_min: fds.iter().copied().min().unwrap_or(0),
                fds_max: fds.iter().copied().max().unwrap_or(0),
                fds_end: e.fds.unwrap_or(0),
            },
        );
    }
    out
}

/// The long-lived sessions of `leg` against the certificates of the sidecars on their path.
/// Both counts err on the low side: the certificates "at the open" are read from the first
/// sample taken once the session's first message had its time to pass (a sample can only show
/// the same or a newer certificate than the handshake used), those "at the last message" from
/// the last sample before it.
fn long_lived(leg: &str, sidecars: &[&str], lives: &[&Life], samples: &[Sample], start_unix: f64) -> LongLivedStats {
    let mut st = LongLivedStats {
        leg: leg.into(),
        sidecars: sidecars.iter().map(|s| (*s).to_owned()).collect(),
        ..LongLivedStats::default()
    };
    let settled = load::TIMEOUT.as_secs_f64();
    for life in lives {
        st.sessions += 1;
        st.messages += life.messages;
        st.broken += u64::from(life.broken.is_some());
        st.longest_s = st.longest_s.max(life.last_ok_s - life.opened_s);
        let Some(at_open) = samples.iter().find(|s| s.t_s >= life.opened_s + settled) else { continue };
        let cert = |s: &Sample, name: &str| s.certs.get(name).cloned().unwrap_or_default();
        if let Some(at_last) = samples.iter().rev().find(|s| s.t_s <= life.last_ok_s) {
            let rotated = sidecars.iter().all(
                |n| matches!((cert(at_open, n).installed, cert(at_last, n).installed), (Some(a), Some(b)) if b > a),
            );
            st.across_rotation += u64::from(rotated);
        }
        let outlived = sidecars
            .iter()
            .all(|n| cert(at_open, n).not_after_unix.is_some_and(|t| (t as f64 - start_unix) < life.last_ok_s));
        st.outlived_certificates += u64::from(outlived);
    }
    st
}

/// `600`, `600s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration (e.g. 60s, 10m, 1h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{s}`: the unit must be s, m or h")),
    };
    if secs == 0 {
        return Err("the soak needs a duration above 0".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod growth_tests {
    use super::*;

    fn sample(t_s: f64, rss_kb: u64) -> Sample {
        let mut s = Sample { t_s, ..Sample::default() };
        s.procs.insert("sidecar".into(), ProcSample { rss_kb: Some(rss_kb), fds: Some(20) });
        s
    }

    /// A sidecar whose RSS saws between heap releases (10 s) but keeps the same floor has not
    /// grown, whichever side of a release the last sample lands on.
    #[test]
    fn a_sawtooth_over_a_steady_floor_is_no_growth() {
        let samples: Vec<Sample> =
            (0..=120).map(|i| sample(i as f64 * 5.0, if i % 2 == 0 { 13_000 } else { 14_000 })).collect();
        let g = &growth(&samples, 60.0, 30.0)["sidecar"];
        assert_eq!((g.rss_warm_kb, g.rss_end_kb, g.rss_max_kb), (13_000, 13_000, 14_000));
        assert_eq!(g.rss_growth_pct, 0.0);
    }

    /// Memory the process keeps (the floor rises) is growth.
    #[test]
    fn a_rising_floor_is_growth() {
        let samples: Vec<Sample> = (0..=120).map(|i| sample(i as f64 * 5.0, 10_000 + i * 50)).collect();
        let g = &growth(&samples, 60.0, 30.0)["sidecar"];
        assert_eq!(g.rss_warm_kb, 10_600); // t = 60 s
        assert_eq!(g.rss_end_kb, 15_700); // t = 570 s, the lowest of the last 30 s
        assert!((g.rss_growth_pct - 48.11).abs() < 0.01, "{}", g.rss_growth_pct);
    }
}
