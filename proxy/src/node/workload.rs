//! One workload of the node: enter its namespace, bind, install the rules, come back; then
//! serve it with the sidecar's outbound and inbound code, its own certificate and config.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::{Value, value::Kind};
use tokio::net::TcpListener;

use super::{NodeError, Shared, WorkloadInfo, WorkloadSpec};
use crate::inbound::Inbound;
use crate::mesh::MeshHandle;
use crate::outbound::Outbound;
use crate::state::Store;
use crate::telemetry::metrics::Direction;
use crate::tls::Identity;
use crate::transport::netns::Netns;
use crate::transport::socket::SocketOptions;

pub const OUTBOUND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15001);
pub const INBOUND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15006);
pub const TUNNEL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), crate::hbone::PORT);
/// The same on IPv6, where the workload's namespace has IPv6 (its ip6tables rules send there).
pub const OUTBOUND6: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 15001);
pub const INBOUND6: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 15006);
pub const TUNNEL6: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), crate::hbone::PORT);

/// What a workload listener takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listener {
    Outbound,
    Inbound,
    Tunnel,
}

/// The listeners of a workload namespace: IPv4, and IPv6 (IPv6-only sockets) when `v6`.
fn addresses(v6: bool) -> Vec<(Listener, SocketAddr)> {
    let mut all = vec![(Listener::Outbound, OUTBOUND), (Listener::Inbound, INBOUND), (Listener::Tunnel, TUNNEL)];
    if v6 {
        all.extend([(Listener::Outbound, OUTBOUND6), (Listener::Inbound, INBOUND6), (Listener::Tunnel, TUNNEL6)]);
    }
    all
}

/// A served workload.
#[derive(Debug)]
pub struct Workload {
    spec: WorkloadSpec,
    ip: IpAddr,
    identity: Identity,
    netns: Arc<Netns>,
    mesh: MeshHandle,
    /// Its own config store: a snapshot per workload keeps its breakers and pools its own.
    _store: Arc<Store>,
    drain: crate::drain::Drain,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn netns_err(spec: &WorkloadSpec, reason: impl ToString) -> NodeError {
    NodeError::Netns { path: spec.netns.display().to_string(), reason: reason.to_string() }
}

/// The namespace's first non-loopback IPv4 address (then IPv6) on an interface that is up.
fn discover_ip() -> Option<IpAddr> {
    let addrs: Vec<_> = nix::ifaddrs::getifaddrs().ok()?.collect();
    let up = |a: &&nix::ifaddrs::InterfaceAddress| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
    let v4 = addrs.iter().filter(up).find_map(|a| {
        let ip = IpAddr::V4(a.address.as_ref()?.as_sockaddr_in()?.ip());
        (!ip.is_loopback()).then_some(ip)
    });
    v4.or_else(|| {
        addrs.iter().filter(up).find_map(|a| {
            let ip = IpAddr::V6(a.address.as_ref()?.as_sockaddr_in6()?.ip());
            (!ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)).then_some(ip)
        })
    })
}

fn rules(mark: u32) -> crate::iptables::IptablesArgs {
    crate::iptables::IptablesArgs::for_node(mark)
}

