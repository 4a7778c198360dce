//! The soak's mesh: a control plane (its CA issues the workload certificates) and three
//! sidecars, each with its own identity — the client's, the server's of `soak` (delivering to
//! the upstream's HTTP port) and the server's of `soak-tcp` (delivering to its TCP echo) — and
//! the policy they all get, in versions that differ from one change to the next.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::report::{CertSample, ProcSample, Sample};
use super::{grpc_stream, http, netns, tcp};
use crate::mtls::{API_TOKEN, api, api_json, control_plane_args, join_token, os};
use crate::peers::{self, Proc, TempDir};
use crate::procstat;
use crate::upstream::Upstream;

pub const CLIENT: &str = "client-sidecar";
pub const SERVER: &str = "server-sidecar";
pub const TCP_SERVER: &str = "tcp-server-sidecar";

/// The policy set, pushed whole: version `n` differs from `n - 1` in one value per Service
/// (`soak`: the request timeout; `soak-stream`: the idle timeout; `soak-tcp`: the connect
/// timeout), none of which any leg's traffic comes near.
///
/// - `soak` is `http2`: the server sidecar speaks h2c to the app, which carries the HTTP/1.1
///   callers' requests, the h2 ones and gRPC (whose trailers HTTP/1.1 cannot carry).
/// - `soak-stream` (`grpc`) has no `timeout` and an idle timeout of a minute, as a streaming
///   Service would; its one endpoint is the server sidecar, listed as meshed with its identity.
/// - `soak-tcp` (`tcp`) is reached at its virtual address; its endpoint is the TCP server
///   sidecar, registered by itself.
pub fn policy(n: u32, stream_endpoint: SocketAddr) -> String {
    let breaker = "  circuitBreaker:\n    maxRequests: 1024\n    failureRateThreshold: 50\n    window: 20\n    minimumCalls: 10\n    openDuration: 30s\n";
    let doc = |kind: &str, name: &str, spec: &str| {
        format!("apiVersion: outrider.io/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{spec}")
    };
    let (soak, stream, tcp) = (http::SERVICE, grpc_stream::SERVICE, tcp::SERVICE);
    [
        doc("Service", soak, &format!("  protocol: http2\n  port: {}\n", http::PORT)),
        doc(
            "TrafficPolicy",
            soak,
            &format!(
                "  service: {soak}\n  timeout: {}s\n  retries:\n    attempts: 3\n    perTryTimeout: 2s\n    retryOn: [connect-failure, refused-stream, reset, gateway-error]\n{breaker}",
                10 + n % 2
            ),
        ),
        doc(
            "Service",
            stream,
            &format!(
                "  protocol: grpc\n  port: {}\n  endpoints: [{{address: \"{stream_endpoint}\", meshed: true, identity: \"spiffe://outrider.local/ns/default/sa/{soak}\"}}]\n",
                grpc_stream::PORT
            ),
        ),
        doc(
            "TrafficPolicy",
            stream,
            &format!(
                "  service: {stream}\n  idleTimeout: {}s\n  retries:\n    attempts: 3\n    retryOn: [connect-failure, refused-stream, unavailable]\n{breaker}",
                60 + n % 2
            ),
        ),
        doc("Service", tcp, &format!("  protocol: tcp\n  port: {}\n  addresses: [\"{}\"]\n", tcp::PORT, tcp::VIP)),
        doc(
            "TrafficPolicy",
            tcp,
            &format!(
                "  service: {tcp}\n  connectTimeout: {}s\n  idleTimeout: 5m\n  circuitBreaker:\n    maxConnections: 1024\n    failureRateThreshold: 50\n    window: 20\n    minimumCalls: 10\n    openDuration: 30s\n",
                1 + n % 2
            ),
        ),
    ]
    .join("---\n")
}

/// A sidecar and its admin address.
#[derive(Debug)]
pub struct Sidecar {
    pub name: &'static str,
    pub proc: Proc,
    pub admin: SocketAddr,
}

#[derive(Debug)]
pub struct Mesh {
    _cp: Proc,
    pub cp_pid: u32,
    pub api: SocketAddr,
    pub client: Sidecar,
    pub server: Sidecar,
    /// Only when the TCP leg runs.
    pub tcp_server: Option<Sidecar>,
    /// The client sidecar's outbound listener.
    pub outbound: SocketAddr,
    /// The server sidecar's inbound listener (the `soak-stream` endpoint).
    pub server_inbound: SocketAddr,
    _dir: TempDir,
}

impl Mesh {
    pub fn sidecars(&self) -> impl Iterator<Item = &Sidecar> {
        [&self.client, &self.server].into_iter().chain(self.tcp_server.as_ref())
    }

    /// (name, pid) of every process sampled.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let mut v = vec![("control-plane", self.cp_pid)];
        v.extend(self.sidecars().map(|s| (s.name, s.proc.pid)));
        v.push(("harness", std::process::id()));
        v
    }

    pub fn admins(&self) -> Vec<(&'static str, SocketAddr)> {
        self.sidecars().map(|s| (s.name, s.admin)).collect()
    }
}

pub struct Binaries<'a> {
    pub proxy: &'a PathBuf,
    pub control_plane: &'a PathBuf,
    pub cert_ttl: Duration,
}

