//! `GET /v1/stats` and `GET /v1/stats/SERVICE`: the proxies' load reports.
//!
//! Query parameters: `window` (a duration from `10s` to `15m`, default `1m`: the span the
//! numbers cover) and, for one service, `labels=k=v[,k=v]` (only the endpoints carrying those
//! labels: a subset).

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::json;

use super::{ApiState, Body, error, json_response};
use crate::stats::{Labels, MAX_WINDOW, WINDOW_SECS};

/// Default `window`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// What a query asks for.
struct Query {
    window: Duration,
    labels: Labels,
}

/// The parameters, or what is wrong with them.
fn parse(query: Option<&str>) -> Result<Query, String> {
    let mut out = Query { window: DEFAULT_WINDOW, labels: Labels::new() };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value);
        match key {
            "window" => {
                let window = outrider_xds::duration::parse(&value)
                    .map_err(|e| format!("window={value}: {e}; use a duration such as 30s or 5m"))?;
                if !(Duration::from_secs(WINDOW_SECS)..=MAX_WINDOW).contains(&window) {
                    return Err(format!("window={value}: must be between 10s and 15m (the history kept)"));
                }
                out.window = window;
            }
            "labels" => {
                for label in value.split(',').filter(|l| !l.is_empty()) {
                    let Some((k, v)) = label.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                        return Err(format!(
                            "labels={value}: use key=value pairs separated by commas, e.g. version=v2"
                        ));
                    };
                    out.labels.insert(k.to_owned(), v.to_owned());
                }
            }
            other => return Err(format!("unknown query parameter {other:?}: expected window or labels")),
        }
    }
    Ok(out)
}

/// `%XX` and `+` decoding of a query value.
pub(super) fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn summary(state: &ApiState, query: Option<&str>) -> Response<Body> {
    let query = match parse(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if !query.labels.is_empty() {
        return error(StatusCode::BAD_REQUEST, "labels applies to one service: GET /v1/stats/SERVICE?labels=k=v");
    }
    let interval = *state.stats.report_interval().borrow();
    let (series, bytes) = state.stats.footprint();
    json_response(
        StatusCode::OK,
        &json!({
            "windowSeconds": query.window.as_secs(),
            "reportInterval": outrider_xds::duration::format(interval),
            "reportingProxies": state.stats.reporting_proxies(),
            "series": series,
            "bytes": bytes,
            "services": state.stats.summary(query.window),
        }),
    )
}

/// `GET /v1/mesh`: every service with its numbers and resilience, and the calls between them.
pub(super) fn mesh(state: &ApiState, query: Option<&str>) -> Response<Body> {
    let query = match parse(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if !query.labels.is_empty() {
        return error(StatusCode::BAD_REQUEST, "labels applies to one service: GET /v1/stats/SERVICE?labels=k=v");
    }
    let key = format!("mesh {}", query.window.as_millis());
    cached(state, &key, || Some(json!(state.stats.mesh(query.window))))
        .unwrap_or_else(|| error(StatusCode::INTERNAL_SERVER_ERROR, "the mesh view could not be built"))
}

/// A JSON answer from the shared views (see [`super::cache`]); `None` when `build` has none.
fn cached(state: &ApiState, key: &str, build: impl FnOnce() -> Option<serde_json::Value>) -> Option<Response<Body>> {
    let body = state.views.get(key, || build().map(|value| bytes::Bytes::from(format!("{value}\n"))).ok_or(())).ok()?;
    Some(
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(body))
            .unwrap_or_default(),
    )
}

pub(super) fn service(state: &ApiState, service: &str, query: Option<&str>) -> Response<Body> {
    let query = match parse(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let key = format!("stats {service} {:?} {}", query.labels, query.window.as_millis());
    cached(state, &key, || state.stats.service(service, &query.labels, query.window).map(|stats| json!(stats)))
        .unwrap_or_else(|| {
            error(StatusCode::NOT_FOUND, format!("no service {service:?} in the mesh and no numbers for it"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_say_why() {
        let q = parse(Some("window=5m&labels=version%3Dv2,zone=a")).ok().unwrap();
        assert_eq!(q.window, Duration::from_secs(300));
        assert_eq!(q.labels, [("version".into(), "v2".into()), ("zone".into(), "a".into())].into());
        for bad in ["window=1h", "window=soon", "labels=v2", "color=red"] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(decode("a%2Cb+c%"), "a,b c%");
    }
}
