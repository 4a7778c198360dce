//! The resilience fields as Envoy resources, decoded back from what the translation emits.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, retry_policy::ResetHeaderFormat, retry_policy::retry_host_predicate, route::Action,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort::ErrorType};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{Duration, value::Kind};

use super::*;
use crate::load_str;
use crate::resources::*;

/// An http service `web` (port 8080) and a tcp service `db` (port 5432), each with a policy
/// made of the given spec lines (indented by 2); an empty spec means no policy.
fn set(web: &str, db: &str) -> Resources {
    let mut text = String::from(
        "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: web}\n\
         spec: {port: 8080, addresses: [\"127.100.0.5\"]}\n---\n\
         apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: db}\n\
         spec: {protocol: tcp, port: 5432, addresses: [\"127.100.0.6\"]}\n",
    );
    for (name, spec) in [("web", web), ("db", db)] {
        if !spec.is_empty() {
            text.push_str(&format!(
                "---\napiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: {name}}}\n\
                 spec:\n  service: {name}\n{spec}"
            ));
        }
    }
    translate(&load_str("policy.yaml", &text).unwrap_or_else(|errors| panic!("{errors}")))
}

fn cluster<'a>(resources: &'a Resources, name: &str) -> &'a Cluster {
    resources.clusters.iter().find(|c| c.name == name).unwrap()
}

fn web_routes(resources: &Resources) -> &[Route] {
    let vhost = resources.routes[0].virtual_hosts.iter().find(|v| v.name == "web").unwrap();
    &vhost.routes
}

fn action_of(route: &Route) -> &RouteAction {
    let Some(Action::Route(action)) = &route.action else { panic!("not a route action") };
    action
}

fn secs(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

fn millis(millis: i32) -> Option<Duration> {
    Some(Duration { seconds: 0, nanos: millis * 1_000_000 })
}

fn fault(route: &Route) -> Option<HttpFault> {
    let any = route.typed_per_filter_config.get(FAULT_FILTER)?;
    Some(decode_any(HTTP_FAULT_TYPE_URL, any).unwrap())
}

fn resilience(cluster: &Cluster) -> Option<Resilience> {
    let any = cluster.typed_extension_protocol_options.get(RESILIENCE_KEY)?;
    Some(decode_any(RESILIENCE_TYPE_URL, any).unwrap())
}

/// Names of the HTTP filters of the listener's filter chain for `web`.
fn http_filters(resources: &Resources) -> Vec<String> {
    let chain = resources.listeners[0].filter_chains.iter().find(|c| c.name == "web").unwrap();
    let Some(ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!("no typed config") };
    let hcm: HttpConnectionManager = decode_any(HTTP_CONNECTION_MANAGER_TYPE_URL, any).unwrap();
    hcm.http_filters.into_iter().map(|f| f.name).collect()
}

const RETRIES: &str = "  timeout: 3s
  idleTimeout: 5m
  retries:
    attempts: 3
    perTryTimeout: 1s
    retryOn: [connect-failure, non-idempotent, 5xx, retriable-status-codes]
    retriableStatusCodes: [503, 429]
    backoff: {base: 50ms, max: 400ms}
    budget: {ratio: 0.25, minPerSecond: 5, window: 30s}
";

#[test]
fn retries_and_timeouts_become_the_route_retry_policy() {
    let resources = set(RETRIES, "");
    // A policy without routes: the default route carries everything.
    let [route] = web_routes(&resources) else { panic!("expected one route") };
    let action = action_of(route);
    assert_eq!(action.timeout, secs(3));
    assert_eq!(action.idle_timeout, secs(300));
    let retry = action.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "connect-failure,5xx,retriable-status-codes");
    assert_eq!(retry.num_retries.unwrap().value, 3);
    assert_eq!(retry.per_try_timeout, secs(1));
    assert_eq!(retry.retriable_status_codes, [503, 429]);
    let backoff = retry.retry_back_off.unwrap();
    assert_eq!(backoff.base_interval, millis(50));
    assert_eq!(backoff.max_interval, millis(400));
    let limited = retry.rate_limited_retry_back_off.as_ref().unwrap();
    assert_eq!(limited.max_interval, millis(400));
    assert_eq!(limited.reset_headers.len(), 1);
    assert_eq!(limited.reset_headers[0].name, "retry-after");
    assert_eq!(limited.reset_headers[0].format, ResetHeaderFormat::Seconds as i32);
    let [predicate] = retry.retry_host_predicate.as_slice() else { panic!("expected one host predicate") };
    assert_eq!(predicate.name, PREVIOUS_HOSTS_PREDICATE);
    let Some(retry_host_predicate::ConfigType::TypedConfig(config)) = &predicate.config_type else {
        panic!("no predicate config")
    };
    let _: PreviousHostsPredicate = decode_any(PREVIOUS_HOSTS_PREDICATE_TYPE_URL, config).unwrap();
    assert_eq!(retry.host_selection_retry_max_attempts, 3);
    let outrider = &route.metadata.as_ref().unwrap().filter_metadata[OUTRIDER_METADATA];
    assert_eq!(outrider.fields[RETRY_NON_IDEMPOTENT_FIELD].kind, Some(Kind::BoolValue(true)));

    // Defaults: backoff max 10 × base, no per-try timeout, non-idempotent off.
    let resources = set("  retries: {}\n  routes:\n    - {name: a, split: [{weight: 100}]}\n", "");
    let route = &web_routes(&resources)[0];
    let retry = action_of(route).retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "connect-failure,refused-stream,unavailable,cancelled");
    assert_eq!(retry.num_retries.unwrap().value, 2);
    assert_eq!(retry.per_try_timeout, None);
    assert_eq!(retry.retry_back_off.unwrap().base_interval, millis(25));
    assert_eq!(retry.retry_back_off.unwrap().max_interval, millis(250));
    let outrider = &route.metadata.as_ref().unwrap().filter_metadata[OUTRIDER_METADATA];
    assert_eq!(outrider.fields[RETRY_NON_IDEMPOTENT_FIELD].kind, Some(Kind::BoolValue(false)));
}

