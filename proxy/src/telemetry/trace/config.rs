//! Tracing configuration, read from the standard OpenTelemetry environment
//! variables. Tracing is off unless an OTLP endpoint is set.
//!
//! | variable | default | |
//! |---|---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` | — (off) | the collector, `http://host:4317`; `https://` for TLS |
//! | `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS` | — | `k=v,k2=v2` gRPC metadata / HTTP headers |
//! | `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT` | 10000 | ms per export |
//! | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL` | grpc | `grpc` or `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`, else `OTEL_EXPORTER_OTLP_CERTIFICATE` | system bundle | CA PEM file for `https://` |
//! | `OTEL_SERVICE_NAME` | `--service`, else `outrider-proxy` | `service.name` |
//! | `OTEL_RESOURCE_ATTRIBUTES` | — | more resource attributes |
//! | `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` / 1.0 | |
//! | `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` | 2048, 512, 5000 ms | |
//! | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none` | | tracing off |
use std::sync::Arc;
use std::time::Duration;

/// Where the system's CA bundle is read from for `https://` endpoints without
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` (Debian/Ubuntu/Alpine path; the proxy has no
/// built-in roots).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The OTLP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC, `TraceService/Export` (collector port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with a protobuf body, `POST .../v1/traces` (collector port 4318).
    HttpProtobuf,
}

impl Protocol {
    /// The spelling of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    /// The ALPN protocol offered over TLS.
    fn alpn(self) -> &'static [u8] {
        match self {
            Protocol::Grpc => b"h2",
            Protocol::HttpProtobuf => b"http/1.1",
        }
    }
}

/// The sampler for spans that start (or continue) a trace here.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    pub root: Root,
    /// Follow the caller's decision when there is one.
    pub parent_based: bool,
}

/// The decision for a trace with no (deciding) parent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    /// Sample this share of traces, chosen by trace id (so every hop that uses
    /// the same ratio agrees).
    TraceIdRatio(f64),
}

impl Default for Sampler {
    fn default() -> Self {
        Self { root: Root::AlwaysOn, parent_based: true }
    }
}

impl Sampler {
    /// `parent`: the caller's sampled flag, when the caller decided.
    pub fn should_sample(&self, parent: Option<bool>, trace_id: &[u8; 16]) -> bool {
        if self.parent_based
            && let Some(p) = parent
        {
            return p;
        }
        match self.root {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::TraceIdRatio(r) => {
                // As the OpenTelemetry SDKs do: the low 8 bytes of the id, as a
                // 63-bit number, under ratio · 2^63.
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                let x = u64::from_be_bytes(low) >> 1;
                (x as f64) < r * (1u64 << 63) as f64
            }
        }
    }
}

/// What a `Telemetry` policy pushed by the control plane (or in the policy
/// file) sets; a `None` field keeps the proxy's own setting.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pushed {
    /// `samplingPercent / 100`: the root ratio of a parent-based sampler.
    pub sampling_ratio: Option<f64>,
    /// `errors`: export the spans of failed requests the sampler left out.
    pub errors: Option<bool>,
}

impl Pushed {
    /// The sampler it sets: `parentbased_traceidratio` with its ratio (as Istio's
    /// `randomSamplingPercentage`: callers' decisions are still followed).
    pub fn sampler(&self) -> Option<Sampler> {
        self.sampling_ratio.map(|r| Sampler { root: Root::TraceIdRatio(r.clamp(0.0, 1.0)), parent_based: true })
    }
}

/// Where and how spans are exported.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// `http(s)://host:port` of an OTLP/gRPC receiver, or the full URL an OTLP/HTTP
    /// export is POSTed to (`.../v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// TLS to the collector (`https://` endpoints): the roots it trusts and the ALPN.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// gRPC metadata or HTTP headers sent with every export (e.g. an API key).
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    /// Resource attributes besides `service.name`.
    pub resource: Vec<(String, String)>,
    pub sampler: Sampler,
    /// Export the spans of failed requests even when the trace is not sampled
    /// (`--trace-errors` / `OUTRIDER_TRACE_ERRORS`, default on).
    pub errors: bool,
    /// Spans waiting for export; more are dropped and counted.
    pub max_queue: usize,
    pub max_batch: usize,
    /// How long a batch waits to fill before it is sent anyway.
    pub delay: Duration,
    /// Per export call.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceConfigError {
    #[error("{var}={value:?}: {why}")]
    Invalid { var: &'static str, value: String, why: &'static str },
    /// A file the variable names cannot be used.
    #[error("{var}={value:?}: {why}")]
    Unusable { var: &'static str, value: String, why: String },
}

