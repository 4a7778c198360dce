//! Validation of a whole set of documents, and the errors it reports.
//!
//! Every error names the file, the document, its kind/name and the field, and all errors of a
//! set are collected rather than stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::load::{Document, Origin, Parsed};
use crate::policy::{AuthorizationPolicy, PolicySet, Route, Service, TrafficPolicy};

mod authz;
mod resilience;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod resilience_tests;
mod rollout;
mod telemetry;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

/// One problem in a policy set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The file name as given to the loader.
    pub file: String,
    /// 0-based index of the document in the file (displayed counting from 1).
    pub document: Option<usize>,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Path of the field in YAML spelling, e.g. `spec.routes[0].split[1].weight`.
    pub field: Option<String>,
    pub message: String,
    /// 1-based line of the field (or of its nearest ancestor, for a missing one) in the text.
    pub line: Option<usize>,
    /// 1-based column, with `line`.
    pub column: Option<usize>,
}

impl PolicyError {
    /// An error about a file as a whole.
    pub fn file(file: &str, message: impl Into<String>) -> Self {
        PolicyError {
            file: file.to_owned(),
            document: None,
            kind: None,
            name: None,
            field: None,
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

impl PolicyError {
    /// The error as the API and `outrider validate -o json` give it (`document` counted from 1;
    /// `line`, `column` from 1, absent when unknown).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.file, "document": self.document.map(|d| d + 1), "kind": self.kind,
            "name": self.name, "field": self.field, "message": self.message,
            "line": self.line, "column": self.column,
        })
    }
}

impl fmt::Display for PolicyError {
    /// `policy.yaml:14:31: document 2 (TrafficPolicy/reviews): spec.routes[0].split[1].weight: …`
    /// (`file:line:column:` as compilers write it, so editors and terminals can jump there).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "{line}:{column}:")?;
        }
        if let Some(document) = self.document {
            write!(f, " document {}", document + 1)?;
        }
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => write!(f, " ({kind}/{name})")?,
            (Some(kind), None) => write!(f, " ({kind})")?,
            (None, Some(name)) => write!(f, " ({name})")?,
            (None, None) => {}
        }
        if self.document.is_some() || self.kind.is_some() || self.name.is_some() {
            f.write_str(":")?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}:")?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

/// All problems of a policy set, in file and document order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<PolicyError> for PolicyErrors {
    fn from(error: PolicyError) -> Self {
        PolicyErrors(vec![error])
    }
}