impl Workload {
    /// Enter the namespace (on a blocking thread), bind and install the rules, then serve.
    pub async fn start(shared: Arc<Shared>, spec: WorkloadSpec, trust_domain: &str) -> Result<Arc<Self>, NodeError> {
        let identity = Identity::workload(trust_domain, &spec.namespace, &spec.service_account)
            .map_err(|e| NodeError::Invalid { field: "serviceAccount", reason: e.to_string() })?;
        let mark = shared.mark;
        let spec2 = spec.clone();
        let setup = tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
            let spec = spec2;
            let netns = Netns::open(&spec.netns).map_err(|e| netns_err(&spec, e))?;
            if netns.is_home() {
                return Err(netns_err(&spec, "this is the node proxy's own namespace, not a workload's"));
            }
            let inside = netns.run(|| -> Result<_, NodeError> {
                let ip = spec.address.or_else(discover_ip).ok_or_else(|| {
                    netns_err(
                        &spec,
                        "no address: the namespace has no interface with an IP that is up (or pass --address)",
                    )
                })?;
                let bind = |(kind, addr): (Listener, SocketAddr)| {
                    let bound = if addr.is_ipv6() {
                        crate::transport::listen::bind_v6_only(addr)
                    } else {
                        crate::transport::listen::bind(addr)
                    };
                    bound.map(|l| (kind, addr, l)).map_err(|error| NodeError::Bind {
                        path: spec.netns.display().to_string(),
                        addr,
                        error,
                    })
                };
                // Where the namespace has IPv6 the rules redirect it too (else it would bypass
                // the proxy), so the proxy listens there on IPv6 as well.
                let listeners =
                    addresses(crate::iptables::ipv6_enabled()).into_iter().map(bind).collect::<Result<Vec<_>, _>>()?;
                // Run in the namespace: a command started from this thread inherits it.
                crate::iptables::apply(&rules(mark))
                    .map(drop)
                    .map_err(|reason| NodeError::Iptables { path: spec.netns.display().to_string(), reason })?;
                Ok((ip, listeners))
            });
            let (ip, listeners) = inside.map_err(|e| netns_err(&spec, e))??;
            Ok((Arc::new(netns), ip, listeners))
        });
        let (netns, ip, bound) = setup.await.map_err(|e| netns_err(&spec, format!("setup task failed: {e}")))??;
        let mut listeners = Vec::with_capacity(bound.len());
        for (kind, addr, l) in bound {
            let l = TcpListener::from_std(l).map_err(|error| NodeError::Bind {
                path: spec.netns.display().to_string(),
                addr,
                error,
            })?;
            listeners.push((kind, l));
        }

        let store = Arc::new(Store::new());
        shared.fanout.attach(&store);
        let mesh: MeshHandle = Arc::default();
        let socket = SocketOptions { mark: Some(mark), netns: Some(netns.clone()) };
        // Its requests and connections are labelled and logged with the workload.
        let recorder = Arc::new(shared.recorder.for_workload(&format!("{}/{}", spec.namespace, spec.service_account)));
        let outbound = Arc::new(Outbound {
            store: store.clone(),
            recorder: recorder.clone(),
            server: shared.server.clone(),
            socket: socket.clone(),
            mesh: mesh.clone(),
        });
        let inbound = Arc::new(
            Inbound::new(
                recorder,
                shared.server.clone(),
                None,
                Arc::from(spec.service.as_str()),
                socket,
                store.clone(),
                mesh.clone(),
            )
            .requiring_identity(true)
            .requiring_policy(true),
        );
        let drain = crate::drain::Drain::new();
        let limit = shared.limit.clone();
        let mut tasks = Vec::new();
        for (kind, l) in listeners {
            let (sig, limit) = (drain.signal(), limit.clone());
            tasks.push(match kind {
                Listener::Outbound => {
                    let outbound = outbound.clone();
                    tokio::spawn(crate::app::accept_loop(l, sig, limit, Direction::outbound, move |s, c, d| {
                        outbound.clone().serve(s, c, d)
                    }))
                }
                Listener::Inbound => {
                    let inbound = inbound.clone();
                    tokio::spawn(crate::app::accept_loop(l, sig, limit, Direction::inbound, move |s, c, d| {
                        inbound.clone().serve(s, c, d)
                    }))
                }
                Listener::Tunnel => {
                    let (inbound, mesh) = (inbound.clone(), mesh.clone());
                    tokio::spawn(crate::app::accept_loop(l, sig, limit, Direction::inbound, move |s, c, d| {
                        serve_tunnel(inbound.clone(), mesh.clone(), s, c, d)
                    }))
                }
            });
        }
        // The proxy's drain drains the workload too, step by step.
        let mut global = shared.drain.signal();
        let own = drain.clone();
        tasks.push(tokio::spawn(async move {
            global.draining().await;
            own.start();
            global.closing().await;
            own.close_listeners();
        }));
        tasks.push(tokio::spawn(super::identity::run(shared.clone(), identity.clone(), mesh.clone())));
        Ok(Arc::new(Self { spec, ip, identity, netns, mesh, _store: store, drain, tasks }))
    }

    pub fn info(&self) -> WorkloadInfo {
        let mesh = self.mesh.load();
        let since = |t: Option<std::time::SystemTime>| t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let unix = |t| since(t).map_or(0, |d| d.as_secs());
        let certificate = mesh.as_ref().and_then(|m| {
            Some(super::CertificateInfo {
                serial: m.certs.serial()?,
                not_after_unix: unix(m.certs.not_after()),
                rotates_at_unix: unix(m.certs.rotate_at()),
                rotates_at_unix_ms: since(m.certs.rotate_at()).map_or(0, |d| d.as_millis() as u64),
                installs: m.certs.installs(),
            })
        });
        WorkloadInfo {
            spec: self.spec.clone(),
            ip: self.ip,
            identity: self.identity.to_string(),
            ready: mesh.is_some(),
            certificate,
        }
    }

    /// Node metadata for the control plane: this workload as an endpoint of its service.
    pub fn registration(&self) -> Value {
        let s = |v: &str| outrider_xds::resources::string_value(v);
        let labels = outrider_xds::resources::string_struct(&self.spec.labels);
        let address = SocketAddr::new(self.ip, self.spec.port.unwrap_or(0));
        Value {
            kind: Some(Kind::StructValue(outrider_xds::resources::struct_of(vec![
                ("service", s(&self.spec.service)),
                ("address", s(&address.to_string())),
                ("identity", s(self.identity.as_str())),
                ("labels", Value { kind: Some(Kind::StructValue(labels)) }),
            ]))),
        }
    }

    /// Stop accepting, let its connections finish (bounded), remove its rules.
    pub async fn stop(&self) {
        self.drain.close_listeners();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.drain.idle()).await;
        for t in &self.tasks {
            t.abort();
        }
        let netns = self.netns.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = netns.run(crate::iptables::clean);
        })
        .await;
    }
}

