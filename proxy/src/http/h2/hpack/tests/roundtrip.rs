//! The encoder: its policy (indexing, sensitive fields, sizes, size updates) and random field
//! lists encoded then decoded over many blocks with small tables.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use super::super::{Decoder, Encoder, Name, Pseudo, table as static_table};
use super::{decode_all, table};

fn encode_one(e: &mut Encoder, name: &str, value: &str, sensitive: bool) -> Bytes {
    let name = Name::parse(Bytes::copy_from_slice(name.as_bytes())).0;
    let mut dst = BytesMut::new();
    e.encode_fields([(&name, value.as_bytes(), sensitive)], &mut dst);
    dst.freeze()
}

#[test]
fn sensitive_fields_are_never_indexed() {
    let mut e = Encoder::new();
    let mut d = Decoder::default();
    // A static name: never-indexed with name index 23 (authorization): 0001 1111 + 8.
    let block = encode_one(&mut e, "authorization", "Bearer x", true);
    assert_eq!(block[..2], [0x1f, 0x08]);
    // A new name.
    let block2 = encode_one(&mut e, "x-request-id", "1234", true);
    assert_eq!(block2[0], 0x10);
    // Even when the static table has the exact field.
    let block3 = encode_one(&mut e, ":method", "GET", true);
    assert_eq!(block3[0], 0x12);
    assert_eq!(e.table_size(), 0);
    for b in [block, block2, block3] {
        let fields = decode_all(&mut d, &b);
        assert!(fields[0].sensitive);
    }
    assert_eq!(d.table_size(), 0);
    // A sensitive value of a name in the dynamic table uses the name's index.
    encode_one(&mut e, "x-token", "a", false);
    let block = encode_one(&mut e, "x-token", "b", true);
    assert_eq!(block[..2], [0x1f, 62 - 15]);
}

#[test]
fn credentials_are_never_indexed_unless_a_cookie_is_long() {
    let mut e = Encoder::new();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer abc"));
    headers.insert("proxy-authorization", HeaderValue::from_static("Basic eDp5"));
    headers.insert("cookie", HeaderValue::from_static("sid=42"));
    headers.insert("x-plain", HeaderValue::from_static("v"));
    let mut dst = BytesMut::new();
    e.encode(Pseudo::Trailers, &headers, &mut dst);
    // Only the plain field entered the table.
    assert_eq!(e.table_entries().count(), 1);
    let mut d = Decoder::default();
    let fields = decode_all(&mut d, &dst.freeze());
    let never: Vec<_> = fields.iter().filter(|f| f.sensitive).map(|f| f.name.as_bytes().to_vec()).collect();
    assert_eq!(never, [&b"authorization"[..], b"proxy-authorization", b"cookie"]);
    // A cookie of 20 bytes or more is indexed as any field.
    let mut headers = HeaderMap::new();
    headers.insert("cookie", HeaderValue::from_static("session=0123456789abcdef"));
    let mut dst = BytesMut::new();
    e.encode(Pseudo::Trailers, &headers, &mut dst);
    assert_eq!(e.table_entries().count(), 2);
}

#[test]
fn indexing_and_sizes() {
    let mut e = Encoder::new();
    // A static exact match is one byte; a dynamic one too, once indexed.
    assert_eq!(&encode_one(&mut e, ":status", "200", false)[..], [0x88]);
    assert_eq!(&encode_one(&mut e, "accept-encoding", "gzip, deflate", false)[..], [0x90]);
    let first = encode_one(&mut e, "x-custom", "hello", false);
    assert_eq!(first[0], 0x40);
    assert_eq!(&encode_one(&mut e, "x-custom", "hello", false)[..], [0xbe]);
    // A field larger than the table is sent without indexing and leaves the table alone.
    let big = "v".repeat(4096);
    let block = encode_one(&mut e, "x-big", &big, false);
    assert_eq!(block[0], 0x00);
    assert_eq!(e.table_entries().count(), 1);
    // A field that fits exactly is indexed, evicting everything else.
    let fits = "v".repeat(4096 - 32 - 5);
    let block = encode_one(&mut e, "x-fit", &fits, false);
    assert_eq!(block[0], 0x40);
    assert_eq!(e.table_size(), 4096);
    assert_eq!(e.table_entries().count(), 1);
}

