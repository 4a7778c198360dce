//! Many idle keep-alive connections, and what they cost the proxy: each makes one request,
//! reads the whole reply, then stays open and silent while the proxy's RSS is sampled.
//!
//! Two uses. The targets run holds HTTP/1.1 connections on every target after its load
//! workloads ([`open`], from `run::measure`). The **idle part** (`--only idle`, and in every
//! full run) starts a fresh process per target and mode, so no load and no other mode has
//! grown its heap first, and reports the RSS growth per connection:
//! - outrider: HTTP/1.1 and h2c to the outbound port; HTTP/1.1 and h2 over mutual TLS into a
//!   server sidecar's inbound port, the way a peer sidecar connects (a certificate issued by the
//!   control plane's CA for a join token, ALPN `outrider-http1/1` or `outrider/1`);
//! - HAProxy and nginx: HTTP/1.1 and h2c, for comparison.
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::mtls::{self, API_TOKEN};
use crate::peers::{self, Proc, TempDir};
use crate::report::Goal;
use crate::run::{Progress, Settings};
use crate::upstream::Upstream;
use client::Proto;

pub mod client;

/// Connections opened at a time.
const PARALLEL: usize = 100;
/// After the last connection: silent for a while (every proxy has sent its responses and gone
/// back to waiting), for every peer alike.
const SETTLE: Duration = Duration::from_millis(1500);
/// A second sample, once outrider has given its allocator's free memory back to the system
/// (every `--heap-release-interval`, 10 s): what the connections cost while they stay idle.
/// The peers are sampled at the same time.
const LATER: Duration = Duration::from_secs(12);
/// A mode that takes longer than this to open its connections is cut short (and reported).
const MODE_LIMIT: Duration = Duration::from_secs(120);
/// The goal: 10,000 idle connections in 64 MB, 5 KB each.
const GOAL_KB_PER_CONNECTION: f64 = 5.0;
const GOAL_MB: f64 = 64.0;
/// The mTLS server sidecar's Service.
const MESH_SERVICE: &str = "bench-idle";
const MESH_PORT: u16 = 9080;

/// How the idle connections reach the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1 to the outbound port (the peers' HTTP/1.1 frontend).
    Http1,
    /// HTTP/2 with prior knowledge to the outbound port (the peers' h2c frontend).
    H2c,
    /// HTTP/1.1 over mutual TLS into the inbound port (ALPN `outrider-http1/1`).
    Http1Mtls,
    /// HTTP/2 over mutual TLS into the inbound port (ALPN `outrider/1`).
    H2Mtls,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Http1, Mode::H2c, Mode::Http1Mtls, Mode::H2Mtls];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Http1 => "http1",
            Mode::H2c => "h2c",
            Mode::Http1Mtls => "http1-mtls",
            Mode::H2Mtls => "h2-mtls",
        }
    }

    fn proto(self) -> Proto {
        match self {
            Mode::Http1 | Mode::Http1Mtls => Proto::Http1,
            Mode::H2c | Mode::H2Mtls => Proto::H2,
        }
    }

    fn mtls(self) -> bool {
        matches!(self, Mode::Http1Mtls | Mode::H2Mtls)
    }
}

/// One target in one mode.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub target: String,
    pub mode: String,
    pub wanted: u64,
    /// Connections held when the RSS was sampled.
    pub connections: u64,
    /// The process's RSS after one warm-up request, before the idle connections.
    pub rss_before_kb: Option<u64>,
    /// Its RSS with the connections held, [`SETTLE`] after the last one.
    pub rss_kb: Option<u64>,
    /// The same, [`LATER`] after the last one.
    #[serde(default)]
    pub rss_later_kb: Option<u64>,
    /// Seconds to open them all (connect, handshake, request, response).
    pub open_s: Option<f64>,
    pub skipped: Option<String>,
    pub error: Option<String>,
}

impl Row {
    pub fn kb_per_connection(&self) -> Option<f64> {
        self.per_connection(self.rss_kb)
    }

    /// Per connection at the later sample.
    pub fn kb_per_connection_later(&self) -> Option<f64> {
        self.per_connection(self.rss_later_kb)
    }

