use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Body as _;
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::{Log, Seen, Upstream, X_UPSTREAM};

/// Which HTTP the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
}

/// Builds an echoing HTTP upstream.
#[derive(Clone, Debug)]
pub struct HttpBuilder {
    protocol: Protocol,
    name: String,
    status: StatusCode,
    delay: Duration,
    upgrades: bool,
    gate: Option<Gate>,
    /// Holds only retries (`x-outrider-attempt` other than 1).
    retry_gate: Option<Gate>,
    /// Responses send their first chunk, then wait for this gate before the last.
    body_gate: Option<Gate>,
    switch: Option<Switch>,
}

/// Changes an upstream's answers while a test runs: fail the next N requests,
/// or answer every request with another status from now on.
#[derive(Clone, Debug, Default)]
pub struct Switch(Arc<SwitchState>);

#[derive(Debug, Default)]
struct SwitchState {
    fail_next: std::sync::atomic::AtomicU32,
    status: std::sync::atomic::AtomicU32,
    retry_after: std::sync::atomic::AtomicU32,
    /// Per mille of requests answered 503 at random.
    fail_per_mille: std::sync::atomic::AtomicU32,
    /// The next N requests get a trailers-only gRPC UNAVAILABLE.
    grpc_unavailable_next: std::sync::atomic::AtomicU32,
    /// The next N requests get a 503 before their body is read.
    fail_early_next: std::sync::atomic::AtomicU32,
}

