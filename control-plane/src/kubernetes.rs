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
/// Connection to the API server: kubeconfig or in-cluster configuration.
pub mod client;
/// Sidecar injection (the webhook's mutation and `outrider inject`).
pub mod inject;
/// Service-account tokens reviewed by the API server (TokenReview).
pub mod token_review;
/// The mutating admission webhook at `/inject`.
pub mod webhook;

pub use client::{Kube, KubeError, KubeSettings};

use std::sync::Arc;

use outrider_xds::PolicySet;
use tokio::sync::watch;

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

    /// The control plane's namespace when neither `--namespace` nor `POD_NAMESPACE` says.
    pub const NAMESPACE: &str = "outrider-system";
    /// The DNS suffix of Services (`NAME.NS.svc.cluster.local`).
    pub const CLUSTER_DOMAIN: &str = "cluster.local";
    /// How long a Lease is held without renewal before another replica may take it.
    pub const LEASE_DURATION: Duration = Duration::from_secs(15);
    /// How often the leader renews.
    pub const LEASE_RENEW: Duration = Duration::from_secs(5);
}

/// The Kubernetes mode at work: what the rest of the control plane reads from it.
#[derive(Debug)]
pub struct Cluster {
    pub kube: Kube,
    sets: watch::Sender<Arc<PolicySet>>,
}

impl Cluster {
    /// Start watching the cluster.
    pub async fn start(kube: Kube) -> Result<Self, KubeError> {
        Ok(Self { kube, sets: watch::channel(Arc::new(PolicySet::default())).0 })
    }

    /// The validated set the cluster's objects make, and its changes.
    pub fn sets(&self) -> watch::Receiver<Arc<PolicySet>> {
        self.sets.subscribe()
    }
}
