//! Inbound authorization: a service's AuthorizationPolicies, as they arrive in Envoy RBAC
//! filters of its inbound listener, evaluated per request (HTTP) or per connection (TCP).
//!
//! The filters run in order; a DENY filter denies when one of its policies matches, an ALLOW
//! filter denies when none matches. No filters: everything is allowed. The translation puts
//! DENY first, so deny rules win over allow rules (Istio's semantics).

use std::sync::Arc;

use envoy_types::pb::envoy::config::rbac::v3::{Permission, Principal, Rbac, permission, principal, rbac};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, path_matcher, string_matcher};

use crate::tls::{Identity, Mode};

/// What the inbound side of a service enforces.
#[derive(Debug, Default)]
pub struct InboundPolicy {
    /// Whether plaintext is accepted.
    pub mode: Mode,
    pub filters: Vec<RbacFilter>,
}

/// One RBAC filter: an action and its named policies.
#[derive(Debug)]
pub struct RbacFilter {
    pub deny: bool,
    pub policies: Vec<(Arc<str>, Rule)>,
}

/// Principals (any may match) and permissions (any may match) of one policy.
#[derive(Debug)]
pub struct Rule {
    principals: Vec<Principal_>,
    permissions: Vec<Perm>,
}

#[derive(Debug)]
enum Principal_ {
    Any,
    Authenticated(Match),
    And(Vec<Principal_>),
    Or(Vec<Principal_>),
    Not(Box<Principal_>),
}

#[derive(Debug)]
enum Perm {
    Any,
    Path(Match),
    Method(Match),
    And(Vec<Perm>),
    Or(Vec<Perm>),
    Not(Box<Perm>),
}

#[derive(Debug)]
enum Match {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
}

impl Match {
    fn matches(&self, value: &str) -> bool {
        match self {
            Match::Exact(s) => value == s,
            Match::Prefix(s) => value.starts_with(s.as_str()),
            Match::Suffix(s) => value.ends_with(s.as_str()),
            Match::Contains(s) => value.contains(s.as_str()),
        }
    }
}

/// The request being authorized; `http` is `None` for a TCP connection.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub peer: Option<&'a Identity>,
    /// (path without query, method)
    pub http: Option<(&'a str, &'a str)>,
}

/// The outcome: allowed, or denied by the named policy (`None`: no allow policy matched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { policy: Option<Arc<str>> },
}

impl InboundPolicy {
    pub fn authorize(&self, req: Request<'_>) -> Decision {
        for filter in &self.filters {
            let matched = filter.policies.iter().find(|(_, rule)| rule.matches(req));
            match (filter.deny, matched) {
                (true, Some((name, _))) => return Decision::Deny { policy: Some(name.clone()) },
                (false, None) => return Decision::Deny { policy: None },
                _ => {}
            }
        }
        Decision::Allow
    }
}

impl Rule {
    fn matches(&self, req: Request<'_>) -> bool {
        self.principals.iter().any(|p| p.matches(req.peer)) && self.permissions.iter().any(|p| p.matches(req.http))
    }
}

impl Principal_ {
    fn matches(&self, peer: Option<&Identity>) -> bool {
        match self {
            Principal_::Any => true,
            Principal_::Authenticated(m) => peer.is_some_and(|id| m.matches(id.as_str())),
            Principal_::And(all) => all.iter().all(|p| p.matches(peer)),
            Principal_::Or(any) => any.iter().any(|p| p.matches(peer)),
            Principal_::Not(p) => !p.matches(peer),
        }
    }
}

impl Perm {
    /// On a TCP connection (`http` = `None`) path and method rules never match.
    fn matches(&self, http: Option<(&str, &str)>) -> bool {
        match self {
            Perm::Any => true,
            Perm::Path(m) => http.is_some_and(|(path, _)| m.matches(path)),
            Perm::Method(m) => http.is_some_and(|(_, method)| m.matches(method)),
            Perm::And(all) => all.iter().all(|p| p.matches(http)),
            Perm::Or(any) => any.iter().any(|p| p.matches(http)),
            Perm::Not(p) => !p.matches(http),
        }
    }
}

