//! The simulator's own side channel, outside `/api2` and for loopback peers only: the state
//! dump tests assert against, the request log the schema conformance test validates, token
//! creation for narrower tokens, storages of other types (to exercise what clones and
//! templates may do on them), and each guest's SSH endpoint.
//!
//! Loopback is not a person: with `--guests lxc` the simulator runs as root, and any local
//! user could otherwise mint a `root@pam` token, restore a privileged container or replace
//! felhom's own token. So every route that shows or changes the simulator's state (the
//! dump, the request log, token minting, storages) also wants the secret of this run: 32 random
//! bytes, hex, made at every start and written 0600 into `<state-dir>/side-channel.secret`
//! (`SimHandle::side_channel_secret` for in-process users), presented in the
//! `X-Felhom-Sim-Secret` header (`pve_api::SIDE_CHANNEL_HEADER`; `Authorization` is the PVE
//! token's) and compared in constant time. Missing or wrong: 401 before the body is parsed,
//! and nothing changes. The one route without it, `guests/{vmid}/ssh`, only names a
//! loopback port any local user can list (`ss -tln`), and is what felhom's SSH step asks on
//! its own (`SshEndpoint::Sim`), holding only its PVE token. Faults are set by `--faults` at
//! start; the cluster faults (`node_down:<node>`, `no_quorum`) are also set and cleared at
//! run time (`POST /felhom-sim/faults`), and `POST /felhom-sim/migrate` moves a stopped guest
//! to another node as `pct migrate` would (someone else's migration, for felhom to follow).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as AxPath, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::auth;
use crate::sim::{now_ms, Sim};

fn loopback_only(peer: &SocketAddr) -> Option<Response> {
    (!peer.ip().is_loopback()).then(|| (StatusCode::FORBIDDEN, "loopback only").into_response())
}

/// Loopback, and the side-channel secret of this run in its header (constant-time compare);
/// otherwise the refusal to send. Every `/felhom-sim/*` route that shows or changes state
/// calls it first, before its body is parsed.
pub(crate) fn authorized(sim: &Sim, peer: &SocketAddr, headers: &HeaderMap) -> Option<Response> {
    use subtle::ConstantTimeEq;
    if let Some(r) = loopback_only(peer) {
        return Some(r);
    }
    let given = headers
        .get(pve_api::SIDE_CHANNEL_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(sim.side_secret.as_bytes())) {
        return None;
    }
    let message = format!(
        "the simulator's side channel wants the secret of this run (in {}) in the {} header",
        crate::side_channel_secret_file(&sim.cfg.state_dir).display(),
        pve_api::SIDE_CHANNEL_HEADER
    );
    Some(
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "message": message, "data": null })),
        )
            .into_response(),
    )
}

