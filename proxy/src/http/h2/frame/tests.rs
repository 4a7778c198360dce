//! The frame layer: round trips through the encoder and decoder, hand-written byte vectors,
//! frames split over reads and packed in one buffer. The error rules are in `errors`, the
//! exchanges with the `h2` crate as a real peer in `interop`.
use bytes::{BufMut, Bytes, BytesMut};

use super::*;

mod errors;
mod interop;

const MAX: u32 = DEFAULT_MAX_FRAME_SIZE;

/// A frame as raw bytes: the header for `payload`, then `payload`.
pub(super) fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    b.put_u8(kind);
    b.put_u8(flags);
    b.put_u32(stream);
    b.put_slice(payload);
    b
}

/// Decodes the one frame `bytes` hold, checking it is all of them.
pub(super) fn one(mut bytes: BytesMut) -> Frame {
    let frame = decode(&mut bytes, MAX).unwrap().expect("a whole frame");
    assert!(bytes.is_empty(), "{} bytes left after {frame:?}", bytes.len());
    frame
}

/// Decodes every frame in `bytes`.
fn all(mut bytes: BytesMut, max: u32) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(f) = decode(&mut bytes, max).unwrap() {
        out.push(f);
    }
    assert!(bytes.is_empty(), "{} bytes of a partial frame left", bytes.len());
    out
}

fn s(id: u32) -> StreamId {
    StreamId::new(id)
}

#[test]
fn data_round_trips() {
    let mut b = BytesMut::new();
    encode_data(&mut b, s(1), b"hello", false, MAX);
    assert_eq!(&b[..], b"\0\0\x05\x00\x00\0\0\0\x01hello", "the exact bytes");
    assert_eq!(
        one(b),
        Frame::Data { stream: s(1), payload: Bytes::from_static(b"hello"), end_stream: false, flow_len: 5 }
    );

    let mut b = BytesMut::new();
    encode_data(&mut b, s(3), b"", true, MAX);
    assert_eq!(one(b), Frame::Data { stream: s(3), payload: Bytes::new(), end_stream: true, flow_len: 0 });

    // Longer than the peer's limit: split, END_STREAM on the last frame only.
    let body: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let mut b = BytesMut::new();
    encode_data(&mut b, s(5), &body, true, MAX);
    let frames = all(b, MAX);
    let lens: Vec<_> = frames.iter().map(|f| matches!(f, Frame::Data { end_stream: true, .. })).collect();
    assert_eq!(lens, [false, false, true]);
    let mut joined = Vec::new();
    for f in &frames {
        let Frame::Data { payload, flow_len, .. } = f else { panic!("{f:?}") };
        assert!(payload.len() <= MAX as usize);
        assert_eq!(*flow_len as usize, payload.len());
        joined.extend_from_slice(payload);
    }
    assert_eq!(joined, body);

    // A larger peer limit: one frame, which our decoder takes with a larger advertised limit.
    let mut b = BytesMut::new();
    encode_data(&mut b, s(5), &body, false, 65_536);
    assert_eq!(all(b, 65_536).len(), 1);
}

#[test]
fn data_head_is_the_header_encode_data_writes() {
    for (payload, end) in [(&b"abc"[..], false), (b"", true), (&[7u8; 1000][..], true)] {
        let mut whole = BytesMut::new();
        encode_data(&mut whole, s(7), payload, end, MAX);
        let head = data_head(s(7), payload.len() as u32, end);
        assert_eq!(&whole[..9], head);
        assert_eq!(&whole[9..], payload);
    }
}