/// Many entries under one name: each is still found by its value (a look-up does not walk
/// the entries with that name, and finds older ones).
#[test]
fn many_entries_with_one_name() {
    let mut e = Encoder::new();
    for i in 0..100 {
        encode_one(&mut e, "x-a", &format!("{i:02}"), false);
    }
    assert_eq!(e.table_entries().count(), 100);
    // "00" is the oldest: index 62 + 99 = 161 (127 + 34).
    assert_eq!(&encode_one(&mut e, "x-a", "00", false)[..], [0xff, 34]);
    assert_eq!(&encode_one(&mut e, "x-a", "99", false)[..], [0xbe]);
    // A new value under the name uses the newest entry's name index.
    let block = encode_one(&mut e, "x-a", "new", false);
    assert_eq!(block[0], 0x40 | 62);
}

#[test]
fn table_size_updates() {
    let mut e = Encoder::new();
    let mut d = Decoder::default();
    decode_all(&mut d, &encode_one(&mut e, "x-a", "b", false));
    // Down then up between two blocks: both updates, the smallest first (0 then 100).
    e.set_max_table_size(0);
    e.set_max_table_size(100);
    d.set_max_table_size(100);
    let block = encode_one(&mut e, "x-c", "d", false);
    assert_eq!(block[..4], [0x20, 0x3f, 100 - 31, 0x40]);
    decode_all(&mut d, &block);
    assert_eq!(table(&d), [("x-c".to_string(), "d".to_string())]);
    // Unchanged: no update.
    e.set_max_table_size(100);
    assert_eq!(encode_one(&mut e, "x-c", "d", false)[0], 0xbe);
    // Up only: one update; above our cap: the cap.
    e.set_max_table_size(1 << 20);
    d.set_max_table_size(1 << 20);
    let block = encode_one(&mut e, "x-c", "d", false);
    assert_eq!(block[..4], [0x3f, 0xe1, 0x1f, 0xbe]);
    decode_all(&mut d, &block);
    assert_eq!(d.table_capacity(), 4096);
    // Down to a size that keeps one entry of two.
    decode_all(&mut d, &encode_one(&mut e, "x-e", "f", false));
    e.set_max_table_size(40);
    d.set_max_table_size(40);
    decode_all(&mut d, &encode_one(&mut e, "x-e", "f", false));
    assert_eq!(table(&d), [("x-e".to_string(), "f".to_string())]);
    assert_eq!(e.table_entries().count(), 1);
}

/// A random header value: printable, sometimes from a small pool (repeats hit the table).
fn value(rng: &mut fastrand::Rng) -> String {
    const POOL: [&str; 6] = ["", "gzip", "text/html; charset=utf-8", "no-cache", "0", "Mon, 21 Oct 2013 20:13:21 GMT"];
    if rng.bool() {
        return POOL[rng.usize(..POOL.len())].to_string();
    }
    let len = rng.usize(1..40);
    let mut v: String = (0..len).map(|_| rng.char(' '..='~')).collect();
    if v.starts_with(' ') || v.ends_with(' ') {
        v = format!("x{}x", v.trim());
    }
    v
}

fn name(rng: &mut fastrand::Rng) -> HeaderName {
    if rng.bool() {
        loop {
            let i = rng.usize(15..=static_table::STATIC_LEN);
            if let Name::Header(h) = &static_table::get(i).unwrap().0 {
                return h.clone();
            }
        }
    }
    let len = rng.usize(1..12);
    let s: String = (0..len).map(|_| rng.char('a'..='z')).collect();
    HeaderName::from_bytes(format!("x-{s}").as_bytes()).unwrap()
}

