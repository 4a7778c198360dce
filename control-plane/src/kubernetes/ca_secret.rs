//! The mesh CA's root in a Secret, so that every replica signs with the same root.
//!
//! The Secret `outrider-ca` (type `kubernetes.io/tls`: `tls.crt`, `tls.key`) in the control
//! plane's namespace is read at start. When it does not exist, this replica generates a root and
//! creates the Secret; the API server lets exactly one create succeed, so when several replicas
//! start at once the others get `AlreadyExists`, drop their own root and read the winner's.
//! An operator who brings a root creates the Secret before installing (or mounts files and gives
//! `--ca-cert` / `--ca-key`, which take precedence).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

use super::{Kube, KubeError};
use crate::ca::{TrustDomain, generate_root_pem};

/// The Secret's name.
pub const CA_SECRET: &str = "outrider-ca";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";

/// The mesh's root as read from (or written to) the Secret.
#[derive(Clone)]
pub struct Root {
    /// The CA certificate, PEM.
    pub cert: String,
    /// Its PKCS#8 key, PEM.
    pub key: String,
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
        let (cert, key) = read(&secret, &kube.namespace)?;
        return Ok(Root { cert, key, created: false });
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
            Ok(Root { cert, key, created: true })
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            // Another replica won the race: its root is the mesh's, ours is dropped unused.
            tracing::info!(namespace = %kube.namespace, secret = CA_SECRET, "another replica created the CA root Secret first; using it");
            let secret = api.get(CA_SECRET).await.map_err(failed("get"))?;
            let (cert, key) = read(&secret, &kube.namespace)?;
            Ok(Root { cert, key, created: false })
        }
        Err(e) => Err(failed("create")(e)),
    }
}

fn read(secret: &Secret, namespace: &str) -> Result<(String, String), KubeError> {
    let field = |name: &str| -> Result<String, KubeError> {
        let bytes = secret.data.as_ref().and_then(|d| d.get(name)).ok_or_else(|| KubeError::CaSecret {
            namespace: namespace.to_owned(),
            reason: format!("Secret {CA_SECRET} has no {name}"),
        })?;
        String::from_utf8(bytes.0.clone()).map_err(|_| KubeError::CaSecret {
            namespace: namespace.to_owned(),
            reason: format!("{name} of Secret {CA_SECRET} is not PEM text"),
        })
    };
    Ok((field(CERT_KEY)?, field(KEY_KEY)?))
}
