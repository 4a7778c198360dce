//! Outbound HTTP: authority → virtual host → route → split → endpoint.
//!
//! Stages, outer → inner:
//!   record    — one access-log / metrics record per request (exactly once), here
//!   route     — virtual host by authority (or original destination), first matching route, here
//!   split     — weighted choice of cluster subset, here
//!   balance   — P2C-EWMA / round robin / random over the subset's endpoints whose breaker
//!               admits calls, else the split's fallback ([`stack`], [`super::pick`])
//!   endpoint  — pooled HTTP/1.1 or HTTP/2 connection, header hygiene, upgrades ([`stack`])
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::Outbound;
use super::stack::{self, StackParams, Upstream};
use crate::balance::Balancer;
use crate::drain;
use crate::http::body::IdleBody;
use crate::http::server::Downstream;
use crate::http::{Body, forward, headers};
use crate::policy::config::RoutePolicy;
use crate::policy::layers::grpc_timeout;
use crate::rescue::{self, ProxyError};
use crate::state::{Cluster, Endpoint, Fallback, Split, Target};
use crate::telemetry::access::RequestRecord;
use crate::telemetry::metrics::Direction;

/// Serve HTTP on a connection; `orig_dst` names the service when Host does not. (The
/// server's future itself, not an `async fn` around it: see [`HttpServer::serve`].)
///
/// [`HttpServer::serve`]: crate::http::server::HttpServer::serve
pub fn serve(
    ctx: Arc<Outbound>,
    stream: TcpStream,
    client: SocketAddr,
    orig_dst: Option<SocketAddr>,
    drain: drain::Signal,
) -> impl Future<Output = ()> + Send + 'static {
    let server = ctx.server.clone();
    server.serve(
        Downstream::<TcpStream>::Plain(stream),
        move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(handle(&ctx, client, orig_dst, req).await) }
        },
        drain,
    )
}

async fn handle(
    ctx: &Outbound,
    client: SocketAddr,
    orig_dst: Option<SocketAddr>,
    mut req: Request<Body>,
) -> Response<Body> {
    let mut rec = RequestRecord::start(&ctx.recorder, Direction::outbound, client, &req);
    let grpc = rescue::is_grpc(&req);
    rec.request_id = Some(headers::ensure_request_id(req.headers_mut()));
    match proxy(ctx, client, orig_dst, req, &mut rec).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            rec.respond(resp, status, None)
        }
        Err(e) => {
            let (resp, reason) = e.to_response(grpc);
            let status = if grpc { e.classify().0.as_u16() } else { resp.status().as_u16() };
            rec.respond(resp, status, Some(reason))
        }
    }
}

/// What the router decided, against one snapshot.
struct Routed {
    cluster: Arc<Cluster>,
    endpoints: Arc<Balancer<Arc<Endpoint>>>,
    fallback: Option<Arc<Fallback>>,
    policy: Arc<RoutePolicy>,
}

/// Route: virtual host by authority (or original destination), the first
/// matching route, then a split by weight.
fn route(
    ctx: &Outbound,
    orig_dst: Option<SocketAddr>,
    req: &Request<Body>,
    authority: Option<&http::uri::Authority>,
    rec: &mut RequestRecord,
) -> Result<Routed, ProxyError> {
    let snap = ctx.store.load();
    let by_host = authority.and_then(|a| {
        let a = a.as_str();
        snap.vhosts.get(a).or_else(|| snap.vhosts.get(a.to_ascii_lowercase().as_str()))
    });
    let vh = match by_host {
        Some(vh) => vh,
        None => match orig_dst.and_then(|d| snap.outbound.lookup(d)) {
            Some(Target::Http(vh)) => vh,
            _ => {
                return Err(ProxyError::NoRoute { authority: authority.map(|a| a.to_string()).unwrap_or_default() });
            }
        },
    };
    rec.service = vh.name.clone();
    let Some(route) = vh.routes.iter().find(|r| r.matches(req)) else {
        return Err(ProxyError::NoRouteMatch { service: vh.name.to_string(), path: req.uri().path().to_string() });
    };
    rec.route = route.name.clone();
    let split: &Split =
        route.pick_split().ok_or_else(|| ProxyError::NoHealthyUpstream { service: vh.name.to_string() })?;
    rec.service = split.cluster.service.clone();
    rec.series = Some(split.series.clone());
    Ok(Routed {
        cluster: split.cluster.clone(),
        endpoints: split.endpoints.clone(),
        fallback: split.fallback.clone(),
        policy: route.policy.clone(),
    })
}

async fn proxy(
    ctx: &Outbound,
    client: SocketAddr,
    orig_dst: Option<SocketAddr>,
    req: Request<Body>,
    rec: &mut RequestRecord,
) -> Result<Response<Body>, ProxyError> {
    let authority = forward::authority_of(&req)?;
    rec.authority = authority.clone();
    let routed = route(ctx, orig_dst, &req, authority.as_ref(), rec)?;
    let grpc_timeout = if rescue::is_grpc(&req) { grpc_timeout(req.headers()) } else { None };
    let mut up = Upstream::new(req, client, authority);
    up.trace = rec.trace_context();
    let params = StackParams {
        cluster: &routed.cluster,
        endpoints: &routed.endpoints,
        route: &routed.policy,
        socket: &ctx.socket,
        metrics: &ctx.recorder.metrics,
        mesh: &ctx.mesh,
        grpc_timeout,
        fallback: routed.fallback.as_ref(),
    };
    let res = stack::stack(params).oneshot(up).await;
    match res {
        Ok(answered) => {
            rec.upstream = Some(answered.endpoint);
            rec.peer_workload = answered.workload;
            rec.attempts = answered.attempt;
            let resp = match routed.policy.idle_timeout {
                Some(t) => answered.resp.map(|b| IdleBody::wrap(b, t)),
                None => answered.resp,
            };
            Ok(resp)
        }
        Err(e) => {
            if let ProxyError::Upstream(u) = &e {
                rec.upstream = Some(u.addr());
            }
            Err(e)
        }
    }
}
