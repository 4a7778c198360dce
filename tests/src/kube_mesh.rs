//! The control plane's Kubernetes mode on the test API server ([`crate::kube::ApiServer`]):
//! replicas of `outrider control-plane --kubernetes` in this process (each on a runtime and a
//! thread of its own, so killing one drops every socket like a crashed process), the
//! `outrider.io` CRDs installed, objects written as `kubectl` would, `outrider-proxy` processes
//! fed by the replicas, and a TCP balancer standing for the replicas' Kubernetes Service.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Method;
use outrider_control_plane::api::rollouts::Rollouts;
use outrider_control_plane::ca::tokens::JoinTokens;
use outrider_control_plane::kubernetes::rollouts::ClusterRollouts;
use outrider_control_plane::kubernetes::{Cluster, KubeSettings, crds};
use outrider_control_plane::server::{self, Running, ServerConfig};
use serde_json::{Value, json};
use std::sync::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use crate::binary::{ProxyProcess, proxy_bin};
use crate::harness::TempDir;
use crate::kube::ApiServer;
use crate::wait;

/// The control plane's namespace in these tests (its Secret, Lease, mesh-wide kinds).
pub const SYSTEM: &str = "outrider-system";

/// Create a namespace.
pub async fn namespace(api: &ApiServer, name: &str) {
    api.create("/api/v1/namespaces", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .await;
}

/// Install the `outrider.io` CRDs (the ones `deploy/kubernetes/crds.yaml` holds) and wait until
/// each kind is served.
pub async fn install_crds(api: &ApiServer) {
    for kind in crds::KINDS {
        api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", &crds::definition(kind)).await;
    }
    for kind in crds::KINDS {
        let path = format!("/apis/outrider.io/v1/{}", kind.plural);
        wait::wait_until(&format!("{} to be served", kind.kind), || async {
            api.request(Method::GET, &path, None).await.is_ok_and(|r| r.status == 200)
        })
        .await;
    }
}

/// Create or replace an object at `collection` (its name from `object.metadata.name`):
/// `kubectl apply` in short. Returns the stored object.
/// The cluster of the `reviews` tests: the system and `shop` namespaces, the CRDs, Service
/// `reviews` (port 80, ServiceAccount `reviews`) with one ready endpoint per `(pod, address,
/// version)` (a Pod labelled `version` and an EndpointSlice naming it).
pub async fn reviews_cluster(api: &ApiServer, pods: &[(&str, SocketAddr, &str)]) {
    namespace(api, SYSTEM).await;
    namespace(api, "shop").await;
    install_crds(api).await;
    api.create(
        "/api/v1/namespaces/shop/serviceaccounts",
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reviews"}}),
    )
    .await;
    api.create(
        "/api/v1/namespaces/shop/services",
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews"},
            "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    for (name, addr, version) in pods {
        api.create(
            "/api/v1/namespaces/shop/pods",
            &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "reviews", "version": version}},
                "spec": {"serviceAccountName": "reviews", "containers": [{"name": "app", "image": "localhost/app:dev"}]}}),
        )
        .await;
        api.create(
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
            &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "reviews"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}],
                "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true},
                    "targetRef": {"kind": "Pod", "name": name, "namespace": "shop"}}]}),
        )
        .await;
    }
}

pub async fn apply(api: &ApiServer, collection: &str, object: &Value) -> Value {
    let name = object["metadata"]["name"].as_str().expect("metadata.name");
    let path = format!("{collection}/{name}");
    let current = api.request(Method::GET, &path, None).await.expect("the API server answers");
    if current.status == 404 {
        return api.create(collection, object).await;
    }
    let mut next = object.clone();
    next["metadata"]["resourceVersion"] = current.body["metadata"]["resourceVersion"].clone();
    api.request(Method::PUT, &path, Some(&next)).await.expect("the API server answers").expect(200)
}

/// Delete the object at `path` (asserts 200).
pub async fn delete(api: &ApiServer, path: &str) {
    api.request(Method::DELETE, path, None).await.expect("the API server answers").expect(200);
}

/// A control plane replica in Kubernetes mode.
pub struct Replica {
    running: Option<Running>,
    pub name: String,
    pub xds: SocketAddr,
    pub api: SocketAddr,
    _data: TempDir,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("name", &self.name).field("xds", &self.xds).finish_non_exhaustive()
    }
}

