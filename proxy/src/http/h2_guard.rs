//! The read side of a downstream HTTP/2 connection, in front of hyper: checks the client
//! connection preface, and makes h2 reject a pseudo-header field in trailers.
//!
//! **Preface** (RFC 9113 §3.4): [`H2Guard::read_preface`] reads the 24-byte magic and the header
//! of the first frame, which must be a SETTINGS frame; h2 itself accepts any first frame, and
//! closes on a bad magic without the GOAWAY the proxy sends (see [`super::preface`]).
//!
//! **Trailers** (RFC 9113 §8.1, §8.3): h2 0.4 decodes the pseudo-header fields of a trailers
//! block and then drops them, accepting the trailers — the request would be forwarded whole. It
//! does treat a pseudo-header field that follows a regular field of the same block as malformed
//! (a stream error of type PROTOCOL_ERROR). So every HEADERS frame that carries trailers — a
//! header block on a stream whose request is under way — is rewritten on its way in:
//!
//! ```text
//! HEADERS(flags, [pad length] [priority] fragment [padding])
//!   => HEADERS(flags - END_HEADERS - PADDED, [priority] MARKER)
//!      CONTINUATION(flags & END_HEADERS, fragment)
//! ```
//!
//! `MARKER` is one regular field, `x-outrider-trailers` with an empty value, as a literal that
//! is not indexed: the HPACK dynamic table is untouched. h2 decodes the frames as one block in
//! which every field of the client's follows the marker, so a pseudo-header field anywhere in
//! the trailers makes it reset the stream with PROTOCOL_ERROR; the request body then ends in an
//! error and the upstream never gets the request whole. A dynamic table size update at the
//! start of the client's fragment stays valid (h2 allows one at the start of each frame's part
//! of a block). Clean trailers arrive with the marker, which [`super::body`] removes.
//!
//! The cost: per read, one pass over the frame headers in the bytes read (payloads are skipped,
//! not copied); per stream, two bit operations. Nothing is allocated unless a rewrite happens or
//! hyper offers a read buffer smaller than [`ROOM`]; then a buffer kept for the connection
//! holds the bytes until hyper takes them. Every other frame — DATA and so flow control
//! included — passes through unchanged, as do malformed HEADERS frames (over the frame size
//! limit, bad padding), which h2 rejects itself.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::HeaderName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::preface::{FRAME_HEADER_LEN, MAGIC, PREFACE_LEN, preface_ok};

/// SETTINGS_MAX_FRAME_SIZE the HTTP listeners advertise (the protocol's initial value): a
/// larger HEADERS frame is left for h2 to reject. A server that advertises another limit (the
/// HBONE listener) gives it to [`H2Guard::with_max_frame_size`].
pub const MAX_FRAME_SIZE: u32 = 16_384;
/// The name of the field put first in every trailers block (removed before forwarding).
pub static MARKER_NAME: HeaderName = HeaderName::from_static("x-outrider-trailers");
/// `x-outrider-trailers:` (empty), HPACK literal without indexing, new name (RFC 7541 §6.2.2).
const MARKER: [u8; 22] = *b"\x00\x13x-outrider-trailers\x00";
/// Below this much room in hyper's read buffer, bytes are read and processed on the side.
pub const ROOM: usize = 64;
/// Client streams (odd ids) tracked: a trailers block on a stream older than the latest
/// `WINDOW` streams of the connection is passed through unchanged.
const WINDOW: u32 = 1024;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// A frame header plus the longest HEADERS prefix (pad length and priority).
const HOLD: usize = FRAME_HEADER_LEN + 1 + 5;

/// A downstream HTTP/2 connection's byte stream, read through the guard; writes pass through.
#[derive(Debug)]
pub struct H2Guard<I> {
    io: I,
    walker: Walker,
    /// How much of [`MAGIC`] (read by `read_preface`) is still to be handed on.
    magic_left: usize,
    /// Raw bytes of a frame header (and HEADERS prefix) that is not complete yet.
    hold: [u8; HOLD],
    held: usize,
    /// Processed bytes waiting for room in hyper's buffer (after a rewrite, or a small read).
    queue: Vec<u8>,
    queued_from: usize,
    eof: bool,
}

