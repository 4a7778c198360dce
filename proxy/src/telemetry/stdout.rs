//! Lines on stdout when logs are JSON: access-log lines batched, every other line at once,
//! all in the order they were written.
//!
//! why: with the line formatted without allocation (`access/json.rs`), what remained of the
//! access log's cost (9–13 % CPU per request at full load, docs/benchmarks.md) was one
//! `write(2)` per line. Measured with `dd` on the 2-vCPU bench VM, moving 200 MB in blocks (a
//! read and a write each): 400-byte blocks (one access-log line) cost 1.1 µs each to a file and
//! 1.3 µs to a pipe; 32 KiB blocks cost 0.2 and 0.1 µs per 400 bytes, and 64 KiB no less. So lines are appended
//! to one process-wide buffer and written once it holds [`THRESHOLD`] (32 KiB: all of the
//! gain, and half a default pipe, so one batch fits a container runtime's pipe), or at the
//! latest `--access-log-flush-interval` after the oldest line in it (as Envoy's
//! `--file-flush-interval-msec`).
//!
//! Order: one lock (`pending`) around the buffer. A line is appended whole, under it, so lines
//! are never split or interleaved. A batch is written under a second lock (`out`), taken
//! before `pending` is released, so batches leave in the order they were cut, and appending
//! goes on while a batch is written; it waits only when another 32 KiB arrive during one
//! write, i.e. when stdout cannot keep up, as a line written at once would wait. Any other line (a log line, through `tracing`) first
//! writes the lines pending before it: stdout keeps the order in which lines were produced.
//!
//! Cost: nothing unless [`start`] was called (the access log on, JSON logs on stdout, an
//! interval above 0s). The flusher is a thread that sleeps without a timeout while the buffer
//! is empty; the first line after that wakes it (one `notify`, only then), and it writes the
//! buffer one interval later: an idle proxy is never woken, a busy one once per interval.
//!
//! A clean exit writes what is pending ([`Flush`]'s drop, in `main`); a SIGKILL loses the
//! lines of at most the last interval.
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

/// A batch is written once the buffer holds this much.
pub const THRESHOLD: usize = 32 * 1024;

/// The target of access-log lines written through `tracing` (TCP connections; HTTP requests
/// when logs are not JSON on stdout).
const ACCESS_TARGET: &str = "outrider::access";

/// Lines batched on their way to `W`.
pub struct LineBuffer<W> {
    pending: Mutex<Pending>,
    /// Wakes the flusher: the first line into an empty buffer, and [`LineBuffer::close`].
    wake: Condvar,
    /// The sink, and the buffer the next batch is cut into; held while a batch is written.
    out: Mutex<Out<W>>,
    threshold: usize,
}

struct Pending {
    buf: Vec<u8>,
    /// The flusher waits for a first line, without a timeout: the next line wakes it.
    flusher_idle: bool,
    /// After [`LineBuffer::close`], lines are written at once.
    closed: bool,
}

struct Out<W> {
    spare: Vec<u8>,
    sink: W,
}

impl<W> std::fmt::Debug for LineBuffer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineBuffer").field("threshold", &self.threshold).finish_non_exhaustive()
    }
}

impl<W: Write> LineBuffer<W> {
    pub fn new(sink: W, threshold: usize) -> Self {
        Self {
            pending: Mutex::new(Pending { buf: Vec::with_capacity(threshold * 2), flusher_idle: false, closed: false }),
            wake: Condvar::new(),
            out: Mutex::new(Out { spare: Vec::with_capacity(threshold * 2), sink }),
            threshold,
        }
    }

    /// Append `line` (whole, with its newline); written with the batch it completes, or by the
    /// flusher within its interval.
    pub fn push(&self, line: &[u8]) {
        let mut p = self.pending.lock();
        if p.closed {
            return self.write_out(p, line);
        }
        p.buf.extend_from_slice(line);
        if p.buf.len() >= self.threshold {
            return self.write_out(p, &[]);
        }
        if p.flusher_idle {
            p.flusher_idle = false;
            self.wake.notify_one();
        }
    }

    /// Write the pending lines, then `line`, now.
    pub fn write_now(&self, line: &[u8]) {
        let p = self.pending.lock();
        self.write_out(p, line);
    }

