//! Step 7, start: `POST status/start` and wait for the task. Like every step after the
//! restore it first proves the guest is this job's (a VMID destroyed and reused by someone
//! else while felhom was down is never started). Undo: stop it, same proof.

use pve_api::{ApiError, Vmid};
use serde_json::json;

use super::{owned_config, Drift, GuestView, PlanCx};
use crate::guest;
use crate::job::{JobCx, Observed, StepError};

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    // A start whose answer was lost may still be starting the guest.
    cx.settle_lost_dispatch(vmid, &["vzstart"]).await?;
    owned_config(cx, vmid).await?;
    // This process restored the guest moments ago and nothing of ours started it since: it
    // is stopped, no need to ask (a start by someone else in between is `AlreadyRunning`).
    if cx.shortcuts.restored() {
        return Ok(Observed::NotDone);
    }
    let st = cx.client.lxc_status(&cx.node, vmid).await?;
    if st.status == "running" {
        Ok(Observed::Done(json!({ "status": st.status })))
    } else {
        Ok(Observed::NotDone)
    }
}

/// Start the guest and wait for the task; a start task that ended well proves the step
/// (the engine does not read the status again).
pub(super) async fn act(cx: &JobCx) -> Result<(), StepError> {
    let vmid = cx.vmid()?;
    owned_config(cx, vmid).await?;
    cx.shortcuts.note_start_sent();
    let (started, went_out) = pve_api::sent_at(cx.client.lxc_start(&cx.node, vmid)).await;
    match started {
        Ok(upid) => {
            cx.wait("start", &upid).await?;
            // The lease's wait is measured from the request (linkup::LEASE_WAIT).
            cx.shortcuts.note_started(went_out);
            cx.prove(json!({ "status": "running" }));
            Ok(())
        }
        Err(ApiError::AlreadyRunning { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn undo(cx: &JobCx) -> Result<(), StepError> {
    let vmid = cx.vmid()?;
    let Some(cfg) = guest::config_of(&cx.client, &cx.node, vmid).await? else {
        return Ok(());
    };
    // Another felhom job's guest: this job's is not there (see restore's undo), nothing
    // of it to stop. Only a bring-up rolls back, so the owner is this job.
    if matches!(
        guest::Ownership::of(&cfg, &cx.owner_job()),
        guest::Ownership::OtherJob(_)
    ) {
        return Ok(());
    }
    owned_config(cx, vmid).await?;
    stop_if_running(cx, vmid, "start").await
}

/// Stop the guest if it runs (the caller has proved it is ours), waiting for the task.
pub(super) async fn stop_if_running(cx: &JobCx, vmid: Vmid, step: &str) -> Result<(), StepError> {
    // A stop whose answer was lost may still be stopping it.
    cx.settle_lost_dispatch(vmid, &["vzstop"]).await?;
    let st = cx.client.lxc_status(&cx.node, vmid).await?;
    if st.status != "running" {
        return Ok(());
    }
    match cx.client.lxc_stop(&cx.node, vmid).await {
        Ok(upid) => cx.wait(step, &upid).await,
        Err(ApiError::NotRunning { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn plan(_: &PlanCx) -> Vec<String> {
    vec!["start the guest".into()]
}

pub(super) fn drift(v: &GuestView) -> Vec<Drift> {
    if v.status == "running" {
        Vec::new()
    } else {
        vec![Drift::new("running", "running", v.status)]
    }
}
