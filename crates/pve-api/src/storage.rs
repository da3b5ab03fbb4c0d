//! Storage, pools and vzdump endpoints.

use serde::{Deserialize, Serialize};

use crate::client::{check_node, check_storage, PveClient};
use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageVolume {
    pub volid: String,
    /// Sent by real servers though apidata.js does not list it; defaulted to be tolerant.
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub ctime: Option<u64>,
    #[serde(default, deserialize_with = "crate::lxc::opt_int_or_string")]
    pub vmid: Option<u32>,
    #[serde(default)]
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageStatus {
    /// apidata.js: `type`, `content`, `total`, `used`, `avail`, `enabled`, `active`, `shared`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_storage_answers() {
        let v: Vec<StorageVolume> = serde_json::from_str(
            r#"[{"volid":"local:backup/vzdump-lxc-100-2026_01_01-00_00_00.tar.zst","content":"backup","size":123,"format":"tar.zst","ctime":1700000000,"vmid":100},
                {"volid":"local:vztmpl/debian-13.tar.zst","size":5,"vmid":"101"}]"#,
        )
        .unwrap();
        assert_eq!(v[0].vmid, Some(100));
        assert_eq!(v[1].vmid, Some(101));
        assert_eq!(v[1].content, "");
        let s: StorageStatus = serde_json::from_str(
            r#"{"type":"lvmthin","content":"rootdir,images","total":100,"used":10,"avail":90,"enabled":1,"active":1,"shared":0}"#,
        )
        .unwrap();
        assert_eq!(s.avail, 90);
        let p: Vec<PoolInfo> =
            serde_json::from_str(r#"[{"poolid":"felhom"},{"poolid":"x","comment":"c"}]"#).unwrap();
        assert_eq!(p[0].poolid, "felhom");
    }
}
