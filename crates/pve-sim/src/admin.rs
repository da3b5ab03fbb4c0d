//! The simulator's own side channel, outside `/api2` and for loopback peers only: the state
//! dump tests assert against, the request log the schema conformance test validates, token
//! creation for narrower tokens, storages of other types (to exercise what clones and
//! templates may do on them), and each guest's SSH endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path as AxPath, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::auth;
use crate::sim::{now_ms, Sim};

fn loopback_only(peer: &SocketAddr) -> Option<Response> {
    (!peer.ip().is_loopback()).then(|| (StatusCode::FORBIDDEN, "loopback only").into_response())
}

pub async fn state(
    AxState(sim): AxState<Arc<Sim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(r) = loopback_only(&peer) {
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
        let tasks: Vec<Value> = st.tasks.iter().map(|t| json!({ "upid": t.upid, "type": t.task_type, "id": t.id, "status": t.status, "exitstatus": t.exitstatus, "start_ms": t.start_ms, "end_ms": t.end_ms, "modelled_ms": t.modelled_ms })).collect();
        json!({ "node": st.node, "guests": guests, "volumes": st.volumes, "leases": st.leases, "tasks": tasks, "counters": st.counters, "pools": st.pools, "linked": st.linked })
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
) -> Response {
    if let Some(r) = loopback_only(&peer) {
        return r;
    }
    let reqs = sim
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Json(Value::Array(reqs)).into_response()
}

/// A storage to add to the node (`POST /felhom-sim/storages`): the storage types decide what
/// clones and templates may do (`crate::clone`).
#[derive(serde::Deserialize)]
pub struct StorageReq {
    id: String,
    #[serde(rename = "type")]
    storage_type: String,
    content: Vec<String>,
    #[serde(default)]
    total_gib: Option<u64>,
}

/// PVE's storage plugin types the simulator knows.
const STORAGE_TYPES: &[&str] = &[
    "dir", "lvm", "lvmthin", "zfspool", "rbd", "btrfs", "nfs", "cifs", "cephfs", "pbs",
];

pub async fn storages(
    AxState(sim): AxState<Arc<Sim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(s): Json<StorageReq>,
) -> Response {
    if let Some(r) = loopback_only(&peer) {
        return r;
    }
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
    let def = crate::state::StorageDef {
        id: s.id.clone(),
        storage_type: s.storage_type,
        content: s.content,
        total: s.total_gib.unwrap_or(1024) << 30,
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
    Json(t): Json<TokenReq>,
) -> Response {
    if let Some(r) = loopback_only(&peer) {
        return r;
    }
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
