//! Choosing the endpoint of one attempt, and reporting how the attempt went. Shared by HTTP
//! (the balance stage of [`super::stack`]) and opaque TCP ([`super::tcp`]).
//!
//! Picking, in order of preference: an endpoint whose breaker admits calls (`scope:
//! endpoint`), that is not ejected by outlier detection and that this request has not tried
//! yet; then one this request tried already; then, when every admitting endpoint is ejected,
//! any that admits (Envoy's panic mode). With `scope: service` the service's one state machine
//! admits or rejects the call as a whole. An endpoint whose breaker is open is never picked:
//! when no endpoint of the split admits calls (or the split has none), the caller tries the
//! split's fallback the same way, and otherwise answers with the local 503 `circuit-open`. A
//! retry that would only find endpoints of its split it has tried already goes to the fallback
//! too, when the fallback has one it can use (Envoy's `previous_priorities` retry priority
//! moves retries to the next priority the same way).
//!
//! Reporting: the [`Attempt`] guard feeds the outcome to the breaker (the endpoint's or the
//! service's), to outlier detection and to the peak-EWMA estimate exactly once, when the
//! attempt ends. An attempt dropped at or after its deadline was abandoned by a timeout (per
//! try, or the request's): that is a failure for the breaker (and a slow call when it lasted
//! `slowCallDuration`), a timeout for outlier detection (a 5xx and a gateway error) and its
//! duration is the latency fed to the estimate. Dropped before its deadline (the caller went
//! away), it records nothing and gives a half-open probe slot back.
//!
//! The guard also counts the attempt for the load reports ([`crate::load_report`]): issued when
//! it starts, then a success or an error ([`Outcome::load_error`]) with its latency when it
//! ends — an attempt abandoned by a timeout or by its caller is an error with the time it had
//! taken; a local rejection is issued but neither. A gRPC response whose headers carry no
//! grpc-status has its status in the trailers: its count (with the latency to the headers)
//! moves to the response body and is made when the body ends ([`PendingLoad`]). The breaker,
//! outlier detection and the estimate judge every response by its headers, when they arrive:
//! a streaming call may last minutes, and a half-open breaker's probe or an ejection decision
//! cannot wait for it (Envoy's outlier detection also reads the gRPC status of the headers only).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use crate::balance::Balancer;
use crate::http::body::Body;
use crate::load_report::PendingLoad;
use crate::policy::breaker::{Permit, State, StateMachine};
use crate::policy::config::BreakerScope;
use crate::policy::outcome::Outcome;
use crate::state::{Cluster, Endpoint};
use crate::telemetry::metrics::{Metrics, ServiceLabels};

/// How often a pick is retried when the chosen endpoint's breaker refused a probe meanwhile.
const ACQUIRE_TRIES: usize = 3;

/// An endpoint and the breaker permit for calling it.
#[derive(Debug)]
pub struct Choice {
    pub endpoint: Arc<Endpoint>,
    pub permit: Option<Permit>,
    /// Whether this request has not tried the endpoint yet.
    pub untried: bool,
}

impl Choice {
    /// Not used after all: give the permit back (a half-open probe slot).
    pub fn release(mut self, cluster: &Cluster) {
        if let (Some(permit), Some(cfg)) = (self.permit.take(), &cluster.policy.breaker) {
            match cfg.scope {
                BreakerScope::Endpoint => self.endpoint.shared.breaker.forget(permit),
                BreakerScope::Service => cluster.state.breaker.forget(permit),
            }
        }
    }
}

/// Why nothing could be picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoPick {
    /// The set has no endpoints.
    Empty,
    /// Breakers are open: every endpoint's (`scope: endpoint`), or the service's.
    Open,
}

