//! Tests of the HPACK codec: RFC 7541 Appendix C, Huffman, decoder errors, malformed fields,
//! size limits, round trips, and the h2 crate as a real peer.

mod decoding;
mod huffman;
mod interop;
mod rfc;
mod roundtrip;

use bytes::Bytes;

use super::{Decoded, Decoder, Field};

/// Bytes from a hex dump as RFC 7541 prints them (spaces and newlines ignored).
pub(super) fn hex(s: &str) -> Bytes {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex: {s}");
    let nibble = |c: u8| (c as char).to_digit(16).unwrap() as u8;
    digits.chunks(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])).collect::<Vec<u8>>().into()
}

/// Decodes a block with no list size limit, expecting success; the fields.
pub(super) fn decode_all(d: &mut Decoder, block: &Bytes) -> Vec<Field> {
    let mut fields = Vec::new();
    let outcome = d.decode(block, usize::MAX, |f| fields.push(f)).unwrap();
    assert!(matches!(outcome, Decoded::Complete { .. }), "{outcome:?}");
    fields
}

/// The fields as (name, value) strings.
pub(super) fn pairs(fields: &[Field]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|f| {
            (String::from_utf8_lossy(f.name.as_bytes()).into_owned(), String::from_utf8_lossy(&f.value).into_owned())
        })
        .collect()
}

/// The dynamic table of a decoder as (name, value) strings, newest first.
pub(super) fn table(d: &Decoder) -> Vec<(String, String)> {
    d.table_entries()
        .map(|(n, v)| (String::from_utf8_lossy(n.as_bytes()).into_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// (name, value) string pairs from literals.
pub(super) fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}
