//! What a client holds of one type, and what it lacks. After a response the client holds
//! exactly its view of the type snapshot it was sent, so a stream keeps a reference to that
//! snapshot (shared by every stream that is up to date) instead of a name → version map of its
//! own per type, and compares it with the next snapshot by walking both in name order:
//! resources that did not change are the same `Arc`, a pointer comparison.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::Subscription;
use crate::snapshot::{TypeSnapshot, XdsResource};

/// What a client holds of one type.
#[derive(Debug)]
pub(super) enum Has {
    /// name → version, as the client listed it (Delta `initial_resource_versions`) or after it
    /// unsubscribed from some names.
    Listed(BTreeMap<String, String>),
    /// What `base` shows through `subscription` to a proxy of the stream's service.
    View { base: Arc<TypeSnapshot>, subscription: Subscription },
}

impl Default for Has {
    fn default() -> Self {
        Has::Listed(BTreeMap::new())
    }
}

/// What to send so that a client holding a [`Has`] holds its view of a snapshot.
#[derive(Debug, Default)]
pub(super) struct Diff {
    /// New or changed resources.
    pub send: Vec<Arc<XdsResource>>,
    /// Names the client holds that it should no longer have.
    pub removed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.send.is_empty() && self.removed.is_empty()
    }
}

impl Has {
    /// The view of `current` through `subscription` for a proxy of `service`.
    pub fn view(current: &Arc<TypeSnapshot>, subscription: &Subscription) -> Self {
        Has::View { base: current.clone(), subscription: subscription.clone() }
    }

    /// name → version of what the client holds.
    pub fn listed(&self, service: &str) -> BTreeMap<String, String> {
        match self {
            Has::Listed(map) => map.clone(),
            Has::View { base, subscription } => base
                .resources
                .values()
                .filter(|r| subscription.wants(r, service))
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect(),
        }
    }

