//! Step 9, ssh: a real SSH handshake proves the guest serves a host key of its own: made at
//! first boot (seed F3), unlike every other felhom guest's, and under the DR policy the same
//! as the one felhom recorded for that hostname. The endpoint is [`crate::guest::ssh_endpoint`]
//! (the guest's IP on a real host, the simulator's loopback forward in tests).

use pve_api::Vmid;
use serde_json::json;

use super::{
    other_live_guest_sharing, owned_config, poll_until, record_guest, spec, BringupStep, Drift,
    GuestView, PlanCx,
};
use crate::guest::{self, EndpointError};
use crate::identity::{IdentityPolicy, KeyAction};
use crate::job::{JobCx, Observed, StepError};

/// The host key fingerprint the guest serves, `None` if it cannot be reached (yet).
async fn probe(cx: &JobCx, vmid: Vmid, ip: &str) -> Result<Option<String>, StepError> {
    guest::ssh_fingerprint(&cx.client, &cx.config, vmid, ip)
        .await
        .map_err(|e| match e {
            EndpointError::Api(e) => StepError::Api(e),
            e @ EndpointError::NotLoopback(_) => StepError::Refused(e.to_string()),
        })
}

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    owned_config(cx, cx.vmid()?).await?;
    look(cx).await
}

/// One handshake (the guard ran before: the polls of one act share it).
pub(super) async fn look(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    let Some(ip) = cx.facts().ip else {
        return Ok(Observed::NotDone);
    };
    let Some(fp) = probe(cx, vmid, &ip).await? else {
        return Ok(Observed::NotDone);
    };
    let s = spec(cx)?;
    if IdentityPolicy::named(s.identity).ssh_host_keys() == KeyAction::RequireSameAsRecorded {
        if let Some(recorded) = cx
            .journal
            .recorded_fingerprint(s.hostname.as_str(), vmid.get())?
        {
            if recorded != fp {
                return Err(StepError::Refused(format!(
                    "DR restore of {}: guest {vmid} presents SSH host key {fp}, but felhom recorded {recorded}; clients would see a changed host key",
                    s.hostname
                )));
            }
        }
    }
    if let Some(other) =
        other_live_guest_sharing(cx, vmid, crate::journal::SharedColumn::SshFingerprint, &fp)?
    {
        return Err(StepError::Refused(format!(
            "guest {vmid} presents SSH host key {fp}, the same as guest {other}: the golden carries baked host keys (seed F3); rebuild it with `felhom golden recipe` and check it with `felhom golden inspect`"
        )));
    }
    cx.update_facts(|f| f.ssh_fingerprint = Some(fp.clone()));
    record_guest(cx, "provisioning")?;
    Ok(Observed::Done(json!({ "fingerprint": fp })))
}

pub(super) async fn act(cx: &JobCx) -> Result<(), StepError> {
    owned_config(cx, cx.vmid()?).await?;
    poll_until(
        cx,
        BringupStep::Ssh,
        cx.config.ssh_timeout,
        "no SSH host key served (is the golden's first-boot key unit missing? seed F3)",
    )
    .await
}

pub(super) fn plan(p: &PlanCx) -> Vec<String> {
    let what = match IdentityPolicy::named(p.spec.identity).ssh_host_keys() {
        KeyAction::RequireSameAsRecorded => "prove the recorded SSH host key (DR)",
        _ => "prove a fresh, unique SSH host key",
    };
    vec![format!("{what} (≤{}s)", p.config.ssh_timeout.as_secs())]
}

/// The key recorded at bring-up (checked only while the guest runs).
pub(super) fn drift(v: &GuestView) -> Vec<Drift> {
    if v.status != "running" || v.ssh_fingerprint == v.record.ssh_fingerprint.as_deref() {
        return Vec::new();
    }
    vec![Drift::new(
        "ssh_host_key",
        v.record.ssh_fingerprint.clone().unwrap_or_default(),
        v.ssh_fingerprint.unwrap_or("unreachable"),
    )]
}
