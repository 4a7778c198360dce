//! Stores fed by kube-runtime watchers that keep, of each object, only what the control plane
//! needs (a Pod is its labels, service account and whether it is meshed), so that memory follows
//! what is used rather than the size of the objects.
//!
//! A watcher lists once, then watches from the list's resource version; after a watch error it
//! backs off (kube-runtime's default policy) and lists again. Such a re-list is applied as one
//! swap at its end (`InitDone`), so objects deleted while the watch was down disappear and
//! nothing is served half-listed. Each change that matters bumps a shared counter the assembler
//! waits on; a change that does not (a Pod's status, a custom resource's own status) does not.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt as _};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// `(namespace, name)` of an object (namespace empty for cluster-scoped ones).
pub type ObjectKey = (String, String);

/// What a store keeps of an object.
pub trait Compact: Send + Sync + 'static {
    /// Whether `other` makes the same configuration as `self`; when it does, replacing one
    /// by the other does not bump the change counter. Default: always different.
    fn same_config(&self, _other: &Self) -> bool {
        false
    }
}

/// The change counter every store of one cluster bumps.
#[derive(Debug)]
pub struct Changes(watch::Sender<u64>);

impl Changes {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(watch::channel(0).0))
    }

    pub fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// The compact objects of one kind.
#[derive(Debug)]
pub struct Store<T> {
    /// Kind name, for logs.
    kind: &'static str,
    objects: RwLock<HashMap<ObjectKey, T>>,
    /// True once the first list completed (or the kind turned out not to exist).
    synced: watch::Sender<bool>,
}

impl<T: Compact> Store<T> {
    pub fn new(kind: &'static str) -> Arc<Self> {
        Arc::new(Self { kind, objects: RwLock::new(HashMap::new()), synced: watch::channel(false).0 })
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Read the objects (do not hold across an await: the watcher waits for the lock).
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, HashMap<ObjectKey, T>> {
        self.objects.read()
    }

    pub fn len(&self) -> usize {
        self.objects.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first list has completed.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Wait until the first list has completed.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn mark_synced(&self) {
        self.synced.send_if_modified(|s| !std::mem::replace(s, true));
    }

    /// Insert or replace; true when the configuration changed.
    fn apply(&self, key: ObjectKey, value: T) -> bool {
        let mut objects = self.objects.write();
        let same = objects.get(&key).is_some_and(|old| old.same_config(&value));
        objects.insert(key, value);
        !same
    }

    /// Remove; true when there was an object.
    fn remove(&self, key: &ObjectKey) -> bool {
        self.objects.write().remove(key).is_some()
    }

    /// Replace everything with a re-list; true when the configuration changed.
    fn replace(&self, next: HashMap<ObjectKey, T>) -> bool {
        let mut objects = self.objects.write();
        let changed = objects.len() != next.len()
            || next.iter().any(|(k, v)| objects.get(k).is_none_or(|old| !old.same_config(v)));
        *objects = next;
        changed
    }
}

fn key_of<K: Resource>(object: &K) -> ObjectKey {
    (object.namespace().unwrap_or_default(), object.name_any())
}

/// Feed `store` from a watch of `api` until the task is dropped. `compact` turns an object
/// into what is kept, or `None` for an object that does not matter (it is then forgotten).
pub async fn run<K, T>(
    api: Api<K>,
    config: watcher::Config,
    store: Arc<Store<T>>,
    changes: Arc<Changes>,
    compact: impl Fn(&K) -> Option<T> + Send + 'static,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Compact,
{
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut relist: Option<HashMap<ObjectKey, T>> = None;
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                relist = Some(HashMap::new());
                false
            }
            Ok(Event::InitApply(object)) => {
                if let (Some(buffer), Some(value)) = (relist.as_mut(), compact(&object)) {
                    buffer.insert(key_of(&object), value);
                }
                false
            }
            Ok(Event::InitDone) => {
                let next = relist.take().unwrap_or_default();
                let changed = store.replace(next);
                tracing::debug!(kind = store.kind, objects = store.len(), "listed");
                let first = !store.is_synced();
                store.mark_synced();
                changed || first
            }
            Ok(Event::Apply(object)) => match compact(&object) {
                Some(value) => store.apply(key_of(&object), value),
                None => store.remove(&key_of(&object)),
            },
            Ok(Event::Delete(object)) => store.remove(&key_of(&object)),
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) if status.is_not_found() => {
                // The kind is not served (a CRD not installed): nothing of it applies. The
                // watcher keeps retrying with backoff and picks the kind up once installed.
                if !store.is_synced() {
                    tracing::error!(
                        kind = store.kind,
                        "the API server does not serve this kind (is its CustomResourceDefinition installed?); \
                         treating it as empty"
                    );
                    store.mark_synced();
                    true
                } else {
                    false
                }
            }
            Err(e) => {
                tracing::warn!(kind = store.kind, error = %e, "watch failed; listing again after a backoff");
                false
            }
        };
        if changed {
            changes.bump();
        }
    }
}