/// One connection to the workload's port 15008: mutual TLS with the workload's certificate,
/// then HBONE, each `CONNECT` served by the workload's inbound side.
async fn serve_tunnel(
    inbound: Arc<Inbound>,
    mesh: MeshHandle,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    drain: crate::drain::Signal,
) {
    let Some(mesh) = mesh.load_full() else {
        tracing::info!(%remote, "HBONE connection refused: the workload's certificate is not installed yet");
        return;
    };
    let Ok(local) = stream.local_addr() else { return };
    let metrics = inbound.recorder.metrics.clone();
    let errors = || {
        metrics
            .tls_handshake_errors
            .get_or_create(&crate::telemetry::metrics::DirectionLabels { direction: Direction::inbound })
            .inc();
    };
    let tls = match tokio::time::timeout(crate::hbone::HANDSHAKE_TIMEOUT, mesh.hbone_acceptor().accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            errors();
            tracing::info!(%remote, error = %e, "HBONE mTLS handshake failed");
            return;
        }
        Err(_) => {
            errors();
            tracing::info!(%remote, "HBONE mTLS handshake timed out");
            return;
        }
    };
    let Some(peer) = crate::tls::peer_identity(tls.get_ref().1) else { return };
    metrics
        .tls_connections
        .get_or_create(&crate::telemetry::metrics::TlsLabels { direction: Direction::inbound, alpn: "h2" })
        .inc();
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    let handler_drain = drain.clone();
    crate::hbone::server::serve(tls, local, remote, peer, drain, move |connect| {
        inbound.clone().tunnel(connect, handler_drain.clone())
    })
    .await;
}
