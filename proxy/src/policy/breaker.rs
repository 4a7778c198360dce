//! Circuit breaking, two parts (DESIGN.md §4):
//! - thresholds (Envoy): concurrent requests / pending requests / connections /
//!   retries per cluster; over the limit, reject at once;
//! - the state machine (Resilience4j) over a count window: closed → open when
//!   the failure or slow-call rate crosses its threshold after `minimum_calls`;
//!   open rejects for `open_duration`; half-open lets `half_open_calls` probes
//!   through and closes when they all succeed, reopens on a failure.
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::config::BreakerConfig;

/// A counter with a limit; `try_acquire` hands out a guard.
#[derive(Debug, Default)]
pub struct Gauge {
    active: AtomicU32,
}

#[derive(Debug)]
pub struct GaugeGuard {
    gauge: Arc<ClusterCounters>,
    which: Which,
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Requests,
    Pending,
    Connections,
    Retries,
}

/// The live counts of a cluster, carried across snapshots.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    pub requests: Gauge,
    pub pending: Gauge,
    pub connections: Gauge,
    pub retries: Gauge,
    /// Woken when one of the cluster's upstream connections closes, for the
    /// requests waiting for a connection (`maxConnections`).
    pub connection_closed: tokio::sync::Notify,
}

impl ClusterCounters {
    fn gauge(&self, w: Which) -> &Gauge {
        match w {
            Which::Requests => &self.requests,
            Which::Pending => &self.pending,
            Which::Connections => &self.connections,
            Which::Retries => &self.retries,
        }
    }

    fn acquire(self: &Arc<Self>, which: Which, limit: u32) -> Option<GaugeGuard> {
        let g = self.gauge(which);
        let mut cur = g.active.load(Ordering::Relaxed);
        loop {
            if cur >= limit {
                return None;
            }
            match g.active.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(GaugeGuard { gauge: self.clone(), which }),
                Err(now) => cur = now,
            }
        }
    }

    pub fn acquire_request(self: &Arc<Self>, limit: u32) -> Option<GaugeGuard> {
        self.acquire(Which::Requests, limit)
    }
    pub fn acquire_pending(self: &Arc<Self>, limit: u32) -> Option<GaugeGuard> {
        self.acquire(Which::Pending, limit)
    }
    pub fn acquire_connection(self: &Arc<Self>, limit: u32) -> Option<GaugeGuard> {
        self.acquire(Which::Connections, limit)
    }
    pub fn acquire_retry(self: &Arc<Self>, limit: u32) -> Option<GaugeGuard> {
        self.acquire(Which::Retries, limit)
    }

    pub fn active(&self) -> (u32, u32, u32, u32) {
        let l = |g: &Gauge| g.active.load(Ordering::Relaxed);
        (l(&self.requests), l(&self.pending), l(&self.connections), l(&self.retries))
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.gauge(self.which).active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
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
}

/// The state machine of one cluster.
#[derive(Debug)]
pub struct StateMachine {
    inner: Mutex<Machine>,
}

#[derive(Debug)]
struct Machine {
    state: State,
    open_until: Instant,
    /// Closed: the last calls, (failed, slow).
    window: VecDeque<(bool, bool)>,
    failures: u32,
    slows: u32,
    /// Half-open: probes handed out and probes that came back fine.
    probes_out: u32,
    probes_ok: u32,
}

/// Permission for one call; report how it went with [`StateMachine::record`].
#[derive(Debug)]
pub struct Permit {
    probe: bool,
    start: Instant,
}

impl Default for StateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl StateMachine {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Machine {
                state: State::Closed,
                open_until: Instant::now(),
                window: VecDeque::new(),
                failures: 0,
                slows: 0,
                probes_out: 0,
                probes_ok: 0,
            }),
        }
    }

    /// The state now (an open breaker whose time is up reads as half-open).
    pub fn state(&self) -> State {
        let m = self.inner.lock();
        if m.state == State::Open && Instant::now() >= m.open_until { State::HalfOpen } else { m.state }
    }

    /// May a call go through? `Err` while open (or half-open with all probes out).
    pub fn try_acquire(&self, cfg: &BreakerConfig) -> Result<Permit, State> {
        let now = Instant::now();
        let mut m = self.inner.lock();
        if m.state == State::Open {
            if now < m.open_until {
                return Err(State::Open);
            }
            m.state = State::HalfOpen;
            m.probes_out = 0;
            m.probes_ok = 0;
        }
        match m.state {
            State::Closed => Ok(Permit { probe: false, start: now }),
            State::HalfOpen if m.probes_out < cfg.half_open_calls => {
                m.probes_out += 1;
                Ok(Permit { probe: true, start: now })
            }
            s => Err(s),
        }
    }

    /// Report a call's result. Returns the new state when it changed.
    pub fn record(&self, cfg: &BreakerConfig, permit: Permit, failed: bool) -> Option<State> {
        let now = Instant::now();
        let slow = now.saturating_duration_since(permit.start) >= cfg.slow_call_duration;
        let mut m = self.inner.lock();
        let before = m.state;
        match m.state {
            State::HalfOpen if permit.probe => {
                if failed || slow {
                    m.open(now, cfg.open_duration);
                } else {
                    m.probes_ok += 1;
                    if m.probes_ok >= cfg.half_open_calls {
                        m.close();
                    }
                }
            }
            State::Closed => {
                m.window.push_back((failed, slow));
                m.failures += u32::from(failed);
                m.slows += u32::from(slow);
                while m.window.len() > cfg.window.max(1) as usize {
                    if let Some((f, s)) = m.window.pop_front() {
                        m.failures -= u32::from(f);
                        m.slows -= u32::from(s);
                    }
                }
                let n = m.window.len() as u32;
                if n >= cfg.minimum_calls.max(1) {
                    let failure_rate = m.failures * 100 / n;
                    let slow_rate = m.slows * 100 / n;
                    if failure_rate >= cfg.failure_rate_threshold || slow_rate >= cfg.slow_call_rate_threshold {
                        m.open(now, cfg.open_duration);
                    }
                }
            }
            // A call that started before the breaker opened: it no longer counts.
            _ => {}
        }
        (m.state != before).then_some(m.state)
    }

    /// A probe that never completed (cancelled) gives its slot back.
    pub fn forget(&self, permit: Permit) {
        if permit.probe {
            let mut m = self.inner.lock();
            if m.state == State::HalfOpen {
                m.probes_out = m.probes_out.saturating_sub(1);
            }
        }
    }
}

impl Machine {
    fn open(&mut self, now: Instant, d: Duration) {
        self.state = State::Open;
        self.open_until = now + d;
        self.reset_window();
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.reset_window();
    }

    fn reset_window(&mut self) {
        self.window.clear();
        self.failures = 0;
        self.slows = 0;
        self.probes_out = 0;
        self.probes_ok = 0;
    }
}

#[cfg(test)]
mod tests;