/// The secret first, then the body: a refused caller learns nothing from how its body would
/// parse, and a body that does not parse is a 400 naming the request (`what`).
fn authorized_body<T: serde::de::DeserializeOwned>(
    sim: &Sim,
    peer: &SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<T, Box<Response>> {
    if let Some(r) = authorized(sim, peer, headers) {
        return Err(Box::new(r));
    }
    serde_json::from_slice(body)
        .map_err(|e| Box::new((StatusCode::BAD_REQUEST, format!("{what}: {e}")).into_response()))
}

pub async fn state(
    AxState(sim): AxState<Arc<Sim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = authorized(&sim, &peer, &headers) {
        return r;
    }
    Json(dump(&sim).await).into_response()
}

/// The state dump: every guest with what tests assert on, volumes, leases, tasks, counters.
/// The dump names its `runtime`. A runtime that observes its guests itself
/// (`GuestRuntime::observe`; the lxc runtime) overrides `machine_id`, `ssh.fingerprint`,
/// `ip`/`ips` and `leases` with what it read, and adds its facts under its name (`lxc`: rootfs,
/// init pid, systemd's state, machine-id and host key on disk, leases) to each guest and its
/// summary (namespaces, DHCP servers, what is left on disk) to the dump.
pub async fn dump(sim: &Arc<Sim>) -> Value {
    let ports: BTreeMap<u32, Option<u16>> =
        sim.read(|st| st.guests.keys().map(|v| (*v, sim.ssh_port(*v))).collect());
    let locked: Vec<u32> = sim.read(|st| st.guests.keys().copied().collect::<Vec<_>>());
    let flocks: Vec<u32> = locked
        .iter()
        .copied()
        .filter(|v| sim.is_locked(*v))
        .collect();
    let body = sim.read(|st| {
        let now = now_ms();
        let guests: Vec<Value> = st
            .guests
            .values()
            .map(|g| {
                let macs: Vec<String> = g.config.iter().filter(|(k, _)| k.starts_with("net")).filter_map(|(_, v)| v.parse::<pve_api::NetConfig>().ok()?.hwaddr.map(|m| m.to_string())).collect();
                // Per NIC of a running guest: its static address, or its lease once visible.
                let leased = g.lease_visible_at.is_some_and(|t| now >= t);
                let ips: Vec<String> = if g.running {
                    g.config
                        .iter()
                        .filter(|(k, _)| k.starts_with("net"))
                        .filter_map(|(_, v)| v.parse::<pve_api::NetConfig>().ok())
                        .filter_map(|n| match crate::runtime::static_ipv4(&n) {
                            Some(ip) => Some(ip),
                            None if leased => st.leases.get(n.bridge.as_ref()?)?.get(&n.hwaddr?.to_string()).cloned(),
                            None => None,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let ip = ips.first().cloned();
                json!({
                    "vmid": g.vmid,
                    "node": g.node,
                    "status": if g.running { "running" } else { "stopped" },
                    "config": g.config,
                    "lock": g.config.get("lock"),
                    "macs": macs,
                    "ip": ip,
                    "ips": ips,
                    "pending": g.pending,
                    "pending_delete": g.pending_delete,
                    "flock_held": flocks.contains(&g.vmid),
                    "machine_id": g.machine_id,
                    "boots": g.boots,
                    "ssh": { "port": ports.get(&g.vmid).copied().flatten(), "fingerprint": g.ssh_key.as_deref().and_then(crate::guest::fingerprint) },
                    "pool": g.pool,
                })
            })
            .collect();
        let tasks: Vec<Value> = st.tasks.iter().map(|t| json!({ "upid": t.upid, "node": t.node, "type": t.task_type, "id": t.id, "status": t.status, "exitstatus": t.exitstatus, "start_ms": t.start_ms, "end_ms": t.end_ms, "modelled_ms": t.modelled_ms })).collect();
        let faults = sim.cluster_faults.borrow().clone();
        let storages: Vec<Value> = st.storages.iter().map(|s| json!({ "id": s.id, "type": s.storage_type, "shared": s.shared, "nodes": s.nodes })).collect();
        json!({ "node": st.node, "storages": storages, "nodes": st.nodes.iter().map(|n| json!({ "name": n.name, "online": !faults.down.contains(&n.name) })).collect::<Vec<_>>(), "faults": { "node_down": faults.down, "no_quorum": faults.no_quorum }, "guests": guests, "volumes": st.volumes, "leases": st.leases, "tasks": tasks, "counters": st.counters, "pools": st.pools, "linked": st.linked })
    });
    let mut body = body;
    body["locks"] = json!(flocks);
    let kind = sim.runtime.kind().as_str();
    body["runtime"] = json!(kind);
    let guests: Vec<(u32, bool, BTreeMap<String, String>)> = sim.read(|st| {
        st.guests
            .values()
            .map(|g| (g.vmid, g.running, g.config.clone()))
            .collect()
    });
    let rt = sim.runtime.clone();
    let observed = tokio::task::spawn_blocking(move || rt.observe(guests))
        .await
        .ok()
        .flatten();
    if let Some(o) = observed {
        if let Some(gs) = body["guests"].as_array_mut() {
            for g in gs {
                let Some(f) = g["vmid"]
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .and_then(|v| o.guests.get(&v))
                else {
                    continue;
                };
                g["ip"] = f.ips.first().cloned().unwrap_or(Value::Null);
                g["ips"] = json!(f.ips);
                g["machine_id"] = f.machine_id.clone();
                g["ssh"]["fingerprint"] = f.host_key_fingerprint.clone();
                g[kind] = f.detail.clone();
            }
        }
        body["leases"] = json!(o.leases);
        body[kind] = o.summary;
    }
    body
}

pub async fn requests(
    AxState(sim): AxState<Arc<Sim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = authorized(&sim, &peer, &headers) {
        return r;
    }
    let reqs = sim
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Json(Value::Array(reqs)).into_response()
}

/// A storage to add to the cluster (`POST /felhom-sim/storages`): the storage types decide
/// what clones and templates may do (`crate::clone`); `shared` makes one pool every node
/// sees (else each node has its own volumes and space under it); `nodes` limits the nodes
/// it is available on. A `dir` storage with `backup` content has one dump directory
/// (`dump_dir`) whatever node reads it.
#[derive(serde::Deserialize)]
pub struct StorageReq {
    id: String,
    #[serde(rename = "type")]
    storage_type: String,
    content: Vec<String>,
    #[serde(default)]
    total_gib: Option<u64>,
    /// One pool of volumes every node sees (storage.cfg `shared 1`).
    #[serde(default)]
    shared: bool,
    /// The nodes it is available on (storage.cfg `nodes`); all when absent.
    #[serde(default)]
    nodes: Option<Vec<String>>,
}

/// PVE's storage plugin types the simulator knows.
const STORAGE_TYPES: &[&str] = &[
    "dir", "lvm", "lvmthin", "zfspool", "rbd", "btrfs", "nfs", "cifs", "cephfs", "pbs",
];

pub async fn storages(
    AxState(sim): AxState<Arc<Sim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s: StorageReq = match authorized_body(&sim, &peer, &headers, &body, "storage request") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let id_ok = s.id.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.id.len() <= 64
        && s.id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if !id_ok || !STORAGE_TYPES.contains(&s.storage_type.as_str()) {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "id must be [a-z][a-z0-9._-]* and type one of {}",
                STORAGE_TYPES.join(", ")
            ),
        )
            .into_response();
    }
    if let Some(bad) = s
        .nodes
        .iter()
        .flatten()
        .find(|n| !sim.read(|st| st.has_node(n)))
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": format!("nodes: '{bad}' is not a node of this cluster"), "data": null })),
        )
            .into_response();
    }
    let def = crate::state::StorageDef {
        id: s.id.clone(),
        storage_type: s.storage_type,
        content: s.content,
        total: s.total_gib.unwrap_or(1024) << 30,
        shared: s.shared,
        nodes: s.nodes,
    };
    sim.mutate(|st| {
        st.storages.retain(|x| x.id != def.id);
        st.storages.push(def);
    });
    Json(json!({ "storage": s.id })).into_response()
}

