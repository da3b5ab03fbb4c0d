use super::*;

/// A token sees its own tasks; the owning user sees the user's and its tokens' tasks;
/// anyone else needs `Sys.Audit` on `/nodes/<node>` (reference §6.3).
pub(crate) fn task_visible(st: &State, who: &Subject, t: &crate::state::Task) -> bool {
    let mine = match &who.token {
        Some(_) => t.user == who.userid && t.tokenid == who.token_name(),
        None => t.user == who.userid,
    };
    mine || auth::has(st, who, &format!("/nodes/{}", t.node), "Sys.Audit")
}

pub(crate) fn find_task<'a>(st: &'a State, req: &Req) -> Result<&'a crate::state::Task, PveErr> {
    let upid = req.get("upid").unwrap_or_default();
    if upid.parse::<pve_api::Upid>().is_err() {
        return Err(param1("upid", "unable to parse worker upid"));
    }
    let t = st
        .tasks
        .iter()
        .find(|t| t.upid == upid)
        .ok_or_else(|| param1("upid", "no such task"))?;
    if !task_visible(st, &req.who, t) {
        return Err(perm_err(&format!("/nodes/{}", t.node), "Sys.Audit"));
    }
    Ok(t)
}

pub(crate) fn task_status(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[NODE, ("upid", Kind::Upid)], &[])?;
    sim.read(|st| {
        let t = find_task(st, req)?;
        let u: pve_api::Upid = t.upid.parse().map_err(|_| die("bad upid"))?;
        let mut v = json!({ "upid": t.upid, "node": t.node, "pid": u.pid, "pstart": u.pstart, "starttime": u.starttime, "type": t.task_type, "id": t.id, "user": t.user, "status": t.status });
        if let Some(tok) = &t.tokenid {
            v["tokenid"] = json!(tok);
        }
        if t.status == "stopped" {
            v["exitstatus"] = json!(t.exitstatus.clone().unwrap_or_else(|| "unexpected status".into()));
        }
        Ok(v.into())
    })
}

pub(crate) fn task_log(sim: &Sim, req: &Req) -> HResult {
    validate(
        req,
        &[
            NODE,
            ("upid", Kind::Upid),
            ("start", Kind::Int(0, i64::MAX)),
            ("limit", Kind::Int(0, i64::MAX)),
            ("download", Kind::Bool),
        ],
        &[],
    )?;
    sim.read(|st| {
        let t = find_task(st, req)?;
        let start: usize = req.get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
        let limit: usize = req.get("limit").and_then(|s| s.parse().ok()).unwrap_or(50);
        let lines: Vec<Value> = t
            .log
            .iter()
            .enumerate()
            .skip(start)
            .take(limit)
            .map(|(i, l)| json!({ "n": i + 1, "t": l }))
            .collect();
        Ok(Reply {
            data: json!(lines),
            total: Some(t.log.len()),
        })
    })
}

pub(crate) fn task_list(sim: &Sim, req: &Req) -> HResult {
    validate(
        req,
        &[
            NODE,
            ("limit", Kind::Int(0, i64::MAX)),
            ("start", Kind::Int(0, i64::MAX)),
            ("vmid", Kind::Vmid),
            ("source", Kind::Enum(&["archive", "active", "all"])),
            ("errors", Kind::Bool),
            ("typefilter", Kind::Str(64)),
            ("userfilter", Kind::Str(128)),
        ],
        &[],
    )?;
    sim.read(|st| {
        let limit: usize = req.get("limit").and_then(|s| s.parse().ok()).unwrap_or(50);
        let v: Vec<Value> = st
            .tasks
            .iter()
            .rev()
            .filter(|t| task_visible(st, &req.who, t))
            .filter(|t| req.get("vmid").is_none_or(|v| v == t.id))
            // `source=active`: the running tasks only (pve-manager `Tasks.pm`).
            .filter(|t| req.get("source") != Some("active") || t.status != "stopped")
            .take(limit)
            .map(|t| {
                let u: Option<pve_api::Upid> = t.upid.parse().ok();
                let mut v = json!({ "upid": t.upid, "node": t.node, "type": t.task_type, "id": t.id, "user": t.user, "starttime": t.start_ms / 1000, "pid": u.as_ref().map(|u| u.pid), "pstart": u.as_ref().map(|u| u.pstart) });
                if let Some(tok) = &t.tokenid {
                    v["tokenid"] = json!(tok);
                }
                // Running tasks carry neither `status` nor `endtime` (pve-manager `Tasks.pm`).
                if t.status == "stopped" {
                    v["status"] = json!(t.exitstatus.clone().unwrap_or_default());
                    v["endtime"] = json!(t.end_ms / 1000);
                }
                v
            })
            .collect();
        Ok(json!(v).into())
    })
}

/// `DELETE /nodes/{node}/tasks/{upid}`: stop a running task. Its owner may, anyone else needs
/// `Sys.Modify` on `/nodes/<node>` (pve-manager `Tasks.pm` `stop_task`).
pub(crate) fn task_stop(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[NODE, ("upid", Kind::Upid)], &[])?;
    let upid = sim.read(|st| {
        let t = find_task(st, req)?;
        let mine = match &req.who.token {
            Some(_) => t.user == req.who.userid && t.tokenid == req.who.token_name(),
            None => t.user == req.who.userid,
        };
        if !mine {
            need(st, &req.who, &format!("/nodes/{}", t.node), "Sys.Modify")?;
        }
        Ok::<_, PveErr>(t.upid.clone())
    })?;
    sim.kill_task(&upid);
    Ok(Value::Null.into())
}
