//! A network fault injector: a TCP relay on 127.0.0.1:0 in front of a target, adding the faults
//! the kernel here cannot (no `netem`): delay, dropped connections, resets, stalls and bandwidth
//! limits, changed at any time while connections are open.
//!
//! ```ignore
//! let relay = fault::relay(upstream.addr).await;        // point the proxy at relay.addr
//! relay.set(|f| f.delay = Duration::from_millis(50));   // every chunk, both ways
//! relay.set(|f| f.reset_after_down = Some(100));        // RST after 100 response bytes
//! relay.set(|f| f.stall_up = true);                     // stop reading the client: full window
//! relay.reset_all();                                    // RST every open connection now
//! ```
//! "Up" is client → target, "down" is target → client. A stalled direction is not read at all,
//! so the sender's window fills as it would against a peer that stopped reading. Faults apply to
//! the connections already open as well as to new ones; a reset is an RST on both sides
//! (`SO_LINGER` 0), a close is a FIN.
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// What happens to a new connection before any byte is relayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnConnect {
    /// Connect to the target and relay.
    #[default]
    Forward,
    /// Accept, then close at once (FIN): the target never sees it.
    Close,
    /// Accept, then reset at once (RST): the target never sees it.
    Reset,
    /// Accept and never answer: nothing is read, nothing is written, nothing reaches the target.
    Blackhole,
}

/// The faults in force; [`Relay::set`] changes them for open and new connections alike.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Added to every chunk in both directions (a one-way latency; chunks are pipelined, so
    /// throughput is kept).
    pub delay: Duration,
    /// Bytes per second per direction per connection; `None` for unlimited.
    pub bandwidth: Option<u64>,
    /// Stop reading from the client (the client's send window fills).
    pub stall_up: bool,
    /// Stop reading from the target (the target's send window fills; the client waits).
    pub stall_down: bool,
    /// New connections: forward, close, reset or black-hole them.
    pub on_connect: OnConnect,
    /// The share of new connections reset at once (0.0 ..= 1.0), when `on_connect` forwards.
    pub drop_rate: f64,
    /// Reset both sides once this many target → client bytes have been relayed on a connection
    /// (the response is cut mid-way).
    pub reset_after_down: Option<u64>,
}

/// Counters of what the relay did.
#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    forwarded: AtomicU64,
    open: AtomicU64,
    resets: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A running relay; stops (listener and every connection) when dropped.
#[derive(Debug)]
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where connections are relayed to.
    pub target: SocketAddr,
    faults: watch::Sender<Faults>,
    /// Bumped by [`Relay::reset_all`]; each connection resets when it sees a new value.
    reset_gen: watch::Sender<u64>,
    stats: Arc<Stats>,
    task: AbortHandle,
}

/// Start a relay to `target` with no faults.
pub async fn relay(target: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fault relay on 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    let (faults, _) = watch::channel(Faults::default());
    let (reset_gen, _) = watch::channel(0u64);
    let stats = Arc::new(Stats::default());
    let (f, r, s) = (faults.clone(), reset_gen.clone(), stats.clone());
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            s.accepted.fetch_add(1, Ordering::SeqCst);
            while conns.try_join_next().is_some() {}
            conns.spawn(connection(client, target, f.subscribe(), r.subscribe(), s.clone()));
        }
    })
    .abort_handle();
    Relay { addr, target, faults, reset_gen, stats, task }
}

impl Relay {
    /// Change the faults; open connections see the change at their next chunk.
    pub fn set(&self, edit: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(edit);
    }

    /// Remove every fault.
    pub fn heal(&self) {
        self.faults.send_replace(Faults::default());
    }

    /// Reset (RST) every connection open now, on both sides.
    pub fn reset_all(&self) {
        self.reset_gen.send_modify(|g| *g += 1);
    }

    /// Connections accepted from clients.
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Connections made to the target.
    pub fn forwarded(&self) -> u64 {
        self.stats.forwarded.load(Ordering::SeqCst)
    }

    /// Connections relayed now (connected to the target and not finished).
    pub fn open(&self) -> u64 {
        self.stats.open.load(Ordering::SeqCst)
    }

    /// Connections the relay reset (faults, `reset_all`, drops).
    pub fn resets(&self) -> u64 {
        self.stats.resets.load(Ordering::SeqCst)
    }

    /// Bytes relayed client → target.
    pub fn bytes_up(&self) -> u64 {
        self.stats.bytes_up.load(Ordering::SeqCst)
    }

    /// Bytes relayed target → client.
    pub fn bytes_down(&self) -> u64 {
        self.stats.bytes_down.load(Ordering::SeqCst)
    }

