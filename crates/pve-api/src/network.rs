//! Node network: `GET /nodes/{node}/network` (pve-manager `PVE/API2/Network.pm` `index`).
//!
//! Its permission is `user => all` (apidata.js): any authenticated token may list a node's
//! interfaces, so asking needs no privilege beyond a valid token. felhom reads it to tell
//! whether a guest's bridge exists ([`NodeInterface::is_bridge`]: Linux and OVS bridges).

use serde::{Deserialize, Serialize};

use crate::client::{check_node, PveClient};
use crate::error::ApiError;

/// One interface of a node, as the list returns it (the keys felhom reads; PVE sends more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInterface {
    pub iface: String,
    /// `bridge`, `OVSBridge`, `eth`, `bond`, `vlan`, …
    #[serde(default, rename = "type")]
    pub iface_type: String,
    #[serde(default, deserialize_with = "bool_ish")]
    pub active: Option<bool>,
    #[serde(default, deserialize_with = "bool_ish")]
    pub bridge_vlan_aware: Option<bool>,
}

/// PVE's booleans arrive as `1`/`0`, sometimes as JSON booleans.
fn bool_ish<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Bool(b)) => Some(b),
        Some(serde_json::Value::Number(n)) => Some(n.as_u64() != Some(0)),
        Some(serde_json::Value::String(s)) => Some(s != "0"),
        _ => None,
    })
}

impl NodeInterface {
    /// A Linux or OVS bridge (what a guest's `netN` `bridge` names).
    pub fn is_bridge(&self) -> bool {
        matches!(self.iface_type.as_str(), "bridge" | "OVSBridge")
    }
}

impl PveClient {
    /// The node's interfaces (`GET /nodes/{node}/network`), loopback left out as PVE does.
    pub async fn network(&self, node: &str) -> Result<Vec<NodeInterface>, ApiError> {
        check_node(node)?;
        self.get(&format!("/nodes/{node}/network"), &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pves_answer() {
        let v = serde_json::json!([
            { "iface": "vmbr0", "type": "bridge", "active": 1, "autostart": 1,
              "bridge_ports": "eno1", "bridge_vlan_aware": 1, "families": ["inet"],
              "method": "static", "cidr": "192.0.2.2/24", "priority": 3 },
            { "iface": "ovs0", "type": "OVSBridge" }
        ]);
        let l: Vec<NodeInterface> = serde_json::from_value(v).unwrap();
        assert_eq!(l[0].iface, "vmbr0");
        assert_eq!(l[0].bridge_vlan_aware, Some(true));
        assert!(l[0].is_bridge() && l[1].is_bridge());
        assert_eq!(l[1].active, None);
    }
}
