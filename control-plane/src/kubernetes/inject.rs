//! Sidecar injection: what the mutating admission webhook (`/inject`) and `outrider inject -f`
//! add to a pod, written once, on the pod's JSON as the API server sends it.
//!
//! Working on the JSON rather than on typed structs keeps every field of the pod, including
//! fields newer than the API types this binary was built with: the webhook answers with the
//! JSON Patch between the pod it received and the pod this module returns, so nothing it does
//! not mean to change can change.
//!
//! What is added (see `docs/kubernetes.md`): an init container that installs the traffic
//! redirection (`outrider-proxy iptables --apply`, root with `NET_ADMIN` only), then the proxy as
//! a native sidecar (an init container with `restartPolicy: Always` and a startup probe on its
//! readiness, so the app's containers start after the proxy is ready and it stops after them),
//! both ahead of the pod's own init containers; a projected service-account token of the mesh's
//! audience for the proxy's identity; and an annotation saying the pod was injected. The pod's
//! IP, name, namespace, service account and labels reach the proxy through the downward API.

/// The injection settings as flags, shared by `outrider control-plane` and `outrider inject`.
pub mod args;
/// `outrider inject -f`: the pod templates of a YAML stream.
pub mod manifest;
mod template;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde_json::{Map, Value};

pub use args::InjectArgs;
pub use template::{PullPolicy, Resources};

/// The name of the injected proxy container (a native sidecar: an init container).
pub const PROXY_CONTAINER: &str = "outrider-proxy";
/// The name of the injected init container that installs the iptables redirection.
pub const INIT_CONTAINER: &str = "outrider-init";
/// The projected service-account token volume of the proxy.
pub const TOKEN_VOLUME: &str = "outrider-token";
/// Where the proxy's token is mounted; the token itself is `token` inside.
pub const TOKEN_DIR: &str = "/var/run/secrets/outrider.io/serviceaccount";
/// The annotation (and namespace label) key of injection: pods opt out with `"false"`.
pub const INJECT_KEY: &str = super::INJECT_POD_ANNOTATION;
/// Set on every injected pod, to the proxy image.
pub const INJECTED_ANNOTATION: &str = "outrider.io/injected";
/// Names the Outrider service this pod's proxy serves (default: the `app.kubernetes.io/name`,
/// else the `app` label).
pub const SERVICE_ANNOTATION: &str = "outrider.io/service";
/// More inbound ports that are not redirected to the proxy (comma-separated).
pub const EXCLUDE_INBOUND_PORTS_ANNOTATION: &str = "outrider.io/exclude-inbound-ports";
/// Outbound destinations (comma-separated CIDRs) that are not redirected to the proxy.
pub const EXCLUDE_OUTBOUND_CIDRS_ANNOTATION: &str = "outrider.io/exclude-outbound-cidrs";

/// Defaults of injection, in one place.
pub mod defaults {
    use std::time::Duration;

    /// Registry and tag of the images `docker/build.sh` builds, tagged with this version.
    pub const PROXY_IMAGE: &str = concat!("localhost/outrider-proxy:", env!("CARGO_PKG_VERSION"));
    pub const INIT_IMAGE: &str = concat!("localhost/outrider-proxy-init:", env!("CARGO_PKG_VERSION"));
    /// The control plane's xDS address as the manifests install it (Service `outrider` in
    /// `outrider-system`, served over TLS).
    pub const XDS_ADDRESS: &str = "https://outrider.outrider-system.svc:15010";
    /// The audience of the proxies' service-account tokens (the control plane reviews them for
    /// this audience only, so a token for another system is refused).
    pub const TOKEN_AUDIENCE: &str = "outrider";
    /// Lifetime of the projected token; the kubelet renews it at 80 %.
    pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
    /// How long the proxy finishes in-flight requests after SIGTERM.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
    /// The proxy's data-plane worker threads.
    pub const WORKERS: u16 = 2;
    /// The uid the proxy runs as; its own traffic is not redirected.
    pub const PROXY_UID: u32 = 1337;
    /// The proxy's ports that are never redirected inbound (admin, tunnel, health, metrics).
    pub const PROXY_PORTS: [u16; 5] = [15000, 15008, 15020, 15021, 15090];
}

/// How pods are injected: the same values for the webhook and `outrider inject`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    pub proxy_image: String,
    pub init_image: String,
    pub pull_policy: PullPolicy,
    /// Where the proxy reaches the control plane's xDS (its CA is the same host, port 15014).
    pub xds_address: String,
    /// The PEM roots the proxy trusts for the control plane's TLS (its CA root).
    pub ca_roots_pem: String,
    pub token_audience: String,
    pub token_ttl: Duration,
    pub drain_timeout: Duration,
    pub workers: u16,
    pub resources: Resources,
}

