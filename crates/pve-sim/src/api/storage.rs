use super::*;

/// A storage as `node` sees it: a node-local storage's own volumes and free space there; a
/// shared one's, the same from every node.
pub(crate) fn storage_json(st: &State, node: &str, s: &crate::state::StorageDef) -> Value {
    let used = st.used_bytes(node, &s.id);
    json!({ "storage": s.id, "type": s.storage_type, "content": s.content.join(","), "total": s.total, "used": used, "avail": s.total.saturating_sub(used), "enabled": 1, "active": 1, "shared": u8::from(s.shared) })
}

/// The storage `sid` if it is defined and available on `node` (storage.cfg `nodes`);
/// otherwise the text pve-storage gives (`storage_config`, `storage_check_node`).
pub(crate) fn storage_on<'a>(
    st: &'a State,
    node: &str,
    sid: &str,
) -> Result<&'a crate::state::StorageDef, PveErr> {
    let s = st
        .storage(sid)
        .ok_or_else(|| die(texts::storage_missing(sid)))?;
    if !s.on_node(node) {
        return Err(die(format!(
            "storage '{sid}' is not available on node '{node}'"
        )));
    }
    Ok(s)
}

pub(crate) fn storage_list(sim: &Sim, req: &Req) -> HResult {
    validate(
        req,
        &[
            NODE,
            ("content", Kind::Str(64)),
            ("storage", Kind::StorageId),
            ("enabled", Kind::Bool),
        ],
        &[],
    )?;
    Ok(sim
        .read(|st| {
            json!(st
                .storages
                .iter()
                .filter(|s| auth::has(
                    st,
                    &req.who,
                    &format!("/storage/{}", s.id),
                    "Datastore.Audit"
                ) || auth::has(
                    st,
                    &req.who,
                    &format!("/storage/{}", s.id),
                    "Datastore.AllocateSpace"
                ))
                .filter(|s| s.on_node(&req.node))
                .map(|s| storage_json(st, &req.node, s))
                .collect::<Vec<_>>())
        })
        .into())
}

pub(crate) fn storage_status(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[NODE, ("storage", Kind::StorageId)], &[])?;
    let sid = req.get("storage").unwrap_or_default();
    sim.read(|st| {
        need_any(
            st,
            &req.who,
            &format!("/storage/{sid}"),
            &["Datastore.Audit", "Datastore.AllocateSpace"],
        )?;
        let s = storage_on(st, &req.node, sid)?;
        Ok(storage_json(st, &req.node, s).into())
    })
}

pub(crate) fn backup_files(sim: &Sim, sid: &str) -> Vec<(String, u64, u64)> {
    let dir = crate::dump_dir(&sim.cfg.state_dir, sid);
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if vzdump::Compression::from_path(std::path::Path::new(&name)).is_ok()
                && name.starts_with("vzdump-")
            {
                let meta = e.metadata().ok();
                let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
                let ctime = meta
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                out.push((name, size, ctime));
            }
        }
    }
    out.sort();
    out
}

