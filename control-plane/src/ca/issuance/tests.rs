use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

use super::*;
use crate::ca::tokens::{JoinTokens, TokenUse};
use crate::ca::{CaConfig, TrustDomain};

const CHECKOUT: &str = "spiffe://cluster.local/ns/shop/sa/checkout";

struct Fixture {
    dir: PathBuf,
    tokens: Arc<JoinTokens>,
    issuance: Issuance,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("outrider-issue-{name}-{}-{}", std::process::id(), fastrand::u64(..)));
    let ca = Arc::new(Ca::open(CaConfig::new(TrustDomain::new("cluster.local").unwrap(), &dir)).unwrap());
    let tokens = Arc::new(JoinTokens::open(&dir).unwrap());
    let issuance = Issuance::new(ca, tokens.clone());
    Fixture { dir, tokens, issuance }
}

fn checkout() -> Identity {
    Identity::new("shop", "checkout").unwrap()
}

/// A key and a CSR whose URI SANs are `uris`; also the CSR's DER.
fn csr(uris: &[&str]) -> (KeyPair, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
    let req = params.serialize_request(&key).unwrap();
    (key, req.pem().unwrap(), req.der().to_vec())
}

fn sign(key: &KeyPair, message: &[u8]) -> String {
    let rng = ring::rand::SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &key.serialize_der(), &rng).unwrap();
    let sig = pair.sign(&rng, message).unwrap();
    sig.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn token(f: &Fixture, usage: TokenUse) -> String {
    f.tokens.create(checkout(), Duration::from_secs(600), usage).unwrap()
}

#[test]
fn a_token_gets_a_certificate_for_its_identity() {
    let f = fixture("ok");
    let (_key, pem, _) = csr(&[CHECKOUT]);
    let issued = f.issuance.issue(&pem, Credential::JoinToken(&token(&f, TokenUse::UntilExpiry))).unwrap();
    assert_eq!(issued.spiffe_id, CHECKOUT);
    assert_eq!(issued.chain_pem.len(), 2);
}

#[test]
fn a_csr_for_another_identity_is_forbidden_with_both_names() {
    let f = fixture("other");
    let (_key, pem, _) = csr(&["spiffe://cluster.local/ns/shop/sa/admin"]);
    let err = f.issuance.issue(&pem, Credential::JoinToken(&token(&f, TokenUse::UntilExpiry))).unwrap_err();
    assert_eq!(err.status(), 403);
    assert_eq!(err.reason(), "identity_mismatch");
    assert_eq!(
        err.to_string(),
        "the CSR asks for spiffe://cluster.local/ns/shop/sa/admin but the token grants spiffe://cluster.local/ns/shop/sa/checkout"
    );
}

#[test]
fn a_csr_without_exactly_one_uri_san_is_a_bad_request_and_keeps_the_token() {
    let f = fixture("nouri");
    let t = token(&f, TokenUse::Single);
    let (_key, none, _) = csr(&[]);
    let err = f.issuance.issue(&none, Credential::JoinToken(&t)).unwrap_err();
    assert_eq!((err.status(), err.reason()), (400, "bad_csr"), "{err}");
    assert!(err.to_string().contains("no URI SAN"), "{err}");
    let (_key, two, _) = csr(&[CHECKOUT, "spiffe://cluster.local/ns/shop/sa/admin"]);
    assert_eq!(f.issuance.issue(&two, Credential::JoinToken(&t)).unwrap_err().status(), 400);
    let err = f.issuance.issue("not a csr", Credential::JoinToken(&t)).unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
    // The single-use token was not spent on the bad requests.
    let (_key, good, _) = csr(&[CHECKOUT]);
    f.issuance.issue(&good, Credential::JoinToken(&t)).unwrap();
}

#[test]
fn single_use_twice_unknown_and_expired_tokens_are_unauthorized() {
    let f = fixture("tokens");
    let t = token(&f, TokenUse::Single);
    let (_key, pem, _) = csr(&[CHECKOUT]);
    f.issuance.issue(&pem, Credential::JoinToken(&t)).unwrap();
    let err = f.issuance.issue(&pem, Credential::JoinToken(&t)).unwrap_err();
    assert_eq!((err.status(), err.reason()), (401, "token_used"));
    assert!(err.to_string().contains("already redeemed"), "{err}");

    let unknown = format!("ort_{}", "0".repeat(64));
    let err = f.issuance.issue(&pem, Credential::JoinToken(&unknown)).unwrap_err();
    assert_eq!((err.status(), err.reason()), (401, "token_unknown"));

    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    let old = f.tokens.create_at(checkout(), Duration::from_secs(3600), TokenUse::UntilExpiry, two_hours_ago).unwrap();
    assert!(old.expires_at > 0);
    let err = f.issuance.issue(&pem, Credential::JoinToken(&old.token)).unwrap_err();
    assert_eq!((err.status(), err.reason()), (401, "token_expired"));
    assert!(err.to_string().contains("expired"), "{err}");
}

