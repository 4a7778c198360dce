//! The metrics registry. Families live here; the code that updates them holds a
//! cheap clone. Label values are bounded: service and route names come from the
//! config snapshot, never from raw request data.
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    outbound,
    inbound,
}

/// Node mode: the served workload a request belongs to (`workload="NAMESPACE/SERVICE_ACCOUNT"`:
/// the caller on outbound, the callee on inbound) and the workload on the other side
/// (`peer_workload`: inbound, the caller's verified identity; outbound, the identity of the
/// meshed endpoint that answered; empty when there is none: plaintext, or no endpoint
/// answered). Both are bounded by the service accounts of the mesh. A sidecar serves one
/// workload: neither label.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct WorkloadLabel {
    pub workload: Option<Arc<str>>,
    pub peer: Option<Arc<str>>,
}

impl EncodeLabelSet for WorkloadLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match &self.workload {
            Some(w) => {
                [("workload", w.as_ref()), ("peer_workload", self.peer.as_deref().unwrap_or(""))].encode(encoder)
            }
            None => Ok(()),
        }
    }
}

fn same_opt(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => same(a, b),
        _ => false,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub service: Arc<str>,
    pub route: Arc<str>,
    pub code: u16,
    #[prometheus(flatten)]
    pub workload: WorkloadLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub direction: Direction,
    pub service: Arc<str>,
    #[prometheus(flatten)]
    pub workload: WorkloadLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdsLabels {
    pub r#type: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocalReplyLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceReasonLabels {
    pub service: Arc<str>,
    pub reason: &'static str,
}

/// Faults injected by kind (`delay`, `abort`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceKindLabels {
    pub service: Arc<str>,
    pub kind: &'static str,
}

/// Why spans were not exported: `queue-full`, `export-failed`, `rejected`
/// (by the collector), `exporter-stopped`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceDropLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStateLabels {
    pub service: Arc<str>,
    pub state: &'static str,
}

/// Mutual-TLS connections by direction and what they carry (ALPN id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    pub direction: Direction,
    pub alpn: &'static str,
}

/// Requests or connections refused by authorization: the service and the caller's identity
/// (`unauthenticated` for plaintext). Bounded by the identities the mesh CA issues.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub service: Arc<str>,
    pub peer: Arc<str>,
}

/// The `outrider_requests_total` and `outrider_request_duration_seconds` series of one route
/// (outbound: per split of a route of the config snapshot; inbound: per listener), resolved by
/// the first request that counts into them, so later requests only increment (no label hashing
/// or family lock). A series is created when a request first counts into it, exactly as a
/// family lookup would; a new snapshot brings new, empty cells, and the series themselves stay
/// in their families as they always have (request series are never removed).
#[derive(Debug, Default)]
pub struct SeriesCell(OnceLock<RequestSeries>);

/// Status codes of one route kept as resolved counters; further codes take the family lookup.
const CODE_SLOTS: usize = 4;

#[derive(Debug)]
pub struct RequestSeries {
    direction: Direction,
    service: Arc<str>,
    route: Arc<str>,
    workload: WorkloadLabel,
    duration: Histogram,
    codes: [OnceLock<(u16, Counter)>; CODE_SLOTS],
}

fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl RequestSeries {
    fn matches(&self, l: &DurationLabels, route: &Arc<str>) -> bool {
        self.direction == l.direction
            && same(&self.service, &l.service)
            && same(&self.route, route)
            && same_opt(&self.workload.workload, &l.workload.workload)
            && same_opt(&self.workload.peer, &l.workload.peer)
    }

    fn count(&self, m: &Metrics, code: u16) {
        for slot in &self.codes {
            let (c, counter) = slot.get_or_init(|| (code, m.requests.get_or_create(&self.labels(code)).clone()));
            if *c == code {
                counter.inc();
                return;
            }
        }
        m.requests.get_or_create(&self.labels(code)).inc();
    }

    fn labels(&self, code: u16) -> RequestLabels {
        RequestLabels {
            direction: self.direction,
            service: self.service.clone(),
            route: self.route.clone(),
            code,
            workload: self.workload.clone(),
        }
    }
}