impl Switch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer the next `n` requests with 503.
    pub fn fail_next(&self, n: u32) {
        self.0.fail_next.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answer every request with `status` (0: back to the builder's status).
    pub fn set_status(&self, status: u16) {
        self.0.status.store(u32::from(status), std::sync::atomic::Ordering::SeqCst);
    }

    /// Send `Retry-After: secs` with the 503s of `fail_next`.
    pub fn retry_after(&self, secs: u32) {
        self.0.retry_after.store(secs, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answer this fraction (0.0..=1.0) of requests with 503, at random.
    pub fn fail_rate(&self, rate: f64) {
        self.0.fail_per_mille.store((rate * 1000.0) as u32, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answer the next `n` requests with a trailers-only gRPC UNAVAILABLE.
    pub fn grpc_unavailable_next(&self, n: u32) {
        self.0.grpc_unavailable_next.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answer the next `n` requests with 503 at once, without reading their
    /// bodies (as a server that rejects a request by its headers does).
    pub fn fail_early_next(&self, n: u32) {
        self.0.fail_early_next.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn take_early(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.0.fail_early_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    pub(crate) fn take_grpc_unavailable(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.0.grpc_unavailable_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    /// The status this request gets, if the switch overrides it.
    fn take(&self) -> Option<(StatusCode, Option<u32>)> {
        use std::sync::atomic::Ordering;
        let pm = self.0.fail_per_mille.load(Ordering::SeqCst);
        if pm > 0 && rand_per_mille() < pm {
            return Some((StatusCode::SERVICE_UNAVAILABLE, None));
        }
        let failing = self.0.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if failing {
            let ra = self.0.retry_after.load(Ordering::SeqCst);
            return Some((StatusCode::SERVICE_UNAVAILABLE, (ra > 0).then_some(ra)));
        }
        match self.0.status.load(Ordering::SeqCst) {
            0 => None,
            s => StatusCode::from_u16(s as u16).ok().map(|s| (s, None)),
        }
    }
}

/// Holds requests at the upstream until opened (after their bodies were read and
/// recorded), so a test controls exactly when in-flight requests finish.
#[derive(Clone, Debug)]
pub struct Gate(Arc<Semaphore>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(0)))
    }
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Let every held and future request through.
    pub fn open(&self) {
        self.0.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    async fn pass(&self) {
        if let Ok(p) = self.0.acquire().await {
            p.forget();
        }
    }
}

/// The JSON body every HTTP upstream answers with.
#[derive(Clone, Debug)]
pub struct Echo {
    pub upstream: String,
    pub method: String,
    pub path: String,
    pub version: String,
    pub body: String,
}

impl Echo {
    /// Parse an echo body; panics with the body if it is not one.
    pub fn parse(body: &[u8]) -> Self {
        let v: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("not an upstream echo ({e}): {}", String::from_utf8_lossy(body)));
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Self { upstream: s("upstream"), method: s("method"), path: s("path"), version: s("version"), body: s("body") }
    }
}

impl HttpBuilder {
    pub(crate) fn new(protocol: Protocol) -> Self {
        let name = match protocol {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "h2",
        };
        Self {
            protocol,
            name: name.into(),
            status: StatusCode::OK,
            delay: Duration::ZERO,
            upgrades: false,
            gate: None,
            retry_gate: None,
            body_gate: None,
            switch: None,
        }
    }

    /// The name sent in `x-upstream` and in the echo body.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Status of every response (default 200).
    pub fn status(mut self, status: u16) -> Self {
        self.status = StatusCode::from_u16(status).expect("a valid status code");
        self
    }

    /// Wait this long (after reading the request body) before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Hold every request until `gate` is opened.
    pub fn gate(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }

    /// Hold retries (requests whose `x-outrider-attempt` is not 1) until `gate`
    /// is opened; first tries are answered at once.
    pub fn gate_retries(mut self, gate: &Gate) -> Self {
        self.retry_gate = Some(gate.clone());
        self
    }

    /// Stream each response: headers and the echo at once, then hold the end of
    /// the body (a last chunk, `"\n"`) until `gate` is opened — a long stream.
    pub fn hold_body(mut self, gate: &Gate) -> Self {
        self.body_gate = Some(gate.clone());
        self
    }

    /// Let `switch` change the answers at run time.
    pub fn switch(mut self, switch: &Switch) -> Self {
        self.switch = Some(switch.clone());
        self
    }

    /// Accept HTTP/1.1 upgrades (see [`super::websocket`]).
    pub fn upgrades(mut self, on: bool) -> Self {
        self.upgrades = on;
        self
    }

    pub async fn start(self) -> Upstream {
        let cfg = Arc::new(self);
        super::serve(cfg.name.clone(), move |stream, log| {
            let cfg = cfg.clone();
            async move {
                let svc_cfg = cfg.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let cfg = svc_cfg.clone();
                    let log = log.clone();
                    async move {
                        let resp = respond(&cfg, &log, req).await;
                        Ok::<_, Infallible>(match &cfg.body_gate {
                            None => resp.map(BodyExt::boxed),
                            Some(gate) => resp.map(|echo| held(echo, gate.clone())),
                        })
                    }
                });
                let io = TokioIo::new(stream);
                let _ = match cfg.protocol {
                    Protocol::Http1 => {
                        hyper::server::conn::http1::Builder::new().serve_connection(io, svc).with_upgrades().await
                    }
                    Protocol::Http2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await
                    }
                };
            }
        })
        .await
    }
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "?",
    }
}

async fn respond(cfg: &HttpBuilder, log: &Log, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let upgrade = cfg.upgrades && req.headers().contains_key(header::UPGRADE);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    if cfg.switch.as_ref().is_some_and(Switch::take_early) {
        // Recorded as seen, with none of its body read.
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        log.record(Seen {
            method: parts.method,
            path,
            version: parts.version,
            headers: parts.headers,
            body: Bytes::new(),
            trailers: None,
            complete: false,
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut()
            .insert(X_UPSTREAM, HeaderValue::from_str(&cfg.name).expect("upstream name is a header value"));
        drop(body);
        return resp;
    }
    let (body, trailers, complete) = match body.collect().await {
        Ok(b) => {
            let trailers = b.trailers().cloned();
            (b.to_bytes(), trailers, true)
        }
        Err(_) => (Bytes::new(), None, false),
    };
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    log.record(Seen {
        method: parts.method.clone(),
        path: path.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
        trailers,
        complete,
    });
    if let Some(gate) = &cfg.retry_gate
        && parts.headers.get("x-outrider-attempt").is_some_and(|a| a != "1")
    {
        gate.pass().await;
    }
    if let Some(gate) = &cfg.gate {
        gate.pass().await;
    }
    if !cfg.delay.is_zero() {
        tokio::time::sleep(cfg.delay).await;
    }
    // `?delay_ms=N` (anywhere in the query): this request waits N ms more.
    if let Some(ms) = parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")).and_then(|v| v.parse::<u64>().ok()))
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let name = HeaderValue::from_str(&cfg.name).expect("upstream name is a header value");
    if let Some(on_upgrade) = on_upgrade {
        let greeting = format!("hello from {}\n", cfg.name);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            if io.write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = io.shutdown().await;
        });
        let proto = parts.headers.get(header::UPGRADE).cloned().unwrap_or(HeaderValue::from_static("websocket"));
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(header::UPGRADE, proto);
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        resp.headers_mut().insert(X_UPSTREAM, name);
        return resp;
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .keys()
        .map(|k| {
            let all: Vec<&str> = parts.headers.get_all(k).iter().filter_map(|v| v.to_str().ok()).collect();
            (k.as_str().to_string(), json!(all.join(", ")))
        })
        .collect();
    let echo = json!({
        "upstream": cfg.name,
        "method": parts.method.as_str(),
        "path": path,
        "version": version_str(parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = Response::new(Full::new(Bytes::from(echo.to_string())));
    *resp.status_mut() = cfg.status;
    if cfg.switch.as_ref().is_some_and(Switch::take_grpc_unavailable) {
        let mut resp = Response::new(Full::new(Bytes::new()));
        let h = resp.headers_mut();
        h.insert(X_UPSTREAM, name);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("14"));
        h.insert("grpc-message", HeaderValue::from_static("try again"));
        return resp;
    }
    if let Some((status, retry_after)) = cfg.switch.as_ref().and_then(Switch::take) {
        *resp.status_mut() = status;
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }
    let h = resp.headers_mut();
    h.insert(X_UPSTREAM, name);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if parts.method == http::Method::HEAD {
        // A HEAD response has the GET response's headers and no content (RFC 9110 §9.3.2);
        // hyper's HTTP/1.1 server drops the body itself, its HTTP/2 server does not.
        let len = resp.body().size_hint().exact().unwrap_or(0);
        let (mut head, _) = resp.into_parts();
        head.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        return Response::from_parts(head, Full::new(Bytes::new()));
    }
    resp
}

/// `echo`'s bytes, then (once `gate` opens) a last chunk `"\n"`.
fn held(echo: Full<Bytes>, gate: Gate) -> BoxBody<Bytes, Infallible> {
    use futures_util::StreamExt;
    let first = futures_util::stream::once(async move {
        let bytes = echo.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        Ok::<_, Infallible>(Frame::data(bytes))
    });
    let last = futures_util::stream::once(async move {
        gate.pass().await;
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\n")))
    });
    BoxBody::new(StreamBody::new(first.chain(last)))
}

/// A random number in 0..1000 (std only: hash of a counter and the time).
fn rand_per_mille() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    (h.finish() % 1000) as u32
}
