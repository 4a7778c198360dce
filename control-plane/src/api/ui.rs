//! The dashboard at `/ui/`: plain HTML, CSS and JavaScript built into the binary (no CDN, no
//! network at run time, no Node needed to build). The pages read the API (`/v1/mesh`,
//! `/v1/stats/SERVICE`, `/v1/status`, `/v1/policies`, `/v1/rollouts`) every 2 seconds; actions
//! send the API token the operator types in (kept in the tab's session storage only).

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

use super::{Body, error};

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// Everything the pages load comes from here; nothing inline, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset at `name` (relative to `/ui/`); `path` is the request's, for the 404.
pub(super) fn asset(name: &str, path: &str) -> Response<Body> {
    let (body, content_type) = match name {
        "" | "index.html" => (INDEX, "text/html; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return error(StatusCode::NOT_FOUND, format!("no such resource: {path}")),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

/// Bytes of the assets, uncompressed (the budget is in docs/dashboard.md).
#[cfg(test)]
fn asset_bytes() -> usize {
    INDEX.len() + SCRIPT.len() + STYLE.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_served_with_their_types_and_unknown_ones_are_404() {
        assert_eq!(asset("", "/ui").headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(asset("app.js", "/ui/app.js").headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(asset("app.css", "/ui/app.css").headers()[header::CONTENT_TYPE], "text/css; charset=utf-8");
        assert_eq!(asset("../Cargo.toml", "/ui/../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert!(
            asset("", "/ui").headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
    }

    /// The budget: the three assets stay under 100 KB uncompressed (far under 300 KB compressed).
    #[test]
    fn assets_stay_within_the_budget() {
        assert!(asset_bytes() < 100 * 1024, "{} bytes", asset_bytes());
        assert!(INDEX.contains("app.js") && INDEX.contains("app.css"));
    }
}
