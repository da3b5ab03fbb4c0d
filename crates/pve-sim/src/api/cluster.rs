use super::*;

pub(crate) fn nextid(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[VMID], &[])?;
    sim.read(|st| {
        if let Some(v) = req.get("vmid") {
            let v: u32 = v.parse().unwrap_or(0);
            if st.guests.contains_key(&v) {
                return Err(param1("vmid", texts::vmid_in_use(v)));
            }
            return Ok(json!(v.to_string()).into());
        }
        let free = (100u32..1_000_000)
            .find(|v| !st.guests.contains_key(v))
            .ok_or_else(|| die("unable to get any free VMID in range [100, 1000000]"))?;
        Ok(json!(free.to_string()).into())
    })
}

/// `GET /cluster/resources` (pve-manager `PVE/API2/Cluster.pm` `resources`,
/// `PVE/API2Tools.pm` `extract_vm_stats`, `extract_node_stats`, `extract_storage_stats`;
/// audit §2 (c)). Open to every authenticated user; each entry is filtered: pools by
/// `Pool.Audit`, guests by `VM.Audit` on `/vms/<vmid>` (and their `pool` field by
/// `Pool.Audit`), storages by `Datastore.Audit`; the node is always listed. `lock` and
/// `tags` are read live from the config. `type=vm` (qemu and lxc), `storage`, `node`, `sdn`
/// narrow it; pools come only without `type`.
///
/// Where it differs: PVE's guest figures come from pvestatd's RRD, which lags (a fresh CT
/// shows `status: unknown` and no `name` until its first sample); the simulator has them at
/// once, from the config and its own running flag.
pub(crate) fn resources(sim: &Sim, req: &Req) -> HResult {
    validate(
        req,
        &[("type", Kind::Enum(&["vm", "storage", "node", "sdn"]))],
        &[],
    )?;
    let ty = req.get("type");
    let want = |t: &str| ty.is_none_or(|x| x == t);
    sim.read(|st| {
        let mut out: Vec<Value> = Vec::new();
        if ty.is_none() {
            for p in st.pools.keys() {
                if auth::has(st, &req.who, &format!("/pool/{p}"), "Pool.Audit") {
                    out.push(json!({ "id": format!("/pool/{p}"), "pool": p, "type": "pool" }));
                }
            }
        }
        if want("vm") {
            for g in st.guests.values() {
                if !auth::has(st, &req.who, &format!("/vms/{}", g.vmid), "VM.Audit") {
                    continue;
                }
                out.push(vm_entry(st, req, g));
            }
        }
        if want("node") {
            let audit = auth::has(st, &req.who, &format!("/nodes/{}", st.node), "Sys.Audit");
            let mut v = json!({ "id": format!("node/{}", st.node), "node": st.node, "type": "node", "status": "online" });
            if audit {
                v["maxcpu"] = json!(8);
                v["cpu"] = json!(0.01);
                v["maxmem"] = json!(64 * GIB);
                v["mem"] = json!(4 * GIB);
                v["maxdisk"] = json!(100 * GIB);
                v["disk"] = json!(10 * GIB);
                v["uptime"] = json!(86_400);
                v["level"] = json!("");
            }
            out.push(v);
        }
        if want("storage") {
            for s in &st.storages {
                if !auth::has(st, &req.who, &format!("/storage/{}", s.id), "Datastore.Audit") {
                    continue;
                }
                out.push(json!({
                    "id": format!("storage/{}/{}", st.node, s.id), "storage": s.id,
                    "node": st.node, "type": "storage", "status": "available",
                    "plugintype": s.storage_type, "content": s.content.join(","),
                    "shared": 0, "maxdisk": s.total, "disk": st.used_bytes(&s.id),
                }));
            }
        }
        Ok(json!(out).into())
    })
}

/// One guest as `extract_vm_stats` shows it, plus `pool`, `lock` and `tags`.
fn vm_entry(st: &State, req: &Req, g: &Guest) -> Value {
    let num =
        |k: &str, d: u64| -> u64 { g.config.get(k).and_then(|v| v.parse().ok()).unwrap_or(d) };
    let maxdisk = g
        .config
        .get("rootfs")
        .and_then(|r| pve_api::MountConfig::parse_rootfs(r).ok())
        .and_then(|m| m.size)
        .unwrap_or(0);
    let mut v = json!({
        "id": format!("lxc/{}", g.vmid), "vmid": g.vmid, "node": st.node, "type": "lxc",
        "status": if g.running { "running" } else { "stopped" },
        "name": g.config.get("hostname").cloned().unwrap_or_else(|| format!("CT{}", g.vmid)),
        "template": u8::from(g.config.get("template").is_some_and(|t| t == "1")),
        "maxcpu": num("cores", 1), "cpu": 0, "maxmem": num("memory", 512) << 20,
        "mem": if g.running { 64u64 << 20 } else { 0 },
        "maxdisk": maxdisk, "disk": if g.running { maxdisk / 8 } else { 0 },
        "uptime": u64::from(g.running), "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
    });
    let pool = g.pool.clone().or_else(|| {
        st.pools
            .iter()
            .find(|(_, m)| m.contains(&g.vmid))
            .map(|(p, _)| p.clone())
    });
    if let Some(p) = pool {
        if auth::has(st, &req.who, &format!("/pool/{p}"), "Pool.Audit") {
            v["pool"] = json!(p);
        }
    }
    for k in ["lock", "tags"] {
        if let Some(x) = g.config.get(k) {
            v[k] = json!(x);
        }
    }
    v
}
