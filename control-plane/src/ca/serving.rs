//! The control plane's own TLS (`--tls`): a serving certificate issued by its own CA for
//! `spiffe://<td>/ns/outrider-system/sa/control-plane` (plus DNS and IP SANs so clients can check
//! it by host name), renewed like a workload certificate, and the rustls configs of the API
//! (`http/1.1`) and xDS (`h2`) listeners: TLS 1.3, client certificates optional and, when
//! presented, verified against the trust bundle and required to carry a SPIFFE identity.
//!
//! The certificate lives in the proxy's [`CertStore`], so handshakes pick up a renewal at once
//! and open connections are untouched.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use outrider_proxy::backoff::ExponentialBackoff;
use outrider_proxy::tls::{self, CertStore, Identity as SpiffeId, Mode, TlsError, TrustBundle, rotate};
use rcgen::SanType;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Ca, CaError, Identity};

/// Namespace of the control plane's own identity.
pub const CONTROL_PLANE_NAMESPACE: &str = "outrider-system";
/// Service account of the control plane's own identity.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "control-plane";
/// A TLS handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control plane cannot serve TLS.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("--tls-san {0:?}: not a DNS name or IP address")]
    BadSan(String),
    #[error("control plane certificate: {0}")]
    Ca(#[from] CaError),
    #[error("control plane certificate: {0}")]
    Tls(#[from] TlsError),
}

/// The verified SPIFFE identity of a TLS client, put into each request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity(pub SpiffeId);

/// The serving certificate and the listeners' TLS configs.
#[derive(Clone)]
pub struct ServingTls {
    store: Arc<CertStore>,
    issuer: LocalIssuer,
    /// For the API: ALPN `http/1.1`.
    pub api: TlsAcceptor,
    /// For xDS: ALPN `h2`.
    pub xds: TlsAcceptor,
}

/// The SANs of the serving certificate besides its SPIFFE ID: `localhost`, 127.0.0.1, ::1, the
/// bind address when it is a specific one, and every `--tls-san` (an IP or a DNS name).
pub fn serving_sans(bind: IpAddr, extra: &[String]) -> Result<Vec<SanType>, ServingError> {
    let mut sans = vec![
        SanType::DnsName("localhost".try_into().map_err(|_| ServingError::BadSan("localhost".into()))?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
    ];
    if !bind.is_unspecified() && !bind.is_loopback() {
        sans.push(SanType::IpAddress(bind));
    }
    for name in extra {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if valid_dns_name(name) => {
                SanType::DnsName(name.as_str().try_into().map_err(|_| ServingError::BadSan(name.clone()))?)
            }
            Err(_) => return Err(ServingError::BadSan(name.clone())),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        })
}

impl std::fmt::Debug for ServingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingTls").field("identity", self.store.identity()).finish_non_exhaustive()
    }
}

impl ServingTls {
    /// Issues the first serving certificate (valid `ttl`) and builds the configs.
    pub fn new(ca: Arc<Ca>, sans: Vec<SanType>, ttl: Duration) -> Result<Self, ServingError> {
        let identity = Identity::new(CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT)?;
        let spiffe = SpiffeId::parse(&identity.spiffe_id(ca.trust_domain()))?;
        let bundle = TrustBundle::from_pem(ca.trust_bundle().roots.iter().map(String::as_str))?;
        let store = Arc::new(CertStore::new(spiffe, bundle));
        let issuer = LocalIssuer { ca, identity, sans: Arc::new(sans), ttl };
        let key = tls::new_key_and_csr(store.identity())?;
        let chain = issuer.issue_now(&key.csr_pem)?;
        store.install(key, &chain)?;
        let base = tls::server_config(store.clone(), Mode::Permissive)?;
        let with_alpn = |alpn: &[u8]| {
            let mut config = (*base).clone();
            config.alpn_protocols = vec![alpn.to_vec()];
            TlsAcceptor::from(Arc::new(config))
        };
        Ok(Self { api: with_alpn(b"http/1.1"), xds: with_alpn(b"h2"), store, issuer })
    }

    /// The current serving certificate's identity and expiry, for logs.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// Renews the certificate at 50–80 % of its lifetime, forever (retries with backoff).
    pub fn rotate(&self) -> impl Future<Output = ()> + Send + 'static {
        let backoff = ExponentialBackoff::new(Duration::from_millis(500), Duration::from_secs(30));
        rotate::run(self.store.clone(), self.issuer.clone(), backoff)
    }
}

/// Issues the control plane's certificate from its own CA, in-process.
#[derive(Clone, Debug)]
struct LocalIssuer {
    ca: Arc<Ca>,
    identity: Identity,
    sans: Arc<Vec<SanType>>,
    ttl: Duration,
}

impl LocalIssuer {
    fn issue_now(&self, csr_pem: &str) -> Result<Vec<String>, CaError> {
        Ok(self.ca.issue_with_sans(csr_pem, &self.identity, self.sans.as_ref().clone(), self.ttl)?.chain_pem)
    }
}

impl rotate::CertIssuer for LocalIssuer {
    fn issue(&self, csr_pem: String) -> impl Future<Output = Result<Vec<String>, TlsError>> + Send {
        let result = self.issue_now(&csr_pem).map_err(|e| TlsError::Issue(e.to_string()));
        std::future::ready(result)
    }
}

/// Completes the TLS handshake of an accepted connection (bounded by [`HANDSHAKE_TIMEOUT`]);
/// returns the stream and the client's verified identity, if it presented a certificate.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> Result<(TlsStream<TcpStream>, Option<PeerIdentity>), std::io::Error> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let peer = tls::peer_identity(stream.get_ref().1).map(PeerIdentity);
    Ok((stream, peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaConfig, TrustDomain};

    #[test]
    fn sans_take_ips_and_dns_names_and_refuse_the_rest() {
        let sans = serving_sans(IpAddr::from([10, 0, 0, 5]), &["cp.mesh.internal".into(), "192.0.2.1".into()]).unwrap();
        assert!(sans.contains(&SanType::IpAddress(IpAddr::from([10, 0, 0, 5]))));
        assert!(sans.contains(&SanType::IpAddress(IpAddr::from([192, 0, 2, 1]))));
        assert!(sans.contains(&SanType::DnsName("cp.mesh.internal".try_into().unwrap())));
        assert!(sans.contains(&SanType::DnsName("localhost".try_into().unwrap())));
        assert!(matches!(
            serving_sans(IpAddr::from([127, 0, 0, 1]), &["not a name".into()]),
            Err(ServingError::BadSan(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_serving_certificate_is_for_the_control_plane_and_rotates() {
        let dir = std::env::temp_dir().join(format!("outrider-serving-{}-{}", std::process::id(), fastrand::u64(..)));
        let ca = Arc::new(Ca::open(CaConfig::new(TrustDomain::new("outrider.local").unwrap(), &dir)).unwrap());
        let tls = ServingTls::new(ca, serving_sans(IpAddr::from([127, 0, 0, 1]), &[]).unwrap(), Duration::from_secs(2))
            .unwrap();
        assert_eq!(tls.store().identity().as_str(), "spiffe://outrider.local/ns/outrider-system/sa/control-plane");
        assert_eq!(tls.store().installs(), 1);
        let rotation = tokio::spawn(tls.rotate());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tls.store().installs() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rotation.abort();
        assert!(tls.store().installs() >= 2, "renewed before expiry");
        let _ = std::fs::remove_dir_all(dir);
    }
}
