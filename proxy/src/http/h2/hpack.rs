//! HPACK (RFC 7541): header blocks decoded into fields, and fields encoded into blocks.
//!
//! - [`Decoder`] decodes one complete header block (the HEADERS or PUSH_PROMISE fragment and
//!   its CONTINUATION fragments, joined by the caller) and hands each field to a callback. A
//!   string that is not Huffman-coded is handed over as a slice of the block (no copy); the
//!   Huffman-coded ones of a block share one allocation made for that block. Between calls the
//!   decoder holds its dynamic table and nothing else: table entries are copies, so a table
//!   entry never keeps a whole block (or a block's Huffman scratch) alive.
//! - [`Encoder`] encodes the pseudo-header fields and an [`http::HeaderMap`] into a block, with
//!   the static table, the dynamic table (incremental indexing for fields that fit, never for
//!   sensitive ones: those are sent never-indexed, as are `authorization`,
//!   `proxy-authorization` and short `cookie` values whatever their mark), and Huffman coding
//!   when it is shorter. A block may start with at most two table size updates (the smallest
//!   size since the last block, then the last: RFC 7541 §4.2); a third is an error.
//! - The primitives: integers (§5.1) and strings (§5.2), and the Huffman code (Appendix B).
//!
//! Errors are split by who pays for them. A broken encoding (bad index, an integer over
//! 2^32 - 1, a string running past the block, bad Huffman, a table size update misplaced or
//! over the limit) is a [`DecodeError`]: a connection error (COMPRESSION_ERROR), since the
//! dynamic tables of both ends can no longer be trusted to agree. A field that decodes fine but
//! breaks the field rules of RFC 9113 §8.2.1 (an uppercase or non-token byte in a name; NUL, CR
//! or LF in a value; leading or trailing whitespace in a value) is reported on the [`Field`]
//! ([`Field::malformed`]) and decoding goes on: that is a stream error for the caller. A header
//! list over the caller's size limit is still decoded to the end (the table stays in sync) and
//! reported as [`Decoded::TooLarge`] (answer 431 or reset the stream).
//!
//! Limits: the decoder does not check the HTTP/2 rules that sit above HPACK (pseudo-header
//! order and set, connection-specific fields, `te`); [`Name::OtherPseudo`] is handed over as
//! such for the caller to reject. A value that passes [`Field::malformed`] may still be refused
//! by [`http::HeaderValue`] (which also refuses other control bytes). The encoder trusts its
//! input (an `http::HeaderMap` holds only valid fields) and leaves connection-specific fields to
//! the caller; its dynamic table is capped at [`ENCODER_TABLE_LIMIT`] whatever the peer allows.
//! A decoded value keeps alive what it is a slice of: the block (up to its size), or the
//! block's Huffman scratch (up to 8/5 of what was left of the block at the first
//! Huffman-coded string); a caller that keeps values past the request should copy them.

use bytes::Bytes;
use http::HeaderName;

mod decoder;
mod encoder;
pub mod huffman;
pub mod primitive;
mod table;

#[cfg(test)]
mod tests;

pub use decoder::{DecodeError, Decoded, Decoder};
pub use encoder::{ENCODER_TABLE_LIMIT, Encoder, Pseudo};
pub use huffman::HuffmanError;

/// The protocol's initial SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// What RFC 7541 §4.1 adds to a field's name and value lengths for its size (in the dynamic
/// table, and in the header list size of RFC 9113 §6.5.2).
pub const ENTRY_OVERHEAD: usize = 32;

/// A field name: the pseudo-header fields HTTP/2 defines, or a regular field name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Name {
    /// `:method`
    Method,
    /// `:scheme`
    Scheme,
    /// `:authority`
    Authority,
    /// `:path`
    Path,
    /// `:status`
    Status,
    /// `:protocol` (extended CONNECT, RFC 8441)
    Protocol,
    /// A name that starts with `:` and is none of the above (its bytes, colon included): a
    /// request or response that has one is malformed (RFC 9113 §8.3); the caller decides.
    OtherPseudo(Bytes),
    /// A regular field name (lowercase, token bytes only).
    Header(HeaderName),
    /// Bytes that are not a valid field name (uppercase, a non-token byte, or empty); the field
    /// that has it is reported malformed.
    Invalid(Bytes),
}