impl IntoIterator for PolicyErrors {
    type Item = PolicyError;
    type IntoIter = std::vec::IntoIter<PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for PolicyErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Validates the documents of a set and builds the [`PolicySet`].
pub(crate) fn validate(parsed: Parsed) -> Result<PolicySet, PolicyErrors> {
    validate_with(parsed, &BTreeMap::new())
}

/// [`validate`], in a set where the services of `base` (already validated, e.g. discovered from a
/// cluster) exist as well: documents may refer to them. The result holds the documents alone.
pub(crate) fn validate_with(parsed: Parsed, base: &BTreeMap<String, Service>) -> Result<PolicySet, PolicyErrors> {
    let Parsed { documents, repaired, broken, mut errors } = parsed;
    let mut services: BTreeMap<String, (Origin, Service)> = BTreeMap::new();
    let mut policies: BTreeMap<String, (Origin, TrafficPolicy)> = BTreeMap::new();
    let mut seen: BTreeMap<(&'static str, String), Origin> = BTreeMap::new();
    let mut policy_docs = Vec::new();
    let mut authz_docs: Vec<(Origin, AuthorizationPolicy)> = Vec::new();
    let mut telemetry: Option<(Origin, crate::policy::Telemetry)> = None;
    let mut rollout_docs = Vec::new();

    for (origin, document) in documents {
        let (kind, metadata) = match &document {
            Document::Service(s) => ("Service", &s.metadata),
            Document::TrafficPolicy(p) => ("TrafficPolicy", &p.metadata),
            Document::AuthorizationPolicy(p) => ("AuthorizationPolicy", &p.metadata),
            Document::Telemetry(t) => ("Telemetry", &t.metadata),
            Document::Rollout(r) => ("Rollout", &r.metadata),
        };
        // metadata.name and .namespace were checked when the document was read.
        let key = (kind, metadata.name.clone());
        if let Some(first) = seen.get(&key) {
            errors.push(origin.error(
                Some("metadata.name".into()),
                format!(
                    "duplicate {kind} \"{}\" (first defined in {}); names must be unique per kind",
                    metadata.name,
                    first.describe()
                ),
            ));
            continue;
        }
        seen.insert(key, origin.clone());
        match document {
            Document::Service(service) => {
                check_service(&origin, &service, &mut errors);
                services.insert(service.metadata.name.clone(), (origin, service));
            }
            Document::TrafficPolicy(mut policy) => {
                for (i, route) in policy.spec.routes.iter_mut().enumerate() {
                    if route.name.is_none() {
                        route.name = Some(format!("route-{i}"));
                    }
                }
                check_policy(&origin, &policy, &mut errors);
                policy_docs.push((origin, policy));
            }
            Document::AuthorizationPolicy(policy) => {
                authz::check_authz(&origin, &policy, &mut errors);
                authz_docs.push((origin, policy));
            }
            Document::Telemetry(t) => {
                telemetry::check_telemetry(&origin, &t, &mut errors);
                match &telemetry {
                    Some((first, _)) => telemetry::check_single(&origin, first, &mut errors),
                    None => telemetry = Some((origin, t)),
                }
            }
            Document::Rollout(r) => {
                rollout::check_rollout(&origin, &r, &mut errors);
                rollout_docs.push((origin, r));
            }
        }
    }

    // Documents whose decoding errors were repaired: their own checks still run, so that one
    // pass reports everything, but not about what a repair put in (a default, a stand-in).
    for (origin, document, repaired_paths) in repaired {
        let mut found = Vec::new();
        check_alone(&origin, &document, &mut found);
        errors.extend(found.into_iter().filter(|error| {
            let path = error.field.as_deref().map(crate::load::parse_path).unwrap_or_default();
            !repaired_paths.iter().any(|r| path.starts_with(r) || r.starts_with(&path))
        }));
    }

    check_shared_addresses(&services, &mut errors);

    let lookup = |name: &str| services.get(name).map(|(_, s)| s).or_else(|| base.get(name));
    for (origin, policy) in policy_docs {
        let target = policy.spec.service.clone();
        match lookup(&target) {
            Some(service) => {
                check_policy_against_service(&origin, &policy, service, &mut errors);
                // A service that failed to load already has its own error.
                let missing = |name: &str| {
                    let is_broken = broken.iter().any(|(k, n)| k == "Service" && n == name);
                    (!is_broken).then(|| missing_service(name, &services, base, &broken))
                };
                resilience::check_fallback(&origin, &policy.spec, service, &lookup, missing, &mut errors);
            }
            None if broken.iter().any(|(k, n)| k == "Service" && *n == target) => {}
            None => errors
                .push(origin.error(Some("spec.service".into()), missing_service(&target, &services, base, &broken))),
        }
        if let Some((first, _)) = policies.get(&target) {
            errors.push(origin.error(
                Some("spec.service".into()),
                format!(
                    "service \"{target}\" already has a TrafficPolicy (in {}); a service takes \
                     at most one, so merge them",
                    first.describe()
                ),
            ));
            continue;
        }
        policies.insert(target, (origin, policy));
    }

    let mut authorization_policies = BTreeMap::new();
    for (origin, policy) in authz_docs {
        let target = &policy.spec.service;
        match lookup(target) {
            Some(service) => authz::check_authz_against_service(&origin, &policy, service, &mut errors),
            None if broken.iter().any(|(k, n)| k == "Service" && n == target) => {}
            None => errors
                .push(origin.error(Some("spec.service".into()), missing_service(target, &services, base, &broken))),
        }
        authorization_policies.insert(policy.metadata.name.clone(), policy);
    }

    let rollouts = rollout::check_rollouts(rollout_docs, &services, base, &policies, &broken, &mut errors);

    if !errors.is_empty() {
        // In file, document and line order; stable, so errors on one line keep the order of the
        // checks.
        errors.sort_by(|a, b| {
            (&a.file, a.document, a.line.unwrap_or(usize::MAX)).cmp(&(
                &b.file,
                b.document,
                b.line.unwrap_or(usize::MAX),
            ))
        });
        return Err(PolicyErrors(errors));
    }
    Ok(PolicySet {
        services: services.into_iter().map(|(k, (_, s))| (k, s)).collect(),
        traffic_policies: policies.into_iter().map(|(k, (_, p))| (k, p)).collect(),
        authorization_policies,
        telemetry: telemetry.map(|(_, t)| t),
        rollouts,
    })
}

/// At most this many services are named in a "no Service named" message.
const KNOWN_SERVICES_LISTED: usize = 20;

/// The checks of a document on its own (none that look at other documents).
fn check_alone(origin: &Origin, document: &Document, errors: &mut Vec<PolicyError>) {
    match document {
        Document::Service(service) => check_service(origin, service, errors),
        Document::TrafficPolicy(policy) => check_policy(origin, policy, errors),
        Document::AuthorizationPolicy(policy) => authz::check_authz(origin, policy, errors),
        Document::Telemetry(telemetry) => telemetry::check_telemetry(origin, telemetry, errors),
        Document::Rollout(rollout) => rollout::check_rollout(origin, rollout, errors),
    }
}

/// `no Service named "x" (known services: a, b)`.
fn missing_service(
    target: &str,
    services: &BTreeMap<String, (Origin, Service)>,
    base: &BTreeMap<String, Service>,
    broken: &[(String, String)],
) -> String {
    let broken_services = broken.iter().filter(|(k, _)| k == "Service");
    let known: BTreeSet<&str> =
        services.keys().chain(base.keys()).chain(broken_services.map(|(_, n)| n)).map(String::as_str).collect();
    let count = known.len();
    let known: Vec<&str> = known.into_iter().take(KNOWN_SERVICES_LISTED).collect();
    let known = if known.is_empty() {
        "there are no services in this set".to_owned()
    } else if count > known.len() {
        format!("known services: {}, and {} more", known.join(", "), count - known.len())
    } else {
        format!("known services: {}", known.join(", "))
    };
    format!("no Service named \"{target}\" ({known})")
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || *b == b'-')
}

/// `[a-z0-9-]{1,63}`: route names are metrics labels.
pub fn is_route_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An HTTP header name (RFC 9110 token).
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(crate) fn check_dns_label(origin: &Origin, field: &str, value: &str, errors: &mut Vec<PolicyError>) {
    if !is_dns_label(value) {
        errors.push(origin.error(
            Some(field.into()),
            format!(
                "invalid name \"{value}\": use lowercase letters, digits and '-', starting and \
                 ending with a letter or digit, at most 63 characters"
            ),
        ));
    }
}

fn check_service(origin: &Origin, service: &Service, errors: &mut Vec<PolicyError>) {
    let spec = &service.spec;
    authz::check_service_mtls(origin, service, errors);
    if !spec.protocol.is_http() && spec.addresses.is_empty() {
        errors.push(origin.error(
            Some("spec.addresses".into()),
            "a tcp service needs at least one address: TCP is routed by original destination, \
             so it needs a virtual address",
        ));
    }
    let mut addresses = BTreeMap::new();
    for (i, address) in spec.addresses.iter().enumerate() {
        if let Some(first) = addresses.insert(*address, i) {
            errors.push(origin.error(
                Some(format!("spec.addresses[{i}]")),
                format!("duplicate address {address} (also spec.addresses[{first}])"),
            ));
        }
    }
    let mut endpoints = BTreeMap::new();
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        if !(1..=128).contains(&endpoint.weight) {
            errors.push(origin.error(
                Some(format!("spec.endpoints[{i}].weight")),
                format!("must be between 1 and 128 (got {})", endpoint.weight),
            ));
        }
        if let Some(first) = endpoints.insert(endpoint.address, i) {
            errors.push(origin.error(
                Some(format!("spec.endpoints[{i}].address")),
                format!("duplicate endpoint {} (also spec.endpoints[{first}])", endpoint.address),
            ));
        }
    }
}

