//! Opaque TCP: connect with a deadline, copy both ways with half-close, count bytes.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::Outbound;
use crate::http::client::{UpstreamError, connect_tcp};
use crate::policy::outcome::Outcome;
use crate::state::Cluster;
use crate::telemetry::access::{Recorder, TcpRecord};
use crate::telemetry::metrics::{Direction, ServiceLabels, ServiceReasonLabels};

/// Per-direction copy buffer: 4× tokio's default, so a bulk transfer makes a
/// quarter of the syscalls (the benchmark's TCP CPU per MB), at 64 KiB per
/// active connection.
const COPY_BUFFER: usize = 32 * 1024;

/// Connect timeout for destinations that match no service.
pub const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Proxy to an endpoint of a TCP service. The circuit breaker applies to
/// connections: `maxConnections`, and the state machine counts connect failures.
pub async fn to_cluster(ctx: &Outbound, stream: TcpStream, client: SocketAddr, cluster: &Arc<Cluster>) {
    let mut rec = TcpRecord::start(&ctx.recorder, Direction::outbound, client, cluster.service.clone());
    let metrics = &ctx.recorder.metrics;
    let reject = |reason: &'static str| {
        metrics
            .circuit_breaker_rejections
            .get_or_create(&ServiceReasonLabels { service: cluster.service.clone(), reason })
            .inc();
        tracing::info!(service = &*cluster.service, %client, reason, "TCP connection rejected by the circuit breaker");
    };
    let permit = match &cluster.policy.breaker {
        None => None,
        Some(cfg) => match cluster.state.breaker.try_acquire(cfg) {
            Ok(p) => Some((p, cfg)),
            Err(_) => {
                reject("open");
                rec.finish(0, 0, Some("circuit-open"));
                return;
            }
        },
    };
    let Some(_slot) = cluster.state.counters.acquire_connection(cluster.policy.thresholds.max_connections) else {
        if let Some((p, _)) = permit {
            cluster.state.breaker.forget(p);
        }
        reject("max-connections");
        rec.finish(0, 0, Some("overloaded"));
        return;
    };
    let healthy = |e: &Arc<crate::state::Endpoint>| !e.shared.health.is_ejected(&cluster.state.outliers);
    let Some(ep) = cluster.endpoints.pick_where(healthy).or_else(|| cluster.endpoints.pick()).cloned() else {
        tracing::warn!(service = &*cluster.service, %client, "TCP service has no endpoints; closing the connection");
        rec.finish(0, 0, Some("no-healthy-upstream"));
        return;
    };
    rec.upstream = Some(ep.addr);
    let in_flight = ep.shared.ewma.start();
    let cfg = ctx.connect_config(cluster.connect_timeout);
    let connected = connect_tcp(ep.addr, &cfg).await;
    let outcome = if connected.is_ok() { Outcome::Success } else { Outcome::ConnectFailure };
    if let Some((p, cfg)) = permit
        && let Some(state) = cluster.state.breaker.record(cfg, p, connected.is_err())
    {
        metrics
            .circuit_breaker_state
            .get_or_create(&ServiceLabels { service: cluster.service.clone() })
            .set(state.metric());
        tracing::warn!(service = &*cluster.service, state = state.as_str(), "circuit breaker changed state");
    }
    if let Some(o) = &cluster.policy.outlier
        && ep.shared.health.record(outcome, o, &cluster.state.outliers, cluster.endpoints.items().len())
    {
        metrics.outlier_ejections.get_or_create(&ServiceLabels { service: cluster.service.clone() }).inc();
    }
    copy(stream, connected, rec).await;
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
pub async fn splice(down: TcpStream, addr: SocketAddr, cfg: &crate::http::client::ConnectConfig, rec: TcpRecord) {
    copy(down, connect_tcp(addr, cfg).await, rec).await;
}

async fn copy(mut down: TcpStream, up: Result<TcpStream, UpstreamError>, rec: TcpRecord) {
    let mut up = match up {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "TCP connect failed; closing the client connection");
            rec.finish(0, 0, Some("connect-failure"));
            return;
        }
    };
    match tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, COPY_BUFFER, COPY_BUFFER).await {
        Ok((sent, received)) => rec.finish(sent, received, None),
        Err(e) => {
            let msg = e.to_string();
            rec.finish(0, 0, Some(&msg));
        }
    }
}

/// Shared by inbound delivery.
pub async fn splice_to(
    recorder: &Arc<Recorder>,
    direction: Direction,
    service: Arc<str>,
    down: TcpStream,
    client: SocketAddr,
    addr: SocketAddr,
    cfg: &crate::http::client::ConnectConfig,
) {
    let mut rec = TcpRecord::start(recorder, direction, client, service);
    rec.upstream = Some(addr);
    splice(down, addr, cfg, rec).await;
}
