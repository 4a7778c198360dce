//! Checks of AuthorizationPolicy documents and of the mTLS fields of Services.

use crate::load::Origin;
use crate::policy::{AuthorizationPolicy, AuthzAction, Service};

use super::PolicyError;

/// Checks that need no other document.
pub(super) fn check_authz(origin: &Origin, policy: &AuthorizationPolicy, errors: &mut Vec<PolicyError>) {
    let spec = &policy.spec;
    for (i, source) in spec.from.iter().enumerate() {
        if source.identities.is_empty() {
            errors.push(origin.error(
                Some(format!("spec.from[{i}].identities")),
                "must list at least one SPIFFE ID (or \"*\" for any authenticated caller)",
            ));
        }
        for (j, id) in source.identities.iter().enumerate() {
            if let Err(reason) = check_identity_pattern(id) {
                errors.push(origin.error(Some(format!("spec.from[{i}].identities[{j}]")), reason));
            }
        }
    }
    for (i, op) in spec.to.iter().enumerate() {
        if op.paths.is_empty() && op.methods.is_empty() {
            errors.push(origin.error(Some(format!("spec.to[{i}]")), "needs paths, methods or both"));
        }
        for (j, path) in op.paths.iter().enumerate() {
            let ok = path == "*"
                || (path.starts_with('/') && !path[1..].contains('*'))
                || (path.starts_with('/') && path.ends_with('*') && !path[..path.len() - 1].contains('*'))
                || (path.starts_with('*') && path.len() > 1 && !path[1..].contains('*'));
            if !ok || path.bytes().any(|b| b.is_ascii_whitespace() || b == b'?') {
                errors.push(origin.error(
                    Some(format!("spec.to[{i}].paths[{j}]")),
                    format!(
                        "invalid path \"{path}\": use an exact path (/api/v1), a prefix ending in * \
                         (/api/*), a suffix starting with * (*.json) or * alone; no query string"
                    ),
                ));
            }
        }
        for (j, method) in op.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(origin.error(
                    Some(format!("spec.to[{i}].methods[{j}]")),
                    format!("invalid method \"{method}\": use an upper-case HTTP method such as GET or POST"),
                ));
            }
        }
    }
}

/// Checks against the service the policy names.
pub(super) fn check_authz_against_service(
    origin: &Origin,
    policy: &AuthorizationPolicy,
    service: &Service,
    errors: &mut Vec<PolicyError>,
) {
    if !service.spec.protocol.is_http() && policy.spec.action == AuthzAction::Allow && !policy.spec.to.is_empty() {
        errors.push(origin.error(
            Some("spec.to".into()),
            format!(
                "service \"{}\" is tcp: an allow rule with paths or methods could never match a TCP \
                 connection; remove spec.to",
                service.name()
            ),
        ));
    }
}

/// A SPIFFE ID, a SPIFFE ID prefix ending in `*`, or `*`.
fn check_identity_pattern(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    let (body, wildcard) = match pattern.strip_suffix('*') {
        Some(prefix) => (prefix, true),
        None => (pattern, false),
    };
    let fail = |why: &str| {
        Err(format!(
            "invalid identity \"{pattern}\": {why}; use spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, \
             a prefix of one ending in * (spiffe://outrider.local/ns/shop/*), or * for any authenticated caller"
        ))
    };
    let Some(rest) = body.strip_prefix("spiffe://") else {
        return fail("it must start with spiffe://");
    };
    if body.contains('*') {
        return fail("* may only end the pattern");
    }
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if domain.is_empty() || !domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return fail("the trust domain must be lower-case letters, digits, '.', '-' or '_'");
    }
    if !wildcard && path.is_empty() {
        return fail("a workload ID needs a path");
    }
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        // A wildcard prefix may end with '/' (an empty last segment).
        if segment.is_empty() && !(wildcard && i == last) && !(wildcard && path.is_empty()) {
            return fail("path segments may not be empty");
        }
        if *segment == "." || *segment == ".." {
            return fail("path segments may not be '.' or '..'");
        }
        if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return fail("path segments may only hold letters, digits, '.', '-' and '_'");
        }
    }
    Ok(())
}

/// Checks of a Service's mTLS fields (mode, meshed endpoints).
pub(super) fn check_service_mtls(origin: &Origin, service: &Service, errors: &mut Vec<PolicyError>) {
    for (i, endpoint) in service.spec.endpoints.iter().enumerate() {
        match (&endpoint.identity, endpoint.meshed) {
            (None, true) => errors.push(origin.error(
                Some(format!("spec.endpoints[{i}].identity")),
                "a meshed endpoint needs the SPIFFE ID its sidecar presents \
                 (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>), so callers can verify it",
            )),
            (Some(_), false) => errors.push(origin.error(
                Some(format!("spec.endpoints[{i}].identity")),
                "only meshed endpoints have an identity: add meshed: true or remove identity",
            )),
            (Some(id), true) => {
                if id.contains('*') {
                    errors.push(origin.error(
                        Some(format!("spec.endpoints[{i}].identity")),
                        format!("invalid identity \"{id}\": an endpoint's identity is one exact SPIFFE ID"),
                    ));
                } else if let Err(reason) = check_identity_pattern(id) {
                    errors.push(origin.error(Some(format!("spec.endpoints[{i}].identity")), reason));
                }
            }
            (None, false) => {}
        }
        if endpoint.hbone && !endpoint.meshed {
            errors.push(origin.error(
                Some(format!("spec.endpoints[{i}].hbone")),
                "an HBONE endpoint is a meshed workload: add meshed: true and its identity",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_identity_pattern;

    #[test]
    fn identity_patterns() {
        for ok in [
            "*",
            "spiffe://outrider.local/ns/shop/sa/checkout",
            "spiffe://outrider.local/ns/shop/*",
            "spiffe://outrider.local/*",
            "spiffe://outrider.local/ns/shop/sa/check*",
        ] {
            assert!(check_identity_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "checkout",
            "spiffe://Outrider/ns/a/sa/b",
            "spiffe://outrider.local",
            "spiffe://outrider.local/ns//sa/b",
            "spiffe://outrider.local/*/sa/b",
            "spiffe://outrider.local/ns/../sa/b",
            "spiffe://outrider.local/ns/a b",
        ] {
            assert!(check_identity_pattern(bad).is_err(), "{bad}");
        }
    }
}
