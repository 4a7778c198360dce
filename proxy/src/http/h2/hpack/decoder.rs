//! The HPACK decoder: one header block in, fields out, the dynamic table kept in step.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::primitive::{self, PrimitiveError};
use super::{DEFAULT_TABLE_SIZE, ENTRY_OVERHEAD, Field, Malformed, Name, check_value, table};

/// A header block whose encoding is broken: a connection error of type COMPRESSION_ERROR
/// (RFC 9113 §4.3), after which the dynamic table is no longer in step with the peer's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// An integer or string is cut short, too large, or badly Huffman-coded.
    #[error(transparent)]
    Primitive(#[from] PrimitiveError),
    /// An index that is 0 or past the end of the dynamic table.
    #[error("index {index} at byte {at} is not in the tables (61 static, {dynamic} dynamic entries)")]
    BadIndex {
        /// The index.
        index: u64,
        /// How many entries the dynamic table had.
        dynamic: usize,
        /// Where the representation starts.
        at: usize,
    },
    /// A dynamic table size update after a field of the block (RFC 7541 §4.2).
    #[error("a dynamic table size update at byte {at}, after the first field of the block")]
    SizeUpdateMisplaced {
        /// Where the update starts.
        at: usize,
    },
    /// A dynamic table size update above the SETTINGS_HEADER_TABLE_SIZE we advertised.
    #[error("a dynamic table size update to {size} bytes, above our limit of {max}")]
    SizeUpdateTooLarge {
        /// The size asked for.
        size: u64,
        /// Our limit.
        max: usize,
    },
    /// Our limit went below the table's size and the block does not start with the size
    /// update that must follow (RFC 7541 §4.2).
    #[error("the block does not start with a dynamic table size update to at most {max} bytes")]
    SizeUpdateMissing {
        /// Our limit.
        max: usize,
    },
}

/// How a block that decoded went.
#[must_use = "a header list that is too large must be refused"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Every field was handed over.
    Complete {
        /// The header list's size (RFC 9113 §6.5.2).
        list_size: usize,
    },
    /// The header list is larger than the limit: the fields up to the one that crossed it were
    /// handed over, and the caller drops them all (431, or RST_STREAM). The block was decoded
    /// to its end, so the dynamic table is right and the connection can go on.
    TooLarge {
        /// The header list's size (RFC 9113 §6.5.2), all of it.
        list_size: usize,
    },
}

/// An entry of the dynamic table.
#[derive(Debug)]
struct Entry {
    name: Name,
    value: Bytes,
    /// why kept: an entry is usually referenced many times, and its value checked once.
    malformed: Option<Malformed>,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

/// Decodes the header blocks of one direction of one connection.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// The sum of the entries' sizes.
    size: usize,
    /// The table's maximum size, as the peer's last size update set it.
    capacity: usize,
    /// Our SETTINGS_HEADER_TABLE_SIZE in force: the largest size update accepted.
    max_size: usize,
    /// The limit went below the capacity since the last block: the next block must start with a
    /// size update at or below the smallest such limit (RFC 7541 §4.2).
    required_at_most: Option<usize>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_TABLE_SIZE)
    }
}

