//! Obtaining the certificate at start and renewing it before it expires.
//!
//! Each renewal generates a new key and CSR, asks the [`CertIssuer`] (the control plane's CA,
//! once the issuance endpoint exists) and installs the result; failures retry with the shared
//! jittered backoff while the current certificate stays in use.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{CertStore, TlsError, new_key_and_csr};
use crate::backoff::ExponentialBackoff;

/// Something that turns a CSR into a certificate chain (PEM, leaf first) for this proxy's
/// identity, authenticating the proxy by its own means (join token, later the current cert).
pub trait CertIssuer: Send + Sync {
    fn issue(&self, csr_pem: String) -> impl Future<Output = Result<Vec<String>, TlsError>> + Send;
}

/// Generates a key, gets it certified and installs it. Used at start (before `/ready`) and by
/// [`run`].
pub async fn renew<I: CertIssuer>(store: &CertStore, issuer: &I) -> Result<(), TlsError> {
    let key = new_key_and_csr(store.identity())?;
    let chain = issuer.issue(key.csr_pem.clone()).await?;
    store.install(key, &chain)
}

/// Renews at [`CertStore::rotate_at`], forever. Spawn it after the first [`renew`] succeeded.
pub async fn run<I: CertIssuer>(store: Arc<CertStore>, issuer: I, backoff: ExponentialBackoff) {
    let mut failures = 0u32;
    loop {
        let wait = match store.rotate_at() {
            Some(at) if failures == 0 => at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO),
            Some(_) => backoff.delay(failures - 1),
            None => backoff.delay(failures.saturating_sub(1)),
        };
        tokio::time::sleep(wait).await;
        match renew(&store, &issuer).await {
            Ok(()) => failures = 0,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%error, failures, expires_in_s = store.expiry_seconds(), "certificate renewal failed; retrying");
            }
        }
    }
}
