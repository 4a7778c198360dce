//! TCP bulk transfer: one connection writes 64 KiB chunks as fast as it can;
//! the upstream's sink counts what arrives. MB/s = bytes the sink read / time.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy)]
pub struct BulkResult {
    pub bytes: u64,
    pub mb_per_s: f64,
}

pub async fn run(addr: SocketAddr, dur: Duration, sink_bytes: &AtomicU64) -> Result<BulkResult> {
    let mut s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let buf = vec![0x5au8; 64 * 1024];
    // Let the first bytes through (protocol detection, upstream connect) before timing.
    s.write_all(&buf).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = sink_bytes.load(Ordering::Relaxed);
    let start = Instant::now();
    let deadline = start + dur;
    while Instant::now() < deadline {
        s.write_all(&buf).await.context("writing the bulk stream")?;
    }
    let bytes = sink_bytes.load(Ordering::Relaxed) - before;
    let secs = start.elapsed().as_secs_f64();
    drop(s);
    Ok(BulkResult { bytes, mb_per_s: bytes as f64 / secs / 1e6 })
}
