//! The processes under test: outrider-proxy, HAProxy and nginx, each pinned to
//! the proxy core with one worker, keep-alive to the upstream and logging off.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const OUTRIDER_HOST: &str = "bench:8080";

/// A running process under test; killed on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub version: String,
    pub pid: u32,
    pub ready: Option<Duration>,
    child: Child,
    _dir: TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self> {
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

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Poll until `GET path` on `addr` answers 200, or fail after 10 s.
fn wait_ok(addr: SocketAddr, path: &str, host: &str, start: Instant) -> Result<Duration> {
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
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("{addr}{path} did not answer 200 within 10 s")
}

pub struct Outrider {
    pub proc: Proc,
    pub url: String,
}

impl Outrider {
    pub fn start(bin: &Path, upstream: SocketAddr, core: usize) -> Result<Self> {
        if !bin.exists() {
            bail!(
                "{} not found: run `cargo build --release -p outrider-proxy` first",
                bin.display()
            );
        }
        let dir = TempDir::new("outrider")?;
        let policy = dir.0.join("policy.yaml");
        std::fs::write(
            &policy,
            format!(
                "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: bench}}\nspec:\n  port: 8080\n  endpoints: [{{address: \"{upstream}\"}}]\n"
            ),
        )?;
        let (out_port, admin_port) = (free_port()?, free_port()?);
        let start = Instant::now();
        let mut child = Command::new("taskset")
            .arg("-c")
            .arg(core.to_string())
            .arg(bin)
            .args([
                "--policy",
                &policy.to_string_lossy(),
                "--workers",
                "1",
                "--access-log",
                "off",
            ])
            .args([
                "--outbound-port",
                &out_port.to_string(),
                "--admin-port",
                &admin_port.to_string(),
            ])
            .args([
                "--inbound-port",
                "0",
                "--metrics-port",
                "0",
                "--health-port",
                "0",
                "--inbound-bind",
                "127.0.0.1",
            ])
            .env("OUTRIDER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning outrider-proxy")?;
        let pid = child.id();
        let ready = match wait_ok(
            SocketAddr::from(([127, 0, 0, 1], admin_port)),
            "/ready",
            "admin",
            start,
        ) {
            Ok(d) => d,
            Err(e) => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(s) = child.stderr.as_mut() {
                    let _ = s.read_to_string(&mut err);
                }
                bail!("{e}: {err}");
            }
        };
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Ok(Self {
            proc: Proc {
                name: "outrider".into(),
                version,
                pid,
                ready: Some(ready),
                child,
                _dir: dir,
            },
            url: format!("http://127.0.0.1:{out_port}/"),
        })
    }
}

pub struct Haproxy {
    pub proc: Proc,
    pub url: String,
}

impl Haproxy {
    pub fn start(upstream: SocketAddr, core: usize) -> Result<Option<Self>> {
        if !which("haproxy") {
            eprintln!("[haproxy] not installed, skipped (apt-get install haproxy)");
            return Ok(None);
        }
        let dir = TempDir::new("haproxy")?;
        let port = free_port()?;
        let cfg = dir.0.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  nbthread 1\n  maxconn 8000\n\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n\nfrontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\nbackend b\n  http-reuse always\n  server s1 {upstream}\n"
            ),
        )?;
        let start = Instant::now();
        let child = Command::new("taskset")
            .args(["-c", &core.to_string(), "haproxy", "-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = wait_ok(addr, "/", "bench", start)?;
        let version = first_line(
            Command::new("haproxy")
                .arg("-v")
                .output()
                .ok()
                .map(|o| o.stdout),
        );
        Ok(Some(Self {
            proc: Proc {
                name: "haproxy".into(),
                version,
                pid,
                ready: Some(ready),
                child,
                _dir: dir,
            },
            url: format!("http://{addr}/"),
        }))
    }
}

pub struct Nginx {
    pub proc: Proc,
    pub url: String,
}

impl Nginx {
    pub fn start(upstream: SocketAddr, core: usize) -> Result<Option<Self>> {
        if !which("nginx") {
            eprintln!("[nginx] not installed, skipped (apt-get install nginx)");
            return Ok(None);
        }
        let dir = TempDir::new("nginx")?;
        let port = free_port()?;
        let d = dir.0.display();
        let cfg = dir.0.join("nginx.conf");
        std::fs::write(
            &cfg,
            format!(
                "worker_processes 1;\nmaster_process off;\ndaemon off;\nerror_log /dev/null crit;\npid {d}/nginx.pid;\nevents {{ worker_connections 20000; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  upstream u {{ server {upstream}; keepalive 128; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
            ),
        )?;
        let start = Instant::now();
        let child = Command::new("taskset")
            .args(["-c", &core.to_string(), "nginx", "-p"])
            .arg(&dir.0)
            .arg("-c")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = wait_ok(addr, "/", "bench", start)?;
        let version = Command::new("nginx")
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_default();
        Ok(Some(Self {
            proc: Proc {
                name: "nginx".into(),
                version,
                pid,
                ready: Some(ready),
                child,
                _dir: dir,
            },
            url: format!("http://{addr}/"),
        }))
    }
}

fn first_line(b: Option<Vec<u8>>) -> String {
    b.and_then(|b| BufReader::new(&b[..]).lines().next().and_then(|l| l.ok()))
        .unwrap_or_default()
}
