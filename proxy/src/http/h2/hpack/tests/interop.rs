//! The h2 crate as a real peer, over an in-memory pipe, its frames read and written by hand:
//! our decoder reads an h2 client's request blocks (its dynamic table and Huffman coding in
//! use), and an h2 client reads the response blocks of our encoder.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::super::{Decoder, Encoder, Pseudo};
use super::{decode_all, pairs};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// One frame: type, flags, stream id, payload.
async fn read_frame(io: &mut DuplexStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream, payload)
}

async fn write_frame(io: &mut DuplexStream, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    io.write_all(&frame).await.unwrap();
}

/// The next complete header block (HEADERS and its CONTINUATIONs), padding and priority
/// removed, and its stream; other frames are skipped.
async fn read_header_block(io: &mut DuplexStream) -> (u32, Bytes) {
    loop {
        let (kind, flags, stream, payload) = read_frame(io).await;
        if kind != HEADERS {
            continue;
        }
        let mut p = &payload[..];
        let mut pad = 0;
        if flags & PADDED != 0 {
            pad = p[0] as usize;
            p = &p[1..];
        }
        if flags & PRIORITY != 0 {
            p = &p[5..];
        }
        let mut block = p[..p.len() - pad].to_vec();
        let mut end = flags & END_HEADERS != 0;
        while !end {
            let (kind, flags, _, payload) = read_frame(io).await;
            assert_eq!(kind, CONTINUATION);
            block.extend_from_slice(&payload);
            end = flags & END_HEADERS != 0;
        }
        return (stream, block.into());
    }
}

fn request(path: &str) -> Request<()> {
    let mut req = Request::get(format!("https://example.com{path}"))
        .header("user-agent", "outrider-interop/1.0")
        .header("accept", "*/*")
        .header("x-custom", "hello-world")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .body(())
        .unwrap();
    let mut id = HeaderValue::from_str(&format!("id-for{path}")).unwrap();
    id.set_sensitive(true);
    req.headers_mut().insert("x-request-id", id);
    req
}

#[tokio::test]
async fn our_decoder_reads_an_h2_clients_requests() {
    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let client = tokio::spawn(async move {
        let (send, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let mut pending = Vec::new();
        for path in ["/a", "/b"] {
            pending.push(send.send_request(request(path), true).unwrap());
            send = send.ready().await.unwrap();
        }
        (send, pending)
    });
    let mut preface = [0u8; 24];
    server_io.read_exact(&mut preface).await.unwrap();
    assert_eq!(preface, PREFACE);
    write_frame(&mut server_io, SETTINGS, 0, 0, &[]).await;
    let mut d = Decoder::default();
    let mut sizes = Vec::new();
    for path in ["/a", "/b"] {
        let (_, block) = read_header_block(&mut server_io).await;
        sizes.push(block.len());
        // Huffman-coded: the value is not in the block as text.
        assert!(!block.windows(11).any(|w| w == b"hello-world"), "{block:?}");
        let fields = decode_all(&mut d, &block);
        let mut got = pairs(&fields);
        let pseudo: Vec<_> = got.drain(..4).collect();
        let mut pseudo_sorted = pseudo.clone();
        pseudo_sorted.sort();
        let expected_pseudo =
            [(":authority", "example.com"), (":method", "GET"), (":path", path), (":scheme", "https")];
        assert_eq!(pseudo_sorted, expected_pseudo.map(|(n, v)| (n.to_string(), v.to_string())));
        let id = format!("id-for{path}");
        let expected = [
            ("user-agent", "outrider-interop/1.0"),
            ("accept", "*/*"),
            ("x-custom", "hello-world"),
            ("x-multi", "one"),
            ("x-multi", "two"),
            ("x-request-id", id.as_str()),
        ];
        assert_eq!(got, expected.map(|(n, v)| (n.to_string(), v.to_string())));
        for f in &fields {
            assert_eq!(f.sensitive, f.name.as_bytes() == b"x-request-id", "{f:?}");
            assert_eq!(f.malformed, None);
        }
        assert!(d.table_size() > 0, "h2 indexes what it sends");
    }
    // The second request's repeated fields come from the dynamic table.
    assert!(sizes[1] < sizes[0] / 2, "{sizes:?}");
    drop(client.await.unwrap());
}

fn response_headers(n: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("server", HeaderValue::from_static("outrider"));
    h.append("set-cookie", HeaderValue::from_static("a=1"));
    h.append("set-cookie", HeaderValue::from_static("b=2"));
    h.insert(HeaderName::from_static("x-custom"), HeaderValue::from_static("custom value"));
    h.insert(HeaderName::from_static("x-count"), HeaderValue::from_str(&n.to_string()).unwrap());
    let mut id = HeaderValue::from_str(&format!("unique-{n}")).unwrap();
    id.set_sensitive(true);
    h.insert(HeaderName::from_static("x-request-id"), id);
    h
}

#[tokio::test]
async fn an_h2_client_reads_our_responses() {
    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let client = tokio::spawn(async move {
        let (send, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        let mut send = send;
        let mut out = Vec::new();
        for path in ["/1", "/2", "/3"] {
            send = send.ready().await.unwrap();
            let req = Request::get(format!("http://example.com{path}")).body(()).unwrap();
            let (resp, _) = send.send_request(req, true).unwrap();
            let resp = resp.await.unwrap();
            out.push((resp.status(), resp.headers().clone()));
        }
        out
    });
    let mut preface = [0u8; 24];
    server_io.read_exact(&mut preface).await.unwrap();
    assert_eq!(preface, PREFACE);
    // Our SETTINGS (none), and the acknowledgement of the client's.
    write_frame(&mut server_io, SETTINGS, 0, 0, &[]).await;
    write_frame(&mut server_io, SETTINGS, 0x1, 0, &[]).await;
    let mut e = Encoder::new();
    let mut sizes = Vec::new();
    for (n, status) in
        [StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::from_u16(418).unwrap()].into_iter().enumerate()
    {
        let (stream, _) = read_header_block(&mut server_io).await;
        let mut block = BytesMut::new();
        e.encode(Pseudo::Response { status }, &response_headers(n), &mut block);
        sizes.push(block.len());
        write_frame(&mut server_io, HEADERS, END_HEADERS | END_STREAM, stream, &block).await;
    }
    let out = client.await.unwrap();
    let statuses: Vec<_> = out.iter().map(|(s, _)| s.as_u16()).collect();
    assert_eq!(statuses, [200, 404, 418]);
    for (n, (_, headers)) in out.iter().enumerate() {
        let mut expected = response_headers(n);
        // What the client receives is not marked sensitive; compare values only.
        expected.insert("x-request-id", HeaderValue::from_str(&format!("unique-{n}")).unwrap());
        assert_eq!(headers, &expected, "response {n}");
    }
    assert!(sizes[1] < sizes[0] / 2, "the dynamic table is used: {sizes:?}");
}
