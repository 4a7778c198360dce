//! Join tokens: a secret given to a proxy (`--identity-token`) that the CA exchanges for the
//! identity it was created for.
//!
//! A token is 256 random bits, shown once at creation; only its SHA-256 is stored, with the
//! identity, the expiry and whether it may be redeemed once or until it expires. The store is a
//! JSON file next to the CA, replaced atomically and fsync'd on every change.

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
    #[error("token store {path}: {reason}")]
    Store { path: PathBuf, reason: String },
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

/// Join tokens, persisted in `<data_dir>/tokens.json`.
pub struct JoinTokens {
    path: PathBuf,
    inner: Mutex<File>,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokens").field("path", &self.path).finish_non_exhaustive()
    }
}

impl JoinTokens {
    /// Opens (or starts) the token store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, TokenError> {
        let path = data_dir.join(TOKENS_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| TokenError::Store { path: path.clone(), reason: format!("not valid JSON: {e}") })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(TokenError::Store { path, reason: e.to_string() }),
        };
        Ok(Self { path, inner: Mutex::new(file) })
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
        let mut file = self.inner.lock();
        let mut next = file.clone();
        next.tokens.insert(hash(&token), Record { identity, expires_at, usage, redeemed: false });
        self.save(&mut file, next, now)?;
        Ok(CreatedToken { token, expires_at })
    }

    /// [`TokenReviewer::redeem`] at a given time (tests).
    pub fn redeem_at(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        let hex_part = token.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed);
        }
        let mut file = self.inner.lock();
        let key = hash(token);
        let record = file.tokens.get(&key).ok_or(TokenError::Unknown)?;
        let now_s = unix(now);
        if now_s >= record.expires_at {
            return Err(TokenError::Expired(now_s - record.expires_at));
        }
        let identity = record.identity.clone();
        if record.usage == TokenUse::Single {
            if record.redeemed {
                return Err(TokenError::AlreadyUsed);
            }
            // Persist before answering, so a restart cannot make the token usable again; a
            // failed write leaves the token unredeemed, so the proxy can try again.
            let mut next = file.clone();
            if let Some(r) = next.tokens.get_mut(&key) {
                r.redeemed = true;
            }
            self.save(&mut file, next, now)?;
        }
        Ok(identity)
    }

    /// The identity `token` is bound to, if it is known and not expired, without redeeming
    /// it: an xDS stream presenting it may register endpoints (a single-use token that was
    /// redeemed for a certificate still authenticates its proxy's stream until it expires).
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        let hex_part = token.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed);
        }
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
        let mut file = self.inner.lock();
        let mut next = file.clone();
        next.tokens.retain(|_, r| &r.identity != identity);
        let removed = file.tokens.len() - next.tokens.len();
        self.save(&mut file, next, SystemTime::now())?;
        Ok(removed)
    }

    /// Tokens stored (expired ones are dropped at each write).
    pub fn len(&self) -> usize {
        self.inner.lock().tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write `next` to disk, and only then make it the store's state: a failed write (disk
    /// full, read-only) changes nothing, in memory or on disk.
    fn save(&self, file: &mut File, mut next: File, now: SystemTime) -> Result<(), TokenError> {
        let now_s = unix(now);
        // Redeemed single-use tokens stay until they expire, so a replay gets `AlreadyUsed`.
        next.tokens.retain(|_, r| r.expires_at > now_s);
        let json = serde_json::to_vec_pretty(&next)
            .map_err(|e| TokenError::Store { path: self.path.clone(), reason: e.to_string() })?;
        write_atomic(&self.path, &json, 0o600)?;
        *file = next;
        Ok(())
    }
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
