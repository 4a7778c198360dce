//! The server over a real socket with real ADS clients (both variants): each proxy gets the
//! inbound listener of its own service and never another's, and a change to another service's
//! inbound listener is not pushed to it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use outrider_xds::ads::{AdsClient, ClientConfig, Handler, Protocol, Update};
use outrider_xds::resources::{LISTENER_TYPE_URL, decode_any};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;

use futures_util::FutureExt as _;

use super::{AdsServer, Encoded, LARGE_RESPONSE, Pusher};
use crate::endpoints::Registry;
use crate::metrics::Metrics;
use crate::snapshot::Generator;
use crate::snapshot::tests::with_inbound;
use crate::tracker::Tracker;

/// Every Listener update a client accepted: (version, name → stat prefix).
#[derive(Default)]
struct Listeners(Mutex<Vec<(String, BTreeMap<String, String>)>>);

impl Handler for Listeners {
    fn update(&self, update: &Update<'_>) -> Result<(), String> {
        if update.type_url == LISTENER_TYPE_URL {
            let mut named = BTreeMap::new();
            for (name, r) in update.resources {
                let l: Listener = decode_any(LISTENER_TYPE_URL, &r.any).map_err(|e| e.to_string())?;
                named.insert(name.clone(), l.stat_prefix);
            }
            self.0.lock().push((update.version.to_owned(), named));
        }
        Ok(())
    }
}

impl Listeners {
    fn count(&self) -> usize {
        self.0.lock().len()
    }

    fn last(&self) -> Option<(String, BTreeMap<String, String>)> {
        self.0.lock().last().cloned()
    }
}

