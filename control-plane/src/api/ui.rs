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

    /// A `--name: #rrggbb` colour of app.css's `:root`.
    fn colour(name: &str) -> [f64; 3] {
        let at = STYLE.find(&format!("--{name}: #")).unwrap_or_else(|| panic!("--{name} in app.css"));
        let hex = &STYLE[at + name.len() + 5..at + name.len() + 11];
        [0, 2, 4].map(|i| f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0)
    }

    /// WCAG 2 contrast ratio of two colours.
    fn contrast(a: [f64; 3], b: [f64; 3]) -> f64 {
        let lum = |c: [f64; 3]| {
            let l = c.map(|v| if v <= 0.03928 { v / 12.92 } else { ((v + 0.055) / 1.055).powf(2.4) });
            0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2]
        };
        let (x, y) = (lum(a), lum(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    /// Text reads at WCAG AA (4.5:1) on white and on the panels; the focus ring stands out at
    /// 3:1 (WCAG's non-text contrast).
    #[test]
    fn colours_meet_the_contrast_they_need() {
        for background in ["bg", "panel"] {
            for text in ["fg", "muted", "ok", "warn", "bad", "link"] {
                let ratio = contrast(colour(text), colour(background));
                assert!(ratio >= 4.5, "--{text} on --{background}: {ratio:.2}:1");
            }
            let ratio = contrast(colour("focus"), colour(background));
            assert!(ratio >= 3.0, "--focus on --{background}: {ratio:.2}:1");
        }
        assert!((contrast([1.0; 3], [0.0; 3]) - 21.0).abs() < 1e-9);
    }

    /// The budget: the three assets stay under 100 KB uncompressed (far under 300 KB compressed).
    #[test]
    fn assets_stay_within_the_budget() {
        assert!(asset_bytes() < 100 * 1024, "{} bytes", asset_bytes());
        assert!(INDEX.contains("app.js") && INDEX.contains("app.css"));
    }
}
