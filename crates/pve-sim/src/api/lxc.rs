use super::storage::archive_access;
use super::*;

pub(crate) fn lxc_list(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[NODE], &[])?;
    Ok(sim
        .read(|st| {
            json!(st
                .guests
                .values()
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

/// Per-key privileges for config changes (reference §3.5), for set and deleted keys; `old`
/// is the config being changed (none at create).
pub(crate) fn check_config_perms(
    st: &State,
    who: &Subject,
    vmid: u32,
    keys: &[(&str, Option<&str>)],
    old: Option<&BTreeMap<String, String>>,
    unprivileged_given: Option<bool>,
) -> Result<(), PveErr> {
    let vms = format!("/vms/{vmid}");
    for (key, value) in keys {
        match *key {
            "cores" | "cpuunits" | "cpulimit" => need(st, who, &vms, "VM.Config.CPU")?,
            "memory" | "swap" => need(st, who, &vms, "VM.Config.Memory")?,
            "hostname" | "nameserver" | "searchdomain" => need(st, who, &vms, "VM.Config.Network")?,
            k if k.starts_with("net") => {
                need(st, who, &vms, "VM.Config.Network")?;
                // `check_bridge_access` for the value being replaced, then the new one.
                for v in [old.and_then(|o| o.get(k)).map(String::as_str), *value]
                    .into_iter()
                    .flatten()
                {
                    check_vnet_access(st, who, v)?;
                }
            }
            k if k == "rootfs" || k.starts_with("mp") => {
                need(st, who, &vms, "VM.Config.Disk")?;
                if let Some(v) = value {
                    let vol = v.split(',').next().unwrap_or("");
                    if vol.starts_with('/') && !who.is_root() {
                        return Err(perm_text(
                            "mount point type bind is only allowed for root@pam",
                        ));
                    }
                    if let Some((sid, size)) = vol.split_once(':') {
                        if size.parse::<f64>().is_ok() {
                            need(
                                st,
                                who,
                                &format!("/storage/{sid}"),
                                "Datastore.AllocateSpace",
                            )?;
                        }
                    }
                }
            }
            "features" if !who.is_root() => {
                if unprivileged_given != Some(true) {
                    return Err(perm_text("changing feature flags for privileged container is only allowed for root@pam"));
                }
                let f: pve_api::Features = value.unwrap_or("").parse().unwrap_or_default();
                if f.keyctl || !f.other.is_empty() {
                    return Err(perm_text(
                        "changing feature flags (except nesting) is only allowed for root@pam",
                    ));
                }
                need(st, who, &vms, "VM.Allocate")?;
            }
            k if k.starts_with("dev") && !who.is_root() => {
                return Err(perm_text(
                    "configuring device passthrough is only allowed for root@pam",
                ))
            }
            "hookscript" if !who.is_root() => {
                return Err(perm_text(
                    "changing the hookscript is only allowed for root@pam",
                ))
            }
            "features" | "hookscript" => {}
            _ => need(st, who, &vms, "VM.Config.Options")?,
        }
    }
    Ok(())
}

pub(crate) async fn create(sim: &Arc<Sim>, req: &Req) -> HResult {
    params::validate(&req.params, params::create_kind, &["vmid", "ostemplate"])
        .map_err(param_err)?;
    let vmid = req.vmid();
    let node = req.node.clone();
    if !req.flag("restore") {
        return Err(die(
            "pve-sim models restore (restore=1) only; create from a template is not simulated",
        ));
    }
    let volid = req.get("ostemplate").unwrap_or_default().to_string();
    let storage = req.get("storage").unwrap_or("local").to_string();
    let pool = req.get("pool").map(str::to_string);
    // `rootfs`/`mpN` accept a bare number (GiB), which becomes `<storage>:<n>` (§2.1).
    let normalised: BTreeMap<String, String> = req
        .params
        .iter()
        .filter(|(k, _)| params::config_kind(k).is_some())
        .map(|(k, v)| {
            let disk = k == "rootfs" || k.starts_with("mp");
            let (vol, rest) = v.split_once(',').unwrap_or((v.as_str(), ""));
            let vol = vol.strip_prefix("volume=").unwrap_or(vol);
            let bare = !vol.is_empty() && vol.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            if disk && bare {
                let sep = if rest.is_empty() { "" } else { "," };
                (k.clone(), format!("{storage}:{vol}{sep}{rest}"))
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

    let (archive, size) = sim.read(|st| -> Result<(std::path::PathBuf, u64), PveErr> {
        if st.guests.contains_key(&vmid) {
            if req.flag("force") {
                return Err(die(
                    "pve-sim does not model force-restore over an existing CT",
                ));
            }
            return Err(die(texts::already_exists_on_node(vmid, &node)));
        }
        if let Some(p) = &pool {
            if !st.pools.contains_key(p) {
                return Err(perm_text(format!("pool '{p}' does not exist")));
            }
        }
        let by_pool = pool
            .as_ref()
            .is_some_and(|p| auth::has(st, &req.who, &format!("/pool/{p}"), "VM.Allocate"));
        if !by_pool {
            need(st, &req.who, &format!("/vms/{vmid}"), "VM.Allocate")?;
        }
        check_config_perms(st, &req.who, vmid, &config_keys, None, unpriv_given)?;
        let archive = archive_access(sim, st, &req.who, &volid, Some(vmid))?;
        let mut storages = vec![storage.clone()];
        for (k, v) in &config_keys {
            if *k == "rootfs" || k.starts_with("mp") {
                if let Some((sid, _)) = v.and_then(new_volume_spec) {
                    storages.push(sid);
                }
            }
        }
        for sid in storages {
            let s = st
                .storage(&sid)
                .ok_or_else(|| param1("storage", texts::storage_missing(&sid)))?;
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
        .flock(vmid, model::CREATE_LOCK_TIMEOUT)
        .await
        .map_err(|e| die(texts::unable_to_restore(vmid, &e.to_string())))?;
    let who = req.who.clone();
    let upid = sim.mutate(|st| -> Result<String, PveErr> {
        if st.guests.contains_key(&vmid) {
            return Err(die(texts::already_exists_on_node(vmid, &node)));
        }
        st.guests.insert(
            vmid,
            Guest {
                vmid,
                config: BTreeMap::from([("lock".to_string(), "create".to_string())]),
                ..Guest::default()
            },
        );
        let plan = TaskPlan::RestoreRequest {
            vmid,
            archive,
            storage: storage.clone(),
            request: request_conf,
            pool: pool.clone(),
            start: req.flag("start"),
            unique: req.flag("unique"),
            unprivileged: unpriv_given,
        };
        let modelled = model::RESTORE_BASE + size * model::RESTORE_PER_100MB / 100_000_000;
        Ok(sim.new_task(st, "vzrestore", &vmid.to_string(), &who, modelled, plan))
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
            return Err(die(format!(
                "can't remove CT {vmid} - protection mode enabled"
            )));
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
