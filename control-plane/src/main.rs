//! `outrider`: the control plane (`outrider control-plane`) and the CLI that talks to it.
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outrider_control_plane::cli::{self, Connection, Output};
use outrider_control_plane::server::{self, ServerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "outrider",
    version,
    about = "Outrider service mesh: control plane and CLI",
    after_help = "Flags of `outrider control-plane` can also be set with OUTRIDER_<FLAG> (e.g. \
                  --data-dir / OUTRIDER_DATA_DIR); the other commands read OUTRIDER_SERVER, OUTRIDER_TOKEN \
                  and OUTRIDER_CA_ROOT."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve: xDS to proxies, the HTTP API, the watched policy directory.
    ControlPlane(Box<ServeArgs>),
    /// Create or replace the documents of a file (or of every *.yaml of a directory).
    Apply {
        /// A policy file, or a directory of them (every *.yaml / *.yml).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Output: table, json or yaml.
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: Output,
        #[command(flatten)]
        conn: Connection,
    },
    /// List documents: all, of a kind, or one.
    Get {
        /// Service, TrafficPolicy, AuthorizationPolicy, Telemetry or Rollout (any case, plural too).
        kind: Option<String>,
        /// The document's metadata.name.
        name: Option<String>,
        /// Output: table, json, or yaml (documents ready for `apply -f`).
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: Output,
        #[command(flatten)]
        conn: Connection,
    },
    /// Delete one document.
    Delete {
        /// Service, TrafficPolicy, AuthorizationPolicy, Telemetry or Rollout.
        kind: String,
        /// The document's metadata.name.
        name: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Join tokens: a proxy exchanges one (`--identity-token`) for its certificate.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Connected proxies: node id, service, config version per type, ACK/NACK, last seen.
    Status {
        /// Output: table, json or yaml.
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: Output,
        #[command(flatten)]
        conn: Connection,
    },
    /// Rollouts: start, status (with -w: watch it live), pause, resume, promote, abort.
    Rollout {
        /// What to do: start, status, pause, resume, promote or abort.
        verb: cli::rollout::Verb,
        /// The Rollout's name (with --kubernetes: NAMESPACE/NAME, or NAME with -n).
        name: String,
        /// The Rollout's namespace (a control plane run with --kubernetes).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Keep watching until it is promoted (exit 0) or aborted (exit 1).
        #[arg(short = 'w', long)]
        watch: bool,
        /// Output: table (human), json or yaml.
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: Output,
        #[command(flatten)]
        conn: Connection,
    },
    /// Check policy files offline (no server needed): every document of a file,
    /// or of every *.yaml / *.yml file of a directory, validated as one set.
    Validate {
        /// A policy file or a directory of them.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Output: table (human) or json.
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: Output,
    },
    /// Add the outrider-proxy sidecar to the pods and pod templates of Kubernetes YAML (what
    /// the injection webhook does), written to standard output.
    Inject {
        /// A YAML file of one or more documents, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[command(flatten)]
        inject: outrider_control_plane::kubernetes::inject::InjectArgs,
        #[command(flatten)]
        conn: Connection,
    },
    /// Is the mesh on this cluster in order? CRDs, the webhook and its caBundle, replicas,
    /// proxies in sync, certificates, policies; a fix for each failure. Exit 0 only when all pass.
    Check {
        /// Kubeconfig (default: KUBECONFIG, ~/.kube/config, then in-cluster).
        #[arg(long, env = "OUTRIDER_KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// A kubeconfig context other than the current one.
        #[arg(long, env = "OUTRIDER_KUBE_CONTEXT")]
        kube_context: Option<String>,
        /// The control plane's namespace.
        #[arg(long, default_value = outrider_control_plane::kubernetes::defaults::NAMESPACE)]
        namespace: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// The mesh in one process on loopback: a control plane, two services (frontend, reviews
    /// v1 and v2) with a sidecar each, a demo policy, load and a live view (~30 s).
    Demo {
        /// How long to drive load.
        #[arg(long, default_value = "30s", value_parser = duration)]
        duration: std::time::Duration,
        /// Apply no TrafficPolicy (no retries, no breaker, no canary), for the contrast.
        #[arg(long)]
        no_policy: bool,
        /// Requests per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Progressive delivery instead: a Rollout promotes a good v2 step by step, then aborts a
        /// bad v3 on its first step (--duration does not apply).
        #[arg(long)]
        rollout: bool,
        /// table: the live view; json: the live view on stderr and the numbers (per second,
        /// per phase, summary) as one JSON document on stdout.
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: DemoOutput,
        /// After the run, keep the mesh up until Ctrl-C and print how to look at it (status,
        /// metrics, breakers). Default: yes when the output is a terminal and not -o json.
        #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        keep_running: Option<bool>,
    },
    /// One of the demo's workloads (frontend, reviews) as a process of its own, unaware of any
    /// proxy: the demo's mesh in containers (docker/demo.sh) runs them beside sidecars.
    DemoApp {
        #[command(subcommand)]
        app: outrider_control_plane::demo::AppCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a join token bound to `spiffe://<trust-domain>/ns/NS/sa/SA`.
    Create {
        /// Namespace of the identity.
        #[arg(long)]
        namespace: String,
        /// Service account of the identity.
        #[arg(long)]
        service_account: String,
        /// How long the token can be redeemed (e.g. 1h, 24h).
        #[arg(long, value_parser = duration)]
        ttl: Option<std::time::Duration>,
        /// Redeemable once (default: until it expires).
        #[arg(long)]
        single_use: bool,
        /// Print only the token.
        #[arg(short = 'q', long, conflicts_with = "output")]
        quiet: bool,
        /// Output: table, json or yaml.
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: Output,
        #[command(flatten)]
        conn: Connection,
    },
    /// Revoke every join token of `spiffe://<trust-domain>/ns/NS/sa/SA` (issued certificates
    /// stay valid until they expire).
    Revoke {
        /// Namespace of the identity.
        #[arg(long)]
        namespace: String,
        /// Service account of the identity.
        #[arg(long)]
        service_account: String,
        #[command(flatten)]
        conn: Connection,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// xDS (gRPC) port for proxies and proxyless gRPC clients (0: any free port).
    #[arg(long, env = "OUTRIDER_XDS_PORT", default_value_t = 15010)]
    xds_port: u16,
    /// HTTP API port (`/v1/...`, `/metrics`) for the CLI and certificate requests (0: any free port).
    #[arg(long, env = "OUTRIDER_API_PORT", default_value_t = 15014)]
    api_port: u16,
    /// Address both ports bind (loopback unless told otherwise).
    #[arg(long, env = "OUTRIDER_BIND", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// Directory of policy YAML files, watched for changes.
    #[arg(long, env = "OUTRIDER_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// Where accepted API writes, the CA root and key, and the generated API token are kept
    /// [default: $XDG_STATE_HOME/outrider, else ~/.local/state/outrider].
    #[arg(long, env = "OUTRIDER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Bearer token for API writes.
    #[arg(long, env = "OUTRIDER_API_TOKEN", hide_env_values = true, conflicts_with = "api_token_file")]
    api_token: Option<String>,
    /// File holding the bearer token for API writes.
    #[arg(long, env = "OUTRIDER_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// SPIFFE trust domain of the mesh CA: identities are spiffe://<trust-domain>/ns/NS/sa/SA.
    #[arg(long, env = "OUTRIDER_TRUST_DOMAIN", default_value = server::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Your own CA certificate (PEM) instead of a generated root; needs --ca-key.
    #[arg(long, env = "OUTRIDER_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The key (PKCS#8 PEM) of --ca-cert.
    #[arg(long, env = "OUTRIDER_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Lifetime of the workload certificates the CA issues.
    #[arg(long, env = "OUTRIDER_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = duration)]
    workload_cert_ttl: std::time::Duration,
    /// Serve the API and xDS over TLS 1.3 with a certificate from the CA (clients trust
    /// DATA_DIR/root.pem, or your --ca-cert's root).
    #[arg(long, env = "OUTRIDER_TLS")]
    tls: bool,
    /// Extra DNS name or IP in the control plane's certificate (repeatable, or comma-separated).
    #[arg(long = "tls-san", env = "OUTRIDER_TLS_SAN", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Let xDS streams without a client certificate or join token register endpoints of any
    /// Service (demos and local tries only; see docs/security.md).
    #[arg(long, env = "OUTRIDER_INSECURE_REGISTRATION")]
    insecure_registration: bool,
    /// How long a sidecar's endpoint registration outlives its xDS stream.
    #[arg(long, env = "OUTRIDER_REGISTRATION_GRACE", default_value = "10s", value_parser = duration)]
    registration_grace: std::time::Duration,
    /// How often proxies send load reports (LRS); a running rollout with a short interval asks
    /// for them more often.
    #[arg(long, env = "OUTRIDER_LOAD_REPORT_INTERVAL", default_value = "5s", value_parser = duration)]
    load_report_interval: std::time::Duration,
    /// Kubernetes mode: Services, EndpointSlices and the outrider.io custom resources of the
    /// cluster are the policies (no --policy-dir, no API writes); the CA root is kept in a Secret.
    #[arg(long, env = "OUTRIDER_KUBERNETES")]
    kubernetes: bool,
    /// Kubeconfig for --kubernetes (default: KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "OUTRIDER_KUBECONFIG", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// A kubeconfig context other than the current one.
    #[arg(long, env = "OUTRIDER_KUBE_CONTEXT", requires = "kubernetes")]
    kube_context: Option<String>,
    /// The control plane's namespace (its CA Secret, Lease, mesh-wide Telemetry).
    #[arg(long, env = "OUTRIDER_NAMESPACE", default_value = outrider_control_plane::kubernetes::defaults::NAMESPACE)]
    namespace: String,
    /// DNS suffix of the cluster's Services.
    #[arg(long, env = "OUTRIDER_CLUSTER_DOMAIN", default_value = outrider_control_plane::kubernetes::defaults::CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// This replica's name in the leader-election Lease (default: host name and process id).
    #[arg(long, env = "OUTRIDER_REPLICA_NAME")]
    replica_name: Option<String>,
    /// With --kubernetes: the injection webhook's port (TLS, path /inject); 0 for none.
    #[arg(long, env = "OUTRIDER_WEBHOOK_PORT", default_value_t = outrider_control_plane::kubernetes::webhook::DEFAULT_PORT)]
    webhook_port: u16,
    /// The MutatingWebhookConfiguration whose caBundle this control plane keeps equal to its CA's
    /// roots ("" to leave it to you).
    #[arg(long, env = "OUTRIDER_WEBHOOK_CONFIGURATION", default_value = outrider_control_plane::kubernetes::webhook::CONFIGURATION)]
    webhook_configuration: String,
    /// How the webhook injects pods (also the audience of the service-account tokens the CA
    /// accepts).
    #[command(flatten)]
    inject: outrider_control_plane::kubernetes::inject::InjectArgs,
    /// How long the leader's Lease holds without renewal before another replica takes over
    /// (the leader renews at a third of it). Default 15s.
    #[arg(long, env = "OUTRIDER_LEASE_DURATION", value_parser = duration, requires = "kubernetes")]
    lease_duration: Option<std::time::Duration>,
    /// Runtime worker threads.
    #[arg(long, env = "OUTRIDER_WORKERS", default_value_t = 2)]
    workers: usize,
    /// Logs: json (one object per line) or text (for a terminal).
    #[arg(long, env = "OUTRIDER_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoOutput {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::ControlPlane(args) => serve(*args),
        Command::Apply { file, output, conn } => cli::apply(&conn, &file, output),
        Command::Get { kind, name, output, conn } => cli::get(&conn, kind.as_deref(), name.as_deref(), output),
        Command::Delete { kind, name, conn } => cli::delete(&conn, &kind, &name),
        Command::Status { output, conn } => cli::status(&conn, output),
        Command::Token {
            command: TokenCommand::Create { namespace, service_account, ttl, single_use, quiet, output, conn },
        } => cli::token_create(
            &conn,
            &cli::TokenArgs { namespace, service_account, ttl, single_use },
            if quiet { None } else { Some(output) },
        ),
        Command::Token { command: TokenCommand::Revoke { namespace, service_account, conn } } => {
            cli::token_revoke(&conn, &namespace, &service_account)
        }
        Command::Validate { file, output } => validate(&file, output),
        Command::Rollout { verb, name, namespace, watch, output, conn } => {
            let name = match namespace {
                Some(namespace) => format!("{namespace}/{name}"),
                None => name,
            };
            cli::rollout::run(&conn, verb, &name, watch, output)
        }
        Command::Inject { file, inject, conn } => cli::inject::inject(&conn, &file, &inject),
        Command::Check { kubeconfig, kube_context, namespace, conn } => {
            let mut kube = outrider_control_plane::kubernetes::KubeSettings::new();
            kube.kubeconfig = kubeconfig;
            kube.context = kube_context;
            kube.namespace = namespace;
            cli::check::check(&cli::check::CheckArgs { kube, conn })
        }
        Command::Demo { duration, no_policy, rate, rollout, output, keep_running } => {
            let json = output == DemoOutput::Json;
            let keep_running = keep_running.unwrap_or_else(|| !json && std::io::stdout().is_terminal());
            outrider_control_plane::demo::run(outrider_control_plane::demo::DemoArgs {
                duration,
                no_policy,
                rate,
                rollout,
                json,
                keep_running,
            })
        }
        Command::DemoApp { app } => outrider_control_plane::demo::run_app(app),
    }
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    outrider_xds::duration::parse(s).map_err(|e| e.to_string())
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logs(args.log_format);
    let token = match (&args.api_token, &args.api_token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                eprintln!("outrider: cannot read --api-token-file {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => None,
    };
    let Some(data_dir) = args.data_dir.or_else(server::default_data_dir) else {
        eprintln!(
            "outrider: --data-dir is required: neither XDG_STATE_HOME nor HOME is set, so there is no \
             per-user default ($XDG_STATE_HOME/outrider or ~/.local/state/outrider)"
        );
        return ExitCode::from(2);
    };
    if let Some(checkout) = server::git_checkout_containing(&data_dir) {
        tracing::warn!(
            data_dir = %data_dir.display(),
            checkout = %checkout.display(),
            "the data dir is inside a git checkout; it holds the CA key and the API token: keep it \
             out of commits (.gitignore) or pass --data-dir elsewhere"
        );
    }
    // Where clients find the root to trust (`--ca-root` of proxies and of the CLI).
    let root_file = match (&args.ca_cert, args.kubernetes) {
        (_, true) => format!("Secret {}/{}", args.namespace, outrider_control_plane::kubernetes::ca_secret::CA_SECRET),
        (Some(cert), false) => cert.display().to_string(),
        (None, false) => data_dir.join("root.pem").display().to_string(),
    };
    let inject = match args.inject.config("") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outrider: {e}");
            return ExitCode::from(2);
        }
    };
    let webhook = outrider_control_plane::kubernetes::webhook::WebhookSettings {
        listen: (args.webhook_port != 0).then(|| SocketAddr::new(args.bind, args.webhook_port)),
        inject,
        configuration: (!args.webhook_configuration.is_empty()).then_some(args.webhook_configuration),
    };
    let config = ServerConfig {
        xds: SocketAddr::new(args.bind, args.xds_port),
        api: SocketAddr::new(args.bind, args.api_port),
        policy_dir: args.policy_dir,
        data_dir: data_dir.clone(),
        token,
        workers: args.workers,
        registration_grace: args.registration_grace,
        trust_domain: args.trust_domain.clone(),
        ca_cert: args.ca_cert,
        ca_key: args.ca_key,
        workload_cert_ttl: args.workload_cert_ttl,
        tls: args.tls,
        tls_sans: args.tls_san,
        load_report_interval: args.load_report_interval,
        insecure_registration: args.insecure_registration,
        api_idle_timeout: outrider_control_plane::api::IDLE_TIMEOUT,
        kubernetes: args.kubernetes.then(|| {
            let mut k = outrider_control_plane::kubernetes::KubeSettings::new();
            k.kubeconfig = args.kubeconfig;
            k.context = args.kube_context;
            k.namespace = args.namespace;
            k.cluster_domain = args.cluster_domain;
            if let Some(name) = args.replica_name {
                k.identity = name;
            }
            if let Some(d) = args.lease_duration {
                k.lease_duration = d;
            }
            k
        }),
        webhook,
    };
    let running = match server::start(config) {
        Ok(r) => r,
        Err(e) => {
            // Once, on stderr (not also as a log line): it is the last thing the process says.
            eprintln!("outrider: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    tracing::info!(
        xds = %running.xds_addr,
        api = %running.api_addr,
        trust_domain = %args.trust_domain,
        tls = running.tls,
        data_dir = %data_dir.display(),
        root = %root_file,
        "listening"
    );
    // Stop on SIGTERM / SIGINT: accepted writes are already durable.
    let signals = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match signals {
        Ok(rt) => rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }),
        Err(e) => {
            eprintln!("outrider: cannot wait for signals: {e}");
            running.wait();
            return ExitCode::from(1);
        }
    }
    tracing::info!("stopping");
    // The leader Lease (Kubernetes mode) is released first, so another replica takes over at once.
    running.shutdown();
    ExitCode::SUCCESS
}

fn validate(path: &Path, output: Output) -> ExitCode {
    let result = if path.is_dir() { outrider_xds::load_dir(path) } else { outrider_xds::load_file(path) };
    match (result, output) {
        (Ok(set), Output::Table) => {
            let resources = outrider_xds::translate(&set);
            let mut counts = vec![
                cli::count(set.services.len(), "service", "services"),
                cli::count(set.traffic_policies.len(), "traffic policy", "traffic policies"),
            ];
            if !set.authorization_policies.is_empty() {
                let n = set.authorization_policies.len();
                counts.push(cli::count(n, "authorization policy", "authorization policies"));
            }
            if set.telemetry.is_some() {
                counts.push("a Telemetry".to_owned());
            }
            println!("{}: valid ({}; version {})", path.display(), counts.join(", "), resources.version);
            ExitCode::SUCCESS
        }
        (Ok(set), _) => {
            let resources = outrider_xds::translate(&set);
            let v = serde_json::json!({
                "valid": true,
                "version": resources.version,
                "services": set.services.keys().collect::<Vec<_>>(),
                "trafficPolicies": set.traffic_policies.keys().collect::<Vec<_>>(),
            });
            println!("{v}");
            ExitCode::SUCCESS
        }
        (Err(errors), Output::Table) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
        (Err(errors), _) => {
            let list: Vec<_> = errors.iter().map(outrider_xds::PolicyError::to_json).collect();
            println!("{}", serde_json::json!({"valid": false, "errors": list}));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    /// Every flag of every command: a one-line description; `control-plane` flags read
    /// `OUTRIDER_<FLAG>`, and no other flag reads a variable that breaks that rule.
    #[test]
    fn every_flag_is_described_and_follows_the_environment_rule() {
        let command = Cli::command();
        command.clone().debug_assert();
        let mut commands = vec![command];
        while let Some(command) = commands.pop() {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                assert!(!help.is_empty() && !help.contains('\n'), "{} {id}: one line of help", command.get_name());
                if matches!(id, "help" | "version") || arg.is_positional() {
                    continue;
                }
                let long = arg.get_long().unwrap_or(id);
                let rule = format!("OUTRIDER_{}", long.to_uppercase().replace('-', "_"));
                match arg.get_env().and_then(|e| e.to_str()) {
                    Some(env) => assert_eq!(env, rule, "{} --{long}", command.get_name()),
                    None => assert_ne!(command.get_name(), "control-plane", "--{long} reads no variable"),
                }
            }
            commands.extend(command.get_subcommands().cloned());
        }
    }

    #[test]
    fn mistyped_flags_get_a_suggestion() {
        let err = Cli::try_parse_from(["outrider", "control-plane", "--data-dri", "x"]).unwrap_err().to_string();
        assert!(err.contains("a similar argument exists: '--data-dir'"), "{err}");
    }
}
