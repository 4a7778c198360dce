use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::store::rotate_at;
use super::*;

/// A throwaway CA for unit tests (the real one is `outrider_control_plane::ca`, used by the
/// integration tests in tests/tests/tls.rs).
pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key).unwrap().pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    pub(crate) fn sign(&self, csr_pem: &str, uri: &str, not_before: SystemTime, not_after: SystemTime) -> Vec<String> {
        self.sign_with_usages(
            csr_pem,
            uri,
            not_before,
            not_after,
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    /// [`TestCa::sign`] with the given extended key usages.
    pub(crate) fn sign_with_usages(
        &self,
        csr_pem: &str,
        uri: &str,
        not_before: SystemTime,
        not_after: SystemTime,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Vec<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.to_owned().try_into().unwrap())];
        params.extended_key_usages = usages;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        vec![params.signed_by(&csr.public_key, &self.issuer).unwrap().pem()]
    }

    /// A store for `uri` holding a certificate valid for the next hour, with `usages`.
    pub(crate) fn store_with_usages(
        &self,
        uri: &str,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> std::sync::Arc<CertStore> {
        let store = CertStore::new(Identity::parse(uri).unwrap(), self.bundle());
        let key = new_key_and_csr(store.identity()).unwrap();
        let now = SystemTime::now();
        let chain = self.sign_with_usages(
            &key.csr_pem,
            uri,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
            usages,
        );
        store.install(key, &chain).unwrap();
        std::sync::Arc::new(store)
    }

    /// A client certificate chain and its key with the given URI SANs (serverAuth and
    /// clientAuth), outside a [`CertStore`] (which refuses anything but one SPIFFE URI SAN).
    pub(crate) fn leaf_with_uris(
        &self,
        uris: &[&str],
    ) -> (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).to_owned().try_into().unwrap())).collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (vec![cert.der().clone()], der)
    }

    /// [`TestCa::store_with_usages`] with serverAuth and clientAuth, as the control plane issues.
    pub(crate) fn store(&self, uri: &str) -> std::sync::Arc<CertStore> {
        self.store_with_usages(uri, vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth])
    }

    pub(crate) fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem([self.pem.as_str()]).unwrap()
    }
}

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

const A: &str = "spiffe://cluster.local/ns/shop/sa/checkout";
const B: &str = "spiffe://cluster.local/ns/shop/sa/cart";

#[test]
fn identity_parses_formats_and_validates() {
    let a = Identity::workload("cluster.local", "shop", "checkout").unwrap();
    assert_eq!(a.as_str(), A);
    assert_eq!(a.to_string(), A);
    assert_eq!(a.trust_domain(), "cluster.local");
    assert_eq!(a.namespace_and_service_account(), Some(("shop", "checkout")));
    assert_eq!(id("spiffe://td/some/other/path").namespace_and_service_account(), None);
    for bad in [
        "http://cluster.local/ns/a/sa/b",
        "spiffe://",
        "spiffe://cluster.local",
        "spiffe://Cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns//sa/b",
        "spiffe://cluster.local/ns/../sa/b",
        "spiffe://cluster.local/ns/a/sa/b?x=1",
        "spiffe://user@cluster.local/ns/a",
        "spiffe://cluster.local:443/ns/a",
    ] {
        assert!(Identity::parse(bad).is_err(), "{bad} must be refused");
    }
}

#[test]
fn rotation_point_is_between_half_and_four_fifths_of_the_lifetime() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let end = start + Duration::from_secs(100);
    assert_eq!(rotate_at(start, end, 0.0), start + Duration::from_secs(50));
    assert_eq!(rotate_at(start, end, 1.0), start + Duration::from_secs(80));
    for _ in 0..1000 {
        let at = rotate_at(start, end, fastrand::f64());
        assert!(at >= start + Duration::from_secs(50) && at <= start + Duration::from_secs(80));
    }
    assert_eq!(rotate_at(end, start, 0.5), end, "an already expired certificate rotates now");
}

