//! Kubernetes service-account tokens as a credential: a sidecar presents the projected token of
//! its pod (audience `outrider` by default), the control plane asks the API server who it
//! belongs to (a `TokenReview`, see `crate::kubernetes::token_review`), and the identity is the
//! account's: `system:serviceaccount:<ns>:<sa>` → `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//!
//! Join tokens are redeemed on a blocking thread (a single-use token is fsync'd); a review is a
//! call to the API server, so it has a trait of its own, asynchronous: [`ServiceAccountReviewer`].
//! [`Cached`] keeps a review's answer for a short while, so a reconnecting fleet does not turn
//! into one `TokenReview` per stream and per certificate.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::Identity;

/// How the API server names a service account's user.
pub const USERNAME_PREFIX: &str = "system:serviceaccount:";
/// How long a positive review is reused (bounded by the token's own expiry).
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Reviews kept at most; the oldest half is dropped when full.
pub const CACHE_ENTRIES: usize = 16_384;

/// Why a service-account token was not accepted. The messages never echo the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("the service-account token was refused for audience {audience:?}: {reason}")]
    Rejected { audience: String, reason: String },
    #[error("the token authenticates {0:?}, which is not a service account")]
    NotServiceAccount(String),
    #[error("the token's service account {0:?}: {1}")]
    BadName(String, String),
    #[error(
        "cannot review the token with the API server: {0}; is it reachable, and may the control plane \
         create tokenreviews (authentication.k8s.io)?"
    )]
    Unavailable(String),
    #[error(
        "this looks like a Kubernetes service-account token, but this control plane does not review them \
         (it runs without --kubernetes); use a join token (`outrider token create`)"
    )]
    NotEnabled,
}

impl ReviewError {
    /// 503 when the API server could not be asked, 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            ReviewError::Unavailable(_) => 503,
            _ => 401,
        }
    }

    /// `reason` label of `outrider_ca_issue_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReviewError::Unavailable(_) => "review_unavailable",
            ReviewError::NotEnabled => "token_malformed",
            _ => "token_rejected",
        }
    }
}

/// A boxed review in progress.
pub type ReviewFuture<'a> = Pin<Box<dyn Future<Output = Result<Identity, ReviewError>> + Send + 'a>>;

/// Who a service-account token belongs to.
pub trait ServiceAccountReviewer: Send + Sync + std::fmt::Debug {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a>;
}

/// Shared [`ServiceAccountReviewer`].
pub type Reviewer = Arc<dyn ServiceAccountReviewer>;

/// Whether `token` is a join token (`ort_…`) rather than a service-account JWT.
pub fn is_join_token(token: &str) -> bool {
    token.starts_with("ort_")
}

/// Whether `token` has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// `system:serviceaccount:NS:SA` → the identity.
pub fn identity_of_username(username: &str) -> Result<Identity, ReviewError> {
    let rest = username.strip_prefix(USERNAME_PREFIX).ok_or_else(|| ReviewError::NotServiceAccount(username.into()))?;
    let (namespace, account) =
        rest.split_once(':').ok_or_else(|| ReviewError::NotServiceAccount(username.to_owned()))?;
    Identity::new(namespace, account).map_err(|e| ReviewError::BadName(rest.to_owned(), e.to_string()))
}

/// The `exp` claim of a JWT (Unix seconds), read without checking anything: only to bound how
/// long a review the API server accepted is reused.
fn jwt_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

/// A reviewer whose positive answers are reused for [`CACHE_TTL`], or until the token expires
/// if sooner. Refusals are not kept: a token that starts working (a service account created a
/// moment later) is accepted at once. Keys are SHA-256 digests; tokens are not stored.
#[derive(Debug)]
pub struct Cached<R> {
    inner: R,
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
}

impl<R: ServiceAccountReviewer> Cached<R> {
    pub fn new(inner: R) -> Self {
        Self::with_ttl(inner, CACHE_TTL)
    }