impl Replica {
    /// Start replica `name` against `api` (ephemeral loopback ports, a data dir of its own,
    /// `lease` as the Lease duration). Blocks until it has read the cluster; runs the start on a
    /// thread of its own, so it can be awaited from a test's runtime.
    pub async fn start(api: &ApiServer, name: &str, lease: Duration) -> Self {
        Self::start_with(name, lease, api.kubeconfig()).await
    }

    /// [`Replica::start`] with the credentials of `kubeconfig` (e.g. the control plane's service
    /// account's, so it runs with the manifests' RBAC).
    pub async fn start_with(name: &str, lease: Duration, kubeconfig: std::path::PathBuf) -> Self {
        let data = TempDir::new("outrider-kube-cp");
        let mut kube = KubeSettings::new();
        kube.kubeconfig = Some(kubeconfig);
        kube.namespace = SYSTEM.to_owned();
        kube.identity = name.to_owned();
        kube.lease_duration = lease;
        let config = ServerConfig { kubernetes: Some(kube), ..ServerConfig::local(data.path()) };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(server::start(config));
        });
        let running = wait::within(&format!("replica {name} to start"), rx)
            .await
            .expect("the start thread answers")
            .unwrap_or_else(|e| panic!("replica {name} did not start: {e}"));
        Self {
            xds: running.xds_addr,
            api: running.api_addr,
            running: Some(running),
            name: name.to_owned(),
            _data: data,
        }
    }

    /// The replica's Kubernetes state (sets, verdicts, leadership).
    pub fn cluster(&self) -> &Arc<Cluster> {
        self.running.as_ref().and_then(|r| r.kubernetes.as_ref()).expect("a running replica in Kubernetes mode")
    }

    /// Its CA's root (PEM).
    pub fn root_pem(&self) -> String {
        self.running.as_ref().expect("a running replica").ca.root_pem().to_owned()
    }

    /// Its API token (API writes).
    pub fn api_token(&self) -> String {
        self.running.as_ref().expect("a running replica").token.clone()
    }

    /// Its join token store (the copy its xDS streams check).
    pub fn tokens(&self) -> Arc<JoinTokens> {
        self.running.as_ref().expect("a running replica").tokens.clone()
    }

    /// Whether it leads now.
    pub fn is_leader(&self) -> bool {
        self.running.is_some() && self.cluster().leadership().is_leader()
    }

    /// Stop at once, as if the process died (its Lease is not released).
    pub fn kill(&mut self) {
        if let Some(r) = self.running.take() {
            r.kill();
        }
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Its rollouts (the leader's controller, or the view from the Rollouts' status).
    pub fn rollouts(&self) -> Arc<ClusterRollouts> {
        match &self.running.as_ref().expect("a running replica").rollouts {
            Rollouts::Cluster(r) => r.clone(),
            Rollouts::Local(_) => panic!("a replica in Kubernetes mode runs the cluster's rollouts"),
        }
    }

    /// A request to its HTTP API (with its token): the status and the JSON body.
    pub async fn call(&self, method: &str, path: &str) -> (u16, Value) {
        let client = crate::client::cp_api(self.api);
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.api))
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.api_token()))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("a request");
        let reply = crate::client::send(&client, req).await;
        (reply.status.as_u16(), serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
    }
}

/// An `outrider-proxy` process fed over xDS from `xds` (no policy file), every port ephemeral.
pub async fn sidecar(xds: SocketAddr, node: &str) -> ProxyProcess {
    let mut cmd = Command::new(proxy_bin());
    cmd.args(["--xds-address", &format!("http://{xds}"), "--node-id", node]);
    for flag in ["--outbound-port", "--inbound-port", "--admin-port", "--metrics-port", "--health-port"] {
        cmd.args([flag, "0"]);
    }
    cmd.args(["--inbound-bind", "127.0.0.1", "--log-format", "json", "--workers", "1"]);
    cmd.env("RUST_LOG", "info");
    ProxyProcess::spawn(cmd).await
}

