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
    Ok(Observed::Done(
        json!({ "present": cfg.is_some(), "made_by": maker }),
    ))
}

pub(super) fn plan(vmid: Vmid) -> String {
    format!("prove guest {vmid} is felhom's (range, journal record, marker)")
}
