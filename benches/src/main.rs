//! The load harness: one run puts the direct path, outrider-proxy, HAProxy and
//! nginx through the same workloads against the same upstream, and writes JSON,
//! a markdown table and SVG plots to docs/benchmarks/.
//!
//! Pinning on a 2-core machine: the proxy under test runs alone on core 0; the
//! load generators (wrk, h2load, the open-loop and bulk clients in this process)
//! and the upstream (a thread of this process) share core 1, so the generator
//! never steals the proxy's core. Peers are configured like the proxy: one
//! worker, keep-alive to the upstream, logging off.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;

mod h2load;
mod idle;
mod latency;
mod mtls;
mod openloop;
mod peers;
mod plots;
mod procstat;
mod report;
mod run;
mod soak;
mod tcpbulk;
mod upstream;
mod wrk;

const TARGETS: [&str; 5] = ["direct", "outrider", "outrider-log", "haproxy", "nginx"];
/// Set when the harness re-executes itself under a raised file limit.
const REEXEC_ENV: &str = "OUTRIDER_BENCH_NOFILE_RAISED";

#[derive(Debug, Parser)]
#[command(about = "Outrider load harness: direct vs outrider-proxy vs HAProxy vs nginx")]
struct Args {
    /// Smoke mode: one second per workload, 1,000 idle connections.
    #[arg(long)]
    quick: bool,
    /// Seconds per measurement (default 10; 1 with --quick).
    #[arg(long)]
    duration: Option<u64>,
    /// Concurrent connections of the closed-loop HTTP/1.1 load (wrk).
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Open-loop rates, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u32>,
    /// Keep-alive connections the open-loop generator spreads its requests over.
    #[arg(long, default_value_t = 32)]
    open_connections: u32,
    /// h2load connections and streams per connection (h2c and gRPC).
    #[arg(long, default_value_t = 10)]
    h2_connections: u32,
    #[arg(long, default_value_t = 10)]
    h2_streams: u32,
    /// Idle keep-alive connections for the RSS measurement (default 10000; 1000 with --quick).
    #[arg(long)]
    idle_connections: Option<u64>,
    /// outrider-proxy binary (build it with `cargo build --release -p outrider-proxy`).
    #[arg(long, default_value = "target/release/outrider-proxy")]
    proxy: PathBuf,
    /// Where the JSON, markdown and SVG results go.
    #[arg(long, default_value = "docs/benchmarks")]
    out: PathBuf,
    /// outrider control-plane binary for the mTLS scenario (default: `outrider` next to --proxy).
    #[arg(long)]
    control_plane: Option<PathBuf>,
    /// Run only one part: `targets` (direct, outrider, HAProxy, nginx), `mtls` (two sidecars,
    /// plaintext vs mutual TLS) or `idle` (idle connections per mode, a fresh process each).
    /// `--only mtls` and `--only idle` keep the other results already in --out/results.json and
    /// replace only their own part.
    #[arg(long, value_parser = ["targets", "mtls", "idle"])]
    only: Option<String>,
    /// Closed-loop rounds of the mTLS scenario, each plaintext pair then mTLS pair (default 2; 1 with --quick).
    #[arg(long)]
    mtls_rounds: Option<u32>,
    /// Concurrent handshake tasks of the mTLS handshake test (one client core).
    #[arg(long, default_value_t = 16)]
    handshake_concurrency: usize,
    /// No pinning: the proxies, the load generators and the upstream may all run on every core
    /// (the scheduler decides, as for a sidecar sharing its cores with its app).
    #[arg(long)]
    unpinned: bool,
    /// Only these targets (comma separated: direct,outrider,outrider-log,haproxy,nginx).
    /// `outrider-log` is outrider with its access log at the default (on, to a file): add it
    /// to measure what the access log costs.
    #[arg(long, value_delimiter = ',', default_value = "direct,outrider,haproxy,nginx")]
    targets: Vec<String>,
    /// Run one open loop against ADDR (IP:PORT) at the first of --rates for --duration over
    /// --open-connections, print its result as one JSON line and exit (no upstream, no
    /// pinning). `benches/ambient/compare.sh` runs it inside a workload's network namespace.
    #[arg(long, value_name = "ADDR")]
    open_loop_to: Option<std::net::SocketAddr>,
    /// Host header of --open-loop-to (default: ADDR).
    #[arg(long, requires = "open_loop_to")]
    open_loop_host: Option<String>,
    /// Soak instead of the comparison: meshed sidecars (mTLS) and a control plane carry
    /// HTTP/1.1, h2, unary gRPC, gRPC streams and TCP at --soak-rate each for DURATION (`60s`,
    /// `10m`, `1h`), with long-lived streams and connections, a policy change every 10 s and
    /// certificate rotations; writes soak.{json,md,svg} to --out. The TCP legs need root (the
    /// soak runs in a network namespace of its own, with an iptables rule).
    #[arg(long, value_name = "DURATION", value_parser = soak::parse_duration)]
    soak: Option<std::time::Duration>,
    /// Requests (exchanges, stream messages) per second of each leg of the soak.
    #[arg(long, default_value_t = 200)]
    soak_rate: u32,
    /// Lifetime of the soak's workload certificates (renewed at 50-80 % of it).
    #[arg(long, default_value = "90s", value_parser = soak::parse_duration)]
    soak_cert_ttl: std::time::Duration,
}

