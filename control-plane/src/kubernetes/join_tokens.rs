//! Join tokens shared by every replica: the token store is the Secret `outrider-join-tokens`
//! (key `tokens.json`, the same document as file mode's `tokens.json`: only each token's SHA-256,
//! its identity, expiry and use) in the control plane's namespace, so that a token created
//! through one replica can be redeemed through any replica behind the Service, and a revocation
//! at one is a refusal at all.
//!
//! - Creation, redemption and revocation read the Secret and write it back with its
//!   `resourceVersion` (optimistic concurrency): when another replica wrote in between, the API
//!   server refuses the write (409) and the change is made again on what that replica wrote. A
//!   single-use token is therefore redeemed exactly once across replicas.
//! - Each replica watches the Secret and keeps a copy, which the xDS streams' token checks read
//!   (a token created a moment ago at another replica authenticates a stream here once the watch
//!   delivered it, normally within milliseconds).
//! - The Secret is created by the first token creation. A Secret holds at most 1 MiB: about
//!   4,000 live tokens (expired ones are dropped at each write).
//!
//! RBAC: `get`, `list`, `watch` and `update` on this Secret by name, `create` on secrets.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::runtime::Handle;

use super::Kube;
use crate::ca::tokens::{JoinTokens, SharedBackend};

/// The Secret's name.
pub const TOKENS_SECRET: &str = "outrider-join-tokens";
/// Its data key.
const DATA_KEY: &str = "tokens.json";

/// The Secret as a [`SharedBackend`]. Its calls block on `handle`: call them off the async
/// workers (`spawn_blocking`), as the token store's writers do.
pub struct SecretBackend {
    api: Api<Secret>,
    namespace: String,
    handle: Handle,
}

impl SecretBackend {
    pub fn new(kube: &Kube, handle: Handle) -> Self {
        Self { api: Api::namespaced(kube.client.clone(), &kube.namespace), namespace: kube.namespace.clone(), handle }
    }

    fn failed(&self, verb: &str, e: &kube::Error) -> String {
        format!(
            "cannot {verb} it: {e}; may the control plane's ServiceAccount {verb} secrets in namespace {}?",
            self.namespace
        )
    }
}

impl SharedBackend for SecretBackend {
    fn load(&self) -> Result<Option<(Vec<u8>, String)>, String> {
        let Some(secret) = self.handle.block_on(self.api.get_opt(TOKENS_SECRET)).map_err(|e| self.failed("get", &e))?
        else {
            return Ok(None);
        };
        let version = secret.metadata.resource_version.clone().ok_or("the Secret has no resourceVersion")?;
        Ok(Some((data(&secret), version)))
    }

    fn store(&self, bytes: &[u8], version: Option<&str>) -> Result<bool, String> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(TOKENS_SECRET.to_owned()),
                resource_version: version.map(str::to_owned),
                labels: Some(BTreeMap::from([("app.kubernetes.io/part-of".to_owned(), "outrider".to_owned())])),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(BTreeMap::from([(DATA_KEY.to_owned(), ByteString(bytes.to_vec()))])),
            ..Default::default()
        };
        let (verb, result) = match version {
            None => ("create", self.handle.block_on(self.api.create(&PostParams::default(), &secret))),
            Some(_) => {
                ("update", self.handle.block_on(self.api.replace(TOKENS_SECRET, &PostParams::default(), &secret)))
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Another replica created, changed or deleted it since it was read: read again.
            Err(kube::Error::Api(s)) if s.is_already_exists() || s.code == 409 || s.is_not_found() => Ok(false),
            Err(e) => Err(self.failed(verb, &e)),
        }
    }

    fn describe(&self) -> String {
        format!("Secret {}/{TOKENS_SECRET}", self.namespace)
    }
}

/// The Secret's document (empty when it has none).
fn data(secret: &Secret) -> Vec<u8> {
    secret.data.as_ref().and_then(|d| d.get(DATA_KEY)).map(|b| b.0.clone()).unwrap_or_default()
}

/// Keep `tokens`' copy equal to the Secret, until the task is dropped.
pub async fn watch(kube: Kube, tokens: Arc<JoinTokens>) {
    let api: Api<Secret> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={TOKENS_SECRET}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // During a (re-)list: whether the Secret was in it.
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listed = false,
            Ok(Event::InitApply(secret) | Event::Apply(secret)) => {
                listed = true;
                tokens.replace_shared(Some(&data(&secret)));
            }
            Ok(Event::InitDone) if !listed => tokens.replace_shared(None),
            Ok(Event::InitDone) => {}
            Ok(Event::Delete(_)) => tokens.replace_shared(None),
            Err(e) => {
                tracing::warn!(secret = TOKENS_SECRET, error = %e, "watching the join token Secret failed; retrying")
            }
        }
    }
}
