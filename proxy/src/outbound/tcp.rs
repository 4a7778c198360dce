//! Opaque TCP: connect with a deadline, copy both ways with half-close, count bytes.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Outbound;
use super::pick::{self, NoPick};
use crate::http::client::{UpstreamError, connect_tcp};
use crate::policy::outcome::Outcome;
use crate::state::Cluster;
use crate::telemetry::access::{Recorder, TcpRecord};
use crate::telemetry::metrics::{Direction, ServiceReasonLabels};

/// Per-direction copy buffer: 4× tokio's default, so a bulk transfer makes a
/// quarter of the syscalls (the benchmark's TCP CPU per MB), at 64 KiB per
/// active connection.
const COPY_BUFFER: usize = 32 * 1024;

/// Connect timeout for destinations that match no service.
pub const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Proxy to an endpoint of a TCP service. The circuit breaker applies to
/// connections: `maxConnections`, and the state machine (per endpoint, or per
/// service) counts connect failures; outlier detection ejects an endpoint after
/// consecutive connect failures or a failure percentage of them.
pub async fn to_cluster(ctx: &Outbound, stream: TcpStream, client: SocketAddr, cluster: &Arc<Cluster>) {
    let mut rec = TcpRecord::start(&ctx.recorder, Direction::outbound, client, cluster.service.clone());
    let metrics = &ctx.recorder.metrics;
    let reject = |reason: &'static str| {
        cluster.state.load.reject();
        metrics
            .circuit_breaker_rejections
            .get_or_create(&ServiceReasonLabels { service: cluster.service.clone(), reason })
            .inc();
        tracing::info!(service = &*cluster.service, %client, reason, "TCP connection rejected by the circuit breaker");
    };
    let Some(_slot) = cluster.state.counters.acquire_connection(cluster.policy.thresholds.max_connections) else {
        reject("max-connections");
        rec.finish(0, 0, Some("overloaded"));
        return;
    };
    let choice = match pick::choose(cluster, &cluster.endpoints, &[]) {
        Ok(c) => c,
        Err(NoPick::Open) => {
            reject("open");
            rec.finish(0, 0, Some("circuit-open"));
            return;
        }
        Err(NoPick::Empty) => {
            tracing::warn!(service = &*cluster.service, %client, "TCP service has no endpoints; closing the connection");
            rec.finish(0, 0, Some("no-healthy-upstream"));
            return;
        }
    };
    let attempt = pick::Attempt::start(choice, cluster.clone(), None, false, metrics.clone());
    let ep = attempt.endpoint().clone();
    rec.upstream = Some(ep.addr);
    let in_flight = ep.shared.ewma.start();
    let mut cfg = ctx.connect_config(cluster.connect_timeout);
    cfg.mesh = crate::mesh::endpoint_target(&ctx.mesh, &ep, Some(client));
    let connected = crate::http::client::connect_tcp_or_mesh(ep.addr, &cfg, crate::mesh::Carry::Tcp, None).await;
    if let Ok(crate::http::client::Either::Tls(_)) = &connected {
        metrics
            .tls_connections
            .get_or_create(&crate::telemetry::metrics::TlsLabels {
                direction: Direction::outbound,
                alpn: outrider_xds::resources::ALPN_MESH_TCP,
            })
            .inc();
    }
    attempt.finish(if connected.is_ok() { Outcome::Success } else { Outcome::ConnectFailure }, false);
    match connected {
        Ok(crate::http::client::Either::Plain(up)) => {
            copy(stream, Ok(up), rec, cluster.policy.upstream_idle_timeout).await
        }
        Ok(crate::http::client::Either::Tls(up)) => {
            copy(stream, Ok(up), rec, cluster.policy.upstream_idle_timeout).await
        }
        Ok(crate::http::client::Either::Hbone(up)) => {
            copy(stream, Ok(up), rec, cluster.policy.upstream_idle_timeout).await
        }
        Err(e) => copy::<_, TcpStream>(stream, Err(e), rec, cluster.policy.upstream_idle_timeout).await,
    }
    drop(in_flight);
}

