//! Command-line flags of `outrider-proxy`; every flag is also read from `OUTRIDER_<FLAG>`
//! (upper case, `-` → `_`: `--xds-address` / `OUTRIDER_XDS_ADDRESS`).
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// The environment variable `--label` was read from before it followed the `OUTRIDER_<FLAG>`
/// rule (`OUTRIDER_LABEL`); still read, so deployments that set it keep their labels, when
/// neither `--label` nor `OUTRIDER_LABEL` is given.
pub const LEGACY_LABELS_ENV: &str = "OUTRIDER_LABELS";

#[derive(Debug, Parser)]
#[command(
    name = "outrider-proxy",
    version,
    about = "Outrider service-mesh proxy: give it a policy file (--policy) or a control plane \
             (--xds-address); one of the two is required.",
    after_help = "Every flag can also be set with OUTRIDER_<FLAG> (upper case, - becomes _), e.g. \
                  --xds-address / OUTRIDER_XDS_ADDRESS.",
    subcommand_negates_reqs = true,
    group(ArgGroup::new("config-source").args(["policy", "xds_address"]).required(true).multiple(true))
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print (or with --apply, install) the iptables rules that redirect a network
    /// namespace's TCP traffic to the proxy.
    Iptables(crate::iptables::IptablesArgs),
    /// Manage the workloads of a node proxy (`--mode node`) through its local API socket.
    Node(crate::node::api::NodeCli),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Sidecar,
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdsProtocol {
    Delta,
    Sotw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// sidecar (one proxy per workload) or node (one per machine serving every workload's
    /// network namespace; needs --xds-address and --identity-token).
    #[arg(long, env = "OUTRIDER_MODE", value_enum, default_value = "sidecar")]
    pub mode: Mode,
    /// Policy file (YAML) to load; watched, and reloaded on change and on SIGHUP.
    /// This or --xds-address is required.
    #[arg(long, env = "OUTRIDER_POLICY")]
    pub policy: Option<PathBuf>,
    /// Address of the xDS control plane, e.g. http://127.0.0.1:15010. This or --policy is
    /// required; with both, the file is the config to start from until the control plane answers.
    #[arg(long, env = "OUTRIDER_XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// ADS variant: delta (incremental) or sotw (state of the world).
    #[arg(long, env = "OUTRIDER_XDS_PROTOCOL", value_enum, default_value = "delta")]
    pub xds_protocol: XdsProtocol,
    /// Largest xDS response accepted, e.g. 64MiB (the largest response of a 10,000-service
    /// mesh is about 8 MiB).
    #[arg(long, env = "OUTRIDER_XDS_MAX_MESSAGE", default_value = "64MiB", value_parser = size)]
    pub xds_max_message: usize,
    /// Node id reported to the control plane and shown in /config_dump.
    #[arg(long, env = "OUTRIDER_NODE_ID")]
    pub node_id: Option<String>,
    /// Name of the service (workload) this sidecar serves; labels inbound metrics.
    #[arg(long, env = "OUTRIDER_SERVICE")]
    pub service: Option<String>,
    /// Port on 127.0.0.1 where inbound traffic is delivered to the application.
    /// Without it, redirected inbound traffic goes to its original destination port.
    #[arg(long, env = "OUTRIDER_APP_PORT")]
    pub app_port: Option<u16>,
    /// Outbound listener: apps call services here (on --outbound-bind); 0 picks a free port.
    #[arg(long, env = "OUTRIDER_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,
    /// Inbound listener: callers reach this workload here (on --inbound-bind); 0 picks a free port.
    #[arg(long, env = "OUTRIDER_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,
    /// Admin API (/ready, /config_dump, /clusters, ...), always on 127.0.0.1; 0 picks a free port.
    #[arg(long, env = "OUTRIDER_ADMIN_PORT", default_value_t = 15000)]
    pub admin_port: u16,
    /// Prometheus /metrics (on --inbound-bind); 0 picks a free port.
    #[arg(long, env = "OUTRIDER_METRICS_PORT", default_value_t = 15090)]
    pub metrics_port: u16,
    /// /healthz/ready for orchestrators (on --inbound-bind); 0 picks a free port.
    #[arg(long, env = "OUTRIDER_HEALTH_PORT", default_value_t = 15021)]
    pub health_port: u16,
    /// The HBONE port (node mode): only 15008, the port callers tunnel to; another value is
    /// rejected (`not supported yet`).
    #[arg(long, env = "OUTRIDER_TUNNEL_PORT", default_value_t = crate::hbone::PORT)]
    pub tunnel_port: u16,
    /// Address the outbound listener binds (loopback: only local apps may use it).
    #[arg(long, env = "OUTRIDER_OUTBOUND_BIND", default_value = "127.0.0.1")]
    pub outbound_bind: IpAddr,
    /// Address the inbound, metrics and health listeners bind.
    #[arg(long, env = "OUTRIDER_INBOUND_BIND", default_value = "0.0.0.0")]
    pub inbound_bind: IpAddr,
    /// Logs: json (one object per line) or text (for a terminal).
    #[arg(long, env = "OUTRIDER_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Access log: one line per request / connection (on | off).
    #[arg(long, env = "OUTRIDER_ACCESS_LOG", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// Share of successful requests and TCP connections that get an access-log line,
    /// 0.0 to 1.0 (errors, 4xx, 5xx and local replies are always logged).
    #[arg(long, env = "OUTRIDER_ACCESS_LOG_SAMPLE", default_value_t = 1.0)]
    pub access_log_sample: f64,
    /// JSON logs on stdout: access-log lines are written in batches of 32 KiB, and at the
    /// latest this long after they were logged (a SIGKILL loses at most this much), e.g. 1s;
    /// 0s: each line at once.
    #[arg(long, env = "OUTRIDER_ACCESS_LOG_FLUSH_INTERVAL", default_value = "1s", value_parser = duration)]
    pub access_log_flush_interval: Duration,
    /// Export the spans of failed requests (5xx, local reply, gRPC error, reset) even when
    /// the sampler leaves their trace out (on | off; tracing needs an OTLP endpoint).
    #[arg(long, env = "OUTRIDER_TRACE_ERRORS", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    pub trace_errors: bool,
    /// Data-plane worker threads (default: number of CPUs).
    #[arg(long, env = "OUTRIDER_WORKERS")]
    pub workers: Option<usize>,
    /// Most downstream connections open at once (outbound and inbound listeners together); a
    /// connection over it is accepted and closed at once.
    #[arg(long, env = "OUTRIDER_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// How long the whole drain may take after SIGTERM (accepting on until the endpoint is
    /// withdrawn, then in-flight requests finishing), e.g. 5s.
    #[arg(long, env = "OUTRIDER_DRAIN_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// After SIGTERM, how long the listeners keep accepting once the control plane has
    /// confirmed this endpoint's withdrawal, for its push to reach the callers (new connections
    /// are served and closed meanwhile), e.g. 1s. Within --drain-timeout.
    #[arg(long, env = "OUTRIDER_DRAIN_PROPAGATION", default_value = "1s", value_parser = duration)]
    pub drain_propagation: Duration,
    /// How often the proxy gives the memory its allocator holds free back to the system (glibc
    /// keeps what a burst freed resident otherwise), e.g. 10s; 0s: never.
    #[arg(long, env = "OUTRIDER_HEAP_RELEASE_INTERVAL", default_value = "10s", value_parser = duration)]
    pub heap_release_interval: Duration,
    /// SO_MARK set on the proxy's upstream sockets, so iptables rules can exempt them.
    #[arg(long, env = "OUTRIDER_SOCKET_MARK")]
    pub socket_mark: Option<u32>,
    /// Workload address (IP:port) registered as an endpoint of --service with the control plane
    /// (default: the inbound listener, when it is bound to a specific IP).
    #[arg(long, env = "OUTRIDER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Namespace of the workload (part of its identity and of the registration).
    #[arg(long, env = "OUTRIDER_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Service account of the workload: its identity is
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> (default: --service, else "default").
    #[arg(long, env = "OUTRIDER_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// Join token file (`outrider token create`): the proxy gets a workload certificate from the
    /// control plane's CA and talks mutual TLS to other meshed proxies.
    #[arg(long, env = "OUTRIDER_IDENTITY_TOKEN")]
    pub identity_token: Option<PathBuf>,
    /// The control plane API that issues certificates (default: the --xds-address host, port 15014).
    #[arg(long, env = "OUTRIDER_CA_ADDRESS")]
    pub ca_address: Option<String>,
    /// PEM roots that verify an https --ca-address (e.g. the control plane's DATA_DIR/root.pem).
    #[arg(long, env = "OUTRIDER_CA_ROOT", conflicts_with = "ca_root_pem")]
    pub ca_root: Option<PathBuf>,
    /// The same roots as PEM text rather than a file (what the Kubernetes injector sets).
    #[arg(long, env = "OUTRIDER_CA_ROOT_PEM", hide_env_values = true)]
    pub ca_root_pem: Option<String>,
    /// Label of the registered workload, KEY=VALUE (repeatable, or comma-separated).
    #[arg(long = "label", env = "OUTRIDER_LABEL", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Node mode: the local workload API's Unix socket (`outrider-proxy node …` talks to it).
    #[arg(long, env = "OUTRIDER_NODE_SOCKET", default_value = crate::node::DEFAULT_SOCKET)]
    pub node_socket: PathBuf,
    /// Node mode: where the served workloads are kept across restarts (default: beside the
    /// socket, `<socket>.workloads.json`); restored when the proxy starts.
    #[arg(long, env = "OUTRIDER_NODE_STATE")]
    pub node_state: Option<PathBuf>,
}