impl Metrics {
    /// Count one request into `outrider_requests_total{direction, service, route, code,
    /// workload}` and observe `seconds` in `outrider_request_duration_seconds{direction,
    /// service, workload}`: through `cell`'s resolved series when they carry these labels,
    /// else by family lookup (the same series either way).
    pub fn count_request(
        &self,
        cell: Option<&SeriesCell>,
        labels: DurationLabels,
        route: &Arc<str>,
        code: u16,
        seconds: f64,
    ) {
        if let Some(cell) = cell {
            let s = cell.0.get_or_init(|| RequestSeries {
                duration: self.request_duration.get_or_create(&labels).clone(),
                direction: labels.direction,
                service: labels.service.clone(),
                route: route.clone(),
                workload: labels.workload.clone(),
                codes: Default::default(),
            });
            if s.matches(&labels, route) {
                s.count(self, code);
                s.duration.observe(seconds);
                return;
            }
        }
        self.requests
            .get_or_create(&RequestLabels {
                direction: labels.direction,
                service: labels.service.clone(),
                route: route.clone(),
                code,
                workload: labels.workload.clone(),
            })
            .inc();
        self.request_duration.get_or_create(&labels).observe(seconds);
    }
}

/// Latency buckets from 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every family of the proxy; a handle that costs one reference count to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

impl std::ops::Deref for Metrics {
    type Target = Families;
    fn deref(&self) -> &Families {
        &self.inner
    }
}

