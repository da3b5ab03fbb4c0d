//! Teardown step 4, destroy: `DELETE /nodes/{node}/lxc/{vmid}` with `purge=1` (out of
//! backup jobs, HA, replication) and `destroy-unreferenced-disks=1` (no detached volume is
//! left behind), waiting for the task.

use pve_api::Vmid;
use serde_json::json;

use super::present;
use crate::job::{JobCx, Observed, StepError};

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    // A destroy whose answer was lost (a 595) may still be freeing the volumes: a second
    // DELETE would meet its lock.
    cx.settle_lost_dispatch(vmid, &["vzdestroy"]).await?;
    Ok(match present(cx, vmid).await? {
        None => Observed::Done(json!({ "present": false })),
        Some(_) => Observed::NotDone,
    })
}

pub(super) async fn act(cx: &JobCx) -> Result<(), StepError> {
    let vmid = cx.vmid()?;
    let upid = cx.client.lxc_delete(&cx.node, vmid, true, true).await?;
    cx.wait("destroy", &upid).await
}

pub(super) fn plan(vmid: Vmid) -> String {
    format!("destroy guest {vmid} with purge and its unreferenced disks")
}
