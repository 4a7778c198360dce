//! Wires the listeners, the config source and the admin servers together.
//! The data plane runs on the caller's (multi-threaded) runtime; admin, metrics,
//! health and the config source run on a small runtime of their own.
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};

use crate::admin::{self, AdminState, Surface};
use crate::config::ProxyConfig;
use crate::drain::{self, Drain};
use crate::http::server::{HttpServer, ServerLimits};
use crate::inbound::Inbound;
use crate::outbound::Outbound;
use crate::source::{FileSource, LoadError};
use crate::state::Store;
use crate::telemetry::access::Recorder;
use crate::telemetry::log::LogHandle;
use crate::telemetry::metrics::{Direction, DirectionLabels, Metrics};
use crate::telemetry::trace::Tracer;
use crate::telemetry::trace::export::Exporter;
use crate::transport::listen;
use crate::transport::socket::SocketOptions;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {0} ({1}): {2}; is another process using the port?")]
    Bind(&'static str, SocketAddr, #[source] std::io::Error),
    #[error("policy file {0}:\n{1}")]
    Policy(String, #[source] LoadError),
    #[error("cannot start the control runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen on the node API socket {0}: {1}")]
    NodeSocket(std::path::PathBuf, #[source] std::io::Error),
    #[error("node mode: {0}")]
    Node(String),
}

impl AppError {
    /// 2 for invalid input, 1 for runtime failures (docs/operations.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Policy(..) => 2,
            _ => 1,
        }
    }
}

/// The addresses the proxy actually listens on (port 0 resolved).
#[derive(Clone, Copy, Debug)]
pub struct BoundAddrs {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub health: SocketAddr,
}

/// How long shutdown waits for the control plane to confirm the drain notice.
const LEAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A running proxy.
#[derive(Debug)]
pub struct App {
    pub addrs: BoundAddrs,
    pub store: Arc<Store>,
    pub metrics: Metrics,
    drain: Drain,
    config: ProxyConfig,
    control: Option<std::thread::JoinHandle<()>>,
    control_stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// With a control plane: true once it has taken the drain notice.
    xds_left: Option<tokio::sync::watch::Receiver<bool>>,
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
    listen::bind(addr).map_err(|e| AppError::Bind(what, addr, e))
}