/// `--open-loop-to`: one open loop, its result as JSON on stdout.
fn open_loop_only(args: &Args, addr: std::net::SocketAddr) -> Result<()> {
    let rate = args.rates.first().copied().unwrap_or(1000);
    let dur = std::time::Duration::from_secs(args.duration.unwrap_or(10));
    let host = args.open_loop_host.clone().unwrap_or_else(|| addr.to_string());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let r = rt.block_on(openloop::run(addr, &host, rate, dur, args.open_connections as usize))?;
    let out = serde_json::json!({
        "addr": addr.to_string(),
        "rate": rate,
        "duration_s": dur.as_secs(),
        "requests": r.requests,
        "errors": r.errors,
        "rps": r.rps,
        "latency": r.latency,
    });
    println!("{out}");
    Ok(())
}

fn pin_self_to(core: usize) {
    let pid = std::process::id().to_string();
    let ok = std::process::Command::new("taskset")
        .args(["-a", "-cp", &peers::cpu_list(core), &pid])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("warning: could not pin the harness to core {core} (taskset missing?)");
    }
}

/// The idle-connection test needs one file per connection here too: when the
/// soft limit is too low, run again under `ulimit -n` (once).
fn raise_nofile(wanted: u64) {
    if procstat::nofile_soft().unwrap_or(0) >= wanted || std::env::var_os(REEXEC_ENV).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 65536 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\"")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(REEXEC_ENV, "1")
        .exec();
    eprintln!("warning: could not re-run under a higher file limit: {err}");
}

