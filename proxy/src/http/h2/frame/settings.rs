//! SETTINGS parameters (RFC 9113 §6.5.2, RFC 8441 §3): reading and checking a SETTINGS
//! payload, and writing one.
use bytes::{BufMut, BytesMut};

use super::{DEFAULT_MAX_FRAME_SIZE, ErrorCode, FrameError, MAX_MAX_FRAME_SIZE, MAX_WINDOW_SIZE};

const HEADER_TABLE_SIZE: u16 = 0x1;
const ENABLE_PUSH: u16 = 0x2;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_FRAME_SIZE: u16 = 0x5;
const MAX_HEADER_LIST_SIZE: u16 = 0x6;
const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
/// One parameter on the wire: a 16-bit identifier and a 32-bit value.
pub(super) const PARAM_LEN: usize = 6;

/// The parameters of one SETTINGS frame: `None` for a parameter the frame does not carry
/// (its value stays what it was). A parameter sent twice in one frame keeps its last value,
/// which is what processing them in order gives (RFC 9113 §6.5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    /// SETTINGS_HEADER_TABLE_SIZE: the HPACK dynamic table size the sender's decoder allows.
    pub header_table_size: Option<u32>,
    /// SETTINGS_ENABLE_PUSH.
    pub enable_push: Option<bool>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: Option<u32>,
    /// SETTINGS_INITIAL_WINDOW_SIZE: at most 2^31-1.
    pub initial_window_size: Option<u32>,
    /// SETTINGS_MAX_FRAME_SIZE: 16384..=16777215.
    pub max_frame_size: Option<u32>,
    /// SETTINGS_MAX_HEADER_LIST_SIZE (advisory).
    pub max_header_list_size: Option<u32>,
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): extended CONNECT.
    pub enable_connect_protocol: Option<bool>,
}

impl Settings {
    /// The parameters in a SETTINGS payload (its length a multiple of 6, checked by the
    /// caller), each value checked; unknown identifiers are ignored (RFC 9113 §6.5.2).
    pub(super) fn parse(payload: &[u8]) -> Result<Settings, FrameError> {
        let mut s = Settings::default();
        for p in payload.chunks_exact(PARAM_LEN) {
            let id = u16::from_be_bytes([p[0], p[1]]);
            let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
            match id {
                HEADER_TABLE_SIZE => s.header_table_size = Some(value),
                ENABLE_PUSH => s.enable_push = Some(flag(value, "SETTINGS_ENABLE_PUSH other than 0 or 1")?),
                MAX_CONCURRENT_STREAMS => s.max_concurrent_streams = Some(value),
                INITIAL_WINDOW_SIZE => {
                    if value > MAX_WINDOW_SIZE {
                        return Err(FrameError::connection(
                            ErrorCode::FlowControlError,
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    s.initial_window_size = Some(value);
                }
                MAX_FRAME_SIZE => {
                    if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) {
                        return Err(FrameError::connection(
                            ErrorCode::ProtocolError,
                            "SETTINGS_MAX_FRAME_SIZE outside 16384..=16777215",
                        ));
                    }
                    s.max_frame_size = Some(value);
                }
                MAX_HEADER_LIST_SIZE => s.max_header_list_size = Some(value),
                ENABLE_CONNECT_PROTOCOL => {
                    s.enable_connect_protocol =
                        Some(flag(value, "SETTINGS_ENABLE_CONNECT_PROTOCOL other than 0 or 1")?);
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// How many parameters the frame carries.
    pub fn len(&self) -> usize {
        self.params().count()
    }

    /// Whether the frame carries no parameter.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parameters present, in identifier order, as sent.
    fn params(&self) -> impl Iterator<Item = (u16, u32)> {
        [
            (HEADER_TABLE_SIZE, self.header_table_size),
            (ENABLE_PUSH, self.enable_push.map(u32::from)),
            (MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (INITIAL_WINDOW_SIZE, self.initial_window_size),
            (MAX_FRAME_SIZE, self.max_frame_size),
            (MAX_HEADER_LIST_SIZE, self.max_header_list_size),
            (ENABLE_CONNECT_PROTOCOL, self.enable_connect_protocol.map(u32::from)),
        ]
        .into_iter()
        .filter_map(|(id, v)| Some((id, v?)))
    }

    /// Appends the parameters present (the payload of a SETTINGS frame) to `buf`.
    pub(super) fn encode_payload(&self, buf: &mut BytesMut) {
        for (id, value) in self.params() {
            buf.put_u16(id);
            buf.put_u32(value);
        }
    }
}

fn flag(value: u32, reason: &'static str) -> Result<bool, FrameError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(FrameError::connection(ErrorCode::ProtocolError, reason)),
    }
}
