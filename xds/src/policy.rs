//! The policy model: the documents of a policy file as typed, `deny_unknown_fields` serde structs.
//!
//! The structs are what [`crate::load_str`] deserializes into and, once validated, what a
//! [`PolicySet`] holds. Field names follow the YAML spelling (camelCase) through serde renames.
//! Defaults live here, in [`defaults`], and nowhere else.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

mod authz;
mod resilience;
mod rollout;
mod telemetry;

pub use authz::{AuthorizationPolicy, AuthorizationPolicySpec, AuthzAction, AuthzOperation, AuthzSource};
pub use resilience::{
    Backoff, BreakerScope, CircuitBreaker, Fallback, FaultAbort, FaultDelay, Faults, OutlierDetection, Retries,
    RetryBudget, RetryOn, StateMachine,
};
pub use rollout::{
    Analysis, BlueGreenStrategy, CanaryStrategy, DEFAULT_ROUTE, LinearStrategy, PREVIEW_ROUTE, Position, Rollout,
    RolloutSpec, Step, Strategy, Webhook, Webhooks,
};
pub use telemetry::{Telemetry, TelemetrySpec, TracingSpec};

/// The only `apiVersion` accepted.
pub const API_VERSION: &str = "outrider.io/v1";

/// The kinds a document may have, as spelled in YAML.
pub const KINDS: &[&str] = &["Service", "TrafficPolicy", "AuthorizationPolicy", "Telemetry", "Rollout"];

/// Default values, in one place.
/// The largest value each duration field accepts; a policy past it is an error naming the
/// field and the limit (docs/policy.md, "Limits"). They keep every deadline the proxy computes
/// far from the clock's range, and are generous for what each field is for.
pub mod limits {
    use std::time::Duration;

    const HOUR: u64 = 3600;

    /// `connectTimeout`: a TCP connect gives up by itself well before this.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    /// `timeout`, `retries.perTryTimeout`, `circuitBreaker.slowCallDuration` and
    /// `openDuration`, `outlierDetection.baseEjectionTime` and `maxEjectionTime`.
    pub const TIMEOUT: Duration = Duration::from_secs(24 * HOUR);
    /// `idleTimeout`: long-lived idle connections (databases, streams) may want days.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * HOUR);
    /// `retries.backoff.base` and `max`, `retries.budget.window`,
    /// `outlierDetection.interval`, `faults.delay.duration`.
    pub const INTERVAL: Duration = Duration::from_secs(HOUR);
}

pub mod defaults {
    use std::time::Duration;

    /// The Rollout fields' defaults.
    pub use super::rollout::defaults as rollout;

    /// Namespace of a document without `metadata.namespace`.
    pub const NAMESPACE: &str = "default";
    /// Envoy's default connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Weight of an endpoint without `weight`.
    pub const ENDPOINT_WEIGHT: u32 = 1;
    /// Idle timeout (streams and pooled upstream connections) when `idleTimeout` is absent;
    /// the translation leaves the field unset and the proxy applies this.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

    /// `retries.attempts`.
    pub const RETRY_ATTEMPTS: u32 = 2;
    /// `retries.retryOn`.
    pub const RETRY_ON: [super::RetryOn; 4] = [
        super::RetryOn::ConnectFailure,
        super::RetryOn::RefusedStream,
        super::RetryOn::Unavailable,
        super::RetryOn::Cancelled,
    ];
    /// `retries.backoff.base` (Envoy's); `max` defaults to [`BACKOFF_MAX_FACTOR`] × base.
    pub const BACKOFF_BASE: Duration = Duration::from_millis(25);
    /// `retries.backoff.max` = this × `base` when absent (Envoy's rule).
    pub const BACKOFF_MAX_FACTOR: u32 = 10;
    /// `retries.budget.ratio`.
    pub const BUDGET_RATIO: f64 = 0.2;
    /// `retries.budget.minPerSecond`.
    pub const BUDGET_MIN_PER_SECOND: u32 = 10;
    /// `retries.budget.window`.
    pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

