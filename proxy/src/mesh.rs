//! The proxy's place in the mesh: its workload certificate (obtained from the control plane's
//! CA before `/ready`, renewed before expiry) and the TLS configs built on it — one server config
//! for the inbound side, client configs per destination identity for the outbound side.
//!
//! Certificate issuance is an HTTP(S) call to the control plane's API (`--ca-address`, default
//! the xDS host on port 15014): `GET /v1/ca/bundle` for the trust domain and roots, then
//! `POST /v1/certificates` with a CSR. The first request is authenticated by the join token
//! (`--identity-token FILE`); renewals by a signature with the current key over the new CSR, so
//! a proxy keeps its identity after its token expires.

mod ca_client;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use http::Uri;
use parking_lot::Mutex;
use rustls::ClientConfig;

use crate::backoff::ExponentialBackoff;
use crate::tls::stream::Acceptor;
use crate::tls::{self, CertStore, Identity, TlsError, TrustBundle};

pub use ca_client::CaClient;

/// Namespace and service account of the control plane's own identity.
pub const CONTROL_PLANE_NAMESPACE: &str = "outrider-system";
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "control-plane";

/// How this proxy gets its identity.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// The control plane's API, e.g. `http://127.0.0.1:15014`.
    pub ca: Uri,
    /// File holding the join token.
    pub token_file: PathBuf,
    pub namespace: String,
    pub service_account: String,
    /// PEM roots to verify an `https` CA address (the mesh root, e.g. the control plane's
    /// `root.pem`); without it only `http` is accepted.
    pub ca_root: Option<CaRoots>,
}

/// Where the roots that verify an `https` CA address come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaRoots {
    /// A PEM file (`--ca-root`).
    File(PathBuf),
    /// PEM text (`--ca-root-pem`, set by the Kubernetes injector).
    Pem(String),
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot read the identity token {path}: {source}")]
    Token { path: PathBuf, source: std::io::Error },
    #[error("certificate authority at {ca}: {reason}")]
    Ca { ca: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Which kind of connection a client config is for (its ALPN id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Carry {
    /// HTTP of any version over one multiplexed HTTP/2 connection.
    Http2,
    /// One HTTP/1.1 connection (upgrades).
    Http1,
    /// Opaque TCP.
    Tcp,
}

impl Carry {
    fn alpn(self) -> &'static [u8] {
        match self {
            Carry::Http2 => tls::ALPN_OUTRIDER,
            Carry::Http1 => tls::ALPN_OUTRIDER_HTTP1,
            Carry::Tcp => tls::ALPN_OUTRIDER_TCP,
        }
    }
}

/// This proxy's certificate and TLS configs.
pub struct Mesh {
    pub certs: Arc<CertStore>,
    acceptor: Acceptor,
    hbone_acceptor: Acceptor,
    clients: Mutex<HashMap<(Identity, Carry), Arc<ClientConfig>>>,
    /// HBONE connections of this identity to other workloads.
    pub hbone: crate::hbone::client::Pool,
}

/// This proxy's [`Mesh`] once its first certificate is installed; empty before (and for a
/// proxy without `--identity-token`). One atomic load per use.
pub type MeshHandle = Arc<arc_swap::ArcSwapOption<Mesh>>;

/// The mTLS target for an endpoint: only when the endpoint is meshed (has an identity) and this
/// proxy has one too; otherwise plaintext.
pub fn target(mesh: &MeshHandle, endpoint: Option<&Identity>) -> Option<MeshTarget> {
    let identity = endpoint?;
    let mesh = mesh.load_full()?;
    Some(MeshTarget { mesh, identity: identity.clone(), hbone: None })
}

/// [`target`] for an endpoint: over HBONE when the endpoint is reached that way (an ambient
/// workload), with `source` sent as the tunnel's `forwarded` address.
pub fn endpoint_target(
    mesh: &MeshHandle,
    endpoint: &crate::state::Endpoint,
    source: Option<std::net::SocketAddr>,
) -> Option<MeshTarget> {
    let mut t = target(mesh, endpoint.identity.as_ref())?;
    if endpoint.hbone {
        t.hbone = Some(Tunnel { source });
    }
    Some(t)
}

/// Where a meshed upstream connection goes: the expected identity and what it carries.
#[derive(Clone, Debug)]
pub struct MeshTarget {
    pub mesh: Arc<Mesh>,
    pub identity: Identity,
    /// Reached over HBONE (`IP:15008`, HTTP/2 CONNECT) rather than Outrider's mTLS ALPN ids.
    pub hbone: Option<Tunnel>,
}

/// An HBONE hop: what the `CONNECT` says besides the target.
#[derive(Clone, Copy, Debug)]
pub struct Tunnel {
    /// The caller's address (`forwarded: for=`).
    pub source: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("identity", self.identity()).finish_non_exhaustive()
    }
}

