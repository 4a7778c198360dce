//! The inbound listener of each service, `inbound|NAME`: how its sidecars accept connections.
//!
//! - A filter chain `mtls` matching `transport_protocol: tls` and the Outrider ALPN ids, with a
//!   `DownstreamTlsContext` that requires a client certificate.
//! - In permissive mode only, a filter chain `plaintext` matching `raw_buffer`. Strict mode has
//!   no plaintext chain, so plaintext is refused.
//! - Each chain holds the service's AuthorizationPolicies as Envoy RBAC: a DENY filter, then an
//!   ALLOW filter (Istio's layout), as HTTP filters before the router for HTTP services and as
//!   network filters before the TCP proxy for TCP services; then the terminal filter, which
//!   delivers to the local application ([`INBOUND_CLUSTER`]).

use std::collections::{BTreeMap, HashMap};

use prost::Message as _;

use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac, permission, principal, rbac};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, header_matcher, route,
    route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::CodecType, http_connection_manager::RouteSpecifier,
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::envoy::r#type::matcher::v3::{PathMatcher, StringMatcher, path_matcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue};

use super::cluster::socket_address;
use super::listener::tcp_proxy;
use crate::policy::{AuthorizationPolicy, AuthzAction, AuthzOperation, AuthzSource, MtlsMode, Service};
use crate::resources::{
    ALPN_MESH, DOWNSTREAM_TLS_CONTEXT_TYPE_URL, HTTP_CONNECTION_MANAGER_FILTER, HTTP_CONNECTION_MANAGER_TYPE_URL,
    HTTP_RBAC_FILTER, HTTP_RBAC_TYPE_URL, INBOUND_CLUSTER, INBOUND_LISTENER_ADDRESS, INBOUND_LISTENER_PORT,
    INBOUND_MTLS_CHAIN, INBOUND_PLAINTEXT_CHAIN, NETWORK_RBAC_FILTER, NETWORK_RBAC_TYPE_URL, ROUTER_FILTER,
    ROUTER_TYPE_URL, TLS_TRANSPORT_SOCKET, TRANSPORT_RAW, TRANSPORT_TLS, any, inbound_listener_name,
};

/// The inbound listener of `service`, whose authorization policies are `policies` (in name
/// order).
pub(super) fn inbound(service: &Service, policies: &[&AuthorizationPolicy]) -> Listener {
    let name = service.name();
    let http = service.spec.protocol.is_http();
    let mut chains = vec![chain(
        INBOUND_MTLS_CHAIN,
        FilterChainMatch {
            transport_protocol: TRANSPORT_TLS.to_owned(),
            application_protocols: ALPN_MESH.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        },
        name,
        http,
        policies,
    )];
    chains[0].transport_socket = Some(TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            DOWNSTREAM_TLS_CONTEXT_TYPE_URL,
            &DownstreamTlsContext { require_client_certificate: Some(BoolValue { value: true }), ..Default::default() },
        ))),
    });
    if service.spec.mtls.unwrap_or_default() == MtlsMode::Permissive {
        chains.push(chain(
            INBOUND_PLAINTEXT_CHAIN,
            FilterChainMatch { transport_protocol: TRANSPORT_RAW.to_owned(), ..Default::default() },
            name,
            http,
            policies,
        ));
    }
    Listener {
        name: inbound_listener_name(name),
        address: Some(socket_address(INBOUND_LISTENER_ADDRESS, INBOUND_LISTENER_PORT)),
        filter_chains: chains,
        ..Default::default()
    }
}

fn chain(
    chain_name: &str,
    matched: FilterChainMatch,
    service: &str,
    http: bool,
    policies: &[&AuthorizationPolicy],
) -> FilterChain {
    let rbacs = rbac_filters(policies, http);
    let filters = if http {
        let mut http_filters: Vec<HttpFilter> = rbacs
            .into_iter()
            .map(|rules| HttpFilter {
                name: HTTP_RBAC_FILTER.to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(rbac_any(
                    HTTP_RBAC_TYPE_URL,
                    &HttpRbac::default(),
                    rules,
                ))),
                ..Default::default()
            })
            .collect();
        http_filters.push(HttpFilter {
            name: ROUTER_FILTER.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(ROUTER_TYPE_URL, &Router::default()))),
            ..Default::default()
        });
        let hcm = HttpConnectionManager {
            stat_prefix: format!("inbound_{service}"),
            codec_type: CodecType::Auto as i32,
            route_specifier: Some(RouteSpecifier::RouteConfig(local_app_route(service))),
            http_filters,
            ..Default::default()
        };
        vec![Filter {
            name: HTTP_CONNECTION_MANAGER_FILTER.to_owned(),
            config_type: Some(filter::ConfigType::TypedConfig(any(HTTP_CONNECTION_MANAGER_TYPE_URL, &hcm))),
        }]
    } else {
        let mut filters: Vec<Filter> = rbacs
            .into_iter()
            .map(|rules| Filter {
                name: NETWORK_RBAC_FILTER.to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(rbac_any(
                    NETWORK_RBAC_TYPE_URL,
                    &NetworkRbac { stat_prefix: format!("inbound_{service}"), ..Default::default() },
                    rules,
                ))),
            })
            .collect();
        filters.push(tcp_proxy(&format!("inbound_{service}"), INBOUND_CLUSTER, None));
        filters
    };
    FilterChain { name: chain_name.to_owned(), filter_chain_match: Some(matched), filters, ..Default::default() }
}

