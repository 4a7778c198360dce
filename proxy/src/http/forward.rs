//! Forwarding one request to a chosen endpoint: header hygiene, the URI form
//! and version the upstream protocol needs, and HTTP/1.1 upgrades.
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};

use super::Body;
use super::client::{ConnectConfig, EndpointPool, UpstreamProtocol};
use super::headers;
use crate::rescue::ProxyError;

/// [`outrider_xds::resources::ORIG_PROTO_HEADER`].
pub static ORIG_PROTO: header::HeaderName = header::HeaderName::from_static("x-outrider-orig-proto");

/// The authority a request names: `:authority` / absolute-form URI, else `Host`.
pub fn authority_of<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    req.headers().get(header::HOST).and_then(|h| Authority::try_from(h.as_bytes()).ok())
}

/// Prepare and send `req` to `pool`'s endpoint, and prepare the response for
/// the downstream. `client` goes into `x-forwarded-for`.
pub async fn forward(
    pool: &Arc<EndpointPool>,
    mut req: Request<Body>,
    proto: UpstreamProtocol,
    cfg: &ConnectConfig,
    client: SocketAddr,
    authority: Option<&Authority>,
) -> Result<Response<Body>, ProxyError> {
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    if req.method() == http::Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported on this port"));
    }
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // To a meshed endpoint every request but an upgrade rides the multiplexed mTLS HTTP/2
    // connection; the peer proxy restores HTTP/1.x for its app from the orig-proto header.
    // The peer proxy speaks to its app in the service's declared protocol: HTTP/1.x for `http`
    // services (whatever the caller used), HTTP/2 otherwise — as the plaintext path does.
    let orig_proto = (cfg.mesh.is_some() && !upgrade && proto == UpstreamProtocol::Http1).then(|| req.version());
    let proto = if upgrade {
        UpstreamProtocol::Http1
    } else if cfg.mesh.is_some() {
        UpstreamProtocol::Http2
    } else {
        proto
    };

    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    // The proxy answers `Expect: 100-continue` itself once it starts reading the body.
    parts.headers.remove(header::EXPECT);
    headers::append_forwarded_for(&mut parts.headers, client.ip());
    // Only this proxy sets it, for the hop to a peer proxy.
    parts.headers.remove(&ORIG_PROTO);
    if let Some(version) = orig_proto {
        let value = if version == Version::HTTP_10 { "HTTP/1.0" } else { "HTTP/1.1" };
        parts.headers.insert(ORIG_PROTO.clone(), HeaderValue::from_static(value));
    }

    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    match proto {
        UpstreamProtocol::Http1 => {
            if !parts.headers.contains_key(header::HOST)
                && let Some(a) = authority
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                parts.headers.insert(header::HOST, v);
            }
            parts.uri = Uri::from(path);
            parts.version = Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            let authority = match authority {
                Some(a) => a.clone(),
                None => Authority::try_from(pool.addr().to_string().as_str())
                    .map_err(|_| ProxyError::BadRequest("request has no authority"))?,
            };
            parts.headers.remove(header::HOST);
            let mut up = Uri::builder().scheme(Scheme::HTTP).authority(authority).path_and_query(path);
            if let Some(s) = parts.uri.scheme() {
                up = up.scheme(s.clone());
            }
            parts.uri = up.build().map_err(|_| ProxyError::BadRequest("cannot form the upstream URI"))?;
            parts.version = Version::HTTP_2;
        }
    }
    let up_req = Request::from_parts(parts, body);
    let mut resp = pool.send(up_req, proto, cfg).await?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = on_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            super::upgrade::splice(down, up);
        }
        return Ok(resp.map(|_| Body::Empty));
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    Ok(resp)
}
