//! Envoy v3 resources → [`Snapshot`]. One handler per resource type; each
//! returns what it rejected and why, and accepted resources still apply.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XCluster;
use envoy_types::pb::envoy::config::core::v3::{Metadata, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, header_matcher, route, route_action, route_match};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;
use envoy_types::pb::google::protobuf::{Any, Struct, value};
use http::{HeaderName, HeaderValue};
use outrider_xds::Resources;
use outrider_xds::resources as names;
use parking_lot::Mutex;
use prost::{Message, Name};
use serde_json::json;

use super::*;
use crate::balance::{Balancer, LbPolicy, PeakEwma};
use crate::http::client::EndpointPool;

/// A resource the proxy cannot use, and why (becomes a NACK's `error_detail`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub type_name: &'static str,
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}: {}", self.type_name, self.name, self.reason)
    }
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-endpoint state is keyed by cluster and address.
type EndpointKey = (Arc<str>, SocketAddr);
/// A cluster a route sends to: name, weight, subset labels.
type WantedSplit = (String, u32, Option<BTreeMap<String, String>>);

/// Builds snapshots and keeps the per-endpoint state that outlives them.
#[derive(Debug, Default)]
pub struct Builder {
    carried: Mutex<HashMap<EndpointKey, Arc<EndpointShared>>>,
    clusters: Mutex<HashMap<Arc<str>, Arc<ClusterState>>>,
    /// Snapshots without a built `/config_dump` view ([`Dump::None`]): the xDS source's, which
    /// render it on request ([`Dump::Lazy`]), and a node proxy's workload stores. The view is
    /// the largest part of a snapshot (hundreds of KB for 50 services).
    no_dump: bool,
}

struct Ctx<'a> {
    rejected: &'a mut Vec<Rejection>,
}

