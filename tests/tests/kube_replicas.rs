//! Control plane replicas on one cluster (tests/src/kube.rs's real API server): the CA root
//! Secret is created once when replicas start together, the Lease moves when its holder dies
//! (and with it the status writes), a leader stopped by SIGTERM releases the Lease so the next
//! replica takes it at once, and proxies spread over two replicas keep serving when one
//! of them is killed under load. Skips when the test bed's binaries are absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use outrider_control_plane::kubernetes::defaults::LEASE_DURATION;
use outrider_tests::client::{self, Client};
use outrider_tests::kube::ApiServer;
use outrider_tests::kube_mesh::{self, Balancer, PodNetwork, Replica, SYSTEM, accepted_condition, apply, namespace};
use outrider_tests::upstream::{self, Upstream};
use outrider_tests::wait;
use serde_json::{Value, json};

const POLICIES: &str = "/apis/outrider.io/v1/namespaces/shop/trafficpolicies";

/// The cluster of these tests: the system and `shop` namespaces, the CRDs, and Service `reviews`
/// with one ready endpoint per upstream (pod label `version` as given).
async fn cluster(api: &ApiServer, upstreams: &[(&Upstream, &str)]) {
    let pods: Vec<(&str, std::net::SocketAddr, &str)> =
        upstreams.iter().map(|(up, version)| (up.name.as_str(), up.addr, *version)).collect();
    kube_mesh::reviews_cluster(api, &pods).await;
}

