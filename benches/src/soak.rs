//! The soak: a control plane and a pair of meshed sidecars (mutual TLS from the control plane's
//! CA) carry HTTP/1.1, h2 and gRPC at a fixed rate for a long time, with retries and a circuit
//! breaker configured, a policy change every 10 s and workload certificates that rotate about
//! once a minute (90 s lifetime, renewed at 50–80 % of it). Sampled every 5 s: RSS and open
//! file descriptors of every process (control plane, both sidecars, this harness with its
//! upstream); per minute: requests, errors and latency of each protocol.
//!
//! Goals (from the reliability plan): no failed request, RSS growth under 5 % after the
//! warm-up (the first minute, or the first tenth of a shorter run), open fds flat.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::mtls::{API_TOKEN, api, api_json, control_plane_args, join_token, os};
use crate::peers::{self, Proc, TempDir};
use crate::upstream::{self, Upstream};
use crate::{latency, procstat};

/// The Service port the client sidecar is asked for.
const PORT: u16 = 9080;
const SERVICE: &str = "soak";
/// A request not answered within this counts as failed.
const TIMEOUT: Duration = Duration::from_secs(5);
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const POLICY_EVERY: Duration = Duration::from_secs(10);
/// Workload certificate lifetime: renewed at 45–72 s, so about once a minute.
const CERT_TTL: &str = "90s";
const PROTOCOLS: [&str; 3] = ["http1", "h2", "grpc"];
/// Most requests of one protocol in flight at once (beyond: counted as failed, never queued).
const MAX_IN_FLIGHT: usize = 256;
/// Goal: RSS growth after the warm-up.
pub const GOAL_RSS_GROWTH_PCT: f64 = 5.0;

#[derive(Debug)]
pub struct Config {
    pub proxy: PathBuf,
    pub control_plane: PathBuf,
    pub duration: Duration,
    /// Requests per second of each protocol.
    pub rate: u32,
    pub command: String,
}

/// One sample of one process.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcSample {
    pub rss_kb: Option<u64>,
    pub fds: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub t_s: f64,
    /// By process: `control-plane`, `client-sidecar`, `server-sidecar`, `harness`.
    pub procs: BTreeMap<String, ProcSample>,
    /// Workload certificates installed so far by the client and the server sidecar.
    pub certs_client: Option<u64>,
    pub certs_server: Option<u64>,
}

/// One minute of one protocol.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MinuteStats {
    pub minute: usize,
    pub protocol: String,
    pub requests: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SoakReport {
    pub command: String,
    pub machine: String,
    pub load_before: String,
    pub load_after: String,
    pub duration_s: f64,
    pub rate_per_protocol: u32,
    pub requests: u64,
    pub errors: u64,
    /// The first few failures, as the client saw them.
    pub first_errors: Vec<String>,
    pub policy_changes: u64,
    pub policy_change_errors: u64,
    /// Certificate rotations (installs after the first) of the client and server sidecars.
    pub rotations_client: Option<u64>,
    pub rotations_server: Option<u64>,
    pub warmup_s: f64,
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

struct Mesh {
    _cp: Proc,
    cp_pid: u32,
    api: SocketAddr,
    client: Proc,
    client_admin: SocketAddr,
    server: Proc,
    server_admin: SocketAddr,
    outbound: SocketAddr,
    _dir: TempDir,
}

/// The Service is `http2`: the server sidecar speaks h2c to the app, which carries the
/// HTTP/1.1 callers' requests, the h2 ones and gRPC (whose trailers HTTP/1.1 cannot carry).
fn policy(timeout_s: u32) -> String {
    format!(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: {SERVICE}}}\nspec:\n  protocol: http2\n  port: {PORT}\n---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {SERVICE}}}\nspec:\n  service: {SERVICE}\n  timeout: {timeout_s}s\n  retries:\n    attempts: 3\n    perTryTimeout: 2s\n    retryOn: [connect-failure, refused-stream, reset, gateway-error]\n  circuitBreaker:\n    maxRequests: 1024\n    failureRateThreshold: 50\n    window: 20\n    minimumCalls: 10\n    openDuration: 30s\n"
    )
}

