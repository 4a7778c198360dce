//! The static table (RFC 7541 Appendix A) and the look-ups the encoder makes in it.

use http::HeaderName;
use http::header;

use super::Name;

/// How many entries the static table has; the dynamic table's indices start after it.
pub(crate) const STATIC_LEN: usize = 61;

/// The static table, index 1 first. Names are the `http` crate's constants, so a field
/// decoded from the static table costs no parsing.
pub(crate) static STATIC: [(Name, &[u8]); STATIC_LEN] = [
    (Name::Authority, b""),
    (Name::Method, b"GET"),
    (Name::Method, b"POST"),
    (Name::Path, b"/"),
    (Name::Path, b"/index.html"),
    (Name::Scheme, b"http"),
    (Name::Scheme, b"https"),
    (Name::Status, b"200"),
    (Name::Status, b"204"),
    (Name::Status, b"206"),
    (Name::Status, b"304"),
    (Name::Status, b"400"),
    (Name::Status, b"404"),
    (Name::Status, b"500"),
    (Name::Header(header::ACCEPT_CHARSET), b""),
    (Name::Header(header::ACCEPT_ENCODING), b"gzip, deflate"),
    (Name::Header(header::ACCEPT_LANGUAGE), b""),
    (Name::Header(header::ACCEPT_RANGES), b""),
    (Name::Header(header::ACCEPT), b""),
    (Name::Header(header::ACCESS_CONTROL_ALLOW_ORIGIN), b""),
    (Name::Header(header::AGE), b""),
    (Name::Header(header::ALLOW), b""),
    (Name::Header(header::AUTHORIZATION), b""),
    (Name::Header(header::CACHE_CONTROL), b""),
    (Name::Header(header::CONTENT_DISPOSITION), b""),
    (Name::Header(header::CONTENT_ENCODING), b""),
    (Name::Header(header::CONTENT_LANGUAGE), b""),
    (Name::Header(header::CONTENT_LENGTH), b""),
    (Name::Header(header::CONTENT_LOCATION), b""),
    (Name::Header(header::CONTENT_RANGE), b""),
    (Name::Header(header::CONTENT_TYPE), b""),
    (Name::Header(header::COOKIE), b""),
    (Name::Header(header::DATE), b""),
    (Name::Header(header::ETAG), b""),
    (Name::Header(header::EXPECT), b""),
    (Name::Header(header::EXPIRES), b""),
    (Name::Header(header::FROM), b""),
    (Name::Header(header::HOST), b""),
    (Name::Header(header::IF_MATCH), b""),
    (Name::Header(header::IF_MODIFIED_SINCE), b""),
    (Name::Header(header::IF_NONE_MATCH), b""),
    (Name::Header(header::IF_RANGE), b""),
    (Name::Header(header::IF_UNMODIFIED_SINCE), b""),
    (Name::Header(header::LAST_MODIFIED), b""),
    (Name::Header(header::LINK), b""),
    (Name::Header(header::LOCATION), b""),
    (Name::Header(header::MAX_FORWARDS), b""),
    (Name::Header(header::PROXY_AUTHENTICATE), b""),
    (Name::Header(header::PROXY_AUTHORIZATION), b""),
    (Name::Header(header::RANGE), b""),
    (Name::Header(header::REFERER), b""),
    (Name::Header(header::REFRESH), b""),
    (Name::Header(header::RETRY_AFTER), b""),
    (Name::Header(header::SERVER), b""),
    (Name::Header(header::SET_COOKIE), b""),
    (Name::Header(header::STRICT_TRANSPORT_SECURITY), b""),
    (Name::Header(header::TRANSFER_ENCODING), b""),
    (Name::Header(header::USER_AGENT), b""),
    (Name::Header(header::VARY), b""),
    (Name::Header(header::VIA), b""),
    (Name::Header(header::WWW_AUTHENTICATE), b""),
];

/// The static entry at `index` (1 to 61).
pub(crate) fn get(index: usize) -> Option<&'static (Name, &'static [u8])> {
    STATIC.get(index.checked_sub(1)?)
}