impl Name {
    /// The name as it is on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Method => b":method",
            Name::Scheme => b":scheme",
            Name::Authority => b":authority",
            Name::Path => b":path",
            Name::Status => b":status",
            Name::Protocol => b":protocol",
            Name::OtherPseudo(b) | Name::Invalid(b) => b,
            Name::Header(h) => h.as_str().as_bytes(),
        }
    }

    /// The name's length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the name is empty (only an [`Name::Invalid`] one can be).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a pseudo-header field name (one starting with `:`).
    pub fn is_pseudo(&self) -> bool {
        !matches!(self, Name::Header(_) | Name::Invalid(_))
    }

    /// The name of these bytes, and why a field with it is malformed, if it is.
    ///
    /// why `HeaderName::from_bytes` only after our own check: it accepts uppercase bytes (it
    /// lowercases them), which RFC 9113 §8.2.1 makes a malformed field.
    pub fn parse(bytes: Bytes) -> (Name, Option<Malformed>) {
        if let Some(rest) = bytes.strip_prefix(b":") {
            let name = match rest {
                b"method" => Name::Method,
                b"scheme" => Name::Scheme,
                b"authority" => Name::Authority,
                b"path" => Name::Path,
                b"status" => Name::Status,
                b"protocol" => Name::Protocol,
                _ => match check_name(rest) {
                    None => Name::OtherPseudo(bytes),
                    Some(m) => return (Name::Invalid(bytes), Some(m)),
                },
            };
            return (name, None);
        }
        if let Some(m) = check_name(&bytes) {
            return (Name::Invalid(bytes), Some(m));
        }
        match HeaderName::from_bytes(&bytes) {
            Ok(h) => (Name::Header(h), None),
            Err(_) => (Name::Invalid(bytes), Some(Malformed::InvalidName)),
        }
    }

    /// Why a field with this name is malformed, if it is.
    pub fn malformed(&self) -> Option<Malformed> {
        match self {
            Name::Invalid(b) => Some(check_name(b.strip_prefix(b":").unwrap_or(b)).unwrap_or(Malformed::InvalidName)),
            _ => None,
        }
    }

    /// The same name, owning its bytes: a name that is a slice of a block is copied, so that
    /// keeping it (in a dynamic table) does not keep the block.
    pub(crate) fn detached(&self) -> Name {
        match self {
            Name::OtherPseudo(b) => Name::OtherPseudo(Bytes::copy_from_slice(b)),
            Name::Invalid(b) => Name::Invalid(Bytes::copy_from_slice(b)),
            other => other.clone(),
        }
    }
}

impl From<HeaderName> for Name {
    fn from(h: HeaderName) -> Self {
        Name::Header(h)
    }
}

/// Why a field breaks the field rules of RFC 9113 §8.2.1: the stream it is on is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The name has an uppercase letter.
    UppercaseName,
    /// The name is empty or has a byte that is not a token byte.
    InvalidName,
    /// The value has a NUL, CR or LF.
    InvalidValue,
    /// The value starts or ends with a space or a horizontal tab.
    ValueWhitespace,
}

/// One decoded field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The name: a pseudo-header, a regular name, or malformed bytes.
    pub name: Name,
    /// The value: a slice of the block when it was sent as is, else of the block's Huffman
    /// scratch, or the dynamic table's copy.
    pub value: Bytes,
    /// Sent as a never-indexed literal (RFC 7541 §6.2.3): an intermediary re-encoding it must
    /// keep it out of its own dynamic table.
    pub sensitive: bool,
    /// Why the field is malformed (a stream error for the caller), if it is.
    pub malformed: Option<Malformed>,
}

impl Field {
    /// The field's size in a header list (RFC 9113 §6.5.2): name, value, and 32.
    pub fn size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

/// How each byte may appear in a field name: 0 not at all, 1 as is, 2 an uppercase letter.
const NAME_BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'a'..=b'z' | b'0'..=b'9' => 1,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~' => {
                1
            }
            b'A'..=b'Z' => 2,
            _ => 0,
        };
        b += 1;
    }
    t
};

/// Why a regular name (or a pseudo-header name without its colon) is not a valid field name.
fn check_name(name: &[u8]) -> Option<Malformed> {
    if name.is_empty() {
        return Some(Malformed::InvalidName);
    }
    let mut upper = false;
    for &b in name {
        match NAME_BYTES[b as usize] {
            0 => return Some(Malformed::InvalidName),
            2 => upper = true,
            _ => {}
        }
    }
    upper.then_some(Malformed::UppercaseName)
}

/// Why a value is not a valid field value (RFC 9113 §8.2.1), if it is not.
pub fn check_value(value: &[u8]) -> Option<Malformed> {
    if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Some(Malformed::InvalidValue);
    }
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    if value.first().is_some_and(ws) || value.last().is_some_and(ws) {
        return Some(Malformed::ValueWhitespace);
    }
    None
}
