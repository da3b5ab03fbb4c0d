//! Storage, pools and vzdump endpoints.

use serde::{Deserialize, Serialize};

use crate::client::{check_node, check_storage, PveClient};
use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageVolume {
    pub volid: String,
    pub content: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub ctime: Option<u64>,
    #[serde(default)]
    pub vmid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageStatus {
    #[serde(default, rename = "type")]
    pub storage_type: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub used: u64,
    #[serde(default)]
    pub avail: u64,
    #[serde(default)]
    pub enabled: Option<u8>,
    #[serde(default)]
    pub active: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub poolid: String,
    #[serde(default)]
    pub comment: Option<String>,
}

impl PveClient {
    pub async fn storage_content(
        &self,
        node: &str,
        storage: &str,
        content: Option<&str>,
    ) -> Result<Vec<StorageVolume>, ApiError> {
        check_node(node)?;
        check_storage(storage)?;
        let q: Vec<(&str, String)> = content
            .map(|c| vec![("content", c.to_string())])
            .unwrap_or_default();
        self.get(&format!("/nodes/{node}/storage/{storage}/content"), &q)
            .await
    }

    pub async fn storage_status(
        &self,
        node: &str,
        storage: &str,
    ) -> Result<StorageStatus, ApiError> {
        check_node(node)?;
        check_storage(storage)?;
        self.get(&format!("/nodes/{node}/storage/{storage}/status"), &[])
            .await
    }

    pub async fn pools(&self) -> Result<Vec<PoolInfo>, ApiError> {
        self.get("/pools", &[]).await
    }

    /// `GET /nodes/{node}/vzdump/extractconfig`: the `pct.conf` inside a backup archive. A read
    /// that needs the same privileges as restoring the archive.
    pub async fn vzdump_extractconfig(&self, node: &str, volume: &str) -> Result<String, ApiError> {
        check_node(node)?;
        self.get(
            &format!("/nodes/{node}/vzdump/extractconfig"),
            &[("volume", volume.to_string())],
        )
        .await
    }
}
