//! Wires the listeners, the config source and the admin servers together.
//! The data plane runs on the caller's (multi-threaded) runtime; admin, metrics,
//! health and the config source run on a small runtime of their own.
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

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
    /// 2 for invalid input, 1 for runtime failures (DESIGN.md §4).
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
        let (outbound_l, inbound_l) = if config.node.is_some() {
            (None, None)
        } else {
            let outbound_l = TcpListener::from_std(bind("outbound", config.outbound)?)
                .map_err(|e| AppError::Bind("outbound", config.outbound, e))?;
            let inbound_l = TcpListener::from_std(bind("inbound", config.inbound)?)
                .map_err(|e| AppError::Bind("inbound", config.inbound, e))?;
            (Some(outbound_l), Some(inbound_l))
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
        // The xDS client; a sidecar registers its workload (--advertise, else the inbound listener).
        let xds = config.xds.as_ref().map(|x| {
            let node = crate::source::xds::node(
                &config.node_id,
                config.service.as_deref(),
                &config.namespace,
                x,
                addrs.inbound,
            );
            crate::source::xds::XdsSource::new(x, node, store.clone(), metrics.clone(), config.policy.as_deref())
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

        let m = metrics.clone();
        if let Some(l) = outbound_l {
            tokio::spawn(accept_loop(l, drain.signal(), m.clone(), Direction::outbound, move |s, c, d| {
                outbound.clone().serve(s, c, d)
            }));
        }
        if let Some(l) = inbound_l {
            tokio::spawn(accept_loop(l, drain.signal(), m, Direction::inbound, move |s, c, d| {
                inbound.clone().serve(s, c, d)
            }));
        }
        // Node mode: the workload registry and its local API (on the data runtime: the
        // workloads' listeners run there).
        let node = match (&config.node, &xds) {
            (Some(settings), Some(x)) => {
                let ca = match &config.identity {
                    Some(id) => Some(
                        crate::mesh::CaClient::new(id.ca.clone(), id.ca_root.as_deref())
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
                });
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
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(AppError::Runtime)?;
        let control = std::thread::Builder::new()
            .name("outrider-control".into())
            .spawn(move || {
                rt.block_on(async move {
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
    pub async fn run_until_signal(self) -> ExitCode {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut sig = self.drain.signal();
        tokio::select! {
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {
                tracing::info!("SIGTERM received; draining");
            }
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; draining"),
            _ = sig.draining() => tracing::info!("drain requested over the admin API"),
        }
        self.shutdown().await;
        ExitCode::SUCCESS
    }

    /// Stop accepting, let in-flight work finish up to the drain timeout.
    pub async fn shutdown(mut self) {
        self.drain.start();
        let deadline = self.config.drain_timeout;
        match tokio::time::timeout(deadline, self.drain.idle()).await {
            Ok(()) => tracing::info!("drained; exiting"),
            Err(_) => tracing::warn!(
                open = self.drain.active(),
                timeout = ?deadline,
                "drain deadline passed with connections still open; exiting"
            ),
        }
        // The drain notice went out when the drain started; give it a moment to land if the
        // drain itself was quicker (else the control plane keeps the endpoint for its grace).
        if let Some(left) = &mut self.xds_left
            && tokio::time::timeout(LEAVE_WAIT, left.wait_for(|l| *l)).await.is_err()
        {
            tracing::warn!(waited = ?LEAVE_WAIT, "the control plane did not confirm the deregistration; exiting anyway");
        }
        self.stop_control();
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
        self.drain.start();
        if let Some(tx) = self.control_stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Accept until drain; each connection is tracked by the drain and counted.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut sig: drain::Signal,
    metrics: Metrics,
    direction: Direction,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, drain::Signal) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let open = metrics.tcp_connections_open.get_or_create(&DirectionLabels { direction }).clone();
    let total = metrics.tcp_connections.get_or_create(&DirectionLabels { direction }).clone();
    loop {
        let accepted = tokio::select! {
            _ = sig.draining() => break,
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
        listen::accepted(&stream);
        let guard = sig.track();
        open.inc();
        total.inc();
        let open = open.clone();
        let fut = handle(stream, client, sig.clone());
        tokio::spawn(async move {
            fut.await;
            open.dec();
            drop(guard);
        });
    }
    tracing::debug!(?direction, "listener closed for drain");
}
