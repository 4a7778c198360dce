//! No policy value can crash the proxy (release builds abort on panic). Extreme
//! values — 0, 1 ns, `u32::MAX` ms, each field's maximum, Envoy's largest
//! duration and beyond, huge percentages and counts — go through the whole path:
//! validate → translate → snapshot → a real request through the proxy, which must
//! answer sanely (and, for a tcp service, real connections through the opaque TCP
//! path). Two sources: generated policy files (the validator rejects what
//! is out of range, naming the field; what it accepts the proxy serves), and Envoy
//! resources as any xDS server may send them (the proxy NACKs what it cannot use,
//! naming the field, and caps what is merely huge). Any panic anywhere in the
//! process — request path or background task — fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::{RouteAction, route};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::google::protobuf::{Any, Duration as PDuration, UInt32Value};
use outrider_proxy::outbound::Outbound;
use outrider_proxy::state::Builder;
use outrider_proxy::telemetry::access::Recorder;
use outrider_tests::ProxyHarness;
use outrider_tests::client::Reply;
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream::{self, Switch};
use outrider_tests::wait;
use outrider_xds::Resources;
use outrider_xds::resources::{self as names, Resilience};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Count every panic in the process (a proxy task's included), and print it.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// A sane answer: the upstream's (200 or its 503), a local 503 (breaker,
/// limits, connect failure), 504 (timeout), or an injected fault's status.
fn assert_sane(r: &Reply, what: &str) {
    let fault = r.header("x-outrider-local-reply") == Some("fault-injected");
    assert!(matches!(r.status.as_u16(), 200 | 503 | 504) || fault, "{what}: {} {:?} {}", r.status, r.headers, r.text());
}

/// The largest duration a policy file can spell (`u64::MAX` seconds).
const U64_MAX_SECS: &str = "18446744073709551615s";

/// Draws each field's value from its extremes: the smallest and largest allowed,
/// or (for the one field chosen to be spoilt, if any) a value just past them.
struct Gen {
    rng: fastrand::Rng,
    drawn: usize,
    spoil: Option<usize>,
}

impl Gen {
    fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let spoil = rng.bool().then(|| rng.usize(..12));
        Self { rng, drawn: 0, spoil }
    }

    fn pick<'a>(&mut self, valid: &[&'a str], invalid: &[&'a str]) -> &'a str {
        self.drawn += 1;
        let from = if self.spoil == Some(self.drawn - 1) && !invalid.is_empty() { invalid } else { valid };
        from[self.rng.usize(..from.len())]
    }

    fn bool(&mut self) -> bool {
        self.rng.bool()
    }
}

/// A TrafficPolicy for service `x` with every field drawn from its extremes.
/// Delays that would make the caller wait for real (a fault delay, a long
/// backoff on a failing upstream) are drawn only where a request timeout bounds
/// them.
/// A `circuitBreaker:` line of valid and invalid values; `maxRetries` only where the service
/// has retries to bound (HTTP).
fn breaker_line(g: &mut Gen, with_retries: bool) -> String {
    let max_connections = g.pick(&["1", "1000000"], &["0", "4294967295"]);
    let max_pending = g.pick(&["1", "1000000"], &["1000001"]);
    let max_requests = g.pick(&["1", "1000000"], &["0"]);
    let max_retries =
        if with_retries { format!("maxRetries: {}, ", g.pick(&["0", "1000000"], &["1000001"])) } else { String::new() };
    format!(
        "circuitBreaker: {{maxConnections: {max_connections}, maxPendingRequests: {max_pending}, \
         maxRequests: {max_requests}, {max_retries}failureRateThreshold: {}, slowCallDuration: {}, window: {}, \
         minimumCalls: 1, openDuration: {}, halfOpenCalls: {}}}",
        g.pick(&["1", "100"], &["0", "101"]),
        g.pick(&["1ms", "24h"], &["24h1ms"]),
        g.pick(&["1", "10000"], &["0", "10001"]),
        g.pick(&["1ms", "24h"], &["0s", "24h1ms", U64_MAX_SECS]),
        g.pick(&["1", "1000"], &["1001"]),
    )
}

/// An `outlierDetection:` line of valid and invalid values.
fn outlier_line(g: &mut Gen) -> String {
    format!(
        "outlierDetection: {{consecutive5xx: {}, consecutiveGatewayErrors: {}, failurePercentageThreshold: {}, \
         failurePercentageMinimumRequests: {}, interval: {}, baseEjectionTime: {}, maxEjectionTime: {}, \
         maxEjectionPercent: {}}}",
        g.pick(&["0", "1", "4294967295"], &[]),
        g.pick(&["0", "1", "4294967295"], &[]),
        g.pick(&["0", "1", "100"], &["101"]),
        g.pick(&["0", "4294967295"], &[]),
        g.pick(&["1ms", "1h"], &["1h1ms"]),
        g.pick(&["1ms", "24h"], &["0s"]),
        g.pick(&["24h"], &["24h1ms"]),
        g.pick(&["0", "100"], &["101", "4294967295"]),
    )
}

fn generated_policy(g: &mut Gen) -> String {
    let mut s =
        String::from("apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: x}\nspec:\n  service: x\n");
    let line = |s: &mut String, l: String| {
        s.push_str("  ");
        s.push_str(&l);
        s.push('\n');
    };
    line(&mut s, format!("connectTimeout: {}", g.pick(&["1ms", "5m", "1s"], &["0s", "5m1ms"])));
    let long_backoff = g.bool();
    // With a long backoff the request timeout is what ends a failing request.
    let timeout = if long_backoff {
        g.pick(&["1ms", "2s"], &["0s", "24h1ms"])
    } else {
        g.pick(&["1ms", "2s", "24h"], &["0s", "24h1ms", "87660000h", U64_MAX_SECS])
    };
    if g.bool() || long_backoff {
        line(&mut s, format!("timeout: {timeout}"));
    }
    if g.bool() {
        line(&mut s, format!("idleTimeout: {}", g.pick(&["1ms", "168h", "1s"], &["0s", "168h1ms", U64_MAX_SECS])));
    }
    if g.bool() {
        let backoff = if long_backoff { g.pick(&["1h"], &["1h1ms", "0s"]) } else { g.pick(&["1ms", "5ms"], &[]) };
        let attempts = g.pick(&["0", "1", "10"], &["11", "4294967295"]);
        let per_try = g.pick(&["1ms", "2s"], &["0s", "24h1ms", U64_MAX_SECS]);
        let ratio = g.pick(&["0", "1"], &["1.5", "1e308"]);
        let min = g.pick(&["0", "4294967295"], &[]);
        let window = g.pick(&["1ms", "1h"], &["0s", "1h1ms"]);
        line(
            &mut s,
            format!(
                "retries: {{attempts: {attempts}, perTryTimeout: {per_try}, retryOn: [5xx, reset, gateway-error, \
                 connect-failure], backoff: {{base: {backoff}, max: {backoff}}}, budget: {{ratio: {ratio}, \
                 minPerSecond: {min}, window: {window}}}}}",
            ),
        );
    }
    if g.bool() {
        line(&mut s, breaker_line(g, true));
    }
    if g.bool() {
        line(&mut s, outlier_line(g));
    }
    if g.bool() {
        // A delay that is injected is short; a long one is never injected.
        let delay = g.pick(
            &["{percent: 100, duration: 1ms}", "{percent: 0, duration: 1h}"],
            &["{percent: 0.0001, duration: 1h1ms}"],
        );
        let abort = g.pick(&["0", "0.0001", "100"], &["100.0001", "1e308"]);
        let status = g.pick(&["200", "599"], &["600"]);
        line(&mut s, format!("faults: {{delay: {delay}, abort: {{percent: {abort}, status: {status}}}}}"));
    }
    s
}

/// A TrafficPolicy for tcp service `t` with every field a tcp service may have drawn from its
/// extremes — the connect timeout, the idle timeout, the thresholds, the breaker's state
/// machine (counting connect failures) and outlier detection — so the opaque TCP path's
/// deadlines and counters see them too. The spoilt field, when there is one, may also be one
/// that is HTTP only (a request timeout, retries), which the validator refuses for tcp.
fn generated_tcp_policy(g: &mut Gen) -> String {
    let mut s =
        String::from("apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: t}\nspec:\n  service: t\n");
    let line = |s: &mut String, l: String| {
        s.push_str("  ");
        s.push_str(&l);
        s.push('\n');
    };
    line(&mut s, format!("connectTimeout: {}", g.pick(&["1ms", "5m", "1s"], &["0s", "5m1ms", U64_MAX_SECS])));
    if g.bool() {
        line(&mut s, format!("idleTimeout: {}", g.pick(&["1ms", "168h", "1s"], &["0s", "168h1ms", U64_MAX_SECS])));
    }
    let http_only =
        g.pick(&[""], &["timeout: 1s", "retries: {attempts: 1}", "faults: {abort: {percent: 1, status: 503}}"]);
    if !http_only.is_empty() {
        line(&mut s, http_only.to_string());
    }
    if g.bool() {
        line(&mut s, breaker_line(g, false));
    }
    if g.bool() {
        line(&mut s, outlier_line(g));
    }
    s
}

/// One connection through the proxy's opaque TCP path to `cluster` (as the outbound listener
/// hands over a connection whose original destination is a tcp service): bytes sent, the
/// client's half-close, and what came back — the echo (and the echo server's line after the
/// half-close), or nothing when the connect failed or
/// a limit refused it. Bounded by the test deadline: no drawn value may hang it.
async fn tcp_through(ctx: &Arc<Outbound>, cluster: &Arc<outrider_proxy::state::Cluster>) -> Vec<u8> {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, down) = tokio::join!(TcpStream::connect(front.local_addr().unwrap()), front.accept());
    let (mut client, (down, peer)) = (client.unwrap(), down.unwrap());
    let (ctx, cluster) = (ctx.clone(), cluster.clone());
    let task = tokio::spawn(async move { outrider_proxy::outbound::tcp::to_cluster(&ctx, down, peer, &cluster).await });
    wait::within("a connection through the tcp path ends", async {
        let _ = client.write_all(b"ping").await;
        let _ = client.shutdown().await;
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        task.await.unwrap();
        got
    })
    .await
}

