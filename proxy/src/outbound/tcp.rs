//! Opaque TCP: connect with a deadline, copy both ways with half-close, count bytes.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::Outbound;
use crate::http::client::connect_tcp;
use crate::state::Cluster;
use crate::telemetry::access::{Recorder, TcpRecord};
use crate::telemetry::metrics::Direction;

/// Connect timeout for destinations that match no service.
pub const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Proxy to an endpoint of a TCP service.
pub async fn to_cluster(
    ctx: &Outbound,
    stream: TcpStream,
    client: SocketAddr,
    cluster: &Arc<Cluster>,
) {
    let mut rec = TcpRecord::start(
        &ctx.recorder,
        Direction::outbound,
        client,
        cluster.service.clone(),
    );
    let Some(ep) = cluster.endpoints.pick().cloned() else {
        tracing::warn!(service = &*cluster.service, %client, "TCP service has no endpoints; closing the connection");
        rec.finish(0, 0, Some("no-healthy-upstream"));
        return;
    };
    rec.upstream = Some(ep.addr);
    let in_flight = ep.shared.ewma.start();
    let cfg = ctx.connect_config(cluster.connect_timeout);
    splice(stream, ep.addr, &cfg, rec).await;
    drop(in_flight);
}

/// A destination that matches no service: pass it through as it is.
pub async fn passthrough(ctx: &Outbound, stream: TcpStream, client: SocketAddr, dst: SocketAddr) {
    let mut rec = TcpRecord::start(
        &ctx.recorder,
        Direction::outbound,
        client,
        passthrough_label(),
    );
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
pub async fn splice(
    mut down: TcpStream,
    addr: SocketAddr,
    cfg: &crate::http::client::ConnectConfig,
    rec: TcpRecord,
) {
    let mut up = match connect_tcp(addr, cfg).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "TCP connect failed; closing the client connection");
            rec.finish(0, 0, Some("connect-failure"));
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut down, &mut up).await {
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
