//! The mesh certificate authority: one root (generated on first start and persisted, or an
//! operator's own), short-lived workload certificates issued from a CSR, and the trust bundle
//! that proxies verify peers against.
//!
//! The identity written into a certificate is never taken from the CSR: the caller proves who it
//! is with a join token ([`tokens`]) or, on Kubernetes, its service-account token
//! ([`service_accounts`]), and [`Ca::issue`] takes the [`Identity`] that credential is bound to. The CSR only contributes its (signature-checked) public key, so the private key
//! stays in the proxy.
//!
//! Callers reach it through [`issuance::Issuance`] (a CSR plus a join token or a renewal proof),
//! served by the API (`POST /v1/certificates`, see `crate::api`); the control plane's own
//! serving certificate comes from [`serving`]. See `docs/security.md`.

/// A CSR plus a credential (join token, or proof of the current certificate) → a certificate.
pub mod issuance;
/// Kubernetes service-account tokens as a credential, behind [`service_accounts::ServiceAccountReviewer`].
pub mod service_accounts;
/// The control plane's own TLS: its certificate from this CA, rotated, and the rustls configs.
pub mod serving;
#[cfg(test)]
mod tests;
/// Join tokens bound to an identity, behind the [`tokens::TokenReviewer`] trait.
pub mod tokens;

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Default lifetime of a workload certificate.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Lifetime of a root the CA generates itself.
pub const GENERATED_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Workload certificates start this long before issuance, to tolerate clock skew between hosts.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

const ROOT_CERT_FILE: &str = "root.pem";
const ROOT_KEY_FILE: &str = "root.key";
const BUNDLE_FILE: &str = "bundle.pem";

/// Errors of the CA, each saying what to check.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid trust domain {0:?}: expected lowercase letters, digits, '.', '-' or '_'")]
    InvalidTrustDomain(String),
    #[error("invalid {field} {value:?}: expected 1-63 characters of [a-z0-9-], not starting or ending with '-'")]
    InvalidName { field: &'static str, value: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("root key {0} is readable by group or others (mode {1:o}); chmod 600 it")]
    KeyPermissions(PathBuf, u32),
    #[error("root certificate {path}: {reason}")]
    BadRoot { path: PathBuf, reason: String },
    #[error("certificate signing request rejected: {0}; the proxy must send a PEM PKCS#10 CSR signed by its key")]
    BadCsr(String),
    #[error("cannot build certificate for {identity}: {reason}")]
    Build { identity: String, reason: String },
    #[error("trust bundle entry is not a PEM certificate: {0}")]
    BadBundleEntry(String),
    #[error("cannot remove the CA's signing root from the trust bundle")]
    RemoveSigningRoot,
}

/// A workload identity as the control plane knows it: namespace + service account, within the
/// CA's trust domain. Rendered as `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    /// Validates both names (Kubernetes DNS-label rules, so they are safe inside a SPIFFE path).
    pub fn new(namespace: &str, service_account: &str) -> Result<Self, CaError> {
        validate_label("namespace", namespace)?;
        validate_label("service account", service_account)?;
        Ok(Self { namespace: namespace.to_owned(), service_account: service_account.to_owned() })
    }

    /// The SPIFFE ID of this identity in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &TrustDomain) -> String {
        format!("spiffe://{}/ns/{}/sa/{}", trust_domain.0, self.namespace, self.service_account)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

fn validate_label(field: &'static str, value: &str) -> Result<(), CaError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && !value.starts_with('-')
        && !value.ends_with('-')
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(CaError::InvalidName { field, value: value.to_owned() }) }
}

