use std::collections::BTreeMap;
use std::path::Path;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, filter::ConfigType};
use envoy_types::pb::envoy::config::route::v3::{
    Route, VirtualHost, header_matcher::HeaderMatchSpecifier, route::Action, route_action::ClusterSpecifier,
    route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier as TcpCluster,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{UpstreamProtocolOptions, explicit_http_config::ProtocolConfig},
};
use envoy_types::pb::google::protobuf::value::Kind;

use super::*;
use crate::resources::*;
use crate::{load_file, load_str};

fn example() -> Resources {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml");
    translate(&load_file(&path).unwrap())
}

fn cluster<'a>(resources: &'a Resources, name: &str) -> &'a Cluster {
    resources.clusters.iter().find(|c| c.name == name).unwrap()
}

fn vhost<'a>(resources: &'a Resources, name: &str) -> &'a VirtualHost {
    let routes = &resources.routes[0];
    routes.virtual_hosts.iter().find(|v| v.name == name).unwrap()
}

fn labels(metadata: &Option<Metadata>, namespace: &str) -> BTreeMap<String, String> {
    struct_strings(&metadata.as_ref().unwrap().filter_metadata[namespace])
}

/// (cluster, weight, subset labels) of a route's action.
fn targets(route: &Route) -> Vec<(String, u32, BTreeMap<String, String>)> {
    let Some(Action::Route(action)) = &route.action else { panic!("not a route action: {route:?}") };
    match action.cluster_specifier.as_ref().unwrap() {
        ClusterSpecifier::Cluster(name) => vec![(name.clone(), 100, BTreeMap::new())],
        ClusterSpecifier::WeightedClusters(weighted) => weighted
            .clusters
            .iter()
            .map(|c| {
                let subset =
                    c.metadata_match.as_ref().map(|_| labels(&c.metadata_match, LB_METADATA)).unwrap_or_default();
                (c.name.clone(), c.weight.unwrap().value, subset)
            })
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn typed_config(filter: &Filter) -> &envoy_types::pb::google::protobuf::Any {
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else { panic!("no typed config") };
    any
}

fn socket(address: &Option<Address>) -> (String, u32) {
    let Some(address::Address::SocketAddress(socket)) = &address.as_ref().unwrap().address else {
        panic!("not a socket address")
    };
    let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else { panic!("no port") };
    (socket.address.clone(), port)
}

fn subset(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The type URLs of a cluster's `load_balancing_policy`, in order.
fn policy_type_urls(cluster: &Cluster) -> Vec<&str> {
    cluster
        .load_balancing_policy
        .as_ref()
        .map(|p| {
            p.policies
                .iter()
                .map(|p| p.typed_extension_config.as_ref().unwrap().typed_config.as_ref().unwrap().type_url.as_str())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn example_clusters_have_names_lb_policies_protocols_and_metadata() {
    let resources = example();
    let names: Vec<&str> = resources.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [PASSTHROUGH_CLUSTER, "outbound|8080||echo", "outbound|9000||echo-tcp"]);

    let echo = cluster(&resources, "outbound|8080||echo");
    let eds = ClusterDiscoveryType::Type(DiscoveryType::Eds as i32);
    assert_eq!(echo.cluster_discovery_type, Some(eds));
    assert!(echo.eds_cluster_config.as_ref().unwrap().eds_config.is_some());
    assert_eq!(echo.connect_timeout.unwrap().seconds, 5);
    // gRFC A52: least_request first, round_robin for clients without it; the legacy field
    // holds the value every client accepts.
    assert_eq!(echo.lb_policy, LbPolicy::RoundRobin as i32);
    assert!(echo.lb_config.is_none());
    assert_eq!(policy_type_urls(echo), [LEAST_REQUEST_POLICY_TYPE_URL, ROUND_ROBIN_POLICY_TYPE_URL]);
    let least: LeastRequest = decode_any(
        LEAST_REQUEST_POLICY_TYPE_URL,
        echo.load_balancing_policy.as_ref().unwrap().policies[0]
            .typed_extension_config
            .as_ref()
            .unwrap()
            .typed_config
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(least.choice_count.unwrap().value, 2);
    let options: HttpProtocolOptions =
        decode_any(HTTP_PROTOCOL_OPTIONS_TYPE_URL, &echo.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY])
            .unwrap();
    let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) = options.upstream_protocol_options else {
        panic!("not explicit")
    };
    assert!(matches!(explicit.protocol_config, Some(ProtocolConfig::HttpProtocolOptions(_))));
    let outrider = &echo.metadata.as_ref().unwrap().filter_metadata[OUTRIDER_METADATA];
    assert_eq!(struct_strings(outrider), subset(&[("service", "echo"), ("protocol", "http")]));
    assert_eq!(outrider.fields["port"].kind, Some(Kind::NumberValue(8080.0)));
    let selectors = &echo.lb_subset_config.as_ref().unwrap().subset_selectors;
    assert_eq!(selectors.len(), 1);
    assert_eq!(selectors[0].keys, ["version"]);

    let tcp = cluster(&resources, "outbound|9000||echo-tcp");
    assert!(tcp.typed_extension_protocol_options.is_empty());
    assert!(tcp.lb_subset_config.is_none());

    let passthrough = cluster(&resources, PASSTHROUGH_CLUSTER);
    let original_dst = ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32);
    assert_eq!(passthrough.cluster_discovery_type, Some(original_dst));
    assert_eq!(passthrough.lb_policy, LbPolicy::ClusterProvided as i32);
}

#[test]
fn example_endpoints_carry_address_weight_labels_and_meshed() {
    let resources = example();
    let names: Vec<&str> = resources.endpoints.iter().map(|e| e.cluster_name.as_str()).collect();
    assert_eq!(names, ["outbound|8080||echo", "outbound|9000||echo-tcp"]);
    let echo = &resources.endpoints[0];
    assert_eq!(echo.endpoints.len(), 1);
    let lb_endpoints = &echo.endpoints[0].lb_endpoints;
    assert_eq!(lb_endpoints.len(), 2);
    let second = &lb_endpoints[1];
    let Some(HostIdentifier::Endpoint(endpoint)) = &second.host_identifier else { panic!("no endpoint") };
    assert_eq!(socket(&endpoint.address), ("127.0.0.1".into(), 9082));
    assert_eq!(second.load_balancing_weight.unwrap().value, 1);
    assert_eq!(labels(&second.metadata, LB_METADATA), subset(&[("version", "v2")]));
    let outrider = &second.metadata.as_ref().unwrap().filter_metadata[OUTRIDER_METADATA];
    assert_eq!(outrider.fields["meshed"].kind, Some(Kind::BoolValue(false)));
}

/// prost writes a map entry whose value equals the default without the value; grpc-js-xds
/// then fails the whole response ("Cannot read properties of null (reading 'fields')").
#[test]
fn no_metadata_map_holds_an_empty_struct() {
    let resources = example();
    let mut checked = 0;
    for cla in &resources.endpoints {
        for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
            for (key, value) in &e.metadata.as_ref().unwrap().filter_metadata {
                assert!(!value.fields.is_empty(), "{}: empty {key}", cla.cluster_name);
                checked += 1;
            }
        }
    }
    for c in &resources.clusters {
        for (key, value) in c.metadata.iter().flat_map(|m| &m.filter_metadata) {
            assert!(!value.fields.is_empty(), "{}: empty {key}", c.name);
            checked += 1;
        }
    }
    assert!(checked > 0);
    // An endpoint without labels has no envoy.lb entry at all.
    let first = &resources.endpoints[1].endpoints[0].lb_endpoints[0];
    assert!(!first.metadata.as_ref().unwrap().filter_metadata.contains_key(LB_METADATA));
}

#[test]
fn example_routes_split_by_subset_with_metadata_match() {
    let resources = example();
    assert_eq!(resources.routes.len(), 1);
    assert_eq!(resources.routes[0].name, OUTBOUND_ROUTE_CONFIG);
    // The tcp service gets no virtual host.
    assert_eq!(resources.routes[0].virtual_hosts.len(), 1);
    let echo = vhost(&resources, "echo");
    assert_eq!(
        echo.domains,
        ["echo", "echo:8080", "127.100.0.5", "127.100.0.5:8080", "echo.default", "echo.default:8080"]
    );
    let cluster = "outbound|8080||echo".to_owned();
    let [canary, main] = echo.routes.as_slice() else { panic!("expected two routes: {:?}", echo.routes) };
    assert_eq!(canary.name, "canary");
    let canary_match = canary.r#match.as_ref().unwrap();
    assert_eq!(canary_match.headers[0].name, "x-canary");
    let Some(HeaderMatchSpecifier::StringMatch(exact)) = &canary_match.headers[0].header_match_specifier else {
        panic!("no string match")
    };
    assert_eq!(
        exact.match_pattern,
        Some(envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact("true".into()))
    );
    assert_eq!(targets(canary), [(cluster.clone(), 100, subset(&[("version", "v2")]))]);
    assert_eq!(main.name, "main");
    assert_eq!(main.r#match.as_ref().unwrap().path_specifier, Some(PathSpecifier::Prefix("/".into())));
    assert_eq!(
        targets(main),
        [(cluster.clone(), 90, subset(&[("version", "v1")])), (cluster, 10, subset(&[("version", "v2")])),]
    );
}

#[test]
fn example_listener_has_a_filter_chain_per_service_and_a_passthrough_default() {
    let resources = example();
    let [listener, inbound @ ..] = resources.listeners.as_slice() else { panic!("expected listeners") };
    assert_eq!(listener.name, OUTBOUND_LISTENER);
    let inbound: Vec<&str> = inbound.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(inbound, ["inbound|echo", "inbound|echo-tcp"], "then one inbound listener per service");
    assert_eq!(socket(&listener.address), ("127.0.0.1".into(), 15001));
    let [echo, echo_tcp] = listener.filter_chains.as_slice() else { panic!("expected two filter chains") };
    let chain_match = |chain: &FilterChain| {
        let m = chain.filter_chain_match.as_ref().unwrap();
        let ranges: Vec<(String, u32)> =
            m.prefix_ranges.iter().map(|r| (r.address_prefix.clone(), r.prefix_len.unwrap().value)).collect();
        (chain.name.clone(), m.destination_port.unwrap().value, ranges)
    };
    assert_eq!(chain_match(echo), ("echo".into(), 8080, vec![("127.100.0.5".into(), 32)]));
    assert_eq!(chain_match(echo_tcp), ("echo-tcp".into(), 9000, vec![("127.100.0.6".into(), 32)]));

    assert_eq!(echo.filters[0].name, HTTP_CONNECTION_MANAGER_FILTER);
    let hcm: HttpConnectionManager =
        decode_any(HTTP_CONNECTION_MANAGER_TYPE_URL, typed_config(&echo.filters[0])).unwrap();
    assert_eq!(hcm.stat_prefix, "echo");
    let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else { panic!("no rds") };
    assert_eq!(rds.route_config_name, OUTBOUND_ROUTE_CONFIG);
    assert!(rds.config_source.is_some());
    assert_eq!(hcm.http_filters[0].name, ROUTER_FILTER);
    let Some(http_filter::ConfigType::TypedConfig(router)) = &hcm.http_filters[0].config_type else {
        panic!("no router config")
    };
    let _: Router = decode_any(ROUTER_TYPE_URL, router).unwrap();

    let tcp_proxy = |filter: &Filter| {
        assert_eq!(filter.name, TCP_PROXY_FILTER);
        let proxy: TcpProxy = decode_any(TCP_PROXY_TYPE_URL, typed_config(filter)).unwrap();
        let Some(TcpCluster::Cluster(cluster)) = proxy.cluster_specifier else { panic!("no cluster") };
        (proxy.stat_prefix, cluster)
    };
    assert_eq!(tcp_proxy(&echo_tcp.filters[0]), ("echo-tcp".into(), "outbound|9000||echo-tcp".into()));
    let default = listener.default_filter_chain.as_ref().unwrap();
    assert_eq!(tcp_proxy(&default.filters[0]).1, PASSTHROUGH_CLUSTER.to_owned());
}

const OTHERS: &str = "
apiVersion: outrider.io/v1
kind: Service
metadata: {name: grpc-api, namespace: shop}
spec: {protocol: grpc, port: 50051, addresses: [\"fd00::5\"]}
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {name: grpc-api}
spec: {service: grpc-api, loadBalancer: round-robin, connectTimeout: 250ms}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {name: plain}
spec: {protocol: http2, port: 80}
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {name: plain}
spec:
  service: plain
  loadBalancer: random
  routes:
    - match: {path: /exact}
      split: [{weight: 100}]
";

#[test]
fn other_protocols_balancers_defaults_and_ipv6() {
    let resources = translate(&load_str("others.yaml", OTHERS).unwrap());
    let grpc = cluster(&resources, "outbound|50051||grpc-api");
    assert_eq!(policy_type_urls(grpc), [ROUND_ROBIN_POLICY_TYPE_URL]);
    assert_eq!(grpc.connect_timeout.unwrap().nanos, 250_000_000);
    let options: HttpProtocolOptions =
        decode_any(HTTP_PROTOCOL_OPTIONS_TYPE_URL, &grpc.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY])
            .unwrap();
    let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) = options.upstream_protocol_options else {
        panic!("not explicit")
    };
    assert!(matches!(explicit.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(_))));
    let plain = cluster(&resources, "outbound|80||plain");
    assert_eq!(policy_type_urls(plain), [RANDOM_POLICY_TYPE_URL, ROUND_ROBIN_POLICY_TYPE_URL]);
    assert_eq!(plain.lb_policy, LbPolicy::RoundRobin as i32);

    // A policy without routes and a single split without subset both go straight to the cluster.
    let api = vhost(&resources, "grpc-api");
    assert_eq!(api.routes.len(), 1);
    assert_eq!(api.routes[0].name, "default");
    assert_eq!(targets(&api.routes[0]), [("outbound|50051||grpc-api".into(), 100, BTreeMap::new())]);
    assert_eq!(
        api.domains,
        [
            "grpc-api",
            "grpc-api:50051",
            "fd00::5",
            "[fd00::5]",
            "[fd00::5]:50051",
            "grpc-api.shop",
            "grpc-api.shop:50051"
        ]
    );
    let plain_route = &vhost(&resources, "plain").routes[0];
    assert_eq!(plain_route.name, "route-0");
    assert_eq!(plain_route.r#match.as_ref().unwrap().path_specifier, Some(PathSpecifier::Path("/exact".into())));

    // Only services with addresses get a filter chain; IPv6 ranges are /128.
    let chains = &resources.listeners[0].filter_chains;
    assert_eq!(chains.len(), 1);
    let ranges = &chains[0].filter_chain_match.as_ref().unwrap().prefix_ranges;
    assert_eq!(ranges[0].prefix_len.unwrap().value, 128);
}

#[test]
fn version_is_stable_for_equal_input_and_changes_with_it() {
    let first = example();
    let second = example();
    assert_eq!(first.version.len(), 16);
    assert_eq!(first.version, second.version);

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let changed =
        load_str("policy.yaml", &text.replace("weight: 90", "weight: 80").replace("weight: 10}", "weight: 20}"))
            .unwrap();
    assert_ne!(translate(&changed).version, first.version);
    let changed = load_str("policy.yaml", &text.replace("127.0.0.1:9083", "127.0.0.1:9084")).unwrap();
    assert_ne!(translate(&changed).version, first.version);
}

#[test]
fn the_version_is_fnv1a_of_the_whole_rendering_hashed_as_it_is_written() {
    use std::fmt::Write as _;
    let mut known = super::Fnv1a64::default();
    known.write_str("a").unwrap();
    assert_eq!(known.0, 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 of \"a\"");
    // The same bytes as the rendering held whole (what earlier builds hashed: replicas of two
    // builds during a rolling update must give the same set the same version).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml");
    let set = load_str("policy.yaml", &std::fs::read_to_string(path).unwrap()).unwrap();
    let crate::policy::PolicySet { services, traffic_policies, authorization_policies, telemetry, .. } = &set;
    let whole = format!(
        "{}\n{:?}",
        super::TRANSLATION_REVISION,
        (services, traffic_policies, authorization_policies, telemetry)
    );
    let fnv = whole.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    assert_eq!(translate(&set).version, format!("{fnv:016x}"));
}

mod inbound {
    use envoy_types::pb::envoy::config::rbac::v3::{Rbac, permission, principal, rbac};
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;

    use super::*;

    const SET: &str = r#"
apiVersion: outrider.io/v1
kind: Service
metadata: {name: web}
spec:
  port: 80
  mtls: strict
  endpoints: [{address: "127.0.0.1:8080", meshed: true, identity: "spiffe://td/ns/shop/sa/web"}]
---
apiVersion: outrider.io/v1
kind: Service
metadata: {name: db}
spec: {protocol: tcp, port: 5432, addresses: ["127.100.0.9"]}
---
apiVersion: outrider.io/v1
kind: AuthorizationPolicy
metadata: {name: web-callers}
spec:
  service: web
  from: [{identities: ["spiffe://td/ns/shop/sa/front", "spiffe://td/ns/ops/*"]}]
  to: [{paths: [/api/*], methods: [GET, POST]}]
---
apiVersion: outrider.io/v1
kind: AuthorizationPolicy
metadata: {name: web-no-admin}
spec:
  service: web
  action: deny
  to: [{paths: [/admin/*]}]
---
apiVersion: outrider.io/v1
kind: AuthorizationPolicy
metadata: {name: db-no-ops}
spec:
  service: db
  action: deny
  from: [{identities: ["spiffe://td/ns/ops/*"]}]
"#;

    fn listener<'a>(res: &'a Resources, name: &str) -> &'a Listener {
        res.listeners.iter().find(|l| l.name == name).unwrap()
    }

    #[test]
    fn equal_policies_encode_to_equal_bytes() {
        use prost::Message as _;
        // Three allow policies for one service: their RBAC map would encode in an order of
        // its own each time it is built.
        let more = (1..=3)
            .map(|n| {
                format!(
                    "---\napiVersion: outrider.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{n}}}\n\
                     spec: {{service: db, from: [{{identities: [\"spiffe://td/ns/a/sa/{n}\"]}}]}}\n"
                )
            })
            .collect::<String>();
        let set = crate::load_str("p.yaml", &format!("{SET}{more}")).unwrap();
        let encoded = |name: &str| listener(&translate(&set), name).encode_to_vec();
        for name in ["inbound|web", "inbound|db"] {
            let first = encoded(name);
            for _ in 0..20 {
                assert_eq!(encoded(name), first, "{name}");
            }
        }
    }

    #[test]
    fn strict_has_only_the_mtls_chain_and_permissive_adds_plaintext() {
        let res = translate(&crate::load_str("p.yaml", SET).unwrap());
        let web = listener(&res, "inbound|web");
        assert_eq!(socket(&web.address), ("0.0.0.0".into(), 15006));
        let chains: Vec<(&str, &str)> = web
            .filter_chains
            .iter()
            .map(|c| (c.name.as_str(), c.filter_chain_match.as_ref().unwrap().transport_protocol.as_str()))
            .collect();
        assert_eq!(chains, [("mtls", "tls")]);
        let m = web.filter_chains[0].filter_chain_match.as_ref().unwrap();
        assert_eq!(m.application_protocols, ["outrider/1", "outrider-http1/1", "outrider-tcp/1"]);
        assert!(web.filter_chains[0].transport_socket.is_some());
        let db = listener(&res, "inbound|db");
        let names: Vec<&str> = db.filter_chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["mtls", "plaintext"], "permissive by default");
    }

    #[test]
    fn http_rbac_deny_then_allow_before_the_router() {
        let res = translate(&crate::load_str("p.yaml", SET).unwrap());
        let web = listener(&res, "inbound|web");
        let Some(ConfigType::TypedConfig(any)) = &web.filter_chains[0].filters[0].config_type else { panic!() };
        let hcm: HttpConnectionManager = decode_any(HTTP_CONNECTION_MANAGER_TYPE_URL, any).unwrap();
        let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [HTTP_RBAC_FILTER, HTTP_RBAC_FILTER, ROUTER_FILTER]);
        let rbac = |i: usize| -> Rbac {
            let Some(http_filter::ConfigType::TypedConfig(any)) = &hcm.http_filters[i].config_type else { panic!() };
            decode_any::<HttpRbac>(HTTP_RBAC_TYPE_URL, any).unwrap().rules.unwrap()
        };
        let deny = rbac(0);
        assert_eq!(deny.action, rbac::Action::Deny as i32);
        let deny = &deny.policies["web-no-admin"];
        assert_eq!(deny.principals[0].identifier, Some(principal::Identifier::Any(true)));
        assert!(matches!(deny.permissions[0].rule, Some(permission::Rule::UrlPath(_))));
        let allow = rbac(1);
        assert_eq!(allow.action, rbac::Action::Allow as i32);
        let allow = &allow.policies["web-callers"];
        let Some(principal::Identifier::OrIds(ids)) = &allow.principals[0].identifier else { panic!() };
        assert_eq!(ids.ids.len(), 2);
        let Some(permission::Rule::AndRules(and)) = &allow.permissions[0].rule else { panic!() };
        assert_eq!(and.rules.len(), 2, "paths AND methods");
    }

    #[test]
    fn tcp_rbac_is_a_network_filter_before_the_tcp_proxy() {
        let res = translate(&crate::load_str("p.yaml", SET).unwrap());
        let db = listener(&res, "inbound|db");
        let names: Vec<&str> = db.filter_chains[0].filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [NETWORK_RBAC_FILTER, TCP_PROXY_FILTER]);
        let Some(ConfigType::TypedConfig(any)) = &db.filter_chains[0].filters[0].config_type else { panic!() };
        let rbac: NetworkRbac = decode_any(NETWORK_RBAC_TYPE_URL, any).unwrap();
        assert_eq!(rbac.rules.unwrap().action, rbac::Action::Deny as i32);
    }

    #[test]
    fn meshed_endpoints_carry_their_identity() {
        let res = translate(&crate::load_str("p.yaml", SET).unwrap());
        let cla = res.endpoints.iter().find(|c| c.cluster_name == "outbound|80||web").unwrap();
        let ep = &cla.endpoints[0].lb_endpoints[0];
        let outrider = &ep.metadata.as_ref().unwrap().filter_metadata[OUTRIDER_METADATA];
        assert_eq!(outrider.fields["meshed"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(outrider.fields[IDENTITY_FIELD].kind, Some(Kind::StringValue("spiffe://td/ns/shop/sa/web".into())));
    }
}
