//! One tunnelled TCP connection: the DATA frames of an HTTP/2 `CONNECT` stream as a byte
//! stream. Shutting down the write side sends an empty DATA frame with END_STREAM (a
//! half-close: the other direction keeps flowing); a peer's END_STREAM reads as EOF.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An HBONE stream. Dropping it resets the stream if it is still open.
#[derive(Debug)]
pub struct Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Bytes received but not read yet.
    buf: Bytes,
    /// END_STREAM sent.
    shut: bool,
}

impl Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self { send, recv, buf: Bytes::new(), shut: false }
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() { e.into_io().unwrap_or_else(|| io::Error::other("HTTP/2 I/O error")) } else { io::Error::other(e) }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.buf.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.buf = data;
                    if this.buf.is_empty() && this.recv.is_end_stream() {
                        return Poll::Ready(Ok(()));
                    }
                }
                // The peer closed the stream without an error: end of input.
                Some(Err(e)) if matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
            }
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(data.len());
        match ready!(this.send.poll_capacity(cx)) {
            Some(Ok(n)) if n > 0 => {
                let n = n.min(data.len());
                this.send.send_data(Bytes::copy_from_slice(&data[..n]), false).map_err(h2_io)?;
                Poll::Ready(Ok(n))
            }
            Some(Ok(_)) | None => {
                // No capacity will come: the stream was reset or the connection went away.
                match ready!(this.send.poll_reset(cx)) {
                    Ok(reason) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("HBONE stream reset by the peer ({reason:?})"),
                    ))),
                    Err(e) => Poll::Ready(Err(h2_io(e))),
                }
            }
            Some(Err(e)) => Poll::Ready(Err(h2_io(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Ok(()));
        }
        // Half-close: an empty DATA frame with END_STREAM.
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => {
                this.shut = true;
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(h2_io(e))),
        }
    }
}

/// A stream whose first bytes were read to tell HTTP/1.1 from HTTP/2; they are read again first.
#[derive(Debug)]
pub struct Rewind<S> {
    head: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            let n = out.remaining().min(this.head.len());
            out.put_slice(&this.head.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Read the first bytes of a tunnelled HTTP connection (within `timeout`): an HBONE stream from
/// an Outrider proxy carries HTTP/2 (or HTTP/1.1 for an upgrade), one from ztunnel the app's
/// own bytes. `None` when the peer closed, timed out or sent neither.
pub async fn sniff_http<S: AsyncRead + Unpin>(
    mut stream: S,
    timeout: std::time::Duration,
) -> Option<(crate::http::preface::First, Rewind<S>)> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::with_capacity(crate::http::preface::LINE_WINDOW);
    let read = async {
        loop {
            if let Some(first) = crate::http::preface::classify(&buf) {
                return Some(first);
            }
            if buf.len() >= crate::http::preface::LINE_WINDOW {
                return Some(crate::http::preface::First::Http1);
            }
            let mut chunk = [0u8; 64];
            let want = (crate::http::preface::LINE_WINDOW - buf.len()).min(chunk.len());
            match stream.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let first = tokio::time::timeout(timeout, read).await.ok()??;
    Some((first, Rewind { head: Bytes::from(buf), inner: stream }))
}

#[cfg(test)]
mod tests {
    //! How a tunnelled stream to an HTTP service is classified by its first bytes, whatever
    //! pieces they arrive in, and that nothing read to classify it is lost.
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::sniff_http;
    use crate::http::preface::{First, LINE_WINDOW, MAGIC};

    const TIMEOUT: Duration = Duration::from_secs(30);

    /// Sends `pieces` one write at a time (then `tail`, then EOF) and classifies what arrives;
    /// returns the class and everything the rewound stream yields.
    async fn classify(pieces: &[&[u8]], tail: &[u8]) -> Option<(First, Vec<u8>)> {
        let (mut peer, ours) = duplex(4096);
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let tail = tail.to_vec();
        let writer = tokio::spawn(async move {
            for p in pieces {
                peer.write_all(&p).await.unwrap();
                peer.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            peer.write_all(&tail).await.unwrap();
            peer.shutdown().await.unwrap();
        });
        let (first, mut rest) = sniff_http(ours, TIMEOUT).await?;
        let mut all = Vec::new();
        rest.read_to_end(&mut all).await.unwrap();
        writer.await.unwrap();
        Some((first, all))
    }

    #[tokio::test]
    async fn an_http1_request_line_in_pieces_is_http1_and_every_byte_is_read_again() {
        let (first, all) = classify(&[b"GE", b"T /a HT", b"TP/1.1\r", b"\nhost: x\r\n\r\n"], b"body").await.unwrap();
        assert_eq!(first, First::Http1);
        assert_eq!(all, b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nbody");
    }

    #[tokio::test]
    async fn the_http2_preface_in_pieces_is_http2_and_is_read_again() {
        let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
        let (first, all) = classify(&[&MAGIC[..5], &MAGIC[5..20], &MAGIC[20..]], &settings).await.unwrap();
        assert_eq!(first, First::Http2);
        assert_eq!(&all[..MAGIC.len()], MAGIC);
        assert_eq!(&all[MAGIC.len()..], settings);
    }

    #[tokio::test]
    async fn raw_bytes_of_neither_are_invalid() {
        let (first, all) = classify(&[b"\x16\x03\x01 not http\r\n"], b"").await.unwrap();
        assert_eq!(first, First::Invalid);
        assert_eq!(all, b"\x16\x03\x01 not http\r\n");
        // An HTTP/2-looking start that leaves the magic.
        assert_eq!(classify(&[b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"], b"").await.unwrap().0, First::Invalid);
    }

    #[tokio::test]
    async fn a_line_longer_than_the_window_is_left_to_the_http1_parser() {
        let long = vec![b'a'; LINE_WINDOW + 10];
        let (first, all) = classify(&[&long], b"").await.unwrap();
        assert_eq!(first, First::Http1);
        assert_eq!(all, long, "the bytes past the window are read after the rewound ones");
    }

    #[tokio::test]
    async fn a_stream_closed_before_its_first_line_is_none() {
        assert!(classify(&[], b"").await.is_none());
        assert!(classify(&[b"GET / HT"], b"").await.is_none(), "closed mid-line");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_is_none_after_the_timeout() {
        let (_peer, ours) = duplex(64);
        let started = tokio::time::Instant::now();
        assert!(sniff_http(ours, TIMEOUT).await.is_none());
        assert!(started.elapsed() >= TIMEOUT, "it waited the whole timeout (virtual time)");
    }
}
