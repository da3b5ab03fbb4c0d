//! Step 5, rootfs: with the default strategy the restore made the rootfs at the spec's size
//! and this step only observes (it repairs a guest made the old way, or shrunk outside
//! felhom's reach). Otherwise: grow the root disk to the spec's absolute size (`PUT resize size=<N>G`,
//! never `+N`, so a retried grow cannot grow twice), and wait for the task so the next config
//! write never meets the resize's lock (seed F4). PVE cannot shrink a disk: `validate`
//! refuses a spec below the golden's size before any job exists. After a dispatch whose
//! answer was lost (a 595 from pveproxy), observe waits for the resize task still running
//! before it reads the size.

use pve_api::{ApiError, TaskFailure};
use serde_json::{json, Value};

use super::{owned_config, spec, Drift, GuestView, PlanCx};
use crate::guest;
use crate::job::{JobCx, Observed, StepError};

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    // A resize whose answer was lost may still be growing the disk: wait for it, then read
    // the size (a second resize behind it would be a second grow, or on PVE a task failing
    // `disk is already at specified size`).
    cx.settle_lost_dispatch(vmid, &["resize"]).await?;
    let cfg = owned_config(cx, vmid).await?;
    let size = guest::rootfs_bytes(&cfg).map_err(StepError::Refused)?;
    if size >= s.rootfs_size.bytes() {
        Ok(Observed::Done(json!({ "rootfs_bytes": size })))
    } else {
        Ok(Observed::NotDone)
    }
}

pub(super) fn intent(cx: &JobCx) -> Result<Value, StepError> {
    Ok(json!({ "size": spec(cx)?.rootfs_size.resize_arg() }))
}

pub(super) async fn act(cx: &JobCx) -> Result<(), StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    match cx
        .client
        .lxc_resize(&cx.node, vmid, "rootfs", &s.rootfs_size.resize_arg())
        .await
    {
        Ok(upid) => cx.wait("rootfs", &upid).await.or_else(already_at_size),
        Err(ApiError::AlreadyAtSize { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// PVE checks the size again inside the resize worker: a resize queued behind another that
/// reached the size first ends as a task failing `disk is already at specified size`. The
/// disk has the size asked for; the next observe verifies it.
pub(super) fn already_at_size(e: StepError) -> Result<(), StepError> {
    match e {
        StepError::Api(ApiError::TaskFailed {
            kind: TaskFailure::AlreadyAtSize,
            ..
        }) => Ok(()),
        e => Err(e),
    }
}

pub(super) fn plan(p: &PlanCx) -> Vec<String> {
    let from = p
        .golden
        .rootfs_bytes
        .map(pve_api::format_disk_size)
        .unwrap_or_else(|| "?".into());
    match p.config.strategy {
        // The same growth, made by the restore request (its line names the sizes).
        crate::config::Strategy::Restore => vec![format!(
            "resize rootfs {from} → {} at restore (in the restore request; no resize task)",
            p.spec.rootfs_size
        )],
        crate::config::Strategy::RestoreResize | crate::config::Strategy::LinkedClone => {
            vec![format!(
                "resize rootfs {from} → {} (absolute)",
                p.spec.rootfs_size
            )]
        }
    }
}

pub(super) fn drift(v: &GuestView) -> Vec<Drift> {
    let Some(spec) = v.spec else {
        return Vec::new();
    };
    let size = guest::rootfs_bytes(v.cfg).unwrap_or(0);
    if size < spec.rootfs_size.bytes() {
        vec![Drift::new(
            "rootfs_size",
            spec.rootfs_size.to_string(),
            pve_api::format_disk_size(size),
        )]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(exitstatus: &str) -> StepError {
        StepError::Api(ApiError::TaskFailed {
            upid: "U".into(),
            exitstatus: exitstatus.into(),
            kind: TaskFailure::of(exitstatus),
            log_tail: vec![],
        })
    }

    #[test]
    fn a_resize_task_that_found_the_size_reached_is_done() {
        assert!(already_at_size(failed(pve_api::texts::ALREADY_AT_SIZE)).is_ok());
        assert!(already_at_size(failed(pve_api::texts::CANNOT_SHRINK)).is_err());
        assert!(already_at_size(failed("boom")).is_err());
        assert!(already_at_size(StepError::NotYet("x".into())).is_err());
    }
}