    /// Write the pending lines now; from then on every line is written at once (exit).
    pub fn close(&self) {
        let mut p = self.pending.lock();
        p.closed = true;
        self.wake.notify_all();
        self.write_out(p, &[]);
    }

    /// Cut the pending lines (and `then`) into a batch and write it. `out` is locked before
    /// `pending` is released: batches are written in the order they were cut.
    fn write_out(&self, mut p: MutexGuard<'_, Pending>, then: &[u8]) {
        let mut out = self.out.lock();
        let out = &mut *out;
        std::mem::swap(&mut p.buf, &mut out.spare);
        drop(p);
        out.spare.extend_from_slice(then);
        if !out.spare.is_empty() {
            // A failed stdout write is not a request's failure (tracing ignores it too).
            let _ = out.sink.write_all(&out.spare).and_then(|()| out.sink.flush());
        }
        out.spare.clear();
        // why: a rare huge line must not keep its buffer for the process's life.
        if out.spare.capacity() > self.threshold * 4 {
            out.spare = Vec::with_capacity(self.threshold * 2);
        }
    }

    /// The flusher: writes the buffer at the latest `interval` after its first line; returns
    /// once the buffer is closed.
    pub fn flush_every(&self, interval: Duration) {
        let mut p = self.pending.lock();
        loop {
            if p.closed {
                return;
            }
            if p.buf.is_empty() {
                p.flusher_idle = true;
                self.wake.wait(&mut p);
                continue;
            }
            // why: a std thread and std `Instant`, not a tokio task: the buffer is filled from
            // every runtime's threads and must be written after the runtimes are gone.
            let due = Instant::now() + interval;
            while !p.closed && !self.wake.wait_until(&mut p, due).timed_out() {}
            if p.closed {
                return;
            }
            self.write_out(p, &[]);
            p = self.pending.lock();
        }
    }
}

/// The process's stdout buffer, once [`start`]ed.
static STDOUT: OnceLock<Arc<LineBuffer<std::io::Stdout>>> = OnceLock::new();

/// Writes what is pending when dropped (the proxy's exit); lines after that go out at once.
#[derive(Debug)]
#[must_use = "dropping it flushes the access log and ends the buffering"]
pub struct Flush(Arc<LineBuffer<std::io::Stdout>>);

impl Drop for Flush {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Batch access-log lines on stdout, written at least every `interval` (a flusher thread).
/// `None` (lines written at once, as without it): `interval` is 0, buffering was started
/// before, or the thread could not start.
pub fn start(interval: Duration) -> Option<Flush> {
    if interval.is_zero() || STDOUT.get().is_some() {
        return None;
    }
    let buf = Arc::new(LineBuffer::new(std::io::stdout(), THRESHOLD));
    let flusher = buf.clone();
    std::thread::Builder::new().name("outrider-log-flush".into()).spawn(move || flusher.flush_every(interval)).ok()?;
    if STDOUT.set(buf.clone()).is_err() {
        buf.close();
        return None;
    }
    Some(Flush(buf))
}

/// An access-log line: batched once [`start`]ed, else written at once.
pub fn access_line(line: &[u8]) {
    match STDOUT.get() {
        Some(b) => b.push(line),
        // A failed stdout write is not a request's failure (tracing ignores it too).
        None => {
            let _ = std::io::stdout().write_all(line);
        }
    }
}

/// Any other line: written now, after the access-log lines pending before it.
fn line_now(line: &[u8]) -> std::io::Result<()> {
    match STDOUT.get() {
        Some(b) => {
            b.write_now(line);
            Ok(())
        }
        None => std::io::stdout().write_all(line),
    }
}

/// The writer of the JSON log subscriber: access-log lines (target `outrider::access`) into
/// the buffer, every other line at once after them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lines;

/// One event's line (tracing's fmt layer writes each event with one `write_all`).
#[derive(Debug)]
pub struct LineWriter {
    access: bool,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.access {
            access_line(buf);
        } else {
            line_now(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { access: false }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter { access: meta.target() == ACCESS_TARGET }
    }
}

#[cfg(test)]
mod tests;