impl<I: AsyncRead + Unpin> H2Guard<I> {
    /// For a server that advertises [`MAX_FRAME_SIZE`].
    pub fn new(io: I) -> Self {
        Self::with_max_frame_size(io, MAX_FRAME_SIZE)
    }

    /// For a server whose h2 builder sets `max_frame_size(max)`: both must agree, or a
    /// trailers frame between the two limits would pass unchecked.
    pub fn with_max_frame_size(io: I, max: u32) -> Self {
        Self {
            io,
            walker: Walker { state: State::default(), open: OpenStreams::default(), max_frame: max },
            magic_left: 0,
            hold: [0; HOLD],
            held: 0,
            queue: Vec::new(),
            queued_from: 0,
            eof: false,
        }
    }

    /// Read the client connection preface: the magic and the header of the first frame.
    /// `Ok(false)`: it is invalid (or the peer closed before it ended); the caller rejects the
    /// connection. On success the bytes are handed on to hyper as if never read.
    pub async fn read_preface(&mut self) -> io::Result<bool> {
        let mut head = [0u8; PREFACE_LEN];
        let mut got = 0;
        while got < PREFACE_LEN {
            let n = self.io.read(&mut head[got..]).await?;
            if n == 0 {
                return Ok(false);
            }
            // Stop at the first byte that cannot be the magic: no need to wait for 33.
            if got < MAGIC.len() && head[got..(got + n).min(MAGIC.len())] != MAGIC[got..(got + n).min(MAGIC.len())] {
                return Ok(false);
            }
            got += n;
        }
        if !preface_ok(&head) {
            return Ok(false);
        }
        self.magic_left = MAGIC.len();
        self.hold[..FRAME_HEADER_LEN].copy_from_slice(&head[MAGIC.len()..]);
        self.held = FRAME_HEADER_LEN;
        Ok(true)
    }

    /// The connection, for a reply written outside hyper.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.io
    }

    /// Hand on processed bytes already waiting; `false` when there were none.
    fn drain_pending(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.magic_left > 0 {
            let from = MAGIC.len() - self.magic_left;
            let n = self.magic_left.min(buf.remaining());
            buf.put_slice(&MAGIC[from..from + n]);
            self.magic_left -= n;
            return true;
        }
        if self.queued_from < self.queue.len() {
            let n = (self.queue.len() - self.queued_from).min(buf.remaining());
            buf.put_slice(&self.queue[self.queued_from..self.queued_from + n]);
            self.queued_from += n;
            if self.queued_from == self.queue.len() {
                self.queue.clear();
                self.queued_from = 0;
            }
            return true;
        }
        false
    }

    /// Walk `region` (raw bytes: the held ones, then new ones) in place. Returns how many
    /// processed bytes stay at its front; later output goes to the queue, and an incomplete
    /// header at the end to `hold`.
    fn process(&mut self, region: &mut [u8]) -> usize {
        let mut sink = Sink { region_out: 0, queue: &mut self.queue, queuing: false };
        let rest = self.walker.walk(region, &mut sink);
        let out = sink.region_out;
        let tail = &region[rest..];
        debug_assert!(tail.len() < HOLD, "only an incomplete header is held back");
        self.hold[..tail.len()].copy_from_slice(tail);
        self.held = tail.len();
        out
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for H2Guard<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if buf.remaining() == 0 || this.drain_pending(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A frame cut off by the peer's close: hand on what there is, h2 reports it.
                let n = this.held.min(buf.remaining());
                buf.put_slice(&this.hold[..n]);
                this.hold.copy_within(n..this.held, 0);
                this.held -= n;
                return Poll::Ready(Ok(()));
            }
            let held = this.held;
            if buf.remaining() >= ROOM {
                // The common case: read into hyper's buffer after the held bytes, walk in place.
                let start = buf.filled().len();
                buf.put_slice(&this.hold[..held]);
                match Pin::new(&mut this.io).poll_read(cx, buf) {
                    Poll::Ready(Ok(())) => {}
                    other => {
                        buf.set_filled(start);
                        return other;
                    }
                }
                if buf.filled().len() == start + held {
                    buf.set_filled(start);
                    this.eof = true;
                    continue;
                }
                let out = this.process(&mut buf.filled_mut()[start..]);
                buf.set_filled(start + out);
                if out > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                // Little room: read and walk on the side, hand on through the queue.
                let mut scratch = [0u8; 4096];
                let mut side = ReadBuf::new(&mut scratch);
                side.put_slice(&this.hold[..held]);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut side))?;
                let n = side.filled().len();
                if n == held {
                    this.eof = true;
                    continue;
                }
                let queued = this.queue.len();
                let out = this.process(&mut scratch[..n]);
                // Bytes walked in place come before what the walk queued.
                this.queue.splice(queued..queued, scratch[..out].iter().copied());
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for H2Guard<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Where processed bytes go: kept in place at the front of the region (moved down over bytes
/// dropped before them) until the first rewrite, then appended to the queue.
struct Sink<'a> {
    region_out: usize,
    queue: &'a mut Vec<u8>,
    queuing: bool,
}

