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
    // The task file is on the node that ran it: another node has no such task.
    let t = st
        .tasks
        .iter()
        .find(|t| t.upid == upid && t.node == req.node)
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

/// `GET /nodes/{node}/tasks` as pve-manager `PVE/API2/Tasks.pm` `node_tasks` answers it:
/// `source` `archive` (the default: finished tasks, the most recently ended first), `active`
/// (running tasks, with `status: RUNNING`) or `all` (the active ones, then the archive);
/// filters `userfilter` (case-insensitive substring of the user, tokens' tasks under their
/// user), `typefilter` (exact), `vmid`, `since`/`until` (the start time), `statusfilter`
/// (`ok,warning,error,unknown`; a running task counts as `unknown`) or `errors` (everything
/// but `ok`, which then wins over `statusfilter`); then `start` skips and `limit` (default
/// 50; 0 lists nothing) cuts, while `total` counts every match.
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
            ("typefilter", Kind::Str(256)),
            ("userfilter", Kind::Str(256)),
            ("since", Kind::Int(i64::MIN, i64::MAX)),
            ("until", Kind::Int(i64::MIN, i64::MAX)),
            ("statusfilter", Kind::Str(256)),
        ],
        &[],
    )?;
    let errors = req.flag("errors");
    // `pve-task-status-type-list` (pve-common `JSONSchema.pm` `verify_task_status_type`).
    let mut wanted = ["ok", "warning", "error", "unknown"].map(|t| (t, true));
    if let Some(list) = req.get("statusfilter").filter(|_| !errors) {
        for w in wanted.iter_mut() {
            w.1 = false;
        }
        for v in list.split([',', ';', ' ', '\0']).filter(|v| !v.is_empty()) {
            let v = v.to_ascii_lowercase();
            match wanted.iter_mut().find(|w| w.0 == v) {
                Some(w) => w.1 = true,
                None => return Err(param1("statusfilter", format!("invalid status '{v}'"))),
            }
        }
    } else if errors {
        wanted[0].1 = false;
    }
    let num = |k: &str| req.get(k).and_then(|s| s.parse::<i64>().ok());
    let source = req.get("source").unwrap_or("archive");
    let (since, until) = (num("since"), num("until"));
    let start = num("start").unwrap_or(0).max(0) as usize;
    let mut limit = num("limit").unwrap_or(50).max(0) as usize;
    let userfilter = req.get("userfilter").map(str::to_ascii_lowercase);
    let typefilter = req.get("typefilter");
    let vmid = req.get("vmid");
    sim.read(|st| {
        let mut running: Vec<&crate::state::Task> =
            st.tasks.iter().filter(|t| t.status != "stopped").collect();
        running.sort_by_key(|t| t.start_ms);
        let mut archive: Vec<&crate::state::Task> =
            st.tasks.iter().filter(|t| t.status == "stopped").collect();
        archive.sort_by_key(|t| std::cmp::Reverse(t.end_ms));
        let listed: Vec<&crate::state::Task> = match source {
            "active" => running,
            "all" => running.into_iter().chain(archive).collect(),
            _ => archive,
        };
        let mut count = 0usize;
        let mut out = Vec::new();
        for t in listed {
            let u: Option<pve_api::Upid> = t.upid.parse().ok();
            let starttime = u.as_ref().map(|u| u.starttime as i64).unwrap_or(0);
            // Each node lists its own task index (the UPID's node).
            if t.node != req.node
                || userfilter
                    .as_ref()
                .is_some_and(|f| !t.user.to_ascii_lowercase().contains(f.as_str()))
                || !task_visible(st, &req.who, t)
                || typefilter.is_some_and(|f| f != t.task_type)
                || vmid.is_some_and(|v| v != t.id)
                || since.is_some_and(|s| starttime < s)
                || until.is_some_and(|s| starttime > s)
            {
                continue;
            }
            let exit = (t.status == "stopped")
                .then(|| t.exitstatus.clone().unwrap_or_default());
            if !wanted
                .iter()
                .any(|w| w.1 && w.0 == status_type(exit.as_deref()))
            {
                continue;
            }
            count += 1;
            if count <= start || limit == 0 {
                continue;
            }
            limit -= 1;
            let mut v = json!({ "upid": t.upid, "node": t.node, "type": t.task_type, "id": t.id, "user": t.user, "starttime": starttime, "pid": u.as_ref().map(|u| u.pid), "pstart": u.as_ref().map(|u| u.pstart) });
            if let Some(tok) = &t.tokenid {
                v["tokenid"] = json!(tok);
            }
            match exit {
                Some(exit) => {
                    v["status"] = json!(exit);
                    v["endtime"] = json!(t.end_ms / 1000);
                }
                // Set after the filters, so a running task filters as `unknown`.
                None => v["status"] = json!("RUNNING"),
            }
            out.push(v);
        }
        Ok(Reply {
            data: json!(out),
            total: Some(count),
        })
    })
}

/// pve-common `UPID.pm` `normalize_status_type`.
fn status_type(exit: Option<&str>) -> &'static str {
    match exit {
        None | Some("") | Some("unexpected status") => "unknown",
        Some("OK") => "ok",
        Some(s)
            if s.strip_prefix("WARNINGS: ")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            "warning"
        }
        Some(_) => "error",
    }
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
