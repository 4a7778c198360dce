//! Service-account tokens checked by the API server: a `TokenReview` (authentication.k8s.io/v1)
//! for the mesh's audience. The API server checks the signature, the expiry, the audience, and
//! for a pod-bound projected token that the pod (and its service account) still exist; the
//! identity is the account in `status.user.username`. The control plane's own RBAC needs
//! `create` on `tokenreviews` and nothing else for this.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::ca::Identity;
use crate::ca::service_accounts::{ReviewError, ReviewFuture, ServiceAccountReviewer, identity_of_username};

/// Reviews tokens with the API server, for one audience.
#[derive(Clone)]
pub struct ApiServerReviewer {
    reviews: Api<TokenReview>,
    audience: String,
}

impl std::fmt::Debug for ApiServerReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerReviewer").field("audience", &self.audience).finish_non_exhaustive()
    }
}

impl ApiServerReviewer {
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        Self { reviews: Api::all(client), audience: audience.into() }
    }

    async fn review_token(&self, token: &str) -> Result<Identity, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let answer = self
            .reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let rejected = |reason: String| ReviewError::Rejected { audience: self.audience.clone(), reason };
        let status = answer.status.ok_or_else(|| rejected("the review has no status".into()))?;
        if status.authenticated != Some(true) {
            let reason = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "not authenticated".into());
            return Err(rejected(reason));
        }
        // The API server answers with the audiences the token is valid for among those asked.
        if !status.audiences.as_ref().is_some_and(|a| a.contains(&self.audience)) {
            return Err(rejected("the token is not for this audience".into()));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        identity_of_username(&username)
    }
}

impl ServiceAccountReviewer for ApiServerReviewer {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
        Box::pin(self.review_token(token))
    }
}
