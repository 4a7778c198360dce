//! The fast upstream: HTTP/1.1 and h2c, 1 kB response bodies.
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub const BODY_SIZE: usize = 1024;

/// Start the upstream on a thread (and runtime) of its own, so the harness can
/// block while it serves.
pub fn start() -> anyhow::Result<SocketAddr> {
    let std_l = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_l.set_nonblocking(true)?;
    let addr = std_l.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(std_l) {
                    Ok(l) => serve(l).await,
                    Err(e) => eprintln!("upstream: {e}"),
                }
            })
        })?;
    Ok(addr)
}

async fn serve(l: TcpListener) {
    let body = Bytes::from(vec![b'x'; BODY_SIZE]);
    {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    }
}
