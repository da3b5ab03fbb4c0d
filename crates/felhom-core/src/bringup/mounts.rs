//! Step 6, mounts: with the default strategy the restore request made them and this step
//! only observes (and repairs). One `mpN` per spec mount, on the spec's storage, at least the spec's size.
//! A missing one is added with `PUT config mpN=<storage>:<GiB>,mp=<path>` (PVE allocates the
//! volume, reference §3.6) in the first free slot (`unusedN` slots count as taken); a smaller
//! one is grown to the absolute size. A mount detached outside felhom from a running guest
//! (the detach pending until the next start, the data still on its volume) is reverted, never
//! replaced by an empty volume; `apply` refuses one whose detach already happened.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::identity::modified_is_not_yet;
use super::{owned_config, spec, Drift, GuestView, PlanCx};
use crate::guest;
use crate::job::{JobCx, Observed, StepError};

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    // A grow whose answer was lost may still run (an attach is synchronous: its effect is
    // in the config already).
    cx.settle_lost_dispatch(vmid, &["resize"]).await?;
    let cfg = owned_config(cx, vmid).await?;
    let present = guest::mounts_of(&cfg);
    let mut seen = Vec::new();
    for m in &s.mounts {
        match present.iter().find(|p| p.path == m.path.as_str()) {
            Some(p) if p.bytes >= m.size.bytes() => {
                seen.push(json!({ "key": p.key, "path": m.path, "bytes": p.bytes }))
            }
            _ => return Ok(Observed::NotDone),
        }
    }
    Ok(Observed::Done(Value::Array(seen)))
}

pub(super) fn intent(cx: &JobCx) -> Result<Value, StepError> {
    Ok(serde_json::to_value(&spec(cx)?.mounts).unwrap_or(Value::Null))
}

pub(super) async fn act(cx: &JobCx) -> Result<(), StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    for m in &s.mounts {
        let cfg = owned_config(cx, vmid).await?;
        let present = guest::mounts_of(&cfg);
        if let Some(p) = present.iter().find(|p| p.path == m.path.as_str()) {
            if p.bytes < m.size.bytes() {
                let upid = cx
                    .client
                    .lxc_resize(&cx.node, vmid, &p.key, &m.size.resize_arg())
                    .await?;
                cx.wait("mounts", &upid)
                    .await
                    .or_else(super::rootfs::already_at_size)?;
            }
            continue;
        }
        // Detached outside felhom from the running guest: the detach waits for the next
        // start and the volume still holds the data. Revert it; never a new, empty volume.
        let pending = cx.client.lxc_pending(&cx.node, vmid).await?;
        if let Some(p) = guest::pending_mount_detaches(&pending)
            .into_iter()
            .find(|p| p.path == m.path.as_str())
        {
            cx.client
                .lxc_update_config(
                    &cx.node,
                    vmid,
                    &[("revert".to_string(), p.key)],
                    cfg.digest.as_deref(),
                )
                .await
                .map_err(modified_is_not_yet)?;
            continue;
        }
        let used: HashSet<String> = present
            .into_iter()
            .map(|p| p.key)
            .chain(
                (0..256)
                    .map(|n| format!("unused{n}"))
                    .filter(|k| cfg.get_str(k).is_some()),
            )
            .collect();
        let key = (0..256)
            .map(|n| format!("mp{n}"))
            .find(|k| !used.contains(k))
            .ok_or_else(|| StepError::Refused("no free mpN slot".into()))?;
        let value = pve_api::MountConfig::new_volume(
            &format!("{}:{}", m.storage, m.size.gib_string()),
            m.path.as_str(),
        )
        .map_err(|e| StepError::Refused(format!("mount {}: {e}", m.path)))?;
        cx.client
            .lxc_update_config(
                &cx.node,
                vmid,
                &[(key, value.to_string())],
                cfg.digest.as_deref(),
            )
            .await
            .map_err(modified_is_not_yet)?;
    }
    Ok(())
}

pub(super) fn plan(p: &PlanCx) -> Vec<String> {
    if p.config.strategy == crate::config::Strategy::Restore {
        // Allocated by the restore request (its line names them).
        return Vec::new();
    }
    p.spec
        .mounts
        .iter()
        .map(|m| {
            format!(
                "attach {}:{}G at {}",
                m.storage,
                m.size.gib_string(),
                m.path
            )
        })
        .collect()
}

pub(super) fn drift(v: &GuestView) -> Vec<Drift> {
    let Some(spec) = v.spec else {
        return Vec::new();
    };
    let present = guest::mounts_of(v.cfg);
    let mut d = Vec::new();
    for m in &spec.mounts {
        let want = format!("{} ({})", m.path, m.size);
        match present.iter().find(|p| p.path == m.path.as_str()) {
            None => d.push(Drift::new("mount", want, "absent")),
            Some(p) if p.bytes < m.size.bytes() => d.push(Drift::new(
                "mount",
                want,
                pve_api::format_disk_size(p.bytes),
            )),
            Some(_) => {}
        }
    }
    d
}
