//! The fast upstream, on a thread (and runtime) of its own: HTTP/1.1 and h2c with
//! 1 kB response bodies, gRPC unary (a 1 kB message and `grpc-status: 0`
//! trailers), and a TCP sink that counts the bytes it reads.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

pub const BODY_SIZE: usize = 1024;
/// The gRPC method every gRPC workload calls.
pub const GRPC_PATH: &str = "/bench.Bench/Unary";

/// Where the upstream listens, and how many bytes the sink has read so far.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub http: SocketAddr,
    pub sink: SocketAddr,
    pub sink_bytes: Arc<AtomicU64>,
}

pub fn start() -> anyhow::Result<Upstream> {
    let http_l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let sink_l = std::net::TcpListener::bind("127.0.0.1:0")?;
    http_l.set_nonblocking(true)?;
    sink_l.set_nonblocking(true)?;
    let up = Upstream { http: http_l.local_addr()?, sink: sink_l.local_addr()?, sink_bytes: Arc::default() };
    let counter = up.sink_bytes.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("upstream".into()).spawn(move || {
        rt.block_on(async move {
            match (TcpListener::from_std(http_l), TcpListener::from_std(sink_l)) {
                (Ok(h), Ok(s)) => {
                    tokio::spawn(sink(s, counter));
                    serve(h).await
                }
                (Err(e), _) | (_, Err(e)) => eprintln!("upstream: {e}"),
            }
        })
    })?;
    Ok(up)
}

/// A gRPC reply: one length-prefixed message, then `grpc-status: 0` trailers.
#[derive(Debug)]
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// A gRPC frame (uncompressed) around `len` bytes of payload.
pub fn grpc_frame(len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    b.put_bytes(b'x', len);
    b.freeze()
}

async fn serve(l: TcpListener) {
    let body = Bytes::from(vec![b'x'; BODY_SIZE]);
    let grpc = grpc_frame(BODY_SIZE);
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let (body, grpc) = (body.clone(), grpc.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (body, grpc) = (body.clone(), grpc.clone());
                async move {
                    let is_grpc = req
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    // Read the request body, as a real service would.
                    let _ = req.into_body().collect().await;
                    let resp = if is_grpc {
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        let mut r =
                            Response::new(Either::Right(GrpcBody { data: Some(grpc), trailers: Some(trailers) }));
                        r.headers_mut()
                            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                        r
                    } else {
                        Response::new(Either::Left(Full::new(body)))
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn sink(l: TcpListener, counter: Arc<AtomicU64>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let counter = counter.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
}
