//! `kind: AuthorizationPolicy`: who may call a service, by peer identity and, for HTTP, by
//! path and method. Enforced by the service's sidecars on inbound connections.
//!
//! Semantics (Istio's): a request is denied when any `deny` policy of the service matches; else,
//! when the service has `allow` policies, it is allowed only if one of them matches; a service
//! without `allow` policies allows everything not denied. A policy matches when one of its `from`
//! entries matches the caller (no `from`: any caller, authenticated or not) and one of its `to`
//! entries matches the request (no `to`: any request).

use serde::Deserialize;

use super::Metadata;

/// `kind: AuthorizationPolicy`.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthorizationPolicy {
    pub metadata: Metadata,
    pub spec: AuthorizationPolicySpec,
}

/// `spec` of an AuthorizationPolicy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Name of the Service whose inbound traffic this policy governs.
    pub service: String,
    /// Defaults to `allow`.
    #[serde(default)]
    pub action: AuthzAction,
    /// Callers this policy is about (any entry may match). Absent: every caller.
    #[serde(default)]
    pub from: Vec<AuthzSource>,
    /// Requests this policy is about (any entry may match). Absent: every request. HTTP only.
    #[serde(default)]
    pub to: Vec<AuthzOperation>,
}

/// `allow` or `deny`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
}

/// One `from` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AuthzSource {
    /// SPIFFE IDs of callers: exact, a prefix ending in `*`
    /// (`spiffe://outrider.local/ns/shop/*`), or `*` for any authenticated caller.
    pub identities: Vec<String>,
}

/// One `to` entry; both fields must match when both are given.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AuthzOperation {
    /// Request paths (query excluded): exact, prefix ending in `*`, or suffix starting with `*`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// HTTP methods, upper case (`GET`, `POST`).
    #[serde(default)]
    pub methods: Vec<String>,
}

impl AuthzAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzAction::Allow => "allow",
            AuthzAction::Deny => "deny",
        }
    }
}