/// Start the control plane, push the first policy, start the sidecars (the TCP server only
/// with `tcp`, when the redirect rule for the TCP Service's address is installed) and wait
/// until the client reaches `soak`.
pub fn start(bins: &Binaries<'_>, up: &Upstream, tcp: bool) -> Result<Mesh> {
    let dir = TempDir::new("soak")?;
    let (xds_port, api_port) = (peers::free_port()?, peers::free_port()?);
    let data = dir.0.join("cp-data");
    let ttl = format!("{}s", bins.cert_ttl.as_secs().max(1));
    let args = control_plane_args(&data, xds_port, api_port, &["--workload-cert-ttl", &ttl]);
    let mut cmd = peers::pinned(0, bins.control_plane, &args);
    cmd.env("RUST_LOG", "warn");
    let api_addr = peers::local(api_port);
    let cp = peers::start_and_wait(cmd, TempDir::new("soak-cp")?, (api_addr, "/healthz", "cp"))
        .with_context(|| format!("starting {} control-plane", bins.control_plane.display()))?;
    let cp_pid = cp.pid;
    let server_inbound = peers::local(peers::free_port()?);
    let (status, text) = api(api_addr, "PUT", "/v1/policies", Some(API_TOKEN), &policy(0, server_inbound))?;
    if status != 200 {
        bail!("PUT /v1/policies: {status} {text}");
    }
    let xds = format!("http://{}", peers::local(xds_port));
    let ca = format!("http://{api_addr}");
    let start_sidecar = |name: &'static str, service: &str, out_port: u16, inbound: u16, app: Option<u16>| {
        let file = dir.0.join(format!("{service}.token"));
        std::fs::write(&file, join_token(api_addr, service)?)?;
        let mut extra = vec!["--inbound-port".to_string(), inbound.to_string()];
        if let Some(app) = app {
            extra.extend(["--app-port".into(), app.to_string()]);
        }
        extra.extend([
            "--identity-token".into(),
            file.to_string_lossy().into_owned(),
            "--ca-address".into(),
            ca.clone(),
        ]);
        sidecar(bins.proxy, &xds, service, out_port, extra)
            .map(|(proc, admin)| Sidecar { name, proc, admin })
            .with_context(|| format!("starting the {name}"))
    };
    let server =
        start_sidecar(SERVER, http::SERVICE, peers::free_port()?, server_inbound.port(), Some(up.http.port()))?;
    let tcp_server = if tcp {
        Some(start_sidecar(TCP_SERVER, tcp::SERVICE, peers::free_port()?, peers::free_port()?, Some(up.echo.port()))?)
    } else {
        None
    };
    let out_port = peers::free_port()?;
    if tcp {
        netns::redirect(tcp::VIP, tcp::PORT, out_port)?;
    }
    let client = start_sidecar(CLIENT, "soak-client", out_port, peers::free_port()?, None)?;
    let outbound = peers::local(out_port);
    peers::wait_ok(outbound, "/", &http::host(), std::time::Instant::now())
        .context("the client sidecar never reached the server sidecar")?;
    Ok(Mesh { _cp: cp, cp_pid, api: api_addr, client, server, tcp_server, outbound, server_inbound, _dir: dir })
}

fn sidecar(proxy: &PathBuf, xds: &str, service: &str, out_port: u16, extra: Vec<String>) -> Result<(Proc, SocketAddr)> {
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
    let mut cmd = peers::pinned(0, proxy, &os(&args));
    cmd.env("OUTRIDER_LOG", "warn");
    let p = peers::start_and_wait(
        cmd,
        TempDir::new(&format!("soak-{service}"))?,
        (peers::local(admin), "/ready", "admin"),
    )?;
    Ok((p, peers::local(admin)))
}

fn fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count() as u64)
}

fn cert(admin: SocketAddr) -> CertSample {
    let v = api_json(admin, "GET", "/config_dump", None, "").ok();
    let id = v.as_ref().map(|v| &v["node"]["identity"]);
    CertSample {
        installed: id.and_then(|i| i["certificates_installed"].as_u64()),
        not_after_unix: id.and_then(|i| i["certificate_not_after_unix"].as_u64()),
    }
}

/// RSS and fds of every process, and every sidecar's certificate (blocking).
pub fn sample(pids: &[(&'static str, u32)], admins: &[(&'static str, SocketAddr)], t_s: f64) -> Sample {
    let procs = pids
        .iter()
        .map(|(name, pid)| (name.to_string(), ProcSample { rss_kb: procstat::rss_kb(*pid), fds: fds(*pid) }))
        .collect();
    let certs: BTreeMap<String, CertSample> = admins.iter().map(|(name, a)| (name.to_string(), cert(*a))).collect();
    Sample { t_s, procs, certs }
}

/// The sidecar's retries and circuit-breaker rejections so far, by service and reason
/// (`retries soak (reset)`, `breaker rejections soak-tcp (open)`), those above 0; empty when
/// its metrics cannot be read.
pub fn policy_counters(admin: SocketAddr) -> BTreeMap<String, f64> {
    let text = match api(admin, "GET", "/metrics", None, "") {
        Ok((200, text)) => text,
        _ => return BTreeMap::new(),
    };
    let mut out = BTreeMap::new();
    for line in text.lines() {
        for (metric, name) in [
            ("outrider_retries_total{", "retries"),
            ("outrider_circuit_breaker_rejections_total{", "breaker rejections"),
        ] {
            let Some(rest) = line.strip_prefix(metric) else { continue };
            let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
            let label =
                |k: &str| labels.split(',').find_map(|kv| kv.strip_prefix(k)?.strip_prefix("=\"")?.strip_suffix('"'));
            if let (Some(service), Some(reason), Ok(v)) =
                (label("service"), label("reason"), value.trim().parse::<f64>())
            {
                *out.entry(format!("{name} {service} ({reason})")).or_insert(0.0) += v;
            }
        }
    }
    out.retain(|_, v| *v > 0.0);
    out
}