fn start_mesh(cfg: &Config, up: &Upstream) -> Result<Mesh> {
    let dir = TempDir::new("soak")?;
    let (xds_port, api_port) = (peers::free_port()?, peers::free_port()?);
    let data = dir.0.join("cp-data");
    let args = control_plane_args(&data, xds_port, api_port, &["--workload-cert-ttl", CERT_TTL]);
    let mut cmd = peers::pinned(0, &cfg.control_plane, &args);
    cmd.env("RUST_LOG", "warn");
    let api_addr = peers::local(api_port);
    let cp = peers::start_and_wait(cmd, TempDir::new("soak-cp")?, (api_addr, "/healthz", "cp"))
        .with_context(|| format!("starting {} control-plane", cfg.control_plane.display()))?;
    let cp_pid = cp.pid;
    let (status, text) = api(api_addr, "PUT", "/v1/policies", Some(API_TOKEN), &policy(10))?;
    if status != 200 {
        bail!("PUT /v1/policies: {status} {text}");
    }
    let xds = format!("http://{}", peers::local(xds_port));
    let ca = format!("http://{api_addr}");
    let identity = |sa: &str| -> Result<Vec<String>> {
        let file = dir.0.join(format!("{sa}.token"));
        std::fs::write(&file, join_token(api_addr, sa)?)?;
        Ok(vec!["--identity-token".into(), file.to_string_lossy().into_owned(), "--ca-address".into(), ca.clone()])
    };
    let mut extra = vec!["--inbound-port".to_string(), peers::free_port()?.to_string()];
    extra.extend(["--app-port".into(), up.http.port().to_string()]);
    let (server, server_admin) =
        sidecar(cfg, &xds, SERVICE, peers::free_port()?, extra, identity(SERVICE)?).context("the server sidecar")?;
    let out_port = peers::free_port()?;
    let extra = vec!["--inbound-port".to_string(), peers::free_port()?.to_string()];
    let (client, client_admin) =
        sidecar(cfg, &xds, "soak-client", out_port, extra, identity("soak-client")?).context("the client sidecar")?;
    let outbound = peers::local(out_port);
    peers::wait_ok(outbound, "/", &host(), std::time::Instant::now())
        .context("the client sidecar never reached the server sidecar")?;
    Ok(Mesh { _cp: cp, cp_pid, api: api_addr, client, client_admin, server, server_admin, outbound, _dir: dir })
}

fn host() -> String {
    format!("{SERVICE}:{PORT}")
}

fn sidecar(
    cfg: &Config,
    xds: &str,
    service: &str,
    out_port: u16,
    extra: Vec<String>,
    identity: Vec<String>,
) -> Result<(Proc, SocketAddr)> {
    let admin = peers::free_port()?;
    let mut args: Vec<String> = [
        "--xds-address",
        xds,
        "--service",
        service,
        "--workers",
        "1",
        "--access-log",
        "off",
        "--inbound-bind",
        "127.0.0.1",
        "--health-port",
        "0",
        "--metrics-port",
        "0",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(["--outbound-port".into(), out_port.to_string(), "--admin-port".into(), admin.to_string()]);
    args.extend(extra);
    args.extend(identity);
    let mut cmd = peers::pinned(0, &cfg.proxy, &os(&args));
    cmd.env("OUTRIDER_LOG", "warn");
    let p = peers::start_and_wait(
        cmd,
        TempDir::new(&format!("soak-{service}"))?,
        (peers::local(admin), "/ready", "admin"),
    )?;
    Ok((p, peers::local(admin)))
}

/// Results of the load, by minute and protocol.
struct Acc {
    minutes: Vec<BTreeMap<&'static str, (hdrhistogram::Histogram<u64>, u64)>>,
    first_errors: Vec<String>,
}

impl Acc {
    fn slot(&mut self, minute: usize) -> &mut BTreeMap<&'static str, (hdrhistogram::Histogram<u64>, u64)> {
        while self.minutes.len() <= minute {
            self.minutes.push(PROTOCOLS.iter().map(|p| (*p, (latency::histogram(), 0))).collect());
        }
        &mut self.minutes[minute]
    }
}

type Shared = Arc<Mutex<Acc>>;

