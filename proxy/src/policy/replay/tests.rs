use std::future::poll_fn;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use super::*;

/// A real HTTP/2 request body (hyper `Incoming`) whose frames the test sends
/// one at a time: what the proxy reads from a caller streaming its body.
async fn streaming() -> (Caller, Body) {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let (body_tx, body_rx) = tokio::sync::oneshot::channel::<Incoming>();
    let body_tx = std::sync::Mutex::new(Some(body_tx));
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            if let Some(tx) = body_tx.lock().unwrap().take() {
                let _ = tx.send(req.into_body());
            }
            async { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new())) }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server_io), svc)
            .await;
    });
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io)).await.unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let frames = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) }));
    let req = http::Request::post("http://test/").body(StreamBody::new(frames)).unwrap();
    tokio::spawn(async move {
        let _ = sender.send_request(req).await;
        // Keep the connection (and so the body) alive for the test.
        std::future::pending::<()>().await;
    });
    (Caller(tx), Body::Incoming(body_rx.await.unwrap()))
}

/// The caller's side of a [`streaming`] body.
struct Caller(mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>);

impl Caller {
    async fn send(&self, b: impl Into<Bytes>) {
        self.0.send(Ok(Frame::data(b.into()))).await.unwrap();
    }
    async fn trailers(&self, t: HeaderMap) {
        self.0.send(Ok(Frame::trailers(t))).await.unwrap();
    }
    /// The caller resets its stream.
    async fn fail(&self) {
        self.0.send(Err(std::io::Error::other("caller went away"))).await.unwrap();
    }
}

async fn next(b: &mut ReplayBody) -> Option<Result<Frame<Bytes>, BodyError>> {
    poll_fn(|cx| b.poll_frame(cx)).await
}

async fn data(b: &mut ReplayBody) -> Bytes {
    next(b).await.expect("a frame").expect("not an error").into_data().expect("a data frame")
}

async fn collect(b: &mut ReplayBody) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(f) = next(b).await {
        if let Ok(d) = f.unwrap().into_data() {
            out.extend_from_slice(&d);
        }
    }
    out
}

#[tokio::test]
async fn replays_a_small_body() {
    let (replay, mut first) = Replay::new(Body::full("hello world"), 1024);
    assert_eq!(collect(&mut first).await, b"hello world");
    let mut second = replay.next_try().unwrap();
    assert_eq!(collect(&mut second).await, b"hello world");
    assert!(second.is_end_stream());
}

#[tokio::test]
async fn a_try_that_never_read_leaves_the_whole_body() {
    let (replay, first) = Replay::new(Body::full("abc"), 1024);
    drop(first);
    let mut second = replay.next_try().unwrap();
    assert_eq!(collect(&mut second).await, b"abc");
}

#[tokio::test]
async fn over_the_cap_it_streams_whole_but_cannot_replay() {
    let (replay, mut first) = Replay::new(Body::full(vec![7u8; 100]), 10);
    assert_eq!(collect(&mut first).await.len(), 100, "the try that read it sends all of it");
    assert_eq!(replay.next_try().unwrap_err(), NotReplayable::TooLarge);
}

#[tokio::test]
async fn a_retry_after_a_partial_read_sends_the_copy_then_reads_on() {
    let (tx, body) = streaming().await;
    let (replay, mut first) = Replay::new(body, 1024);
    tx.send(&b"aa"[..]).await;
    assert_eq!(data(&mut first).await, "aa");
    tx.send(&b"bb"[..]).await;
    assert_eq!(data(&mut first).await, "bb");
    // The upstream answered before the body ended; the retry takes over.
    let mut second = replay.next_try().unwrap();
    tx.send(&b"cc"[..]).await;
    drop(tx);
    assert_eq!(collect(&mut second).await, b"aabbcc", "the copy, then the rest, in order");
}

#[tokio::test]
async fn an_earlier_try_is_fenced_and_fails_instead_of_ending() {
    let (tx, body) = streaming().await;
    let (replay, mut first) = Replay::new(body, 1024);
    tx.send(&b"aa"[..]).await;
    assert_eq!(data(&mut first).await, "aa");
    let _second = replay.next_try().unwrap();
    assert!(!first.is_end_stream(), "a fenced try must not look complete");
    assert!(matches!(next(&mut first).await, Some(Err(BodyError::Superseded))));
}

#[tokio::test]
async fn a_fenced_try_waiting_for_the_caller_is_woken() {
    let (_tx, body) = streaming().await;
    let (replay, mut first) = Replay::new(body, 1024);
    // The first try waits for data that does not come.
    let waiting = tokio::spawn(async move { next(&mut first).await.map(|r| r.is_err()) });
    tokio::task::yield_now().await;
    while replay.shared.lock().parked.is_none() {
        tokio::task::yield_now().await;
    }
    let _second = replay.next_try().unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("woken").unwrap();
    assert_eq!(failed, Some(true), "the fenced try ends with an error, so its upstream request is aborted");
}

