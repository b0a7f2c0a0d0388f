//! `GET /view`: the browser viewer page for terminals and desktops (web/, README "Watch in a
//! browser"). The page is built from npm packages by scripts/build-web.sh and embedded into the
//! binary at compile time (build.rs), so there is nothing to ship beside the relay and no CDN
//! at run time. A relay built before the page was answers 503 naming the script, and says so
//! once in its log at start.
//!
//! The page takes its token from the URL fragment, which browsers never send, so no token
//! reaches this route or an access log; it then dials `/stream` on the same origin. Every
//! response carries a strict Content-Security-Policy: scripts only from this origin (the page
//! has no inline script), websockets only to this origin, no framing. Styles allow
//! 'unsafe-inline' because xterm.js sizes and colours its rows with `<style>` elements it
//! writes at run time; no script can come in that way.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The built page.
#[derive(Debug, Clone, Copy)]
pub struct Bundle {
    pub html: &'static str,
    pub js: &'static str,
    pub css: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The policy of every `/view` response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' blob: data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What a relay built without the page answers.
pub const NOT_BUILT: &str = "the /view page was not built into this relay: run scripts/build-web.sh \
     (needs node and npm), then build the relay again";

/// `/view` and its two assets (their paths are relative to the page, so a proxy may mount the
/// relay under a prefix).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/view", get(|| async { asset(|b| b.html, "text/html; charset=utf-8") }))
        .route("/view/app.js", get(|| async { asset(|b| b.js, "text/javascript; charset=utf-8") }))
        .route("/view/app.css", get(|| async { asset(|b| b.css, "text/css; charset=utf-8") }))
}

/// Logs once, at start, when the page is missing from this build.
pub fn log_availability() {
    if BUNDLE.is_none() {
        tracing::warn!("{NOT_BUILT}; /view answers 503");
    }
}

fn asset(pick: fn(&Bundle) -> &'static str, content_type: &'static str) -> Response {
    let Some(bundle) = BUNDLE else {
        return (StatusCode::SERVICE_UNAVAILABLE, headers("text/plain; charset=utf-8"), NOT_BUILT)
            .into_response();
    };
    (headers(content_type), pick(&bundle)).into_response()
}

fn headers(content_type: &'static str) -> [(HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        // The names carry no version: a browser asks again (cheaply) rather than keep an old page.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}