/// A SPIFFE trust domain (`cluster.local`, `example.org`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(value: &str) -> Result<Self, CaError> {
        let ok = !value.is_empty()
            && value.len() <= 255
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if ok { Ok(Self(value.to_owned())) } else { Err(CaError::InvalidTrustDomain(value.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the root comes from.
#[derive(Clone, Debug)]
pub enum RootSource {
    /// Load `<data_dir>/root.pem` + `root.key`, generating and persisting them on first start.
    Generated,
    /// An operator's root (or intermediate) certificate and its PKCS#8 key, both PEM.
    Files { cert: PathBuf, key: PathBuf },
    /// A root certificate and key held elsewhere (the Kubernetes mode's Secret), both PEM;
    /// `origin` names where, for messages.
    Pem { cert: String, key: String, origin: String },
}

/// CA settings; defaults live here.
#[derive(Clone, Debug)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    /// Directory for the generated root, the trust bundle and the token store.
    pub data_dir: PathBuf,
    pub root: RootSource,
    pub workload_ttl: Duration,
}

impl CaConfig {
    pub fn new(trust_domain: TrustDomain, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            trust_domain,
            data_dir: data_dir.into(),
            root: RootSource::Generated,
            workload_ttl: DEFAULT_WORKLOAD_TTL,
        }
    }
}

/// PEM roots a proxy trusts. Holds the old and the new root during a root rotation.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrustBundle {
    pub roots: Vec<String>,
}

impl TrustBundle {
    /// All roots concatenated, as one PEM file.
    pub fn to_pem(&self) -> String {
        self.roots.concat()
    }
}

/// A certificate issued to a workload.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The SPIFFE ID written into the URI SAN.
    pub spiffe_id: String,
    /// Leaf first, then the signing CA certificate (PEM).
    pub chain_pem: Vec<String>,
    pub not_after: SystemTime,
}

/// The certificate authority.
pub struct Ca {
    trust_domain: TrustDomain,
    data_dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    /// Roots trusted besides the signing root (an old root during rotation), persisted.
    extra_roots: RwLock<Vec<String>>,
    workload_ttl: Duration,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("trust_domain", &self.trust_domain).field("data_dir", &self.data_dir).finish()
    }
}