    fn per_connection(&self, rss: Option<u64>) -> Option<f64> {
        match (rss, self.rss_before_kb) {
            (Some(a), Some(b)) if self.connections > 0 => Some((a as f64 - b as f64) / self.connections as f64),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct IdleReport {
    pub command: String,
    pub load_before: String,
    pub load_after: String,
    pub pinning: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl IdleReport {
    pub fn row(&self, target: &str, mode: Mode) -> Option<&Row> {
        self.rows.iter().find(|r| r.target == target && r.mode == mode.name())
    }
}

#[derive(Debug)]
pub struct Config<'a> {
    pub proxy: &'a Path,
    pub control_plane: &'a Path,
    pub settings: &'a Settings,
    /// Which targets (outrider: four modes; haproxy and nginx: the two plaintext ones).
    pub targets: &'a [String],
    pub command: String,
}

fn plan(targets: &[String]) -> Vec<(&'static str, Mode)> {
    let mut p = Vec::new();
    for t in ["outrider", "haproxy", "nginx"] {
        if !targets.iter().any(|x| x == t) {
            continue;
        }
        let modes: &[Mode] = if t == "outrider" { &Mode::ALL } else { &Mode::ALL[..2] };
        p.extend(modes.iter().map(|&m| (t, m)));
    }
    p
}

/// Steps on the progress line.
pub fn steps(targets: &[String]) -> usize {
    plan(targets).len()
}

pub async fn run(cfg: &Config<'_>, up: &Upstream, prog: &mut Progress) -> IdleReport {
    let s = cfg.settings;
    let mut rep = IdleReport {
        command: cfg.command.clone(),
        load_before: crate::procstat::loadavg(),
        pinning: if s.unpinned {
            "unpinned: the proxy, the control plane, the upstream and the client on any core".into()
        } else {
            format!(
                "the proxy under test on core {}; the control plane, the upstream and the client on core {}",
                s.proxy_core, s.load_core
            )
        },
        ..IdleReport::default()
    };
    rep.notes.push(format!(
        "each target and mode in a fresh process; {PARALLEL} connections opened at a time, each one request (1 kB response) then silent; RSS {} ms after the last, and again {} s after it (outrider gives its allocator's free memory back every 10 s: `--heap-release-interval`); the goals are judged on the later sample",
        SETTLE.as_millis(),
        LATER.as_secs()
    ));
    // One control plane and one client certificate for both mTLS modes, started on first use.
    let mut mesh: Option<Result<MeshCa, String>> = None;
    for (target, mode) in plan(cfg.targets) {
        prog.step(target, &format!("{} idle {} connections (fresh process)", s.idle_connections, mode.name()));
        let mut row =
            Row { target: target.into(), mode: mode.name().into(), wanted: s.idle_connections, ..Row::default() };
        let res = if mode.mtls() {
            match mesh.get_or_insert_with(|| MeshCa::start(cfg).map_err(|e| format!("{e:#}"))) {
                Ok(ca) => measure_mtls(cfg, up, ca, mode, &mut row).await,
                Err(e) => Err(anyhow::anyhow!("the control plane for the mTLS modes: {e}")),
            }
        } else {
            measure_plain(cfg, up, target, mode, &mut row).await
        };
        match res {
            Ok(true) => {}
            Ok(false) => eprintln!("  skipped: {}", row.skipped.as_deref().unwrap_or("")),
            Err(e) => {
                eprintln!("  {target} {} failed: {e:#}", mode.name());
                row.error = Some(format!("{e:#}"));
            }
        }
        rep.rows.push(row);
    }
    rep.load_after = crate::procstat::loadavg();
    rep
}

/// Open `n` connections (`parallel` at a time, each made by `connect`); they stay open until
/// the returned vector is dropped.
async fn hold<T, F, Fut>(n: usize, parallel: usize, connect: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut conns = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut started = 0;
    while conns.len() < n {
        while started < n && set.len() < parallel {
            set.spawn(connect());
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(s))) => conns.push(s),
            Some(Ok(Err(e))) => bail!("idle connection {} of {n}: {e:#}", conns.len() + 1),
            Some(Err(e)) => bail!("idle connection task: {e}"),
            None => break,
        }
    }
    Ok(conns)
}

/// HTTP/1.1 connections for the targets run: open `n` (`parallel` at a time).
pub async fn open(addr: SocketAddr, host: &str, n: usize, parallel: usize) -> Result<Vec<TcpStream>> {
    let host: Arc<str> = Arc::from(host);
    hold(n, parallel, || plain(addr, Proto::Http1, host.clone())).await
}

async fn plain(addr: SocketAddr, proto: Proto, host: Arc<str>) -> Result<TcpStream> {
    let s = TcpStream::connect(addr).await.context("connect")?;
    client::one_request(s, proto, &host, &[]).await
}

/// The RSS of `pid` before and with `n` connections made by `connect`; fills `row`.
async fn sample<T, F, Fut>(pid: u32, n: usize, connect: F, row: &mut Row) -> Result<()>
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    // One connection first (then closed), so what the first request allocates once (pools,
    // the upstream connection, lazily built state) is in the baseline, not in the idle cost.
    drop(hold(1, 1, &connect).await.context("the warm-up request")?);
    tokio::time::sleep(Duration::from_millis(300)).await;
    row.rss_before_kb = crate::procstat::rss_kb(pid);
    let start = Instant::now();
    let conns = match tokio::time::timeout(MODE_LIMIT, hold(n, PARALLEL, connect)).await {
        Ok(r) => r?,
        Err(_) => bail!("opening {n} connections took more than {} s", MODE_LIMIT.as_secs()),
    };
    row.open_s = Some(start.elapsed().as_secs_f64());
    tokio::time::sleep(SETTLE).await;
    row.connections = conns.len() as u64;
    row.rss_kb = crate::procstat::rss_kb(pid);
    tokio::time::sleep(LATER.saturating_sub(SETTLE)).await;
    row.rss_later_kb = crate::procstat::rss_kb(pid);
    drop(conns);
    Ok(())
}