#[test]
fn without_resilience_fields_routes_have_no_timeout_retries_or_faults() {
    for web in ["", "  connectTimeout: 1s\n"] {
        let resources = set(web, "");
        let route = &web_routes(&resources)[0];
        let action = action_of(route);
        assert_eq!(action.timeout, None, "unset means no overall timeout");
        assert_eq!(action.idle_timeout, None);
        assert!(action.retry_policy.is_none());
        assert!(route.metadata.is_none());
        assert!(route.typed_per_filter_config.is_empty());
        assert_eq!(http_filters(&resources), [ROUTER_FILTER]);
        let web = cluster(&resources, "outbound|8080||web");
        assert!(web.outlier_detection.is_none());
        assert!(resilience(web).is_none());
    }
}

#[test]
fn thresholds_are_always_emitted_with_envoy_defaults() {
    let resources = set("", "  connectTimeout: 1s\n");
    for name in ["outbound|8080||web", "outbound|5432||db"] {
        let breakers = cluster(&resources, name).circuit_breakers.as_ref().unwrap();
        let [thresholds] = breakers.thresholds.as_slice() else { panic!("expected one threshold") };
        assert_eq!(thresholds.priority, RoutingPriority::Default as i32);
        assert_eq!(thresholds.max_connections.unwrap().value, 1024);
        assert_eq!(thresholds.max_pending_requests.unwrap().value, 1024);
        assert_eq!(thresholds.max_requests.unwrap().value, 1024);
        assert_eq!(thresholds.max_retries.unwrap().value, 3);
    }
    let resources =
        set("  circuitBreaker: {maxConnections: 10, maxPendingRequests: 20, maxRequests: 30, maxRetries: 0}\n", "");
    let web = cluster(&resources, "outbound|8080||web");
    let thresholds = &web.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(
        (
            thresholds.max_connections.unwrap().value,
            thresholds.max_pending_requests.unwrap().value,
            thresholds.max_requests.unwrap().value,
            thresholds.max_retries.unwrap().value
        ),
        (10, 20, 30, 0)
    );
    // Thresholds alone need no extension.
    assert!(resilience(web).is_none());
}

#[test]
fn outlier_detection_maps_to_envoy_with_enforcement_per_check() {
    let resources = set(
        "  outlierDetection: {consecutiveGatewayErrors: 4, failurePercentageThreshold: 60, \
         failurePercentageMinimumRequests: 20, interval: 5s, baseEjectionTime: 15s, \
         maxEjectionTime: 2m, maxEjectionPercent: 50}\n",
        "  outlierDetection: {failurePercentageThreshold: 30}\n",
    );
    let web = cluster(&resources, "outbound|8080||web");
    let od = web.outlier_detection.as_ref().unwrap();
    let value = |v: Option<envoy_types::pb::google::protobuf::UInt32Value>| v.unwrap().value;
    assert_eq!(value(od.consecutive_5xx), 5);
    assert_eq!(value(od.enforcing_consecutive_5xx), 100);
    assert_eq!(value(od.consecutive_gateway_failure), 4);
    assert_eq!(value(od.enforcing_consecutive_gateway_failure), 100);
    assert_eq!(value(od.failure_percentage_threshold), 60);
    assert_eq!(value(od.enforcing_failure_percentage), 100);
    assert_eq!(value(od.failure_percentage_minimum_hosts), 1);
    assert_eq!(value(od.failure_percentage_request_volume), 20);
    assert_eq!(value(od.enforcing_success_rate), 0);
    assert_eq!(od.interval, secs(5));
    assert_eq!(od.base_ejection_time, secs(15));
    assert_eq!(od.max_ejection_time, secs(120));
    assert_eq!(value(od.max_ejection_percent), 50);

    // Checks that are off are not enforced; tcp counts failed connects as 5xx, as Envoy does.
    let db = cluster(&resources, "outbound|5432||db");
    let od = db.outlier_detection.as_ref().unwrap();
    assert_eq!(value(od.consecutive_5xx), 5);
    assert_eq!(value(od.enforcing_consecutive_5xx), 100);
    assert_eq!(value(od.enforcing_consecutive_gateway_failure), 0);
    assert_eq!(value(od.enforcing_failure_percentage), 100);
    assert_eq!(value(od.max_ejection_percent), 10);
    assert_eq!(od.max_ejection_time, secs(300));

    let resources = set("  outlierDetection: {consecutive5xx: 0}\n", "");
    let web = cluster(&resources, "outbound|8080||web");
    let od = web.outlier_detection.as_ref().unwrap();
    assert_eq!(value(od.enforcing_consecutive_5xx), 0);
    assert_eq!(value(od.enforcing_failure_percentage), 0);
}

