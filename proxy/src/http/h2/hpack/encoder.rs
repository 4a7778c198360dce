//! The HPACK encoder: fields in, one header block out, the dynamic table kept in step with
//! the peer's decoder.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Method, StatusCode};

use super::primitive::{encode_int, encode_string};
use super::{DEFAULT_TABLE_SIZE, ENTRY_OVERHEAD, Name, table};

/// The most our encoder's dynamic table holds, whatever larger size the peer allows.
///
/// why a cap: the table (and its index) is memory held for the connection's life; past a few
/// KiB the gain in compression is small. RFC 7541 §4.2 lets an encoder use less than allowed.
pub const ENCODER_TABLE_LIMIT: usize = DEFAULT_TABLE_SIZE;

/// The pseudo-header fields a block starts with.
#[derive(Clone, Copy, Debug)]
pub enum Pseudo<'a> {
    /// A request's: `:method`, `:scheme`, `:authority` (if any), `:path`, then `:protocol`
    /// (extended CONNECT) if any.
    Request {
        /// `:method`
        method: &'a Method,
        /// `:scheme`
        scheme: &'a str,
        /// `:authority`, left out when `None`.
        authority: Option<&'a str>,
        /// `:path`
        path: &'a str,
        /// `:protocol`, left out when `None`.
        protocol: Option<&'a str>,
    },
    /// A response's `:status`.
    Response {
        /// `:status`
        status: StatusCode,
    },
    /// None: a trailers block.
    Trailers,
}

/// A name as the encoder is given it: borrowed, made a [`Name`] only for a table entry.
#[derive(Clone, Copy)]
enum Key<'a> {
    Name(&'a Name),
    Header(&'a HeaderName),
}

impl Key<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Name(n) => n.as_bytes(),
            Key::Header(h) => h.as_str().as_bytes(),
        }
    }

    fn to_name(self) -> Name {
        match self {
            Key::Name(n) => n.detached(),
            Key::Header(h) => Name::Header(h.clone()),
        }
    }

    /// The static index of the name, and of the entry that also has this value.
    fn statics(self, value: &[u8]) -> (Option<usize>, Option<usize>) {
        match self {
            Key::Header(h) | Key::Name(Name::Header(h)) => table::header(h, value),
            Key::Name(n) => table::pseudo(n, value),
        }
    }
}

/// An entry of the encoder's dynamic table, with the hashes it is found by.
struct Entry {
    name: Name,
    value: Bytes,
    name_hash: u64,
    pair_hash: u64,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.len() + self.value.len() + ENTRY_OVERHEAD
    }
}

/// A hasher for keys that are already hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Insertion numbers of the newest entry with a hash.
type Index = HashMap<u64, u64, BuildHasherDefault<PassThrough>>;

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// A fast, well-mixed hash of `bytes` from `seed` (not keyed: a collision only costs a
/// missed match, since every match is checked against the entry).
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = (seed ^ bytes.len() as u64).wrapping_mul(MUL);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ word).wrapping_mul(MUL).rotate_left(29);
    }
    let mut last = 0u64;
    for (i, &b) in chunks.remainder().iter().enumerate() {
        last |= u64::from(b) << (8 * i);
    }
    h = (h ^ last).wrapping_mul(MUL);
    h ^ (h >> 31)
}

/// Encodes the header blocks of one direction of one connection.
pub struct Encoder {
    /// Newest first: index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// The sum of the entries' sizes.
    size: usize,
    /// The table's maximum size, as our last size update set it.
    capacity: usize,
    /// How many entries were ever added: `entries[i]` was number `inserted - 1 - i`.
    inserted: u64,
    /// The newest entry with a (name, value) hash, and with a name hash.
    ///
    /// why maps of hashes: a look-up is one probe whatever the table holds (a chain of
    /// entries with the same name is never walked), and no key is allocated.
    by_pair: Index,
    by_name: Index,
    /// Size updates owed to the peer: the smallest limit since the last block, and the last.
    pending: Option<(usize, usize)>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("entries", &self.entries.len())
            .field("size", &self.size)
            .field("capacity", &self.capacity)
            .field("pending", &self.pending)
            .finish()
    }
}