impl Ca {
    /// Opens the CA: loads the operator's root, or the persisted generated one, or generates it.
    pub fn open(config: CaConfig) -> Result<Self, CaError> {
        create_private_dir(&config.data_dir)?;
        let (root_pem, key) = match &config.root {
            RootSource::Files { cert, key } => load_root(cert, key, false)?,
            RootSource::Pem { cert, key, origin } => {
                parse_root(cert.clone(), key, Path::new(origin), Path::new(origin))?
            }
            RootSource::Generated => {
                let cert = config.data_dir.join(ROOT_CERT_FILE);
                let key = config.data_dir.join(ROOT_KEY_FILE);
                if cert.exists() {
                    load_root(&cert, &key, true)?
                } else {
                    let (pem, key_pair) = generate_root(&config.trust_domain)?;
                    // Key first: a root.pem without its key must never be observed.
                    write_atomic(&config.data_dir.join(ROOT_KEY_FILE), key_pair.serialize_pem().as_bytes(), 0o600)?;
                    write_atomic(&cert, pem.as_bytes(), 0o644)?;
                    (pem, key_pair)
                }
            }
        };
        let issuer = Issuer::from_ca_cert_pem(&root_pem, key)
            .map_err(|e| CaError::BadRoot { path: config.data_dir.join(ROOT_CERT_FILE), reason: e.to_string() })?;
        let bundle_path = config.data_dir.join(BUNDLE_FILE);
        let extra_roots = match std::fs::read_to_string(&bundle_path) {
            Ok(text) => {
                split_pem_certs(&text)?.into_iter().filter(|pem| normalize(pem) != normalize(&root_pem)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(CaError::Io { op: "read", path: bundle_path, source }),
        };
        Ok(Self {
            trust_domain: config.trust_domain,
            data_dir: config.data_dir,
            issuer,
            root_pem,
            extra_roots: RwLock::new(extra_roots),
            workload_ttl: config.workload_ttl,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The signing root, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The signing root plus every other trusted root (old roots during a rotation).
    pub fn trust_bundle(&self) -> TrustBundle {
        let mut roots = vec![self.root_pem.clone()];
        roots.extend(self.extra_roots.read().iter().cloned());
        TrustBundle { roots }
    }

    /// Trusts `pem` in addition to the signing root (persisted). During a root rotation, the new
    /// CA adds the old root here until every certificate signed by it has expired.
    pub fn add_trusted_root(&self, pem: &str) -> Result<(), CaError> {
        let certs = split_pem_certs(pem)?;
        let mut extra = self.extra_roots.write();
        for cert in certs {
            if normalize(&cert) != normalize(&self.root_pem) && !extra.iter().any(|r| normalize(r) == normalize(&cert))
            {
                extra.push(cert);
            }
        }
        write_atomic(&self.data_dir.join(BUNDLE_FILE), extra.concat().as_bytes(), 0o644)
    }

    /// Stops trusting `pem` (the old root, once its certificates have expired).
    pub fn remove_trusted_root(&self, pem: &str) -> Result<(), CaError> {
        if normalize(pem) == normalize(&self.root_pem) {
            return Err(CaError::RemoveSigningRoot);
        }
        let mut extra = self.extra_roots.write();
        extra.retain(|r| normalize(r) != normalize(pem));
        write_atomic(&self.data_dir.join(BUNDLE_FILE), extra.concat().as_bytes(), 0o644)
    }

    /// Issues a workload certificate for `identity` (from the caller's redeemed join token) with
    /// the public key of `csr_pem`. Whatever names the CSR asks for are ignored.
    pub fn issue(&self, csr_pem: &str, identity: &Identity) -> Result<IssuedCert, CaError> {
        self.issue_with_ttl(csr_pem, identity, self.workload_ttl)
    }

    /// [`Ca::issue`] with an explicit lifetime (tests, short-lived certificates).
    pub fn issue_with_ttl(&self, csr_pem: &str, identity: &Identity, ttl: Duration) -> Result<IssuedCert, CaError> {
        self.issue_with_sans(csr_pem, identity, Vec::new(), ttl)
    }

    /// The configured workload certificate lifetime.
    pub fn workload_ttl(&self) -> Duration {
        self.workload_ttl
    }

    /// [`Ca::issue_with_ttl`] with DNS / IP SANs after the SPIFFE URI SAN: the control plane's
    /// own serving certificate, which clients may check by host name.
    pub fn issue_with_sans(
        &self,
        csr_pem: &str,
        identity: &Identity,
        extra_sans: Vec<SanType>,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        // Parsing verifies the CSR's self-signature, so the caller holds the private key.
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let spiffe_id = identity.spiffe_id(&self.trust_domain);
        let build_err = |reason: String| CaError::Build { identity: spiffe_id.clone(), reason };

        let now = SystemTime::now();
        let not_after = now + ttl;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, self.trust_domain.as_str());
        params.subject_alt_names =
            vec![SanType::URI(spiffe_id.clone().try_into().map_err(|e: rcgen::Error| build_err(e.to_string()))?)];
        params.subject_alt_names.extend(extra_sans);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().map_err(build_err)?);
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = OffsetDateTime::from(not_after);

        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(|e| build_err(e.to_string()))?;
        tracing::info!(identity = %spiffe_id, ttl_secs = ttl.as_secs(), "issued workload certificate");
        Ok(IssuedCert { spiffe_id, chain_pem: vec![cert.pem(), self.root_pem.clone()], not_after })
    }
}

/// A new self-signed root for `trust_domain`: (certificate, PKCS#8 key), both PEM.
pub fn generate_root_pem(trust_domain: &TrustDomain) -> Result<(String, String), CaError> {
    let (cert, key) = generate_root(trust_domain)?;
    Ok((cert, key.serialize_pem()))
}

fn generate_root(trust_domain: &TrustDomain) -> Result<(String, KeyPair), CaError> {
    let bad = |e: rcgen::Error| CaError::Build { identity: "root CA".to_owned(), reason: e.to_string() };
    let key = KeyPair::generate().map_err(bad)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, trust_domain.as_str());
    params.distinguished_name.push(DnType::CommonName, "Outrider mesh root CA");
    // pathlen 0: this root signs workload certificates directly, nothing else.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number =
        Some(random_serial().map_err(|reason| CaError::Build { identity: "root CA".to_owned(), reason })?);
    let now = SystemTime::now();
    params.not_before = OffsetDateTime::from(now - CLOCK_SKEW_ALLOWANCE);
    params.not_after = OffsetDateTime::from(now + GENERATED_ROOT_TTL);
    let cert = params.self_signed(&key).map_err(bad)?;
    tracing::info!(trust_domain = trust_domain.as_str(), "generated a new mesh root CA");
    Ok((cert.pem(), key))
}

fn load_root(cert_path: &Path, key_path: &Path, check_mode: bool) -> Result<(String, KeyPair), CaError> {
    let cert_pem = std::fs::read_to_string(cert_path).map_err(|source| CaError::Io {
        op: "read",
        path: cert_path.into(),
        source,
    })?;
    let meta =
        std::fs::metadata(key_path).map_err(|source| CaError::Io { op: "stat", path: key_path.into(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if check_mode && mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions(key_path.into(), mode));
    }
    let key_pem = std::fs::read_to_string(key_path).map_err(|source| CaError::Io {
        op: "read",
        path: key_path.into(),
        source,
    })?;
    parse_root(cert_pem, &key_pem, cert_path, key_path)
}

/// A CA certificate and its key (PEM), checked to be a CA and to belong together; the paths
/// name them in errors.
fn parse_root(
    cert_pem: String,
    key_pem: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(String, KeyPair), CaError> {
    let bad = |reason: String| CaError::BadRoot { path: cert_path.into(), reason };
    let key = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("key {}: {e}", key_path.display())))?;

    let der = split_pem_certs(&cert_pem)?
        .first()
        .and_then(|pem| pem_to_der(pem))
        .ok_or_else(|| bad("no PEM CERTIFICATE block".to_owned()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(format!("not X.509: {e}")))?;
    if !cert.is_ca() {
        return Err(bad("not a CA certificate (basicConstraints CA:TRUE missing)".to_owned()));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(format!("key {} does not belong to this certificate", key_path.display())));
    }
    Ok((cert_pem, key))
}

fn random_serial() -> Result<SerialNumber, String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "system random number generator failed".to_owned())?;
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // and no leading zero byte to strip
    Ok(SerialNumber::from_slice(&bytes))
}

