//! `outrider-proxy iptables`: the nat rules that send a network namespace's
//! outbound TCP to the outbound port and its inbound TCP to the inbound port,
//! leaving the proxy's own traffic alone (by uid, and by socket mark if given).
use std::process::{Command, ExitCode};

use clap::Args;

#[derive(Debug, Args)]
pub struct IptablesArgs {
    /// Install the rules (default: print them).
    #[arg(long)]
    pub apply: bool,
    /// Remove the rules (prints, or runs with --apply).
    #[arg(long)]
    pub clean: bool,
    /// The proxy's outbound port: where outbound TCP is redirected.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The proxy's inbound port: where inbound TCP is redirected.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Do not intercept inbound traffic.
    #[arg(long)]
    pub no_inbound: bool,
    /// The uid the proxy runs as; its traffic is not redirected.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// Also exempt sockets with this mark (start the proxy with --socket-mark).
    #[arg(long)]
    pub proxy_mark: Option<u32>,
    /// Inbound ports never redirected (the proxy's own ports).
    #[arg(long, value_delimiter = ',', default_value = "15000,15008,15020,15021,15090")]
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations never redirected (CIDRs).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<String>,
    /// The iptables binary (iptables, iptables-legacy, ip6tables...).
    #[arg(long, default_value = "iptables")]
    pub iptables: String,
}

pub const OUTPUT_CHAIN: &str = "OUTRIDER_OUTPUT";
pub const INBOUND_CHAIN: &str = "OUTRIDER_INBOUND";

fn rule(args: &[&str]) -> Vec<String> {
    let mut v = vec!["-t".to_string(), "nat".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// The rules that install interception, in order.
pub fn install_rules(a: &IptablesArgs) -> Vec<Vec<String>> {
    let mut out = vec![rule(&["-N", OUTPUT_CHAIN]), rule(&["-A", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN])];
    let uid = a.proxy_uid.to_string();
    out.push(rule(&["-A", OUTPUT_CHAIN, "-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]));
    if let Some(mark) = a.proxy_mark {
        let mark = format!("{mark:#x}");
        out.push(rule(&["-A", OUTPUT_CHAIN, "-m", "mark", "--mark", &mark, "-j", "RETURN"]));
    }
    out.push(rule(&["-A", OUTPUT_CHAIN, "-d", "127.0.0.1/32", "-j", "RETURN"]));
    for cidr in &a.exclude_outbound_cidrs {
        out.push(rule(&["-A", OUTPUT_CHAIN, "-d", cidr, "-j", "RETURN"]));
    }
    let to_out = a.outbound_port.to_string();
    out.push(rule(&["-A", OUTPUT_CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", &to_out]));
    if !a.no_inbound {
        out.push(rule(&["-N", INBOUND_CHAIN]));
        out.push(rule(&["-A", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN]));
        let mut ports = a.exclude_inbound_ports.clone();
        ports.push(a.inbound_port);
        ports.sort_unstable();
        ports.dedup();
        for p in ports {
            let p = p.to_string();
            out.push(rule(&["-A", INBOUND_CHAIN, "-p", "tcp", "--dport", &p, "-j", "RETURN"]));
        }
        let to_in = a.inbound_port.to_string();
        out.push(rule(&["-A", INBOUND_CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", &to_in]));
    }
    out
}

/// The rules that remove interception (errors ignored: parts may be absent).
pub fn clean_rules() -> Vec<Vec<String>> {
    vec![
        rule(&["-D", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN]),
        rule(&["-D", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN]),
        rule(&["-F", OUTPUT_CHAIN]),
        rule(&["-X", OUTPUT_CHAIN]),
        rule(&["-F", INBOUND_CHAIN]),
        rule(&["-X", INBOUND_CHAIN]),
    ]
}

impl IptablesArgs {
    /// A node proxy's rules in a workload's namespace: outbound to 15001, inbound to 15006,
    /// the proxy's own sockets (marked `mark`) and port 15008 left alone.
    pub fn for_node(mark: u32) -> Self {
        Self {
            apply: true,
            clean: false,
            outbound_port: 15001,
            inbound_port: 15006,
            no_inbound: false,
            proxy_uid: 1337,
            proxy_mark: Some(mark),
            exclude_inbound_ports: vec![15000, 15008, 15020, 15021, 15090],
            exclude_outbound_cidrs: Vec::new(),
            iptables: "iptables".into(),
        }
    }
}

/// Install `a`'s rules in the calling thread's network namespace, replacing earlier ones.
pub fn apply(a: &IptablesArgs) -> Result<(), String> {
    let _ = run_rules(&a.iptables, &clean_rules(), true);
    if let Err(e) = run_rules(&a.iptables, &install_rules(a), false) {
        let _ = run_rules(&a.iptables, &clean_rules(), true);
        return Err(e);
    }
    Ok(())
}

/// Remove the rules from the calling thread's network namespace.
pub fn clean() {
    let _ = run_rules("iptables", &clean_rules(), true);
}

fn run_rules(bin: &str, rules: &[Vec<String>], ignore_errors: bool) -> Result<(), String> {
    for r in rules {
        let out = Command::new(bin)
            .args(r)
            .output()
            .map_err(|e| format!("cannot run {bin}: {e}; is iptables installed (apt-get install iptables)?"))?;
        if !out.status.success() && !ignore_errors {
            return Err(format!(
                "{bin} {} failed: {}; are you root in the target network namespace?",
                r.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

pub fn run(a: &IptablesArgs) -> ExitCode {
    let rules = if a.clean { clean_rules() } else { install_rules(a) };
    if !a.apply {
        for r in &rules {
            println!("{} {}", a.iptables, r.join(" "));
        }
        return ExitCode::SUCCESS;
    }
    // Installing is idempotent: clear what a previous run left first.
    let _ = run_rules(&a.iptables, &clean_rules(), true);
    if a.clean {
        return ExitCode::SUCCESS;
    }
    match run_rules(&a.iptables, &rules, false) {
        Ok(()) => {
            eprintln!("outrider-proxy: installed {} iptables rules", rules.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("outrider-proxy: {e}");
            let _ = run_rules(&a.iptables, &clean_rules(), true);
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: IptablesArgs,
    }

    #[test]
    fn rules_exempt_the_proxy_and_redirect_the_rest() {
        let t = T::parse_from(["x", "--proxy-mark", "1337", "--outbound-port", "16001"]);
        let rules: Vec<String> = install_rules(&t.a).iter().map(|r| r.join(" ")).collect();
        let pos = |needle: &str| rules.iter().position(|r| r.contains(needle)).unwrap();
        assert!(pos("--uid-owner 1337 -j RETURN") < pos("REDIRECT --to-ports 16001"));
        assert!(pos("--mark 0x539 -j RETURN") < pos("REDIRECT --to-ports 16001"));
        assert!(pos("--dport 15090 -j RETURN") < pos("REDIRECT --to-ports 15006"));
        assert!(rules.iter().any(|r| r == "-t nat -A OUTPUT -p tcp -j OUTRIDER_OUTPUT"));
    }

    #[test]
    fn no_inbound_skips_prerouting() {
        let t = T::parse_from(["x", "--no-inbound"]);
        assert!(!install_rules(&t.a).iter().any(|r| r.contains(&"PREROUTING".to_string())));
    }
}
