//! What the first bytes of a downstream HTTP connection must be, judged before hyper sees them.
//!
//! A plaintext listener serves HTTP/1.0, HTTP/1.1 and HTTP/2 with prior knowledge (h2c), told
//! apart by the first bytes (peeked, not consumed): the HTTP/2 connection preface (RFC 9113
//! §3.4: the 24-byte magic, then a SETTINGS frame) or an HTTP/1.x request line (RFC 9112 §3).
//! Anything else is neither, so it is an invalid HTTP/2 preface: the proxy answers with
//! GOAWAY(PROTOCOL_ERROR) and closes at once (h2spec's "invalid connection preface" is such a
//! line: `INVALID CONNECTION PREFACE`; so is HTTP/0.9's `GET /path`).
//!
//! hyper alone would serve any bytes that are not the exact magic as HTTP/1 (a 400 to a broken
//! HTTP/2 client), and h2 accepts a preface whose first frame is not SETTINGS and closes on a
//! bad magic without a GOAWAY. Those checks live here; the HTTP/2 ones also run on mTLS
//! connections (see [`super::h2_guard`]).
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The fixed part of the client connection preface (RFC 9113 §3.4).
pub const MAGIC: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The magic plus the header of the first frame, which must be a SETTINGS frame.
pub const PREFACE_LEN: usize = MAGIC.len() + FRAME_HEADER_LEN;
/// An HTTP/2 frame header (RFC 9113 §4.1).
pub const FRAME_HEADER_LEN: usize = 9;
/// A first line that ends within this many bytes is judged here; a longer one (a long
/// request target) is left to the HTTP/1 parser, which answers a bad version with 400.
pub const LINE_WINDOW: usize = 128;

const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;

/// What the first bytes of a plaintext connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum First {
    /// An HTTP/1.0 or HTTP/1.1 request line (or one too long to judge here).
    Http1,
    /// The HTTP/2 magic (the SETTINGS frame after it is checked when it is read).
    Http2,
    /// Neither: an invalid HTTP/2 connection preface.
    Invalid,
}

/// Classify the first bytes of a plaintext connection; `None`: more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<First> {
    if buf.len() < MAGIC.len() && MAGIC.starts_with(buf) {
        return None;
    }
    if buf.starts_with(MAGIC) {
        return Some(First::Http2);
    }
    // RFC 9112 §2.2: a server SHOULD ignore empty lines before the request line.
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let Some(end) = buf[start..].iter().position(|&b| b == b'\n') else {
        return (buf.len() >= LINE_WINDOW).then_some(First::Http1);
    };
    let line = &buf[start..start + end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // RFC 9112 §3: request-line = method SP request-target SP HTTP-version; "HTTP" is
    // case-sensitive (§2.3).
    if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") { Some(First::Http1) } else { Some(First::Invalid) }
}

/// Whether the 33 bytes after the start of a connection are the magic and the header of a
/// SETTINGS frame (not an ACK, on stream 0) — the client preface of RFC 9113 §3.4.
pub fn preface_ok(head: &[u8; PREFACE_LEN]) -> bool {
    let (magic, frame) = head.split_at(MAGIC.len());
    magic == MAGIC && frame[3] == SETTINGS && frame[4] & ACK == 0 && frame[5..9] == [0, 0, 0, 0]
}

