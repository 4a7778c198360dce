//! The guard against an independent whole-buffer model of the rewrite, over random frame
//! sequences read in random pieces into random (some tiny) buffers.
use std::collections::HashSet;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// The model: parse whole frames, remember open streams in a set, rewrite trailers.
fn model(frames: &[u8]) -> Vec<u8> {
    let mut open = HashSet::new();
    let mut newest = 0;
    let mut out = Vec::new();
    let mut at = 0;
    while at < frames.len() {
        let h = &frames[at..at + 9];
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        let payload = &frames[at + 9..at + 9 + len];
        at += 9 + len;
        if kind == HEADERS && open.remove(&stream) {
            let mut p = payload;
            let pad = if flags & PADDED != 0 {
                let pad = usize::from(p[0]);
                p = &p[1..];
                pad
            } else {
                0
            };
            let mut first = Vec::new();
            if flags & PRIORITY != 0 {
                first.extend(&p[..5]);
                p = &p[5..];
            }
            first.extend(MARKER);
            out.extend(frame(HEADERS, flags & !(END_HEADERS | PADDED), stream, &first));
            out.extend(frame(CONTINUATION, flags & END_HEADERS, stream, &p[..p.len() - pad]));
            continue;
        }
        if kind == HEADERS && stream > newest {
            newest = stream;
            if flags & END_STREAM == 0 {
                open.insert(stream);
            }
        }
        if (kind == DATA && flags & END_STREAM != 0) || kind == RST_STREAM {
            open.remove(&stream);
        }
        out.extend(&frames[at - 9 - len..at]);
    }
    out
}

/// A random conversation: streams opened with and without bodies, DATA, trailers (padded,
/// prioritized, split into CONTINUATIONs), resets, and other frames.
fn conversation(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = frame(0x4, 0, 0, &[0, 4, 0, 1, 0, 0]);
    let mut next = 1;
    let mut open: Vec<u32> = Vec::new();
    for _ in 0..rng.usize(1..60) {
        let block: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
        match rng.u8(0..8) {
            0 | 1 => {
                let es = rng.bool();
                out.extend(frame(HEADERS, END_HEADERS | if es { END_STREAM } else { 0 }, next, &block));
                if !es {
                    open.push(next);
                }
                next += 2 * rng.u32(1..3);
            }
            2 if !open.is_empty() => {
                let s = open[rng.usize(..open.len())];
                let es = rng.bool();
                out.extend(frame(DATA, if es { END_STREAM } else { 0 }, s, &block));
                if es {
                    open.retain(|&o| o != s);
                }
            }
            3 | 4 if !open.is_empty() => {
                let s = open.remove(rng.usize(..open.len()));
                let mut flags = END_STREAM;
                let mut payload = Vec::new();
                let pad = rng.u8(0..4);
                if rng.bool() {
                    flags |= PADDED;
                    payload.push(pad);
                }
                if rng.bool() {
                    flags |= PRIORITY;
                    payload.extend([0, 0, 0, 1, 7]);
                }
                let split = rng.usize(0..=block.len());
                payload.extend(&block[..split]);
                if flags & PADDED != 0 {
                    payload.extend(std::iter::repeat_n(0, usize::from(pad)));
                }
                if rng.bool() {
                    out.extend(frame(HEADERS, flags | END_HEADERS, s, &[payload, block[split..].to_vec()].concat()));
                } else {
                    out.extend(frame(HEADERS, flags, s, &payload));
                    out.extend(frame(CONTINUATION, END_HEADERS, s, &block[split..]));
                }
            }
            5 if !open.is_empty() => {
                let s = open.remove(rng.usize(..open.len()));
                out.extend(frame(RST_STREAM, 0, s, &[0, 0, 0, 8]));
            }
            6 => out.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])),
            _ => out.extend(frame(0x6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8])),
        }
    }
    out
}

/// Hands out `data` in pieces of the given sizes, saying Pending (and waking) before each.
struct Pieces {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
    pending: bool,
}

