//! Meshed sidecars: a control plane with its CA, join tokens, and in-process proxies that get a
//! workload certificate before they are ready and talk mutual TLS to each other.
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use outrider_control_plane::server::{self, ServerConfig};
use outrider_proxy::app::App;
use outrider_proxy::config::ProxyConfig;
use outrider_proxy::mesh::IdentityConfig;
use outrider_proxy::source::xds::{Protocol, XdsConfig};
use outrider_proxy::telemetry::log::LogHandle;
use serde_json::{Value, json};

use crate::binary::{self, ProxyProcess};
use crate::client::{self, Client};
use crate::control_plane::{ApiClient, ControlPlane, TOKEN};
use crate::harness::TempDir;
use crate::wait;

/// A control plane whose CA issues certificates living `ttl`.
pub fn control_plane(data_dir: &Path, ttl: Duration) -> ControlPlane {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    ControlPlane::start_config(ServerConfig {
        xds: any,
        api: any,
        token: Some(TOKEN.into()),
        workload_cert_ttl: ttl,
        registration_grace: server::REGISTRATION_GRACE,
        ..ServerConfig::local(data_dir)
    })
}

/// `POST /v1/tokens` for `default/<sa>`; returns the token.
pub async fn join_token(cp: &ApiClient, service_account: &str) -> String {
    let body = json!({"namespace": "default", "serviceAccount": service_account}).to_string();
    let r = cp.call("POST", "/v1/tokens", &body, true, None).await;
    assert_eq!(r.status, 200, "token create failed: {}", r.json);
    r.json["token"].as_str().expect("a token").to_owned()
}

/// The SPIFFE ID the test control plane gives `default/<sa>`.
pub fn identity(service_account: &str) -> String {
    format!("spiffe://{}/ns/default/sa/{service_account}", server::DEFAULT_TRUST_DOMAIN)
}

/// A sidecar of `service` (service account = service) delivering inbound traffic to
/// `app_port`, registered with the control plane as a meshed endpoint of `service`.
#[derive(Debug)]
pub struct Sidecar {
    pub app: Option<App>,
    pub client: Client,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub inbound: SocketAddr,
    _dir: TempDir,
}

impl Sidecar {
    /// With a join token (`token`: `None` starts a proxy without identity, plaintext only).
    pub async fn start(cp: &ControlPlane, service: &str, app_port: Option<u16>, token: Option<&str>) -> Self {
        Self::start_edited(cp, service, app_port, token, |_| {}).await
    }

    pub async fn start_edited(
        cp: &ControlPlane,
        service: &str,
        app_port: Option<u16>,
        token: Option<&str>,
        edit: impl FnOnce(&mut ProxyConfig),
    ) -> Self {
        let dir = TempDir::new("outrider-sidecar");
        let mut config = ProxyConfig::local(&format!("{service}-sidecar"));
        config.xds = Some(XdsConfig::new(cp.xds_url(), Protocol::Delta));
        config.service = Some(service.to_owned());
        config.app_port = app_port;
        if let Some(token) = token {
            let file = dir.write("token", token);
            config.identity = Some(IdentityConfig {
                ca: format!("http://{}", cp.api).parse().expect("a URI"),
                token_file: file,
                namespace: "default".into(),
                service_account: service.to_owned(),
                ca_root: None,
            });
        }
        edit(&mut config);
        let app =
            App::build(config, LogHandle::disabled()).await.unwrap_or_else(|e| panic!("the proxy did not start: {e}"));
        let s = Self {
            client: client::http1(app.addrs.outbound),
            admin: app.addrs.admin,
            metrics: app.addrs.metrics,
            inbound: app.addrs.inbound,
            app: Some(app),
            _dir: dir,
        };
        s.wait_ready().await;
        s
    }

