//! `outrider control-plane --kubernetes`: the cluster is the source of truth.
//!
//! The control plane reads the API server (kube-rs watchers; kubeconfig or in-cluster config)
//! instead of its policy directory and store: Kubernetes Services and EndpointSlices become
//! Outrider Services and endpoints, the `outrider.io/v1` custom resources become the policy
//! documents (validated exactly as files are, each object's verdict written to its status), the
//! CA root lives in a Secret, and a Lease elects the one replica that does what must happen once.
//! Replicas share nothing else: each serves xDS from what it watches.
//!
//! Everything Kubernetes-specific lives below this module; the rest of the control plane sees a
//! validated [`outrider_xds::PolicySet`] on a watch channel, as in file mode.

/// Keeps the injection webhook's `caBundle` equal to the CA's roots.
pub mod ca_bundle;
/// The mesh CA's root in a Secret, created once by whichever replica starts first.
pub mod ca_secret;
/// Connection to the API server: kubeconfig or in-cluster configuration.
pub mod client;
/// The `outrider.io/v1` kinds and their CRDs, generated from the policy model.
pub mod crds;
/// Services, EndpointSlices and Pods → Outrider Services and endpoints.
pub mod discovery;
/// Sidecar injection (the webhook's mutation and `outrider inject`).
pub mod inject;
/// Join tokens in a Secret, shared by every replica.
pub mod join_tokens;
/// Leader election through a Lease, and the tasks that run only on the leader.
pub mod lease;
/// The `outrider.io` objects → the policy documents in force, and each object's verdict.
pub mod policies;
/// The protocol of a Service port (`appProtocol`, port name).
pub mod protocol;
/// Rollouts in Kubernetes mode: run by the leader, their state in each Rollout's status.
pub mod rollouts;
/// The leader's writes of each object's `Accepted` condition.
pub mod status;
/// Watcher-fed stores that keep only what is needed of each object.
pub mod store;
/// Service-account tokens reviewed by the API server (TokenReview).
pub mod token_review;
/// The mutating admission webhook at `/inject`.
pub mod webhook;

pub use client::{Kube, KubeError, KubeSettings};
pub use lease::{Leadership, LeaseSettings};

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use outrider_xds::PolicySet;
use tokio::sync::watch;

use crds::{KINDS, Kind};
use discovery::{Naming, PodInfo, ServiceInfo, SliceInfo};
use policies::{Assembled, PolicyObject};
use rollouts::RolloutObject;
use status::Verdicts;
use store::{Changes, Store};

/// The namespace label that turns injection on (`outrider.io/inject: enabled`).
pub const INJECT_NAMESPACE_LABEL: &str = "outrider.io/inject";
/// The pod annotation that turns injection off for one pod (`outrider.io/inject: "false"`).
pub const INJECT_POD_ANNOTATION: &str = "outrider.io/inject";
/// The API group and version of Outrider's custom resources.
pub const GROUP: &str = "outrider.io";
pub const VERSION: &str = "v1";

/// Defaults of the Kubernetes mode, in one place.
pub mod defaults {
    use std::time::Duration;

    /// The control plane's namespace when neither `--namespace` nor `OUTRIDER_NAMESPACE` (the downward API in the manifests) says.
    pub const NAMESPACE: &str = "outrider-system";
    /// The DNS suffix of Services (`NAME.NS.svc.cluster.local`).
    pub const CLUSTER_DOMAIN: &str = "cluster.local";
    /// How long a Lease is held without renewal before another replica may take it.
    pub const LEASE_DURATION: Duration = Duration::from_secs(15);
}

/// Settings of the Kubernetes mode besides the connection.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// The CA's trust domain (meshed endpoints' identities).
    pub trust_domain: String,
    pub lease: LeaseSettings,
}

/// The stores the cluster is read into.
#[derive(Debug, Clone)]
struct Stores {
    services: Arc<Store<ServiceInfo>>,
    slices: Arc<Store<SliceInfo>>,
    pods: Arc<Store<PodInfo>>,
    policies: Vec<(&'static Kind, Arc<Store<PolicyObject>>)>,
    /// The Rollouts again, with their status and commands (for the rollout controller and the
    /// API; their changes do not make a new policy set).
    rollouts: Arc<Store<RolloutObject>>,
    rollout_changes: Arc<Changes>,
}

impl Stores {
    fn new() -> Self {
        Self {
            services: Store::new("Service"),
            slices: Store::new("EndpointSlice"),
            pods: Store::new("Pod"),
            policies: KINDS.iter().map(|k| (k, Store::new(k.kind))).collect(),
            rollouts: Store::new("Rollout"),
            rollout_changes: Changes::new(),
        }
    }