/// A plaintext mode on a fresh target process. `Ok(false)`: skipped (not installed).
async fn measure_plain(cfg: &Config<'_>, up: &Upstream, target: &str, mode: Mode, row: &mut Row) -> Result<bool> {
    let core = cfg.settings.proxy_core;
    let t = match target {
        "outrider" => peers::outrider(cfg.proxy, up, core)?,
        "haproxy" => match peers::haproxy(up, core)? {
            Some(t) => t,
            None => {
                row.skipped = Some("haproxy is not installed (apt-get install haproxy)".into());
                return Ok(false);
            }
        },
        _ => match peers::nginx(up, core)? {
            Some(t) => t,
            None => {
                row.skipped = Some("nginx is not installed (apt-get install nginx)".into());
                return Ok(false);
            }
        },
    };
    let pid = t.proc.as_ref().map(|p| p.pid).context("the target runs no process")?;
    let ep = match mode {
        Mode::H2c => t.h2.clone().map_err(anyhow::Error::msg)?,
        _ => t.h1.clone(),
    };
    let n = t.max_idle.map_or(cfg.settings.idle_connections, |m| m.min(cfg.settings.idle_connections));
    let (addr, host, proto): (SocketAddr, Arc<str>, Proto) = (ep.addr, Arc::from(ep.host.as_str()), mode.proto());
    sample(pid, n as usize, || plain(addr, proto, host.clone()), row).await?;
    Ok(true)
}

/// The control plane (CA, xDS) of the mTLS modes and the peer sidecar's client certificate.
struct MeshCa {
    _cp: Proc,
    api: SocketAddr,
    xds: String,
    server_identity: String,
    /// Client configs by ALPN: HTTP/1.1, h2.
    http1: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
    dir: TempDir,
}

