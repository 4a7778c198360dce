//! Trace context headers: W3C Trace Context (`traceparent`, `tracestate`) first,
//! then B3 single (`b3`) and multi (`x-b3-*`). We always send `traceparent`; when
//! the caller spoke B3, its B3 headers are rewritten to name our span too, so a
//! B3-only application behind us continues the same trace.
use http::{HeaderMap, HeaderName, HeaderValue};

use super::{SpanContext, hex_into};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static B3: HeaderName = HeaderName::from_static("b3");
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which B3 form the caller used, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum B3Style {
    #[default]
    None,
    Single,
    Multi,
}

/// The caller's span, if its headers name one validly, and whether the caller
/// decided sampling (B3 may defer the decision to us).
pub fn extract(headers: &HeaderMap) -> Option<(SpanContext, bool)> {
    if let Some(cx) = headers.get(&TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes())) {
        let trace_state = headers.get(&TRACESTATE).filter(|v| !v.is_empty()).cloned();
        let b3 = if headers.contains_key(&B3) {
            B3Style::Single
        } else if headers.contains_key(&X_B3_TRACEID) {
            B3Style::Multi
        } else {
            B3Style::None
        };
        return Some((SpanContext { trace_state, b3, ..cx }, true));
    }
    if let Some(v) = headers.get(&B3) {
        return parse_b3_single(v.as_bytes());
    }
    parse_b3_multi(headers)
}

/// Only the trace id (for the access log when tracing is off).
pub fn trace_id(headers: &HeaderMap) -> Option<[u8; 16]> {
    if !headers.contains_key(&TRACEPARENT) && !headers.contains_key(&B3) && !headers.contains_key(&X_B3_TRACEID) {
        return None;
    }
    extract(headers).map(|(c, _)| c.trace_id)
}

/// Give a request that names no trace `parent` as its `traceparent` (an HBONE `CONNECT`'s
/// context for the requests of its tunnel); a request with W3C or B3 context keeps its own.
pub fn default_parent(headers: &mut HeaderMap, parent: &HeaderValue) {
    if !headers.contains_key(&TRACEPARENT) && !headers.contains_key(&B3) && !headers.contains_key(&X_B3_TRACEID) {
        headers.insert(TRACEPARENT.clone(), parent.clone());
    }
}

/// Write `cx` as the parent of the next hop.
pub fn inject(cx: &SpanContext, headers: &mut HeaderMap) {
    // 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>
    let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&cx.trace_id, &mut tp[3..35]);
    hex_into(&cx.span_id, &mut tp[36..52]);
    if cx.sampled {
        tp[54] = b'1';
    }
    if let Ok(mut v) = HeaderValue::from_bytes(&tp) {
        // why: unique per request; sensitive keeps it out of the HPACK dynamic table (as the
        // request id, `http::headers::ensure_request_id`).
        v.set_sensitive(true);
        headers.insert(TRACEPARENT.clone(), v);
    }
    match &cx.trace_state {
        Some(ts) => {
            headers.insert(TRACESTATE.clone(), ts.clone());
        }
        None => {
            headers.remove(&TRACESTATE);
        }
    }
    match cx.b3 {
        B3Style::None => {}
        B3Style::Single => {
            // <trace id>-<span id>-<sampled>
            let mut b3 = *b"00000000000000000000000000000000-0000000000000000-0";
            b3[..32].copy_from_slice(&tp[3..35]);
            b3[33..49].copy_from_slice(&tp[36..52]);
            b3[50] = if cx.sampled { b'1' } else { b'0' };
            if let Ok(v) = HeaderValue::from_bytes(&b3) {
                headers.insert(B3.clone(), v);
            }
        }
        B3Style::Multi => {
            if let (Ok(t), Ok(s)) = (HeaderValue::from_bytes(&tp[3..35]), HeaderValue::from_bytes(&tp[36..52])) {
                headers.insert(X_B3_TRACEID.clone(), t);
                headers.insert(X_B3_SPANID.clone(), s);
            }
            headers.remove(&X_B3_PARENTSPANID);
            headers.remove(&X_B3_FLAGS);
            headers.insert(X_B3_SAMPLED.clone(), HeaderValue::from_static(if cx.sampled { "1" } else { "0" }));
        }
    }
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parse hex into `out` (exactly twice as many digits as bytes).
fn hex_to(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = (hex_nibble(s[2 * i])? << 4) | hex_nibble(s[2 * i + 1])?;
    }
    Some(())
}

/// A 16- or 32-digit trace id (B3 allows 64-bit ids: left-padded with zeros).
fn trace_id_from(s: &[u8]) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    match s.len() {
        32 => hex_to(s, &mut id)?,
        16 => hex_to(s, &mut id[8..])?,
        _ => return None,
    }
    (id != [0; 16]).then_some(id)
}

fn span_id_from(s: &[u8]) -> Option<[u8; 8]> {
    let mut id = [0u8; 8];
    hex_to(s, &mut id)?;
    (id != [0; 8]).then_some(id)
}

/// `version-traceid-parentid-flags`; version `ff` is invalid; a future version
/// may append fields after a dash.
fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    hex_to(&v[0..2], &mut version)?;
    if version[0] == 0xff || (version[0] == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    hex_to(&v[3..35], &mut trace_id)?;
    let span_id = span_id_from(&v[36..52])?;
    let mut flags = [0u8; 1];
    hex_to(&v[53..55], &mut flags)?;
    if trace_id == [0; 16] {
        return None;
    }
    Some(SpanContext { trace_id, span_id, sampled: flags[0] & 1 == 1, trace_state: None, b3: B3Style::None })
}

/// `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]`. A lone sampling state
/// (`b3: 0`) carries no ids, so there is nothing to continue.
fn parse_b3_single(v: &[u8]) -> Option<(SpanContext, bool)> {
    let mut parts = v.split(|&b| b == b'-');
    let trace_id = trace_id_from(parts.next()?)?;
    let span_id = span_id_from(parts.next()?)?;
    let (sampled, decided) = match parts.next() {
        None => (false, false),
        Some(b"1" | b"d") => (true, true),
        Some(b"0") => (false, true),
        Some(_) => return None,
    };
    Some((SpanContext { trace_id, span_id, sampled, trace_state: None, b3: B3Style::Single }, decided))
}

fn parse_b3_multi(headers: &HeaderMap) -> Option<(SpanContext, bool)> {
    let trace_id = trace_id_from(headers.get(&X_B3_TRACEID)?.as_bytes())?;
    let span_id = span_id_from(headers.get(&X_B3_SPANID)?.as_bytes())?;
    let debug = headers.get(&X_B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let (sampled, decided) = match headers.get(&X_B3_SAMPLED).map(|v| v.as_bytes()) {
        _ if debug => (true, true),
        None => (false, false),
        Some(b"1" | b"true") => (true, true),
        Some(_) => (false, true),
    };
    Some((SpanContext { trace_id, span_id, sampled, trace_state: None, b3: B3Style::Multi }, decided))
}
