//! Raw HTTP/2 over a `TcpStream`: frames written by hand (RFC 9113 §4.1) and header blocks in
//! the simplest HPACK form (literal, never indexed, no Huffman: RFC 7541 §6.2.3), so a test can
//! send what a client library refuses to — a bad preface, trailers carrying pseudo-header
//! fields — and see exactly which frames the server answers with. Reads stop at the test
//! deadline.
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wait;

/// The client connection preface's fixed part (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
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

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
}

/// One frame, as sent or received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: u8, flags: u8, stream: u32, payload: impl Into<Vec<u8>>) -> Self {
        Self { kind, flags, stream, payload: payload.into() }
    }

    /// HEADERS with END_HEADERS (and END_STREAM when `end_stream`), block from [`hpack`].
    pub fn headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Self {
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        Self::new(kind::HEADERS, flags, stream, hpack(fields))
    }

    pub fn data(stream: u32, data: &[u8], end_stream: bool) -> Self {
        Self::new(kind::DATA, if end_stream { flag::END_STREAM } else { 0 }, stream, data)
    }

    /// An empty SETTINGS frame (the client preface's second part).
    pub fn settings() -> Self {
        Self::new(kind::SETTINGS, 0, 0, Vec::new())
    }

    pub fn settings_ack() -> Self {
        Self::new(kind::SETTINGS, flag::ACK, 0, Vec::new())
    }

    /// The wire bytes: 9-byte header, then the payload.
    pub fn encode(&self) -> Vec<u8> {
        let len = u32::try_from(self.payload.len()).expect("a payload under 16 MiB");
        let mut out = Vec::with_capacity(9 + self.payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::RST_STREAM => 0,
            kind::GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// For a HEADERS frame from a server whose block starts with an indexed `:status`
    /// (RFC 7541 Appendix A: 200, 204, 206, 304, 400, 404, 500), that status.
    pub fn indexed_status(&self) -> Option<u16> {
        if self.kind != kind::HEADERS {
            return None;
        }
        let mut at = 0;
        if self.has(flag::PADDED) {
            at += 1;
        }
        if self.has(flag::PRIORITY) {
            at += 5;
        }
        match self.payload.get(at)? {
            0x88 => Some(200),
            0x89 => Some(204),
            0x8a => Some(206),
            0x8b => Some(304),
            0x8c => Some(400),
            0x8d => Some(404),
            0x8e => Some(500),
            _ => None,
        }
    }
}

/// A header block of `fields` (pseudo-header fields included, in the given order), each a
/// literal never indexed with a new name and no Huffman coding: no dynamic-table state.
pub fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x10);
        hpack_string(&mut out, name.as_bytes());
        hpack_string(&mut out, value.as_bytes());
    }
    out
}

fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    // A 7-bit prefix integer (RFC 7541 §5.1), H bit clear.
    let mut n = s.len();
    if n < 0x7f {
        out.push(n as u8);
    } else {
        out.push(0x7f);
        n -= 0x7f;
        while n >= 0x80 {
            out.push((n % 0x80) as u8 | 0x80);
            n /= 0x80;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// The request pseudo-header fields for `method` `path` at `authority` (scheme http).
pub fn request<'a>(method: &'a str, path: &'a str, authority: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![(":method", method), (":scheme", "http"), (":path", path), (":authority", authority)]
}

/// A client connection (plaintext, or TLS set up by the caller) that reads whole frames.
#[derive(Debug)]
pub struct Conn<I = TcpStream> {
    pub io: I,
    buf: Vec<u8>,
}

impl Conn<TcpStream> {
    /// Connect without sending anything.
    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        let io = TcpStream::connect(addr).await.expect("connect");
        io.set_nodelay(true).expect("nodelay");
        Self::over(io)
    }

    /// The server side of an upstream a test scripts: read the client's preface and send an
    /// empty SETTINGS; `None` when the peer sent no HTTP/2 preface.
    pub async fn accept(mut io: TcpStream) -> Option<Self> {
        let mut preface = [0u8; 24];
        if io.read_exact(&mut preface).await.is_err() || preface != PREFACE {
            return None;
        }
        let mut conn = Self::over(io);
        conn.send(&Frame::settings()).await;
        Some(conn)
    }

    /// Connect, then [`Conn::start`].
    pub async fn handshake(addr: std::net::SocketAddr) -> Self {
        let mut c = Self::connect(addr).await;
        c.start().await;
        c
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    /// Frames over an established byte stream.
    pub fn over(io: I) -> Self {
        Self { io, buf: Vec::new() }
    }

    /// Send the preface and an empty SETTINGS, and acknowledge the server's SETTINGS.
    pub async fn start(&mut self) {
        let c = self;
        c.send_bytes(PREFACE).await;
        c.send(&Frame::settings()).await;
        let first = c.frame().await.expect("the server's SETTINGS");
        assert!(
            first.kind == kind::SETTINGS && !first.has(flag::ACK),
            "the server's first frame is SETTINGS (RFC 9113 §3.4), got {first:?}"
        );
        c.send(&Frame::settings_ack()).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write to the server");
        self.io.flush().await.expect("flush to the server");
    }

    pub async fn send(&mut self, frame: &Frame) {
        self.send_bytes(&frame.encode()).await;
    }

    /// Several frames in one write.
    pub async fn send_all(&mut self, frames: &[Frame]) {
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        self.send_bytes(&bytes).await;
    }

    /// The next frame, or `None` once the server closed the connection (a reset counts as a
    /// close). Panics at the test deadline.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16 | usize::from(self.buf[1]) << 8 | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    return Some(Frame::new(head[3], head[4], stream, head[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 16384];
            let n = match wait::within("a frame from the server", self.io.read(&mut chunk)).await {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => panic!("read from the server: {e}"),
            };
            if n == 0 {
                assert!(
                    self.buf.is_empty(),
                    "the server closed in the middle of a frame; bytes left: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Every frame until the server closes, answering nothing (SETTINGS ACKs, WINDOW_UPDATEs
    /// and PINGs included).
    pub async fn frames_until_close(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = self.frame().await {
            out.push(f);
        }
        out
    }

    /// Read frames until `stop` matches one (returned last), acknowledging SETTINGS on the way.
    /// Panics if the server closes first.
    pub async fn frames_until(&mut self, what: &str, stop: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let Some(f) = self.frame().await else {
                panic!("the server closed before {what}; frames so far: {out:?}");
            };
            if f.kind == kind::SETTINGS && !f.has(flag::ACK) {
                self.send(&Frame::settings_ack()).await;
            }
            let done = stop(&f);
            out.push(f);
            if done {
                return out;
            }
        }
    }

    /// Send a PING and read frames up to its ACK: everything the server wrote before it
    /// answered the PING.
    pub async fn frames_until_ping_ack(&mut self) -> Vec<Frame> {
        let opaque = *b"outrider";
        self.send(&Frame::new(kind::PING, 0, 0, opaque.to_vec())).await;
        self.frames_until("the PING's ACK", |f| f.kind == kind::PING && f.has(flag::ACK) && f.payload == opaque).await
    }
}
