//! rustls configs built on a [`CertStore`]: the resolvers and verifiers read the store on every
//! handshake, so certificate and bundle rotations need no config rebuild.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig, SignatureScheme,
};

use super::{ALPN_PROTOCOLS, CertStore, Identity, Mode, TlsError, identity_of, provider};

/// Server side: TLS 1.3, ALPN `outrider/1` / `h2` / `http/1.1`, our current certificate, and
/// client certificates verified against the current bundle — required in [`Mode::Strict`],
/// optional in [`Mode::Permissive`].
pub fn server_config(store: Arc<CertStore>, mode: Mode) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(ClientVerifier { store: store.clone(), mandatory: mode == Mode::Strict });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver { store }));
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    // No resumption: a resumed session would skip verifying the peer's certificate again, so an
    // expired one (or one from a root since removed) could keep opening connections.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client side, for connections to a destination whose workloads run as `expected`: TLS 1.3,
/// ALPN, our current certificate as client certificate, and the server accepted only if its
/// chain verifies against the bundle and its URI SAN is `expected`. The `ServerName` passed to
/// the connector is not used for verification. Build one per destination identity and reuse it.
pub fn client_config(store: Arc<CertStore>, expected: Identity) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_alpn(store, expected, super::ALPN_OUTRIDER)
}

/// [`client_config`] offering one ALPN id (`alpn`), so the peer knows what the connection
/// carries: HTTP over h2, one HTTP/1.1 connection, or opaque TCP.
pub fn client_config_alpn(
    store: Arc<CertStore>,
    expected: Identity,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(ExpectedServerIdentity { store: store.clone(), expected });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous() // our verifier checks the chain itself, plus the SPIFFE identity
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Resolver { store }));
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// HBONE server side (port 15008): TLS 1.3 with the AES-GCM suites only, ALPN `h2` only (a client
/// offering only other ids, such as `http/1.1`, fails the handshake), no session resumption, and
/// a client certificate that is required, chains to a root of the bundle, carries the clientAuth
/// usage and exactly one SPIFFE URI SAN. The server presents `store`'s certificate: the
/// destination workload's own.
pub fn hbone_server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(ClientVerifier { store: store.clone(), mandatory: true });
    let mut config = ServerConfig::builder_with_provider(super::hbone_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver { store }));
    config.alpn_protocols = vec![super::ALPN_H2.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// HBONE client side: the source workload's certificate (`store`), the same suites and ALPN as
/// [`hbone_server_config`], no SNI (the connector is given an IP address), no resumption, and
/// the server accepted only when its chain verifies and its SAN is the destination workload's
/// identity `expected`.
pub fn hbone_client_config(store: Arc<CertStore>, expected: Identity) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(ExpectedServerIdentity { store: store.clone(), expected });
    let mut config = ClientConfig::builder_with_provider(super::hbone_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous() // our verifier checks the chain itself, plus the SPIFFE identity
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Resolver { store }));
    config.alpn_protocols = vec![super::ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Verifies the chain, the validity period and the serverAuth usage, then that the leaf's
/// single SPIFFE URI SAN equals `expected`.
pub(crate) fn verify_chain(
    roots: &RootCertStore,
    chain: &[CertificateDer<'_>],
    expected: &Identity,
) -> Result<(), Error> {
    let (leaf, intermediates) = chain.split_first().ok_or(Error::NoCertificatesPresented)?;
    let parsed = ParsedCertificate::try_from(leaf)?;
    let algs = provider().signature_verification_algorithms;
    verify_server_cert_signed_by_trust_anchor(&parsed, roots, intermediates, UnixTime::now(), algs.all)?;
    check_identity(leaf, expected)
}

fn check_identity(leaf: &CertificateDer<'_>, expected: &Identity) -> Result<(), Error> {
    let got = identity_of(leaf).map_err(|e| Error::General(e.to_string()))?;
    if &got == expected { Ok(()) } else { Err(Error::General(format!("peer identity is {got}, expected {expected}"))) }
}

/// Presents the store's current certificate, on both sides.
#[derive(Debug)]
struct Resolver {
    store: Arc<CertStore>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.certified_key()
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.store.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.store.has_certificate()
    }
}

/// Client certificates against the store's current bundle.
#[derive(Debug)]
struct ClientVerifier {
    store: Arc<CertStore>,
    mandatory: bool,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Optional in TLS 1.3; the bundle lives behind an ArcSwap and our clients ignore hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.store.bundle().client_verifier.verify_client_cert(end_entity, intermediates, now)?;
        // A client certificate must carry a valid identity, or authorization could not use it.
        identity_of(end_entity).map_err(|e| Error::General(e.to_string()))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// The client's server-certificate verifier: signed by a root of the current bundle, valid
/// now, and for exactly the destination's expected SPIFFE identity.
#[derive(Debug)]
pub struct ExpectedServerIdentity {
    store: Arc<CertStore>,
    expected: Identity,
}

impl ServerCertVerifier for ExpectedServerIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let algs = provider().signature_verification_algorithms;
        verify_server_cert_signed_by_trust_anchor(&parsed, &self.store.bundle().roots, intermediates, now, algs.all)?;
        check_identity(end_entity, &self.expected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
