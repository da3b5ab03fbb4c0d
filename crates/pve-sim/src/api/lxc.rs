use super::storage::archive_access;
use super::*;

pub(crate) fn lxc_list(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[NODE], &[])?;
    Ok(sim
        .read(|st| {
            json!(st
                .guests
                .values()
                .filter(|g| g.node == req.node)
                .filter(|g| auth::has(st, &req.who, &format!("/vms/{}", g.vmid), "VM.Audit"))
                .map(|g| {
                    let mut v = json!({ "vmid": g.vmid, "status": if g.running { "running" } else { "stopped" }, "type": "lxc", "name": g.config.get("hostname").cloned().unwrap_or_else(|| format!("CT{}", g.vmid)) });
                    if let Some(l) = g.config.get("lock") {
                        v["lock"] = json!(l);
                    }
                    if let Some(t) = g.config.get("tags") {
                        v["tags"] = json!(t);
                    }
                    v
                })
                .collect::<Vec<_>>())
        })
        .into())
}

/// `SDN.Use` for a NIC's bridge (pve-guest-common `GuestHelpers.pm` `check_vnet_access`;
/// plain bridges are in the zone `localnetwork`): with a `tag` or `trunks`, on each VLAN
/// below the bridge (an ACL on the bridge propagates there); without, on the bridge.
pub(crate) fn check_vnet_access(st: &State, who: &Subject, net: &str) -> Result<(), PveErr> {
    if who.is_root() {
        return Ok(());
    }
    let Ok(n) = net.parse::<pve_api::NetConfig>() else {
        return Ok(());
    };
    let Some(bridge) = n.bridge else {
        return Ok(());
    };
    let zone = format!("/sdn/zones/localnetwork/{bridge}");
    let mut vlans: Vec<String> = n.other.get("tag").cloned().into_iter().collect();
    // Each trunk VLAN once, in Perl's `sort keys` (string) order.
    let mut trunks: Vec<String> = n
        .other
        .get("trunks")
        .map(|t| t.split(';').map(str::to_string).collect())
        .unwrap_or_default();
    trunks.sort();
    trunks.dedup();
    vlans.extend(trunks);
    if vlans.is_empty() {
        return need(st, who, &zone, "SDN.Use");
    }
    for v in vlans {
        need(st, who, &format!("{zone}/{v}"), "SDN.Use")?;
    }
    Ok(())
}

/// `check_vm_perm` (pve-access-control `RPCEnvironment.pm`): with a pool, a grant on
/// `/pool/<pool>` is enough; otherwise (and when the pool does not grant it) the privilege on
/// `/vms/<vmid>`, whose path the refusal names (audit top #2, R1).
fn need_vm(
    st: &State,
    who: &Subject,
    vmid: u32,
    pool: Option<&str>,
    privilege: &str,
) -> Result<(), PveErr> {
    if pool.is_some_and(|p| auth::has(st, who, &format!("/pool/{p}"), privilege)) {
        return Ok(());
    }
    need(st, who, &format!("/vms/{vmid}"), privilege)
}

