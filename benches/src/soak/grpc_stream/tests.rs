//! The streaming leg's checks against real h2 servers on loopback: the bench upstream's echo
//! stream passes; each way a stream can go wrong is a failure that says what went wrong.
use std::convert::Infallible;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Response};
use http_body_util::{BodyExt, Either, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::*;
use crate::soak::load::Session as _;

/// What a broken echo stream does.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Flips a byte of every message.
    Corrupt,
    /// Ends with `grpc-status: 0` after the first message.
    EndEarly,
    /// Reports one message more than it read.
    Miscount,
    /// Answers `grpc-status: 14` at once (a trailers-only answer).
    Unavailable,
}

async fn broken(fault: Fault) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
                Ok::<_, Infallible>(answer(req, fault))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    addr
}

fn answer(req: http::Request<Incoming>, fault: Fault) -> Response<Either<ChannelBody, Empty<Bytes>>> {
    if let Fault::Unavailable = fault {
        let mut r = Response::new(Either::Right(Empty::new()));
        r.headers_mut().insert("grpc-status", HeaderValue::from_static("14"));
        return r;
    }
    let (tx, body) = ChannelBody::new(4);
    tokio::spawn(async move {
        let (mut incoming, mut dec, mut read) = (req.into_body(), GrpcDecoder::default(), 0u64);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        while let Some(Ok(frame)) = incoming.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            dec.push(&data);
            while let Ok(Some(m)) = dec.next_message() {
                read += 1;
                let mut m = m.to_vec();
                if let Fault::Corrupt = fault {
                    m[100] ^= 1;
                }
                let _ = tx.send(Frame::data(upstream::grpc_message(&m))).await;
                if let Fault::EndEarly = fault {
                    trailers.insert(upstream::MESSAGES_TRAILER, HeaderValue::from(read));
                    let _ = tx.send(Frame::trailers(trailers)).await;
                    return;
                }
            }
        }
        let reported = if let Fault::Miscount = fault { read + 1 } else { read };
        trailers.insert(upstream::MESSAGES_TRAILER, HeaderValue::from(reported));
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    Response::new(Either::Left(body))
}

async fn three_messages_and_finish(addr: SocketAddr) -> Result<()> {
    let channel = StreamChannel::default();
    let mut s = Stream::open(addr, &channel, 5).await?;
    for _ in 0..3 {
        s.exchange().await?;
    }
    s.finish().await
}

#[tokio::test]
async fn streams_with_the_bench_upstream_pass() {
    let addr = crate::upstream::start().unwrap().http;
    three_messages_and_finish(addr).await.unwrap();
    short(addr, StreamChannel::default(), 1).await.unwrap();
}

#[tokio::test]
async fn a_corrupted_cut_miscounted_or_refused_stream_fails() {
    for (fault, expected) in [
        (Fault::Corrupt, "message 1: corrupted echo: byte 100 of 256 differs"),
        (Fault::EndEarly, "the stream ended after 1 of 2 answers: grpc-status 0"),
        (Fault::Miscount, "ended with grpc-status 0 (-), the upstream read 4 messages after 3 messages sent"),
        (Fault::Unavailable, "answered status 200 OK, grpc-status \"14\""),
    ] {
        let e = three_messages_and_finish(broken(fault).await).await.unwrap_err();
        assert!(format!("{e:#}").contains(expected), "{fault:?}: {e:#}");
    }
}
