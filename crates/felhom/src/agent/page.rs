//! The status page at `/` (h-agentx's; this is the placeholder the router mounts until the
//! page lands).

use axum::response::{Html, IntoResponse, Response};

pub async fn index() -> Response {
    Html("<!doctype html><title>felhom agent</title><p>felhom agent</p>").into_response()
}
