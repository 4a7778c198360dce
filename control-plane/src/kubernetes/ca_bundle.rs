//! Keeps the `caBundle` of the injection webhook's MutatingWebhookConfiguration equal to the
//! roots the control plane's serving certificate chains to, so that the manifests can ship the
//! configuration with an empty `caBundle` and a root rotation needs no manual step.
//!
//! The configuration is watched (by name): whenever it is created or changed — `kubectl apply`
//! of the manifests puts the empty bundle back — every webhook of it whose `caBundle` differs is
//! patched. The roots are compared again whenever they change (the CA root Secret's watch,
//! [`super::ca_secret::watch`]) and on a timer. Each patch is a JSON Patch that first tests the webhook's
//! name at its index, so a configuration edited in between is not patched at the wrong place
//! (the next event retries). It runs on the leader only (every replica would converge to the same
//! bundle anyway: they share the CA root).
//!
//! RBAC: `get`, `list`, `watch` and `patch` on `mutatingwebhookconfigurations`, restricted to this
//! one name for `get` and `patch` (see `deploy/kubernetes/rbac.yaml`).

use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};

/// How often the roots are compared when nothing else happens.
pub const RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error(
        "cannot read the MutatingWebhookConfiguration {name}: {source}; may the control plane get it \
         (admissionregistration.k8s.io)?"
    )]
    Get { name: String, source: kube::Error },
    #[error(
        "cannot patch the caBundle of the MutatingWebhookConfiguration {name}: {source}; may the control \
         plane patch it?"
    )]
    Patch { name: String, source: kube::Error },
}

/// The JSON Patch that sets every webhook's `clientConfig.caBundle` of `configuration` (its JSON)
/// to `bundle_b64`, or `None` when all of them already have it.
pub fn patch_for(configuration: &Value, bundle_b64: &str) -> Option<Value> {
    let webhooks = configuration.get("webhooks").and_then(Value::as_array)?;
    let mut ops = Vec::new();
    for (i, webhook) in webhooks.iter().enumerate() {
        let current = webhook.pointer("/clientConfig/caBundle").and_then(Value::as_str).unwrap_or_default();
        if current == bundle_b64 {
            continue;
        }
        let name = webhook.get("name").cloned().unwrap_or(Value::Null);
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": name}));
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle_b64}));
    }
    (!ops.is_empty()).then_some(Value::Array(ops))
}

/// Keeps one configuration's `caBundle` equal to what `bundle` returns (PEM).
pub struct CaBundleKeeper<F> {
    api: Api<MutatingWebhookConfiguration>,
    name: String,
    bundle: F,
    /// Bumped when the roots change.
    roots_changed: Option<tokio::sync::watch::Receiver<u64>>,
}

impl<F> std::fmt::Debug for CaBundleKeeper<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundleKeeper").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<F: Fn() -> String + Send + Sync + 'static> CaBundleKeeper<F> {
    pub fn new(client: kube::Client, name: impl Into<String>, bundle: F) -> Self {
        Self { api: Api::all(client), name: name.into(), bundle, roots_changed: None }
    }

    /// Compare again as soon as `changed` is bumped (the roots changed).
    pub fn with_roots_changed(mut self, changed: tokio::sync::watch::Receiver<u64>) -> Self {
        self.roots_changed = Some(changed);
        self
    }

    fn bundle_b64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode((self.bundle)())
    }

    /// Patches `configuration` if a webhook of it has another bundle; whether it patched.
    async fn fix(&self, configuration: &MutatingWebhookConfiguration) -> Result<bool, CaBundleError> {
        let json = serde_json::to_value(configuration).unwrap_or(Value::Null);
        let Some(patch) = patch_for(&json, &self.bundle_b64()) else {
            return Ok(false);
        };
        let patch: json_patch::Patch = match serde_json::from_value(patch) {
            Ok(p) => p,
            Err(_) => return Ok(false),
        };
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .map_err(|source| CaBundleError::Patch { name: self.name.clone(), source })?;
        tracing::info!(configuration = %self.name, "set the injection webhook's caBundle to the CA's roots");
        Ok(true)
    }

    /// Reads the configuration and fixes it; `Ok(false)` when it does not exist (yet).
    pub async fn sync_once(&self) -> Result<bool, CaBundleError> {
        match self.api.get_opt(&self.name).await {
            Ok(Some(c)) => self.fix(&c).await,
            Ok(None) => Ok(false),
            Err(source) => Err(CaBundleError::Get { name: self.name.clone(), source }),
        }
    }

    /// Watches the configuration and fixes it on every change, every change of the roots and
    /// every [`RESYNC`], forever.
    pub async fn run(self: std::sync::Arc<Self>) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let events = watcher(self.api.clone(), config).default_backoff().applied_objects();
        let mut events = std::pin::pin!(events);
        let mut resync = tokio::time::interval(RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut roots_changed = self.roots_changed.clone();
        loop {
            let roots = async {
                match roots_changed.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let result = tokio::select! {
                event = events.next() => match event {
                    Some(Ok(configuration)) => self.fix(&configuration).await,
                    Some(Err(e)) => {
                        tracing::warn!(configuration = %self.name, error = %e, "watching the webhook configuration");
                        continue;
                    }
                    None => return,
                },
                _ = resync.tick() => self.sync_once().await,
                () = roots => self.sync_once().await,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot keep the injection webhook's caBundle");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_only_the_webhooks_whose_bundle_differs_and_tests_their_names() {
        let configuration = json!({"webhooks": [
            {"name": "a.outrider.io", "clientConfig": {"caBundle": "QUJD"}},
            {"name": "b.outrider.io", "clientConfig": {"service": {"name": "outrider"}}},
            {"name": "c.outrider.io", "clientConfig": {"caBundle": "old"}},
        ]});
        let patch = patch_for(&configuration, "QUJD").unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "b.outrider.io"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "QUJD"},
                {"op": "test", "path": "/webhooks/2/name", "value": "c.outrider.io"},
                {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": "QUJD"},
            ])
        );
        // Applied, it leaves nothing to do.
        let mut fixed = configuration.clone();
        let ops: json_patch::Patch = serde_json::from_value(patch).unwrap();
        json_patch::patch(&mut fixed, &ops).unwrap();
        assert_eq!(patch_for(&fixed, "QUJD"), None);
        assert_eq!(patch_for(&json!({}), "QUJD"), None, "no webhooks: nothing to patch");
    }
}
