//! The demo's workloads: `reviews` (v1 healthy; v2 flaky, sometimes slow, breakable) and a
//! `frontend` that calls `reviews` — through its sidecar's outbound port in `outrider demo`,
//! or at plain `http://reviews:8080` redirected by iptables in `outrider demo-app` (containers).
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What a `reviews` workload answered (its raw success, before any retry).
#[derive(Debug, Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// A `reviews` workload.
#[derive(Debug)]
pub struct Reviews {
    pub version: &'static str,
    /// Share of calls answered 503 (percent), spread evenly: with 2, every 50th call. Random
    /// failures would now and then bunch up and open a breaker that watches a few calls, or fail
    /// the probe that should close it, and the demo's story would change from run to run.
    pub fail_percent: u64,
    /// Share of calls delayed by 150-400 ms (percent).
    pub slow_percent: u64,
    /// Broken: every call is a 503.
    pub broken: AtomicBool,
    pub counts: Counts,
    /// Calls so far (for the even spread of failures).
    calls: AtomicU64,
}

impl Reviews {
    pub fn new(version: &'static str, fail_percent: u64, slow_percent: u64) -> Arc<Self> {
        Arc::new(Self {
            version,
            fail_percent,
            slow_percent,
            broken: AtomicBool::new(false),
            counts: Counts::default(),
            calls: AtomicU64::new(0),
        })
    }

    /// Back from broken to its usual share of failures, counted afresh: the first failure comes
    /// a whole spread after healing (with 2 %, at the 50th call), never at the probe that should
    /// close the breaker the outage opened. Counted on from before the outage, the next failure
    /// could land on that probe (when about 50 calls had reached v2 by then: a run in ten), keep
    /// the breaker open for the rest of the demo, and change its story.
    pub fn heal(&self) {
        self.calls.store(0, Ordering::Relaxed);
        self.broken.store(false, Ordering::Relaxed);
    }

    async fn answer(&self) -> Response<Full<Bytes>> {
        if self.slow_percent > 0 && fastrand::u64(0..100) < self.slow_percent {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(150..400))).await;
        }
        // Call n (from 0) fails when the running share of failures, n × p / 100, passes a whole
        // number at it: exactly p % of the calls, as far apart as they can be.
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let due = (n + 1) * self.fail_percent / 100 > n * self.fail_percent / 100;
        let fail = self.broken.load(Ordering::Relaxed) || due;
        let (status, body) = if fail {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
            (StatusCode::SERVICE_UNAVAILABLE, format!("reviews {} unavailable\n", self.version))
        } else {
            self.counts.ok.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, format!("reviews {}: 5 stars\n", self.version))
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert("x-reviews-version", header::HeaderValue::from_static(self.version));
        resp
    }
}

/// Serve `handler` on `bind` (port 0: a fresh one); returns the bound address.
async fn serve<F, Fut>(bind: SocketAddr, handler: F) -> std::io::Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

/// Start a `reviews` workload on `bind`.
pub async fn start_reviews(app: Arc<Reviews>, bind: SocketAddr) -> std::io::Result<SocketAddr> {
    serve(bind, move |_req| {
        let app = app.clone();
        async move { app.answer().await }
    })
    .await
}

/// Start the `frontend` on `bind`: each call asks `reviews` at `upstream` (with `Host: host`,
/// else the URI's authority) and answers with its status and body.
pub async fn start_frontend(
    bind: SocketAddr,
    upstream: http::Uri,
    host: Option<&'static str>,
) -> std::io::Result<SocketAddr> {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    serve(bind, move |_req| {
        let client = client.clone();
        let uri = upstream.clone();
        async move {
            let mut req = Request::get(uri);
            if let Some(host) = host {
                req = req.header(header::HOST, host);
            }
            let req = req.body(Empty::new());
            let (status, body) = match req {
                Ok(req) => match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        (status, body)
                    }
                    Err(_) => (StatusCode::BAD_GATEWAY, Bytes::from_static(b"reviews unreachable\n")),
                },
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, Bytes::new()),
            };
            let mut resp = Response::new(Full::new(body));
            *resp.status_mut() = status;
            resp
        }
    })
    .await
}

/// `outrider demo-app`: one of the demo's workloads as a process of its own, for the demo's
/// mesh in containers (docker/demo.sh), where iptables sends its traffic through its sidecar.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AppCommand {
    /// A `reviews` workload: answers every request with `reviews VERSION: 5 stars`, or a 503.
    Reviews {
        /// Address to serve on.
        #[arg(long, default_value = "0.0.0.0:9080")]
        listen: SocketAddr,
        /// Version named in answers and in the `x-reviews-version` header.
        #[arg(long, default_value = "v1")]
        version: String,
        /// Share of calls answered 503 (percent, 0-100), spread evenly (5: every 20th call).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100))]
        fail_percent: u64,
        /// Share of calls delayed by 150-400 ms (percent, 0-100).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100))]
        slow_percent: u64,
    },
    /// The `frontend`: each request calls `--upstream` and answers with its status and body.
    Frontend {
        /// Address to serve on.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Where `reviews` is, as the application knows it (no proxy address).
        #[arg(long, default_value = "http://reviews:8080/reviews")]
        upstream: http::Uri,
    },
}

/// Run one workload until SIGTERM or Ctrl-C.
pub fn run(command: AppCommand) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outrider demo-app: cannot start a runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let started = match command {
            AppCommand::Reviews { listen, version, fail_percent, slow_percent } => {
                // Once per process: the workload keeps its version for its whole life.
                let version: &'static str = Box::leak(version.into_boxed_str());
                let app = Reviews::new(version, fail_percent, slow_percent);
                start_reviews(app, listen).await.map(|a| format!("reviews {version} listening on {a}"))
            }
            AppCommand::Frontend { listen, upstream } => {
                let shown = upstream.to_string();
                start_frontend(listen, upstream, None)
                    .await
                    .map(|a| format!("frontend listening on {a}, calling {shown}"))
            }
        };
        match started {
            Ok(line) => eprintln!("outrider demo-app: {line}"),
            Err(e) => {
                eprintln!("outrider demo-app: cannot listen: {e}");
                return std::process::ExitCode::from(1);
            }
        }
        // As PID 1 in a container, SIGTERM does nothing without a handler.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        std::process::ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_are_the_share_asked_for_and_never_bunch_up() {
        let app = Reviews::new("v2", 2, 0);
        let mut failed_at = Vec::new();
        for n in 0..1000u64 {
            if app.answer().await.status() == StatusCode::SERVICE_UNAVAILABLE {
                failed_at.push(n);
            }
        }
        assert_eq!(failed_at.len(), 20, "2 % of 1000 calls: {failed_at:?}");
        assert!(failed_at.windows(2).all(|w| w[1] - w[0] == 50), "every 50th call: {failed_at:?}");
        assert_eq!(app.counts.failed.load(Ordering::Relaxed), 20);
        // Broken answers every call with a 503, whatever the share.
        app.broken.store(true, Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(app.answer().await.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        // Healed, the spread starts again: 49 answers before the next failure.
        app.heal();
        for n in 0..49 {
            assert_eq!(app.answer().await.status(), StatusCode::OK, "call {n} after healing");
        }
        assert_eq!(app.answer().await.status(), StatusCode::SERVICE_UNAVAILABLE);
        let healthy = Reviews::new("v1", 0, 0);
        for _ in 0..200 {
            assert_eq!(healthy.answer().await.status(), StatusCode::OK);
        }
    }
}
