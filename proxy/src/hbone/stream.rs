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