#[test]
fn faults_become_http_fault_per_route_and_route_level_faults_override() {
    let resources = set(
        "  faults:
    delay: {percent: 0.5, duration: 2s}
    abort: {percent: 5, status: 503}
  routes:
    - name: inherits
      match: {pathPrefix: /a}
      split: [{weight: 100}]
    - name: own
      match: {pathPrefix: /b}
      split: [{weight: 100}]
      faults: {abort: {percent: 100, status: 418}}
    - name: none
      split: [{weight: 100}]
      faults: {}
",
        "",
    );
    let [inherits, own, none] = web_routes(&resources) else { panic!("expected three routes") };
    let policy_level = fault(inherits).unwrap();
    let delay = policy_level.delay.unwrap();
    assert_eq!(delay.fault_delay_secifier, Some(FaultDelaySecifier::FixedDelay(secs(2).unwrap())));
    let percentage = delay.percentage.unwrap();
    assert_eq!(percentage.numerator, 5_000);
    assert_eq!(percentage.denominator, DenominatorType::Million as i32);
    let abort = policy_level.abort.unwrap();
    assert_eq!(abort.error_type, Some(ErrorType::HttpStatus(503)));
    assert_eq!(abort.percentage.unwrap().numerator, 50_000);

    let own = fault(own).unwrap();
    assert!(own.delay.is_none(), "the route's faults replace the policy's");
    let abort = own.abort.unwrap();
    assert_eq!(abort.error_type, Some(ErrorType::HttpStatus(418)));
    assert_eq!(abort.percentage.unwrap().numerator, 1_000_000);
    assert!(fault(none).is_none(), "faults: {{}} turns them off");

    assert_eq!(http_filters(&resources), [FAULT_FILTER, ROUTER_FILTER]);
    let chain = &resources.listeners[0].filter_chains[1];
    let Some(ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!("no typed config") };
    let hcm: HttpConnectionManager = decode_any(HTTP_CONNECTION_MANAGER_TYPE_URL, any).unwrap();
    let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(config)) =
        &hcm.http_filters[0].config_type
    else {
        panic!("no fault filter config")
    };
    assert_eq!(decode_any::<HttpFault>(HTTP_FAULT_TYPE_URL, config).unwrap(), HttpFault::default());

    // Only a route-level fault still needs the filter.
    let resources =
        set("  routes:\n    - split: [{weight: 100}]\n      faults: {delay: {percent: 1, duration: 1s}}\n", "");
    assert!(fault(&web_routes(&resources)[0]).is_some());
    assert_eq!(http_filters(&resources), [FAULT_FILTER, ROUTER_FILTER]);
}

