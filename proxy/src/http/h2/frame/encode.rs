//! Encoding frames: each function appends whole frames to the caller's buffer.
//!
//! Lengths are the caller's to keep within the peer's SETTINGS_MAX_FRAME_SIZE where a function
//! takes no `max_frame_size`; every frame here other than DATA and HEADERS is far below the
//! smallest allowed maximum (GOAWAY debug data is cut to fit it).
use bytes::{BufMut, BytesMut};

use super::{
    DEFAULT_MAX_FRAME_SIZE, ErrorCode, HEAD_LEN, Head, MAX_MAX_FRAME_SIZE, MAX_WINDOW_SIZE, Priority, Settings,
    StreamId, flag, kind,
};

/// The header of a DATA frame of `len` bytes without padding, for a vectored write of the
/// header and the payload. `len` must be at most the peer's SETTINGS_MAX_FRAME_SIZE.
pub fn data_head(stream: StreamId, len: u32, end_stream: bool) -> [u8; HEAD_LEN] {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    Head { len, kind: kind::DATA, flags, stream }.to_bytes()
}

/// Appends `payload` as DATA frames without padding: one frame, or as many as frames of at
/// most `max_frame_size` (the peer's SETTINGS_MAX_FRAME_SIZE) bytes need, END_STREAM on the
/// last one. An empty payload is one empty frame.
pub fn encode_data(buf: &mut BytesMut, stream: StreamId, payload: &[u8], end_stream: bool, max_frame_size: u32) {
    let max = frame_limit(max_frame_size);
    buf.reserve(payload.len() + HEAD_LEN * payload.len().div_ceil(max).max(1));
    let mut chunks = payload.chunks(max).peekable();
    if chunks.peek().is_none() {
        buf.extend_from_slice(&data_head(stream, 0, end_stream));
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        buf.extend_from_slice(&data_head(stream, len(chunk), end_stream && last));
        buf.extend_from_slice(chunk);
    }
}

/// Appends a HEADERS frame carrying the field `block` (encoded by HPACK), followed by the
/// CONTINUATION frames it needs when it is longer than `max_frame_size` (the peer's
/// SETTINGS_MAX_FRAME_SIZE). END_STREAM is on the HEADERS frame, END_HEADERS on the last frame.
/// No padding, no priority.
pub fn encode_headers(buf: &mut BytesMut, stream: StreamId, block: &[u8], end_stream: bool, max_frame_size: u32) {
    let max = frame_limit(max_frame_size);
    buf.reserve(block.len() + HEAD_LEN * block.len().div_ceil(max).max(1));
    let (first, mut rest) = block.split_at(block.len().min(max));
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if rest.is_empty() {
        flags |= flag::END_HEADERS;
    }
    Head { len: len(first), kind: kind::HEADERS, flags, stream }.encode(buf);
    buf.extend_from_slice(first);
    while !rest.is_empty() {
        let (part, after) = rest.split_at(rest.len().min(max));
        let flags = if after.is_empty() { flag::END_HEADERS } else { 0 };
        Head { len: len(part), kind: kind::CONTINUATION, flags, stream }.encode(buf);
        buf.extend_from_slice(part);
        rest = after;
    }
}

/// Appends a PRIORITY frame.
pub fn encode_priority(buf: &mut BytesMut, stream: StreamId, priority: Priority) {
    Head { len: 5, kind: kind::PRIORITY, flags: 0, stream }.encode(buf);
    let exclusive = if priority.exclusive { 0x8000_0000 } else { 0 };
    buf.put_u32(priority.dependency.get() | exclusive);
    buf.put_u8(priority.weight);
}

/// Appends an RST_STREAM frame.
pub fn encode_rst_stream(buf: &mut BytesMut, stream: StreamId, code: ErrorCode) {
    Head { len: 4, kind: kind::RST_STREAM, flags: 0, stream }.encode(buf);
    buf.put_u32(code.to_u32());
}

/// Appends a SETTINGS frame with the parameters present in `settings`.
pub fn encode_settings(buf: &mut BytesMut, settings: &Settings) {
    let count = settings.len();
    // why: 7 parameters of 6 bytes at most, far below any frame size limit.
    Head { len: len_of(count * 6), kind: kind::SETTINGS, flags: 0, stream: StreamId::ZERO }.encode(buf);
    settings.encode_payload(buf);
}

/// Appends a SETTINGS frame acknowledging the peer's.
pub fn encode_settings_ack(buf: &mut BytesMut) {
    Head { len: 0, kind: kind::SETTINGS, flags: flag::ACK, stream: StreamId::ZERO }.encode(buf);
}

/// Appends a PING frame (`ack`: the answer to the peer's PING, with its data).
pub fn encode_ping(buf: &mut BytesMut, ack: bool, data: [u8; 8]) {
    let flags = if ack { flag::ACK } else { 0 };
    Head { len: 8, kind: kind::PING, flags, stream: StreamId::ZERO }.encode(buf);
    buf.extend_from_slice(&data);
}

/// Appends a GOAWAY frame. `debug` is cut to what fits in a frame of the smallest allowed
/// SETTINGS_MAX_FRAME_SIZE (16376 bytes), so the frame fits any peer's limit.
pub fn encode_goaway(buf: &mut BytesMut, last_stream: StreamId, code: ErrorCode, debug: &[u8]) {
    let debug = &debug[..debug.len().min(DEFAULT_MAX_FRAME_SIZE as usize - 8)];
    Head { len: len_of(8 + debug.len()), kind: kind::GOAWAY, flags: 0, stream: StreamId::ZERO }.encode(buf);
    buf.put_u32(last_stream.get());
    buf.put_u32(code.to_u32());
    buf.extend_from_slice(debug);
}

/// Appends a WINDOW_UPDATE frame (stream 0: the connection's window). `increment` must be
/// 1..=2^31-1; the reserved bit is cleared.
pub fn encode_window_update(buf: &mut BytesMut, stream: StreamId, increment: u32) {
    debug_assert!((1..=MAX_WINDOW_SIZE).contains(&increment), "a WINDOW_UPDATE increment of {increment}");
    Head { len: 4, kind: kind::WINDOW_UPDATE, flags: 0, stream }.encode(buf);
    buf.put_u32(increment & MAX_WINDOW_SIZE);
}

/// The most payload bytes per frame for a peer's SETTINGS_MAX_FRAME_SIZE. why: a value outside
/// the allowed range cannot be in effect (received SETTINGS are checked), and a 0 would make
/// the splitting loops spin; clamping keeps every frame valid for any peer.
fn frame_limit(max_frame_size: u32) -> usize {
    max_frame_size.clamp(DEFAULT_MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE) as usize
}

/// The length of a chunk no longer than [`frame_limit`].
fn len(chunk: &[u8]) -> u32 {
    len_of(chunk.len())
}

fn len_of(n: usize) -> u32 {
    // why: every caller passes at most MAX_MAX_FRAME_SIZE bytes; saturating keeps a bug from
    // wrapping into a short frame header.
    u32::try_from(n).unwrap_or(u32::MAX)
}