/// The static index of a pseudo-header name, and of the entry that also has this value.
pub(crate) fn pseudo(name: &Name, value: &[u8]) -> (Option<usize>, Option<usize>) {
    match name {
        Name::Authority => (Some(1), None),
        Name::Method => (
            Some(2),
            match value {
                b"GET" => Some(2),
                b"POST" => Some(3),
                _ => None,
            },
        ),
        Name::Path => (
            Some(4),
            match value {
                b"/" => Some(4),
                b"/index.html" => Some(5),
                _ => None,
            },
        ),
        Name::Scheme => (
            Some(6),
            match value {
                b"http" => Some(6),
                b"https" => Some(7),
                _ => None,
            },
        ),
        Name::Status => (
            Some(8),
            match value {
                b"200" => Some(8),
                b"204" => Some(9),
                b"206" => Some(10),
                b"304" => Some(11),
                b"400" => Some(12),
                b"404" => Some(13),
                b"500" => Some(14),
                _ => None,
            },
        ),
        _ => (None, None),
    }
}

/// The static index of a regular name, and of the entry that also has this value (only
/// `accept-encoding: gzip, deflate` has one).
///
/// why by length first: one integer match picks the few names of that length, and only
/// those are compared; most lengths have one or two (a linear scan would compare up to 47).
pub(crate) fn header(name: &HeaderName, value: &[u8]) -> (Option<usize>, Option<usize>) {
    let s = name.as_str();
    let index = match s.len() {
        3 => match s {
            "age" => 21,
            "via" => 60,
            _ => return (None, None),
        },
        4 => match s {
            "date" => 33,
            "etag" => 34,
            "from" => 37,
            "host" => 38,
            "link" => 45,
            "vary" => 59,
            _ => return (None, None),
        },
        5 => match s {
            "allow" => 22,
            "range" => 50,
            _ => return (None, None),
        },
        6 => match s {
            "accept" => 19,
            "cookie" => 32,
            "expect" => 35,
            "server" => 54,
            _ => return (None, None),
        },
        7 => match s {
            "expires" => 36,
            "referer" => 51,
            "refresh" => 52,
            _ => return (None, None),
        },
        8 => match s {
            "if-match" => 39,
            "if-range" => 42,
            "location" => 46,
            _ => return (None, None),
        },
        10 => match s {
            "set-cookie" => 55,
            "user-agent" => 58,
            _ => return (None, None),
        },
        11 => match s {
            "retry-after" => 53,
            _ => return (None, None),
        },
        12 => match s {
            "content-type" => 31,
            "max-forwards" => 47,
            _ => return (None, None),
        },
        13 => match s {
            "accept-ranges" => 18,
            "authorization" => 23,
            "cache-control" => 24,
            "content-range" => 30,
            "if-none-match" => 41,
            "last-modified" => 44,
            _ => return (None, None),
        },
        14 => match s {
            "accept-charset" => 15,
            "content-length" => 28,
            _ => return (None, None),
        },
        15 => match s {
            "accept-encoding" => {
                return (Some(16), (value == b"gzip, deflate").then_some(16));
            }
            "accept-language" => 17,
            _ => return (None, None),
        },
        16 => match s {
            "content-encoding" => 26,
            "content-language" => 27,
            "content-location" => 29,
            "www-authenticate" => 61,
            _ => return (None, None),
        },
        17 => match s {
            "if-modified-since" => 40,
            "transfer-encoding" => 57,
            _ => return (None, None),
        },
        18 => match s {
            "proxy-authenticate" => 48,
            _ => return (None, None),
        },
        19 => match s {
            "content-disposition" => 25,
            "if-unmodified-since" => 43,
            "proxy-authorization" => 49,
            _ => return (None, None),
        },
        25 => match s {
            "strict-transport-security" => 56,
            _ => return (None, None),
        },
        27 => match s {
            "access-control-allow-origin" => 20,
            _ => return (None, None),
        },
        _ => return (None, None),
    };
    (Some(index), None)
}
