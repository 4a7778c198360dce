//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte frame header, every frame type's payload, and
//! the rules that can be checked on one frame alone.
//!
//! **Decoding**: [`decode`] takes the caller's [`BytesMut`] (bytes read from the socket) and
//! the SETTINGS_MAX_FRAME_SIZE we advertised. It returns `Ok(None)` until a whole frame is
//! there, then splits the frame off the front of the buffer and returns it as a [`Frame`]
//! whose payloads (DATA, field block fragments, GOAWAY debug data) are [`Bytes`] slices of the
//! split-off part: nothing is copied, and the module keeps no buffer or state of its own. A
//! frame that breaks a rule is a [`FrameError`] carrying the error code, the scope (the whole
//! connection, or one stream: RFC 9113 §5.4) and a short reason for the log and GOAWAY debug
//! data. A stream error leaves the connection usable: the frame has been taken off the buffer,
//! and the next call decodes the next frame. After a connection error the connection must be
//! closed (GOAWAY), and what is left in the buffer means nothing.
//!
//! A HEADERS frame refused with a stream error hands its field block back in the error, for
//! the HPACK decoder to keep in step with the peer's encoder.
//!
//! **Encoding**: the `encode_*` functions append one frame to a [`BytesMut`]; DATA and HEADERS
//! take the peer's SETTINGS_MAX_FRAME_SIZE and write as many DATA frames, or CONTINUATION
//! frames after the HEADERS frame, as it takes. [`data_head`] gives the 9-byte header of a
//! DATA frame alone, for a vectored write of the header and the payload as is.
//!
//! **Left to the caller** (the connection): the stream states and which frames each allows
//! (RFC 9113 §5.1), stream id order and concurrency, flow control windows (a DATA frame's
//! `flow_len` is what it counts), the CONTINUATION sequence across frames
//! (§6.10: nothing but CONTINUATION on the same stream until END_HEADERS), SETTINGS ordering
//! and acknowledgement, PING answers, what a server does with PUSH_PROMISE (a protocol error,
//! since it never enables push), and HPACK: field block fragments stay opaque bytes here.
//! Frames of unknown types come back as [`Frame::Unknown`] for the caller to ignore (§5.5),
//! unknown flags and the reserved bits are ignored.
use std::fmt;

use bytes::{Bytes, BytesMut};

mod decode;
mod encode;
mod settings;

pub use decode::decode;
pub use encode::{
    data_head, encode_data, encode_goaway, encode_headers, encode_ping, encode_priority, encode_rst_stream,
    encode_settings, encode_settings_ack, encode_window_update,
};
pub use settings::Settings;

/// The client connection preface (RFC 9113 §3.4), followed on the wire by a SETTINGS frame.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of the frame header.
pub const HEAD_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE until changed, and its smallest allowed value (RFC 9113 §6.5.2).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest allowed SETTINGS_MAX_FRAME_SIZE: the 24-bit length field's maximum.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window and WINDOW_UPDATE increment (RFC 9113 §6.9).
pub const MAX_WINDOW_SIZE: u32 = (1 << 31) - 1;

/// Frame type codes (RFC 9113 §6).
pub(crate) mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6); each is defined only for some frame types.
pub(crate) mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// A stream identifier: 31 bits (the reserved high bit of the wire field is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId(u32);

impl StreamId {
    /// Stream 0: the connection itself.
    pub const ZERO: StreamId = StreamId(0);
    /// The largest stream identifier.
    pub const MAX: StreamId = StreamId(0x7fff_ffff);

    /// The identifier in the low 31 bits of `id`; the reserved bit is cleared.
    pub const fn new(id: u32) -> StreamId {
        StreamId(id & 0x7fff_ffff)
    }

    /// The identifier as a number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Whether this is stream 0, the connection.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Whether a client opens streams with this identifier (odd ones; RFC 9113 §5.1.1).
    pub const fn is_client_initiated(self) -> bool {
        !self.0.is_multiple_of(2)
    }
}