fn record(acc: &Shared, start: Instant, intended: Instant, proto: &'static str, outcome: Result<()>) {
    let minute = (intended.duration_since(start).as_secs() / 60) as usize;
    let ns = intended.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
    let Ok(mut a) = acc.lock() else { return };
    match outcome {
        Ok(()) => {
            if let Some((h, _)) = a.slot(minute).get_mut(proto) {
                let _ = h.record(ns.max(1));
            }
        }
        Err(e) => {
            if let Some((_, errors)) = a.slot(minute).get_mut(proto) {
                *errors += 1;
            }
            if a.first_errors.len() < 20 {
                let t = intended.duration_since(start).as_secs_f64();
                a.first_errors.push(format!("{t:.1}s {proto}: {e:#}"));
            }
        }
    }
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h1_connect(addr: SocketAddr) -> Result<H1> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn h2_connect(addr: SocketAddr) -> Result<H2> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await?;
    tokio::spawn(conn);
    Ok(send)
}

fn request(proto: &str, i: u64) -> Result<http::Request<Full<Bytes>>> {
    let b = http::Request::builder().header(http::header::HOST, host());
    Ok(match proto {
        "grpc" => b
            .method("POST")
            .uri(format!("http://{}{}", host(), upstream::GRPC_PATH))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::new(upstream::grpc_frame(64)))?,
        "h2" => b.uri(format!("http://{}/soak/h2/{i}", host())).body(Full::new(Bytes::new()))?,
        _ => b.uri(format!("/soak/h1/{i}")).body(Full::new(Bytes::new()))?,
    })
}

/// Check a whole answer: 200 with the upstream's body; for gRPC `grpc-status: 0` in the trailers.
async fn check(resp: http::Response<hyper::body::Incoming>, grpc: bool) -> Result<()> {
    let status = resp.status();
    let local = resp.headers().get("x-outrider-local-reply").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.into_body().collect().await.context("reading the body")?;
    if status != 200 {
        bail!("status {status}{}", local.map(|l| format!(" ({l})")).unwrap_or_default());
    }
    if grpc {
        let code = body.trailers().and_then(|t| t.get("grpc-status")).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if code.as_deref() != Some("0") {
            bail!("grpc-status {code:?}");
        }
    } else if body.to_bytes().len() != upstream::BODY_SIZE {
        bail!("a short body");
    }
    Ok(())
}

/// Idle HTTP/1.1 connections to the client sidecar.
type Pool = Arc<Mutex<Vec<H1>>>;

async fn one_h1(addr: SocketAddr, pool: Pool, i: u64) -> Result<()> {
    let idle = pool.lock().ok().and_then(|mut p| p.pop());
    let mut send = match idle {
        Some(s) if !s.is_closed() => s,
        _ => h1_connect(addr).await?,
    };
    send.ready().await?;
    let resp = send.send_request(request("http1", i)?).await?;
    check(resp, false).await?;
    if let Ok(mut p) = pool.lock() {
        p.push(send);
    }
    Ok(())
}

/// The h2 connection shared by the h2 and gRPC requests (one connection, many streams, as a
/// gRPC channel); replaced when it breaks.
type Conn = Arc<tokio::sync::Mutex<Option<H2>>>;

async fn one_h2(addr: SocketAddr, conn: Conn, proto: &'static str, i: u64) -> Result<()> {
    let mut send = {
        let mut c = conn.lock().await;
        match c.as_ref() {
            Some(s) if !s.is_closed() => s.clone(),
            _ => {
                let s = h2_connect(addr).await?;
                *c = Some(s.clone());
                s
            }
        }
    };
    send.ready().await?;
    let resp = send.send_request(request(proto, i)?).await?;
    check(resp, proto == "grpc").await
}

/// Fixed-rate load of one protocol until `end`; latency from each request's intended time.
async fn load(addr: SocketAddr, proto: &'static str, rate: u32, start: Instant, end: Instant, acc: Shared) {
    let pool: Pool = Arc::default();
    let conn: Conn = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    loop {
        let intended = tick.tick().await;
        if intended >= end {
            break;
        }
        i += 1;
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            record(&acc, start, intended, proto, Err(anyhow::anyhow!("{MAX_IN_FLIGHT} requests already in flight")));
            continue;
        };
        let (acc, pool, conn) = (acc.clone(), pool.clone(), conn.clone());
        tasks.spawn(async move {
            let fut = async {
                match proto {
                    "http1" => one_h1(addr, pool, i).await,
                    _ => one_h2(addr, conn, proto, i).await,
                }
            };
            let outcome = match tokio::time::timeout(TIMEOUT, fut).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("no answer within {TIMEOUT:?}")),
            };
            record(&acc, start, intended, proto, outcome);
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count() as u64)
}