#[test]
fn headers_round_trip_and_split_into_continuations() {
    let mut b = BytesMut::new();
    encode_headers(&mut b, s(1), &[0x88], true, MAX);
    assert_eq!(&b[..], b"\0\0\x01\x01\x05\0\0\0\x01\x88", "END_STREAM | END_HEADERS");
    assert_eq!(
        one(b),
        Frame::Headers {
            stream: s(1),
            block: Bytes::from_static(&[0x88]),
            end_stream: true,
            end_headers: true,
            priority: None
        }
    );

    let block: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
    let mut b = BytesMut::new();
    encode_headers(&mut b, s(9), &block, true, MAX);
    let frames = all(b, MAX);
    assert_eq!(frames.len(), 3);
    let mut joined = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let last = i == frames.len() - 1;
        match f {
            Frame::Headers { stream, block, end_stream, end_headers, priority } if i == 0 => {
                assert_eq!((*stream, *end_stream, *end_headers, *priority), (s(9), true, false, None));
                assert_eq!(block.len(), MAX as usize);
                joined.extend_from_slice(block);
            }
            Frame::Continuation { stream, block, end_headers } if i > 0 => {
                assert_eq!((*stream, *end_headers), (s(9), last));
                joined.extend_from_slice(block);
            }
            other => panic!("frame {i}: {other:?}"),
        }
    }
    assert_eq!(joined, block);

    // Exactly the limit: no CONTINUATION.
    let mut b = BytesMut::new();
    encode_headers(&mut b, s(9), &block[..MAX as usize], false, MAX);
    assert!(matches!(&all(b, MAX)[..], [Frame::Headers { end_headers: true, end_stream: false, .. }]));
}

#[test]
fn priority_rst_ping_goaway_window_update_round_trip() {
    let p = Priority { exclusive: true, dependency: s(3), weight: 200 };
    let mut b = BytesMut::new();
    encode_priority(&mut b, s(5), p);
    assert_eq!(one(b), Frame::Priority { stream: s(5), priority: p });

    for code in [ErrorCode::NoError, ErrorCode::Cancel, ErrorCode::Http11Required, ErrorCode::Unknown(0xdead)] {
        let mut b = BytesMut::new();
        encode_rst_stream(&mut b, s(1), code);
        assert_eq!(one(b), Frame::RstStream { stream: s(1), code });
    }

    for ack in [false, true] {
        let mut b = BytesMut::new();
        encode_ping(&mut b, ack, *b"12345678");
        assert_eq!(one(b), Frame::Ping { ack, data: *b"12345678" });
    }

    let mut b = BytesMut::new();
    encode_goaway(&mut b, s(41), ErrorCode::EnhanceYourCalm, b"too many resets");
    assert_eq!(
        one(b),
        Frame::GoAway {
            last_stream: s(41),
            code: ErrorCode::EnhanceYourCalm,
            debug: Bytes::from_static(b"too many resets")
        }
    );
    let mut b = BytesMut::new();
    encode_goaway(&mut b, s(0), ErrorCode::NoError, &[b'x'; 20_000]);
    let Frame::GoAway { debug, .. } = one(b) else { panic!() };
    assert_eq!(debug.len(), MAX as usize - 8, "debug data cut to fit the smallest frame size limit");

    for (stream, increment) in [(0, 1), (1, 65_535), (7, MAX_WINDOW_SIZE)] {
        let mut b = BytesMut::new();
        encode_window_update(&mut b, s(stream), increment);
        assert_eq!(one(b), Frame::WindowUpdate { stream: s(stream), increment });
    }
}

#[test]
fn settings_round_trip() {
    let full = Settings {
        header_table_size: Some(0),
        enable_push: Some(false),
        max_concurrent_streams: Some(100),
        initial_window_size: Some(MAX_WINDOW_SIZE),
        max_frame_size: Some(MAX_MAX_FRAME_SIZE),
        max_header_list_size: Some(16 << 10),
        enable_connect_protocol: Some(true),
    };
    for params in [full, Settings::default(), Settings { max_frame_size: Some(MAX), ..Settings::default() }] {
        let mut b = BytesMut::new();
        encode_settings(&mut b, &params);
        assert_eq!(b.len(), 9 + 6 * params.len());
        assert_eq!(one(b), Frame::Settings { ack: false, params });
    }
    assert_eq!(full.len(), 7);
    assert!(Settings::default().is_empty());

    let mut b = BytesMut::new();
    encode_settings_ack(&mut b);
    assert_eq!(&b[..], b"\0\0\0\x04\x01\0\0\0\0");
    assert_eq!(one(b), Frame::Settings { ack: true, params: Settings::default() });
}

