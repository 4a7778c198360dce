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

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, config_source::ConfigSourceSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::google::protobuf::{self as pb, Struct};

use crate::policy::{AuthorizationPolicy, PolicySet, Service, Telemetry, TrafficPolicy};

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
    let mesh = Mesh::of(set);
    let authorization = authorization_by_service(set);
    let mut clusters = vec![passthrough_cluster()];
    let mut endpoints = Vec::new();
    let mut inbound = Vec::new();
    let (mut chains, mut virtual_hosts) = (Vec::new(), Vec::new());
    for service in set.services.values() {
        let translated = self::service(&ServiceInputs::of(set, service, &mesh, &authorization));
        clusters.push(translated.cluster);
        endpoints.push(translated.load_assignment);
        inbound.push(translated.inbound);
        chains.extend(translated.filter_chain);
        virtual_hosts.extend(translated.virtual_host);
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    // The outbound listener first, then the inbound ones in service-name order.
    let mut listeners = vec![outbound_listener(chains, mesh.telemetry)];
    listeners.extend(inbound);
    Resources { listeners, routes: vec![outbound_routes(virtual_hosts)], clusters, endpoints, version: version(set) }
}

/// What the whole mesh contributes to each service's resources.
#[derive(Clone, Copy, Debug)]
pub struct Mesh<'a> {
    /// Whether any HTTP route of the mesh injects faults (then every HTTP connection manager
    /// gets the fault filter).
    pub faults: bool,
    pub telemetry: Option<&'a Telemetry>,
}

impl<'a> Mesh<'a> {
    pub fn of(set: &'a PolicySet) -> Self {
        Self { faults: resilience::any_faults(set), telemetry: set.telemetry.as_ref() }
    }
}

/// The authorization policies of each service, in the set's (name) order.
pub fn authorization_by_service(set: &PolicySet) -> HashMap<&str, Vec<&AuthorizationPolicy>> {
    let mut out: HashMap<&str, Vec<&AuthorizationPolicy>> = HashMap::new();
    for policy in set.authorization_policies.values() {
        out.entry(policy.spec.service.as_str()).or_default().push(policy);
    }
    out
}

/// Everything the resources of one service ([`service`]) are translated from, and nothing
/// else: [`service`] reads only these, so equal inputs give equal resources. The control plane
/// keeps each service's encoded resources beside its inputs and translates a service again only
/// when they differ.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInputs<'a> {
    pub service: Cow<'a, Service>,
    /// Its TrafficPolicy.
    pub policy: Option<Cow<'a, TrafficPolicy>>,
    /// The name and port of the service its circuit breaker falls back to, when the fallback
    /// names one (and the set has it).
    pub fallback: Option<(Cow<'a, str>, u16)>,
    /// Its AuthorizationPolicies, in name order.
    pub authorization: Vec<Cow<'a, AuthorizationPolicy>>,
    /// [`Mesh::faults`].
    pub faults: bool,
    /// The mesh's Telemetry (its HTTP connection managers trace as it says).
    pub telemetry: Option<Cow<'a, Telemetry>>,
}

impl<'a> ServiceInputs<'a> {
    /// The inputs of `service` of `set`; `authorization` from [`authorization_by_service`].
    pub fn of(
        set: &'a PolicySet,
        service: &'a Service,
        mesh: &Mesh<'a>,
        authorization: &HashMap<&str, Vec<&'a AuthorizationPolicy>>,
    ) -> Self {
        let policy = set.traffic_policy(service.name());
        let fallback = policy
            .and_then(|p| p.spec.circuit_breaker.as_ref()?.fallback.as_ref()?.service.as_deref())
            .and_then(|name| set.services.get(name))
            .map(|target| (Cow::Borrowed(target.name()), target.spec.port));
        Self {
            service: Cow::Borrowed(service),
            policy: policy.map(Cow::Borrowed),
            fallback,
            authorization: authorization.get(service.name()).into_iter().flatten().map(|p| Cow::Borrowed(*p)).collect(),
            faults: mesh.faults,
            telemetry: mesh.telemetry.map(Cow::Borrowed),
        }
    }

    /// The same inputs, owned (to be kept and compared with the next set's).
    pub fn into_owned(self) -> ServiceInputs<'static> {
        // Destructured so that a new input cannot be forgotten here.
        let ServiceInputs { service, policy, fallback, authorization, faults, telemetry } = self;
        ServiceInputs {
            service: Cow::Owned(service.into_owned()),
            policy: policy.map(|p| Cow::Owned(p.into_owned())),
            fallback: fallback.map(|(name, port)| (Cow::Owned(name.into_owned()), port)),
            authorization: authorization.into_iter().map(|p| Cow::Owned(p.into_owned())).collect(),
            faults,
            telemetry: telemetry.map(|t| Cow::Owned(t.into_owned())),
        }
    }
}

/// The resources of one service.
#[derive(Clone, Debug, Default)]
pub struct ServiceResources {
    /// `outbound|PORT||NAME`.
    pub cluster: Cluster,
    pub load_assignment: ClusterLoadAssignment,
    /// `inbound|NAME`.
    pub inbound: Listener,
    /// Its filter chain in the outbound listener ([`outbound_listener`]), when it has virtual
    /// addresses.
    pub filter_chain: Option<FilterChain>,
    /// Its virtual host in the outbound route configuration ([`outbound_routes`]), when it
    /// speaks HTTP.
    pub virtual_host: Option<VirtualHost>,
}

/// Translates one service from its inputs.
pub fn service(inputs: &ServiceInputs<'_>) -> ServiceResources {
    let service = &*inputs.service;
    let policy = inputs.policy.as_deref();
    let telemetry = inputs.telemetry.as_deref();
    let authorization: Vec<&AuthorizationPolicy> = inputs.authorization.iter().map(|p| &**p).collect();
    ServiceResources {
        cluster: cluster::service_cluster(service, policy, inputs.fallback.as_ref().map(|(n, p)| (&**n, *p))),
        load_assignment: cluster::load_assignment(service),
        inbound: inbound::inbound(service, &authorization),
        filter_chain: (!service.spec.addresses.is_empty())
            .then(|| listener::filter_chain(service, policy, inputs.faults, telemetry)),
        virtual_host: service.spec.protocol.is_http().then(|| route::virtual_host(service, policy)),
    }
}

/// The outbound listener (`outbound`) around the services' filter chains, in service-name order.
pub fn outbound_listener(filter_chains: Vec<FilterChain>, telemetry: Option<&Telemetry>) -> Listener {
    listener::outbound(filter_chains, telemetry)
}

/// The outbound route configuration (`outbound_http`) around the services' virtual hosts, in
/// service-name order.
pub fn outbound_routes(virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    route::outbound_http(virtual_hosts)
}

/// `PassthroughCluster`, the outbound listener's default.
pub fn passthrough_cluster() -> Cluster {
    cluster::passthrough()
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
pub fn version(set: &PolicySet) -> String {
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
