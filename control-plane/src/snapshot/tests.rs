use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;

use super::*;

fn set(port: u16) -> PolicySet {
    outrider_xds::load_str(
        "t.yaml",
        &format!(
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: a}}\nspec: {{port: 80, endpoints: [{{address: \"127.0.0.1:81\"}}]}}\n---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: b}}\nspec: {{port: {port}}}\n"
        ),
    )
    .unwrap()
}

#[test]
fn unchanged_resources_keep_their_version() {
    let mut g = Generator::new();
    let first = g.generate(&set(90));
    let second = g.generate(&set(91));
    assert_ne!(first.version, second.version);
    let clusters = |s: &Snapshot| {
        s.get(CLUSTER_TYPE_URL)
            .unwrap()
            .resources
            .iter()
            .map(|(n, r)| (n.clone(), r.version.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let (c1, c2) = (clusters(&first), clusters(&second));
    assert_eq!(c1["outbound|80||a"], c2["outbound|80||a"], "a did not change");
    assert!(c2.contains_key("outbound|91||b") && !c2.contains_key("outbound|90||b"));
    // Regenerating the same set changes no version at all.
    let third = g.generate(&set(91));
    for t in [LISTENER_TYPE_URL, CLUSTER_TYPE_URL, ROUTE_CONFIGURATION_TYPE_URL] {
        assert_eq!(second.get(t).unwrap().version, third.get(t).unwrap().version);
    }
}

#[test]
fn api_listeners_are_named_after_grpc_targets_and_served_by_name_only() {
    let snapshot = Generator::new().generate(&set(90));
    let listeners = &snapshot.get(LISTENER_TYPE_URL).unwrap().resources;
    assert_eq!(listeners["outbound"].scope, Scope::All);
    for name in ["a", "a:80", "b", "b:90"] {
        assert_eq!(listeners[name].scope, Scope::ByName, "{name}");
    }
    let cla = &snapshot.get(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL).unwrap().resources;
    let decoded: ClusterLoadAssignment =
        outrider_xds::resources::decode_any(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, &cla["outbound|80||a"].any().unwrap())
            .unwrap();
    assert_eq!(
        decoded.endpoints[0].load_balancing_weight,
        Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 })
    );
}

/// The translation of `set` plus an inbound listener per `(service, stat prefix)` (as the
/// translation will add them, with the set's version covering them).
pub(crate) fn with_inbound(g: &mut Generator, set: &PolicySet, inbound: &[(&str, &str)]) -> Snapshot {
    g.inbound = Some(inbound.iter().map(|(s, m)| ((*s).to_owned(), (*m).to_owned())).collect());
    g.generate(set)
}

/// What [`with_inbound`] asks for: only the injected inbound listeners (so the test controls
/// exactly which ones change), with the set's version covering them.
pub(super) fn replace_inbound(
    mut items: Items,
    version: String,
    inbound: Option<Vec<(String, String)>>,
) -> (Items, String) {
    let Some(inbound) = inbound else { return (items, version) };
    items.listeners.retain(|(name, _, _)| !name.starts_with(INBOUND_PREFIX));
    let version = format!("{version}-{inbound:?}");
    for (service, marker) in inbound {
        let listener =
            Listener { name: format!("{INBOUND_PREFIX}{service}"), stat_prefix: marker, ..Default::default() };
        items.listeners.push((listener.name.clone(), encode_any(LISTENER_TYPE_URL, &listener), Scope::All));
    }
    (items, version)
}

#[test]
fn inbound_listeners_are_scoped_and_versioned_per_service() {
    let mut g = Generator::new();
    let first = with_inbound(&mut g, &set(90), &[("a", "1"), ("b", "1")]);
    let l1 = first.get(LISTENER_TYPE_URL).unwrap().clone();
    assert_eq!(l1.resources["inbound|a"].scope, Scope::Service("a".into()));
    assert_eq!(l1.resources["inbound|b"].scope, Scope::Service("b".into()));
    assert_eq!(l1.view_version("c"), l1.version, "no scoped resources: the type's version");

    // b's inbound listener changes: a's view and the type's version stay; b's moves.
    let second = with_inbound(&mut g, &set(90), &[("a", "1"), ("b", "2")]);
    let l2 = second.get(LISTENER_TYPE_URL).unwrap();
    assert_eq!(l2.version, l1.version);
    assert_eq!(l2.view_version("a"), l1.view_version("a"));
    assert_ne!(l2.view_version("b"), l1.view_version("b"));
    assert!(Arc::ptr_eq(&l1.resources["inbound|a"], &l2.resources["inbound|a"]), "unchanged: reused");
    // Other types did not change at all: the same shared type snapshot.
    assert!(Arc::ptr_eq(first.get(CLUSTER_TYPE_URL).unwrap(), second.get(CLUSTER_TYPE_URL).unwrap()));

    // b's inbound listener goes away: b's view falls back to the shared part.
    let third = with_inbound(&mut g, &set(90), &[("a", "1")]);
    let l3 = third.get(LISTENER_TYPE_URL).unwrap();
    assert_eq!(l3.view_version("b"), l3.version);
    assert_eq!(l3.view_version("a"), l1.view_version("a"));
}

#[test]
fn a_resource_is_a_message_whose_encoding_differs_only_in_order() {
    use envoy_types::pb::google::protobuf::Duration;
    let full =
        Cluster { name: "c".into(), connect_timeout: Some(Duration { seconds: 1, nanos: 0 }), ..Default::default() };
    let encoded = encode_any(CLUSTER_TYPE_URL, &full);
    assert!(same_encoding::<Cluster>(&encoded, &encoded.clone()));
    // Served before: the same message with its fields in another order (as the entries of
    // two equal maps may come).
    let (timeout, name) = (
        Cluster { connect_timeout: full.connect_timeout, ..Default::default() },
        Cluster { name: full.name.clone(), ..Default::default() },
    );
    let value = [timeout.encode_to_vec(), name.encode_to_vec()].concat();
    let reordered: Bytes = Any { type_url: CLUSTER_TYPE_URL.into(), value }.encode_to_vec().into();
    assert_ne!(reordered, encoded);
    assert!(same_encoding::<Cluster>(&reordered, &encoded));
    let other = encode_any(CLUSTER_TYPE_URL, &Cluster { name: "d".into(), ..full.clone() });
    assert!(!same_encoding::<Cluster>(&reordered, &other));
    assert!(!same_encoding::<Cluster>(&encoded, &other));
}

#[test]
fn encoded_entries_decode_as_response_resources() {
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
    let snapshot = Generator::new().generate(&set(90));
    let r = &snapshot.get(CLUSTER_TYPE_URL).unwrap().resources["outbound|80||a"];
    let entry = |head: &[u8]| [head, r.encoded().as_ref()].concat();
    let any = r.any().unwrap();
    assert_eq!(any.type_url, CLUSTER_TYPE_URL);
    let cluster = Cluster::decode(any.value.as_slice()).unwrap();
    assert_eq!(cluster.name, "outbound|80||a");
    let sotw = DiscoveryResponse::decode(entry(r.sotw_head()).as_slice()).unwrap();
    assert_eq!(sotw.resources, vec![any.clone()]);
    let delta = DeltaDiscoveryResponse::decode(entry(r.delta_head()).as_slice()).unwrap();
    assert_eq!(delta.resources[0].name, "outbound|80||a");
    assert_eq!(delta.resources[0].version, r.version);
    assert_eq!(delta.resources[0].resource.as_ref(), Some(&any));
}