    pub async fn wait_ready(&self) {
        let c = client::http1(self.admin);
        wait::wait_until("the sidecar to be ready (certificate and config)", || async {
            client::send(&c, client::get("http://admin/ready")).await.status == 200
        })
        .await;
    }

    /// `GET uri` through the outbound port.
    pub async fn get(&self, uri: &str) -> client::Reply {
        client::send(&self.client, client::get(uri)).await
    }

    pub async fn metrics(&self) -> String {
        let c = client::http1(self.metrics);
        let r = client::send(&c, client::get("http://m/metrics")).await;
        assert_eq!(r.status, 200);
        r.text()
    }

    pub async fn config_dump(&self) -> Value {
        let c = client::http1(self.admin);
        let r = client::send(&c, client::get("http://admin/config_dump")).await;
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).expect("config_dump is JSON")
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// The real `outrider-proxy` as the meshed sidecar of `service` (its service account too),
/// delivering inbound traffic to `app_port`, with a join token from `cp` and `cp`'s API as its
/// CA. Flags in `extra` replace the defaults of the same name (`--ca-address`,
/// `--inbound-port`, ...). Returned once ready (certificate and config).
pub async fn sidecar_process(
    cp: &ApiClient,
    xds_url: &str,
    dir: &TempDir,
    service: &str,
    app_port: Option<u16>,
    extra: &[&str],
) -> ProxyProcess {
    let node = match app_port {
        Some(port) => format!("{service}-{port}"),
        None => format!("{service}-sidecar"),
    };
    let token = dir.write(&format!("{node}.token"), &join_token(cp, service).await);
    let mut args = vec!["--identity-token".to_owned(), token.display().to_string()];
    args.extend(["--ca-address".to_owned(), format!("http://{}", cp.api)]);
    if let Some(port) = app_port {
        args.extend(["--app-port".to_owned(), port.to_string()]);
    }
    let mut kept = Vec::new();
    for pair in args.chunks(2) {
        if !extra.contains(&pair[0].as_str()) {
            kept.extend_from_slice(pair);
        }
    }
    kept.extend(extra.iter().map(|s| (*s).to_owned()));
    let p = ProxyProcess::spawn(binary::xds_proxy_command(xds_url, &node, service, &kept)).await;
    p.wait_ready().await;
    p
}

/// Wait until the control plane serves `n` meshed endpoints of `service` to `sidecar`.
pub async fn wait_meshed_endpoints(sidecar: &Sidecar, service: &str, n: usize) {
    wait_meshed_endpoints_at(sidecar.admin, service, n).await;
}

/// [`wait_meshed_endpoints`] for the sidecar whose admin port is `admin` (e.g. a process).
pub async fn wait_meshed_endpoints_at(admin: SocketAddr, service: &str, n: usize) {
    let c = client::http1(admin);
    wait::wait_until(&format!("{n} meshed endpoints of {service}"), || async {
        let r = client::send(&c, client::get("http://admin/config_dump")).await;
        let Ok(dump) = serde_json::from_slice::<Value>(&r.body) else { return false };
        let Some(clas) = dump["config"]["endpoints"]["resources"].as_array() else { return false };
        clas.iter()
            .filter(|c| c["cluster_name"].as_str().is_some_and(|n| n.ends_with(&format!("||{service}"))))
            .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["identity"].is_string())
            .count()
            == n
    })
    .await;
}

/// A certificate store holding a real mesh certificate for `default/<sa>` (issued through the
/// control plane's API with a join token) and the control plane's trust bundle.
pub async fn mesh_store(cp: &ApiClient, service_account: &str) -> std::sync::Arc<outrider_proxy::tls::CertStore> {
    use outrider_proxy::tls::{self, CertStore, Identity, TrustBundle};
    let bundle = cp.call("GET", "/v1/ca/bundle", "", false, None).await.json;
    let roots: Vec<String> =
        bundle["roots"].as_array().expect("roots").iter().map(|r| r.as_str().expect("PEM").to_owned()).collect();
    let own = Identity::parse(&identity(service_account)).expect("an identity");
    let bundle = TrustBundle::from_pem(roots.iter().map(String::as_str)).expect("bundle");
    let store = std::sync::Arc::new(CertStore::new(own.clone(), bundle));
    let key = tls::new_key_and_csr(&own).expect("a key");
    let chain = issue(cp, service_account, &key.csr_pem).await;
    store.install(key, &chain).expect("installed");
    store
}