impl Decoder {
    /// A decoder whose dynamic table may hold `max_table_size` bytes: the
    /// SETTINGS_HEADER_TABLE_SIZE we advertise, once the peer acknowledged it (until then
    /// the protocol's 4096 is in force).
    pub fn new(max_table_size: usize) -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            capacity: max_table_size,
            max_size: max_table_size,
            required_at_most: None,
        }
    }

    /// Our SETTINGS_HEADER_TABLE_SIZE changed (and was acknowledged). If it is below the
    /// table's current maximum, the peer's next block must start with a size update within it.
    pub fn set_max_table_size(&mut self, max_table_size: usize) {
        self.max_size = max_table_size;
        if max_table_size < self.capacity {
            let smallest = self.required_at_most.map_or(max_table_size, |s| s.min(max_table_size));
            self.required_at_most = Some(smallest);
        }
    }

    /// The dynamic table's size in bytes (RFC 7541 §4.1).
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// The dynamic table's maximum size, as the peer's last size update set it.
    pub fn table_capacity(&self) -> usize {
        self.capacity
    }

    /// The dynamic table's entries, newest (index 62) first.
    pub fn table_entries(&self) -> impl Iterator<Item = (&Name, &Bytes)> {
        self.entries.iter().map(|e| (&e.name, &e.value))
    }

    /// Decodes one complete header block and hands each field to `f`, in order.
    ///
    /// `max_list_size` is the SETTINGS_MAX_HEADER_LIST_SIZE we advertise (or our own limit):
    /// a list over it is decoded to the end without handing over the fields after the one
    /// that crossed it, and gives [`Decoded::TooLarge`]. A malformed field is handed over with
    /// [`Field::malformed`] set, and decoding goes on. An error is a connection error.
    pub fn decode(
        &mut self,
        block: &Bytes,
        max_list_size: usize,
        mut f: impl FnMut(Field),
    ) -> Result<Decoded, DecodeError> {
        let src: &[u8] = block;
        let mut pos = 0;
        let mut scratch = BytesMut::new();
        let mut list_size = 0usize;
        let mut first_field = true;
        let mut updates = 0u8;
        while let Some(&b) = src.get(pos) {
            let at = pos;
            if b & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3).
                // why at most two: an encoder owes at most the smallest size since its last
                // block and then the last one (§4.2); more would let a block of nothing but
                // updates (1 MB of `0x20`) pass every header list size limit.
                updates += 1;
                if !first_field || updates > 2 {
                    return Err(DecodeError::SizeUpdateMisplaced { at });
                }
                let size = primitive::decode_int(src, &mut pos, 5)?;
                // The first update after the limit went down must reach the smallest limit set
                // (a lowered then raised limit must still have emptied what it had to).
                let max = self.required_at_most.unwrap_or(self.max_size);
                if size > max as u64 {
                    return Err(DecodeError::SizeUpdateTooLarge { size, max });
                }
                self.required_at_most = None;
                self.capacity = size as usize;
                self.evict_to(self.capacity);
                continue;
            }
            if first_field && self.required_at_most.is_some() {
                return Err(DecodeError::SizeUpdateMissing { max: self.max_size });
            }
            first_field = false;
            let field = if b & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = primitive::decode_int(src, &mut pos, 7)?;
                self.indexed(index, at)?
            } else {
                // Literal fields (§6.2): with incremental indexing (01), never indexed (0001),
                // without indexing (0000).
                let (prefix, indexing, sensitive) = match b & 0xf0 {
                    0x10 => (4, false, true),
                    0x00 => (4, false, false),
                    _ => (6, true, false),
                };
                let index = primitive::decode_int(src, &mut pos, prefix)?;
                let (name, name_malformed) = if index == 0 {
                    Name::parse(primitive::decode_string(block, &mut pos, &mut scratch)?)
                } else {
                    let name = self.name_at(index, at)?;
                    let malformed = name.malformed();
                    (name, malformed)
                };
                let value = primitive::decode_string(block, &mut pos, &mut scratch)?;
                let malformed = name_malformed.or_else(|| check_value(&value));
                if indexing {
                    self.insert(Entry { name: name.detached(), value: Bytes::copy_from_slice(&value), malformed });
                }
                Field { name, value, sensitive, malformed }
            };
            list_size = list_size.saturating_add(field.size());
            // why go on past the limit: the rest of the block may change the dynamic table.
            if list_size <= max_list_size {
                f(field);
            }
        }
        if list_size > max_list_size {
            Ok(Decoded::TooLarge { list_size })
        } else {
            Ok(Decoded::Complete { list_size })
        }
    }

    /// The field at `index` of the static or dynamic table.
    fn indexed(&self, index: u64, at: usize) -> Result<Field, DecodeError> {
        let bad = || DecodeError::BadIndex { index, dynamic: self.entries.len(), at };
        let i = usize::try_from(index).map_err(|_| bad())?;
        if i <= table::STATIC_LEN {
            let (name, value) = table::get(i).ok_or_else(bad)?;
            return Ok(Field {
                name: name.clone(),
                value: Bytes::from_static(value),
                sensitive: false,
                malformed: None,
            });
        }
        let e = self.entries.get(i - table::STATIC_LEN - 1).ok_or_else(bad)?;
        Ok(Field { name: e.name.clone(), value: e.value.clone(), sensitive: false, malformed: e.malformed })
    }

    /// The name of the entry at `index` of the static or dynamic table.
    fn name_at(&self, index: u64, at: usize) -> Result<Name, DecodeError> {
        let bad = || DecodeError::BadIndex { index, dynamic: self.entries.len(), at };
        let i = usize::try_from(index).map_err(|_| bad())?;
        if i <= table::STATIC_LEN {
            return Ok(table::get(i).ok_or_else(bad)?.0.clone());
        }
        Ok(self.entries.get(i - table::STATIC_LEN - 1).ok_or_else(bad)?.name.clone())
    }

    /// Adds an entry, evicting the oldest ones to make room (§4.4); an entry larger than the
    /// table empties it and is not added.
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.capacity {
            self.evict_to(0);
            return;
        }
        self.evict_to(self.capacity - size);
        self.size += size;
        self.entries.push_front(entry);
    }

    /// Evicts the oldest entries until the table's size is at most `size`.
    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}