/// A current certificate for checkout (its key, its chain).
fn current(f: &Fixture, ttl: Duration) -> (KeyPair, Vec<String>) {
    let (key, pem, _) = csr(&[CHECKOUT]);
    let issued = f.issuance.ca().issue_with_ttl(&pem, &checkout(), ttl).unwrap();
    (key, issued.chain_pem)
}

#[test]
fn renewal_with_a_valid_proof_issues_for_the_same_identity() {
    let f = fixture("renew");
    let (old_key, chain) = current(&f, Duration::from_secs(600));
    let (_new_key, pem, der) = csr(&[CHECKOUT]);
    let proof = RenewalProof { certificate_chain: chain, signature: sign(&old_key, &der) };
    let issued = f.issuance.issue(&pem, Credential::Renewal(&proof)).unwrap();
    assert_eq!(issued.spiffe_id, CHECKOUT);
}

#[test]
fn renewal_signed_by_another_key_is_unauthorized() {
    let f = fixture("renew-key");
    let (_old_key, chain) = current(&f, Duration::from_secs(600));
    let (new_key, pem, der) = csr(&[CHECKOUT]);
    let proof = RenewalProof { certificate_chain: chain.clone(), signature: sign(&new_key, &der) };
    let err = f.issuance.issue(&pem, Credential::Renewal(&proof)).unwrap_err();
    assert_eq!((err.status(), err.reason()), (401, "renewal_signature"), "{err}");
    assert!(err.to_string().contains("signature invalid"), "{err}");
    let proof = RenewalProof { certificate_chain: chain, signature: "zz".into() };
    assert_eq!(f.issuance.issue(&pem, Credential::Renewal(&proof)).unwrap_err().status(), 401);
}

#[test]
fn renewal_with_an_expired_certificate_is_unauthorized() {
    let f = fixture("renew-expired");
    let (old_key, chain) = current(&f, Duration::from_secs(1));
    let (_new_key, pem, der) = csr(&[CHECKOUT]);
    let proof = RenewalProof { certificate_chain: chain, signature: sign(&old_key, &der) };
    let later = SystemTime::now() + Duration::from_secs(120);
    let err = f.issuance.issue_at(&pem, Credential::Renewal(&proof), later).unwrap_err();
    assert_eq!((err.status(), err.reason()), (401, "renewal_expired"), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn renewal_for_another_identity_is_forbidden() {
    let f = fixture("renew-other");
    let (old_key, chain) = current(&f, Duration::from_secs(600));
    let (_new_key, pem, der) = csr(&["spiffe://cluster.local/ns/shop/sa/admin"]);
    let proof = RenewalProof { certificate_chain: chain, signature: sign(&old_key, &der) };
    let err = f.issuance.issue(&pem, Credential::Renewal(&proof)).unwrap_err();
    assert_eq!(err.status(), 403);
    assert_eq!(
        err.to_string(),
        "the CSR asks for spiffe://cluster.local/ns/shop/sa/admin but the current certificate is for spiffe://cluster.local/ns/shop/sa/checkout"
    );
}

#[test]
fn renewal_with_a_chain_from_another_ca_is_unauthorized() {
    let f = fixture("renew-foreign");
    let other = fixture("renew-foreign-ca");
    let (old_key, chain) = current(&other, Duration::from_secs(600));
    let (_new_key, pem, der) = csr(&[CHECKOUT]);
    let proof = RenewalProof { certificate_chain: chain, signature: sign(&old_key, &der) };
    let err = f.issuance.issue(&pem, Credential::Renewal(&proof)).unwrap_err();
    assert_eq!((err.status(), err.reason()), (401, "renewal_chain"), "{err}");
    assert!(err.to_string().contains("trust bundle"), "{err}");
}

/// The proof as the proxy makes it: rustls' signing key for its PKCS#8 key,
/// `choose_scheme(ECDSA_NISTP256_SHA256)` then `sign`.
#[test]
fn renewal_signed_the_way_rustls_signs_is_accepted() {
    use rustls::SignatureScheme;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let f = fixture("renew-rustls");
    let (old_key, chain) = current(&f, Duration::from_secs(600));
    let (_new_key, pem, der) = csr(&[CHECKOUT]);
    let signing_key = outrider_proxy::tls::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(old_key.serialize_der())))
        .unwrap();
    let signer = signing_key.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap();
    let signature: String = signer.sign(&der).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let proof = RenewalProof { certificate_chain: chain, signature };
    assert_eq!(f.issuance.issue(&pem, Credential::Renewal(&proof)).unwrap().spiffe_id, CHECKOUT);
}

