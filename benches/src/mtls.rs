//! The mTLS scenario: two sidecars (a client sidecar in front of the load generator, a server
//! sidecar in front of the upstream app), registered with a real control plane, once without
//! identities (plaintext between them) and once with workload certificates from the control
//! plane's CA (mutual TLS: the app's HTTP/1.1 on pooled mTLS HTTP/1.1 connections, ALPN
//! `outrider-http1/1`).
//!
//! Pinning as in the other scenarios: both sidecars on the proxy core (one worker each), so
//! "CPU per request" is the pair's; the control plane, the upstream, wrk, the open-loop
//! generator and the handshake client on the load core.
//!
//! Measured: closed-loop throughput and CPU per request of the pair (wrk, HTTP/1.1 keep-alive
//! to the client sidecar), rounds alternating plaintext and mTLS; open-loop latency at one
//! rate direct / plaintext pair / mTLS pair; and full mTLS handshakes per second against the
//! server sidecar's inbound port from one client core, with the server's CPU per handshake.
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use outrider_proxy::tls::{self, CertStore, Identity, TrustBundle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::peers::{self, Proc, TempDir};
use crate::report::Goal;
use crate::run::{Progress, Settings, Workload};
use crate::upstream::Upstream;
use crate::{openloop, procstat, wrk};

pub(crate) const API_TOKEN: &str = "outrider-bench-api-token";
/// The Service port the client sidecar is asked for (`Host: bench-mtls:9080`).
const PORT: u16 = 9080;
/// Goals from the issue.
const GOAL_THROUGHPUT_RATIO: f64 = 0.8;
const GOAL_ADDED_P99_US: f64 = 500.0;

#[derive(Debug)]
pub struct Config<'a> {
    pub proxy: &'a Path,
    pub control_plane: &'a Path,
    pub settings: &'a Settings,
    /// Closed-loop rounds; each runs the plaintext pair, then the mTLS pair.
    pub rounds: u32,
    /// Open-loop rate for the latency comparison.
    pub rate: u32,
    /// Handshake client tasks (all on the load core).
    pub handshake_concurrency: usize,
    pub command: String,
}

