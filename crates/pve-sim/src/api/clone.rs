//! `POST /nodes/{node}/lxc/{vmid}/clone` and `POST …/template`: the synchronous halves of
//! pve-container `src/PVE/API2/LXC.pm` `clone_vm` and `template` (audit §2 (b)); the
//! workers' phases are in `crate::clone`.
//!
//! Clone, in PVE's order: `VM.Clone` on the source and `VM.Allocate` on the new VMID or the
//! pool (the schema's `check`), the pool must exist; `set_lock(vmid, 'disk')` (the source's
//! flock, `check_lock`: a second clone while one runs fails here with `CT is locked (disk)`);
//! `create_and_lock_config(newid)` (the `lock: create` placeholder); then every key of the
//! source in sorted order: `unusedN` skipped, each volume checked (`Datastore.AllocateSpace`
//! on its storage, a full clone of a running CT refused, a linked clone needing the storage's
//! `clone` feature), bind mounts refused, every `netN` given a fresh MAC and checked for
//! `SDN.Use`, the rest copied; `template`, snapshots and pending changes dropped; hostname and
//! description replaced when passed. A failure there removes the placeholder and the source's
//! lock. The answer is the `vzclone` UPID, whose id is the **source** VMID.
//!
//! Template: `VM.Allocate`; under the flock: `check_lock`, not a template already, not
//! running; a `vztemplate` worker (holding the flock) renames the volumes to `base-…` and sets
//! `template: 1`. The answer is `null`, not the UPID.

use super::lxc::check_vnet_access;
use super::*;
use crate::clone::{can_link, is_mp_key, CloneDisk};

/// Modelled durations at time scale 1 (milliseconds): a linked clone is a thin snapshot and
/// a mount for `post_clone_hook`, independent of the size; a full clone copies the data.
const CLONE_LINKED: u64 = 1_500;
const CLONE_FULL_BASE: u64 = 2_000;
const CLONE_FULL_PER_GIB: u64 = 1_000;
const TEMPLATE: u64 = 1_000;