/// Poll (no fixed sleep) until `f` holds; panics after 10 s.
async fn until(what: &str, f: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names(l: &Listeners) -> Vec<String> {
    l.last().map(|(_, n)| n.keys().cloned().collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_gets_its_own_inbound_listener_and_only_its_own_changes() {
    let set = outrider_xds::load_str(
        "t.yaml",
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: a}\nspec: {port: 80}\n---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: b}\nspec: {port: 80}\n",
    )
    .unwrap();
    let mut generator = Generator::new();
    let (tx, rx) = watch::channel(Arc::new(with_inbound(&mut generator, &set, &[("a", "a1"), ("b", "b1")])));
    let tracker = Tracker::new();
    let server = AdsServer::new(rx, tracker.clone(), Metrics::new(), Registry::new(Duration::from_secs(10)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving = tokio::spawn(server.serve(listener));

    // (node, service, protocol): the service travels as Envoy's `cluster` here (Outrider
    // sidecars also put it in the metadata).
    let proxies = [
        ("a-delta", "a", Protocol::Delta),
        ("a-sotw", "a", Protocol::Sotw),
        ("b-delta", "b", Protocol::Delta),
        ("b-sotw", "b", Protocol::Sotw),
        ("none", "", Protocol::Delta),
    ];
    let mut seen = BTreeMap::new();
    let mut clients = Vec::new();
    for (id, service, protocol) in proxies {
        let node = Node { id: id.into(), cluster: service.into(), ..Default::default() };
        let mut config = ClientConfig::new(url.clone(), node);
        config.protocol = protocol;
        let listeners = Arc::new(Listeners::default());
        clients.push(tokio::spawn(AdsClient::new(config).run(listeners.clone())));
        seen.insert(id, listeners);
    }
    for (id, service, _) in proxies {
        let want: Vec<String> = match service {
            "" => vec!["outbound".into()],
            s => vec![format!("inbound|{s}"), "outbound".into()],
        };
        until(&format!("{id} to get its listeners"), || names(&seen[id]) == want).await;
    }
    let before: BTreeMap<&str, (usize, String)> =
        seen.iter().map(|(id, l)| (*id, (l.count(), l.last().unwrap().0))).collect();
    assert_ne!(before["a-sotw"].1, before["none"].1, "a's view version covers its inbound listener");

    // b's inbound listener changes: b's proxies get it; a's are not pushed at all.
    tx.send_replace(Arc::new(with_inbound(&mut generator, &set, &[("a", "a1"), ("b", "b2")])));
    for id in ["b-delta", "b-sotw"] {
        until(&format!("{id} to get b's new inbound listener"), || {
            seen[id].last().is_some_and(|(_, n)| n["inbound|b"] == "b2")
        })
        .await;
    }
    // Then a's changes (so every stream has looked at b's change before this one).
    tx.send_replace(Arc::new(with_inbound(&mut generator, &set, &[("a", "a2"), ("b", "b2")])));
    for id in ["a-delta", "a-sotw"] {
        until(&format!("{id} to get a's new inbound listener"), || {
            seen[id].last().is_some_and(|(_, n)| n["inbound|a"] == "a2")
        })
        .await;
        assert_eq!(seen[id].count(), before[id].0 + 1, "{id} was pushed b's change: {:?}", seen[id].0.lock());
        assert!(!seen[id].last().unwrap().1.contains_key("inbound|b"), "{id} got b's listener");
    }
    assert_eq!(seen["none"].count(), before["none"].0, "a proxy of no service is pushed neither change");
    // The status shows per proxy the version of its own view.
    for p in tracker.list() {
        let listener = &p.types["Listener"];
        assert_eq!(listener.sent, seen[p.node_id.as_str()].last().unwrap().0, "{}", p.node_id);
    }
    for c in clients {
        c.abort();
    }
    serving.abort();
}

/// A node proxy's node: `mode: node` and one workload per service in `services`.
fn node_proxy(id: &str, services: &[&str]) -> Node {
    use envoy_types::pb::google::protobuf::{ListValue, Value, value::Kind};
    use outrider_xds::resources::{string_value, struct_of};
    let workloads = services
        .iter()
        .enumerate()
        .map(|(i, s)| Value {
            kind: Some(Kind::StructValue(struct_of([
                ("service", string_value(s)),
                ("address", string_value(&format!("10.0.0.{}:80", i + 1))),
                ("identity", string_value(&format!("spiffe://t/ns/default/sa/{s}"))),
            ]))),
        })
        .collect();
    let metadata = struct_of([
        ("mode", string_value("node")),
        ("workloads", Value { kind: Some(Kind::ListValue(ListValue { values: workloads })) }),
    ]);
    Node { id: id.into(), metadata: Some(metadata), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_proxy_gets_the_inbound_config_of_the_services_it_serves_as_they_change() {
    let set = outrider_xds::load_str(
        "t.yaml",
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: a}\nspec: {port: 80}\n---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: b}\nspec: {port: 80}\n---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: c}\nspec: {port: 80}\n",
    )
    .unwrap();
    let mut generator = Generator::new();
    let (tx, rx) =
        watch::channel(Arc::new(with_inbound(&mut generator, &set, &[("a", "a1"), ("b", "b1"), ("c", "c1")])));
    let server = AdsServer::new(rx, Tracker::new(), Metrics::new(), Registry::new(Duration::from_secs(10)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving = tokio::spawn(server.serve(listener));

    let mut nodes = Vec::new();
    let mut seen = BTreeMap::new();
    let mut clients = Vec::new();
    for (id, protocol) in [("node-delta", Protocol::Delta), ("node-sotw", Protocol::Sotw)] {
        let (node_tx, node_rx) = watch::channel(node_proxy(id, &["a"]));
        let mut config = ClientConfig::new(url.clone(), node_proxy(id, &["a"]));
        config.protocol = protocol;
        let listeners = Arc::new(Listeners::default());
        clients.push(tokio::spawn(AdsClient::new(config).with_node_updates(node_rx).run(listeners.clone())));
        seen.insert(id, listeners);
        nodes.push((id, node_tx));
    }
    let want = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    for (id, _) in &nodes {
        until(&format!("{id} to get a's inbound listener only"), || {
            names(&seen[id]) == want(&["inbound|a", "outbound"])
        })
        .await;
    }
    // A workload of b joins: b's inbound config comes, c's never.
    for (id, node_tx) in &nodes {
        node_tx.send_replace(node_proxy(id, &["a", "b"]));
    }
    for (id, _) in &nodes {
        until(&format!("{id} to get b's inbound listener"), || {
            names(&seen[id]) == want(&["inbound|a", "inbound|b", "outbound"])
        })
        .await;
    }
    // c's inbound config changes: not pushed to a node that serves no c; b's is.
    let before: BTreeMap<&str, usize> = seen.iter().map(|(id, l)| (*id, l.count())).collect();
    tx.send_replace(Arc::new(with_inbound(&mut generator, &set, &[("a", "a1"), ("b", "b1"), ("c", "c2")])));
    tx.send_replace(Arc::new(with_inbound(&mut generator, &set, &[("a", "a1"), ("b", "b2"), ("c", "c2")])));
    for (id, _) in &nodes {
        until(&format!("{id} to get b's new inbound listener"), || {
            seen[id].last().is_some_and(|(_, n)| n.get("inbound|b").is_some_and(|p| p == "b2"))
        })
        .await;
        assert_eq!(seen[id].count(), before[id] + 1, "{id} was pushed c's change: {:?}", seen[id].0.lock());
    }
    // a's last workload leaves: a's inbound config is withdrawn.
    for (id, node_tx) in &nodes {
        node_tx.send_replace(node_proxy(id, &["b"]));
    }
    for (id, _) in &nodes {
        until(&format!("{id} to lose a's inbound listener"), || names(&seen[id]) == want(&["inbound|b", "outbound"]))
            .await;
    }
    for c in clients {
        c.abort();
    }
    serving.abort();
}

/// A response of `n` (copies of one) resources.
fn response(n: usize) -> Encoded {
    let set = outrider_xds::load_str(
        "t.yaml",
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: a}\nspec: {port: 80}\n",
    )
    .unwrap();
    let snapshot = crate::snapshot::Generator::new().generate(&set);
    let r = snapshot.get(outrider_xds::resources::CLUSTER_TYPE_URL).unwrap().resources.values().next().unwrap();
    Encoded::delta(&Default::default(), vec![r.clone(); n])
}

#[tokio::test]
async fn a_permit_reserved_for_a_small_response_is_given_back_and_a_large_one_keeps_it_until_answered() {
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let mut pusher = Pusher::new(tx, permits.clone(), Default::default());
    pusher.reserve().await.unwrap();
    assert_eq!(permits.available_permits(), 0, "reserved before the response is built");
    pusher.send("a", response(1)).await.unwrap();
    assert_eq!(permits.available_permits(), 1, "the response was small");
    pusher.reserve().await.unwrap();
    pusher.send("a", response(LARGE_RESPONSE)).await.unwrap();
    pusher.send("b", response(1)).await.unwrap();
    assert_eq!(permits.available_permits(), 0, "a large response is unanswered");
    pusher.answered("a");
    assert_eq!(permits.available_permits(), 1);
    for _ in 0..3 {
        rx.recv().await.unwrap();
    }
}

#[tokio::test]
async fn a_stream_waiting_for_a_permit_reserves_nothing_else() {
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let mut first = Pusher::new(tx.clone(), permits.clone(), Default::default());
    let mut second = Pusher::new(tx, permits.clone(), Default::default());
    first.reserve().await.unwrap();
    first.send("a", response(LARGE_RESPONSE)).await.unwrap();
    assert!(second.reserve().now_or_never().is_none(), "the only permit is taken");
    first.answered("a");
    second.reserve().await.unwrap();
    assert_eq!(permits.available_permits(), 0);
}