impl App {
    /// Load the config, bind every port and start serving. Must be called
    /// inside the data-plane runtime.
    pub async fn build(config: ProxyConfig, log: LogHandle) -> Result<Self, AppError> {
        let metrics = Metrics::new();
        let store = Arc::new(Store::new());
        let drain = Drain::new();
        // The policy file: the config source, or with --xds-address the config to start from.
        let file = config.policy.clone().map(|p| Arc::new(FileSource::new(p, store.clone(), metrics.clone())));
        let initial = file.as_ref().and_then(|f| f.fingerprint());
        if let Some(f) = &file {
            f.load().map_err(|e| AppError::Policy(f.path().display().to_string(), e))?;
        }
        let reload = Arc::new(tokio::sync::Notify::new());
        if let Err(e) = crate::source::forward_sighup(reload.clone()) {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file change only");
        }

        // Node mode: the outbound and inbound listeners live in the workloads' namespaces.
        let (outbound_l, outbound_v6, inbound_l) = if config.node.is_some() {
            (None, None, None)
        } else {
            let outbound_l = TcpListener::from_std(bind("outbound", config.outbound)?)
                .map_err(|e| AppError::Bind("outbound", config.outbound, e))?;
            // IPv6 interception redirects to [::1]: with the default IPv4 loopback outbound
            // listener, listen on the same port there too (when the host has IPv6).
            let outbound_v6 = outbound_v6(&outbound_l, config.outbound);
            let inbound_l = TcpListener::from_std(bind("inbound", config.inbound)?)
                .map_err(|e| AppError::Bind("inbound", config.inbound, e))?;
            (Some(outbound_l), outbound_v6, Some(inbound_l))
        };
        let admin_l = bind("admin", config.admin)?;
        let metrics_l = bind("metrics", config.metrics)?;
        let health_l = bind("health", config.health)?;
        let local = |l: &std::net::TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let addrs = BoundAddrs {
            outbound: outbound_l.as_ref().and_then(|l| l.local_addr().ok()).unwrap_or(config.outbound),
            inbound: inbound_l.as_ref().and_then(|l| l.local_addr().ok()).unwrap_or(config.inbound),
            admin: local(&admin_l, config.admin),
            metrics: local(&metrics_l, config.metrics),
            health: local(&health_l, config.health),
        };
        // The xDS client; a sidecar registers its workload (--advertise, else the inbound
        // listener when bound to one IP, else the local address of the xDS connection).
        let xds = config.xds.as_ref().map(|x| {
            let node = crate::source::xds::node(
                &config.node_id,
                config.service.as_deref(),
                &config.namespace,
                x,
                addrs.inbound,
            );
            let mut source =
                crate::source::xds::XdsSource::new(x, node, store.clone(), metrics.clone(), config.policy.as_deref());
            source.advertise_local_port(crate::source::xds::advertise_local_port(
                config.service.as_deref(),
                x,
                addrs.inbound,
            ));
            if let Some(identity) = &config.identity {
                source.set_join_token(identity.token_file.clone());
            }
            source
        });
        let xds_left = xds.as_ref().map(|x| x.left());
        let xds_draining = drain.signal().flag();

        // Tracing (OTEL_* set): the data path queues spans, the exporter on the
        // control runtime sends them.
        let (tracer, exporter) = match &config.tracing {
            Some(t) => {
                let store = Some(store.clone());
                let (tracer, queue) =
                    Tracer::new(t.sampler, t.errors, store, t.max_queue, t.max_batch, metrics.clone());
                let exporter = Exporter::new(queue, t.clone(), metrics.clone(), config.node_id.clone());
                (Some(tracer), Some(exporter))
            }
            None => (None, None),
        };
        let recorder = Arc::new(Recorder {
            metrics: metrics.clone(),
            access_log: config.access_log,
            access_log_sample: config.access_log_sample,
            tracer,
            workload: None,
        });
        let server = HttpServer::new(&ServerLimits::default());
        let mesh: crate::mesh::MeshHandle = Arc::default();
        let outbound = Arc::new(Outbound {
            store: store.clone(),
            recorder: recorder.clone(),
            server: server.clone(),
            socket: SocketOptions::marked(config.socket_mark),
            mesh: mesh.clone(),
        });
        let inbound_service: Arc<str> = Arc::from(config.service.as_deref().unwrap_or("inbound"));
        let inbound = Arc::new(
            Inbound::new(
                recorder.clone(),
                server.clone(),
                config.app_port,
                inbound_service,
                SocketOptions::marked(config.socket_mark),
                store.clone(),
                mesh.clone(),
            )
            .requiring_identity(config.identity.is_some()),
        );

        // One cap over every downstream listener (--max-connections), node mode's too.
        let limit = ConnectionLimit::new(config.max_connections, metrics.clone());
        warn_if_few_file_descriptors(config.max_connections);
        for l in [outbound_v6, outbound_l].into_iter().flatten() {
            let outbound = outbound.clone();
            tokio::spawn(accept_loop(l, drain.signal(), limit.clone(), Direction::outbound, move |s, c, d| {
                outbound.clone().serve(s, c, d)
            }));
        }
        if let Some(l) = inbound_l {
            tokio::spawn(accept_loop(l, drain.signal(), limit.clone(), Direction::inbound, move |s, c, d| {
                inbound.clone().serve(s, c, d)
            }));
        }
        // Node mode: the workload registry and its local API (on the data runtime: the
        // workloads' listeners run there).
        let node = match (&config.node, &xds) {
            (Some(settings), Some(x)) => {
                let ca = match &config.identity {
                    Some(id) => Some(
                        crate::mesh::CaClient::new(id.ca.clone(), id.ca_root.as_ref())
                            .map_err(|e| AppError::Node(e.to_string()))?,
                    ),
                    None => None,
                };
                let node = crate::node::Node::new(crate::node::Shared {
                    recorder: recorder.clone(),
                    server: server.clone(),
                    fanout: x.fanout(),
                    mark: config.socket_mark.unwrap_or(crate::config::NODE_SOCKET_MARK),
                    node_mesh: mesh.clone(),
                    ca,
                    drain: drain.clone(),
                    state: Some(settings.state.clone()),
                    limit: limit.clone(),
                });
                // The workloads served before a restart, once the node has its identity.
                tokio::spawn(node.clone().restore());
                let api = crate::node::api::bind(&settings.socket)
                    .map_err(|e| AppError::NodeSocket(settings.socket.clone(), e))?;
                tokio::spawn(crate::node::api::serve(api, node.clone()));
                tracing::info!(socket = %settings.socket.display(), "node mode: workload API listening");
                Some(node)
            }
            (Some(_), None) => return Err(AppError::Node("needs --xds-address".into())),
            _ => None,
        };

        // The control runtime: admin, metrics, health, config source.
        let state = Arc::new(AdminState {
            store: store.clone(),
            metrics: metrics.clone(),
            drain: drain.clone(),
            log,
            node_id: config.node_id.clone(),
            service: config.service.clone(),
            mesh: mesh.clone(),
            needs_identity: config.identity.is_some(),
        });
        let identity = config.identity.clone();
        let reporter_store = store.clone();
        // A node proxy has no --service of its own: its workloads' services come with their
        // registrations, so the sidecar's missing-service warning does not apply.
        let sidecar = config.xds.is_some() && config.node.is_none();
        let watch = watch_config(store.clone(), metrics.clone(), config.service.clone(), sidecar);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let heap_release_interval = config.heap_release_interval;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(AppError::Runtime)?;
        let control = std::thread::Builder::new()
            .name("outrider-control".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::spawn(watch);
                    tokio::spawn(crate::heap::run(heap_release_interval));
                    for (l, surface) in
                        [(admin_l, Surface::Admin), (metrics_l, Surface::Metrics), (health_l, Surface::Health)]
                    {
                        match TcpListener::from_std(l) {
                            Ok(l) => {
                                tokio::spawn(admin::serve(l, state.clone(), surface));
                            }
                            Err(e) => {
                                tracing::error!(error = %e, ?surface, "cannot serve admin listener")
                            }
                        }
                    }
                    // The workload certificate first (the proxy is not ready without it); the
                    // xDS stream then registers the workload as meshed, with its identity.
                    tokio::spawn(async move {
                        let xds = match identity {
                            Some(identity) => {
                                let (issued, issuer) = crate::mesh::bootstrap_retrying(&identity).await;
                                mesh.store(Some(issued.clone()));
                                let backoff = crate::backoff::ExponentialBackoff::new(
                                    std::time::Duration::from_secs(1),
                                    std::time::Duration::from_secs(30),
                                );
                                tokio::spawn(crate::tls::rotate::run(issued.certs.clone(), issuer, backoff));
                                xds.map(|mut x| {
                                    x.set_identity(issued.identity());
                                    if let Some(node) = &node {
                                        x.set_node_updates(node.set_base(x.node().clone()));
                                    }
                                    match issued.xds_client() {
                                        Ok(tls) => x.set_tls(tls),
                                        Err(error) => tracing::error!(%error, "cannot build the xDS TLS config"),
                                    }
                                    x
                                })
                            }
                            None => xds,
                        };
                        match (xds, file) {
                            (Some(xds), _) => {
                                // Load reports ride the same control connection (LRS).
                                tokio::spawn(xds.load_reporter(reporter_store).run());
                                xds.run(xds_draining).await
                            }
                            (None, Some(file)) => file.watch(initial, reload).await,
                            (None, None) => {}
                        }
                    });
                    let flush = exporter.map(|e| {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        (tx, tokio::spawn(e.run(rx)))
                    });
                    let _ = stop_rx.await;
                    // Send the spans still queued, within a bound.
                    if let Some((tx, task)) = flush {
                        let _ = tx.send(());
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
                    }
                });
            })
            .map_err(AppError::Runtime)?;

        tracing::info!(
            outbound = %addrs.outbound, inbound = %addrs.inbound, admin = %addrs.admin,
            metrics = %addrs.metrics, health = %addrs.health, node_id = %config.node_id,
            "listening"
        );
        Ok(Self { addrs, store, metrics, drain, config, control: Some(control), control_stop: Some(stop_tx), xds_left })
    }

    pub fn drain_handle(&self) -> Drain {
        self.drain.clone()
    }

    /// Serve until SIGTERM / SIGINT or `POST /drain`, then drain and return the exit code.
    /// `signals` come from [`Signals::register`], called before the proxy listens: a SIGTERM
    /// that arrives as soon as the proxy serves (its "listening" line is out) must drain it,
    /// not kill it with the default action.
    pub async fn run_until_signal(self, mut signals: Signals) -> ExitCode {
        let mut sig = self.drain.signal();
        tokio::select! {
            _ = Signals::recv(signals.term.as_mut()) => tracing::info!("SIGTERM received; draining"),
            _ = Signals::recv(signals.int.as_mut()) => tracing::info!("SIGINT received; draining"),
            _ = sig.draining() => tracing::info!("drain requested over the admin API"),
        }
        self.shutdown().await;
        ExitCode::SUCCESS
    }

    /// Drain: tell the control plane and the connections, keep accepting until the callers
    /// have stopped being sent this endpoint, then stop accepting and let in-flight work
    /// finish, all within the drain timeout (docs/operations.md, "Drain").
    pub async fn shutdown(mut self) {
        let started = tokio::time::Instant::now();
        self.drain.start();
        let deadline = self.config.drain_timeout;
        // A caller that has not yet heard that this endpoint left would be refused and see a
        // connect failure: until it has, new connections are served and closed instead.
        let withdrawn = Self::withdrawn(self.xds_left.as_mut(), self.config.drain_propagation);
        if tokio::time::timeout(deadline, withdrawn).await.is_err() {
            tracing::warn!(timeout = ?deadline, "drain deadline passed before the endpoint was withdrawn");
        }
        self.drain.close_listeners();
        tracing::debug!("listeners closed");
        match tokio::time::timeout(deadline.saturating_sub(started.elapsed()), self.drain.idle()).await {
            Ok(()) => tracing::info!("drained; exiting"),
            Err(_) => tracing::warn!(
                open = self.drain.active(),
                timeout = ?deadline,
                "drain deadline passed with connections still open; exiting"
            ),
        }
        self.stop_control();
    }

    /// Resolves once callers no longer get this proxy's endpoint: the control plane confirmed
    /// the drain notice and `propagation` passed for its push to reach them. Without a control
    /// plane nothing withdraws the endpoint: at once.
    async fn withdrawn(left: Option<&mut tokio::sync::watch::Receiver<bool>>, propagation: std::time::Duration) {
        let Some(left) = left else { return };
        if tokio::time::timeout(LEAVE_WAIT, left.wait_for(|l| *l)).await.is_err() {
            tracing::warn!(waited = ?LEAVE_WAIT, "the control plane did not confirm the deregistration; closing the listeners");
            return;
        }
        tokio::time::sleep(propagation).await;
    }

    fn stop_control(&mut self) {
        if let Some(tx) = self.control_stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.control.take() {
            let _ = h.join();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.drain.close_listeners();
        if let Some(tx) = self.control_stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A listener on `[::1]` at the outbound port, beside the default `127.0.0.1` one, for
/// connections ip6tables redirects; `None` when the outbound listener is bound elsewhere or
/// the host has no IPv6.
fn outbound_v6(v4: &TcpListener, configured: SocketAddr) -> Option<TcpListener> {
    if configured.ip() != std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST) {
        return None;
    }
    let port = v4.local_addr().ok()?.port();
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    match listen::bind(addr).and_then(TcpListener::from_std) {
        Ok(l) => Some(l),
        Err(error) => {
            if crate::iptables::ipv6_enabled() {
                tracing::warn!(%addr, %error, "cannot listen for IPv6 outbound traffic; intercepted IPv6 connections will be refused");
            }
            None
        }
    }
}

/// At every snapshot applied: the series the config tells exported at 0 (and those it
/// dropped removed), and the check that this sidecar's own service is in the config.
async fn watch_config(store: Arc<Store>, metrics: Metrics, service: Option<String>, sidecar: bool) {
    crate::telemetry::known::local_replies(&metrics);
    let mut known = crate::telemetry::known::KnownSeries::default();
    let mut changes = store.subscribe();
    loop {
        if store.is_ready() {
            let snap = store.load_full();
            known.apply(&metrics, &snap);
            crate::inbound::check_own_service(&metrics, &snap, service.as_deref(), sidecar);
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The cap on downstream connections open at once, shared by every listener. A connection
/// over it is accepted and closed at once (the client sees the connection closed before any
/// answer; Envoy's global connection limit does the same), counted in
/// `outrider_tcp_connections_refused_total{direction}` and logged at most every 10 s.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
    metrics: Metrics,
    /// Milliseconds since `start` of the last warning.
    warned: Arc<std::sync::atomic::AtomicU64>,
    start: tokio::time::Instant,
}

/// Time between two "limit reached" warnings.
const LIMIT_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl ConnectionLimit {
    fn new(max: usize, metrics: Metrics) -> Self {
        for direction in [Direction::outbound, Direction::inbound] {
            let _ = metrics.tcp_connections_refused.get_or_create(&DirectionLabels { direction });
        }
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(max.min(tokio::sync::Semaphore::MAX_PERMITS))),
            max,
            metrics,
            warned: Arc::default(),
            start: tokio::time::Instant::now(),
        }
    }

    /// A slot for one connection, or `None` (counted and logged) at the limit.
    fn admit(&self, direction: Direction, client: SocketAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        self.metrics.tcp_connections_refused.get_or_create(&DirectionLabels { direction }).inc();
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.warned.load(std::sync::atomic::Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= LIMIT_WARN_EVERY.as_millis() as u64)
            && self
                .warned
                .compare_exchange(
                    last,
                    now.max(1),
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                max = self.max, ?direction, %client,
                "connection limit reached: closing new connections until some close (raise --max-connections if the host can take more)"
            );
        }
        None
    }
}

