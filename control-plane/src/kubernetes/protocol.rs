//! The protocol of a Service port, by Istio's conventions: `appProtocol` first, else the port's
//! name, `<protocol>` or `<protocol>-<suffix>` (`http`, `http-web`, `grpc-api`, `tcp-db`),
//! case-insensitive. A port that names no protocol Outrider routes at layer 7 is proxied as
//! opaque TCP (by its cluster IP): an application protocol the mesh cannot read is never broken
//! by an HTTP parser.

use outrider_xds::Protocol;

/// The protocol of a port with `app_protocol` and `name`.
pub fn of_port(app_protocol: Option<&str>, name: Option<&str>) -> Protocol {
    if let Some(p) = app_protocol.and_then(from_app_protocol) {
        return p;
    }
    name.and_then(from_port_name).unwrap_or(Protocol::Tcp)
}

/// `appProtocol`: a protocol name, or the `kubernetes.io/` ones Kubernetes defines.
fn from_app_protocol(value: &str) -> Option<Protocol> {
    let value = value.to_ascii_lowercase();
    match value.as_str() {
        "kubernetes.io/h2c" => Some(Protocol::Http2),
        "kubernetes.io/ws" => Some(Protocol::Http),
        "kubernetes.io/wss" => Some(Protocol::Tcp),
        other => from_name(other),
    }
}

/// A port name: `<protocol>` or `<protocol>-<suffix>`.
fn from_port_name(name: &str) -> Option<Protocol> {
    let name = name.to_ascii_lowercase();
    if let Some(p) = from_name(&name) {
        return Some(p);
    }
    // `grpc-web-x` before `grpc-x`: the longest protocol prefix wins.
    let (prefix, _) = name.rsplit_once('-').filter(|(p, _)| *p == "grpc-web").or_else(|| name.split_once('-'))?;
    from_name(prefix)
}

fn from_name(name: &str) -> Option<Protocol> {
    match name {
        "http" => Some(Protocol::Http),
        "http2" | "h2c" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        // gRPC-Web is HTTP/1.1 or HTTP/2 requests with gRPC bodies: plain HTTP routing.
        "grpc-web" => Some(Protocol::Http),
        // Encrypted or non-HTTP protocols travel as opaque TCP.
        "tcp" | "https" | "tls" | "mongo" | "mysql" | "redis" => Some(Protocol::Tcp),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocol_wins_over_the_port_name() {
        assert_eq!(of_port(Some("grpc"), Some("http")), Protocol::Grpc);
        assert_eq!(of_port(Some("kubernetes.io/h2c"), Some("tcp")), Protocol::Http2);
        assert_eq!(of_port(Some("kubernetes.io/ws"), None), Protocol::Http);
        assert_eq!(of_port(Some("HTTP"), None), Protocol::Http);
        // An appProtocol nobody knows falls back to the name.
        assert_eq!(of_port(Some("example.com/custom"), Some("http-web")), Protocol::Http);
    }

    #[test]
    fn port_names_follow_istios_convention() {
        for (name, want) in [
            ("http", Protocol::Http),
            ("http-web", Protocol::Http),
            ("HTTP-Web", Protocol::Http),
            ("http2", Protocol::Http2),
            ("http2-api", Protocol::Http2),
            ("grpc", Protocol::Grpc),
            ("grpc-api", Protocol::Grpc),
            ("grpc-web", Protocol::Http),
            ("grpc-web-x", Protocol::Http),
            ("tcp-db", Protocol::Tcp),
            ("https", Protocol::Tcp),
            ("tls-x", Protocol::Tcp),
            ("mysql", Protocol::Tcp),
        ] {
            assert_eq!(of_port(None, Some(name)), want, "{name}");
        }
    }

    #[test]
    fn unknown_or_missing_names_are_opaque_tcp() {
        assert_eq!(of_port(None, None), Protocol::Tcp);
        assert_eq!(of_port(None, Some("web")), Protocol::Tcp);
        assert_eq!(of_port(None, Some("httpx")), Protocol::Tcp);
        assert_eq!(of_port(None, Some("metrics-http")), Protocol::Tcp);
    }
}
