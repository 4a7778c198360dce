//! The HTTP access-log line in JSON, written straight to stdout.
//!
//! why: through `tracing` the line cost ~42,000 instructions (serde map visitor, `fmt` for
//! every address and number, escaping through `fmt::Write`): as much as the rest of the
//! request. Here it is formatted into a reused per-thread buffer, without `fmt` or an
//! intermediate `String`, and handed whole to [`crate::telemetry::stdout`], which batches
//! access-log lines (one `write` per 32 KiB or per `--access-log-flush-interval`), as it does
//! the lines tracing's JSON layer writes for TCP connections. The line is the one that layer writes (same fields, order,
//! number formats; a field whose value is absent is left out), so readers see no change.
//! Used only when this process installed the JSON log subscriber ([`super::super::log`]);
//! the log filter still decides whether the line is wanted.
use std::cell::RefCell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::RequestRecord;
use crate::telemetry::metrics::Direction;

/// What [`RequestRecord::emit`] knows at the end of a request.
pub(super) struct Outcome {
    pub status: u16,
    pub local_reply: Option<&'static str>,
    pub first_byte: Duration,
    pub total: Duration,
    pub response_bytes: Option<u64>,
    pub complete: bool,
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// Write the line for `rec` to stdout (batched, once buffering started).
pub(super) fn write(rec: &RequestRecord, o: &Outcome) {
    LINE.with(|line| {
        let Ok(mut buf) = line.try_borrow_mut() else { return };
        buf.clear();
        format(&mut buf, rec, o, SystemTime::now());
        crate::telemetry::stdout::access_line(&buf);
        // why: a rare huge line (a long path) must not keep its buffer for the thread's life.
        if buf.capacity() > 16 * 1024 {
            *buf = Vec::with_capacity(1024);
        }
    });
}

pub(super) fn format(b: &mut Vec<u8>, rec: &RequestRecord, o: &Outcome, now: SystemTime) {
    b.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(b, now);
    b.extend_from_slice(b"\",\"level\":\"INFO\",\"kind\":\"http\",\"direction\":\"");
    b.extend_from_slice(match rec.direction {
        Direction::outbound => b"outbound",
        Direction::inbound => b"inbound",
    });
    b.extend_from_slice(b"\",\"client\":\"");
    addr(b, rec.client);
    b.push(b'"');
    str_field(b, b",\"method\":\"", rec.method.as_str());
    str_field(b, b",\"authority\":\"", rec.authority.as_ref().map(|a| a.as_str()).unwrap_or(""));
    str_field(b, b",\"path\":\"", rec.path.as_ref().map(|p| p.as_str()).unwrap_or(""));
    str_field(b, b",\"protocol\":\"", version(rec.version));
    b.extend_from_slice(b",\"status\":");
    int(b, o.status);
    str_field(b, b",\"service\":\"", &rec.service);
    str_field(b, b",\"route\":\"", &rec.route);
    b.extend_from_slice(b",\"upstream\":\"");
    if let Some(u) = rec.upstream {
        addr(b, u);
    }
    b.extend_from_slice(b"\",\"attempts\":");
    int(b, rec.attempts);
    str_field(b, b",\"local_reply\":\"", o.local_reply.unwrap_or(""));
    str_field(b, b",\"request_id\":\"", rec.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""));
    b.extend_from_slice(b",\"trace_id\":\"");
    if let Some(id) = &rec.trace_id {
        let mut hex = [0u8; 32];
        crate::telemetry::trace::hex_into(id, &mut hex);
        b.extend_from_slice(&hex);
    }
    b.push(b'"');
    if let Some(c) = rec.connect {
        float_field(b, b",\"connect_ms\":", super::ms(c));
    }
    float_field(b, b",\"first_byte_ms\":", super::ms(o.first_byte));
    float_field(b, b",\"duration_ms\":", super::ms(o.total));
    if let Some(n) = rec.request_bytes {
        b.extend_from_slice(b",\"request_bytes\":");
        int(b, n);
    }
    if let Some(n) = o.response_bytes {
        b.extend_from_slice(b",\"response_bytes\":");
        int(b, n);
    }
    b.extend_from_slice(if o.complete { b",\"complete\":true" } else { b",\"complete\":false" });
    str_field(b, b",\"peer_identity\":\"", rec.peer.as_ref().map_or("", |p| p.as_str()));
    str_field(b, b",\"workload\":\"", rec.recorder.workload.as_deref().unwrap_or(""));
    b.extend_from_slice(b",\"target\":\"outrider::access\"}\n");
}

