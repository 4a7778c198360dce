//! `outrider control-plane`: wires the CA, the policy sources, the snapshot generator
//! (debounced), the xDS server and the HTTP API (both over TLS with `--tls`). It runs on a runtime of its own, on a thread of its own, so that
//! tests can run it in-process and kill it like a crashed process (dropping the runtime closes
//! every socket at once).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outrider_xds::PolicySet;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::api::rollouts::Rollouts;
use crate::api::{self, ApiState};
use crate::ca::issuance::Issuance;
use crate::ca::service_accounts::{Cached, Reviewer};
use crate::ca::serving::{ServingError, ServingTls, serving_sans};
use crate::ca::tokens::{JoinTokens, TokenError};
use crate::ca::{Ca, CaConfig, CaError, DEFAULT_WORKLOAD_TTL, RootSource, TrustDomain};
use crate::endpoints::{EndpointSource, Registry, merge};
use crate::kubernetes::ca_bundle::CaBundleKeeper;
use crate::kubernetes::rollouts::ClusterRollouts;
use crate::kubernetes::token_review::ApiServerReviewer;
use crate::kubernetes::webhook::{self, Webhook, WebhookSettings};
use crate::kubernetes::{
    Cluster, ClusterSettings, Kube, KubeError, KubeSettings, LeaseSettings, ca_secret, defaults as kube_defaults,
    join_tokens,
};
use crate::metrics::Metrics;
use crate::policies::persist::DataDir;
use crate::policies::{OpenError, Policies};
use crate::rollout::Controller;
use crate::snapshot::{Generator, Snapshot};
use crate::stats::Stats;
use crate::tracker::Tracker;
use crate::xds::AdsServer;

/// Changes closer together than this are pushed as one (istiod's default).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// A steady stream of changes is still pushed at least this often.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);
/// File in the data dir holding the generated API token when none is given.
pub const TOKEN_FILE: &str = "api-token";

/// How to run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub xds: SocketAddr,
    pub api: SocketAddr,
    pub policy_dir: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Bearer token for API writes; generated (and written to `DATA_DIR/api-token`) when absent.
    pub token: Option<String>,
    pub workers: usize,
    /// How long a sidecar's endpoint registration outlives its xDS stream.
    pub registration_grace: Duration,
    /// SPIFFE trust domain of the CA (`outrider.local`).
    pub trust_domain: String,
    /// The operator's CA certificate (PEM; both or neither with `ca_key`). Without them the CA
    /// generates a root in the data dir (`root.pem`, `root.key`) on first start.
    pub ca_cert: Option<PathBuf>,
    /// The operator's CA key (PKCS#8 PEM).
    pub ca_key: Option<PathBuf>,
    /// Lifetime of workload certificates (and of the control plane's own, with `tls`).
    pub workload_cert_ttl: Duration,
    /// Serve the API and xDS over TLS 1.3 with a certificate from the CA.
    pub tls: bool,
    /// Extra DNS names or IPs for the control plane's serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// How often proxies send load reports (`--load-report-interval`; shorter while a rollout
    /// runs with a short interval).
    pub load_report_interval: Duration,
    /// Let xDS streams without a client certificate or join token register endpoints
    /// (`--insecure-registration`; demos and local tries only).
    pub insecure_registration: bool,
    /// How long the API waits for a request head, including while a kept-alive connection is
    /// idle between requests, before closing the connection ([`api::IDLE_TIMEOUT`]; shorter in
    /// tests that wait for it).
    pub api_idle_timeout: Duration,
    /// `--kubernetes`: the cluster is the source of truth (Services, EndpointSlices, the
    /// `outrider.io` custom resources, the CA Secret); `None`: files and the API.
    pub kubernetes: Option<KubeSettings>,
    /// With `kubernetes`: the injection webhook, and the audience of the service-account tokens
    /// the CA accepts (`webhook.inject.token_audience`).
    pub webhook: WebhookSettings,
}

