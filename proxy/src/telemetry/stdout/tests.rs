use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// A sink that keeps each write as one chunk (one `write(2)` on stdout).
#[derive(Clone, Default)]
struct Chunks(Arc<Mutex<Vec<Vec<u8>>>>);

impl Chunks {
    fn chunks(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|c| String::from_utf8(c.clone()).unwrap()).collect()
    }

    fn text(&self) -> String {
        self.chunks().concat()
    }
}

impl io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `n` bytes: `tag`, dots, newline.
fn line(tag: &str, n: usize) -> Vec<u8> {
    let mut l = tag.as_bytes().to_vec();
    l.resize(n - 1, b'.');
    l.push(b'\n');
    l
}

/// Poll `check` until true, within 10 s (the flusher is a real thread on a real clock).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn lines_wait_for_the_threshold_then_leave_in_order_in_one_write() {
    let sink = Chunks::default();
    let b = LineBuffer::new(sink.clone(), 100);
    for tag in ["a", "b", "c"] {
        b.push(&line(tag, 30));
    }
    assert!(sink.chunks().is_empty(), "90 bytes < 100: still pending");
    b.push(&line("d", 30));
    let expected: Vec<u8> = ["a", "b", "c", "d"].iter().flat_map(|t| line(t, 30)).collect();
    assert_eq!(sink.chunks(), vec![String::from_utf8(expected).unwrap()], "one write, in order");
    b.push(&line("e", 30));
    assert_eq!(sink.chunks().len(), 1, "a new batch begins");
}

#[test]
fn a_line_larger_than_the_threshold_is_written_whole_at_once() {
    let sink = Chunks::default();
    let b = LineBuffer::new(sink.clone(), 100);
    b.push(&line("small", 20));
    let big = line("big", 1000);
    b.push(&big);
    let mut expected = line("small", 20);
    expected.extend_from_slice(&big);
    assert_eq!(sink.chunks(), vec![String::from_utf8(expected).unwrap()]);
}

#[test]
fn another_line_is_written_at_once_after_the_pending_ones() {
    let sink = Chunks::default();
    let b = LineBuffer::new(sink.clone(), 1000);
    b.push(b"access 1\n");
    b.push(b"access 2\n");
    b.write_now(b"log\n");
    assert_eq!(sink.text(), "access 1\naccess 2\nlog\n");
    b.write_now(b"log 2\n");
    assert_eq!(sink.text(), "access 1\naccess 2\nlog\nlog 2\n");
}

#[test]
fn close_writes_what_is_pending_and_then_every_line_at_once() {
    let sink = Chunks::default();
    let b = LineBuffer::new(sink.clone(), 1000);
    b.push(b"one\n");
    b.push(b"two\n");
    assert_eq!(sink.text(), "");
    b.close();
    assert_eq!(sink.text(), "one\ntwo\n");
    b.push(b"three\n");
    assert_eq!(sink.chunks(), vec!["one\ntwo\n", "three\n"], "after close, each line at once");
}

#[test]
fn the_flusher_writes_a_line_within_its_interval_without_further_lines() {
    let sink = Chunks::default();
    let b = Arc::new(LineBuffer::new(sink.clone(), 1000));
    let flusher = b.clone();
    let thread = std::thread::spawn(move || flusher.flush_every(Duration::from_millis(20)));
    b.push(b"first\n");
    eventually("the first line, flushed by the interval", || sink.text() == "first\n");
    // With nothing pending, the flusher sleeps without a timeout: an idle proxy is not woken.
    eventually("the flusher to wait for the next line", || b.pending.lock().flusher_idle);
    // The flusher went back to waiting for a line; the next one wakes it again.
    b.push(b"second\n");
    b.push(b"third\n");
    eventually("the next lines", || sink.text() == "first\nsecond\nthird\n");
    b.close();
    thread.join().unwrap();
}

#[test]
fn concurrent_lines_are_never_split_and_keep_each_writers_order() {
    let sink = Chunks::default();
    let b = Arc::new(LineBuffer::new(sink.clone(), 512));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let b = b.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    b.push(format!("{w} {i:04} {}\n", "x".repeat(40 + i % 50)).as_bytes());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    b.close();
    let text = sink.text();
    let mut next = [0usize; 4];
    for l in text.lines() {
        let mut parts = l.split(' ');
        let w: usize = parts.next().unwrap().parse().unwrap();
        let i: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(parts.next().unwrap(), "x".repeat(40 + i % 50), "a whole line: {l}");
        assert_eq!(i, next[w], "writer {w}'s lines in order");
        next[w] += 1;
    }
    assert_eq!(next, [500; 4], "every line written");
    assert!(sink.chunks().iter().all(|c| c.ends_with('\n')), "every write ends a line");
}

#[test]
fn a_zero_interval_starts_no_buffering() {
    assert!(start(Duration::ZERO).is_none());
    assert!(STDOUT.get().is_none(), "access-log lines are written at once");
}
