//! Many idle keep-alive connections: each makes one HTTP/1.1 request, reads the
//! whole reply, then stays open and silent while the proxy's RSS is sampled.
use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Open `n` connections (`parallel` at a time); they stay open until the
/// returned vector is dropped.
pub async fn open(addr: SocketAddr, host: &str, n: usize, parallel: usize) -> Result<Vec<TcpStream>> {
    let req: std::sync::Arc<[u8]> = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes().into();
    let mut conns = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut started = 0;
    while conns.len() < n {
        while started < n && set.len() < parallel {
            let req = req.clone();
            set.spawn(async move { one(addr, &req).await });
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(s))) => conns.push(s),
            Some(Ok(Err(e))) => bail!("idle connection {} of {n}: {e:#}", conns.len() + 1),
            Some(Err(e)) => bail!("idle connection task: {e}"),
            None => break,
        }
    }
    Ok(conns)
}

async fn one(addr: SocketAddr, req: &[u8]) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    s.write_all(req).await?;
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
                return Ok(s);
            }
        }
    }
}