impl ServerConfig {
    /// Ephemeral loopback ports, `data_dir` as the store, every other setting at its default;
    /// callers change the fields they care about.
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            xds: any,
            api: any,
            policy_dir: None,
            data_dir: data_dir.into(),
            token: None,
            workers: 2,
            registration_grace: REGISTRATION_GRACE,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            ca_cert: None,
            ca_key: None,
            workload_cert_ttl: DEFAULT_WORKLOAD_TTL,
            tls: false,
            tls_sans: Vec::new(),
            load_report_interval: crate::stats::DEFAULT_REPORT_INTERVAL,
            insecure_registration: false,
            api_idle_timeout: api::IDLE_TIMEOUT,
            kubernetes: None,
            webhook: WebhookSettings::default(),
        }
    }
}

/// The default `--data-dir`: `$XDG_STATE_HOME/outrider`, else `~/.local/state/outrider` (the
/// XDG base directory rule for state; relative values are ignored, as the rule says); `None`
/// when neither variable gives an absolute path.
pub fn default_data_dir() -> Option<PathBuf> {
    let absolute = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_absolute());
    let state =
        absolute("XDG_STATE_HOME").or_else(|| absolute("HOME").map(|home| home.join(".local").join("state")))?;
    Some(state.join("outrider"))
}

/// The git checkout (a directory with a `.git` entry) that `dir` is in, if any: a data dir
/// there would put a CA key one `git add .` away from a repository.
pub fn git_checkout_containing(dir: &std::path::Path) -> Option<PathBuf> {
    let absolute = if dir.is_absolute() { dir.to_path_buf() } else { std::env::current_dir().ok()?.join(dir) };
    absolute.ancestors().find(|a| a.join(".git").exists()).map(std::path::Path::to_path_buf)
}

/// Default for [`ServerConfig::trust_domain`].
pub const DEFAULT_TRUST_DOMAIN: &str = "outrider.local";

/// Default for [`ServerConfig::registration_grace`].
pub const REGISTRATION_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Policies(#[from] OpenError),
    #[error("cannot listen on {what} {addr}: {source}; is another process using the port?")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot write the API token to {path}: {source}")]
    Token { path: PathBuf, source: std::io::Error },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    #[error("--ca-cert and --ca-key go together: {0} was given without the other")]
    CaFiles(&'static str),
    #[error("join tokens: {0}")]
    Tokens(#[from] TokenError),
    #[error("TLS: {0}")]
    Tls(#[from] ServingError),
    #[error("rollouts: {0}")]
    Rollouts(crate::policies::persist::PersistError),
    #[error("Kubernetes: {0}")]
    Kube(#[from] KubeError),
    #[error(
        "--policy-dir cannot be used with --kubernetes: the cluster is the source of truth there; \
         apply the files with kubectl apply -f DIR instead"
    )]
    PolicyDirWithKubernetes,
}

impl StartError {
    /// 2 for invalid input (policies), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Policies(OpenError::Dir(_) | OpenError::Stored { .. }) => 2,
            // A bad CA file or setting (the message names the file).
            StartError::Ca(
                CaError::InvalidTrustDomain(_)
                | CaError::BadRoot { .. }
                | CaError::KeyPermissions(..)
                | CaError::BadBundleEntry(_)
                | CaError::Io { op: "read" | "stat", .. },
            )
            | StartError::CaFiles(_)
            | StartError::Tokens(TokenError::Store { .. })
            | StartError::Tls(ServingError::BadSan(_))
            | StartError::PolicyDirWithKubernetes
            | StartError::Kube(KubeError::Kubeconfig { .. } | KubeError::Config(_)) => 2,
            _ => 1,
        }
    }
}

/// How the control plane stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// As if the process died: nothing is released.
    Kill,
    /// SIGTERM: the leader Lease is released first (Kubernetes mode), then everything stops.
    Graceful,
}

/// How long a graceful stop waits for the API server to take the released Lease.
const RELEASE_WITHIN: Duration = Duration::from_secs(5);