/// The families themselves.
pub struct Families {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    pub local_replies: Family<LocalReplyLabels, Counter>,
    pub tcp_connections_open: Family<DirectionLabels, Gauge>,
    pub tcp_connections: Family<DirectionLabels, Counter>,
    /// Connections closed at accept because `--max-connections` were open.
    pub tcp_connections_refused: Family<DirectionLabels, Counter>,
    pub tcp_bytes: Family<DirectionLabels, Counter>,
    pub xds_updates: Family<XdsLabels, Counter>,
    pub config_version: Family<TypeLabels, Gauge>,
    pub retries: Family<ServiceReasonLabels, Counter>,
    pub retry_budget_exhausted: Family<ServiceLabels, Counter>,
    /// Retries the policy called for but the proxy did not make, by why not.
    pub retries_skipped: Family<ServiceReasonLabels, Counter>,
    pub faults_injected: Family<ServiceKindLabels, Counter>,
    pub circuit_breaker_state: Family<ServiceLabels, Gauge>,
    pub circuit_breaker_rejections: Family<ServiceReasonLabels, Counter>,
    pub circuit_breaker_endpoints: Family<EndpointStateLabels, Gauge>,
    pub circuit_breaker_fallbacks: Family<ServiceLabels, Counter>,
    pub outlier_ejections: Family<ServiceLabels, Counter>,
    pub endpoints: Family<EndpointStateLabels, Gauge>,
    pub trace_spans_exported: Counter,
    pub trace_spans_dropped: Family<TraceDropLabels, Counter>,
    /// Seconds until this proxy's workload certificate expires; set at each scrape.
    pub tls_certificate_expiry_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub tls_connections: Family<TlsLabels, Counter>,
    pub tls_handshake_errors: Family<DirectionLabels, Counter>,
    pub authorization_denied: Family<DenialLabels, Counter>,
    pub plaintext_refused: Family<ServiceLabels, Counter>,
    /// 1 while this sidecar's `--service` names no Service in the config (its inbound traffic
    /// has no mTLS mode or authorization policy), 0 once it does.
    pub service_missing: Family<ServiceLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("outrider");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests handled, by direction, service, route and status code",
            requests.clone(),
        );
        let request_duration =
            Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            request_duration.clone(),
        );
        let local_replies = Family::<LocalReplyLabels, Counter>::default();
        registry.register("local_replies", "Responses generated by the proxy itself, by reason", local_replies.clone());
        let tcp_connections_open = Family::<DirectionLabels, Gauge>::default();
        registry.register("tcp_connections_open", "Accepted connections currently open", tcp_connections_open.clone());
        let tcp_connections = Family::<DirectionLabels, Counter>::default();
        registry.register("tcp_connections", "Accepted connections", tcp_connections.clone());
        let tcp_connections_refused = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "tcp_connections_refused",
            "Connections closed at once because --max-connections downstream connections were open",
            tcp_connections_refused.clone(),
        );
        let tcp_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register("tcp_bytes", "Bytes copied by opaque TCP proxying, by direction", tcp_bytes.clone());
        let xds_updates = Family::<XdsLabels, Counter>::default();
        registry.register("xds_updates", "Configuration updates by resource type and result", xds_updates.clone());
        let config_version = Family::<TypeLabels, Gauge>::default();
        registry.register(
            "config_version",
            "Version of the config in force, by resource type (a 53-bit hash of the version string)",
            config_version.clone(),
        );
        let retries = Family::<ServiceReasonLabels, Counter>::default();
        registry.register("retries", "Retries sent, by service and the failure that caused them", retries.clone());
        let retry_budget_exhausted = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries not sent because the retry budget was spent (the original failure was returned)",
            retry_budget_exhausted.clone(),
        );
        let retries_skipped = Family::<ServiceReasonLabels, Counter>::default();
        registry.register(
            "retries_skipped",
            "Retries the policy called for but not made, by reason (body-too-large, body-error, deadline)",
            retries_skipped.clone(),
        );
        let faults_injected = Family::<ServiceKindLabels, Counter>::default();
        registry.register(
            "faults_injected",
            "Faults injected by the policy's faults, by service and kind (delay, abort)",
            faults_injected.clone(),
        );
        let circuit_breaker_state = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "circuit_breaker_state",
            "Circuit breaker state machine: 0 closed, 1 open, 2 half-open",
            circuit_breaker_state.clone(),
        );
        let circuit_breaker_rejections = Family::<ServiceReasonLabels, Counter>::default();
        registry.register(
            "circuit_breaker_rejections",
            "Requests and retries rejected by a circuit breaker, by reason (open, max-requests, max-pending, max-connections, max-retries)",
            circuit_breaker_rejections.clone(),
        );
        let circuit_breaker_endpoints = Family::<EndpointStateLabels, Gauge>::default();
        registry.register(
            "circuit_breaker_endpoints",
            "Endpoints per service by the state of their own breaker (scope: endpoint): closed, open, half-open",
            circuit_breaker_endpoints.clone(),
        );
        let circuit_breaker_fallbacks = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "circuit_breaker_fallbacks",
            "Attempts sent to the fallback because every endpoint of their split was open (or it had none)",
            circuit_breaker_fallbacks.clone(),
        );
        let outlier_ejections = Family::<ServiceLabels, Counter>::default();
        registry.register("outlier_ejections", "Endpoints ejected by outlier detection", outlier_ejections.clone());
        let endpoints = Family::<EndpointStateLabels, Gauge>::default();
        registry.register("endpoints", "Endpoints per service by state (healthy, ejected)", endpoints.clone());
        let trace_spans_exported = Counter::default();
        registry.register("trace_spans_exported", "Spans accepted by the OTLP collector", trace_spans_exported.clone());
        let trace_spans_dropped = Family::<TraceDropLabels, Counter>::default();
        registry.register(
            "trace_spans_dropped",
            "Sampled spans not exported, by reason (queue-full, export-failed, rejected, exporter-stopped)",
            trace_spans_dropped.clone(),
        );
        let tls_certificate_expiry_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the workload certificate expires (0 without one; negative once expired)",
            tls_certificate_expiry_seconds.clone(),
        );
        let tls_connections = Family::<TlsLabels, Counter>::default();
        registry.register(
            "tls_connections",
            "Mutual-TLS connections between proxies, by direction and ALPN id (outrider/1: HTTP over h2, outrider-http1/1, outrider-tcp/1)",
            tls_connections.clone(),
        );
        let tls_handshake_errors = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "tls_handshake_errors",
            "Mutual-TLS handshakes that failed (untrusted or expired certificate, wrong identity)",
            tls_handshake_errors.clone(),
        );
        let authorization_denied = Family::<DenialLabels, Counter>::default();
        registry.register(
            "authorization_denied",
            "Inbound requests and connections denied by AuthorizationPolicy, by service and caller identity",
            authorization_denied.clone(),
        );
        let plaintext_refused = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "plaintext_refused",
            "Inbound plaintext connections refused because the service is in strict mTLS mode",
            plaintext_refused.clone(),
        );
        let service_missing = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "service_missing",
            "1 while this sidecar's --service names no Service in the config (inbound traffic then has no mTLS mode or authorization policy), else 0",
            service_missing.clone(),
        );
        let families = Families {
            registry: Arc::new(registry),
            service_missing,
            tls_certificate_expiry_seconds,
            tls_connections,
            tls_handshake_errors,
            authorization_denied,
            plaintext_refused,
            retries,
            retry_budget_exhausted,
            retries_skipped,
            faults_injected,
            circuit_breaker_state,
            circuit_breaker_rejections,
            circuit_breaker_endpoints,
            circuit_breaker_fallbacks,
            outlier_ejections,
            endpoints,
            trace_spans_exported,
            trace_spans_dropped,
            requests,
            request_duration,
            local_replies,
            tcp_connections_open,
            tcp_connections,
            tcp_connections_refused,
            tcp_bytes,
            xds_updates,
            config_version,
        };
        Self { inner: Arc::new(families) }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub const CONTENT_TYPE: &'static str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

    /// Every family the proxy exports, as `# TYPE` names it (a family appears in
    /// the exposition once it has a series). docs/metrics.md documents each; a
    /// unit test keeps this list equal to what [`Metrics::new`] registers.
    pub const FAMILIES: &'static [&'static str] = &[
        "outrider_requests_total",
        "outrider_request_duration_seconds",
        "outrider_local_replies_total",
        "outrider_tcp_connections_open",
        "outrider_tcp_connections_total",
        "outrider_tcp_connections_refused_total",
        "outrider_tcp_bytes_total",
        "outrider_xds_updates_total",
        "outrider_config_version",
        "outrider_retries_total",
        "outrider_retry_budget_exhausted_total",
        "outrider_retries_skipped_total",
        "outrider_faults_injected_total",
        "outrider_circuit_breaker_state",
        "outrider_circuit_breaker_rejections_total",
        "outrider_circuit_breaker_endpoints",
        "outrider_circuit_breaker_fallbacks_total",
        "outrider_outlier_ejections_total",
        "outrider_endpoints",
        "outrider_trace_spans_exported_total",
        "outrider_trace_spans_dropped_total",
        "outrider_tls_certificate_expiry_seconds",
        "outrider_tls_connections_total",
        "outrider_tls_handshake_errors_total",
        "outrider_authorization_denied_total",
        "outrider_plaintext_refused_total",
        "outrider_service_missing",
    ];
}