impl MeshCa {
    fn start(cfg: &Config<'_>) -> Result<Self> {
        if !cfg.control_plane.exists() {
            bail!(
                "{} not found: run `cargo build --release -p outrider-control-plane --bins` first",
                cfg.control_plane.display()
            );
        }
        let dir = TempDir::new("idle-mesh")?;
        let (xds_port, api_port) = (peers::free_port()?, peers::free_port()?);
        let args = mtls::control_plane_args(&dir.0.join("cp-data"), xds_port, api_port, &[]);
        let mut cmd = peers::pinned(cfg.settings.load_core, cfg.control_plane, &args);
        cmd.env("RUST_LOG", "warn");
        let api = peers::local(api_port);
        let cp = peers::start_and_wait(cmd, TempDir::new("idle-cp")?, (api, "/healthz", "cp"))
            .with_context(|| format!("starting {} control-plane", cfg.control_plane.display()))?;
        let policy = format!(
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: {MESH_SERVICE}}}\nspec:\n  protocol: http\n  port: {MESH_PORT}\n"
        );
        let (status, text) = mtls::api(api, "PUT", "/v1/policies", Some(API_TOKEN), &policy)?;
        if status != 200 {
            bail!("PUT /v1/policies: {status} {text}");
        }
        let bundle = mtls::api_json(api, "GET", "/v1/ca/bundle", None, "")?;
        let trust_domain = bundle["trustDomain"].as_str().context("no trustDomain")?;
        let server_identity = format!("spiffe://{trust_domain}/ns/default/sa/{MESH_SERVICE}");
        let client = |alpn: &[u8]| mtls::mesh_client(api, &server_identity, alpn, "idle-client");
        Ok(Self {
            http1: client(outrider_proxy::tls::ALPN_OUTRIDER_HTTP1)?,
            h2: client(outrider_proxy::tls::ALPN_OUTRIDER)?,
            _cp: cp,
            api,
            xds: format!("http://{}", peers::local(xds_port)),
            server_identity,
            dir,
        })
    }

    /// A fresh server sidecar of [`MESH_SERVICE`] with a workload certificate, delivering to
    /// the upstream; ready once it has its config and certificate. Its inbound port.
    fn sidecar(&self, cfg: &Config<'_>, up: &Upstream) -> Result<(Proc, SocketAddr)> {
        let token = self.dir.0.join(format!("{}.token", peers::free_port()?));
        std::fs::write(&token, mtls::join_token(self.api, MESH_SERVICE)?)?;
        let (inbound, admin) = (peers::free_port()?, peers::free_port()?);
        let args: Vec<String> = vec![
            "--xds-address".into(),
            self.xds.clone(),
            "--service".into(),
            MESH_SERVICE.into(),
            "--workers".into(),
            "1".into(),
            "--access-log".into(),
            "off".into(),
            "--inbound-bind".into(),
            "127.0.0.1".into(),
            "--inbound-port".into(),
            inbound.to_string(),
            "--app-port".into(),
            up.http.port().to_string(),
            "--outbound-port".into(),
            peers::free_port()?.to_string(),
            "--admin-port".into(),
            admin.to_string(),
            "--metrics-port".into(),
            "0".into(),
            "--health-port".into(),
            "0".into(),
            "--identity-token".into(),
            token.to_string_lossy().into_owned(),
            "--ca-address".into(),
            format!("http://{}", self.api),
        ];
        let mut cmd = peers::pinned(cfg.settings.proxy_core, cfg.proxy, &mtls::os(&args));
        cmd.env("OUTRIDER_LOG", "warn");
        let proc_ = peers::start_and_wait(cmd, TempDir::new("idle-sidecar")?, (peers::local(admin), "/ready", "admin"))
            .context("starting the server sidecar")?;
        Ok((proc_, peers::local(inbound)))
    }
}

/// What a peer sidecar sends with a request it carries over h2 for an HTTP/1.1 app.
const ORIG_PROTO: (&str, &str) = ("x-outrider-orig-proto", "HTTP/1.1");

async fn meshed(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    proto: Proto,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.context("mTLS handshake")?;
    let host = format!("{MESH_SERVICE}:{MESH_PORT}");
    let headers: &[(&str, &str)] = if proto == Proto::H2 { &[ORIG_PROTO] } else { &[] };
    client::one_request(tls, proto, &host, headers).await
}

