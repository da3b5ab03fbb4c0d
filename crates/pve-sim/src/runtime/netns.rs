//! The simulator's own networks: one network namespace per PVE bridge, holding a Linux
//! bridge of the same name with the DHCP server's address, and the host ends of the guests'
//! veth pairs. Nothing in these namespaces is linked or routed to anything outside them:
//! guest addresses exist only there, and the only way in is the simulator's SSH forward.

use std::path::PathBuf;

use serde_json::Value;

use super::proc::{cmd, run};
use super::RuntimeError;

/// Where `ip netns add` pins a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// The names of the pinned network namespaces that start with `prefix`.
pub fn named_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .collect()
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// The namespace of `bridge` for the simulator `sim_id`: unique per simulator, so several
/// simulators (parallel tests) never share one.
pub fn name(sim_id: &str, bridge: &str) -> String {
    format!("felhom-sim-{sim_id}-{bridge}")
}

fn ip_in(ns: &str) -> std::process::Command {
    let mut c = cmd("ip");
    c.args(["-n", ns]);
    c
}

/// Make (or keep) the namespace with its loopback up and the bridge carrying `gateway_cidr`.
pub fn ensure(ns: &str, bridge: &str, gateway_cidr: &str) -> Result<(), RuntimeError> {
    if !exists(ns) {
        run(cmd("ip").args(["netns", "add", ns]))?;
    }
    run(ip_in(ns).args(["link", "set", "lo", "up"]))?;
    if run(ip_in(ns).args(["link", "show", "dev", bridge])).is_err() {
        run(ip_in(ns).args(["link", "add", "name", bridge, "type", "bridge"]))?;
    }
    run(ip_in(ns).args(["addr", "replace", gateway_cidr, "dev", bridge]))?;
    run(ip_in(ns).args(["link", "set", "dev", bridge, "up"]))?;
    Ok(())
}

/// Remove the namespace (its bridge and any host ends still in it go with it).
pub fn remove(ns: &str) -> Result<(), RuntimeError> {
    if exists(ns) {
        run(cmd("ip").args(["netns", "del", ns]))?;
    }
    Ok(())
}

/// A veth pair for one NIC: `host_end` (PVE's `veth<vmid>i<n>`) inside `ns`, enslaved to the
/// bridge and up; `peer` in the simulator's own namespace with the NIC's MAC, for LXC to
/// move into the container as `eth0` (`lxc.net.N.type = phys`). Made before `lxc-start`, so
/// the guest's DHCP client never runs on a link that is not plugged in yet.
pub fn add_veth(
    ns: &str,
    bridge: &str,
    host_end: &str,
    peer: &str,
    mac: &str,
    mtu: Option<&str>,
) -> Result<(), RuntimeError> {
    del_veth(ns, host_end, peer);
    let me = std::process::id().to_string();
    let mut c = ip_in(ns);
    c.args(["link", "add", "name", host_end]);
    if let Some(m) = mtu {
        c.args(["mtu", m]);
    }
    c.args(["type", "veth", "peer", "name", peer, "address", mac]);
    if let Some(m) = mtu {
        c.args(["mtu", m]);
    }
    c.args(["netns", &me]);
    run(&mut c)?;
    run(ip_in(ns).args(["link", "set", "dev", host_end, "master", bridge, "up"]))?;
    Ok(())
}

/// Remove a NIC's pair wherever its ends are now (deleting either end deletes both).
pub fn del_veth(ns: &str, host_end: &str, peer: &str) {
    if exists(ns) {
        let _ = run(ip_in(ns).args(["link", "del", "dev", host_end]));
    }
    let _ = run(cmd("ip").args(["link", "del", "dev", peer]));
}

/// The names of the links in `ns` (`ip -j link`).
pub fn links(ns: &str) -> Vec<String> {
    if !exists(ns) {
        return Vec::new();
    }
    let Ok(out) = run(ip_in(ns).args(["-j", "link", "show"])) else {
        return Vec::new();
    };
    serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}
