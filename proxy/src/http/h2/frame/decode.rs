//! Decoding one frame off the front of the caller's buffer, and the checks of RFC 9113 §4–§6
//! that need nothing but the frame.
use bytes::{Buf, Bytes, BytesMut};

use super::settings::{PARAM_LEN, Settings};
use super::{DEFAULT_MAX_FRAME_SIZE, ErrorCode, Frame, FrameError, HEAD_LEN, Head, Priority, StreamId, flag, kind};

/// Length of the priority fields (stream dependency and weight) in HEADERS and PRIORITY.
const PRIORITY_LEN: usize = 5;

/// Decodes the frame at the front of `buf`, which holds bytes read from the connection.
///
/// `max_frame_size` is the SETTINGS_MAX_FRAME_SIZE in effect for what the peer sends us (the
/// value we advertised once acknowledged, 16384 before). Returns `Ok(None)` when the buffer
/// does not hold a whole frame yet (nothing is taken off it); otherwise the frame is split off
/// the buffer and returned, its payloads slices of the split part. A frame longer than
/// `max_frame_size` is an error as soon as its header is in, without waiting for the payload.
/// On a [`FrameError::Stream`] the frame has been taken off the buffer and decoding can go
/// on; after a [`FrameError::Connection`] the buffer's contents mean nothing.
pub fn decode(buf: &mut BytesMut, max_frame_size: u32) -> Result<Option<Frame>, FrameError> {
    let Some(head) = Head::parse(buf) else { return Ok(None) };
    // why: a value below the protocol's minimum cannot be in effect (RFC 9113 §6.5.2); the
    // peer may always send frames of 16384 bytes.
    if head.len > max_frame_size.max(DEFAULT_MAX_FRAME_SIZE) {
        return Err(conn(ErrorCode::FrameSizeError, "frame larger than SETTINGS_MAX_FRAME_SIZE"));
    }
    let total = HEAD_LEN + head.len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    match head.kind {
        kind::DATA | kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION | kind::GOAWAY => {
            let mut payload = buf.split_to(total).freeze();
            payload.advance(HEAD_LEN);
            with_bytes(head, payload).map(Some)
        }
        _ => {
            // why: these frames keep no bytes of the payload, so the buffer is only advanced;
            // splitting would make it shared (and the next reserve might then copy).
            let frame = fixed(head, &buf[HEAD_LEN..total]);
            buf.advance(total);
            frame.map(Some)
        }
    }
}

/// The frames whose payload (or part of it) is returned as bytes.
fn with_bytes(head: Head, mut payload: Bytes) -> Result<Frame, FrameError> {
    let stream = head.stream;
    match head.kind {
        kind::DATA => {
            if stream.is_zero() {
                return Err(conn(ErrorCode::ProtocolError, "DATA on stream 0"));
            }
            unpad(head, &mut payload, 0)?;
            Ok(Frame::Data { stream, payload, end_stream: has(head, flag::END_STREAM), flow_len: head.len })
        }
        kind::HEADERS => {
            if stream.is_zero() {
                return Err(conn(ErrorCode::ProtocolError, "HEADERS on stream 0"));
            }
            let prioritised = has(head, flag::PRIORITY);
            unpad(head, &mut payload, if prioritised { PRIORITY_LEN } else { 0 })?;
            let end_headers = has(head, flag::END_HEADERS);
            let priority = if prioritised {
                let p = priority(&payload[..PRIORITY_LEN]);
                payload.advance(PRIORITY_LEN);
                if p.dependency == stream {
                    return Err(FrameError::Stream {
                        stream,
                        code: ErrorCode::ProtocolError,
                        reason: "HEADERS priority depends on its own stream",
                        block: Some((payload, end_headers)),
                    });
                }
                Some(p)
            } else {
                None
            };
            Ok(Frame::Headers {
                stream,
                block: payload,
                end_stream: has(head, flag::END_STREAM),
                end_headers,
                priority,
            })
        }
        kind::PUSH_PROMISE => {
            if stream.is_zero() {
                return Err(conn(ErrorCode::ProtocolError, "PUSH_PROMISE on stream 0"));
            }
            unpad(head, &mut payload, 4)?;
            let promised = StreamId::new(payload.get_u32());
            Ok(Frame::PushPromise { stream, promised, block: payload, end_headers: has(head, flag::END_HEADERS) })
        }
        kind::CONTINUATION => {
            if stream.is_zero() {
                return Err(conn(ErrorCode::ProtocolError, "CONTINUATION on stream 0"));
            }
            Ok(Frame::Continuation { stream, block: payload, end_headers: has(head, flag::END_HEADERS) })
        }
        _ => {
            // GOAWAY, the only other frame routed here.
            if !stream.is_zero() {
                return Err(conn(ErrorCode::ProtocolError, "GOAWAY on a stream"));
            }
            if payload.len() < 8 {
                return Err(conn(ErrorCode::FrameSizeError, "GOAWAY shorter than 8 bytes"));
            }
            let last_stream = StreamId::new(payload.get_u32());
            let code = ErrorCode::from_u32(payload.get_u32());
            Ok(Frame::GoAway { last_stream, code, debug: payload })
        }
    }
}

