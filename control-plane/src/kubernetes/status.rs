//! The leader writes each `outrider.io` object's `Accepted` condition (status subresource,
//! merge patch), only when it differs from what is stored, and only for the generation it
//! judged: an object changed since is judged again first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use super::crds::Kind;
use super::policies::{ACCEPTED, Condition, PolicyObject, Verdict, VerdictKey};
use super::store::Store;
use super::{GROUP, Kube, VERSION};

/// Every object's verdict.
pub type Verdicts = BTreeMap<VerdictKey, Verdict>;

/// Writes in flight at once.
const CONCURRENT_WRITES: usize = 8;
/// Even without a new verdict, statuses are compared again this often (a failed write is
/// retried then).
const RESYNC: Duration = Duration::from_secs(30);

/// The API resource of a kind (for dynamic clients).
pub fn api_resource(kind: &Kind) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind.kind), kind.plural)
}

/// The condition a verdict asks for, keeping the transition time when the status stays.
fn desired(verdict: &Verdict, stored: Option<&Condition>) -> Condition {
    let status = if verdict.accepted { "True" } else { "False" };
    let last_transition_time = match stored {
        Some(c) if c.status == status && !c.last_transition_time.is_empty() => c.last_transition_time.clone(),
        _ => Timestamp::now().round(k8s_openapi::jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default(),
    };
    Condition {
        type_: ACCEPTED.to_owned(),
        status: status.to_owned(),
        reason: verdict.reason.to_owned(),
        message: verdict.message.clone(),
        observed_generation: verdict.generation,
        last_transition_time,
    }
}

fn up_to_date(stored: Option<&Condition>, want: &Condition) -> bool {
    stored.is_some_and(|c| {
        c.status == want.status
            && c.reason == want.reason
            && c.message == want.message
            && c.observed_generation == want.observed_generation
    })
}

/// Write statuses until the task is dropped (it runs while this replica leads).
pub async fn write(
    kube: Kube,
    mut verdicts: watch::Receiver<Arc<Verdicts>>,
    stores: Vec<(&'static Kind, Arc<Store<PolicyObject>>)>,
) {
    loop {
        let current = verdicts.borrow_and_update().clone();
        let mut writes = Vec::new();
        for ((kind_name, namespace, name), verdict) in current.iter() {
            let Some((kind, store)) = stores.iter().find(|(k, _)| k.kind == *kind_name) else { continue };
            let key = (namespace.clone(), name.clone());
            let stored = match store.read().get(&key) {
                // Judged an older generation: the next verdict will be about the new one.
                Some(object) if object.generation == verdict.generation => object.accepted.clone(),
                _ => continue,
            };
            let want = desired(verdict, stored.as_ref());
            if !up_to_date(stored.as_ref(), &want) {
                writes.push((*kind, namespace.clone(), name.clone(), want));
            }
        }
        futures_util::stream::iter(writes)
            .for_each_concurrent(CONCURRENT_WRITES, |(kind, namespace, name, condition)| {
                let kube = kube.clone();
                async move {
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(kube.client.clone(), &namespace, &api_resource(kind));
                    let patch = json!({"status": {"conditions": [condition]}});
                    match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        Ok(_) => tracing::info!(
                            kind = kind.kind, namespace = %namespace, name = %name,
                            accepted = %condition.status, reason = %condition.reason, "status written"
                        ),
                        Err(kube::Error::Api(s)) if s.is_not_found() => {}
                        Err(e) => tracing::warn!(
                            kind = kind.kind, namespace = %namespace, name = %name, error = %e,
                            "cannot write the status; retrying later"
                        ),
                    }
                }
            })
            .await;
        tokio::select! {
            changed = verdicts.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}