#[derive(serde::Deserialize)]
pub struct TokenReq {
    userid: String,
    tokenid: String,
    #[serde(default = "yes")]
    privsep: bool,
    #[serde(default)]
    acl: Vec<AclReq>,
}

fn yes() -> bool {
    true
}

#[derive(serde::Deserialize)]
pub struct AclReq {
    path: String,
    privs: Vec<String>,
    #[serde(default = "yes")]
    propagate: bool,
}

pub async fn tokens(
    AxState(sim): AxState<Arc<Sim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let t: TokenReq = match authorized_body(&sim, &peer, &headers, &body, "token request") {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if !t.userid.contains('@')
        || t.tokenid.is_empty()
        || !t
            .tokenid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return (
            StatusCode::BAD_REQUEST,
            "userid must be user@realm and tokenid [A-Za-z0-9._-]+",
        )
            .into_response();
    }
    let secret = crate::sim::random_uuid();
    let id = format!("{}!{}", t.userid, t.tokenid);
    sim.mutate(|st| {
        if !st.users.contains(&t.userid) {
            st.users.push(t.userid.clone());
        }
        st.tokens.retain(|x| x.id != id);
        st.tokens.push(crate::state::TokenDef {
            id: id.clone(),
            secret_sha256: auth::hash_secret(&secret),
            privsep: t.privsep,
        });
        // The token's own ACL is replaced; the user's grants accumulate, so several tokens of
        // one user keep their own (privsep) sets.
        st.acl.retain(|a| a.subject != id);
        for (i, a) in t.acl.iter().enumerate() {
            let role = format!("sim-{}-{}-{i}", t.userid.replace('@', "-"), t.tokenid);
            st.roles.insert(role.clone(), a.privs.clone());
            for subject in [&t.userid, &id] {
                let entry = crate::state::AclEntry {
                    path: a.path.clone(),
                    subject: subject.clone(),
                    role: role.clone(),
                    propagate: a.propagate,
                };
                if !st.acl.contains(&entry) {
                    st.acl.push(entry);
                }
            }
        }
    });
    Json(json!({ "tokenid": id, "secret": secret })).into_response()
}

pub async fn ssh(
    AxState(sim): AxState<Arc<Sim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AxPath(vmid): AxPath<u32>,
) -> Response {
    if let Some(r) = loopback_only(&peer) {
        return r;
    }
    match sim.ssh_port(vmid) {
        Some(port) => Json(json!({ "host": "127.0.0.1", "port": port })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Body::from(
                "{\"message\":\"guest has no SSH endpoint (not running, or no host keys)\"}",
            ),
        )
            .into_response(),
    }
}

/// `POST /felhom-sim/faults` `{"set": "node_down:pve2"}` / `{"clear": "node_down:pve2"}` /
/// `{"set": "no_quorum"}` / `{"clear": "no_quorum"}`: change a cluster fault at run time.
/// Answers the faults now in force, `{"node_down": [...], "no_quorum": bool}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultReq {
    #[serde(default)]
    set: Option<String>,
    #[serde(default)]
    clear: Option<String>,
}