async fn measure_mtls(cfg: &Config<'_>, up: &Upstream, ca: &MeshCa, mode: Mode, row: &mut Row) -> Result<bool> {
    let (sidecar, inbound) = ca.sidecar(cfg, up)?;
    let config = if mode.proto() == Proto::H2 { ca.h2.clone() } else { ca.http1.clone() };
    let proto = mode.proto();
    let n = cfg.settings.idle_connections as usize;
    sample(sidecar.pid, n, || meshed(inbound, config.clone(), proto), row)
        .await
        .with_context(|| format!("against {} (expected identity {})", inbound, ca.server_identity))?;
    Ok(true)
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

fn mb(kb: Option<u64>) -> Option<f64> {
    kb.map(|k| k as f64 / 1024.0)
}

/// outrider's goal in each mode: ≤ 5 KB per idle connection (10,000 in ≤ 64 MB).
pub fn goals(r: &IdleReport) -> Vec<Goal> {
    Mode::ALL
        .iter()
        .map(|&mode| {
            let row = r.row("outrider", mode).filter(|r| r.error.is_none() && r.skipped.is_none());
            let kb = row.and_then(Row::kb_per_connection_later);
            let rss = row.and_then(|r| mb(r.rss_later_kb));
            let n = row.map_or(0, |r| r.connections);
            Goal {
                name: match mode {
                    Mode::Http1 => "idle HTTP/1.1 connections",
                    Mode::H2c => "idle h2c connections",
                    Mode::Http1Mtls => "idle HTTP/1.1 mTLS connections",
                    Mode::H2Mtls => "idle h2 mTLS connections",
                },
                target: format!("≤ {GOAL_KB_PER_CONNECTION:.0} KB each (10,000 in ≤ {GOAL_MB:.0} MB)"),
                measured: format!("{} KB each; {} MB with {n}", f(kb, 1), f(rss, 1)),
                met: kb.map(|k| k <= GOAL_KB_PER_CONNECTION && (n < 10_000 || rss.is_some_and(|m| m <= GOAL_MB))),
            }
        })
        .collect()
}

/// The "Idle connections" table.
pub fn markdown(r: &IdleReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Idle connections\n");
    let _ = writeln!(s, "Command: `{}`  ", r.command);
    let _ = writeln!(s, "Load average (1/5/15 min): {} before, {} after  ", r.load_before, r.load_after);
    let _ = writeln!(s, "Pinning: {}\n", r.pinning);
    let _ = writeln!(
        s,
        "| target | mode | connections | RSS before MB | RSS with them MB ({:.1} s) | KB per connection | RSS {} s later MB | KB per connection | seconds to open |",
        SETTLE.as_secs_f64(),
        LATER.as_secs()
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.rows {
        if let Some(why) = row.skipped.as_ref().or(row.error.as_ref()) {
            let _ = writeln!(s, "| {} | {} | - | - | - | - | - | - | {why} |", row.target, row.mode);
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.target,
            row.mode,
            row.connections,
            f(mb(row.rss_before_kb), 1),
            f(mb(row.rss_kb), 1),
            f(row.kb_per_connection(), 2),
            f(mb(row.rss_later_kb), 1),
            f(row.kb_per_connection_later(), 2),
            f(row.open_s, 1),
        );
    }
    let _ = writeln!(s, "\n| goal | target | measured | |\n|---|---|---|---|");
    for g in goals(r) {
        let _ = writeln!(s, "| {} | {} | {} | {} |", g.name, g.target, g.measured, g.verdict());
    }
    for n in &r.notes {
        let _ = writeln!(s, "\n- {n}");
    }
    s
}

/// Lines for the terminal.
pub fn summary(r: &IdleReport) -> String {
    let mut s = String::new();
    for row in &r.rows {
        let _ = match row.skipped.as_ref().or(row.error.as_ref()) {
            Some(why) => writeln!(s, "{:<9} idle {:<10} not measured: {why}", row.target, row.mode),
            None => writeln!(
                s,
                "{:<9} idle {:<10} {:>6} connections: {:>6} MB, {:>5} KB each; {} s later {:>6} MB, {:>5} KB each",
                row.target,
                row.mode,
                row.connections,
                f(mb(row.rss_kb), 1),
                f(row.kb_per_connection(), 2),
                LATER.as_secs(),
                f(mb(row.rss_later_kb), 1),
                f(row.kb_per_connection_later(), 2)
            ),
        };
    }
    s
}
