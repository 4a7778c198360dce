//! The decoder: each broken encoding gives its error; malformed fields are reported and the
//! block goes on; the list size limit keeps the table in step; table size updates; where the
//! values live; names.

use bytes::{Bytes, BytesMut};
use http::header;

use super::super::huffman::HuffmanError;
use super::super::primitive::{PrimitiveError, decode_int, encode_int};
use super::super::{DecodeError, Decoded, Decoder, Malformed, Name, table as static_table};
use super::{decode_all, owned, pairs, table};

/// A literal with a new name, both strings sent as is; `first` is 0x40 (incremental
/// indexing), 0x00 (without indexing) or 0x10 (never indexed).
fn lit(out: &mut Vec<u8>, first: u8, name: &[u8], value: &[u8]) {
    out.push(first);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

fn decode_err(d: &mut Decoder, block: &[u8]) -> DecodeError {
    d.decode(&Bytes::copy_from_slice(block), usize::MAX, |_| {}).unwrap_err()
}

#[test]
fn bad_indices() {
    let mut d = Decoder::default();
    assert_eq!(decode_err(&mut d, &[0x80]), DecodeError::BadIndex { index: 0, dynamic: 0, at: 0 });
    // 62, the first dynamic index, with an empty table.
    assert_eq!(decode_err(&mut d, &[0x82, 0xbe]), DecodeError::BadIndex { index: 62, dynamic: 0, at: 1 });
    // A literal whose name index is past the table.
    assert_eq!(decode_err(&mut d, &[0x7e, 0x01, b'a']), DecodeError::BadIndex { index: 62, dynamic: 0, at: 0 });
    let mut d = Decoder::default();
    decode_all(&mut d, &Bytes::from_static(b"\x40\x01a\x01b"));
    assert_eq!(pairs(&decode_all(&mut d, &Bytes::from_static(&[0xbe]))), owned(&[("a", "b")]));
    assert_eq!(decode_err(&mut d, &[0xbf]), DecodeError::BadIndex { index: 63, dynamic: 1, at: 0 });
    // A huge index: 127 + 2^28-ish.
    assert!(matches!(decode_err(&mut d, &[0xff, 0xff, 0xff, 0xff, 0x7f]), DecodeError::BadIndex { .. }));
}

#[test]
fn integers_are_capped_at_2_pow_32() {
    let mut dst = BytesMut::new();
    encode_int(u32::MAX as usize, 7, 0x80, &mut dst);
    let mut pos = 0;
    assert_eq!(decode_int(&dst, &mut pos, 7), Ok(u64::from(u32::MAX)));
    let mut dst = BytesMut::new();
    encode_int(u32::MAX as usize + 1, 7, 0x80, &mut dst);
    let mut pos = 0;
    assert_eq!(decode_int(&dst, &mut pos, 7), Err(PrimitiveError::IntegerOverflow { at: 0 }));
    // An overlong run of continuation bytes that adds nothing.
    let mut pos = 0;
    assert_eq!(
        decode_int(&[0x7f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], &mut pos, 7),
        Err(PrimitiveError::IntegerOverflow { at: 0 })
    );
    let mut d = Decoder::default();
    assert_eq!(
        decode_err(&mut d, &[0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        DecodeError::Primitive(PrimitiveError::IntegerOverflow { at: 1 })
    );
}

#[test]
fn truncated_integers_and_strings() {
    let truncated = |at| DecodeError::Primitive(PrimitiveError::Truncated { at });
    let mut d = Decoder::default();
    // An integer whose continuation never ends.
    assert_eq!(decode_err(&mut d, &[0xff]), truncated(0));
    assert_eq!(decode_err(&mut d, &[0x82, 0xff, 0x80]), truncated(1));
    // A literal with an indexed name and no value.
    assert_eq!(decode_err(&mut d, &[0x82, 0x41]), truncated(2));
    // A string longer than what is left of the block.
    assert_eq!(decode_err(&mut d, &[0x40, 0x0a, b'a']), truncated(1));
    assert_eq!(decode_err(&mut d, &[0x00, 0x01, b'a', 0x02, b'b']), truncated(3));
    // A Huffman-coded string too.
    assert_eq!(decode_err(&mut d, &[0x00, 0x01, b'a', 0x85, 0x1f]), truncated(3));
    // Nothing of this changed the table.
    assert_eq!(d.table_size(), 0);
}

#[test]
fn bad_huffman() {
    let huffman = |at, source| DecodeError::Primitive(PrimitiveError::Huffman { at, source });
    let mut d = Decoder::default();
    // The name: 'a' then 11 ones.
    assert_eq!(decode_err(&mut d, &[0x40, 0x82, 0x1f, 0xff, 0x01, b'b']), huffman(1, HuffmanError::PaddingTooLong));
    // The value: 'a' then 000.
    assert_eq!(decode_err(&mut d, &[0x41, 0x81, 0x18]), huffman(1, HuffmanError::PaddingNotOnes));
    // The value: EOS.
    assert_eq!(decode_err(&mut d, &[0x82, 0x04, 0x84, 0xff, 0xff, 0xff, 0xff]), huffman(2, HuffmanError::Eos));
}

#[test]
fn size_updates() {
    let mut d = Decoder::new(256);
    // Two at the start of a block: 0, then 256 (31 + 225).
    let block = Bytes::from_static(&[0x20, 0x3f, 0xe1, 0x01, 0x40, 0x01, b'a', 0x01, b'b']);
    assert_eq!(pairs(&decode_all(&mut d, &block)), owned(&[("a", "b")]));
    assert_eq!((d.table_capacity(), d.table_size()), (256, 34));
    // Above our limit.
    assert_eq!(decode_err(&mut d, &[0x3f, 0xe2, 0x01]), DecodeError::SizeUpdateTooLarge { size: 257, max: 256 });
    // After a field.
    assert_eq!(decode_err(&mut d, &[0x82, 0x20]), DecodeError::SizeUpdateMisplaced { at: 1 });
    // A third at the start of a block: an encoder owes at most two (the smallest, the last).
    assert_eq!(decode_err(&mut d, &[0x20, 0x20, 0x20, 0x82]), DecodeError::SizeUpdateMisplaced { at: 2 });
    // To 0 empties the table; the block may hold nothing else.
    let mut d = Decoder::new(256);
    decode_all(&mut d, &Bytes::from_static(&[0x40, 0x01, b'a', 0x01, b'b']));
    decode_all(&mut d, &Bytes::from_static(&[0x20]));
    assert_eq!((d.table_capacity(), d.table_size()), (0, 0));
    // Back up to 256; an entry is added again.
    decode_all(&mut d, &Bytes::from_static(&[0x3f, 0xe1, 0x01, 0x40, 0x01, b'a', 0x01, b'b']));
    assert_eq!(table(&d), owned(&[("a", "b")]));
}

/// Lowered then raised again before the next block: the block's first update must reach the
/// smallest limit (RFC 7541 §4.2: what the lower limit evicted is gone), then may go back up.
#[test]
fn a_limit_lowered_then_raised_needs_the_smallest_first() {
    let mut d = Decoder::default();
    decode_all(&mut d, &Bytes::from_static(&[0x40, 0x01, b'a', 0x01, b'b']));
    d.set_max_table_size(0);
    d.set_max_table_size(4096);
    // Straight back to 4096 (31 + 4065 = 0x3f 0xe1 0x1f) skips the eviction.
    assert_eq!(decode_err(&mut d, &[0x3f, 0xe1, 0x1f, 0x82]), DecodeError::SizeUpdateTooLarge { size: 4096, max: 0 });
    // 0 then 4096: the table is emptied, then may grow again.
    let fields = decode_all(&mut d, &Bytes::from_static(&[0x20, 0x3f, 0xe1, 0x1f, 0x82]));
    assert_eq!(pairs(&fields), owned(&[(":method", "GET")]));
    assert_eq!((d.table_capacity(), d.table_size()), (4096, 0));
}

/// When our limit goes below the table's size, the next block must start with an update
/// within it (RFC 7541 §4.2).
#[test]
fn a_lowered_limit_needs_an_update() {
    let mut d = Decoder::default();
    decode_all(&mut d, &Bytes::from_static(&[0x40, 0x01, b'a', 0x01, b'b', 0x40, 0x01, b'c', 0x01, b'd']));
    assert_eq!(d.table_size(), 68);
    d.set_max_table_size(40);
    assert_eq!(decode_err(&mut d, &[0x82]), DecodeError::SizeUpdateMissing { max: 40 });
    assert_eq!(decode_err(&mut d, &[0x3f, 0x0a]), DecodeError::SizeUpdateTooLarge { size: 41, max: 40 });
    // 40 = 31 + 9: keeps the newest entry (34 bytes).
    assert_eq!(pairs(&decode_all(&mut d, &Bytes::from_static(&[0x3f, 0x09, 0xbe]))), owned(&[("c", "d")]));
    assert_eq!(table(&d), owned(&[("c", "d")]));
    // Once done, a block without an update is fine again.
    decode_all(&mut d, &Bytes::from_static(&[0x82]));
    // A higher limit needs no update.
    d.set_max_table_size(8192);
    decode_all(&mut d, &Bytes::from_static(&[0x82]));
    assert_eq!(d.table_capacity(), 40);
}

#[test]
fn malformed_fields_are_reported_and_the_block_goes_on() {
    let mut block = vec![0x82];
    lit(&mut block, 0x40, b"X-Upper", b"v");
    lit(&mut block, 0x40, b"x-cr", b"a\rb");
    lit(&mut block, 0x00, b"x-nul", b"a\0b");
    lit(&mut block, 0x00, b"x-lf", b"a\nb");
    lit(&mut block, 0x40, b"x-space", b" v");
    lit(&mut block, 0x00, b"x-tab", b"v\t");
    lit(&mut block, 0x00, b"bad name", b"v");
    lit(&mut block, 0x00, b"", b"v");
    lit(&mut block, 0x00, b":Path", b"/");
    lit(&mut block, 0x00, b":foo", b"bar");
    lit(&mut block, 0x40, b"x-ok", b"fine");
    let mut d = Decoder::default();
    let fields = decode_all(&mut d, &Bytes::from(block));
    let got: Vec<_> =
        fields.iter().map(|f| (String::from_utf8_lossy(f.name.as_bytes()).into_owned(), f.malformed)).collect();
    let expected = [
        (":method", None),
        ("X-Upper", Some(Malformed::UppercaseName)),
        ("x-cr", Some(Malformed::InvalidValue)),
        ("x-nul", Some(Malformed::InvalidValue)),
        ("x-lf", Some(Malformed::InvalidValue)),
        ("x-space", Some(Malformed::ValueWhitespace)),
        ("x-tab", Some(Malformed::ValueWhitespace)),
        ("bad name", Some(Malformed::InvalidName)),
        ("", Some(Malformed::InvalidName)),
        (":Path", Some(Malformed::UppercaseName)),
        (":foo", None),
        ("x-ok", None),
    ];
    assert_eq!(got, expected.map(|(n, m)| (n.to_string(), m)));
    assert_eq!(fields[1].name, Name::Invalid(Bytes::from_static(b"X-Upper")));
    assert_eq!(fields[10].name, Name::OtherPseudo(Bytes::from_static(b":foo")));
    assert_eq!(fields[11].value, "fine");
    assert_eq!(table(&d), owned(&[("x-ok", "fine"), ("x-space", " v"), ("x-cr", "a\rb"), ("X-Upper", "v")]));
    // The next block refers to the malformed entries: still malformed; a new value under the
    // uppercase name keeps the name's fault.
    let mut block = vec![0xbe, 0xbf, 0xc0, 0xc1];
    block.extend([0x40 | 0x3f, 65 - 63, 0x01, b'w']);
    let fields = decode_all(&mut d, &Bytes::from(block));
    let faults: Vec<_> = fields.iter().map(|f| f.malformed).collect();
    assert_eq!(
        faults,
        [
            None,
            Some(Malformed::ValueWhitespace),
            Some(Malformed::InvalidValue),
            Some(Malformed::UppercaseName),
            Some(Malformed::UppercaseName)
        ]
    );
    assert_eq!(pairs(&fields)[4], ("X-Upper".to_string(), "w".to_string()));
}

/// Over the list size limit: the fields after the crossing one are not handed over, the
/// outcome says too large, and the table has every indexed entry (the next block decodes).
#[test]
fn list_size_limit_keeps_the_table_in_step() {
    let value = [b'v'; 100];
    let mut block = vec![0x82];
    for name in [b"x-one", b"x-two", b"x-tri"] {
        lit(&mut block, 0x40, name, &value);
    }
    let mut d = Decoder::default();
    let mut fields = Vec::new();
    // :method GET is 42, each other field 137.
    let outcome = d.decode(&Bytes::from(block.clone()), 200, |f| fields.push(f)).unwrap();
    assert_eq!(outcome, Decoded::TooLarge { list_size: 42 + 3 * 137 });
    assert_eq!(pairs(&fields), owned(&[(":method", "GET"), ("x-one", &"v".repeat(100))]));
    assert_eq!(d.table_entries().count(), 3);
    assert_eq!(d.table_size(), 3 * 137);
    let fields = decode_all(&mut d, &Bytes::from_static(&[0x82, 0xbe, 0xc0]));
    assert_eq!(pairs(&fields), owned(&[(":method", "GET"), ("x-tri", &"v".repeat(100)), ("x-one", &"v".repeat(100))]));
    // Exactly at the limit is fine.
    let mut d = Decoder::default();
    let outcome = d.decode(&Bytes::from(block), 42 + 3 * 137, |_| {}).unwrap();
    assert_eq!(outcome, Decoded::Complete { list_size: 42 + 3 * 137 });
}

/// Values sent as is are slices of the block; Huffman-coded ones of a block share one
/// allocation; the table's entries are copies (they keep neither alive).
#[test]
fn where_values_live() {
    // x-a: as is; x-b and x-c: Huffman-coded ("abc" is 00011 100100 00100 = 16 bits -> 2 bytes).
    let mut block = Vec::new();
    lit(&mut block, 0x40, b"x-a", b"plain");
    block.extend([0x40, 0x03, b'x', b'-', b'b', 0x82]);
    let mut abc = BytesMut::new();
    super::super::huffman::encode(b"abc", &mut abc);
    block.extend_from_slice(&abc);
    block.extend([0x00, 0x03, b'x', b'-', b'c', 0x82]);
    block.extend_from_slice(&abc);
    let block = Bytes::from(block);
    let mut d = Decoder::default();
    let fields = decode_all(&mut d, &block);
    assert_eq!(pairs(&fields), owned(&[("x-a", "plain"), ("x-b", "abc"), ("x-c", "abc")]));
    let in_block = |b: &Bytes| block.as_ptr_range().contains(&b.as_ptr());
    assert!(in_block(&fields[0].value));
    assert!(!in_block(&fields[1].value) && !in_block(&fields[2].value));
    assert_eq!(fields[2].value.as_ptr(), fields[1].value.as_ptr().wrapping_add(3), "one scratch for the block");
    for (_, v) in d.table_entries() {
        assert!(!in_block(v) && v.as_ptr() != fields[1].value.as_ptr());
    }
}

#[test]
fn names() {
    assert_eq!(Name::parse(Bytes::from_static(b"content-type")), (Name::Header(header::CONTENT_TYPE), None));
    assert_eq!(Name::parse(Bytes::from_static(b":status")), (Name::Status, None));
    assert_eq!(Name::parse(Bytes::from_static(b":protocol")), (Name::Protocol, None));
    assert_eq!(Name::parse(Bytes::from_static(b":x")).0, Name::OtherPseudo(Bytes::from_static(b":x")));
    for (bytes, fault) in [
        (&b"Content-Type"[..], Malformed::UppercaseName),
        (b"a:b", Malformed::InvalidName),
        (b"a\xff", Malformed::InvalidName),
        (b":", Malformed::InvalidName),
        (b"", Malformed::InvalidName),
    ] {
        let (name, malformed) = Name::parse(Bytes::copy_from_slice(bytes));
        assert_eq!(malformed, Some(fault), "{bytes:?}");
        assert_eq!(name.malformed(), Some(fault), "{bytes:?}");
    }
}

/// The encoder's static look-ups agree with the static table, entry by entry.
#[test]
fn static_lookups_agree_with_the_table() {
    for i in 1..=static_table::STATIC_LEN {
        let (name, value) = static_table::get(i).unwrap();
        let (name_index, exact) = match name {
            Name::Header(h) => static_table::header(h, value),
            other => static_table::pseudo(other, value),
        };
        let first = (1..=i).find(|&j| static_table::get(j).unwrap().0 == *name).unwrap();
        assert_eq!(name_index, Some(first), "{name:?}");
        if !value.is_empty() {
            assert_eq!(exact, Some(i), "{name:?}: {value:?}");
        }
    }
    assert_eq!(static_table::header(&header::HeaderName::from_static("x-custom"), b""), (None, None));
    assert_eq!(static_table::get(0), None);
    assert_eq!(static_table::get(62), None);
}
