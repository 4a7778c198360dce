//! `outrider-proxy iptables`: the nat rules that send a network namespace's
//! outbound TCP to the outbound port and its inbound TCP to the inbound port,
//! leaving the proxy's own traffic alone (by uid, and by socket mark if given).
//!
//! The same rules go to `iptables` (IPv4) and `ip6tables` (IPv6): without the IPv6 ones a
//! workload's IPv6 traffic would bypass the proxy, and with it strict mTLS and authorization.
//! Where IPv6 is off in the namespace (`/proc/net/if_inet6` missing or
//! `net.ipv6.conf.all.disable_ipv6 = 1`) there is no IPv6 traffic to catch and only the IPv4
//! rules are installed; `--no-ipv6` skips them explicitly.
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
    /// The iptables binary for IPv4 (iptables, iptables-legacy, ...).
    #[arg(long, default_value = "iptables")]
    pub iptables: String,
    /// The iptables binary for IPv6 (ip6tables, ip6tables-legacy, ...).
    #[arg(long, default_value = "ip6tables")]
    pub ip6tables: String,
    /// Do not install IPv6 rules (IPv6 traffic then bypasses the proxy).
    #[arg(long)]
    pub no_ipv6: bool,
}

/// Which iptables the rules are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Loopback, never redirected (the app's own local connections).
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// Whether a CIDR of `--exclude-outbound-cidrs` belongs to this family.
    fn owns(self, cidr: &str) -> bool {
        cidr.contains(':') == (self == Family::V6)
    }
}

pub const OUTPUT_CHAIN: &str = "OUTRIDER_OUTPUT";
pub const INBOUND_CHAIN: &str = "OUTRIDER_INBOUND";