impl Ctx<'_> {
    fn reject(&mut self, type_name: &'static str, name: &str, reason: impl Into<String>) {
        self.rejected.push(Rejection { type_name, name: name.to_string(), reason: reason.into() });
    }
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder whose snapshots have no `/config_dump` view (see [`Builder::no_dump`]).
    pub fn without_dump() -> Self {
        Self { no_dump: true, ..Self::default() }
    }

    /// Build a snapshot from a complete set of resources.
    pub fn build(&self, res: &Resources) -> (Snapshot, Vec<Rejection>) {
        let mut rejected = Vec::new();
        let mut ctx = Ctx { rejected: &mut rejected };
        let carried = self.carried.lock();
        let mut next_carried = HashMap::new();
        let carried_clusters = self.clusters.lock();
        let mut next_clusters = HashMap::new();

        let loads: HashMap<&str, &ClusterLoadAssignment> =
            res.endpoints.iter().map(|c| (c.cluster_name.as_str(), c)).collect();
        let mut clusters = BTreeMap::new();
        let mut cluster_endpoints: HashMap<Arc<str>, Vec<Arc<Endpoint>>> = HashMap::new();
        let mut dump_clusters = Vec::new();
        let mut dump_endpoints = Vec::new();
        for xc in &res.clusters {
            if xc.name == names::PASSTHROUGH_CLUSTER {
                continue;
            }
            match cluster_from(xc).and_then(|parts| Ok((parts, super::policy::cluster_policy(xc)?))) {
                Ok(((name, service, protocol, connect_timeout, lb), policy)) => {
                    let name: Arc<str> = Arc::from(name);
                    let mut eps = Vec::new();
                    if let Some(cla) = loads.get(&*name) {
                        match endpoints_from(cla) {
                            Ok(list) => {
                                for EndpointParts { addr, weight, labels, meshed, identity, hbone } in list {
                                    let key = (name.clone(), addr);
                                    let shared = carried.get(&key).cloned().unwrap_or_else(|| {
                                        Arc::new(EndpointShared {
                                            ewma: PeakEwma::default(),
                                            pool: Arc::new(EndpointPool::new(addr)),
                                            health: Default::default(),
                                            load: Default::default(),
                                            breaker: Default::default(),
                                        })
                                    });
                                    next_carried.insert(key, shared.clone());
                                    let workload = identity.as_ref().and_then(crate::tls::Identity::workload_name);
                                    eps.push(Arc::new(Endpoint {
                                        addr,
                                        weight,
                                        labels,
                                        meshed,
                                        identity,
                                        hbone,
                                        workload,
                                        shared,
                                    }));
                                }
                                if !self.no_dump {
                                    dump_endpoints.push(dump_cla(&name, &eps));
                                }
                            }
                            Err(reason) => ctx.reject("ClusterLoadAssignment", &name, reason),
                        }
                    }
                    if !self.no_dump {
                        dump_clusters.push(dump_cluster(&name, &service, protocol, lb, connect_timeout, &policy));
                    }
                    let state = carried_clusters.get(&name).cloned().unwrap_or_default();
                    next_clusters.insert(name.clone(), state.clone());
                    let balancer = Arc::new(Balancer::new(lb, eps.clone()));
                    cluster_endpoints.insert(name.clone(), eps);
                    clusters.insert(
                        name.clone(),
                        Arc::new(Cluster {
                            name,
                            service,
                            protocol,
                            connect_timeout,
                            lb,
                            endpoints: balancer,
                            policy,
                            state,
                        }),
                    );
                }
                Err(reason) => ctx.reject("Cluster", &xc.name, reason),
            }
        }
        drop(carried);
        drop(carried_clusters);
        let fallbacks = resolve_fallbacks(&clusters, &cluster_endpoints, &mut ctx);

        let mut vhosts: HashMap<Box<str>, Arc<VirtualHost>> = HashMap::new();
        let mut vhosts_by_name: HashMap<String, Arc<VirtualHost>> = HashMap::new();
        let mut dump_routes = Vec::new();
        for rc in &res.routes {
            let (hosts, dump) = route_config_from(rc, &clusters, &cluster_endpoints, &fallbacks, &mut ctx);
            if !self.no_dump {
                dump_routes.push(dump);
            }
            for (domains, vh) in hosts {
                vhosts_by_name.insert(format!("{}/{}", rc.name, vh.name), vh.clone());
                for d in domains {
                    vhosts.entry(d.to_ascii_lowercase().into_boxed_str()).or_insert_with(|| vh.clone());
                }
            }
        }

        let mut outbound = OutboundMatch::default();
        let mut inbound = HashMap::new();
        let mut dump_listeners = Vec::new();
        let mut tracing = None;
        for l in &res.listeners {
            if let Some(service) = l.name.strip_prefix(names::INBOUND_LISTENER_PREFIX) {
                match inbound_policy(l) {
                    Ok(policy) => {
                        if !self.no_dump {
                            dump_listeners.push(dump_inbound(&l.name, &policy));
                        }
                        inbound.insert(Arc::<str>::from(service), Arc::new(policy));
                    }
                    Err(reason) => ctx.reject("Listener", &l.name, reason),
                }
                continue;
            }
            if l.name != names::OUTBOUND_LISTENER {
                ctx.reject(
                    "Listener",
                    &l.name,
                    "only the \"outbound\" and \"inbound|SERVICE\" listeners are understood by this proxy",
                );
                continue;
            }
            match super::telemetry::tracing_from(l) {
                Ok(t) => tracing = t,
                Err(reason) => ctx.reject("Listener", &l.name, reason),
            }
            let dump = listener_from(l, &clusters, &vhosts_by_name, &mut outbound, &mut ctx);
            if !self.no_dump {
                dump_listeners.push(dump);
            }
        }

        let versions = Versions {
            listeners: res.version.clone(),
            routes: res.version.clone(),
            clusters: res.version.clone(),
            endpoints: res.version.clone(),
        };
        let dump = if self.no_dump {
            Dump::None
        } else {
            Dump::Built(json!({
            "version": res.version,
            "listeners": {"version": versions.listeners, "resources": dump_listeners},
            "routes": {"version": versions.routes, "resources": dump_routes},
            "clusters": {"version": versions.clusters, "resources": dump_clusters},
            "endpoints": {"version": versions.endpoints, "resources": dump_endpoints},
            "telemetry": super::telemetry::dump(&tracing),
            }))
        };
        // Per-endpoint and per-cluster state follows the new config only when the
        // whole build was accepted: a rejected build may never be applied, and the
        // snapshot still in force keeps needing its endpoints' state carried.
        let mut carried = self.carried.lock();
        let mut carried_clusters = self.clusters.lock();
        if rejected.is_empty() {
            *carried = next_carried;
            *carried_clusters = next_clusters;
        } else {
            carried.extend(next_carried);
            carried_clusters.extend(next_clusters);
        }
        drop(carried);
        drop(carried_clusters);
        let mut snapshot = Snapshot { versions, outbound, vhosts, clusters, inbound, dump, tracing };
        snapshot.stamp_versions(&ResourceVersions::new());
        (snapshot, rejected)
    }
}