pub(crate) async fn clone(sim: &Arc<Sim>, req: &Req) -> HResult {
    validate(
        req,
        &[
            NODE,
            VMID,
            ("newid", Kind::Vmid),
            ("hostname", Kind::DnsName),
            ("description", Kind::Str(8192)),
            ("pool", Kind::PoolId),
            ("snapname", Kind::Str(40)),
            ("storage", Kind::StorageId),
            ("full", Kind::Bool),
            ("target", Kind::Node),
            ("bwlimit", Kind::Int(0, i64::MAX)),
        ],
        &["newid"],
    )?;
    let vmid = req.vmid();
    let newid: u32 = req.get("newid").and_then(|v| v.parse().ok()).unwrap_or(0);
    let node = req.node.clone();
    let pool = req.get("pool").map(str::to_string);
    let storage = req.get("storage").map(str::to_string);
    sim.read(|st| -> Result<(), PveErr> {
        need(st, &req.who, &format!("/vms/{vmid}"), "VM.Clone")?;
        let by_pool = pool
            .as_ref()
            .is_some_and(|p| auth::has(st, &req.who, &format!("/pool/{p}"), "VM.Allocate"));
        if !by_pool {
            need(st, &req.who, &format!("/vms/{newid}"), "VM.Allocate")?;
        }
        if let Some(p) = &pool {
            if !st.pools.contains_key(p) {
                return Err(perm_text(format!("pool '{p}' does not exist")));
            }
        }
        if let Some(t) = req.get("target") {
            if !st.has_node(t) && t != "localhost" {
                return Err(die(format!("no such cluster node '{t}'")));
            }
            if t != node && t != "localhost" {
                return Err(die(
                    "pve-sim does not model clones to another node (target)",
                ));
            }
        }
        if let Some(sid) = &storage {
            if st.storage(sid).is_none() {
                return Err(die(texts::storage_missing(sid)));
            }
        }
        Ok(())
    })?;

    // set_lock(vmid, 'disk'): the source's flock, check_lock, the lock written.
    let src_guard = sim.flock(vmid, model::LOCK_TIMEOUT).await.map_err(die)?;
    sim.mutate(|st| -> Result<(), PveErr> {
        let g = st
            .guests
            .get_mut(&vmid)
            .filter(|g| g.node == node)
            .ok_or_else(|| no_conf(&node, vmid))?;
        if let Some(l) = g.config.get("lock") {
            return Err(die(texts::locked(l)));
        }
        g.config.insert("lock".into(), "disk".into());
        Ok(())
    })?;
    drop(src_guard);

    // create_and_lock_config(newid): its flock (5 s) and the placeholder.
    let placed = match sim.flock_on(&node, newid, model::CREATE_LOCK_TIMEOUT).await {
        Ok(guard) => {
            let r = sim.mutate(|st| -> Result<(), PveErr> {
                // The placeholder reserves the VMID cluster-wide (see `lxc::create`).
                if let Some(g) = st.guests.get(&newid) {
                    return Err(die(texts::already_exists_on_node(newid, &g.node)));
                }
                st.guests.insert(
                    newid,
                    Guest {
                        vmid: newid,
                        node: node.clone(),
                        config: BTreeMap::from([("lock".to_string(), "create".to_string())]),
                        ..Guest::default()
                    },
                );
                Ok(())
            });
            drop(guard);
            r
        }
        Err(e) => Err(die(e)),
    };
    if let Err(e) = placed {
        sim.mutate(|st| crate::clone::unlock_source(st, vmid));
        return Err(e);
    }

    let who = req.who.clone();
    let decided = sim.mutate(|st| -> Result<String, PveErr> {
        let src = st
            .guests
            .get(&vmid)
            .filter(|g| g.node == node)
            .cloned()
            .ok_or_else(|| no_conf(&node, vmid))?;
        let running = src.running;
        let is_template = src.config.get("template").is_some_and(|t| t == "1");
        let full = match req.get("full") {
            Some(_) => req.flag("full"),
            None => !is_template,
        };
        if storage.is_some() && !full {
            return Err(die(texts::STORAGE_NOT_FOR_LINKED));
        }
        if let Some(s) = req.get("snapname") {
            return Err(die(format!("snapshot '{s}' does not exist")));
        }
        let mut newconf: BTreeMap<String, String> = BTreeMap::new();
        let mut disks: Vec<CloneDisk> = Vec::new();
        for (opt, value) in &src.config {
            if opt.starts_with("unused") {
                continue;
            }
            if opt == "rootfs" || is_mp_key(opt) {
                let m = if opt == "rootfs" {
                    pve_api::MountConfig::parse_rootfs(value)
                } else {
                    pve_api::MountConfig::parse_mp(value)
                }
                .map_err(|e| die(format!("unable to parse {opt}: {e}")))?;
                if m.volume.starts_with('/') {
                    let kind = if m.volume.starts_with("/dev/") {
                        "device"
                    } else {
                        "bind"
                    };
                    return Err(die(texts::clone_mountpoint(opt, kind)));
                }
                let src_sid = m.volume.split(':').next().unwrap_or("").to_string();
                let sid = storage.clone().unwrap_or_else(|| src_sid.clone());
                if st.storage(&sid).is_none() {
                    return Err(die(texts::storage_missing(&sid)));
                }
                need(
                    st,
                    &req.who,
                    &format!("/storage/{sid}"),
                    "Datastore.AllocateSpace",
                )?;
                if full {
                    if running {
                        return Err(die(texts::FULL_CLONE_RUNNING));
                    }
                } else if !can_link(st, &m.volume) {
                    return Err(die(texts::linked_clone_unavailable(&m.volume)));
                }
                let bytes = st
                    .volumes
                    .iter()
                    .find(|v| v.volid == m.volume)
                    .map(|v| v.size)
                    .or(m.size)
                    .unwrap_or(0);
                disks.push(CloneDisk {
                    key: opt.clone(),
                    value: value.clone(),
                    source_volid: m.volume.clone(),
                    storage: if full { sid } else { src_sid },
                    full,
                    bytes,
                });
            } else if opt
                .strip_prefix("net")
                .is_some_and(|n| n.parse::<u32>().is_ok())
            {
                // "always change MAC! address"
                let fresh = value
                    .parse::<pve_api::NetConfig>()
                    .and_then(|n| n.with_hwaddr(&params::fresh_mac()))
                    .map(|n| n.to_string())
                    .map_err(|e| die(format!("unable to parse {opt}: {e}")))?;
                check_vnet_access(st, &req.who, &fresh)?;
                newconf.insert(opt.clone(), fresh);
            } else {
                newconf.insert(opt.clone(), value.clone());
            }
        }
        for k in ["snapshots", "parent", "snaptime", "snapstate", "template"] {
            newconf.remove(k);
        }
        newconf.insert("lock".into(), "create".into());
        if let Some(h) = req.get("hostname").filter(|h| !h.is_empty()) {
            newconf.insert("hostname".into(), h.to_string());
        }
        if let Some(d) = req.get("description").filter(|d| !d.is_empty()) {
            newconf.insert("description".into(), d.trim_end_matches('\n').to_string());
        }
        let modelled = if disks.iter().all(|d| !d.full) {
            CLONE_LINKED
        } else {
            CLONE_FULL_BASE
                + disks
                    .iter()
                    .filter(|d| d.full)
                    .map(|d| d.bytes * CLONE_FULL_PER_GIB / GIB)
                    .sum::<u64>()
        };
        if let Some(g) = st.guests.get_mut(&newid) {
            g.config = newconf;
        }
        let plan = TaskPlan::Clone {
            source: vmid,
            newid,
            disks,
            pool: pool.clone(),
            begun: false,
            volumes: Vec::new(),
        };
        Ok(sim.new_task(st, "vzclone", &vmid.to_string(), &who, modelled, plan))
    });
    match decided {
        Ok(upid) => {
            // The worker takes no flock for its whole run: it locks the target for each
            // config write, and the source is held by its `lock: disk`.
            sim.spawn_task(upid.clone(), None, None);
            Ok(json!(upid).into())
        }
        Err(e) => {
            sim.mutate(|st| {
                crate::clone::unlock_source(st, vmid);
                if st
                    .guests
                    .get(&newid)
                    .is_some_and(|g| g.config.get("lock").is_some_and(|l| l == "create"))
                {
                    st.guests.remove(&newid);
                }
            });
            Err(e)
        }
    }
}

