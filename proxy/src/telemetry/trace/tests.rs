use std::collections::HashMap;

use http::{HeaderMap, HeaderValue};

use super::config::{Root, Sampler, TraceConfig};
use super::propagation::{self, B3Style};
use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn traceparent_is_parsed_and_validated() {
    let (cx, decided) =
        propagation::extract(&headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01")), ("tracestate", "k=v")]))
            .unwrap();
    assert!(decided && cx.sampled);
    assert_eq!(hex(&cx.trace_id), TRACE);
    assert_eq!(hex(&cx.span_id), SPAN);
    assert_eq!(cx.trace_state.unwrap(), "k=v");
    let (cx, _) = propagation::extract(&headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))])).unwrap();
    assert!(!cx.sampled);
    for bad in [
        format!("ff-{TRACE}-{SPAN}-01"),
        format!("00-{}-{SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("00-{TRACE}-{SPAN}"),
        format!("00-{}-{SPAN}-01", "g".repeat(32)),
    ] {
        assert!(propagation::extract(&headers(&[("traceparent", &bad)])).is_none(), "{bad} is rejected");
    }
    // A future version may add fields.
    assert!(propagation::extract(&headers(&[("traceparent", &format!("01-{TRACE}-{SPAN}-01-abc"))])).is_some());
}

#[test]
fn b3_single_and_multi_are_understood() {
    let (cx, decided) = propagation::extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))])).unwrap();
    assert!(decided && cx.sampled && cx.b3 == B3Style::Single);
    assert_eq!(hex(&cx.trace_id), TRACE);
    // 64-bit trace ids are left-padded; no sampling state defers the decision.
    let (cx, decided) = propagation::extract(&headers(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}"))])).unwrap();
    assert_eq!(hex(&cx.trace_id), format!("{}a3ce929d0e0e4736", "0".repeat(16)));
    assert!(!decided);
    assert!(propagation::extract(&headers(&[("b3", "0")])).is_none(), "a lone sampling state names no span");

    let h = headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-sampled", "0")]);
    let (cx, decided) = propagation::extract(&h).unwrap();
    assert!(decided && !cx.sampled && cx.b3 == B3Style::Multi);
    let h = headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-flags", "1")]);
    assert!(propagation::extract(&h).unwrap().0.sampled, "debug means sampled");
}

#[test]
fn inject_writes_traceparent_and_rewrites_b3() {
    let cx = SpanContext {
        trace_id: [0xab; 16],
        span_id: [0x01; 8],
        sampled: true,
        trace_state: Some(HeaderValue::from_static("a=b")),
        b3: B3Style::Multi,
    };
    let mut h = headers(&[("x-b3-parentspanid", SPAN), ("x-b3-sampled", "1")]);
    propagation::inject(&cx, &mut h);
    assert_eq!(h["traceparent"], format!("00-{}-{}-01", "ab".repeat(16), "01".repeat(8)));
    assert_eq!(h["tracestate"], "a=b");
    assert_eq!(h["x-b3-traceid"], "ab".repeat(16));
    assert_eq!(h["x-b3-spanid"], "01".repeat(8));
    assert!(!h.contains_key("x-b3-parentspanid"));
    let mut h = HeaderMap::new();
    propagation::inject(&SpanContext { sampled: false, b3: B3Style::Single, trace_state: None, ..cx }, &mut h);
    assert_eq!(h["b3"], format!("{}-{}-0", "ab".repeat(16), "01".repeat(8)));
    assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
    // Round trip.
    let (back, _) = propagation::extract(&h).unwrap();
    assert_eq!((back.trace_id, back.span_id, back.sampled), ([0xab; 16], [0x01; 8], false));
}

#[test]
fn the_written_traceparent_is_marked_for_hpack_never_indexed() {
    // Unique per request: over HTTP/2 it goes out as a never-indexed literal and stays out of
    // the peer's HPACK table (as the request id, `h2::request_ids_never_enter_…`).
    let cx =
        SpanContext { trace_id: [0xcd; 16], span_id: [0x02; 8], sampled: true, trace_state: None, b3: B3Style::Multi };
    let mut h = HeaderMap::new();
    propagation::inject(&cx, &mut h);
    assert!(h["traceparent"].is_sensitive());
}

#[test]
fn samplers_decide() {
    let id = |low: u64| {
        let mut t = [0u8; 16];
        t[8..].copy_from_slice(&low.to_be_bytes());
        t
    };
    let on = Sampler { root: Root::AlwaysOn, parent_based: true };
    assert!(on.should_sample(None, &id(1)));
    assert!(!on.should_sample(Some(false), &id(1)), "parent-based follows the caller");
    let off = Sampler { root: Root::AlwaysOff, parent_based: false };
    assert!(!off.should_sample(Some(true), &id(1)), "not parent-based: the root decides");
    let half = Sampler { root: Root::TraceIdRatio(0.5), parent_based: false };
    assert!(half.should_sample(None, &id(0)));
    assert!(!half.should_sample(None, &id(u64::MAX)));
    let sampled = (0..10_000).filter(|_| half.should_sample(None, &fastrand::u128(1..).to_be_bytes())).count();
    assert!((4_000..6_000).contains(&sampled), "about half: {sampled}");
    let none = Sampler { root: Root::TraceIdRatio(0.0), parent_based: true };
    assert!(!none.should_sample(None, &id(0)));
    assert!(none.should_sample(Some(true), &id(0)));
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| m.get(k).cloned()
}

