//! Who an xDS stream is: the identity of its client certificate (xDS over mTLS), else of the
//! join token it sends as stream metadata (`authorization: Bearer <token>`, verified without
//! being redeemed), else nobody. Only an authenticated stream may register its workload as an
//! endpoint, unless the control plane runs with `--insecure-registration`; any stream gets
//! its config. Unauthenticated streams also get a small request size limit.

use std::sync::Arc;

use outrider_xds::join_token;

use crate::ca::TrustDomain;
use crate::ca::serving::PeerIdentity;
use crate::ca::tokens::JoinTokens;

/// Largest request on an authenticated stream (a reconnecting client lists every resource it
/// has: about 50 bytes each, so 16 MiB is some 300,000 resources).
pub const MAX_REQUEST: usize = 16 << 20;

/// Largest request on an unauthenticated stream: enough for a plaintext sidecar's reconnect
/// in a 10,000-service mesh (about 0.5 MiB of resource names and versions per type), small
/// enough that anyone who can reach the port cannot make the server buffer much.
pub const MAX_UNAUTHENTICATED_REQUEST: usize = 1 << 20;

/// How a stream proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamAuth {
    /// A client certificate of the mesh CA.
    Certificate(PeerIdentity),
    /// A valid join token, bound to this identity.
    JoinToken(PeerIdentity),
    /// Neither; why (for the log and `outrider status`).
    None(String),
}

impl StreamAuth {
    /// The identity, when authenticated.
    pub fn peer(&self) -> Option<&PeerIdentity> {
        match self {
            StreamAuth::Certificate(p) | StreamAuth::JoinToken(p) => Some(p),
            StreamAuth::None(_) => None,
        }
    }

    /// For `/v1/status`: `certificate`, `join-token` or `none`.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamAuth::Certificate(_) => "certificate",
            StreamAuth::JoinToken(_) => "join-token",
            StreamAuth::None(_) => "none",
        }
    }

    /// Largest request the stream may send.
    pub fn max_request(&self) -> usize {
        match self {
            StreamAuth::None(_) => MAX_UNAUTHENTICATED_REQUEST,
            _ => MAX_REQUEST,
        }
    }
}

/// Authenticates streams; shared by all of them.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    /// Join tokens and the trust domain their identities live in; `None`: certificates only.
    tokens: Option<(Arc<JoinTokens>, TrustDomain)>,
    /// `--insecure-registration`: unauthenticated streams may register endpoints too.
    pub insecure_registration: bool,
}

impl Authenticator {
    pub fn new(tokens: Option<(Arc<JoinTokens>, TrustDomain)>, insecure_registration: bool) -> Self {
        Self { tokens, insecure_registration }
    }

    /// The stream's identity from its client certificate, else from the join token in
    /// `headers`.
    pub fn authenticate(&self, headers: &http::HeaderMap, certificate: Option<&PeerIdentity>) -> StreamAuth {
        if let Some(peer) = certificate {
            return StreamAuth::Certificate(peer.clone());
        }
        let Some(value) = headers.get(join_token::METADATA_KEY) else {
            return StreamAuth::None("no client certificate and no join token".into());
        };
        let Some(token) = value.to_str().ok().and_then(join_token::from_bearer) else {
            return StreamAuth::None("the authorization metadata is not `Bearer <join token>`".into());
        };
        let Some((tokens, trust_domain)) = &self.tokens else {
            return StreamAuth::None("join tokens are not accepted on this server".into());
        };
        let identity = match tokens.verify(token) {
            Ok(i) => i,
            Err(e) => return StreamAuth::None(format!("join token rejected: {e}")),
        };
        match outrider_proxy::tls::Identity::parse(&identity.spiffe_id(trust_domain)) {
            Ok(id) => StreamAuth::JoinToken(PeerIdentity(id)),
            Err(e) => StreamAuth::None(format!("join token identity {identity}: {e}")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::Identity;
    use crate::ca::tokens::TokenUse;

    fn tokens(name: &str) -> (Arc<JoinTokens>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("outrider-auth-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        (Arc::new(JoinTokens::open(&dir).unwrap()), dir)
    }

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(join_token::METADATA_KEY, value.parse().unwrap());
        h
    }

    #[test]
    fn a_valid_join_token_authenticates_as_its_identity_and_a_certificate_wins() {
        let (store, dir) = tokens("valid");
        let token =
            store.create(Identity::new("shop", "web").unwrap(), Duration::from_secs(60), TokenUse::Single).unwrap();
        let auth = Authenticator::new(Some((store, TrustDomain::new("outrider.local").unwrap())), false);
        let got = auth.authenticate(&headers(&join_token::bearer(&token)), None);
        assert_eq!(got.kind(), "join-token");
        assert_eq!(got.peer().unwrap().0.as_str(), "spiffe://outrider.local/ns/shop/sa/web");
        assert_eq!(got.max_request(), MAX_REQUEST);

        let cert = PeerIdentity(outrider_proxy::tls::Identity::parse("spiffe://outrider.local/ns/a/sa/b").unwrap());
        assert_eq!(auth.authenticate(&headers("Bearer nonsense"), Some(&cert)), StreamAuth::Certificate(cert));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn without_a_valid_credential_the_stream_is_unauthenticated_and_says_why() {
        let (store, dir) = tokens("invalid");
        let auth = Authenticator::new(Some((store, TrustDomain::new("outrider.local").unwrap())), false);
        for (h, why) in [
            (http::HeaderMap::new(), "no client certificate"),
            (headers("Basic x"), "not `Bearer"),
            (headers(&format!("Bearer ort_{}", "0".repeat(64))), "unknown"),
            (headers("Bearer ort_short"), "malformed"),
        ] {
            let got = auth.authenticate(&h, None);
            let StreamAuth::None(reason) = &got else { panic!("authenticated: {got:?}") };
            assert!(reason.contains(why), "{reason}");
            assert_eq!(got.max_request(), MAX_UNAUTHENTICATED_REQUEST);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
