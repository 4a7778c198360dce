//! Workload identity and mutual TLS between proxies.
//!
//! - [`Identity`]: a SPIFFE ID, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//! - [`new_key_and_csr`]: the private key is generated here and never leaves the proxy; only
//!   the CSR goes to the control plane's CA.
//! - [`CertStore`]: the current certificate chain + key and the trust bundle, each behind an
//!   `ArcSwap`, so a rotation or a new bundle applies to the next handshake without rebuilding
//!   configs or touching established connections.
//! - [`server_config`] / [`client_config`]: TLS 1.3 only, ALPN `outrider/1` (HTTP over h2),
//!   `outrider-http1/1` (HTTP/1.1 upgrades), `outrider-tcp/1` (opaque TCP);
//!   the client checks the chain against the bundle *and* that the server's URI SAN is the
//!   destination's expected identity.
//! - [`rotate`]: obtain and renew the certificate through a [`rotate::CertIssuer`].
//! - [`stream`]: the TLS stream of the data path, which holds no buffer while idle.
//!
//! [`crate::mesh`] puts these on the data path.

mod config;
/// Certificate renewal before expiry.
pub mod rotate;
mod store;
/// A TLS stream over rustls' unbuffered API (no buffer held while idle).
pub mod stream;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use config::{
    ExpectedServerIdentity, client_config, client_config_alpn, hbone_client_config, hbone_server_config, server_config,
};
pub use store::{CertStore, TrustBundle};

/// ALPN id that tells the peer it is talking to another Outrider proxy, carrying HTTP over h2.
pub const ALPN_OUTRIDER: &[u8] = outrider_xds::resources::ALPN_MESH_H2.as_bytes();
/// ALPN id for one HTTP/1.1 connection between proxies (upgrades such as WebSocket).
pub const ALPN_OUTRIDER_HTTP1: &[u8] = outrider_xds::resources::ALPN_MESH_HTTP1.as_bytes();
/// ALPN id for opaque TCP between proxies.
pub const ALPN_OUTRIDER_TCP: &[u8] = outrider_xds::resources::ALPN_MESH_TCP.as_bytes();
/// The one ALPN id of HBONE (port 15008).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN ids the server accepts: the Outrider ones only (other TLS is the application's own).
pub const ALPN_PROTOCOLS: [&[u8]; 3] = [ALPN_OUTRIDER, ALPN_OUTRIDER_HTTP1, ALPN_OUTRIDER_TCP];

/// Errors of identity parsing, key and certificate handling, and TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidIdentity { id: String, reason: &'static str },
    #[error("cannot generate a key or CSR: {0}")]
    KeyGeneration(String),
    #[error("certificate chain is empty or not PEM: {0}")]
    BadChain(String),
    #[error("certificate has no usable SPIFFE URI SAN: {0}")]
    NoIdentity(String),
    #[error(
        "certificate is for {got}, but this proxy's identity is {expected}; check the token given to --identity-token"
    )]
    WrongIdentity { expected: Identity, got: Identity },
    #[error("certificate does not match the private key: {0}")]
    KeyMismatch(String),
    #[error("trust bundle has no usable root: {0}")]
    BadBundle(String),
    #[error("building the TLS configuration: {0}")]
    Config(String),
    #[error("certificate issuance failed: {0}")]
    Issue(String),
}

/// A workload's SPIFFE ID. Compared and hashed as the full URI.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<str>);

