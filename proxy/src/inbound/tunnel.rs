//! Inbound over HBONE: a `CONNECT` accepted on a workload's port 15008 (node mode). The stream
//! is served as if it had arrived over Outrider's mutual TLS, with the client certificate's
//! identity as the caller: HTTP services get per-request authorization and routing to the app;
//! any other service is authorized as a connection first, then spliced to the app's port.
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;

use super::Inbound;
use crate::authz::{Decision, Request as AuthzRequest};
use crate::drain;
use crate::hbone::server::Connect;
use crate::state::ClusterProtocol;
use crate::telemetry::access::TcpRecord;
use crate::telemetry::metrics::Direction;

/// The first request line or HTTP/2 preface on a tunnel must arrive within this.
const SNIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Inbound {
    /// Serve one HBONE `CONNECT` to this workload until the tunnelled connection ends.
    pub async fn tunnel(self: Arc<Self>, connect: Connect, drain: drain::Signal) {
        let port = connect.target.port();
        let client = connect.source();
        let peer = connect.peer.clone();
        if !self.store.is_ready() || self.policy_pending() {
            tracing::info!(%client, "HBONE connection refused: the workload's config is not there yet");
            connect.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
        if matches!(self.declared(), Some(ClusterProtocol::Http1 | ClusterProtocol::Http2)) {
            // HTTP: every request is authorized on its own (403 with the reason), and its span's
            // parent is its own trace context, else the `CONNECT`'s.
            let parent = connect.traceparent.clone();
            let stream = match connect.accept() {
                Ok(stream) => stream,
                Err(e) => return tracing::debug!(%client, error = %e, "HBONE stream ended before it was answered"),
            };
            use crate::http::preface::First;
            use crate::http::server::Downstream;
            match crate::hbone::stream::sniff_http(stream, SNIFF_TIMEOUT).await {
                Some((First::Http2, s)) => {
                    self.serve_http(Downstream::Http2(s), client, port, Some(peer), parent, drain).await
                }
                Some((First::Http1, s)) => {
                    self.serve_http(Downstream::Http1(s), client, port, Some(peer), parent, drain).await
                }
                Some((First::Invalid, s)) => crate::http::preface::reject(s).await,
                None => tracing::debug!(%client, "HBONE stream closed before its first request"),
            }
            return;
        }
        // A connection: authorized before it is answered (401, as ztunnel answers a denial).
        let mut rec = TcpRecord::start(&self.recorder, Direction::inbound, client, self.service.clone());
        rec.peer = Some(peer.clone());
        if let Some(policy) = self.policy()
            && let Decision::Deny { policy: by } = policy.authorize(AuthzRequest { peer: Some(&peer), http: None })
        {
            self.denied(Some(&peer));
            tracing::info!(
                target: "outrider::access",
                kind = "tcp",
                direction = "inbound",
                %client,
                service = &*self.service,
                peer_identity = peer.as_str(),
                denied_by = by.as_deref().unwrap_or("no allow policy matched"),
                local_reply = "unauthorized",
            );
            connect.refuse(StatusCode::UNAUTHORIZED);
            rec.finish(0, 0, Some("unauthorized"));
            return;
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        rec.upstream = Some(addr);
        let app = match crate::http::client::connect_tcp(addr, &self.cfg()).await {
            Ok(app) => app,
            Err(e) => {
                tracing::info!(%client, error = %e, "HBONE target not reachable");
                connect.refuse(StatusCode::SERVICE_UNAVAILABLE);
                rec.finish(0, 0, Some("connect-failure"));
                return;
            }
        };
        match connect.accept() {
            Ok(stream) => {
                crate::outbound::tcp::relay(stream, app, rec, Some(crate::outbound::tcp::DEFAULT_TCP_IDLE)).await
            }
            Err(e) => {
                tracing::debug!(%client, error = %e, "HBONE stream ended before it was answered");
                rec.finish(0, 0, Some("downstream-reset"));
            }
        }
    }
}