pub async fn faults(
    AxState(sim): AxState<Arc<Sim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m).into_response();
    let f: FaultReq = match authorized_body(&sim, &peer, &headers, &body, "fault request") {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let (text, on) = match (f.set, f.clear) {
        (Some(t), None) => (t, true),
        (None, Some(t)) => (t, false),
        _ => return bad("fault request: give exactly one of \"set\" or \"clear\"".into()),
    };
    let fault: crate::faults::ClusterFault = match text.parse() {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    match sim.set_cluster_fault(&fault, on) {
        Ok(now) => {
            Json(json!({ "node_down": now.down, "no_quorum": now.no_quorum })).into_response()
        }
        Err(e) => bad(e),
    }
}

/// `POST /felhom-sim/migrate` `{"vmid": 105, "node": "pve3"}`: an offline migration as
/// `pct migrate <vmid> <node>` does it (pve-container `src/PVE/API2/LXC.pm` `migrate_vm`,
/// `src/PVE/LXC/Migrate.pm`), done at once (no `vzmigrate` task): the config moves to the
/// target node, and so do the guest's volumes on node-local storages (same volume ids);
/// volumes on shared storages stay where they are. Refused (409, PVE's text in `message`):
/// a running guest (`can't migrate running container without --online or --restart`), a
/// locked one, an unknown or down node, the node it is on, and a node-local storage that is
/// not available on the target. A linked clone on node-local storage is refused as
/// `Migrate.pm` refuses it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateReq {
    vmid: u32,
    node: String,
}

pub async fn migrate(
    AxState(sim): AxState<Arc<Sim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let m: MigrateReq = match authorized_body(&sim, &peer, &headers, &body, "migrate request") {
        Ok(m) => m,
        Err(r) => return *r,
    };
    match migrate_guest(&sim, m.vmid, &m.node).await {
        Ok(source) => {
            Json(json!({ "vmid": m.vmid, "from": source, "node": m.node })).into_response()
        }
        Err(e) => refused(&e),
    }
}

/// The offline migration itself (for the route and for in-process users through
/// `SimHandle::migrate`): the node the guest came from, or PVE's refusal.
pub(crate) async fn migrate_guest(
    sim: &Arc<Sim>,
    vmid: u32,
    target: &str,
) -> Result<String, String> {
    let m = MigrateReq {
        vmid,
        node: target.to_string(),
    };
    // The config flock, as the migration's `lock_config`.
    let guard = sim.flock(m.vmid, crate::sim::model::LOCK_TIMEOUT).await?;
    let target = m.node.clone();
    let down = |n: &str| sim.node_down(n);
    let no_quorum = sim.no_quorum();
    let r = sim.mutate(|st| -> Result<String, String> {
        if no_quorum {
            return Err(crate::api::NO_QUORUM.to_string());
        }
        if !st.has_node(&target) {
            return Err(format!("no such cluster node '{target}'"));
        }
        let g = st
            .guests
            .get(&m.vmid)
            .ok_or_else(|| pve_api::texts::no_config(&st.node, m.vmid))?;
        let source = g.node.clone();
        if down(&source) || down(&target) {
            let which = if down(&source) { &source } else { &target };
            return Err(format!("node '{which}' is down"));
        }
        if source == target {
            return Err("target is local node.".to_string());
        }
        if g.running {
            return Err("can't migrate running container without --online or --restart".into());
        }
        if let Some(l) = g.config.get("lock") {
            return Err(pve_api::texts::locked(l));
        }
        for v in st.volumes.iter().filter(|v| v.owner == m.vmid) {
            let Some(sdef) = st.storage(&v.storage) else {
                continue;
            };
            if sdef.shared {
                continue;
            }
            if !sdef.on_node(&target) {
                return Err(format!(
                    "storage '{}' is not available on node '{target}'",
                    v.storage
                ));
            }
            if let Some(base) = st.linked.get(&v.volid) {
                return Err(format!(
                    "can't migrate local volume '{}': clone of '{base}'",
                    v.volid
                ));
            }
        }
        let moved: Vec<String> = st
            .volumes
            .iter()
            .filter(|v| v.owner == m.vmid && v.node == source)
            .filter(|v| st.storage(&v.storage).is_some_and(|s| !s.shared))
            .map(|v| v.volid.clone())
            .collect();
        for v in st.volumes.iter_mut().filter(|v| moved.contains(&v.volid)) {
            v.node = target.clone();
        }
        if let Some(g) = st.guests.get_mut(&m.vmid) {
            g.node = target.clone();
        }
        st.counters.migrations += 1;
        Ok(source)
    });
    drop(guard);
    r
}

fn refused(message: &str) -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({ "message": message, "data": null })),
    )
        .into_response()
}
