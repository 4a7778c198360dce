//! The demo's workloads: `reviews` (v1 healthy; v2 flaky, sometimes slow, breakable) and a
//! `frontend` that calls `reviews` through its sidecar's outbound port.
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
    /// Share of calls answered 503 (percent).
    pub fail_percent: u64,
    /// Share of calls delayed by 150-400 ms (percent).
    pub slow_percent: u64,
    /// Broken: every call is a 503.
    pub broken: AtomicBool,
    pub counts: Counts,
}

impl Reviews {
    pub fn new(version: &'static str, fail_percent: u64, slow_percent: u64) -> Arc<Self> {
        Arc::new(Self {
            version,
            fail_percent,
            slow_percent,
            broken: AtomicBool::new(false),
            counts: Counts::default(),
        })
    }

    async fn answer(&self) -> Response<Full<Bytes>> {
        if self.slow_percent > 0 && fastrand::u64(0..100) < self.slow_percent {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(150..400))).await;
        }
        let fail = self.broken.load(Ordering::Relaxed) || fastrand::u64(0..100) < self.fail_percent;
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

/// Serve `handler` on a fresh loopback port; returns the port's address.
async fn serve<F, Fut>(handler: F) -> std::io::Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
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

/// Start a `reviews` workload.
pub async fn start_reviews(app: Arc<Reviews>) -> std::io::Result<SocketAddr> {
    serve(move |_req| {
        let app = app.clone();
        async move { app.answer().await }
    })
    .await
}

/// Start the `frontend`: each call asks `reviews` (through `sidecar_outbound`) and answers
/// with its status.
pub async fn start_frontend(sidecar_outbound: SocketAddr) -> std::io::Result<SocketAddr> {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{sidecar_outbound}/reviews")
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    serve(move |_req| {
        let client = client.clone();
        let uri = uri.clone();
        async move {
            let req = Request::get(uri).header(header::HOST, "reviews:8080").body(Empty::new());
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
