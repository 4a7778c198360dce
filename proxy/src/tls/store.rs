//! The proxy's certificate, key and trust bundle, swapped atomically.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

use super::{Identity, KeyAndCsr, TlsError, identity_of, provider};

/// Roots this proxy trusts (old + new during a root rotation), with the client-certificate
/// verifier built from them once, not per handshake.
#[derive(Debug)]
pub struct TrustBundle {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    len: usize,
}

impl TrustBundle {
    /// Parses every CERTIFICATE block of each PEM text.
    pub fn from_pem<'a>(pems: impl IntoIterator<Item = &'a str>) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for pem in pems {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| TlsError::BadBundle(e.to_string()))?;
                roots.add(cert).map_err(|e| TlsError::BadBundle(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError::BadBundle("no CERTIFICATE block".to_owned()));
        }
        let len = roots.len();
        let roots = Arc::new(roots);
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            // Optional at this layer; `Mode::Strict` makes it mandatory in the wrapper.
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::BadBundle(e.to_string()))?;
        Ok(Self { roots, client_verifier, len })
    }

    /// Number of trusted roots.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The certificate currently presented, and when to replace it.
#[derive(Debug)]
pub(crate) struct Leaf {
    pub(crate) certified: Arc<CertifiedKey>,
    /// The chain as installed (PEM), for renewal requests.
    pub(crate) chain_pem: Vec<String>,
    pub(crate) not_after: SystemTime,
    pub(crate) rotate_at: SystemTime,
    /// The leaf's serial number (lower-case hex), to tell certificates apart.
    pub(crate) serial: String,
}

/// Current certificate + key + trust bundle. Handshakes read it through the resolvers and
/// verifiers in [`super::config`], so [`CertStore::install`] and [`CertStore::set_bundle`] take
/// effect on the next handshake.
#[derive(Debug)]
pub struct CertStore {
    identity: Identity,
    leaf: ArcSwap<Option<Leaf>>,
    bundle: ArcSwap<TrustBundle>,
    installs: AtomicU64,
}

impl CertStore {
    /// A store for `identity` with no certificate yet (handshakes fail until [`Self::install`]).
    pub fn new(identity: Identity, bundle: TrustBundle) -> Self {
        Self {
            identity,
            leaf: ArcSwap::from_pointee(None),
            bundle: ArcSwap::from_pointee(bundle),
            installs: AtomicU64::new(0),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Installs a certificate chain (PEM, leaf first) for the key generated with the CSR.
    /// Refuses a chain whose leaf is for another identity or another key, or that does not
    /// verify against the current trust bundle.
    pub fn install(&self, key: KeyAndCsr, chain_pem: &[String]) -> Result<(), TlsError> {
        let mut chain = Vec::new();
        for pem in chain_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(cert.map_err(|e| TlsError::BadChain(e.to_string()))?);
            }
        }
        let leaf = chain.first().ok_or_else(|| TlsError::BadChain("no CERTIFICATE block".to_owned()))?;
        let got = identity_of(leaf)?;
        if got != self.identity {
            return Err(TlsError::WrongIdentity { expected: self.identity.clone(), got });
        }
        let (not_before, not_after, serial) = validity(leaf)?;
        super::config::verify_chain(&self.bundle.load().roots, &chain, &self.identity)
            .map_err(|e| TlsError::BadChain(format!("does not verify against the trust bundle: {e}")))?;
        let certified = CertifiedKey::from_der(chain, key.into_key(), &provider())
            .map_err(|e| TlsError::KeyMismatch(e.to_string()))?;
        let now = SystemTime::now();
        let rotate_at = rotate_at(not_before.max(now), not_after, fastrand::f64());
        let chain_pem = chain_pem.to_vec();
        self.leaf.store(Arc::new(Some(Leaf {
            certified: Arc::new(certified),
            chain_pem,
            not_after,
            rotate_at,
            serial,
        })));
        self.installs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(identity = %self.identity, expires_in_s = self.expiry_seconds(), "installed TLS certificate");
        Ok(())
    }

    /// Replaces the trust bundle (root rotation). Existing connections are not affected.
    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Arc::new(bundle));
    }

    pub(crate) fn bundle(&self) -> arc_swap::Guard<Arc<TrustBundle>> {
        self.bundle.load()
    }

    pub(crate) fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.leaf.load().as_ref().as_ref().map(|leaf| leaf.certified.clone())
    }

    /// Proof for a renewal without a join token: the current chain (PEM) and a signature over
    /// `message` (the new CSR's DER) by the current key (ECDSA P-256, SHA-256, ASN.1 DER).
    /// `None` without a certificate or once it has expired (then only a token helps).
    pub fn renewal_proof(&self, message: &[u8]) -> Option<(Vec<String>, Vec<u8>)> {
        let leaf = self.leaf.load();
        let leaf = leaf.as_ref().as_ref()?;
        if leaf.not_after <= SystemTime::now() {
            return None;
        }
        let signer = leaf.certified.key.choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])?;
        let signature = signer.sign(message).ok()?;
        Some((leaf.chain_pem.clone(), signature))
    }

    /// Whether a certificate is installed (the proxy is not ready before).
    pub fn has_certificate(&self) -> bool {
        self.leaf.load().is_some()
    }

    /// When to renew: a random point between 50% and 80% of the current certificate's
    /// lifetime, fixed at install. `None` without a certificate.
    pub fn rotate_at(&self) -> Option<SystemTime> {
        self.leaf.load().as_ref().as_ref().map(|leaf| leaf.rotate_at)
    }

    /// The current certificate's serial number (lower-case hex). `None` without a certificate.
    pub fn serial(&self) -> Option<String> {
        self.leaf.load().as_ref().as_ref().map(|leaf| leaf.serial.clone())
    }

    pub fn not_after(&self) -> Option<SystemTime> {
        self.leaf.load().as_ref().as_ref().map(|leaf| leaf.not_after)
    }

    /// Seconds until the current certificate expires (negative once expired, 0 without one):
    /// the value of `outrider_tls_certificate_expiry_seconds`.
    pub fn expiry_seconds(&self) -> f64 {
        let Some(not_after) = self.not_after() else { return 0.0 };
        match not_after.duration_since(SystemTime::now()) {
            Ok(left) => left.as_secs_f64(),
            Err(past) => -past.duration().as_secs_f64(),
        }
    }

    /// How many certificates have been installed (the first one plus every rotation).
    pub fn installs(&self) -> u64 {
        self.installs.load(Ordering::Relaxed)
    }
}

/// `start + (50% + 30% × jitter) × (not_after − start)`, jitter in `[0, 1)`.
pub(crate) fn rotate_at(start: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = not_after.duration_since(start).unwrap_or(Duration::ZERO);
    start + lifetime.mul_f64(0.5 + 0.3 * jitter.clamp(0.0, 1.0))
}

fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime, String), TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| TlsError::BadChain(e.to_string()))?;
    let at = |ts: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0));
    let mut serial = String::with_capacity(2 * parsed.raw_serial().len());
    for b in parsed.raw_serial() {
        serial.push_str(&format!("{b:02x}"));
    }
    Ok((at(parsed.validity().not_before.timestamp()), at(parsed.validity().not_after.timestamp()), serial))
}