/// Converts an Envoy RBAC config; unsupported matchers are an error (the listener is NACKed).
pub fn from_rbac(rules: &Rbac) -> Result<RbacFilter, String> {
    let deny = match rbac::Action::try_from(rules.action) {
        Ok(rbac::Action::Allow) => false,
        Ok(rbac::Action::Deny) => true,
        _ => return Err(format!("RBAC action {} is not supported (ALLOW or DENY)", rules.action)),
    };
    let mut policies = Vec::new();
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    for name in names {
        let policy = &rules.policies[name];
        let principals = policy
            .principals
            .iter()
            .map(principal_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{name}: {e}"))?;
        let permissions = policy
            .permissions
            .iter()
            .map(perm_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{name}: {e}"))?;
        policies.push((Arc::from(name.as_str()), Rule { principals, permissions }));
    }
    Ok(RbacFilter { deny, policies })
}

fn string_match(m: Option<&StringMatcher>) -> Result<Match, String> {
    let m = m.ok_or("a string matcher is missing")?;
    if m.ignore_case {
        return Err("ignore_case string matchers are not supported".into());
    }
    Ok(match &m.match_pattern {
        Some(string_matcher::MatchPattern::Exact(s)) => Match::Exact(s.clone()),
        Some(string_matcher::MatchPattern::Prefix(s)) => Match::Prefix(s.clone()),
        Some(string_matcher::MatchPattern::Suffix(s)) => Match::Suffix(s.clone()),
        Some(string_matcher::MatchPattern::Contains(s)) => Match::Contains(s.clone()),
        _ => return Err("only exact, prefix, suffix and contains string matchers are supported".into()),
    })
}

fn principal_from(p: &Principal) -> Result<Principal_, String> {
    use principal::Identifier;
    Ok(match &p.identifier {
        Some(Identifier::Any(true)) => Principal_::Any,
        Some(Identifier::Authenticated(a)) => match &a.principal_name {
            // Envoy: an empty principal_name matches any authenticated peer.
            None => Principal_::Authenticated(Match::Prefix(String::new())),
            Some(m) => Principal_::Authenticated(string_match(Some(m))?),
        },
        Some(Identifier::AndIds(set)) => Principal_::And(set.ids.iter().map(principal_from).collect::<Result<_, _>>()?),
        Some(Identifier::OrIds(set)) => Principal_::Or(set.ids.iter().map(principal_from).collect::<Result<_, _>>()?),
        Some(Identifier::NotId(inner)) => Principal_::Not(Box::new(principal_from(inner)?)),
        _ => return Err("only any, authenticated, and_ids, or_ids and not_id principals are supported".into()),
    })
}

fn perm_from(p: &Permission) -> Result<Perm, String> {
    use permission::Rule;
    Ok(match &p.rule {
        Some(Rule::Any(true)) => Perm::Any,
        Some(Rule::UrlPath(m)) => match &m.rule {
            Some(path_matcher::Rule::Path(s)) => Perm::Path(string_match(Some(s))?),
            None => return Err("url_path without a matcher".into()),
        },
        Some(Rule::Header(h)) if h.name == ":method" && !h.invert_match => match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(s)) => Perm::Method(string_match(Some(s))?),
            #[allow(deprecated)]
            Some(HeaderMatchSpecifier::ExactMatch(s)) => Perm::Method(Match::Exact(s.clone())),
            _ => return Err("a :method header rule needs a string_match".into()),
        },
        Some(Rule::AndRules(set)) => Perm::And(set.rules.iter().map(perm_from).collect::<Result<_, _>>()?),
        Some(Rule::OrRules(set)) => Perm::Or(set.rules.iter().map(perm_from).collect::<Result<_, _>>()?),
        Some(Rule::NotRule(inner)) => Perm::Not(Box::new(perm_from(inner)?)),
        _ => {
            return Err(
                "only any, url_path, :method header, and_rules, or_rules and not_rule permissions are supported".into(),
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml_rest: &str) -> InboundPolicy {
        let text = format!(
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{port: 80}}\n{yaml_rest}"
        );
        let set = outrider_xds::load_str("p.yaml", &text).unwrap();
        let res = outrider_xds::translate(&set);
        let l = res.listeners.iter().find(|l| l.name == "inbound|web").unwrap();
        crate::state::inbound_policy(l).unwrap()
    }

    fn id(s: &str) -> Identity {
        Identity::parse(s).unwrap()
    }

    const FRONT: &str = "spiffe://td/ns/shop/sa/front";
    const OPS: &str = "spiffe://td/ns/ops/sa/admin";

    #[test]
    fn no_policies_allow_everyone_including_plaintext() {
        let p = policy("");
        assert_eq!(p.mode, Mode::Permissive);
        assert_eq!(p.authorize(Request { peer: None, http: Some(("/", "GET")) }), Decision::Allow);
    }

    #[test]
    fn allow_lists_identities_and_deny_wins() {
        let p = policy(
            "---\napiVersion: outrider.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: callers}\nspec:\n  service: web\n  from: [{identities: [\"spiffe://td/ns/shop/*\", \"spiffe://td/ns/ops/sa/admin\"]}]\n\
             ---\napiVersion: outrider.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin}\nspec:\n  service: web\n  action: deny\n  from: [{identities: [\"spiffe://td/ns/ops/*\"]}]\n  to: [{paths: [/admin/*], methods: [POST]}]\n",
        );
        let front = id(FRONT);
        let ops = id(OPS);
        let other = id("spiffe://td/ns/else/sa/x");
        let req = |peer, path, method| p.authorize(Request { peer, http: Some((path, method)) });
        assert_eq!(req(Some(&front), "/admin/x", "POST"), Decision::Allow);
        assert_eq!(req(Some(&ops), "/admin/x", "GET"), Decision::Allow);
        assert_eq!(req(Some(&ops), "/admin/x", "POST"), Decision::Deny { policy: Some(Arc::from("no-admin")) });
        assert_eq!(req(Some(&other), "/", "GET"), Decision::Deny { policy: None });
        assert_eq!(req(None, "/", "GET"), Decision::Deny { policy: None }, "plaintext has no identity");
    }

    #[test]
    fn tcp_connections_never_match_path_rules() {
        let p = policy(
            "---\napiVersion: outrider.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: any-caller}\nspec:\n  service: web\n  from: [{identities: [\"*\"]}]\n  to: [{paths: [/x]}]\n",
        );
        assert_eq!(p.authorize(Request { peer: Some(&id(FRONT)), http: None }), Decision::Deny { policy: None });
        assert_eq!(p.authorize(Request { peer: Some(&id(FRONT)), http: Some(("/x", "GET")) }), Decision::Allow);
        assert_eq!(p.authorize(Request { peer: None, http: Some(("/x", "GET")) }), Decision::Deny { policy: None });
    }

    #[test]
    fn strict_mode_comes_from_the_missing_plaintext_chain() {
        let set = outrider_xds::load_str(
            "p.yaml",
            "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: web}\nspec: {port: 80, mtls: strict}\n",
        )
        .unwrap();
        let res = outrider_xds::translate(&set);
        let l = res.listeners.iter().find(|l| l.name == "inbound|web").unwrap();
        assert_eq!(crate::state::inbound_policy(l).unwrap().mode, Mode::Strict);
    }
}

#[cfg(test)]
mod tcp_tests {
    use super::*;

    #[test]
    fn a_tcp_deny_by_identity_denies_the_connection() {
        let text = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: db}\nspec: {protocol: tcp, port: 5432, addresses: [\"127.100.0.9\"], mtls: strict}\n---\napiVersion: outrider.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: db-no-batch}\nspec:\n  service: db\n  action: deny\n  from: [{identities: [\"spiffe://outrider.local/ns/default/sa/batch\"]}]\n";
        let set = outrider_xds::load_str("p.yaml", text).unwrap();
        let res = outrider_xds::translate(&set);
        let l = res.listeners.iter().find(|l| l.name == "inbound|db").unwrap();
        let p = crate::state::inbound_policy(l).unwrap();
        assert_eq!(p.mode, Mode::Strict);
        let batch = Identity::parse("spiffe://outrider.local/ns/default/sa/batch").unwrap();
        let api = Identity::parse("spiffe://outrider.local/ns/default/sa/api").unwrap();
        assert_eq!(
            p.authorize(Request { peer: Some(&batch), http: None }),
            Decision::Deny { policy: Some(Arc::from("db-no-batch")) }
        );
        assert_eq!(p.authorize(Request { peer: Some(&api), http: None }), Decision::Allow);
    }
}

/// The path authorization judges — and the app then receives — so that `//admin`, `/./admin`,
/// `/x/../admin` or `/%61dmin` cannot slip past a rule on `/admin/*` while the app serves
/// `/admin`: percent-encoded unreserved characters decoded, repeated slashes merged, `.` and `..`
/// segments resolved (RFC 3986 §5.2.4). An encoded `/`, `\` or NUL is refused, since apps disagree
/// on what it means. Returns `None` when the path is already normal.
pub fn normalize_path(path: &str) -> Result<Option<String>, &'static str> {
    let bytes = path.as_bytes();
    // Bytes, not chars: a byte of a multi-byte UTF-8 character is copied as it is (pushing it
    // as a `char` would re-encode it as Latin-1 and change the path).
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
            // A '%' must start an escape (RFC 3986's pct-encoded): a lone one would let the
            // decoded path hold a new escape (`/%6%61dmin` → `/%6admin`), which the app decodes
            // once more into a path the rules never saw.
            let (Some(h), Some(l)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
                return Err("the path holds a '%' that is not followed by two hex digits");
            };
            let c = (h * 16 + l) as u8;
            if matches!(c, b'/' | b'\\' | 0) {
                return Err("the path holds an encoded '/', '\\' or NUL");
            }
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(c);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    // Only ASCII bytes were decoded; everything else was copied, so this stays valid UTF-8.
    let decoded = String::from_utf8(decoded).map_err(|_| "the path is not valid UTF-8")?;
    // Merge slashes and resolve dot segments.
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if normal.is_empty() || (trailing && !out.is_empty()) {
        normal.push('/');
    }
    Ok((normal != path).then_some(normal))
}

#[cfg(test)]
mod path_tests {
    use super::normalize_path;

    #[test]
    fn paths_are_normalized_before_authorization() {
        for (raw, want) in [
            ("//admin/x", "/admin/x"),
            ("/./admin/x", "/admin/x"),
            ("/pub/../admin/x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/a//b///c/", "/a/b/c/"),
            // A fuzzing finding: non-ASCII characters were re-encoded (mojibake).
            ("k\u{6d6}", "/k\u{6d6}"),
            ("//café/./x", "/café/x"),
        ] {
            assert_eq!(normalize_path(raw).unwrap().as_deref(), Some(want), "{raw}");
        }
        for normal in ["/", "/admin/x", "/a/b/", "/caf%C3%A9", "/a%20b", "/café", "/a%25b"] {
            assert_eq!(normalize_path(normal).unwrap(), None, "{normal}");
        }
        // The last three are fuzzing findings: `/%6%61dmin` decoded to `/%6admin`, which an app
        // decodes once more into `/jdmin` (a rule on `/jdmin/*` would have been bypassed).
        for bad in ["/admin%2Fx", "/a%5cb", "/a%00", "/%6%61dmin/x", "/a%", "/a%4", "/a%zz", "/k\u{6d6}%"] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
    }
}
