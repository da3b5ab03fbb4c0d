//! The modelled runtime's view of a guest for the API: `/interfaces` from the lease table
//! and the modelled DHCP delay. Its boot model (machine-id, host keys, leases) is
//! `guest.rs`; its SSH endpoint is `ssh.rs`; its durations are the task model's.

use serde_json::{json, Value};

use crate::sim::now_ms;
use crate::state::{Guest, State};

/// One interface as PVE's `/interfaces` shows it.
pub(crate) fn iface(
    name: &str,
    mac: &str,
    inet: Option<(&str, u32)>,
    inet6: Option<(&str, u32)>,
) -> Value {
    let mut addrs = Vec::new();
    let mut v = json!({ "name": name, "hwaddr": mac, "hardware-address": mac });
    if let Some((a, p)) = inet {
        v["inet"] = json!(format!("{a}/{p}"));
        addrs.push(json!({ "ip-address": a, "ip-address-type": "inet", "prefix": p }));
    }
    if let Some((a, p)) = inet6 {
        v["inet6"] = json!(format!("{a}/{p}"));
        addrs.push(json!({ "ip-address": a, "ip-address-type": "inet6", "prefix": p }));
    }
    v["ip-addresses"] = json!(addrs);
    v
}

/// `/interfaces` of a running modelled guest: loopback, then each NIC; a DHCP NIC shows its
/// address once the modelled lease is visible (like `ip a` after ifup).
pub(crate) fn interfaces(st: &State, g: &Guest) -> Value {
    let leased = g.lease_visible_at.is_some_and(|t| now_ms() >= t);
    let mut out = vec![iface(
        "lo",
        "00:00:00:00:00:00",
        Some(("127.0.0.1", 8)),
        Some(("::1", 128)),
    )];
    for (_, v) in g.config.iter().filter(|(k, _)| k.starts_with("net")) {
        let Ok(n) = v.parse::<pve_api::NetConfig>() else {
            continue;
        };
        let Some(mac) = n.hwaddr.map(|m| m.to_string()) else {
            continue;
        };
        let addr: Option<(String, u32)> = match n.ip.as_deref() {
            Some("dhcp") => {
                let ip = n
                    .bridge
                    .as_ref()
                    .and_then(|b| st.leases.get(b))
                    .and_then(|l| l.get(&mac))
                    .cloned();
                match ip {
                    Some(ip) if leased => Some((ip, 16)),
                    _ => continue,
                }
            }
            Some(cidr) if cidr.contains('/') => cidr
                .split_once('/')
                .and_then(|(a, p)| Some((a.to_string(), p.parse().ok()?))),
            _ => None,
        };
        out.push(iface(
            &n.name,
            &mac.to_ascii_lowercase(),
            addr.as_ref().map(|(a, p)| (a.as_str(), *p)),
            None,
        ));
    }
    json!(out)
}