/// Choose an endpoint of `endpoints` (a subset of `cluster`, or all of it) for one attempt,
/// avoiding the endpoints in `tried` where it can.
pub fn choose(cluster: &Cluster, endpoints: &Balancer<Arc<Endpoint>>, tried: &[SocketAddr]) -> Result<Choice, NoPick> {
    let choice = |endpoint: Arc<Endpoint>, permit| {
        let untried = !tried.contains(&endpoint.addr);
        Choice { endpoint, permit, untried }
    };
    let Some(cfg) = &cluster.policy.breaker else {
        return pick(cluster, endpoints, tried, |_| true).map(|endpoint| choice(endpoint, None));
    };
    match cfg.scope {
        BreakerScope::Service => {
            if endpoints.is_empty() {
                return Err(NoPick::Empty);
            }
            let permit = cluster.state.breaker.try_acquire(cfg).map_err(|_| NoPick::Open)?;
            match pick(cluster, endpoints, tried, |_| true) {
                Ok(endpoint) => Ok(choice(endpoint, Some(permit))),
                Err(e) => {
                    cluster.state.breaker.forget(permit);
                    Err(e)
                }
            }
        }
        BreakerScope::Endpoint => {
            for _ in 0..ACQUIRE_TRIES {
                let endpoint = pick(cluster, endpoints, tried, |e| e.shared.breaker.admits())?;
                // Half-open with every probe out: another endpoint, if one admits calls.
                if let Ok(permit) = endpoint.shared.breaker.try_acquire(cfg) {
                    return Ok(choice(endpoint, Some(permit)));
                }
            }
            Err(NoPick::Open)
        }
    }
}

fn pick(
    cluster: &Cluster,
    b: &Balancer<Arc<Endpoint>>,
    tried: &[SocketAddr],
    admits: impl Fn(&Arc<Endpoint>) -> bool,
) -> Result<Arc<Endpoint>, NoPick> {
    if b.is_empty() {
        return Err(NoPick::Empty);
    }
    let plain = cluster.policy.outlier.is_none() && cluster.policy.breaker.is_none() && tried.is_empty();
    let chosen = if plain {
        b.pick()
    } else {
        let healthy = |e: &Arc<Endpoint>| admits(e) && !e.shared.health.is_ejected();
        b.pick_where(|e| healthy(e) && !tried.contains(&e.addr)).or_else(|| b.pick_where(healthy)).or_else(|| {
            // Everything that admits calls is ejected: use it anyway (Envoy's panic mode).
            b.pick_where(&admits)
        })
    };
    chosen.cloned().ok_or(NoPick::Open)
}

/// One attempt on one endpoint, reported exactly once (see the module docs).
#[derive(Debug)]
pub struct Attempt {
    endpoint: Arc<Endpoint>,
    /// Whose policy and state the outcome feeds (the fallback service's, when it is one).
    cluster: Arc<Cluster>,
    permit: Option<Permit>,
    start: Instant,
    /// When a timeout abandons this attempt, if one is set.
    deadline: Option<Instant>,
    /// HTTP: count the request in flight and feed its latency to the peak-EWMA estimate.
    latency: bool,
    metrics: Metrics,
    reported: bool,
}

