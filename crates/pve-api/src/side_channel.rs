//! Requests to a simulator's side channel (`/felhom-sim/*` of `pve-sim`): outside `/api2`,
//! without PVE's envelope, on the same server and TLS trust as the client's API calls, and
//! carrying the simulator's side-channel secret in [`SIDE_CHANNEL_HEADER`]. The
//! `Authorization` header stays the PVE token's, so the secret travels in a header of its
//! own; its value is marked sensitive, so no layer below prints it.

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::client::{chain, PveClient};
use crate::error::{classify, ApiError};

/// The header a simulator's side channel reads its secret from (the simulator answers 401
/// without it or with a wrong one).
pub const SIDE_CHANNEL_HEADER: &str = "x-felhom-sim-secret";

impl PveClient {
    /// `GET {path}` of a simulator's side channel, presenting `secret`.
    pub async fn side_channel_get<T: DeserializeOwned>(
        &self,
        path: &str,
        secret: &str,
    ) -> Result<T, ApiError> {
        self.side_channel(Method::GET, path, None, secret).await
    }

    /// `POST {path}` with a JSON body to a simulator's side channel, presenting `secret`.
    pub async fn side_channel_post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
        secret: &str,
    ) -> Result<T, ApiError> {
        self.side_channel(Method::POST, path, Some(body), secret)
            .await
    }

    async fn side_channel<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        secret: &str,
    ) -> Result<T, ApiError> {
        if path.starts_with("/api2") {
            return Err(ApiError::InvalidInput {
                field: "path".into(),
                message: "a side-channel path is outside /api2".into(),
            });
        }
        let mut value =
            HeaderValue::from_str(secret.trim()).map_err(|_| ApiError::InvalidInput {
                field: "side-channel secret".into(),
                message: "contains characters not allowed in an HTTP header".into(),
            })?;
        value.set_sensitive(true);
        let url = self.url(path)?;
        let mut req = self
            .http()
            .request(method.clone(), url)
            .header(HeaderName::from_static(SIDE_CHANNEL_HEADER), value);
        if let Some(b) = body {
            req = req.json(b);
        }
        tracing::debug!(path, "simulator side-channel request");
        let resp = req.send().await.map_err(|e| ApiError::Transport {
            message: chain(&e),
            maybe_sent: !e.is_connect(),
        })?;
        let status = resp.status();
        let bytes = crate::client::read_capped(
            resp,
            &method,
            path,
            crate::client::OUTSIDE_API_MAX_BODY_BYTES,
        )
        .await?;
        if !status.is_success() {
            return Err(classify(
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                &bytes,
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
            message: format!("{path}: {e}"),
        })
    }
}