#[test]
fn settings_by_hand_unknown_ids_ignored_last_value_wins() {
    let payload = [
        &[0x00, 0x04, 0x00, 0x01, 0x00, 0x00][..], // INITIAL_WINDOW_SIZE 65536
        &[0x00, 0xff, 0xff, 0xff, 0xff, 0xff],     // unknown
        &[0x00, 0x07, 0x00, 0x00, 0x00, 0x09],     // 0x7 is not defined (was never assigned)
        &[0x00, 0x04, 0x00, 0x00, 0x10, 0x00],     // INITIAL_WINDOW_SIZE again: 4096
        &[0x00, 0x08, 0x00, 0x00, 0x00, 0x00],     // ENABLE_CONNECT_PROTOCOL 0
        &[0x00, 0x02, 0x00, 0x00, 0x00, 0x01],     // ENABLE_PUSH 1
    ]
    .concat();
    let want = Settings {
        initial_window_size: Some(4096),
        enable_connect_protocol: Some(false),
        enable_push: Some(true),
        ..Settings::default()
    };
    assert_eq!(one(raw(0x4, 0, 0, &payload)), Frame::Settings { ack: false, params: want });
}

#[test]
fn padded_data_by_hand() {
    // PADDED | END_STREAM, Pad Length 3, "hello", 3 bytes of padding.
    let f = one(raw(0x0, 0x09, 1, b"\x03hello\0\0\0"));
    assert_eq!(f, Frame::Data { stream: s(1), payload: Bytes::from_static(b"hello"), end_stream: true, flow_len: 9 });
    // All padding: allowed, no data, and still 8 bytes of flow control.
    let f = one(raw(0x0, 0x08, 1, b"\x07\0\0\0\0\0\0\0"));
    assert_eq!(f, Frame::Data { stream: s(1), payload: Bytes::new(), end_stream: false, flow_len: 8 });
    // Pad Length 0.
    let f = one(raw(0x0, 0x08, 1, b"\x00ab"));
    assert_eq!(f, Frame::Data { stream: s(1), payload: Bytes::from_static(b"ab"), end_stream: false, flow_len: 3 });
}

#[test]
fn padded_prioritised_headers_by_hand() {
    // PRIORITY | PADDED | END_HEADERS | END_STREAM on stream 5: Pad Length 2, E + dependency 3,
    // weight 15, the block 0x82 0x86, 2 bytes of padding.
    let payload = [0x02, 0x80, 0x00, 0x00, 0x03, 0x0f, 0x82, 0x86, 0x00, 0x00];
    let f = one(raw(0x1, 0x2d, 5, &payload));
    assert_eq!(
        f,
        Frame::Headers {
            stream: s(5),
            block: Bytes::from_static(&[0x82, 0x86]),
            end_stream: true,
            end_headers: true,
            priority: Some(Priority { exclusive: true, dependency: s(3), weight: 15 }),
        }
    );
    // PRIORITY alone, not exclusive, no END_HEADERS.
    let f = one(raw(0x1, 0x20, 7, &[0x00, 0x00, 0x00, 0x00, 0xff, 0x88]));
    assert_eq!(
        f,
        Frame::Headers {
            stream: s(7),
            block: Bytes::from_static(&[0x88]),
            end_stream: false,
            end_headers: false,
            priority: Some(Priority { exclusive: false, dependency: s(0), weight: 255 }),
        }
    );
    // PADDED alone.
    let f = one(raw(0x1, 0x0c, 1, &[0x01, 0x88, 0x00]));
    assert!(matches!(f, Frame::Headers { ref block, priority: None, end_headers: true, .. } if block[..] == [0x88]));
}