/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The socket mark of a node proxy unless `--socket-mark` says otherwise.
pub const NODE_SOCKET_MARK: u32 = 0x539;

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

/// A size in bytes: `1048576`, `512KiB`, `64MiB`, `1GiB`.
fn size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} in {s:?}; use B, KiB, MiB or GiB, e.g. 64MiB")),
    };
    let n: usize = digits.parse().map_err(|_| format!("expected a size like 64MiB, got {s:?}"))?;
    n.checked_mul(scale).filter(|b| *b > 0).ok_or_else(|| format!("{s:?} is out of range (more than 0, at most 4GiB)"))
}

fn duration(s: &str) -> Result<Duration, String> {
    outrider_xds::duration::parse(s).map_err(|e| e.to_string())
}

/// Validated proxy configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The policy file (watched), or with `xds` the config to start from.
    pub policy: Option<PathBuf>,
    /// The xDS server to get config from.
    pub xds: Option<crate::source::xds::XdsConfig>,
    pub node_id: String,
    pub service: Option<String>,
    pub namespace: String,
    pub app_port: Option<u16>,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub health: SocketAddr,
    pub log_format: LogFormat,
    pub access_log: bool,
    /// Share of successful requests logged (errors always are).
    pub access_log_sample: f64,
    /// `--access-log-flush-interval`; zero: each line written at once. Used by `main`, which
    /// owns stdout (`telemetry::stdout::start`).
    pub access_log_flush_interval: Duration,
    /// Spans over OTLP/gRPC, from the `OTEL_*` environment variables; `None`: off.
    pub tracing: Option<crate::telemetry::trace::TraceConfig>,
    pub workers: usize,
    /// Most downstream connections open at once (`--max-connections`).
    pub max_connections: usize,
    pub drain_timeout: Duration,
    /// `--drain-propagation`: accepting on after the control plane confirmed the withdrawal.
    pub drain_propagation: Duration,
    /// `--heap-release-interval`; zero: off.
    pub heap_release_interval: Duration,
    pub socket_mark: Option<u32>,
    /// Workload identity (`--identity-token`); `None`: no mTLS, plaintext to every endpoint.
    /// In node mode: the node's own identity.
    pub identity: Option<crate::mesh::IdentityConfig>,
    /// Node mode: the local API socket.
    pub node: Option<NodeSettings>,
}