    pub fn with_ttl(inner: R, ttl: Duration) -> Self {
        Self { inner, ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn key(token: &str) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    async fn review_cached(&self, token: &str) -> Result<Identity, ReviewError> {
        let key = Self::key(token);
        let now = Instant::now();
        if let Some((identity, until)) = self.entries.lock().get(&key)
            && *until > now
        {
            return Ok(identity.clone());
        }
        let identity = self.inner.review(token).await?;
        let mut ttl = self.ttl;
        if let Some(exp) = jwt_expiry(token) {
            let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            ttl = ttl.min(Duration::from_secs(exp.saturating_sub(now_unix)));
        }
        if !ttl.is_zero() {
            let mut entries = self.entries.lock();
            if entries.len() >= CACHE_ENTRIES {
                let now = Instant::now();
                entries.retain(|_, (_, until)| *until > now);
                if entries.len() >= CACHE_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(key, (identity.clone(), Instant::now() + ttl));
        }
        Ok(identity)
    }
}

impl<R: ServiceAccountReviewer> ServiceAccountReviewer for Cached<R> {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
        Box::pin(self.review_cached(token))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Accepts tokens named `ok-NS-SA` (counting the calls), refuses the rest.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl ServiceAccountReviewer for Counting {
        fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let result = match token.split('-').collect::<Vec<_>>().as_slice() {
                ["ok", ns, sa, ..] => Ok(Identity::new(ns, sa).unwrap()),
                _ => Err(ReviewError::Rejected { audience: "outrider".into(), reason: "no".into() }),
            };
            Box::pin(std::future::ready(result))
        }
    }

    fn jwt(exp: u64) -> String {
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("ok-shop-web-{}.{}.sig", b64(serde_json::json!({"alg": "ES256"})), b64(serde_json::json!({"exp": exp})))
    }

    #[test]
    fn usernames_of_service_accounts_only() {
        assert_eq!(identity_of_username("system:serviceaccount:shop:web"), Ok(Identity::new("shop", "web").unwrap()));
        assert_eq!(identity_of_username("admin"), Err(ReviewError::NotServiceAccount("admin".into())));
        assert_eq!(
            identity_of_username("system:serviceaccount:shop"),
            Err(ReviewError::NotServiceAccount("system:serviceaccount:shop".into()))
        );
        assert!(matches!(identity_of_username("system:serviceaccount:Shop:web"), Err(ReviewError::BadName(..))));
        assert!(looks_like_jwt("eyJhbGci.eyJleHAi.c2ln"));
        assert!(!looks_like_jwt("ort_00") && !looks_like_jwt("a.b") && !looks_like_jwt("a.b c.d"));
        assert!(is_join_token("ort_abc") && !is_join_token("eyJ.a.b"));
    }

    #[tokio::test(start_paused = true)]
    async fn positive_reviews_are_reused_for_a_while_and_refusals_never() {
        let cached = Cached::new(Counting::default());
        let far = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        let token = jwt(far);
        for _ in 0..3 {
            assert_eq!(cached.review(&token).await.unwrap(), Identity::new("shop", "web").unwrap());
        }
        assert_eq!(cached.inner.0.load(Ordering::SeqCst), 1, "one review for three uses");
        tokio::time::advance(CACHE_TTL + Duration::from_secs(1)).await;
        cached.review(&token).await.unwrap();
        assert_eq!(cached.inner.0.load(Ordering::SeqCst), 2, "reviewed again after the TTL");

        for _ in 0..2 {
            assert!(cached.review("bad.token.x").await.is_err());
        }
        assert_eq!(cached.inner.0.load(Ordering::SeqCst), 4, "refusals are asked every time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_not_reused_past_its_expiry() {
        let cached = Cached::new(Counting::default());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        // Expired (the reviewer here does not look): never cached.
        let expired = jwt(now.saturating_sub(5));
        cached.review(&expired).await.unwrap();
        cached.review(&expired).await.unwrap();
        assert_eq!(cached.inner.0.load(Ordering::SeqCst), 2);
    }
}