#[tokio::test]
async fn a_retry_that_outgrows_the_cap_still_sends_everything_but_is_the_last() {
    let (tx, body) = streaming().await;
    let (replay, mut first) = Replay::new(body, 6);
    tx.send(&b"1234"[..]).await;
    assert_eq!(data(&mut first).await, "1234");
    let mut second = replay.next_try().unwrap();
    tx.send(&b"5678"[..]).await;
    drop(tx);
    assert_eq!(collect(&mut second).await, b"12345678");
    assert_eq!(replay.next_try().unwrap_err(), NotReplayable::TooLarge);
}

#[tokio::test]
async fn the_cap_is_crossed_while_the_first_try_streams_before_the_decision() {
    // The race of the issue: the first try goes on reading while its answer is
    // judged. Once it overflowed, no retry can be made.
    let (tx, body) = streaming().await;
    let (replay, mut first) = Replay::new(body, 6);
    tx.send(&b"1234"[..]).await;
    assert_eq!(data(&mut first).await, "1234");
    tx.send(&b"5678"[..]).await;
    assert_eq!(data(&mut first).await, "5678");
    assert_eq!(replay.next_try().unwrap_err(), NotReplayable::TooLarge);
    // The first try is not fenced by a refused retry: it finishes its body.
    tx.send(&b"9"[..]).await;
    drop(tx);
    assert_eq!(collect(&mut first).await, b"9");
}

#[tokio::test]
async fn trailers_are_replayed() {
    let (tx, body) = streaming().await;
    let (replay, mut first) = Replay::new(body, 1024);
    tx.send(&b"x"[..]).await;
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    tx.trailers(t).await;
    drop(tx);
    let mut frames = 0;
    while let Some(f) = next(&mut first).await {
        f.unwrap();
        frames += 1;
    }
    assert_eq!(frames, 2);
    let mut second = replay.next_try().unwrap();
    assert_eq!(data(&mut second).await, "x");
    let t = next(&mut second).await.unwrap().unwrap().into_trailers().unwrap();
    assert_eq!(t.get("grpc-status").unwrap(), "0");
    assert!(next(&mut second).await.is_none());
}

#[tokio::test]
async fn a_failed_caller_body_cannot_be_replayed() {
    // A body that fails to read: the caller reset its stream.
    let (tx, body) = streaming().await;
    let (replay, mut first) = Replay::new(body, 1024);
    tx.send(&b"x"[..]).await;
    assert_eq!(data(&mut first).await, "x");
    tx.fail().await;
    assert!(matches!(next(&mut first).await, Some(Err(_))), "the try sees the failure");
    assert_eq!(replay.next_try().unwrap_err(), NotReplayable::Failed);
}

/// Random chunk sizes, caps and moments of retry: a try either sends exactly
/// the whole body or is refused; never a prefix.
#[tokio::test]
async fn no_try_ever_sends_a_prefix() {
    for round in 0..200u64 {
        let mut rng = fastrand::Rng::with_seed(round);
        let chunks: Vec<Bytes> =
            (0..rng.usize(1..8)).map(|i| Bytes::from(vec![b'a' + i as u8; rng.usize(1..20)])).collect();
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let cap = rng.usize(0..whole.len() + 10);
        let (tx, body) = streaming().await;
        let (replay, mut current) = Replay::new(body, cap);
        let mut sent = chunks.into_iter();
        let mut got = Vec::new();
        for _ in 0..4 {
            // This try reads some of the body (feeding the caller as needed)…
            for _ in 0..rng.usize(0..6) {
                let ready = { current.pos < current.shared.lock().chunks.len() };
                if !ready {
                    match sent.next() {
                        Some(c) => tx.send(c).await,
                        None => break,
                    }
                }
                got.extend_from_slice(&data(&mut current).await);
            }
            // … then a retry is asked for.
            match replay.next_try() {
                Ok(b) => {
                    assert!(got.len() <= cap, "round {round}: replayable after {} bytes, cap {cap}", got.len());
                    current = b;
                    got.clear();
                }
                Err(why) => {
                    assert_eq!(why, NotReplayable::TooLarge, "round {round}");
                    assert!(got.len() > cap, "round {round}: refused under the cap");
                    // The try that overflowed streams on to the end.
                    break;
                }
            }
        }
        for c in sent.by_ref() {
            tx.send(c).await;
        }
        drop(tx);
        got.extend_from_slice(&collect(&mut current).await);
        assert_eq!(got, whole, "round {round}: the last try sends exactly the whole body");
    }
}
