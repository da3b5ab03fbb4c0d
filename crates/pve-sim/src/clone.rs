//! Clones and templates: what the `vzclone` and `vztemplate` workers do to the state, and the
//! storage features both depend on (audit §2 (b); pve-container `src/PVE/API2/LXC.pm`
//! `clone_vm` and `template`, `src/PVE/LXC.pm` `template_create`; pve-storage
//! `src/PVE/Storage/*Plugin.pm` `volume_has_feature`, `clone_image`, `create_base`).
//!
//! The synchronous halves (permissions, `lock: disk` on the source, the `lock: create`
//! placeholder, the config copy with fresh MACs) are in `api/clone.rs`; this module holds the
//! workers' phases, called from `tasks.rs`:
//!
//! | phase | clone | template |
//! |---|---|---|
//! | begin (under the lock) | allocate each target volume: a copy (`full`) of the source's size on the target storage, or a linked clone on the base's storage, recorded in `State::linked` | every volume's storage has the `template` feature; decide the renames `vm-<id>-…` → `base-<id>-…` |
//! | the work | the runtime copies the volumes (the lxc runtime; modelled: the duration) | the runtime renames its volume directories |
//! | apply | volumes into the config, the pool membership, `post_clone_hook` (only `/etc/machine-id` truncated, SSH host keys kept), then `lock: create` and the source's `lock: disk` go | volumes renamed in state and config, `template: 1` |
//! | failure | the new volumes and the target's config go, the source's `lock: disk` goes; `clone failed: …` | nothing changed |
//!
//! Storage features, as pve-storage's plugins declare them for container volumes (raw or
//! subvol): a linked clone needs `clone` on a **base** volume (no snapshots are modelled):
//! lvmthin, zfspool, rbd, btrfs; never a directory storage (its clones are qcow2, which a
//! container cannot use) nor thick LVM. `template` (renaming to base) works everywhere but
//! thick LVM.

use serde::{Deserialize, Serialize};

use pve_api::texts;

use crate::state::{State, TaskPlan, Volume};

/// One disk of a clone: the source's `rootfs`/`mpN`, and where its copy goes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CloneDisk {
    /// `rootfs` or `mpN`.
    pub key: String,
    /// The source's value of that key (its volume, size and options).
    pub value: String,
    /// The volume being cloned.
    pub source_volid: String,
    /// The storage the copy goes to (a linked clone stays on the base's storage).
    pub storage: String,
    /// A full copy, or a linked clone sharing the base.
    pub full: bool,
    pub bytes: u64,
}

/// The storage type of a volume id's storage, if the storage exists.
pub(crate) fn storage_type<'a>(st: &'a State, volid: &str) -> Option<&'a str> {
    let sid = volid.split(':').next()?;
    st.storage(sid).map(|s| s.storage_type.as_str())
}

fn volname(volid: &str) -> &str {
    volid.split_once(':').map_or(volid, |(_, n)| n)
}

/// Is `volid` a base (template) volume? (`base-<vmid>-disk-<n>` as pve-storage names them.)
pub(crate) fn is_base(volid: &str) -> bool {
    volname(volid).starts_with("base-")
}

/// `volume_has_feature(clone)` for a container volume: a base volume on lvmthin, zfspool,
/// rbd or btrfs.
pub(crate) fn can_link(st: &State, volid: &str) -> bool {
    is_base(volid)
        && matches!(
            storage_type(st, volid),
            Some("lvmthin" | "zfspool" | "rbd" | "btrfs")
        )
}

/// `volume_has_feature(template)`: a current (non-base) volume anywhere but on thick LVM.
pub(crate) fn can_template(st: &State, volid: &str) -> bool {
    !is_base(volid) && !matches!(storage_type(st, volid), Some("lvm") | None)
}

/// The base name a template gives a volume: `vm-100-disk-0` → `base-100-disk-0`.
fn base_name(volid: &str) -> String {
    match volid.split_once(':') {
        Some((sid, name)) => format!(
            "{sid}:{}",
            name.strip_prefix("vm-")
                .map_or_else(|| format!("base-{name}"), |r| format!("base-{r}"))
        ),
        None => volid.to_string(),
    }
}

