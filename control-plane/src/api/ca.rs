//! The CA over the API: `GET /v1/ca/bundle`, `POST /v1/tokens` (operator, API token) and
//! `POST /v1/certificates` (proxies: a CSR with a join token or a renewal proof).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, Body, authorized, error, json_response, unauthorized};
use crate::ca::issuance::{Credential, IssueError, RenewalProof, check_csr};
use crate::ca::service_accounts::{ReviewError, is_join_token, looks_like_jwt};
use crate::ca::tokens::TokenUse;
use crate::ca::{CaError, Identity};
use crate::metrics::ReasonLabels;

/// Lifetime of a join token that does not say.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest join token lifetime accepted.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Largest body of a token or certificate request (a CSR plus a chain is a few KiB).
pub const MAX_CA_BODY: usize = 64 << 10;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenRequest {
    namespace: Option<String>,
    service_account: Option<String>,
    /// e.g. `24h`.
    ttl: Option<String>,
    #[serde(default)]
    single_use: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CertificateRequest {
    csr: String,
    renewal: Option<RenewalProof>,
    /// A node proxy asking for one of its workloads' certificates: the node's own chain and
    /// its signature over the CSR.
    node: Option<RenewalProof>,
}

/// `GET /v1/ca/bundle`: the roots proxies trust (no auth: they are public).
pub(super) fn bundle(state: &ApiState) -> Response<Body> {
    let ca = state.issuance.ca();
    json_response(StatusCode::OK, &json!({"trustDomain": ca.trust_domain().as_str(), "roots": ca.trust_bundle().roots}))
}

fn bad_field(field: &str, message: impl std::fmt::Display) -> Response<Body> {
    json_response(StatusCode::BAD_REQUEST, &json!({"error": format!("{field}: {message}"), "field": field}))
}

async fn read_body(req: Request<Incoming>) -> Result<bytes::Bytes, Response<Body>> {
    match Limited::new(req.into_body(), MAX_CA_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("cannot read the body (at most {MAX_CA_BODY} bytes): {e}"),
        )),
    }
}