    /// `circuitBreaker.maxConnections`, `maxPendingRequests`, `maxRequests` (Envoy's).
    pub const MAX_CONNECTIONS: u32 = 1024;
    pub const MAX_PENDING_REQUESTS: u32 = 1024;
    pub const MAX_REQUESTS: u32 = 1024;
    /// `circuitBreaker.maxRetries` (Envoy's): concurrent retries.
    pub const MAX_RETRIES: u32 = 3;
    /// Breaker state machine (Resilience4j's defaults), used once any of its fields is given.
    pub const FAILURE_RATE_THRESHOLD: u32 = 50;
    pub const SLOW_CALL_RATE_THRESHOLD: u32 = 100;
    pub const SLOW_CALL_DURATION: Duration = Duration::from_secs(60);
    pub const BREAKER_WINDOW: u32 = 100;
    /// Clamped to the window when the window is smaller.
    pub const MINIMUM_CALLS: u32 = 100;
    pub const OPEN_DURATION: Duration = Duration::from_secs(60);
    pub const HALF_OPEN_CALLS: u32 = 10;

    /// Outlier detection (Envoy's defaults, except the failure-percentage threshold, off).
    pub const CONSECUTIVE_5XX: u32 = 5;
    pub const CONSECUTIVE_GATEWAY_ERRORS: u32 = 0;
    pub const FAILURE_PERCENTAGE_THRESHOLD: u32 = 0;
    pub const FAILURE_PERCENTAGE_MINIMUM_REQUESTS: u32 = 5;
    pub const OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
    pub const BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
    pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
    pub const MAX_EJECTION_PERCENT: u32 = 10;

    pub(crate) fn namespace() -> String {
        NAMESPACE.to_owned()
    }
    pub(crate) fn connect_timeout() -> Duration {
        CONNECT_TIMEOUT
    }
    pub(crate) fn endpoint_weight() -> u32 {
        ENDPOINT_WEIGHT
    }
}

/// A validated set of documents: every reference resolves, every value is in range.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet {
    /// Services by `metadata.name`.
    pub services: BTreeMap<String, Service>,
    /// Traffic policies by the name of the service they apply to (`spec.service`).
    pub traffic_policies: BTreeMap<String, TrafficPolicy>,
    /// Authorization policies by `metadata.name`.
    pub authorization_policies: BTreeMap<String, AuthorizationPolicy>,
    /// The mesh-wide Telemetry, if the set has one.
    pub telemetry: Option<Telemetry>,
    /// Rollouts by `metadata.name` (they change no xDS resource: the control plane runs them).
    pub rollouts: BTreeMap<String, Rollout>,
}

impl PolicySet {
    /// The traffic policy of a service, if it has one.
    pub fn traffic_policy(&self, service: &str) -> Option<&TrafficPolicy> {
        self.traffic_policies.get(service)
    }

    /// The Rollout of a service, if it has one.
    pub fn rollout_of(&self, service: &str) -> Option<&Rollout> {
        self.rollouts.values().find(|r| r.spec.service == service)
    }

