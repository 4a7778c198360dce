//! Every rule the decoder checks: the error code and its scope (RFC 9113 §5.4).
use bytes::{Bytes, BytesMut};

use super::{MAX, one, raw};
use crate::http::h2::frame::*;

const CONN: Scope = Scope::Connection;

fn on(stream: u32) -> Scope {
    Scope::Stream(StreamId::new(stream))
}

/// The error decoding `bytes` gives, checked against `code` and `scope`.
#[track_caller]
fn rejects(mut bytes: BytesMut, code: ErrorCode, scope: Scope) -> FrameError {
    let e = decode(&mut bytes, MAX).expect_err("an error");
    assert_eq!((e.code(), e.scope()), (code, scope), "{e}");
    assert!(!e.reason().is_empty());
    e
}

fn setting(id: u16, value: u32) -> BytesMut {
    raw(0x4, 0, 0, &[&id.to_be_bytes()[..], &value.to_be_bytes()].concat())
}

#[test]
fn length_above_the_max_frame_size_is_an_error_once_the_header_is_in() {
    let big = raw(0x0, 0, 1, &vec![0; MAX as usize + 1]);
    // Only the header read: no need to wait for (or buffer) the payload.
    rejects(BytesMut::from(&big[..9]), ErrorCode::FrameSizeError, CONN);
    // Any type, even one that is otherwise ignored.
    rejects(BytesMut::from(&raw(0xfa, 0, 0, &vec![0; MAX as usize + 1])[..9]), ErrorCode::FrameSizeError, CONN);
    // Allowed under a larger advertised limit; the limit itself is allowed.
    let mut b = big.clone();
    assert!(matches!(decode(&mut b, MAX + 1), Ok(Some(Frame::Data { .. }))));
    assert!(matches!(one(raw(0x0, 0, 1, &vec![0; MAX as usize])), Frame::Data { .. }));
    // A limit below the protocol's minimum cannot be in effect: 16384 is always allowed.
    let mut b = raw(0x0, 0, 1, &vec![0; MAX as usize]);
    assert!(matches!(decode(&mut b, 100), Ok(Some(Frame::Data { .. }))));
}

#[test]
fn stream_frames_on_stream_zero() {
    for (kind, payload) in [
        (0x0, &b"x"[..]),               // DATA
        (0x1, &[0x88][..]),             // HEADERS
        (0x2, &[0, 0, 0, 1, 0][..]),    // PRIORITY
        (0x3, &[0, 0, 0, 0][..]),       // RST_STREAM
        (0x5, &[0, 0, 0, 2, 0x88][..]), // PUSH_PROMISE
        (0x9, &[0x88][..]),             // CONTINUATION
    ] {
        rejects(raw(kind, 0x4, 0, payload), ErrorCode::ProtocolError, CONN);
        // The reserved bit does not make a stream id.
        rejects(raw(kind, 0x4, 0x8000_0000, payload), ErrorCode::ProtocolError, CONN);
    }
}

#[test]
fn connection_frames_on_a_stream() {
    rejects(raw(0x4, 0, 1, b""), ErrorCode::ProtocolError, CONN); // SETTINGS
    rejects(raw(0x4, 0x1, 1, b""), ErrorCode::ProtocolError, CONN); // SETTINGS ack
    rejects(raw(0x6, 0, 1, b"12345678"), ErrorCode::ProtocolError, CONN); // PING
    rejects(raw(0x7, 0, 1, &[0; 8]), ErrorCode::ProtocolError, CONN); // GOAWAY
}