/// A running control plane; stopped (abruptly) on drop or [`Running::kill`], gracefully by
/// [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    pub xds_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// The injection webhook's address (TLS), with `--kubernetes` and a webhook port.
    pub webhook_addr: Option<SocketAddr>,
    pub token: String,
    pub policies: Arc<Policies>,
    pub tracker: Arc<Tracker>,
    pub ca: Arc<Ca>,
    pub tokens: Arc<JoinTokens>,
    /// The proxies' load reports, aggregated.
    pub stats: Arc<Stats>,
    /// The rollouts: run here (files and the API), or by the cluster's leader.
    pub rollouts: Rollouts,
    /// Whether the API and xDS are served over TLS.
    pub tls: bool,
    /// The Kubernetes mode's state, with `--kubernetes`.
    pub kubernetes: Option<Arc<Cluster>>,
    stop: Option<oneshot::Sender<Stop>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stop at once: every stream and connection is dropped, as if the process died.
    pub fn kill(mut self) {
        self.stop_now(Stop::Kill);
    }

    /// Stop as on SIGTERM: in Kubernetes mode the leader Lease is released first (bounded by a
    /// few seconds), so another replica takes over at once; then everything stops.
    pub fn shutdown(mut self) {
        self.stop_now(Stop::Graceful);
    }

    /// Block until the control plane stops (it only stops when killed).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop_now(&mut self, how: Stop) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(how);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_now(Stop::Kill);
    }
}

/// A listener with the proxy's backlog (4,096): when a replica restarts, thousands of proxies
/// connect at once, and with the standard library's 128 many of their connections failed and
/// were retried (a benchmark's 2,000 clients saw 900 failures).
fn bind(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    outrider_proxy::transport::listen::bind(addr).map_err(|source| StartError::Bind { what, addr, source })
}

/// A new API token: 128 bits from the system's cryptographic random number generator, as 32
/// hex digits (whoever holds it may write the mesh's policies).
pub(crate) fn random_token() -> std::io::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| std::io::Error::other("the system random number generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn token(config: &ServerConfig) -> Result<String, StartError> {
    if let Some(t) = &config.token {
        return Ok(t.trim().to_owned());
    }
    let path = config.data_dir.join(TOKEN_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path)
        && !existing.trim().is_empty()
    {
        return Ok(existing.trim().to_owned());
    }
    let err = |source| StartError::Token { path: path.clone(), source };
    let token = random_token().map_err(err)?;
    std::fs::create_dir_all(&config.data_dir).map_err(err)?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).map_err(err)?;
        f.write_all(token.as_bytes()).map_err(err)?;
    }
    tracing::info!(file = %path.display(), "no --api-token given: generated one; writes need it");
    Ok(token)
}

fn open_ca(config: &ServerConfig) -> Result<Arc<Ca>, StartError> {
    let root = match (&config.ca_cert, &config.ca_key) {
        (Some(cert), Some(key)) => RootSource::Files { cert: cert.clone(), key: key.clone() },
        (None, None) => RootSource::Generated,
        (Some(_), None) => return Err(StartError::CaFiles("--ca-cert")),
        (None, Some(_)) => return Err(StartError::CaFiles("--ca-key")),
    };
    open_ca_with(config, root)
}

fn open_ca_with(config: &ServerConfig, root: RootSource) -> Result<Arc<Ca>, StartError> {
    let mut ca_config = CaConfig::new(TrustDomain::new(&config.trust_domain)?, config.data_dir.clone());
    ca_config.workload_ttl = config.workload_cert_ttl;
    ca_config.root = root;
    Ok(Arc::new(Ca::open(ca_config)?))
}

