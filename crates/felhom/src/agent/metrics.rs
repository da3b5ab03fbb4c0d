//! `GET /metrics` (h-agentx's; this is the placeholder the router mounts until the metrics
//! registry lands).

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub async fn handler() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], "").into_response()
}