#[test]
fn padding_as_long_as_the_payload() {
    // DATA: Pad Length equal to the payload length (it counts itself), and beyond.
    rejects(raw(0x0, 0x8, 1, b"\x04abc"), ErrorCode::ProtocolError, CONN);
    rejects(raw(0x0, 0x8, 1, b"\xffabc"), ErrorCode::ProtocolError, CONN);
    rejects(raw(0x0, 0x8, 1, b"\x01"), ErrorCode::ProtocolError, CONN);
    assert!(matches!(one(raw(0x0, 0x8, 1, b"\x03abc")), Frame::Data { flow_len: 4, .. }), "one less is fine");
    // No room for the Pad Length field itself.
    rejects(raw(0x0, 0x8, 1, b""), ErrorCode::FrameSizeError, CONN);
    // HEADERS.
    rejects(raw(0x1, 0xc, 1, &[0x02, 0x88]), ErrorCode::ProtocolError, CONN);
    rejects(raw(0x1, 0xc, 1, &[]), ErrorCode::FrameSizeError, CONN);
    // HEADERS with PRIORITY: the padding may not reach into the priority fields.
    rejects(raw(0x1, 0x2c, 1, &[0x01, 0, 0, 0, 3, 16]), ErrorCode::ProtocolError, CONN);
    assert!(matches!(one(raw(0x1, 0x2c, 1, &[0x00, 0, 0, 0, 3, 16])), Frame::Headers { .. }));
    // HEADERS with PRIORITY but no room for the fields.
    rejects(raw(0x1, 0x24, 1, &[0, 0, 0, 3]), ErrorCode::FrameSizeError, CONN);
    rejects(raw(0x1, 0x2c, 1, &[0x00, 0, 0, 0, 3]), ErrorCode::FrameSizeError, CONN);
    // PUSH_PROMISE: padding reaching into the promised stream id, or no room for it.
    rejects(raw(0x5, 0xc, 1, &[0x02, 0, 0, 0, 2, 0x88]), ErrorCode::ProtocolError, CONN);
    rejects(raw(0x5, 0x4, 1, &[0, 0, 2]), ErrorCode::FrameSizeError, CONN);
}

#[test]
fn fixed_length_frames() {
    for len in [0, 4, 6] {
        rejects(raw(0x2, 0, 3, &vec![0; len]), ErrorCode::FrameSizeError, on(3)); // PRIORITY
    }
    for len in [0, 3, 5] {
        rejects(raw(0x3, 0, 1, &vec![0; len]), ErrorCode::FrameSizeError, CONN); // RST_STREAM
        rejects(raw(0x8, 0, 0, &vec![0; len]), ErrorCode::FrameSizeError, CONN); // WINDOW_UPDATE
        rejects(raw(0x8, 0, 1, &vec![0; len]), ErrorCode::FrameSizeError, CONN); // on a stream too
    }
    for len in [0, 7, 9] {
        rejects(raw(0x6, 0, 0, &vec![0; len]), ErrorCode::FrameSizeError, CONN); // PING
        rejects(raw(0x6, 0x1, 0, &vec![0; len]), ErrorCode::FrameSizeError, CONN); // PING ack
    }
    for len in [0, 7] {
        rejects(raw(0x7, 0, 0, &vec![0; len]), ErrorCode::FrameSizeError, CONN); // GOAWAY
    }
}

#[test]
fn settings_frame_rules() {
    rejects(raw(0x4, 0x1, 0, &[0, 4, 0, 0, 0, 1]), ErrorCode::FrameSizeError, CONN); // ack with payload
    for len in [1, 5, 7, 13] {
        rejects(raw(0x4, 0, 0, &vec![0; len]), ErrorCode::FrameSizeError, CONN);
    }
}