/// `--soak`: unpinned (the soak is about staying healthy, not speed); exit 1 when a request
/// failed, so a CI run fails on it.
fn run_soak(args: &Args, duration: std::time::Duration) -> Result<()> {
    raise_nofile(8192);
    // Before any thread starts: only the calling thread moves to the new namespace.
    let isolated = soak::netns::isolate()?;
    peers::set_unpinned();
    let cfg = soak::Config {
        proxy: args.proxy.clone(),
        control_plane: args.control_plane.clone().unwrap_or_else(|| mtls::default_control_plane(&args.proxy)),
        duration,
        rate: args.soak_rate,
        cert_ttl: args.soak_cert_ttl,
        isolated,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let rep = rt.block_on(soak::run(&cfg))?;
    soak::write(&args.out, &rep)?;
    eprintln!("wrote {}/soak.{{json,md,svg}}", args.out.display());
    print!("{}", soak::summary(&rep));
    if rep.errors > 0 || rep.policy_change_errors > 0 {
        bail!("{} failures and {} failed policy changes during the soak", rep.errors, rep.policy_change_errors);
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.open_loop_to {
        return open_loop_only(&args, addr);
    }
    for t in &args.targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown target {t} (known: {})", TARGETS.join(","));
        }
    }
    if let Some(duration) = args.soak {
        return run_soak(&args, duration);
    }
    let idle_wanted = args.idle_connections.unwrap_or(if args.quick { 1000 } else { 10_000 });
    raise_nofile(idle_wanted + 2048);
    let mut notes = Vec::new();
    let nofile = procstat::nofile_soft().unwrap_or(1024);
    let idle_connections = idle_wanted.min(nofile.saturating_sub(2048));
    if idle_connections < idle_wanted {
        let n =
            format!("the file limit here is {nofile}: {idle_connections} idle connections instead of {idle_wanted}");
        eprintln!("warning: {n}");
        notes.push(n);
    }
    if args.unpinned {
        peers::set_unpinned();
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (proxy_core, load_core) = if cores >= 2 { (0, 1) } else { (0, 0) };
    let duration_s = args.duration.unwrap_or(if args.quick { 1 } else { 10 });
    let settings = run::Settings {
        quick: args.quick,
        duration_s,
        tcp_duration_s: (duration_s / 2).max(1),
        connections: args.connections,
        rates: args.rates.clone(),
        open_connections: args.open_connections,
        h2_connections: args.h2_connections,
        h2_streams: args.h2_streams,
        idle_connections,
        proxy_core,
        load_core,
        unpinned: args.unpinned,
    };
    pin_self_to(load_core);
    let load_before = procstat::loadavg();
    eprintln!("load average before: {load_before}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let up = upstream::start()?;
    eprintln!("upstream on {} (1 kB responses, h2c, gRPC), TCP sink on {}", up.http, up.sink);
    let scratch = std::env::temp_dir().join(format!("outrider-bench-scratch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let part = |p: &str| args.only.as_deref().is_none_or(|o| o == p);
    let (run_targets, run_mtls, run_idle) = (part("targets"), part("mtls"), part("idle"));
    let mtls_rounds = args.mtls_rounds.unwrap_or(if args.quick { 1 } else { 2 });
    let targets: &[String] = if run_targets { &args.targets } else { &[] };
    let mut prog = run::Progress {
        total: targets.len() * run::steps_per_target(&settings)
            + if run_mtls { mtls::steps(mtls_rounds) } else { 0 }
            + if run_idle { idle::steps(&args.targets) } else { 0 },
        done: 0,
        start: Instant::now(),
    };
    let mut reports = Vec::new();
    for t in targets {
        let started = match t.as_str() {
            "direct" => Ok(Some(peers::direct(&up))),
            "outrider" => peers::outrider(&args.proxy, &up, proxy_core).map(Some),
            "outrider-log" => peers::outrider_logging(&args.proxy, &up, proxy_core).map(Some),
            "haproxy" => peers::haproxy(&up, proxy_core),
            _ => peers::nginx(&up, proxy_core),
        };
        match started {
            Ok(Some(target)) => reports.push(rt.block_on(run::measure(&target, &settings, &up, &mut prog, &scratch))),
            Ok(None) => {
                let why = format!("{t} is not installed (apt-get install {t})");
                eprintln!("[{t}] skipped: {why}");
                prog.total -= run::steps_per_target(&settings);
                reports.push(run::TargetReport { target: t.clone(), skipped: Some(why), ..Default::default() });
            }
            Err(e) => {
                eprintln!("[{t}] FAILED to start: {e:#}");
                prog.total -= run::steps_per_target(&settings);
                reports.push(run::TargetReport {
                    target: t.clone(),
                    error: Some(format!("{e:#}")),
                    ..Default::default()
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let cp = args.control_plane.clone().unwrap_or_else(|| mtls::default_control_plane(&args.proxy));
    let mtls = if run_mtls {
        let cfg = mtls::Config {
            proxy: &args.proxy,
            control_plane: &cp,
            settings: &settings,
            rounds: mtls_rounds,
            rate: args.rates.first().copied().unwrap_or(1000),
            handshake_concurrency: args.handshake_concurrency,
            command: command.clone(),
        };
        Some(rt.block_on(mtls::run(&cfg, &up, &mut prog)))
    } else {
        None
    };
    let idle = if run_idle {
        let cfg = idle::Config {
            proxy: &args.proxy,
            control_plane: &cp,
            settings: &settings,
            targets: &args.targets,
            command: command.clone(),
        };
        Some(rt.block_on(idle::run(&cfg, &up, &mut prog)))
    } else {
        None
    };
    let load_after = procstat::loadavg();
    eprintln!("load average after: {load_after}");
    if !run_targets {
        // Keep the other results of the last full run; replace only the part that ran.
        let path = args.out.join("results.json");
        let mut run: report::Run = match std::fs::read_to_string(&path).ok().map(|t| serde_json::from_str(&t)) {
            Some(Ok(run)) => run,
            Some(Err(e)) => bail!("{} is not a results file ({e}); run without --only first", path.display()),
            None => report::Run {
                machine: report::machine(),
                command: command.clone(),
                quick: args.quick,
                load_before: String::new(),
                load_after: String::new(),
                pinning: String::new(),
                settings,
                notes,
                targets: Vec::new(),
                mtls: None,
                idle: None,
            },
        };
        if run_mtls {
            run.mtls = mtls;
        }
        if run_idle {
            run.idle = idle;
        }
        report::write(&args.out, &run)?;
        eprintln!(
            "wrote the {} part of {}/results.{{json,md}}",
            args.only.as_deref().unwrap_or(""),
            args.out.display()
        );
        print!("{}", report::summary(&run));
        return Ok(());
    }
    let run = report::Run {
        machine: report::machine(),
        command,
        quick: args.quick,
        load_before,
        load_after,
        pinning: if args.unpinned {
            format!("unpinned: proxy under test, load generators and upstream on any of the {cores} cores")
        } else {
            format!(
                "proxy under test on core {proxy_core}; load generators and upstream on core {load_core} ({cores} cores)"
            )
        },
        settings,
        notes,
        targets: reports,
        mtls,
        idle,
    };
    report::write(&args.out, &run)?;
    plots::write(&args.out, &run)?;
    eprintln!("wrote {}/results.{{json,md}} and the plots", args.out.display());
    print!("{}", report::summary(&run));
    Ok(())
}
