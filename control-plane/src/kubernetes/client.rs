//! The connection to the API server, and what every Kubernetes part of the control plane shares.
//!
//! Configuration is kubectl's: `--kubeconfig FILE` when given, else `KUBECONFIG` or
//! `~/.kube/config`, else the in-cluster service account (`KUBERNETES_SERVICE_HOST` and the token
//! mounted in `/var/run/secrets/kubernetes.io/serviceaccount/`).

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::defaults;

/// How to reach the cluster and who this replica is there.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig other than its current one.
    pub context: Option<String>,
    /// The control plane's own namespace: its Secret (CA root), Lease and webhook live here,
    /// and its `Telemetry` applies mesh-wide.
    pub namespace: String,
    /// DNS suffix of Services (`cluster.local`).
    pub cluster_domain: String,
    /// This replica's name, the Lease holder identity (the pod name in a cluster).
    pub identity: String,
    /// How long the leader's Lease holds without renewal ([`defaults::LEASE_DURATION`]).
    pub lease_duration: std::time::Duration,
}

impl KubeSettings {
    /// Defaults: inferred configuration, [`defaults::NAMESPACE`], [`defaults::CLUSTER_DOMAIN`],
    /// this host's name as the identity.
    pub fn new() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespace: defaults::NAMESPACE.to_owned(),
            cluster_domain: defaults::CLUSTER_DOMAIN.to_owned(),
            identity: host_identity(),
            lease_duration: defaults::LEASE_DURATION,
        }
    }
}

impl Default for KubeSettings {
    fn default() -> Self {
        Self::new()
    }
}

/// The host name plus the process id: unique per replica even when two run on one machine.
fn host_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let host = if host.is_empty() { "outrider".to_owned() } else { host };
    format!("{host}-{}", std::process::id())
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read the kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error(
        "no Kubernetes configuration: {0}; give --kubeconfig FILE, set KUBECONFIG, or run in a pod \
         with a service account"
    )]
    Infer(kube::config::InferConfigError),
    #[error("kubeconfig: {0}")]
    Config(kube::config::KubeconfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(kube::Error),
    #[error(
        "the API server at {url} does not answer: {source}; is it reachable, and does the kubeconfig trust its CA?"
    )]
    Unreachable { url: String, source: kube::Error },
    #[error("the mesh CA root Secret {namespace}/{secret}: {reason}", secret = super::ca_secret::CA_SECRET)]
    CaSecret { namespace: String, reason: String },
    #[error(
        "--ca-cert/--ca-key cannot be used with --kubernetes: every replica must sign with one root, and \
         in a cluster it lives in the Secret {namespace}/{secret}; bring your own root with \
         kubectl create secret tls {secret} -n {namespace} --cert=CERT --key=KEY",
        secret = super::ca_secret::CA_SECRET
    )]
    CaFilesWithKubernetes { namespace: String },
}

/// What every Kubernetes part of the control plane shares: the client and who this replica is.
/// Cheap to clone.
#[derive(Clone)]
pub struct Kube {
    pub client: kube::Client,
    /// The control plane's namespace ([`KubeSettings::namespace`]).
    pub namespace: String,
    /// DNS suffix of Services.
    pub cluster_domain: String,
    /// This replica's Lease identity.
    pub identity: String,
    /// The API server's URL (for messages).
    pub url: String,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Kube {
    /// Load the configuration, build the client and check that the server answers (its version
    /// is logged), so that a wrong kubeconfig fails the start instead of every watch later.
    pub async fn connect(settings: &KubeSettings) -> Result<Self, KubeError> {
        let options = KubeConfigOptions { context: settings.context.clone(), ..Default::default() };
        let config = match &settings.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|source| KubeError::Kubeconfig { path: path.clone(), source })?;
                kube::Config::from_custom_kubeconfig(file, &options).await.map_err(KubeError::Config)?
            }
            None if settings.context.is_some() => {
                kube::Config::from_kubeconfig(&options).await.map_err(KubeError::Config)?
            }
            None => kube::Config::infer().await.map_err(KubeError::Infer)?,
        };
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(KubeError::Client)?;
        let version =
            client.apiserver_version().await.map_err(|source| KubeError::Unreachable { url: url.clone(), source })?;
        tracing::info!(server = %url, version = %version.git_version, "connected to the Kubernetes API server");
        Ok(Self {
            client,
            namespace: settings.namespace.clone(),
            cluster_domain: settings.cluster_domain.clone(),
            identity: settings.identity.clone(),
            url,
        })
    }
}
