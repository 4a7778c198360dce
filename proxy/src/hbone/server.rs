//! The HBONE server: HTTP/2 over an accepted mTLS connection, one `CONNECT` per tunnelled TCP
//! connection.
//!
//! Each request is checked before the caller sees it:
//! - the method is `CONNECT` (else 400);
//! - `:authority` is `IP:PORT` (else 400) and its IP is the address the client dialled — the
//!   workload whose listener took the connection (else 400);
//! - the port is not one of the proxy's own, [`super::ILLEGAL_PORTS`] (else 503).
//!
//! `forwarded`, `traceparent` and `baggage` are read when present and optional.
//!
//! The decrypted byte stream is read through the same [`H2Guard`] as the proxy's other HTTP/2
//! listeners (RFC 9113): an invalid client connection preface gets GOAWAY(PROTOCOL_ERROR)
//! before the close (§3.4), and a pseudo-header field in trailers is a stream error of type
//! PROTOCOL_ERROR (§8.1, §8.3) — the tunnel's reader then sees an error, never a clean end. (A
//! second HEADERS without END_STREAM is one too; h2 rejects that itself.)
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::stream::Stream;
use super::{BAGGAGE, FORWARDED, PING_INTERVAL, PING_TIMEOUT, TRACEPARENT};
use crate::drain;
use crate::http::h2_guard::H2Guard;
use crate::http::preface;
use crate::tls::Identity;

/// A checked `CONNECT`, to be accepted or refused.
#[derive(Debug)]
pub struct Connect {
    /// Where the tunnel goes: `:authority`.
    pub target: SocketAddr,
    /// The verified identity of the client certificate (the source workload).
    pub peer: Identity,
    /// The TCP peer of the HBONE connection (the source proxy).
    pub remote: SocketAddr,
    /// `forwarded: for=` — the source workload's address, when sent.
    pub forwarded_for: Option<SocketAddr>,
    pub traceparent: Option<HeaderValue>,
    pub baggage: Option<HeaderValue>,
    respond: h2::server::SendResponse<Bytes>,
    recv: h2::RecvStream,
}

impl Connect {
    /// The caller's address as the destination should see it: `forwarded`, else the TCP peer.
    pub fn source(&self) -> SocketAddr {
        self.forwarded_for.filter(|a| a.port() != 0).unwrap_or(self.remote)
    }

    /// Answer 200: the stream is now the tunnelled connection.
    pub fn accept(mut self) -> Result<Stream, h2::Error> {
        let send = self.respond.send_response(status(StatusCode::OK), false)?;
        Ok(Stream::new(send, self.recv))
    }

    /// Answer `code` and end the stream.
    pub fn refuse(mut self, code: StatusCode) {
        let _ = self.respond.send_response(status(code), true);
    }
}

fn status(code: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = code;
    r
}

/// Why a request was refused before the caller saw it.
fn check(req: &http::Request<h2::RecvStream>, local: SocketAddr) -> Result<SocketAddr, (StatusCode, String)> {
    if req.method() != Method::CONNECT {
        return Err((StatusCode::BAD_REQUEST, format!("method {} (HBONE only tunnels CONNECT)", req.method())));
    }
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or_default();
    let target: SocketAddr =
        authority.parse().map_err(|_| (StatusCode::BAD_REQUEST, format!("authority {authority:?} is not IP:PORT")))?;
    let target = SocketAddr::new(target.ip().to_canonical(), target.port());
    if target.ip() != local.ip().to_canonical() {
        return Err((StatusCode::BAD_REQUEST, format!("authority {target} is not the dialled address {}", local.ip())));
    }
    if super::ILLEGAL_PORTS.contains(&target.port()) {
        return Err((StatusCode::SERVICE_UNAVAILABLE, format!("port {} is the proxy's own", target.port())));
    }
    Ok(target)
}

/// Serve one HBONE connection (already through mTLS; `peer` is the client certificate's
/// identity, `local` the address the client dialled) until the peer closes it, it stops
/// answering PINGs, or the proxy drains (GOAWAY, in-flight streams finish).
pub async fn serve<IO, F, Fut>(
    io: IO,
    local: SocketAddr,
    remote: SocketAddr,
    peer: Identity,
    mut drain: drain::Signal,
    handler: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Connect) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut io = H2Guard::with_max_frame_size(io, super::MAX_FRAME);
    match tokio::time::timeout(super::HANDSHAKE_TIMEOUT, io.read_preface()).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            tracing::debug!(%remote, %peer, "invalid HTTP/2 connection preface on HBONE: GOAWAY");
            return preface::reject(io.get_mut()).await;
        }
        Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "HBONE connection failed in the HTTP/2 preface"),
        Err(_) => return tracing::debug!(%remote, "no HTTP/2 preface on HBONE within {:?}", super::HANDSHAKE_TIMEOUT),
    }
    let conn = h2::server::Builder::new()
        .initial_window_size(super::STREAM_WINDOW)
        .initial_connection_window_size(super::CONNECTION_WINDOW)
        .max_frame_size(super::MAX_FRAME)
        .max_concurrent_streams(super::MAX_STREAMS)
        .max_header_list_size(super::MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(20)
        .handshake::<_, Bytes>(io)
        .await;
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "HBONE HTTP/2 handshake failed");
            return;
        }
    };
    let mut ping = std::pin::pin!(keepalive(conn.ping_pong()));
    loop {
        tokio::select! {
            accepted = conn.accept() => {
                let (req, mut respond) = match accepted {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "HBONE connection error");
                        return;
                    }
                    None => return,
                };
                match check(&req, local) {
                    Err((code, why)) => {
                        tracing::info!(%remote, %peer, status = code.as_u16(), reason = %why, "HBONE CONNECT refused");
                        let _ = respond.send_response(status(code), true);
                    }
                    Ok(target) => {
                        let header = |name: &http::HeaderName| req.headers().get(name).cloned();
                        let forwarded_for = req
                            .headers()
                            .get(&FORWARDED)
                            .and_then(|v| v.to_str().ok())
                            .and_then(super::parse_forwarded_for);
                        let connect = Connect {
                            target,
                            peer: peer.clone(),
                            remote,
                            forwarded_for,
                            traceparent: header(&TRACEPARENT),
                            baggage: header(&BAGGAGE),
                            respond,
                            recv: req.into_body(),
                        };
                        tokio::spawn(handler(connect));
                    }
                }
            }
            why = &mut ping => {
                tracing::info!(%remote, %peer, reason = %why, "HBONE connection dropped");
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                break;
            }
            _ = drain.draining() => {
                conn.graceful_shutdown();
                break;
            }
        }
    }
    // Finish what is in flight (GOAWAY sent); streams already handed out run on their own.
    while let Some(Ok((_, mut respond))) = conn.accept().await {
        let _ = respond.send_response(status(StatusCode::SERVICE_UNAVAILABLE), true);
    }
}

/// PING every [`PING_INTERVAL`]; returns why the connection should be dropped: a PING
/// unanswered within [`PING_TIMEOUT`], or the PING failing.
pub(crate) async fn keepalive(ping: Option<h2::PingPong>) -> String {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        match tokio::time::timeout(PING_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("PING failed: {e}"),
            Err(_) => return format!("no PING answer within {PING_TIMEOUT:?}"),
        }
    }
}