    /// What differs between what the client holds and what `subscription` should give a
    /// proxy of `service` from `current`.
    pub fn diff(&self, current: &TypeSnapshot, subscription: &Subscription, service: &str) -> Diff {
        let mut diff = Diff::default();
        let wanted = |r: &Arc<XdsResource>| subscription.wants(r, service);
        match self {
            Has::Listed(map) => {
                for r in current.resources.values() {
                    if wanted(r) && map.get(&r.name) != Some(&r.version) {
                        diff.send.push(r.clone());
                    }
                }
                for name in map.keys() {
                    if current.resources.get(name).is_none_or(|r| !wanted(r)) {
                        diff.removed.push(name.clone());
                    }
                }
            }
            Has::View { base, subscription: had_through } => {
                if std::ptr::eq(base.as_ref(), current) && had_through == subscription {
                    return diff;
                }
                let had = |r: &Arc<XdsResource>| had_through.wants(r, service);
                let mut old = base.resources.iter().peekable();
                let mut new = current.resources.iter().peekable();
                loop {
                    let order = match (old.peek(), new.peek()) {
                        (None, None) => break,
                        (Some(_), None) => Ordering::Less,
                        (None, Some(_)) => Ordering::Greater,
                        (Some((_, o)), Some((_, n))) if Arc::ptr_eq(o, n) => Ordering::Equal,
                        (Some((on, _)), Some((nn, _))) => on.cmp(nn),
                    };
                    match order {
                        Ordering::Less => {
                            if let Some((name, o)) = old.next()
                                && had(o)
                            {
                                diff.removed.push(name.clone());
                            }
                        }
                        Ordering::Greater => {
                            if let Some((_, n)) = new.next()
                                && wanted(n)
                            {
                                diff.send.push(n.clone());
                            }
                        }
                        Ordering::Equal => {
                            if let (Some((name, o)), Some((_, n))) = (old.next(), new.next()) {
                                let (had, want) = (had(o), wanted(n));
                                if want && (!had || o.version != n.version) {
                                    diff.send.push(n.clone());
                                } else if had && !want {
                                    diff.removed.push(name.clone());
                                }
                            }
                        }
                    }
                }
            }
        }
        diff
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::snapshot::{Generator, tests::with_inbound};
    use outrider_xds::resources::{CLUSTER_TYPE_URL, LISTENER_TYPE_URL};

    fn set(services: &[(&str, u16)]) -> outrider_xds::PolicySet {
        let docs: Vec<String> = services
            .iter()
            .map(|(name, port)| {
                format!(
                    "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{port: {port}}}\n"
                )
            })
            .collect();
        outrider_xds::load_str("t.yaml", &docs.join("---\n")).unwrap()
    }

    fn names(diff: &Diff) -> (Vec<String>, Vec<String>) {
        (diff.send.iter().map(|r| r.name.clone()).collect(), diff.removed.clone())
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_view_differs_only_by_what_changed_added_or_removed() {
        let mut g = Generator::new();
        let wildcard = Subscription::from_names(&[]);
        let first = g.generate(&set(&[("a", 80), ("b", 80), ("c", 80)]));
        let has = Has::view(first.get(CLUSTER_TYPE_URL).unwrap(), &wildcard);
        assert!(has.diff(first.get(CLUSTER_TYPE_URL).unwrap(), &wildcard, "").is_empty());
        // b changes, c goes, d comes.
        let second = g.generate(&set(&[("a", 80), ("b", 81), ("d", 80)]));
        let diff = has.diff(second.get(CLUSTER_TYPE_URL).unwrap(), &wildcard, "");
        assert_eq!(
            names(&diff),
            (strings(&["outbound|80||d", "outbound|81||b"]), strings(&["outbound|80||b", "outbound|80||c"]))
        );
        // The same answer from the listed form of what the client holds.
        let listed = Has::Listed(has.listed(""));
        let again = listed.diff(second.get(CLUSTER_TYPE_URL).unwrap(), &wildcard, "");
        let (mut send, mut removed) = names(&again);
        send.sort();
        removed.sort();
        assert_eq!((send, removed), names(&diff));
    }

    #[test]
    fn inbound_listeners_reach_only_their_service_and_only_their_changes_count() {
        let mut g = Generator::new();
        let wildcard = Subscription::from_names(&[]);
        let a_by_name = Subscription::from_names(&["inbound|a".to_owned(), "inbound|b".to_owned()]);
        let s = set(&[("a", 80), ("b", 80)]);
        let first = with_inbound(&mut g, &s, &[("a", "1"), ("b", "1")]);
        let listeners = first.get(LISTENER_TYPE_URL).unwrap();
        let empty = Has::default();
        for (service, sub) in [("a", &wildcard), ("a", &a_by_name)] {
            let (send, _) = names(&empty.diff(listeners, sub, service));
            assert!(send.contains(&"inbound|a".to_owned()), "{service} {sub:?}: {send:?}");
            assert!(!send.contains(&"inbound|b".to_owned()), "{service} {sub:?}: {send:?}");
        }
        let (send, _) = names(&empty.diff(listeners, &wildcard, "c"));
        assert_eq!(send, ["outbound"], "a proxy of another service gets no inbound listener");
        let (send, _) = names(&empty.diff(listeners, &wildcard, ""));
        assert_eq!(send, ["outbound"], "a proxy without a service neither");

        // b's inbound listener changes: nothing for a, the new one for b.
        let has_a = Has::view(listeners, &wildcard);
        let has_b = Has::view(listeners, &wildcard);
        let second = with_inbound(&mut g, &s, &[("a", "1"), ("b", "2")]);
        let listeners = second.get(LISTENER_TYPE_URL).unwrap();
        assert!(has_a.diff(listeners, &wildcard, "a").is_empty());
        assert_eq!(names(&has_b.diff(listeners, &wildcard, "b")), (strings(&["inbound|b"]), vec![]));
        // a's goes away: removed for a.
        let third = with_inbound(&mut g, &s, &[("b", "2")]);
        let has_a = Has::view(listeners, &wildcard);
        let diff = has_a.diff(third.get(LISTENER_TYPE_URL).unwrap(), &wildcard, "a");
        assert_eq!(names(&diff), (vec![], strings(&["inbound|a"])));
    }
}
