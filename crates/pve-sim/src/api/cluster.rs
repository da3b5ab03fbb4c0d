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
                out.push(vm_entry(sim, st, req, g));
            }
        }
        if want("node") {
            for n in &st.nodes {
                let audit = auth::has(st, &req.who, &format!("/nodes/{}", n.name), "Sys.Audit");
                out.push(node_entry(sim, st, n, audit));
            }
        }
        if want("storage") {
            for n in &st.nodes {
                let up = !sim.node_down(&n.name);
                for s in st.storages.iter().filter(|s| s.on_node(&n.name)) {
                    if !auth::has(
                        st,
                        &req.who,
                        &format!("/storage/{}", s.id),
                        "Datastore.Audit",
                    ) {
                        continue;
                    }
                    let mut v = json!({
                        "id": format!("storage/{}/{}", n.name, s.id), "storage": s.id,
                        "node": n.name, "type": "storage",
                        "status": if up { "available" } else { "unknown" },
                        "plugintype": s.storage_type, "content": s.content.join(","),
                        "shared": u8::from(s.shared),
                    });
                    if up {
                        v["maxdisk"] = json!(s.total);
                        v["disk"] = json!(st.used_bytes(&n.name, &s.id));
                    }
                    out.push(v);
                }
            }
        }
        Ok(json!(out).into())
    })
}

/// Bytes of memory a node uses: a base plus its running guests' `memory`.
fn node_mem(st: &State, node: &str) -> u64 {
    model::NODE_BASE_MEM
        + st.guests
            .values()
            .filter(|g| g.node == node && g.running)
            .map(|g| {
                g.config
                    .get("memory")
                    .and_then(|m| m.parse::<u64>().ok())
                    .unwrap_or(512)
                    << 20
            })
            .sum::<u64>()
}

/// A node as `/cluster/resources` shows it (`extract_node_stats`): its figures only with
/// `Sys.Audit` on `/nodes/<node>`, and only while it is online (a down node has no fresh
/// RRD data: `status: offline`, no figures).
fn node_entry(sim: &Sim, st: &State, n: &crate::state::NodeDef, audit: bool) -> Value {
    let up = !sim.node_down(&n.name);
    let mut v = json!({
        "id": format!("node/{}", n.name), "node": n.name, "type": "node",
        "status": if up { "online" } else { "offline" },
    });
    if audit && up {
        let local = st.storage("local");
        v["maxcpu"] = json!(n.maxcpu);
        v["cpu"] = json!(0.01);
        v["maxmem"] = json!(n.maxmem);
        v["mem"] = json!(node_mem(st, &n.name));
        v["maxdisk"] = json!(local.map(|s| s.total).unwrap_or(100 * GIB));
        v["disk"] = json!(st.used_bytes(&n.name, "local"));
        v["uptime"] = json!(86_400);
        v["level"] = json!("");
    }
    v
}

/// `GET /nodes` (pve-manager `PVE/API2/Nodes.pm` `index`): every node of the cluster with
/// its status; the figures need `Sys.Audit` on `/nodes/<node>` and an online node.
pub(crate) fn nodes(sim: &Sim, req: &Req) -> HResult {
    sim.read(|st| {
        let out: Vec<Value> = st
            .nodes
            .iter()
            .map(|n| {
                let audit = auth::has(st, &req.who, &format!("/nodes/{}", n.name), "Sys.Audit");
                let mut v = node_entry(sim, st, n, audit);
                if let Some(o) = v.as_object_mut() {
                    for k in ["maxdisk", "disk", "id", "type"] {
                        o.remove(k);
                    }
                }
                v
            })
            .collect();
        Ok(json!(out).into())
    })
}

/// `GET /cluster/status` (pve-manager `PVE/API2/Cluster.pm` `get_status`, from pmxcfs's
/// cluster info and corosync's member list): with more than one node, a `cluster` entry
/// (`quorate` 0 under `no_quorum`) and one `node` entry per node (`online` 0 for a down
/// node; `local` 1 for the first node, the one the simulator's port stands for). A single
/// node is a standalone host: its `node` entry only, as PVE answers without a cluster.
/// Requires `Sys.Audit` on `/`.
pub(crate) fn status(sim: &Sim, req: &Req) -> HResult {
    sim.read(|st| {
        need(st, &req.who, "/", "Sys.Audit")?;
        let mut out: Vec<Value> = Vec::new();
        if st.nodes.len() > 1 {
            out.push(json!({
                "id": "cluster", "type": "cluster", "name": "felhom-sim",
                "nodes": st.nodes.len(), "quorate": u8::from(!sim.no_quorum()),
                "version": st.nodes.len() + 1,
            }));
        }
        for (i, n) in st.nodes.iter().enumerate() {
            out.push(json!({
                "id": format!("node/{}", n.name), "type": "node", "name": n.name,
                "nodeid": if st.nodes.len() > 1 { i + 1 } else { 0 },
                "online": u8::from(!sim.node_down(&n.name)), "local": u8::from(i == 0),
                "ip": format!("127.0.1.{}", i + 1), "level": "",
            }));
        }
        Ok(json!(out).into())
    })
}

/// One guest as `extract_vm_stats` shows it, plus `pool`, `lock` and `tags`. A guest of a
/// down node has no fresh RRD data: `status: unknown` with its name, template flag and
/// sizes (the last broadcast values).
fn vm_entry(sim: &Sim, st: &State, req: &Req, g: &Guest) -> Value {
    let num =
        |k: &str, d: u64| -> u64 { g.config.get(k).and_then(|v| v.parse().ok()).unwrap_or(d) };
    let maxdisk = g
        .config
        .get("rootfs")
        .and_then(|r| pve_api::MountConfig::parse_rootfs(r).ok())
        .and_then(|m| m.size)
        .unwrap_or(0);
    let mut v = json!({
        "id": format!("lxc/{}", g.vmid), "vmid": g.vmid, "node": g.node, "type": "lxc",
        "status": if sim.node_down(&g.node) { "unknown" } else if g.running { "running" } else { "stopped" },
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
