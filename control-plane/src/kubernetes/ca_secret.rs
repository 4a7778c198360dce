//! The mesh CA's root in a Secret, so that every replica signs with the same root.
//!
//! The Secret `outrider-ca` (type `kubernetes.io/tls`: `tls.crt`, `tls.key`) in the control
//! plane's namespace is read at start. When it does not exist, this replica generates a root and
//! creates the Secret; the API server lets exactly one create succeed, so when several replicas
//! start at once the others get `AlreadyExists`, drop their own root and read the winner's.
//! An operator who brings a root creates the Secret before installing (or mounts files and gives
//! `--ca-cert` / `--ca-key`, which take precedence).
//!
//! The Secret's optional `ca.crt` holds roots trusted besides the signing one: during a root
//! rotation the operator puts the new root in `tls.crt`/`tls.key` and the old one in `ca.crt`,
//! then restarts the replicas (docs/kubernetes.md, "Rotating the CA root").
//!
//! Every replica also watches the Secret ([`watch`]): when it changes, the replica trusts every
//! root it names (`tls.crt` and `ca.crt`) at once, besides the root it signs with, so the
//! injection webhook's `caBundle`, injected pods and issuance answers carry the new root before
//! anything is signed with it. A replica signs with the Secret's new root after its restart.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

use std::sync::Arc;

use futures_util::StreamExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch as channel;

use super::{Kube, KubeError};
use crate::ca::{Ca, TrustDomain, generate_root_pem};

/// The Secret's name.
pub const CA_SECRET: &str = "outrider-ca";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
const TRUSTED_KEY: &str = "ca.crt";

/// The mesh's root as read from (or written to) the Secret.
#[derive(Clone)]
pub struct Root {
    /// The CA certificate, PEM.
    pub cert: String,
    /// Its PKCS#8 key, PEM.
    pub key: String,
    /// Roots trusted besides it (the Secret's `ca.crt`, PEM; empty when absent).
    pub trusted: String,
    /// Whether this replica created the Secret.
    pub created: bool,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root").field("created", &self.created).finish_non_exhaustive()
    }
}

/// Where the root is, for messages (`Secret NS/outrider-ca`).
pub fn origin(namespace: &str) -> String {
    format!("Secret {namespace}/{CA_SECRET}")
}

/// The root from the Secret, created first if absent.
pub async fn root(kube: &Kube, trust_domain: &TrustDomain) -> Result<Root, KubeError> {
    let api: Api<Secret> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let failed = |verb: &'static str| {
        move |source: kube::Error| KubeError::CaSecret {
            namespace: kube.namespace.clone(),
            reason: format!(
                "cannot {verb} it: {source}; may the control plane's ServiceAccount {verb} secrets in \
                 namespace {}?",
                kube.namespace
            ),
        }
    };
    if let Some(secret) = api.get_opt(CA_SECRET).await.map_err(failed("get"))? {
        let (cert, key, trusted) = read(&secret, &kube.namespace)?;
        return Ok(Root { cert, key, trusted, created: false });
    }
    let (cert, key) = generate_root_pem(trust_domain).map_err(|e| KubeError::CaSecret {
        namespace: kube.namespace.clone(),
        reason: format!("cannot generate a root: {e}"),
    })?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/part-of".to_owned(), "outrider".to_owned())])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (CERT_KEY.to_owned(), ByteString(cert.clone().into_bytes())),
            (KEY_KEY.to_owned(), ByteString(key.clone().into_bytes())),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(namespace = %kube.namespace, secret = CA_SECRET, "created the mesh CA root Secret");
            Ok(Root { cert, key, trusted: String::new(), created: true })
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            // Another replica won the race: its root is the mesh's, ours is dropped unused.
            tracing::info!(namespace = %kube.namespace, secret = CA_SECRET, "another replica created the CA root Secret first; using it");
            let secret = api.get(CA_SECRET).await.map_err(failed("get"))?;
            let (cert, key, trusted) = read(&secret, &kube.namespace)?;
            Ok(Root { cert, key, trusted, created: false })
        }
        Err(e) => Err(failed("create")(e)),
    }
}

/// `tls.crt`, `tls.key` and `ca.crt` (empty when absent).
fn read(secret: &Secret, namespace: &str) -> Result<(String, String, String), KubeError> {
    let optional = |name: &str| -> Result<Option<String>, KubeError> {
        let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(name)) else { return Ok(None) };
        String::from_utf8(bytes.0.clone()).map(Some).map_err(|_| KubeError::CaSecret {
            namespace: namespace.to_owned(),
            reason: format!("{name} of Secret {CA_SECRET} is not PEM text"),
        })
    };
    let field = |name: &str| -> Result<String, KubeError> {
        optional(name)?.ok_or_else(|| KubeError::CaSecret {
            namespace: namespace.to_owned(),
            reason: format!("Secret {CA_SECRET} has no {name}"),
        })
    };
    Ok((field(CERT_KEY)?, field(KEY_KEY)?, optional(TRUSTED_KEY)?.unwrap_or_default()))
}

/// Keep `ca`'s trusted roots equal to the roots the Secret names (its `tls.crt` and `ca.crt`,
/// besides the root `ca` signs with), until the task is dropped; bump `changed` at each change.
/// A Secret that cannot be read (deleted, no PEM) leaves the roots as they are, logged.
pub async fn watch(kube: Kube, ca: Arc<Ca>, changed: channel::Sender<u64>) {
    let api: Api<Secret> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CA_SECRET}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let secret = match event {
            Ok(Event::InitApply(secret) | Event::Apply(secret)) => secret,
            Ok(Event::Delete(_)) => {
                tracing::warn!(secret = CA_SECRET, "the CA root Secret was deleted; keeping the roots in use");
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(secret = CA_SECRET, error = %e, "watching the CA root Secret failed; retrying");
                continue;
            }
        };
        let (cert, _, trusted) = match read(&secret, &kube.namespace) {
            Ok(fields) => fields,
            Err(e) => {
                tracing::error!(error = %e, "ignoring a CA root Secret that cannot be read; keeping the roots in use");
                continue;
            }
        };
        let before = ca.trust_bundle();
        if let Err(e) = ca.set_trusted_roots(&format!("{cert}\n{trusted}")) {
            tracing::error!(error = %e, secret = CA_SECRET, "cannot trust the roots of the CA root Secret");
            continue;
        }
        let after = ca.trust_bundle();
        if after != before {
            if normalize(&cert) != normalize(ca.root_pem()) {
                tracing::info!(
                    secret = CA_SECRET,
                    roots = after.roots.len(),
                    "the CA root Secret names a new signing root: trusted now; this replica signs with it after its restart"
                );
            } else {
                tracing::info!(secret = CA_SECRET, roots = after.roots.len(), "the trusted roots changed");
            }
            changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

fn normalize(pem: &str) -> String {
    pem.split_whitespace().collect()
}
