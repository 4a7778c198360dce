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

/// Largest TLS record (RFC 8446 §5.1) plus its header: a ClientHello in one record fits.
const TLS_RECORD_MAX: usize = 5 + (1 << 14);

/// What the first bytes of an inbound connection are, as far as mutual TLS cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// A TLS ClientHello offering an Outrider ALPN id: another proxy of the mesh.
    MeshHello,
    /// Anything else that arrived (plaintext, or TLS the application terminates itself).
    Other,
    /// Nothing within the timeout: a server-first protocol (the caller waits for a greeting).
    Silent,
    /// The peer closed before sending anything.
    Closed,
}

/// Peeks (consumes nothing) at the start of a connection: first the 5-byte record header (no
/// allocation for plaintext), then, for a TLS handshake record, the whole record, waiting with a
/// growing pause (1 ms doubling to 32 ms) while the peer is slow, until `timeout`.
pub async fn mesh_client_hello(stream: &TcpStream, timeout: Duration) -> std::io::Result<FirstBytes> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut head = [0u8; 5];
    let mut pause = Duration::from_millis(1);
    let mut last = 0;
    // The record header.
    let record_len = loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut head)).await {
            Ok(r) => r?,
            Err(_) => return Ok(if last == 0 { FirstBytes::Silent } else { FirstBytes::Other }),
        };
        if n == 0 {
            return Ok(FirstBytes::Closed);
        }
        match client_hello_alpn(&head[..n]) {
            Hello::NotTls => return Ok(FirstBytes::Other),
            Hello::Alpn(_) => return Ok(FirstBytes::Other),
            Hello::Partial if n == head.len() => break usize::from(u16::from_be_bytes([head[3], head[4]])),
            Hello::Partial => {}
        }
        if !wait_for_more(stream, n, &mut last, &mut pause, deadline).await {
            return Ok(FirstBytes::Other);
        }
    };
    // The whole first record (at most 16 KiB + 5, as TLS allows).
    let mut buf = vec![0u8; (5 + record_len).min(TLS_RECORD_MAX)];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(FirstBytes::Other),
        };
        match client_hello_alpn(&buf[..n]) {
            Hello::Alpn(offers) if offers.iter().any(|p| crate::tls::ALPN_PROTOCOLS.contains(p)) => {
                return Ok(FirstBytes::MeshHello);
            }
            Hello::Alpn(_) | Hello::NotTls => return Ok(FirstBytes::Other),
            Hello::Partial if n == buf.len() => return Ok(FirstBytes::Other),
            Hello::Partial => {}
        }
        if !wait_for_more(stream, n, &mut last, &mut pause, deadline).await {
            return Ok(FirstBytes::Other);
        }
    }
}

/// After a peek of `n` bytes: when nothing new arrived since the last one, wait for the socket
/// and then a growing pause (peek does not consume, so the socket stays readable). False when
/// the deadline passed.
async fn wait_for_more(
    stream: &TcpStream,
    n: usize,
    last: &mut usize,
    pause: &mut Duration,
    deadline: tokio::time::Instant,
) -> bool {
    if n == *last {
        if tokio::time::timeout_at(deadline, stream.readable()).await.is_err() {
            return false;
        }
        tokio::time::sleep(*pause).await;
        *pause = (*pause * 2).min(Duration::from_millis(32));
    }
    *last = n;
    tokio::time::Instant::now() < deadline
}

/// What the first bytes of a connection say about TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello<'a> {
    /// Not a TLS handshake record holding a ClientHello.
    NotTls,
    /// More bytes are needed.
    Partial,
    /// A ClientHello and the ALPN ids it offers (empty without the extension).
    Alpn(Vec<&'a [u8]>),
}

/// Parses the ALPN extension out of a ClientHello in the first TLS record.
pub fn client_hello_alpn(buf: &[u8]) -> Hello<'_> {
    // Record header: type 22 (handshake), version 3.x, length.
    match buf {
        [] => return Hello::Partial,
        [0x16] | [0x16, 0x03] | [0x16, 0x03, _] | [0x16, 0x03, _, _] => return Hello::Partial,
        [0x16, 0x03, _, _, _, ..] => {}
        _ => return Hello::NotTls,
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if buf.len() < 5 + len {
        return Hello::Partial;
    }
    let body = &buf[5..5 + len];
    parse_client_hello(body).map_or(Hello::NotTls, Hello::Alpn)
}

fn parse_client_hello(b: &[u8]) -> Option<Vec<&[u8]>> {
    let mut r = Reader(b);
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    let hello_len = r.u24()?;
    let mut r = Reader(r.take(hello_len)?);
    r.take(2 + 32)?; // legacy_version, random
    let sid = usize::from(r.u8()?);
    r.take(sid)?;
    let suites = usize::from(r.u16()?);
    r.take(suites)?;
    let compression = usize::from(r.u8()?);
    r.take(compression)?;
    if r.0.is_empty() {
        return Some(Vec::new());
    }
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let data = exts.take(len)?;
        if kind == 16 {
            let mut list = Reader(data);
            let total = usize::from(list.u16()?);
            let mut list = Reader(list.take(total)?);
            let mut out = Vec::new();
            while !list.0.is_empty() {
                let n = usize::from(list.u8()?);
                out.push(list.take(n)?);
            }
            return Some(out);
        }
    }
    Some(Vec::new())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls offering `alpn`.
    fn hello(alpn: &[&[u8]]) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("example.com").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_alpn_ids_of_a_client_hello() {
        let bytes = hello(&[b"outrider/1"]);
        assert_eq!(client_hello_alpn(&bytes), Hello::Alpn(vec![b"outrider/1".as_slice()]));
        let bytes = hello(&[b"h2", b"http/1.1"]);
        assert_eq!(client_hello_alpn(&bytes), Hello::Alpn(vec![b"h2".as_slice(), b"http/1.1".as_slice()]));
        assert_eq!(client_hello_alpn(&hello(&[])), Hello::Alpn(vec![]));
        assert_eq!(client_hello_alpn(&bytes[..40]), Hello::Partial);
        assert_eq!(client_hello_alpn(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        let mut garbage = bytes.clone();
        garbage[5] = 2; // a ServerHello, not a ClientHello
        assert_eq!(client_hello_alpn(&garbage), Hello::NotTls);
    }

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