    /// The authorization policies of a service, in name order.
    pub fn authorization_policies(&self, service: &str) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.authorization_policies.values().filter(move |p| p.spec.service == service)
    }

    /// Adds the documents of `other`, a set validated apart (one Kubernetes object at a time),
    /// or refuses them all with the reason when one would take the place of a document already
    /// here (a second TrafficPolicy for a service, a second Telemetry, a second Rollout for a
    /// service). Authorization policies are keyed `NAMESPACE/NAME@SERVICE` and rollouts
    /// `NAMESPACE/NAME`, so that equal names in two namespaces stay apart.
    pub fn absorb(&mut self, other: PolicySet) -> Result<(), String> {
        // Destructured so that a new kind of document cannot be forgotten here.
        let PolicySet { services, traffic_policies, authorization_policies, telemetry, rollouts } = other;
        for (name, service) in &services {
            if self.services.contains_key(name) {
                return Err(format!("service \"{}\" is defined twice", service.name()));
            }
        }
        for service in traffic_policies.keys() {
            if let Some(first) = self.traffic_policies.get(service) {
                return Err(format!(
                    "service \"{service}\" already has a TrafficPolicy ({}/{}); a service takes at most one, \
                     so merge them",
                    first.metadata.namespace, first.metadata.name
                ));
            }
        }
        if let (Some(first), Some(_)) = (&self.telemetry, &telemetry) {
            return Err(format!(
                "the mesh already has a Telemetry ({}/{}); there is at most one, so merge them",
                first.metadata.namespace, first.metadata.name
            ));
        }
        for rollout in rollouts.values() {
            if let Some(first) = self.rollout_of(&rollout.spec.service) {
                return Err(format!(
                    "service \"{}\" already has a Rollout ({}/{}); one release runs at a time per service",
                    rollout.spec.service, first.metadata.namespace, first.metadata.name
                ));
            }
        }
        self.services.extend(services);
        for rollout in rollouts.into_values() {
            self.rollouts.insert(format!("{}/{}", rollout.metadata.namespace, rollout.metadata.name), rollout);
        }
        self.traffic_policies.extend(traffic_policies);
        for policy in authorization_policies.into_values() {
            let key = format!("{}/{}@{}", policy.metadata.namespace, policy.metadata.name, policy.spec.service);
            self.authorization_policies.insert(key, policy);
        }
        if telemetry.is_some() {
            self.telemetry = telemetry;
        }
        Ok(())
    }
}

/// `metadata` of every document.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// DNS label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
    pub name: String,
    /// Defaults to `default`.
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    /// Free-form labels (not used by the translation yet).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `kind: Service`.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

impl Service {
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// `spec` of a Service.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Defaults to `http`.
    #[serde(default)]
    pub protocol: Protocol,
    /// The port callers use, 1..=65535.
    #[serde(deserialize_with = "de::port")]
    pub port: u16,
    /// Virtual IPs matched by original destination.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Inbound mTLS mode of the service's sidecars; absent = `permissive`.
    #[serde(default)]
    pub mtls: Option<MtlsMode>,
    /// Static endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// More host names callers may use (with or without `:port`), besides the name, the
    /// addresses and `name.namespace`. Not written in files: Kubernetes discovery sets them
    /// (`name.namespace.svc`, `name.namespace.svc.cluster.local`, …).
    #[serde(skip)]
    pub hosts: Vec<String>,
}

/// Application protocol of a service.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    /// The YAML spelling (also used in the cluster's `outrider` metadata).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }

    /// Whether requests are routed by HTTP routes (everything but `tcp`).
    pub fn is_http(self) -> bool {
        self != Protocol::Tcp
    }
}

/// `spec.mtls` of a Service: what its sidecars accept inbound.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Mutual TLS from meshed callers and plaintext from unmeshed ones (which have no identity).
    #[default]
    Permissive,
    /// Mutual TLS only: plaintext connections are refused.
    Strict,
}

/// One static endpoint of a Service.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `IP:port` (IPv6 as `[::1]:80`); host names are not resolved.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    #[serde(deserialize_with = "de::socket_addr")]
    pub address: SocketAddr,
    /// Labels that subsets select on.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Load-balancing weight, 1..=128.
    #[serde(default = "defaults::endpoint_weight")]
    pub weight: u32,
    /// Whether a sidecar fronts the endpoint: callers then use mutual TLS and expect `identity`.
    #[serde(default)]
    pub meshed: bool,
    /// The SPIFFE ID the endpoint's sidecar presents; required when `meshed`.
    #[serde(default)]
    pub identity: Option<String>,
    /// An ambient workload behind a node proxy: callers tunnel to it over HBONE (`IP:15008`,
    /// HTTP/2 CONNECT in mutual TLS). Needs `meshed` and `identity`.
    #[serde(default)]
    pub hbone: bool,
}

/// `kind: TrafficPolicy`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficPolicy {
    pub metadata: Metadata,
    pub spec: TrafficPolicySpec,
}