/// Gauge value for a version string: 53 bits of its FNV-1a hash, so the value is
/// exact as a float and changes whenever the version does.
pub fn version_value(version: &str) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in version.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h & ((1u64 << 53) - 1)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_lists_every_registered_family() {
        let m = Metrics::new();
        let svc: Arc<str> = Arc::from("s");
        let d = Direction::outbound;
        let _ = m.requests.get_or_create(&RequestLabels {
            direction: d,
            service: svc.clone(),
            route: svc.clone(),
            code: 200,
            workload: WorkloadLabel::default(),
        });
        let _ = m.request_duration.get_or_create(&DurationLabels {
            direction: d,
            service: svc.clone(),
            workload: WorkloadLabel::default(),
        });
        let _ = m.local_replies.get_or_create(&LocalReplyLabels { direction: d, reason: "r" });
        let _ = m.tcp_connections_open.get_or_create(&DirectionLabels { direction: d });
        let _ = m.tcp_connections.get_or_create(&DirectionLabels { direction: d });
        let _ = m.tcp_connections_refused.get_or_create(&DirectionLabels { direction: d });
        let _ = m.tcp_bytes.get_or_create(&DirectionLabels { direction: d });
        let _ = m.xds_updates.get_or_create(&XdsLabels { r#type: "t", result: "accepted" });
        let _ = m.config_version.get_or_create(&TypeLabels { r#type: "t" });
        let _ = m.retries.get_or_create(&ServiceReasonLabels { service: svc.clone(), reason: "r" });
        let _ = m.retry_budget_exhausted.get_or_create(&ServiceLabels { service: svc.clone() });
        let _ = m.retries_skipped.get_or_create(&ServiceReasonLabels { service: svc.clone(), reason: "r" });
        let _ = m.faults_injected.get_or_create(&ServiceKindLabels { service: svc.clone(), kind: "delay" });
        let _ = m.circuit_breaker_state.get_or_create(&ServiceLabels { service: svc.clone() });
        let _ = m.circuit_breaker_rejections.get_or_create(&ServiceReasonLabels { service: svc.clone(), reason: "r" });
        let _ = m.circuit_breaker_endpoints.get_or_create(&EndpointStateLabels { service: svc.clone(), state: "open" });
        let _ = m.circuit_breaker_fallbacks.get_or_create(&ServiceLabels { service: svc.clone() });
        let _ = m.outlier_ejections.get_or_create(&ServiceLabels { service: svc.clone() });
        let _ = m.endpoints.get_or_create(&EndpointStateLabels { service: svc.clone(), state: "healthy" });
        let _ = m.trace_spans_dropped.get_or_create(&TraceDropLabels { reason: "queue-full" });
        let _ = m.tls_connections.get_or_create(&TlsLabels { direction: d, alpn: "outrider/1" });
        let _ = m.tls_handshake_errors.get_or_create(&DirectionLabels { direction: d });
        let _ = m.authorization_denied.get_or_create(&DenialLabels { service: svc.clone(), peer: svc.clone() });
        let _ = m.plaintext_refused.get_or_create(&ServiceLabels { service: svc.clone() });
        let _ = m.service_missing.get_or_create(&ServiceLabels { service: svc.clone() });
        let text = m.encode();
        let declared: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next()).collect();
        assert_eq!(
            declared,
            Metrics::FAMILIES,
            "touch every family above, and list it in FAMILIES and docs/metrics.md"
        );
    }

    #[test]
    fn the_workload_labels_are_there_in_node_mode_only() {
        let m = Metrics::new();
        let svc: Arc<str> = Arc::from("echo");
        let node = WorkloadLabel { workload: Some(Arc::from("shop/reviews")), peer: Some(Arc::from("shop/frontend")) };
        let unknown_peer = WorkloadLabel { workload: Some(Arc::from("shop/reviews")), peer: None };
        for (code, workload) in [(200, WorkloadLabel::default()), (200, node), (503, unknown_peer)] {
            m.requests
                .get_or_create(&RequestLabels {
                    direction: Direction::inbound,
                    service: svc.clone(),
                    route: svc.clone(),
                    code,
                    workload: workload.clone(),
                })
                .inc();
            m.request_duration
                .get_or_create(&DurationLabels { direction: Direction::inbound, service: svc.clone(), workload })
                .observe(0.001);
        }
        let text = m.encode();
        assert!(
            text.contains(
                "outrider_requests_total{direction=\"inbound\",service=\"echo\",route=\"echo\",code=\"200\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("outrider_requests_total{direction=\"inbound\",service=\"echo\",route=\"echo\",code=\"200\",workload=\"shop/reviews\",peer_workload=\"shop/frontend\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("outrider_requests_total{direction=\"inbound\",service=\"echo\",route=\"echo\",code=\"503\",workload=\"shop/reviews\",peer_workload=\"\"} 1\n"),
            "node mode: the label is there, empty, without a peer workload: {text}"
        );
        assert!(
            text.contains("outrider_request_duration_seconds_count{direction=\"inbound\",service=\"echo\",workload=\"shop/reviews\",peer_workload=\"shop/frontend\"} 1\n"),
            "{text}"
        );
    }
}
