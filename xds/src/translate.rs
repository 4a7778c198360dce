//! Translation of a validated [`PolicySet`] into Envoy v3 resources (the contract the proxy
//! and any Envoy read): one outbound listener, an inbound listener per service (its mTLS mode and
//! authorization), one route configuration, and a cluster plus a load assignment per service.

mod cluster;
mod inbound;
mod listener;
mod resilience;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod resilience_tests;
/// Rollout → the TrafficPolicy document that puts its split in place.
pub mod rollout;
mod route;
mod telemetry;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, config_source::ConfigSourceSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{self as pb, Struct};

use crate::policy::PolicySet;

/// Bump when the translation changes its output for the same input, so versions change too.
const TRANSLATION_REVISION: &str = "outrider-xds translate r4";

/// Everything a policy set translates to, sorted deterministically.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// Content hash (16 hex digits), equal for equal input and different when it changes.
    pub version: String,
}

/// Translates a validated policy set.
pub fn translate(set: &PolicySet) -> Resources {
    let mut clusters = vec![cluster::passthrough()];
    let mut endpoints = Vec::new();
    for service in set.services.values() {
        let policy = set.traffic_policy(service.name());
        clusters.push(cluster::service_cluster(service, policy, set));
        endpoints.push(cluster::load_assignment(service));
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    let mut listeners = vec![listener::outbound(set)];
    // The outbound listener first, then the inbound ones in service-name order.
    listeners.extend(set.services.values().map(|service| inbound::inbound(set, service)));
    Resources { listeners, routes: vec![route::outbound_http(set)], clusters, endpoints, version: version(set) }
}

/// FNV-1a (64-bit) over the translation revision and the canonical (`Debug`, all maps
/// ordered) rendering of the validated set.
///
/// The set is hashed rather than the encoded resources because the generated Envoy types
/// keep `Struct` and metadata maps in `HashMap`s, whose protobuf encoding order differs
/// between runs; the translation is a pure function of the set, so equal sets give equal
/// resources and equal versions.
///
/// Rollouts are left out: they change no resource (the control plane runs them by writing
/// TrafficPolicies).
///
/// The rendering is hashed as it is written, never held: with thousands of services it is
/// megabytes, and building it was much of the CPU of a snapshot.
fn version(set: &PolicySet) -> String {
    use std::fmt::Write as _;
    let PolicySet { services, traffic_policies, authorization_policies, telemetry, rollouts: _ } = set;
    let mut hash = Fnv1a64::default();
    // Writing into the hasher cannot fail.
    let _ =
        write!(hash, "{TRANSLATION_REVISION}\n{:?}", (services, traffic_policies, authorization_policies, telemetry));
    format!("{:016x}", hash.0)
}

/// FNV-1a (64-bit) of what is written into it.
struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::fmt::Write for Fnv1a64 {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        self.0 = s.bytes().fold(self.0, |hash, b| (hash ^ u64::from(b)).wrapping_mul(PRIME));
        Ok(())
    }
}

/// "Fetch it over the same ADS stream", xDS v3.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn proto_duration(duration: Duration) -> pb::Duration {
    pb::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        // subsec_nanos() < 1e9, so this always fits.
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// `Metadata` with the given filter-metadata namespaces.
fn metadata<'a>(namespaces: impl IntoIterator<Item = (&'a str, Struct)>) -> Metadata {
    Metadata {
        filter_metadata: namespaces.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}
