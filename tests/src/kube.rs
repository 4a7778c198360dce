//! A real Kubernetes API server for tests: `etcd` and `kube-apiserver` started on 127.0.0.1 with
//! ephemeral ports and a throw-away directory (what controller-runtime's envtest does), stopped and
//! removed on drop. No kubelet, scheduler or controller-manager runs: objects are stored, validated
//! (OpenAPI, CRD schemas and CEL rules), admitted (RBAC, ServiceAccount, webhooks) and watched, but
//! nothing acts on them.
//!
//! The binaries come from `tests/k8s/build-testbed.sh`, which builds them from the Go module proxy
//! into `${OUTRIDER_TOOLS:-/var/cache/outrider-tools}/k8s-<version>-etcd-<version>/`;
//! `OUTRIDER_K8S_BIN_DIR` points elsewhere. Without them, [`ApiServer::start`] skips the test
//! (fails it under `OUTRIDER_REQUIRE_ALL=1`).
//!
//! The server in short: TLS with a serving certificate from a test CA ([`ApiServer::ca_pem`]),
//! `--authorization-mode=RBAC`, an admin bearer token in `system:masters` ([`ApiServer::token`]),
//! client certificates from the same CA accepted ([`ApiServer::client_cert`]), service-account
//! tokens signed with a fresh ES256 key, issuer [`SA_ISSUER`] (TokenRequest and TokenReview
//! work), and an admin kubeconfig ([`ApiServer::kubeconfig`]) for kube-rs or kubectl.
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The service-account token issuer (`iss`) of the test server.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

const VERSIONS: &str = include_str!("../k8s/versions.env");

/// A value of `tests/k8s/versions.env` (`K8S_VERSION`, `ETCD_VERSION`, …).
pub fn version(key: &str) -> &'static str {
    VERSIONS
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("{key} is missing from tests/k8s/versions.env"))
}

/// Where the test bed's binaries are: `$OUTRIDER_K8S_BIN_DIR`, else the cache directory of
/// `tests/k8s/build-testbed.sh`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OUTRIDER_K8S_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let tools =
        std::env::var_os("OUTRIDER_TOOLS").map_or_else(|| PathBuf::from("/var/cache/outrider-tools"), PathBuf::from);
    tools.join(format!("k8s-{}-etcd-{}", version("K8S_VERSION"), version("ETCD_VERSION")))
}

/// The test bed's binaries, or why they cannot be used.
fn binaries() -> Result<(PathBuf, PathBuf), String> {
    let dir = bin_dir();
    let etcd = dir.join("etcd");
    let apiserver = dir.join("kube-apiserver");
    if etcd.is_file() && apiserver.is_file() {
        return Ok((etcd, apiserver));
    }
    Err(format!(
        "skipping: no etcd and kube-apiserver in {} (build them with tests/k8s/build-testbed.sh, \
         or set OUTRIDER_K8S_BIN_DIR)",
        dir.display()
    ))
}

/// A running etcd + kube-apiserver; both are killed and their directory removed on drop.
pub struct ApiServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    pub addr: SocketAddr,
    dir: PathBuf,
    token: String,
    ca_pem: String,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    tls: Arc<rustls::ClientConfig>,
    etcd: Child,
    apiserver: Child,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").field("url", &self.url).field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// A reply of the API server.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// The body, after asserting the status is `want`.
    #[track_caller]
    pub fn expect(self, want: u16) -> Value {
        assert_eq!(self.status.as_u16(), want, "unexpected reply: {}", self.body);
        self.body
    }
}