fn secret_cert(secret: &Value) -> String {
    let b64 = secret["data"]["tls.crt"].as_str().expect("tls.crt");
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_create_the_ca_secret_once_and_share_its_root() {
    let Some(api) = ApiServer::start().await else { return };
    namespace(&api, SYSTEM).await;
    kube_mesh::install_crds(&api).await;
    let secret_path = format!("/api/v1/namespaces/{SYSTEM}/secrets/outrider-ca");
    assert_eq!(api.request(http::Method::GET, &secret_path, None).await.unwrap().status, 404);

    // Three replicas at once: whichever creates the Secret first, all sign with its root.
    let (a, b, c) = tokio::join!(
        Replica::start(&api, "cp-a", LEASE_DURATION),
        Replica::start(&api, "cp-b", LEASE_DURATION),
        Replica::start(&api, "cp-c", LEASE_DURATION),
    );
    let secret = api.get(&secret_path).await;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let root = secret_cert(&secret);
    assert!(root.contains("BEGIN CERTIFICATE"), "{root}");
    for r in [&a, &b, &c] {
        assert_eq!(r.root_pem().trim(), root.trim(), "replica {} signs with the Secret's root", r.name);
    }
    // Created once: never replaced since (a second create would have failed; a replace would
    // have bumped the resource version).
    let version = secret["metadata"]["resourceVersion"].clone();
    drop((a, b, c));
    let again = Replica::start(&api, "cp-d", LEASE_DURATION).await;
    assert_eq!(again.root_pem().trim(), root.trim(), "a replica started later reads the same root");
    assert_eq!(api.get(&secret_path).await["metadata"]["resourceVersion"], version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_when_the_leader_dies_and_status_writes_follow() {
    let Some(api) = ApiServer::start().await else { return };
    cluster(&api, &[]).await;
    let lease = Duration::from_secs(2);
    let (mut a, mut b) = tokio::join!(Replica::start(&api, "cp-a", lease), Replica::start(&api, "cp-b", lease));
    let lease_path = format!("/apis/coordination.k8s.io/v1/namespaces/{SYSTEM}/leases/outrider-control-plane");

    // Exactly one leads, and the Lease names it.
    let holder = wait::wait_for("one replica to lead", || async {
        let lease = api.request(http::Method::GET, &lease_path, None).await.ok()?.body;
        let holder = lease["spec"]["holderIdentity"].as_str()?.to_owned();
        (a.is_leader() != b.is_leader() && (if a.is_leader() { &a } else { &b }).name == holder).then_some(holder)
    })
    .await;
    let transitions = api.get(&lease_path).await["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
    // The leader writes statuses.
    let policy = |name: &str| {
        json!({"apiVersion": "outrider.io/v1", "kind": "TrafficPolicy", "metadata": {"name": name},
            "spec": {"service": "reviews", "timeout": "nonsense"}})
    };
    apply(&api, POLICIES, &policy("before")).await;
    assert_eq!(accepted_condition(&api, &format!("{POLICIES}/before")).await["status"], "False");

    // The leader dies without releasing the Lease: the other takes it once it expires.
    let (dead, survivor) = if a.name == holder { (&mut a, &mut b) } else { (&mut b, &mut a) };
    dead.kill();
    let survivor_name = survivor.name.clone();
    wait::wait_until("the surviving replica to take the Lease", || async {
        let lease = api.get(&lease_path).await;
        survivor.is_leader() && lease["spec"]["holderIdentity"] == survivor_name.as_str()
    })
    .await;
    let after = api.get(&lease_path).await;
    assert_eq!(after["spec"]["leaseTransitions"].as_i64().unwrap(), transitions + 1, "{after}");
    // What must happen once moved with it: a new object gets its status from the new leader.
    apply(&api, POLICIES, &policy("after")).await;
    let condition = accepted_condition(&api, &format!("{POLICIES}/after")).await;
    assert_eq!(condition["status"], "False", "{condition}");
    assert!(condition["message"].as_str().unwrap().contains("timeout"), "{condition}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_by_sigterm_releases_the_lease_and_the_next_replica_takes_it_at_once() {
    let Some(api) = ApiServer::start().await else { return };
    cluster(&api, &[]).await;
    let lease_path = format!("/apis/coordination.k8s.io/v1/namespaces/{SYSTEM}/leases/outrider-control-plane");
    // A Lease far longer than any wait of this test: the other replica can only lead because the
    // stopping one released it, never because it expired.
    let lease = Duration::from_secs(3600);
    let dir = outrider_tests::harness::TempDir::new("outrider-kube-cp-bin");
    let kubeconfig = api.kubeconfig();
    let mut leader = tokio::process::Command::new(outrider_tests::control_plane::outrider_bin())
        .args(["control-plane", "--kubernetes", "--xds-port", "0", "--api-port", "0", "--webhook-port", "0"])
        .args(["--namespace", SYSTEM, "--replica-name", "cp-bin", "--lease-duration", "3600s", "--workers", "1"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        // Its logs (stdout) and anything else, read after it exits.
        .stdout(std::fs::File::create(dir.path().join("out.log")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The binary is alone: it takes the Lease.
    wait::wait_until("the binary replica to take the Lease", || async {
        let Ok(r) = api.request(http::Method::GET, &lease_path, None).await else { return false };
        r.body["spec"]["holderIdentity"] == "cp-bin"
    })
    .await;
    let transitions = api.get(&lease_path).await["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
    let follower = Replica::start(&api, "cp-next", lease).await;
    assert!(!follower.is_leader(), "the Lease is held: the new replica follows");

    // SIGTERM (what the kubelet sends at a rolling update): the Lease is released on the way out.
    let pid = leader.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait::within("the binary replica to exit", leader.wait()).await.unwrap();
    let out = std::fs::read_to_string(dir.path().join("out.log")).unwrap()
        + &std::fs::read_to_string(dir.path().join("err.log")).unwrap();
    assert!(status.success(), "exit {status}: {out}");
    assert!(out.contains("released the leader lease"), "{out}");
    wait::wait_until("the next replica to take the released Lease", || async {
        follower.is_leader() && api.get(&lease_path).await["spec"]["holderIdentity"] == "cp-next"
    })
    .await;
    let after = api.get(&lease_path).await;
    assert_eq!(after["spec"]["leaseTransitions"].as_i64().unwrap(), transitions + 1, "{after}");
    // What must happen once moved with it: the new leader writes statuses.
    apply(
        &api,
        POLICIES,
        &json!({"apiVersion": "outrider.io/v1", "kind": "TrafficPolicy", "metadata": {"name": "after-release"},
            "spec": {"service": "reviews", "timeout": "nonsense"}}),
    )
    .await;
    let condition = accepted_condition(&api, &format!("{POLICIES}/after-release")).await;
    assert_eq!(condition["status"], "False", "{condition}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_spread_over_two_replicas_keep_serving_when_one_is_killed_under_load() {
    let Some(pods) = PodNetwork::create() else { return };
    let Some(api) = ApiServer::start().await else { return };
    let v1 = pods.upstream(upstream::http1().name("reviews-v1").start()).await;
    let v2 = pods.upstream(upstream::http1().name("reviews-v2").start()).await;
    cluster(&api, &[(&v1, "v1"), (&v2, "v2")]).await;
    let (mut a, b) =
        tokio::join!(Replica::start(&api, "cp-a", LEASE_DURATION), Replica::start(&api, "cp-b", LEASE_DURATION));
    // The replicas' Service: each proxy's xDS connection lands on one of them.
    let service = Balancer::start(vec![a.xds, b.xds]).await;
    let mut sidecars = Vec::new();
    for i in 0..4 {
        sidecars.push(kube_mesh::sidecar(service.addr, &format!("sidecar-{i}")).await);
    }
    let clients: Vec<Client> = sidecars.iter().map(|s| client::http1(s.addrs.outbound)).collect();
    for c in &clients {
        wait::wait_until("the sidecar to route reviews", || async {
            client::send(c, client::get("http://reviews.shop/")).await.status == 200
        })
        .await;
    }
    assert!(
        service.per_backend.iter().all(|n| n.load(Ordering::SeqCst) >= 1),
        "both replicas serve proxies: {:?}",
        service.per_backend
    );

    // Load through every sidecar until told to stop; every answer must be a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::<String>::new())));
    let mut load = Vec::new();
    for c in clients.clone() {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = client::send(&c, client::get("http://reviews.shop/")).await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.lock().unwrap().push(format!("{} {}", r.status, r.text()));
                }
            }
        }));
    }
    let before = ok.load(Ordering::SeqCst);
    wait::wait_until("load to flow", || async { ok.load(Ordering::SeqCst) > before + 100 }).await;

    // One replica dies: its proxies reconnect through the Service to the other.
    a.kill();
    let killed_at = ok.load(Ordering::SeqCst);
    // A change made after the kill reaches every proxy: they all follow the survivor.
    let canary = json!({"apiVersion": "outrider.io/v1", "kind": "TrafficPolicy", "metadata": {"name": "reviews"},
        "spec": {"service": "reviews", "routes": [{"split": [{"subset": {"version": "v2"}, "weight": 100}]}]}});
    apply(&api, POLICIES, &canary).await;
    for c in &clients {
        wait::wait_until("every sidecar to take the change from the surviving replica", || async {
            let mut all = true;
            for _ in 0..5 {
                all &= client::send(c, client::get("http://reviews.shop/")).await.upstream() == Some("reviews-v2");
            }
            all
        })
        .await;
    }
    wait::wait_until("load to go on after the kill", || async { ok.load(Ordering::SeqCst) > killed_at + 200 }).await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    assert!(failed.lock().unwrap().is_empty(), "failed requests: {:?}", failed.lock().unwrap());
    assert!(b.is_running());
    assert!(ok.load(Ordering::SeqCst) > 300);
    for s in &mut sidecars {
        assert!(s.try_wait().is_none(), "a sidecar exited: {}", s.stderr());
    }
}
