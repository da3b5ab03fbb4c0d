//! Teardown step 2, check: the guest is felhom's (in its range, recorded in the journal, and
//! carrying the marker of the job the journal says made it), or already gone.

use pve_api::Vmid;
use serde_json::json;

use super::{check_owned, maker_job};
use crate::job::{JobCx, Observed, StepError};

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    let maker = maker_job(cx, vmid)?;
    let cfg = check_owned(cx, vmid, &maker).await?;
    // A published template whose base volume a linked clone still uses stays: destroying it
    // would leave the clones on a base nobody owns.
    if cfg
        .as_ref()
        .is_some_and(|c| c.get_string("template").as_deref() == Some("1"))
    {
        let clones = crate::publish::clones_of(&cx.journal, &cx.client, &cx.node, vmid).await?;
        if !clones.is_empty() {
            let list: Vec<String> = clones.iter().map(u32::to_string).collect();
            return Err(StepError::Refused(format!(
                "refusing to remove template {vmid}: linked clones still use its base volume (guests {}); tear them down first",
                list.join(", ")
            )));
        }
    }
    Ok(Observed::Done(
        json!({ "present": cfg.is_some(), "made_by": maker }),
    ))
}

pub(super) fn plan(vmid: Vmid) -> String {
    format!("prove guest {vmid} is felhom's (range, journal record, marker) and, for a template, that no linked clone uses it")
}
