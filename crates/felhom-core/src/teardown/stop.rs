//! Teardown step 3, stop: a hard stop (`POST status/stop`), waiting for the task; a guest
//! that is not running (PVE says so, reference §6.1) counts as stopped.

use pve_api::{ApiError, Vmid};
use serde_json::json;

use super::present;
use crate::job::{JobCx, Observed, StepError};

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    // A stop whose answer was lost (a 595) may still be stopping the guest.
    cx.settle_lost_dispatch(vmid, &["vzstop"]).await?;
    if present(cx, vmid).await?.is_none() {
        return Ok(Observed::Done(json!({ "present": false })));
    }
    let st = cx.client.lxc_status(&cx.node, vmid).await?;
    Ok(if st.status == "running" {
        Observed::NotDone
    } else {
        Observed::Done(json!({ "status": st.status }))
    })
}

pub(super) async fn act(cx: &JobCx) -> Result<(), StepError> {
    let vmid = cx.vmid()?;
    match cx.client.lxc_stop(&cx.node, vmid).await {
        Ok(upid) => cx.wait("stop", &upid).await,
        Err(ApiError::NotRunning { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn plan(vmid: Vmid) -> String {
    format!("stop guest {vmid}")
}
