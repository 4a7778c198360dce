//! Inbound: connections from other workloads to the local application.
//!
//! A connection whose first bytes are a TLS ClientHello offering an Outrider ALPN id comes from
//! another proxy: mutual TLS (the caller's SPIFFE ID is verified), then HTTP (multiplexed over
//! h2; the app gets the HTTP version the caller's app used) or opaque TCP. Anything else is
//! plaintext: refused when the service is in strict mode, else served without an identity —
//! HTTP forwarded to the app in the caller's HTTP version, other bytes spliced to the app's port.
//! Every request (HTTP) or connection (TCP) passes the service's AuthorizationPolicies first.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Version};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use outrider_xds::resources as names;

use crate::authz::{Decision, InboundPolicy, Request as AuthzRequest};
use crate::drain;
use crate::http::client::{ConnectConfig, EndpointPool, UpstreamProtocol};
use crate::http::server::{Downstream, HttpServer};
use crate::http::{Body, forward, headers};
use crate::mesh::{Mesh, MeshHandle};
use crate::rescue::{self, ProxyError};
use crate::state::{ClusterProtocol, Store};
use crate::telemetry::access::{Recorder, RequestRecord};
use crate::telemetry::metrics::{DenialLabels, Direction, DirectionLabels, SeriesCell, ServiceLabels, TlsLabels};
use crate::tls::{Identity, Mode};
use crate::transport::{detect, orig_dst};

#[cfg(test)]
mod tests;
mod tunnel;

/// Connect timeout to the local application.
pub const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `x-forwarded-client-cert`: `By=<this proxy's SPIFFE ID>;URI=<the caller's>` on requests that
/// arrived over mTLS; removed from every other request.
pub static XFCC: http::HeaderName = http::HeaderName::from_static("x-forwarded-client-cert");
/// A peer proxy must complete the mTLS handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Inbound {
    pub recorder: Arc<Recorder>,
    pub server: HttpServer,
    pub app_port: Option<u16>,
    /// Service label for inbound metrics.
    pub service: Arc<str>,
    /// Mark and (node mode) namespace of the sockets to the app.
    pub socket: crate::transport::socket::SocketOptions,
    /// The config, to learn the declared protocol of `--service`.
    pub store: Arc<Store>,
    /// This proxy's identity (mTLS from other proxies), once it has one.
    pub mesh: MeshHandle,
    /// `--identity-token` was given: inbound waits for the certificate.
    pub needs_identity: bool,
    /// Node mode: inbound waits for the service's own inbound config (its mTLS mode and
    /// authorization), which the control plane sends only once the workload is registered.
    pub needs_policy: bool,
    pools: Mutex<HashMap<u16, Arc<EndpointPool>>>,
    /// The inbound request metric series of `service`, resolved by the first request.
    series: Arc<crate::telemetry::metrics::SeriesCell>,
}

impl Inbound {
    pub fn new(
        recorder: Arc<Recorder>,
        server: HttpServer,
        app_port: Option<u16>,
        service: Arc<str>,
        socket: crate::transport::socket::SocketOptions,
        store: Arc<Store>,
        mesh: MeshHandle,
    ) -> Self {
        Self {
            recorder,
            server,
            app_port,
            service,
            socket,
            store,
            mesh,
            needs_identity: false,
            needs_policy: false,
            pools: Mutex::default(),
            series: Default::default(),
        }
    }

    /// With `--identity-token`: accept nothing before the certificate is installed.
    pub fn requiring_identity(mut self, required: bool) -> Self {
        self.needs_identity = required;
        self
    }

    /// Node mode: accept nothing before the service's inbound config arrived (until then its
    /// mTLS mode and authorization are unknown, and unknown must not mean permissive).
    pub fn requiring_policy(mut self, required: bool) -> Self {
        self.needs_policy = required;
        self
    }

    /// Whether the service's inbound config is still missing where it is required.
    fn policy_pending(&self) -> bool {
        self.needs_policy && self.policy().is_none()
    }

    /// A Service's declared protocol wins over detection.
    fn declared(&self) -> Option<ClusterProtocol> {
        let snap = self.store.load();
        snap.clusters.values().find(|c| c.service == self.service).map(|c| c.protocol)
    }