pub(crate) fn storage_content(sim: &Sim, req: &Req) -> HResult {
    validate(
        req,
        &[
            NODE,
            ("storage", Kind::StorageId),
            ("content", Kind::Str(64)),
            ("vmid", Kind::Vmid),
        ],
        &[],
    )?;
    let sid = req.get("storage").unwrap_or_default().to_string();
    let (s, vols) = sim.read(|st| {
        need_any(
            st,
            &req.who,
            &format!("/storage/{sid}"),
            &["Datastore.Audit", "Datastore.AllocateSpace"],
        )?;
        let s = storage_on(st, &req.node, &sid)?.clone();
        Ok::<_, PveErr>((
            s,
            st.volumes
                .iter()
                .filter(|v| v.storage == sid && st.volume_on(&req.node, v))
                .cloned()
                .collect::<Vec<_>>(),
        ))
    })?;
    let filter = req.get("content");
    let only_vmid: Option<u32> = req.get("vmid").and_then(|v| v.parse().ok());
    let mut out = Vec::new();
    if s.content.iter().any(|c| c == "backup") && filter.is_none_or(|c| c == "backup") {
        for (name, size, ctime) in backup_files(sim, &sid) {
            let format = if name.ends_with(".tar.zst") {
                "tar.zst"
            } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
                "tar.gz"
            } else {
                "tar"
            };
            out.push(json!({ "volid": format!("{sid}:backup/{name}"), "content": "backup", "size": size, "format": format, "ctime": ctime, "vmid": vzdump::owner_vmid_from_name(&name), "subtype": "lxc" }));
        }
    }
    if filter.is_none_or(|c| c == "rootdir" || c == "images") {
        for v in vols {
            out.push(json!({ "volid": v.volid, "content": "rootdir", "size": v.size, "format": "raw", "vmid": v.owner }));
        }
    }
    // `volume_list` honours `vmid`; each entry must then pass `check_volume_access` for
    // the caller, or is left out (pve-storage `API2/Storage/Content.pm` `index`; audit A2).
    let out: Vec<Value> = sim.read(|st| {
        out.into_iter()
            .filter(|e| {
                only_vmid.is_none_or(|v| e["vmid"].as_u64() == Some(u64::from(v)))
                    && e["volid"]
                        .as_str()
                        .is_some_and(|id| check_volume_access(st, &req.who, None, id).is_ok())
            })
            .collect()
    });
    Ok(json!(out).into())
}

