//! The teardown job: stop, destroy with purge, forget. Forward-only (there is nothing to
//! compensate), journaled and resumable like bring-up, and guarded the same way: felhom
//! destroys only a guest in its VMID range whose marker names the job that made it.
//!
//! | # | step | module | observe | act |
//! |---|---|---|---|---|
//! | 1 | lease | [`lease`] | this job holds the VMID's lease (taking it proves no live job has it) | – |
//! | 2 | check | [`check`] | the guest is felhom's (range, record, marker) or already gone | – |
//! | 3 | stop | [`stop`] | not running (or gone) | `POST status/stop`; wait |
//! | 4 | destroy | [`destroy`] | gone | `DELETE` with purge and destroy-unreferenced-disks; wait |
//! | 5 | forget | [`forget`] | record torn down, lease released | mark the record, release the lease |
//!
//! Each module holds the step's observe, act and plan line.

pub mod check;
pub mod destroy;
pub mod forget;
pub mod lease;
pub mod stop;

use pve_api::Vmid;
use serde_json::{json, Value};

use crate::guest::{self, Ownership};
use crate::job::{JobCx, Observed, Step, StepError};

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

impl TeardownStep {
    /// What `plan` says this step will do to guest `vmid`.
    pub fn plan(&self, vmid: Vmid) -> String {
        match self {
            TeardownStep::Lease => lease::plan(vmid),
            TeardownStep::Check => check::plan(vmid),
            TeardownStep::Stop => stop::plan(vmid),
            TeardownStep::Destroy => destroy::plan(vmid),
            TeardownStep::Forget => forget::plan(vmid),
        }
    }
}

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
    let Some(cfg) = guest::config_of(&cx.client, &cx.node, vmid).await? else {
        return Ok(None);
    };
    match Ownership::of(&cfg, expected_job) {
        Ownership::Ours(_) => Ok(Some(cfg)),
        Ownership::OtherJob(m) => Err(StepError::Refused(format!(
            "guest {vmid} carries the marker of felhom job {}, but the journal says job {expected_job} made it; refusing to destroy it",
            m.job
        ))),
        Ownership::Unmarked => Err(StepError::Refused(format!(
            "guest {vmid} carries no felhom ownership marker; refusing to destroy it"
        ))),
    }
}

/// The guest's config if it is still there and felhom's; `None` if gone.
async fn present(cx: &JobCx, vmid: Vmid) -> Result<Option<pve_api::LxcConfig>, StepError> {
    let maker = maker_job(cx, vmid)?;
    check_owned(cx, vmid, &maker).await
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
        match self {
            TeardownStep::Lease => lease::observe(cx),
            TeardownStep::Check => check::observe(cx).await,
            TeardownStep::Stop => stop::observe(cx).await,
            TeardownStep::Destroy => destroy::observe(cx).await,
            TeardownStep::Forget => forget::observe(cx),
        }
    }

    async fn intent(&self, cx: &JobCx) -> Result<Value, StepError> {
        Ok(json!({ "vmid": cx.facts().vmid }))
    }

    async fn act(&self, cx: &JobCx) -> Result<(), StepError> {
        match self {
            TeardownStep::Lease | TeardownStep::Check => Err(StepError::Refused(
                "internal: observe decides this step".into(),
            )),
            TeardownStep::Stop => stop::act(cx).await,
            TeardownStep::Destroy => destroy::act(cx).await,
            TeardownStep::Forget => forget::act(cx),
        }
    }

    async fn undo(&self, _cx: &JobCx) -> Result<(), StepError> {
        Ok(())
    }
}
