//! The targets: the direct path, outrider-proxy, HAProxy and nginx. Each proxy
//! runs pinned to the proxy core with one worker, keep-alive to the upstream,
//! logging off, and listeners for HTTP/1.1, h2c (also carrying gRPC) and TCP.
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::upstream::Upstream;

/// File-descriptor limit asked for the proxies (10,000 idle connections, plus
/// their upstream side for the proxies that pair them).
const NOFILE: u64 = 65536;

/// A running process under test; killed on drop.
#[derive(Debug)]
pub struct Proc {
    pub pid: u32,
    pub ready: Duration,
    child: Child,
    _dir: TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a workload connects, and the Host / `:authority` it sends.
#[derive(Debug, Clone)]
pub struct Ep {
    pub addr: SocketAddr,
    pub host: String,
}

impl Ep {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// A target ready for the workloads; `Err(reason)` marks a workload that this
/// target cannot run.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub version: String,
    pub proc: Option<Proc>,
    pub h1: Ep,
    pub h2: Result<Ep, String>,
    pub grpc: Result<Ep, String>,
    pub tcp: Result<SocketAddr, String>,
    /// The most idle connections this target can hold under the file limit.
    pub max_idle: Option<u64>,
    pub notes: Vec<String>,
}

#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("outrider-bench-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Set once at start by `--unpinned`: every process may run on every core.
static UNPINNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Let the scheduler place every process (`--unpinned`): a sidecar shares its cores with its app.
pub fn set_unpinned() {
    UNPINNED.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn unpinned() -> bool {
    UNPINNED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The `taskset -c` CPU list for `core`: that core, or every core when unpinned.
pub fn cpu_list(core: usize) -> String {
    if unpinned() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        format!("0-{}", cores - 1)
    } else {
        core.to_string()
    }
}

/// `bin args` pinned to `core` (every core with `--unpinned`), with the file limit raised (to the hard limit
/// when NOFILE is more than the shell may set).
pub fn pinned(core: usize, bin: impl Into<OsString>, args: &[OsString]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "ulimit -n {NOFILE} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec taskset -c {} \"$0\" \"$@\"",
            cpu_list(core)
        ))
        .arg(bin.into())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// Poll until `GET path` on `addr` answers 200, or fail after 10 s.
pub fn wait_ok(addr: SocketAddr, path: &str, host: &str, start: Instant) -> Result<Duration> {
    let deadline = start + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            let mut resp = String::new();
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_to_string(&mut resp).is_ok()
                && resp.starts_with("HTTP/1.1 200")
            {
                return Ok(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("{addr}{path} did not answer 200 within 10 s")
}

pub fn start_and_wait(mut cmd: Command, dir: TempDir, probe: (SocketAddr, &str, &str)) -> Result<Proc> {
    let start = Instant::now();
    let mut child = cmd.stderr(Stdio::piped()).spawn().context("spawning")?;
    let pid = child.id();
    match wait_ok(probe.0, probe.1, probe.2, start) {
        Ok(ready) => {
            // Nothing reads stderr from here on; a chatty process must not block on it.
            drop(child.stderr.take());
            Ok(Proc { pid, ready, child, _dir: dir })
        }
        Err(e) => {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(s) = child.stderr.as_mut() {
                let _ = s.read_to_string(&mut err);
            }
            let _ = child.wait();
            bail!("{e}: {err}")
        }
    }
}

pub fn version_of(bin: &str, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

pub fn direct(up: &Upstream) -> Target {
    let ep = Ep { addr: up.http, host: "bench".into() };
    Target {
        name: "direct".into(),
        version: "-".into(),
        proc: None,
        h1: ep.clone(),
        h2: Ok(ep.clone()),
        grpc: Ok(ep),
        tcp: Ok(up.sink),
        max_idle: None,
        notes: Vec::new(),
    }
}

pub fn outrider(bin: &Path, up: &Upstream, core: usize) -> Result<Target> {
    outrider_with(bin, up, core, false)
}

/// `outrider-log`: the same proxy with its access log at the default (`--access-log on`, JSON
/// lines on stdout), stdout a file in the target's temp dir as a container runtime's log file
/// would be, so the access log's cost (formatting and writing) is in the proxy's CPU.
pub fn outrider_logging(bin: &Path, up: &Upstream, core: usize) -> Result<Target> {
    outrider_with(bin, up, core, true)
}

fn outrider_with(bin: &Path, up: &Upstream, core: usize, access_log: bool) -> Result<Target> {
    if !bin.exists() {
        bail!("{} not found: run `cargo build --release -p outrider-proxy` first", bin.display());
    }
    let dir = TempDir::new("outrider")?;
    let policy = dir.0.join("policy.yaml");
    let svc = |name: &str, proto: &str, port: u16| {
        format!(
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  protocol: {proto}\n  port: {port}\n  endpoints: [{{address: \"{}\"}}]\n",
            up.http
        )
    };
    let text =
        [svc("bench", "http", 8080), svc("bench-h2", "http2", 8081), svc("bench-grpc", "grpc", 8082)].join("---\n");
    std::fs::write(&policy, text)?;
    let (out_port, in_port, admin_port) = (free_port()?, free_port()?, free_port()?);
    let args: Vec<OsString> = [
        "--policy",
        &policy.to_string_lossy(),
        "--workers",
        "1",
        "--access-log",
        if access_log { "on" } else { "off" },
        "--outbound-port",
        &out_port.to_string(),
        "--admin-port",
        &admin_port.to_string(),
        "--inbound-port",
        &in_port.to_string(),
        "--app-port",
        &up.sink.port().to_string(),
        "--inbound-bind",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--health-port",
        "0",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let mut cmd = pinned(core, bin, &args);
    let log_file = dir.0.join("access.log");
    if access_log {
        // The default log filter (info): a `warn` filter would drop the access-log lines.
        cmd.env_remove("OUTRIDER_LOG");
        cmd.stdout(std::fs::File::create(&log_file).context("creating the access log file")?);
    } else {
        cmd.env("OUTRIDER_LOG", "warn");
    }
    let proc_ = start_and_wait(cmd, dir, (local(admin_port), "/ready", "admin"))
        .with_context(|| format!("starting {}", bin.display()))?;
    let version = version_of(&bin.to_string_lossy(), "--version");
    let out = local(out_port);
    let mut notes = vec![
        "TCP through the inbound port (--app-port = the sink): the outbound TCP path needs an iptables original destination".into(),
    ];
    if access_log {
        notes.push(format!("access log on (the default), JSON lines on stdout to a file ({})", log_file.display()));
    }
    Ok(Target {
        name: if access_log { "outrider-log" } else { "outrider" }.into(),
        version,
        proc: Some(proc_),
        h1: Ep { addr: out, host: "bench:8080".into() },
        h2: Ok(Ep { addr: out, host: "bench-h2:8081".into() }),
        grpc: Ok(Ep { addr: out, host: "bench-grpc:8082".into() }),
        tcp: Ok(local(in_port)),
        max_idle: None,
        notes,
    })
}

pub fn haproxy(up: &Upstream, core: usize) -> Result<Option<Target>> {
    if !which("haproxy") {
        return Ok(None);
    }
    let dir = TempDir::new("haproxy")?;
    let (p1, p2, pt) = (free_port()?, free_port()?, free_port()?);
    let (http, sink) = (up.http, up.sink);
    // HAProxy wants two descriptors per connection it may hold and refuses to
    // start when the limit cannot give them.
    let hard = crate::procstat::nofile_hard().unwrap_or(NOFILE).min(NOFILE);
    let maxconn = (hard.saturating_sub(200) / 2).min(30000);
    let mut notes = Vec::new();
    if maxconn < 10_100 {
        notes.push(format!(
            "maxconn {maxconn}: HAProxy reserves two descriptors per connection and the hard file limit here is {hard}"
        ));
    }
    let cfg = dir.0.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  nbthread 1\n  maxconn {maxconn}\n\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout http-keep-alive 60s\n  option http-keep-alive\n\n\
             frontend h1\n  bind 127.0.0.1:{p1}\n  default_backend b1\n\nbackend b1\n  http-reuse always\n  server s1 {http}\n\n\
             frontend h2\n  bind 127.0.0.1:{p2} proto h2\n  default_backend b2\n\nbackend b2\n  http-reuse always\n  server s1 {http} proto h2\n\n\
             frontend tcp\n  mode tcp\n  bind 127.0.0.1:{pt}\n  default_backend bt\n\nbackend bt\n  mode tcp\n  server s1 {sink}\n"
        ),
    )?;
    let args: Vec<OsString> = vec!["-db".into(), "-f".into(), cfg.clone().into_os_string()];
    let proc_ =
        start_and_wait(pinned(core, "haproxy", &args), dir, (local(p1), "/", "bench")).context("starting haproxy")?;
    let h2 = Ep { addr: local(p2), host: "bench".into() };
    Ok(Some(Target {
        name: "haproxy".into(),
        version: version_of("haproxy", "-v"),
        proc: Some(proc_),
        h1: Ep { addr: local(p1), host: "bench".into() },
        h2: Ok(h2.clone()),
        grpc: Ok(h2),
        tcp: Ok(local(pt)),
        max_idle: Some(maxconn.saturating_sub(100)),
        notes,
    }))
}

const NGINX_STREAM: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

pub fn nginx(up: &Upstream, core: usize) -> Result<Option<Target>> {
    if !which("nginx") {
        return Ok(None);
    }
    let dir = TempDir::new("nginx")?;
    let (p1, p2, pt) = (free_port()?, free_port()?, free_port()?);
    let (http, sink) = (up.http, up.sink);
    let d = dir.0.display();
    let stream_module = Path::new(NGINX_STREAM).exists();
    let (load, stream) = if stream_module {
        (
            format!("load_module {NGINX_STREAM};\n"),
            format!("stream {{\n  server {{ listen 127.0.0.1:{pt}; proxy_pass {sink}; }}\n}}\n"),
        )
    } else {
        (String::new(), String::new())
    };
    let proxy = "proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection \"\";";
    let cfg = dir.0.join("nginx.conf");
    std::fs::write(
        &cfg,
        format!(
            "{load}worker_processes 1;\nworker_rlimit_nofile {NOFILE};\nmaster_process off;\ndaemon off;\nerror_log /dev/null crit;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 30000; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 120s;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream u {{ server {http}; keepalive 128; keepalive_requests 100000000; }}\n\
               upstream g {{ server {http}; keepalive 128; keepalive_requests 100000000; }}\n\
               server {{\n    listen 127.0.0.1:{p1};\n    location / {{ {proxy} }}\n  }}\n\
               server {{\n    listen 127.0.0.1:{p2} http2;\n    location / {{ {proxy} }}\n    location /bench.Bench/ {{ grpc_pass grpc://g; }}\n  }}\n\
             }}\n{stream}"
        ),
    )?;
    let args: Vec<OsString> = vec!["-p".into(), dir.0.clone().into_os_string(), "-c".into(), cfg.into_os_string()];
    let proc_ =
        start_and_wait(pinned(core, "nginx", &args), dir, (local(p1), "/", "bench")).context("starting nginx")?;
    let h2 = Ep { addr: local(p2), host: "bench".into() };
    Ok(Some(Target {
        name: "nginx".into(),
        version: version_of("nginx", "-v"),
        proc: Some(proc_),
        h1: Ep { addr: local(p1), host: "bench".into() },
        h2: Ok(h2.clone()),
        grpc: Ok(h2),
        tcp: if stream_module {
            Ok(local(pt))
        } else {
            Err(format!("nginx's stream module is not installed ({NGINX_STREAM}: apt-get install libnginx-mod-stream)"))
        },
        max_idle: None,
        notes: vec!["h2c: nginx proxies HTTP/2 to the upstream as HTTP/1.1 (proxy_pass has no HTTP/2); gRPC uses grpc_pass over h2c".into()],
    }))
}