impl From<u32> for StreamId {
    fn from(id: u32) -> StreamId {
        StreamId::new(id)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An error code of RST_STREAM and GOAWAY frames (RFC 9113 §7). A code this module does not
/// know is kept as its number ([`ErrorCode::Unknown`], which [`ErrorCode::from_u32`] never
/// makes for a known code): RFC 9113 §7 says to treat it as INTERNAL_ERROR, a choice left to
/// the caller, which may want to log the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    NoError,
    ProtocolError,
    InternalError,
    FlowControlError,
    SettingsTimeout,
    StreamClosed,
    FrameSizeError,
    RefusedStream,
    Cancel,
    CompressionError,
    ConnectError,
    EnhanceYourCalm,
    InadequateSecurity,
    Http11Required,
    Unknown(u32),
}

impl ErrorCode {
    /// The code for a number read from a frame.
    pub const fn from_u32(code: u32) -> ErrorCode {
        match code {
            0x0 => ErrorCode::NoError,
            0x1 => ErrorCode::ProtocolError,
            0x2 => ErrorCode::InternalError,
            0x3 => ErrorCode::FlowControlError,
            0x4 => ErrorCode::SettingsTimeout,
            0x5 => ErrorCode::StreamClosed,
            0x6 => ErrorCode::FrameSizeError,
            0x7 => ErrorCode::RefusedStream,
            0x8 => ErrorCode::Cancel,
            0x9 => ErrorCode::CompressionError,
            0xa => ErrorCode::ConnectError,
            0xb => ErrorCode::EnhanceYourCalm,
            0xc => ErrorCode::InadequateSecurity,
            0xd => ErrorCode::Http11Required,
            other => ErrorCode::Unknown(other),
        }
    }

    /// The number sent in a frame.
    pub const fn to_u32(self) -> u32 {
        match self {
            ErrorCode::NoError => 0x0,
            ErrorCode::ProtocolError => 0x1,
            ErrorCode::InternalError => 0x2,
            ErrorCode::FlowControlError => 0x3,
            ErrorCode::SettingsTimeout => 0x4,
            ErrorCode::StreamClosed => 0x5,
            ErrorCode::FrameSizeError => 0x6,
            ErrorCode::RefusedStream => 0x7,
            ErrorCode::Cancel => 0x8,
            ErrorCode::CompressionError => 0x9,
            ErrorCode::ConnectError => 0xa,
            ErrorCode::EnhanceYourCalm => 0xb,
            ErrorCode::InadequateSecurity => 0xc,
            ErrorCode::Http11Required => 0xd,
            ErrorCode::Unknown(other) => other,
        }
    }

    /// The name the RFC gives the code.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::NoError => "NO_ERROR",
            ErrorCode::ProtocolError => "PROTOCOL_ERROR",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::FlowControlError => "FLOW_CONTROL_ERROR",
            ErrorCode::SettingsTimeout => "SETTINGS_TIMEOUT",
            ErrorCode::StreamClosed => "STREAM_CLOSED",
            ErrorCode::FrameSizeError => "FRAME_SIZE_ERROR",
            ErrorCode::RefusedStream => "REFUSED_STREAM",
            ErrorCode::Cancel => "CANCEL",
            ErrorCode::CompressionError => "COMPRESSION_ERROR",
            ErrorCode::ConnectError => "CONNECT_ERROR",
            ErrorCode::EnhanceYourCalm => "ENHANCE_YOUR_CALM",
            ErrorCode::InadequateSecurity => "INADEQUATE_SECURITY",
            ErrorCode::Http11Required => "HTTP_1_1_REQUIRED",
            ErrorCode::Unknown(_) => "unknown",
        }
    }
}

impl From<u32> for ErrorCode {
    fn from(code: u32) -> ErrorCode {
        ErrorCode::from_u32(code)
    }
}

impl From<ErrorCode> for u32 {
    fn from(code: ErrorCode) -> u32 {
        code.to_u32()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Unknown(code) => write!(f, "unknown error code {code:#x}"),
            known => f.write_str(known.name()),
        }
    }
}

/// What an error ends (RFC 9113 §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole connection: GOAWAY with the code, then close.
    Connection,
    /// One stream: RST_STREAM with the code; the connection goes on.
    Stream(StreamId),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Connection => f.write_str("connection error"),
            Scope::Stream(id) => write!(f, "stream error on stream {id}"),
        }
    }
}

/// A frame that breaks a rule of RFC 9113 §4–§6.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The connection must end: GOAWAY with `code`, `reason` as debug data if wanted.
    #[error("connection error {code}: {reason}")]
    Connection { code: ErrorCode, reason: &'static str },
    /// The stream must end with RST_STREAM `code`; the frame has been taken off the buffer.
    #[error("stream error {code} on stream {stream}: {reason}")]
    Stream {
        stream: StreamId,
        code: ErrorCode,
        reason: &'static str,
        /// The field block fragment of a HEADERS frame rejected this way, with its
        /// END_HEADERS flag. why: the HPACK decoder must still see the block (and the
        /// CONTINUATION frames that follow it) or its dynamic table falls out of step with
        /// the peer's (RFC 9113 §4.3); the fields are then discarded.
        block: Option<(Bytes, bool)>,
    },
}

impl FrameError {
    pub(crate) const fn connection(code: ErrorCode, reason: &'static str) -> FrameError {
        FrameError::Connection { code, reason }
    }

    pub(crate) const fn stream(stream: StreamId, code: ErrorCode, reason: &'static str) -> FrameError {
        FrameError::Stream { stream, code, reason, block: None }
    }

