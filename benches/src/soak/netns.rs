//! The soak's own network namespace. Opaque TCP reaches a sidecar's outbound listener only by
//! interception (the listener routes it by its original destination), so the TCP leg needs an
//! iptables `REDIRECT` rule. The soak installs that rule in a network namespace of its own, so
//! nothing on the host changes and no port of the run can meet another program's: the process
//! moves into a new namespace before it starts any thread, and everything it starts (control
//! plane, sidecars, upstream) lives there with it; the namespace goes away with the last of them.
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Move this process into a new network namespace with its loopback up. Call it before any
/// thread is started: only the calling thread moves.
///
/// `Ok(Err(why))` when this process may not create one (not root): the soak then runs in the
/// host's namespace without its TCP leg. `Err` when the namespace exists but its loopback
/// could not be brought up: nothing could run there.
pub fn isolate() -> Result<Result<(), String>> {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        return Ok(Err(format!("cannot create a network namespace for the interception rule ({e}); run as root")));
    }
    run("ip", &["link", "set", "lo", "up"]).context("bringing up the loopback of the soak's network namespace")?;
    Ok(Ok(()))
}

/// Send TCP connections to `vip:port` to `127.0.0.1:to` (the client sidecar's outbound
/// listener), as a sidecar's interception rules would.
pub fn redirect(vip: Ipv4Addr, port: u16, to: u16) -> Result<()> {
    let (vip, port, to) = (vip.to_string(), port.to_string(), to.to_string());
    run(
        "iptables",
        &["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", &vip, "--dport", &port, "-j", "REDIRECT", "--to-ports", &to],
    )
}

fn run(bin: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {bin} (is it installed?)"))?;
    if !out.status.success() {
        bail!("{bin} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
