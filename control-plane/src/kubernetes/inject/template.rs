//! The containers and the volume injection adds, as the JSON the API server takes.

use serde_json::{Value, json};

use super::{InjectConfig, ServiceSource, TOKEN_DIR, TOKEN_VOLUME, defaults};

/// `imagePullPolicy` of the injected containers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The proxy container's resources (Kubernetes quantities; `None`: not set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    /// Requests for an idle proxy with a small mesh; a memory limit well above what a proxy of
    /// a 5,000-service mesh holds; no CPU limit (throttling a proxy delays every request).
    fn default() -> Self {
        Self {
            cpu_request: Some("50m".into()),
            memory_request: Some("64Mi".into()),
            cpu_limit: None,
            memory_limit: Some("1Gi".into()),
        }
    }
}

impl Resources {
    fn to_json(&self) -> Value {
        let pair = |cpu: &Option<String>, memory: &Option<String>| {
            let mut m = serde_json::Map::new();
            if let Some(c) = cpu {
                m.insert("cpu".into(), Value::String(c.clone()));
            }
            if let Some(mem) = memory {
                m.insert("memory".into(), Value::String(mem.clone()));
            }
            m
        };
        let mut out = serde_json::Map::new();
        let requests = pair(&self.cpu_request, &self.memory_request);
        if !requests.is_empty() {
            out.insert("requests".into(), Value::Object(requests));
        }
        let limits = pair(&self.cpu_limit, &self.memory_limit);
        if !limits.is_empty() {
            out.insert("limits".into(), Value::Object(limits));
        }
        Value::Object(out)
    }
}

/// What the template needs to know of the pod.
#[derive(Clone, Debug, Default)]
pub(super) struct PodInfo {
    pub service: Option<ServiceSource>,
    /// The pod's label keys; their values reach the proxy through the downward API.
    pub label_keys: Vec<String>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<String>,
}

/// The proxy binary inside both images.
const PROXY_BIN: &str = "/usr/local/bin/outrider-proxy";
/// The proxy's readiness (`/healthz/ready`) port.
const HEALTH_PORT: u16 = 15021;
const METRICS_PORT: u16 = 15090;

/// `outrider-init`: installs the nat rules in the pod's network namespace and exits. Root with
/// `NET_ADMIN`/`NET_RAW` only (iptables needs both), no privilege escalation.
pub(super) fn init_container(config: &InjectConfig, pod: &PodInfo) -> Value {
    let mut inbound: Vec<u16> = defaults::PROXY_PORTS.to_vec();
    inbound.extend(&pod.exclude_inbound_ports);
    inbound.sort_unstable();
    inbound.dedup();
    let ports = inbound.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let mut args = vec![
        "--outbound-port".to_owned(),
        "15001".to_owned(),
        "--inbound-port".to_owned(),
        "15006".to_owned(),
        "--proxy-uid".to_owned(),
        defaults::PROXY_UID.to_string(),
        "--exclude-inbound-ports".to_owned(),
        ports,
    ];
    if !pod.exclude_outbound_cidrs.is_empty() {
        args.push("--exclude-outbound-cidrs".to_owned());
        args.push(pod.exclude_outbound_cidrs.join(","));
    }
    json!({
        "name": super::INIT_CONTAINER,
        "image": config.init_image,
        "imagePullPolicy": config.pull_policy.as_str(),
        "command": [PROXY_BIN, "iptables", "--apply"],
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn value_env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

/// `outrider-proxy` as a native sidecar: an init container with `restartPolicy: Always`, whose
/// startup probe (its readiness: first config and certificate) holds the containers after it
/// until it is ready. Configured entirely by `OUTRIDER_*` variables; the pod's own facts come
/// from the downward API (an env value may refer to variables defined before it).
pub(super) fn proxy_container(config: &InjectConfig, pod: &PodInfo) -> Value {
    let mut env = vec![
        field_env("OUTRIDER_POD_NAME", "metadata.name"),
        field_env("OUTRIDER_NAMESPACE", "metadata.namespace"),
        field_env("OUTRIDER_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("OUTRIDER_POD_IP", "status.podIP"),
        value_env(
            "OUTRIDER_NODE_ID",
            "sidecar~$(OUTRIDER_POD_IP)~$(OUTRIDER_POD_NAME).$(OUTRIDER_NAMESPACE)~$(OUTRIDER_NAMESPACE).svc.cluster.local",
        ),
    ];
    match &pod.service {
        Some(ServiceSource::Annotation(name)) => env.push(value_env("OUTRIDER_SERVICE", name.clone())),
        Some(ServiceSource::Label(key)) => env.push(field_env("OUTRIDER_SERVICE", &label_path(key))),
        None => {}
    }
    if !pod.label_keys.is_empty() {
        let mut labels = Vec::new();
        for (i, key) in pod.label_keys.iter().enumerate() {
            let var = format!("OUTRIDER_LABEL_{i}");
            env.push(field_env(&var, &label_path(key)));
            labels.push(format!("{key}=$({var})"));
        }
        env.push(value_env("OUTRIDER_LABEL", labels.join(",")));
    }
    env.extend([
        value_env("OUTRIDER_XDS_ADDRESS", config.xds_address.clone()),
        value_env("OUTRIDER_IDENTITY_TOKEN", format!("{TOKEN_DIR}/token")),
        value_env("OUTRIDER_CA_ROOT_PEM", config.ca_roots_pem.clone()),
        value_env("OUTRIDER_DRAIN_TIMEOUT", format!("{}s", config.drain_timeout.as_secs().max(1))),
        value_env("OUTRIDER_WORKERS", config.workers.to_string()),
        value_env("OUTRIDER_LOG_FORMAT", "json"),
    ]);
    let probe = |period: u32, failures: u32| {
        json!({
            "httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
            "periodSeconds": period,
            "timeoutSeconds": 3,
            "failureThreshold": failures,
        })
    };
    json!({
        "name": super::PROXY_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": config.pull_policy.as_str(),
        "command": [PROXY_BIN],
        "restartPolicy": "Always",
        "env": env,
        "ports": [
            {"name": "outrider-prom", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "outrider-health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        // Up to 10 minutes for the first config and certificate; the app waits for it.
        "startupProbe": probe(1, 600),
        "readinessProbe": probe(5, 3),
        "resources": config.resources.to_json(),
        "securityContext": {
            "runAsUser": defaults::PROXY_UID,
            "runAsGroup": defaults::PROXY_UID,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
    })
}

/// The projected service-account token of the mesh's audience (the kubelet renews it).
pub(super) fn token_volume(config: &InjectConfig) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": config.token_audience,
            "expirationSeconds": config.token_ttl.as_secs(),
            "path": "token",
        }}]},
    })
}

/// The downward API path of a label: `metadata.labels['KEY']`.
fn label_path(key: &str) -> String {
    format!("metadata.labels['{key}']")
}
