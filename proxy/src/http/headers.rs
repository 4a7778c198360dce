//! Header hygiene between hops.
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_LOCAL_REPLY: HeaderName = HeaderName::from_static("x-outrider-local-reply");
pub static X_OVERLOADED: HeaderName = HeaderName::from_static("x-outrider-overloaded");
pub static X_ATTEMPT: HeaderName = HeaderName::from_static("x-outrider-attempt");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop names (RFC 9110 §7.6.1), as bits of the set [`hop_bits`] returns.
const CONNECTION_BIT: u8 = 1;
const KEEP_ALIVE_BIT: u8 = 1 << 1;
const PROXY_CONNECTION_BIT: u8 = 1 << 2;
const PROXY_AUTHORIZATION_BIT: u8 = 1 << 3;
const TRAILER_BIT: u8 = 1 << 4;
const TRANSFER_ENCODING_BIT: u8 = 1 << 5;
const UPGRADE_BIT: u8 = 1 << 6;
const TE_BIT: u8 = 1 << 7;

fn hop_bit(n: &HeaderName) -> u8 {
    if n == header::CONNECTION {
        CONNECTION_BIT
    } else if n == KEEP_ALIVE {
        KEEP_ALIVE_BIT
    } else if n == PROXY_CONNECTION {
        PROXY_CONNECTION_BIT
    } else if n == header::PROXY_AUTHORIZATION {
        PROXY_AUTHORIZATION_BIT
    } else if n == header::TRAILER {
        TRAILER_BIT
    } else if n == header::TRANSFER_ENCODING {
        TRANSFER_ENCODING_BIT
    } else if n == header::UPGRADE {
        UPGRADE_BIT
    } else if n == header::TE {
        TE_BIT
    } else {
        0
    }
}

/// A `Connection` token that names nothing to remove beyond the hop-by-hop fields (each of
/// which is removed anyway) or is `close`.
fn is_hop_or_close_token(t: &[u8]) -> bool {
    const TOKENS: [&[u8]; 9] = [
        b"keep-alive",
        b"close",
        b"upgrade",
        b"te",
        b"connection",
        b"proxy-connection",
        b"proxy-authorization",
        b"trailer",
        b"transfer-encoding",
    ];
    TOKENS.iter().any(|k| k.eq_ignore_ascii_case(t))
}

