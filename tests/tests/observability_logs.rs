//! The access log of the real binary: one JSON line per request with trace id,
//! timings, bytes, endpoint, attempts and local-reply reason; sampling of
//! successful requests; text format on request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use outrider_tests::binary::{ProxyProcess, ephemeral_args, proxy_bin, proxy_command};
use outrider_tests::client;
use outrider_tests::harness::TempDir;
use outrider_tests::policy::{docs, service};
use outrider_tests::upstream::{self, Switch};
use outrider_tests::wait::wait_for;
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn access_lines(p: &ProxyProcess) -> Vec<Value> {
    p.stdout()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "outrider::access")
        .collect()
}

fn policy(up: &upstream::Upstream) -> String {
    docs(&[
        service("echo").endpoint(up.addr).yaml(),
        "apiVersion: outrider.io/v1\nkind: TrafficPolicy\nmetadata: {name: echo}\nspec:\n  service: echo\n  \
         retries:\n    attempts: 2\n    retryOn: [5xx]\n    backoff: {base: 1ms, max: 2ms}\n"
            .to_string(),
    ])
}

async fn start(dir: &TempDir, policy: &str, args: &[&str], env: &[(&str, &str)]) -> ProxyProcess {
    let path = dir.write("policy.yaml", policy);
    let mut cmd = proxy_command(&path);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    ProxyProcess::spawn(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_json_line_with_trace_timings_bytes_and_attempts() {
    let switch = Switch::new();
    let up = upstream::http1().name("echo").switch(&switch).start().await;
    let dir = TempDir::new("access-log");
    // Tracing on (to a collector that is not there): the line names the span's trace.
    let dead = upstream::closed_port();
    let proxy = start(&dir, &policy(&up), &[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{dead}"))]).await;
    let c = client::http1(proxy.addrs.outbound);

    switch.fail_next(1);
    let mut req = client::get("http://echo:8080/orders?x=1");
    req.headers_mut().insert("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01").parse().unwrap());
    let reply = client::send(&c, req).await;
    reply.assert_status(200);
    client::send(&c, client::get("http://nowhere:8080/")).await.assert_status(404);

    let lines = wait_for("two access-log lines", || async {
        let l = access_lines(&proxy);
        (l.len() >= 2).then_some(l)
    })
    .await;
    let ok = lines.iter().find(|l| l["status"] == 200).expect("the 200's line");
    assert_eq!(ok["kind"], "http");
    assert_eq!(ok["direction"], "outbound");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["service"], "echo");
    assert_eq!(ok["route"], "default");
    assert_eq!(ok["trace_id"], TRACE, "the caller's trace: {ok}");
    assert_eq!(ok["attempts"], 2, "a 503 and a retry: {ok}");
    assert_eq!(ok["upstream"], up.endpoint());
    assert_eq!(ok["local_reply"], "");
    assert_eq!(ok["peer_identity"], "", "empty until mTLS");
    assert_eq!(ok["response_bytes"].as_u64(), Some(reply.body.len() as u64), "{ok}");
    assert_eq!(ok["complete"], true);
    assert!(ok["request_id"].as_str().is_some_and(|s| s.len() == 36), "{ok}");
    let first_byte = ok["first_byte_ms"].as_f64().expect("first_byte_ms");
    let total = ok["duration_ms"].as_f64().expect("duration_ms");
    assert!(first_byte > 0.0 && total >= first_byte, "{ok}");
    // The retry opened a second connection (the 503's went back to the pool, so
    // either way the field is a number when present).
    assert!(ok.get("connect_ms").is_none_or(|v| v.as_f64().is_some()), "{ok}");

    let miss = lines.iter().find(|l| l["status"] == 404).expect("the 404's line");
    assert_eq!(miss["local_reply"], "no-route");
    assert_eq!(miss["attempts"], 0);
    assert_eq!(miss["trace_id"].as_str().map(str::len), Some(32), "a new trace: {miss}");
    assert_ne!(miss["trace_id"], TRACE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_are_sampled_and_errors_always_logged() {
    let up = upstream::http1().name("echo").start().await;
    let dir = TempDir::new("access-log-sample");
    let proxy = start(&dir, &policy(&up), &["--access-log-sample", "0"], &[]).await;
    let c = client::http1(proxy.addrs.outbound);
    for i in 0..20 {
        client::send(&c, client::get(&format!("http://echo:8080/{i}"))).await.assert_status(200);
    }
    for _ in 0..3 {
        client::send(&c, client::get("http://nowhere:8080/")).await.assert_status(404);
    }
    let lines = wait_for("three error lines", || async {
        let l = access_lines(&proxy);
        (l.len() >= 3).then_some(l)
    })
    .await;
    // One more request after the errors flushes any late success line.
    client::send(&c, client::get("http://nowhere:8080/last")).await.assert_status(404);
    wait_for("the fourth error line", || async { (access_lines(&proxy).len() >= 4).then_some(()) }).await;
    let lines = if lines.len() >= 4 { lines } else { access_lines(&proxy) };
    assert!(lines.iter().all(|l| l["status"] == 404), "no success logged at sample 0: {lines:#?}");
    assert_eq!(lines.len(), 4);
    // Without a traceparent and with tracing off, there is no trace id.
    assert_eq!(lines[0]["trace_id"], "");
}

/// Only access-log lines from now on (`PUT /logging`): no other line can write out the pending
/// access-log lines before them, so what writes them is the flusher or the exit.
async fn only_access_lines(proxy: &ProxyProcess) {
    let admin = client::http1(proxy.addrs.admin);
    let req = client::request("PUT", "http://admin/logging?level=warn,outrider::access=info", "");
    client::send(&admin, req).await.assert_status(200);
}

/// Access-log lines are batched (one `write` per 32 KiB or per `--access-log-flush-interval`):
/// a few requests and then silence still get their lines, from the flusher alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_are_written_within_the_flush_interval_without_further_traffic() {
    let up = upstream::http1().name("echo").start().await;
    let dir = TempDir::new("access-log-interval");
    let proxy = start(&dir, &policy(&up), &["--access-log-flush-interval", "200ms"], &[]).await;
    only_access_lines(&proxy).await;
    for i in 0..3 {
        proxy.get(&format!("http://echo:8080/quiet/{i}")).await.assert_status(200);
    }
    let lines = wait_for("the three lines, written by the flusher", || async {
        let l: Vec<Value> = access_lines(&proxy)
            .into_iter()
            .filter(|l| l["path"].as_str().unwrap_or("").starts_with("/quiet/"))
            .collect();
        (l.len() >= 3).then_some(l)
    })
    .await;
    let paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/quiet/0", "/quiet/1", "/quiet/2"], "each once, in order");
}

/// SIGTERM: the proxy drains and exits, and writes every pending line first, even with an
/// interval that would not have come yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pending_access_line_is_written_before_a_drained_exit() {
    let up = upstream::http1().name("echo").start().await;
    let dir = TempDir::new("access-log-exit");
    let mut proxy = start(&dir, &policy(&up), &["--access-log-flush-interval", "1h"], &[]).await;
    only_access_lines(&proxy).await;
    const REQUESTS: usize = 25;
    for i in 0..REQUESTS {
        proxy.get(&format!("http://echo:8080/exit/{i}")).await.assert_status(200);
    }
    proxy.signal("TERM");
    assert!(proxy.wait().await.success(), "a drained exit: {}", proxy.stderr());
    let lines = wait_for("every request's line", || async {
        let l = access_lines(&proxy);
        (l.len() >= REQUESTS).then_some(l)
    })
    .await;
    let paths: Vec<String> = lines.iter().map(|l| l["path"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = (0..REQUESTS).map(|i| format!("/exit/{i}")).collect();
    assert_eq!(paths, expected, "one line per request, in order");
}

/// The proxy's own log lines are written at once, after the access-log lines logged before
/// them: stdout keeps the order in which lines were produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_line_comes_after_the_access_lines_logged_before_it() {
    let up = upstream::http1().name("echo").start().await;
    let dir = TempDir::new("access-log-order");
    let proxy = start(&dir, &policy(&up), &["--access-log-flush-interval", "1h"], &[]).await;
    proxy.get("http://echo:8080/before-reload").await.assert_status(200);
    // A changed policy file: "policy file reloaded" is logged at once.
    dir.write(
        "policy.yaml",
        &docs(&[service("echo").endpoint(up.addr).yaml(), service("other").endpoint(up.addr).yaml()]),
    );
    let lines = wait_for("the reload's log line", || async {
        let l = proxy.stdout();
        l.iter().any(|l| l.contains("policy file reloaded")).then_some(l)
    })
    .await;
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let access = at("/before-reload").expect("the access line, written with the log line after it");
    assert!(access < at("policy file reloaded").unwrap(), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_text_writes_text_lines() {
    let up = upstream::http1().name("echo").start().await;
    let dir = TempDir::new("access-log-text");
    let path = dir.write("policy.yaml", &policy(&up));
    let mut cmd = tokio::process::Command::new(proxy_bin());
    cmd.args(ephemeral_args(&path).into_iter().map(|a| if a == "json" { "text".to_string() } else { a }));
    let proxy = ProxyProcessText::spawn(cmd).await;
    let c = client::http1(proxy.outbound);
    client::send(&c, client::get("http://echo:8080/text")).await.assert_status(200);
    let line = wait_for("a text access-log line", || async {
        proxy.lines().into_iter().find(|l| l.contains("outrider::access") && l.contains("/text"))
    })
    .await;
    assert!(serde_json::from_str::<Value>(&line).is_err(), "not JSON: {line}");
    assert!(line.contains("status=200") && line.contains("service=\"echo\""), "{line}");
}

/// The binary with `--log-format text`: its `listening` line is text, so the
/// outbound address is read from `outbound=IP:PORT`.
struct ProxyProcessText {
    _child: tokio::process::Child,
    outbound: std::net::SocketAddr,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ProxyProcessText {
    async fn spawn(mut cmd: tokio::process::Command) -> Self {
        use tokio::io::AsyncBufReadExt;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .env("NO_COLOR", "1");
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut r = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                sink.lock().unwrap().push(strip_ansi(&l));
            }
        });
        let outbound = wait_for("the text `listening` line", || async {
            let l = lines.lock().unwrap().clone();
            l.iter().find(|l| l.contains("listening")).and_then(|l| {
                let rest = &l[l.find("outbound=")? + "outbound=".len()..];
                rest.split_whitespace().next()?.parse().ok()
            })
        })
        .await;
        Self { _child: child, outbound, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `--service` that names no Service is warned about when the config is applied, and again
/// at every change while it is still missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_not_in_the_config_is_warned_about_at_start_and_at_every_change() {
    let dir = TempDir::new("logs-missing-service");
    let up = upstream::http1().name("echo").start().await;
    let p = start(&dir, &docs(&[service("echo").endpoint(up.addr).yaml()]), &["--service", "reviwes"], &[]).await;
    // Positions of the warnings and of the "policy file reloaded" lines in the log.
    let lines = |p: &ProxyProcess, pick: &dyn Fn(&Value) -> bool| -> Vec<usize> {
        p.stdout()
            .iter()
            .enumerate()
            .filter_map(|(i, l)| serde_json::from_str::<Value>(l).ok().filter(|v| pick(v)).map(|_| i))
            .collect()
    };
    let warning = |v: &Value| {
        v["level"] == "WARN"
            && v["service"] == "reviwes"
            && v["message"].as_str().unwrap_or("").contains("--service names no Service")
    };
    let reloaded = |v: &Value| v["message"] == "policy file reloaded";
    wait_for("the warning at start", || async { (!lines(&p, &warning).is_empty()).then_some(()) }).await;
    // A change that still lacks it: warned again, after the reload.
    dir.write("policy.yaml", &docs(&[service("echo").port(8081).endpoint(up.addr).yaml()]));
    wait_for("a warning after the reload", || async {
        let reload = *lines(&p, &reloaded).first()?;
        lines(&p, &warning).iter().any(|w| *w > reload).then_some(())
    })
    .await;
}