/// As `Debug` for `http::Version` writes it (the field tracing recorded with `?`).
fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

/// `,"name":"value"` with `value` escaped as serde_json escapes it; `key` is the
/// `,"name":"` before it, one literal per field (one copy instead of three).
fn str_field(b: &mut Vec<u8>, key: &[u8], value: &str) {
    b.extend_from_slice(key);
    escaped(b, value);
    b.push(b'"');
}

/// `,"name":v`; `key` is the `,"name":` before it.
fn float_field(b: &mut Vec<u8>, key: &[u8], v: f64) {
    b.extend_from_slice(key);
    if v.is_finite() {
        // The shortest representation, as serde_json writes an f64.
        b.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    } else {
        b.extend_from_slice(b"null");
    }
}

fn int(b: &mut Vec<u8>, v: impl itoa::Integer) {
    b.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// JSON string contents: `"`, `\` and control characters escaped (short forms where
/// JSON has them, else `\u00XX`), everything else as is.
fn escaped(b: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    // why: nearly every value (paths, ids, names) needs no escape: a check without an early
    // exit (about 2 instructions a byte) and one copy, where the loop below costs ~15 a byte
    // (callgrind, `benches/callgrind/ir.sh h1-log`).
    if !bytes.iter().fold(false, |any, &c| any | (c < 0x20) | (c == b'"') | (c == b'\\')) {
        b.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..=0x1f => 0,
            _ => continue,
        };
        b.extend_from_slice(&bytes[start..i]);
        if short == 0 {
            b.extend_from_slice(b"\\u00");
            b.push(HEX[usize::from(c >> 4)]);
            b.push(HEX[usize::from(c & 0xf)]);
        } else {
            b.push(b'\\');
            b.push(short);
        }
        start = i + 1;
    }
    b.extend_from_slice(&bytes[start..]);
}

/// As `SocketAddr`'s `Display` writes it.
fn addr(b: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            let mut ip = [0u8; 16];
            let n = crate::http::headers::write_ipv4(*v4.ip(), &mut ip);
            b.extend_from_slice(&ip[..n]);
            b.push(b':');
            int(b, v4.port());
        }
        // Rare on the request path: `fmt` is fine.
        SocketAddr::V6(_) => {
            let _ = write!(b, "{a}");
        }
    }
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber's default timer writes it:
/// `2026-12-03T20:04:21.009082Z`.
fn timestamp(b: &mut Vec<u8>, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    // why: lines come many per second; the date and time to the second are formatted once
    // per second per thread and copied after that.
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != Some(secs) || cached.1.is_empty() {
            cached.1.clear();
            date_time(&mut cached.1, secs);
            cached.0 = Some(secs);
        }
        b.extend_from_slice(&cached.1);
    });
    b.push(b'.');
    let micros = d.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut m = micros;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (m % 10) as u8;
        m /= 10;
    }
    b.extend_from_slice(&digits);
    b.push(b'Z');
}

thread_local! {
    /// The last second [`timestamp`] formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(Option<u64>, Vec<u8>)> = const { RefCell::new((None, Vec::new())) };
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the epoch, UTC.
fn date_time(b: &mut Vec<u8>, secs: u64) {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let two = |b: &mut Vec<u8>, v: u64| {
        b.push(b'0' + (v / 10 % 10) as u8);
        b.push(b'0' + (v % 10) as u8);
    };
    int(b, year);
    b.push(b'-');
    two(b, month);
    b.push(b'-');
    two(b, day);
    b.push(b'T');
    two(b, rem / 3600);
    b.push(b':');
    two(b, rem / 60 % 60);
    b.push(b':');
    two(b, rem % 60);
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