#[test]
fn config_from_the_otel_variables() {
    assert!(TraceConfig::from_lookup(env(&[]), "svc").unwrap().is_none(), "off without an endpoint");
    let c = TraceConfig::from_lookup(
        env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret,x-tenant=a"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=fromres"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ]),
        "svc",
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.endpoint, "http://127.0.0.1:4317", "the traces endpoint wins");
    assert_eq!(c.headers, [("api-key".to_string(), "s=cret".to_string()), ("x-tenant".into(), "a".into())]);
    assert_eq!(c.service_name, "fromres");
    assert_eq!(c.resource, [("deployment.environment".to_string(), "prod".to_string())]);
    assert_eq!(c.sampler, Sampler { root: Root::TraceIdRatio(0.25), parent_based: true });
    assert_eq!(c.delay, std::time::Duration::from_millis(200));
    let c = TraceConfig::from_lookup(
        env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SERVICE_NAME", "named")]),
        "svc",
    )
    .unwrap()
    .unwrap();
    assert_eq!((c.service_name.as_str(), c.sampler), ("named", Sampler::default()));

    for bad in [
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent.pem")],
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c:4317")],
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_SAMPLER", "sometimes")],
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ],
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
    ] {
        let e = TraceConfig::from_lookup(env(&bad), "svc").expect_err("rejected");
        assert!(e.to_string().contains("OTEL_"), "the error names the variable: {e}");
    }
    assert!(
        TraceConfig::from_lookup(
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SDK_DISABLED", "true")]),
            "s"
        )
        .unwrap()
        .is_none()
    );
}

#[tokio::test]
async fn spans_are_queued_when_sampled_and_dropped_when_the_queue_is_full() {
    let metrics = Metrics::new();
    let (tracer, queue) = Tracer::new(Sampler::default(), true, None, 1, 1, metrics.clone());
    let mut rx = queue.rx;
    let attrs = || HttpAttrs::attempt(http::Method::GET, 1, None, 200, None);
    let parent = tracer.start(&HeaderMap::new(), SpanKind::Client);
    let child = parent.context().child(SpanKind::Client);
    assert_eq!(child.trace_id(), parent.trace_id());
    child.end(attrs());
    parent.end(attrs());
    let got = rx.try_recv().unwrap();
    assert!(got.parent.is_some(), "the child came first");
    assert!(rx.try_recv().is_err(), "the second span did not fit");
    let dropped = metrics.trace_spans_dropped.get_or_create(&TraceDropLabels { reason: "queue-full" }).get();
    assert_eq!(dropped, 1);
    // Not sampled: nothing queued, nothing dropped.
    let h = headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))]);
    let s = tracer.start(&h, SpanKind::Server);
    assert!(!s.is_sampled());
    s.end(attrs());
    assert!(rx.try_recv().is_err());
}