impl InjectConfig {
    /// Every setting at its default, trusting `ca_roots_pem`.
    pub fn new(ca_roots_pem: impl Into<String>) -> Self {
        Self {
            proxy_image: defaults::PROXY_IMAGE.to_owned(),
            init_image: defaults::INIT_IMAGE.to_owned(),
            pull_policy: PullPolicy::IfNotPresent,
            xds_address: defaults::XDS_ADDRESS.to_owned(),
            ca_roots_pem: ca_roots_pem.into(),
            token_audience: defaults::TOKEN_AUDIENCE.to_owned(),
            token_ttl: defaults::TOKEN_TTL,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            workers: defaults::WORKERS,
            resources: Resources::default(),
        }
    }
}

/// What injection did to one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The proxy and the redirection were added.
    Injected,
    /// The pod was left as it was.
    Skipped(Skip),
}

/// Why a pod was left as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Annotation `outrider.io/inject: "false"`.
    Disabled,
    /// It already has the proxy (injecting again changes nothing).
    AlreadyInjected,
    /// `hostNetwork: true`: redirection rules would apply to the node itself.
    HostNetwork,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::Disabled => "annotation outrider.io/inject is \"false\"",
            Skip::AlreadyInjected => "it already has the outrider-proxy sidecar",
            Skip::HostNetwork => "it uses the host's network (hostNetwork: true)",
        })
    }
}

/// Why a pod cannot be injected; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("{0} is not an object")]
    NotAnObject(&'static str),
    #[error("spec.containers is missing or empty")]
    NoContainers,
    #[error("metadata.annotations[{INJECT_KEY}]: {0:?} is not \"true\" or \"false\"")]
    BadInjectAnnotation(String),
    #[error("metadata.annotations[{key}]: {value:?}: {reason}")]
    BadAnnotation { key: &'static str, value: String, reason: String },
    #[error(
        "spec.{list}: a container named {name:?} exists but the pod is not marked injected \
         (annotation {INJECTED_ANNOTATION}); rename it"
    )]
    NameTaken { list: &'static str, name: String },
    #[error("spec.volumes: a volume named {TOKEN_VOLUME:?} exists but the pod is not marked injected; rename it")]
    VolumeTaken,
}

/// Injects `pod` (a Pod, or the `template` of a workload: `{metadata, spec}`) in place.
pub fn inject(pod: &mut Value, config: &InjectConfig) -> Result<Outcome, InjectError> {
    let obj = pod.as_object_mut().ok_or(InjectError::NotAnObject("the pod"))?;
    let annotations = string_map(obj.get("metadata").and_then(|m| m.get("annotations")));
    match annotations.iter().find(|(k, _)| k == INJECT_KEY).map(|(_, v)| v.as_str()) {
        None | Some("true" | "enabled") => {}
        Some("false" | "disabled") => return Ok(Outcome::Skipped(Skip::Disabled)),
        Some(other) => return Err(InjectError::BadInjectAnnotation(other.to_owned())),
    }
    let spec = obj.get("spec").ok_or(InjectError::NoContainers)?;
    let spec = spec.as_object().ok_or(InjectError::NotAnObject("spec"))?;
    if has_container(spec, "initContainers", PROXY_CONTAINER) || has_container(spec, "containers", PROXY_CONTAINER) {
        if annotations.iter().any(|(k, _)| k == INJECTED_ANNOTATION) {
            return Ok(Outcome::Skipped(Skip::AlreadyInjected));
        }
        let list = if has_container(spec, "containers", PROXY_CONTAINER) { "containers" } else { "initContainers" };
        return Err(InjectError::NameTaken { list, name: PROXY_CONTAINER.to_owned() });
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(Skip::HostNetwork));
    }
    if spec.get("containers").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        return Err(InjectError::NoContainers);
    }
    for list in ["initContainers", "containers"] {
        if has_container(spec, list, INIT_CONTAINER) {
            return Err(InjectError::NameTaken { list, name: INIT_CONTAINER.to_owned() });
        }
    }
    let volumes = spec.get("volumes").and_then(Value::as_array);
    if volumes.is_some_and(|v| v.iter().any(|v| v.get("name").and_then(Value::as_str) == Some(TOKEN_VOLUME))) {
        return Err(InjectError::VolumeTaken);
    }

    let labels = string_map(obj.get("metadata").and_then(|m| m.get("labels")));
    let pod_info = template::PodInfo {
        service: service_of(&annotations, &labels)?,
        label_keys: labels.iter().map(|(k, _)| k.clone()).collect(),
        exclude_inbound_ports: exclude_inbound_ports(&annotations)?,
        exclude_outbound_cidrs: exclude_outbound_cidrs(&annotations)?,
    };
    let init = template::init_container(config, &pod_info);
    let proxy = template::proxy_container(config, &pod_info);
    let volume = template::token_volume(config);

    // Written only now that nothing can fail: an error leaves the pod untouched.
    let spec = obj.get_mut("spec").and_then(Value::as_object_mut).ok_or(InjectError::NotAnObject("spec"))?;
    let mut inits = take_array(spec, "initContainers");
    inits.splice(0..0, [init, proxy]);
    spec.insert("initContainers".to_owned(), Value::Array(inits));
    let mut volumes = take_array(spec, "volumes");
    volumes.push(volume);
    spec.insert("volumes".to_owned(), Value::Array(volumes));
    let mut metadata = take_object(obj, "metadata");
    let mut annotations = take_object(&mut metadata, "annotations");
    annotations.insert(INJECTED_ANNOTATION.to_owned(), Value::String(config.proxy_image.clone()));
    metadata.insert("annotations".to_owned(), Value::Object(annotations));
    obj.insert("metadata".to_owned(), Value::Object(metadata));
    Ok(Outcome::Injected)
}

