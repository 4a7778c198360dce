//! gRPC on the wire for the bench upstream and its clients: length-prefixed messages (always
//! uncompressed), the unary reply body, a channel-fed body for streams, and the bidirectional
//! echo stream the soak's streaming leg calls.
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

/// The gRPC method every unary gRPC workload calls.
pub const GRPC_PATH: &str = "/bench.Bench/Unary";
/// The bidirectional streaming method: each request message comes back as it was, in order;
/// when the caller ends its side, the trailers carry `grpc-status: 0` and [`MESSAGES_TRAILER`].
pub const GRPC_STREAM_PATH: &str = "/bench.Bench/Echo";
/// Trailer of [`GRPC_STREAM_PATH`]: how many messages the upstream read from the stream.
pub const MESSAGES_TRAILER: &str = "bench-messages";
/// The largest message either side accepts (the benches send at most a few KiB).
const MAX_MESSAGE: usize = 1 << 20;
/// Messages an echo stream may have in flight towards its caller before it stops reading.
const STREAM_DEPTH: usize = 16;

/// A gRPC reply: one length-prefixed message, then `grpc-status: 0` trailers.
#[derive(Debug)]
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl GrpcBody {
    pub fn ok(message: Bytes) -> Self {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Self { data: Some(message), trailers: Some(trailers) }
    }
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

/// A body fed through a channel: the frames sent (data, then trailers if any), ending when
/// every sender is dropped. Ours rather than http-body-util's `channel` feature: turning that
/// feature on would rebuild every crate of the workspace that uses http-body-util.
#[derive(Debug)]
pub struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl ChannelBody {
    pub fn new(depth: usize) -> (mpsc::Sender<Frame<Bytes>>, Self) {
        let (tx, rx) = mpsc::channel(depth);
        (tx, Self(rx))
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
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

/// A gRPC frame (uncompressed) around `payload`.
pub fn grpc_message(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Splits the bytes of a gRPC body into messages, whatever the DATA frame boundaries.
#[derive(Debug, Default)]
pub struct GrpcDecoder {
    buf: BytesMut,
}

impl GrpcDecoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message's payload, `None` until one has arrived; an error for a
    /// compressed or oversized message.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, String> {
        let Some(head) = self.buf.get(..5) else { return Ok(None) };
        if head[0] != 0 {
            return Err(format!("a message with compressed-flag {} (nothing here compresses)", head[0]));
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(format!("a message of {len} bytes (at most {MAX_MESSAGE})"));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Bytes of a message not complete yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// [`GRPC_STREAM_PATH`]: answer each message of the request stream with the same message while
/// the request is still streaming; at its end, `grpc-status: 0` and the count of messages read
/// (`grpc-status: 13` when the request stream was malformed). A request stream that breaks
/// (reset) ends the reply without trailers.
pub fn echo_stream(req: Request<Incoming>) -> Response<ChannelBody> {
    let (tx, body) = ChannelBody::new(STREAM_DEPTH);
    tokio::spawn(async move {
        let mut incoming = req.into_body();
        let mut dec = GrpcDecoder::default();
        let mut read = 0u64;
        let problem = loop {
            match incoming.frame().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    dec.push(&data);
                    loop {
                        match dec.next_message() {
                            Ok(Some(m)) => {
                                read += 1;
                                if tx.send(Frame::data(grpc_message(&m))).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return trailers(&tx, read, Some(&e)).await,
                        }
                    }
                }
                Some(Err(_)) => return,
                None if dec.pending() > 0 => {
                    break Some(format!("the stream ended inside a message ({} bytes)", dec.pending()));
                }
                None => break None,
            }
        };
        trailers(&tx, read, problem.as_deref()).await;
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    r
}

async fn trailers(tx: &mpsc::Sender<Frame<Bytes>>, read: u64, problem: Option<&str>) {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static(if problem.is_some() { "13" } else { "0" }));
    if let Some(p) = problem.and_then(|p| HeaderValue::from_str(p).ok()) {
        t.insert("grpc-message", p);
    }
    t.insert(MESSAGES_TRAILER, HeaderValue::from(read));
    let _ = tx.send(Frame::trailers(t)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoder_finds_messages_across_any_split() {
        let mut wire = grpc_message(b"first").to_vec();
        wire.extend_from_slice(&grpc_message(b""));
        wire.extend_from_slice(&grpc_message(&[7u8; 300]));
        for cut in 0..wire.len() {
            let mut dec = GrpcDecoder::default();
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                dec.push(part);
                while let Some(m) = dec.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, [Bytes::from_static(b"first"), Bytes::new(), Bytes::from(vec![7u8; 300])], "cut at {cut}");
            assert_eq!(dec.pending(), 0);
        }
    }

    #[test]
    fn the_decoder_refuses_compressed_and_oversized_messages() {
        let mut dec = GrpcDecoder::default();
        dec.push(&[1, 0, 0, 0, 1, b'x']);
        assert!(dec.next_message().unwrap_err().contains("compressed"));
        let mut dec = GrpcDecoder::default();
        dec.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(dec.next_message().unwrap_err().contains("at most"));
    }
}