/// What the proxy writes to a connection with an invalid preface: its own (empty) SETTINGS —
/// the server preface must be the first frame — then GOAWAY(last stream 0, PROTOCOL_ERROR).
pub const REJECT: [u8; 9 + 17] = [
    0, 0, 0, SETTINGS, 0, 0, 0, 0, 0, // SETTINGS, empty
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream id 0: nothing was processed
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// After [`REJECT`], what the peer still sends is read and dropped for this long (at most
/// [`LINGER_BYTES`]), so that closing does not reset the connection before it read the GOAWAY.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Write [`REJECT`], close the write side, and drain what the peer sent (bounded).
pub async fn reject<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    if io.write_all(&REJECT).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Peek at a plaintext connection until [`classify`] decides, the peer closes (`Ok(None)`) or
/// `timeout` passes (`Ok(None)`: like an incomplete request head, it is closed).
pub async fn peek_first(stream: &TcpStream, timeout: Duration) -> std::io::Result<Option<First>> {
    let mut buf = [0u8; LINE_WINDOW];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let mut last = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            return Ok(None);
        }
        if let Some(first) = classify(&buf[..n]) {
            return Ok(Some(first));
        }
        if n == last {
            // Nothing new since the last peek: wait for the socket, then a growing pause
            // (peek consumes nothing, so the socket stays readable while the old bytes wait).
            if tokio::time::timeout_at(deadline, stream.readable()).await.is_err() {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(32));
        }
        last = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(First::Http1));
        assert_eq!(classify(b"POST /a?b HTTP/1.0\n"), Some(First::Http1));
        assert_eq!(classify(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(First::Http1), "empty lines first");
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(First::Http1), "a PRI method in HTTP/1.1");
        let long = [b"GET /".as_slice(), &[b'a'; LINE_WINDOW], b" HTTP/1.1\r\n"].concat();
        assert_eq!(classify(&long), Some(First::Http1), "a long line is left to the HTTP/1 parser");
        assert_eq!(classify(&long[..LINE_WINDOW]), Some(First::Http1));
    }

    #[test]
    fn lines_that_are_not_http1_are_invalid() {
        assert_eq!(classify(b"GET /path\r\n"), Some(First::Invalid), "HTTP/0.9");
        assert_eq!(classify(b"GET /path\n"), Some(First::Invalid));
        assert_eq!(classify(b"INVALID CONNECTION PREFACE\r\n\r\n"), Some(First::Invalid), "h2spec 3.5/2");
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Some(First::Invalid));
        assert_eq!(classify(b"GET / HTTP/1.2\r\n"), Some(First::Invalid));
        assert_eq!(classify(b"GET / http/1.1\r\n"), Some(First::Invalid), "HTTP-name is case-sensitive");
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Some(First::Invalid), "a broken magic");
        assert_eq!(classify(b"\x16\x03\x01\x02\x00\n"), Some(First::Invalid), "TLS");
    }

    #[test]
    fn waits_for_a_decision() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"\r\n"), None);
        assert_eq!(classify(b"GET / HTTP/1.1"), None, "the line has not ended");
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\n"), None, "a prefix of the magic");
        assert_eq!(classify(&MAGIC[..23]), None);
        assert_eq!(classify(MAGIC), Some(First::Http2));
        assert_eq!(classify(&[MAGIC.as_slice(), b"\0\0\0\x04"].concat()), Some(First::Http2));
    }

    #[test]
    fn the_first_frame_must_be_settings() {
        let with = |frame: [u8; 9]| {
            let mut head = [0u8; PREFACE_LEN];
            head[..24].copy_from_slice(MAGIC);
            head[24..].copy_from_slice(&frame);
            preface_ok(&head)
        };
        assert!(with([0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]), "an empty SETTINGS");
        assert!(with([0, 0, 12, SETTINGS, 0, 0, 0, 0, 0]), "SETTINGS with two values");
        assert!(!with([0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]), "a SETTINGS ACK");
        assert!(!with([0, 0, 0, SETTINGS, 0, 0, 0, 0, 1]), "SETTINGS on a stream");
        assert!(!with([0, 0, 8, 0x6, 0, 0, 0, 0, 0]), "a PING");
        let mut bad = [0u8; PREFACE_LEN];
        bad[..24].copy_from_slice(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n");
        bad[27] = SETTINGS;
        assert!(!preface_ok(&bad), "a broken magic");
    }

    #[test]
    fn reject_is_settings_then_goaway_protocol_error() {
        assert_eq!(&REJECT[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let goaway = &REJECT[9..];
        assert_eq!((goaway[2], goaway[3]), (8, 7), "8-byte GOAWAY");
        assert_eq!(&goaway[13..17], &[0, 0, 0, 1], "PROTOCOL_ERROR");
    }
}