pub(super) fn decode_any<M: Message + Name + Default>(any: &Any) -> Result<M, String> {
    if any.type_url != M::type_url() {
        return Err(format!("expected {} but got {}", M::type_url(), any.type_url));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("cannot decode {}: {e}", M::full_name()))
}

/// The longest duration the proxy keeps from xDS. Longer ones — an xDS server may
/// send up to protobuf's 10,000 years — mean "practically never" and are capped to
/// this, so every deadline the data path computes stays far inside the clock's range.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The range of a `google.protobuf.Duration` (Envoy enforces the same).
const PROTOBUF_MAX_SECONDS: i64 = 315_576_000_000;

/// A protobuf duration named `field` (for the NACK message), capped to [`MAX_DURATION`].
pub(super) fn duration_from(field: &str, d: &envoy_types::pb::google::protobuf::Duration) -> Result<Duration, String> {
    let (secs, nanos) = (d.seconds, d.nanos);
    if secs < 0 || nanos < 0 {
        return Err(format!("{field}: negative duration ({secs}s {nanos}ns)"));
    }
    if secs > PROTOBUF_MAX_SECONDS {
        return Err(format!(
            "{field}: {secs}s is out of range (a google.protobuf.Duration is at most {PROTOBUF_MAX_SECONDS}s)"
        ));
    }
    let (Ok(secs), Ok(nanos @ 0..=999_999_999)) = (u64::try_from(secs), u32::try_from(nanos)) else {
        return Err(format!("{field}: nanos {nanos} is out of range (0 to 999999999)"));
    };
    Ok(Duration::new(secs, nanos).min(MAX_DURATION))
}

fn struct_str<'a>(s: &'a Struct, key: &str) -> Option<&'a str> {
    match s.fields.get(key)?.kind.as_ref()? {
        value::Kind::StringValue(v) => Some(v),
        _ => None,
    }
}

fn struct_labels(s: &Struct) -> BTreeMap<String, String> {
    s.fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(value::Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

fn outrider_meta(m: Option<&Metadata>) -> Option<&Struct> {
    m?.filter_metadata.get(names::OUTRIDER_METADATA)
}

type ClusterParts = (String, Arc<str>, ClusterProtocol, Duration, LbPolicy);

fn cluster_from(xc: &XCluster) -> Result<ClusterParts, String> {
    let connect_timeout = match &xc.connect_timeout {
        Some(d) => duration_from("connect_timeout", d)?,
        None => DEFAULT_CONNECT_TIMEOUT,
    };
    if connect_timeout.is_zero() {
        return Err("connect_timeout must be greater than 0".into());
    }
    let lb = super::lb::lb_policy_of(xc)?;
    let meta = outrider_meta(xc.metadata.as_ref());
    let service: Arc<str> = Arc::from(meta.and_then(|m| struct_str(m, "service")).unwrap_or(&xc.name));
    let mut protocol = ClusterProtocol::Tcp;
    if let Some(any) = xc.typed_extension_protocol_options.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    {
        let opts: HttpProtocolOptions = decode_any(any)?;
        use http_protocol_options::UpstreamProtocolOptions as U;
        use http_protocol_options::explicit_http_config::ProtocolConfig as P;
        protocol = match opts.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(c)) => match c.protocol_config {
                Some(P::Http2ProtocolOptions(_)) => ClusterProtocol::Http2,
                Some(P::HttpProtocolOptions(_)) => ClusterProtocol::Http1,
                _ => {
                    return Err("only explicit HTTP/1.1 or HTTP/2 upstream protocols are supported".into());
                }
            },
            _ => {
                return Err("only explicit_http_config upstream protocol options are supported".into());
            }
        };
    } else if let Some(p) = meta.and_then(|m| struct_str(m, "protocol")) {
        protocol = match p {
            "http2" | "grpc" => ClusterProtocol::Http2,
            "http" => ClusterProtocol::Http1,
            _ => ClusterProtocol::Tcp,
        };
    }
    Ok((xc.name.clone(), service, protocol, connect_timeout, lb))
}