/// `POST /v1/tokens`: a join token for an identity.
pub(super) async fn create_token(state: &ApiState, req: Request<Incoming>) -> Response<Body> {
    if !authorized(state, &req) {
        return unauthorized();
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let request: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid token request: {e}; expected {{namespace, serviceAccount, ttl?, singleUse?}}"),
            );
        }
    };
    let Some(namespace) = request.namespace else {
        return bad_field("namespace", "required");
    };
    let Some(service_account) = request.service_account else {
        return bad_field("serviceAccount", "required");
    };
    let identity = match Identity::new(&namespace, &service_account) {
        Ok(i) => i,
        Err(CaError::InvalidName { field, value }) => {
            let field = if field == "namespace" { "namespace" } else { "serviceAccount" };
            return bad_field(
                field,
                format!("{value:?} is not a DNS label (1-63 characters of [a-z0-9-], not starting or ending with '-')"),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let ttl = match request.ttl.as_deref().map(outrider_xds::duration::parse) {
        None => DEFAULT_TOKEN_TTL,
        Some(Ok(t)) if !t.is_zero() && t <= MAX_TOKEN_TTL => t,
        Some(Ok(t)) => return bad_field("ttl", format!("{t:?} is out of range (more than 0, at most 365 days)")),
        Some(Err(e)) => return bad_field("ttl", e),
    };
    let usage = if request.single_use { TokenUse::Single } else { TokenUse::UntilExpiry };
    let spiffe_id = identity.spiffe_id(state.issuance.ca().trust_domain());
    let tokens = state.tokens.clone();
    let created = tokio::task::spawn_blocking(move || tokens.create_at(identity, ttl, usage, SystemTime::now())).await;
    match created {
        Ok(Ok(created)) => {
            tracing::info!(identity = %spiffe_id, expires_at = created.expires_at, single_use = request.single_use, "join token created");
            json_response(
                StatusCode::OK,
                &json!({
                    "token": created.token,
                    "identity": spiffe_id,
                    "expiresAt": created.expires_at,
                    "singleUse": request.single_use,
                }),
            )
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot create a join token");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot create the token: {e}"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot create the token: {e}")),
    }
}

enum OwnedCredential {
    JoinToken(String),
    Renewal(RenewalProof),
    /// Reviewed by the API server already.
    ServiceAccount(Identity),
    Node(RenewalProof),
}

/// `DELETE /v1/tokens/NAMESPACE/SERVICE_ACCOUNT`: revoke every join token of an identity
/// (`{"revoked": N}`). Certificates already issued stay valid until they expire.
pub(super) async fn revoke_tokens(
    state: &ApiState,
    req: &Request<Incoming>,
    namespace: &str,
    service_account: &str,
) -> Response<Body> {
    if !authorized(state, req) {
        return unauthorized();
    }
    let identity = match Identity::new(namespace, service_account) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let spiffe_id = identity.spiffe_id(state.issuance.ca().trust_domain());
    let tokens = state.tokens.clone();
    match tokio::task::spawn_blocking(move || tokens.revoke(&identity)).await {
        Ok(Ok(revoked)) => {
            tracing::info!(identity = %spiffe_id, revoked, "join tokens revoked");
            json_response(StatusCode::OK, &json!({"identity": spiffe_id, "revoked": revoked}))
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot revoke join tokens");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot revoke the tokens: {e}"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot revoke the tokens: {e}")),
    }
}

fn count_error(state: &ApiState, reason: &'static str) {
    state.metrics.ca_issue_errors.get_or_create(&ReasonLabels { reason }).inc();
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

/// `POST /v1/certificates`: a CSR with a join token (`Authorization: Bearer ort_…`), a
/// Kubernetes service-account token (`Authorization: Bearer <JWT>`, with `--kubernetes`) or a
/// renewal proof (body `renewal`) → the certificate chain and the trust bundle.
pub(super) async fn issue(state: &ApiState, req: Request<Incoming>) -> Response<Body> {
    let token = bearer(&req);
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(resp) => {
            count_error(state, "bad_request");
            return resp;
        }
    };
    let request: CertificateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            count_error(state, "bad_request");
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid certificate request: {e}; expected {{csr: PEM, renewal?: {{certificateChain, signature}}}}"
                ),
            );
        }
    };
    let owned = match (request.node, request.renewal, token) {
        (Some(proof), None, _) => OwnedCredential::Node(proof),
        (Some(_), Some(_), _) => {
            count_error(state, "bad_request");
            return error(StatusCode::BAD_REQUEST, "give either renewal or node, not both");
        }
        (None, Some(proof), _) => OwnedCredential::Renewal(proof),
        (None, None, Some(token)) if !is_join_token(&token) && looks_like_jwt(&token) => {
            // A service-account token: the CSR first, so a bad request costs no review.
            if let Err(e) = check_csr(&request.csr) {
                count_error(state, e.reason());
                return issue_error(&e);
            }
            let review = match &state.service_accounts {
                Some(reviewer) => reviewer.review(&token).await,
                None => Err(ReviewError::NotEnabled),
            };
            match review {
                Ok(identity) => OwnedCredential::ServiceAccount(identity),
                Err(e) => {
                    let e = IssueError::Review(e);
                    count_error(state, e.reason());
                    tracing::warn!(reason = e.reason(), error = %e, "certificate request refused");
                    return issue_error(&e);
                }
            }
        }
        (None, None, Some(token)) => OwnedCredential::JoinToken(token),
        (None, None, None) => {
            count_error(state, "missing_credential");
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "a certificate needs a join token (Authorization: Bearer ort_…, from `outrider token create`), \
                 a Kubernetes service-account token (Authorization: Bearer <JWT>) or a renewal proof \
                 (body field renewal)",
            );
            if let Ok(v) = "Bearer".parse() {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return resp;
        }
    };
    let issuance = state.issuance.clone();
    let csr = request.csr;
    // Off the async workers: signing, and the fsync of a single-use token's redemption.
    let result = tokio::task::spawn_blocking(move || {
        let credential = match &owned {
            OwnedCredential::Renewal(proof) => Credential::Renewal(proof),
            OwnedCredential::Node(proof) => Credential::Node(proof),
            OwnedCredential::JoinToken(token) => Credential::JoinToken(token),
            OwnedCredential::ServiceAccount(identity) => Credential::ServiceAccount(identity),
        };
        issuance.issue(&csr, credential)
    })
    .await;
    let issued = match result {
        Ok(Ok(issued)) => issued,
        Ok(Err(e)) => {
            count_error(state, e.reason());
            tracing::warn!(reason = e.reason(), error = %e, "certificate request refused");
            return issue_error(&e);
        }
        Err(e) => {
            count_error(state, "internal");
            tracing::error!(error = %e, "certificate issuance task failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the certificate could not be issued because of a control plane fault; retry later \
                 (the control plane's log has the cause)",
            );
        }
    };
    state.metrics.ca_issued.inc();
    let not_after = issued.not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    state.tracker.certificate_issued(&issued.spiffe_id, not_after);
    json_response(
        StatusCode::OK,
        &json!({
            "identity": issued.spiffe_id,
            "certificateChain": issued.chain_pem,
            "trustBundle": state.issuance.ca().trust_bundle().roots,
            "notAfter": not_after,
        }),
    )
}

fn issue_error(e: &IssueError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = error(status, e.public_message());
    if status == StatusCode::UNAUTHORIZED
        && let Ok(v) = "Bearer".parse()
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}
