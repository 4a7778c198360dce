//! What every leg shares: the per-minute accounting, the fixed-rate driver (one task per
//! request, exchange or stream, latency from its intended start) and the driver of long-lived
//! sessions (TCP connections, gRPC streams) that exchange a message at a fixed interval.
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::latency;

/// Anything not finished within this counts as failed: a request, an exchange, one message of
/// a stream (and its close).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Most tasks of one leg in flight at once (beyond: counted as failed, never queued).
const MAX_IN_FLIGHT: usize = 256;
/// How many failures the report quotes.
const FIRST_ERRORS: usize = 20;

/// Results of the load, by minute and leg.
#[derive(Debug)]
pub struct Acc {
    legs: Vec<&'static str>,
    pub minutes: Vec<BTreeMap<&'static str, (Histogram<u64>, u64)>>,
    pub first_errors: Vec<String>,
    /// Failures by leg and kind ([`kind`]): how many, and the first one (seconds, message).
    pub kinds: BTreeMap<(&'static str, String), (u64, f64, String)>,
    /// The longest latency (ns, from the intended start) of each leg's tasks, by the second of
    /// their intended start: where the run stalled ([`super::stalls`]).
    pub worst: Worst,
}

/// Second of the run → leg → the longest latency (ns) of the tasks meant to start in it.
pub type Worst = BTreeMap<u64, BTreeMap<&'static str, u64>>;

pub type Shared = Arc<Mutex<Acc>>;

pub fn shared(legs: Vec<&'static str>) -> Shared {
    Arc::new(Mutex::new(Acc {
        legs,
        minutes: Vec::new(),
        first_errors: Vec::new(),
        kinds: BTreeMap::new(),
        worst: BTreeMap::new(),
    }))
}

/// A failure's kind: its message with every number written `N`, so that failures that differ
/// only in byte counts, message numbers or times count together.
pub fn kind(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_number = false;
    for c in message.chars() {
        let digit = c.is_ascii_digit() || (in_number && c == '.');
        if digit && !in_number {
            out.push('N');
        } else if !digit {
            out.push(c);
        }
        in_number = digit;
    }
    out
}

impl Acc {
    fn slot(&mut self, minute: usize) -> &mut BTreeMap<&'static str, (Histogram<u64>, u64)> {
        while self.minutes.len() <= minute {
            let row = self.legs.iter().map(|l| (*l, (latency::histogram(), 0))).collect();
            self.minutes.push(row);
        }
        &mut self.minutes[minute]
    }
}

/// Record one outcome of `leg`, in the minute of its intended start; its latency runs from then.
pub fn record(acc: &Shared, start: Instant, intended: Instant, leg: &'static str, outcome: Result<()>) {
    let minute = (intended.duration_since(start).as_secs() / 60) as usize;
    let ns = intended.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
    let Ok(mut a) = acc.lock() else { return };
    let second = intended.duration_since(start).as_secs();
    let worst = a.worst.entry(second).or_default().entry(leg).or_insert(0);
    *worst = (*worst).max(ns);
    match outcome {
        Ok(()) => {
            if let Some((h, _)) = a.slot(minute).get_mut(leg) {
                let _ = h.record(ns.max(1));
            }
        }
        Err(e) => {
            if let Some((_, errors)) = a.slot(minute).get_mut(leg) {
                *errors += 1;
            }
            let (t, message) = (intended.duration_since(start).as_secs_f64(), format!("{e:#}"));
            let seen = a.kinds.entry((leg, kind(&message))).or_insert_with(|| (0, t, message.clone()));
            seen.0 += 1;
            if a.first_errors.len() < FIRST_ERRORS {
                a.first_errors.push(format!("{t:.1}s {leg}: {message}"));
            }
        }
    }
}

/// `fut`, failed when it takes longer than `limit`.
pub async fn within<T>(limit: Duration, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| Err(anyhow!("not done within {limit:?}")))
}