impl Mesh {
    pub fn new(certs: Arc<CertStore>) -> Result<Self, TlsError> {
        // Client certificates are always required on the mesh ALPN ids: a proxy without an
        // identity talks plaintext, which the listener accepts in permissive mode only.
        let server = tls::server_config(certs.clone(), tls::Mode::Strict)?;
        let hbone = tls::hbone_server_config(certs.clone())?;
        Ok(Self {
            hbone: crate::hbone::client::Pool::new(certs.clone()),
            certs,
            acceptor: Acceptor::from(server),
            hbone_acceptor: Acceptor::from(hbone),
            clients: Mutex::default(),
        })
    }

    pub fn identity(&self) -> &Identity {
        self.certs.identity()
    }

    pub fn acceptor(&self) -> &Acceptor {
        &self.acceptor
    }

    /// The HBONE server (port 15008) with this identity's certificate.
    pub fn hbone_acceptor(&self) -> &Acceptor {
        &self.hbone_acceptor
    }

    /// The control plane's SPIFFE ID in this proxy's trust domain (its serving certificate).
    pub fn control_plane_identity(&self) -> Result<Identity, TlsError> {
        Identity::workload(self.identity().trust_domain(), CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT)
    }

    /// mTLS to the control plane's xDS port (gRPC: ALPN h2).
    pub fn xds_client(&self) -> Result<Arc<ClientConfig>, TlsError> {
        tls::client_config_alpn(self.certs.clone(), self.control_plane_identity()?, b"h2")
    }

    /// The client config for connections to `expected` (built once per identity and kind).
    pub fn client(&self, expected: &Identity, carry: Carry) -> Result<Arc<ClientConfig>, TlsError> {
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(&(expected.clone(), carry)) {
            return Ok(c.clone());
        }
        let config = tls::client_config_alpn(self.certs.clone(), expected.clone(), carry.alpn())?;
        clients.insert((expected.clone(), carry), config.clone());
        Ok(config)
    }
}

/// Gets the first certificate: the trust bundle and trust domain from the CA, then a
/// certificate for `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
pub async fn bootstrap(config: &IdentityConfig) -> Result<(Arc<Mesh>, HttpIssuer), MeshError> {
    let client = CaClient::new(config.ca.clone(), config.ca_root.as_ref())?;
    if client.is_plaintext() && !config.ca.host().is_some_and(is_loopback) {
        tracing::warn!(
            ca = %config.ca,
            "the CA address is plain http and not loopback: the join token and the trust bundle travel in clear; use https with --ca-root"
        );
    }
    let (trust_domain, roots) = client.bundle().await?;
    let identity = Identity::workload(&trust_domain, &config.namespace, &config.service_account)?;
    let bundle = TrustBundle::from_pem(roots.iter().map(String::as_str))?;
    let certs = Arc::new(CertStore::new(identity, bundle));
    let issuer = HttpIssuer { client, token_file: config.token_file.clone(), certs: certs.clone() };
    tls::rotate::renew(&certs, &issuer).await?;
    Ok((Arc::new(Mesh::new(certs)?), issuer))
}

/// [`bootstrap`] until it succeeds, with the shared backoff (the proxy stays unready).
pub async fn bootstrap_retrying(config: &IdentityConfig) -> (Arc<Mesh>, HttpIssuer) {
    let backoff = ExponentialBackoff::new(std::time::Duration::from_millis(100), std::time::Duration::from_secs(10));
    let mut failures = 0u32;
    loop {
        match bootstrap(config).await {
            Ok(done) => {
                tracing::info!(identity = %done.0.identity(), "workload identity ready");
                return done;
            }
            Err(error) => {
                tracing::warn!(%error, failures, "cannot get a workload certificate yet; retrying");
                tokio::time::sleep(backoff.delay(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// Issues through the control plane: by renewal proof while the current certificate is valid,
/// else by join token. Each answer's trust bundle replaces the proxy's (root rotation).
#[derive(Debug)]
pub struct HttpIssuer {
    client: CaClient,
    /// Read at each use, so a replaced token file is picked up.
    token_file: PathBuf,
    certs: Arc<CertStore>,
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn read_token(path: &std::path::Path) -> Result<String, TlsError> {
    outrider_xds::join_token::read(path).map_err(|e| TlsError::Issue(e.to_string()))
}

impl tls::rotate::CertIssuer for HttpIssuer {
    async fn issue(&self, csr_pem: String) -> Result<Vec<String>, TlsError> {
        use rustls::pki_types::CertificateSigningRequestDer;
        use rustls::pki_types::pem::PemObject as _;
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| TlsError::Issue(format!("our own CSR is not PEM: {e}")))?;
        let proof = self.certs.renewal_proof(der.as_ref());
        let issued = match proof {
            Some((chain, signature)) => self.client.renew(&csr_pem, &chain, &signature).await,
            None => self.client.issue(&csr_pem, &read_token(&self.token_file)?).await,
        }
        .map_err(|e| TlsError::Issue(e.to_string()))?;
        if !issued.trust_bundle.is_empty() {
            self.certs.set_bundle(TrustBundle::from_pem(issued.trust_bundle.iter().map(String::as_str))?);
        }
        Ok(issued.chain)
    }
}
