//! Teardown step 5, forget: the journal's record says `torn_down` and the VMID lease is
//! released.

use pve_api::Vmid;
use serde_json::Value;

use crate::job::{JobCx, Observed, StepError};

pub(super) fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    let gone = cx
        .journal
        .guest(vmid.get())?
        .is_none_or(|g| g.state == "torn_down");
    let leased = cx.journal.lease_holder(vmid)?.as_deref() == Some(cx.job_id.as_str());
    Ok(if gone && !leased {
        Observed::Done(Value::Null)
    } else {
        Observed::NotDone
    })
}

pub(super) fn act(cx: &JobCx) -> Result<(), StepError> {
    let vmid = cx.vmid()?;
    cx.journal.forget_guest(vmid.get(), &cx.job_id)?;
    cx.journal.release_lease(vmid, &cx.job_id)?;
    Ok(())
}

pub(super) fn plan(vmid: Vmid) -> String {
    format!("mark guest {vmid} torn down in the journal and release its lease")
}