/// The outbound context over `proxy`'s config store: the one a listener's connections share.
fn outbound_over(proxy: &ProxyHarness) -> Arc<Outbound> {
    Arc::new(Outbound {
        store: proxy.store.clone(),
        recorder: Arc::new(Recorder {
            metrics: outrider_proxy::telemetry::metrics::Metrics::new(),
            access_log: false,
            access_log_sample: 1.0,
            tracer: None,
            workload: None,
        }),
        server: outrider_proxy::http::server::HttpServer::new(&outrider_proxy::http::server::ServerLimits::default()),
        socket: Default::default(),
        mesh: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_policies_are_rejected_by_field_or_served() {
    count_panics();
    let switch = Switch::new();
    let up = upstream::http1().name("x").switch(&switch).start().await;
    let echo = upstream::tcp_echo().start().await;
    let service_yaml = service("x").endpoint(up.addr).yaml();
    // A tcp service whose connects half fail (a closed port), so its breaker and outlier
    // detection run as well.
    let tcp_yaml = service("t")
        .protocol("tcp")
        .port(5432)
        .address("127.100.0.9")
        .endpoint(echo.addr)
        .endpoint(upstream::closed_port())
        .yaml();
    let proxy = ProxyHarness::start(&docs(&[service_yaml.clone(), tcp_yaml.clone()])).await;
    let ctx = outbound_over(&proxy);
    // Some tries fail, so retries, breakers and outlier detection all run.
    switch.fail_rate(0.3);
    let (mut served, mut rejected, mut echoed) = (0, 0, 0);
    for seed in 0..150u64 {
        let policy = generated_policy(&mut Gen::new(seed));
        let tcp_policy = generated_tcp_policy(&mut Gen::new(seed + 1_000_000));
        let yaml = docs(&[service_yaml.clone(), policy.clone(), tcp_yaml.clone(), tcp_policy.clone()]);
        let policy = format!("{policy}---\n{tcp_policy}");
        let set = match outrider_xds::load_str("policy.yaml", &yaml) {
            Err(errors) => {
                // Out of range: each error names its field and what is allowed.
                for e in &errors {
                    let field = e.field.as_deref().unwrap_or("");
                    assert!(field.starts_with("spec."), "seed {seed}: {e}\n{policy}");
                    // `policy.yaml:LINE:COL: document 2 (TrafficPolicy/x): spec.…`
                    let text = e.to_string();
                    let (position, rest) = text.split_once(": ").unwrap_or_else(|| panic!("{e}"));
                    let mut parts = position.split(':');
                    assert_eq!(parts.next(), Some("policy.yaml"), "{e}");
                    assert!(parts.all(|n| n.parse::<u32>().is_ok()), "line and column: {e}");
                    assert!(
                        rest.starts_with("document 2 (TrafficPolicy/x): spec.")
                            || rest.starts_with("document 4 (TrafficPolicy/t): spec."),
                        "{e}"
                    );
                }
                rejected += 1;
                continue;
            }
            Ok(set) => set,
        };
        let resources = outrider_xds::translate(&set);
        let (snapshot, nacked) = Builder::new().build(&resources);
        assert!(nacked.is_empty(), "seed {seed}: the proxy refused a valid policy: {nacked:?}\n{policy}");
        proxy.store.apply(snapshot);
        for i in 0..2 {
            let r = proxy.get(&format!("http://x:8080/{seed}/{i}")).await;
            assert_sane(&r, &format!("seed {seed}\n{policy}"));
        }
        let tcp = proxy.store.load().clusters.values().find(|c| &*c.service == "t").unwrap().clone();
        for _ in 0..3 {
            let got = tcp_through(&ctx, &tcp).await;
            // The echo server adds a line after the client's half-close.
            let text = String::from_utf8_lossy(&got);
            assert!(
                got.is_empty() || text.starts_with("ping"),
                "seed {seed}: the echo or a close, got {text:?}\n{policy}"
            );
            echoed += usize::from(text.starts_with("ping"));
        }
        served += 1;
    }
    assert!(served > 10 && rejected > 10, "both kinds were generated: {served} served, {rejected} rejected");
    eprintln!("{served} served, {rejected} rejected, {echoed} tcp connections echoed");
    assert!(echoed > 0, "connections went through the tcp path");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic happened in the proxy");
}

// ---------------------------------------------------------------- Envoy resources

const BASE: &str = "  timeout: 2s\n  idleTimeout: 1s\n  retries: {attempts: 2, perTryTimeout: 1s, retryOn: [5xx, reset], backoff: {base: 1ms, max: 5ms}}\n  circuitBreaker: {failureRateThreshold: 90, window: 20, minimumCalls: 10, openDuration: 1s, slowCallDuration: 1s}\n  outlierDetection: {consecutive5xx: 5, failurePercentageThreshold: 90, interval: 1s}\n  faults: {delay: {percent: 0, duration: 1s}}\n";

/// Durations as any xDS server may send them.
fn durations() -> Vec<(PDuration, &'static str)> {
    let d = |seconds, nanos| PDuration { seconds, nanos };
    vec![
        (d(0, 0), "0"),
        (d(0, 1), "1ns"),
        (d(4_294_967, 295_000_000), "u32::MAX ms"),
        (d(24 * 3600, 0), "the policy's largest timeout"),
        (d(315_576_000_000, 999_999_999), "Envoy's largest"),
        (d(315_576_000_001, 0), "past Envoy's largest"),
        (d(i64::MAX, 0), "i64::MAX s"),
        (d(1, 1_000_000_000), "nanos out of range"),
        (d(-1, 0), "negative"),
    ]
}

const COUNTS: [u32; 4] = [0, 1, 100, u32::MAX];

fn action(res: &mut Resources) -> &mut RouteAction {
    let vh = res.routes[0].virtual_hosts.iter_mut().find(|v| v.name == "x").unwrap();
    match vh.routes[0].action.as_mut().unwrap() {
        route::Action::Route(a) => a,
        _ => panic!("a route action"),
    }
}

fn cluster(res: &mut Resources) -> &mut Cluster {
    res.clusters.iter_mut().find(|c| c.name.ends_with("||x")).unwrap()
}

fn resilience(res: &mut Resources, edit: impl FnOnce(&mut Resilience)) {
    let any = cluster(res).typed_extension_protocol_options.get_mut(names::RESILIENCE_KEY).unwrap();
    let mut r = Resilience::decode(any.value.as_slice()).unwrap();
    edit(&mut r);
    any.value = r.encode_to_vec();
}

fn fault(res: &mut Resources, edit: impl FnOnce(&mut HttpFault)) {
    let vh = res.routes[0].virtual_hosts.iter_mut().find(|v| v.name == "x").unwrap();
    let any: &mut Any = vh.routes[0].typed_per_filter_config.get_mut(names::FAULT_FILTER).unwrap();
    let mut f = HttpFault::decode(any.value.as_slice()).unwrap();
    edit(&mut f);
    any.value = f.encode_to_vec();
}

type Edit = Box<dyn Fn(&mut Resources)>;
type DurationEdit = Box<dyn Fn(&mut Resources, Option<PDuration>)>;

/// (what, the word a NACK must name, the edit), for every field and every extreme.
fn mutations() -> Vec<(String, &'static str, Edit)> {
    let mut out: Vec<(String, &'static str, Edit)> = Vec::new();
    for (d, label) in durations() {
        let v = Some(d);
        let mut push = |field: &'static str, word: &'static str, f: DurationEdit| {
            out.push((format!("{field} = {label}"), word, Box::new(move |r| f(r, v))));
        };
        push("route timeout", "route timeout", Box::new(|r, v| action(r).timeout = v));
        push("route idle_timeout", "idle_timeout", Box::new(|r, v| action(r).idle_timeout = v));
        push(
            "per_try_timeout",
            "per_try_timeout",
            Box::new(|r, v| action(r).retry_policy.as_mut().unwrap().per_try_timeout = v),
        );
        push(
            "backoff base",
            "base_interval",
            Box::new(|r, v| {
                let rp = action(r).retry_policy.as_mut().unwrap();
                rp.retry_back_off.as_mut().unwrap().base_interval = v;
                rp.retry_back_off.as_mut().unwrap().max_interval = None;
            }),
        );
        push(
            "backoff max",
            "max_interval",
            Box::new(|r, v| action(r).retry_policy.as_mut().unwrap().retry_back_off.as_mut().unwrap().max_interval = v),
        );
        push("connect_timeout", "connect_timeout", Box::new(|r, v| cluster(r).connect_timeout = v));
        push(
            "outlier interval",
            "interval",
            Box::new(|r, v| cluster(r).outlier_detection.as_mut().unwrap().interval = v),
        );
        push(
            "base_ejection_time",
            "base_ejection_time",
            Box::new(|r, v| cluster(r).outlier_detection.as_mut().unwrap().base_ejection_time = v),
        );
        push(
            "max_ejection_time",
            "max_ejection_time",
            Box::new(|r, v| cluster(r).outlier_detection.as_mut().unwrap().max_ejection_time = v),
        );
        push("upstream idle", "upstream_idle_timeout", Box::new(|r, v| resilience(r, |x| x.upstream_idle_timeout = v)));
        push(
            "open_duration",
            "open_duration",
            Box::new(|r, v| resilience(r, |x| x.breaker.as_mut().unwrap().open_duration = v)),
        );
        push(
            "slow_call_duration",
            "slow_call_duration",
            Box::new(|r, v| resilience(r, |x| x.breaker.as_mut().unwrap().slow_call_duration = v)),
        );
        push(
            "budget window",
            "window",
            Box::new(|r, v| resilience(r, |x| x.retry_budget.as_mut().unwrap().window = v)),
        );
        push(
            "fault delay",
            "fixed_delay",
            Box::new(|r, v| {
                fault(r, |f| {
                    if let Some(fault_delay::FaultDelaySecifier::FixedDelay(d)) =
                        f.delay.as_mut().unwrap().fault_delay_secifier.as_mut()
                    {
                        *d = v.unwrap();
                    }
                })
            }),
        );
    }
    for n in COUNTS {
        let u = Some(UInt32Value { value: n });
        let mut push = |field: &'static str, word: &'static str, f: Box<dyn Fn(&mut Resources)>| {
            out.push((format!("{field} = {n}"), word, f));
        };
        push("num_retries", "num_retries", Box::new(move |r| action(r).retry_policy.as_mut().unwrap().num_retries = u));
        for which in 0..4 {
            push(
                "thresholds",
                "threshold",
                Box::new(move |r| {
                    let t = &mut cluster(r).circuit_breakers.as_mut().unwrap().thresholds[0];
                    *[&mut t.max_connections, &mut t.max_pending_requests, &mut t.max_requests, &mut t.max_retries]
                        [which] = u;
                }),
            );
        }
        push(
            "consecutive_5xx",
            "consecutive_5xx",
            Box::new(move |r| cluster(r).outlier_detection.as_mut().unwrap().consecutive_5xx = u),
        );
        push(
            "max_ejection_percent",
            "max_ejection_percent",
            Box::new(move |r| cluster(r).outlier_detection.as_mut().unwrap().max_ejection_percent = u),
        );
        push(
            "failure_percentage_threshold",
            "failure_percentage_threshold",
            Box::new(move |r| cluster(r).outlier_detection.as_mut().unwrap().failure_percentage_threshold = u),
        );
        push("breaker window", "window", Box::new(move |r| resilience(r, |x| x.breaker.as_mut().unwrap().window = n)));
        push(
            "half_open_calls",
            "half_open_calls",
            Box::new(move |r| resilience(r, |x| x.breaker.as_mut().unwrap().half_open_calls = n)),
        );
        push(
            "failure_rate_threshold",
            "failure_rate",
            Box::new(move |r| resilience(r, |x| x.breaker.as_mut().unwrap().failure_rate_threshold = n)),
        );
        push(
            "budget min_per_second",
            "min_per_second",
            Box::new(move |r| resilience(r, |x| x.retry_budget.as_mut().unwrap().min_per_second = n)),
        );
        push(
            "fault delay percentage",
            "percentage",
            Box::new(move |r| {
                fault(r, |f| {
                    let d = f.delay.as_mut().unwrap();
                    // Injected, but only for a short delay.
                    d.percentage.as_mut().unwrap().numerator = n;
                    d.fault_delay_secifier =
                        Some(fault_delay::FaultDelaySecifier::FixedDelay(PDuration { seconds: 0, nanos: 1000 }));
                })
            }),
        );
        push(
            "endpoint weight",
            "weight",
            Box::new(move |r| {
                for e in &mut r.endpoints {
                    for l in &mut e.endpoints {
                        for ep in &mut l.lb_endpoints {
                            ep.load_balancing_weight = Some(UInt32Value { value: n.max(1) });
                        }
                    }
                }
            }),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_resources_with_extreme_values_are_nacked_by_field_or_served() {
    count_panics();
    let switch = Switch::new();
    let up = upstream::http1().name("x").switch(&switch).start().await;
    let service_yaml = service("x").endpoint(up.addr).endpoint(upstream::closed_port()).yaml();
    let policy =
        format!("apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {{name: x}}\nspec:\n  service: x\n{BASE}");
    let yaml = docs(&[service_yaml, policy]);
    let proxy = ProxyHarness::start(&yaml).await;
    let base = outrider_xds::translate(&outrider_xds::load_str("policy.yaml", &yaml).unwrap());
    switch.fail_rate(0.3);
    let builder = Builder::new();
    let (mut served, mut nacked) = (0, 0);
    let all = mutations();
    // Each field alone at each extreme ...
    let mut rounds: Vec<Vec<usize>> = (0..all.len()).map(|i| vec![i]).collect();
    // ... and random mixes of several at once.
    let mut rng = fastrand::Rng::with_seed(7);
    rounds.extend((0..60).map(|_| (0..6).map(|_| rng.usize(..all.len())).collect()));
    for picks in rounds {
        let mut res = base.clone();
        let what: Vec<&str> = picks.iter().map(|&i| all[i].0.as_str()).collect();
        for &i in &picks {
            (all[i].2)(&mut res);
        }
        let (snapshot, rejected) = builder.build(&res);
        if !rejected.is_empty() {
            // NACKed: the message names one of the fields that was changed.
            let text: String = rejected.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ");
            assert!(picks.iter().any(|&i| text.contains(all[i].1)), "{what:?}: {text}");
            nacked += 1;
            continue;
        }
        proxy.store.apply(snapshot);
        for n in 0..3 {
            let r = proxy.get(&format!("http://x:8080/{n}")).await;
            assert_sane(&r, &format!("{what:?}"));
        }
        served += 1;
    }
    assert!(served > 50 && nacked > 20, "{served} served, {nacked} NACKed");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic happened in the proxy");
}