/// One pair of sidecars.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Pair {
    /// `plaintext` or `mtls`.
    pub name: String,
    /// The Host the load sends to the client sidecar.
    pub host: String,
    pub client_ready_ms: Option<f64>,
    pub server_ready_ms: Option<f64>,
    /// Closed loop over every round: requests summed, req/s = requests / time, CPU of both
    /// sidecars (µs per request).
    pub closed: Option<Workload>,
    /// req/s of each round.
    pub closed_rounds_rps: Vec<f64>,
    /// Open loop at the scenario's rate, every round's latencies merged; CPU of both sidecars.
    pub open: Option<Workload>,
    /// p99 of each round's open loop.
    pub open_rounds_p99_us: Vec<f64>,
    /// `outrider_tls_connections_total{direction="inbound"}` of the server sidecar after the
    /// load: how many mTLS connections from the client sidecar it accepted (0 for plaintext).
    pub server_inbound_tls_connections: Option<f64>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Handshakes {
    pub concurrency: usize,
    pub duration_s: f64,
    /// Completed: TCP connect, full TLS 1.3 handshake with client certificate (no resumption),
    /// the server's first h2 bytes received, close.
    pub handshakes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub per_s: f64,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_handshake: Option<f64>,
    /// The harness process (the handshake client; the upstream is idle meanwhile).
    pub client_cpu_us_per_handshake: Option<f64>,
    /// The server sidecar's inbound mTLS connection counter grew by this much.
    pub server_counted: Option<f64>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MtlsReport {
    pub command: String,
    pub machine: String,
    pub load_before: String,
    pub load_after: String,
    pub pinning: String,
    pub skipped: Option<String>,
    pub error: Option<String>,
    pub notes: Vec<String>,
    pub duration_s: u64,
    pub rounds: u32,
    pub connections: u32,
    pub rate: u32,
    pub open_connections: u32,
    /// The open loop straight at the upstream, for "added" latency (rounds merged).
    pub direct_open: Option<Workload>,
    pub direct_open_rounds_p99_us: Vec<f64>,
    pub pairs: Vec<Pair>,
    pub handshakes: Option<Handshakes>,
}

impl MtlsReport {
    pub fn pair(&self, name: &str) -> Option<&Pair> {
        self.pairs.iter().find(|p| p.name == name)
    }
}

/// Steps on the progress line.
pub fn steps(rounds: u32) -> usize {
    // set-up, warm-up, per round 2 closed and 3 open loops, handshakes
    3 + 5 * rounds as usize
}

pub async fn run(cfg: &Config<'_>, up: &Upstream, prog: &mut Progress) -> MtlsReport {
    let s = cfg.settings;
    let mut rep = MtlsReport {
        command: cfg.command.clone(),
        machine: crate::report::machine(),
        load_before: procstat::loadavg(),
        pinning: if s.unpinned {
            "unpinned: sidecars (one worker each), control plane, upstream and load generators on any core".into()
        } else {
            format!(
                "client and server sidecars on core {} (one worker each); control plane, upstream, wrk, open-loop and handshake clients on core {}",
                s.proxy_core, s.load_core
            )
        },
        duration_s: s.duration_s,
        rounds: cfg.rounds,
        connections: s.connections,
        rate: cfg.rate,
        open_connections: s.open_connections,
        ..MtlsReport::default()
    };
    for (bin, build) in [(cfg.proxy, "outrider-proxy"), (cfg.control_plane, "outrider-control-plane --bins")] {
        if !bin.exists() {
            let why = format!("{} not found: run `cargo build --release -p {build}` first", bin.display());
            eprintln!("[mtls] skipped: {why}");
            rep.skipped = Some(why);
            prog.total -= steps(cfg.rounds);
            return rep;
        }
    }
    if let Err(e) = measure(cfg, up, prog, &mut rep).await {
        eprintln!("[mtls] FAILED: {e:#}");
        rep.error = Some(format!("{e:#}"));
    }
    rep.load_after = procstat::loadavg();
    rep
}

/// The running mesh: a control plane and the two pairs.
struct Mesh {
    _cp: Proc,
    api: SocketAddr,
    pairs: Vec<RunningPair>,
    _dir: TempDir,
}

struct RunningPair {
    name: &'static str,
    host: String,
    client: Proc,
    server: Proc,
    /// The client sidecar's outbound port.
    outbound: SocketAddr,
    /// The server sidecar's inbound port and metrics port.
    inbound: SocketAddr,
    metrics: SocketAddr,
    server_identity: String,
}

impl RunningPair {
    fn pids(&self) -> [u32; 2] {
        [self.client.pid, self.server.pid]
    }
}

async fn measure(cfg: &Config<'_>, up: &Upstream, prog: &mut Progress, rep: &mut MtlsReport) -> Result<()> {
    let s = cfg.settings;
    let dur = Duration::from_secs(s.duration_s);
    prog.step("mtls", "control plane and two pairs of sidecars (plaintext, mTLS)");
    rep.notes.push(
        "the plaintext pair's hop is the client sidecar's pool of HTTP/1.1 connections to the server sidecar (the app's protocol); the mTLS pair's is its pool of TLS 1.3 connections carrying HTTP/1.1 (ALPN outrider-http1/1): the comparison is the mesh's real plaintext path against its real mTLS path".into(),
    );
    let mesh = start_mesh(cfg, up)?;
    for p in &mesh.pairs {
        rep.pairs.push(Pair {
            name: p.name.into(),
            host: p.host.clone(),
            client_ready_ms: Some(p.client.ready.as_secs_f64() * 1000.0),
            server_ready_ms: Some(p.server.ready.as_secs_f64() * 1000.0),
            ..Pair::default()
        });
    }

    let wrk_ok = wrk::available();
    prog.step("mtls", "warm-up, both pairs");
    for p in &mesh.pairs {
        if wrk_ok {
            let _ = wrk::run(&url(p.outbound), Some(&p.host), 4, Duration::from_secs(1), s.load_core).await;
        } else {
            let _ = openloop::run(p.outbound, &p.host, 1000, Duration::from_secs(1), 4).await;
        }
    }

    // Closed loop, alternating the pairs so that a noisy neighbour hits both alike.
    let mut totals: Vec<(u64, f64, f64, Option<String>)> = vec![(0, 0.0, 0.0, None); mesh.pairs.len()];
    for round in 1..=cfg.rounds {
        for (i, p) in mesh.pairs.iter().enumerate() {
            prog.step(
                "mtls",
                &format!(
                    "{} pair, closed loop, wrk {} connections, {}s (round {round}/{})",
                    p.name, s.connections, s.duration_s, cfg.rounds
                ),
            );
            if !wrk_ok {
                totals[i].3 = Some("wrk is not installed (apt-get install wrk)".into());
                continue;
            }
            let before = cpu_s(&p.pids());
            let start = Instant::now();
            match wrk::run(&url(p.outbound), Some(&p.host), s.connections, dur, s.load_core).await {
                Ok(r) => {
                    let el = start.elapsed().as_secs_f64();
                    let cpu = cpu_s(&p.pids()).zip(before).map(|(a, b)| a - b).unwrap_or(f64::NAN);
                    totals[i].0 += r.requests;
                    // wrk's own time: its requests over its reported rate.
                    totals[i].1 += if r.rps > 0.0 { r.requests as f64 / r.rps } else { el };
                    totals[i].2 += cpu;
                    rep.pairs[i].closed_rounds_rps.push(r.rps);
                }
                Err(e) => {
                    eprintln!("  {} closed loop failed: {e:#}", p.name);
                    totals[i].3 = Some(format!("{e:#}"));
                }
            }
        }
    }
    for (i, (requests, secs, cpu, err)) in totals.into_iter().enumerate() {
        let mut w = Workload { name: "http1".into(), tool: "wrk".into(), ..Workload::default() };
        if let Some(e) = err {
            if wrk::available() {
                w.error = Some(e);
            } else {
                w.skipped = Some(e);
            }
        } else {
            w.requests = requests;
            w.rps = if secs > 0.0 { requests as f64 / secs } else { 0.0 };
            if cpu.is_finite() {
                w.cpu_s = Some(cpu);
                w.cpu_us_per_request = (requests > 0).then(|| cpu * 1e6 / requests as f64);
            }
        }
        rep.pairs[i].closed = Some(w);
    }

    // Open loop: direct, then each pair, per round; each path's rounds merged.
    let mut direct = OpenAcc::new(cfg.rate);
    let mut open: Vec<OpenAcc> = mesh.pairs.iter().map(|_| OpenAcc::new(cfg.rate)).collect();
    for round in 1..=cfg.rounds {
        let of = format!("open loop {} req/s, {}s (round {round}/{})", cfg.rate, s.duration_s, cfg.rounds);
        prog.step("mtls", &format!("direct, {of}"));
        direct.run(up.http, "bench", dur, s, &[]).await;
        for (i, p) in mesh.pairs.iter().enumerate() {
            prog.step("mtls", &format!("{} pair, {of}", p.name));
            open[i].run(p.outbound, &p.host, dur, s, &p.pids()).await;
        }
    }
    (rep.direct_open_rounds_p99_us, rep.direct_open) = direct.finish();
    for (i, acc) in open.into_iter().enumerate() {
        (rep.pairs[i].open_rounds_p99_us, rep.pairs[i].open) = acc.finish();
    }

    // Before the handshake test, which adds its own connections to the mTLS server's count.
    for (i, p) in mesh.pairs.iter().enumerate() {
        rep.pairs[i].server_inbound_tls_connections = inbound_tls_connections(p.metrics).ok();
    }

    let m = mesh.pairs.iter().find(|p| p.name == "mtls").context("no mTLS pair")?;
    prog.step("mtls", &format!("mTLS handshakes, {} client tasks, {}s", cfg.handshake_concurrency, s.duration_s));
    let counted_before = inbound_tls_connections(m.metrics).ok();
    let client = handshake_client(mesh.api, &m.server_identity).await.context("the handshake client")?;
    let mut h = handshakes(m.inbound, client, dur, cfg.handshake_concurrency, m.server.pid).await;
    h.server_counted = inbound_tls_connections(m.metrics).ok().zip(counted_before).map(|(a, b)| a - b);
    rep.handshakes = Some(h);
    Ok(())
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

fn cpu_s(pids: &[u32]) -> Option<f64> {
    let mut ticks = 0;
    for &pid in pids {
        ticks += procstat::cpu_ticks(pid).ok()?;
    }
    Some(ticks as f64 / procstat::ticks_per_second())
}

/// The open-loop runs of one path, merged over the rounds.
struct OpenAcc {
    rate: u32,
    hist: hdrhistogram::Histogram<u64>,
    requests: u64,
    errors: u64,
    secs: f64,
    cpu: Option<f64>,
    error: Option<String>,
    p99s: Vec<f64>,
}

impl OpenAcc {
    fn new(rate: u32) -> Self {
        Self {
            rate,
            hist: crate::latency::histogram(),
            requests: 0,
            errors: 0,
            secs: 0.0,
            cpu: Some(0.0),
            error: None,
            p99s: Vec::new(),
        }
    }

    async fn run(&mut self, addr: SocketAddr, host: &str, dur: Duration, s: &Settings, pids: &[u32]) {
        let before = cpu_s(pids);
        match openloop::run(addr, host, self.rate, dur, s.open_connections as usize).await {
            Ok(r) => {
                let after = cpu_s(pids);
                self.requests += r.requests;
                self.errors += r.errors;
                self.secs += if r.rps > 0.0 { r.requests as f64 / r.rps } else { 0.0 };
                self.p99s.push(r.latency.p99_us);
                let _ = self.hist.add(&r.histogram);
                self.cpu = match (self.cpu, before, after) {
                    (Some(c), Some(b), Some(a)) if !pids.is_empty() => Some(c + a - b),
                    _ => None,
                };
            }
            Err(e) => {
                eprintln!("  open loop to {addr} failed: {e:#}");
                self.error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    fn finish(self) -> (Vec<f64>, Option<Workload>) {
        let mut w = Workload {
            name: format!("http1-open-{}", self.rate),
            tool: "outrider-benches open loop".into(),
            ..Workload::default()
        };
        if let Some(e) = self.error {
            w.error = Some(e);
        } else {
            w.requests = self.requests;
            w.errors = self.errors;
            w.rps = if self.secs > 0.0 { self.requests as f64 / self.secs } else { 0.0 };
            w.latency = Some(crate::latency::Latency::from_histogram(&self.hist));
            w.cpu_s = self.cpu;
            w.cpu_us_per_request = self.cpu.filter(|_| self.requests > 0).map(|c| c * 1e6 / self.requests as f64);
        }
        (self.p99s, Some(w))
    }
}

/// A plain HTTP/1.1 call to the control plane API (blocking, `Connection: close`).
pub(crate) fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let ctype = if body.starts_with('{') { "application/json" } else { "application/yaml" };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n{auth}Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    // The control plane may answer chunked; the JSON is the one line that parses.
    let body = if serde_json::from_str::<Value>(&body).is_ok() {
        body
    } else {
        body.lines().find(|l| serde_json::from_str::<Value>(l).is_ok()).unwrap_or(&body).to_string()
    };
    Ok((status, body))
}

pub(crate) fn api_json(addr: SocketAddr, method: &str, path: &str, bearer: Option<&str>, body: &str) -> Result<Value> {
    let (status, text) = api(addr, method, path, bearer, body)?;
    if status != 200 {
        bail!("{method} {path}: {status} {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
}

pub(crate) fn join_token(api_addr: SocketAddr, service_account: &str) -> Result<String> {
    let body = json!({"namespace": "default", "serviceAccount": service_account}).to_string();
    let v = api_json(api_addr, "POST", "/v1/tokens", Some(API_TOKEN), &body)?;
    Ok(v["token"].as_str().context("no token in the answer")?.to_string())
}

pub(crate) fn os(args: &[String]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `outrider control-plane` for a bench: the ports, the data dir, the bench's API token, one
/// worker, text logs, then `extra`.
pub(crate) fn control_plane_args(
    data: &std::path::Path,
    xds_port: u16,
    api_port: u16,
    extra: &[&str],
) -> Vec<OsString> {
    let mut args = vec![
        "control-plane".to_owned(),
        "--xds-port".into(),
        xds_port.to_string(),
        "--api-port".into(),
        api_port.to_string(),
        "--data-dir".into(),
        data.to_string_lossy().into_owned(),
        "--api-token".into(),
        API_TOKEN.into(),
        "--workers".into(),
        "1".into(),
        "--log-format".into(),
        "text".into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    os(&args)
}

fn start_mesh(cfg: &Config<'_>, up: &Upstream) -> Result<Mesh> {
    let s = cfg.settings;
    let dir = TempDir::new("mtls")?;
    let (xds_port, api_port) = (peers::free_port()?, peers::free_port()?);
    let data = dir.0.join("cp-data");
    // The plaintext pair (the baseline the mTLS pair is compared with) has no workload
    // identity, and only authenticated streams register endpoints otherwise.
    let args = control_plane_args(&data, xds_port, api_port, &["--insecure-registration"]);
    let mut cmd = peers::pinned(s.load_core, cfg.control_plane, &args);
    cmd.env("RUST_LOG", "warn");
    let api_addr = peers::local(api_port);
    let cp = peers::start_and_wait(cmd, TempDir::new("mtls-cp")?, (api_addr, "/healthz", "cp"))
        .with_context(|| format!("starting {} control-plane", cfg.control_plane.display()))?;
    let svc = |name: &str| {
        format!(
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  protocol: http\n  port: {PORT}\n"
        )
    };
    let policy = [svc("bench-plain"), svc("bench-mtls")].join("---\n");
    let (status, text) = api(api_addr, "PUT", "/v1/policies", Some(API_TOKEN), &policy)?;
    if status != 200 {
        bail!("PUT /v1/policies: {status} {text}");
    }
    let bundle = api_json(api_addr, "GET", "/v1/ca/bundle", None, "")?;
    let trust_domain = bundle["trustDomain"].as_str().context("no trustDomain")?.to_string();
    let xds = format!("http://{}", peers::local(xds_port));
    let ca = format!("http://{api_addr}");

    let mut pairs = Vec::new();
    for (name, meshed) in [("plaintext", false), ("mtls", true)] {
        let service = if meshed { "bench-mtls" } else { "bench-plain" };
        let client_sa = if meshed { "client-mtls" } else { "client-plain" };
        let identity = |sa: &str| -> Result<Vec<String>> {
            if !meshed {
                return Ok(Vec::new());
            }
            let file = dir.0.join(format!("{sa}.token"));
            std::fs::write(&file, join_token(api_addr, sa)?)?;
            Ok(vec!["--identity-token".into(), file.to_string_lossy().into_owned(), "--ca-address".into(), ca.clone()])
        };
        let (in_port, metrics_port) = (peers::free_port()?, peers::free_port()?);
        let server = sidecar(cfg, &xds, service, Some(up.http.port()), in_port, metrics_port, identity(service)?)
            .with_context(|| format!("starting the {name} server sidecar"))?;
        let out_port = peers::free_port()?;
        let client = sidecar_out(cfg, &xds, client_sa, out_port, identity(client_sa)?)
            .with_context(|| format!("starting the {name} client sidecar"))?;
        let host = format!("{service}:{PORT}");
        let outbound = peers::local(out_port);
        // Ready means config and certificate; the server's endpoint arrives over xDS.
        peers::wait_ok(outbound, "/", &host, Instant::now())
            .with_context(|| format!("the {name} client sidecar never reached the server sidecar"))?;
        pairs.push(RunningPair {
            name,
            host,
            client,
            server,
            outbound,
            inbound: peers::local(in_port),
            metrics: peers::local(metrics_port),
            server_identity: format!("spiffe://{trust_domain}/ns/default/sa/{service}"),
        });
    }
    Ok(Mesh { _cp: cp, api: api_addr, pairs, _dir: dir })
}

fn sidecar(
    cfg: &Config<'_>,
    xds: &str,
    service: &str,
    app_port: Option<u16>,
    in_port: u16,
    metrics_port: u16,
    identity: Vec<String>,
) -> Result<Proc> {
    let out_port = peers::free_port()?;
    let mut args = vec!["--inbound-port".to_string(), in_port.to_string()];
    if let Some(p) = app_port {
        args.extend(["--app-port".into(), p.to_string()]);
    }
    start_sidecar(cfg, xds, service, out_port, metrics_port, args, identity)
}

fn sidecar_out(cfg: &Config<'_>, xds: &str, service: &str, out_port: u16, identity: Vec<String>) -> Result<Proc> {
    let args = vec!["--inbound-port".to_string(), peers::free_port()?.to_string()];
    start_sidecar(cfg, xds, service, out_port, 0, args, identity)
}

fn start_sidecar(
    cfg: &Config<'_>,
    xds: &str,
    service: &str,
    out_port: u16,
    metrics_port: u16,
    extra: Vec<String>,
    identity: Vec<String>,
) -> Result<Proc> {
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
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend([
        "--outbound-port".into(),
        out_port.to_string(),
        "--admin-port".into(),
        admin.to_string(),
        "--metrics-port".into(),
        metrics_port.to_string(),
    ]);
    args.extend(extra);
    args.extend(identity);
    let mut cmd = peers::pinned(cfg.settings.proxy_core, cfg.proxy, &os(&args));
    cmd.env("OUTRIDER_LOG", "warn");
    peers::start_and_wait(cmd, TempDir::new(&format!("mtls-{service}"))?, (peers::local(admin), "/ready", "admin"))
}

/// The server sidecar's `outrider_tls_connections_total{direction="inbound",...}`, summed.
fn inbound_tls_connections(metrics: SocketAddr) -> Result<f64> {
    let (status, text) = api(metrics, "GET", "/metrics", None, "")?;
    if status != 200 {
        bail!("GET /metrics: {status}");
    }
    Ok(text
        .lines()
        .filter(|l| l.starts_with("outrider_tls_connections_total{") && l.contains("direction=\"inbound\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b))
}

/// A rustls client with a real mesh certificate (key and CSR made here, issued by the control
/// plane's CA for a join token), expecting `server` as the peer, offering ALPN `outrider/1`,
/// with session resumption off: every connection is a full handshake.
async fn handshake_client(api_addr: SocketAddr, server: &str) -> Result<Arc<rustls::ClientConfig>> {
    mesh_client(api_addr, server, tls::ALPN_OUTRIDER, "handshake-client")
}

/// A rustls client as a peer sidecar of service account `sa` is one: a real mesh certificate
/// (key and CSR made here, issued by the control plane's CA for a join token), expecting
/// `server` as the peer, offering `alpn`, with session resumption off.
pub(crate) fn mesh_client(
    api_addr: SocketAddr,
    server: &str,
    alpn: &[u8],
    sa: &str,
) -> Result<Arc<rustls::ClientConfig>> {
    let bundle = api_json(api_addr, "GET", "/v1/ca/bundle", None, "")?;
    let roots: Vec<String> =
        bundle["roots"].as_array().context("no roots")?.iter().filter_map(|r| r.as_str().map(String::from)).collect();
    let trust_domain = bundle["trustDomain"].as_str().context("no trustDomain")?;
    let own = Identity::workload(trust_domain, "default", sa)?;
    let store = Arc::new(CertStore::new(own.clone(), TrustBundle::from_pem(roots.iter().map(String::as_str))?));
    let key = tls::new_key_and_csr(&own)?;
    let token = join_token(api_addr, sa)?;
    let issued =
        api_json(api_addr, "POST", "/v1/certificates", Some(&token), &json!({"csr": key.csr_pem}).to_string())?;
    let chain: Vec<String> = issued["certificateChain"]
        .as_array()
        .context("no certificateChain")?
        .iter()
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    store.install(key, &chain)?;
    let config = tls::client_config_alpn(store, Identity::parse(server)?, alpn)?;
    let mut config = (*config).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The HTTP/2 client preface and an empty SETTINGS frame: the server's h2 answers with its own.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

async fn one_handshake(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
    // The client's handshake ends before the server has checked the client certificate: wait
    // for the server's first h2 bytes, which it sends only once it accepted the connection.
    tls.write_all(H2_PREFACE).await?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.context("no answer in 5 s")??;
    if n == 0 {
        bail!("the server closed the connection after the handshake");
    }
    let _ = tls.shutdown().await;
    Ok(())
}

async fn handshakes(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    dur: Duration,
    concurrency: usize,
    server_pid: u32,
) -> Handshakes {
    let self_pid = std::process::id();
    let (server_before, client_before) = (cpu_s(&[server_pid]), cpu_s(&[self_pid]));
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let config = config.clone();
        tasks.spawn(async move {
            let (mut ok, mut err, mut first) = (0u64, 0u64, None);
            while Instant::now() < deadline {
                match one_handshake(addr, config.clone()).await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        err += 1;
                        first.get_or_insert_with(|| format!("{e:#}"));
                        if err > 1000 && ok == 0 {
                            break;
                        }
                    }
                }
            }
            (ok, err, first)
        });
    }
    let mut h = Handshakes { concurrency, ..Handshakes::default() };
    while let Some(r) = tasks.join_next().await {
        if let Ok((ok, err, first)) = r {
            h.handshakes += ok;
            h.errors += err;
            if h.first_error.is_none() {
                h.first_error = first;
            }
        }
    }
    h.duration_s = start.elapsed().as_secs_f64();
    h.per_s = h.handshakes as f64 / h.duration_s;
    let per = |cpu: Option<f64>| cpu.filter(|_| h.handshakes > 0).map(|c| c * 1e6 / h.handshakes as f64);
    h.server_cpu_s = cpu_s(&[server_pid]).zip(server_before).map(|(a, b)| a - b);
    h.server_cpu_us_per_handshake = per(h.server_cpu_s);
    h.client_cpu_us_per_handshake = per(cpu_s(&[self_pid]).zip(client_before).map(|(a, b)| a - b));
    h
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

fn ok_wl(w: Option<&Workload>) -> Option<&Workload> {
    w.filter(|w| w.error.is_none() && w.skipped.is_none())
}

fn lat(w: Option<&Workload>) -> Option<&crate::latency::Latency> {
    ok_wl(w).and_then(|w| w.latency.as_ref())
}

/// mTLS / plaintext closed-loop throughput.
pub fn throughput_ratio(m: &MtlsReport) -> Option<f64> {
    let rps = |n: &str| ok_wl(m.pair(n)?.closed.as_ref()).map(|w| w.rps).filter(|r| *r > 0.0);
    Some(rps("mtls")? / rps("plaintext")?)
}

/// The pair's p99 minus the direct path's, open loop.
pub fn added_p99(m: &MtlsReport, pair: &str) -> Option<f64> {
    Some(lat(m.pair(pair)?.open.as_ref())?.p99_us - lat(m.direct_open.as_ref())?.p99_us)
}

pub fn goals(m: &MtlsReport) -> Vec<Goal> {
    let r = throughput_ratio(m);
    let added = added_p99(m, "mtls");
    vec![
        Goal {
            name: "mTLS pair throughput",
            target: format!("≥ {GOAL_THROUGHPUT_RATIO}× the plaintext pair"),
            measured: format!("{}×", f(r, 2)),
            met: r.map(|r| r >= GOAL_THROUGHPUT_RATIO),
        },
        Goal {
            name: "mTLS pair added p99",
            target: format!("≤ {GOAL_ADDED_P99_US:.0} µs at {} req/s", m.rate),
            measured: format!("{} µs", f(added, 0)),
            met: added.map(|a| a <= GOAL_ADDED_P99_US),
        },
    ]
}

/// The "mTLS between sidecars" tables.
pub fn markdown(m: &MtlsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### mTLS between sidecars\n");
    let _ = writeln!(s, "Command: `{}`  ", m.command);
    let _ = writeln!(s, "Machine: {}  ", m.machine);
    let _ = writeln!(s, "Load average (1/5/15 min): {} before, {} after  ", m.load_before, m.load_after);
    let _ = writeln!(s, "Pinning: {}  ", m.pinning);
    let _ = writeln!(
        s,
        "Closed loop: wrk -t1 -c{} to the client sidecar, {} s × {} rounds per pair (alternating); open loop at {} req/s over {} connections, {} s.\n",
        m.connections, m.duration_s, m.rounds, m.rate, m.open_connections, m.duration_s
    );
    if let Some(why) = &m.skipped {
        let _ = writeln!(s, "Skipped: {why}\n");
        return s;
    }
    if let Some(e) = &m.error {
        let _ = writeln!(s, "FAILED: {e}\n");
    }
    let _ = writeln!(
        s,
        "| pair | req/s (closed loop) | per round | vs plaintext | CPU µs/req (both sidecars) | vs plaintext | CPU µs/req at {} req/s | server's inbound mTLS connections |",
        m.rate
    );
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|");
    let plain = m.pair("plaintext");
    for p in &m.pairs {
        let c = ok_wl(p.closed.as_ref());
        let pc = plain.and_then(|p| ok_wl(p.closed.as_ref()));
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
        let rounds: Vec<String> = p.closed_rounds_rps.iter().map(|r| format!("{r:.0}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            f(c.map(|w| w.rps), 0),
            rounds.join(", "),
            f(ratio(c.map(|w| w.rps), pc.map(|w| w.rps)), 2),
            f(c.and_then(|w| w.cpu_us_per_request), 1),
            f(ratio(c.and_then(|w| w.cpu_us_per_request), pc.and_then(|w| w.cpu_us_per_request)), 2),
            f(ok_wl(p.open.as_ref()).and_then(|w| w.cpu_us_per_request), 1),
            f(p.server_inbound_tls_connections, 0),
        );
    }
    let _ = writeln!(
        s,
        "\nOpen loop at {} req/s, {} × {} s per path (alternating; percentiles of all rounds' requests together): µs from the intended send time, corrected for coordinated omission; \"added\" = minus direct.\n",
        m.rate, m.rounds, m.duration_s
    );
    let _ = writeln!(
        s,
        "| path | p50 µs | p90 µs | p99 µs | p99.9 µs | p99 per round µs | added p50 µs | added p99 µs | errors |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---:|---:|---:|");
    let d = lat(m.direct_open.as_ref());
    let mut rows: Vec<(&str, Option<&Workload>, &[f64])> =
        vec![("direct", m.direct_open.as_ref(), &m.direct_open_rounds_p99_us)];
    for p in &m.pairs {
        rows.push((
            if p.name == "mtls" { "mTLS pair" } else { "plaintext pair" },
            p.open.as_ref(),
            &p.open_rounds_p99_us,
        ));
    }
    for (name, w, rounds) in rows {
        let Some(l) = lat(w) else {
            let _ = writeln!(s, "| {name} | - | - | - | - | - | - | - | - |");
            continue;
        };
        let rounds: Vec<String> = rounds.iter().map(|r| format!("{r:.0}")).collect();
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            rounds.join(", "),
            f(d.map(|d| l.p50_us - d.p50_us), 0),
            f(d.map(|d| l.p99_us - d.p99_us), 0),
            w.map_or(0, |w| w.errors)
        );
    }
    if let Some(h) = &m.handshakes {
        let _ = writeln!(
            s,
            "\nFull mTLS handshakes (TCP connect, TLS 1.3 with client certificate, no resumption, the server's first h2 bytes, close) against the server sidecar's inbound port from one client core, {} concurrent:\n",
            h.concurrency
        );
        let _ = writeln!(
            s,
            "| handshakes/s | handshakes | errors | server CPU µs/handshake | client CPU µs/handshake | counted by the server |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            s,
            "| {:.0} | {} | {} | {} | {} | {} |",
            h.per_s,
            h.handshakes,
            h.errors,
            f(h.server_cpu_us_per_handshake, 0),
            f(h.client_cpu_us_per_handshake, 0),
            f(h.server_counted, 0)
        );
        if let Some(e) = &h.first_error {
            let _ = writeln!(s, "\nFirst handshake error: {e}");
        }
    }
    let _ = writeln!(s, "\n| goal | target | measured | |\n|---|---|---|---|");
    for g in goals(m) {
        let _ = writeln!(s, "| {} | {} | {} | {} |", g.name, g.target, g.measured, g.verdict());
    }
    for n in &m.notes {
        let _ = writeln!(s, "\n- {n}");
    }
    s
}

/// Where the control-plane binary is by default: next to the proxy's.
pub fn default_control_plane(proxy: &Path) -> PathBuf {
    proxy.parent().map_or_else(|| PathBuf::from("outrider"), |d| d.join("outrider"))
}

/// Lines for the terminal.
pub fn summary(m: &MtlsReport) -> String {
    let mut s = String::new();
    if let Some(why) = m.skipped.as_ref().or(m.error.as_ref()) {
        let _ = writeln!(s, "mtls      not measured: {why}");
        return s;
    }
    for p in &m.pairs {
        let c = ok_wl(p.closed.as_ref());
        let _ = writeln!(
            s,
            "{:<9} pair: http1 {:>7} req/s {:>6} µs/req (both sidecars) | open {} req/s p99 {} µs",
            p.name,
            f(c.map(|w| w.rps), 0),
            f(c.and_then(|w| w.cpu_us_per_request), 1),
            m.rate,
            f(lat(p.open.as_ref()).map(|l| l.p99_us), 0),
        );
    }
    if let Some(h) = &m.handshakes {
        let _ = writeln!(
            s,
            "mtls      handshakes: {:.0}/s, server {} µs CPU each, client {} µs, {} errors",
            h.per_s,
            f(h.server_cpu_us_per_handshake, 0),
            f(h.client_cpu_us_per_handshake, 0),
            h.errors
        );
    }
    s
}