impl AsyncRead for Pieces {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.pending = !self.pending;
        if self.pending {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let size = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        let n = size.min(self.data.len() - self.at).min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

async fn through_guard(bytes: Vec<u8>, pieces: Vec<usize>, reads: Vec<usize>) -> Vec<u8> {
    let mut g = H2Guard::new(Pieces { data: bytes, at: 0, sizes: pieces, turn: 0, pending: false });
    assert!(g.read_preface().await.unwrap(), "a valid preface");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    for turn in 0.. {
        let size = reads[turn % reads.len()];
        let n = g.read(&mut buf[..size]).await.unwrap();
        if n == 0 {
            break;
        }
        out.extend(&buf[..n]);
    }
    out
}

#[tokio::test]
async fn matches_the_model_however_the_bytes_are_cut() {
    let mut rng = fastrand::Rng::with_seed(0x0u64.wrapping_add(20_261_203));
    for case in 0..400 {
        let frames = conversation(&mut rng);
        let expected = [MAGIC.as_slice(), &model(&frames)].concat();
        let input = [MAGIC.as_slice(), &frames].concat();
        let pieces: Vec<usize> = (0..rng.usize(1..6)).map(|_| rng.usize(1..200)).collect();
        let reads: Vec<usize> = (0..rng.usize(1..6))
            .map(|_| if rng.bool() { rng.usize(1..ROOM + 8) } else { rng.usize(ROOM..8192) })
            .collect();
        let got = through_guard(input, pieces.clone(), reads.clone()).await;
        assert!(
            got == expected,
            "case {case}: pieces {pieces:?}, reads {reads:?}\ngot      {got:?}\nexpected {expected:?}"
        );
    }
}

#[tokio::test]
async fn rewrites_padded_prioritized_trailers_exactly() {
    let block = [0x10, 1, b':', 1, b'x']; // the client's fragment, passed on untouched
    let mut trailers = vec![2]; // pad length
    trailers.extend([0x80, 0, 0, 3, 9]); // exclusive dependency on 3, weight 9
    trailers.extend(block);
    trailers.extend([0, 0]);
    let input = [
        MAGIC.as_slice(),
        &frame(0x4, 0, 0, &[]),
        &frame(HEADERS, END_HEADERS, 1, b"req"),
        &frame(DATA, 0, 1, b"body"),
        &frame(HEADERS, END_STREAM | END_HEADERS | PADDED | PRIORITY, 1, &trailers),
        &frame(0x6, 0, 0, &[0; 8]),
    ]
    .concat();
    let mut first = vec![0x80, 0, 0, 3, 9];
    first.extend(MARKER);
    let expected = [
        MAGIC.as_slice(),
        &frame(0x4, 0, 0, &[]),
        &frame(HEADERS, END_HEADERS, 1, b"req"),
        &frame(DATA, 0, 1, b"body"),
        &frame(HEADERS, END_STREAM | PRIORITY, 1, &first),
        &frame(CONTINUATION, END_HEADERS, 1, &block),
        &frame(0x6, 0, 0, &[0; 8]),
    ]
    .concat();
    assert_eq!(through_guard(input, vec![1000], vec![8192]).await, expected);
}

#[tokio::test]
async fn leaves_requests_and_malformed_frames_alone() {
    let input = [
        MAGIC.as_slice(),
        &frame(0x4, 0, 0, &[]),
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, b"a"),
        // A second block on a stream whose request ended: h2 answers STREAM_CLOSED.
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, b"b"),
        &frame(HEADERS, END_HEADERS, 5, b"c"),
        // A lower stream that was never opened: h2 answers with a connection error.
        &frame(HEADERS, END_HEADERS, 3, b"d"),
        // Padding longer than the frame on an open stream: h2's error, unchanged.
        &frame(HEADERS, END_HEADERS | END_STREAM | PADDED, 5, &[9, 1]),
        &frame(HEADERS, END_HEADERS, 7, b"e"),
        &frame(RST_STREAM, 0, 7, &[0, 0, 0, 8]),
        &frame(HEADERS, END_HEADERS | END_STREAM, 7, b"f"),
    ]
    .concat();
    assert_eq!(through_guard(input.clone(), vec![7], vec![8192]).await, input);
}

#[tokio::test]
async fn an_invalid_preface_is_refused() {
    for bad in [
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec(),
        [MAGIC.as_slice(), &frame(0x6, 0, 0, &[0; 8])].concat(),
        [MAGIC.as_slice(), &frame(0x4, 1, 0, &[])].concat(),
        b"GET / HTTP/1.1\r\n".to_vec(),
        MAGIC[..10].to_vec(),
    ] {
        let mut g = H2Guard::new(Pieces { data: bad.clone(), at: 0, sizes: vec![5], turn: 0, pending: false });
        assert!(!g.read_preface().await.unwrap(), "{:?}", String::from_utf8_lossy(&bad));
    }
}

#[test]
fn open_streams_keep_a_window_of_the_latest() {
    let mut open = OpenStreams::default();
    open.start(1, true);
    open.start(3, false);
    assert!(open.is_open(1) && !open.is_open(3) && !open.is_open(5));
    open.close(1);
    assert!(!open.is_open(1));
    open.start(5, true);
    let far = 5 + 2 * WINDOW;
    open.start(far, true);
    assert!(!open.is_open(5), "left the window");
    assert!(open.is_open(far));
    open.start(far + 2, true);
    assert!(open.is_open(far) && open.is_open(far + 2));
    // Ids passed over clear the bits they take.
    open.start(far + 2 + 2 * (WINDOW - 1), false);
    assert!(!open.is_open(far + 2 + 2 * (WINDOW - 1)));
    assert!(open.is_open(far + 2), "still inside the window");
    assert!(!open.is_open(far), "just left the window");
}
