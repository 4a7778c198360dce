//! Kubernetes Services, EndpointSlices and Pods → Outrider Services with their endpoints.
//!
//! - Each TCP port of a Service with a cluster IP becomes an Outrider Service: named
//!   `NAME.NAMESPACE` when the Service has one such port, `NAME.NAMESPACE:PORT` for each when it
//!   has several. Its virtual addresses are the cluster IPs (matched by original destination),
//!   its hosts `NAME.NAMESPACE`, `NAME.NAMESPACE.svc`, `NAME.NAMESPACE.svc.DOMAIN` and, when no
//!   other namespace has a Service of that name, `NAME` — each also with `:PORT`. Of a
//!   multi-port Service only port 80 (else the first port) gets the hosts without a port.
//!   Headless Services (`clusterIP: None`) and ExternalName Services are left to passthrough.
//! - Protocol: [`super::protocol`] (`appProtocol`, else the port name).
//! - Endpoints: the addresses of the Service's EndpointSlices on the slice port of the same
//!   name. Ready endpoints are used; when a port has none, its serving-but-terminating ones
//!   are (kube-proxy's rule, and what Envoy's panic threshold amounts to for Istio's draining
//!   endpoints), so that a rollout's last old pods keep serving until new ones are ready.
//!   Endpoints neither ready nor serving are left out.
//! - Endpoint labels are the labels of the Pod named by the endpoint's `targetRef`, so subsets
//!   and canary splits select on pod labels (`version: v2`). A Pod with the injected sidecar
//!   is meshed: callers use mutual TLS and expect `spiffe://TD/ns/NS/sa/SERVICE_ACCOUNT`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use outrider_xds::policy::{Metadata, MtlsMode};
use outrider_xds::{Endpoint, Protocol, Service, ServiceSpec};

use super::protocol;
use super::store::{Compact, ObjectKey};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The name of the injected sidecar container (a native sidecar: an init container with
/// `restartPolicy: Always`); a Pod that has it is meshed.
pub const SIDECAR_CONTAINER: &str = "outrider-proxy";
/// Service annotation: the inbound mTLS mode of its sidecars (`strict` or `permissive`).
pub const MTLS_ANNOTATION: &str = "outrider.io/mtls";

/// What is kept of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortInfo>,
    pub mtls: Option<MtlsMode>,
}

/// A TCP port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl Compact for ServiceInfo {
    fn same_config(&self, other: &Self) -> bool {
        self == other
    }
}

/// The Service as kept, or `None` when the mesh does not route it (headless, ExternalName, no
/// TCP port).
pub fn compact_service(service: &KubeService) -> Option<ServiceInfo> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ips: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    let cluster_ips: Vec<IpAddr> = ips.into_iter().filter_map(|ip| ip.parse().ok()).collect();
    if cluster_ips.is_empty() {
        return None;
    }
    let ports: Vec<PortInfo> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            Some(PortInfo {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                protocol: protocol::of_port(p.app_protocol.as_deref(), p.name.as_deref()),
            })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let mtls =
        service.metadata.annotations.as_ref().and_then(|a| a.get(MTLS_ANNOTATION)).and_then(|v| match v.as_str() {
            "strict" => Some(MtlsMode::Strict),
            "permissive" => Some(MtlsMode::Permissive),
            other => {
                tracing::warn!(
                    service = %service.metadata.name.as_deref().unwrap_or_default(),
                    value = other,
                    "ignoring {MTLS_ANNOTATION}: expected strict or permissive"
                );
                None
            }
        });
    Some(ServiceInfo { cluster_ips, ports, mtls })
}

/// What is kept of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    /// The Service it belongs to (same namespace).
    pub service: String,
    /// Port name (`None` for an unnamed port) → port number.
    pub ports: Vec<(Option<String>, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The Pod behind it (`targetRef` of kind Pod), same namespace.
    pub pod: Option<String>,
}

impl Compact for SliceInfo {
    fn same_config(&self, other: &Self) -> bool {
        self == other
    }
}

/// The slice as kept, or `None` when it belongs to no Service or holds FQDN addresses.
pub fn compact_slice(slice: &EndpointSlice) -> Option<SliceInfo> {
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        return None;
    }
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok().filter(|p| *p != 0)?;
            Some((p.name.clone().filter(|n| !n.is_empty()), port))
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .map(|e| {
            let conditions = e.conditions.clone().unwrap_or_default();
            // The API: a nil `ready` or `serving` is an unknown state, to be taken as true.
            let ready = conditions.ready.unwrap_or(true);
            SliceEndpoint {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
                pod: e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| r.name.clone()),
            }
        })
        .collect();
    Some(SliceInfo { service, ports, endpoints })
}

/// What is kept of a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Whether the injected sidecar runs beside the app.
    pub meshed: bool,
}

impl Compact for PodInfo {
    fn same_config(&self, other: &Self) -> bool {
        self == other
    }
}

pub fn compact_pod(pod: &Pod) -> Option<PodInfo> {
    let spec = pod.spec.as_ref()?;
    let meshed = spec.init_containers.iter().flatten().chain(&spec.containers).any(|c| c.name == SIDECAR_CONTAINER);
    Some(PodInfo {
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        service_account: spec.service_account_name.clone().unwrap_or_else(|| "default".to_owned()),
        meshed,
    })
}

