//! The line written here is byte for byte the line tracing's JSON layer writes (after the
//! timestamp, which differs by the clock): checked by writing the same record both ways.
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tracing_subscriber::layer::SubscriberExt;

use super::super::{Recorder, RequestRecord};
use super::*;
use crate::telemetry::metrics::Metrics;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The line tracing writes for `rec`, with the subscriber `log::init` installs for JSON.
fn through_tracing(rec: &RequestRecord, o: &Outcome) -> String {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(move || writer.clone()),
    );
    tracing::subscriber::with_default(subscriber, || rec.log_with_tracing(o));
    let line = out.0.lock().unwrap().clone();
    String::from_utf8(line).unwrap()
}

fn direct(rec: &RequestRecord, o: &Outcome) -> String {
    let mut b = Vec::new();
    format(&mut b, rec, o, SystemTime::now());
    String::from_utf8(b).unwrap()
}

/// Everything after the timestamp.
fn after_timestamp(line: &str) -> &str {
    let at = line.find("\",\"level\"").expect("a level after the timestamp");
    &line[at..]
}

fn record(recorder: &Arc<Recorder>, client: &str, path: &str) -> RequestRecord {
    let req = http::Request::builder().method("POST").uri(path).body(()).unwrap();
    RequestRecord::start(recorder, Direction::outbound, client.parse().unwrap(), &req)
}

fn outcome(status: u16, local_reply: Option<&'static str>, response_bytes: Option<u64>, complete: bool) -> Outcome {
    Outcome {
        status,
        local_reply,
        first_byte: Duration::from_nanos(183_734),
        total: Duration::from_micros(2_281_007),
        response_bytes,
        complete,
    }
}

#[test]
fn a_full_record_is_written_as_tracing_writes_it() {
    let recorder = Arc::new(Recorder::new(Metrics::new(), true).for_workload("default/reviews"));
    let mut rec = record(&recorder, "127.0.0.1:42074", "/a/b?c=d&e=%22f%22");
    rec.authority = Some("echo:8080".parse().unwrap());
    rec.request_id = Some(http::HeaderValue::from_static("eee72b51-7280-4456-bb0b-013e8f0f5a2c"));
    rec.service = Arc::from("echo");
    rec.route = Arc::from("default");
    rec.upstream = Some("10.1.200.3:18999".parse().unwrap());
    rec.attempts = 2;
    rec.trace_id =
        Some([0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36]);
    rec.request_bytes = Some(5);
    rec.connect = Some(Duration::from_nanos(180_001));
    let o = outcome(200, None, Some(3914), true);
    let (a, b) = (through_tracing(&rec, &o), direct(&rec, &o));
    assert_eq!(after_timestamp(&a), after_timestamp(&b));
    assert!(b.ends_with("}\n"));
}

#[test]
fn a_local_reply_without_upstream_leaves_out_the_absent_fields_as_tracing_does() {
    let recorder = Arc::new(Recorder::new(Metrics::new(), true));
    let rec = record(&recorder, "[2001:db8::1]:443", "/");
    let o = outcome(404, Some("no-route"), None, false);
    let (a, b) = (through_tracing(&rec, &o), direct(&rec, &o));
    assert_eq!(after_timestamp(&a), after_timestamp(&b));
    assert!(!b.contains("connect_ms") && !b.contains("request_bytes") && !b.contains("response_bytes"), "{b}");
}

#[test]
fn strings_are_escaped_as_serde_json_escapes_them() {
    let recorder = Arc::new(Recorder::new(Metrics::new(), true));
    let mut rec = record(&recorder, "127.0.0.1:1", "/");
    rec.service = Arc::from("q\"uote\\back\nline\ttab\r\u{8}\u{c}\u{1}\u{1f}\u{7f}é☃");
    rec.route = Arc::from("");
    for status in [0, 100, 503] {
        let o = outcome(status, Some("timeout"), Some(0), true);
        let (a, b) = (through_tracing(&rec, &o), direct(&rec, &o));
        assert_eq!(after_timestamp(&a), after_timestamp(&b));
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["service"], "q\"uote\\back\nline\ttab\r\u{8}\u{c}\u{1}\u{1f}\u{7f}é☃");
    }
}

#[test]
fn numbers_are_formatted_as_serde_json_formats_them() {
    let recorder = Arc::new(Recorder::new(Metrics::new(), true));
    let rec = record(&recorder, "127.0.0.1:65535", "/");
    for nanos in [0u64, 1, 999, 1_000_000, 123_456_789, 3_600_000_000_000, u64::from(u32::MAX) * 7] {
        let mut o = outcome(200, None, Some(u64::MAX), true);
        o.first_byte = Duration::from_nanos(nanos);
        o.total = Duration::from_nanos(nanos * 3 + 1);
        let (a, b) = (through_tracing(&rec, &o), direct(&rec, &o));
        assert_eq!(after_timestamp(&a), after_timestamp(&b));
    }
}

#[test]
fn the_timestamp_is_rfc3339_utc_with_microseconds() {
    let at = |secs: u64, micros: u64| {
        let mut b = Vec::new();
        timestamp(&mut b, UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros));
        String::from_utf8(b).unwrap()
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
    assert_eq!(at(1_764_792_261, 9_082), "2025-12-03T20:04:21.009082Z");
    assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    // The second's text is kept per thread: the same second again, the next one, an earlier one
    // (a clock stepped back).
    assert_eq!(at(4_107_542_399, 1), "2100-02-28T23:59:59.000001Z");
    assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    assert_eq!(at(1_764_792_261, 10), "2025-12-03T20:04:21.000010Z");
}

#[test]
fn values_needing_no_escape_and_values_with_one_at_either_end_are_written_as_serde_json_writes_them() {
    for value in ["", "plain/path?q=1", "\"at-start", "at-end\\", "mid\u{1}dle", "\u{7f}é☃ not escaped"] {
        let mut b = Vec::new();
        escaped(&mut b, value);
        let json = serde_json::to_string(value).unwrap();
        assert_eq!(String::from_utf8(b).unwrap(), json[1..json.len() - 1], "{value:?}");
    }
}

#[test]
fn the_timestamp_has_the_shape_tracing_writes() {
    let recorder = Arc::new(Recorder::new(Metrics::new(), true));
    let rec = record(&recorder, "127.0.0.1:1", "/");
    let o = outcome(200, None, None, true);
    let (a, b) = (through_tracing(&rec, &o), direct(&rec, &o));
    let ts = |l: &str| l[..l.find("\",\"level\"").unwrap()].to_owned();
    let (ta, tb) = (ts(&a), ts(&b));
    assert_eq!(ta.len(), tb.len(), "{ta} vs {tb}");
    let shape = |t: &str| t.chars().map(|c| if c.is_ascii_digit() { '0' } else { c }).collect::<String>();
    assert_eq!(shape(&ta), shape(&tb));
}