impl Encoder {
    /// An encoder for a peer whose decoder's table is the protocol's initial 4096 bytes.
    pub fn new() -> Self {
        Encoder {
            entries: VecDeque::new(),
            size: 0,
            capacity: DEFAULT_TABLE_SIZE.min(ENCODER_TABLE_LIMIT),
            inserted: 0,
            by_pair: Index::default(),
            by_name: Index::default(),
            pending: None,
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the next block starts with the size update(s)
    /// it calls for (RFC 7541 §4.2), the smallest value first if the limit went down then up
    /// since the last block. Our table uses at most [`ENCODER_TABLE_LIMIT`].
    pub fn set_max_table_size(&mut self, max_table_size: usize) {
        let size = max_table_size.min(ENCODER_TABLE_LIMIT);
        self.pending = Some(match self.pending {
            Some((smallest, _)) => (smallest.min(size), size),
            None => (size, size),
        });
    }

    /// The dynamic table's size in bytes (RFC 7541 §4.1).
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// The dynamic table's entries, newest (index 62) first.
    pub fn table_entries(&self) -> impl Iterator<Item = (&Name, &Bytes)> {
        self.entries.iter().map(|e| (&e.name, &e.value))
    }

    /// Appends one header block to `dst`: the pseudo-header fields, then the map's fields in
    /// its order. A value marked sensitive is sent never-indexed and kept out of the table.
    pub fn encode(&mut self, pseudo: Pseudo<'_>, headers: &HeaderMap, dst: &mut BytesMut) {
        // why reserve: one growth of `dst` up front instead of one per field, on the usual
        // block (Huffman-coded strings are shorter than this).
        let estimate: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        dst.reserve(estimate + 64);
        self.start_block(dst);
        match pseudo {
            Pseudo::Request { method, scheme, authority, path, protocol } => {
                self.field(Key::Name(&Name::Method), method.as_str().as_bytes(), false, dst);
                self.field(Key::Name(&Name::Scheme), scheme.as_bytes(), false, dst);
                if let Some(authority) = authority {
                    self.field(Key::Name(&Name::Authority), authority.as_bytes(), false, dst);
                }
                self.field(Key::Name(&Name::Path), path.as_bytes(), false, dst);
                if let Some(protocol) = protocol {
                    self.field(Key::Name(&Name::Protocol), protocol.as_bytes(), false, dst);
                }
            }
            Pseudo::Response { status } => {
                self.field(Key::Name(&Name::Status), status.as_str().as_bytes(), false, dst);
            }
            Pseudo::Trailers => {}
        }
        for (name, value) in headers {
            let sensitive = value.is_sensitive() || never_indexed(name, value.as_bytes());
            self.field(Key::Header(name), value.as_bytes(), sensitive, dst);
        }
    }

    /// Appends one header block of these fields, in this order, to `dst`: (name, value,
    /// sensitive). The names and values are sent as given (the caller makes them valid).
    pub fn encode_fields<'a>(
        &mut self,
        fields: impl IntoIterator<Item = (&'a Name, &'a [u8], bool)>,
        dst: &mut BytesMut,
    ) {
        self.start_block(dst);
        for (name, value, sensitive) in fields {
            self.field(Key::Name(name), value, sensitive, dst);
        }
    }

    /// Appends the size updates owed to the peer, and applies them to our table.
    fn start_block(&mut self, dst: &mut BytesMut) {
        let Some((smallest, last)) = self.pending.take() else { return };
        if smallest < self.capacity {
            encode_int(smallest, 5, 0x20, dst);
            self.resize(smallest);
        }
        if last != self.capacity {
            encode_int(last, 5, 0x20, dst);
            self.resize(last);
        }
    }

    fn resize(&mut self, capacity: usize) {
        self.capacity = capacity;
        while self.size > capacity {
            self.evict_oldest();
        }
    }

    /// Appends one field: indexed if the static or dynamic table has it, else a literal with
    /// incremental indexing if it fits the table and is not sensitive, else a literal
    /// without indexing (never-indexed if sensitive), its name indexed if a table has it.
    fn field(&mut self, key: Key<'_>, value: &[u8], sensitive: bool, dst: &mut BytesMut) {
        let (static_name, static_exact) = key.statics(value);
        if !sensitive && let Some(index) = static_exact {
            encode_int(index, 7, 0x80, dst);
            return;
        }
        let name = key.as_bytes();
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        let indexing = !sensitive && size <= self.capacity;
        let hashes = (self.capacity > 0 && (indexing || static_name.is_none())).then(|| {
            let name_hash = hash(0, name);
            (name_hash, hash(name_hash, value))
        });
        let mut name_index = static_name;
        if let Some((name_hash, pair_hash)) = hashes {
            if !sensitive
                && let Some(i) = self.find(&self.by_pair, pair_hash, |e| e.name.as_bytes() == name && e.value == value)
            {
                encode_int(table::STATIC_LEN + 1 + i, 7, 0x80, dst);
                return;
            }
            if name_index.is_none() {
                name_index = self
                    .find(&self.by_name, name_hash, |e| e.name.as_bytes() == name)
                    .map(|i| table::STATIC_LEN + 1 + i);
            }
        }
        let (prefix, flags) = match (sensitive, indexing) {
            (true, _) => (4, 0x10),
            (false, true) => (6, 0x40),
            (false, false) => (4, 0x00),
        };
        encode_int(name_index.unwrap_or(0), prefix, flags, dst);
        if name_index.is_none() {
            encode_string(name, dst);
        }
        encode_string(value, dst);
        if indexing && let Some((name_hash, pair_hash)) = hashes {
            self.insert(Entry { name: key.to_name(), value: Bytes::copy_from_slice(value), name_hash, pair_hash });
        }
    }

    /// The position in `entries` of the newest entry under `hash` in `index`, if `matches`.
    fn find(&self, index: &Index, hash: u64, matches: impl Fn(&Entry) -> bool) -> Option<usize> {
        let number = *index.get(&hash)?;
        let i = usize::try_from(self.inserted - 1 - number).ok()?;
        self.entries.get(i).filter(|e| matches(e)).map(|_| i)
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        while self.size + size > self.capacity {
            self.evict_oldest();
        }
        let number = self.inserted;
        self.inserted += 1;
        self.by_pair.insert(entry.pair_hash, number);
        self.by_name.insert(entry.name_hash, number);
        self.size += size;
        self.entries.push_front(entry);
    }

    fn evict_oldest(&mut self) {
        let number = self.inserted - self.entries.len() as u64;
        let Some(e) = self.entries.pop_back() else {
            self.size = 0;
            return;
        };
        self.size -= e.size();
        if self.by_pair.get(&e.pair_hash) == Some(&number) {
            self.by_pair.remove(&e.pair_hash);
        }
        if self.by_name.get(&e.name_hash) == Some(&number) {
            self.by_name.remove(&e.name_hash);
        }
    }
}

/// Credentials that are sent never-indexed whether or not the value is marked sensitive (RFC
/// 7541 §7.1.3, as nghttp2 does): an `authorization` or `proxy-authorization` value, and a
/// short `cookie` (under 20 bytes, guessable by the compression-oracle attack of §7.1.3 on a
/// connection that carries more than one client's requests, as a proxy's upstream ones do).
fn never_indexed(name: &http::HeaderName, value: &[u8]) -> bool {
    name == http::header::AUTHORIZATION
        || name == http::header::PROXY_AUTHORIZATION
        || (name == http::header::COOKIE && value.len() < 20)
}