/// The frames read into fixed fields (and unknown frames).
fn fixed(head: Head, payload: &[u8]) -> Result<Frame, FrameError> {
    let stream = head.stream;
    match head.kind {
        kind::PRIORITY => {
            if stream.is_zero() {
                return Err(conn(ErrorCode::ProtocolError, "PRIORITY on stream 0"));
            }
            if payload.len() != PRIORITY_LEN {
                return Err(FrameError::stream(stream, ErrorCode::FrameSizeError, "PRIORITY not 5 bytes long"));
            }
            let priority = priority(payload);
            if priority.dependency == stream {
                return Err(FrameError::stream(
                    stream,
                    ErrorCode::ProtocolError,
                    "PRIORITY makes a stream depend on itself",
                ));
            }
            Ok(Frame::Priority { stream, priority })
        }
        kind::RST_STREAM => {
            if stream.is_zero() {
                return Err(conn(ErrorCode::ProtocolError, "RST_STREAM on stream 0"));
            }
            let code = word(payload).ok_or(conn(ErrorCode::FrameSizeError, "RST_STREAM not 4 bytes long"))?;
            Ok(Frame::RstStream { stream, code: ErrorCode::from_u32(code) })
        }
        kind::SETTINGS => {
            if !stream.is_zero() {
                return Err(conn(ErrorCode::ProtocolError, "SETTINGS on a stream"));
            }
            let ack = has(head, flag::ACK);
            if ack && !payload.is_empty() {
                return Err(conn(ErrorCode::FrameSizeError, "SETTINGS ack with a payload"));
            }
            if !payload.len().is_multiple_of(PARAM_LEN) {
                return Err(conn(ErrorCode::FrameSizeError, "SETTINGS length not a multiple of 6"));
            }
            Ok(Frame::Settings { ack, params: Settings::parse(payload)? })
        }
        kind::PING => {
            if !stream.is_zero() {
                return Err(conn(ErrorCode::ProtocolError, "PING on a stream"));
            }
            let data: [u8; 8] =
                payload.try_into().map_err(|_| conn(ErrorCode::FrameSizeError, "PING not 8 bytes long"))?;
            Ok(Frame::Ping { ack: has(head, flag::ACK), data })
        }
        kind::WINDOW_UPDATE => {
            let raw = word(payload).ok_or(conn(ErrorCode::FrameSizeError, "WINDOW_UPDATE not 4 bytes long"))?;
            let increment = raw & 0x7fff_ffff;
            if increment == 0 {
                const REASON: &str = "WINDOW_UPDATE increment of 0";
                return Err(if stream.is_zero() {
                    conn(ErrorCode::ProtocolError, REASON)
                } else {
                    FrameError::stream(stream, ErrorCode::ProtocolError, REASON)
                });
            }
            Ok(Frame::WindowUpdate { stream, increment })
        }
        other => Ok(Frame::Unknown { kind: other, stream }),
    }
}

/// Removes the Pad Length field and the padding from a PADDED frame's payload, after checking
/// that the payload holds them and `fixed` bytes of other fields.
fn unpad(head: Head, payload: &mut Bytes, fixed: usize) -> Result<(), FrameError> {
    if !has(head, flag::PADDED) {
        if payload.len() < fixed {
            return Err(conn(ErrorCode::FrameSizeError, "frame too short for its fields"));
        }
        return Ok(());
    }
    let Some(&pad) = payload.first() else {
        return Err(conn(ErrorCode::FrameSizeError, "PADDED frame without a Pad Length"));
    };
    if payload.len() < 1 + fixed {
        return Err(conn(ErrorCode::FrameSizeError, "frame too short for its fields"));
    }
    payload.advance(1);
    // why: RFC 9113 §6.1, §6.2, §6.6: padding as long as the payload or longer is a connection
    // error of type PROTOCOL_ERROR; the fixed fields (priority, promised stream) are part of
    // the payload the padding may not reach into.
    let room = payload.len() - fixed;
    if usize::from(pad) > room {
        return Err(conn(ErrorCode::ProtocolError, "padding as long as the payload"));
    }
    payload.truncate(payload.len() - usize::from(pad));
    Ok(())
}

fn priority(p: &[u8]) -> Priority {
    let dep = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
    Priority { exclusive: dep & 0x8000_0000 != 0, dependency: StreamId::new(dep), weight: p[4] }
}

/// A payload of exactly 4 bytes as a number.
fn word(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.try_into().ok()?))
}

fn has(head: Head, flag: u8) -> bool {
    head.flags & flag != 0
}

const fn conn(code: ErrorCode, reason: &'static str) -> FrameError {
    FrameError::connection(code, reason)
}