#[test]
fn otlp_spans_carry_the_http_attributes() {
    let data = SpanData {
        trace_id: [1; 16],
        span_id: [2; 8],
        parent: Some([3; 8]),
        trace_state: None,
        kind: SpanKind::Client,
        start: 1,
        end: 2,
        http: HttpAttrs {
            method: http::Method::GET,
            version: http::Version::HTTP_11,
            route: Some("main".into()),
            service: Some("echo".into()),
            authority: Some("echo:8080".parse().unwrap()),
            path: Some("/a?secret=1".parse().unwrap()),
            status: 503,
            local_reply: Some("connect-failure"),
            upstream: Some("127.0.0.1:9".parse().unwrap()),
            client: None,
            attempts: 2,
            attempt: None,
            grpc_status: None,
            incomplete: false,
            workload: Some("shop/reviews".into()),
            peer: None,
        },
        error_only: false,
    };
    let s = export::to_otlp(data);
    assert_eq!(s.name, "GET main");
    assert_eq!(s.kind, 3, "CLIENT");
    let get = |k: &str| {
        s.attributes.iter().find(|a| a.key == k).and_then(|a| a.value.clone()).and_then(|v| v.value).map(|v| match v {
            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => s,
            opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
    };
    assert_eq!(get("http.request.method").as_deref(), Some("GET"));
    assert_eq!(get("http.route").as_deref(), Some("main"));
    assert_eq!(get("http.response.status_code").as_deref(), Some("503"));
    assert_eq!(get("server.address").as_deref(), Some("echo"));
    assert_eq!(get("peer.service").as_deref(), Some("echo"));
    assert_eq!(get("url.path").as_deref(), Some("/a"), "no query string: it may hold secrets");
    assert_eq!(get("outrider.retries").as_deref(), Some("1"));
    assert_eq!(get("outrider.local_reply").as_deref(), Some("connect-failure"));
    assert_eq!(get("outrider.upstream").as_deref(), Some("127.0.0.1:9"));
    assert_eq!(get("outrider.workload").as_deref(), Some("shop/reviews"), "node mode: the calling workload");
    assert_eq!(get("outrider.peer_identity"), None);
    assert_eq!(get("error.type").as_deref(), Some("connect-failure"));
    assert_eq!(s.status.unwrap().code, 2, "ERROR");
}

#[test]
fn otlp_http_endpoints_follow_the_spec() {
    let cfg = |pairs: &[(&str, &str)]| TraceConfig::from_lookup(env(pairs), "svc").unwrap().unwrap();
    let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]);
    assert_eq!((c.endpoint.as_str(), c.protocol), ("http://c:4318/v1/traces", config::Protocol::HttpProtobuf));
    let c = cfg(&[
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ]);
    assert_eq!(c.endpoint, "http://c:4318/custom", "the traces endpoint is taken as given");
    assert_eq!(c.protocol, config::Protocol::HttpProtobuf, "the traces protocol wins");
    let c = cfg(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]);
    assert_eq!((c.endpoint.as_str(), c.protocol, c.tls.is_none()), ("http://c:4317", config::Protocol::Grpc, true));
    // A file that is not PEM is named in the error.
    let dir = std::env::temp_dir().join(format!("outrider-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("not-a-ca.pem");
    std::fs::write(&path, "hello").unwrap();
    let e = TraceConfig::from_lookup(
        env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", path.to_str().unwrap()),
        ]),
        "svc",
    )
    .expect_err("not a CA");
    assert!(e.to_string().starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE="), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_failure_is_what_error_recording_exports() {
    let attrs = |status: u16| HttpAttrs::attempt(http::Method::GET, 1, None, status, None);
    let mut a = attrs(200);
    assert!(!a.failed(SpanKind::Client) && !a.is_error(SpanKind::Client));
    a.attempt = None;
    assert!(!attrs(404).failed(SpanKind::Client), "a client's 4xx is not recorded as a failure");
    assert!(attrs(404).is_error(SpanKind::Client), "but its span status is an error");
    assert!(attrs(503).failed(SpanKind::Server) && attrs(0).failed(SpanKind::Server));
    let mut g = attrs(200);
    g.grpc_status = Some(5);
    assert!(g.failed(SpanKind::Client) && !g.failed(SpanKind::Server), "NOT_FOUND is a client-side error only");
    g.grpc_status = Some(14);
    assert!(g.failed(SpanKind::Server));
    let mut r = attrs(200);
    r.incomplete = true;
    assert!(r.failed(SpanKind::Server), "a reset is a failure");
}

#[tokio::test]
async fn unsampled_spans_are_queued_only_when_they_fail() {
    let metrics = Metrics::new();
    let off = Sampler { root: Root::AlwaysOff, parent_based: true };
    let (tracer, queue) = Tracer::new(off, true, None, 8, 8, metrics);
    let mut rx = queue.rx;
    let ok = tracer.start(&HeaderMap::new(), SpanKind::Server);
    assert!(!ok.is_sampled() && ok.may_export());
    ok.end(HttpAttrs::attempt(http::Method::GET, 1, None, 200, None));
    assert!(rx.try_recv().is_err(), "a success is not exported");
    let bad = tracer.start(&HeaderMap::new(), SpanKind::Server);
    let mut h = HeaderMap::new();
    bad.context().inject(&mut h);
    assert!(h["traceparent"].to_str().unwrap().ends_with("-00"), "propagated as not sampled");
    bad.end(HttpAttrs::attempt(http::Method::GET, 1, None, 502, None));
    let got = rx.try_recv().unwrap();
    assert!(got.error_only);
    let span = export::to_otlp(got);
    assert_eq!(span.flags & 1, 0);
    assert!(span.attributes.iter().any(|a| a.key == "outrider.sampled_reason"));
}

#[test]
fn a_pushed_ratio_replaces_the_root_sampler_and_stays_parent_based() {
    let p = Pushed { sampling_ratio: Some(0.0), errors: None };
    assert_eq!(p.sampler(), Some(Sampler { root: Root::TraceIdRatio(0.0), parent_based: true }));
    assert_eq!(Pushed::default().sampler(), None);
}

#[test]
fn a_tunnels_trace_context_is_the_default_parent_only() {
    let tunnel = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let mut bare = http::HeaderMap::new();
    propagation::default_parent(&mut bare, &tunnel);
    assert_eq!(bare.get("traceparent"), Some(&tunnel), "a request without context continues the tunnel's");
    for (name, value) in [
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ] {
        let mut own = http::HeaderMap::new();
        own.insert(http::HeaderName::from_static(name), HeaderValue::from_static(value));
        propagation::default_parent(&mut own, &tunnel);
        assert_ne!(own.get("traceparent"), Some(&tunnel), "a request with {name} keeps its own");
    }
}
