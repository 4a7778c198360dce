use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use crate::policy::{LoadBalancer, Protocol};
use crate::{PolicyErrors, load_dir, load_file, load_str};

const SERVICE: &str = "
apiVersion: outrider.io/v1
kind: Service
metadata: {name: reviews}
spec:
  port: 9080
  addresses: [\"127.100.0.5\"]
  endpoints:
    - {address: \"127.0.0.1:9081\", labels: {version: v1}}
    - {address: \"127.0.0.1:9082\", labels: {version: v2}}
";

/// The Service above, then a TrafficPolicy with the given spec lines (indented by 2).
fn with_policy(spec: &str) -> String {
    format!(
        "{SERVICE}---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: reviews}}\nspec:\n  service: reviews\n{spec}"
    )
}

fn errors(text: &str) -> PolicyErrors {
    match load_str("policy.yaml", text) {
        Ok(set) => panic!("expected errors, got {set:?}"),
        Err(errors) => errors,
    }
}

/// The single error's display text.
fn only_error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors}");
    errors.to_string()
}

#[test]
fn loads_a_valid_set_with_typed_values_and_defaults() {
    let set = load_str("policy.yaml", &with_policy("  routes:\n    - split: [{weight: 100}]\n")).unwrap();
    let service = &set.services["reviews"];
    assert_eq!(service.spec.protocol, Protocol::Http);
    assert_eq!(service.metadata.namespace, "default");
    assert_eq!(service.spec.addresses, vec![IpAddr::V4(Ipv4Addr::new(127, 100, 0, 5))]);
    assert_eq!(service.spec.endpoints[1].address.port(), 9082);
    assert_eq!(service.spec.endpoints[1].weight, 1);
    let policy = &set.traffic_policies["reviews"];
    assert_eq!(policy.spec.connect_timeout, Duration::from_secs(5));
    assert_eq!(policy.spec.load_balancer, LoadBalancer::P2cEwma);
    assert_eq!(policy.spec.routes[0].name.as_deref(), Some("route-0"));
}

#[test]
fn typo_in_a_field_names_its_path_and_the_expected_fields() {
    let text = with_policy("  routes:\n    - split: [{wieght: 100}]\n");
    assert_eq!(
        only_error(&text),
        "policy.yaml:18:16: document 2 (TrafficPolicy/reviews): spec.routes[0].split[0].wieght: \
         unknown field; did you mean `weight`? (expected one of weight, subset)"
    );
}

#[test]
fn wrong_type_and_missing_field_name_the_field() {
    let text = SERVICE.replace("port: 9080", "port: high");
    assert_eq!(
        only_error(&text),
        "policy.yaml:6:3: document 1 (Service/reviews): spec.port: expected a whole number, got \"high\""
    );
    // A missing field points at the mapping that lacks it.
    let text = SERVICE.replace("port: 9080", "protocol: http");
    assert_eq!(
        only_error(&text),
        "policy.yaml:5:1: document 1 (Service/reviews): spec.port: required field is missing"
    );
    let text = SERVICE.replace("port: 9080", "port: 70000");
    assert!(only_error(&text).ends_with("spec.port: port must be between 1 and 65535 (got 70000)"));
}

#[test]
fn bad_duration_is_explained() {
    let text = with_policy("  connectTimeout: 5 secs\n");
    assert_eq!(
        only_error(&text),
        "policy.yaml:17:3: document 2 (TrafficPolicy/reviews): spec.connectTimeout: invalid duration \
         \"5 secs\": use a number followed by ms, s, m or h, e.g. 250ms or 2s"
    );
}

#[test]
fn split_subset_matching_no_endpoint_is_an_error() {
    let text = with_policy("  routes:\n    - split: [{subset: {version: v3}, weight: 100}]\n");
    let message = only_error(&text);
    assert!(message.contains("spec.routes[0].split[0].subset: {version: v3} matches no endpoint"), "{message}");
    assert!(message.contains("{version: v1}, {version: v2}"), "{message}");
}

#[test]
fn split_weights_must_add_up_to_100() {
    let text = with_policy(
        "  routes:\n    - split: [{subset: {version: v1}, weight: 90}, {subset: {version: v2}, weight: 20}]\n",
    );
    assert_eq!(
        only_error(&text),
        "policy.yaml:18:7: document 2 (TrafficPolicy/reviews): spec.routes[0].split: weights of a split \
         must add up to 100 (got 110)"
    );
}

#[test]
fn missing_service_reference_lists_known_services() {
    let text = with_policy("").replace("service: reviews", "service: ratings");
    assert_eq!(
        only_error(&text),
        "policy.yaml:16:3: document 2 (TrafficPolicy/reviews): spec.service: no Service named \
         \"ratings\" (known services: reviews)"
    );
}

#[test]
fn mtls_mode_and_meshed_endpoints_are_checked() {
    let strict = SERVICE.replace("port: 9080", "port: 9080\n  mtls: strict");
    let set = load_str("policy.yaml", &strict).unwrap();
    assert_eq!(set.services["reviews"].spec.mtls, Some(crate::MtlsMode::Strict));
    let bad_mode = SERVICE.replace("port: 9080", "port: 9080\n  mtls: required");
    assert!(
        only_error(&bad_mode).ends_with("spec.mtls: unknown value \"required\", expected one of permissive, strict"),
        "{}",
        only_error(&bad_mode)
    );

    let meshed = SERVICE.replace("version: v2}}", "version: v2}, meshed: true}");
    assert_eq!(
        only_error(&meshed),
        "policy.yaml:10:7: document 1 (Service/reviews): spec.endpoints[1].identity: a meshed endpoint needs the SPIFFE \
         ID its sidecar presents (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>), so callers can verify it"
    );
    let unmeshed = SERVICE.replace("version: v2}}", "version: v2}, identity: \"spiffe://td/ns/a/sa/b\"}");
    assert!(only_error(&unmeshed).ends_with(
        "spec.endpoints[1].identity: only meshed endpoints have an identity: add meshed: true or remove identity"
    ));
    let bad_id = SERVICE.replace("version: v2}}", "version: v2}, meshed: true, identity: \"spiffe://td/ns/a/*\"}");
    assert!(only_error(&bad_id).contains("spec.endpoints[1].identity: invalid identity"));
    let good = SERVICE.replace("version: v2}}", "version: v2}, meshed: true, identity: \"spiffe://td/ns/a/sa/b\"}");
    let set = load_str("policy.yaml", &good).unwrap();
    assert_eq!(set.services["reviews"].spec.endpoints[1].identity.as_deref(), Some("spiffe://td/ns/a/sa/b"));
}

fn with_authz(spec: &str) -> String {
    format!(
        "{SERVICE}---\napiVersion: outrider.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: callers}}\nspec:\n  service: reviews\n{spec}"
    )
}

#[test]
fn authorization_policies_are_validated() {
    let ok = with_authz(
        "  action: deny\n  from: [{identities: [\"spiffe://td/ns/a/sa/b\", \"spiffe://td/ns/x/*\", \"*\"]}]\n  to: [{paths: [/admin/*, /x, \"*.json\"], methods: [POST]}]\n",
    );
    let set = load_str("policy.yaml", &ok).unwrap();
    let policy = &set.authorization_policies["callers"];
    assert_eq!(policy.spec.action, crate::policy::AuthzAction::Deny);
    assert_eq!(set.authorization_policies("reviews").count(), 1);

    let cases = [
        (
            "  from: [{identities: [checkout]}]\n",
            "document 2 (AuthorizationPolicy/callers): spec.from[0].identities[0]: invalid identity \"checkout\": it must start with spiffe://",
        ),
        ("  from: [{identities: []}]\n", "spec.from[0].identities: must list at least one SPIFFE ID"),
        ("  to: [{paths: [admin]}]\n", "spec.to[0].paths[0]: invalid path \"admin\""),
        ("  to: [{methods: [get]}]\n", "spec.to[0].methods[0]: invalid method \"get\""),
        ("  to: [{}]\n", "spec.to[0]: needs paths, methods or both"),
        ("  action: audit\n", "spec.action: unknown value \"audit\", expected one of allow, deny"),
        ("  form: []\n", "spec.form: unknown field; did you mean `from`? (expected one of service, action, from, to)"),
    ];
    for (spec, expected) in cases {
        let error = only_error(&with_authz(spec));
        assert!(error.contains(expected), "{spec:?}: got {error}");
    }
    let missing = with_authz("").replace("service: reviews\n", "service: ratings\n");
    assert!(only_error(&missing).ends_with("spec.service: no Service named \"ratings\" (known services: reviews)"));
}

#[test]
fn unknown_kinds_are_rejected() {
    let text = "apiVersion: outrider.io/v1\nkind: Gateway\nmetadata: {name: callers}\nspec: {service: reviews}\n";
    assert!(only_error(text).ends_with(
        "kind: unknown kind \"Gateway\": expected one of Service, TrafficPolicy, AuthorizationPolicy, Telemetry, Rollout"
    ));
}

#[test]
fn api_version_other_than_v1_is_rejected() {
    let text = SERVICE.replace("outrider.io/v1", "outrider.io/v2");
    assert!(
        only_error(&text).ends_with("apiVersion: unsupported apiVersion \"outrider.io/v2\": use \"outrider.io/v1\"")
    );
}

#[test]
fn all_errors_of_a_set_are_collected() {
    // Three documents with problems (a bad weight sum; a host name as endpoint and an unknown
    // field after it; a tcp service without an address); all reported, in document order, one
    // per line.
    let text = format!(
        "{}---\n{}---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {{name: db}}\nspec: {{protocol: tcp, port: 5432}}\n",
        with_policy("  routes:\n    - split: [{weight: 50}]\n"),
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: web}\nspec: {port: 80, endpoints: [{address: \"web.local:80\"}], colour: red}\n",
    );
    let errors = errors(&text);
    let fields: Vec<Option<&str>> = errors.iter().map(|e| e.field.as_deref()).collect();
    assert_eq!(
        fields,
        [Some("spec.routes[0].split"), Some("spec.endpoints[0].address"), Some("spec.colour"), Some("spec.addresses")],
        "{errors}"
    );
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 4);
    assert!(text.contains("\"web.local\" is a host name"), "{text}");
    assert!(text.contains("document 4 (Service/db)"), "{text}");
}

#[test]
fn duplicates_and_second_policy_for_a_service_are_errors() {
    let text = format!("{SERVICE}---{SERVICE}");
    assert!(
        only_error(&text)
            .contains("metadata.name: duplicate Service \"reviews\" (first defined in policy.yaml document 1)")
    );
    let second = with_policy("")
        .replace("metadata: {name: reviews}\nspec:\n  service", "metadata: {name: reviews-b}\nspec:\n  service");
    let text = format!("{}---\n{}", with_policy(""), second.split_once("---").unwrap().1);
    assert!(only_error(&text).contains("already has a TrafficPolicy (in policy.yaml document 2)"));
}

#[test]
fn routes_on_a_tcp_service_and_bad_route_fields_are_errors() {
    let tcp =
        with_policy("  routes:\n    - split: [{weight: 100}]\n").replace("port: 9080", "protocol: tcp\n  port: 9080");
    assert!(only_error(&tcp).contains("spec.routes: routes are HTTP only"));
    let text = with_policy(
        "  routes:\n    - name: Bad_Name\n      match: {path: /a, pathPrefix: /b}\n      split: [{weight: 100}]\n",
    );
    let fields: Vec<String> = errors(&text).iter().filter_map(|e| e.field.clone()).collect();
    assert_eq!(fields, ["spec.routes[0].name", "spec.routes[0].match"]);
}

#[test]
fn the_shipped_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml");
    let set = load_file(&path).unwrap();
    assert_eq!(set.services.keys().collect::<Vec<_>>(), ["echo", "echo-tcp"]);
    assert_eq!(set.traffic_policies["echo"].spec.routes.len(), 2);
}

#[test]
fn a_directory_is_one_set_across_its_yaml_files() {
    let dir = std::env::temp_dir().join(format!("outrider-xds-load-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = with_policy("");
    let (service, policy) = policy.split_once("---").unwrap();
    std::fs::write(dir.join("a-service.yaml"), service).unwrap();
    std::fs::write(dir.join("b-policy.yml"), policy).unwrap();
    std::fs::write(dir.join("notes.txt"), "not: yaml: at all").unwrap();
    let set = load_dir(&dir);
    // A policy naming a service that no file defines fails, naming the file it is in.
    std::fs::write(
        dir.join("c-orphan.yaml"),
        policy.replace("name: reviews}", "name: other}").replace("service: reviews", "service: ratings"),
    )
    .unwrap();
    let orphan = load_dir(&dir).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    let set = set.unwrap();
    assert!(set.traffic_policies.contains_key("reviews"));
    assert!(orphan.contains("c-orphan.yaml:6:3: document 1 (TrafficPolicy/other): spec.service"), "{orphan}");
}

#[test]
fn unreadable_file_is_one_error_naming_it() {
    let errors = load_file(Path::new("/nonexistent/policy.yaml")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors.to_string().starts_with("/nonexistent/policy.yaml: cannot read the policy file"), "{errors}");
}

#[test]
fn unknown_enum_values_yaml_syntax_and_bad_names_are_reported() {
    let text = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: A_b}\nspec: {port: 80, protocol: htp}\n";
    assert_eq!(
        errors(text).to_string(),
        "policy.yaml:3:12: document 1 (Service/A_b): metadata.name: invalid name \"A_b\": use lowercase \
         letters, digits and '-', starting and ending with a letter or digit, at most 63 characters\n\
         policy.yaml:4:18: document 1 (Service/A_b): spec.protocol: unknown value \"htp\", expected one \
         of http, http2, grpc, tcp; did you mean \"http\"?"
    );
    let message = only_error("---\napiVersion: outrider.io/v1\nkind: Service\nspec: {port: 80\n");
    assert!(message.starts_with("policy.yaml:5:1: document 1: invalid YAML: did not find expected ','"), "{message}");
}
