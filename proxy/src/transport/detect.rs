//! Protocol detection by peeking at the first bytes (nothing is consumed).
use std::time::Duration;

use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long to wait for a client's first bytes before treating it as opaque.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(1);
const PEEK_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Opaque,
    /// The peer closed before sending anything.
    Closed,
}

/// Classify a buffer: `None` means "need more bytes".
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if H2_PREFACE.starts_with(buf) {
        return if buf.len() >= H2_PREFACE.len() { Some(Detected::Http2) } else { None };
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    // An HTTP/1.x request line starts with a method token (uppercase letters) and a space.
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'-' | b'_' if i < 20 => continue,
            b' ' if i > 0 => return Some(Detected::Http1),
            _ => return Some(Detected::Opaque),
        }
    }
    if buf.len() >= 20 { Some(Detected::Opaque) } else { None }
}

/// Peek until the protocol is known or `timeout` passes (then: opaque).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> std::io::Result<Detected> {
    let mut buf = [0u8; PEEK_MAX];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(Detected::Opaque),
        };
        if n == 0 {
            return Ok(Detected::Closed);
        }
        if let Some(d) = classify(&buf[..n]) {
            return Ok(d);
        }
        if n == PEEK_MAX {
            return Ok(Detected::Opaque);
        }
        if n == last {
            // No new bytes: wait for the socket to become readable again.
            if tokio::time::timeout_at(deadline, stream.readable()).await.is_err() {
                return Ok(Detected::Opaque);
            }
            // peek() returns immediately while old data is buffered; back off briefly.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        last = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST "), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"), Some(Detected::Http2));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Detected::Opaque), "TLS ClientHello");
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Detected::Opaque));
        assert_eq!(classify(b"hello world"), Some(Detected::Opaque));
        assert_eq!(classify(b" GET"), Some(Detected::Opaque));
    }

    #[tokio::test]
    async fn silent_peer_is_opaque_after_the_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let d = detect(&server, Duration::from_millis(50)).await.unwrap();
        assert_eq!(d, Detected::Opaque);
    }

    #[tokio::test]
    async fn request_split_across_writes_is_http1() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        client.write_all(b"GE").await.unwrap();
        let task = tokio::spawn(async move { detect(&server, Duration::from_secs(5)).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(task.await.unwrap(), Detected::Http1);
    }
}