/// Random lists through `Encoder::encode` (a header map, with a status or request line) and
/// through `encode_fields`, over many blocks with small tables whose limit changes between
/// blocks: the decoded lists are the lists (names, values, sensitivity), and both ends' tables
/// agree after each block.
#[test]
fn random_lists_round_trip() {
    let mut rng = fastrand::Rng::with_seed(0x4a7c);
    for round in 0..20 {
        let mut e = Encoder::new();
        let mut d = Decoder::default();
        for block_no in 0..30 {
            if rng.u8(..) < 40 {
                let limit = [0, 50, 64, 100, 200, 300, 4096][rng.usize(..7)];
                if rng.bool() {
                    e.set_max_table_size(rng.usize(0..limit + 1));
                }
                e.set_max_table_size(limit);
                d.set_max_table_size(limit);
            }
            let mut expected: Vec<(Vec<u8>, Vec<u8>, bool)> = Vec::new();
            let mut dst = BytesMut::new();
            if rng.bool() {
                let mut headers = HeaderMap::new();
                for _ in 0..rng.usize(0..12) {
                    let mut v = HeaderValue::from_str(&value(&mut rng)).unwrap();
                    v.set_sensitive(rng.u8(..) < 30);
                    headers.append(name(&mut rng), v);
                }
                let pseudo = if rng.bool() {
                    let status = StatusCode::from_u16(rng.u16(100..600)).unwrap();
                    expected.push((b":status".to_vec(), status.as_str().as_bytes().to_vec(), false));
                    Pseudo::Response { status }
                } else {
                    for (n, v) in
                        [(":method", "POST"), (":scheme", "https"), (":authority", "a.example"), (":path", "/x?y")]
                    {
                        expected.push((n.as_bytes().to_vec(), v.as_bytes().to_vec(), false));
                    }
                    Pseudo::Request {
                        method: &Method::POST,
                        scheme: "https",
                        authority: Some("a.example"),
                        path: "/x?y",
                        protocol: None,
                    }
                };
                for (n, v) in &headers {
                    // Credentials go never-indexed whatever their mark (`Encoder::encode`).
                    let credential = n == http::header::AUTHORIZATION
                        || n == http::header::PROXY_AUTHORIZATION
                        || (n == http::header::COOKIE && v.len() < 20);
                    expected.push((
                        n.as_str().as_bytes().to_vec(),
                        v.as_bytes().to_vec(),
                        v.is_sensitive() || credential,
                    ));
                }
                e.encode(pseudo, &headers, &mut dst);
            } else {
                let mut fields: Vec<(Name, Vec<u8>, bool)> = Vec::new();
                for _ in 0..rng.usize(0..12) {
                    fields.push((Name::Header(name(&mut rng)), value(&mut rng).into_bytes(), rng.u8(..) < 30));
                }
                for (n, v, s) in &fields {
                    expected.push((n.as_bytes().to_vec(), v.clone(), *s));
                }
                e.encode_fields(fields.iter().map(|(n, v, s)| (n, &v[..], *s)), &mut dst);
            }
            let got: Vec<_> = decode_all(&mut d, &dst.freeze())
                .into_iter()
                .map(|f| {
                    assert_eq!(f.malformed, None);
                    (f.name.as_bytes().to_vec(), f.value.to_vec(), f.sensitive)
                })
                .collect();
            assert_eq!(got, expected, "round {round}, block {block_no}");
            let ours: Vec<_> = e.table_entries().map(|(n, v)| (n.clone(), v.clone())).collect();
            let theirs: Vec<_> = d.table_entries().map(|(n, v)| (n.clone(), v.clone())).collect();
            assert_eq!(ours, theirs, "round {round}, block {block_no}");
            assert_eq!(e.table_size(), d.table_size());
        }
    }
}