/// `--mode node`.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub socket: PathBuf,
    /// The served workloads, kept across restarts.
    pub state: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--policy FILE or --xds-address URL is required")]
    NoPolicy,
    #[error("{0} is not supported yet: {1}")]
    NotSupported(&'static str, &'static str),
    #[error("{0}: {1}")]
    Invalid(&'static str, &'static str),
    #[error("--workers must be at least 1")]
    Workers,
    #[error("--max-connections must be at least 1")]
    MaxConnections,
    #[error("--access-log-sample must be between 0 and 1, got {0}")]
    AccessLogSample(f64),
    #[error("tracing: {0}")]
    Tracing(#[from] crate::telemetry::trace::config::TraceConfigError),
    #[error("--identity-token: {0}")]
    IdentityToken(#[from] outrider_xds::join_token::TokenFileError),
}

impl ProxyConfig {
    /// A proxy for embedding (tests, `outrider demo`): every port 127.0.0.1:0, one
    /// worker, JSON logs, no access log, no config source yet — set `policy` or `xds`.
    pub fn local(node_id: &str) -> Self {
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        Self {
            policy: None,
            xds: None,
            node_id: node_id.to_owned(),
            service: None,
            namespace: "default".into(),
            app_port: None,
            outbound: any,
            inbound: any,
            admin: any,
            metrics: any,
            health: any,
            log_format: LogFormat::Json,
            access_log: false,
            access_log_sample: 1.0,
            access_log_flush_interval: Duration::from_secs(1),
            tracing: None,
            workers: 1,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            drain_timeout: Duration::from_secs(5),
            drain_propagation: Duration::from_secs(1),
            heap_release_interval: Duration::from_secs(10),
            socket_mark: None,
            identity: None,
            node: None,
        }
    }
}

impl ProxyArgs {
    pub fn validate(self) -> Result<ProxyConfig, ConfigError> {
        if self.tunnel_port != crate::hbone::PORT {
            return Err(ConfigError::NotSupported(
                "--tunnel-port other than 15008",
                "callers (node proxies and sidecars) tunnel to a workload's port 15008",
            ));
        }
        if self.mode == Mode::Node {
            if self.xds_address.is_none() || self.identity_token.is_none() {
                return Err(ConfigError::Invalid(
                    "--mode node",
                    "needs --xds-address and --identity-token (the node's join token): workloads get \
                     their certificates on the node's identity",
                ));
            }
            if self.service.is_some() || self.advertise.is_some() || self.app_port.is_some() {
                return Err(ConfigError::Invalid(
                    "--mode node",
                    "--service, --advertise and --app-port are per workload: use `outrider-proxy node add-workload`",
                ));
            }
        }
        if self.xds_address.as_deref().is_some_and(|a| a.starts_with("https://")) && self.identity_token.is_none() {
            return Err(ConfigError::Invalid(
                "--xds-address",
                "an https xDS address needs --identity-token: the proxy authenticates with its workload certificate",
            ));
        }
        let identity = match &self.identity_token {
            None if self.service_account.is_some()
                || self.ca_address.is_some()
                || self.ca_root.is_some()
                || self.ca_root_pem.is_some() =>
            {
                return Err(ConfigError::Invalid(
                    "--service-account / --ca-address / --ca-root / --ca-root-pem",
                    "they only make sense with --identity-token FILE",
                ));
            }
            None => None,
            Some(token_file) => {
                // A token file that cannot work fails the start, naming the file (and `-q` when
                // it holds the table `outrider token create` prints).
                outrider_xds::join_token::read(token_file)?;
                let ca = match (&self.ca_address, &self.xds_address) {
                    (Some(ca), _) => ca.parse::<http::Uri>().ok(),
                    (None, Some(xds)) => ca_from_xds(xds),
                    (None, None) => {
                        return Err(ConfigError::Invalid(
                            "--identity-token",
                            "needs --ca-address URL or --xds-address (the CA is the control plane's API)",
                        ));
                    }
                };
                let Some(ca) = ca.filter(|u| u.scheme().is_some() && u.authority().is_some()) else {
                    return Err(ConfigError::Invalid("--ca-address", "expected http://HOST:PORT or https://HOST:PORT"));
                };
                let service_account =
                    self.service_account.clone().or_else(|| self.service.clone()).unwrap_or_else(|| "default".into());
                if !outrider_xds::validate::is_dns_label(&service_account) {
                    return Err(ConfigError::Invalid("--service-account", "must be a DNS label ([a-z0-9-], 1-63)"));
                }
                if !outrider_xds::validate::is_dns_label(&self.namespace) {
                    return Err(ConfigError::Invalid("--namespace", "must be a DNS label ([a-z0-9-], 1-63)"));
                }
                Some(crate::mesh::IdentityConfig {
                    ca,
                    token_file: token_file.clone(),
                    namespace: self.namespace.clone(),
                    service_account,
                    ca_root: match (&self.ca_root, &self.ca_root_pem) {
                        (Some(file), _) => Some(crate::mesh::CaRoots::File(file.clone())),
                        (None, Some(pem)) => Some(crate::mesh::CaRoots::Pem(pem.clone())),
                        (None, None) => None,
                    },
                })
            }
        };
        if self.xds_address.is_none() && (self.advertise.is_some() || !self.labels.is_empty()) {
            return Err(ConfigError::NotSupported(
                "--advertise / --label without --xds-address",
                "workload registration needs the control plane",
            ));
        }
        let advertise = match self.advertise.as_deref().map(str::parse::<SocketAddr>) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => return Err(ConfigError::Invalid("--advertise", "expected IP:PORT, e.g. 10.0.0.7:8080")),
        };
        let mut labels = std::collections::BTreeMap::new();
        let legacy: Vec<String> = match std::env::var(LEGACY_LABELS_ENV) {
            Ok(value) if self.labels.is_empty() => {
                value.split(',').filter(|l| !l.is_empty()).map(str::to_owned).collect()
            }
            _ => Vec::new(),
        };
        for l in self.labels.iter().chain(&legacy) {
            match l.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    labels.insert(k.to_owned(), v.to_owned());
                }
                _ => return Err(ConfigError::Invalid("--label", "expected KEY=VALUE, e.g. version=v2")),
            }
        }
        let xds = self.xds_address.map(|address| crate::source::xds::XdsConfig {
            address,
            protocol: match self.xds_protocol {
                XdsProtocol::Delta => crate::source::xds::Protocol::Delta,
                XdsProtocol::Sotw => crate::source::xds::Protocol::Sotw,
            },
            advertise,
            labels,
            max_message: self.xds_max_message,
        });
        if self.policy.is_none() && xds.is_none() {
            return Err(ConfigError::NoPolicy);
        }
        let policy = self.policy;
        if self.max_connections == 0 {
            return Err(ConfigError::MaxConnections);
        }
        let workers = match self.workers {
            Some(0) => return Err(ConfigError::Workers),
            Some(n) => n,
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        };
        if !(0.0..=1.0).contains(&self.access_log_sample) {
            return Err(ConfigError::AccessLogSample(self.access_log_sample));
        }
        let mut tracing =
            crate::telemetry::trace::TraceConfig::from_env(self.service.as_deref().unwrap_or("outrider-proxy"))?;
        if let Some(t) = tracing.as_mut() {
            t.errors = self.trace_errors;
        }
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let kind = if self.mode == Mode::Node { "node" } else { "sidecar" };
        let node_id = self.node_id.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{kind}~{}~{}", host.trim(), std::process::id())
        });
        // Node mode: the proxy's sockets in workload namespaces carry a mark the rules exempt.
        let socket_mark = match self.mode {
            Mode::Node => Some(self.socket_mark.unwrap_or(NODE_SOCKET_MARK)),
            Mode::Sidecar => self.socket_mark,
        };
        let node = (self.mode == Mode::Node).then(|| NodeSettings {
            state: self.node_state.clone().unwrap_or_else(|| crate::node::state::default_path(&self.node_socket)),
            socket: self.node_socket.clone(),
        });
        Ok(ProxyConfig {
            policy,
            xds,
            node_id,
            service: self.service,
            namespace: self.namespace,
            app_port: self.app_port,
            outbound: SocketAddr::new(self.outbound_bind, self.outbound_port),
            inbound: SocketAddr::new(self.inbound_bind, self.inbound_port),
            admin: SocketAddr::new(loopback, self.admin_port),
            metrics: SocketAddr::new(self.inbound_bind, self.metrics_port),
            health: SocketAddr::new(self.inbound_bind, self.health_port),
            log_format: self.log_format,
            access_log: self.access_log,
            access_log_sample: self.access_log_sample,
            access_log_flush_interval: self.access_log_flush_interval,
            tracing,
            workers,
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
            drain_propagation: self.drain_propagation,
            heap_release_interval: self.heap_release_interval,
            socket_mark,
            identity,
            node,
        })
    }
}

