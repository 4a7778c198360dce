//! Issuance for callers: a CSR plus a credential → a certificate for the identity the credential
//! grants.
//!
//! Three credentials:
//! - a join token, redeemed through the [`TokenReviewer`] trait (first certificate);
//! - on Kubernetes, a service-account token, reviewed by the API server before the call (the
//!   review is asynchronous: see [`super::service_accounts`]) and passed as the identity it
//!   proved;
//! - a renewal proof: the caller's current chain (verified against the trust bundle, unexpired)
//!   and an ECDSA P-256 SHA-256 signature over the new CSR's DER made with the current key, so
//!   a renewal needs no token.
//!
//! Either way the CSR must carry, as its only URI SAN, exactly the identity granted: a proxy
//! that asks for another identity is refused rather than silently given its own.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateSigningRequestParams, SanType};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;

use super::service_accounts::ReviewError;
use super::tokens::{TokenError, TokenReviewer};
use super::{Ca, CaError, Identity, IssuedCert};

/// Proof that the caller holds a current certificate: its chain (leaf first, PEM) and the hex
/// ECDSA P-256 SHA-256 ASN.1/DER signature over the DER bytes of the new CSR, made with the
/// current certificate's key.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewalProof {
    pub certificate_chain: Vec<String>,
    pub signature: String,
}

/// How the caller authenticates.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// A join token (`ort_…`).
    JoinToken(&'a str),
    /// The current certificate and a signature made with its key.
    Renewal(&'a RenewalProof),
    /// The identity of a service-account token the API server has reviewed
    /// ([`super::service_accounts::ServiceAccountReviewer`]).
    ServiceAccount(&'a Identity),
    /// A node proxy's certificate and signature: it asks for one of the workloads it serves,
    /// which must be registered on that node.
    Node(&'a RenewalProof),
}

/// Namespace of node proxies' own identities (and of the control plane's).
pub const NODE_NAMESPACE: &str = "outrider-system";

/// Which workloads each node proxy has registered (node mode).
pub trait NodeWorkloads: Send + Sync {
    /// Whether the node proxy `node` (SPIFFE ID) has registered a workload running as `workload`.
    fn hosts(&self, node: &str, workload: &str) -> bool;
}

/// Why a certificate was not issued. [`IssueError::status`] is the HTTP status,
/// [`IssueError::reason`] the bounded metrics label.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("csr: {0}")]
    BadCsr(String),
    #[error(
        "csr: the CSR has no URI SAN; it must carry the identity the credential grants (spiffe://<trust-domain>/ns/<ns>/sa/<sa>)"
    )]
    NoUriSan,
    #[error("csr: the CSR has {0} URI SANs; it must carry exactly one, the identity the credential grants")]
    SeveralUriSans(usize),
    #[error("{0}")]
    Token(TokenError),
    #[error("{0}")]
    Review(ReviewError),
    #[error("the CSR asks for {asked} but the {by} {granted}")]
    IdentityMismatch { asked: String, granted: String, by: &'static str },
    #[error(
        "renewal: the current certificate expired {0}s ago; a proxy whose certificate expired needs a new join token"
    )]
    RenewalExpired(u64),
    #[error("renewal: the current certificate is not valid yet (check the clocks)")]
    RenewalNotYetValid,
    #[error(
        "renewal: signature invalid: {0}; sign the DER bytes of the new CSR with the current key (ECDSA P-256 SHA-256, ASN.1 DER, hex)"
    )]
    RenewalSignature(String),
    #[error("renewal: the current certificate chain is not accepted: {0}")]
    RenewalChain(String),
    #[error("{0}")]
    Ca(#[from] CaError),
    #[error("{node} is not a node proxy: node credentials come from identities in namespace {NODE_NAMESPACE}")]
    NotANode { node: String },
    #[error(
        "node {node} has no workload running as {workload} registered: a node proxy gets certificates only for the workloads it serves"
    )]
    NotOnNode { node: String, workload: String },
}

