//! The load-report count of a gRPC response whose status is in its trailers: made once, when
//! the body ends, by what it ended with.
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use http_body_util::StreamBody;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use super::*;
use crate::http::client::EndpointPool;
use crate::load_report::LoadSample;
use crate::state::EndpointShared;

type Frames = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// The latency the attempt had at its response headers.
const LATENCY: Duration = Duration::from_millis(3);

/// A real HTTP/2 response body (hyper `Incoming`) whose frames the test sends one at a time:
/// what the proxy reads from an upstream gRPC server, counted for `endpoint` when it ends.
async fn response(endpoint: &Arc<EndpointShared>) -> (Frames, Body) {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let rx = std::sync::Mutex::new(Some(rx));
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |_req: http::Request<Incoming>| {
            let rx = rx.lock().unwrap().take().expect("one request");
            let frames =
                Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) }));
            async move { Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(frames))) }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server_io), svc)
            .await;
    });
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io)).await.unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(http::Request::post("http://test/").body(Body::Empty).unwrap()).await.unwrap();
    // Keep the connection up for the test.
    tokio::spawn(async move {
        let _sender = sender;
        std::future::pending::<()>().await;
    });
    let body = Body::from(resp.into_body()).judge_by_trailers(PendingLoad::new(endpoint.clone(), LATENCY));
    (tx, body)
}

fn endpoint() -> Arc<EndpointShared> {
    Arc::new(EndpointShared {
        ewma: Default::default(),
        pool: Arc::new(EndpointPool::new("127.0.0.1:1".parse().unwrap())),
        health: Default::default(),
        load: Default::default(),
        breaker: Default::default(),
    })
}

async fn next(b: &mut Body) -> Option<Result<Frame<Bytes>, BodyError>> {
    poll_fn(|cx| Pin::new(&mut *b).poll_frame(cx)).await
}

fn grpc_status(code: &str) -> Frame<Bytes> {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", code.parse().unwrap());
    Frame::trailers(t)
}

/// (succeeded, failed), with the latency of the headers when one was counted.
fn counted(ep: &EndpointShared) -> (u64, u64) {
    let LoadSample { succeeded, failed, latency_us, .. } = ep.load.take();
    if succeeded + failed > 0 {
        assert_eq!(latency_us, (succeeded + failed) * LATENCY.as_micros() as u64, "the latency to the headers");
    }
    (succeeded, failed)
}

#[tokio::test]
async fn the_trailers_status_decides_once_the_body_ends() {
    // UNAVAILABLE is an error; OK and NOT_FOUND (the caller's problem) are not: Envoy's rule.
    for (code, expected) in [("14", (0, 1)), ("0", (1, 0)), ("5", (1, 0)), ("13", (0, 1))] {
        let ep = endpoint();
        let (frames, mut body) = response(&ep).await;
        frames.send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi")))).await.unwrap();
        assert!(next(&mut body).await.unwrap().unwrap().is_data());
        assert_eq!(counted(&ep), (0, 0), "nothing counted before the body ends");
        frames.send(Ok(grpc_status(code))).await.unwrap();
        assert!(next(&mut body).await.unwrap().unwrap().is_trailers());
        assert_eq!(counted(&ep), expected, "grpc-status {code}");
        assert!(next(&mut body).await.is_none());
        drop(body);
        assert_eq!(counted(&ep), (0, 0), "grpc-status {code}: counted once");
    }
}

#[tokio::test]
async fn a_body_that_ends_without_trailers_or_is_reset_is_an_error() {
    let ep = endpoint();
    let (frames, mut body) = response(&ep).await;
    frames.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
    drop(frames);
    while let Some(f) = next(&mut body).await {
        assert!(f.unwrap().is_data());
    }
    drop(body);
    assert_eq!(counted(&ep), (0, 1), "no trailers: no status");

    let (frames, mut body) = response(&ep).await;
    frames.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
    assert!(next(&mut body).await.unwrap().is_ok());
    frames.send(Err(std::io::Error::other("the upstream broke"))).await.unwrap();
    assert!(next(&mut body).await.unwrap().is_err(), "the stream is reset");
    drop(body);
    assert_eq!(counted(&ep), (0, 1), "reset");
}

#[tokio::test]
async fn a_body_the_caller_drops_before_its_end_is_a_success() {
    let ep = endpoint();
    let (frames, mut body) = response(&ep).await;
    frames.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
    assert!(next(&mut body).await.unwrap().is_ok());
    drop(body);
    assert_eq!(counted(&ep), (1, 0), "the caller cancelled: not the endpoint's error");
    drop(frames);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_past_its_idle_timeout_is_an_error() {
    let ep = endpoint();
    let (frames, body) = response(&ep).await;
    let mut body = IdleBody::wrap(body, Duration::from_secs(5));
    frames.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
    assert!(next(&mut body).await.unwrap().is_ok());
    assert!(matches!(next(&mut body).await, Some(Err(BodyError::Idle(_)))));
    drop(body);
    assert_eq!(counted(&ep), (0, 1), "the upstream went silent");
    drop(frames);
}

#[tokio::test]
async fn a_response_with_no_body_has_no_trailers_to_wait_for() {
    let ep = endpoint();
    let body = Body::Empty.judge_by_trailers(PendingLoad::new(ep.clone(), LATENCY));
    assert_eq!(counted(&ep), (0, 1), "counted at once: a gRPC response needs a status");
    drop(body);
    assert_eq!(counted(&ep), (0, 0));
}