/// Which hop-by-hop names `headers` holds, in one pass over its names.
fn hop_bits(headers: &HeaderMap) -> u8 {
    headers.keys().fold(0, |bits, n| bits | hop_bit(n))
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including any named in
/// `Connection`. `TE: trailers` survives: gRPC needs it end to end.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay (an upgrade request).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // why: one pass over the names finds which hop-by-hop headers are there; only those
    // are removed (a hashed remove per absent name cost ~2,000 instructions per request:
    // every HTTP/1.1 response carries `Connection: keep-alive`).
    let mut present = hop_bits(headers);
    if present == 0 {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        if let Some(conn) = headers.get(header::CONNECTION).cloned()
            && let Ok(conn) = conn.to_str()
        {
            for name in conn.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if keep_upgrade && name.eq_ignore_ascii_case("upgrade") {
                    continue;
                }
                // why: the usual tokens (`keep-alive`, `close`, `upgrade`, `te`) name no field to
                // remove beyond the hop-by-hop ones; made into a `HeaderName`, `keep-alive` (not a
                // standard name) cost an allocation per response (measured: ~450 instructions).
                if is_hop_or_close_token(name.as_bytes()) {
                    continue;
                }
                let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else { continue };
                match hop_bit(&name) {
                    // `TE: trailers` is kept below; `Connection` itself is handled below.
                    TE_BIT | CONNECTION_BIT => {}
                    // A hop-by-hop name: removed below when present.
                    bit if bit != 0 => {}
                    _ => {
                        headers.remove(name);
                    }
                }
            }
        }
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(header::CONNECTION);
        }
    }
    if keep_upgrade {
        present &= !UPGRADE_BIT;
    }
    let always: [(u8, &HeaderName); 6] = [
        (KEEP_ALIVE_BIT, &KEEP_ALIVE),
        (PROXY_CONNECTION_BIT, &PROXY_CONNECTION),
        (PROXY_AUTHORIZATION_BIT, &header::PROXY_AUTHORIZATION),
        (TRAILER_BIT, &header::TRAILER),
        (TRANSFER_ENCODING_BIT, &header::TRANSFER_ENCODING),
        (UPGRADE_BIT, &header::UPGRADE),
    ];
    for (bit, name) in always {
        if present & bit != 0 {
            headers.remove(name);
        }
    }
    if present & TE_BIT != 0
        && let Some(te) = headers.get(header::TE)
    {
        let trailers = te.to_str().map(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("trailers")));
        if trailers.unwrap_or(false) {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Is this an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`)?
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))).unwrap_or(false)
        })
}

/// Append the client's address to `x-forwarded-for`: one allocation, for the value.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    // why: an IPv6 address is at most 45 bytes written out; format into the stack and copy once.
    let mut ip = [0u8; 48];
    let len = match client {
        // why: `Display` for IPv4 goes through `fmt` twice (~1,000 instructions per request).
        IpAddr::V4(v4) => write_ipv4(v4, &mut ip),
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let mut w = &mut ip[..];
            if write!(w, "{client}").is_err() {
                return;
            }
            48 - w.len()
        }
    };
    let ip = &ip[..len];
    let value = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) if !prev.is_empty() => {
            let mut buf = bytes::BytesMut::with_capacity(prev.len() + 2 + ip.len());
            buf.extend_from_slice(prev.as_bytes());
            buf.extend_from_slice(b", ");
            buf.extend_from_slice(ip);
            HeaderValue::from_maybe_shared(buf.freeze())
        }
        _ => HeaderValue::from_bytes(ip),
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// `a.b.c.d` into `out` (at least 15 bytes); returns the length.
pub(crate) fn write_ipv4(ip: std::net::Ipv4Addr, out: &mut [u8]) -> usize {
    let mut i = 0;
    for (k, octet) in ip.octets().into_iter().enumerate() {
        if k > 0 {
            out[i] = b'.';
            i += 1;
        }
        if octet >= 100 {
            out[i] = b'0' + octet / 100;
            i += 1;
        }
        if octet >= 10 {
            out[i] = b'0' + octet / 10 % 10;
            i += 1;
        }
        out[i] = b'0' + octet % 10;
        i += 1;
    }
    i
}

/// Return the request id, generating a UUIDv4 one when the caller sent none.
///
/// The value is marked sensitive, which only tells an HTTP/2 encoder not to index it: a
/// request id is unique per request, so adding it to the HPACK dynamic table evicts entries
/// that repeat and makes every later encode of the name walk all the ids already indexed.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get_mut(&X_REQUEST_ID) {
        v.set_sensitive(true);
        return v.clone();
    }
    let mut v = new_request_id();
    v.set_sensitive(true);
    headers.insert(X_REQUEST_ID.clone(), v.clone());
    v
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    n = (n & !(0xf << 76)) | (0x4 << 76); // version 4
    n = (n & !(0x3 << 62)) | (0x2 << 62); // variant 10
    // why: 8-4-4-4-12 hex digits written into the stack, copied once into the value
    // (this runs for every request that arrives without an id).
    let mut out = [0u8; 36];
    let mut i = 0;
    for nibble in (0..32).rev() {
        if matches!(i, 8 | 13 | 18 | 23) {
            out[i] = b'-';
            i += 1;
        }
        out[i] = HEX[((n >> (nibble * 4)) & 0xf) as usize];
        i += 1;
    }
    // why `from_owner`: a value copied from a slice is a vector the first clone (the access
    // log's copy) turns into a shared buffer with a second allocation; an owner is shared from
    // the start (one allocation).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out)).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn upgrade_headers_survive_for_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().unwrap());
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, ::1");
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(&id.to_str().unwrap()[14..15], "4");
        assert_eq!(ensure_request_id(&mut h), id);
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        for _ in 0..1000 {
            let id = new_request_id();
            let s = id.to_str().unwrap();
            let u = uuid_fields(s);
            assert_eq!(u.iter().map(|f| f.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{s}");
            assert!(s.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{s}");
            assert_eq!(&u[2][..1], "4", "version nibble of {s}");
            assert!(matches!(&u[3][..1], "8" | "9" | "a" | "b"), "variant of {s}");
        }
        assert_ne!(new_request_id(), new_request_id());
    }

    fn uuid_fields(s: &str) -> Vec<&str> {
        s.split('-').collect()
    }

    #[test]
    fn forwarded_for_empty_previous_value_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static(""));
        append_forwarded_for(&mut h, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff");
        append_forwarded_for(&mut h, "::ffff:192.168.100.200".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff, ::ffff:192.168.100.200");
    }

    #[test]
    fn ipv4_is_written_as_display_writes_it() {
        let mut out = [0u8; 16];
        let fixed = ["0.0.0.0", "255.255.255.255", "10.20.100.9", "127.0.0.1", "1.10.100.199"];
        for ip in fixed.iter().map(|s| s.parse::<std::net::Ipv4Addr>().unwrap()) {
            let n = write_ipv4(ip, &mut out);
            assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), ip.to_string());
        }
        for _ in 0..10_000 {
            let ip = std::net::Ipv4Addr::from(fastrand::u32(..));
            let n = write_ipv4(ip, &mut out);
            assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), ip.to_string());
        }
    }

    /// The strip before it removed only what is present: a hashed remove per hop-by-hop name.
    fn reference_strip(headers: &mut HeaderMap, keep_upgrade: bool) {
        if let Some(conn) = headers.get(header::CONNECTION).cloned() {
            if let Ok(conn) = conn.to_str() {
                for name in conn.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if keep_upgrade && name.eq_ignore_ascii_case("upgrade") {
                        continue;
                    }
                    if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                        && name != header::TE
                    {
                        headers.remove(name);
                    }
                }
            }
            if keep_upgrade {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            } else {
                headers.remove(header::CONNECTION);
            }
        }
        for n in [&KEEP_ALIVE, &PROXY_CONNECTION, &header::PROXY_AUTHORIZATION, &header::TRAILER] {
            headers.remove(n);
        }
        headers.remove(header::TRANSFER_ENCODING);
        if !keep_upgrade {
            headers.remove(header::UPGRADE);
        }
        if let Some(te) = headers.get(header::TE) {
            let trailers = te.to_str().map(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("trailers")));
            if trailers.unwrap_or(false) {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            } else {
                headers.remove(header::TE);
            }
        }
    }

    #[test]
    fn strip_agrees_with_removing_every_hop_by_hop_name() {
        let names = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "te",
            "x-secret",
            "host",
            "content-length",
            "x-keep",
        ];
        let tokens = [
            "keep-alive",
            "close",
            "upgrade",
            "Upgrade",
            "te",
            "x-secret",
            "X-Secret",
            "host",
            "connection",
            "bad name",
            "",
            " trailers ",
            "trailer",
        ];
        let values = ["trailers", "trailers, deflate", "deflate", "websocket", "chunked", "1"];
        for _ in 0..20_000 {
            let mut h = HeaderMap::new();
            for _ in 0..fastrand::usize(0..6) {
                let name = names[fastrand::usize(..names.len())];
                let value = if name == "connection" {
                    let n = fastrand::usize(1..4);
                    (0..n).map(|_| tokens[fastrand::usize(..tokens.len())]).collect::<Vec<_>>().join(",")
                } else {
                    values[fastrand::usize(..values.len())].to_string()
                };
                h.append(HeaderName::from_static(name), HeaderValue::from_str(&value).unwrap());
            }
            let keep_upgrade = fastrand::bool();
            let (mut new, mut old) = (h.clone(), h.clone());
            strip_hop_by_hop(&mut new, keep_upgrade);
            reference_strip(&mut old, keep_upgrade);
            assert_eq!(new, old, "{h:?} keep_upgrade={keep_upgrade}");
        }
    }

    #[test]
    fn a_response_with_only_connection_keep_alive_loses_only_that() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h[header::CONTENT_LENGTH], "5");
    }
}
