use super::lxc::check_config_perms;
use super::*;
use crate::tasks::apply_pending;
use sha1::{Digest, Sha1};

/// PVE's serialised config (description as `#` lines first, then sorted keys, then the
/// `[pve:pending]` section): what `digest` hashes.
pub(crate) fn config_text(g: &Guest) -> String {
    let mut s = String::new();
    let section = |s: &mut String, conf: &BTreeMap<String, String>| {
        if let Some(d) = conf.get("description") {
            for line in d.lines() {
                s.push_str(&format!("#{}\n", escape_description(line)));
            }
        }
        for (k, v) in conf {
            if k != "description" {
                s.push_str(&format!("{k}: {v}\n"));
            }
        }
    };
    section(&mut s, &g.config);
    if !g.pending.is_empty() || !g.pending_delete.is_empty() {
        s.push_str("\n[pve:pending]\n");
        section(&mut s, &g.pending);
        if !g.pending_delete.is_empty() {
            s.push_str(&format!("delete: {}\n", g.pending_delete.join(",")));
        }
    }
    s
}

/// Description lines are stored URL-escaped for control characters, `%` and `:`.
fn escape_description(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c.is_control() || c == '%' || c == ':' {
                format!("%{:02X}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A config change may go ahead: no `lock` property (reference §4.2) and, when the request
/// names one, the digest it was decided on (§3.2).
fn writable(g: &Guest, req: &Req) -> Result<(), PveErr> {
    if let Some(l) = g.config.get("lock") {
        return Err(die(texts::locked(l)));
    }
    if let Some(d) = req.get("digest") {
        if d != digest(g) {
            return Err(die(texts::CONFIG_MODIFIED));
        }
    }
    Ok(())
}

/// `update_pct_config`'s `$check_content_type`: the volume's storage exists
/// (`storage_config`) and takes container directories.
fn rootdir_storage(st: &State, volid: &str) -> Result<(), PveErr> {
    let sid = volid.split_once(':').map_or(volid, |(s, _)| s);
    let s = st
        .storage(sid)
        .ok_or_else(|| die(texts::storage_missing(sid)))?;
    if !s.content.iter().any(|c| c == "rootdir") {
        return Err(die(format!(
            "storage '{sid}' does not allow content type 'rootdir' (Container)"
        )));
    }
    Ok(())
}

pub(crate) fn digest(g: &Guest) -> String {
    hex::encode(Sha1::digest(config_text(g).as_bytes()))
}

pub(crate) const INT_KEYS: &[&str] = &[
    "memory",
    "swap",
    "cores",
    "cpuunits",
    "unprivileged",
    "onboot",
    "protection",
    "template",
    "tty",
    "console",
    "debug",
];

fn value_json(k: &str, v: &str) -> Value {
    if k == "description" {
        json!(v.lines().map(|l| format!("{l}\n")).collect::<String>())
    } else if INT_KEYS.contains(&k) {
        v.parse::<i64>()
            .map(|n| json!(n))
            .unwrap_or_else(|_| json!(v))
    } else {
        json!(v)
    }
}

/// The config as `GET config` shows it: pending values applied unless `current`; raw
/// `lxc.*` keys as `lxc: [[key, value], …]`; integers as JSON numbers; the digest.
pub(crate) fn config_json(g: &Guest, current: bool) -> Value {
    let mut view = g.clone();
    if !current {
        apply_pending(&mut view);
    }
    let mut o = serde_json::Map::new();
    let mut raw = Vec::new();
    for (k, v) in &view.config {
        if k.starts_with("lxc.") {
            raw.push(json!([k, v]));
            continue;
        }
        o.insert(k.clone(), value_json(k, v));
    }
    if !raw.is_empty() {
        o.insert("lxc".into(), json!(raw));
    }
    o.insert("digest".into(), json!(digest(g)));
    Value::Object(o)
}

pub(crate) fn get_config(sim: &Sim, req: &Req) -> HResult {
    sim.read(|st| need(st, &req.who, &format!("/vms/{}", req.vmid()), "VM.Audit"))?;
    validate(
        req,
        &[
            NODE,
            VMID,
            ("current", Kind::Bool),
            ("snapshot", Kind::Str(40)),
        ],
        &[],
    )?;
    if let Some(s) = req.get("snapshot") {
        return Err(die(format!("snapshot '{s}' does not exist")));
    }
    sim.read(|st| {
        let g = guest_or_err(st, &req.node, req.vmid())?;
        let mut v = config_json(g, req.flag("current"));
        if !auth::has(
            st,
            &req.who,
            &format!("/vms/{}", req.vmid()),
            "VM.Config.Options",
        ) {
            if let Some(o) = v.as_object_mut() {
                o.remove("env");
            }
        }
        Ok(v.into())
    })
}

/// `[{key, value?, pending?, delete?}]` (pve-container `get_pending_config`).
pub(crate) fn pending(sim: &Sim, req: &Req) -> HResult {
    sim.read(|st| need(st, &req.who, &format!("/vms/{}", req.vmid()), "VM.Audit"))?;
    validate(req, &[NODE, VMID], &[])?;
    sim.read(|st| {
        let g = guest_or_err(st, &req.node, req.vmid())?;
        let mut keys: Vec<&String> = g.config.keys().chain(g.pending.keys()).collect();
        keys.extend(g.pending_delete.iter());
        keys.sort();
        keys.dedup();
        let out: Vec<Value> = keys
            .into_iter()
            .filter(|k| !k.starts_with("lxc."))
            .map(|k| {
                let mut e = json!({ "key": k });
                if let Some(v) = g.config.get(k) {
                    e["value"] = value_json(k, v);
                }
                if let Some(v) = g.pending.get(k) {
                    e["pending"] = value_json(k, v);
                }
                if g.pending_delete.contains(k) {
                    e["delete"] = json!(1);
                }
                e
            })
            .collect();
        Ok(json!(out).into())
    })
}

/// Keys a running guest takes at once (`vmconfig_hotplug_pending`, reference §3.2): the
/// fast-plug keys, cgroup limits, and NICs. New `mpN` are hot-plugged too (decided per key).
fn hotplug_key(k: &str) -> bool {
    matches!(
        k,
        "description"
            | "onboot"
            | "startup"
            | "protection"
            | "hostname"
            | "hookscript"
            | "cores"
            | "tags"
            | "lock"
            | "cpulimit"
            | "cpuunits"
            | "memory"
            | "swap"
    ) || k.starts_with("net")
}

fn hot_delete(k: &str) -> bool {
    hotplug_key(k) || k.starts_with("unused")
}

pub(crate) async fn put_config(sim: &Arc<Sim>, req: &Req) -> HResult {
    let vmid = req.vmid();
    let vms = format!("/vms/{vmid}");
    sim.read(|st| {
        need_any(
            st,
            &req.who,
            &vms,
            &[
                "VM.Config.Disk",
                "VM.Config.CPU",
                "VM.Config.Memory",
                "VM.Config.Network",
                "VM.Config.Options",
            ],
        )
    })?;
    params::validate(
        &req.params,
        |k| match k {
            "node" => Some(Kind::Node),
            "vmid" => Some(Kind::Vmid),
            "delete" | "revert" => Some(Kind::ConfigIdList),
            "digest" => Some(Kind::Str(64)),
            other => params::config_kind(other),
        },
        &[],
    )
    .map_err(param_err)?;
    let sets: Vec<(String, String)> = req
        .params
        .iter()
        .filter(|(k, _)| params::config_kind(k).is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let list = |name: &str| -> Vec<String> {
        req.get(name)
            .map(|d| {
                d.split([',', ';', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let deletes = list("delete");
    let reverts = list("revert");
    if sets.is_empty() && deletes.is_empty() && reverts.is_empty() {
        return Err(die("no options specified"));
    }
    // The flock for the whole call (10 s, then PVE's 500).
    let _guard = sim.flock(vmid, model::LOCK_TIMEOUT).await.map_err(die)?;
    let who = req.who.clone();
    sim.mutate(|st| -> HResult {
        let g = guest_or_err(st, &req.node, vmid)?;
        writable(g, req)?;
        let running = g.running;
        let unpriv = g.config.get("unprivileged").map(|v| v == "1");
        let keys: Vec<(&str, Option<&str>)> = sets
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_str())))
            .chain(
                deletes
                    .iter()
                    .chain(reverts.iter())
                    .map(|d| (d.as_str(), None)),
            )
            .collect();
        check_config_perms(st, &who, vmid, None, &keys, Some(&g.config), unpriv)?;
        for (name, list) in [("delete", &deletes), ("revert", &reverts)] {
            for d in list {
                if params::config_kind(d).is_none() {
                    return Err(param1(name, format!("unknown option '{d}'")));
                }
                if sets.iter().any(|(k, _)| k == d) {
                    return Err(param1(
                        name,
                        format!("you can't use '-{d}' and -{name} {d}' at the same time"),
                    ));
                }
            }
        }
        if let Some(d) = deletes.iter().find(|d| reverts.contains(d)) {
            return Err(param1(
                "delete",
                format!("you can't use '-delete {d}' and '-revert {d}' at the same time"),
            ));
        }
        for d in &deletes {
            if matches!(d.as_str(), "memory" | "rootfs" | "ostype") {
                return Err(die(format!("unable to delete required option '{d}'")));
            }
            if d == "unprivileged" {
                return Err(die("unable to delete read-only option: 'unprivileged'"));
            }
        }
        if sets.iter().any(|(k, _)| k == "unprivileged") {
            return Err(die("unable to modify read-only option: 'unprivileged'"));
        }
        // `check_protection` in `update_pct_config` (C:LXC/Config.pm): deletes first (a
        // delete of a key that is not set is only warned about and skipped), then the sets
        // in key order; any `rootfs`/`mpN` set and any `mpN`/`unusedN` delete (audit P3).
        if g.config.get("protection").is_some_and(|p| p == "1") {
            for d in &deletes {
                let set = g.config.contains_key(d) || g.pending.contains_key(d);
                if set && (d.starts_with("mp") || d.starts_with("unused")) {
                    return Err(die(texts::protected(&format!(
                        "can't remove CT {vmid} drive '{d}'"
                    ))));
                }
            }
            if let Some((k, _)) = sets
                .iter()
                .find(|(k, _)| k == "rootfs" || k.starts_with("mp"))
            {
                return Err(die(texts::protected(&format!(
                    "can't update CT {vmid} drive '{k}'"
                ))));
            }
        }
        // Values as PVE stores them; new volumes are allocated now (even if left pending).
        let mut new_vols = Vec::new();
        let mut changes: Vec<(String, String)> = Vec::new();
        for (k, v) in &sets {
            let stored = if k.starts_with("net") {
                store_net(v).map_err(|e| param1(k, format!("invalid format - {e}")))?
            } else if k.starts_with("mp") {
                let Some((sid, gib)) = new_volume_spec(v) else {
                    // An existing volume (the per-key check has run `check_volume_access`):
                    // its storage must take container directories, its size is read from
                    // the storage where it exists, and a missing one is only warned about
                    // (C:LXC/Config.pm `update_pct_config`, `apply_pending_mountpoint`'s
                    // `$rescan_volume`; audit P4).
                    let mut m = pve_api::MountConfig::parse_mp(v)
                        .map_err(|e| param1(k, format!("invalid format - {e}")))?;
                    if !m.volume.starts_with('/') {
                        rootdir_storage(st, &m.volume)?;
                        if let Some(x) = st.volumes.iter().find(|x| x.volid == m.volume) {
                            m.size = Some(x.size);
                        }
                    }
                    changes.push((k.clone(), m.to_string()));
                    continue;
                };
                let s = st
                    .storage(&sid)
                    .ok_or_else(|| die(texts::storage_missing(&sid)))?;
                if !s.content.iter().any(|c| c == "rootdir") {
                    return Err(die(format!(
                        "storage '{sid}' does not allow content type 'rootdir' (Container)"
                    )));
                }
                let mut m = pve_api::MountConfig::parse_mp(v)
                    .map_err(|e| param1(k, format!("invalid format - {e}")))?;
                let bytes = new_volume_bytes(gib);
                m.volume = st.allocate_volume(sid, vmid, bytes, &mut new_vols);
                m.size = Some(bytes);
                m.to_string()
            } else if k == "rootfs" {
                // `vmconfig_apply_pending` copies a `rootfs` as given: no allocation, no
                // size rescan, the old volume is not made `unusedN` (C:LXC/Config.pm; only
                // `mpN` go through `apply_pending_mountpoint`). It is no hot-plug key.
                let m = pve_api::MountConfig::parse_rootfs(v)
                    .map_err(|e| param1(k, format!("invalid format - {e}")))?;
                if !m.volume.starts_with('/') {
                    rootdir_storage(st, &m.volume)?;
                }
                v.clone()
            } else if k == "tags" {
                normalize_tags(v)
            } else if k == "description" {
                v.trim_end_matches('\n').to_string()
            } else {
                v.clone()
            };
            changes.push((k.clone(), stored));
        }
        let g = st
            .guests
            .get_mut(&vmid)
            .filter(|g| g.node == req.node)
            .ok_or_else(|| no_conf(&req.node, vmid))?;
        for r in &reverts {
            g.pending.remove(r);
            g.pending_delete.retain(|d| d != r);
        }
        // Every change goes to [pve:pending] first, then is applied (all of it on a stopped
        // guest; the hot-pluggable part on a running one).
        for (k, v) in changes {
            g.pending_delete.retain(|d| *d != k);
            g.pending.insert(k, v);
        }
        for d in &deletes {
            g.pending.remove(d);
            if !g.pending_delete.contains(d) && g.config.contains_key(d) {
                g.pending_delete.push(d.clone());
            }
        }
        let mut destroyed = Vec::new();
        if running {
            let keys: Vec<String> = g.pending.keys().cloned().collect();
            for k in keys {
                let new_mp = k.starts_with("mp") && !g.config.contains_key(&k);
                if hotplug_key(&k) || new_mp {
                    if let Some(v) = g.pending.remove(&k) {
                        g.config.insert(k, v);
                    }
                }
            }
            let dels = std::mem::take(&mut g.pending_delete);
            for d in dels {
                if hot_delete(&d) {
                    if let Some(old) = g.config.remove(&d) {
                        if d.starts_with("unused") {
                            destroyed.push(old);
                        }
                    }
                } else {
                    g.pending_delete.push(d);
                }
            }
        } else {
            for d in &g.pending_delete {
                if d.starts_with("unused") {
                    if let Some(old) = g.config.get(d) {
                        destroyed.push(old.clone());
                    }
                }
            }
            apply_pending(g);
        }
        if running {
            // A NIC with a new MAC is a new veth: the guest's DHCP client asks again.
            if sets.iter().any(|(k, _)| k.starts_with("net")) {
                g.lease_visible_at = Some(now_ms() + sim.dhcp_delay_ms());
                crate::guest::lease_dhcp_nics(st, vmid);
            }
        }
        st.volumes.extend(new_vols);
        st.volumes.retain(|v| !destroyed.contains(&v.volid));
        Ok(Value::Null.into())
    })
}

pub(crate) fn resize(sim: &Arc<Sim>, req: &Req) -> HResult {
    let vmid = req.vmid();
    let vms = format!("/vms/{vmid}");
    sim.read(|st| need(st, &req.who, &vms, "VM.Config.Disk"))?;
    validate(
        req,
        &[
            NODE,
            VMID,
            ("disk", Kind::ResizeDisk),
            ("size", Kind::Size),
            ("digest", Kind::Str(64)),
        ],
        &["disk", "size"],
    )?;
    let disk = req.get("disk").unwrap_or_default().to_string();
    let size = req.get("size").unwrap_or_default().to_string();
    let (relative, num) = match size.strip_prefix('+') {
        Some(n) => (true, n),
        None => (false, size.as_str()),
    };
    let bytes = pve_api::parse_disk_size(num)
        .map_err(|_| param1("size", "value does not match the regex pattern"))?;
    let digest = req.get("digest").map(str::to_string);
    let who = req.who.clone();
    let upid = sim.mutate(|st| -> Result<String, PveErr> {
        resize_check(
            st,
            &req.node,
            &who,
            vmid,
            &disk,
            relative,
            bytes,
            digest.as_deref(),
        )?;
        let plan = if sim.chance(sim.cfg.faults.task_fail_probability("resize")) {
            TaskPlan::Fail {
                vmid,
                message: "simulated fault: resize2fs failed".into(),
                cleanup_restore: false,
            }
        } else {
            TaskPlan::Resize {
                vmid,
                disk: disk.clone(),
                bytes,
                relative,
                digest: digest.clone(),
            }
        };
        Ok(sim.new_task(st, "resize", &vmid.to_string(), &who, model::RESIZE, plan))
    })?;
    sim.spawn_task(upid.clone(), Some(vmid), sim.try_flock(vmid));
    Ok(json!(upid).into())
}

/// `resize_vm`'s `$load_and_check` (pve-container `API2/LXC.pm`), run on the call and again
/// in the worker under the flock (audit Z2, top #5): the lock property, the per-key check
/// (which for `{disk => …}` asks `VM.Config.Options`, reference §5), the digest, the owner
/// (Z3), `Datastore.AllocateSpace`, and the size against the volume's size on its storage,
/// `volume_size_info`, not the config's `size=` (Z1, top #4). Returns the new size in bytes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resize_check(
    st: &State,
    node: &str,
    who: &Subject,
    vmid: u32,
    disk: &str,
    relative: bool,
    bytes: u64,
    digest: Option<&str>,
) -> Result<u64, PveErr> {
    let g = guest_or_err(st, node, vmid)?;
    if let Some(l) = g.config.get("lock") {
        return Err(die(texts::locked(l)));
    }
    need(st, who, &format!("/vms/{vmid}"), "VM.Config.Options")?;
    if digest.is_some_and(|d| d != self::digest(g)) {
        return Err(die(texts::CONFIG_MODIFIED));
    }
    let cur = g
        .config
        .get(disk)
        .ok_or_else(|| die(format!("unable to parse config option '{disk}'")))?;
    let m = if disk == "rootfs" {
        pve_api::MountConfig::parse_rootfs(cur)
    } else {
        pve_api::MountConfig::parse_mp(cur)
    }
    .map_err(|e| die(e.to_string()))?;
    let owner = super::storage::volume_owner(&m.volume);
    if let Some(owner) = owner.filter(|o| *o != vmid) {
        return Err(die(texts::resize_foreign_volume(owner)));
    }
    let sid = m.storage().unwrap_or_default().to_string();
    need(
        st,
        who,
        &format!("/storage/{sid}"),
        "Datastore.AllocateSpace",
    )?;
    let current = st
        .volumes
        .iter()
        .find(|v| v.volid == m.volume)
        .map(|v| v.size)
        .ok_or_else(|| {
            die(format!(
                "Could not determine current size of volume '{}'",
                m.volume
            ))
        })?;
    let target = if relative { current + bytes } else { bytes };
    if target < current {
        return Err(die(texts::CANNOT_SHRINK));
    }
    if target == current {
        return Err(die(texts::ALREADY_AT_SIZE));
    }
    Ok(target)
}