fn endpoints_from(cla: &ClusterLoadAssignment) -> Result<Vec<EndpointParts>, String> {
    let mut out = Vec::new();
    for loc in &cla.endpoints {
        for lbe in &loc.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &lbe.host_identifier else {
                return Err("an lb_endpoint has no endpoint address".into());
            };
            let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) else {
                return Err("endpoint address must be a socket address".into());
            };
            let ip: IpAddr =
                sa.address.parse().map_err(|_| format!("endpoint address {:?} is not an IP", sa.address))?;
            let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                return Err(format!("endpoint {} has no port", sa.address));
            };
            let port = u16::try_from(port).map_err(|_| format!("endpoint port {port} is out of range"))?;
            let weight = lbe.load_balancing_weight.as_ref().map(|w| w.value).unwrap_or(1);
            if weight == 0 {
                return Err(format!("endpoint {ip}:{port} has weight 0 (must be at least 1)"));
            }
            let labels = lbe
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(names::LB_METADATA))
                .map(struct_labels)
                .unwrap_or_default();
            let meta = outrider_meta(lbe.metadata.as_ref());
            let meshed = meta
                .and_then(|m| m.fields.get("meshed"))
                .is_some_and(|v| matches!(v.kind, Some(value::Kind::BoolValue(true))));
            let identity = match meta.and_then(|m| m.fields.get(names::IDENTITY_FIELD)).map(|v| &v.kind) {
                Some(Some(value::Kind::StringValue(id))) if meshed => {
                    Some(crate::tls::Identity::parse(id).map_err(|e| format!("endpoint {ip}:{port}: {e}"))?)
                }
                _ => None,
            };
            let hbone = identity.is_some()
                && meta
                    .and_then(|m| m.fields.get(names::HBONE_FIELD))
                    .is_some_and(|v| matches!(v.kind, Some(value::Kind::BoolValue(true))));
            out.push(EndpointParts { addr: SocketAddr::new(ip, port), weight, labels, meshed, identity, hbone });
        }
    }
    Ok(out)
}

/// What `endpoints_from` reads of one endpoint.
struct EndpointParts {
    addr: SocketAddr,
    weight: u32,
    labels: BTreeMap<String, String>,
    meshed: bool,
    identity: Option<crate::tls::Identity>,
    hbone: bool,
}

/// An inbound listener `inbound|SERVICE`: strict when it has no plaintext (`raw_buffer`)
/// chain; the RBAC filters of its mTLS chain, in order (HTTP filters of the connection
/// manager, or network filters before the TCP proxy).
pub fn inbound_policy(l: &Listener) -> Result<crate::authz::InboundPolicy, String> {
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;

    fn transport(fc: &FilterChain) -> Option<&str> {
        fc.filter_chain_match.as_ref().map(|m| m.transport_protocol.as_str())
    }
    let mtls = l
        .filter_chains
        .iter()
        .find(|fc| transport(fc) == Some(names::TRANSPORT_TLS))
        .ok_or("an inbound listener needs a filter chain for transport_protocol \"tls\"")?;
    let plaintext = l.filter_chains.iter().any(|fc| transport(fc) == Some(names::TRANSPORT_RAW));
    let mode = if plaintext { crate::tls::Mode::Permissive } else { crate::tls::Mode::Strict };
    let mut filters = Vec::new();
    for f in &mtls.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { continue };
        if f.name == names::NETWORK_RBAC_FILTER {
            let rbac: NetworkRbac =
                names::decode_any(names::NETWORK_RBAC_TYPE_URL, any).map_err(|e| format!("{}: {e}", f.name))?;
            if let Some(rules) = &rbac.rules {
                filters.push(crate::authz::from_rbac(rules)?);
            }
        } else if f.name == names::HTTP_CONNECTION_MANAGER_FILTER {
            let hcm: HttpConnectionManager = names::decode_any(names::HTTP_CONNECTION_MANAGER_TYPE_URL, any)
                .map_err(|e| format!("{}: {e}", f.name))?;
            for hf in &hcm.http_filters {
                if hf.name != names::HTTP_RBAC_FILTER {
                    continue;
                }
                let Some(http_filter::ConfigType::TypedConfig(any)) = &hf.config_type else { continue };
                let rbac: HttpRbac =
                    names::decode_any(names::HTTP_RBAC_TYPE_URL, any).map_err(|e| format!("{}: {e}", hf.name))?;
                if let Some(rules) = &rbac.rules {
                    filters.push(crate::authz::from_rbac(rules)?);
                }
            }
        }
    }
    Ok(crate::authz::InboundPolicy { mode, filters })
}

