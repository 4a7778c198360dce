//! Inbound: connections from other workloads to the local application. HTTP is
//! served and forwarded to the app (same HTTP version as the caller used);
//! anything else is spliced to the app's port as bytes.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::drain;
use crate::http::client::{ConnectConfig, EndpointPool, UpstreamProtocol};
use crate::http::server::HttpServer;
use crate::http::{Body, forward, headers};
use crate::rescue::{self, ProxyError};
use crate::state::{ClusterProtocol, Store};
use crate::telemetry::access::{Recorder, RequestRecord};
use crate::telemetry::metrics::Direction;
use crate::transport::{detect, orig_dst};

/// Connect timeout to the local application.
pub const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Inbound {
    pub recorder: Arc<Recorder>,
    pub server: HttpServer,
    pub app_port: Option<u16>,
    /// Service label for inbound metrics.
    pub service: Arc<str>,
    pub socket_mark: Option<u32>,
    /// The config, to learn the declared protocol of `--service`.
    pub store: Arc<Store>,
    pools: Mutex<HashMap<u16, Arc<EndpointPool>>>,
}

impl Inbound {
    pub fn new(
        recorder: Arc<Recorder>,
        server: HttpServer,
        app_port: Option<u16>,
        service: Arc<str>,
        socket_mark: Option<u32>,
        store: Arc<Store>,
    ) -> Self {
        Self { recorder, server, app_port, service, socket_mark, store, pools: Mutex::default() }
    }

    /// A Service's declared protocol wins over detection.
    fn declared(&self) -> Option<ClusterProtocol> {
        let snap = self.store.load();
        snap.clusters.values().find(|c| c.service == self.service).map(|c| c.protocol)
    }

    fn pool(&self, port: u16) -> Arc<EndpointPool> {
        self.pools
            .lock()
            .entry(port)
            .or_insert_with(|| Arc::new(EndpointPool::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))))
            .clone()
    }

    fn cfg(&self) -> ConnectConfig {
        ConnectConfig { timeout: APP_CONNECT_TIMEOUT, mark: self.socket_mark, limits: None, idle_timeout: None }
    }

    pub async fn serve(self: Arc<Self>, stream: TcpStream, client: SocketAddr, drain: drain::Signal) {
        let port = match (self.app_port, orig_dst::original_dst(&stream)) {
            (Some(p), _) => p,
            (None, Some(d)) => d.port(),
            (None, None) => {
                tracing::warn!(%client, "inbound connection with no --app-port and no original destination; closing");
                return;
            }
        };
        let detected = match self.declared() {
            Some(ClusterProtocol::Tcp) => Ok(detect::Detected::Opaque),
            Some(ClusterProtocol::Http1 | ClusterProtocol::Http2) => Ok(detect::Detected::Http1),
            None => detect::detect(&stream, detect::DETECT_TIMEOUT).await,
        };
        match detected {
            Ok(detect::Detected::Http1 | detect::Detected::Http2) => {
                let server = self.server.clone();
                let ctx = self.clone();
                server
                    .serve(
                        stream,
                        move |req| {
                            let ctx = ctx.clone();
                            async move { Ok::<_, Infallible>(ctx.handle(client, port, req).await) }
                        },
                        drain,
                    )
                    .await;
            }
            Ok(detect::Detected::Opaque) => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                crate::outbound::tcp::splice_to(
                    &self.recorder,
                    Direction::inbound,
                    self.service.clone(),
                    stream,
                    client,
                    addr,
                    &self.cfg(),
                )
                .await;
            }
            Ok(detect::Detected::Closed) => {}
            Err(e) => tracing::debug!(%client, error = %e, "protocol detection failed"),
        }
    }

    async fn handle(&self, client: SocketAddr, port: u16, mut req: Request<Incoming>) -> Response<Body> {
        let mut rec = RequestRecord::start(&self.recorder, Direction::inbound, client, &req);
        rec.service = self.service.clone();
        rec.route = self.service.clone();
        let grpc = rescue::is_grpc(&req);
        rec.request_id = Some(headers::ensure_request_id(req.headers_mut()));
        let authority = forward::authority_of(&req);
        rec.authority = authority.clone();
        let pool = self.pool(port);
        rec.upstream = Some(pool.addr());
        if let Some(t) = rec.trace_context() {
            t.inject(req.headers_mut());
        }
        let proto = if req.version() == Version::HTTP_2 { UpstreamProtocol::Http2 } else { UpstreamProtocol::Http1 };
        let res: Result<_, ProxyError> =
            forward::forward(&pool, req.map(Body::Incoming), proto, &self.cfg(), client, authority.as_ref()).await;
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