impl Sink<'_> {
    /// Output `region[at..at + n]`.
    fn pass(&mut self, region: &mut [u8], at: usize, n: usize) {
        if self.queuing {
            self.queue.extend_from_slice(&region[at..at + n]);
        } else {
            if self.region_out != at {
                region.copy_within(at..at + n, self.region_out);
            }
            self.region_out += n;
        }
    }

    /// Output generated bytes: from here on, everything is queued.
    fn generated(&mut self, bytes: &[u8]) {
        self.queuing = true;
        self.queue.extend_from_slice(bytes);
    }
}

/// The frame state machine over the raw byte stream (after the magic).
#[derive(Debug)]
struct Walker {
    state: State,
    open: OpenStreams,
    /// The server's SETTINGS_MAX_FRAME_SIZE: a larger HEADERS frame is h2's to reject.
    max_frame: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// At a frame boundary.
    #[default]
    Header,
    /// Inside a frame's payload, passed through.
    Pass { left: u32 },
    /// Inside a rewritten HEADERS frame's fragment; its `pad` bytes of padding follow.
    Fragment { left: u32, pad: u8 },
    /// Dropping a rewritten frame's padding.
    Drop { left: u32 },
}

impl Walker {
    /// Walk `region`, sending processed bytes to `sink`; returns where the unprocessed rest
    /// (an incomplete frame header) starts.
    fn walk(&mut self, region: &mut [u8], sink: &mut Sink<'_>) -> usize {
        let mut at = 0;
        while at < region.len() {
            let avail = region.len() - at;
            match self.state {
                State::Pass { left } => {
                    let n = avail.min(left as usize);
                    sink.pass(region, at, n);
                    at += n;
                    self.state = next(left, n, State::Header, |left| State::Pass { left });
                }
                State::Fragment { left, pad } => {
                    let n = avail.min(left as usize);
                    sink.pass(region, at, n);
                    at += n;
                    let after = if pad > 0 { State::Drop { left: u32::from(pad) } } else { State::Header };
                    self.state = next(left, n, after, |left| State::Fragment { left, pad });
                }
                State::Drop { left } => {
                    let n = avail.min(left as usize);
                    at += n;
                    self.state = next(left, n, State::Header, |left| State::Drop { left });
                }
                State::Header => {
                    if avail < FRAME_HEADER_LEN {
                        return at;
                    }
                    let h = &region[at..at + FRAME_HEADER_LEN];
                    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                    let (kind, flags) = (h[3], h[4]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    match kind {
                        HEADERS if stream != 0 && self.open.is_open(stream) => {
                            let prefix = u32::from(flags & PADDED != 0) + 5 * u32::from(flags & PRIORITY != 0);
                            // Too large, or too short for its prefix: h2 rejects it as it is.
                            let rewritable = len <= self.max_frame && prefix <= len;
                            let prefix = prefix as usize;
                            if rewritable && avail < FRAME_HEADER_LEN + prefix {
                                return at;
                            }
                            // Trailers end the request, whatever h2 makes of them.
                            self.open.close(stream);
                            if rewritable {
                                let body = at + FRAME_HEADER_LEN;
                                let pad = if flags & PADDED != 0 { region[body] } else { 0 };
                                let prio = (flags & PRIORITY != 0).then(|| {
                                    let p = body + usize::from(flags & PADDED != 0);
                                    [region[p], region[p + 1], region[p + 2], region[p + 3], region[p + 4]]
                                });
                                // Padding longer than the frame: h2 rejects it as it is.
                                if let Some(fragment) = (len - prefix as u32).checked_sub(u32::from(pad)) {
                                    let (bytes, n) = rewrite(stream, flags, prio, fragment);
                                    sink.generated(&bytes[..n]);
                                    at = body + prefix;
                                    self.state = if fragment > 0 {
                                        State::Fragment { left: fragment, pad }
                                    } else if pad > 0 {
                                        State::Drop { left: u32::from(pad) }
                                    } else {
                                        State::Header
                                    };
                                    continue;
                                }
                            }
                        }
                        HEADERS if stream > self.open.newest => self.open.start(stream, flags & END_STREAM == 0),
                        DATA if flags & END_STREAM != 0 => self.open.close(stream),
                        RST_STREAM => self.open.close(stream),
                        _ => {}
                    }
                    sink.pass(region, at, FRAME_HEADER_LEN);
                    at += FRAME_HEADER_LEN;
                    self.state = if len > 0 { State::Pass { left: len } } else { State::Header };
                }
            }
        }
        at
    }
}

/// The state after taking `n` of `left` bytes: `done` when none are left.
fn next(left: u32, n: usize, done: State, more: impl FnOnce(u32) -> State) -> State {
    let left = left - n as u32;
    if left == 0 { done } else { more(left) }
}

/// The HEADERS frame with the marker and the header of the CONTINUATION that carries the
/// client's fragment (`fragment` bytes, passed on after these): the bytes and their length.
fn rewrite(stream: u32, flags: u8, prio: Option<[u8; 5]>, fragment: u32) -> ([u8; REWRITE_MAX], usize) {
    let mut out = [0u8; REWRITE_MAX];
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        out[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    let id = stream.to_be_bytes();
    let len = MARKER.len() as u32 + if prio.is_some() { 5 } else { 0 };
    put(&len.to_be_bytes()[1..]);
    put(&[HEADERS, flags & !(END_HEADERS | PADDED)]);
    put(&id);
    if let Some(p) = prio {
        put(&p);
    }
    put(&MARKER);
    put(&fragment.to_be_bytes()[1..]);
    put(&[CONTINUATION, flags & END_HEADERS]);
    put(&id);
    (out, n)
}

/// The longest [`rewrite`]: two frame headers, a priority and the marker.
const REWRITE_MAX: usize = 2 * FRAME_HEADER_LEN + 5 + MARKER.len();

/// The client's streams whose request has begun without END_STREAM and not ended yet (by
/// END_STREAM, trailers or RST_STREAM), for the latest [`WINDOW`] stream ids: one bit each.
#[derive(Debug)]
struct OpenStreams {
    /// The highest stream id a HEADERS frame has opened.
    newest: u32,
    bits: [u64; WINDOW as usize / 64],
}

impl Default for OpenStreams {
    fn default() -> Self {
        Self { newest: 0, bits: [0; WINDOW as usize / 64] }
    }
}

impl OpenStreams {
    /// Stream ids 1, 3, 5, … count 1, 2, 3, …
    fn index(id: u32) -> u32 {
        id.div_ceil(2)
    }

    fn bit(index: u32) -> (usize, u64) {
        let i = index % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn in_window(&self, id: u32) -> bool {
        id <= self.newest && Self::index(self.newest) - Self::index(id) < WINDOW
    }

    fn is_open(&self, id: u32) -> bool {
        let (word, mask) = Self::bit(Self::index(id));
        self.in_window(id) && self.bits[word] & mask != 0
    }

    /// A HEADERS frame opened stream `id` (above every earlier one); `open`: without END_STREAM.
    fn start(&mut self, id: u32, open: bool) {
        let (from, to) = (Self::index(self.newest), Self::index(id));
        // The ids passed over take the bits of the ids leaving the window: clear them.
        if to - from >= WINDOW {
            self.bits = [0; WINDOW as usize / 64];
        } else {
            for index in from + 1..=to {
                let (word, mask) = Self::bit(index);
                self.bits[word] &= !mask;
            }
        }
        self.newest = id;
        if open {
            let (word, mask) = Self::bit(to);
            self.bits[word] |= mask;
        }
    }

    fn close(&mut self, id: u32) {
        if self.in_window(id) {
            let (word, mask) = Self::bit(Self::index(id));
            self.bits[word] &= !mask;
        }
    }
}

#[cfg(test)]
#[path = "h2_guard/tests.rs"]
mod tests;