/// The `/config_dump` view of a cluster.
fn dump_cluster(
    name: &str,
    service: &str,
    protocol: ClusterProtocol,
    lb: LbPolicy,
    connect_timeout: Duration,
    policy: &ClusterPolicy,
) -> serde_json::Value {
    json!({
        "name": name, "service": service, "protocol": format!("{protocol:?}").to_lowercase(),
        "lb_policy": lb.as_str(), "connect_timeout_ms": connect_timeout.as_millis() as u64,
        "circuit_breakers": {
            "max_connections": policy.thresholds.max_connections,
            "max_pending_requests": policy.thresholds.max_pending_requests,
            "max_requests": policy.thresholds.max_requests,
            "max_retries": policy.thresholds.max_retries,
        },
        "breaker_state_machine": policy.breaker.map(|b| json!({
            "failure_rate_threshold": b.failure_rate_threshold,
            "slow_call_duration_ms": b.slow_call_duration.as_millis() as u64,
            "slow_call_rate_threshold": b.slow_call_rate_threshold,
            "window": b.window, "minimum_calls": b.minimum_calls,
            "open_duration_ms": b.open_duration.as_millis() as u64,
            "half_open_calls": b.half_open_calls,
            "scope": b.scope.as_str(),
        })),
        "fallback": policy.fallback.as_ref().map(|f| json!({
            "cluster": &*f.cluster, "subset": f.subset,
        })),
        "retry_budget": policy.budget.map(|b| json!({
            "ratio": b.ratio, "min_per_second": b.min_per_second, "window_ms": b.window.as_millis() as u64,
        })),
        "outlier_detection": policy.outlier.map(|o| json!({
            "consecutive_5xx": o.consecutive_5xx, "consecutive_gateway_errors": o.consecutive_gateway,
            "failure_percentage": o.failure_percentage, "interval_ms": o.interval.as_millis() as u64,
            "base_ejection_ms": o.base_ejection.as_millis() as u64,
            "max_ejection_ms": o.max_ejection.as_millis() as u64,
            "max_ejection_percent": o.max_ejection_percent,
        })),
    })
}

