//! Every example of RFC 7541 Appendix C, decoded from the RFC's bytes (fields, then the
//! dynamic table and its size after each block), and encoded by our encoder (its output must
//! decode back; where our indexing policy is the RFC's, the bytes must be the RFC's).

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::super::primitive::{decode_int, encode_int};
use super::super::{Decoder, Encoder, Name, Pseudo};
use super::{decode_all, hex, owned, pairs, table};

/// A header list, the dynamic table after it (newest first), and the table's size.
type Expected = (Vec<(String, String)>, Vec<(String, String)>, usize);

#[test]
fn c1_integers() {
    // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix; C.1.3: 42 at an octet
    // boundary (8-bit prefix).
    for (value, prefix, bytes) in [(10, 5, "0a"), (1337, 5, "1f9a0a"), (42, 8, "2a")] {
        let mut dst = BytesMut::new();
        encode_int(value, prefix, 0, &mut dst);
        assert_eq!(&dst[..], &hex(bytes)[..], "{value} with a {prefix}-bit prefix");
        let mut pos = 0;
        assert_eq!(decode_int(&dst, &mut pos, prefix), Ok(value as u64));
        assert_eq!(pos, dst.len());
    }
    // The bits above the prefix are the representation's flags, not the integer's.
    let mut pos = 0;
    assert_eq!(decode_int(&[0xea], &mut pos, 5), Ok(10));
}

#[test]
fn c2_1_literal_with_indexing() {
    let mut d = Decoder::default();
    let fields = decode_all(&mut d, &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"));
    assert_eq!(pairs(&fields), owned(&[("custom-key", "custom-header")]));
    assert!(!fields[0].sensitive);
    assert_eq!(table(&d), owned(&[("custom-key", "custom-header")]));
    assert_eq!(d.table_size(), 55);
}

#[test]
fn c2_2_literal_without_indexing() {
    let mut d = Decoder::default();
    let fields = decode_all(&mut d, &hex("040c 2f73 616d 706c 652f 7061 7468"));
    assert_eq!(pairs(&fields), owned(&[(":path", "/sample/path")]));
    assert_eq!(fields[0].name, Name::Path);
    assert!(!fields[0].sensitive);
    assert_eq!(d.table_size(), 0);
    assert!(table(&d).is_empty());
}

#[test]
fn c2_3_literal_never_indexed() {
    let mut d = Decoder::default();
    let fields = decode_all(&mut d, &hex("1008 7061 7373 776f 7264 0673 6563 7265 74"));
    assert_eq!(pairs(&fields), owned(&[("password", "secret")]));
    assert!(fields[0].sensitive);
    assert_eq!(d.table_size(), 0);
}

#[test]
fn c2_4_indexed() {
    let mut d = Decoder::default();
    let fields = decode_all(&mut d, &hex("82"));
    assert_eq!(pairs(&fields), owned(&[(":method", "GET")]));
    assert_eq!(fields[0].name, Name::Method);
    assert_eq!(d.table_size(), 0);
}

/// The requests of C.3 and C.4: the fields, and the table after each.
fn requests() -> [Expected; 3] {
    let r1 = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
    let r2 = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ];
    let r3 = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    [
        (owned(&r1), owned(&[(":authority", "www.example.com")]), 57),
        (owned(&r2), owned(&[("cache-control", "no-cache"), (":authority", "www.example.com")]), 110),
        (
            owned(&r3),
            owned(&[("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")]),
            164,
        ),
    ]
}

const C3: [&str; 3] = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
];

const C4: [&str; 3] = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
];

fn check_requests(blocks: [&str; 3]) {
    let mut d = Decoder::default();
    for (block, (fields, entries, size)) in blocks.iter().zip(requests()) {
        assert_eq!(pairs(&decode_all(&mut d, &hex(block))), fields, "{block}");
        assert_eq!(table(&d), entries, "{block}");
        assert_eq!(d.table_size(), size, "{block}");
    }
}

#[test]
fn c3_requests_without_huffman() {
    check_requests(C3);
}

#[test]
fn c4_requests_with_huffman() {
    check_requests(C4);
}

/// Our encoder indexes what the RFC's examples index, and Huffman-codes every string of C.4
/// (each is shorter coded): its blocks are C.4's, byte for byte, and decode to the requests.
#[test]
fn c4_encoded_requests_are_the_rfcs() {
    let mut e = Encoder::new();
    let mut d = Decoder::default();
    for (expected, (fields, entries, size)) in C4.iter().zip(requests()) {
        let names: Vec<Name> =
            fields.iter().map(|(n, _)| Name::parse(Bytes::copy_from_slice(n.as_bytes())).0).collect();
        let mut dst = BytesMut::new();
        e.encode_fields(names.iter().zip(&fields).map(|(n, (_, v))| (n, v.as_bytes(), false)), &mut dst);
        assert_eq!(&dst[..], &hex(expected)[..], "{fields:?}");
        assert_eq!(pairs(&decode_all(&mut d, &dst.freeze())), fields);
        assert_eq!(table(&d), entries);
        assert_eq!(e.table_size(), size);
        assert_eq!(e.table_entries().count(), entries.len());
    }
}

