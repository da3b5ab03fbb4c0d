//! Step 1, reserve: pick the guest's VMID and hold felhom's journal lease on it.
//!
//! The lease is felhom's (two felhom processes never build on one VMID); PVE's own claim is
//! the restore's placeholder config. A fixed VMID that already holds a guest is refused unless
//! the guest carries this job's marker (a resumed job whose restore got that far).

use std::collections::HashSet;

use pve_api::Vmid;
use serde_json::{json, Value};

use super::{spec, PlanCx};
use crate::guest::{self, Ownership, VmidPicker};
use crate::job::{Facts, JobCx, Observed, StepError};
use crate::journal::JournalError;
use crate::spec::VmidChoice;

pub(crate) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let Some(vmid) = cx.facts().vmid else {
        return Ok(Observed::NotDone);
    };
    let vmid = Vmid::try_from(vmid).map_err(|e| StepError::Refused(e.to_string()))?;
    // Re-taking our own lease is how a resumed job proves no one else has it.
    cx.journal
        .acquire_lease(vmid, &cx.job_id)
        .map_err(|e| StepError::Refused(e.to_string()))?;
    Ok(Observed::Done(json!({ "vmid": vmid.get() })))
}

pub(crate) fn intent(cx: &JobCx) -> Result<Value, StepError> {
    let s = spec(cx)?;
    Ok(json!({ "vmid": s.vmid, "range": cx.config.vmid_range, "preferred": cx.facts().vmid_hint }))
}

pub(crate) async fn act(cx: &JobCx) -> Result<(), StepError> {
    let s = spec(cx)?;
    let range = cx.config.vmid_range;
    // One shared read a moment old serves every job of the batch: a VMID taken since is
    // PVE's to refuse (the placeholder config is the only reservation that holds across
    // processes); an "auto" guest then moves on, a fixed one is refused with nothing of
    // it made (`Facts::vmid_taken`). Asking `nextid` of each VMID would tell no more (it
    // reserves nothing, reference §8) and cost the entry node a request per guest.
    let since = std::time::Instant::now()
        .checked_sub(std::time::Duration::from_millis(500))
        .unwrap_or_else(std::time::Instant::now);
    let view = crate::cluster::ClusterView::read_shared(
        &cx.client,
        cx.config.client.base_url.as_str(),
        since,
    )
    .await?;
    let candidates: Vec<Vmid> = match s.vmid {
        VmidChoice::Fixed(v) => vec![v],
        VmidChoice::NextFree => {
            // The VMID `plan` showed (chosen for this job in spec order) first, then the
            // next free ones if another process took it meanwhile.
            let picker = VmidPicker::from_view(&cx.journal, &view, range).map_err(|e| match e {
                guest::PickError::Api(e) => StepError::Api(e),
                guest::PickError::Journal(e) => StepError::Journal(e),
            })?;
            let free: Vec<Vmid> = picker.candidates().take(64).collect();
            let hint = cx
                .facts()
                .vmid_hint
                .and_then(|v| Vmid::try_from(v).ok())
                .filter(|v| free.contains(v) || picker.is_free(*v));
            let mut seen = HashSet::new();
            hint.into_iter()
                .chain(free)
                .filter(|v| seen.insert(v.get()))
                .collect()
        }
    };
    for vmid in candidates {
        if !range.contains(vmid) {
            return Err(StepError::Refused(format!(
                "VMID {vmid} is outside felhom's range {range}"
            )));
        }
        let leased = match s.vmid {
            VmidChoice::Fixed(_) => cx.journal.acquire_lease(vmid, &cx.job_id),
            VmidChoice::NextFree => cx.journal.acquire_free_lease(vmid, &cx.job_id),
        };
        match leased {
            Ok(()) => {}
            Err(e @ JournalError::Held { .. }) => {
                if matches!(s.vmid, VmidChoice::Fixed(_)) {
                    return Err(StepError::Refused(e.to_string()));
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        // A fixed VMID the cluster read shows a guest at: this job's only if it carries this
        // job's marker (the restore step then recognises it); otherwise not ours.
        if let (VmidChoice::Fixed(_), Some(at)) = (s.vmid, view.guest(vmid.get())) {
            let ours = guest::config_of(&cx.client, &at.node, vmid)
                .await?
                .is_some_and(|cfg| Ownership::of(&cfg, &cx.job_id).is_ours());
            if !ours {
                cx.journal.release_lease(vmid, &cx.job_id)?;
                return Err(StepError::Refused(format!("VMID {vmid} already holds a guest felhom did not create for this job; refusing to touch it")));
            }
        }
        cx.journal.set_job_vmid(&cx.job_id, vmid)?;
        cx.shortcuts.note_reserved();
        cx.note(
            "reserve",
            Facts {
                vmid: Some(vmid.get()),
                ..Facts::default()
            },
        )?;
        return Ok(());
    }
    Err(StepError::Refused(format!(
        "no free VMID in felhom's range {range}"
    )))
}

pub(crate) fn undo(cx: &JobCx) -> Result<(), StepError> {
    if let Some(v) = cx.facts().vmid.and_then(|v| Vmid::try_from(v).ok()) {
        if let Some(g) = cx.journal.guest(v.get())? {
            if g.job_id == cx.job_id && g.state == "provisioning" {
                cx.journal.forget_guest(v.get(), &cx.job_id)?;
            }
        }
        cx.journal.release_lease(v, &cx.job_id)?;
    }
    Ok(())
}

pub(crate) fn plan(p: &PlanCx) -> Vec<String> {
    vec![format!("lease VMID {}", p.vmid)]
}

/// The restore found `taken` occupied after all: another felhom process (another journal) or
/// someone else created a guest there between this job's reserve and its restore — PVE's
/// placeholder config is the only VMID reservation that holds across processes. A job whose
/// spec says `vmid = "auto"` gives the VMID up (lease, provisioning record) and reserves the
/// next free one; the restore then dispatches there. Returns the new VMID.
pub(crate) async fn move_on(cx: &JobCx, taken: Vmid) -> Result<Vmid, StepError> {
    if let Some(g) = cx.journal.guest(taken.get())? {
        if g.job_id == cx.job_id && g.state == "provisioning" {
            cx.journal.forget_guest(taken.get(), &cx.job_id)?;
        }
    }
    cx.journal.release_lease(taken, &cx.job_id)?;
    cx.update_facts(|f| {
        f.vmid = None;
        f.vmid_hint = None;
    });
    act(cx).await?;
    let now = cx.vmid()?;
    super::record_guest(cx, "provisioning")?;
    Ok(now)
}
