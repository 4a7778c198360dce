//! The primitive representations of RFC 7541 §5: integers with an N-bit prefix (§5.1) and
//! string literals (§5.2).

use bytes::{BufMut, Bytes, BytesMut};

use super::huffman::{self, HuffmanError};

/// The largest integer decoded: anything above is an error.
///
/// why 2^32 - 1: every integer in HPACK is an index, a length within a block or a table size;
/// none is meaningfully larger, and a cap keeps a run of continuation bytes from going on.
pub const MAX_INT: u64 = u32::MAX as u64;

/// A primitive that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrimitiveError {
    /// The integer or string does not end within the block.
    #[error("the representation at byte {at} runs past the end of the block")]
    Truncated {
        /// Where the integer or string starts.
        at: usize,
    },
    /// The integer is above [`MAX_INT`].
    #[error("the integer at byte {at} is larger than 2^32 - 1")]
    IntegerOverflow {
        /// Where the integer starts.
        at: usize,
    },
    /// The Huffman-coded string does not decode.
    #[error("the string at byte {at}: {source}")]
    Huffman {
        /// Where the string starts.
        at: usize,
        /// What is wrong with it.
        source: HuffmanError,
    },
}

/// Appends `value` as an integer with a `prefix_bits`-bit prefix (1 to 8), the first byte's
/// high bits set to `flags`.
pub fn encode_int(value: usize, prefix_bits: u8, flags: u8, dst: &mut BytesMut) {
    debug_assert!((1..=8).contains(&prefix_bits));
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

/// Decodes the integer at `*pos` with a `prefix_bits`-bit prefix (the first byte's other bits
/// are ignored) and moves `*pos` past it.
pub fn decode_int(src: &[u8], pos: &mut usize, prefix_bits: u8) -> Result<u64, PrimitiveError> {
    let at = *pos;
    let first = *src.get(at).ok_or(PrimitiveError::Truncated { at })?;
    let max = (1u16 << prefix_bits) as u64 - 1;
    let mut value = u64::from(first) & max;
    let mut i = at + 1;
    if value == max {
        let mut shift = 0u32;
        loop {
            let b = *src.get(i).ok_or(PrimitiveError::Truncated { at })?;
            i += 1;
            // why the shift bound: past 5 continuation bytes (35 bits) the value is over the
            // cap or the bytes are padding zeros; either way, no longer a sane encoding.
            if shift > 28 {
                return Err(PrimitiveError::IntegerOverflow { at });
            }
            value += u64::from(b & 0x7f) << shift;
            if value > MAX_INT {
                return Err(PrimitiveError::IntegerOverflow { at });
            }
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    *pos = i;
    Ok(value)
}

/// Appends `src` as a string literal: Huffman-coded when that is shorter.
pub fn encode_string(src: &[u8], dst: &mut BytesMut) {
    let coded = huffman::encoded_len(src);
    if coded < src.len() {
        encode_int(coded, 7, 0x80, dst);
        huffman::encode(src, dst);
    } else {
        encode_int(src.len(), 7, 0, dst);
        dst.extend_from_slice(src);
    }
}

/// Decodes the string literal at `*pos` of `block` and moves `*pos` past it: a slice of the
/// block if it is sent as is, else its decoding, split off `scratch`.
///
/// why one scratch per block: the first Huffman-coded string reserves room for every string
/// the rest of the block can hold (each decodes to at most 8/5 of its coded length), so a
/// block's Huffman-coded strings share one allocation instead of one each; the caller drops
/// the scratch when the block is done, and what is left of it is freed then.
pub fn decode_string(block: &Bytes, pos: &mut usize, scratch: &mut BytesMut) -> Result<Bytes, PrimitiveError> {
    let at = *pos;
    let huffman = block.get(at).is_some_and(|b| b & 0x80 != 0);
    let len = decode_int(block, pos, 7)?;
    let start = *pos;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= block.len())
        .ok_or(PrimitiveError::Truncated { at })?;
    *pos = end;
    if !huffman {
        return Ok(block.slice(start..end));
    }
    let needed = huffman::max_decoded_len(end - start);
    if scratch.capacity() - scratch.len() < needed {
        scratch.reserve(huffman::max_decoded_len(block.len() - start).max(needed));
    }
    huffman::decode(&block[start..end], scratch).map_err(|source| PrimitiveError::Huffman { at, source })?;
    Ok(scratch.split().freeze())
}