    /// Start a watcher per store on the current runtime.
    fn watch(&self, kube: &Kube, changes: &Arc<Changes>) {
        let client = &kube.client;
        let config = watcher::Config::default;
        tokio::spawn(store::run(
            Api::<KubeService>::all(client.clone()),
            config(),
            self.services.clone(),
            changes.clone(),
            discovery::compact_service,
        ));
        tokio::spawn(store::run(
            Api::<EndpointSlice>::all(client.clone()),
            config().labels(discovery::SERVICE_NAME_LABEL),
            self.slices.clone(),
            changes.clone(),
            discovery::compact_slice,
        ));
        tokio::spawn(store::run(
            Api::<Pod>::all(client.clone()),
            config(),
            self.pods.clone(),
            changes.clone(),
            discovery::compact_pod,
        ));
        for (kind, store) in &self.policies {
            tokio::spawn(store::run(
                Api::<DynamicObject>::all_with(client.clone(), &status::api_resource(kind)),
                config(),
                store.clone(),
                changes.clone(),
                policies::compact_object,
            ));
        }
        if let Some(kind) = crds::kind(rollouts::KIND) {
            tokio::spawn(store::run(
                Api::<DynamicObject>::all_with(client.clone(), &status::api_resource(kind)),
                config(),
                self.rollouts.clone(),
                self.rollout_changes.clone(),
                rollouts::compact,
            ));
        }
    }

    fn synced(&self) -> Vec<&'static str> {
        let mut waiting = Vec::new();
        for (kind, synced) in [
            (self.services.kind(), self.services.is_synced()),
            (self.slices.kind(), self.slices.is_synced()),
            (self.pods.kind(), self.pods.is_synced()),
        ] {
            if !synced {
                waiting.push(kind);
            }
        }
        waiting.extend(self.policies.iter().filter(|(_, s)| !s.is_synced()).map(|(k, _)| k.kind));
        waiting
    }

    /// The set and verdicts of what the stores hold now.
    fn assemble(&self, naming: &Naming, root_namespace: &str) -> Assembled {
        let discovered = discovery::discover(naming, &self.services.read(), &self.slices.read(), &self.pods.read());
        let guards: Vec<_> = self.policies.iter().map(|(k, s)| (*k, s.read())).collect();
        let objects: Vec<_> = guards.iter().map(|(k, g)| (*k, &**g)).collect();
        policies::assemble(discovered, &objects, root_namespace)
    }

    /// Judge `spec` as object `namespace/name` of `kind`, beside what the stores hold now.
    fn check(
        &self,
        naming: &Naming,
        root_namespace: &str,
        kind: &Kind,
        namespace: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<(), String> {
        let discovered = discovery::discover(naming, &self.services.read(), &self.slices.read(), &self.pods.read());
        policies::check(&discovered, kind, namespace, name, spec, root_namespace).map_err(|(_, message)| message)
    }
}

/// The Kubernetes mode at work: what the rest of the control plane reads from it.
#[derive(Debug)]
pub struct Cluster {
    pub kube: Kube,
    sets: watch::Sender<Arc<PolicySet>>,
    verdicts: watch::Sender<Arc<Verdicts>>,
    leadership: Leadership,
    stores: Stores,
    naming: Naming,
}

/// How often startup reports which kinds it still waits for.
const SYNC_REPORT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Watch the cluster, wait until every kind has been listed once (a replica never serves a
    /// partial view: a proxy that reconnects to it must find everything it had), assemble the
    /// first set, then keep it current and elect a leader for the status writes.
    pub async fn start(kube: Kube, settings: ClusterSettings) -> Result<Self, KubeError> {
        let stores = Stores::new();
        let changes = Changes::new();
        let mut changed = changes.subscribe();
        stores.watch(&kube, &changes);
        loop {
            let waiting = stores.synced();
            if waiting.is_empty() {
                break;
            }
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep(SYNC_REPORT) => {
                    tracing::warn!(waiting = ?waiting, "still listing from the API server (see the watch errors above)");
                }
            }
        }
        let naming = Naming { cluster_domain: kube.cluster_domain.clone(), trust_domain: settings.trust_domain };
        changed.mark_unchanged();
        let first = stores.assemble(&naming, &kube.namespace);
        tracing::info!(
            services = first.set.services.len(),
            policies = first.verdicts.len(),
            pods = stores.pods.len(),
            "read the cluster"
        );
        let (sets, _) = watch::channel(Arc::new(first.set));
        let (verdicts, _) = watch::channel(Arc::new(first.verdicts));
        tokio::spawn(keep_assembling(
            stores.clone(),
            naming.clone(),
            kube.namespace.clone(),
            changed,
            sets.clone(),
            verdicts.clone(),
        ));
        let leadership = Leadership::start(&kube, settings.lease);
        let (k, v, s) = (kube.clone(), verdicts.clone(), stores.policies.clone());
        leadership.spawn_while_leader("status writer", move || status::write(k.clone(), v.subscribe(), s.clone()));
        Ok(Self { kube, sets, verdicts, leadership, stores, naming })
    }

