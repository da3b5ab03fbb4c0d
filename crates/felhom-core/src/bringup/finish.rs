//! Step 10, finish: the guest carries every tag felhom gives it (`felhom`, `customer-<id>`,
//! the spec's; tags someone else added are kept)
//! and a marker that says `provisioned`; the journal records it as active and the VMID lease
//! is released.

use serde_json::{json, Value};

use super::identity::modified_is_not_yet;
use super::{marker, owned_config, record_guest, spec, Drift, GuestView, PlanCx};
use crate::guest::{self, Ownership};
use crate::job::{JobCx, Observed, StepError};
use crate::marker::MarkerState;
use crate::spec::GuestSpec;

/// The tag every felhom guest carries.
pub const FELHOM_TAG: &str = "felhom";

/// The tags a guest of this spec carries, sorted as PVE keeps them.
pub fn tags_for(s: &GuestSpec) -> Vec<String> {
    let mut tags: Vec<String> = vec![FELHOM_TAG.into(), format!("customer-{}", s.customer)];
    tags.extend(s.tags.iter().map(|t| t.to_string()));
    tags.sort();
    tags.dedup();
    tags
}

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    let cfg = owned_config(cx, vmid).await?;
    let have = guest::tags_of(&cfg);
    let tagged = tags_for(spec(cx)?).iter().all(|t| have.contains(t));
    let provisioned = matches!(
        Ownership::of(&cfg, &cx.owner_job()),
        Ownership::Ours(m) if m.state == MarkerState::Provisioned
    );
    if tagged && provisioned {
        Ok(Observed::Done(finished(cx, vmid, cfg.get_str("tags"))?))
    } else {
        Ok(Observed::NotDone)
    }
}

pub(super) fn intent(cx: &JobCx) -> Result<Value, StepError> {
    Ok(json!({ "tags": tags_for(spec(cx)?) }))
}

pub(super) async fn act(cx: &JobCx) -> Result<(), StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    let cfg = owned_config(cx, vmid).await?;
    let marker = marker(cx, s, MarkerState::Provisioned);
    let mut tags = guest::tags_of(&cfg);
    tags.extend(tags_for(s));
    tags.sort();
    tags.dedup();
    let params = vec![
        ("tags".to_string(), tags.join(";")),
        ("description".to_string(), marker.to_string()),
    ];
    cx.client
        .lxc_update_config(&cx.node, vmid, &params, cfg.digest.as_deref())
        .await
        .map_err(modified_is_not_yet)?;
    // The write, accepted against the digest of the config just proved ours, is what the
    // observe would read back: `tags` and `description` are written at once even on a
    // running CT (reference §3.2), never left pending. No read to confirm it.
    cx.prove(finished(cx, vmid, Some(&params[0].1))?);
    Ok(())
}

/// The guest is finished: the journal records it active and the lease goes.
fn finished(cx: &JobCx, vmid: pve_api::Vmid, tags: Option<&str>) -> Result<Value, StepError> {
    record_guest(cx, "active")?;
    cx.journal.release_lease(vmid, &cx.job_id)?;
    Ok(json!({ "tags": tags }))
}

pub(super) fn plan(p: &PlanCx) -> Vec<String> {
    vec![format!(
        "tag ({}) and mark provisioned",
        tags_for(p.spec).join(", ")
    )]
}

/// Every tag the spec asks for is there.
pub(super) fn drift(v: &GuestView) -> Vec<Drift> {
    let Some(spec) = v.spec else {
        return Vec::new();
    };
    let want = tags_for(spec);
    let have = guest::tags_of(v.cfg);
    if want.iter().all(|t| have.contains(t)) {
        Vec::new()
    } else {
        vec![Drift::new("tags", want.join(";"), have.join(";"))]
    }
}