/// The volume ids of a config's `rootfs` and `mpN` (volumes, not bind mounts).
pub(crate) fn config_volumes(conf: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    conf.iter()
        .filter(|(k, _)| *k == "rootfs" || is_mp_key(k))
        .filter_map(|(_, v)| {
            let vol = v.split(',').next()?;
            let vol = vol.strip_prefix("volume=").unwrap_or(vol);
            (!vol.starts_with('/') && vol.contains(':')).then(|| vol.to_string())
        })
        .collect()
}

pub(crate) fn is_mp_key(k: &str) -> bool {
    k.strip_prefix("mp")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The `vzclone` worker's first phase: allocate the target's volumes (in the state, owned by
/// the new VMID) and record linked clones. Returns the plan with `begun` set.
pub(crate) fn begin_clone(st: &mut State, plan: &TaskPlan) -> Result<TaskPlan, String> {
    let TaskPlan::Clone {
        source,
        newid,
        disks,
        pool,
        begun: false,
        ..
    } = plan
    else {
        return Ok(plan.clone());
    };
    let newid = *newid;
    match st.guests.get(&newid) {
        Some(g) if g.config.get("lock").is_some_and(|l| l == "create") => {}
        _ => return Err("Lost 'create' config lock, aborting.".into()),
    }
    let mut volumes: Vec<Volume> = Vec::new();
    for d in disks {
        let volid = st.allocate_volume(d.storage.clone(), newid, d.bytes, &mut volumes);
        if !d.full {
            st.linked.insert(volid, d.source_volid.clone());
        }
    }
    st.volumes.extend(volumes.iter().cloned());
    Ok(TaskPlan::Clone {
        source: *source,
        newid,
        disks: disks.clone(),
        pool: pool.clone(),
        begun: true,
        volumes,
    })
}

/// The end of a `vzclone`: the copies go into the target's config, the pool gets it,
/// `post_clone_hook` truncates `/etc/machine-id` (nothing else: SSH host keys stay the
/// source's), both locks go.
pub(crate) fn apply_clone(st: &mut State, plan: &TaskPlan) -> Result<(), String> {
    let TaskPlan::Clone {
        source,
        newid,
        disks,
        pool,
        volumes,
        ..
    } = plan
    else {
        return Ok(());
    };
    let (traits, ssh_key) = st
        .guests
        .get(source)
        .map(|g| (g.traits.clone(), g.ssh_key.clone()))
        .unwrap_or_default();
    let g = st
        .guests
        .get_mut(newid)
        .filter(|g| g.config.get("lock").is_some_and(|l| l == "create"))
        .ok_or("Lost 'create' config lock, aborting.")?;
    for (d, v) in disks.iter().zip(volumes) {
        let mut m = if d.key == "rootfs" {
            pve_api::MountConfig::parse_rootfs(&d.value)
        } else {
            pve_api::MountConfig::parse_mp(&d.value)
        }
        .map_err(|e| e.to_string())?;
        m.volume = v.volid.clone();
        g.config.insert(d.key.clone(), m.to_string());
    }
    g.vmid = *newid;
    g.traits = traits;
    // post_clone_hook → clear_machine_id: the file is emptied, so the clone's first boot
    // generates its own; the disk's SSH host keys are copied as they are.
    g.traits.machine_id = Some(String::new());
    g.machine_id = None;
    g.ssh_key = ssh_key;
    g.config.remove("lock");
    g.pool = pool.clone();
    if let Some(p) = pool {
        let members = st.pools.entry(p.clone()).or_default();
        if !members.contains(newid) {
            members.push(*newid);
        }
    }
    unlock_source(st, *source);
    Ok(())
}

/// What a runtime copies for a clone: (source volume, new volume, linked).
pub(crate) fn copies(disks: &[CloneDisk], volumes: &[Volume]) -> Vec<crate::runtime::VolumeCopy> {
    disks
        .iter()
        .zip(volumes)
        .map(|(d, v)| crate::runtime::VolumeCopy {
            key: d.key.clone(),
            from: d.source_volid.clone(),
            to: v.volid.clone(),
            linked: !d.full,
        })
        .collect()
}

/// The source's `lock: disk` goes, whatever the clone's outcome.
pub(crate) fn unlock_source(st: &mut State, source: u32) {
    if let Some(g) = st.guests.get_mut(&source) {
        if g.config.get("lock").is_some_and(|l| l == "disk") {
            g.config.remove("lock");
        }
    }
}

/// A failed clone: its volumes (and their links) and the target's config go; the source is
/// unlocked.
pub(crate) fn cleanup_clone(st: &mut State, plan: &TaskPlan) {
    let TaskPlan::Clone {
        source,
        newid,
        volumes,
        ..
    } = plan
    else {
        return;
    };
    for v in volumes {
        st.linked.remove(&v.volid);
    }
    st.volumes
        .retain(|v| !volumes.iter().any(|n| n.volid == v.volid));
    if st
        .guests
        .get(newid)
        .is_some_and(|g| g.config.get("lock").is_some_and(|l| l == "create"))
    {
        st.guests.remove(newid);
    }
    unlock_source(st, *source);
}

/// The `vztemplate` worker's first phase: every volume must allow `template`; the renames.
pub(crate) fn begin_template(st: &State, vmid: u32) -> Result<TaskPlan, String> {
    let g = st
        .guests
        .get(&vmid)
        .ok_or_else(|| texts::no_config(&st.node, vmid))?;
    // (A missing config is reported on the first node: the template task checked its node
    // when it was asked for.)
    let renames = template_renames(st, &g.config)?;
    Ok(TaskPlan::Template { vmid, renames })
}

/// `template_create`'s two passes over a config's volumes (`C:LXC.pm`): first every volume
/// must have the `template` feature, then each is renamed to its base name. Used by
/// `vztemplate` and by a restore of an archived template (audit R16).
pub(crate) fn template_renames(
    st: &State,
    conf: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, String> {
    let vols = config_volumes(conf);
    if let Some(v) = vols.iter().find(|v| !can_template(st, v)) {
        return Err(texts::template_unavailable(v));
    }
    Ok(vols.iter().map(|v| (v.clone(), base_name(v))).collect())
}

/// The end of a `vztemplate`: volumes renamed in the state and the config, `template: 1`.
pub(crate) fn apply_template(st: &mut State, vmid: u32, renames: &[(String, String)]) {
    for v in st.volumes.iter_mut() {
        if let Some((_, to)) = renames.iter().find(|(from, _)| *from == v.volid) {
            v.volid = to.clone();
        }
    }
    let Some(g) = st.guests.get_mut(&vmid) else {
        return;
    };
    for value in g.config.values_mut() {
        for (from, to) in renames {
            let head = value.split(',').next().unwrap_or("");
            let bare = head.strip_prefix("volume=").unwrap_or(head);
            if bare == from {
                *value = value.replacen(from.as_str(), to, 1);
            }
        }
    }
    g.config.insert("template".into(), "1".into());
}

/// Base volumes a destroy must keep because linked clones still use them (pve-storage
/// `vdisk_free`: the destroy warns and goes on), with the warnings.
pub(crate) fn bases_in_use(st: &State, volids: &[String]) -> (Vec<String>, Vec<String>) {
    let kept: Vec<String> = volids
        .iter()
        .filter(|v| st.linked.values().any(|b| b == *v))
        .cloned()
        .collect();
    let warnings = kept
        .iter()
        .map(|v| texts::base_in_use(volname(v)))
        .collect();
    (kept, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names_and_features_follow_the_storage_plugins() {
        let mut st = State::bootstrap("pve");
        for (id, ty) in [("z", "zfspool"), ("l", "lvm"), ("r", "rbd"), ("b", "btrfs")] {
            st.storages.push(crate::state::StorageDef {
                id: id.into(),
                storage_type: ty.into(),
                content: vec!["rootdir".into()],
                total: 1 << 40,
                shared: false,
                nodes: None,
            });
        }
        assert_eq!(
            base_name("local-lvm:vm-100-disk-0"),
            "local-lvm:base-100-disk-0"
        );
        for ok in [
            "local-lvm:base-1-disk-0",
            "z:base-1-disk-0",
            "r:base-1-disk-0",
            "b:base-1-disk-0",
        ] {
            assert!(can_link(&st, ok), "{ok}");
        }
        for no in [
            "local-lvm:vm-1-disk-0",
            "local:base-1-disk-0",
            "l:base-1-disk-0",
            "x:base-1-disk-0",
        ] {
            assert!(!can_link(&st, no), "{no}");
        }
        assert!(can_template(&st, "local:vm-1-disk-0"));
        assert!(!can_template(&st, "l:vm-1-disk-0"));
        assert!(!can_template(&st, "local-lvm:base-1-disk-0"));
    }
}
