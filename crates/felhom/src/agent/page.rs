//! `GET /` (no token needed): the status page. One static file, `status.html`, with its CSS
//! and JavaScript inline and no build step; it carries no data. In the browser it takes the
//! API token from the URL fragment (`/#token=…`, which browsers never send) or a password
//! field, keeps it in sessionStorage, reads `/v1/guests` and follows `/v1/events` with
//! `fetch` (EventSource cannot send the `Authorization` header), and writes every value it
//! got from the API with `textContent`, never as HTML.
//!
//! The Content-Security-Policy allows exactly the page's own inline script and style (by
//! their SHA-256, computed from the embedded file once) and requests to this origin only:
//! even a value that slipped into markup could not run or load anything.
//!
//! This file names nothing else of the crate, so the browser test serves this very handler
//! (`#[path]`) from a stand-in API before the agent exists.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

pub const HTML: &str = include_str!("status.html");

/// `'sha256-…'` of the text between the first `<tag>` and `</tag>`.
fn inline_hash(tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = HTML.find(&open).map(|i| i + open.len()).unwrap_or(0);
    let end = HTML[start..].find(&close).map_or(start, |i| start + i);
    let digest = Sha256::digest(&HTML.as_bytes()[start..end]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hash("script"),
        inline_hash("style")
    )
});

pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP.as_str()),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        HTML,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_static_page_with_a_policy_for_its_own_inline_code() {
        let resp = index().await;
        assert_eq!(resp.status(), 200);
        let h = resp.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(body, HTML.as_bytes());
        // One script and one style, so the two hashes cover all the page's code.
        assert_eq!(HTML.matches("<script").count(), 1);
        assert_eq!(HTML.matches("<style").count(), 1);
        // Guest data goes in as text only.
        assert!(!HTML.contains("innerHTML") && !HTML.contains("outerHTML"));
        assert!(!HTML.contains("insertAdjacentHTML") && !HTML.contains("document.write"));
    }
}