/// Splits a PEM text into its CERTIFICATE blocks (each re-rendered with its armor).
pub fn split_pem_certs(text: &str) -> Result<Vec<String>, CaError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else {
            return Err(CaError::BadBundleEntry("unterminated CERTIFICATE block".to_owned()));
        };
        let block = format!("{}\n", &after[..end + END.len()]);
        if pem_to_der(&block).is_none() {
            return Err(CaError::BadBundleEntry("CERTIFICATE block is not valid base64".to_owned()));
        }
        out.push(block);
        rest = &after[end + END.len()..];
    }
    if out.is_empty() && !text.trim().is_empty() {
        return Err(CaError::BadBundleEntry("no CERTIFICATE block found".to_owned()));
    }
    Ok(out)
}

fn pem_to_der(block: &str) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(block.as_bytes()).ok()?;
    Some(parsed.contents)
}

fn normalize(pem: &str) -> String {
    pem.split_whitespace().collect()
}

/// Creates `dir` (mode 0700) if needed.
fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| CaError::Io { op: "create directory", path: dir.into(), source })
}

/// Writes `bytes` to `path` atomically and durably: a temporary file with `mode` in the same
/// directory, fsync, rename over `path`, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    fn io(op: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> CaError + use<> {
        let path = p.to_path_buf();
        move |source| CaError::Io { op, path, source }
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        // `mode` on open is filtered by the umask and ignored for an existing file: set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &tmp))?;
        file.write_all(bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io("rename into", path))
    })();
    if written.is_err() {
        // A half-written temp file (disk full) would keep the space the next write needs.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync directory", dir))?;
    Ok(())
}