/// `http://HOST:15010` → `http://HOST:15014` (the control plane's API port).
fn ca_from_xds(xds: &str) -> Option<http::Uri> {
    let uri: http::Uri = xds.parse().ok()?;
    let host = uri.host()?;
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
    format!("{}://{host}:15014", uri.scheme_str().unwrap_or("http")).parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// Every flag: a one-line description, and `OUTRIDER_<FLAG>` as its environment variable
    /// (the `iptables` subcommand, a one-shot tool, reads none).
    #[test]
    fn every_flag_is_described_and_follows_the_environment_rule() {
        // Every level of subcommands, with global flags propagated as `--help` shows them.
        let mut command = Cli::command();
        command.build();
        command.clone().debug_assert();
        // The rule: a flag of `outrider-proxy` reads `OUTRIDER_<FLAG>`; a flag of `node …` (the
        // CLI of the node proxy's local API) `OUTRIDER_NODE_<FLAG>`, when it reads one; the
        // one-shot `iptables` reads none.
        let mut commands = vec![(command, Some("OUTRIDER_".to_owned()), "outrider-proxy".to_owned())];
        let mut walked = Vec::new();
        while let Some((command, prefix, path)) = commands.pop() {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                assert!(!help.is_empty() && !help.contains('\n'), "{path} {id}: one line of help, got {help:?}");
                if matches!(id, "help" | "version") || arg.is_positional() {
                    continue;
                }
                let long = arg.get_long().unwrap_or_else(|| panic!("{path} {id} has a long name"));
                let flag = long.to_uppercase().replace('-', "_");
                match (arg.get_env().and_then(|e| e.to_str()), &prefix) {
                    (Some(env), Some(prefix)) => assert_eq!(env, format!("{prefix}{flag}"), "{path} --{long}"),
                    (Some(env), None) => panic!("{path} --{long} reads {env}; this command reads no variables"),
                    (None, _) if path == "outrider-proxy" => panic!("--{long} reads no variable"),
                    (None, _) => {}
                }
            }
            for sub in command.get_subcommands() {
                let prefix = match (path.as_str(), sub.get_name()) {
                    ("outrider-proxy", "node") => Some("OUTRIDER_NODE_".to_owned()),
                    ("outrider-proxy", _) => None,
                    _ => prefix.clone(),
                };
                commands.push((sub.clone(), prefix, format!("{path} {}", sub.get_name())));
            }
            walked.push(path);
        }
        for path in ["iptables", "node add-workload", "node remove-workload", "node list"] {
            assert!(walked.contains(&format!("outrider-proxy {path}")), "{path} was walked: {walked:?}");
        }
    }

    #[test]
    fn a_config_source_is_required_except_for_subcommands() {
        let err = Cli::try_parse_from(["outrider-proxy"]).unwrap_err().to_string();
        assert!(err.contains("--policy") && err.contains("--xds-address"), "{err}");
        assert!(Cli::try_parse_from(["outrider-proxy", "iptables"]).is_ok());
        let typo = Cli::try_parse_from(["outrider-proxy", "--polcy", "p.yaml"]).unwrap_err().to_string();
        assert!(typo.contains("a similar argument exists: '--policy'"), "{typo}");
    }

    #[test]
    fn sizes_take_binary_units_and_refuse_the_rest() {
        assert_eq!(size("1048576"), Ok(1 << 20));
        assert_eq!(size("512KiB"), Ok(512 << 10));
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert!(size("64MB").unwrap_err().contains("MiB"));
        assert!(size("0").is_err());
        assert!(size("MiB").is_err());
        assert!(size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn the_default_decode_limit_is_the_ads_clients() {
        let cli = Cli::try_parse_from(["outrider-proxy", "--xds-address", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(cli.proxy.xds_max_message, outrider_xds::ads::DEFAULT_MAX_MESSAGE);
        let config = cli.proxy.validate().unwrap();
        assert_eq!(config.xds.unwrap().max_message, outrider_xds::ads::DEFAULT_MAX_MESSAGE);
    }

    #[test]
    fn the_access_log_flush_interval_is_a_duration_of_one_second_by_default() {
        let parse = |extra: &[&str]| {
            let args = ["outrider-proxy", "--policy", "p.yaml"].iter().chain(extra);
            Cli::try_parse_from(args).map(|c| c.proxy.validate().unwrap().access_log_flush_interval)
        };
        assert_eq!(parse(&[]).unwrap(), Duration::from_secs(1));
        assert_eq!(parse(&["--access-log-flush-interval", "250ms"]).unwrap(), Duration::from_millis(250));
        assert_eq!(parse(&["--access-log-flush-interval", "0s"]).unwrap(), Duration::ZERO, "0s: each line at once");
        assert!(parse(&["--access-log-flush-interval", "soon"]).is_err());
    }

    #[test]
    fn a_tunnel_port_the_proxy_cannot_use_is_rejected_not_ignored() {
        let parse = |port: &str| Cli::try_parse_from(["outrider-proxy", "--policy", "p.yaml", "--tunnel-port", port]);
        let err = parse("16008").unwrap().proxy.validate().unwrap_err().to_string();
        assert!(err.contains("--tunnel-port") && err.contains("not supported yet"), "{err}");
        assert!(parse("15008").unwrap().proxy.validate().is_ok());
    }
}