pub(crate) async fn template(sim: &Arc<Sim>, req: &Req) -> HResult {
    let vmid = req.vmid();
    sim.read(|st| need(st, &req.who, &format!("/vms/{vmid}"), "VM.Allocate"))?;
    validate(req, &[NODE, VMID], &[])?;
    let node = req.node.clone();
    let guard = sim.flock(vmid, model::LOCK_TIMEOUT).await.map_err(die)?;
    let who = req.who.clone();
    let upid = sim.mutate(|st| -> Result<String, PveErr> {
        let g = guest_or_err(st, &node, vmid)?;
        if let Some(l) = g.config.get("lock") {
            return Err(die(texts::locked(l)));
        }
        if g.config.get("template").is_some_and(|t| t == "1") {
            return Err(die(texts::TEMPLATE_OF_TEMPLATE));
        }
        if g.running {
            return Err(die(texts::TEMPLATE_RUNNING));
        }
        let plan = TaskPlan::Template {
            vmid,
            renames: Vec::new(),
        };
        Ok(sim.new_task(st, "vztemplate", &vmid.to_string(), &who, TEMPLATE, plan))
    })?;
    // fork_worker inside lock_config: the worker holds the flock.
    sim.spawn_task(upid, Some(vmid), Some(guard));
    Ok(Value::Null.into())
}
