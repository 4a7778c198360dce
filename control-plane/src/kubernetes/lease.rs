//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does
//! it: every replica tries to take or renew the Lease `outrider-control-plane` in the control
//! plane's namespace with optimistic concurrency (the Lease's `resourceVersion`), so the API
//! server decides the race.
//!
//! - A replica takes a Lease nobody holds, or one whose holder has not renewed it for its
//!   `leaseDurationSeconds` — measured on this replica's own clock from when it last saw the
//!   record change, so clock skew between replicas does not matter.
//! - The leader renews every [`LeaseSettings::renew`]; when it cannot renew for
//!   [`LeaseSettings::renew_deadline`] (shorter than the duration) it stops leading before anyone
//!   else may start.
//! - A replica that dies is replaced after at most the lease duration.
//!
//! What must happen once (status writes; the injection webhook's `caBundle`) runs under
//! [`Leadership::spawn_while_leader`]: started when this replica becomes the leader, stopped when
//! it stops being it.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Kube;

/// The Lease's name.
pub const LEASE_NAME: &str = "outrider-control-plane";

/// Timing of the election; defaults in [`super::defaults`].
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    /// How long a Lease is held without renewal before another replica takes it.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often a follower tries.
    pub retry: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self::with_duration(super::defaults::LEASE_DURATION)
    }
}

impl LeaseSettings {
    /// Renew at a third of `duration`, give up leading at two thirds, followers retry at a
    /// third (client-go's proportions).
    pub fn with_duration(duration: Duration) -> Self {
        Self {
            name: LEASE_NAME.to_owned(),
            duration,
            renew: duration / 3,
            renew_deadline: duration * 2 / 3,
            retry: duration / 3,
        }
    }
}

/// Whether this replica leads, and the tasks that run while it does.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
}

impl Leadership {
    /// Start electing (the task lives on the current runtime until it is dropped).
    pub fn start(kube: &Kube, settings: LeaseSettings) -> Self {
        let (tx, rx) = watch::channel(false);
        let api: Api<Lease> = Api::namespaced(kube.client.clone(), &kube.namespace);
        tokio::spawn(elect(api, kube.identity.clone(), settings, tx));
        Self { leading: rx }
    }

    /// A replica that never leads (elections off).
    pub fn never() -> Self {
        Self { leading: watch::channel(false).1 }
    }

    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Changes of [`Leadership::is_leader`].
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Run `make()`'s future while this replica leads: started each time it becomes the leader,
    /// dropped as soon as it stops (or when the runtime ends). `what` names it in logs.
    pub fn spawn_while_leader<F, Fut>(&self, what: &'static str, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut leading = self.leading.clone();
        tokio::spawn(async move {
            loop {
                if !until(&mut leading, true).await {
                    return;
                }
                tracing::info!(task = what, "leading: started");
                let finished = tokio::select! {
                    () = make() => true,
                    still = until(&mut leading, false) => if still { false } else { return },
                };
                // A task that finished by itself does not run again before the next term.
                if finished && !until(&mut leading, false).await {
                    return;
                }
                tracing::info!(task = what, "no longer leading: stopped");
            }
        });
    }
}

/// Wait until leading is `want`; false when the election has ended.
async fn until(leading: &mut watch::Receiver<bool>, want: bool) -> bool {
    leading.wait_for(|l| *l == want).await.is_ok()
}

/// What this replica last saw of the Lease, and when (its own clock).
struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

async fn elect(api: Api<Lease>, identity: String, settings: LeaseSettings, leading: watch::Sender<bool>) {
    let mut observed = Observed { resource_version: None, at: Instant::now() };
    let mut last_renewal: Option<Instant> = None;
    loop {
        // A round that hangs (an API server that accepts and never answers) must not keep a
        // leader leading past its deadline: it counts as a failed round.
        let round =
            tokio::time::timeout(settings.renew, try_acquire_or_renew(&api, &identity, &settings, &mut observed));
        let outcome = round.await.unwrap_or_else(|_| Err(RoundError::TimedOut(settings.renew)));
        let now = Instant::now();
        match outcome {
            Ok(true) => {
                last_renewal = Some(now);
                if !*leading.borrow() {
                    tracing::info!(identity = %identity, lease = %settings.name, "became the leader");
                }
                leading.send_if_modified(|l| !std::mem::replace(l, true));
            }
            Ok(false) => {
                if *leading.borrow() {
                    tracing::warn!(identity = %identity, "another replica holds the lease: no longer the leader");
                }
                last_renewal = None;
                leading.send_if_modified(|l| std::mem::replace(l, false));
            }
            Err(e) => {
                tracing::warn!(identity = %identity, error = %e, "cannot read or renew the leader lease");
                if last_renewal.is_some_and(|t| now.duration_since(t) >= settings.renew_deadline) {
                    tracing::warn!(identity = %identity, "no renewal within the deadline: no longer the leader");
                    last_renewal = None;
                    leading.send_if_modified(|l| std::mem::replace(l, false));
                }
            }
        }
        let pause = if *leading.borrow() { settings.renew } else { settings.retry };
        tokio::time::sleep(pause).await;
    }
}

/// One round: `Ok(true)` when this replica holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    identity: &str,
    settings: &LeaseSettings,
    observed: &mut Observed,
) -> Result<bool, RoundError> {
    let now = MicroTime(Timestamp::now());
    let seconds = i32::try_from(settings.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(settings.name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_owned()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_duration_seconds: Some(seconds),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    if lease.metadata.resource_version != observed.resource_version {
        observed.resource_version = lease.metadata.resource_version.clone();
        observed.at = Instant::now();
    }
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let held_for = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(0));
    let mine = holder.as_deref() == Some(identity);
    let expired = Instant::now().duration_since(observed.at) >= held_for;
    if !mine && holder.is_some() && !expired {
        return Ok(false);
    }
    if !mine {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec.holder_identity = Some(identity.to_owned());
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(seconds);
    // `replace` carries the resourceVersion read above: a concurrent writer makes it fail.
    match api.replace(&settings.name, &PostParams::default(), &lease).await {
        Ok(written) => {
            observed.resource_version = written.metadata.resource_version;
            observed.at = Instant::now();
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Why a round of the election failed.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("no answer from the API server within {0:?}")]
    TimedOut(Duration),
}