    /// The service's mTLS mode and authorization (none: permissive, everyone allowed; see
    /// [`check_own_service`]).
    fn policy(&self) -> Option<Arc<InboundPolicy>> {
        self.store.load().inbound.get(&self.service).cloned()
    }

    fn pool(&self, port: u16) -> Arc<EndpointPool> {
        self.pools
            .lock()
            .entry(port)
            .or_insert_with(|| Arc::new(EndpointPool::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))))
            .clone()
    }

    fn cfg(&self) -> ConnectConfig {
        ConnectConfig {
            timeout: APP_CONNECT_TIMEOUT,
            socket: self.socket.clone(),
            limits: None,
            idle_timeout: None,
            mesh: None,
        }
    }

    /// Handle one accepted connection to the end. As `Outbound::serve`, the returned future is
    /// the connection's task, all a parked plaintext HTTP/1.1 connection holds: every other
    /// branch (mutual TLS, TCP, detection) is boxed where it starts.
    // why not `async fn`: it would hold its arguments twice.
    #[allow(clippy::manual_async_fn)]
    pub fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        drain: drain::Signal,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let port = match (self.app_port, orig_dst::original_dst(&stream)) {
                (Some(p), _) => p,
                (None, Some(d)) => d.port(),
                (None, None) => {
                    tracing::warn!(%client, "inbound connection with no --app-port and no original destination; closing");
                    return;
                }
            };
            // Fail closed: before the first config (and, with --identity-token, the certificate)
            // the service's mode and authorization are unknown.
            let mesh = self.mesh.load_full();
            if !self.store.is_ready() || (self.needs_identity && mesh.is_none()) || self.policy_pending() {
                tracing::info!(%client, "inbound connection refused: the proxy is not ready (config or certificate pending)");
                return;
            }
            let policy = self.policy();
            let mut silent = false;
            if let Some(mesh) = mesh {
                match Box::pin(detect::mesh_client_hello(&stream, detect::DETECT_TIMEOUT)).await {
                    Ok(detect::FirstBytes::MeshHello) => {
                        return Box::pin(self.serve_mesh(stream, client, port, &mesh, policy, drain)).await;
                    }
                    Ok(detect::FirstBytes::Other) => {}
                    // A server-first protocol: do not wait a second time below.
                    Ok(detect::FirstBytes::Silent) => silent = true,
                    Ok(detect::FirstBytes::Closed) => return,
                    Err(e) => {
                        tracing::debug!(%client, error = %e, "inbound connection failed before its first bytes");
                        return;
                    }
                }
            }
            if policy.as_ref().is_some_and(|p| p.mode == Mode::Strict) {
                self.recorder
                    .metrics
                    .plaintext_refused
                    .get_or_create(&ServiceLabels { service: self.service.clone() })
                    .inc();
                tracing::info!(%client, service = &*self.service, "plaintext connection refused: the service is in strict mTLS mode");
                return;
            }
            let detected = match self.declared() {
                Some(ClusterProtocol::Tcp) => Ok(detect::Detected::Opaque),
                Some(ClusterProtocol::Http1 | ClusterProtocol::Http2) => Ok(detect::Detected::Http1),
                None if silent => Ok(detect::Detected::Opaque),
                None => Box::pin(detect::detect(&stream, detect::DETECT_TIMEOUT)).await,
            };
            match detected {
                Ok(detect::Detected::Http1 | detect::Detected::Http2) => {
                    drop(policy);
                    self.serve_http(Downstream::<TcpStream>::Plain(stream), client, port, None, None, drain).await
                }
                Ok(detect::Detected::Opaque) => {
                    Box::pin(self.serve_tcp(stream, client, port, None, policy.as_deref())).await
                }
                Ok(detect::Detected::Closed) => {}
                Err(e) => tracing::debug!(%client, error = %e, "protocol detection failed"),
            }
        }
    }

    /// A connection from another proxy: the mTLS handshake (a client certificate from the
    /// trust bundle is required), then what its ALPN id says it carries.
    ///
    /// Boxed by the caller, and held once: the handshake's state in a box of its own while it
    /// runs, then the HTTP server (an idle HTTP/1.1 connection keeps its TLS session and no
    /// buffer), the TCP path in a box of its own.
    // why not `async fn`: it would hold its arguments twice.
    #[allow(clippy::manual_async_fn)]
    fn serve_mesh(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        port: u16,
        mesh: &Mesh,
        policy: Option<Arc<InboundPolicy>>,
        drain: drain::Signal,
    ) -> impl Future<Output = ()> + Send {
        async move {
            // The HTTP server is built in a block that ends before it is awaited: a TLS stream
            // bound in this future's own scope would take its room a second time.
            {
                let metrics = &self.recorder.metrics;
                // Boxed: the handshake's state (a TLS session, the socket, the timer) is larger
                // than what serves the connection after it; inline it would size this future,
                // and the box the caller keeps for the connection's life, for good.
                let tls = match Box::pin(tokio::time::timeout(HANDSHAKE_TIMEOUT, mesh.acceptor().accept(stream))).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        metrics.tls_handshake_errors.get_or_create(&DirectionLabels { direction: Direction::inbound }).inc();
                        tracing::info!(%client, error = %e, "inbound mTLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics.tls_handshake_errors.get_or_create(&DirectionLabels { direction: Direction::inbound }).inc();
                        tracing::info!(%client, "inbound mTLS handshake timed out");
                        return;
                    }
                };
                let conn = tls.get_ref().1;
                let peer = crate::tls::peer_identity(conn);
                let alpn = match conn.alpn_protocol() {
                    Some(p) if p == crate::tls::ALPN_OUTRIDER => names::ALPN_MESH_H2,
                    Some(p) if p == crate::tls::ALPN_OUTRIDER_HTTP1 => names::ALPN_MESH_HTTP1,
                    Some(p) if p == crate::tls::ALPN_OUTRIDER_TCP => names::ALPN_MESH_TCP,
                    _ => {
                        tracing::info!(%client, "mTLS connection without an Outrider ALPN id; closing");
                        return;
                    }
                };
                metrics.tls_connections.get_or_create(&TlsLabels { direction: Direction::inbound, alpn }).inc();
                tracing::debug!(%client, peer = peer.as_ref().map_or("", |p| p.as_str()), alpn, "inbound mTLS connection");
                if alpn == names::ALPN_MESH_TCP {
                    // Opaque bytes to an HTTP service would bypass per-request authorization.
                    if matches!(self.declared(), Some(ClusterProtocol::Http1 | ClusterProtocol::Http2)) {
                        tracing::info!(%client, service = &*self.service, "opaque TCP to an HTTP service refused");
                        return;
                    }
                    // Awaited after the block, as the HTTP server is: awaited in it, the TLS
                    // stream's slot (1.2 KB) stayed in this future for the connection's life
                    // beside the HTTP server's state.
                    futures_util::future::Either::Left(Box::pin(async move {
                        self.serve_tcp(tls, client, port, peer, policy.as_deref()).await;
                    }))
                } else {
                    // Each request is authorized against the policy of its time.
                    drop(policy);
                    let io = if alpn == names::ALPN_MESH_H2 { Downstream::Http2(tls) } else { Downstream::Http1(tls) };
                    futures_util::future::Either::Right(self.serve_http(io, client, port, peer, None, drain))
                }
            }
            .await;
        }
    }

    /// Serve HTTP on a connection. (The server's future itself, not an `async fn` around it:
    /// see [`HttpServer::serve`].) `tunnel_parent`: the `traceparent` of the HBONE `CONNECT`
    /// that carries the connection, the parent of a request's span when the request brings no
    /// trace context of its own (a peer that tunnels the app's raw bytes, as ztunnel does).
    pub(crate) fn serve_http<I>(
        self: Arc<Self>,
        io: Downstream<I>,
        client: SocketAddr,
        port: u16,
        peer: Option<Identity>,
        tunnel_parent: Option<http::HeaderValue>,
        drain: drain::Signal,
    ) -> impl Future<Output = ()> + Send + 'static + use<I>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let server = self.server.clone();
        // The caller and its x-forwarded-client-cert value are fixed for the connection.
        let xfcc = peer.as_ref().and_then(|peer| {
            let mesh = self.mesh.load();
            let ours = mesh.as_ref()?.identity();
            http::HeaderValue::from_str(&format!("By={ours};URI={peer}")).ok()
        });
        // Node mode: the caller's workload labels this connection's requests, counted into a
        // series cell of the connection's own (the listener's is resolved with one caller).
        let node = match (&self.recorder.workload, &peer) {
            (Some(_), Some(p)) => p.workload_name().map(|w| Arc::new((w, Arc::new(SeriesCell::default())))),
            _ => None,
        };
        let peer = peer.map(|p| Arc::new((p, xfcc)));
        // Only a span can use it: with tracing off the request goes on as it came.
        let tunnel_parent = tunnel_parent.filter(|_| self.recorder.tracer.is_some());
        server.serve(
            io,
            move |mut req| {
                let ctx = self.clone();
                let peer = peer.clone();
                let node = node.clone();
                if let Some(parent) = &tunnel_parent {
                    crate::telemetry::trace::propagation::default_parent(req.headers_mut(), parent);
                }
                async move {
                    let (peer, xfcc) = match peer.as_deref() {
                        Some((p, x)) => (Some(p), x.as_ref()),
                        None => (None, None),
                    };
                    Ok::<_, Infallible>(ctx.handle(client, port, peer, xfcc, node.as_deref(), req).await)
                }
            },
            drain,
        )
    }

    async fn serve_tcp<I: crate::outbound::tcp::Io>(
        &self,
        io: I,
        client: SocketAddr,
        port: u16,
        peer: Option<Identity>,
        policy: Option<&InboundPolicy>,
    ) {
        if let Some(policy) = policy
            && let Decision::Deny { policy: by } = policy.authorize(AuthzRequest { peer: peer.as_ref(), http: None })
        {
            self.denied(peer.as_ref());
            tracing::info!(
                target: "outrider::access",
                kind = "tcp",
                direction = "inbound",
                %client,
                service = &*self.service,
                peer_identity = peer.as_ref().map_or("", |p| p.as_str()),
                denied_by = by.as_deref().unwrap_or("no allow policy matched"),
                local_reply = "unauthorized",
            );
            return;
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        crate::outbound::tcp::splice_to(
            &self.recorder,
            Direction::inbound,
            self.service.clone(),
            io,
            client,
            peer,
            addr,
            &self.cfg(),
        )
        .await;
    }

    fn denied(&self, peer: Option<&Identity>) {
        let peer: Arc<str> = peer.map_or_else(|| Arc::from("unauthenticated"), |p| Arc::from(p.as_str()));
        self.recorder
            .metrics
            .authorization_denied
            .get_or_create(&DenialLabels { service: self.service.clone(), peer })
            .inc();
    }

    async fn handle(
        &self,
        client: SocketAddr,
        port: u16,
        peer: Option<&Identity>,
        xfcc: Option<&http::HeaderValue>,
        node: Option<&(Arc<str>, Arc<SeriesCell>)>,
        mut req: Request<Body>,
    ) -> Response<Body> {
        let mut rec = RequestRecord::start(&self.recorder, Direction::inbound, client, &req);
        rec.service = self.service.clone();
        rec.route = self.service.clone();
        match node {
            Some((peer_workload, series)) => {
                rec.peer_workload = Some(peer_workload.clone());
                rec.series = Some(series.clone());
            }
            None => rec.series = Some(self.series.clone()),
        }
        rec.peer = peer.cloned();
        let grpc = rescue::is_grpc(&req);
        let authority = match forward::authority_of(&req) {
            Ok(a) => a,
            Err(e) => {
                let (resp, reason) = e.to_response(grpc);
                return rec.respond(resp, e.classify().0.as_u16(), Some(reason));
            }
        };
        if let Some(policy) = self.policy() {
            // A keep-alive connection opened while the service was permissive.
            if policy.mode == Mode::Strict && peer.is_none() {
                self.recorder
                    .metrics
                    .plaintext_refused
                    .get_or_create(&ServiceLabels { service: self.service.clone() })
                    .inc();
                let e = ProxyError::Unauthorized {
                    service: self.service.to_string(),
                    peer: "a plaintext caller".to_owned(),
                    policy: Some(Arc::from("strict mTLS mode")),
                };
                let (mut resp, reason) = e.to_response(grpc);
                resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                return rec.respond(resp, e.classify().0.as_u16(), Some(reason));
            }
            if !policy.filters.is_empty() {
                // Judge (and forward) the normalized path, so `//admin` cannot pass a rule on `/admin/*`.
                match crate::authz::normalize_path(req.uri().path()) {
                    Ok(None) => {}
                    Ok(Some(normal)) => {
                        let pq = match req.uri().query() {
                            Some(q) => format!("{normal}?{q}"),
                            None => normal,
                        };
                        let mut parts = req.uri().clone().into_parts();
                        parts.path_and_query = http::uri::PathAndQuery::try_from(pq).ok();
                        if let Ok(uri) = http::Uri::from_parts(parts) {
                            *req.uri_mut() = uri;
                        }
                    }
                    Err(why) => {
                        let e = ProxyError::BadRequest(why);
                        let (resp, reason) = e.to_response(grpc);
                        return rec.respond(resp, e.classify().0.as_u16(), Some(reason));
                    }
                }
            }
            if let Decision::Deny { policy: by } =
                policy.authorize(AuthzRequest { peer, http: Some((req.uri().path(), req.method().as_str())) })
            {
                self.denied(peer);
                let e = ProxyError::Unauthorized {
                    service: self.service.to_string(),
                    peer: peer.map_or_else(|| "an unauthenticated (plaintext) caller".to_owned(), |p| p.to_string()),
                    policy: by,
                };
                let (resp, reason) = e.to_response(grpc);
                return rec.respond(resp, e.classify().0.as_u16(), Some(reason));
            }
        }
        rec.request_id = Some(headers::ensure_request_id(req.headers_mut()));
        rec.authority = authority.clone();
        let pool = self.pool(port);
        rec.upstream = Some(pool.addr());
        if let Some(t) = rec.trace_context() {
            t.inject(req.headers_mut());
        }
        // The app learns the caller's verified identity as Envoy and Istio tell it; a value the
        // caller sent itself is never passed on.
        req.headers_mut().remove(&XFCC);
        if let Some(v) = xfcc {
            req.headers_mut().insert(XFCC.clone(), v.clone());
        }
        // From a peer proxy, the app's own HTTP version travels in the orig-proto header.
        let orig = req.headers_mut().remove(&forward::ORIG_PROTO).filter(|_| peer.is_some());
        let proto = match orig {
            Some(v) if v.as_bytes().starts_with(b"HTTP/1") => UpstreamProtocol::Http1,
            _ if req.version() == Version::HTTP_2 => UpstreamProtocol::Http2,
            _ => UpstreamProtocol::Http1,
        };
        let res: Result<_, ProxyError> =
            forward::forward(&pool, req, proto, &self.cfg(), client, authority.as_ref()).await;
        match res {
            Ok(resp) => {
                rec.attempts = 1;
                let status = resp.status().as_u16();
                rec.respond(resp, status, None)
            }
            Err(e) => {
                let (resp, reason) = e.to_response(grpc);
                rec.attempts = 1;
                rec.respond(resp, e.classify().0.as_u16(), Some(reason))
            }
        }
    }
}