/// A free port on 127.0.0.1 (bound and released: the window before the server binds it is small,
/// as with envtest).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The last lines of a log file, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl ApiServer {
    /// Start etcd and kube-apiserver and wait until `/readyz` answers ok. `None`: the binaries are
    /// missing and the test should return (it was told why; under `OUTRIDER_REQUIRE_ALL=1` this
    /// panics instead).
    pub async fn start() -> Option<Self> {
        let (etcd_bin, apiserver_bin) = match binaries() {
            Ok(b) => b,
            Err(why) => {
                crate::skip(&why);
                return None;
            }
        };
        Some(Self::start_with(&etcd_bin, &apiserver_bin).await.expect("the test API server starts"))
    }

    async fn start_with(etcd_bin: &Path, apiserver_bin: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("outrider-kube-{}-{:016x}", std::process::id(), fastrand_u64()));
        std::fs::create_dir_all(&dir)?;
        let pki = Pki::generate()?;
        let file = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };
        let ca_file = file("ca.crt", &pki.ca_pem)?;
        let serving_cert = file("apiserver.crt", &pki.serving_cert_pem)?;
        let serving_key = file("apiserver.key", &pki.serving_key_pem)?;
        let sa_key = file("sa.key", &pki.sa_key_pem)?;
        let sa_pub = file("sa.pub", &pki.sa_pub_pem)?;
        let token = format!("admin-{:016x}{:016x}", fastrand_u64(), fastrand_u64());
        let tokens = file("tokens.csv", &format!("{token},admin,admin-uid,\"system:masters\"\n"))?;

        let (client_port, peer_port, secure_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_log = dir.join("etcd.log");
        let etcd = Command::new(etcd_bin)
            .args(["--name", "default", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--unsafe-no-fsync", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&etcd_log)?))
            .stderr(Stdio::from(std::fs::File::create(dir.join("etcd.err"))?))
            .spawn()
            .context("starting etcd")?;

        let addr = SocketAddr::from(([127, 0, 0, 1], secure_port));
        let apiserver_log = dir.join("kube-apiserver.log");
        let path = |p: &Path| p.display().to_string();
        let apiserver = Command::new(apiserver_bin)
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={secure_port}"))
            .arg(format!("--cert-dir={}", path(&dir.join("certs"))))
            .arg(format!("--tls-cert-file={}", path(&serving_cert)))
            .arg(format!("--tls-private-key-file={}", path(&serving_key)))
            .arg(format!("--client-ca-file={}", path(&ca_file)))
            .arg(format!("--token-auth-file={}", path(&tokens)))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={SA_ISSUER}"))
            .arg(format!("--service-account-key-file={}", path(&sa_pub)))
            .arg(format!("--service-account-signing-key-file={}", path(&sa_key)))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--endpoint-reconciler-type=none")
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .arg("--v=0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(dir.join("kube-apiserver.out"))?))
            .stderr(Stdio::from(std::fs::File::create(&apiserver_log)?))
            .spawn()
            .context("starting kube-apiserver")?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone())?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = Self {
            url: format!("https://{addr}"),
            addr,
            dir,
            token,
            ca_pem: pki.ca_pem,
            ca: pki.ca,
            tls: Arc::new(tls),
            etcd,
            apiserver,
        };
        server.write_kubeconfig()?;
        // The API server needs etcd and then runs its post-start hooks (RBAC bootstrap roles,
        // CRD informers, …); /readyz is ok once all are done. Startup takes seconds of CPU, more
        // on a loaded machine, so this wait has its own, longer deadline.
        let limit = crate::wait::deadline().max(Duration::from_secs(90));
        let end = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = server.apiserver.try_wait()? {
                anyhow::bail!(
                    "kube-apiserver exited ({status}):\n{}\netcd:\n{}",
                    tail(&apiserver_log),
                    tail(&server.dir.join("etcd.err"))
                );
            }
            if let Some(status) = server.etcd.try_wait()? {
                anyhow::bail!("etcd exited ({status}):\n{}", tail(&server.dir.join("etcd.err")));
            }
            if let Ok(r) = server.request(Method::GET, "/readyz", None).await
                && r.status == StatusCode::OK
            {
                return Ok(server);
            }
            if tokio::time::Instant::now() >= end {
                anyhow::bail!("kube-apiserver not ready after {limit:?}:\n{}", tail(&apiserver_log));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The admin's bearer token (user `admin`, group `system:masters`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The CA (PEM) that signed the serving certificate and that client certificates must chain to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig for the admin (server, CA data, token), for kube-rs or kubectl.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The server's temporary directory (logs: `kube-apiserver.log`, `etcd.err`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client certificate and key (PEM) for user `user` in `groups`, signed by the server's CA.
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(rcgen::DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca).expect("a client certificate");
        (cert.pem(), key.serialize_pem())
    }

    fn write_kubeconfig(&self) -> anyhow::Result<()> {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url,
                "certificate-authority-data": b64(self.ca_pem.as_bytes()),
            }}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        });
        // JSON is YAML: kubeconfig loaders read it as is.
        std::fs::write(self.kubeconfig(), serde_json::to_string_pretty(&config)?)?;
        Ok(())
    }

    /// A kubeconfig (written beside the admin's) that authenticates with `token`, e.g. a
    /// service account's from the TokenRequest API, so a client runs with that account's RBAC.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> PathBuf {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url,
                "certificate-authority-data": b64(self.ca_pem.as_bytes()),
            }}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": name}}],
            "current-context": "test",
        });
        let path = self.dir.join(format!("kubeconfig-{name}"));
        std::fs::write(&path, serde_json::to_string_pretty(&config).expect("JSON")).expect("write the kubeconfig");
        path
    }

    /// A token of service account `namespace/name` for `audience`, from the TokenRequest API.
    pub async fn service_account_token(&self, namespace: &str, name: &str, audience: &str) -> String {
        let request = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": 3600}});
        let issued =
            self.create(&format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"), &request).await;
        issued["status"]["token"].as_str().expect("a token").to_owned()
    }

    /// Creates every object of a YAML stream (as `kubectl create -f` does) and returns them as
    /// the API server stored them. Only the kinds Outrider's manifests use are known.
    pub async fn create_yaml(&self, yaml: &str) -> Vec<Value> {
        use serde::Deserialize as _;
        let mut created = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let object = Value::deserialize(doc).expect("YAML");
            if object.is_null() {
                continue;
            }
            let path = collection_path(&object);
            created.push(self.create(&path, &object).await);
        }
        created
    }

    /// One request as the admin; `body` is sent as JSON. Never panics on an HTTP error status.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Reply> {
        self.request_as(Some(&self.token), method, path, body, "application/json").await
    }

    /// One request with `bearer` (or anonymous), `body` sent with `content_type` (e.g.
    /// `application/merge-patch+json` for a PATCH).
    pub async fn request_as(
        &self,
        bearer: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
    ) -> anyhow::Result<Reply> {
        self.request_accepting(bearer, method, path, body, content_type, "application/json").await
    }

    /// GET `path` as the table `kubectl get` prints (the server's `meta.k8s.io/v1` Table:
    /// `columnDefinitions` and `rows[].cells`, from the CRD's printer columns).
    pub async fn table(&self, path: &str) -> Value {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io";
        let token = self.token.clone();
        let reply = self.request_accepting(Some(&token), Method::GET, path, None, "application/json", accept).await;
        reply.expect("the API server answers").expect(200)
    }

    async fn request_accepting(
        &self,
        bearer: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
        accept: &str,
    ) -> anyhow::Result<Reply> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::ACCEPT, accept);
        if let Some(t) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, content_type);
                Bytes::from(serde_json::to_vec(v)?)
            }
            None => Bytes::new(),
        };
        let resp = sender.send_request(req.body(Full::new(payload))?).await?;
        let status = resp.status();
        let bytes = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect()).await??.to_bytes();
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok(Reply { status, body })
    }

    /// POST `body` to `path` (a collection) and return the created object (asserts 201).
    pub async fn create(&self, path: &str, body: &Value) -> Value {
        self.request(Method::POST, path, Some(body)).await.expect("the API server answers").expect(201)
    }

    /// GET `path` (asserts 200).
    pub async fn get(&self, path: &str) -> Value {
        self.request(Method::GET, path, None).await.expect("the API server answers").expect(200)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("OUTRIDER_KEEP_KUBE_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept the test API server's directory {}", self.dir.display());
        }
    }
}

