//! Step 2, restore: `POST /nodes/{node}/lxc` with `restore=1` from the golden, with the
//! hostname, the spec's net0 (bridge, VLAN tag, addresses, firewall) carrying the MAC felhom
//! chose (journaled with the intent, before the dispatch), the spec's settings (cores,
//! memory, swap, onboot, DNS) and the ownership marker, all in that one request, so the guest
//! never exists with the golden's identity (seed F1, F2) or the golden's settings. With the
//! default strategy (`restore`) the rootfs and every mount point are allocated at their final
//! sizes by the same request ([`sized_disks`]): no resize task, no mount write. Undo: stop
//! and destroy with purge, only a guest that carries this job's marker.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::identity::{fresh_mac, taken_macs};
use super::start::stop_if_running;
use super::{marker, net0_of, record_guest, spec, Drift, GuestView, PlanCx};
use crate::config::Strategy;
use crate::guest::{self, Ownership};
use crate::identity::{HostnameAction, IdentityPolicy, MacAction};
use crate::job::{JobCx, Observed, StepError};
use crate::journal::Phase;
use crate::marker::MarkerState;

pub(crate) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    // This process reserved the VMID from a cluster read a moment old, and the job never
    // journaled a restore intent, so never sent one (the intent goes first): nothing
    // carries its marker, no need to ask. A guest someone put at the VMID since makes the
    // POST fail (`AlreadyExists`; PVE's placeholder config is the atomic check either
    // way). A resumed job has no such knowledge and reads: a foreign guest found there is
    // refused without a request to its VMID.
    if cx.shortcuts.reserved() && cx.owner_job() == cx.job_id && !dispatched(cx)? {
        return Ok(Observed::NotDone);
    }
    let deadline = Instant::now() + cx.config.task_timeout;
    loop {
        let Some(cfg) = guest::config_of(&cx.client, &cx.node, vmid).await? else {
            return Ok(Observed::NotDone);
        };
        let owner = Ownership::of(&cfg, &cx.owner_job());
        match (
            cfg.get_str("lock"),
            owner.is_ours() || super::repairs_unmarked(cx, &cfg),
        ) {
            (None, true) => {
                let mac = net0_of(&cfg)?.and_then(|n| n.hwaddr).map(|m| m.to_string());
                let rootfs = guest::rootfs_volume(&cfg);
                if rootfs.is_some() && cx.facts().rootfs != rootfs {
                    cx.update_facts(|f| f.rootfs = rootfs);
                }
                // Ours: the identity step's observe may start from this read.
                cx.cache_config(vmid.get(), &cfg);
                return Ok(Observed::Done(json!({ "vmid": vmid.get(), "mac": mac })));
            }
            (Some("create"), _) if dispatched(cx)? => {
                // Our restore is still running (or a crash lost its UPID): wait for the
                // placeholder's `create` lock to go, then look again.
                if let Some(upid) = cx
                    .facts()
                    .upid
                    .and_then(|u| u.parse::<pve_api::Upid>().ok())
                    .filter(|u| u.task_type == "vzrestore" || u.task_type == "vzclone")
                {
                    let _ = cx.client.watch_task(&upid, &cx.wait_options()).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if Instant::now() > deadline {
                    return Err(StepError::Refused(format!(
                        "guest {vmid} stayed locked (create) past the task timeout"
                    )));
                }
            }
            // Another felhom process's guest took the VMID: an "auto" guest moves on to the
            // next free VMID. A guest with another job's marker is never this job's restore,
            // even if this job journaled its intent there (PVE makes one config per VMID, and
            // this job's restore carries this job's marker): it was killed or its POST lost
            // before PVE acted, and the other took the VMID. A restore still running there
            // (`create`) is another's only if this job never dispatched to it. A finished
            // guest without felhom's marker is refused as before: a person looks at who put
            // it at felhom's VMID.
            (lock, _)
                if cx.owner_job() == cx.job_id
                    && !owner.is_ours()
                    && (matches!(owner, Ownership::OtherJob(_))
                        || (lock == Some("create") && !dispatched_at(cx, vmid)?))
                    && spec(cx)?.vmid == crate::spec::VmidChoice::NextFree =>
            {
                super::reserve::move_on(cx, vmid).await?;
                return Ok(Observed::NotDone);
            }
            (lock, _) => {
                let lock = lock.map(|l| format!(", locked ({l})")).unwrap_or_default();
                return Err(StepError::Refused(format!(
                    "VMID {vmid} holds a guest this job did not create ({}{lock}); refusing to touch it",
                    owner.describe()
                )));
            }
        }
    }
}

