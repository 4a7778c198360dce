//! Circuit breaking, two parts:
//! - thresholds (Envoy), per cluster: [`ClusterThresholds`] counts concurrent requests, pending
//!   requests, connections and retries; over a limit, the caller rejects at once;
//! - the state machine (Resilience4j) over a count window, kept per endpoint by default
//!   ([`EndpointBreaker`]: one call target, as Resilience4j guards it and as Linkerd's failure
//!   accrual does) or for a whole service ([`ServiceBreaker`], `scope: service`): closed → open
//!   when the failure or slow-call rate crosses its threshold after `minimum_calls`; open
//!   rejects for `open_duration`; half-open lets `half_open_calls` probes through and closes
//!   when they all succeed, reopens on a failure.
//!
//! The request path reads the state without a lock (an atomic); the window is behind a
//! per-machine lock taken once per recorded call. Deadlines saturate (see [`super::clock`]):
//! no `openDuration` can overflow.
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::clock;
use super::config::BreakerConfig;

mod thresholds;

pub use thresholds::{ClusterThresholds, Gauge, GaugeGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// The value of `outrider_circuit_breaker_state`.
    pub fn metric(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }

    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Closed,
            1 => State::HalfOpen,
            _ => State::Open,
        }
    }
}

/// The state machine guarding one endpoint (`scope: endpoint`, the default); carried across
/// snapshots with the endpoint's other state, keyed by cluster and address.
#[derive(Debug, Default)]
pub struct EndpointBreaker(StateMachine);

/// The state machine guarding a whole service (`scope: service`); carried across snapshots
/// with the cluster's other state.
#[derive(Debug, Default)]
pub struct ServiceBreaker(StateMachine);

impl std::ops::Deref for EndpointBreaker {
    type Target = StateMachine;
    fn deref(&self) -> &StateMachine {
        &self.0
    }
}

impl std::ops::Deref for ServiceBreaker {
    type Target = StateMachine;
    fn deref(&self) -> &StateMachine {
        &self.0
    }
}

/// One Resilience4j-style state machine.
#[derive(Debug)]
pub struct StateMachine {
    /// The state as the request path reads it, without the lock.
    state: AtomicU8,
    /// While open: the `clock::now_nanos()` from which a probe may go through.
    open_until: AtomicU64,
    inner: Mutex<Machine>,
}

#[derive(Debug)]
struct Machine {
    state: State,
    /// Closed: the last calls.
    window: Window,
    /// Half-open: probes handed out and probes that came back fine.
    probes_out: u32,
    probes_ok: u32,
}

/// The last `size` calls as a ring of flags (1 byte per call), with running counts.
#[derive(Debug, Default)]
struct Window {
    calls: Vec<u8>,
    /// When full: the index of the oldest call.
    next: usize,
    size: usize,
    failures: u32,
    slows: u32,
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

impl Window {
    fn clear(&mut self) {
        self.calls.clear();
        self.next = 0;
        self.failures = 0;
        self.slows = 0;
    }

    fn push(&mut self, size: usize, failed: bool, slow: bool) {
        if size != self.size {
            // The policy's window changed: start counting afresh.
            self.clear();
            self.size = size;
        }
        let flags = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
        if self.calls.len() < size {
            self.calls.push(flags);
        } else if let Some(old) = self.calls.get_mut(self.next) {
            self.failures -= u32::from(*old & FAILED != 0);
            self.slows -= u32::from(*old & SLOW != 0);
            *old = flags;
            self.next = (self.next + 1) % size;
        }
        self.failures += u32::from(failed);
        self.slows += u32::from(slow);
    }

    fn len(&self) -> u32 {
        u32::try_from(self.calls.len()).unwrap_or(u32::MAX)
    }
}

/// Permission for one call; report how it went with [`StateMachine::record`], or give it back
/// with [`StateMachine::forget`] when the call was abandoned.
#[derive(Debug)]
pub struct Permit {
    probe: bool,
    start: Instant,
}

impl Permit {
    /// When the call started (a slow call is measured from here).
    pub fn start(&self) -> Instant {
        self.start
    }
}

impl Default for StateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl StateMachine {
    pub fn new() -> Self {
        Self {
            state: AtomicU8::new(State::Closed.to_u8()),
            open_until: AtomicU64::new(0),
            inner: Mutex::new(Machine { state: State::Closed, window: Window::default(), probes_out: 0, probes_ok: 0 }),
        }
    }

