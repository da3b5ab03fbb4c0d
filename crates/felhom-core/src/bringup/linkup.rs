//! Step 8, linkup: the guest's eth0 is up with felhom's MAC and has an IPv4 address that no
//! other felhom guest holds: with DHCP a lease (a shared lease means a DHCP identity baked
//! into the golden), with a static `ip` exactly that address (no DHCP wait). The address is
//! recorded either way. Act: poll `/interfaces` until then or the deadline (MACs come back
//! lower-case from iproute2, reference §7).

use serde_json::json;

use super::{other_live_guests, owned_config, poll_until, BringupStep, Drift, GuestView, PlanCx};
use crate::guest;
use crate::job::{JobCx, Observed, StepError};
use crate::spec::Ipv4Setting;

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    owned_config(cx, cx.vmid()?).await?;
    // This process started the guest just now, and on this host no lease ever showed that
    // soon after a start (the learned wait): not yet, without asking.
    if let (Some(started), Some(b)) = (cx.shortcuts.started_at(), cx.waits.expected("linkup")) {
        if started.elapsed() < b.lo {
            return Ok(Observed::NotDone);
        }
    }
    look(cx).await
}

/// One look at `/interfaces` (the guard ran before: the polls of one act share it).
pub(super) async fn look(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    let want = cx.facts().mac.unwrap_or_default();
    let Some(ifaces) = cx.client.lxc_interfaces(&cx.node, vmid).await? else {
        return Ok(Observed::NotDone);
    };
    let Some(eth0) = ifaces.iter().find(|i| i.name == "eth0") else {
        return Ok(Observed::NotDone);
    };
    if !eth0
        .hwaddr
        .as_deref()
        .is_some_and(|h| h.eq_ignore_ascii_case(&want))
    {
        return Ok(Observed::NotDone);
    }
    let Some(ip) = guest::eth0_ip(&ifaces) else {
        return Ok(Observed::NotDone);
    };
    if let Some(want) = static_ip(cx) {
        if ip != want {
            return Ok(Observed::NotDone);
        }
    }
    if let Some(other) = other_live_guests(cx, vmid)?
        .into_iter()
        .find(|g| g.ip.as_deref() == Some(ip.as_str()))
    {
        return Err(StepError::Refused(format!(
            "guest {vmid} got IP {ip}, which guest {} already has: DHCP identity is shared (DUID or client-id from the golden?)",
            other.vmid
        )));
    }
    cx.update_facts(|f| f.ip = Some(ip.clone()));
    Ok(Observed::Done(json!({ "ip": ip, "mac": eth0.hwaddr })))
}

/// The spec's static IPv4 address, if it has one.
fn static_ip(cx: &JobCx) -> Option<String> {
    match cx.spec.as_ref()?.ipv4() {
        Ipv4Setting::Static(c) => Some(c.addr.to_string()),
        Ipv4Setting::Dhcp => None,
    }
}

pub(super) async fn act(cx: &JobCx) -> Result<(), StepError> {
    owned_config(cx, cx.vmid()?).await?;
    let what = match static_ip(cx) {
        Some(ip) => format!("eth0 did not show its static address {ip}"),
        None => "no DHCP lease on eth0".to_string(),
    };
    poll_until(cx, BringupStep::Linkup, cx.config.linkup_timeout, &what).await
}

pub(super) fn plan(p: &PlanCx) -> Vec<String> {
    let secs = p.config.linkup_timeout.as_secs();
    vec![match p.spec.ipv4() {
        Ipv4Setting::Static(c) => format!(
            "wait ≤{secs}s for eth0 to show its static address {} (no DHCP)",
            c.addr
        ),
        Ipv4Setting::Dhcp => format!("wait ≤{secs}s for a DHCP lease on eth0"),
    }]
}

/// The lease recorded at bring-up (checked only while the guest runs).
pub(super) fn drift(v: &GuestView) -> Vec<Drift> {
    if v.status != "running" || v.ip == v.record.ip.as_deref() {
        return Vec::new();
    }
    vec![Drift::new(
        "ip",
        v.record.ip.clone().unwrap_or_default(),
        v.ip.unwrap_or_default(),
    )]
}
