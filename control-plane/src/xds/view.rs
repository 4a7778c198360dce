//! What a client holds of one type, and what it lacks. After a response the client holds
//! exactly its view of the type snapshot it was sent, so a stream keeps a reference to that
//! snapshot (shared by every stream that is up to date) instead of a name → version map of its
//! own per type, and compares it with the next snapshot by walking both in name order:
//! resources that did not change are the same `Arc`, a pointer comparison.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Serves, Subscription};
use crate::snapshot::{TypeSnapshot, XdsResource};

/// What a client holds of one type.
#[derive(Debug)]
pub(super) enum Has {
    /// name → version, as the client listed it (Delta `initial_resource_versions`) or after it
    /// unsubscribed from some names.
    Listed(BTreeMap<String, String>),
    /// What `base` shows through `subscription` to a proxy serving `serves`.
    View { base: Arc<TypeSnapshot>, subscription: Subscription, serves: Serves },
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
    /// The view of `current` through `subscription` for a proxy serving `serves`.
    pub fn view(current: &Arc<TypeSnapshot>, subscription: &Subscription, serves: &Serves) -> Self {
        Has::View { base: current.clone(), subscription: subscription.clone(), serves: serves.clone() }
    }

    /// name → version of what the client holds.
    pub fn listed(&self) -> BTreeMap<String, String> {
        match self {
            Has::Listed(map) => map.clone(),
            Has::View { base, subscription, serves } => base
                .resources
                .values()
                .filter(|r| subscription.wants(r, serves))
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect(),
        }
    }