fn certs_installed(admin: SocketAddr) -> Option<u64> {
    let v = api_json(admin, "GET", "/config_dump", None, "").ok()?;
    v["node"]["identity"]["certificates_installed"].as_u64()
}

fn sample(mesh_pids: &[(&'static str, u32)], admins: (SocketAddr, SocketAddr), t_s: f64) -> Sample {
    let procs = mesh_pids
        .iter()
        .map(|(name, pid)| (name.to_string(), ProcSample { rss_kb: procstat::rss_kb(*pid), fds: fds(*pid) }))
        .collect();
    Sample { t_s, procs, certs_client: certs_installed(admins.0), certs_server: certs_installed(admins.1) }
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
        rate_per_protocol: cfg.rate,
        ..SoakReport::default()
    };
    let up = upstream::start()?;
    let mesh = start_mesh(cfg, &up)?;
    let pids: Vec<(&'static str, u32)> = vec![
        ("control-plane", mesh.cp_pid),
        ("client-sidecar", mesh.client.pid),
        ("server-sidecar", mesh.server.pid),
        ("harness", std::process::id()),
    ];
    let admins = (mesh.client_admin, mesh.server_admin);
    let start = Instant::now();
    let end = start + cfg.duration;
    let acc: Shared = Arc::new(Mutex::new(Acc { minutes: Vec::new(), first_errors: Vec::new() }));
    let loads: Vec<_> =
        PROTOCOLS.iter().map(|p| tokio::spawn(load(mesh.outbound, p, cfg.rate, start, end, acc.clone()))).collect();

    // Policy changes and samples, until the end.
    let mut policy_tick = tokio::time::interval_at(start + POLICY_EVERY, POLICY_EVERY);
    let mut sample_tick = tokio::time::interval(SAMPLE_EVERY);
    let mut n = 0u32;
    let api_addr = mesh.api;
    loop {
        tokio::select! {
            at = sample_tick.tick() => {
                if at > end { break; }
                let t = at.duration_since(start).as_secs_f64();
                let p = pids.clone();
                if let Ok(s) = tokio::task::spawn_blocking(move || sample(&p, admins, t)).await {
                    let m = |k: &str| s.procs.get(k).and_then(|p| p.rss_kb).unwrap_or(0) / 1024;
                    eprintln!(
                        "[soak {t:>5.0}s] RSS MiB cp {} client {} server {} harness {}; certs {:?}/{:?}",
                        m("control-plane"), m("client-sidecar"), m("server-sidecar"), m("harness"),
                        s.certs_client, s.certs_server
                    );
                    rep.samples.push(s);
                }
            }
            at = policy_tick.tick() => {
                if at > end { continue; }
                n += 1;
                let body = policy(10 + n % 2);
                let ok = tokio::task::spawn_blocking(move || api(api_addr, "PUT", "/v1/policies", Some(API_TOKEN), &body))
                    .await
                    .is_ok_and(|r| r.is_ok_and(|(s, _)| s == 200));
                rep.policy_changes += 1;
                if !ok { rep.policy_change_errors += 1; }
            }
        }
    }
    for l in loads {
        let _ = l.await;
    }
    rep.duration_s = start.elapsed().as_secs_f64();
    let last = tokio::task::spawn_blocking(move || sample(&pids, admins, cfg_secs(end, start))).await?;
    rep.samples.push(last);
    rep.load_after = procstat::loadavg();
    finish(&mut rep, &acc, cfg.duration);
    drop(mesh);
    Ok(rep)
}

fn cfg_secs(end: Instant, start: Instant) -> f64 {
    end.duration_since(start).as_secs_f64()
}

fn finish(rep: &mut SoakReport, acc: &Shared, duration: Duration) {
    if let Ok(a) = acc.lock() {
        rep.first_errors = a.first_errors.clone();
        for (minute, m) in a.minutes.iter().enumerate() {
            for (proto, (h, errors)) in m {
                let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                rep.requests += h.len() + errors;
                rep.errors += errors;
                rep.minutes.push(MinuteStats {
                    minute,
                    protocol: (*proto).into(),
                    requests: h.len() + errors,
                    errors: *errors,
                    p50_us: us(0.5),
                    p99_us: us(0.99),
                    p999_us: us(0.999),
                    max_us: h.max() as f64 / 1000.0,
                });
            }
        }
    }
    let first = |s: &Sample| s.certs_client.zip(s.certs_server);
    if let (Some(a), Some(b)) = (rep.samples.first().and_then(first), rep.samples.last().and_then(first)) {
        rep.rotations_client = Some(b.0.saturating_sub(a.0));
        rep.rotations_server = Some(b.1.saturating_sub(a.1));
    }
    rep.warmup_s = (duration.as_secs_f64() / 10.0).min(60.0);
    let warm = rep.warmup_s;
    let names: Vec<String> = rep.samples.first().map(|s| s.procs.keys().cloned().collect()).unwrap_or_default();
    for name in names {
        let after: Vec<&ProcSample> =
            rep.samples.iter().filter(|s| s.t_s >= warm).filter_map(|s| s.procs.get(&name)).collect();
        let (Some(w), Some(e)) = (after.first(), after.last()) else { continue };
        let rss_warm = w.rss_kb.unwrap_or(0);
        let rss_end = e.rss_kb.unwrap_or(0);
        let fds: Vec<u64> = after.iter().filter_map(|p| p.fds).collect();
        rep.growth.insert(
            name,
            Growth {
                rss_warm_kb: rss_warm,
                rss_end_kb: rss_end,
                rss_max_kb: after.iter().filter_map(|p| p.rss_kb).max().unwrap_or(0),
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

pub fn write(dir: &Path, rep: &SoakReport) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("soak.json"), serde_json::to_string_pretty(rep)?)?;
    std::fs::write(dir.join("soak.md"), markdown(rep))?;
    crate::soak_plot::write(&dir.join("soak.svg"), rep)?;
    Ok(())
}

pub fn markdown(r: &SoakReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# Soak run\n");
    let _ = writeln!(
        s,
        "`{}` on {}; load average before {}, after {}.\n",
        r.command, r.machine, r.load_before, r.load_after
    );
    let _ = writeln!(
        s,
        "{:.0} s; {} req/s each of HTTP/1.1, h2 and gRPC through a meshed sidecar pair (mutual TLS); {} requests, **{} failed**; {} policy changes ({} refused); certificate rotations: client {}, server {}.\n",
        r.duration_s,
        r.rate_per_protocol,
        r.requests,
        r.errors,
        r.policy_changes,
        r.policy_change_errors,
        r.rotations_client.map_or("?".into(), |n| n.to_string()),
        r.rotations_server.map_or("?".into(), |n| n.to_string()),
    );
    let _ = writeln!(
        s,
        "| Process | RSS after warm-up ({:.0} s) | RSS at the end | max | growth | fds after warm-up | fds min–max | fds at the end |",
        r.warmup_s
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
    let _ = writeln!(s, "\n| Minute | Protocol | Requests | Failed | p50 µs | p99 µs | p99.9 µs | max µs |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for m in &r.minutes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            m.minute + 1,
            m.protocol,
            m.requests,
            m.errors,
            m.p50_us,
            m.p99_us,
            m.p999_us,
            m.max_us
        );
    }
    if !r.first_errors.is_empty() {
        let _ = writeln!(s, "\nFirst failures:\n");
        for e in &r.first_errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    s
}

pub fn summary(r: &SoakReport) -> String {
    let mut s = format!(
        "soak: {:.0} s, {} requests, {} failed, {} policy changes ({} refused), rotations client {:?} server {:?}\n",
        r.duration_s,
        r.requests,
        r.errors,
        r.policy_changes,
        r.policy_change_errors,
        r.rotations_client,
        r.rotations_server
    );
    for (name, g) in &r.growth {
        let goal = if g.rss_growth_pct < GOAL_RSS_GROWTH_PCT { "ok" } else { "ABOVE GOAL" };
        s.push_str(&format!(
            "  {name}: RSS {:.1} -> {:.1} MiB ({:+.1} %, {goal}), fds {}..{}\n",
            g.rss_warm_kb as f64 / 1024.0,
            g.rss_end_kb as f64 / 1024.0,
            g.rss_growth_pct,
            g.fds_min,
            g.fds_max
        ));
    }
    s
}