/// The responses of C.5 and C.6: the fields, and the table after each.
fn responses() -> [Expected; 3] {
    let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
    let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
    let location = "https://www.example.com";
    let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    [
        (
            owned(&[(":status", "302"), ("cache-control", "private"), ("date", date1), ("location", location)]),
            owned(&[("location", location), ("date", date1), ("cache-control", "private"), (":status", "302")]),
            222,
        ),
        (
            owned(&[(":status", "307"), ("cache-control", "private"), ("date", date1), ("location", location)]),
            owned(&[(":status", "307"), ("location", location), ("date", date1), ("cache-control", "private")]),
            222,
        ),
        (
            owned(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", date2),
                ("location", location),
                ("content-encoding", "gzip"),
                ("set-cookie", cookie),
            ]),
            owned(&[("set-cookie", cookie), ("content-encoding", "gzip"), ("date", date2)]),
            215,
        ),
    ]
}

const C5: [&str; 3] = [
    "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d
     546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "4803 3330 37c1 c0bf",
    "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f
     6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b
     2076 6572 7369 6f6e 3d31",
];

const C6: [&str; 3] = [
    "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7
     8f0b 97c8 e9ae 82ae 43d3",
    "4883 640e ffc1 c0bf",
    "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335
     dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
];

fn check_responses(blocks: [&str; 3]) {
    // SETTINGS_HEADER_TABLE_SIZE is 256 in these examples: evictions.
    let mut d = Decoder::new(256);
    for (block, (fields, entries, size)) in blocks.iter().zip(responses()) {
        assert_eq!(pairs(&decode_all(&mut d, &hex(block))), fields, "{block}");
        assert_eq!(table(&d), entries, "{block}");
        assert_eq!(d.table_size(), size, "{block}");
    }
}

#[test]
fn c5_responses_without_huffman() {
    check_responses(C5);
}

#[test]
fn c6_responses_with_huffman() {
    check_responses(C6);
}

/// The responses through `Encoder::encode` with a `HeaderMap`, the peer's table set to 256:
/// the first block starts with that size update (`3f e1 01`), then the blocks are C.6's but
/// for one string: C.6.2 Huffman-codes "307" in 3 bytes, no shorter than as is, and we send
/// it as is (Huffman only when shorter).
#[test]
fn c6_encoded_responses_are_the_rfcs() {
    let mut e = Encoder::new();
    e.set_max_table_size(256);
    let mut d = Decoder::default();
    d.set_max_table_size(256);
    for (i, (expected, (fields, entries, size))) in C6.iter().zip(responses()).enumerate() {
        let status: StatusCode = fields[0].1.parse().unwrap();
        let mut headers = HeaderMap::new();
        for (n, v) in &fields[1..] {
            headers.append(header::HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let mut dst = BytesMut::new();
        e.encode(Pseudo::Response { status }, &headers, &mut dst);
        let expected = match i {
            0 => [&hex("3fe101")[..], &hex(expected)[..]].concat(),
            1 => hex("4803 3330 37c1 c0bf").to_vec(),
            _ => hex(expected).to_vec(),
        };
        assert_eq!(&dst[..], &expected[..], "response {}", i + 1);
        assert_eq!(pairs(&decode_all(&mut d, &dst.freeze())), fields);
        assert_eq!(table(&d), entries);
        assert_eq!(d.table_capacity(), 256);
        assert_eq!(e.table_size(), size);
    }
}

/// C.3 and C.5 are the same lists sent without Huffman coding; our encoder codes them, so
/// only check that its blocks decode to the lists with the RFC's tables.
#[test]
fn c3_c5_lists_encoded_decode_back() {
    for (capacity, lists) in [(4096, requests()), (256, responses())] {
        let mut e = Encoder::new();
        let mut d = Decoder::default();
        if capacity != 4096 {
            e.set_max_table_size(capacity);
            d.set_max_table_size(capacity);
        }
        for (fields, entries, size) in lists {
            let names: Vec<Name> =
                fields.iter().map(|(n, _)| Name::parse(Bytes::copy_from_slice(n.as_bytes())).0).collect();
            let mut dst = BytesMut::new();
            e.encode_fields(names.iter().zip(&fields).map(|(n, (_, v))| (n, v.as_bytes(), false)), &mut dst);
            assert_eq!(pairs(&decode_all(&mut d, &dst.freeze())), fields);
            assert_eq!(table(&d), entries);
            assert_eq!(d.table_size(), size);
        }
    }
}