/// A `features` value as a map (`keyctl=1,nesting=1` → {keyctl: 1, nesting: 1}).
fn feature_map(v: Option<&str>) -> BTreeMap<String, String> {
    v.unwrap_or("")
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, "1"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Per-key privileges for config changes (reference §3.5; pve-container `LXC.pm`
/// `check_ct_modify_config_perm`), for set and deleted keys; `old` is the config being
/// changed (none at create), `pool` the pool a restore puts the guest in (PVE passes it only
/// from `create_vm`; `update_vm` and `resize_vm` pass none). `root@pam` skips every check.
pub(crate) fn check_config_perms(
    st: &State,
    who: &Subject,
    vmid: u32,
    pool: Option<&str>,
    keys: &[(&str, Option<&str>)],
    old: Option<&BTreeMap<String, String>>,
    unprivileged_given: Option<bool>,
) -> Result<(), PveErr> {
    if who.is_root() {
        return Ok(());
    }
    let vms = format!("/vms/{vmid}");
    let vm = |privilege: &str| need_vm(st, who, vmid, pool, privilege);
    for (key, value) in keys {
        match *key {
            "cores" | "cpuunits" | "cpulimit" => vm("VM.Config.CPU")?,
            "memory" | "swap" => vm("VM.Config.Memory")?,
            "hostname" | "nameserver" | "searchdomain" => vm("VM.Config.Network")?,
            k if k.starts_with("net") => {
                vm("VM.Config.Network")?;
                // `check_bridge_access` for the value being replaced, then the new one.
                for v in [old.and_then(|o| o.get(k)).map(String::as_str), *value]
                    .into_iter()
                    .flatten()
                {
                    check_vnet_access(st, who, v)?;
                }
            }
            k if k == "rootfs" || k.starts_with("mp") => {
                vm("VM.Config.Disk")?;
                if let Some(v) = value {
                    let vol = v.split(',').next().unwrap_or("");
                    let vol = vol.strip_prefix("volume=").unwrap_or(vol);
                    if vol.starts_with('/') {
                        return Err(perm_text(
                            "mount point type bind is only allowed for root@pam",
                        ));
                    }
                    match new_volume_spec(vol) {
                        Some((sid, _)) => need(
                            st,
                            who,
                            &format!("/storage/{sid}"),
                            "Datastore.AllocateSpace",
                        )?,
                        // Anything else is an existing volume, checked as such: a bare
                        // `16` is no volume id at all (audit R3).
                        None => super::storage::check_volume_access(st, who, Some(vmid), vol)?,
                    }
                }
            }
            "features" => {
                if unprivileged_given != Some(true) {
                    return Err(perm_text("changing feature flags for privileged container is only allowed for root@pam"));
                }
                // Per feature, against the old value when there is one (audit P2).
                let new = feature_map(*value);
                let before = old.map(|o| feature_map(o.get("features").map(String::as_str)));
                let (mut nesting, mut other) = (false, false);
                match (value, before) {
                    (Some(_), Some(before)) if !before.is_empty() => {
                        for f in before.keys().chain(new.keys()) {
                            if before.get(f) != new.get(f) {
                                if f == "nesting" {
                                    nesting = true;
                                } else {
                                    other = true;
                                }
                            }
                        }
                    }
                    (Some(_), _) => {
                        nesting = new.len() == 1 && new.contains_key("nesting");
                        other = !new.is_empty() && !nesting;
                    }
                    (None, before) => {
                        let before = before.unwrap_or_default();
                        nesting = before.len() == 1 && before.contains_key("nesting");
                        other = !before.is_empty() && !nesting;
                    }
                }
                if other {
                    return Err(perm_text(
                        "changing feature flags (except nesting) is only allowed for root@pam",
                    ));
                }
                if nesting {
                    vm("VM.Allocate")?;
                }
            }
            k if k.starts_with("dev") => {
                return Err(perm_text(
                    "configuring device passthrough is only allowed for root@pam",
                ))
            }
            "hookscript" => {
                return Err(perm_text(
                    "changing the hookscript is only allowed for root@pam",
                ))
            }
            // `assert_tag_permissions` looks at `/vms/<vmid>` only, pool or not.
            "tags" => need(st, who, &vms, "VM.Config.Options")?,
            _ => vm("VM.Config.Options")?,
        }
    }
    Ok(())
}

pub(crate) async fn create(sim: &Arc<Sim>, req: &Req) -> HResult {
    params::validate(&req.params, params::create_kind, &["vmid", "ostemplate"])
        .map_err(param_err)?;
    let vmid = req.vmid();
    let node = req.node.clone();
    sim.take_before_create(vmid, &node);
    // Without `restore`, a plain create from a `vztmpl` template (`create_vm`'s other half,
    // R15): the same checks and placeholder, task `vzcreate`. The lxc runtime unpacks vzdump
    // archives only; a template's rootfs is not booted by it.
    let restore = req.flag("restore");
    if !restore && sim.runtime.kind() != crate::runtime::RuntimeKind::Modelled {
        return Err(die(
            "pve-sim: create from a template (no restore=1) is modelled with --guests modelled only",
        ));
    }
    let volid = req.get("ostemplate").unwrap_or_default().to_string();
    let storage = req.get("storage").unwrap_or("local").to_string();
    let pool = req.get("pool").map(str::to_string);
    // The request's config keys as sent: the per-key checks see them raw (audit R3).
    let raw_keys: Vec<(&str, Option<&str>)> = req
        .params
        .iter()
        .filter(|(k, _)| params::config_kind(k).is_some())
        .map(|(k, v)| (k.as_str(), Some(v.as_str())))
        .collect();
    // Then `rootfs`/`mpN` given as a bare number (GiB) become `<storage>:<n>` (§2.1).
    let normalised: BTreeMap<String, String> = req
        .params
        .iter()
        .filter(|(k, _)| params::config_kind(k).is_some())
        .map(|(k, v)| {
            let disk = k == "rootfs" || k.starts_with("mp");
            let bare = !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && v.parse::<f64>().is_ok();
            if disk && bare {
                (k.clone(), format!("{storage}:{v}"))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let config_keys: Vec<(&str, Option<&str>)> = normalised
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.as_str())))
        .collect();
    let unpriv_given = req
        .get("unprivileged")
        .map(|v| matches!(v, "1" | "on" | "yes" | "true"));
    // A plain create is unprivileged unless asked otherwise, and a privileged one needs
    // `Sys.Modify` on `/`, first thing (`create_vm`).
    let unpriv_given = if restore {
        unpriv_given
    } else {
        Some(unpriv_given.unwrap_or(true))
    };

    // The synchronous checks in `create_vm`'s order (pve-container `API2/LXC.pm`).
    let (archive, size) = sim.read(|st| -> Result<(std::path::PathBuf, u64), PveErr> {
        // Before anything about the VMID (audit R14). The HA resource that `ha-manager add`
        // would make at the end of the task is not modelled.
        if unpriv_given == Some(false) && !restore {
            need(st, &req.who, "/", "Sys.Modify")?;
        }
        if req.flag("ha-managed") {
            need(st, &req.who, "/", "Sys.Console")?;
        }
        // A forced restore onto an existing CT of this node (`restore=1, force=1`): not
        // while it runs, not when protected (R15). Otherwise `check_vmid_unused` names the
        // owning node (pve-cluster `PVE/Cluster.pm`).
        let existing = st.guests.get(&vmid);
        if let Some(g) = existing {
            // `force` is for restores only: a create always needs a free VMID.
            if !(restore && req.flag("force") && g.node == node) {
                return Err(die(texts::already_exists_on_node(vmid, &g.node)));
            }
            if g.running {
                return Err(die(texts::CANT_OVERWRITE_RUNNING));
            }
            if g.config.get("protection").is_some_and(|p| p == "1") {
                return Err(die(texts::protected(&format!(
                    "unable to restore CT {vmid}"
                ))));
            }
        }
        if let Some(p) = &pool {
            if !st.pools.contains_key(p) {
                return Err(perm_text(format!("pool '{p}' does not exist")));
            }
        }
        let vms = format!("/vms/{vmid}");
        let by_pool = pool
            .as_ref()
            .is_some_and(|p| auth::has(st, &req.who, &format!("/pool/{p}"), "VM.Allocate"));
        // Overwriting an existing CT needs only `VM.Backup` on it; turning an unprivileged
        // one privileged explicitly needs `Sys.Modify` on `/` then.
        let by_backup = existing.is_some() && auth::has(st, &req.who, &vms, "VM.Backup");
        if !by_pool && !auth::has(st, &req.who, &vms, "VM.Allocate") {
            if !by_backup {
                need(st, &req.who, &vms, "VM.Allocate")?;
            }
            let was_unprivileged =
                existing.is_some_and(|g| g.config.get("unprivileged").is_some_and(|u| u == "1"));
            if was_unprivileged && unpriv_given == Some(false) {
                need(st, &req.who, "/", "Sys.Modify")?;
            }
        }
        check_config_perms(
            st,
            &req.who,
            vmid,
            pool.as_deref(),
            &raw_keys,
            None,
            unpriv_given,
        )?;
        // Only the name is checked here; a missing file fails the task (audit top #7).
        let archive = if restore {
            archive_access(sim, st, &node, &req.who, &volid, Some(vmid))?
        } else {
            super::storage::template_access(sim, st, &node, &req.who, &volid)?
        };
        let explicit = config_keys
            .iter()
            .any(|(k, _)| *k == "rootfs" || k.starts_with("mp"));
        if explicit && !normalised.contains_key("rootfs") {
            return Err(die(texts::MP_WITHOUT_ROOTFS));
        }
        // Storages: each disk's, and the default `storage` only without a `rootfs` (R4).
        let mut storages = Vec::new();
        for (k, v) in &config_keys {
            if *k == "rootfs" || k.starts_with("mp") {
                let vol = v.unwrap_or_default().split(',').next().unwrap_or_default();
                let vol = vol.strip_prefix("volume=").unwrap_or(vol);
                if vol.starts_with('/') {
                    if !req.who.is_root() {
                        return Err(die("Only root can pass arbitrary filesystem paths."));
                    }
                } else if let Some((sid, _)) = vol.split_once(':') {
                    storages.push(sid.to_string());
                }
            }
        }
        if !normalised.contains_key("rootfs") {
            storages.push(storage.clone());
        }
        for sid in storages {
            // `storage_check_enabled`: an unknown id dies (500, R5).
            let s = super::storage::storage_on(st, &node, &sid)?;
            if !s.content.iter().any(|c| c == "rootdir") {
                return Err(param1(
                    "storage",
                    format!("storage '{sid}' does not support container directories"),
                ));
            }
            need(
                st,
                &req.who,
                &format!("/storage/{sid}"),
                "Datastore.AllocateSpace",
            )?;
        }
        let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        Ok((archive, size))
    })?;

    // Request keys → a fresh config; a netN without hwaddr gets a random MAC here.
    let mut request_conf: BTreeMap<String, String> = BTreeMap::new();
    if !restore && !normalised.contains_key("rootfs") {
        // `$mp_param->{rootfs} = "$storage:4"; # defaults to 4GB` (create_vm's worker).
        request_conf.insert("rootfs".into(), format!("{storage}:4"));
    }
    for (k, v) in &config_keys {
        let v = v.unwrap_or_default();
        if k.starts_with("unused") {
            // `ignoring 'unusedN', cannot create/restore with unused volume` (a sync warning).
            continue;
        }
        let stored = if k.starts_with("net") {
            store_net(v).map_err(|e| param1(k, format!("invalid format - {e}")))?
        } else if *k == "tags" {
            normalize_tags(v)
        } else {
            v.to_string()
        };
        request_conf.insert(k.to_string(), stored);
    }

    // create_and_lock_config: the flock (5 s) and the `lock: create` placeholder; from here
    // the VMID is reserved.
    let guard = sim
        .flock_on(&node, vmid, model::CREATE_LOCK_TIMEOUT)
        .await
        .map_err(|e| {
            let e = e.to_string();
            die(if restore {
                texts::unable_to_restore(vmid, &e)
            } else {
                texts::unable_to_create(vmid, &e)
            })
        })?;
    let who = req.who.clone();
    let upid = sim.mutate(|st| -> Result<String, PveErr> {
        // The placeholder config is the reservation: pmxcfs refuses a second config of one
        // VMID on any node (`memdb.c` create, `-EEXIST`), and `check_vmid_unused` names the
        // owner. Decided here, under the state lock, so two nodes racing cannot both win.
        // `create_and_lock_config($vmid, $force)`: an existing config of this node (force)
        // keeps its keys and gets `lock: create`, unless it is locked already (R15).
        match st.guests.get_mut(&vmid) {
            Some(g) if restore && req.flag("force") && g.node == node => {
                if let Some(l) = g.config.get("lock") {
                    return Err(die(texts::unable_to_restore(vmid, &texts::locked(l))));
                }
                g.config.insert("lock".into(), "create".into());
            }
            Some(g) => return Err(die(texts::already_exists_on_node(vmid, &g.node))),
            None => {
                st.guests.insert(
                    vmid,
                    Guest {
                        vmid,
                        node: node.clone(),
                        config: BTreeMap::from([("lock".to_string(), "create".to_string())]),
                        ..Guest::default()
                    },
                );
            }
        }
        let plan = TaskPlan::RestoreRequest {
            vmid,
            archive,
            storage: storage.clone(),
            request: request_conf,
            pool: pool.clone(),
            start: req.flag("start"),
            unique: req.flag("unique"),
            unprivileged: unpriv_given,
            create: !restore,
        };
        let modelled = model::RESTORE_BASE + size * model::RESTORE_PER_100MB / 100_000_000;
        let worker = if restore { "vzrestore" } else { "vzcreate" };
        Ok(sim.new_task(st, worker, &vmid.to_string(), &who, modelled, plan))
    })?;
    sim.spawn_task(upid.clone(), Some(vmid), Some(guard));
    Ok(json!(upid).into())
}

pub(crate) fn destroy(sim: &Arc<Sim>, req: &Req) -> HResult {
    let vmid = req.vmid();
    sim.read(|st| need(st, &req.who, &format!("/vms/{vmid}"), "VM.Allocate"))?;
    validate(
        req,
        &[
            NODE,
            VMID,
            ("purge", Kind::Bool),
            ("destroy-unreferenced-disks", Kind::Bool),
            ("force", Kind::Bool),
        ],
        &[],
    )?;
    let who = req.who.clone();
    let upid = sim.mutate(|st| -> Result<String, PveErr> {
        let g = guest_or_err(st, &req.node, vmid)?;
        if g.config.get("protection").is_some_and(|p| p == "1") {
            return Err(die(texts::protected(&format!("can't remove CT {vmid}"))));
        }
        if let Some(l) = g.config.get("lock") {
            return Err(die(texts::locked(l)));
        }
        if g.running && !req.flag("force") {
            return Err(die(format!(
                "unable to destroy CT {vmid} - container is running"
            )));
        }
        let plan = TaskPlan::Destroy {
            vmid,
            destroy_unreferenced: req.flag("destroy-unreferenced-disks"),
        };
        Ok(sim.new_task(
            st,
            "vzdestroy",
            &vmid.to_string(),
            &who,
            model::DESTROY,
            plan,
        ))
    })?;
    sim.spawn_task(upid.clone(), Some(vmid), sim.try_flock(vmid));
    Ok(json!(upid).into())
}
