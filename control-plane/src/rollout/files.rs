//! The rollouts of a control plane whose policies are files and API writes: the state is kept
//! in `DATA_DIR/rollouts.json`, each split is written through the policy store as an `apply`
//! would be (validated with everything else, persisted before it is in force), and while a
//! rollout progresses any other write that would change the split it owns is refused (409,
//! [`Guard`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use outrider_xds::translate::rollout::{owned_part, traffic_policy_document};
use outrider_xds::{Position, Rollout};
use serde_json::Value;

use super::state::{self, Phase, RolloutState};
use super::{Backend, Controller, SplitError, StoreError, Superseded};
use crate::metrics::Metrics;
use crate::policies::persist::{DataDir, PersistError};
use crate::policies::{DocChange, Policies, WriteError, WriteGuard};
use crate::stats::Stats;

/// The policy store and the data dir.
#[derive(Debug)]
pub struct FileBackend {
    policies: Arc<Policies>,
    data: DataDir,
}

impl Controller {
    /// The controller of the policy store's rollouts: restore the stored states and install the
    /// split guard on `policies`.
    pub fn open(
        policies: Arc<Policies>,
        stats: Arc<Stats>,
        data: DataDir,
        metrics: Metrics,
    ) -> Result<Arc<Self>, PersistError> {
        let states = state::load(&data)?;
        let backend = Arc::new(FileBackend { policies: policies.clone(), data });
        let controller = Controller::new(backend, policies.subscribe(), stats, metrics, states);
        policies.set_guard(Arc::new(Guard(Arc::downgrade(&controller))));
        Ok(controller)
    }
}

impl Backend for FileBackend {
    /// Every state is read at start; a rollout new to the controller has none.
    fn stored<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<Option<RolloutState>, StoreError>> {
        async { Ok(None) }.boxed()
    }

    fn store<'a>(
        &'a self,
        states: &'a BTreeMap<String, RolloutState>,
        _views: &'a BTreeMap<String, Value>,
    ) -> BoxFuture<'a, Result<Superseded, StoreError>> {
        let (data, states) = (self.data.clone(), states.clone());
        async move {
            let path = data.path().join(state::FILE);
            tokio::task::spawn_blocking(move || state::store(&data, &states))
                .await
                .map_err(|e| PersistError::Write { path, source: std::io::Error::other(e) })??;
            Ok(Vec::new())
        }
        .boxed()
    }

    fn write_split<'a>(
        &'a self,
        rollout: &'a Rollout,
        position: Position,
        current: &'a (dyn Fn() -> bool + Send + Sync),
    ) -> BoxFuture<'a, Result<Option<String>, SplitError>> {
        async move {
            let spec = &rollout.spec;
            let set = self.policies.current();
            let policy_name =
                set.traffic_policy(&spec.service).map_or_else(|| spec.service.clone(), |p| p.metadata.name.clone());
            let owner = format!("rollout {}", rollout.name());
            let result = self
                .policies
                .write_owned("TrafficPolicy", &policy_name, &owner, |stored| {
                    if !current() {
                        return None;
                    }
                    let next = traffic_policy_document(stored, rollout, position);
                    (Some(&next) != stored).then_some(next)
                })
                .await;
            match result {
                Ok(_) => Ok(Some(outrider_xds::translate(&self.policies.current()).version)),
                Err(e @ (WriteError::OwnedByDir { .. } | WriteError::Invalid(_))) => {
                    Err(SplitError::Fatal(e.to_string()))
                }
                Err(e) => Err(SplitError::Retry(format!("cannot write the split of TrafficPolicy/{policy_name}: {e}"))),
            }
        }
        .boxed()
    }
}

/// Refuses writes that change a progressing rollout's split (held weakly by the policies, so
/// that the two do not keep each other alive).
#[derive(Debug)]
struct Guard(Weak<Controller>);

impl WriteGuard for Guard {
    fn check(&self, changes: &[DocChange<'_>]) -> Result<(), String> {
        let Some(controller) = self.0.upgrade() else { return Ok(()) };
        let set = controller.rollouts();
        let inner = controller.inner.lock();
        for (key, old, new) in changes {
            if key.0 != "TrafficPolicy" {
                continue;
            }
            let service_of = |d: &Option<&Value>| d.and_then(|d| d["spec"]["service"].as_str().map(str::to_owned));
            for service in [service_of(old), service_of(new)].into_iter().flatten() {
                let running = inner
                    .states
                    .values()
                    .filter(|s| s.service == service && s.phase == Phase::Progressing)
                    .filter_map(|s| Some((s, set.rollouts.get(&s.name)?)));
                for (state, rollout) in running {
                    if owned_part(*old, rollout) != owned_part(*new, rollout) {
                        return Err(refusal(state, rollout, &format!("TrafficPolicy/{}", key.1)));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The refusal for a write that would change the split `state`'s rollout runs.
fn refusal(state: &RolloutState, rollout: &Rollout, kind_name: &str) -> String {
    let spec = &rollout.spec;
    let weight = spec.canary_weight(state.position.into());
    format!(
        "the split of {kind_name} is run by Rollout {} (progressing, step {} of {}, canary at {weight}%): pause \
         it first (outrider rollout pause {}), or abort it; edits of anything else in the document are accepted",
        state.name,
        state.step_number(spec),
        spec.steps().len(),
        state.name
    )
}