impl Identity {
    /// Parses and validates a SPIFFE ID (spec: lowercase trust domain; path segments of
    /// `[A-Za-z0-9._-]`, not `.` or `..`; no query, fragment, port or user info).
    pub fn parse(id: &str) -> Result<Self, TlsError> {
        let bad = |reason| TlsError::InvalidIdentity { id: id.to_owned(), reason };
        let rest = id.strip_prefix("spiffe://").ok_or_else(|| bad("must start with spiffe://"))?;
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if domain.is_empty() || domain.len() > 255 {
            return Err(bad("trust domain is empty or too long"));
        }
        if !domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)) {
            return Err(bad("trust domain may only hold lowercase letters, digits, '.', '-' and '_'"));
        }
        if path.is_empty() {
            return Err(bad("a workload ID needs a path (/ns/<ns>/sa/<sa>)"));
        }
        for segment in path.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(bad("path segments may not be empty, '.' or '..'"));
            }
            if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
                return Err(bad("path segments may only hold letters, digits, '.', '-' and '_'"));
            }
        }
        if id.len() > 2048 {
            return Err(bad("longer than 2048 bytes"));
        }
        Ok(Self(id.into()))
    }

    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`, validated.
    pub fn workload(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, TlsError> {
        Self::parse(&format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn trust_domain(&self) -> &str {
        let rest = &self.0["spiffe://".len()..];
        rest.split_once('/').map_or(rest, |(d, _)| d)
    }

    /// `(namespace, service_account)` when the path is `/ns/<ns>/sa/<sa>`.
    /// `NAMESPACE/SERVICE_ACCOUNT`, as node mode names workloads (a new string: made once per
    /// connection or snapshot, not per request). `None` for an ID not of that form.
    pub fn workload_name(&self) -> Option<Arc<str>> {
        let (ns, sa) = self.namespace_and_service_account()?;
        Some(Arc::from(format!("{ns}/{sa}")))
    }

    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let path = &self.0["spiffe://".len() + self.trust_domain().len()..];
        let mut it = path.strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.0)
    }
}

impl std::str::FromStr for Identity {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A freshly generated private key (ECDSA P-256) with the CSR to send to the CA.
pub struct KeyAndCsr {
    key: PrivateKeyDer<'static>,
    /// PEM PKCS#10, self-signed by the key. Carries `identity` as URI SAN for information only:
    /// the CA writes the identity bound to the caller's credential, whatever the CSR says.
    pub csr_pem: String,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr").field("csr_pem", &self.csr_pem).finish_non_exhaustive()
    }
}

impl KeyAndCsr {
    /// Hands the key over to a [`CertStore`]; the only way to get it out of this value.
    pub(crate) fn into_key(self) -> PrivateKeyDer<'static> {
        self.key
    }
}

/// Generates a key pair and a CSR asking for `identity`.
pub fn new_key_and_csr(identity: &Identity) -> Result<KeyAndCsr, TlsError> {
    let fail = |e: rcgen::Error| TlsError::KeyGeneration(e.to_string());
    let key = KeyPair::generate().map_err(fail)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.as_str().to_owned().try_into().map_err(fail)?)];
    let csr_pem = params.serialize_request(&key).map_err(fail)?.pem().map_err(fail)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(KeyAndCsr { key, csr_pem })
}

/// The single SPIFFE URI SAN of a certificate (SPIFFE X.509-SVID: exactly one).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::NoIdentity(format!("not an X.509 certificate: {e}")))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::NoIdentity(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| TlsError::NoIdentity("no subjectAltName extension".to_owned()))?;
    let mut uris = san.value.general_names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => Identity::parse(uri),
        (None, _) => Err(TlsError::NoIdentity("no URI SAN".to_owned())),
        (Some(_), Some(_)) => Err(TlsError::NoIdentity("more than one URI SAN".to_owned())),
    }
}

/// The verified identity of the peer of an established connection (client or server side),
/// or `None` if it presented no certificate (permissive mode).
///
/// Takes the connection's common state: `tls_stream.get_ref().1` derefs to it.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<Identity> {
    conn.peer_certificates().and_then(|chain| chain.first()).and_then(|leaf| identity_of(leaf).ok())
}

/// Whether the peer negotiated an Outrider ALPN id, i.e. is another Outrider proxy.
pub fn peer_is_proxy(conn: &rustls::CommonState) -> bool {
    conn.alpn_protocol().is_some_and(|p| ALPN_PROTOCOLS.contains(&p))
}

/// Inbound mTLS mode of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Accept TLS with or without a client certificate (and, at the listener, plaintext).
    #[default]
    Permissive,
    /// A client certificate from the trust bundle is required.
    Strict,
}

/// HBONE's provider: `ring` with the TLS 1.3 AES-GCM suites only (AES-256 first), as Istio's
/// ztunnel offers them.
pub fn hbone_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(rustls::crypto::CryptoProvider {
                cipher_suites: vec![
                    rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
                    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
                ],
                ..rustls::crypto::ring::default_provider()
            })
        })
        .clone()
}

/// The rustls crypto provider used everywhere: `ring`.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}
