//! `/access/permissions`: the token's effective privileges (privsep-intersected).

use std::collections::BTreeMap;

use crate::client::PveClient;
use crate::error::ApiError;

/// path → privilege → propagate flag. Presence means granted.
pub type Permissions = BTreeMap<String, BTreeMap<String, u8>>;

impl PveClient {
    pub async fn permissions(&self, path: Option<&str>) -> Result<Permissions, ApiError> {
        let q: Vec<(&str, String)> = path
            .map(|p| vec![("path", p.to_string())])
            .unwrap_or_default();
        self.get("/access/permissions", &q).await
    }
}
