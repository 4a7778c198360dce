//! The `h2` crate as a real peer over an in-memory pipe: its client's frames decoded here, and
//! frames encoded here read by its client and its server. Field blocks are made by hand (HPACK
//! is not this module's), or are the peer's own, passed on unchanged.
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::MAX;
use crate::http::h2::frame::*;

fn s(id: u32) -> StreamId {
    StreamId::new(id)
}

/// Reads from `io` and decodes into `frames` until `done` holds for a decoded frame.
async fn read_until(io: &mut DuplexStream, buf: &mut BytesMut, frames: &mut Vec<Frame>, done: impl Fn(&Frame) -> bool) {
    loop {
        while let Some(f) = decode(buf, MAX).expect("the peer's frames are valid") {
            let stop = done(&f);
            frames.push(f);
            if stop {
                return;
            }
        }
        buf.reserve(4096);
        let n = io.read_buf(buf).await.expect("read");
        assert!(n > 0, "the peer closed; frames so far: {frames:?}");
    }
}

/// Reads the 24-byte client preface off the front of what `io` sends.
async fn read_preface(io: &mut DuplexStream, buf: &mut BytesMut) {
    while buf.len() < PREFACE.len() {
        let n = io.read_buf(buf).await.expect("read");
        assert!(n > 0, "the client closed before its preface");
    }
    assert_eq!(&buf[..PREFACE.len()], PREFACE);
    buf.advance(PREFACE.len());
}

/// `:method GET`, `:scheme http`, `:path /`, `:authority` (literal, incremental indexing).
fn get_block(authority: &str) -> Vec<u8> {
    [&[0x82, 0x86, 0x84, 0x41, authority.len() as u8][..], authority.as_bytes()].concat()
}

/// A literal field without indexing, new name (RFC 7541 §6.2.2); both strings under 127 bytes.
fn literal(name: &str, value: &str) -> Vec<u8> {
    [&[0x00, name.len() as u8][..], name.as_bytes(), &[value.len() as u8], value.as_bytes()].concat()
}

#[tokio::test]
async fn decodes_what_an_h2_client_sends() {
    let (client_io, mut io) = tokio::io::duplex(1 << 16);
    let (send, conn) = h2::client::Builder::new()
        .initial_connection_window_size(1 << 20)
        .initial_window_size(100_000)
        .enable_push(false)
        .handshake::<_, Bytes>(client_io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut out = BytesMut::new();
    encode_settings(&mut out, &Settings::default());
    io.write_all(&out).await.unwrap();

    let mut send = send.ready().await.unwrap();
    let req = http::Request::post("http://example.com/upload").body(()).unwrap();
    let (_response, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"the request body"), false).unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
    body.send_trailers(trailers).unwrap();

    let mut buf = BytesMut::new();
    read_preface(&mut io, &mut buf).await;
    let mut frames = Vec::new();
    read_until(&mut io, &mut buf, &mut frames, |f| matches!(f, Frame::Headers { end_stream: true, .. })).await;

    // The connection's own frames: SETTINGS as configured first, the window, our SETTINGS acked.
    let Frame::Settings { ack: false, params } = &frames[0] else { panic!("first: {:?}", frames[0]) };
    assert_eq!((params.enable_push, params.initial_window_size), (Some(false), Some(100_000)));
    assert!(frames.contains(&Frame::WindowUpdate { stream: s(0), increment: (1 << 20) - 65_535 }), "{frames:?}");
    assert!(frames.contains(&Frame::Settings { ack: true, params: Settings::default() }), "our SETTINGS acked");
    // The request on stream 1: HEADERS, DATA, trailers.
    let request: Vec<&Frame> = frames.iter().filter(|f| f.stream() == s(1)).collect();
    assert_eq!(request.len(), 3, "{frames:?}");
    let Frame::Headers { block, end_stream: false, end_headers: true, priority: None, .. } = request[0] else {
        panic!("{:?}", request[0])
    };
    assert!(!block.is_empty());
    assert_eq!(
        *request[1],
        Frame::Data { stream: s(1), payload: Bytes::from_static(b"the request body"), end_stream: false, flow_len: 16 }
    );
    let Frame::Headers { block, end_stream: true, end_headers: true, .. } = request[2] else {
        panic!("{:?}", request[2])
    };
    assert!(!block.is_empty());
    conn.abort();
}

