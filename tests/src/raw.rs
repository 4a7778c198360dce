//! Raw HTTP/1.1 over a `TcpStream`, for what a client library hides: `Expect:
//! 100-continue`, upgrades, exact bytes on the wire. Reads stop at the test deadline.
use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::wait;

/// A response head plus body, read from raw bytes.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased; repeated headers joined with ", ".
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// Bytes read past what a call returned, kept for the next read.
#[derive(Debug)]
pub struct Reader<R> {
    pub io: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R) -> Self {
        Self { io, buf: Vec::new() }
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = wait::within("bytes from the peer", self.io.read(&mut chunk)).await.expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Read up to and including the blank line ending a head; returns the head text.
    pub async fn head(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            if self.fill().await == 0 {
                panic!("connection closed before a full head; got {:?}", String::from_utf8_lossy(&self.buf));
            }
        }
    }

    /// Exactly `n` bytes.
    pub async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if self.fill().await == 0 {
                panic!("connection closed after {} of {n} bytes", self.buf.len());
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Everything until the peer closes.
    pub async fn to_end(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// One line ending in `\r\n` (without it).
    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8_lossy(&line[..i]).into_owned();
            }
            if self.fill().await == 0 {
                panic!("connection closed in the middle of a line");
            }
        }
    }

    /// A whole response: head, then a body by Content-Length or chunked encoding.
    /// Interim (1xx) responses are returned as they are, with no body.
    pub async fn response(&mut self) -> RawResponse {
        let head = self.head().await;
        let (status, headers) = parse_head(&head);
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return RawResponse { status, headers, body: Vec::new() };
        }
        let body = if headers.get("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let size_line = self.line().await;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    // Trailers, then the final blank line.
                    while !self.line().await.is_empty() {}
                    break;
                }
                body.extend(self.exact(size).await);
                self.exact(2).await;
            }
            body
        } else if let Some(len) = headers.get("content-length") {
            let len: usize = len.trim().parse().expect("numeric content-length");
            self.exact(len).await
        } else {
            self.to_end().await
        };
        RawResponse { status, headers, body }
    }
}

/// Status code and lower-cased headers of a response head.
pub fn parse_head(head: &str) -> (u16, HashMap<String, String>) {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers: HashMap<String, String> = HashMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().to_string();
            headers.entry(k).and_modify(|e| *e = format!("{e}, {v}")).or_insert(v);
        }
    }
    (status, headers)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read a request head (up to its blank line) byte by byte, so nothing after it is consumed; `false`
/// when the peer closed (or failed) first. For scripted upstreams, which read what the proxy sends.
pub async fn read_request_head<R: AsyncRead + Unpin>(s: &mut R) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}
