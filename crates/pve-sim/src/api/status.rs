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
            v["pid"] = json!(100_000 + g.vmid);
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
        let g = guest_or_err(st, &req.node, vmid)?;
        let (ty, modelled, plan) = match action {
            "start" if g.running => return Err(die(format!("CT {vmid} already running"))),
            "start" => ("vzstart", model::START, TaskPlan::Start { vmid }),
            "reboot" if !g.running => return Err(die(format!("VM {vmid} not running"))),
            _ if !g.running => return Err(die(format!("CT {vmid} not running"))),
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

pub(crate) fn iface(
    name: &str,
    mac: &str,
    inet: Option<(&str, u32)>,
    inet6: Option<(&str, u32)>,
) -> Value {
    let mut addrs = Vec::new();
    let mut v = json!({ "name": name, "hwaddr": mac, "hardware-address": mac });
    if let Some((a, p)) = inet {
        v["inet"] = json!(format!("{a}/{p}"));
        addrs.push(json!({ "ip-address": a, "ip-address-type": "inet", "prefix": p }));
    }
    if let Some((a, p)) = inet6 {
        v["inet6"] = json!(format!("{a}/{p}"));
        addrs.push(json!({ "ip-address": a, "ip-address-type": "inet6", "prefix": p }));
    }
    v["ip-addresses"] = json!(addrs);
    v
}

pub(crate) fn interfaces(sim: &Sim, req: &Req) -> HResult {
    sim.read(|st| need(st, &req.who, &format!("/vms/{}", req.vmid()), "VM.Audit"))?;
    validate(req, &[NODE, VMID], &[])?;
    sim.read(|st| {
        let g = guest_or_err(st, &req.node, req.vmid())?;
        if !g.running {
            // PVE: the PID lookup fails and the handler returns undef → `data: null`.
            return Ok(Value::Null.into());
        }
        let leased = g.lease_visible_at.is_some_and(|t| now_ms() >= t);
        let mut out = vec![iface(
            "lo",
            "00:00:00:00:00:00",
            Some(("127.0.0.1", 8)),
            Some(("::1", 128)),
        )];
        for (_, v) in g.config.iter().filter(|(k, _)| k.starts_with("net")) {
            let Ok(n) = v.parse::<pve_api::NetConfig>() else {
                continue;
            };
            let Some(mac) = n.hwaddr.map(|m| m.to_string()) else {
                continue;
            };
            let addr: Option<(String, u32)> = match n.ip.as_deref() {
                // A DHCP NIC shows up once its client has the lease (like `ip a` after ifup).
                Some("dhcp") => {
                    let ip = n
                        .bridge
                        .as_ref()
                        .and_then(|b| st.leases.get(b))
                        .and_then(|l| l.get(&mac))
                        .cloned();
                    match ip {
                        Some(ip) if leased => Some((ip, 16)),
                        _ => continue,
                    }
                }
                Some(cidr) if cidr.contains('/') => cidr
                    .split_once('/')
                    .and_then(|(a, p)| Some((a.to_string(), p.parse().ok()?))),
                _ => None,
            };
            out.push(iface(
                &n.name,
                &mac.to_ascii_lowercase(),
                addr.as_ref().map(|(a, p)| (a.as_str(), *p)),
                None,
            ));
        }
        Ok(json!(out).into())
    })
}