/// Which workload each node hosts, for the node-credential tests.
struct Hosts(Vec<(&'static str, &'static str)>);

impl NodeWorkloads for Hosts {
    fn hosts(&self, node: &str, workload: &str) -> bool {
        self.0.iter().any(|(n, w)| *n == node && *w == workload)
    }
}

const NODE_A: &str = "spiffe://cluster.local/ns/outrider-system/sa/node-a";
const NODE_B: &str = "spiffe://cluster.local/ns/outrider-system/sa/node-b";

/// A certificate for `identity` (issued with a token), and the proof a node gives with it for
/// the CSR `for_csr`.
fn node_proof(f: &Fixture, identity: Identity, for_csr_der: &[u8]) -> RenewalProof {
    let uri = identity.spiffe_id(f.issuance.ca().trust_domain());
    let token = f.tokens.create(identity, Duration::from_secs(600), TokenUse::UntilExpiry).unwrap();
    let (key, pem, _) = csr(&[&uri]);
    let issued = f.issuance.issue(&pem, Credential::JoinToken(&token)).unwrap();
    RenewalProof { certificate_chain: issued.chain_pem, signature: sign(&key, for_csr_der) }
}

#[test]
fn a_node_gets_certificates_only_for_the_workloads_registered_on_it() {
    let mut f = fixture("node");
    f.issuance = f.issuance.clone().with_nodes(Arc::new(Hosts(vec![(NODE_A, CHECKOUT)])));
    let (_key, pem, der) = csr(&[CHECKOUT]);
    let node_a = Identity::new("outrider-system", "node-a").unwrap();
    let node_b = Identity::new("outrider-system", "node-b").unwrap();

    let proof = node_proof(&f, node_a.clone(), &der);
    let issued = f.issuance.issue(&pem, Credential::Node(&proof)).unwrap();
    assert_eq!(issued.spiffe_id, CHECKOUT, "the workload's identity, not the node's");

    // Another node, where checkout does not run: refused.
    let proof = node_proof(&f, node_b, &der);
    let err = f.issuance.issue(&pem, Credential::Node(&proof)).unwrap_err();
    assert_eq!((err.status(), err.reason()), (403, "node_not_authorized"));
    assert!(err.to_string().contains(NODE_B) && err.to_string().contains(CHECKOUT), "{err}");

    // A workload identity cannot act as a node, even for itself.
    let proof = node_proof(&f, checkout(), &der);
    let err = f.issuance.issue(&pem, Credential::Node(&proof)).unwrap_err();
    assert_eq!((err.status(), err.reason()), (403, "node_not_authorized"));
    assert!(err.to_string().contains("is not a node proxy"), "{err}");

    // A proof signed over another CSR: the signature does not verify.
    let (_other, _, other_der) = csr(&[CHECKOUT]);
    let proof = node_proof(&f, node_a, &other_der);
    let err = f.issuance.issue(&pem, Credential::Node(&proof)).unwrap_err();
    assert_eq!(err.status(), 401);

    // Without a registry of nodes, node credentials are refused.
    let g = fixture("no-nodes");
    let (_k, pem, der) = csr(&[CHECKOUT]);
    let proof = node_proof(&g, Identity::new("outrider-system", "node-a").unwrap(), &der);
    assert_eq!(g.issuance.issue(&pem, Credential::Node(&proof)).unwrap_err().status(), 403);
}

#[test]
fn a_fault_answer_names_no_internals_but_a_refusal_says_why() {
    let rbac = "ApiError: tokenreviews.authentication.k8s.io is forbidden: User \
                \"system:serviceaccount:outrider-system:outrider\" cannot create resource";
    let unavailable = IssueError::Review(ReviewError::Unavailable(rbac.into()));
    assert_eq!(unavailable.status(), 503);
    let told = unavailable.public_message();
    assert!(!told.contains("forbidden") && !told.contains("outrider-system"), "{told}");
    assert!(told.contains("Kubernetes API server"), "{told}");
    // The log line keeps the cause.
    assert!(unavailable.to_string().contains("forbidden"));

    let store = IssueError::Token(TokenError::Store {
        store: "/var/lib/outrider/tokens.json".into(),
        reason: "Read-only file system".into(),
    });
    assert_eq!(store.status(), 500);
    assert!(!store.public_message().contains("/var/lib"), "{}", store.public_message());

    let refused = IssueError::Review(ReviewError::Rejected { audience: "outrider".into(), reason: "expired".into() });
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.public_message(), refused.to_string());
}
