//! The TCP leg: the `soak-tcp` Service (`protocol: tcp`, a virtual address) through the client
//! sidecar — reached by interception, as an app's connection would be — and over mutual TLS to
//! its own server sidecar, which delivers the bytes to the upstream's TCP echo.
//!
//! - `tcp`: short exchanges at a fixed rate: connect, send [`SHORT_BYTES`], read the echo,
//!   half-close, read the echo server's EOF. Fails on a connect error, a reset, a short,
//!   corrupted or overlong echo, or no EOF.
//! - `tcp-long`: [`super::LONG_LIVED`] connections open for the whole soak, a message each
//!   [`super::LONG_EVERY`] each, so policy changes and certificate rotations happen while
//!   they are open. Nothing the soak's policy does closes a connection (its idle timeout is
//!   minutes, the connections never go quiet for more than a second), so any break is a
//!   failure. A certificate rotation changes nothing for them: a TLS session keeps the
//!   certificates of its handshake, and only new connections present the new ones.
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::load::{self, mismatch, pattern};

pub const SERVICE: &str = "soak-tcp";
/// The Service's virtual address and port: what the harness connects to, redirected to the
/// client sidecar's outbound listener.
pub const VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 0, 9);
pub const PORT: u16 = 9090;
pub const SHORT: &str = "tcp";
pub const LONG: &str = "tcp-long";
/// Bytes of one short exchange, and of one message on a long-lived connection.
const SHORT_BYTES: usize = 1024;
const LONG_BYTES: usize = 256;
/// Keeps the short exchanges' patterns apart from the long-lived connections'.
const SHORT_TAG: u64 = 1 << 63;

pub fn target() -> SocketAddr {
    SocketAddr::from((VIP, PORT))
}

/// One short exchange (number `i`) with the Service.
pub async fn exchange(i: u64) -> Result<()> {
    exchange_with(target(), i).await
}

async fn exchange_with(addr: SocketAddr, i: u64) -> Result<()> {
    let mut s = connect(addr).await?;
    let sent = pattern(SHORT_TAG | i, 0, SHORT_BYTES);
    s.write_all(&sent).await.context("sending")?;
    echo(&mut s, &sent).await?;
    s.shutdown().await.context("half-closing")?;
    expect_eof(&mut s).await
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Read the echo of `sent` and compare.
async fn echo(s: &mut TcpStream, sent: &[u8]) -> Result<()> {
    let mut got = vec![0u8; sent.len()];
    let mut n = 0;
    while n < got.len() {
        match s.read(&mut got[n..]).await {
            Ok(0) => bail!("the connection closed after {n} of {} echoed bytes", sent.len()),
            Ok(k) => n += k,
            Err(e) => bail!("{} after {n} of {} echoed bytes", describe(&e), sent.len()),
        }
    }
    if got != sent {
        bail!("{}", mismatch(sent, &got));
    }
    Ok(())
}

/// After our half-close: the echo server's EOF, and nothing more.
async fn expect_eof(s: &mut TcpStream) -> Result<()> {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest).await {
        Ok(_) if rest.is_empty() => Ok(()),
        Ok(_) => bail!("{} bytes nobody sent came after the echo", rest.len()),
        Err(e) => bail!("{} instead of the echo server's EOF", describe(&e)),
    }
}

fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "reset".into(),
        _ => e.to_string(),
    }
}

/// A long-lived connection: message `seq` of connection `id` is [`pattern`]`(id, seq)`.
pub struct Long {
    s: TcpStream,
    id: u64,
    seq: u64,
}

impl Long {
    /// Open connection `id` to the Service.
    pub async fn open(id: u64) -> Result<Self> {
        Self::open_to(target(), id).await
    }

    async fn open_to(addr: SocketAddr, id: u64) -> Result<Self> {
        Ok(Self { s: connect(addr).await?, id, seq: 0 })
    }
}

impl load::Session for Long {
    async fn exchange(&mut self) -> Result<()> {
        self.seq += 1;
        let sent = pattern(self.id, self.seq, LONG_BYTES);
        self.s.write_all(&sent).await.with_context(|| format!("sending message {}", self.seq))?;
        echo(&mut self.s, &sent).await.with_context(|| format!("message {}", self.seq))
    }

    async fn finish(mut self) -> Result<()> {
        self.s.shutdown().await.context("half-closing")?;
        expect_eof(&mut self.s).await
    }
}

#[cfg(test)]
#[path = "tcp/tests.rs"]
mod tests;
