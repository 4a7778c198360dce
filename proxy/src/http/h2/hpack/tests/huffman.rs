//! The Huffman code: the RFC's codes, every symbol, the strict decoding errors, random strings.

use bytes::BytesMut;

use super::super::huffman::{self, HuffmanError};
use super::hex;

fn encode(src: &[u8]) -> Vec<u8> {
    let mut dst = BytesMut::new();
    huffman::encode(src, &mut dst);
    assert_eq!(dst.len(), huffman::encoded_len(src), "{src:?}");
    dst.to_vec()
}

fn decode(src: &[u8]) -> Result<Vec<u8>, HuffmanError> {
    let mut dst = BytesMut::new();
    huffman::decode(src, &mut dst).map(|()| dst.to_vec())
}

/// Codes as Appendix B prints them: the canonical construction from the lengths gives these.
#[test]
fn codes_are_the_rfcs() {
    for (sym, code, len) in [
        (0, 0x1ff8, 13),
        (1, 0x7fffd8, 23),
        (10, 0x3ffffffc, 30),
        (b' ' as usize, 0x14, 6),
        (b'0' as usize, 0x0, 5),
        (b'a' as usize, 0x3, 5),
        (b'z' as usize, 0x7b, 7),
        (b'~' as usize, 0x1ffd, 13),
        (127, 0xffffffc, 28),
        (128, 0xfffe6, 20),
        (255, 0x3ffffee, 26),
        (256, 0x3fffffff, 30),
    ] {
        assert_eq!(huffman::code(sym), Some((code, len)), "symbol {sym}");
    }
    assert_eq!(huffman::code(257), None);
}

/// The strings of C.4 and C.6.
#[test]
fn rfc_strings() {
    for (text, coded) in [
        ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
        ("no-cache", "a8eb 1064 9cbf"),
        ("custom-key", "25a8 49e9 5ba9 7d7f"),
        ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
        ("302", "6402"),
        ("307", "640e ff"),
        ("private", "aec3 771a 4b"),
        ("Mon, 21 Oct 2013 20:13:21 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"),
        ("https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
        ("gzip", "9bd9 ab"),
    ] {
        assert_eq!(encode(text.as_bytes()), hex(coded).to_vec(), "{text}");
        assert_eq!(decode(&hex(coded)).unwrap(), text.as_bytes(), "{text}");
    }
}

#[test]
fn every_symbol_round_trips() {
    for b in 0..=255u8 {
        for s in [vec![b], vec![b; 3], vec![b'a', b, b'z']] {
            assert_eq!(decode(&encode(&s)).unwrap(), s, "{s:?}");
        }
    }
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(decode(&encode(&all)).unwrap(), all);
    assert_eq!(decode(&[]).unwrap(), b"");
}

#[test]
fn random_strings_round_trip() {
    let mut rng = fastrand::Rng::with_seed(7541);
    for _ in 0..2000 {
        let len = rng.usize(0..64);
        let s: Vec<u8> = if rng.bool() {
            (0..len).map(|_| rng.u8(..)).collect()
        } else {
            (0..len).map(|_| rng.u8(b' '..=b'~')).collect()
        };
        assert_eq!(decode(&encode(&s)).unwrap(), s, "{s:?}");
    }
}

#[test]
fn padding_longer_than_7_bits_is_an_error() {
    // 'a' (00011) then 11 ones, in 2 bytes: 00011111 11111111.
    assert_eq!(decode(&[0x1f, 0xff]), Err(HuffmanError::PaddingTooLong));
    // A whole byte of padding after a string that ended on a byte boundary: '0' '0' 'a' 'a' 0
    // 0 0 0 is 40 bits, then 0xff.
    let mut coded = encode(b"00aa0000");
    assert_eq!(coded.len(), 5);
    coded.push(0xff);
    assert_eq!(decode(&coded), Err(HuffmanError::PaddingTooLong));
    // Padding of exactly 7 ones is fine: 'a' then 3 ones; '0' (5 bits) then 3 ones.
    assert_eq!(decode(&[0x1f]).unwrap(), b"a");
    assert_eq!(decode(&[0x07]).unwrap(), b"0");
}

#[test]
fn padding_not_all_ones_is_an_error() {
    // 'a' then 3 zeros: 00011000 decodes 'a' and leaves 000, the start of '0'.
    assert_eq!(decode(&[0x18]), Err(HuffmanError::PaddingNotOnes));
    // 'a' then 110.
    assert_eq!(decode(&[0x1e]), Err(HuffmanError::PaddingNotOnes));
    // A string cut in the middle of a long symbol (byte 0's code is 13 bits).
    assert_eq!(decode(&encode(&[0])[..1]), Err(HuffmanError::PaddingTooLong));
    assert_eq!(decode(&encode(&[1])[..2]), Err(HuffmanError::PaddingTooLong));
    // The first byte of 'a' 'a' 'a' ... cut after 'a' and 3 bits of the next: 00011 000.
    assert_eq!(decode(&encode(b"aaaa")[..1]), Err(HuffmanError::PaddingNotOnes));
}

#[test]
fn eos_in_the_string_is_an_error() {
    // EOS is 30 ones: 4 bytes of ones holds it (and 2 more bits).
    assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), Err(HuffmanError::Eos));
    // After a symbol, and before another.
    let mut coded = vec![0x1f, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(decode(&coded), Err(HuffmanError::Eos));
    coded.extend(encode(b"abc"));
    assert_eq!(decode(&coded), Err(HuffmanError::Eos));
}
