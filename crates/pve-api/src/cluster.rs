//! Cluster-wide endpoints: `/version`, `/cluster/nextid`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::PveClient;
use crate::error::ApiError;
use crate::vmid::Vmid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    #[serde(default)]
    pub release: Option<String>,
    #[serde(default)]
    pub repoid: Option<String>,
}

impl PveClient {
    pub async fn version(&self) -> Result<VersionInfo, ApiError> {
        self.get("/version", &[]).await
    }

    /// The lowest free VMID, or (with `vmid`) that VMID if free — 400 `{"vmid": "VM X already
    /// exists"}` if not. Not a reservation. PVE sends a JSON string; both are accepted.
    pub async fn next_id(&self, vmid: Option<Vmid>) -> Result<Vmid, ApiError> {
        let q: Vec<(&str, String)> = vmid
            .map(|v| vec![("vmid", v.to_string())])
            .unwrap_or_default();
        let v: Value = self.get("/cluster/nextid", &q).await?;
        let n = match &v {
            Value::String(s) => s.parse::<u32>().ok(),
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        };
        n.and_then(|n| Vmid::try_from(n).ok())
            .ok_or_else(|| ApiError::Decode {
                message: format!("nextid returned {v}"),
            })
    }
}
