//! Cluster-wide endpoints: `/version`, `/cluster/nextid`, `/cluster/resources`.

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

/// Which entries `/cluster/resources` lists (PVE's `type` parameter; pools come only
/// without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    /// qemu and lxc guests.
    Vm,
    Storage,
    Node,
    Sdn,
}

impl ResourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Vm => "vm",
            ResourceType::Storage => "storage",
            ResourceType::Node => "node",
            ResourceType::Sdn => "sdn",
        }
    }
}

/// One entry of `GET /cluster/resources` (pve-manager `PVE/API2/Cluster.pm` `resources`;
/// audit §2 (c)). Guests are listed only with `VM.Audit` on them; their figures come from the
/// RRD, which lags: a fresh guest may show `status: "unknown"` and no `name`. `lock` and
/// `tags` are read live from the config. Fields this type does not name are in `other`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterResource {
    /// `lxc/<vmid>`, `qemu/<vmid>`, `node/<node>`, `storage/<node>/<sid>`, `/pool/<pool>`.
    pub id: String,
    /// `lxc`, `qemu`, `node`, `storage`, `pool`, `sdn`, …
    #[serde(rename = "type")]
    pub resource_type: String,
    #[serde(default, deserialize_with = "crate::lxc::opt_int_or_string")]
    pub vmid: Option<u32>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub tags: Option<String>,
    #[serde(default, deserialize_with = "bool_01")]
    pub template: bool,
    #[serde(default)]
    pub storage: Option<String>,
    #[serde(default)]
    pub maxdisk: Option<u64>,
    #[serde(default)]
    pub maxmem: Option<u64>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

impl ClusterResource {
    /// Is this a container (an `lxc/<vmid>` entry)?
    pub fn is_lxc(&self) -> bool {
        self.resource_type == "lxc"
    }
}

/// PVE booleans arrive as 0/1 (sometimes as strings or JSON booleans).
fn bool_01<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !matches!(s.as_str(), "" | "0"),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "expected a boolean, got {other}"
            )))
        }
    })
}

impl PveClient {
    /// `GET /cluster/resources[?type=…]`: every entry the token may see.
    pub async fn cluster_resources(
        &self,
        kind: Option<ResourceType>,
    ) -> Result<Vec<ClusterResource>, ApiError> {
        let q: Vec<(&str, String)> = kind
            .map(|k| vec![("type", k.as_str().to_string())])
            .unwrap_or_default();
        self.get("/cluster/resources", &q).await
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_cluster_resources() {
        let v: Vec<ClusterResource> = serde_json::from_value(serde_json::json!([
            { "id": "lxc/101", "type": "lxc", "vmid": 101, "node": "pve", "status": "unknown" },
            { "id": "lxc/9000", "type": "lxc", "vmid": "9000", "node": "pve", "status": "stopped",
              "name": "golden", "template": 1, "lock": "disk", "tags": "felhom", "maxdisk": 8589934592u64,
              "netin": 0 },
            { "id": "storage/pve/local-lvm", "type": "storage", "storage": "local-lvm", "plugintype": "lvmthin" },
            { "id": "/pool/acme", "type": "pool", "pool": "acme" }
        ]))
        .unwrap();
        assert!(v[0].is_lxc() && v[0].name.is_none() && !v[0].template);
        assert_eq!(v[1].vmid, Some(9000));
        assert!(v[1].template);
        assert_eq!(v[1].lock.as_deref(), Some("disk"));
        assert_eq!(v[1].other["netin"], 0);
        assert_eq!(v[2].other["plugintype"], "lvmthin");
        assert_eq!(v[3].pool.as_deref(), Some("acme"));
    }
}
