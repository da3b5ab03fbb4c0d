//! `GET /metrics` (behind the agent's bearer token): the process-global registry of
//! `felhom_core::metrics` (jobs, steps, PVE requests, retries, lock timeouts, guests, drift,
//! learned task durations) in the Prometheus text format 0.0.4, which `promtool check
//! metrics` checks in the tests.

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub async fn handler() -> Response {
    (
        [
            (header::CONTENT_TYPE, felhom_core::metrics::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        felhom_core::metrics::encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn text_format_with_its_content_type() {
        felhom_core::metrics::set_drift(2);
        let resp = handler().await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains("# TYPE felhom_guests_drifted gauge\nfelhom_guests_drifted 2\n"),
            "{text}"
        );
    }
}