fn dump_inbound(name: &str, policy: &crate::authz::InboundPolicy) -> serde_json::Value {
    json!({
        "name": name,
        "mtls": match policy.mode { crate::tls::Mode::Strict => "strict", crate::tls::Mode::Permissive => "permissive" },
        "authorization": policy.filters.iter().map(|f| json!({
            "action": if f.deny { "deny" } else { "allow" },
            "policies": f.policies.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn dump_cla(name: &str, eps: &[Arc<Endpoint>]) -> serde_json::Value {
    json!({
        "cluster_name": name,
        "endpoints": eps.iter().map(|e| json!({
            "address": e.addr.to_string(), "weight": e.weight, "labels": e.labels, "meshed": e.meshed,
            "identity": e.identity.as_ref().map(|i| i.as_str()),
            "hbone": e.hbone,
        })).collect::<Vec<_>>(),
    })
}

type Hosts = Vec<(Vec<String>, Arc<VirtualHost>)>;

/// Each cluster's fallback, resolved to a cluster of the snapshot and the endpoints with the
/// fallback's labels. A fallback the proxy cannot use is rejected (the cluster still serves,
/// without it).
fn resolve_fallbacks(
    clusters: &BTreeMap<Arc<str>, Arc<Cluster>>,
    cluster_endpoints: &HashMap<Arc<str>, Vec<Arc<Endpoint>>>,
    ctx: &mut Ctx<'_>,
) -> HashMap<Arc<str>, Arc<Fallback>> {
    let mut out = HashMap::new();
    for (name, c) in clusters {
        let Some(f) = &c.policy.fallback else { continue };
        let Some(target) = clusters.get(&f.cluster) else {
            ctx.reject(
                "Cluster",
                name,
                format!("fallback names cluster {}, which this config does not have", f.cluster),
            );
            continue;
        };
        if (target.protocol == ClusterProtocol::Tcp) != (c.protocol == ClusterProtocol::Tcp) {
            ctx.reject("Cluster", name, format!("fallback cluster {} is not of the same protocol family", f.cluster));
            continue;
        }
        let endpoints = subset_balancer(target, cluster_endpoints, &f.subset);
        out.insert(name.clone(), Arc::new(Fallback { cluster: target.clone(), endpoints }));
    }
    out
}

/// The endpoints of `cluster` carrying every label of `labels` (all of them without labels).
fn subset_balancer(
    cluster: &Cluster,
    cluster_endpoints: &HashMap<Arc<str>, Vec<Arc<Endpoint>>>,
    labels: &BTreeMap<String, String>,
) -> Arc<Balancer<Arc<Endpoint>>> {
    if labels.is_empty() {
        return cluster.endpoints.clone();
    }
    let all = cluster_endpoints.get(&cluster.name).map(Vec::as_slice).unwrap_or(&[]);
    let eps = all.iter().filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))).cloned().collect();
    Arc::new(Balancer::new(cluster.lb, eps))
}

fn route_config_from(
    rc: &RouteConfiguration,
    clusters: &BTreeMap<Arc<str>, Arc<Cluster>>,
    cluster_endpoints: &HashMap<Arc<str>, Vec<Arc<Endpoint>>>,
    fallbacks: &HashMap<Arc<str>, Arc<Fallback>>,
    ctx: &mut Ctx<'_>,
) -> (Hosts, serde_json::Value) {
    let mut hosts = Vec::new();
    let mut dump_vhosts = Vec::new();
    'vhost: for vh in &rc.virtual_hosts {
        let mut routes = Vec::new();
        let mut dump_r = Vec::new();
        for (i, r) in vh.routes.iter().enumerate() {
            let name = if r.name.is_empty() { format!("route-{i}") } else { r.name.clone() };
            match route_from(r, clusters, cluster_endpoints, fallbacks) {
                Ok((route, dump)) => {
                    routes.push(Route { name: Arc::from(name.as_str()), ..route });
                    dump_r.push(json!({"name": name, "match": dump.0, "split": dump.1}));
                }
                Err(reason) => {
                    // One bad route would change which route matches: reject the virtual host.
                    ctx.reject(
                        "RouteConfiguration",
                        &rc.name,
                        format!("virtual host {}: route {name}: {reason}", vh.name),
                    );
                    continue 'vhost;
                }
            }
        }
        dump_vhosts.push(json!({"name": vh.name, "domains": vh.domains, "routes": dump_r}));
        hosts.push((vh.domains.clone(), Arc::new(VirtualHost { name: Arc::from(vh.name.as_str()), routes })));
    }
    (hosts, json!({"name": rc.name, "virtual_hosts": dump_vhosts}))
}

fn route_from(
    r: &envoy_types::pb::envoy::config::route::v3::Route,
    clusters: &BTreeMap<Arc<str>, Arc<Cluster>>,
    cluster_endpoints: &HashMap<Arc<str>, Vec<Arc<Endpoint>>>,
    fallbacks: &HashMap<Arc<str>, Arc<Fallback>>,
) -> Result<(Route, (serde_json::Value, serde_json::Value)), String> {
    let m = r.r#match.as_ref().ok_or("route has no match")?;
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        None => PathMatch::Prefix("/".into()),
        Some(other) => {
            return Err(format!("path match {other:?} is not supported (use prefix or path)"));
        }
    };
    let mut headers = Vec::new();
    for h in &m.headers {
        let value = match &h.header_match_specifier {
            Some(header_matcher::HeaderMatchSpecifier::StringMatch(sm)) => match &sm.match_pattern {
                Some(string_matcher::MatchPattern::Exact(v)) if !sm.ignore_case => v.clone(),
                _ => {
                    return Err(format!("header {}: only exact, case-sensitive matches are supported", h.name));
                }
            },
            #[allow(deprecated)]
            Some(header_matcher::HeaderMatchSpecifier::ExactMatch(v)) => v.clone(),
            _ => {
                return Err(format!("header {}: only exact matches are supported", h.name));
            }
        };
        if h.invert_match {
            return Err(format!("header {}: invert_match is not supported", h.name));
        }
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| format!("invalid header name {:?}", h.name))?;
        let value = HeaderValue::from_str(&value).map_err(|_| format!("invalid header value for {}", h.name))?;
        headers.push((name, value));
    }
    let Some(route::Action::Route(action)) = &r.action else {
        return Err("only route actions are supported (no redirect or direct_response)".into());
    };
    let mut wanted: Vec<WantedSplit> = Vec::new();
    match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => wanted.push((c.clone(), 1, None)),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            for cw in &w.clusters {
                let weight = cw.weight.as_ref().map(|w| w.value).unwrap_or(0);
                let subset = cw
                    .metadata_match
                    .as_ref()
                    .and_then(|m| m.filter_metadata.get(names::LB_METADATA))
                    .map(struct_labels)
                    .filter(|l| !l.is_empty());
                wanted.push((cw.name.clone(), weight, subset));
            }
        }
        _ => return Err("only cluster and weighted_clusters are supported".into()),
    }
    let mut splits = Vec::new();
    for (cname, weight, subset) in wanted {
        let cluster = clusters.get(cname.as_str()).ok_or_else(|| format!("references unknown cluster {cname}"))?;
        let endpoints = match &subset {
            None => cluster.endpoints.clone(),
            Some(labels) => subset_balancer(cluster, cluster_endpoints, labels),
        };
        // A fallback to the very endpoints of the split would change nothing.
        let fallback = fallbacks.get(&cluster.name).filter(|f| {
            let same_cluster = Arc::ptr_eq(&f.cluster, cluster);
            let same_subset = cluster.policy.fallback.as_ref().is_some_and(|c| Some(&c.subset) == subset.as_ref())
                || (subset.is_none() && cluster.policy.fallback.as_ref().is_some_and(|c| c.subset.is_empty()));
            !(same_cluster && same_subset)
        });
        splits.push(Split {
            cluster: cluster.clone(),
            weight,
            subset,
            endpoints,
            fallback: fallback.cloned(),
            series: Default::default(),
        });
    }
    let total: u64 = splits.iter().map(|s| u64::from(s.weight)).sum();
    let Ok(total_weight) = u32::try_from(total) else {
        return Err(format!("the weights of the split add up to {total}, more than {}", u32::MAX));
    };
    if total_weight == 0 {
        return Err("the weights of the split add up to 0".into());
    }
    let dump_match = json!({
        "path": match &path { PathMatch::Prefix(p) => json!({"prefix": p}), PathMatch::Exact(p) => json!({"exact": p}) },
        "headers": headers.iter().map(|(n, v)| json!({"name": n.as_str(), "exact": v.to_str().unwrap_or("")})).collect::<Vec<_>>(),
    });
    let dump_split = splits
        .iter()
        .map(|s| json!({
            "cluster": &*s.cluster.name, "weight": s.weight, "subset": s.subset, "endpoints": s.endpoints.items().len(),
            "fallback": s.fallback.as_ref().map(|f| json!({"cluster": &*f.cluster.name, "endpoints": f.endpoints.items().len()})),
        }))
        .collect::<Vec<_>>();
    let policy = Arc::new(super::policy::route_policy(r, action)?);
    let route = Route { name: Arc::from(""), policy, path, headers, splits, total_weight };
    Ok((route, (dump_match, json!(dump_split))))
}