/// Whether `pod` carries the injected annotation.
pub fn is_injected(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations").and_then(Value::as_object).is_some_and(|a| a.contains_key(INJECTED_ANNOTATION))
}

fn has_container(spec: &Map<String, Value>, list: &str, name: &str) -> bool {
    spec.get(list)
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|c| c.get("name").and_then(Value::as_str) == Some(name)))
}

/// The string entries of a JSON object (labels, annotations), in key order.
fn string_map(value: Option<&Value>) -> Vec<(String, String)> {
    value
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

fn lookup<'a>(map: &'a [(String, String)], key: &str) -> Option<&'a str> {
    map.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Where the proxy's service name comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ServiceSource {
    /// The `outrider.io/service` annotation's value.
    Annotation(String),
    /// A label (read through the downward API).
    Label(String),
}

fn service_of(
    annotations: &[(String, String)],
    labels: &[(String, String)],
) -> Result<Option<ServiceSource>, InjectError> {
    if let Some(s) = lookup(annotations, SERVICE_ANNOTATION) {
        if !is_dns_subdomain(s) {
            return Err(InjectError::BadAnnotation {
                key: SERVICE_ANNOTATION,
                value: s.to_owned(),
                reason: "not a service name (lowercase letters, digits, '-' and '.', at most 253)".to_owned(),
            });
        }
        return Ok(Some(ServiceSource::Annotation(s.to_owned())));
    }
    Ok(["app.kubernetes.io/name", "app"]
        .into_iter()
        .find(|k| lookup(labels, k).is_some_and(|v| !v.is_empty()))
        .map(|k| ServiceSource::Label(k.to_owned())))
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(outrider_xds::validate::is_dns_label)
}

fn exclude_inbound_ports(annotations: &[(String, String)]) -> Result<Vec<u16>, InjectError> {
    let Some(text) = lookup(annotations, EXCLUDE_INBOUND_PORTS_ANNOTATION) else {
        return Ok(Vec::new());
    };
    let bad = |reason: String| InjectError::BadAnnotation {
        key: EXCLUDE_INBOUND_PORTS_ANNOTATION,
        value: text.to_owned(),
        reason,
    };
    let mut ports = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u16>() {
            Ok(p) if p > 0 => ports.push(p),
            _ => return Err(bad(format!("{part:?} is not a port (1-65535)"))),
        }
    }
    Ok(ports)
}

fn exclude_outbound_cidrs(annotations: &[(String, String)]) -> Result<Vec<String>, InjectError> {
    let Some(text) = lookup(annotations, EXCLUDE_OUTBOUND_CIDRS_ANNOTATION) else {
        return Ok(Vec::new());
    };
    let mut cidrs = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !is_cidr(part) {
            return Err(InjectError::BadAnnotation {
                key: EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
                value: text.to_owned(),
                reason: format!("{part:?} is not an IPv4 CIDR such as 10.0.0.0/8"),
            });
        }
        cidrs.push(part.to_owned());
    }
    Ok(cidrs)
}

/// `a.b.c.d/n` or a bare IPv4 address (the rules are iptables, IPv4).
fn is_cidr(text: &str) -> bool {
    let (ip, prefix) = text.split_once('/').unwrap_or((text, "32"));
    ip.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
}

/// Takes `obj[key]` out as an array (empty when absent or not an array).
fn take_array(obj: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match obj.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// Takes `obj[key]` out as an object (empty when absent or not an object).
fn take_object(obj: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match obj.remove(key) {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    }
}
