//! One request on a connection, then the connection is held open and silent: HTTP/1.1 or
//! HTTP/2 (prior knowledge), over any byte stream (a socket, or mutual TLS).
//!
//! The HTTP/2 side is a few frames written by hand rather than an h2 client: the harness holds
//! 10,000 of these, and only the proxy's memory is measured.
use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What the connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    /// HTTP/2 with prior knowledge (h2c, or h2 after ALPN).
    H2,
}

/// `GET /` with `host` as Host / `:authority` and the extra headers, read to the end of the
/// response (which must be a 200), then the stream back, for the caller to hold.
pub async fn one_request<S>(mut s: S, proto: Proto, host: &str, headers: &[(&str, &str)]) -> Result<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match proto {
        Proto::Http1 => http1(&mut s, host, headers).await?,
        Proto::H2 => h2(&mut s, host, headers).await?,
    }
    Ok(s)
}

async fn http1<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, host: &str, headers: &[(&str, &str)]) -> Result<()> {
    let mut req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the reply was complete");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("reply was not 200: {}", head.lines().next().unwrap_or(""));
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("reply without content-length")?;
            if buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal (not Huffman-coded; the tests' names and values are short).
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127, "header too long for this client");
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// The request's header block: `:method GET`, `:scheme http`, `:path /` from the static table,
/// `:authority` and the extra headers as literals without indexing (RFC 7541 §6.2.2).
fn request_block(host: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01];
    hpack_str(&mut b, host);
    for (n, v) in headers {
        b.push(0x00);
        hpack_str(&mut b, n);
        hpack_str(&mut b, v);
    }
    b
}

async fn h2<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, host: &str, headers: &[(&str, &str)]) -> Result<()> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &request_block(host, headers)));
    s.write_all(&out).await?;
    s.flush().await?;
    let mut status_ok = false;
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.context("reading a frame header")?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.context("reading a frame")?;
        match kind {
            SETTINGS if flags & ACK == 0 => s.write_all(&frame(SETTINGS, ACK, 0, &[])).await?,
            PING if flags & ACK == 0 => s.write_all(&frame(PING, ACK, 0, &payload)).await?,
            // `:status: 200` is entry 8 of HPACK's static table, which h2 servers use for it.
            HEADERS if stream == 1 => {
                if payload.first() != Some(&0x88) {
                    bail!("the response was not a 200 (header block starts {:02x?})", payload.first());
                }
                status_ok = true;
                if flags & END_STREAM != 0 {
                    break;
                }
            }
            DATA if stream == 1 && flags & END_STREAM != 0 => break,
            RST_STREAM if stream == 1 => bail!("the request was reset"),
            GOAWAY => bail!("GOAWAY before the response"),
            _ => {}
        }
    }
    if !status_ok {
        bail!("the response ended without headers");
    }
    s.flush().await?;
    Ok(())
}
