//! `outrider control-plane`: wires the policy sources, the snapshot generator (debounced), the
//! xDS server and the HTTP API. It runs on a runtime of its own, on a thread of its own, so that
//! tests can run it in-process and kill it like a crashed process (dropping the runtime closes
//! every socket at once).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::api::{self, ApiState};
use crate::endpoints::{EndpointSource, Registry, merge};
use crate::metrics::Metrics;
use crate::policies::persist::DataDir;
use crate::policies::{OpenError, Policies};
use crate::snapshot::{Generator, Snapshot};
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
}

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
}

impl StartError {
    /// 2 for invalid input (policies), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Policies(OpenError::Dir(_) | OpenError::Stored { .. }) => 2,
            _ => 1,
        }
    }
}

/// A running control plane; stopped (abruptly) on drop or [`Running::kill`].
#[derive(Debug)]
pub struct Running {
    pub xds_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub token: String,
    pub policies: Arc<Policies>,
    pub tracker: Arc<Tracker>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stop at once: every stream and connection is dropped, as if the process died.
    pub fn kill(mut self) {
        self.stop_now();
    }

    /// Block until the control plane stops (it only stops when killed).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop_now(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Bind { what, addr, source };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
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
    let token: String = (0..32).map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0')).collect();
    let err = |source| StartError::Token { path: path.clone(), source };
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

/// Start serving.
pub fn start(config: ServerConfig) -> Result<Running, StartError> {
    let policies = Policies::open(DataDir::new(config.data_dir.clone()), config.policy_dir.clone())?;
    let token = token(&config)?;
    let xds_l = bind("xDS", config.xds)?;
    let api_l = bind("API", config.api)?;
    let xds_addr = xds_l.local_addr().unwrap_or(config.xds);
    let api_addr = api_l.local_addr().unwrap_or(config.api);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .thread_name("outrider-cp")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;

    let metrics = Metrics::new();
    let tracker = Tracker::new();
    let registry = Registry::new(config.registration_grace);
    let mut generator = Generator::new();
    let first = generator.generate(&policies.current());
    let (snap_tx, snap_rx) = watch::channel(Arc::new(first));
    let state = Arc::new(ApiState {
        policies: policies.clone(),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        token: token.clone(),
        snapshots: snap_rx.clone(),
        registry: registry.clone(),
    });
    let ads = AdsServer::new(snap_rx, tracker.clone(), metrics, registry.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let p = policies.clone();
    let thread = std::thread::Builder::new()
        .name("outrider-cp".into())
        .spawn(move || {
            runtime.block_on(async move {
                match (TcpListener::from_std(xds_l), TcpListener::from_std(api_l)) {
                    (Ok(xds_l), Ok(api_l)) => {
                        tokio::spawn(ads.serve(xds_l));
                        tokio::spawn(api::serve(api_l, state));
                        tokio::spawn(debounce(p.clone(), registry.clone(), generator, snap_tx));
                        tokio::spawn(registry.expire_loop());
                        tokio::spawn(p.watch_dir());
                        let _ = stop_rx.await;
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
    Ok(Running { xds_addr, api_addr, token, policies, tracker, stop: Some(stop_tx), thread: Some(thread) })
}

/// Regenerate the snapshot when the policy set changes, at most once per [`DEBOUNCE`] of quiet
/// (and at least once per [`DEBOUNCE_MAX`] during a burst), and publish it when it differs.
async fn debounce(
    policies: Arc<Policies>,
    registry: Arc<Registry>,
    mut generator: Generator,
    snapshots: watch::Sender<Arc<Snapshot>>,
) {
    let mut changes = policies.subscribe();
    changes.mark_unchanged();
    let mut registered = registry.changes();
    registered.mark_unchanged();
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            changed = registered.changed() => if changed.is_err() { return },
        }
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
        let set = changes.borrow_and_update().clone();
        registered.borrow_and_update();
        let endpoints = registry.endpoints();
        let snapshot = if endpoints.is_empty() {
            generator.generate(&set)
        } else {
            let mut snapshot = generator.generate(&merge(&set, &endpoints));
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