/// `spec` of a TrafficPolicy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// Name of the Service this policy applies to.
    pub service: String,
    /// Defaults to 5s (Envoy's default); must be more than zero.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(default = "defaults::connect_timeout", deserialize_with = "crate::duration::deserialize")]
    pub connect_timeout: Duration,
    /// Defaults to `p2c-ewma`.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// First match wins; no routes sends everything to the service.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The whole request, retries included; absent = no overall timeout.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    pub timeout: Option<Duration>,
    /// Idle streams and pooled upstream connections; absent = [`defaults::IDLE_TIMEOUT`].
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::duration::schema"))]
    #[serde(default, deserialize_with = "crate::duration::deserialize_option")]
    pub idle_timeout: Option<Duration>,
    /// Retries (HTTP only).
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Thresholds and the optional breaker state machine.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Per-endpoint ejection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Faults injected on every route (HTTP only); a route's own `faults` replaces them.
    #[serde(default)]
    pub faults: Option<Faults>,
}

impl TrafficPolicySpec {
    /// The faults that apply to a route: its own, else the policy's; `None` when that is
    /// empty. `route` is `None` for the default route of a policy without routes.
    pub fn faults_for<'a>(&'a self, route: Option<&'a Route>) -> Option<&'a Faults> {
        route.and_then(|route| route.faults.as_ref()).or(self.faults.as_ref()).filter(|faults| !faults.is_empty())
    }
}

/// Endpoint selection within a cluster.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum LoadBalancer {
    /// Power of two choices over an EWMA of latency (Envoy: LEAST_REQUEST, choice_count 2).
    #[default]
    #[serde(rename = "p2c-ewma")]
    P2cEwma,
    #[serde(rename = "round-robin")]
    RoundRobin,
    #[serde(rename = "random")]
    Random,
}

impl LoadBalancer {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancer::P2cEwma => "p2c-ewma",
            LoadBalancer::RoundRobin => "round-robin",
            LoadBalancer::Random => "random",
        }
    }
}

/// One HTTP route of a TrafficPolicy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Metrics label, `[a-z0-9-]{1,63}`. Always `Some` in a loaded [`PolicySet`]
    /// (`route-<index>` when the document leaves it out).
    #[serde(default)]
    pub name: Option<String>,
    /// What the request must look like; absent matches everything.
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    /// Where matching requests go; weights add up to 100.
    pub split: Vec<SplitEntry>,
    /// Replaces the policy's `faults` for this route (`{}` turns them off here).
    #[serde(default)]
    pub faults: Option<Faults>,
}

impl Route {
    /// The route's name, or the default name for its position.
    pub fn name_or_default(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("route-{index}"))
    }
}

/// `match` of a route. All given conditions must hold.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    /// Path prefix, starting with `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Exact path, starting with `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// Header name → exact value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One entry of a route's `split`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SplitEntry {
    /// Share of requests in percent, 0..=100.
    pub weight: u32,
    /// Endpoint labels that select the subset; empty means every endpoint of the service.
    #[serde(default)]
    pub subset: BTreeMap<String, String>,
}

/// Deserializers with operator-friendly messages.
mod de {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, de::Error as _};

    pub(super) fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        let value = i64::deserialize(d)?;
        match u16::try_from(value) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(D::Error::custom(format!("port must be between 1 and 65535 (got {value})"))),
        }
    }

    pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let message = match text.rsplit_once(':') {
            Some((host, port)) if host.parse::<std::net::IpAddr>().is_err() && !host.is_empty() => {
                let looks_like_name = host.chars().any(|c| c.is_ascii_alphabetic()) && !host.contains(['[', ']']);
                if looks_like_name {
                    format!(
                        "invalid endpoint address \"{text}\": \"{host}\" is a host name, but \
                         endpoints must be IP addresses (e.g. 127.0.0.1:{port}); host names are \
                         not resolved"
                    )
                } else {
                    format!(
                        "invalid endpoint address \"{text}\": use IP:port, e.g. 127.0.0.1:8080 \
                         or [::1]:8080"
                    )
                }
            }
            _ => format!(
                "invalid endpoint address \"{text}\": use IP:port, e.g. 127.0.0.1:8080 or \
                 [::1]:8080"
            ),
        };
        Err(D::Error::custom(message))
    }
}