/// Each virtual address belongs to one service: it selects the filter chain and, for HTTP,
/// is a domain of the service's virtual host, both of which must be unique.
fn check_shared_addresses(services: &BTreeMap<String, (Origin, Service)>, errors: &mut Vec<PolicyError>) {
    let mut owners: BTreeMap<IpAddr, &str> = BTreeMap::new();
    // Report in document order rather than name order.
    let mut ordered: Vec<&(Origin, Service)> = services.values().collect();
    ordered.sort_by(|a, b| (&a.0.file, a.0.document).cmp(&(&b.0.file, b.0.document)));
    for (origin, service) in ordered {
        for (i, address) in service.spec.addresses.iter().enumerate() {
            match owners.get(address) {
                Some(owner) if *owner != service.name() => errors.push(origin.error(
                    Some(format!("spec.addresses[{i}]")),
                    format!(
                        "address {address} is already used by service \"{owner}\"; a virtual \
                         address belongs to one service"
                    ),
                )),
                Some(_) => {}
                None => {
                    owners.insert(*address, service.name());
                }
            }
        }
    }
}

fn check_policy(origin: &Origin, policy: &TrafficPolicy, errors: &mut Vec<PolicyError>) {
    let spec = &policy.spec;
    let limit = crate::policy::limits::CONNECT_TIMEOUT;
    let format = crate::duration::format;
    if spec.connect_timeout.is_zero() {
        errors.push(
            origin.error(
                Some("spec.connectTimeout".into()),
                format!("must be more than 0s and at most {}", format(limit)),
            ),
        );
    } else if spec.connect_timeout > limit {
        errors.push(origin.error(
            Some("spec.connectTimeout".into()),
            format!("must be at most {} (got {})", format(limit), format(spec.connect_timeout)),
        ));
    }
    resilience::check_resilience(origin, spec, errors);
    let mut names = BTreeMap::new();
    for (i, route) in spec.routes.iter().enumerate() {
        check_route(origin, i, route, errors);
        let name = route.name_or_default(i);
        if let Some(first) = names.insert(name.clone(), i) {
            errors.push(origin.error(
                Some(format!("spec.routes[{i}].name")),
                format!("duplicate route name \"{name}\" (also spec.routes[{first}])"),
            ));
        }
    }
}

