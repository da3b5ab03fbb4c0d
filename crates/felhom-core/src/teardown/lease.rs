//! Teardown step 1, lease: take the VMID's journal lease, so no bring-up or other teardown of
//! this guest runs at the same time (a stale lease of a dead process is taken over).

use pve_api::Vmid;
use serde_json::json;

use crate::job::{JobCx, Observed, StepError};

pub(super) fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    cx.journal
        .acquire_lease(vmid, &cx.job_id)
        .map_err(|e| StepError::Refused(e.to_string()))?;
    Ok(Observed::Done(json!({ "vmid": vmid.get() })))
}

pub(super) fn plan(vmid: Vmid) -> String {
    format!("lease VMID {vmid}")
}