/// Start serving.
pub fn start(config: ServerConfig) -> Result<Running, StartError> {
    if config.kubernetes.is_some() && config.policy_dir.is_some() {
        return Err(StartError::PolicyDirWithKubernetes);
    }
    // The ports first, the webhook's included: a start that fails on a busy port leaves nothing
    // behind (no data dir, CA, token or CA Secret created for a control plane that never ran).
    let xds_l = bind("xDS", config.xds)?;
    let api_l = bind("API", config.api)?;
    let webhook_listen = config.kubernetes.as_ref().and(config.webhook.listen);
    let webhook_l = webhook_listen.map(|addr| bind("webhook", addr)).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .thread_name("outrider-cp")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let kube = match &config.kubernetes {
        Some(settings) => Some(runtime.block_on(Kube::connect(settings))?),
        None => None,
    };
    // The CA first: it creates the data dir private (0700). In Kubernetes mode its root is the
    // Secret's, so that every replica signs with the same one.
    let ca = match &kube {
        Some(kube) => {
            if config.ca_cert.is_some() || config.ca_key.is_some() {
                return Err(KubeError::CaFilesWithKubernetes { namespace: kube.namespace.clone() }.into());
            }
            let trust_domain = TrustDomain::new(&config.trust_domain)?;
            let root = runtime.block_on(ca_secret::root(kube, &trust_domain))?;
            let origin = ca_secret::origin(&kube.namespace);
            let ca = open_ca_with(&config, RootSource::Pem { cert: root.cert, key: root.key, origin })?;
            // The Secret's ca.crt (old roots during a rotation) is what is trusted besides it.
            ca.set_trusted_roots(&root.trusted).map_err(|e| KubeError::CaSecret {
                namespace: kube.namespace.clone(),
                reason: format!("ca.crt: {e}"),
            })?;
            ca
        }
        None => open_ca(&config)?,
    };
    // In Kubernetes mode the join tokens live in a Secret every replica reads and writes.
    let tokens = match &kube {
        Some(kube) => {
            let backend = join_tokens::SecretBackend::new(kube, runtime.handle().clone());
            let tokens = Arc::new(JoinTokens::shared(Box::new(backend))?);
            runtime.spawn(join_tokens::watch(kube.clone(), tokens.clone()));
            tokens
        }
        None => Arc::new(JoinTokens::open(&config.data_dir)?),
    };
    let serving_tls = if config.tls || webhook_listen.is_some() {
        let mut extra = config.tls_sans.clone();
        if let Some(k) = &config.kubernetes {
            // How pods and the API server reach it: the Service's DNS names.
            let short = format!("{}.{}.svc", webhook::SERVICE, k.namespace);
            extra.push(format!("{short}.{}", k.cluster_domain));
            extra.push(short);
        }
        let mut sans = serving_sans(config.api.ip(), &extra)?;
        let mut more = serving_sans(config.xds.ip(), &[])?;
        if let Some(addr) = webhook_listen {
            more.extend(serving_sans(addr.ip(), &[])?);
        }
        for san in more {
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        Some(ServingTls::new(ca.clone(), sans, config.workload_cert_ttl)?)
    } else {
        None
    };
    // In Kubernetes mode the store and the directory are not read: the cluster holds the policies.
    let policies = match &kube {
        Some(_) => Policies::empty(DataDir::new(config.data_dir.clone())),
        None => Policies::open(DataDir::new(config.data_dir.clone()), config.policy_dir.clone())?,
    };
    let cluster = match kube {
        Some(kube) => {
            let settings = ClusterSettings {
                trust_domain: config.trust_domain.clone(),
                lease: LeaseSettings::with_duration(
                    config.kubernetes.as_ref().map_or(kube_defaults::LEASE_DURATION, |k| k.lease_duration),
                ),
            };
            Some(Arc::new(runtime.block_on(Cluster::start(kube, settings))?))
        }
        None => None,
    };
    let sets = match &cluster {
        Some(c) => c.sets(),
        None => policies.subscribe(),
    };
    let token = token(&config)?;
    let xds_addr = xds_l.local_addr().unwrap_or(config.xds);
    let api_addr = api_l.local_addr().unwrap_or(config.api);
    let webhook_addr = webhook_l.as_ref().and_then(|l| l.local_addr().ok());
    // Service-account tokens are reviewed for the audience injected pods' tokens have.
    let service_accounts: Option<Reviewer> = cluster.as_ref().map(|c| {
        let reviewer = ApiServerReviewer::new(c.kube.client.clone(), config.webhook.inject.token_audience.clone());
        Arc::new(Cached::new(reviewer)) as Reviewer
    });
    let bundle_ca = ca.clone();
    let bundle_pem = move || bundle_ca.trust_bundle().roots.concat();
    let mut inject = config.webhook.inject.clone();
    inject.ca_roots_pem = bundle_pem();
    // Every replica follows the CA root Secret's roots while it runs (a rotation's new root is
    // trusted at once); the caBundle and injected pods follow.
    let (roots_changed, _) = watch::channel(0u64);
    if let Some(c) = &cluster {
        runtime.spawn(ca_secret::watch(c.kube.clone(), ca.clone(), roots_changed.clone()));
    }
    let webhook_roots = bundle_pem.clone();
    let ca_bundle_keeper = match (&cluster, &config.webhook.configuration) {
        (Some(c), Some(name)) if webhook_addr.is_some() => Some(
            CaBundleKeeper::new(c.kube.client.clone(), name.clone(), bundle_pem)
                .with_roots_changed(roots_changed.subscribe()),
        ),
        _ => None,
    };

    let metrics = Metrics::new();
    let tracker = Tracker::new();
    let registry = Registry::new(config.registration_grace);
    let stats = Stats::new(config.load_report_interval, metrics.clone());
    // In Kubernetes mode the leader runs the Rollout objects (started below, on the runtime).
    let rollouts = match &cluster {
        Some(c) => Rollouts::Cluster(ClusterRollouts::new(c.clone(), stats.clone(), metrics.clone())),
        None => Rollouts::Local(
            Controller::open(policies.clone(), stats.clone(), DataDir::new(config.data_dir.clone()), metrics.clone())
                .map_err(StartError::Rollouts)?,
        ),
    };
    let mut generator = Generator::new();
    stats.update_mesh(&sets.borrow());
    let first = generator.generate(&sets.borrow());
    let (snap_tx, snap_rx) = watch::channel(Arc::new(first));
    let state = Arc::new(ApiState {
        policies: policies.clone(),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        token: token.clone(),
        snapshots: snap_rx.clone(),
        registry: registry.clone(),
        issuance: Issuance::new(ca.clone(), tokens.clone()).with_nodes(registry.clone()),
        tokens: tokens.clone(),
        stats: stats.clone(),
        rollouts: rollouts.clone(),
        last_rejected: parking_lot::Mutex::new(None),
        views: crate::api::cache::Views::default(),
        kubernetes: cluster.clone(),
        service_accounts,
    });
    if config.insecure_registration {
        tracing::warn!(
            "--insecure-registration: any xDS client that can reach the xDS port may register endpoints for any Service"
        );
    }
    let auth = crate::xds::auth::Authenticator::new(
        Some((tokens.clone(), ca.trust_domain().clone())),
        config.insecure_registration,
    );
    let webhook_server = Webhook::new(inject, metrics.clone()).with_roots(webhook_roots);
    let ads = AdsServer::new(snap_rx, tracker.clone(), metrics, registry.clone())
        .with_service_namespaces(Arc::new(SetNamespaces(sets.clone())))
        .with_authenticator(auth)
        .with_stats(stats.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<Stop>();
    let p = policies.clone();
    let (mesh_stats, sweep_stats) = (stats.clone(), stats.clone());
    let run_rollouts = rollouts.clone();
    let tls = config.tls;
    let api_idle = config.api_idle_timeout;
    let keeper_cluster = cluster.clone();
    let thread = std::thread::Builder::new()
        .name("outrider-cp".into())
        .spawn(move || {
            runtime.block_on(async move {
                match (TcpListener::from_std(xds_l), TcpListener::from_std(api_l)) {
                    (Ok(xds_l), Ok(api_l)) => {
                        let (api_tls, xds_tls) = match &serving_tls {
                            Some(t) => {
                                tokio::spawn(t.rotate());
                                // Without --tls the certificate serves only the webhook.
                                if tls { (Some(t.api.clone()), Some(t.xds.clone())) } else { (None, None) }
                            }
                            None => (None, None),
                        };
                        tokio::spawn(ads.serve_with(xds_l, xds_tls));
                        tokio::spawn(api::serve(api_l, state, api_tls, api_idle));
                        let debounced = if keeper_cluster.is_some() { Sets::Debounced } else { Sets::AsTheyCome };
                        tokio::spawn(debounce(sets, debounced, registry.clone(), generator, snap_tx, mesh_stats));
                        tokio::spawn(sweep_stats.sweep_loop());
                        match run_rollouts {
                            Rollouts::Local(controller) => {
                                tokio::spawn(controller.run());
                            }
                            Rollouts::Cluster(cluster) => cluster.spawn(),
                        }
                        tokio::spawn(registry.expire_loop());
                        tokio::spawn(p.watch_dir());
                        if let (Some(l), Some(t)) = (webhook_l, &serving_tls) {
                            match TcpListener::from_std(l) {
                                Ok(l) => {
                                    tokio::spawn(webhook::serve(l, t.api.clone(), webhook_server));
                                }
                                Err(e) => tracing::error!(error = %e, "cannot register the webhook listener"),
                            }
                        }
                        if let (Some(keeper), Some(c)) = (ca_bundle_keeper, &keeper_cluster) {
                            // Once for the mesh: on the leader (every replica would agree anyway).
                            let keeper = Arc::new(keeper);
                            c.leadership().spawn_while_leader("webhook caBundle", move || keeper.clone().run());
                        }
                        if stop_rx.await == Ok(Stop::Graceful)
                            && let Some(c) = &keeper_cluster
                        {
                            c.leadership().release(RELEASE_WITHIN).await;
                        }
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!(error = %e, "cannot register the listeners");
                    }
                }
            });
            // Wait for the workers to drop every task (and with them the listeners), so the
            // ports can be bound again at once.
            runtime.shutdown_timeout(Duration::from_secs(2));
        })
        .map_err(StartError::Runtime)?;
    Ok(Running {
        xds_addr,
        api_addr,
        webhook_addr,
        token,
        policies,
        tracker,
        ca,
        tokens,
        stats,
        rollouts,
        tls: config.tls,
        kubernetes: cluster,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// The namespace of a service, from the set in force (whichever source it comes from).
#[derive(Debug)]
struct SetNamespaces(watch::Receiver<Arc<PolicySet>>);

impl crate::tracker::ServiceNamespaces for SetNamespaces {
    fn namespace_of(&self, service: &str) -> Option<String> {
        self.0.borrow().services.get(service).map(|s| s.metadata.namespace.clone())
    }
}

/// Whether the policy sets a [`debounce`] reads come debounced already (the Kubernetes mode's
/// assembler waits for quiet itself): a new set is then generated at once, rather than after
/// a second wait for quiet. Registrations are debounced either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sets {
    Debounced,
    AsTheyCome,
}

/// Regenerate the snapshot when the policy set changes, at most once per [`DEBOUNCE`] of quiet
/// (and at least once per [`DEBOUNCE_MAX`] during a burst), and publish it when it differs.
async fn debounce(
    mut changes: watch::Receiver<Arc<PolicySet>>,
    sets: Sets,
    registry: Arc<Registry>,
    mut generator: Generator,
    snapshots: watch::Sender<Arc<Snapshot>>,
    stats: Arc<Stats>,
) {
    changes.mark_unchanged();
    let mut registered = registry.changes();
    registered.mark_unchanged();
    loop {
        let new_set = tokio::select! {
            changed = changes.changed() => if changed.is_err() { return } else { true },
            changed = registered.changed() => if changed.is_err() { return } else { false },
        };
        if !(new_set && sets == Sets::Debounced) {
            let burst_end = tokio::time::Instant::now() + DEBOUNCE_MAX;
            loop {
                let quiet = tokio::time::sleep(DEBOUNCE);
                tokio::select! {
                    _ = quiet => break,
                    _ = tokio::time::sleep_until(burst_end) => break,
                    changed = changes.changed() => if changed.is_err() { return },
                    changed = registered.changed() => if changed.is_err() { return },
                }
            }
        }
        let set = changes.borrow_and_update().clone();
        registered.borrow_and_update();
        let endpoints = registry.endpoints();
        let snapshot = if endpoints.is_empty() {
            stats.update_mesh(&set);
            generator.generate(&set)
        } else {
            let merged = merge(&set, &endpoints);
            stats.update_mesh(&merged);
            let mut snapshot = generator.generate(&merged);
            snapshot.policy_version = outrider_xds::translate(&set).version;
            snapshot
        };
        if snapshot.version == snapshots.borrow().version {
            continue;
        }
        tracing::info!(version = %snapshot.version, "pushing a new config");
        snapshots.send_replace(Arc::new(snapshot));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
