//! Join tokens: a secret given to a proxy (`--identity-token`) that the CA exchanges for the
//! identity it was created for.
//!
//! A token is 256 random bits, shown once at creation; only its SHA-256 is stored, with the
//! identity, the expiry and whether it may be redeemed once or until it expires. The store is a
//! JSON file next to the CA, replaced atomically and fsync'd on every change — or, with several
//! control plane replicas (Kubernetes mode), the same document in a store they share
//! ([`SharedBackend`], a Secret), changed by compare-and-swap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use ring::rand::SecureRandom as _;

use super::{CaError, Identity, write_atomic};

/// File name of the token store inside the CA data directory.
pub const TOKENS_FILE: &str = "tokens.json";
const TOKEN_PREFIX: &str = "ort_";

/// Why a token was not accepted. The messages never echo the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("join token is unknown (mistyped, revoked, or created on another control plane)")]
    Unknown,
    #[error("join token expired {0}s ago; create a new one with `outrider token create`")]
    Expired(u64),
    #[error("join token was already redeemed and is single-use; create a new one")]
    AlreadyUsed,
    #[error("join token is malformed: expected {TOKEN_PREFIX} followed by 64 hex digits")]
    Malformed,
    #[error("system random number generator failed")]
    Random,
    #[error("token store {store}: {reason}")]
    Store { store: String, reason: String },
    #[error(transparent)]
    Persist(#[from] CaError),
}

/// Turns a caller's credential into the identity it may receive a certificate for. Join tokens
/// today; Kubernetes `TokenReview` of a service-account token later.
pub trait TokenReviewer: Send + Sync {
    fn redeem(&self, token: &str) -> Result<Identity, TokenError>;
}

/// Whether a token can be redeemed more than once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenUse {
    /// Redeemed once; a second redemption fails. Use when renewals authenticate by other means.
    Single,
    /// Redeemable until it expires: the proxy presents it again at every certificate rotation.
    UntilExpiry,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    identity: Identity,
    /// Seconds since the Unix epoch.
    expires_at: u64,
    usage: TokenUse,
    redeemed: bool,
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Hex SHA-256 of the token → record.
    tokens: HashMap<String, Record>,
}

/// A token just created: the secret (shown once) and its expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedToken {
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

/// Where a token store shared by several control planes is kept (Kubernetes mode: a Secret).
/// The document is the same JSON as `tokens.json`; every change is a compare-and-swap on the
/// document's version, so concurrent writers on different replicas never lose each other's
/// changes and a single-use token is redeemed once across all of them.
pub trait SharedBackend: Send + Sync {
    /// The stored document and its version; `None` when nothing is stored yet. Blocking.
    fn load(&self) -> Result<Option<(Vec<u8>, String)>, String>;
    /// Store `bytes` if the stored version still is `version` (`None`: nothing stored yet);
    /// `Ok(false)` when another writer came first. Blocking.
    fn store(&self, bytes: &[u8], version: Option<&str>) -> Result<bool, String>;
    /// Where it is, for messages (`Secret outrider-system/outrider-join-tokens`).
    fn describe(&self) -> String;
}

/// How many times a change is retried when other replicas keep writing in between.
const CONFLICT_RETRIES: usize = 16;

enum Backend {
    /// `<data_dir>/tokens.json`, this process only.
    File(PathBuf),
    /// Shared by every replica; the in-memory copy follows [`JoinTokens::replace_shared`].
    Shared(Box<dyn SharedBackend>),
}

impl Backend {
    fn describe(&self) -> String {
        match self {
            Backend::File(path) => path.display().to_string(),
            Backend::Shared(shared) => shared.describe(),
        }
    }
}

/// Join tokens, persisted in `<data_dir>/tokens.json`, or shared by every control plane replica
/// ([`JoinTokens::shared`]).
pub struct JoinTokens {
    backend: Backend,
    inner: Mutex<File>,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokens").field("store", &self.backend.describe()).finish_non_exhaustive()
    }
}