/// A destination that matches no service: pass it through as it is.
pub async fn passthrough(ctx: &Outbound, stream: TcpStream, client: SocketAddr, dst: SocketAddr) {
    let mut rec = TcpRecord::start(&ctx.recorder, Direction::outbound, client, passthrough_label());
    rec.upstream = Some(dst);
    let cfg = ctx.connect_config(PASSTHROUGH_CONNECT_TIMEOUT);
    splice(stream, dst, &cfg, rec).await;
}

fn passthrough_label() -> Arc<str> {
    static L: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    L.get_or_init(|| Arc::from("passthrough")).clone()
}

/// Connect and copy both ways until both sides have closed. Each direction's
/// EOF is passed on as a half-close (shutdown of the write side).
pub async fn splice<D: Io>(down: D, addr: SocketAddr, cfg: &crate::http::client::ConnectConfig, rec: TcpRecord) {
    copy(down, connect_tcp(addr, cfg).await, rec, Some(cfg.idle_timeout.unwrap_or(DEFAULT_TCP_IDLE))).await;
}

/// Envoy's tcp_proxy default: a connection with no bytes either way for an hour is closed.
pub const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(3600);

/// Any byte stream: a socket, or a TLS session on one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Copy both ways between two connected streams until both sides have closed (half-closes
/// passed on), closing after `idle` without bytes; the record is finished with the counts.
pub async fn relay<D: Io, U: Io>(down: D, up: U, rec: TcpRecord, idle: Option<Duration>) {
    copy(down, Ok(up), rec, idle).await;
}

async fn copy<D: Io, U: Io>(down: D, up: Result<U, UpstreamError>, rec: TcpRecord, idle: Option<Duration>) {
    let up = match up {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "TCP connect failed; closing the client connection");
            rec.finish(0, 0, Some("connect-failure"));
            return;
        }
    };
    let last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut down = Tracked { inner: down, last: last.clone(), start };
    let mut up = Tracked { inner: up, last: last.clone(), start };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, COPY_BUFFER, COPY_BUFFER);
    tokio::pin!(copy);
    let result = match idle {
        None => copy.await,
        Some(idle) => loop {
            let quiet_since = crate::clock::after(start, Duration::from_nanos(last.load(Ordering::Relaxed)));
            let deadline = crate::clock::after(quiet_since, idle);
            tokio::select! {
                r = &mut copy => break r,
                _ = tokio::time::sleep_until(deadline) => {
                    let quiet_since = crate::clock::after(start, Duration::from_nanos(last.load(Ordering::Relaxed)));
                    if Instant::now().saturating_duration_since(quiet_since) >= idle {
                        tracing::debug!(?idle, "TCP connection idle; closing it");
                        break Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("idle for {idle:?} (idleTimeout)")));
                    }
                }
            }
        },
    };
    match result {
        Ok((sent, received)) => rec.finish(sent, received, None),
        Err(e) => {
            let msg = e.to_string();
            rec.finish(0, 0, Some(&msg));
        }
    }
}

/// A stream that notes when bytes last moved through it (for the idle timeout).
struct Tracked<S> {
    inner: S,
    last: Arc<AtomicU64>,
    start: Instant,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        self.last.store(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Shared by inbound delivery.
#[allow(clippy::too_many_arguments)]
pub async fn splice_to<D: Io>(
    recorder: &Arc<Recorder>,
    direction: Direction,
    service: Arc<str>,
    down: D,
    client: SocketAddr,
    peer: Option<crate::tls::Identity>,
    addr: SocketAddr,
    cfg: &crate::http::client::ConnectConfig,
) {
    let mut rec = TcpRecord::start(recorder, direction, client, service);
    rec.upstream = Some(addr);
    rec.peer = peer;
    splice(down, addr, cfg, rec).await;
}

#[cfg(test)]
mod tests;