impl TraceConfig {
    /// Defaults for an endpoint (the rest as the OpenTelemetry spec sets them).
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol: Protocol::Grpc,
            tls: None,
            headers: Vec::new(),
            service_name: service_name.into(),
            resource: Vec::new(),
            sampler: Sampler::default(),
            errors: true,
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_millis(5000),
            timeout: Duration::from_millis(10_000),
        }
    }

    /// From the process environment; `None` when tracing is off.
    pub fn from_env(default_service: &str) -> Result<Option<Self>, TraceConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok(), default_service)
    }

    /// From any variable lookup (tests pass a map).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Self>, TraceConfigError> {
        let var = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let invalid = |var: &'static str, value: &str, why: &'static str| TraceConfigError::Invalid {
            var,
            value: value.to_string(),
            why,
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(e) = var("OTEL_TRACES_EXPORTER") {
            match e.as_str() {
                "none" => return Ok(None),
                "otlp" => {}
                _ => return Err(invalid("OTEL_TRACES_EXPORTER", &e, "only otlp (or none) is supported")),
            }
        }
        let (endpoint_var, endpoint) =
            match (var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
                (Some(e), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e),
                (None, Some(e)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
                (None, None) => return Ok(None),
            };
        let mut protocol = Protocol::Grpc;
        for pv in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(p) = var(pv) {
                protocol = match p.as_str() {
                    "grpc" => Protocol::Grpc,
                    "http/protobuf" => Protocol::HttpProtobuf,
                    _ => {
                        return Err(invalid(
                            pv,
                            &p,
                            "expected grpc (OTLP/gRPC, usually port 4317) or http/protobuf (OTLP/HTTP, usually \
                             port 4318); http/json is not supported",
                        ));
                    }
                };
                break;
            }
        }
        let mut endpoint = if endpoint.contains("://") { endpoint } else { format!("http://{endpoint}") };
        let https = endpoint.starts_with("https://");
        let uri = endpoint.parse::<http::Uri>().ok().filter(|u| u.host().is_some_and(|h| !h.is_empty()));
        if !(https || endpoint.starts_with("http://")) || uri.is_none() {
            return Err(TraceConfigError::Invalid {
                var: endpoint_var,
                value: endpoint,
                why: if protocol == Protocol::Grpc {
                    "expected a URL such as http://127.0.0.1:4317 (https:// for TLS)"
                } else {
                    "expected a URL such as http://127.0.0.1:4318 (https:// for TLS)"
                },
            });
        }
        // OTLP/HTTP: the signal-less endpoint is a base URL that gets `/v1/traces`;
        // the traces endpoint is used as given (the OpenTelemetry spec's rule).
        if protocol == Protocol::HttpProtobuf && endpoint_var == "OTEL_EXPORTER_OTLP_ENDPOINT" {
            endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        }
        let tls = if https { Some(Arc::new(Self::tls_from(&var, protocol)?)) } else { None };
        let service_name = var("OTEL_SERVICE_NAME");
        let mut cfg = Self::new(endpoint, service_name.clone().unwrap_or_else(|| default_service.to_string()));
        cfg.protocol = protocol;
        cfg.tls = tls;

        let headers_var = if var("OTEL_EXPORTER_OTLP_TRACES_HEADERS").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
        } else {
            "OTEL_EXPORTER_OTLP_HEADERS"
        };
        if let Some(h) = var(headers_var) {
            cfg.headers = parse_pairs(&h).ok_or_else(|| invalid(headers_var, &h, "expected key=value,key2=value2"))?;
            for (k, v) in &cfg.headers {
                let ok = k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>().is_ok()
                    && v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>().is_ok();
                if !ok {
                    return Err(invalid(headers_var, k, "not a valid gRPC metadata key and ASCII value"));
                }
            }
        }
        if let Some(r) = var("OTEL_RESOURCE_ATTRIBUTES") {
            let pairs =
                parse_pairs(&r).ok_or_else(|| invalid("OTEL_RESOURCE_ATTRIBUTES", &r, "expected key=value,..."))?;
            for (k, v) in pairs {
                if k == "service.name" {
                    if service_name.is_none() {
                        cfg.service_name = v;
                    }
                } else {
                    cfg.resource.push((k, v));
                }
            }
        }

        let arg = var("OTEL_TRACES_SAMPLER_ARG");
        let ratio = || -> Result<f64, TraceConfigError> {
            match &arg {
                None => Ok(1.0),
                Some(a) => a
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| invalid("OTEL_TRACES_SAMPLER_ARG", a, "expected a ratio between 0 and 1")),
            }
        };
        if let Some(s) = var("OTEL_TRACES_SAMPLER") {
            let (parent_based, root) = match s.strip_prefix("parentbased_") {
                Some(r) => (true, r),
                None => (false, s.as_str()),
            };
            let root = match root {
                "always_on" => Root::AlwaysOn,
                "always_off" => Root::AlwaysOff,
                "traceidratio" => Root::TraceIdRatio(ratio()?),
                _ => {
                    return Err(invalid(
                        "OTEL_TRACES_SAMPLER",
                        &s,
                        "expected always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off or parentbased_traceidratio",
                    ));
                }
            };
            cfg.sampler = Sampler { root, parent_based };
        }

        let num = |name: &'static str, dflt: u64| -> Result<u64, TraceConfigError> {
            match var(name) {
                None => Ok(dflt),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(name, &v, "expected a positive whole number")),
            }
        };
        cfg.max_queue = num("OTEL_BSP_MAX_QUEUE_SIZE", 2048)? as usize;
        cfg.max_batch = (num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)? as usize).min(cfg.max_queue);
        cfg.delay = Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY", 5000)?);
        let timeout_var = if var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
        } else {
            "OTEL_EXPORTER_OTLP_TIMEOUT"
        };
        cfg.timeout = Duration::from_millis(num(timeout_var, 10_000)?);
        Ok(Some(cfg))
    }
}