impl JoinTokens {
    /// Opens (or starts) the token store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, TokenError> {
        let path = data_dir.join(TOKENS_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes, &path.display().to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(TokenError::Store { store: path.display().to_string(), reason: e.to_string() }),
        };
        Ok(Self { backend: Backend::File(path), inner: Mutex::new(file) })
    }

    /// A store shared by every replica through `backend`, read once now (blocking). Keep it
    /// current with [`JoinTokens::replace_shared`] from a watch of the backend: stream checks
    /// ([`JoinTokens::verify`]) read that copy; creation, redemption and revocation always read
    /// the backend itself.
    pub fn shared(backend: Box<dyn SharedBackend>) -> Result<Self, TokenError> {
        let store = backend.describe();
        let file = match backend.load().map_err(|reason| TokenError::Store { store: store.clone(), reason })? {
            Some((bytes, _)) => parse(&bytes, &store)?,
            None => File::default(),
        };
        Ok(Self { backend: Backend::Shared(backend), inner: Mutex::new(file) })
    }

    /// The shared document changed (`None`: deleted): replace the in-memory copy. A document
    /// that does not parse is ignored (logged), the copy kept.
    pub fn replace_shared(&self, bytes: Option<&[u8]>) {
        let next = match bytes {
            Some(b) => match parse(b, &self.backend.describe()) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "ignoring a join token store that does not parse");
                    return;
                }
            },
            None => File::default(),
        };
        *self.inner.lock() = next;
    }

    /// Creates a token for `identity` valid for `ttl`. The returned secret is not stored anywhere.
    pub fn create(&self, identity: Identity, ttl: Duration, usage: TokenUse) -> Result<String, TokenError> {
        self.create_at(identity, ttl, usage, SystemTime::now()).map(|created| created.token)
    }

    /// [`JoinTokens::create`] at a given time, also returning when the token expires.
    pub fn create_at(
        &self,
        identity: Identity,
        ttl: Duration,
        usage: TokenUse,
        now: SystemTime,
    ) -> Result<CreatedToken, TokenError> {
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut secret).map_err(|_| TokenError::Random)?;
        let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
        let expires_at = unix(now + ttl);
        let key = hash(&token);
        self.update(now, |file| {
            file.tokens.insert(key.clone(), Record { identity: identity.clone(), expires_at, usage, redeemed: false });
            Ok(((), true))
        })?;
        Ok(CreatedToken { token, expires_at })
    }

    /// [`TokenReviewer::redeem`] at a given time (tests).
    pub fn redeem_at(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        check_format(token)?;
        let key = hash(token);
        let now_s = unix(now);
        // Persisted before answering, so a restart (or another replica) cannot make a
        // single-use token usable again; a failed write leaves it unredeemed, so the proxy can
        // try again.
        self.update(now, |file| {
            let record = file.tokens.get_mut(&key).ok_or(TokenError::Unknown)?;
            if now_s >= record.expires_at {
                return Err(TokenError::Expired(now_s - record.expires_at));
            }
            let identity = record.identity.clone();
            if record.usage != TokenUse::Single {
                return Ok((identity, false));
            }
            if record.redeemed {
                return Err(TokenError::AlreadyUsed);
            }
            record.redeemed = true;
            Ok((identity, true))
        })
    }

    /// The identity `token` is bound to, if it is known and not expired, without redeeming
    /// it: an xDS stream presenting it may register endpoints (a single-use token that was
    /// redeemed for a certificate still authenticates its proxy's stream until it expires).
    /// Reads the in-memory copy (shared stores: as last watched).
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        check_format(token)?;
        let file = self.inner.lock();
        let record = file.tokens.get(&hash(token)).ok_or(TokenError::Unknown)?;
        let now_s = unix(now);
        if now_s >= record.expires_at {
            return Err(TokenError::Expired(now_s - record.expires_at));
        }
        Ok(record.identity.clone())
    }

    /// [`JoinTokens::verify_at`] now.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        self.verify_at(token, SystemTime::now())
    }

    /// Revokes every token bound to `identity`; returns how many.
    pub fn revoke(&self, identity: &Identity) -> Result<usize, TokenError> {
        self.update(SystemTime::now(), |file| {
            let before = file.tokens.len();
            file.tokens.retain(|_, r| &r.identity != identity);
            let removed = before - file.tokens.len();
            Ok((removed, removed > 0))
        })
    }

    /// Tokens stored (expired ones are dropped at each write).
    pub fn len(&self) -> usize {
        self.inner.lock().tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Apply `change` to the current state and persist it when it says it changed something
    /// (the `bool`); an error from `change` changes nothing. The state is written first and only
    /// then made the store's: a failed write (disk full, read-only, API server down) changes
    /// nothing, in memory or in the store. Shared stores read the current document, change it
    /// and swap it in if nobody wrote in between, else start again from what the other wrote.
    fn update<T>(
        &self,
        now: SystemTime,
        mut change: impl FnMut(&mut File) -> Result<(T, bool), TokenError>,
    ) -> Result<T, TokenError> {
        let now_s = unix(now);
        // Redeemed single-use tokens stay until they expire, so a replay gets `AlreadyUsed`.
        let drop_expired = |file: &mut File| file.tokens.retain(|_, r| r.expires_at > now_s);
        match &self.backend {
            Backend::File(path) => {
                let mut file = self.inner.lock();
                let mut next = file.clone();
                let (out, changed) = change(&mut next)?;
                if changed {
                    drop_expired(&mut next);
                    write_atomic(path, &serialize(&next, path.display())?, 0o600)?;
                    *file = next;
                }
                Ok(out)
            }
            Backend::Shared(shared) => {
                let store = || shared.describe();
                for _ in 0..CONFLICT_RETRIES {
                    let loaded = shared.load().map_err(|reason| TokenError::Store { store: store(), reason })?;
                    let (mut next, version) = match loaded {
                        Some((bytes, version)) => (parse(&bytes, &store())?, Some(version)),
                        None => (File::default(), None),
                    };
                    let (out, changed) = change(&mut next)?;
                    if changed {
                        drop_expired(&mut next);
                        let bytes = serialize(&next, store())?;
                        if !shared
                            .store(&bytes, version.as_deref())
                            .map_err(|reason| TokenError::Store { store: store(), reason })?
                        {
                            continue;
                        }
                    }
                    *self.inner.lock() = next;
                    return Ok(out);
                }
                Err(TokenError::Store {
                    store: store(),
                    reason: format!("changed by other writers {CONFLICT_RETRIES} times in a row; try again"),
                })
            }
        }
    }
}

fn check_format(token: &str) -> Result<(), TokenError> {
    let hex_part = token.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::Malformed);
    }
    Ok(())
}

/// The store's JSON; empty means no tokens.
fn parse(bytes: &[u8], store: &str) -> Result<File, TokenError> {
    if bytes.is_empty() {
        return Ok(File::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| TokenError::Store { store: store.to_owned(), reason: format!("not valid JSON: {e}") })
}

fn serialize(file: &File, store: impl std::fmt::Display) -> Result<Vec<u8>, TokenError> {
    serde_json::to_vec_pretty(file).map_err(|e| TokenError::Store { store: store.to_string(), reason: e.to_string() })
}

impl TokenReviewer for JoinTokens {
    fn redeem(&self, token: &str) -> Result<Identity, TokenError> {
        self.redeem_at(token, SystemTime::now())
    }
}

fn hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