/// What `parse_volname` reads from a volume name: its content type and owner VMID.
fn volname(name: &str) -> (&'static str, Option<u32>) {
    if let Some(file) = name.strip_prefix("backup/") {
        return ("backup", vzdump::owner_vmid_from_name(file));
    }
    let owner = ["vm-", "base-", "subvol-", "basevol-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .and_then(|rest| rest.split('-').next())
        .and_then(|id| id.parse().ok());
    ("rootdir", owner)
}

/// The owner VMID in a volume id's name (`local-lvm:vm-101-disk-0` → 101).
pub(crate) fn volume_owner(volid: &str) -> Option<u32> {
    volname(volid.split_once(':')?.1).1
}

/// `check_volume_access` (pve-storage `Storage.pm`, reference §2.4): `Datastore.Allocate` on
/// the storage opens everything; otherwise a volume of `vmid` itself is free, a backup needs
/// `Datastore.AllocateSpace` plus `VM.Backup` on its owner, a guest volume `Datastore.Audit`
/// plus `VM.Config.Disk` on its owner, and anything else dies. A value that is no volume id
/// at all (`16`) is a filesystem path: root only, with Perl's `at … line` suffix (audit R3).
pub(crate) fn check_volume_access(
    st: &State,
    who: &Subject,
    vmid: Option<u32>,
    volid: &str,
) -> Result<(), PveErr> {
    let Some((sid, name)) = volid.split_once(':') else {
        if who.is_root() {
            return Ok(());
        }
        return Err(die(texts::arbitrary_paths_root_only()));
    };
    if st.storage(sid).is_none() {
        return Err(die(texts::storage_missing(sid)));
    }
    let storage = format!("/storage/{sid}");
    if auth::has(st, who, &storage, "Datastore.Allocate") {
        return Ok(());
    }
    match volname(name) {
        (_, Some(owner)) if Some(owner) == vmid => Ok(()),
        ("backup", Some(owner)) => {
            need(st, who, &storage, "Datastore.AllocateSpace")?;
            need(st, who, &format!("/vms/{owner}"), "VM.Backup")
        }
        ("rootdir", Some(owner)) => {
            need(st, who, &storage, "Datastore.Audit")?;
            need(st, who, &format!("/vms/{owner}"), "VM.Config.Disk")
        }
        _ => Err(die(format!("missing privileges to access {volid}"))),
    }
}

/// Archive access on restore: the name must be a backup on a storage holding backups, then
/// `check_volume_access` with the target VMID. Whether the file exists is not checked here:
/// PVE finds out in the worker (audit top #7).
///
/// The archive's storage must be available on `node`. A backup directory is one directory
/// in the simulator, whatever node reads it: a node-local `dir` storage such as `local`
/// shows every node the same archives (as if the golden had been copied onto each node's
/// `local`); a storage limited with `nodes` is not readable elsewhere.
pub(crate) fn archive_access(
    sim: &Sim,
    st: &State,
    node: &str,
    who: &Subject,
    volid: &str,
    target_vmid: Option<u32>,
) -> Result<std::path::PathBuf, PveErr> {
    let (sid, rest) = volid
        .split_once(':')
        .ok_or_else(|| die(format!("unable to parse volume ID '{volid}'")))?;
    let s = storage_on(st, node, sid)?;
    let Some(name) = rest.strip_prefix("backup/") else {
        return Err(die(format!(
            "unable to use volume {volid} - content type needs to be 'backup'"
        )));
    };
    if !s.content.iter().any(|c| c == "backup") || name.contains('/') || name.starts_with('.') {
        return Err(die(format!(
            "unable to use volume {volid} - content type needs to be 'backup'"
        )));
    }
    check_volume_access(st, who, target_vmid, volid)?;
    Ok(crate::dump_dir(&sim.cfg.state_dir, sid).join(name))
}

/// `check_volume_access(..., 'vztmpl')` for a plain create's `ostemplate` (pve-storage
/// `Storage.pm` L619-656): the content type first, then `Datastore.Allocate` opens it, else
/// `Datastore.AllocateSpace` or `Datastore.Audit` on the storage ("templates could be
/// sensitive"). Only the name is checked here; a missing file fails the task.
pub(crate) fn template_access(
    sim: &Sim,
    st: &State,
    node: &str,
    who: &Subject,
    volid: &str,
) -> Result<std::path::PathBuf, PveErr> {
    let Some((sid, rest)) = volid.split_once(':') else {
        if who.is_root() {
            return Ok(std::path::PathBuf::from(volid));
        }
        return Err(die(texts::arbitrary_paths_root_only()));
    };
    let s = storage_on(st, node, sid)?;
    let wrong = || {
        die(format!(
            "unable to use volume {volid} - content type needs to be 'vztmpl'"
        ))
    };
    let name = rest.strip_prefix("vztmpl/").ok_or_else(wrong)?;
    if !s.content.iter().any(|c| c == "vztmpl") || name.contains('/') || name.starts_with('.') {
        return Err(wrong());
    }
    let storage = format!("/storage/{sid}");
    if !auth::has(st, who, &storage, "Datastore.Allocate") {
        need_any(
            st,
            who,
            &storage,
            &["Datastore.AllocateSpace", "Datastore.Audit"],
        )?;
    }
    Ok(crate::template_dir(&sim.cfg.state_dir, sid).join(name))
}

pub(crate) fn extractconfig(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[NODE, ("volume", Kind::Str(255))], &["volume"])?;
    let volid = req.get("volume").unwrap_or_default();
    // `check_volume_access`, then `VM.Backup` on the archive's owner in any case, even for
    // a holder of `Datastore.Allocate` (pve-manager `API2/VZDump.pm` `extractconfig`, audit A1).
    let path = sim.read(|st| {
        let path = archive_access(sim, st, &req.node, &req.who, volid, None)?;
        if let Some(owner) = volid
            .rsplit('/')
            .next()
            .and_then(vzdump::owner_vmid_from_name)
        {
            need(st, &req.who, &format!("/vms/{owner}"), "VM.Backup")?;
        }
        if !path.exists() {
            return Err(die(texts::volume_missing(volid)));
        }
        Ok(path)
    })?;
    let text = vzdump::read_pct_conf(&path).map_err(|e| {
        die(format!(
            "unable to extract configuration from '{volid}' - {e}"
        ))
    })?;
    Ok(json!(text).into())
}
