//! The gRPC streaming leg: bidirectional streams ([`upstream::GRPC_STREAM_PATH`], the bench
//! upstream's echo) to the `soak-stream` Service through the sidecar pair (mutual TLS), each
//! on a shared h2 connection to the client sidecar as a gRPC channel.
//!
//! - `grpc-stream`: streams opened at a fixed rate, each exchanging [`MESSAGES`] messages one
//!   after the other and then ending its side; counted per stream.
//! - `grpc-stream-long`: [`super::LONG_LIVED`] streams open for the whole soak, a message each
//!   [`super::LONG_EVERY`] each, across every policy change and certificate rotation; counted
//!   per message.
//!
//! Checked on every stream: each message comes back byte for byte and in order, nothing comes
//! that was not asked for, and once the caller has ended its side the trailers carry
//! `grpc-status: 0` and the upstream's count of the messages it read, which must equal the
//! count sent (a replayed or lost message shows there). The `soak-stream` policy is what a
//! streaming Service gets: no `timeout` (outrider-proxy's bounds only the wait for the answer's
//! headers, but Envoy's bounds the whole stream) and an `idleTimeout` far above the interval
//! between messages (a stream quiet for longer is failed by the proxy, as the policy asks).
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::http::{Channel, h2_sender};
use super::load::{self, mismatch, pattern};
use crate::upstream::{self, ChannelBody, GrpcDecoder};

pub const SERVICE: &str = "soak-stream";
pub const PORT: u16 = 9081;
pub const SHORT: &str = "grpc-stream";
pub const LONG: &str = "grpc-stream-long";
/// Messages of each short stream.
pub const MESSAGES: u64 = 10;
/// Bytes of each message.
const MESSAGE_BYTES: usize = 256;
/// A short stream fails when one of its messages (or its close) takes longer than
/// [`load::TIMEOUT`]; the stream as a whole may take this long.
pub const LIMIT: Duration = Duration::from_secs(5 * (MESSAGES + 2));
/// Keeps the short streams' patterns apart from the long-lived ones'.
const SHORT_TAG: u64 = 1 << 63;

pub type StreamChannel = Channel<ChannelBody>;
type Answer = std::pin::Pin<Box<dyn Future<Output = hyper::Result<http::Response<Incoming>>> + Send>>;

/// One bidirectional stream, from the caller's side.
pub struct Stream {
    /// The request body's sender; dropping it ends the caller's side.
    tx: Option<mpsc::Sender<Frame<Bytes>>>,
    /// The response until its headers arrived.
    pending: Option<Answer>,
    body: Option<Incoming>,
    dec: GrpcDecoder,
    id: u64,
    sent: u64,
}

impl Stream {
    /// Open stream `id` on the channel (the request headers go out; the answer's headers are
    /// awaited with the first message's echo).
    pub async fn open(addr: SocketAddr, channel: &StreamChannel, id: u64) -> Result<Self> {
        let mut send = h2_sender(addr, channel).await?;
        send.ready().await?;
        let (tx, body) = ChannelBody::new(4);
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{SERVICE}:{PORT}{}", upstream::GRPC_STREAM_PATH))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(body)?;
        let pending: Option<Answer> = Some(Box::pin(send.send_request(req)));
        Ok(Self { tx: Some(tx), pending, body: None, dec: GrpcDecoder::default(), id, sent: 0 })
    }

    async fn body(&mut self) -> Result<&mut Incoming> {
        if let Some(pending) = self.pending.take() {
            let resp = pending.await.context("the stream was refused")?;
            let h = resp.headers();
            let text = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            if resp.status() != 200 || h.contains_key("grpc-status") {
                bail!(
                    "answered status {}, grpc-status {:?} {:?}{}",
                    resp.status(),
                    text("grpc-status"),
                    text("grpc-message"),
                    h.get("x-outrider-local-reply")
                        .map(|_| format!(" (local reply {})", text("x-outrider-local-reply")))
                        .unwrap_or_default()
                );
            }
            self.body = Some(resp.into_body());
        }
        self.body.as_mut().ok_or_else(|| anyhow!("the stream has no answer"))
    }

