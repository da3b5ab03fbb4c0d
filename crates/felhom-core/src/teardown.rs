//! The teardown job: stop, destroy with purge, forget. Forward-only (there is nothing to
//! compensate), journaled and resumable like bring-up, and guarded the same way: felhom
//! destroys only a guest in its VMID range whose marker names the job that made it.

use pve_api::{ApiError, Vmid};
use serde_json::{json, Value};

use crate::job::{JobCx, Observed, Step, StepError};
use crate::marker::Marker;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeardownStep {
    Lease,
    Check,
    Stop,
    Destroy,
    Forget,
}

pub const STEPS: [TeardownStep; 5] = [
    TeardownStep::Lease,
    TeardownStep::Check,
    TeardownStep::Stop,
    TeardownStep::Destroy,
    TeardownStep::Forget,
];

/// The job that made the guest, from the journal; teardown refuses guests felhom has no
/// record of.
fn maker_job(cx: &JobCx, vmid: Vmid) -> Result<String, StepError> {
    match cx.journal.guest(vmid.get())? {
        Some(g) => Ok(g.job_id),
        None => Err(StepError::Refused(format!(
            "felhom has no record of guest {vmid}; refusing to destroy a guest it did not make"
        ))),
    }
}

/// Check the guest at `vmid` is felhom's (range + marker); `None` if it is already gone.
pub async fn check_owned(
    cx: &JobCx,
    vmid: Vmid,
    expected_job: &str,
) -> Result<Option<pve_api::LxcConfig>, StepError> {
    if !cx.config.vmid_range.contains(vmid) {
        return Err(StepError::Refused(format!(
            "VMID {vmid} is outside felhom's range {}; refusing to touch it",
            cx.config.vmid_range
        )));
    }
    let cfg = match cx.client.lxc_config(&cx.node, vmid).await {
        Ok(c) => c,
        Err(ApiError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match cfg.get_str("description").and_then(Marker::find) {
        Some(m) if m.job == expected_job => Ok(Some(cfg)),
        Some(m) => Err(StepError::Refused(format!(
            "guest {vmid} carries the marker of felhom job {}, but the journal says job {expected_job} made it; refusing to destroy it",
            m.job
        ))),
        None => Err(StepError::Refused(format!("guest {vmid} carries no felhom ownership marker; refusing to destroy it"))),
    }
}

impl Step for TeardownStep {
    fn name(&self) -> &'static str {
        match self {
            TeardownStep::Lease => "lease",
            TeardownStep::Check => "check",
            TeardownStep::Stop => "stop",
            TeardownStep::Destroy => "destroy",
            TeardownStep::Forget => "forget",
        }
    }

    fn has_undo(&self) -> bool {
        false
    }

    async fn observe(&self, cx: &JobCx) -> Result<Observed, StepError> {
        let vmid = cx.vmid()?;
        match self {
            TeardownStep::Lease => {
                cx.journal
                    .acquire_lease(vmid, &cx.job_id)
                    .map_err(|e| StepError::Refused(e.to_string()))?;
                Ok(Observed::Done(json!({ "vmid": vmid.get() })))
            }
            TeardownStep::Check => {
                let maker = maker_job(cx, vmid)?;
                let cfg = check_owned(cx, vmid, &maker).await?;
                Ok(Observed::Done(
                    json!({ "present": cfg.is_some(), "made_by": maker }),
                ))
            }
            TeardownStep::Stop => {
                let maker = maker_job(cx, vmid)?;
                if check_owned(cx, vmid, &maker).await?.is_none() {
                    return Ok(Observed::Done(json!({ "present": false })));
                }
                let st = cx.client.lxc_status(&cx.node, vmid).await?;
                Ok(if st.status == "running" {
                    Observed::NotDone
                } else {
                    Observed::Done(json!({ "status": st.status }))
                })
            }
            TeardownStep::Destroy => {
                let maker = maker_job(cx, vmid)?;
                match check_owned(cx, vmid, &maker).await? {
                    None => Ok(Observed::Done(json!({ "present": false }))),
                    Some(_) => Ok(Observed::NotDone),
                }
            }
            TeardownStep::Forget => {
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
        }
    }

    async fn intent(&self, cx: &JobCx) -> Result<Value, StepError> {
        Ok(json!({ "vmid": cx.facts().vmid }))
    }

    async fn act(&self, cx: &JobCx) -> Result<(), StepError> {
        let vmid = cx.vmid()?;
        match self {
            TeardownStep::Lease | TeardownStep::Check => Err(StepError::Refused(
                "internal: observe decides this step".into(),
            )),
            TeardownStep::Stop => match cx.client.lxc_stop(&cx.node, vmid).await {
                Ok(upid) => cx.wait(self.name(), &upid).await,
                Err(ApiError::NotRunning { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            },
            TeardownStep::Destroy => {
                let upid = cx.client.lxc_delete(&cx.node, vmid, true, true).await?;
                cx.wait(self.name(), &upid).await
            }
            TeardownStep::Forget => {
                cx.journal.forget_guest(vmid.get(), &cx.job_id)?;
                cx.journal.release_lease(vmid, &cx.job_id)?;
                Ok(())
            }
        }
    }

    async fn undo(&self, _cx: &JobCx) -> Result<(), StepError> {
        Ok(())
    }
}
