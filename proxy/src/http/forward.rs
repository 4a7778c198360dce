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

/// The authority a request names: `:authority` / absolute-form URI, else `Host` (RFC 9112
/// §3.2.2: the target's authority wins). A request with more than one Host field line, or a
/// Host value that is not `host[:port]`, is bad (RFC 9112 §3.2: 400, never forwarded); an empty
/// Host names nothing.
pub fn authority_of<B>(req: &Request<B>) -> Result<Option<Authority>, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let from_host = match host {
        Some(h) if !h.is_empty() => match Authority::try_from(h.as_bytes()) {
            // RFC 9110 §7.2: Host = uri-host [ ":" port ], no user info.
            Ok(a) if !a.as_str().contains('@') => Some(a),
            _ => return Err(ProxyError::BadRequest("the Host header is not a valid host[:port]")),
        },
        _ => None,
    };
    Ok(req.uri().authority().cloned().or(from_host))
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
    let on_upgrade = if upgrade { super::server::h1::OnUpgrade::take(&mut req) } else { None };
    // To a meshed endpoint a request travels in the protocol the peer proxy speaks to its app
    // (the service's declared one, as on the plaintext path): HTTP/1.1 on pooled mutual-TLS
    // connections (ALPN `outrider-http1/1`), HTTP/2 on the one multiplexed mutual-TLS HTTP/2
    // connection (`outrider/1`). why not HTTP/1.1 over the HTTP/2 connection too, as before:
    // converting to HTTP/2 and back made a proxied request cost both proxies their HTTP/2 path
    // (about twice the HTTP/1.1 one's instructions) for nothing the app sees. Through an HBONE
    // tunnel every request but an upgrade still rides HTTP/2; the peer restores HTTP/1.x for its
    // app from the orig-proto header (as proxies of earlier versions expect on `outrider/1`).
    let hbone = cfg.mesh.as_ref().is_some_and(|m| m.hbone.is_some());
    let orig_proto = (hbone && !upgrade && proto == UpstreamProtocol::Http1).then(|| req.version());
    let proto = if upgrade {
        UpstreamProtocol::Http1
    } else if hbone {
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
            // Host names what the proxy routed by (RFC 9112 §3.2.2: a proxy replaces the Host
            // of an absolute-form request with the target's authority).
            if let Some(a) = authority
                && parts.headers.get(header::HOST).is_none_or(|h| h.as_bytes() != a.as_str().as_bytes())
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