fn rule(args: &[&str]) -> Vec<String> {
    let mut v = vec!["-t".to_string(), "nat".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// The rules that install interception for `family`, in order.
pub fn install_rules(a: &IptablesArgs, family: Family) -> Vec<Vec<String>> {
    let mut out = vec![rule(&["-N", OUTPUT_CHAIN]), rule(&["-A", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN])];
    let uid = a.proxy_uid.to_string();
    out.push(rule(&["-A", OUTPUT_CHAIN, "-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]));
    if let Some(mark) = a.proxy_mark {
        let mark = format!("{mark:#x}");
        out.push(rule(&["-A", OUTPUT_CHAIN, "-m", "mark", "--mark", &mark, "-j", "RETURN"]));
    }
    out.push(rule(&["-A", OUTPUT_CHAIN, "-d", family.loopback(), "-j", "RETURN"]));
    for cidr in a.exclude_outbound_cidrs.iter().filter(|c| family.owns(c)) {
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
            ip6tables: "ip6tables".into(),
            // IPv6 rules where the namespace has IPv6 (the node proxy listens there on IPv6
            // too): without them a workload's IPv6 traffic would bypass it.
            no_ipv6: false,
        }
    }
}

/// Install `a`'s rules in the calling thread's network namespace, replacing earlier ones; all
/// or nothing. Returns the binaries that installed rules.
pub fn apply(a: &IptablesArgs) -> Result<Vec<String>, String> {
    let families = families(a, ipv6_enabled());
    // Installing is idempotent: clear what a previous run left first.
    for (bin, _) in &families {
        let _ = run_rules(bin, &clean_rules(), true);
    }
    for (bin, family) in &families {
        if let Err(e) = run_rules(bin, &install_rules(a, *family), false) {
            // IPv4 rules without IPv6 ones would leave a bypass.
            for (bin, _) in &families {
                let _ = run_rules(bin, &clean_rules(), true);
            }
            return Err(e);
        }
    }
    Ok(families.iter().map(|(bin, _)| (*bin).to_owned()).collect())
}

/// Remove the rules (IPv4 and IPv6) from the calling thread's network namespace.
pub fn clean() {
    let _ = run_rules("iptables", &clean_rules(), true);
    if ipv6_enabled() {
        let _ = run_rules("ip6tables", &clean_rules(), true);
    }
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

/// Whether this network namespace has IPv6 (so IPv6 traffic exists to intercept).
pub fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
        && std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").map_or(true, |v| v.trim() != "1")
}

/// The binaries and families to install for: IPv4 always, IPv6 unless `--no-ipv6` or IPv6 is
/// off (`ipv6`).
fn families(a: &IptablesArgs, ipv6: bool) -> Vec<(&str, Family)> {
    let mut out = vec![(a.iptables.as_str(), Family::V4)];
    if !a.no_ipv6 && ipv6 {
        out.push((a.ip6tables.as_str(), Family::V6));
    }
    out
}

pub fn run(a: &IptablesArgs) -> ExitCode {
    let ipv6 = ipv6_enabled();
    if !a.no_ipv6 && !ipv6 {
        eprintln!("outrider-proxy: IPv6 is off in this network namespace: IPv4 rules only");
    }
    let families = families(a, ipv6);
    let rules = |family| if a.clean { clean_rules() } else { install_rules(a, family) };
    if !a.apply {
        for (bin, family) in &families {
            for r in rules(*family) {
                println!("{bin} {}", r.join(" "));
            }
        }
        return ExitCode::SUCCESS;
    }
    if a.clean {
        for (bin, _) in &families {
            let _ = run_rules(bin, &clean_rules(), true);
        }
        return ExitCode::SUCCESS;
    }
    match apply(a) {
        Ok(bins) => {
            let installed: usize = families.iter().map(|(_, family)| install_rules(a, *family).len()).sum();
            eprintln!("outrider-proxy: installed {installed} rules ({})", bins.join(" + "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("outrider-proxy: {e}");
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
        let rules: Vec<String> = install_rules(&t.a, Family::V4).iter().map(|r| r.join(" ")).collect();
        let pos = |needle: &str| rules.iter().position(|r| r.contains(needle)).unwrap();
        assert!(pos("--uid-owner 1337 -j RETURN") < pos("REDIRECT --to-ports 16001"));
        assert!(pos("--mark 0x539 -j RETURN") < pos("REDIRECT --to-ports 16001"));
        assert!(pos("--dport 15090 -j RETURN") < pos("REDIRECT --to-ports 15006"));
        assert!(rules.iter().any(|r| r == "-t nat -A OUTPUT -p tcp -j OUTRIDER_OUTPUT"));
    }

    #[test]
    fn no_inbound_skips_prerouting() {
        let t = T::parse_from(["x", "--no-inbound"]);
        for family in [Family::V4, Family::V6] {
            assert!(!install_rules(&t.a, family).iter().any(|r| r.contains(&"PREROUTING".to_string())));
        }
    }

    #[test]
    fn ipv6_gets_the_same_rules_with_its_loopback_and_its_cidrs() {
        let t = T::parse_from(["x", "--exclude-outbound-cidrs", "10.0.0.0/8,fd00::/8"]);
        let v4: Vec<String> = install_rules(&t.a, Family::V4).iter().map(|r| r.join(" ")).collect();
        let v6: Vec<String> = install_rules(&t.a, Family::V6).iter().map(|r| r.join(" ")).collect();
        assert_eq!(v4.len(), v6.len());
        assert!(v6.iter().any(|r| r.contains("-d ::1/128 -j RETURN")) && !v6.iter().any(|r| r.contains("127.0.0.1")));
        assert!(v6.iter().any(|r| r.contains("-d fd00::/8")) && !v6.iter().any(|r| r.contains("10.0.0.0/8")));
        assert!(v4.iter().any(|r| r.contains("-d 10.0.0.0/8")) && !v4.iter().any(|r| r.contains("fd00::/8")));
        assert!(v6.iter().any(|r| r.contains("REDIRECT --to-ports 15006")));
        // Both families unless told otherwise (or IPv6 is off).
        assert_eq!(families(&t.a, true), [("iptables", Family::V4), ("ip6tables", Family::V6)]);
        assert_eq!(families(&t.a, false), [("iptables", Family::V4)]);
        let t = T::parse_from(["x", "--no-ipv6"]);
        assert_eq!(families(&t.a, true), [("iptables", Family::V4)]);
    }
}