impl Attempt {
    /// Start an attempt on the chosen endpoint of `cluster`.
    pub fn start(
        choice: Choice,
        cluster: Arc<Cluster>,
        deadline: Option<Instant>,
        latency: bool,
        metrics: Metrics,
    ) -> Self {
        if latency {
            choice.endpoint.shared.ewma.add_pending();
        }
        choice.endpoint.shared.load.issue();
        Self {
            endpoint: choice.endpoint,
            cluster,
            permit: choice.permit,
            start: Instant::now(),
            deadline,
            latency,
            metrics,
            reported: false,
        }
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The attempt ended with this outcome; `answered`: a response came back (its latency is
    /// fed to the estimate).
    pub fn finish(mut self, outcome: Outcome, answered: bool) {
        let elapsed = self.start.elapsed();
        if self.latency && answered {
            self.endpoint.shared.ewma.observe(elapsed);
        }
        self.report(outcome, Some(elapsed));
    }

    /// The response headers came back: judge them, and hand a gRPC response whose status is
    /// in its trailers the attempt's load-report count (see the module docs).
    pub fn answered(mut self, resp: &mut Response<Body>) {
        let (outcome, in_trailers) = Outcome::of_headers(resp.status(), resp.headers());
        let elapsed = self.start.elapsed();
        if self.latency {
            self.endpoint.shared.ewma.observe(elapsed);
        }
        if in_trailers {
            self.report(outcome, None);
            let load = PendingLoad::new(self.endpoint.shared.clone(), elapsed);
            let body = std::mem::take(resp.body_mut());
            *resp.body_mut() = body.judge_by_trailers(load);
        } else {
            self.report(outcome, Some(elapsed));
        }
    }

    /// `latency`: count the outcome for the load reports now, with this latency.
    fn report(&mut self, outcome: Outcome, latency: Option<Duration>) {
        self.reported = true;
        let c = &self.cluster;
        let ep = &self.endpoint;
        if let Some(latency) = latency
            && let Some(error) = outcome.load_error()
        {
            ep.shared.load.finish(error, latency);
        }
        if let (Some(permit), Some(cfg)) = (self.permit.take(), &c.policy.breaker) {
            let machine: &StateMachine = match cfg.scope {
                BreakerScope::Endpoint => &ep.shared.breaker,
                BreakerScope::Service => &c.state.breaker,
            };
            if outcome == Outcome::Local {
                machine.forget(permit);
            } else if let Some(state) = machine.record(cfg, permit, outcome.is_breaker_failure()) {
                log_transition(c, ep, cfg.scope, state);
            }
        }
        if let Some(o) = &c.policy.outlier {
            let peers = || c.endpoints.items().iter().map(|e| &e.shared.health);
            if ep.shared.health.record(outcome, o, &c.state.outliers, peers()) {
                self.metrics.outlier_ejections.get_or_create(&ServiceLabels { service: c.service.clone() }).inc();
                tracing::warn!(service = &*c.service, endpoint = %ep.addr, reason = outcome.reason(), "endpoint ejected");
            }
            let n = c.state.outliers.evaluate(o, peers());
            if n > 0 {
                self.metrics
                    .outlier_ejections
                    .get_or_create(&ServiceLabels { service: c.service.clone() })
                    .inc_by(u64::from(n));
                tracing::warn!(service = &*c.service, ejected = n, "endpoints ejected for their failure percentage");
            }
        }
    }
}

fn log_transition(c: &Cluster, ep: &Endpoint, scope: BreakerScope, state: State) {
    match scope {
        BreakerScope::Endpoint => tracing::warn!(
            service = &*c.service,
            endpoint = %ep.addr,
            state = state.as_str(),
            "circuit breaker of an endpoint changed state"
        ),
        BreakerScope::Service => {
            tracing::warn!(service = &*c.service, state = state.as_str(), "circuit breaker changed state")
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.latency {
            self.endpoint.shared.ewma.remove_pending();
        }
        if self.reported {
            return;
        }
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            // Abandoned by a timeout: the time waited is its latency, and it failed.
            if self.latency {
                self.endpoint.shared.ewma.observe(now.saturating_duration_since(self.start));
            }
            self.report(Outcome::Timeout, Some(now.saturating_duration_since(self.start)));
        } else {
            // The caller went away: says nothing about the endpoint to the breaker, but the
            // load reports count it as an error (no response in the time it was given).
            self.endpoint.shared.load.finish(true, now.saturating_duration_since(self.start));
            if let (Some(permit), Some(cfg)) = (self.permit.take(), &self.cluster.policy.breaker) {
                match cfg.scope {
                    BreakerScope::Endpoint => self.endpoint.shared.breaker.forget(permit),
                    BreakerScope::Service => self.cluster.state.breaker.forget(permit),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