#[test]
fn store_installs_a_matching_certificate_and_reports_expiry() {
    let ca = TestCa::new();
    let store = CertStore::new(id(A), ca.bundle());
    assert!(!store.has_certificate());
    assert_eq!(store.rotate_at(), None);

    let key = new_key_and_csr(&id(A)).unwrap();
    let now = SystemTime::now();
    let chain = ca.sign(&key.csr_pem, A, now - Duration::from_secs(60), now + Duration::from_secs(3600));
    store.install(key, &chain).unwrap();
    assert!(store.has_certificate());
    assert_eq!(store.installs(), 1);
    let expiry = store.expiry_seconds();
    assert!((3590.0..=3600.0).contains(&expiry), "expiry {expiry}");
    let rotate_in = store.rotate_at().unwrap().duration_since(now).unwrap().as_secs();
    assert!((1790..=2881).contains(&rotate_in), "rotate in {rotate_in}s, from install time, not from not_before");
}

#[test]
fn store_refuses_wrong_identity_foreign_key_and_foreign_ca() {
    let ca = TestCa::new();
    let store = CertStore::new(id(A), ca.bundle());
    let now = SystemTime::now();
    let (from, to) = (now - Duration::from_secs(60), now + Duration::from_secs(3600));

    let key = new_key_and_csr(&id(A)).unwrap();
    let chain = ca.sign(&key.csr_pem, B, from, to);
    assert!(matches!(store.install(key, &chain), Err(TlsError::WrongIdentity { .. })));

    let key = new_key_and_csr(&id(A)).unwrap();
    let other_key = new_key_and_csr(&id(A)).unwrap();
    let chain = ca.sign(&other_key.csr_pem, A, from, to);
    assert!(matches!(store.install(key, &chain), Err(TlsError::KeyMismatch(_))));

    let key = new_key_and_csr(&id(A)).unwrap();
    let chain = TestCa::new().sign(&key.csr_pem, A, from, to);
    assert!(matches!(store.install(key, &chain), Err(TlsError::BadChain(_))));
    assert!(!store.has_certificate());
}

#[test]
fn server_verification_checks_identity_and_validity_not_only_the_ca() {
    let ca = TestCa::new();
    let roots = ca.bundle().roots;
    let now = SystemTime::now();
    let der = |pem: &str| {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    };
    let key = new_key_and_csr(&id(B)).unwrap();
    let b = der(&ca.sign(&key.csr_pem, B, now - Duration::from_secs(60), now + Duration::from_secs(60))[0]);
    assert!(config::verify_chain(&roots, std::slice::from_ref(&b), &id(B)).is_ok());
    let err = config::verify_chain(&roots, &[b], &id(A)).unwrap_err();
    assert!(err.to_string().contains("expected spiffe://cluster.local/ns/shop/sa/checkout"), "{err}");

    let expired = der(&ca.sign(&key.csr_pem, B, now - Duration::from_secs(120), now - Duration::from_secs(60))[0]);
    let err = config::verify_chain(&roots, &[expired], &id(B)).unwrap_err();
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
}

#[test]
fn identity_of_requires_exactly_one_spiffe_uri() {
    let ca = TestCa::new();
    let key = new_key_and_csr(&id(A)).unwrap();
    let now = SystemTime::now();
    let chain = ca.sign(&key.csr_pem, "https://example.com/", now, now + Duration::from_secs(60));
    use rustls::pki_types::pem::PemObject as _;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    assert!(identity_of(&cert).is_err());
}

#[test]
fn bundle_accepts_several_roots_and_refuses_garbage() {
    let (old, new) = (TestCa::new(), TestCa::new());
    assert_eq!(TrustBundle::from_pem([old.pem.as_str(), new.pem.as_str()]).unwrap().len(), 2);
    assert_eq!(TrustBundle::from_pem([format!("{}{}", old.pem, new.pem).as_str()]).unwrap().len(), 2);
    assert!(TrustBundle::from_pem(["not a certificate"]).is_err());
}