/// Whether this sidecar's own service has an inbound policy in `snap`: a `--service` that
/// names no Service (a typo, a Service deleted) leaves inbound traffic with no mTLS mode and
/// no authorization (permissive, everyone allowed). Called at every snapshot: sets
/// `outrider_service_missing{service}` and warns while it is missing; a sidecar of the control
/// plane without `--service` at all is warned about too. Returns whether it is missing.
pub fn check_own_service(
    metrics: &crate::telemetry::metrics::Metrics,
    snap: &crate::state::Snapshot,
    service: Option<&str>,
    sidecar: bool,
) -> bool {
    let Some(service) = service else {
        if sidecar {
            tracing::warn!(
                "no --service: inbound traffic to this sidecar has no mTLS mode or authorization policy, and no workload is registered; set --service to the workload's Service"
            );
        }
        return sidecar;
    };
    let missing = !snap.inbound.contains_key(service);
    let labels = crate::telemetry::metrics::ServiceLabels { service: Arc::from(service) };
    metrics.service_missing.get_or_create(&labels).set(i64::from(missing));
    if missing {
        let known: Vec<&str> = snap.inbound.keys().map(|k| &**k).take(20).collect();
        tracing::warn!(
            service,
            known = ?known,
            "--service names no Service in the config: inbound traffic has no mTLS mode or authorization policy (permissive, everyone allowed); check the name, or create the Service"
        );
    }
    missing
}