/// The open-files limit of this process, from `/proc/self/limits` (soft limit).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Each downstream connection may hold an upstream one too: warn when the open-files limit
/// cannot take `max_connections` of each.
fn warn_if_few_file_descriptors(max_connections: usize) {
    let needed = 2 * max_connections as u64 + 256;
    if let Some(limit) = open_files_limit()
        && limit < needed
    {
        tracing::warn!(
            open_files_limit = limit,
            max_connections,
            needed,
            "the open-files limit is below what --max-connections needs (two per connection); raise it (ulimit -n) or lower --max-connections"
        );
    }
}

/// Accept until the drain closes the listeners; each connection is tracked by the drain, counted, and admitted
/// under the connection limit.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut sig: drain::Signal,
    limit: ConnectionLimit,
    direction: Direction,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, drain::Signal) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let metrics = limit.metrics.clone();
    let open = metrics.tcp_connections_open.get_or_create(&DirectionLabels { direction }).clone();
    let total = metrics.tcp_connections.get_or_create(&DirectionLabels { direction }).clone();
    loop {
        let accepted = tokio::select! {
            // Draining alone keeps accepting: those connections are served and closed.
            _ = sig.closing() => break,
            r = listener.accept() => r,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(error = %e, ?direction, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = limit.admit(direction, client) else {
            drop(stream);
            continue;
        };
        listen::accepted(&stream);
        let guard = sig.track();
        open.inc();
        total.inc();
        let live = Live { open: open.clone(), _guard: guard, _slot: slot };
        tokio::spawn(connection_task(handle(stream, client, sig.clone()), live));
    }
    tracing::debug!(?direction, "listener closed for drain");
}

/// The task of one connection: `serve`, holding `live` until it ends.
/// why `map`, not `async move { serve.await; .. }`: an async block that awaits a future it
/// captured holds it twice (the capture and the awaited copy), doubling every connection's task.
fn connection_task<Fut: Future<Output = ()>>(serve: Fut, live: Live) -> impl Future<Output = ()> {
    serve.map(move |()| drop(live))
}

/// What a connection holds while its task lives: released when the task ends or is dropped.
struct Live {
    open: prometheus_client::metrics::gauge::Gauge,
    _guard: drain::ConnGuard,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// SIGTERM and SIGINT handlers, installed before anything listens.
#[derive(Debug)]
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Install the handlers (inside the runtime). A handler that cannot be installed is logged
    /// and that signal keeps its default action.
    pub fn register() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle {name}: it will stop the proxy without draining");
                None
            }
        };
        Self { term: install(SignalKind::terminate(), "SIGTERM"), int: install(SignalKind::interrupt(), "SIGINT") }
    }

    async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests;