#[tokio::test]
async fn an_h2_client_reads_what_we_encode() {
    let (client_io, mut io) = tokio::io::duplex(1 << 16);
    let (send, conn) = h2::client::handshake(client_io).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut out = BytesMut::new();
    encode_settings(&mut out, &Settings { max_concurrent_streams: Some(10), ..Settings::default() });
    io.write_all(&out).await.unwrap();

    let mut send = send.ready().await.unwrap();
    let (response, _) = send.send_request(http::Request::get("http://example.com/").body(()).unwrap(), true).unwrap();

    let mut buf = BytesMut::new();
    read_preface(&mut io, &mut buf).await;
    let mut frames = Vec::new();
    read_until(&mut io, &mut buf, &mut frames, |f| matches!(f, Frame::Headers { end_stream: true, .. })).await;
    assert!(matches!(frames[0], Frame::Settings { ack: false, .. }), "{frames:?}");
    let stream = frames.last().map(Frame::stream).unwrap();
    assert_eq!(stream, s(1));

    let mut out = BytesMut::new();
    encode_settings_ack(&mut out);
    encode_headers(&mut out, stream, &[0x88], false, MAX); // :status 200
    encode_data(&mut out, stream, b"hello ", false, MAX);
    encode_data(&mut out, stream, b"world", false, MAX);
    encode_headers(&mut out, stream, &literal("grpc-status", "0"), true, MAX);
    io.write_all(&out).await.unwrap();

    let response = response.await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"hello world");
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    // A PING is answered with the same data; a GOAWAY ends the client's connection cleanly.
    let mut out = BytesMut::new();
    encode_ping(&mut out, false, *b"outrider");
    io.write_all(&out).await.unwrap();
    let mut frames = Vec::new();
    read_until(&mut io, &mut buf, &mut frames, |f| matches!(f, Frame::Ping { ack: true, .. })).await;
    assert_eq!(frames.last(), Some(&Frame::Ping { ack: true, data: *b"outrider" }));
    let mut out = BytesMut::new();
    encode_goaway(&mut out, stream, ErrorCode::NoError, b"done");
    io.write_all(&out).await.unwrap();
    drop(send);
    assert!(conn.await.unwrap().is_ok(), "the client's connection ends without an error");
}