impl TraceConfig {
    /// The TLS client config for an `https://` endpoint: the CA of
    /// `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` / `OTEL_EXPORTER_OTLP_CERTIFICATE`,
    /// else the system bundle at [`SYSTEM_CA_BUNDLE`]; neither is a startup error.
    fn tls_from(
        var: &dyn Fn(&str) -> Option<String>,
        protocol: Protocol,
    ) -> Result<rustls::ClientConfig, TraceConfigError> {
        let cert_var = ["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"]
            .into_iter()
            .find_map(|k| var(k).map(|v| (k, v)));
        let (var_name, path, strict) = match cert_var {
            Some((k, v)) => (k, v, true),
            None => {
                if !std::path::Path::new(SYSTEM_CA_BUNDLE).exists() {
                    return Err(TraceConfigError::Invalid {
                        var: "OTEL_EXPORTER_OTLP_CERTIFICATE",
                        value: String::new(),
                        why: "an https:// endpoint needs the collector's CA: set this to a PEM file (there is no \
                              system bundle at /etc/ssl/certs/ca-certificates.crt)",
                    });
                }
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", SYSTEM_CA_BUNDLE.to_string(), false)
            }
        };
        let pem = std::fs::read(&path).map_err(|e| TraceConfigError::Unusable {
            var: var_name,
            value: path.clone(),
            why: format!("cannot read it: {e}"),
        })?;
        super::transport::client_config(&pem, strict, protocol.alpn()).map_err(|why| TraceConfigError::Unusable {
            var: var_name,
            value: path,
            why,
        })
    }
}

/// `k=v,k2=v2` with percent-encoded values (W3C Baggage style, as the spec asks).
fn parse_pairs(s: &str) -> Option<Vec<(String, String)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