impl IssueError {
    /// 400 for a bad CSR, 401 for a bad credential, 403 for the wrong identity, 500 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            IssueError::BadCsr(_) | IssueError::NoUriSan | IssueError::SeveralUriSans(_) => 400,
            IssueError::Token(TokenError::Random | TokenError::Store { .. } | TokenError::Persist(_)) => 500,
            IssueError::Token(_)
            | IssueError::RenewalExpired(_)
            | IssueError::RenewalNotYetValid
            | IssueError::RenewalSignature(_)
            | IssueError::RenewalChain(_) => 401,
            IssueError::IdentityMismatch { .. } | IssueError::NotANode { .. } | IssueError::NotOnNode { .. } => 403,
            IssueError::Review(e) => e.status(),
            IssueError::Ca(CaError::BadCsr(_)) => 400,
            IssueError::Ca(_) => 500,
        }
    }

    /// `reason` label of `outrider_ca_issue_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            IssueError::BadCsr(_) | IssueError::NoUriSan | IssueError::SeveralUriSans(_) => "bad_csr",
            IssueError::Ca(CaError::BadCsr(_)) => "bad_csr",
            IssueError::Token(TokenError::Unknown) => "token_unknown",
            IssueError::Token(TokenError::Expired(_)) => "token_expired",
            IssueError::Token(TokenError::AlreadyUsed) => "token_used",
            IssueError::Token(TokenError::Malformed) => "token_malformed",
            IssueError::Token(_) | IssueError::Ca(_) => "internal",
            IssueError::IdentityMismatch { .. } => "identity_mismatch",
            IssueError::Review(e) => e.reason(),
            IssueError::NotANode { .. } | IssueError::NotOnNode { .. } => "node_not_authorized",
            IssueError::RenewalExpired(_) | IssueError::RenewalNotYetValid => "renewal_expired",
            IssueError::RenewalSignature(_) => "renewal_signature",
            IssueError::RenewalChain(_) => "renewal_chain",
        }
    }
}

/// The CA and the token reviewer, as the issuance endpoint uses them.
#[derive(Clone)]
pub struct Issuance {
    ca: Arc<Ca>,
    reviewer: Arc<dyn TokenReviewer>,
    /// Node mode: who hosts which workload (none: node credentials are refused).
    nodes: Option<Arc<dyn NodeWorkloads>>,
}

impl std::fmt::Debug for Issuance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuance").field("ca", &self.ca).finish_non_exhaustive()
    }
}

/// A parsed, signature-checked CSR.
struct Csr {
    der: Vec<u8>,
    uri: String,
}

impl Issuance {
    pub fn new(ca: Arc<Ca>, reviewer: Arc<dyn TokenReviewer>) -> Self {
        Self { ca, reviewer, nodes: None }
    }

    /// Accept node credentials for the workloads `nodes` says each node hosts.
    pub fn with_nodes(mut self, nodes: Arc<dyn NodeWorkloads>) -> Self {
        self.nodes = Some(nodes);
        self
    }

    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// Checks the CSR and the credential, then issues for the identity the credential grants.
    pub fn issue(&self, csr_pem: &str, credential: Credential<'_>) -> Result<IssuedCert, IssueError> {
        self.issue_at(csr_pem, credential, SystemTime::now())
    }

    /// [`Issuance::issue`] with the renewal proof checked at `now` (tests).
    pub fn issue_at(
        &self,
        csr_pem: &str,
        credential: Credential<'_>,
        now: SystemTime,
    ) -> Result<IssuedCert, IssueError> {
        // The CSR first, so a malformed request does not burn a single-use token.
        let csr = parse_csr(csr_pem)?;
        let (identity, by) = match credential {
            Credential::JoinToken(token) => (self.reviewer.redeem(token).map_err(IssueError::Token)?, "token grants"),
            Credential::Renewal(proof) => (self.verify_renewal(proof, &csr, now)?, "current certificate is for"),
            Credential::ServiceAccount(identity) => (identity.clone(), "service-account token is for"),
            Credential::Node(proof) => {
                let node = self.verify_renewal(proof, &csr, now)?;
                let node_id = node.spiffe_id(self.ca.trust_domain());
                if node.namespace != NODE_NAMESPACE {
                    return Err(IssueError::NotANode { node: node_id });
                }
                let workload = self
                    .identity_of_uri(&csr.uri)
                    .ok_or_else(|| IssueError::NotOnNode { node: node_id.clone(), workload: csr.uri.clone() })?;
                let hosted = self.nodes.as_ref().is_some_and(|n| n.hosts(&node_id, &csr.uri));
                if !hosted {
                    return Err(IssueError::NotOnNode { node: node_id, workload: csr.uri });
                }
                (workload, "node serves")
            }
        };
        let granted = identity.spiffe_id(self.ca.trust_domain());
        if csr.uri != granted {
            return Err(IssueError::IdentityMismatch { asked: csr.uri, granted, by });
        }
        Ok(self.ca.issue(csr_pem, &identity)?)
    }