/// `outer` (an HTTP or network RBAC filter's config, without its `rules`) with `rules` (field 1
/// of both) as an `Any` whose bytes are equal for equal rules. The generated `Rbac` keeps its
/// policies in a `HashMap`, which encodes in an order that differs from map to map; here they
/// are written in name order, so that translating a service again gives the same bytes (the
/// control plane compares bytes to tell what changed, and a nested `Any` is bytes to it).
fn rbac_any(type_url: &str, outer: &impl prost::Message, mut rules: Rbac) -> Any {
    use prost::encoding::{WireType, btree_map, encode_key, encode_varint, message, string};
    /// `RBAC.policies`.
    const POLICIES_FIELD: u32 = 2;
    /// `rules` of the HTTP and the network RBAC filter configs.
    const RULES_FIELD: u32 = 1;
    let policies: BTreeMap<String, Policy> = std::mem::take(&mut rules.policies).into_iter().collect();
    let mut inner = rules.encode_to_vec();
    btree_map::encode(
        string::encode,
        string::encoded_len,
        message::encode,
        message::encoded_len,
        POLICIES_FIELD,
        &policies,
        &mut inner,
    );
    let mut value = outer.encode_to_vec();
    encode_key(RULES_FIELD, WireType::LengthDelimited, &mut value);
    encode_varint(inner.len() as u64, &mut value);
    value.extend_from_slice(&inner);
    Any { type_url: type_url.to_owned(), value }
}

/// Everything to the local application.
fn local_app_route(service: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: inbound_listener_name(service),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|{service}"),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(INBOUND_CLUSTER.to_owned())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A DENY RBAC (when there are deny policies) then an ALLOW RBAC (when there are allow
/// policies); none without policies.
///
/// For TCP services the `to` conditions of deny policies are dropped (the deny then applies to
/// the whole connection, Istio's conservative reading), and allow policies with `to` are
/// rejected by validation.
fn rbac_filters(policies: &[&AuthorizationPolicy], http: bool) -> Vec<Rbac> {
    let mut out = Vec::new();
    for action in [AuthzAction::Deny, AuthzAction::Allow] {
        let selected: HashMap<String, Policy> = policies
            .iter()
            .filter(|p| p.spec.action == action)
            .map(|p| (p.metadata.name.clone(), policy(&p.spec.from, if http { &p.spec.to } else { &[] })))
            .collect();
        if selected.is_empty() {
            continue;
        }
        let action = match action {
            AuthzAction::Allow => rbac::Action::Allow,
            AuthzAction::Deny => rbac::Action::Deny,
        };
        out.push(Rbac { action: action as i32, policies: selected, ..Default::default() });
    }
    out
}

fn policy(from: &[AuthzSource], to: &[AuthzOperation]) -> Policy {
    let principals = if from.is_empty() {
        vec![Principal { identifier: Some(principal::Identifier::Any(true)) }]
    } else {
        from.iter().map(|source| or_ids(source.identities.iter().map(|id| identity_principal(id)).collect())).collect()
    };
    let permissions = if to.is_empty() {
        vec![Permission { rule: Some(permission::Rule::Any(true)) }]
    } else {
        to.iter().map(operation).collect()
    };
    Policy { permissions, principals, ..Default::default() }
}

fn or_ids(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    Principal { identifier: Some(principal::Identifier::OrIds(principal::Set { ids })) }
}

/// `*`: any authenticated peer (prefix `spiffe://`); `…*`: a prefix; else exact.
fn identity_principal(pattern: &str) -> Principal {
    let matcher = if pattern == "*" {
        string_matcher::MatchPattern::Prefix("spiffe://".to_owned())
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        string_matcher::MatchPattern::Prefix(prefix.to_owned())
    } else {
        string_matcher::MatchPattern::Exact(pattern.to_owned())
    };
    Principal {
        identifier: Some(principal::Identifier::Authenticated(principal::Authenticated {
            principal_name: Some(StringMatcher { match_pattern: Some(matcher), ignore_case: false }),
        })),
    }
}

/// paths (any) AND methods (any).
fn operation(op: &AuthzOperation) -> Permission {
    let mut all = Vec::new();
    if !op.paths.is_empty() {
        all.push(or_rules(op.paths.iter().map(|p| path_permission(p)).collect()));
    }
    if !op.methods.is_empty() {
        all.push(or_rules(op.methods.iter().map(|m| method_permission(m)).collect()));
    }
    if all.len() == 1 {
        return all.remove(0);
    }
    Permission { rule: Some(permission::Rule::AndRules(permission::Set { rules: all })) }
}

fn or_rules(mut rules: Vec<Permission>) -> Permission {
    if rules.len() == 1 {
        return rules.remove(0);
    }
    Permission { rule: Some(permission::Rule::OrRules(permission::Set { rules })) }
}

fn path_permission(pattern: &str) -> Permission {
    let matcher = if pattern == "*" {
        string_matcher::MatchPattern::Prefix("/".to_owned())
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        string_matcher::MatchPattern::Prefix(prefix.to_owned())
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        string_matcher::MatchPattern::Suffix(suffix.to_owned())
    } else {
        string_matcher::MatchPattern::Exact(pattern.to_owned())
    };
    Permission {
        rule: Some(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(StringMatcher { match_pattern: Some(matcher), ignore_case: false })),
        })),
    }
}

fn method_permission(method: &str) -> Permission {
    Permission {
        rule: Some(permission::Rule::Header(HeaderMatcher {
            name: ":method".to_owned(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(method.to_owned())),
                ignore_case: false,
            })),
            ..Default::default()
        })),
    }
}