/// A TCP balancer on 127.0.0.1: what the control plane's Kubernetes Service is to proxies.
/// Each connection goes to the next backend in turn that accepts it (a dead replica's refused
/// connect moves on to the next, as kube-proxy does once the endpoint is gone); a backend that
/// dies closes the connections it had.
#[derive(Debug)]
pub struct Balancer {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    /// Connections accepted per backend index, for asserting that each replica got some.
    pub per_backend: Arc<Vec<AtomicUsize>>,
    task: tokio::task::AbortHandle,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the balancer");
        let addr = listener.local_addr().expect("an address");
        let per_backend = Arc::new((0..backends.len()).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
        let backends = Arc::new(Mutex::new(backends));
        let next = Arc::new(AtomicUsize::new(0));
        let (b, n, counts) = (backends.clone(), next.clone(), per_backend.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (b, n, counts) = (b.clone(), n.clone(), counts.clone());
                tokio::spawn(async move {
                    let list = b.lock().map(|l| l.clone()).unwrap_or_default();
                    let start = n.fetch_add(1, Ordering::SeqCst);
                    for i in 0..list.len() {
                        let index = (start + i) % list.len();
                        if let Ok(mut outbound) = TcpStream::connect(list[index]).await {
                            counts[index].fetch_add(1, Ordering::SeqCst);
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        })
        .abort_handle();
        Self { addr, backends, per_backend, task }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut b) = self.backends.lock() {
            b.clear();
        }
    }
}

/// The `Accepted` condition of an `outrider.io` object at `path`, once it has one for the
/// object's current generation.
pub async fn accepted_condition(api: &ApiServer, path: &str) -> Value {
    wait::wait_for(&format!("{path} to get its Accepted condition"), || async {
        let object = api.request(Method::GET, path, None).await.ok()?.body;
        let generation = object["metadata"]["generation"].clone();
        object["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Accepted" && c["observedGeneration"] == generation)
            .cloned()
    })
    .await
}

/// Where the test's "pods" listen: the API server refuses loopback endpoint addresses, so the
/// applications run in a network namespace the test creates, reached from this one over a veth
/// pair with a /30 of 100.64.0.0/10 of their own (unique per process and pair). Every upstream
/// started with [`PodNetwork::upstream`] listens at [`PodNetwork::ip`] inside it; the namespace
/// and both ends of the pair go away on drop. Needs root and `ip`.
#[derive(Debug)]
pub struct PodNetwork {
    ns: crate::netns::Netns,
    entered: outrider_proxy::transport::netns::Netns,
    host_if: String,
    /// The pods' address (the namespace's end of the pair).
    pub ip: std::net::Ipv4Addr,
}

impl PodNetwork {
    /// `None` (after saying why, or failing under `OUTRIDER_REQUIRE_ALL=1`) without root or `ip`.
    pub fn create() -> Option<Self> {
        if let Some(why) = crate::netns::unsupported() {
            crate::skip(&format!("skipping: the pod network needs {why}"));
            return None;
        }
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::SeqCst) % 16;
        let n = (std::process::id() as usize % 65536) * 16 + seq;
        let base = u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + (n as u32) * 4;
        let (host_ip, pod_ip) = (std::net::Ipv4Addr::from(base + 1), std::net::Ipv4Addr::from(base + 2));
        let ns = crate::netns::Netns::create().expect("create a network namespace");
        let host_if = format!("orh{n:x}");
        let pod_if = format!("orp{n:x}");
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().expect("run ip");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &pod_if, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &ns.name, "addr", "add", &format!("{pod_ip}/30"), "dev", &pod_if]);
        ip(&["-n", &ns.name, "link", "set", &pod_if, "up"]);
        let entered =
            outrider_proxy::transport::netns::Netns::open(std::path::Path::new(&format!("/var/run/netns/{}", ns.name)))
                .expect("open the pod namespace");
        Some(Self { ns, entered, host_if, ip: pod_ip })
    }

    /// Start `builder`'s upstream listening on `ip:0` inside the pod namespace.
    pub async fn upstream(
        &self,
        start: impl std::future::Future<Output = crate::upstream::Upstream>,
    ) -> crate::upstream::Upstream {
        let ip = self.ip;
        let listener = self
            .entered
            .run(|| std::net::TcpListener::bind((ip, 0)))
            .expect("enter the pod namespace")
            .expect("bind in the pod namespace");
        crate::upstream::start_on(listener, start).await
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        // Deleting the namespace (Netns's drop) takes the peer and with it this end; delete
        // this end first anyway so nothing is left when the namespace is still in use.
        let _ = std::process::Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = &self.ns;
    }
}