/// `rate` tasks per second of `leg` until `end`, each `one(i)` given `limit` (its own
/// limits inside may be shorter).
pub async fn fixed_rate<F, Fut>(
    leg: &'static str,
    (rate, limit): (f64, Duration),
    (start, end): (Instant, Instant),
    acc: Shared,
    mut one: F,
) where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval_at(start, Duration::from_secs_f64(1.0 / rate.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    loop {
        let intended = tick.tick().await;
        if intended >= end {
            break;
        }
        i += 1;
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            record(&acc, start, intended, leg, Err(anyhow!("{MAX_IN_FLIGHT} already in flight")));
            continue;
        };
        let (acc, fut) = (acc.clone(), one(i));
        tasks.spawn(async move {
            record(&acc, start, intended, leg, within(limit, fut).await);
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// A long-lived TCP connection or gRPC stream of the soak.
pub trait Session: Send + Sized {
    /// Send one message and check what comes back.
    fn exchange(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// Close it the way a client ends it normally, and check the other side agrees.
    fn finish(self) -> impl Future<Output = Result<()>> + Send;
}

/// One life of a long-lived session (times in seconds from the soak's start).
#[derive(Debug, Clone)]
pub struct Life {
    pub opened_s: f64,
    /// The last moment it carried a message (or its clean close) successfully.
    pub last_ok_s: f64,
    pub messages: u64,
    /// Why it broke; `None` when it lasted to the end of the soak and closed cleanly.
    pub broken: Option<String>,
}

/// Session number `k` of `leg`: opened at the start, a message every `every` (the sessions'
/// ticks staggered by `offset`) until `end`, then closed cleanly. A session that breaks is a
/// failure and is opened again at its next tick, so the leg goes on. Returns its lives.
pub async fn long_lived<S, F, Fut>(
    leg: &'static str,
    k: usize,
    (every, offset): (Duration, Duration),
    (start, end): (Instant, Instant),
    acc: Shared,
    mut open: F,
) -> Vec<Life>
where
    S: Session,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<S>>,
{
    let secs = |t: Instant| t.duration_since(start).as_secs_f64();
    let mut tick = tokio::time::interval_at(start + offset, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lives = Vec::new();
    loop {
        let at = tick.tick().await;
        if at >= end {
            return lives;
        }
        let opened = within(TIMEOUT, open()).await;
        let mut session = match opened {
            Ok(s) => s,
            Err(e) => {
                record(&acc, start, at, leg, Err(e.context(format!("opening #{k}"))));
                continue;
            }
        };
        let mut life = Life { opened_s: secs(at), last_ok_s: secs(at), messages: 0, broken: None };
        let mut at = at;
        loop {
            match within(TIMEOUT, session.exchange()).await {
                Ok(()) => {
                    life.messages += 1;
                    life.last_ok_s = secs(Instant::now());
                    record(&acc, start, at, leg, Ok(()));
                }
                Err(e) => {
                    let why = format!(
                        "#{k} (opened at {:.1} s) broke after {} messages: {e:#}",
                        life.opened_s, life.messages
                    );
                    record(&acc, start, at, leg, Err(anyhow!("{why}")));
                    life.broken = Some(why);
                    break;
                }
            }
            at = tick.tick().await;
            if at >= end {
                break;
            }
        }
        if life.broken.is_none() {
            match within(TIMEOUT, session.finish()).await {
                Ok(()) => life.last_ok_s = secs(Instant::now()),
                Err(e) => {
                    let why = format!("#{k} (opened at {:.1} s) did not close cleanly: {e:#}", life.opened_s);
                    record(&acc, start, at, leg, Err(anyhow!("{why}")));
                    life.broken = Some(why);
                }
            }
            lives.push(life);
            return lives;
        }
        lives.push(life);
    }
}

/// `len` bytes that only session (or exchange) `a`, message `b` sends: its numbers, then a
/// pseudo-random tail from them, so a byte from another connection, stream or message, a
/// shifted or a repeated one does not pass for the echo.
pub fn pattern(a: u64, b: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&a.to_be_bytes());
    out.extend_from_slice(&b.to_be_bytes());
    let mut x = (a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0x632B_E59B_D9B4_E019)) | 1;
    while out.len() < len {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Where an echo differs from what was sent, for the failure message.
pub fn mismatch(sent: &[u8], got: &[u8]) -> String {
    match sent.iter().zip(got).position(|(a, b)| a != b) {
        Some(i) => format!("corrupted echo: byte {i} of {} differs", sent.len()),
        None => format!("echo of {} bytes, {} sent", got.len(), sent.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_session_and_message() {
        assert_eq!(pattern(3, 4, 100), pattern(3, 4, 100));
        assert_eq!(pattern(3, 4, 100).len(), 100);
        assert_eq!(pattern(3, 4, 5).len(), 5);
        assert_ne!(pattern(3, 4, 100)[16..], pattern(4, 3, 100)[16..]);
        assert_ne!(pattern(3, 4, 100)[16..], pattern(3, 5, 100)[16..]);
    }

    #[test]
    fn kinds_ignore_the_numbers() {
        assert_eq!(
            kind("#3 (opened at 12.5 s) broke after 57 messages: the connection closed after 0 of 256 echoed bytes"),
            "#N (opened at N s) broke after N messages: the connection closed after N of N echoed bytes"
        );
        assert_eq!(kind("not done within 5s"), "not done within Ns");
        assert_eq!(
            kind("status 503 Service Unavailable (circuit-open)"),
            "status N Service Unavailable (circuit-open)"
        );
    }

    #[test]
    fn a_mismatch_names_the_first_bad_byte() {
        assert_eq!(mismatch(b"abcd", b"abXd"), "corrupted echo: byte 2 of 4 differs");
        assert_eq!(mismatch(b"abcd", b"ab"), "echo of 2 bytes, 4 sent");
    }
}