    /// The validated set the cluster's objects make, and its changes.
    pub fn sets(&self) -> watch::Receiver<Arc<PolicySet>> {
        self.sets.subscribe()
    }

    /// Every `outrider.io` object's verdict, and its changes.
    pub fn verdicts(&self) -> watch::Receiver<Arc<Verdicts>> {
        self.verdicts.subscribe()
    }

    /// This replica's part in the leader election: what must happen once runs under
    /// [`Leadership::spawn_while_leader`].
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// The Rollout objects as watched (status and commands), and a receiver that changes
    /// with them.
    pub fn rollout_objects(&self) -> (&Arc<Store<RolloutObject>>, watch::Receiver<u64>) {
        (&self.stores.rollouts, self.stores.rollout_changes.subscribe())
    }

    /// Judge `spec` as the `outrider.io` object `namespace/name` of `kind` would be judged now
    /// (alone: not against other objects): the message of its `Accepted` condition when it
    /// would be rejected.
    pub async fn check(
        &self,
        kind: &'static Kind,
        namespace: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<(), String> {
        let (stores, naming, root) = (self.stores.clone(), self.naming.clone(), self.kube.namespace.clone());
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        tokio::task::spawn_blocking(move || stores.check(&naming, &root, kind, &namespace, &name, spec))
            .await
            .unwrap_or_else(|e| Err(format!("validation did not finish: {e}")))
    }

    /// How many objects of each watched kind this replica holds.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut out = vec![
            (self.stores.services.kind(), self.stores.services.len()),
            (self.stores.slices.kind(), self.stores.slices.len()),
            (self.stores.pods.kind(), self.stores.pods.len()),
        ];
        out.extend(self.stores.policies.iter().map(|(k, s)| (k.kind, s.len())));
        out
    }
}

/// Re-assemble after changes, at most once per debounce window (as the snapshot debounce:
/// [`crate::server::DEBOUNCE`] of quiet, [`crate::server::DEBOUNCE_MAX`] during a burst), off the
/// async workers; publish the set when it differs and the verdicts.
async fn keep_assembling(
    stores: Stores,
    naming: Naming,
    root_namespace: String,
    mut changed: watch::Receiver<u64>,
    sets: watch::Sender<Arc<PolicySet>>,
    verdicts: watch::Sender<Arc<Verdicts>>,
) {
    loop {
        if changed.changed().await.is_err() {
            return;
        }
        let burst_end = tokio::time::Instant::now() + crate::server::DEBOUNCE_MAX;
        loop {
            tokio::select! {
                () = tokio::time::sleep(crate::server::DEBOUNCE) => break,
                () = tokio::time::sleep_until(burst_end) => break,
                c = changed.changed() => if c.is_err() { return },
            }
        }
        changed.mark_unchanged();
        let (s, n, r) = (stores.clone(), naming.clone(), root_namespace.clone());
        let Ok(assembled) = tokio::task::spawn_blocking(move || s.assemble(&n, &r)).await else {
            tracing::error!("assembling the cluster's policy set failed");
            continue;
        };
        sets.send_if_modified(|current| {
            if **current == assembled.set {
                return false;
            }
            *current = Arc::new(assembled.set);
            true
        });
        verdicts.send_if_modified(|current| {
            if **current == assembled.verdicts {
                return false;
            }
            *current = Arc::new(assembled.verdicts);
            true
        });
    }
}