    /// `IP:port` as a policy file writes endpoints.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Close a socket with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    faults: watch::Receiver<Faults>,
    mut reset_gen: watch::Receiver<u64>,
    stats: Arc<Stats>,
) {
    let now = faults.borrow().clone();
    match now.on_connect {
        OnConnect::Close => return drop(client),
        OnConnect::Reset => {
            stats.resets.fetch_add(1, Ordering::SeqCst);
            return reset(client);
        }
        OnConnect::Blackhole => {
            // Hold the socket open, unread, until the relay stops or `reset_all` is called.
            let _ = reset_gen.changed().await;
            stats.resets.fetch_add(1, Ordering::SeqCst);
            return reset(client);
        }
        OnConnect::Forward if now.drop_rate > 0.0 && fastrand::f64() < now.drop_rate => {
            stats.resets.fetch_add(1, Ordering::SeqCst);
            return reset(client);
        }
        OnConnect::Forward => {}
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        // The target is down: the client sees what it would see without the relay, a reset.
        stats.resets.fetch_add(1, Ordering::SeqCst);
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    stats.forwarded.fetch_add(1, Ordering::SeqCst);
    stats.open.fetch_add(1, Ordering::SeqCst);
    let mut client = client;
    let outcome = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up = pump(cr, uw, Direction::Up, faults.clone(), &stats);
        let down = pump(ur, cw, Direction::Down, faults, &stats);
        let (mut up, mut down) = (std::pin::pin!(up), std::pin::pin!(down));
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                ended = &mut up, if !up_done => {
                    if ended == Ended::Reset {
                        break Ended::Reset;
                    }
                    up_done = true;
                }
                ended = &mut down, if !down_done => {
                    if ended == Ended::Reset {
                        break Ended::Reset;
                    }
                    down_done = true;
                }
                _ = reset_gen.changed() => break Ended::Reset,
            }
            if up_done && down_done {
                break Ended::Done;
            }
        }
    };
    stats.open.fetch_sub(1, Ordering::SeqCst);
    if outcome == Ended::Reset {
        stats.resets.fetch_add(1, Ordering::SeqCst);
        reset(client);
        reset(upstream);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// EOF relayed (FIN forwarded).
    Done,
    /// A peer reset, or a fault asks for both sides to be reset.
    Reset,
}

/// Relay one direction: read (unless stalled, and paced by the bandwidth limit), hold each chunk
/// for the delay, write it in order, forward EOF as a FIN.
async fn pump<R, W>(mut from: R, mut to: W, dir: Direction, mut faults: watch::Receiver<Faults>, stats: &Stats) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let counter = match dir {
        Direction::Up => &stats.bytes_up,
        Direction::Down => &stats.bytes_down,
    };
    let mut queue: VecDeque<(Instant, Bytes)> = VecDeque::new();
    let mut relayed = 0u64;
    let mut eof = false;
    // When the bandwidth limit lets the next read happen.
    let mut next_read = Instant::now();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let f = faults.borrow_and_update().clone();
        if eof && queue.is_empty() {
            let _ = to.shutdown().await;
            return Ended::Done;
        }
        let stalled = match dir {
            Direction::Up => f.stall_up,
            Direction::Down => f.stall_down,
        };
        // Read at most what the bandwidth allows in a tenth of a second.
        let max_chunk = f.bandwidth.map_or(16 * 1024, |bps| (bps / 10).clamp(1, 16 * 1024)) as usize;
        let can_read = !eof && !stalled;
        let due = queue.front().map(|(at, _)| *at);
        tokio::select! {
            // A fault changed: re-evaluate stalls and limits.
            changed = faults.changed() => {
                if changed.is_err() {
                    return Ended::Done;
                }
            }
            () = async { tokio::time::sleep_until(due.unwrap_or_else(Instant::now)).await }, if due.is_some() => {
                let Some((_, chunk)) = queue.pop_front() else { continue };
                let allowed = match (dir, f.reset_after_down) {
                    (Direction::Down, Some(limit)) => limit.saturating_sub(relayed),
                    _ => u64::MAX,
                };
                let n = (chunk.len() as u64).min(allowed) as usize;
                if n > 0 && to.write_all(&chunk[..n]).await.is_err() {
                    return Ended::Reset;
                }
                relayed += n as u64;
                counter.fetch_add(n as u64, Ordering::SeqCst);
                if n < chunk.len() || (dir == Direction::Down && f.reset_after_down.is_some_and(|l| relayed >= l)) {
                    let _ = to.flush().await;
                    return Ended::Reset;
                }
            }
            read = async {
                tokio::time::sleep_until(next_read).await;
                buf.reserve(max_chunk);
                let mut limited = (&mut from).take(max_chunk as u64);
                limited.read_buf(&mut buf).await
            }, if can_read => {
                match read {
                    Ok(0) => eof = true,
                    // The peer reset: pass the reset on.
                    Err(_) => return Ended::Reset,
                    Ok(n) => {
                        if let Some(bps) = f.bandwidth {
                            next_read = Instant::now() + Duration::from_secs_f64(n as f64 / bps.max(1) as f64);
                        }
                        queue.push_back((Instant::now() + f.delay, buf.split().freeze()));
                    }
                }
            }
        }
    }
}
