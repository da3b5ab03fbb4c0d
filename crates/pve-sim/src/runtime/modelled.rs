//! The modelled runtime: a guest is its record in the state. Every lifecycle method says
//! "modelled" (the worker waits the task's modelled duration and the task's plan is the whole
//! effect); a boot draws machine-id, host key and DHCP lease from the boot model in
//! `guest.rs`; `/interfaces` comes from the lease table once the modelled DHCP delay has
//! passed, or shows the static address of a NIC with `ip=<CIDR>`; the SSH endpoint is the
//! in-process server of `ssh.rs` presenting the modelled host key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::{Conf, ConfigSource, GuestRuntime, Job, Observed, RuntimeError, RuntimeKind};
use crate::sim::now_ms;
use crate::ssh::SshEndpoint;
use crate::state::{Guest, State};

/// The modelled runtime (no state of its own: everything is in the simulator's state).
pub(crate) struct Modelled;

impl GuestRuntime for Modelled {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Modelled
    }

    fn restore(self: Arc<Self>, _: PathBuf, _: Conf) -> Option<Job> {
        None
    }

    fn start(self: Arc<Self>, _: u32, _: Conf, _: Vec<String>) -> Option<Job> {
        None
    }

    fn reboot(self: Arc<Self>, _: u32, _: Conf, _: Vec<String>) -> Option<Job> {
        None
    }

    fn stop(self: Arc<Self>, _: u32, _: Conf, _: Duration) -> Option<Job> {
        None
    }

    fn destroy(self: Arc<Self>, _: u32, _: Conf, _: Vec<String>) -> Option<Job> {
        None
    }

    fn clone_volumes(self: Arc<Self>, _: u32, _: Vec<super::VolumeCopy>, _: Conf) -> Option<Job> {
        None
    }

    fn template(self: Arc<Self>, _: Vec<(String, String)>) -> Option<Job> {
        None
    }

    /// The boot model: identity files settle (machine-id, host keys) and each DHCP NIC's
    /// client asks for a lease, visible from `lease_visible_at`.
    fn booted(&self, st: &mut State, vmid: u32, lease_visible_at: u64) {
        let Some(g) = st.guests.get_mut(&vmid) else {
            return;
        };
        let (mid, key) = crate::guest::boot(&g.traits, &g.machine_id, &g.ssh_key);
        g.machine_id = mid;
        g.ssh_key = key;
        g.lease_visible_at = Some(lease_visible_at);
        crate::guest::lease_dhcp_nics(st, vmid);
    }

    fn collect_volumes(&self, _: &[String]) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn pid(&self, vmid: u32) -> i64 {
        100_000 + i64::from(vmid)
    }

    fn interfaces(
        &self,
        guest: &Guest,
        leases: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Option<Value> {
        Some(interfaces(leases, guest))
    }

    fn serves_ssh(&self, guest: &Guest) -> bool {
        guest.ssh_key.is_some()
    }

    fn ssh_endpoint(
        self: Arc<Self>,
        _: u32,
        host_key: Option<String>,
        _: ConfigSource,
    ) -> BoxFuture<'static, Option<std::io::Result<SshEndpoint>>> {
        Box::pin(async move {
            let key = crate::guest::parse_key(&host_key?)?;
            Some(crate::ssh::serve(key).await)
        })
    }

    fn observe(&self, _: Vec<(u32, bool, Conf)>) -> Option<Observed> {
        None
    }

    fn adopt(&self, _: u32, _: &Conf, _: &[String]) -> bool {
        true
    }

    fn shutdown(&self) {}
}

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

/// `address/prefix` of a static `ip`/`ip6` (`dhcp`, `auto`, `manual` have none).
fn cidr(c: &str) -> Option<(String, u32)> {
    c.split_once('/')
        .and_then(|(a, p)| Some((a.to_string(), p.parse().ok()?)))
}

/// `/interfaces` of a running modelled guest: loopback, then each NIC; a DHCP NIC shows its
/// address once the modelled lease is visible (like `ip a` after ifup), a NIC with a static
/// `ip=`/`ip6=` its static address (PVE's setup writes it into the guest's network config).
pub(crate) fn interfaces(leases: &BTreeMap<String, BTreeMap<String, String>>, g: &Guest) -> Value {
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
                    .and_then(|b| leases.get(b))
                    .and_then(|l| l.get(&mac))
                    .cloned();
                match ip {
                    Some(ip) if leased => Some((ip, 16)),
                    _ => continue,
                }
            }
            Some(c) => cidr(c),
            None => None,
        };
        // A static IPv6 address is there from the start, like a static IPv4 one.
        let addr6 = n.other.get("ip6").and_then(|c| cidr(c));
        out.push(iface(
            &n.name,
            &mac.to_ascii_lowercase(),
            addr.as_ref().map(|(a, p)| (a.as_str(), *p)),
            addr6.as_ref().map(|(a, p)| (a.as_str(), *p)),
        ));
    }
    json!(out)
}