#[test]
fn other_frames_by_hand() {
    assert_eq!(
        one(raw(0x9, 0x4, 3, &[0x41, 0x01, b'a'])),
        Frame::Continuation { stream: s(3), block: Bytes::from_static(&[0x41, 0x01, b'a']), end_headers: true }
    );
    // PUSH_PROMISE, PADDED | END_HEADERS: Pad Length 1, promised stream 2 (reserved bit set), block.
    assert_eq!(
        one(raw(0x5, 0x0c, 1, &[0x01, 0x80, 0x00, 0x00, 0x02, 0x82, 0x00])),
        Frame::PushPromise { stream: s(1), promised: s(2), block: Bytes::from_static(&[0x82]), end_headers: true }
    );
    // GOAWAY with the reserved bit of the last stream id set.
    assert_eq!(
        one(raw(0x7, 0, 0, &[0x80, 0, 0, 5, 0, 0, 0, 0x01, b'b', b'y', b'e'])),
        Frame::GoAway { last_stream: s(5), code: ErrorCode::ProtocolError, debug: Bytes::from_static(b"bye") }
    );
    assert_eq!(one(raw(0x3, 0, 1, &[0, 0, 0, 0x08])), Frame::RstStream { stream: s(1), code: ErrorCode::Cancel });
    assert_eq!(one(raw(0x3, 0, 1, &[0, 0, 1, 0])), Frame::RstStream { stream: s(1), code: ErrorCode::Unknown(256) });
    // Reserved bits ignored: the increment's and the stream id's.
    assert_eq!(one(raw(0x8, 0, 0x8000_0001, &[0x80, 0, 0, 0x10])), Frame::WindowUpdate { stream: s(1), increment: 16 });
    // Unknown flags ignored.
    assert_eq!(one(raw(0x6, 0xfe, 0, b"abcdefgh")), Frame::Ping { ack: false, data: *b"abcdefgh" });
    // An unknown type, any stream, any flags, any payload: reported and taken off the buffer.
    assert_eq!(one(raw(0xfa, 0xff, 9, &[1; 100])), Frame::Unknown { kind: 0xfa, stream: s(9) });
    assert_eq!(one(raw(0x0a, 0, 0, b"")), Frame::Unknown { kind: 0x0a, stream: s(0) });
}

#[test]
fn payloads_are_slices_of_the_buffer() {
    let mut b = raw(0x0, 0x08, 1, b"\x02data\0\0");
    b.extend_from_slice(&raw(0x1, 0x04, 1, &[0x88]));
    let start = b.as_ptr() as usize;
    let Some(Frame::Data { payload, .. }) = decode(&mut b, MAX).unwrap() else { panic!() };
    assert_eq!(payload.as_ptr() as usize, start + 9 + 1, "DATA payload not copied");
    let Some(Frame::Headers { block, .. }) = decode(&mut b, MAX).unwrap() else { panic!() };
    assert_eq!(block.as_ptr() as usize, start + 9 + 7 + 9, "HEADERS block not copied");
}

/// A sequence of frames of every type the encoder writes.
fn sample() -> (BytesMut, Vec<Frame>) {
    let mut b = BytesMut::new();
    encode_settings(&mut b, &Settings { max_concurrent_streams: Some(10), ..Settings::default() });
    encode_settings_ack(&mut b);
    encode_window_update(&mut b, s(0), 1 << 20);
    encode_headers(&mut b, s(1), &[0x82, 0x86, 0x84], false, MAX);
    encode_data(&mut b, s(1), b"request body", false, MAX);
    encode_headers(&mut b, s(1), &[0x40, 0x01, b'a', 0x01, b'b'], true, MAX);
    encode_priority(&mut b, s(3), Priority { exclusive: false, dependency: s(1), weight: 16 });
    encode_rst_stream(&mut b, s(3), ErrorCode::RefusedStream);
    encode_ping(&mut b, false, [1, 2, 3, 4, 5, 6, 7, 8]);
    encode_goaway(&mut b, s(1), ErrorCode::NoError, b"");
    let frames = all(b.clone(), MAX);
    assert_eq!(frames.len(), 10);
    (b, frames)
}

#[test]
fn several_frames_in_one_buffer() {
    let (_, frames) = sample();
    assert!(matches!(frames[0], Frame::Settings { ack: false, .. }));
    assert!(matches!(frames[1], Frame::Settings { ack: true, .. }));
    assert_eq!(frames[2], Frame::WindowUpdate { stream: s(0), increment: 1 << 20 });
    assert!(matches!(frames[3], Frame::Headers { end_stream: false, end_headers: true, .. }));
    assert!(matches!(frames[4], Frame::Data { ref payload, .. } if payload[..] == b"request body"[..]));
    assert!(matches!(frames[5], Frame::Headers { end_stream: true, end_headers: true, .. }));
    assert!(matches!(frames[6], Frame::Priority { .. }));
    assert_eq!(frames[7], Frame::RstStream { stream: s(3), code: ErrorCode::RefusedStream });
    assert!(matches!(frames[8], Frame::Ping { ack: false, .. }));
    assert!(matches!(frames[9], Frame::GoAway { code: ErrorCode::NoError, .. }));
}