    /// The next message the upstream sent.
    async fn next(&mut self) -> Result<Bytes> {
        loop {
            if let Some(m) = self.dec.next_message().map_err(|e| anyhow!(e))? {
                return Ok(m);
            }
            let sent = self.sent;
            match self.body().await?.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => self.dec.push(&d),
                    Err(f) => bail!(
                        "the stream ended after {} of {sent} answers: {}",
                        sent.saturating_sub(1),
                        trailers(f.into_trailers().ok().as_ref())
                    ),
                },
                Some(Err(e)) => bail!("the stream broke after {} of {sent} answers: {e}", sent.saturating_sub(1)),
                None => bail!("the stream ended without trailers after {} of {sent} answers", sent.saturating_sub(1)),
            }
        }
    }
}

impl load::Session for Stream {
    async fn exchange(&mut self) -> Result<()> {
        self.sent += 1;
        let msg = pattern(self.id, self.sent, MESSAGE_BYTES);
        let closed = format!("the request stream closed before message {}", self.sent);
        let tx = self.tx.as_ref().ok_or_else(|| anyhow!("{closed}"))?;
        if tx.send(Frame::data(upstream::grpc_message(&msg))).await.is_err() {
            // The stream ended under the caller: the answer tells how.
            let how = match self.next().await {
                Err(e) => e,
                Ok(_) => anyhow!("an answer nobody asked for"),
            };
            return Err(how.context(closed));
        }
        let got = self.next().await?;
        if got != msg {
            bail!("message {}: {}", self.sent, mismatch(&msg, &got));
        }
        Ok(())
    }

    /// End the caller's side; then only the trailers may come: `grpc-status: 0` and the count
    /// of messages the upstream read.
    async fn finish(mut self) -> Result<()> {
        let sent = self.sent;
        self.tx = None;
        loop {
            match self.body().await?.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) if d.is_empty() => {}
                    Ok(d) => bail!("{} bytes nobody asked for after the last answer", d.len()),
                    Err(f) => {
                        let t = f.into_trailers().ok();
                        let get = |k: &str| t.as_ref().and_then(|t| t.get(k)).and_then(|v| v.to_str().ok());
                        if get("grpc-status") != Some("0") || get(upstream::MESSAGES_TRAILER) != Some(&sent.to_string())
                        {
                            bail!("ended with {} after {sent} messages sent", trailers(t.as_ref()));
                        }
                        return Ok(());
                    }
                },
                Some(Err(e)) => bail!("the stream broke after the caller's end: {e}"),
                None => bail!("the stream ended without trailers"),
            }
        }
    }
}

fn trailers(t: Option<&http::HeaderMap>) -> String {
    let Some(t) = t else { return "no trailers".into() };
    let get = |k: &str| t.get(k).and_then(|v| v.to_str().ok()).unwrap_or("-");
    format!(
        "grpc-status {} ({}), the upstream read {} messages",
        get("grpc-status"),
        get("grpc-message"),
        get(upstream::MESSAGES_TRAILER)
    )
}

/// One short stream (number `i`): open, [`MESSAGES`] exchanges, the caller's end, the trailers.
pub async fn short(addr: SocketAddr, channel: StreamChannel, i: u64) -> Result<()> {
    use load::Session as _;
    let mut s = load::within(load::TIMEOUT, Stream::open(addr, &channel, SHORT_TAG | i)).await?;
    for _ in 0..MESSAGES {
        load::within(load::TIMEOUT, s.exchange()).await?;
    }
    load::within(load::TIMEOUT, s.finish()).await
}

#[cfg(test)]
#[path = "grpc_stream/tests.rs"]
mod tests;
