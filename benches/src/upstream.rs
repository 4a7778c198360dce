//! The fast upstream, on a thread (and runtime) of its own: HTTP/1.1 and h2c with
//! 1 kB response bodies, gRPC unary (a 1 kB message and `grpc-status: 0`
//! trailers), a bidirectional gRPC echo stream ([`GRPC_STREAM_PATH`]), a TCP sink
//! that counts the bytes it reads, and a TCP echo.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

mod grpc;

pub use grpc::{
    ChannelBody, GRPC_PATH, GRPC_STREAM_PATH, GrpcBody, GrpcDecoder, MESSAGES_TRAILER, grpc_frame, grpc_message,
};

pub const BODY_SIZE: usize = 1024;

/// Where the upstream listens, and how many bytes the sink has read so far.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub http: SocketAddr,
    pub sink: SocketAddr,
    pub sink_bytes: Arc<AtomicU64>,
    /// Writes back every byte it reads; closes its side after the caller's EOF.
    pub echo: SocketAddr,
}

pub fn start() -> anyhow::Result<Upstream> {
    let listen = || -> anyhow::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let (http_l, sink_l, echo_l) = (listen()?, listen()?, listen()?);
    let up = Upstream {
        http: http_l.local_addr()?,
        sink: sink_l.local_addr()?,
        sink_bytes: Arc::default(),
        echo: echo_l.local_addr()?,
    };
    let counter = up.sink_bytes.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("upstream".into()).spawn(move || {
        rt.block_on(async move {
            let listeners =
                (TcpListener::from_std(http_l), TcpListener::from_std(sink_l), TcpListener::from_std(echo_l));
            match listeners {
                (Ok(h), Ok(s), Ok(e)) => {
                    tokio::spawn(sink(s, counter));
                    tokio::spawn(echo(e));
                    serve(h).await
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => eprintln!("upstream: {e}"),
            }
        })
    })?;
    Ok(up)
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
                    if req.uri().path() == GRPC_STREAM_PATH {
                        return Ok(grpc::echo_stream(req).map(|b| Either::Right(Either::Right(b))));
                    }
                    let is_grpc = req
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    // Read the request body, as a real service would.
                    let _ = req.into_body().collect().await;
                    let resp = if is_grpc {
                        let mut r = Response::new(Either::Right(Either::Left(GrpcBody::ok(grpc))));
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

async fn echo(l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}