#[test]
fn a_frame_split_over_reads_waits_for_all_of_it() {
    let (bytes, want) = sample();
    // Byte by byte: `None` until each frame is whole, nothing taken off meanwhile.
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &byte in &bytes[..] {
        buf.put_u8(byte);
        let before = buf.len();
        match decode(&mut buf, MAX).unwrap() {
            Some(f) => {
                assert!(buf.is_empty(), "a frame is decoded on its last byte");
                got.push(f);
            }
            None => assert_eq!(buf.len(), before, "a partial frame is left in place"),
        }
    }
    assert_eq!(got, want);

    // Random pieces, several frames per read at times.
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..200 {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = rng.usize(1..=(bytes.len() - at).min(40));
            buf.extend_from_slice(&bytes[at..at + n]);
            at += n;
            while let Some(f) = decode(&mut buf, MAX).unwrap() {
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, want);
    }
}

/// The frames an independent model expects for `bytes` written as DATA or a field block: one
/// frame per `MAX` bytes (one if empty).
fn model(data: bool, stream: StreamId, bytes: &[u8], end: bool) -> Vec<Frame> {
    let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![&[]] } else { bytes.chunks(MAX as usize).collect() };
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let (first, last, block) = (i == 0, i == n - 1, Bytes::copy_from_slice(c));
            match (data, first) {
                (true, _) => Frame::Data { stream, payload: block, end_stream: end && last, flow_len: c.len() as u32 },
                (false, true) => Frame::Headers { stream, block, end_stream: end, end_headers: last, priority: None },
                (false, false) => Frame::Continuation { stream, block, end_headers: last },
            }
        })
        .collect()
}

#[test]
fn random_frames_round_trip() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for _ in 0..200 {
        let mut b = BytesMut::new();
        let mut want = Vec::new();
        for _ in 0..rng.usize(1..8) {
            let stream = s(rng.u32(1..=MAX_WINDOW_SIZE));
            let len = if rng.bool() { rng.usize(0..40) } else { rng.usize(0..3 * MAX as usize) };
            let bytes: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
            let end = rng.bool();
            match rng.u8(0..4) {
                0 => {
                    encode_data(&mut b, stream, &bytes, end, MAX);
                    want.extend(model(true, stream, &bytes, end));
                }
                1 => {
                    encode_headers(&mut b, stream, &bytes, end, MAX);
                    want.extend(model(false, stream, &bytes, end));
                }
                2 => {
                    let increment = rng.u32(1..=MAX_WINDOW_SIZE);
                    encode_window_update(&mut b, stream, increment);
                    want.push(Frame::WindowUpdate { stream, increment });
                }
                _ => {
                    let data = rng.u64(..).to_be_bytes();
                    encode_ping(&mut b, end, data);
                    want.push(Frame::Ping { ack: end, data });
                }
            }
        }
        assert_eq!(all(b, MAX), want);
    }
}

#[test]
fn head_parses_and_writes() {
    let h = Head { len: 0x01_02_03, kind: 0xaa, flags: 0x55, stream: s(0x0102_0304) };
    assert_eq!(h.to_bytes(), [1, 2, 3, 0xaa, 0x55, 1, 2, 3, 4]);
    assert_eq!(Head::parse(&h.to_bytes()), Some(h));
    assert_eq!(Head::parse(&[0; 8]), None);
    assert_eq!(Head::parse(&[0xff; 9]).map(|h| h.stream), Some(StreamId::MAX), "the reserved bit dropped");
}

#[test]
fn error_codes_and_stream_ids() {
    for n in 0..=0xd {
        let code = ErrorCode::from_u32(n);
        assert!(!matches!(code, ErrorCode::Unknown(_)), "{n}");
        assert_eq!(code.to_u32(), n);
        assert_eq!(u32::from(ErrorCode::from(n)), n);
    }
    assert_eq!(ErrorCode::from_u32(0xe), ErrorCode::Unknown(0xe));
    assert_eq!(ErrorCode::FrameSizeError.to_string(), "FRAME_SIZE_ERROR");
    assert_eq!(ErrorCode::Unknown(0x1f).to_string(), "unknown error code 0x1f");
    assert_eq!(StreamId::new(0x8000_0003), s(3));
    assert!(s(3).is_client_initiated() && !s(2).is_client_initiated() && s(0).is_zero());
    assert_eq!(&PREFACE[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
}
