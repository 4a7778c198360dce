//! Outrider's own typed extension, `outrider.v1.Resilience`: the parts of a TrafficPolicy with
//! no Envoy equivalent (the breaker state machine and its scope, the fallback used when a
//! split's breakers are open, the Linkerd-style retry budget) plus the upstream idle timeout for
//! every protocol. Travels in
//! `Cluster.typed_extension_protocol_options["outrider.resilience"]`; the schema is checked in
//! as `xds/proto/outrider/v1/resilience.proto`. Hand-written prost messages: keep the tags in
//! step with the .proto file.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::Duration;

/// `outrider.v1.Telemetry`, in the outbound listener's typed metadata.
mod telemetry;
pub use telemetry::Telemetry;

/// Per-cluster resilience settings; a field is absent when the policy does not ask for it.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Resilience {
    /// The Resilience4j-style state machine; absent = thresholds only.
    #[prost(message, optional, tag = "1")]
    pub breaker: Option<BreakerStateMachine>,
    /// Present whenever the policy configures retries (with the defaults if it sets none).
    #[prost(message, optional, tag = "2")]
    pub retry_budget: Option<RetryBudget>,
    /// `idleTimeout`; absent = 1h.
    #[prost(message, optional, tag = "3")]
    pub upstream_idle_timeout: Option<Duration>,
    /// `circuitBreaker.fallback`; absent = the local 503 when a split's breakers are open.
    #[prost(message, optional, tag = "4")]
    pub fallback: Option<Fallback>,
}

/// Where a request goes when every endpoint of its split is open (or the split has none): the
/// endpoints of `cluster` that carry every label of `subset` (all of them when it is empty).
/// Envoy has no breaker-triggered failover; its nearest relatives are the aggregate cluster and
/// `lb_subset_config.fallback_policy`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Fallback {
    /// `outbound|PORT||SERVICE`: the same cluster for a subset fallback, another for a service.
    #[prost(string, tag = "1")]
    pub cluster: String,
    /// Endpoint labels (`envoy.lb` metadata) the fallback endpoints carry.
    #[prost(btree_map = "string, string", tag = "2")]
    pub subset: BTreeMap<String, String>,
}

/// What one breaker state machine guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum BreakerScope {
    /// One state machine per endpoint (the default, and what an absent field means).
    Endpoint = 0,
    /// One state machine for the whole cluster.
    Service = 1,
}

/// closed → open when the failure or slow-call rate over `window` calls reaches its threshold
/// (after `minimum_calls`); open rejects for `open_duration`; half-open lets
/// `half_open_calls` through, then closes on success or reopens on failure.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BreakerStateMachine {
    /// Percent, 1..=100.
    #[prost(uint32, tag = "1")]
    pub failure_rate_threshold: u32,
    /// A call slower than this counts as slow.
    #[prost(message, optional, tag = "2")]
    pub slow_call_duration: Option<Duration>,
    /// Percent, 1..=100.
    #[prost(uint32, tag = "3")]
    pub slow_call_rate_threshold: u32,
    /// Last N calls.
    #[prost(uint32, tag = "4")]
    pub window: u32,
    /// Calls needed in the window before the rates are evaluated.
    #[prost(uint32, tag = "5")]
    pub minimum_calls: u32,
    #[prost(message, optional, tag = "6")]
    pub open_duration: Option<Duration>,
    #[prost(uint32, tag = "7")]
    pub half_open_calls: u32,
    /// [`BreakerScope`]; 0 (absent) = per endpoint.
    #[prost(enumeration = "BreakerScope", tag = "8")]
    pub scope: i32,
}

/// At most `ratio` retries per original request over `window`, plus `min_per_second`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RetryBudget {
    #[prost(double, tag = "1")]
    pub ratio: f64,
    #[prost(uint32, tag = "2")]
    pub min_per_second: u32,
    #[prost(message, optional, tag = "3")]
    pub window: Option<Duration>,
}

impl prost::Name for Resilience {
    const NAME: &'static str = "Resilience";
    const PACKAGE: &'static str = "outrider.v1";
    fn full_name() -> String {
        "outrider.v1.Resilience".into()
    }
    fn type_url() -> String {
        "type.googleapis.com/outrider.v1.Resilience".into()
    }
}

impl prost::Name for BreakerStateMachine {
    const NAME: &'static str = "BreakerStateMachine";
    const PACKAGE: &'static str = "outrider.v1";
    fn full_name() -> String {
        "outrider.v1.BreakerStateMachine".into()
    }
    fn type_url() -> String {
        "type.googleapis.com/outrider.v1.BreakerStateMachine".into()
    }
}

impl prost::Name for Fallback {
    const NAME: &'static str = "Fallback";
    const PACKAGE: &'static str = "outrider.v1";
    fn full_name() -> String {
        "outrider.v1.Fallback".into()
    }
    fn type_url() -> String {
        "type.googleapis.com/outrider.v1.Fallback".into()
    }
}

impl prost::Name for RetryBudget {
    const NAME: &'static str = "RetryBudget";
    const PACKAGE: &'static str = "outrider.v1";
    fn full_name() -> String {
        "outrider.v1.RetryBudget".into()
    }
    fn type_url() -> String {
        "type.googleapis.com/outrider.v1.RetryBudget".into()
    }
}