/// Whether this job dispatched its restore to `vmid` (the intent, journaled before the
/// POST, carries the VMID in its facts).
fn dispatched_at(cx: &JobCx, vmid: pve_api::Vmid) -> Result<bool, StepError> {
    Ok(cx.journal.events(&cx.job_id)?.iter().any(|e| {
        e.step == "restore"
            && e.phase == Phase::Intent
            && e.data["facts"]["vmid"].as_u64() == Some(u64::from(vmid.get()))
    }))
}

/// Whether this job ever dispatched its restore (an intent is journaled before the POST).
fn dispatched(cx: &JobCx) -> Result<bool, StepError> {
    Ok(cx
        .journal
        .events(&cx.job_id)?
        .iter()
        .any(|e| e.step == "restore" && e.phase == Phase::Intent))
}

pub(crate) async fn intent(cx: &JobCx) -> Result<Value, StepError> {
    let s = spec(cx)?;
    // The MAC is chosen here and journaled with the intent, before the restore is
    // dispatched, so a resumed job restores with the same MAC or recognises it.
    if cx.facts().mac.is_none() {
        let mac = match IdentityPolicy::named(s.identity).mac() {
            MacAction::FreshAtRestore => {
                let except = cx
                    .facts()
                    .vmid
                    .and_then(|v| pve_api::Vmid::try_from(v).ok());
                fresh_mac(&taken_macs(cx, except).await?)
            }
            MacAction::KeepArchived => cx.facts().golden_mac.ok_or_else(|| {
                StepError::Refused("DR restore: the archive's net0 has no MAC to keep".into())
            })?,
        };
        cx.update_facts(|f| f.mac = Some(mac));
    }
    if clones(cx) && cx.facts().template.is_none() {
        let t = crate::publish::recorded_template(
            &cx.journal,
            &cx.node,
            s.storage.as_str(),
            s.golden.as_str(),
            None,
            Some(s.rootfs_size.bytes()),
        )?
        .ok_or_else(|| StepError::Refused(not_published(s)))?;
        cx.update_facts(|f| f.template = Some(t.vmid));
    }
    record_guest(cx, "provisioning")?;
    Ok(
        json!({ "golden": s.golden, "storage": s.storage, "hostname": s.hostname, "mac": cx.facts().mac, "strategy": cx.config.strategy.name(), "template": cx.facts().template }),
    )
}

/// Whether this job's guest is a linked clone (strategy `linked-clone`; never a publish job,
/// which restores the template itself).
fn clones(cx: &JobCx) -> bool {
    cx.config.strategy == Strategy::LinkedClone && !crate::publish::is_publish_job(&cx.job_id)
}

fn not_published(s: &crate::spec::GuestSpec) -> String {
    format!(
        "strategy linked-clone: golden {} has no published template on node {} storage {}; run `felhom golden publish --node {} --storage {}` first",
        s.golden, s.node, s.storage, s.node, s.storage
    )
}