    /// What differs between what the client holds and what `subscription` should give a
    /// proxy serving `serves` from `current`.
    pub fn diff(&self, current: &TypeSnapshot, subscription: &Subscription, serves: &Serves) -> Diff {
        let mut diff = Diff::default();
        let wanted = |r: &Arc<XdsResource>| subscription.wants(r, serves);
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
            Has::View { base, subscription: had_through, serves: served } => {
                if std::ptr::eq(base.as_ref(), current) && had_through == subscription && served == serves {
                    return diff;
                }
                let had = |r: &Arc<XdsResource>| had_through.wants(r, served);
                // The client holds the snapshot `current` replaced, through the same eyes: only
                // the names that changed between the two can differ (the walk below would find
                // the same, in the same order, after comparing every resource).
                if let Some(since) = &current.since
                    && had_through == subscription
                    && served == serves
                    && since.previous.upgrade().is_some_and(|p| Arc::ptr_eq(&p, base))
                {
                    for name in &since.changed {
                        let (old, new) = (base.resources.get(name), current.resources.get(name));
                        let (had, want) = (old.is_some_and(had), new.is_some_and(wanted));
                        match new {
                            Some(n) if want && (!had || old.is_none_or(|o| o.version != n.version)) => {
                                diff.send.push(n.clone());
                            }
                            _ if had && !want => diff.removed.push(name.clone()),
                            _ => {}
                        }
                    }
                    return diff;
                }
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
    use crate::snapshot::{Generator, TypeSnapshot, tests::with_inbound};
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

    fn svc(s: &str) -> Serves {
        Serves::Service(s.to_owned())
    }

    fn node(services: &[&str]) -> Serves {
        Serves::Node(Arc::new(services.iter().map(|s| (*s).to_owned()).collect()))
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_view_differs_only_by_what_changed_added_or_removed() {
        let mut g = Generator::new();
        let wildcard = Subscription::from_names(&[]);
        let first = g.generate(&set(&[("a", 80), ("b", 80), ("c", 80)]));
        let none = svc("");
        let has = Has::view(first.get(CLUSTER_TYPE_URL).unwrap(), &wildcard, &none);
        assert!(has.diff(first.get(CLUSTER_TYPE_URL).unwrap(), &wildcard, &none).is_empty());
        // b changes, c goes, d comes.
        let second = g.generate(&set(&[("a", 80), ("b", 81), ("d", 80)]));
        let diff = has.diff(second.get(CLUSTER_TYPE_URL).unwrap(), &wildcard, &none);
        assert_eq!(
            names(&diff),
            (strings(&["outbound|80||d", "outbound|81||b"]), strings(&["outbound|80||b", "outbound|80||c"]))
        );
        // The same answer from the listed form of what the client holds.
        let listed = Has::Listed(has.listed());
        let again = listed.diff(second.get(CLUSTER_TYPE_URL).unwrap(), &wildcard, &none);
        let (mut send, mut removed) = names(&again);
        send.sort();
        removed.sort();
        assert_eq!((send, removed), names(&diff));
    }

    /// `current` without what it knows of its predecessor: diffs against it take the walk.
    fn walked(current: &TypeSnapshot) -> TypeSnapshot {
        TypeSnapshot {
            version: current.version.clone(),
            scoped: current.scoped.clone(),
            resources: current.resources.clone(),
            since: None,
        }
    }

    #[test]
    fn the_changes_since_the_previous_snapshot_give_the_same_diff_as_the_walk() {
        let mut g = Generator::new();
        let wildcard = Subscription::from_names(&[]);
        let by_name = Subscription::from_names(&["inbound|a".to_owned(), "outbound|80||b".to_owned()]);
        let generations = [
            with_inbound(&mut g, &set(&[("a", 80), ("b", 80), ("c", 80)]), &[("a", "1"), ("b", "1")]),
            // b's cluster changes, c goes, d comes, a's inbound listener changes.
            with_inbound(&mut g, &set(&[("a", 80), ("b", 81), ("d", 80)]), &[("a", "2"), ("b", "1")]),
            // b comes back on 80, a's inbound listener goes.
            with_inbound(&mut g, &set(&[("a", 80), ("b", 80), ("d", 80)]), &[("b", "1")]),
        ];
        let mut compared = 0;
        for pair in generations.windows(2) {
            for type_url in [CLUSTER_TYPE_URL, LISTENER_TYPE_URL] {
                let (before, after) = (pair[0].get(type_url).unwrap(), pair[1].get(type_url).unwrap());
                if Arc::ptr_eq(before, after) {
                    continue;
                }
                let since = after.since.as_ref().expect("a changed type knows its predecessor");
                assert!(Arc::ptr_eq(&since.previous.upgrade().unwrap(), before));
                for sub in [&wildcard, &by_name] {
                    for serves in [svc(""), svc("a"), svc("b"), node(&["a", "b"])] {
                        let has = Has::view(before, sub, &serves);
                        let fast = has.diff(after, sub, &serves);
                        let slow = has.diff(&walked(after), sub, &serves);
                        assert_eq!(names(&fast), names(&slow), "{type_url} {sub:?} {serves:?}");
                        compared += 1;
                    }
                }
            }
        }
        assert!(compared >= 16, "{compared}");
        // A changed subscription takes the walk: what it now wants comes.
        let clusters = (generations[1].get(CLUSTER_TYPE_URL).unwrap(), generations[2].get(CLUSTER_TYPE_URL).unwrap());
        let has = Has::view(clusters.0, &by_name, &svc(""));
        let diff = has.diff(clusters.1, &wildcard, &svc(""));
        assert_eq!(names(&diff), names(&has.diff(&walked(clusters.1), &wildcard, &svc(""))));
        assert!(names(&diff).0.contains(&"outbound|80||d".to_owned()), "{:?}", names(&diff));
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
        let none = svc("");
        for (service, sub) in [("a", &wildcard), ("a", &a_by_name)] {
            let (send, _) = names(&empty.diff(listeners, sub, &svc(service)));
            assert!(send.contains(&"inbound|a".to_owned()), "{service} {sub:?}: {send:?}");
            assert!(!send.contains(&"inbound|b".to_owned()), "{service} {sub:?}: {send:?}");
        }
        let (send, _) = names(&empty.diff(listeners, &wildcard, &svc("c")));
        assert_eq!(send, ["outbound"], "a proxy of another service gets no inbound listener");
        let (send, _) = names(&empty.diff(listeners, &wildcard, &none));
        assert_eq!(send, ["outbound"], "a proxy without a service neither");

        // b's inbound listener changes: nothing for a, the new one for b.
        let has_a = Has::view(listeners, &wildcard, &svc("a"));
        let has_b = Has::view(listeners, &wildcard, &svc("b"));
        let second = with_inbound(&mut g, &s, &[("a", "1"), ("b", "2")]);
        let listeners = second.get(LISTENER_TYPE_URL).unwrap();
        assert!(has_a.diff(listeners, &wildcard, &svc("a")).is_empty());
        assert_eq!(names(&has_b.diff(listeners, &wildcard, &svc("b"))), (strings(&["inbound|b"]), vec![]));
        // a's goes away: removed for a.
        let third = with_inbound(&mut g, &s, &[("b", "2")]);
        let has_a = Has::view(listeners, &wildcard, &svc("a"));
        let diff = has_a.diff(third.get(LISTENER_TYPE_URL).unwrap(), &wildcard, &svc("a"));
        assert_eq!(names(&diff), (vec![], strings(&["inbound|a"])));
    }

    #[test]
    fn a_node_proxy_sees_the_inbound_config_of_its_workloads_services_only() {
        let mut g = Generator::new();
        let wildcard = Subscription::from_names(&[]);
        let s = set(&[("a", 80), ("b", 80), ("c", 80)]);
        let first = with_inbound(&mut g, &s, &[("a", "1"), ("b", "1"), ("c", "1")]);
        let listeners = first.get(LISTENER_TYPE_URL).unwrap();
        let serves_a = node(&["a"]);
        let (send, _) = names(&Has::default().diff(listeners, &wildcard, &serves_a));
        assert_eq!(send, ["inbound|a", "outbound"]);
        assert_eq!(names(&Has::default().diff(listeners, &wildcard, &node(&[]))).0, ["outbound"]);
        // A workload of b joins: b's inbound config comes, nothing else.
        let has = Has::view(listeners, &wildcard, &serves_a);
        let serves_ab = node(&["a", "b"]);
        assert_eq!(names(&has.diff(listeners, &wildcard, &serves_ab)), (strings(&["inbound|b"]), vec![]));
        // c's changes: not this node's; b's: this node's.
        let has = Has::view(listeners, &wildcard, &serves_ab);
        let second = with_inbound(&mut g, &s, &[("a", "1"), ("b", "1"), ("c", "2")]);
        let l2 = second.get(LISTENER_TYPE_URL).unwrap();
        assert!(has.diff(l2, &wildcard, &serves_ab).is_empty());
        assert_eq!(serves_ab.view_version(listeners), serves_ab.view_version(l2));
        let third = with_inbound(&mut g, &s, &[("a", "1"), ("b", "2"), ("c", "2")]);
        let l3 = third.get(LISTENER_TYPE_URL).unwrap();
        assert_ne!(serves_ab.view_version(l2), serves_ab.view_version(l3));
        assert_eq!(names(&has.diff(l3, &wildcard, &serves_ab)), (strings(&["inbound|b"]), vec![]));
        // a's last workload leaves: a's inbound config is removed.
        let has = Has::view(l3, &wildcard, &serves_ab);
        assert_eq!(names(&has.diff(l3, &wildcard, &node(&["b"]))), (vec![], strings(&["inbound|a"])));
        // Two nodes serving one service each with the same scoped version still differ.
        assert_ne!(node(&["a"]).view_version(listeners), node(&["b"]).view_version(listeners));
    }
}