    /// The error code to send.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Connection { code, .. } | FrameError::Stream { code, .. } => *code,
        }
    }

    /// What the error ends.
    pub fn scope(&self) -> Scope {
        match self {
            FrameError::Connection { .. } => Scope::Connection,
            FrameError::Stream { stream, .. } => Scope::Stream(*stream),
        }
    }

    /// A short reason, for the log and GOAWAY debug data.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Connection { reason, .. } | FrameError::Stream { reason, .. } => reason,
        }
    }
}

/// The priority fields of a HEADERS or PRIORITY frame (RFC 9113 §5.3.2, deprecated by RFC 9113
/// but still parsed: they take room in the payload, and a stream may not depend on itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    /// The E flag.
    pub exclusive: bool,
    /// The stream this one depends on.
    pub dependency: StreamId,
    /// The weight as sent: 0..=255 stands for a weight of 1..=256.
    pub weight: u8,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA (RFC 9113 §6.1).
    Data {
        stream: StreamId,
        /// The data, padding removed.
        payload: Bytes,
        end_stream: bool,
        /// The whole payload length, Pad Length field and padding included: what the frame
        /// counts against the flow-control windows.
        flow_len: u32,
    },
    /// HEADERS (RFC 9113 §6.2).
    Headers {
        stream: StreamId,
        /// The field block fragment, padding and priority fields removed.
        block: Bytes,
        end_stream: bool,
        end_headers: bool,
        priority: Option<Priority>,
    },
    /// PRIORITY (RFC 9113 §6.3).
    Priority { stream: StreamId, priority: Priority },
    /// RST_STREAM (RFC 9113 §6.4).
    RstStream { stream: StreamId, code: ErrorCode },
    /// SETTINGS (RFC 9113 §6.5); an ack has no parameters.
    Settings { ack: bool, params: Settings },
    /// PUSH_PROMISE (RFC 9113 §6.6): parsed, but only a client may receive one.
    PushPromise {
        stream: StreamId,
        promised: StreamId,
        /// The field block fragment, padding removed.
        block: Bytes,
        end_headers: bool,
    },
    /// PING (RFC 9113 §6.7).
    Ping { ack: bool, data: [u8; 8] },
    /// GOAWAY (RFC 9113 §6.8).
    GoAway { last_stream: StreamId, code: ErrorCode, debug: Bytes },
    /// WINDOW_UPDATE (RFC 9113 §6.9); the increment is 1..=2^31-1.
    WindowUpdate { stream: StreamId, increment: u32 },
    /// CONTINUATION (RFC 9113 §6.10).
    Continuation { stream: StreamId, block: Bytes, end_headers: bool },
    /// A frame of a type this module does not know: to be ignored (RFC 9113 §5.5).
    Unknown { kind: u8, stream: StreamId },
}

impl Frame {
    /// The stream the frame is on (0 for the connection-level frames).
    pub fn stream(&self) -> StreamId {
        match self {
            Frame::Data { stream, .. }
            | Frame::Headers { stream, .. }
            | Frame::Priority { stream, .. }
            | Frame::RstStream { stream, .. }
            | Frame::PushPromise { stream, .. }
            | Frame::WindowUpdate { stream, .. }
            | Frame::Continuation { stream, .. }
            | Frame::Unknown { stream, .. } => *stream,
            Frame::Settings { .. } | Frame::Ping { .. } | Frame::GoAway { .. } => StreamId::ZERO,
        }
    }
}

/// A frame header (RFC 9113 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The payload length (24 bits).
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: StreamId,
}

impl Head {
    /// The header at the start of `bytes`, if there are 9 bytes.
    pub fn parse(bytes: &[u8]) -> Option<Head> {
        let h: &[u8; HEAD_LEN] = bytes.get(..HEAD_LEN)?.try_into().ok()?;
        Some(Head {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: StreamId::new(u32::from_be_bytes([h[5], h[6], h[7], h[8]])),
        })
    }

    /// The header's 9 bytes. `len` must fit in 24 bits (higher bits are dropped).
    pub fn to_bytes(self) -> [u8; HEAD_LEN] {
        debug_assert!(self.len <= MAX_MAX_FRAME_SIZE, "a frame payload of {} bytes", self.len);
        let [_, l0, l1, l2] = self.len.to_be_bytes();
        let [s0, s1, s2, s3] = self.stream.get().to_be_bytes();
        [l0, l1, l2, self.kind, self.flags, s0, s1, s2, s3]
    }

    /// Appends the header to `buf`.
    pub fn encode(self, buf: &mut BytesMut) {
        buf.extend_from_slice(&self.to_bytes());
    }
}

#[cfg(test)]
mod tests;
