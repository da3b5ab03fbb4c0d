use super::*;

pub(crate) fn status_current(sim: &Sim, req: &Req) -> HResult {
    sim.read(|st| need(st, &req.who, &format!("/vms/{}", req.vmid()), "VM.Audit"))?;
    validate(req, &[NODE, VMID], &[])?;
    sim.read(|st| {
        let g = guest_or_err(st, &req.node, req.vmid())?;
        let maxdisk = g.config.get("rootfs").and_then(|r| pve_api::MountConfig::parse_rootfs(r).ok()).and_then(|m| m.size).unwrap_or(4 * GIB);
        let memory: u64 = g.config.get("memory").and_then(|m| m.parse().ok()).unwrap_or(512);
        let swap: u64 = g.config.get("swap").and_then(|m| m.parse().ok()).unwrap_or(512);
        let mut v = json!({
            "vmid": g.vmid, "type": "lxc", "status": if g.running { "running" } else { "stopped" },
            "name": g.config.get("hostname").cloned().unwrap_or_else(|| format!("CT{}", g.vmid)),
            "cpus": g.config.get("cores").and_then(|c| c.parse::<u64>().ok()).unwrap_or(2), "cpu": 0,
            "mem": if g.running { 64 << 20 } else { 0 }, "maxmem": memory << 20, "swap": 0, "maxswap": swap << 20,
            "disk": if g.running { 1u64 << 30 } else { 0 }, "maxdisk": maxdisk, "diskread": 0, "diskwrite": 0, "netin": 0, "netout": 0,
            "uptime": if g.running { 1 } else { 0 }, "ha": { "managed": 0 },
        });
        if g.running {
            v["pid"] = json!(sim.runtime.pid(g.vmid));
        }
        if let Some(l) = g.config.get("lock") {
            v["lock"] = json!(l);
        }
        if let Some(t) = g.config.get("tags") {
            v["tags"] = json!(t);
        }
        Ok(v.into())
    })
}

pub(crate) fn power(sim: &Arc<Sim>, req: &Req, action: &str) -> HResult {
    let vmid = req.vmid();
    sim.read(|st| need(st, &req.who, &format!("/vms/{vmid}"), "VM.PowerMgmt"))?;
    let extra: &[(&str, Kind)] = match action {
        "start" => &[("skiplock", Kind::Bool), ("debug", Kind::Bool)],
        "stop" => &[("skiplock", Kind::Bool), ("overrule-shutdown", Kind::Bool)],
        "shutdown" => &[
            ("timeout", Kind::Int(0, i64::MAX)),
            ("forceStop", Kind::Bool),
        ],
        _ => &[("timeout", Kind::Int(0, i64::MAX))],
    };
    let allowed: Vec<(&str, Kind)> = [NODE, VMID]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    validate(req, &allowed, &[])?;
    if req.flag("skiplock") && !req.who.is_root() {
        return Err(param1("skiplock", "Only root may use this option."));
    }
    let who = req.who.clone();
    let upid = sim.mutate(|st| -> Result<String, PveErr> {
        // The call asks only `check_running`, which is false for a CT that does not exist:
        // its start gets a UPID and the worker's `load_config` fails the task; stop, shutdown
        // and reboot say it is not running (C:API2/LXC/Status.pm `vm_start`, `vm_stop`,
        // `vm_shutdown`, `vm_reboot`; audit S1).
        let running = st.guest_on(&req.node, vmid).is_some_and(|g| g.running);
        if action == "start" && st.guests.get(&vmid).is_some_and(|g| g.node != req.node) {
            // The guest lives on another node: this node's worker cannot load its config.
            let plan = TaskPlan::Fail {
                vmid,
                message: texts::no_config(&req.node, vmid),
                cleanup_restore: false,
            };
            return Ok(sim.new_task_on(
                st,
                &req.node,
                "vzstart",
                &vmid.to_string(),
                &who,
                model::START,
                plan,
            ));
        }
        let (ty, modelled, plan) = match action {
            "start" if running => return Err(die(texts::already_running(vmid))),
            "start" => ("vzstart", model::START, TaskPlan::Start { vmid }),
            "reboot" if !running => return Err(die(texts::vm_not_running(vmid))),
            _ if !running => return Err(die(texts::not_running(vmid))),
            "stop" => ("vzstop", model::STOP, TaskPlan::Stop { vmid }),
            "shutdown" => ("vzshutdown", model::SHUTDOWN, TaskPlan::Stop { vmid }),
            _ => (
                "vzreboot",
                model::SHUTDOWN + model::START,
                TaskPlan::Reboot { vmid },
            ),
        };
        Ok(sim.new_task(st, ty, &vmid.to_string(), &who, modelled, plan))
    })?;
    sim.spawn_task(upid.clone(), Some(vmid), sim.try_flock(vmid));
    Ok(json!(upid).into())
}

/// `GET /nodes/{node}/lxc/{vmid}/interfaces`: `null` for a stopped guest and for one that
/// does not exist (PVE's PID lookup fails and `get_interfaces` returns undef, C:LXC.pm;
/// audit S1); otherwise what the runtime sees.
pub(crate) async fn interfaces(sim: &Sim, req: &Req) -> HResult {
    sim.read(|st| need(st, &req.who, &format!("/vms/{}", req.vmid()), "VM.Audit"))?;
    validate(req, &[NODE, VMID], &[])?;
    let vmid = req.vmid();
    let guest = sim.read(|st| {
        st.guest_on(&req.node, vmid)
            .filter(|g| g.running)
            .map(|g| (g.clone(), st.leases.clone()))
    });
    let Some((g, leases)) = guest else {
        return Ok(Value::Null.into());
    };
    let rt = sim.runtime.clone();
    let v = tokio::task::spawn_blocking(move || rt.interfaces(&g, &leases))
        .await
        .ok()
        .flatten();
    Ok(v.unwrap_or(Value::Null).into())
}
