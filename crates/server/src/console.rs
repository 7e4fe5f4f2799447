//! The operator console: three static files embedded in the binary and served at `/console`
//! (no CDN, no build step). The files hold no data: a browser cannot send a bearer token when it
//! navigates, so the page asks for the admin token and sends it with every API call it makes; a
//! service token is refused at login (it cannot list accounts). Every action is a public API call.
//!
//! The content security policy allows scripts, styles and connections to this origin only and no
//! inline script or style, so user data the page shows (references, metadata) cannot run even if
//! the page's own escaping failed; `app.js` inserts all of it as text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const STYLE_CSS: &str = include_str!("../console/style.css");

const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The console's routes, merged beside the API's (they are not API routes: not in the OpenAPI
/// document, no authentication, nothing but these three files).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/console/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/console/style.css", get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The files change with the binary; a browser must not keep an old app.js beside a new API.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads only its own files: no inline script, no handler attributes, nothing from
    /// another origin (what the CSP would refuse anyway, caught before a browser sees it).
    #[test]
    fn the_page_loads_only_its_own_files() {
        assert!(INDEX_HTML.contains(r#"<script src="/console/app.js" defer></script>"#));
        assert_eq!(INDEX_HTML.matches("<script").count(), 1, "one script element, no inline one");
        for forbidden in ["onclick=", "onload=", "onerror=", "style=", "http://", "https://"] {
            assert!(!INDEX_HTML.contains(forbidden), "index.html holds {forbidden}");
        }
        // The SVG namespace is a name, not an address anything is loaded from.
        let script = APP_JS.replace("'http://www.w3.org/2000/svg'", "");
        for forbidden in
            ["innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "document.write", "http://", "https://"]
        {
            assert!(!script.contains(forbidden), "app.js uses {forbidden}");
        }
    }
}