#[test]
fn resilience_extension_carries_state_machine_budget_and_idle_timeout() {
    let resources = set(
        &format!("{RETRIES}  circuitBreaker: {{window: 20, slowCallDuration: 2s}}\n"),
        "  idleTimeout: 10m\n  circuitBreaker: {halfOpenCalls: 2}\n",
    );
    let web = cluster(&resources, "outbound|8080||web");
    let extension = resilience(web).unwrap();
    assert_eq!(
        extension.breaker,
        Some(BreakerStateMachine {
            failure_rate_threshold: 50,
            slow_call_duration: secs(2),
            slow_call_rate_threshold: 100,
            window: 20,
            minimum_calls: 20,
            open_duration: secs(60),
            half_open_calls: 10,
            scope: BreakerScope::Endpoint as i32,
        })
    );
    assert_eq!(extension.fallback, None);
    assert_eq!(extension.retry_budget, Some(RetryBudget { ratio: 0.25, min_per_second: 5, window: secs(30) }));
    assert_eq!(extension.upstream_idle_timeout, secs(300));
    let options: HttpProtocolOptions =
        decode_any(HTTP_PROTOCOL_OPTIONS_TYPE_URL, &web.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY])
            .unwrap();
    assert_eq!(options.common_http_protocol_options.unwrap().idle_timeout, secs(300));

    // tcp: the extension (state machine on connect failures, idle timeout), and the idle
    // timeout on the TCP proxy too.
    let db = cluster(&resources, "outbound|5432||db");
    let extension = resilience(db).unwrap();
    assert_eq!(extension.breaker.unwrap().half_open_calls, 2);
    assert_eq!(extension.retry_budget, None);
    assert_eq!(extension.upstream_idle_timeout, secs(600));
    let chain = &resources.listeners[0].filter_chains[0];
    assert_eq!(chain.name, "db");
    let Some(ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!("no typed config") };
    let proxy: TcpProxy = decode_any(TCP_PROXY_TYPE_URL, any).unwrap();
    assert_eq!(proxy.idle_timeout, secs(600));

    // Retries alone: the budget with its defaults; idle timeout alone: just that.
    let resources = set("  retries: {}\n", "  idleTimeout: 1m\n");
    let extension = resilience(cluster(&resources, "outbound|8080||web")).unwrap();
    assert_eq!(extension.retry_budget, Some(RetryBudget { ratio: 0.2, min_per_second: 10, window: secs(10) }));
    assert_eq!((extension.breaker, extension.upstream_idle_timeout), (None, None));
    let extension = resilience(cluster(&resources, "outbound|5432||db")).unwrap();
    assert_eq!(extension.upstream_idle_timeout, secs(60));
    assert_eq!((extension.breaker, extension.retry_budget), (None, None));
}

#[test]
fn breaker_scope_and_fallback_travel_in_the_extension() {
    let text = "apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: web}\nspec: {port: 8080}\n---\n\
                apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: legacy}\nspec: {port: 9090}\n---\n\
                apiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: api}\nspec: {port: 7070}\n---\n\
                apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: web}\nspec:\n  service: web\n\
                \x20 circuitBreaker: {fallback: {subset: {version: v1}}}\n---\n\
                apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: api}\nspec:\n  service: api\n\
                \x20 circuitBreaker: {scope: service, fallback: {service: legacy}}\n";
    let resources = translate(&load_str("policy.yaml", text).unwrap_or_else(|errors| panic!("{errors}")));
    // A fallback alone turns the state machine on, per endpoint by default; a subset falls
    // back within the service's own cluster.
    let web = resilience(cluster(&resources, "outbound|8080||web")).unwrap();
    assert_eq!(web.breaker.unwrap().scope, BreakerScope::Endpoint as i32);
    assert_eq!(
        web.fallback,
        Some(Fallback { cluster: "outbound|8080||web".into(), subset: [("version".into(), "v1".into())].into() })
    );
    // A service fallback names the other service's cluster.
    let api = resilience(cluster(&resources, "outbound|7070||api")).unwrap();
    assert_eq!(api.breaker.unwrap().scope, BreakerScope::Service as i32);
    assert_eq!(api.fallback, Some(Fallback { cluster: "outbound|9090||legacy".into(), subset: Default::default() }));
    // Without a policy: no extension at all.
    assert!(resilience(cluster(&resources, "outbound|9090||legacy")).is_none());
    // The scope's wire value 0 is "endpoint": an extension written before the field existed
    // keeps the per-endpoint default.
    let old = BreakerStateMachine { window: 5, ..Default::default() };
    assert_eq!(BreakerScope::try_from(old.scope), Ok(BreakerScope::Endpoint));
}

#[test]
fn version_changes_when_a_resilience_field_changes() {
    let base = set(RETRIES, "").version;
    assert_eq!(set(RETRIES, "").version, base);
    let variants = [
        RETRIES.replace("timeout: 3s", "timeout: 4s"),
        RETRIES.replace("attempts: 3", "attempts: 4"),
        RETRIES.replace("ratio: 0.25", "ratio: 0.3"),
        RETRIES.replace("idleTimeout: 5m", "idleTimeout: 6m"),
        format!("{RETRIES}  circuitBreaker: {{maxRequests: 5}}\n"),
        format!("{RETRIES}  outlierDetection: {{}}\n"),
        format!("{RETRIES}  circuitBreaker: {{scope: service}}\n"),
        format!("{RETRIES}  circuitBreaker: {{fallback: {{subset: {{v: a}}}}}}\n"),
        format!("{RETRIES}  faults: {{abort: {{percent: 1, status: 503}}}}\n"),
    ];
    for variant in variants {
        assert_ne!(set(&variant, "").version, base, "{variant}");
    }
}
