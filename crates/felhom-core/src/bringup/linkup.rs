//! Step 8, linkup: the guest's eth0 is up with felhom's MAC and has an IPv4 address that no
//! other felhom guest holds: with DHCP a lease (a shared lease means a DHCP identity baked
//! into the golden), with a static `ip` exactly that address (no DHCP wait). The address is
//! recorded either way. Act: poll `/interfaces` until then or the deadline (MACs come back
//! lower-case from iproute2, reference §7).

use std::time::Duration;

use serde_json::json;

use super::{
    other_live_guest_sharing, owned_config, poll_until, BringupStep, Drift, GuestView, PlanCx,
};
use crate::guest;
use crate::job::{JobCx, Observed, StepError};
use crate::spec::Ipv4Setting;

/// How long after a start a DHCP lease at least takes on a typical host, before this host
/// has shown one: 80% of the typical 1.5 s (the guest boots, 0.3–0.7 s to `running` for the
/// Debian golden in docs/guests.md, then its DHCP client asks; pve-sim models 1.5 s,
/// `model::DHCP`). As for PVE tasks (`pve_api::durations::prior`): probed towards from the
/// moment the start was seen to end, then looked for at the cadence; the first lease seen
/// replaces it (learned from the start request, [`LEASE_WAIT`]).
pub(super) const LEASE_PRIOR: Duration = Duration::from_millis(1200);

/// The name the lease's learned wait is kept under (`wait:lease` in the journal): measured
/// from the moment this process's start request went out, like a PVE task's duration from
/// its dispatch. Measured from the moment felhom *saw* the start task end, it carried the
/// start's detection delay, which varies with the node's load and the request budget: the
/// learned bracket was as wide as that spread, and every lease took one look per 100 ms of
/// it (4 looks a guest at 1000 guests on 10 nodes under a budget of 20 requests/s).
pub(super) const LEASE_WAIT: &str = "lease";

/// The cold prior of this guest's wait: only for a DHCP lease (a static address shows from
/// the start).
pub(super) fn lease_prior(cx: &JobCx) -> Option<Duration> {
    static_ip(cx).is_none().then_some(LEASE_PRIOR)
}

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    owned_config(cx, cx.vmid()?).await?;
    // This process started the guest just now: before this host's earliest lease after a
    // start request (learned), or while a cold wait has its probes to come (the act's first
    // look comes soon enough for a faster host), not yet, without asking.
    if let Some(started) = cx.shortcuts.started_at() {
        let soon = match cx.waits.expected(LEASE_WAIT) {
            Some(b) => started.elapsed() < b.lo,
            None => lease_prior(cx).is_some(),
        };
        if soon {
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
    if let Some(other) = other_live_guest_sharing(cx, vmid, crate::journal::SharedColumn::Ip, &ip)?
    {
        return Err(StepError::Refused(format!(
            "guest {vmid} got IP {ip}, which guest {other} already has: DHCP identity is shared (DUID or client-id from the golden?)"
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