fn listener_from(
    l: &Listener,
    clusters: &BTreeMap<Arc<str>, Arc<Cluster>>,
    vhosts: &HashMap<String, Arc<VirtualHost>>,
    out: &mut OutboundMatch,
    ctx: &mut Ctx<'_>,
) -> serde_json::Value {
    let mut chains = Vec::new();
    for fc in &l.filter_chains {
        match chain_target(fc, clusters, vhosts) {
            Ok((target, describe)) => {
                let m = fc.filter_chain_match.as_ref();
                let port = m.and_then(|m| m.destination_port.as_ref()).map(|p| p.value);
                let port = match port.map(u16::try_from) {
                    Some(Ok(p)) => Some(p),
                    Some(Err(_)) => {
                        ctx.reject(
                            "Listener",
                            &l.name,
                            format!("filter chain {}: destination_port out of range", fc.name),
                        );
                        continue;
                    }
                    None => None,
                };
                let mut ranges = Vec::new();
                for r in m.map(|m| m.prefix_ranges.as_slice()).unwrap_or(&[]) {
                    let Ok(ip) = r.address_prefix.parse::<IpAddr>() else {
                        ctx.reject(
                            "Listener",
                            &l.name,
                            format!("filter chain {}: bad prefix {:?}", fc.name, r.address_prefix),
                        );
                        continue;
                    };
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let len = r.prefix_len.as_ref().map(|p| p.value).unwrap_or(max).min(max) as u8;
                    ranges.push(IpRange { addr: ip, prefix_len: len });
                }
                for range in &ranges {
                    let full = u32::from(range.prefix_len) == if range.addr.is_ipv4() { 32 } else { 128 };
                    match port {
                        Some(p) if full => {
                            out.exact.entry(SocketAddr::new(range.addr, p)).or_insert_with(|| target.clone());
                        }
                        _ => out.ranges.push((*range, port, target.clone())),
                    }
                }
                chains.push(json!({
                    "name": fc.name, "destination_port": port,
                    "prefix_ranges": ranges.iter().map(|r| format!("{}/{}", r.addr, r.prefix_len)).collect::<Vec<_>>(),
                    "target": describe,
                }));
            }
            Err(ChainError::Invalid(reason)) => {
                ctx.reject("Listener", &l.name, format!("filter chain {}: {reason}", fc.name))
            }
            // The route config's half is missing: blamed on the route config, so a listener that
            // arrives before its routes (LDS before RDS, as Envoy's servers send them) is
            // accepted, its chain left out until the route configuration names the virtual host.
            Err(ChainError::NoVirtualHost { route_config }) => ctx.reject(
                "RouteConfiguration",
                &route_config,
                format!("no virtual host {} (listener {}, filter chain {})", fc.name, l.name, fc.name),
            ),
        }
    }
    json!({"name": l.name, "filter_chains": chains, "default": "passthrough"})
}

