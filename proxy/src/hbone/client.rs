//! The HBONE client: a pool of mTLS HTTP/2 connections, one per (destination address,
//! destination identity), each carrying many `CONNECT` streams. A pool belongs to one source
//! identity (it lives in that identity's [`crate::mesh::Mesh`]), so a connection is never shared
//! by two source workloads: the receiver authorizes by the client certificate.
//!
//! Each workload presents its own certificate on its own port 15008, so streams to two
//! workloads never share a connection, even on one node (as ztunnel pools, by source identity,
//! destination identity and destination address).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Version};
use parking_lot::Mutex;

use super::stream::Stream;
use super::{BAGGAGE, FORWARDED, HboneError, TRACEPARENT};
use crate::tls::{CertStore, Identity};
use crate::transport::socket::SocketOptions;

/// Where one tunnelled connection goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The destination workload's HBONE address (`IP:15008`).
    pub via: SocketAddr,
    /// `:authority`: the destination workload's `IP:PORT`.
    pub target: SocketAddr,
    /// The destination workload's identity; the server certificate must carry it.
    pub identity: Identity,
    /// Sent as `forwarded: for="…"`.
    pub source: Option<SocketAddr>,
    pub traceparent: Option<HeaderValue>,
    pub baggage: Option<HeaderValue>,
}

type Key = (SocketAddr, Identity);

/// Connections of one source identity.
#[derive(Debug)]
pub struct Pool {
    certs: Arc<CertStore>,
    conns: Mutex<HashMap<Key, h2::client::SendRequest<Bytes>>>,
    configs: Mutex<HashMap<Identity, Arc<rustls::ClientConfig>>>,
}

impl Pool {
    pub fn new(certs: Arc<CertStore>) -> Self {
        Self { certs, conns: Mutex::default(), configs: Mutex::default() }
    }

    /// Open connections (for the admin view and tests).
    pub fn connections(&self) -> usize {
        self.conns.lock().len()
    }

    fn config(&self, expected: &Identity) -> Result<Arc<rustls::ClientConfig>, crate::tls::TlsError> {
        let mut configs = self.configs.lock();
        if let Some(c) = configs.get(expected) {
            return Ok(c.clone());
        }
        let c = crate::tls::hbone_client_config(self.certs.clone(), expected.clone())?;
        configs.insert(expected.clone(), c.clone());
        Ok(c)
    }

    /// A tunnelled connection to `t`: on a pooled connection when one is open, else on a new
    /// one (TCP from `socket`'s namespace within `timeout`, mTLS, HTTP/2).
    pub async fn connect(&self, t: &Target, socket: &SocketOptions, timeout: Duration) -> Result<Stream, HboneError> {
        let key = (t.via, t.identity.clone());
        let pooled = self.conns.lock().get(&key).cloned();
        if let Some(sender) = pooled {
            match self.open(sender, t).await {
                Ok(s) => return Ok(s),
                // The connection went away (GOAWAY, reset, silent peer): forget it, dial anew.
                Err(Retry::Yes(_)) => {
                    self.conns.lock().remove(&key);
                }
                Err(Retry::No(e)) => return Err(e),
            }
        }
        let sender = self.dial(t, socket, timeout).await?;
        self.conns.lock().insert(key, sender.clone());
        match self.open(sender, t).await {
            Ok(s) => Ok(s),
            Err(Retry::Yes(e) | Retry::No(e)) => Err(e),
        }
    }

    async fn dial(
        &self,
        t: &Target,
        socket: &SocketOptions,
        timeout: Duration,
    ) -> Result<h2::client::SendRequest<Bytes>, HboneError> {
        let via = t.via;
        let config = self.config(&t.identity).map_err(|e| HboneError::Tls(via, e.to_string()))?;
        let tcp = socket.tcp_socket(via).map_err(|e| HboneError::Connect(via, e.to_string()))?;
        let tcp = match tokio::time::timeout(timeout, tcp.connect(via)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(HboneError::Connect(via, e.to_string())),
            Err(_) => return Err(HboneError::Connect(via, format!("timed out after {timeout:?}"))),
        };
        // No SNI: the server picks its certificate by the address dialled.
        let name = rustls::pki_types::ServerName::IpAddress(via.ip().into());
        let tls =
            match tokio::time::timeout(timeout, crate::tls::stream::Connector::from(config).connect(name, tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(HboneError::Tls(via, format!("{e} (expected peer identity {})", t.identity)));
                }
                Err(_) => return Err(HboneError::Tls(via, format!("no handshake within {timeout:?}"))),
            };
        let (sender, mut conn) = h2::client::Builder::new()
            .initial_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .max_header_list_size(super::MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| HboneError::Handshake(via, e))?;
        let ping = conn.ping_pong();
        tokio::spawn(async move {
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        tracing::debug!(%via, error = %e, "HBONE connection ended");
                    }
                }
                why = super::server::keepalive(ping) => {
                    tracing::info!(%via, reason = %why, "HBONE connection dropped");
                }
            }
        });
        Ok(sender)
    }

    async fn open(&self, sender: h2::client::SendRequest<Bytes>, t: &Target) -> Result<Stream, Retry> {
        let request = |error| HboneError::Request { via: t.via, target: t.target, error };
        let mut sender = sender.ready().await.map_err(|e| Retry::Yes(request(e)))?;
        let mut req = Request::new(());
        *req.method_mut() = Method::CONNECT;
        *req.version_mut() = Version::HTTP_2;
        // An authority-form URI: `:authority` only, no `:scheme` or `:path`.
        *req.uri_mut() = http::Uri::try_from(t.target.to_string())
            .map_err(|_| Retry::No(request(h2::Error::from(h2::Reason::PROTOCOL_ERROR))))?;
        let headers = req.headers_mut();
        if let Some(src) = t.source
            && let Ok(v) = HeaderValue::from_str(&super::forwarded_for(src))
        {
            headers.insert(FORWARDED.clone(), v);
        }
        if let Some(v) = &t.traceparent {
            headers.insert(TRACEPARENT.clone(), v.clone());
        }
        if let Some(v) = &t.baggage {
            headers.insert(BAGGAGE.clone(), v.clone());
        }
        let (response, send) = sender.send_request(req, false).map_err(|e| {
            // Refused before any byte went out (GOAWAY, max streams): another connection may do.
            if e.is_go_away() || e.is_io() { Retry::Yes(request(e)) } else { Retry::No(request(e)) }
        })?;
        let response = response
            .await
            .map_err(|e| if e.is_go_away() || e.is_io() { Retry::Yes(request(e)) } else { Retry::No(request(e)) })?;
        if response.status() != StatusCode::OK {
            return Err(Retry::No(HboneError::Status { via: t.via, target: t.target, status: response.status() }));
        }
        Ok(Stream::new(send, response.into_body()))
    }
}

enum Retry {
    Yes(HboneError),
    No(HboneError),
}
