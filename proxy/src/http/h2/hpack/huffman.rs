//! The Huffman code of RFC 7541 §5.2 and Appendix B.
//!
//! The code is canonical: codes of one length are consecutive, in symbol order, and each
//! length's first code follows the last of the shorter length. So the code lengths alone
//! (`LENGTHS`, from Appendix B) determine every code, and both the encoding table and the
//! decoding state machine are computed from them at compile time.
//!
//! Decoding reads 4 bits at a time: a state is an internal node of the code tree (256 of
//! them, for 257 symbols), and each (state, nibble) pair has one precomputed step: the next
//! state, and the symbol completed on the way, if any (the shortest code is 5 bits, so a
//! nibble completes at most one). Two table look-ups per input byte, no bit loop.

use bytes::{BufMut, BytesMut};

/// A Huffman-coded string that is not valid (RFC 7541 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    /// The EOS symbol is in the string.
    #[error("the Huffman-coded string has the EOS symbol")]
    Eos,
    /// The padding is longer than 7 bits.
    #[error("the Huffman-coded string's padding is longer than 7 bits")]
    PaddingTooLong,
    /// The padding is not the most significant bits of EOS (all ones).
    #[error("the Huffman-coded string's padding is not all ones")]
    PaddingNotOnes,
}

/// The EOS symbol, after the 256 byte values.
const EOS: usize = 256;

/// The length in bits of each symbol's code (RFC 7541 Appendix B), bytes 0 to 255 then EOS.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

/// Each symbol's code, right-aligned (its length is in `LENGTHS`).
pub(crate) const CODES: [u32; 257] = canonical_codes();

const fn canonical_codes() -> [u32; 257] {
    let mut codes = [0u32; 257];
    let mut code = 0u32;
    let mut prev_len = 0u8;
    let mut started = false;
    let mut len = 1u8;
    while len <= 30 {
        let mut sym = 0;
        while sym < 257 {
            if LENGTHS[sym] == len {
                if started {
                    code = (code + 1) << (len - prev_len);
                }
                started = true;
                prev_len = len;
                codes[sym] = code;
            }
            sym += 1;
        }
        len += 1;
    }
    codes
}

/// A step emits its symbol.
const EMIT: u8 = 1;
/// A step reaches EOS: the string is invalid.
const FAIL: u8 = 2;
/// The state after the step may end the string: its path from the root is at most 7 ones.
const ACCEPT: u8 = 4;
/// The state after the step is on the all-ones path (padding, if the string ends there).
const ONES: u8 = 8;

/// One step of the decoding state machine.
#[derive(Clone, Copy)]
struct Step {
    next: u8,
    sym: u8,
    flags: u8,
}

/// A child in the code tree that is a leaf: this bit, and the symbol in the low bits.
const LEAF: u16 = 0x8000;

/// The decoding steps: `DECODE[state][nibble]`.
static DECODE: [[Step; 16]; 256] = decode_table();

const fn decode_table() -> [[Step; 16]; 256] {
    // The code tree: node 0 is the root; a child is a node index, or LEAF | symbol; 0 (the
    // root, never a child) means not yet made.
    let mut children = [[0u16; 2]; 256];
    let mut depth = [0u8; 256];
    let mut ones = [false; 256];
    ones[0] = true;
    let mut nodes = 1usize;
    let mut sym = 0;
    while sym < 257 {
        let code = CODES[sym];
        let len = LENGTHS[sym];
        let mut node = 0usize;
        let mut i = len;
        while i > 1 {
            i -= 1;
            let bit = ((code >> i) & 1) as usize;
            if children[node][bit] == 0 {
                children[node][bit] = nodes as u16;
                depth[nodes] = depth[node] + 1;
                ones[nodes] = ones[node] && bit == 1;
                nodes += 1;
            }
            node = children[node][bit] as usize;
        }
        children[node][(code & 1) as usize] = LEAF | sym as u16;
        sym += 1;
    }
    let mut table = [[Step { next: 0, sym: 0, flags: 0 }; 16]; 256];
    let mut state = 0;
    while state < nodes {
        let mut nibble = 0;
        while nibble < 16 {
            let mut node = state;
            let mut step = Step { next: 0, sym: 0, flags: 0 };
            let mut i = 4;
            while i > 0 {
                i -= 1;
                let child = children[node][(nibble >> i) & 1];
                if child & LEAF != 0 {
                    let s = (child & !LEAF) as usize;
                    if s == EOS {
                        step.flags |= FAIL;
                        break;
                    }
                    step.flags |= EMIT;
                    step.sym = s as u8;
                    node = 0;
                } else {
                    node = child as usize;
                }
            }
            if step.flags & FAIL == 0 {
                step.next = node as u8;
                if ones[node] {
                    step.flags |= ONES;
                    if depth[node] <= 7 {
                        step.flags |= ACCEPT;
                    }
                }
            }
            table[state][nibble] = step;
            nibble += 1;
        }
        state += 1;
    }
    table
}

/// The length in bytes of `src` Huffman-coded.
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src.iter().map(|&b| LENGTHS[b as usize] as usize).sum();
    bits.div_ceil(8)
}

/// The longest `len` Huffman-coded bytes can decode to (the shortest code is 5 bits).
pub fn max_decoded_len(len: usize) -> usize {
    len.saturating_mul(8) / 5
}

/// Appends `src` Huffman-coded to `dst`, padded with the most significant bits of EOS.
pub fn encode(src: &[u8], dst: &mut BytesMut) {
    dst.reserve(encoded_len(src));
    // why a u64: at most 7 pending bits plus a 30-bit code; the bits above are shifted out.
    let mut acc: u64 = 0;
    let mut pending: u32 = 0;
    for &b in src {
        let len = u32::from(LENGTHS[b as usize]);
        acc = (acc << len) | u64::from(CODES[b as usize]);
        pending += len;
        while pending >= 8 {
            pending -= 8;
            dst.put_u8((acc >> pending) as u8);
        }
    }
    if pending > 0 {
        dst.put_u8(((acc << (8 - pending)) as u8) | (0xff >> pending));
    }
}

/// Appends the decoding of the Huffman-coded `src` to `dst`; on an error, `dst` may have
/// some of it.
pub fn decode(src: &[u8], dst: &mut BytesMut) -> Result<(), HuffmanError> {
    dst.reserve(max_decoded_len(src.len()));
    let mut state = 0u8;
    let mut flags = ACCEPT | ONES;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = DECODE[state as usize][nibble as usize];
            if step.flags & FAIL != 0 {
                return Err(HuffmanError::Eos);
            }
            if step.flags & EMIT != 0 {
                dst.put_u8(step.sym);
            }
            state = step.next;
            flags = step.flags;
        }
    }
    if flags & ACCEPT != 0 {
        Ok(())
    } else if flags & ONES != 0 {
        Err(HuffmanError::PaddingTooLong)
    } else {
        Err(HuffmanError::PaddingNotOnes)
    }
}

/// The code of a symbol (0 to 255, or 256 for EOS) and its length in bits.
pub fn code(sym: usize) -> Option<(u32, u8)> {
    Some((*CODES.get(sym)?, LENGTHS[sym]))
}