/// The certificates and keys of one test server.
struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    serving_cert_pem: String,
    serving_key_pem: String,
    sa_key_pem: String,
    sa_pub_pem: String,
}

impl Pki {
    fn generate() -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "outrider test kubernetes CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = rcgen::Issuer::new(ca_params, ca_key);

        let serving_key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
        ])?;
        params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(rcgen::DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let serving = params.signed_by(&serving_key, &ca)?;

        // Service-account tokens are signed ES256 with this key; the public half verifies them.
        let sa_key = rcgen::KeyPair::generate()?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            ca,
            serving_cert_pem: serving.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            sa_key_pem: sa_key.serialize_pem(),
            sa_pub_pem: sa_key.public_key_pem(),
        })
    }
}

fn fastrand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random bytes");
    u64::from_le_bytes(b)
}

/// The REST collection of an object (its `apiVersion`, `kind` and `metadata.namespace`).
pub fn collection_path(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let kind = object["kind"].as_str().expect("kind");
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "MutatingWebhookConfiguration" => ("mutatingwebhookconfigurations", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "Deployment" => ("deployments", true),
        "Service" => ("services", true),
        "PodDisruptionBudget" => ("poddisruptionbudgets", true),
        "Pod" => ("pods", true),
        "Secret" => ("secrets", true),
        other => panic!("collection_path: unknown kind {other}"),
    };
    let prefix = if api_version.contains('/') { format!("/apis/{api_version}") } else { format!("/api/{api_version}") };
    if namespaced {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default");
        format!("{prefix}/namespaces/{namespace}/{plural}")
    } else {
        format!("{prefix}/{plural}")
    }
}
