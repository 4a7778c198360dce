//! HTTP/1.1 upgrades (WebSocket and friends): once the upstream answers 101, the downstream
//! connection is handed over by the server ([`super::server::h1::OnUpgrade`]) and the
//! upstream one by hyper's client, and the two are spliced byte for byte.
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::server::h1::Upgrading;

/// Splice the two upgraded connections in a task of their own.
pub fn splice(downstream: Upgrading, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (mut down, up) = match tokio::try_join!(downstream, async { upstream.await.map_err(std::io::Error::other) })
        {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut up = TokioIo::new(up);
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((sent, received)) => tracing::debug!(sent, received, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        }
    });
}