/// Why a filter chain has no target.
enum ChainError {
    /// The chain itself is wrong.
    Invalid(String),
    /// Its route configuration does not (yet) have the chain's virtual host.
    NoVirtualHost { route_config: String },
}

impl From<String> for ChainError {
    fn from(s: String) -> Self {
        Self::Invalid(s)
    }
}

impl From<&str> for ChainError {
    fn from(s: &str) -> Self {
        Self::Invalid(s.to_owned())
    }
}

fn chain_target(
    fc: &FilterChain,
    clusters: &BTreeMap<Arc<str>, Arc<Cluster>>,
    vhosts: &HashMap<String, Arc<VirtualHost>>,
) -> Result<(Target, serde_json::Value), ChainError> {
    let f = fc.filters.last().ok_or("filter chain has no filters")?;
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(format!("filter {} has no typed_config", f.name).into());
    };
    if any.type_url == TcpProxy::type_url() {
        let tp: TcpProxy = decode_any(any)?;
        let Some(tcp_proxy::ClusterSpecifier::Cluster(c)) = tp.cluster_specifier else {
            return Err("tcp_proxy must name one cluster".into());
        };
        let cluster = clusters.get(c.as_str()).ok_or_else(|| format!("tcp_proxy references unknown cluster {c}"))?;
        return Ok((Target::Tcp(cluster.clone()), json!({"tcp_proxy": c})));
    }
    if any.type_url == HttpConnectionManager::type_url() {
        let hcm: HttpConnectionManager = decode_any(any)?;
        let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
            return Err("http_connection_manager must use rds".into());
        };
        // The chain is for one service: its virtual host in that route config is the default.
        let key = format!("{}/{}", rds.route_config_name, fc.name);
        let vh = vhosts
            .get(&key)
            .ok_or_else(|| ChainError::NoVirtualHost { route_config: rds.route_config_name.clone() })?;
        return Ok((
            Target::Http(vh.clone()),
            json!({"http": {"rds": rds.route_config_name, "virtual_host": fc.name}}),
        ));
    }
    Err(format!("filter type {} is not supported", any.type_url).into())
}

#[cfg(test)]
mod tests;
