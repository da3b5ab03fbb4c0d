//! `GET /nodes/{node}/network`: the node's interfaces (pve-manager `PVE/API2/Network.pm`
//! `index`). Permission `user => all` (apidata.js): any authenticated caller may list them.
//! The simulated node has the bridges of [`bridges`] and nothing else (no physical ports to
//! model); each is an active, autostarted Linux bridge, in PVE's answer shape.

use super::*;

/// The `type` filter's values (apidata.js).
const TYPES: &[&str] = &[
    "bridge",
    "bond",
    "eth",
    "alias",
    "vlan",
    "fabric",
    "OVSBridge",
    "OVSBond",
    "OVSPort",
    "OVSIntPort",
    "vnet",
    "any_bridge",
    "any_local_bridge",
    "include_sdn",
];

/// The node's bridges: the state's list (`vmbr0` at bootstrap).
pub(crate) fn bridges(st: &State) -> Vec<String> {
    st.bridges.clone()
}

pub(crate) fn network_list(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[NODE, ("type", Kind::Enum(TYPES))], &[])?;
    let wanted = req.get("type");
    let bridge_ok = wanted.is_none_or(|t| {
        matches!(
            t,
            "bridge" | "any_bridge" | "any_local_bridge" | "include_sdn"
        )
    });
    Ok(sim
        .read(|st| {
            json!(bridges(st)
                .iter()
                .filter(|_| bridge_ok)
                .enumerate()
                .map(|(i, b)| json!({
                    "iface": b, "type": "bridge", "active": 1, "autostart": 1, "exists": 1,
                    "method": "manual", "method6": "manual", "families": ["inet"],
                    "bridge_ports": "", "bridge_stp": "off", "bridge_fd": "0",
                    "priority": i + 1,
                }))
                .collect::<Vec<_>>())
        })
        .into())
}