#[tokio::test]
async fn an_h2_server_accepts_what_we_encode() {
    let (mut io, server_io) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(server_io).await.unwrap();
        let mut seen = Vec::new();
        // why: after the client's GOAWAY and close, the end of the loop may be an error.
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            seen.push((
                req.method().clone(),
                req.uri().to_string(),
                req.headers().len(),
                req.headers().get("x-fill-199").cloned(),
            ));
            respond.send_response(http::Response::new(()), true).unwrap();
        }
        seen
    });

    let mut out = BytesMut::from(&PREFACE[..]);
    encode_settings(&mut out, &Settings { enable_push: Some(false), ..Settings::default() });
    encode_headers(&mut out, s(1), &get_block("example.com"), true, MAX);
    // A block longer than a frame: HEADERS and a CONTINUATION.
    let mut big = get_block("example.org");
    for i in 0..200 {
        big.extend(literal(&format!("x-fill-{i:03}"), &"v".repeat(90)));
    }
    assert!(big.len() > MAX as usize);
    encode_headers(&mut out, s(3), &big, true, MAX);
    encode_window_update(&mut out, s(0), 1000);
    encode_ping(&mut out, false, [9, 8, 7, 6, 5, 4, 3, 2]);
    io.write_all(&out).await.unwrap();

    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let both_answered =
        |fs: &[Frame]| fs.iter().filter(|f| matches!(f, Frame::Headers { end_stream: true, .. })).count() == 2;
    while !(both_answered(&frames) && frames.iter().any(|f| matches!(f, Frame::Ping { ack: true, .. }))) {
        read_until(&mut io, &mut buf, &mut frames, |_| true).await;
    }
    assert!(matches!(frames[0], Frame::Settings { ack: false, .. }), "{frames:?}");
    assert!(frames.contains(&Frame::Settings { ack: true, params: Settings::default() }), "our SETTINGS acked");
    assert!(frames.contains(&Frame::Ping { ack: true, data: [9, 8, 7, 6, 5, 4, 3, 2] }));
    for stream in [s(1), s(3)] {
        let Some(Frame::Headers { block, end_headers: true, .. }) = frames.iter().find(|f| f.stream() == stream) else {
            panic!("no response on {stream}: {frames:?}")
        };
        assert_eq!(block[..], [0x88], ":status 200, indexed");
    }

    let mut out = BytesMut::new();
    encode_goaway(&mut out, s(0), ErrorCode::NoError, b"");
    io.write_all(&out).await.unwrap();
    drop(io);
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!((&seen[0].0, seen[0].1.as_str(), seen[0].2), (&http::Method::GET, "http://example.com/", 0));
    assert_eq!((&seen[1].0, seen[1].1.as_str(), seen[1].2), (&http::Method::GET, "http://example.org/", 200));
    assert_eq!(seen[1].3.as_ref().map(|v| v.len()), Some(90));
}

/// An h2 client's request decoded here, encoded again and passed to an h2 server, which gets
/// it whole: the blocks and data are carried byte for byte.
#[tokio::test]
async fn relays_an_h2_client_to_an_h2_server() {
    let (client_io, mut from_client) = tokio::io::duplex(1 << 16);
    let (mut to_server, server_io) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(server_io).await.unwrap();
        let (req, mut respond) = conn.accept().await.unwrap().unwrap();
        let driver = tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let (parts, mut body) = req.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.unwrap();
        respond.send_response(http::Response::new(()), true).unwrap();
        driver.abort();
        (parts, data, trailers)
    });
    let (send, conn) = h2::client::handshake(client_io).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut out = BytesMut::new();
    encode_settings(&mut out, &Settings::default());
    from_client.write_all(&out).await.unwrap();
    let mut send = send.ready().await.unwrap();
    let req = http::Request::put("https://relay.test/a/b?c=d").header("x-one", "1").body(()).unwrap();
    let (_response, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from(vec![b'z'; 30_000]), false).unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", http::HeaderValue::from_static("42"));
    body.send_trailers(trailers).unwrap();

    let mut buf = BytesMut::new();
    read_preface(&mut from_client, &mut buf).await;
    let mut frames = Vec::new();
    read_until(&mut from_client, &mut buf, &mut frames, |f| matches!(f, Frame::Headers { end_stream: true, .. })).await;
    let mut out = BytesMut::from(&PREFACE[..]);
    encode_settings(&mut out, &Settings::default());
    for f in frames.iter().filter(|f| f.stream() == s(1)) {
        match f {
            Frame::Headers { stream, block, end_stream, end_headers: true, .. } => {
                encode_headers(&mut out, *stream, block, *end_stream, MAX);
            }
            Frame::Data { stream, payload, end_stream, .. } => {
                encode_data(&mut out, *stream, payload, *end_stream, MAX)
            }
            other => panic!("{other:?}"),
        }
    }
    to_server.write_all(&out).await.unwrap();
    let (parts, data, trailers) = server.await.unwrap();
    assert_eq!(parts.method, http::Method::PUT);
    assert_eq!(parts.uri, "https://relay.test/a/b?c=d");
    assert_eq!(parts.headers.get("x-one").unwrap(), "1");
    assert_eq!(data, vec![b'z'; 30_000]);
    assert_eq!(trailers.unwrap().get("x-sum").unwrap(), "42");
    conn.abort();
}