    /// The state now, without the lock (an open breaker whose time is up reads as half-open).
    pub fn state(&self) -> State {
        match State::from_u8(self.state.load(Ordering::Acquire)) {
            State::Open if clock::now_nanos() >= self.open_until.load(Ordering::Acquire) => State::HalfOpen,
            s => s,
        }
    }

    /// Whether a call could be let through now (half-open: maybe, if a probe slot is free).
    pub fn admits(&self) -> bool {
        self.state() != State::Open
    }

    /// May a call go through? `Err` while open (or half-open with all probes out).
    pub fn try_acquire(&self, cfg: &BreakerConfig) -> Result<Permit, State> {
        let start = Instant::now();
        if self.state.load(Ordering::Acquire) == State::Closed.to_u8() {
            return Ok(Permit { probe: false, start });
        }
        let mut m = self.inner.lock();
        if m.state == State::Open {
            if clock::now_nanos() < self.open_until.load(Ordering::Acquire) {
                return Err(State::Open);
            }
            m.state = State::HalfOpen;
            m.probes_out = 0;
            m.probes_ok = 0;
            self.publish(State::HalfOpen);
        }
        match m.state {
            State::Closed => Ok(Permit { probe: false, start }),
            State::HalfOpen if m.probes_out < cfg.half_open_calls => {
                m.probes_out += 1;
                Ok(Permit { probe: true, start })
            }
            s => Err(s),
        }
    }

    /// Report a call's result. A call is slow when it took `slow_call_duration` or more (a
    /// timeout counts as failed and, when long enough, slow). Returns the new state when it
    /// changed.
    pub fn record(&self, cfg: &BreakerConfig, permit: Permit, failed: bool) -> Option<State> {
        let slow = permit.start.elapsed() >= cfg.slow_call_duration;
        let mut m = self.inner.lock();
        let before = m.state;
        match m.state {
            State::HalfOpen if permit.probe => {
                if failed || slow {
                    self.open(&mut m, cfg);
                } else {
                    m.probes_ok += 1;
                    if m.probes_ok >= cfg.half_open_calls {
                        m.state = State::Closed;
                        m.window.clear();
                        self.publish(State::Closed);
                    }
                }
            }
            State::Closed => {
                let size = usize::try_from(cfg.window.max(1)).unwrap_or(usize::MAX);
                m.window.push(size, failed, slow);
                let n = m.window.len();
                if n >= cfg.minimum_calls.max(1) {
                    let failure_rate = u64::from(m.window.failures) * 100 / u64::from(n);
                    let slow_rate = u64::from(m.window.slows) * 100 / u64::from(n);
                    if failure_rate >= u64::from(cfg.failure_rate_threshold)
                        || slow_rate >= u64::from(cfg.slow_call_rate_threshold)
                    {
                        self.open(&mut m, cfg);
                    }
                }
            }
            // A call that started before the breaker opened, or a non-probe call that
            // finished while half-open: it no longer counts.
            _ => {}
        }
        (m.state != before).then_some(m.state)
    }

    /// A call that never completed (cancelled by its caller) gives its probe slot back.
    pub fn forget(&self, permit: Permit) {
        if permit.probe {
            let mut m = self.inner.lock();
            if m.state == State::HalfOpen {
                m.probes_out = m.probes_out.saturating_sub(1);
            }
        }
    }

    fn open(&self, m: &mut Machine, cfg: &BreakerConfig) {
        m.state = State::Open;
        m.window.clear();
        m.probes_out = 0;
        m.probes_ok = 0;
        self.open_until.store(clock::after(cfg.open_duration), Ordering::Release);
        self.publish(State::Open);
    }

    fn publish(&self, s: State) {
        self.state.store(s.to_u8(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