    /// The identity of a valid renewal proof: chain verified against the trust bundle at `now`,
    /// signature over the CSR's DER by the leaf's key.
    fn verify_renewal(&self, proof: &RenewalProof, csr: &Csr, now: SystemTime) -> Result<Identity, IssueError> {
        let mut chain = Vec::new();
        for pem in &proof.certificate_chain {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(cert.map_err(|e| IssueError::RenewalChain(format!("certificateChain is not PEM: {e}")))?);
            }
        }
        let (leaf, intermediates) =
            chain.split_first().ok_or_else(|| IssueError::RenewalChain("certificateChain is empty".to_owned()))?;

        let mut roots = RootCertStore::empty();
        for root in &self.ca.trust_bundle().roots {
            for cert in CertificateDer::pem_slice_iter(root.as_bytes()).flatten() {
                // A root the bundle cannot parse was refused when it was added.
                let _ = roots.add(cert);
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), outrider_proxy::tls::provider())
            .build()
            .map_err(|e| IssueError::RenewalChain(format!("no usable root in the trust bundle: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| IssueError::RenewalChain(format!("leaf is not X.509: {e}")))?;
        let now_s = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        let not_after = u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0);
        if now_s > not_after {
            return Err(IssueError::RenewalExpired(now_s - not_after));
        }
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::since_unix_epoch(Duration::from_secs(now_s)))
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. },
                ) => IssueError::RenewalExpired(now_s.saturating_sub(not_after)),
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidYet | rustls::CertificateError::NotValidYetContext { .. },
                ) => IssueError::RenewalNotYetValid,
                // BadSignature: an issuer of the same name (another control plane's root) did not sign it.
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
                ) => IssueError::RenewalChain("it is not signed by a root of this control plane's trust bundle".into()),
                other => IssueError::RenewalChain(other.to_string()),
            })?;
        let signature = decode_hex(proof.signature.trim())
            .ok_or_else(|| IssueError::RenewalSignature("signature is not hex".to_owned()))?;
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            parsed.public_key().subject_public_key.data.as_ref(),
        );
        key.verify(&csr.der, &signature).map_err(|_| {
            IssueError::RenewalSignature("it does not verify with the current certificate's public key".to_owned())
        })?;

        let uri = leaf_uri(&parsed).map_err(IssueError::RenewalChain)?;
        self.identity_of_uri(&uri).ok_or_else(|| {
            IssueError::RenewalChain(format!(
                "the current certificate is for {uri}, not a spiffe://{}/ns/<ns>/sa/<sa> identity",
                self.ca.trust_domain().as_str()
            ))
        })
    }

    /// `spiffe://<our trust domain>/ns/<ns>/sa/<sa>` → the identity.
    fn identity_of_uri(&self, uri: &str) -> Option<Identity> {
        let prefix = format!("spiffe://{}/ns/", self.ca.trust_domain().as_str());
        let (ns, sa) = uri.strip_prefix(&prefix)?.split_once("/sa/")?;
        Identity::new(ns, sa).ok()
    }
}

/// Checks a CSR as [`Issuance::issue`] would, before a credential is spent on it.
pub fn check_csr(csr_pem: &str) -> Result<(), IssueError> {
    parse_csr(csr_pem).map(|_| ())
}

/// Parses (and checks the self-signature of) a PEM CSR; its single URI SAN.
fn parse_csr(csr_pem: &str) -> Result<Csr, IssueError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| IssueError::BadCsr(format!("not PEM: {e}")))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(IssueError::BadCsr(format!("expected a CERTIFICATE REQUEST PEM block, got {:?}", pem.label)));
    }
    let params = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| IssueError::BadCsr(format!("{e}; the proxy must send a PEM PKCS#10 CSR signed by its key")))?;
    let uris: Vec<String> = params
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(uri) => Some(uri.as_str().to_owned()),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(IssueError::NoUriSan),
        [uri] => Ok(Csr { der: pem.contents, uri: uri.clone() }),
        more => Err(IssueError::SeveralUriSans(more.len())),
    }
}

/// The single URI SAN of a certificate.
fn leaf_uri(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<String, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
        .ok_or_else(|| "the certificate has no subjectAltName".to_owned())?;
    let mut uris = san.value.general_names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => Ok(uri.to_owned()),
        (None, _) => Err("the certificate has no URI SAN".to_owned()),
        (Some(_), Some(_)) => Err("the certificate has more than one URI SAN".to_owned()),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests;