/// `POST /v1/certificates` with a join token for `default/<sa>`: the issued chain (PEM, leaf
/// first).
async fn issue(cp: &ApiClient, service_account: &str, csr_pem: &str) -> Vec<String> {
    let token = join_token(cp, service_account).await;
    let req = http::Request::builder()
        .method("POST")
        .uri("http://cp/v1/certificates")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(json!({"csr": csr_pem}).to_string())))
        .expect("a request");
    let reply = client::send(&client::cp_api(cp.api), req).await;
    assert_eq!(reply.status, 200, "issuance failed: {}", reply.text());
    let issued: Value = serde_json::from_slice(&reply.body).expect("JSON");
    issued["certificateChain"]
        .as_array()
        .expect("a chain")
        .iter()
        .map(|c| c.as_str().expect("PEM").to_owned())
        .collect()
}

/// PEM files of a real mesh certificate for `default/<sa>`, for a peer of another stack:
/// `(chain, key, roots)` written into `dir` as `<sa>.pem`, `<sa>.key` (PKCS#8) and
/// `roots.pem`. The key is generated here (ECDSA P-256, as the proxy's), the CSR issued through
/// the control plane's API with a join token, as for [`mesh_store`].
pub async fn mesh_pem_files(
    cp: &ApiClient,
    service_account: &str,
    dir: &TempDir,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity(service_account).try_into().expect("an IA5 string"))];
    let csr = params.serialize_request(&key).expect("a CSR").pem().expect("PEM");
    let chain = issue(cp, service_account, &csr).await;
    let bundle = cp.call("GET", "/v1/ca/bundle", "", false, None).await.json;
    let roots: Vec<&str> =
        bundle["roots"].as_array().expect("roots").iter().map(|r| r.as_str().expect("PEM")).collect();
    (
        dir.write(&format!("{service_account}.pem"), &chain.concat()),
        dir.write(&format!("{service_account}.key"), &key.serialize_pem()),
        dir.write("roots.pem", &roots.concat()),
    )
}

/// A rustls client config with a real mesh certificate for `default/<sa>` ([`mesh_store`]),
/// expecting the server to be `server_sa`, offering `alpn`. Stands in for a peer proxy when a
/// test needs raw control of the connection.
pub async fn mesh_client(
    cp: &ApiClient,
    service_account: &str,
    server_sa: &str,
    alpn: &[u8],
) -> std::sync::Arc<rustls::ClientConfig> {
    use outrider_proxy::tls::{self, Identity};
    let store = mesh_store(cp, service_account).await;
    tls::client_config_alpn(store, Identity::parse(&identity(server_sa)).expect("an identity"), alpn).expect("a config")
}

/// TLS to `addr` with `config`; `Err` with the reason when the handshake fails.
pub async fn tls_connect(
    config: std::sync::Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())
}

/// Wait until `sidecar` holds the inbound listener of `service` and `check` accepts its
/// `/config_dump` view (`mtls`, `authorization`).
pub async fn wait_inbound(sidecar: &Sidecar, service: &str, check: impl Fn(&Value) -> bool) {
    let name = format!("inbound|{service}");
    wait::wait_until(&format!("the inbound listener {name}"), || async {
        let dump = sidecar.config_dump().await;
        dump["config"]["listeners"]["resources"]
            .as_array()
            .is_some_and(|ls| ls.iter().any(|l| l["name"] == name.as_str() && check(l)))
    })
    .await;
}
