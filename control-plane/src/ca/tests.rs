use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};

use super::tokens::{JoinTokens, TOKENS_FILE, TokenError, TokenReviewer as _, TokenUse};
use super::*;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("outrider-ca-{name}-{}-{}", std::process::id(), fastrand::u64(..)));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A CSR that asks for a name the caller should not get.
fn csr(asking_for: &str) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(asking_for.to_owned().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn uri_sans(pem: &str) -> Vec<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = p.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn generates_persists_and_reloads_root_with_private_key_mode() {
    let dir = tempdir("persist");
    let ca = Ca::open(CaConfig::new(td(), &dir)).unwrap();
    let root = ca.root_pem().to_owned();
    let mode = std::fs::metadata(dir.join(ROOT_KEY_FILE)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(ca);
    let again = Ca::open(CaConfig::new(td(), &dir)).unwrap();
    assert_eq!(again.root_pem(), root, "second start must load the persisted root, not make a new one");

    std::fs::set_permissions(dir.join(ROOT_KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(Ca::open(CaConfig::new(td(), &dir)), Err(CaError::KeyPermissions(..))));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn issues_for_the_token_identity_and_ignores_the_csr_names() {
    let dir = tempdir("issue");
    let ca = Ca::open(CaConfig::new(td(), &dir)).unwrap();
    let (_key, csr) = csr("spiffe://cluster.local/ns/kube-system/sa/admin");
    let identity = Identity::new("shop", "checkout").unwrap();
    let issued = ca.issue(&csr, &identity).unwrap();
    assert_eq!(issued.spiffe_id, "spiffe://cluster.local/ns/shop/sa/checkout");
    assert_eq!(uri_sans(&issued.chain_pem[0]), vec!["spiffe://cluster.local/ns/shop/sa/checkout".to_owned()]);
    assert_eq!(issued.chain_pem[1], ca.root_pem());
    let left = issued.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(23 * 3600) && left <= DEFAULT_WORKLOAD_TTL,
        "default lifetime 24h, got {left:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rejects_a_csr_with_a_bad_signature() {
    let dir = tempdir("badcsr");
    let ca = Ca::open(CaConfig::new(td(), &dir)).unwrap();
    let (_key, csr) = csr("spiffe://cluster.local/ns/a/sa/b");
    // Flip a byte inside the base64 body: the self-signature no longer verifies (or it no
    // longer parses); either way, no certificate.
    let mut bytes = csr.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let identity = Identity::new("a", "b").unwrap();
    assert!(matches!(ca.issue(&tampered, &identity), Err(CaError::BadCsr(_))));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn loads_an_operator_root_and_refuses_a_mismatched_key() {
    let dir = tempdir("byo");
    let own = tempdir("byo-src");
    std::fs::create_dir_all(&own).unwrap();
    let (pem, key) = generate_root(&td()).unwrap();
    std::fs::write(own.join("ca.pem"), &pem).unwrap();
    std::fs::write(own.join("ca.key"), key.serialize_pem()).unwrap();
    let mut config = CaConfig::new(td(), &dir);
    config.root = RootSource::Files { cert: own.join("ca.pem"), key: own.join("ca.key") };
    let ca = Ca::open(config.clone()).unwrap();
    assert_eq!(ca.root_pem(), pem);
    assert!(!dir.join(ROOT_CERT_FILE).exists(), "an operator root is not copied into the data dir");

    std::fs::write(own.join("ca.key"), KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let err = Ca::open(config).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(own).unwrap();
}

#[test]
fn trust_bundle_holds_old_and_new_roots_across_restarts() {
    let old_dir = tempdir("old");
    let new_dir = tempdir("new");
    let old = Ca::open(CaConfig::new(td(), &old_dir)).unwrap();
    let new = Ca::open(CaConfig::new(td(), &new_dir)).unwrap();
    new.add_trusted_root(old.root_pem()).unwrap();
    new.add_trusted_root(old.root_pem()).unwrap(); // idempotent
    assert_eq!(new.trust_bundle().roots, vec![new.root_pem().to_owned(), old.root_pem().to_owned()]);
    let reopened = Ca::open(CaConfig::new(td(), &new_dir)).unwrap();
    assert_eq!(reopened.trust_bundle(), new.trust_bundle());
    reopened.remove_trusted_root(old.root_pem()).unwrap();
    assert_eq!(reopened.trust_bundle().roots, vec![new.root_pem().to_owned()]);
    assert!(matches!(reopened.remove_trusted_root(new.root_pem()), Err(CaError::RemoveSigningRoot)));
    std::fs::remove_dir_all(old_dir).unwrap();
    std::fs::remove_dir_all(new_dir).unwrap();
}

#[test]
fn identity_names_are_validated() {
    assert!(Identity::new("shop", "checkout-v2").is_ok());
    for (ns, sa) in [("", "a"), ("Shop", "a"), ("a", "b/c"), ("a", "-b"), ("a/../b", "c")] {
        assert!(Identity::new(ns, sa).is_err(), "{ns:?}/{sa:?} must be refused");
    }
    assert!(TrustDomain::new("Example.org").is_err());
}

#[test]
fn tokens_are_hashed_persisted_expire_and_single_use_ones_redeem_once() {
    let dir = tempdir("tokens");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = JoinTokens::open(&dir).unwrap();
    let id = Identity::new("shop", "checkout").unwrap();
    let once = tokens.create(id.clone(), Duration::from_secs(600), TokenUse::Single).unwrap();
    let reusable = tokens.create(id.clone(), Duration::from_secs(600), TokenUse::UntilExpiry).unwrap();
    assert_eq!(once.len(), 4 + 64);

    let stored = std::fs::read_to_string(dir.join(TOKENS_FILE)).unwrap();
    assert!(!stored.contains(&once[4..]) && !stored.contains(&reusable[4..]), "secrets must not be stored");
    let mode = std::fs::metadata(dir.join(TOKENS_FILE)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Survives a restart, and the single-use mark is persisted before redeem returns.
    let tokens = JoinTokens::open(&dir).unwrap();
    assert_eq!(tokens.redeem(&once).unwrap(), id);
    let tokens = JoinTokens::open(&dir).unwrap();
    assert!(matches!(tokens.redeem(&once), Err(TokenError::AlreadyUsed)));
    assert_eq!(tokens.redeem(&reusable).unwrap(), id);
    assert_eq!(tokens.redeem(&reusable).unwrap(), id);

    let later = SystemTime::now() + Duration::from_secs(601);
    assert!(matches!(tokens.redeem_at(&reusable, later), Err(TokenError::Expired(_))));
    let forged = format!("ort_{}", "0".repeat(64));
    assert!(matches!(tokens.redeem(&forged), Err(TokenError::Unknown)));
    assert!(matches!(tokens.redeem("hunter2"), Err(TokenError::Malformed)));

    assert_eq!(tokens.revoke(&id).unwrap(), 2);
    assert!(matches!(tokens.redeem(&reusable), Err(TokenError::Unknown)));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn verifying_a_token_never_redeems_it_and_honours_expiry() {
    let dir = tempdir("verify");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = JoinTokens::open(&dir).unwrap();
    let id = Identity::new("shop", "checkout").unwrap();
    let once = tokens.create(id.clone(), Duration::from_secs(600), TokenUse::Single).unwrap();
    // Verified any number of times, and still redeemable once afterwards.
    assert_eq!(tokens.verify(&once).unwrap(), id);
    assert_eq!(tokens.verify(&once).unwrap(), id);
    assert_eq!(tokens.redeem(&once).unwrap(), id);
    // A redeemed single-use token still authenticates its proxy's xDS stream.
    assert_eq!(tokens.verify(&once).unwrap(), id);
    let later = SystemTime::now() + Duration::from_secs(601);
    assert!(matches!(tokens.verify_at(&once, later), Err(TokenError::Expired(_))));
    assert!(matches!(tokens.verify(&format!("ort_{}", "0".repeat(64))), Err(TokenError::Unknown)));
    assert!(matches!(tokens.verify("Bearer"), Err(TokenError::Malformed)));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Make every write of the token store fail (as on a full or read-only disk, which root's
/// permissions would not simulate): its temp file's path is taken by a directory.
fn block_token_writes(dir: &Path) -> PathBuf {
    let blocker = dir.join(format!(".{TOKENS_FILE}.tmp.{}", std::process::id()));
    std::fs::create_dir_all(&blocker).unwrap();
    blocker
}

#[test]
fn a_failed_token_write_changes_nothing() {
    let dir = tempdir("tokens-write-fails");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = JoinTokens::open(&dir).unwrap();
    let id = Identity::new("shop", "checkout").unwrap();
    let once = tokens.create(id.clone(), Duration::from_secs(600), TokenUse::Single).unwrap();
    let blocker = block_token_writes(&dir);

    // A redemption that cannot be persisted fails, and does not burn the single-use token.
    assert!(matches!(tokens.redeem(&once), Err(TokenError::Persist(_))));
    // A revocation that cannot be persisted fails, and the token still works (as it would
    // after a restart, since the file still holds it).
    assert!(matches!(tokens.revoke(&id), Err(TokenError::Persist(_))));
    // A token that could not be stored is not kept in memory either.
    assert!(matches!(
        tokens.create(id.clone(), Duration::from_secs(600), TokenUse::Single),
        Err(TokenError::Persist(_))
    ));
    assert_eq!(tokens.len(), 1);

    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(tokens.redeem(&once).unwrap(), id, "the token was burned by a failed write");
    assert!(matches!(tokens.redeem(&once), Err(TokenError::AlreadyUsed)));
    let reopened = JoinTokens::open(&dir).unwrap();
    assert!(matches!(reopened.redeem(&once), Err(TokenError::AlreadyUsed)));
    std::fs::remove_dir_all(dir).unwrap();
}