fn check_route(origin: &Origin, i: usize, route: &Route, errors: &mut Vec<PolicyError>) {
    let at = format!("spec.routes[{i}]");
    if let Some(name) = &route.name
        && !is_route_name(name)
    {
        errors.push(origin.error(
            Some(format!("{at}.name")),
            format!(
                "invalid route name \"{name}\": use 1 to 63 lowercase letters, digits and '-' \
                 (it is a metrics label)"
            ),
        ));
    }
    let matcher = &route.matcher;
    if matcher.path_prefix.is_some() && matcher.path.is_some() {
        errors.push(origin.error(
            Some(format!("{at}.match")),
            "pathPrefix and path cannot be used together; use pathPrefix for a prefix or path \
             for one exact path",
        ));
    }
    for (field, value) in [("pathPrefix", &matcher.path_prefix), ("path", &matcher.path)] {
        if let Some(value) = value
            && !value.starts_with('/')
        {
            errors.push(
                origin.error(Some(format!("{at}.match.{field}")), format!("must start with \"/\" (got \"{value}\")")),
            );
        }
    }
    for name in matcher.headers.keys() {
        if !is_header_name(name) {
            errors.push(origin.error(Some(format!("{at}.match.headers")), format!("invalid header name \"{name}\"")));
        }
    }
    if route.split.is_empty() {
        errors.push(origin.error(Some(format!("{at}.split")), "must have at least one entry, e.g. [{weight: 100}]"));
        return;
    }
    let mut sum = 0u64;
    for (j, entry) in route.split.iter().enumerate() {
        sum += u64::from(entry.weight);
        if entry.weight > 100 {
            errors.push(origin.error(
                Some(format!("{at}.split[{j}].weight")),
                format!("must be between 0 and 100 (got {})", entry.weight),
            ));
        }
    }
    if sum != 100 {
        errors.push(
            origin.error(Some(format!("{at}.split")), format!("weights of a split must add up to 100 (got {sum})")),
        );
    }
}

fn check_policy_against_service(
    origin: &Origin,
    policy: &TrafficPolicy,
    service: &Service,
    errors: &mut Vec<PolicyError>,
) {
    let name = service.name();
    resilience::check_tcp(origin, &policy.spec, service, errors);
    if !service.spec.protocol.is_http() && !policy.spec.routes.is_empty() {
        errors.push(origin.error(
            Some("spec.routes".into()),
            format!("routes are HTTP only, but service \"{name}\" is tcp; remove spec.routes"),
        ));
        return;
    }
    let endpoints = &service.spec.endpoints;
    if endpoints.is_empty() {
        return;
    }
    for (i, route) in policy.spec.routes.iter().enumerate() {
        for (j, entry) in route.split.iter().enumerate() {
            let matches =
                endpoints.iter().any(|endpoint| entry.subset.iter().all(|(k, v)| endpoint.labels.get(k) == Some(v)));
            if !matches {
                let have: BTreeSet<String> = endpoints.iter().map(|e| labels_text(&e.labels)).collect();
                errors.push(origin.error(
                    Some(format!("spec.routes[{i}].split[{j}].subset")),
                    format!(
                        "{} matches no endpoint of service \"{name}\" (endpoint labels: {})",
                        labels_text(&entry.subset),
                        have.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
}

/// `{version: v1, zone: a}`.
fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", inner.join(", "))
}