#[test]
fn settings_values() {
    rejects(setting(0x2, 2), ErrorCode::ProtocolError, CONN); // ENABLE_PUSH
    rejects(setting(0x4, 1 << 31), ErrorCode::FlowControlError, CONN); // INITIAL_WINDOW_SIZE
    rejects(setting(0x4, u32::MAX), ErrorCode::FlowControlError, CONN);
    rejects(setting(0x5, MAX - 1), ErrorCode::ProtocolError, CONN); // MAX_FRAME_SIZE
    rejects(setting(0x5, 0), ErrorCode::ProtocolError, CONN);
    rejects(setting(0x5, MAX_MAX_FRAME_SIZE + 1), ErrorCode::ProtocolError, CONN);
    rejects(setting(0x8, 2), ErrorCode::ProtocolError, CONN); // ENABLE_CONNECT_PROTOCOL
    // The bounds themselves are fine.
    let ok = |id, value| matches!(one(setting(id, value)), Frame::Settings { ack: false, .. });
    assert!(ok(0x2, 0) && ok(0x2, 1) && ok(0x8, 0) && ok(0x8, 1));
    assert!(ok(0x4, 0) && ok(0x4, MAX_WINDOW_SIZE));
    assert!(ok(0x5, MAX) && ok(0x5, MAX_MAX_FRAME_SIZE));
    assert!(ok(0x1, u32::MAX) && ok(0x3, 0) && ok(0x6, u32::MAX), "no limit on the others");
    // A bad value after good ones still fails the frame.
    let mut two = setting(0x3, 100);
    two.extend_from_slice(&setting(0x2, 7)[9..]);
    two[2] = 12;
    rejects(two, ErrorCode::ProtocolError, CONN);
}

#[test]
fn window_update_of_zero() {
    rejects(raw(0x8, 0, 0, &[0, 0, 0, 0]), ErrorCode::ProtocolError, CONN);
    rejects(raw(0x8, 0, 5, &[0, 0, 0, 0]), ErrorCode::ProtocolError, on(5));
    // Only the reserved bit set: still an increment of 0.
    rejects(raw(0x8, 0, 5, &[0x80, 0, 0, 0]), ErrorCode::ProtocolError, on(5));
}

#[test]
fn a_stream_depending_on_itself() {
    rejects(raw(0x2, 0, 3, &[0, 0, 0, 3, 16]), ErrorCode::ProtocolError, on(3));
    rejects(raw(0x2, 0, 3, &[0x80, 0, 0, 3, 16]), ErrorCode::ProtocolError, on(3));
    // HEADERS: the block comes with the error, for the HPACK decoder.
    let e = rejects(raw(0x1, 0x24, 7, &[0, 0, 0, 7, 16, 0x82, 0x84]), ErrorCode::ProtocolError, on(7));
    let FrameError::Stream { block, .. } = e else { panic!("{e:?}") };
    assert_eq!(block, Some((Bytes::from_static(&[0x82, 0x84]), true)));
    // With padding and without END_HEADERS.
    let e = rejects(raw(0x1, 0x28, 7, &[1, 0, 0, 0, 7, 16, 0x82, 0]), ErrorCode::ProtocolError, on(7));
    let FrameError::Stream { block, .. } = e else { panic!("{e:?}") };
    assert_eq!(block, Some((Bytes::from_static(&[0x82]), false)));
}

#[test]
fn a_stream_error_takes_the_frame_off_and_decoding_goes_on() {
    let mut b = BytesMut::new();
    for f in [
        raw(0x2, 0, 3, &[0, 0, 0, 3, 16]),          // self-dependency
        raw(0x2, 0, 3, &[0; 4]),                    // PRIORITY too short
        raw(0x8, 0, 5, &[0, 0, 0, 0]),              // increment 0
        raw(0x1, 0x25, 7, &[0, 0, 0, 7, 16, 0x88]), // HEADERS self-dependency
        raw(0x6, 0, 0, b"pingpong"),
    ] {
        b.extend_from_slice(&f);
    }
    for stream in [3, 3, 5, 7] {
        let e = decode(&mut b, MAX).expect_err("a stream error");
        assert_eq!(e.scope(), on(stream));
    }
    assert_eq!(decode(&mut b, MAX), Ok(Some(Frame::Ping { ack: false, data: *b"pingpong" })));
    assert!(b.is_empty());
}

#[test]
fn errors_say_what_and_where() {
    let e = rejects(raw(0x8, 0, 5, &[0, 0, 0, 0]), ErrorCode::ProtocolError, on(5));
    assert_eq!(e.to_string(), "stream error PROTOCOL_ERROR on stream 5: WINDOW_UPDATE increment of 0");
    let e = rejects(raw(0x6, 0, 0, b""), ErrorCode::FrameSizeError, CONN);
    assert_eq!(e.to_string(), "connection error FRAME_SIZE_ERROR: PING not 8 bytes long");
}