/// Outrider Services from the cluster, plus the index policies resolve their `spec.service`
/// with.
#[derive(Debug, Default)]
pub struct Discovered {
    /// By Outrider name (`NAME.NAMESPACE` or `NAME.NAMESPACE:PORT`).
    pub services: BTreeMap<String, Service>,
    /// `(namespace, Kubernetes Service name)` → its Outrider names, in port order.
    pub by_kube_name: HashMap<ObjectKey, Vec<String>>,
}

/// What discovery reads besides the objects.
#[derive(Clone, Debug)]
pub struct Naming {
    pub cluster_domain: String,
    pub trust_domain: String,
}

/// Build the Outrider Services of the cluster.
pub fn discover(
    naming: &Naming,
    services: &HashMap<ObjectKey, ServiceInfo>,
    slices: &HashMap<ObjectKey, SliceInfo>,
    pods: &HashMap<ObjectKey, PodInfo>,
) -> Discovered {
    // The slices of each Service.
    let mut slices_of: HashMap<(&str, &str), Vec<&SliceInfo>> = HashMap::new();
    for ((namespace, _), slice) in slices {
        slices_of.entry((namespace.as_str(), slice.service.as_str())).or_default().push(slice);
    }
    // Short names (`NAME` alone) only where one namespace has the name.
    let mut namespaces_of_name: HashMap<&str, usize> = HashMap::new();
    for (_, name) in services.keys() {
        *namespaces_of_name.entry(name.as_str()).or_default() += 1;
    }
    let mut out = Discovered::default();
    for ((namespace, name), info) in services {
        let short = namespaces_of_name.get(name.as_str()) == Some(&1);
        let service_slices = slices_of.get(&(namespace.as_str(), name.as_str())).map(Vec::as_slice).unwrap_or(&[]);
        let multi = info.ports.len() > 1;
        let bare_port = info.ports.iter().find(|p| p.port == 80).unwrap_or(&info.ports[0]).port;
        let mut names = Vec::new();
        for port in &info.ports {
            let key = if multi { format!("{name}.{namespace}:{}", port.port) } else { format!("{name}.{namespace}") };
            let hosts = hosts(name, namespace, &naming.cluster_domain, port.port, short, port.port == bare_port);
            let endpoints = endpoints(naming, namespace, port, service_slices, pods);
            let service = Service {
                metadata: Metadata { name: key.clone(), namespace: namespace.clone(), labels: BTreeMap::new() },
                spec: ServiceSpec {
                    protocol: port.protocol,
                    port: port.port,
                    addresses: info.cluster_ips.clone(),
                    mtls: info.mtls,
                    endpoints,
                    hosts,
                },
            };
            out.services.insert(key.clone(), service);
            names.push(key);
        }
        out.by_kube_name.insert((namespace.clone(), name.clone()), names);
    }
    out
}

/// The host names of one port's Outrider Service.
fn hosts(name: &str, namespace: &str, domain: &str, port: u16, short: bool, bare: bool) -> Vec<String> {
    let mut names = vec![format!("{name}.{namespace}"), format!("{name}.{namespace}.svc")];
    if !domain.is_empty() {
        names.push(format!("{name}.{namespace}.svc.{domain}"));
    }
    if short {
        names.insert(0, name.to_owned());
    }
    let mut hosts = Vec::with_capacity(names.len() * 2);
    for n in names {
        hosts.push(format!("{n}:{port}"));
        if bare {
            hosts.push(n);
        }
    }
    hosts
}

/// The endpoints of one Service port from its slices: ready ones, else serving-but-terminating
/// ones; each address once.
fn endpoints(
    naming: &Naming,
    namespace: &str,
    port: &PortInfo,
    slices: &[&SliceInfo],
    pods: &HashMap<ObjectKey, PodInfo>,
) -> Vec<Endpoint> {
    let mut ready: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    let mut terminating: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    for slice in slices {
        let Some((_, target)) = slice.ports.iter().find(|(n, _)| *n == port.name) else {
            continue;
        };
        for e in &slice.endpoints {
            let set = if e.ready && !e.terminating {
                &mut ready
            } else if e.serving && e.terminating {
                &mut terminating
            } else {
                continue;
            };
            let pod = e.pod.as_ref().and_then(|p| pods.get(&(namespace.to_owned(), p.clone())));
            for ip in &e.addresses {
                let address = SocketAddr::new(*ip, *target);
                set.entry(address).or_insert_with(|| Endpoint {
                    address,
                    labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
                    weight: 1,
                    meshed: pod.is_some_and(|p| p.meshed),
                    // Pods of the cluster have sidecars; ambient (node mode) pods are not
                    // discovered from the cluster yet.
                    hbone: false,
                    identity: pod
                        .filter(|p| p.meshed)
                        .map(|p| format!("spiffe://{}/ns/{namespace}/sa/{}", naming.trust_domain, p.service_account)),
                });
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_values().collect()
}

#[cfg(test)]
mod tests;