pub(crate) async fn act(cx: &JobCx) -> Result<(), StepError> {
    if clones(cx) {
        return clone(cx).await;
    }
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    let mac = cx
        .facts()
        .mac
        .ok_or_else(|| StepError::Refused("internal: no MAC chosen before restore".into()))?;
    let net0 = s
        .net0(None, &mac)
        .map_err(|e| StepError::Refused(format!("net0: {e}")))?;
    let mut marker = marker(cx, s, MarkerState::Provisioning).to_string();
    let publish = crate::publish::is_publish_job(&cx.job_id);
    if publish {
        let sha256 = cx.facts().golden_sha256.ok_or_else(|| {
            StepError::Refused("internal: a publish job without the golden's hash".into())
        })?;
        let line = crate::publish::TemplateLine {
            sha256,
            golden: s.golden.to_string(),
            storage: s.storage.to_string(),
        };
        marker = format!("{marker}\n{line}");
    }
    // Identity is set at restore (F1, F2): hostname and a net0 carrying felhom's MAC, so the
    // guest never exists with the golden's MAC. `storage` is always passed (PVE defaults to
    // `local`, which rarely allows container directories; in explicit mode PVE ignores it).
    let mut params = vec![
        ("vmid".to_string(), vmid.to_string()),
        ("ostemplate".to_string(), s.golden.to_string()),
        ("restore".to_string(), "1".to_string()),
        ("storage".to_string(), s.storage.to_string()),
        ("net0".to_string(), net0.to_string()),
        ("description".to_string(), marker),
    ];
    // A template's rootfs is allocated at its published size (the golden's unless
    // `--rootfs-size`): a clone of the spec's size then needs no resize task.
    let strategy = if publish {
        Strategy::Restore
    } else {
        cx.config.strategy
    };
    params.extend(sized_disks(s, strategy)?);
    if IdentityPolicy::named(s.identity).hostname() == HostnameAction::FromSpec {
        params.push(("hostname".to_string(), s.hostname.to_string()));
    }
    if let Some(pool) = &s.pool {
        params.push(("pool".to_string(), pool.to_string()));
    }
    // What the customer bought, in the same request: PVE lets the request's keys win over
    // the archive's (pve-container `src/PVE/LXC/Create.pm` `sanitize_and_merge_config`), so
    // the guest never exists with the golden's CPU, memory or DNS (one write, no PUT after).
    params.extend(s.settings().into_iter().map(|(k, v)| (k.to_string(), v)));
    let upid = match cx.client.lxc_create(&cx.node, &params).await {
        Ok(u) => u,
        // Taken since the reserve (another felhom process): an "auto" guest moves on.
        Err(pve_api::ApiError::AlreadyExists { message })
            if s.vmid == crate::spec::VmidChoice::NextFree && cx.owner_job() == cx.job_id =>
        {
            let next = super::reserve::move_on(cx, vmid).await?;
            return Err(StepError::NotYet(format!(
                "VMID {vmid} was taken meanwhile ({message}); this guest moves to VMID {next}"
            )));
        }
        // A fixed VMID taken since the reserve's read: PVE made nothing of this job there.
        // Journaled, so the rollback's undo leaves the guest there alone without asking a
        // person (it carries no marker of this job, and never did).
        Err(pve_api::ApiError::AlreadyExists { message }) => {
            cx.note(
                "restore",
                crate::job::Facts {
                    vmid_taken: Some(vmid.get()),
                    ..Default::default()
                },
            )?;
            return Err(StepError::Refused(format!(
                "VMID {vmid} holds a guest this job did not create ({message}); refusing to touch it"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    cx.note_created(vmid.get(), true);
    let ended_by = cx.wait_ended("restore", &upid).await?;
    // A restore without `start=1` leaves the guest stopped: the start step need not ask.
    cx.shortcuts.note_restored(ended_by);
    Ok(())
}

/// Clones of one template, one at a time within this process. PVE holds `lock: disk` on the
/// source for the whole `vzclone` task and refuses a second clone at once (`CT is locked
/// (disk)`), so clones of one template are serial on the host whatever felhom does: queueing
/// them here costs nothing, and keeps the step's retry budget for clones another felhom
/// process starts (without it, the 45th of 100 guests gave up after its retries).
fn clone_gate(node: &str, template: pve_api::Vmid) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    type Gates =
        std::collections::HashMap<(String, String), std::sync::Arc<tokio::sync::Mutex<()>>>;
    static GATES: std::sync::LazyLock<std::sync::Mutex<Gates>> =
        std::sync::LazyLock::new(Default::default);
    GATES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((node.to_string(), template.to_string()))
        .or_default()
        .clone()
}

/// Strategy `linked-clone`: `POST /nodes/{node}/lxc/{template}/clone` with `newid`, the
/// hostname and the marker; wait for the `vzclone` task (its UPID names the template). PVE
/// gives the clone fresh MACs of its own; the identity step then sets the MAC journaled with
/// this step's intent (one MAC per guest, chosen before dispatch, as for a restore). Clones
/// of one template from this process wait their turn ([`clone_gate`]); one another process
/// started holds `lock: disk` on it, and PVE refuses this one at once with `CT is locked
/// (disk)`: not yet, retried.
async fn clone(cx: &JobCx) -> Result<(), StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    let template = cx
        .facts()
        .template
        .and_then(|t| pve_api::Vmid::try_from(t).ok())
        .ok_or_else(|| StepError::Refused(not_published(s)))?;
    let mut params = vec![(
        "description".to_string(),
        marker(cx, s, MarkerState::Provisioning).to_string(),
    )];
    if IdentityPolicy::named(s.identity).hostname() == HostnameAction::FromSpec {
        params.push(("hostname".to_string(), s.hostname.to_string()));
    }
    if let Some(pool) = &s.pool {
        params.push(("pool".to_string(), pool.to_string()));
    }
    let gate = clone_gate(&cx.node, template);
    let _turn = gate.lock().await;
    match cx.client.lxc_clone(&cx.node, template, vmid, &params).await {
        Ok(upid) => {
            cx.note_created(vmid.get(), true);
            let ended_by = cx.wait_ended("restore", &upid).await?;
            // A clone is stopped, like a restore.
            cx.shortcuts.note_restored(ended_by);
            Ok(())
        }
        Err(pve_api::ApiError::Locked { lock, .. }) if lock == "disk" => Err(StepError::NotYet(
            format!("template {template} is locked (disk) by another clone"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The disks of the restore request. [`Strategy::Restore`]: `rootfs=<sid>:<GiB>` and one
/// `mpN=<sid>:<GiB>,mp=<path>` per spec mount, in spec order (PVE's explicit mode, audit
/// §2(a)): the worker allocates them at their final sizes (`int(GiB*1024)` MiB, so the exact
/// fraction of [`crate::spec::ByteSize::gib_string`] gives the spec's size), unpacks into
/// them, and the rootfs and mounts steps find nothing to do. Always `storage:size`: a bare
/// number is refused for a token (R3). Archived mount points are then not recreated (a
/// golden has none). [`Strategy::RestoreResize`]: none (storage-only mode, the golden's
/// sizes and archived mount points; the rootfs and mounts steps grow and attach).
pub(crate) fn sized_disks(
    s: &crate::spec::GuestSpec,
    strategy: Strategy,
) -> Result<Vec<(String, String)>, StepError> {
    if strategy != Strategy::Restore {
        return Ok(Vec::new());
    }
    let mut out = vec![(
        "rootfs".to_string(),
        format!("{}:{}", s.storage, s.rootfs_size.gib_string()),
    )];
    for (n, m) in s.mounts.iter().enumerate() {
        let value = pve_api::MountConfig::new_volume(
            &format!("{}:{}", m.storage, m.size.gib_string()),
            m.path.as_str(),
        )
        .map_err(|e| StepError::Refused(format!("mount {}: {e}", m.path)))?;
        out.push((format!("mp{n}"), value.to_string()));
    }
    Ok(out)
}

pub(crate) async fn undo(cx: &JobCx) -> Result<(), StepError> {
    let vmid = cx.vmid()?;
    // A destroy (or stop) whose answer was lost may still be running: wait for it before
    // reading, so the undo never dispatches a second one behind it.
    cx.settle_lost_dispatch(vmid, &["vzstop", "vzdestroy"])
        .await?;
    loop {
        let Some(cfg) = guest::config_of(&cx.client, &cx.node, vmid).await? else {
            return Ok(());
        };
        let owner = Ownership::of(&cfg, &cx.job_id);
        match (cfg.get_str("lock"), owner.is_ours()) {
            (Some("create"), _) => {
                // Still restoring: a failed restore removes itself; a finished one carries our
                // marker. Either way, wait for the lock to go before deciding.
                return Err(StepError::NotYet(format!(
                    "guest {vmid} is still being restored (lock: create)"
                )));
            }
            // The end of a destroy: PVE has freed the volumes and replaced the config by
            // `lock: destroyed` alone (pve-container `destroy_lxc_container` with
            // `{ lock => 'destroyed' }`), so the marker is gone; the config goes next.
            // Whoever's destroy it is, wait for it rather than judge a config without
            // its marker.
            (Some("destroyed"), _) => {
                return Err(StepError::NotYet(format!(
                    "guest {vmid} is being destroyed"
                )));
            }
            (_, true) => {
                stop_if_running(cx, vmid, "restore").await?;
                let upid = cx.client.lxc_delete(&cx.node, vmid, true, true).await?;
                cx.wait("restore", &upid).await?;
                cx.note_created(vmid.get(), false);
            }
            (_, false) if matches!(owner, Ownership::OtherJob(_)) => {
                // Another felhom job's guest: nothing of this job is at this VMID (PVE holds
                // one config per VMID, and this job's restore carries this job's marker from
                // its first write), so there is nothing to undo here. This job's guest was
                // destroyed by an undo that was cut off before it was journaled, or never
                // made; the VMID was free and the other job took it. Left untouched.
                tracing::info!(%vmid, holder = %owner.describe(), "undo restore: the VMID holds another felhom job's guest; nothing of this job is there");
                return Ok(());
            }
            (_, false) if cx.facts().vmid_taken == Some(vmid.get()) => {
                // PVE refused this job's restore here: the guest was someone else's before
                // this job sent anything, and nothing of this job is at this VMID.
                tracing::info!(%vmid, holder = %owner.describe(), "undo restore: PVE refused this job's restore at the VMID; nothing of this job is there");
                return Ok(());
            }
            (_, false) => {
                return Err(StepError::Refused(format!(
                    "refusing to destroy guest {vmid}: it does not carry this job's ownership marker ({}); a person must look at it",
                    owner.describe()
                )));
            }
        }
    }
}

pub(crate) fn plan(p: &PlanCx) -> Vec<String> {
    let s = p.spec;
    let golden_mac = p.golden.mac.as_deref().unwrap_or("?");
    let mac = match IdentityPolicy::named(s.identity).mac() {
        MacAction::FreshAtRestore => {
            format!("a fresh MAC (golden's {golden_mac} is never used)")
        }
        MacAction::KeepArchived => format!("the archived MAC {golden_mac} (DR)"),
    };
    let hostname = match IdentityPolicy::named(s.identity).hostname() {
        HostnameAction::FromSpec => format!("hostname {}", s.hostname),
        HostnameAction::KeepArchived => "the archived hostname (DR)".to_string(),
    };
    let settings = super::settings::describe(s);
    let settings = if settings.is_empty() {
        String::new()
    } else {
        format!("; {settings}")
    };
    let sizes = match p.config.strategy {
        Strategy::Restore => {
            let mounts: String = s
                .mounts
                .iter()
                .map(|m| format!(", {} {}:{}G", m.path, m.storage, m.size.gib_string()))
                .collect();
            format!("; rootfs {}{mounts} allocated at restore", s.rootfs_size)
        }
        Strategy::RestoreResize => String::new(),
        Strategy::LinkedClone => {
            let template = p
                .template
                .map(|t| format!("template {t}"))
                .unwrap_or_else(|| {
                    "the published template (none yet: `felhom golden publish`)".into()
                });
            return vec![format!(
                "linked clone of {template} (golden {} on {}) to {} with {hostname}, then {mac}; net0 {}{settings}",
                s.golden,
                s.storage,
                p.vmid,
                super::identity::describe_net0(s)
            )];
        }
    };
    vec![format!(
        "restore {} to {} on {} with {hostname} and {mac}; net0 {}{settings}{sizes} (one request)",
        s.golden,
        p.vmid,
        s.storage,
        super::identity::describe_net0(s)
    )]
}

/// The marker must still name the job the journal says made the guest.
pub(crate) fn drift(v: &GuestView) -> Vec<Drift> {
    let expected = format!("job={}", v.record.job_id);
    match Ownership::of(v.cfg, &v.record.job_id) {
        Ownership::Ours(_) => Vec::new(),
        Ownership::OtherJob(m) => vec![Drift::new("marker", expected, format!("job={}", m.job))],
        Ownership::Unmarked => vec![Drift::new("marker", expected, "no felhom marker")],
    }
}
