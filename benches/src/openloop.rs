//! Open-loop HTTP/1.1 load at a fixed rate, corrected for coordinated omission
//! the way wrk2 does it: a pacer thread fixes each request's intended send time
//! in advance, and latency is measured from that intended time, so a stall in
//! the target (or a wait for a free connection) shows up as latency instead of
//! silently lowering the rate.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::latency::{self, Latency};

/// A request that takes longer than this counts as an error.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct OpenLoopResult {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub latency: Latency,
    /// The recorded latencies (ns), to merge several runs.
    pub histogram: hdrhistogram::Histogram<u64>,
}

type Sender = SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    Ok(send)
}

struct Shared {
    addr: SocketAddr,
    host: String,
    idle: Mutex<Vec<Sender>>,
    permits: Semaphore,
    hist: Mutex<hdrhistogram::Histogram<u64>>,
}

/// Send `rate` requests per second for `dur` over up to `conns` keep-alive
/// connections; `host` is the Host header.
pub async fn run(addr: SocketAddr, host: &str, rate: u32, dur: Duration, conns: usize) -> Result<OpenLoopResult> {
    let mut idle = Vec::with_capacity(conns);
    for _ in 0..conns {
        idle.push(connect(addr).await?);
    }
    let shared = Arc::new(Shared {
        addr,
        host: host.to_string(),
        idle: Mutex::new(idle),
        permits: Semaphore::new(conns),
        hist: Mutex::new(latency::histogram()),
    });
    // The pacer: a plain thread sleeping to each intended time (tokio's timer
    // has 1 ms granularity; a thread sleep is good to the kernel's ~50 µs slack).
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = (dur.as_secs_f64() * f64::from(rate)) as u64;
    let pacer = std::thread::Builder::new().name("pacer".into()).spawn(move || {
        let start = Instant::now() + Duration::from_millis(5);
        for i in 0..total {
            let intended = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if tx.send(intended).is_err() {
                break;
            }
        }
    })?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    // Every request's outcome counts, whether it finished while the pacer still ran or after.
    let mut errors = 0;
    let mut count = |r: Result<bool, tokio::task::JoinError>| {
        if !matches!(r, Ok(true)) {
            errors += 1;
        }
    };
    while let Some(intended) = rx.recv().await {
        let sh = shared.clone();
        tasks.spawn(async move { one(&sh, intended).await });
        while let Some(r) = tasks.try_join_next() {
            count(r);
        }
    }
    let _ = pacer.join();
    while let Some(r) = tasks.join_next().await {
        count(r);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let hist = shared.hist.lock().map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let requests = hist.len();
    Ok(OpenLoopResult {
        requests,
        errors,
        rps: requests as f64 / elapsed,
        latency: Latency::from_histogram(&hist),
        histogram: hist.clone(),
    })
}

/// One request; true when it got a 2xx with its whole body.
async fn one(sh: &Shared, intended: Instant) -> bool {
    let Ok(_permit) = sh.permits.acquire().await else {
        return false;
    };
    let conn = sh.idle.lock().ok().and_then(|mut v| v.pop());
    let mut conn = match conn {
        Some(c) if !c.is_closed() => c,
        _ => match connect(sh.addr).await {
            Ok(c) => c,
            Err(_) => return false,
        },
    };
    let ok = tokio::time::timeout(TIMEOUT, async {
        conn.ready().await.ok()?;
        let req = http::Request::get("/").header(http::header::HOST, sh.host.as_str()).body(Empty::new()).ok()?;
        let resp = conn.send_request(req).await.ok()?;
        let ok = resp.status().is_success();
        resp.into_body().collect().await.ok()?;
        Some(ok)
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false);
    if ok {
        let ns = intended.elapsed().as_nanos() as u64;
        if let Ok(mut h) = sh.hist.lock() {
            let _ = h.record(ns.max(1));
        }
        if let Ok(mut v) = sh.idle.lock() {
            v.push(conn);
        }
    }
    ok
}
