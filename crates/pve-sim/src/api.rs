//! The HTTP surface: PVE's request pipeline (auth → route → permission → parameters →
//! handler, reference §0 "Order of checks"), its envelope and error shapes, the endpoint
//! handlers, and the simulator's own `/felhom-sim/*` side channel (loopback only).
//!
//! Not modelled (yet): plain create from a template (only restore), force-restore over an
//! existing guest, the `[pve:pending]` section (changes on a running guest apply at once),
//! HA, replication, firewall files, snapshots, QEMU, clusters of more than one node, task
//! DELETE, groups in ACLs, tag-access policies other than the default `free`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as AxPath, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use crate::auth::{self, Subject};
use crate::engine::{lock_timeout_text, model, now_ms, Sim};
use crate::params::{self, Kind};
use crate::state::{Guest, State, TaskPlan, Volume, GIB};

/// Every route the simulator serves under `/api2/json`: (method, path as in the schema).
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/version"),
    ("GET", "/cluster/nextid"),
    ("GET", "/access/permissions"),
    ("GET", "/pools"),
    ("POST", "/pools"),
    ("GET", "/nodes"),
    ("GET", "/nodes/{node}/storage"),
    ("GET", "/nodes/{node}/storage/{storage}/status"),
    ("GET", "/nodes/{node}/storage/{storage}/content"),
    ("GET", "/nodes/{node}/vzdump/extractconfig"),
    ("GET", "/nodes/{node}/lxc"),
    ("POST", "/nodes/{node}/lxc"),
    ("DELETE", "/nodes/{node}/lxc/{vmid}"),
    ("GET", "/nodes/{node}/lxc/{vmid}/config"),
    ("PUT", "/nodes/{node}/lxc/{vmid}/config"),
    ("GET", "/nodes/{node}/lxc/{vmid}/pending"),
    ("PUT", "/nodes/{node}/lxc/{vmid}/resize"),
    ("GET", "/nodes/{node}/lxc/{vmid}/status/current"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/start"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/stop"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/shutdown"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/reboot"),
    ("GET", "/nodes/{node}/lxc/{vmid}/interfaces"),
    ("GET", "/nodes/{node}/tasks"),
    ("GET", "/nodes/{node}/tasks/{upid}/status"),
    ("GET", "/nodes/{node}/tasks/{upid}/log"),
];

/// The routes, for the schema conformance test (single source: the dispatcher uses this).
pub fn routes() -> Vec<(&'static str, &'static str)> {
    ROUTES.to_vec()
}

/// An error as PVE sends it.
#[derive(Debug)]
struct PveErr {
    status: u16,
    message: String,
    errors: Option<BTreeMap<String, String>>,
}

fn die(msg: impl Into<String>) -> PveErr {
    PveErr {
        status: 500,
        message: msg.into(),
        errors: None,
    }
}

fn perm_err(path: &str, privilege: &str) -> PveErr {
    PveErr {
        status: 403,
        message: format!("Permission check failed ({path}, {privilege})"),
        errors: None,
    }
}

fn perm_text(text: impl Into<String>) -> PveErr {
    PveErr {
        status: 403,
        message: format!("Permission check failed ({})", text.into()),
        errors: None,
    }
}

fn param_err(errors: BTreeMap<String, String>) -> PveErr {
    PveErr {
        status: 400,
        message: "Parameter verification failed.".into(),
        errors: Some(errors),
    }
}

fn param1(key: &str, msg: impl Into<String>) -> PveErr {
    param_err(BTreeMap::from([(key.to_string(), msg.into())]))
}

fn no_conf(node: &str, vmid: u32) -> PveErr {
    die(format!(
        "Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist"
    ))
}

/// The status line carries the first line of the message (reference §0).
fn error_response(e: &PveErr) -> Response {
    let first = e.message.lines().next().unwrap_or("").to_string();
    let mut body = json!({ "data": null, "message": format!("{}\n", e.message) });
    if let Some(errs) = &e.errors {
        body["errors"] = json!(errs
            .iter()
            .map(|(k, v)| (k.clone(), format!("{v}\n")))
            .collect::<BTreeMap<_, _>>());
    }
    let mut resp = (
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response();
    if let Ok(r) = hyper::ext::ReasonPhrase::try_from(first.into_bytes()) {
        resp.extensions_mut().insert(r);
    }
    resp
}

struct Req {
    who: Subject,
    params: BTreeMap<String, String>,
    node: String,
}

impl Req {
    fn get(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "on" | "yes" | "true"))
    }
    fn vmid(&self) -> u32 {
        self.get("vmid").and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

/// What a handler returns: `data`, plus `total` for task logs.
struct Reply {
    data: Value,
    total: Option<usize>,
}

impl From<Value> for Reply {
    fn from(data: Value) -> Reply {
        Reply { data, total: None }
    }
}

type HResult = Result<Reply, PveErr>;

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/felhom-sim/state", get(admin_state))
        .route("/felhom-sim/requests", get(admin_requests))
        .route("/felhom-sim/tokens", post(admin_tokens))
        .route("/felhom-sim/guests/{vmid}/ssh", get(admin_ssh))
        .fallback(api_entry)
        .with_state(sim)
}

fn match_route(method: &str, path: &str) -> Option<(&'static str, BTreeMap<String, String>)> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    for (m, pattern) in ROUTES {
        if *m != method {
            continue;
        }
        let pat: Vec<&str> = pattern.split('/').skip(1).collect();
        if pat.len() != segs.len() {
            continue;
        }
        let mut vars = BTreeMap::new();
        let ok = pat.iter().zip(&segs).all(|(p, s)| {
            if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                vars.insert(name.to_string(), percent_decode(s));
                !s.is_empty()
            } else {
                p == s
            }
        });
        if ok {
            return Some((pattern, vars));
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn parse_params(
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<BTreeMap<String, String>, PveErr> {
    let mut params = BTreeMap::new();
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !body.is_empty() {
        if is_json {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| die(format!("unable to parse JSON body - {e}")))?;
            if let Some(o) = v.as_object() {
                for (k, v) in o {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        Value::Bool(b) => u8::from(*b).to_string(),
                        other => other.to_string(),
                    };
                    params.insert(k.clone(), s);
                }
            }
        } else {
            for (k, v) in url::form_urlencoded::parse(body) {
                params.insert(k.into_owned(), v.into_owned());
            }
        }
    }
    // Query-string parameters are merged in and override body parameters.
    if let Some(q) = uri.query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            params.insert(k.into_owned(), v.into_owned());
        }
    }
    Ok(params)
}

async fn api_entry(
    AxState(sim): AxState<Arc<Sim>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !sim.cfg.faults.latency.is_zero() {
        tokio::time::sleep(sim.cfg.faults.latency).await;
    }
    let full = uri.path().to_string();
    let Some(path) = full.strip_prefix("/api2/json") else {
        return (StatusCode::NOT_FOUND, "").into_response();
    };
    let path = if path.is_empty() { "/" } else { path }.to_string();
    let writes = method != Method::GET;
    sim.mutate(|st| {
        st.counters.requests += 1;
        if writes {
            st.counters.writes += 1;
        }
    });
    let auth_header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let who = sim.read(|st| auth::authenticate(st, auth_header.as_deref()));
    let who = match who {
        Ok(w) => w,
        Err(f) => {
            let reason: &[u8] = match f {
                auth::AuthFailure::NoTicket => b"No ticket",
                auth::AuthFailure::Failed => {
                    // PVE delays failed logins on purpose.
                    tokio::time::sleep(sim.scaled(model::AUTH_FAIL_DELAY)).await;
                    b"Authentication failed!"
                }
            };
            log_request(&sim, method.as_str(), &path, &BTreeMap::new(), 401);
            let mut resp = StatusCode::UNAUTHORIZED.into_response();
            if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason) {
                resp.extensions_mut().insert(r);
            }
            return resp;
        }
    };
    let mut params = match parse_params(&uri, &headers, &body) {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    let result = match match_route(method.as_str(), &path) {
        None => Err(PveErr {
            status: 501,
            message: format!("Method '{} {}' not implemented", method.as_str(), full),
            errors: None,
        }),
        Some((pattern, vars)) => {
            for (k, v) in &vars {
                if let Some(existing) = params.get(k) {
                    if existing != v {
                        let e = param1(k, "value does not match the path parameter");
                        log_request(&sim, method.as_str(), &path, &params, 400);
                        return error_response(&e);
                    }
                }
                params.insert(k.clone(), v.clone());
            }
            dispatch(&sim, method.as_str(), pattern, who, params.clone()).await
        }
    };
    let status = result.as_ref().map(|_| 200).unwrap_or_else(|e| e.status);
    log_request(&sim, method.as_str(), &path, &params, status);
    match result {
        Ok(reply) => {
            let mut body = json!({ "data": reply.data });
            if let Some(t) = reply.total {
                body["total"] = json!(t);
            }
            Json(body).into_response()
        }
        Err(e) => error_response(&e),
    }
}

fn log_request(
    sim: &Sim,
    method: &str,
    path: &str,
    params: &BTreeMap<String, String>,
    status: u16,
) {
    let params: BTreeMap<&String, &String> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "password")
        .collect();
    let mut reqs = sim.requests.lock().unwrap_or_else(|p| p.into_inner());
    if reqs.len() < 200_000 {
        reqs.push(json!({ "method": method, "path": path, "params": params, "status": status, "at_ms": now_ms() }));
    }
}

async fn dispatch(
    sim: &Arc<Sim>,
    method: &str,
    pattern: &'static str,
    who: Subject,
    params: BTreeMap<String, String>,
) -> HResult {
    let node = params.get("node").cloned().unwrap_or_default();
    let req = Req { who, params, node };
    if let Some(n) = req.params.get("node") {
        let ours = sim.read(|st| st.node.clone());
        if *n != ours {
            return Err(die(format!("no such cluster node '{n}'")));
        }
    }
    // Injected faults, for mutating guest calls: the config-lock timeout and 503s.
    let vmid = req.get("vmid").and_then(|v| v.parse::<u32>().ok());
    if method != "GET" {
        if sim.chance(sim.cfg.faults.http503) {
            sim.mutate(|st| st.counters.faults_injected += 1);
            return Err(PveErr {
                status: 503,
                message: "Service Unavailable".into(),
                errors: None,
            });
        }
        if let Some(v) = vmid {
            if sim.chance(sim.cfg.faults.lock500) {
                tokio::time::sleep(sim.scaled(model::LOCK_TIMEOUT) / 10).await;
                sim.mutate(|st| {
                    st.counters.faults_injected += 1;
                    st.counters.lock500 += 1;
                });
                let text = lock_timeout_text(v);
                return Err(die(if pattern == "/nodes/{node}/lxc" {
                    format!("unable to restore CT {v} - {text}")
                } else {
                    text
                }));
            }
        }
    }
    match (method, pattern) {
        ("GET", "/version") => {
            Ok(json!({ "version": "9.2.2", "release": "9.2", "repoid": "pve-sim" }).into())
        }
        ("GET", "/cluster/nextid") => nextid(sim, &req),
        ("GET", "/access/permissions") => permissions(sim, &req),
        ("GET", "/pools") => Ok(sim
            .read(|st| {
                json!(st
                    .pools
                    .keys()
                    .filter(|p| auth::has(st, &req.who, &format!("/pool/{p}"), "Pool.Audit"))
                    .map(|p| json!({ "poolid": p }))
                    .collect::<Vec<_>>())
            })
            .into()),
        ("POST", "/pools") => create_pool(sim, &req),
        ("GET", "/nodes") => Ok(sim
            .read(|st| json!([{ "node": st.node, "status": "online", "type": "node" }]))
            .into()),
        ("GET", "/nodes/{node}/storage") => storage_list(sim, &req),
        ("GET", "/nodes/{node}/storage/{storage}/status") => storage_status(sim, &req),
        ("GET", "/nodes/{node}/storage/{storage}/content") => storage_content(sim, &req),
        ("GET", "/nodes/{node}/vzdump/extractconfig") => extractconfig(sim, &req),
        ("GET", "/nodes/{node}/lxc") => lxc_list(sim, &req),
        ("POST", "/nodes/{node}/lxc") => create(sim, &req).await,
        ("DELETE", "/nodes/{node}/lxc/{vmid}") => destroy(sim, &req),
        ("GET", "/nodes/{node}/lxc/{vmid}/config") => get_config(sim, &req),
        ("PUT", "/nodes/{node}/lxc/{vmid}/config") => put_config(sim, &req).await,
        ("GET", "/nodes/{node}/lxc/{vmid}/pending") => pending(sim, &req),
        ("PUT", "/nodes/{node}/lxc/{vmid}/resize") => resize(sim, &req),
        ("GET", "/nodes/{node}/lxc/{vmid}/status/current") => status_current(sim, &req),
        ("POST", p) if p.starts_with("/nodes/{node}/lxc/{vmid}/status/") => {
            power(sim, &req, p.rsplit('/').next().unwrap_or(""))
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/interfaces") => interfaces(sim, &req),
        ("GET", "/nodes/{node}/tasks") => task_list(sim, &req),
        ("GET", "/nodes/{node}/tasks/{upid}/status") => task_status(sim, &req),
        ("GET", "/nodes/{node}/tasks/{upid}/log") => task_log(sim, &req),
        _ => Err(PveErr {
            status: 501,
            message: format!("Method '{method} {pattern}' not implemented"),
            errors: None,
        }),
    }
}

fn validate(req: &Req, allowed: &[(&str, Kind)], required: &[&str]) -> Result<(), PveErr> {
    params::validate(
        &req.params,
        |k| allowed.iter().find(|(n, _)| *n == k).map(|(_, kind)| *kind),
        required,
    )
    .map_err(param_err)
}

fn need(st: &State, who: &Subject, path: &str, privilege: &str) -> Result<(), PveErr> {
    if auth::has(st, who, path, privilege) {
        Ok(())
    } else {
        Err(perm_err(path, privilege))
    }
}

fn need_any(st: &State, who: &Subject, path: &str, privs: &[&str]) -> Result<(), PveErr> {
    if privs.iter().any(|p| auth::has(st, who, path, p)) {
        Ok(())
    } else {
        Err(perm_err(path, &privs.join("|")))
    }
}

const NODE: (&str, Kind) = ("node", Kind::Node);
const VMID: (&str, Kind) = ("vmid", Kind::Vmid);

fn nextid(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[VMID], &[])?;
    sim.read(|st| {
        if let Some(v) = req.get("vmid") {
            let v: u32 = v.parse().unwrap_or(0);
            if st.guests.contains_key(&v) {
                return Err(param1("vmid", format!("VM {v} already exists")));
            }
            return Ok(json!(v.to_string()).into());
        }
        let free = (100u32..1_000_000)
            .find(|v| !st.guests.contains_key(v))
            .ok_or_else(|| die("unable to get any free VMID in range [100, 1000000]"))?;
        Ok(json!(free.to_string()).into())
    })
}

fn permissions(sim: &Sim, req: &Req) -> HResult {
    validate(
        req,
        &[("path", Kind::Str(512)), ("userid", Kind::Str(128))],
        &[],
    )?;
    if req
        .get("userid")
        .is_some_and(|u| u != req.who.userid && Some(u) != req.who.token.as_deref())
    {
        sim.read(|st| need(st, &req.who, "/access", "Sys.Audit"))?;
    }
    Ok(sim
        .read(|st| {
            let paths: Vec<String> = match req.get("path") {
                Some(p) => vec![p.to_string()],
                None => auth::permission_paths(st).into_iter().collect(),
            };
            let mut out = serde_json::Map::new();
            for p in paths {
                let privs = auth::privileges(st, &req.who, &p);
                if privs.is_empty() && req.get("path").is_none() {
                    continue;
                }
                let prop = auth::propagates(st, &req.who, &p);
                out.insert(
                    p,
                    json!(privs
                        .into_iter()
                        .map(|v| (v, prop))
                        .collect::<BTreeMap<_, _>>()),
                );
            }
            Value::Object(out)
        })
        .into())
}

fn create_pool(sim: &Sim, req: &Req) -> HResult {
    validate(
        req,
        &[("poolid", Kind::PoolId), ("comment", Kind::Str(8192))],
        &["poolid"],
    )?;
    let p = req.get("poolid").unwrap_or_default().to_string();
    sim.mutate(|st| {
        need(st, &req.who, &format!("/pool/{p}"), "Pool.Allocate")?;
        if st.pools.contains_key(&p) {
            return Err(die(format!("pool '{p}' already exists")));
        }
        st.pools.insert(p, Vec::new());
        Ok(Value::Null.into())
    })
}

fn storage_json(st: &State, s: &crate::state::StorageDef) -> Value {
    let used = st.used_bytes(&s.id);
    json!({ "storage": s.id, "type": s.storage_type, "content": s.content.join(","), "total": s.total, "used": used, "avail": s.total.saturating_sub(used), "enabled": 1, "active": 1, "shared": 0 })
}

fn storage_list(sim: &Sim, req: &Req) -> HResult {
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
                .map(|s| storage_json(st, s))
                .collect::<Vec<_>>())
        })
        .into())
}

fn storage_status(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[NODE, ("storage", Kind::StorageId)], &[])?;
    let sid = req.get("storage").unwrap_or_default();
    sim.read(|st| {
        need_any(
            st,
            &req.who,
            &format!("/storage/{sid}"),
            &["Datastore.Audit", "Datastore.AllocateSpace"],
        )?;
        let s = st
            .storage(sid)
            .ok_or_else(|| die(format!("storage '{sid}' does not exist")))?;
        Ok(storage_json(st, s).into())
    })
}

fn backup_files(sim: &Sim, sid: &str) -> Vec<(String, u64, u64)> {
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

fn storage_content(sim: &Sim, req: &Req) -> HResult {
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
        let s = st
            .storage(&sid)
            .cloned()
            .ok_or_else(|| die(format!("storage '{sid}' does not exist")))?;
        Ok::<_, PveErr>((
            s,
            st.volumes
                .iter()
                .filter(|v| v.storage == sid)
                .cloned()
                .collect::<Vec<_>>(),
        ))
    })?;
    let filter = req.get("content");
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
    Ok(json!(out).into())
}

/// Archive access (pve-storage `check_volume_access`, reference §2.4): `Datastore.Allocate`
/// on the storage, or `Datastore.AllocateSpace` plus `VM.Backup` on the archive's owner VMID.
fn archive_access(
    sim: &Sim,
    st: &State,
    who: &Subject,
    volid: &str,
    target_vmid: Option<u32>,
) -> Result<std::path::PathBuf, PveErr> {
    let (sid, rest) = volid
        .split_once(':')
        .ok_or_else(|| die(format!("unable to parse volume ID '{volid}'")))?;
    let s = st
        .storage(sid)
        .ok_or_else(|| die(format!("storage '{sid}' does not exist")))?;
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
    if !auth::has(st, who, &format!("/storage/{sid}"), "Datastore.Allocate") {
        need(
            st,
            who,
            &format!("/storage/{sid}"),
            "Datastore.AllocateSpace",
        )?;
        match vzdump::owner_vmid_from_name(name) {
            Some(owner) if Some(owner) == target_vmid => {}
            Some(owner) => need(st, who, &format!("/vms/{owner}"), "VM.Backup")?,
            None => return Err(perm_text(format!("missing privileges to access {volid}"))),
        }
    }
    let path = crate::dump_dir(&sim.cfg.state_dir, sid).join(name);
    if !path.exists() {
        return Err(die(format!("volume '{volid}' does not exist")));
    }
    Ok(path)
}

fn extractconfig(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[NODE, ("volume", Kind::Str(255))], &["volume"])?;
    let volid = req.get("volume").unwrap_or_default();
    let path = sim.read(|st| archive_access(sim, st, &req.who, volid, None))?;
    let text = vzdump::read_pct_conf(&path).map_err(|e| {
        die(format!(
            "unable to extract configuration from '{volid}' - {e}"
        ))
    })?;
    Ok(json!(text).into())
}

fn lxc_list(sim: &Sim, req: &Req) -> HResult {
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

/// Per-key privileges for config changes (reference §3.5), for set and deleted keys.
fn check_config_perms(
    st: &State,
    who: &Subject,
    vmid: u32,
    keys: &[(&str, Option<&str>)],
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
                if let Some(b) = value
                    .and_then(|v| v.parse::<pve_api::NetConfig>().ok())
                    .and_then(|n| n.bridge)
                {
                    need(st, who, &format!("/sdn/zones/localnetwork/{b}"), "SDN.Use")?;
                }
            }
            k if k == "rootfs" || k.starts_with("mp") => {
                need(st, who, &vms, "VM.Config.Disk")?;
                if let Some(v) = value {
                    let vol = v.split(',').next().unwrap_or("");
                    if vol.starts_with('/') && !who.is_root() {
                        return Err(perm_text(format!("{vms}, VM.Config.Disk (mount point type bind is only allowed for root@pam)")));
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
                    return Err(PveErr { status: 403, message: "changing feature flags for privileged container is only allowed for root@pam".into(), errors: None });
                }
                let f: pve_api::Features = value.unwrap_or("").parse().unwrap_or_default();
                if f.keyctl || !f.other.is_empty() {
                    return Err(PveErr {
                        status: 403,
                        message:
                            "changing feature flags (except nesting) is only allowed for root@pam"
                                .into(),
                        errors: None,
                    });
                }
                need(st, who, &vms, "VM.Allocate")?;
            }
            k if k.starts_with("dev") && !who.is_root() => {
                return Err(PveErr {
                    status: 403,
                    message: "configuring device passthrough is only allowed for root@pam".into(),
                    errors: None,
                })
            }
            "hookscript" if !who.is_root() => {
                return Err(PveErr {
                    status: 403,
                    message: "changing the hookscript is only allowed for root@pam".into(),
                    errors: None,
                })
            }
            "features" | "hookscript" => {}
            _ => need(st, who, &vms, "VM.Config.Options")?,
        }
    }
    Ok(())
}

fn normalize_tags(v: &str) -> String {
    let mut tags: Vec<String> = v
        .split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(|t| t.to_ascii_lowercase())
        .collect();
    tags.sort();
    tags.dedup();
    tags.join(";")
}

/// `<storage>:<GiB>` (a new volume), reference §3.6.
fn new_volume_spec(v: &str) -> Option<(String, f64)> {
    let vol = v.split(',').next()?;
    let (sid, size) = vol.split_once(':')?;
    if sid.is_empty() || sid.contains(char::is_whitespace) {
        return None;
    }
    let ok = !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    ok.then(|| size.parse().ok())
        .flatten()
        .map(|s| (sid.to_string(), s))
}

fn fresh_mac() -> String {
    pve_api::MacAddr::random(&[0xBC, 0x24, 0x11]).to_string()
}

/// A `netN` as PVE stores it: canonical, with a fresh MAC if none was given.
fn store_net(v: &str) -> Result<String, String> {
    let mut n: pve_api::NetConfig = v
        .parse()
        .map_err(|e: pve_api::PropertyError| e.to_string())?;
    if n.hwaddr.is_none() {
        n = n.with_hwaddr(&fresh_mac()).map_err(|e| e.to_string())?;
    }
    n.other.insert("type".into(), "veth".into());
    Ok(n.to_string())
}

async fn create(sim: &Arc<Sim>, req: &Req) -> HResult {
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
    let config_keys: Vec<(&str, Option<&str>)> = req
        .params
        .iter()
        .filter(|(k, _)| params::config_kind(k).is_some())
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
            return Err(die(format!("CT {vmid} already exists on node '{node}'")));
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
        check_config_perms(st, &req.who, vmid, &config_keys, unpriv_given)?;
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
                .ok_or_else(|| param1("storage", format!("storage '{sid}' does not exist")))?;
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

    // create_and_lock_config: the flock (5 s) and the `lock: create` placeholder.
    let guard = sim
        .flock(vmid, model::CREATE_LOCK_TIMEOUT)
        .await
        .map_err(|e| die(format!("unable to restore CT {vmid} - {e}")))?;
    let who = req.who.clone();
    let upid = sim.mutate(|st| -> Result<String, PveErr> {
        if st.guests.contains_key(&vmid) {
            return Err(die(format!("CT {vmid} already exists on node '{node}'")));
        }
        st.guests.insert(
            vmid,
            Guest {
                vmid,
                config: BTreeMap::from([("lock".to_string(), "create".to_string())]),
                ..Guest::default()
            },
        );
        let plan = restore_plan(
            sim,
            st,
            RestoreTarget {
                vmid,
                archive: &archive,
                storage: &storage,
                request: request_conf,
                pool: pool.clone(),
            },
            req,
        );
        let modelled = model::RESTORE_BASE + size / 100_000_000 * model::RESTORE_PER_100MB;
        Ok(sim.new_task(st, "vzrestore", &vmid.to_string(), &who, modelled, plan))
    })?;
    sim.spawn_task(upid.clone(), Some(vmid), Some(guard));
    Ok(json!(upid).into())
}

/// What the `vzrestore` worker will do (reference §2.3): decided now, applied at its end.
/// What a restore request asks for, after the synchronous checks.
struct RestoreTarget<'a> {
    vmid: u32,
    archive: &'a std::path::Path,
    storage: &'a str,
    request: BTreeMap<String, String>,
    pool: Option<String>,
}

fn restore_plan(sim: &Sim, st: &State, t: RestoreTarget<'_>, req: &Req) -> TaskPlan {
    let RestoreTarget {
        vmid,
        archive,
        storage,
        request,
        pool,
    } = t;
    let fail = |message: String| TaskPlan::Fail {
        vmid,
        message: format!("unable to restore CT {vmid} - {message}"),
        cleanup_restore: true,
    };
    if sim.chance(sim.cfg.faults.task_fail_probability("vzrestore")) {
        return fail("simulated fault: extracting archive failed: Input/output error".into());
    }
    let text = match vzdump::read_pct_conf(archive) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let archived = match vzdump::parse_pct_conf(&text) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let traits = match sim.archive_traits(archive) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let who = &req.who;
    let unique = req.flag("unique");
    let mut conf = request.clone();
    let mut warnings = Vec::new();
    for (k, v) in &archived.entries {
        let skip = matches!(
            k.as_str(),
            "digest" | "rootfs" | "snapshots" | "unprivileged" | "parent" | "template"
        ) || k.starts_with("mp")
            || k.starts_with("unused");
        if skip {
            continue;
        }
        if k.starts_with("lxc.") {
            if !who.is_root() {
                warnings.push(format!(
                    "skipping custom lxc option '{k}' for non-root user"
                ));
            }
            continue;
        }
        if k.starts_with("net") && unique {
            // unique=1 re-randomises every archived NIC and overrides request netN.
            let fresh = v
                .parse::<pve_api::NetConfig>()
                .ok()
                .and_then(|n| n.with_hwaddr(&fresh_mac()).ok())
                .map(|n| n.to_string());
            if let Some(f) = fresh {
                conf.insert(k.clone(), f);
            }
            continue;
        }
        if !conf.contains_key(k) {
            if k.starts_with("net") {
                // Archived NICs keep their MAC; their bridge still needs SDN.Use (checked in the worker).
                if let Some(b) = v.parse::<pve_api::NetConfig>().ok().and_then(|n| n.bridge) {
                    if !auth::has(st, who, &format!("/sdn/zones/localnetwork/{b}"), "SDN.Use") {
                        return fail(format!(
                            "Permission check failed (/sdn/zones/localnetwork/{b}, SDN.Use)"
                        ));
                    }
                }
            }
            conf.insert(k.clone(), v.clone());
        }
    }
    let unprivileged = req
        .get("unprivileged")
        .map(|v| matches!(v, "1" | "on" | "yes" | "true"))
        .unwrap_or_else(|| archived.get("unprivileged") == Some("1"));
    if !unprivileged && !auth::has(st, who, "/", "Sys.Modify") {
        return fail("Permission check failed (/, Sys.Modify)".into());
    }
    if unprivileged {
        conf.insert("unprivileged".into(), "1".into());
    }
    if !archived.description.is_empty() && !request.contains_key("description") {
        conf.insert(
            "description".into(),
            archived.description.trim_end_matches('\n').to_string(),
        );
    }
    // Disks: explicit mode (request rootfs) creates only the request's volumes; storage-only
    // mode recreates the archived rootfs and volume mount points on `storage`.
    let mut volumes: Vec<Volume> = Vec::new();
    let alloc = |sid: &str, bytes: u64, volumes: &mut Vec<Volume>| -> String {
        let volid = st.next_disk_name(sid, vmid, volumes);
        volumes.push(Volume {
            volid: volid.clone(),
            storage: sid.to_string(),
            owner: vmid,
            size: bytes,
        });
        volid
    };
    let explicit = request.contains_key("rootfs");
    let mut disks: Vec<(String, String)> = Vec::new();
    if explicit {
        for (k, v) in request
            .iter()
            .filter(|(k, _)| *k == "rootfs" || k.starts_with("mp"))
        {
            disks.push((k.clone(), v.clone()));
        }
    } else {
        let Some(root) = archived.get("rootfs") else {
            return fail(
                "rootfs configuration could not be recovered, please check and specify manually!"
                    .into(),
            );
        };
        disks.push(("rootfs".into(), root.to_string()));
        for (k, v) in archived.entries.iter().filter(|(k, _)| k.starts_with("mp")) {
            disks.push((k.clone(), v.clone()));
        }
        for (k, v) in request.iter().filter(|(k, _)| k.starts_with("mp")) {
            disks.push((k.clone(), v.clone()));
        }
    }
    for (k, v) in disks {
        let parsed = if k == "rootfs" {
            pve_api::MountConfig::parse_rootfs(&v)
        } else {
            pve_api::MountConfig::parse_mp(&v)
        };
        let Ok(mut m) = parsed else {
            return fail(format!("unable to parse {k}"));
        };
        if m.volume.starts_with('/') {
            if !who.is_root() {
                return fail(format!(
                    "restoring '{k}' to bind mount is only possible for root"
                ));
            }
            conf.insert(k, m.to_string());
            continue;
        }
        let (sid, bytes) = match new_volume_spec(&m.volume) {
            Some((sid, gib)) if explicit || request.contains_key(&k) => {
                (sid, (gib * GIB as f64) as u64)
            }
            _ => match m.size {
                Some(b) => (storage.to_string(), b),
                None => {
                    return fail("unable to detect disk size - please specify rootfs (size)".into())
                }
            },
        };
        m.volume = alloc(&sid, bytes, &mut volumes);
        m.size = Some(bytes);
        conf.insert(k, m.to_string());
    }
    conf.entry("hostname".into())
        .or_insert_with(|| format!("CT{vmid}"));
    conf.entry("memory".into()).or_insert_with(|| "512".into());
    conf.entry("swap".into()).or_insert_with(|| "512".into());
    conf.remove("lock");
    TaskPlan::Restore {
        vmid,
        config: conf,
        volumes,
        traits,
        pool,
        start: req.flag("start"),
        warnings,
    }
}

fn guest_or_err<'a>(st: &'a State, node: &str, vmid: u32) -> Result<&'a Guest, PveErr> {
    st.guests.get(&vmid).ok_or_else(|| no_conf(node, vmid))
}

/// PVE's serialised config (sorted keys, description as `#` lines): what `digest` hashes.
fn config_text(g: &Guest) -> String {
    let mut s = String::new();
    if let Some(d) = g.config.get("description") {
        for line in d.lines() {
            s.push_str(&format!("#{line}\n"));
        }
    }
    for (k, v) in &g.config {
        if k != "description" {
            s.push_str(&format!("{k}: {v}\n"));
        }
    }
    s
}

fn digest(g: &Guest) -> String {
    hex::encode(Sha1::digest(config_text(g).as_bytes()))
}

const INT_KEYS: &[&str] = &[
    "memory",
    "swap",
    "cores",
    "cpuunits",
    "unprivileged",
    "onboot",
    "protection",
    "template",
    "tty",
    "console",
];

fn config_json(g: &Guest) -> Value {
    let mut o = serde_json::Map::new();
    for (k, v) in &g.config {
        let val = if k == "description" {
            json!(v.lines().map(|l| format!("{l}\n")).collect::<String>())
        } else if INT_KEYS.contains(&k.as_str()) {
            v.parse::<i64>()
                .map(|n| json!(n))
                .unwrap_or_else(|_| json!(v))
        } else {
            json!(v)
        };
        o.insert(k.clone(), val);
    }
    o.insert("digest".into(), json!(digest(g)));
    Value::Object(o)
}

fn get_config(sim: &Sim, req: &Req) -> HResult {
    sim.read(|st| need(st, &req.who, &format!("/vms/{}", req.vmid()), "VM.Audit"))?;
    validate(
        req,
        &[
            NODE,
            VMID,
            ("current", Kind::Bool),
            ("snapshot", Kind::Str(40)),
        ],
        &[],
    )?;
    sim.read(|st| Ok(config_json(guest_or_err(st, &req.node, req.vmid())?).into()))
}

fn pending(sim: &Sim, req: &Req) -> HResult {
    sim.read(|st| need(st, &req.who, &format!("/vms/{}", req.vmid()), "VM.Audit"))?;
    validate(req, &[NODE, VMID], &[])?;
    sim.read(|st| {
        let g = guest_or_err(st, &req.node, req.vmid())?;
        Ok(json!(g
            .config
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect::<Vec<_>>())
        .into())
    })
}

async fn put_config(sim: &Arc<Sim>, req: &Req) -> HResult {
    let vmid = req.vmid();
    let vms = format!("/vms/{vmid}");
    sim.read(|st| {
        need_any(
            st,
            &req.who,
            &vms,
            &[
                "VM.Config.Disk",
                "VM.Config.CPU",
                "VM.Config.Memory",
                "VM.Config.Network",
                "VM.Config.Options",
            ],
        )
    })?;
    params::validate(
        &req.params,
        |k| match k {
            "node" => Some(Kind::Node),
            "vmid" => Some(Kind::Vmid),
            "delete" | "revert" => Some(Kind::ConfigIdList),
            "digest" => Some(Kind::Str(64)),
            other => params::config_kind(other),
        },
        &[],
    )
    .map_err(param_err)?;
    sim.read(|st| guest_or_err(st, &req.node, vmid).map(|_| ()))?;
    let sets: Vec<(String, String)> = req
        .params
        .iter()
        .filter(|(k, _)| params::config_kind(k).is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let deletes: Vec<String> = req
        .get("delete")
        .map(|d| {
            d.split([',', ';', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if sets.is_empty() && deletes.is_empty() {
        return Err(die("no options specified"));
    }
    for d in &deletes {
        if params::config_kind(d).is_none() {
            return Err(param1("delete", format!("unknown option '{d}'")));
        }
        if sets.iter().any(|(k, _)| k == d) {
            return Err(param1(
                "delete",
                format!("you can't use '-{d}' and -delete {d}' at the same time"),
            ));
        }
    }
    let _guard = sim.flock(vmid, model::LOCK_TIMEOUT).await.map_err(die)?;
    let who = req.who.clone();
    sim.mutate(|st| -> HResult {
        let g = guest_or_err(st, &req.node, vmid)?;
        if let Some(l) = g.config.get("lock") {
            return Err(die(format!("CT is locked ({l})")));
        }
        if let Some(d) = req.get("digest") {
            if d != digest(g) {
                return Err(die("detected modified configuration - file changed by other user? Try again."));
            }
        }
        let unpriv = g.config.get("unprivileged").map(|v| v == "1");
        let keys: Vec<(&str, Option<&str>)> = sets.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))).chain(deletes.iter().map(|d| (d.as_str(), None))).collect();
        check_config_perms(st, &who, vmid, &keys, unpriv)?;
        for d in &deletes {
            if matches!(d.as_str(), "memory" | "rootfs" | "ostype") {
                return Err(die(format!("unable to delete required option '{d}'")));
            }
            if d == "unprivileged" {
                return Err(die("unable to delete read-only option: 'unprivileged'"));
            }
        }
        if sets.iter().any(|(k, _)| k == "unprivileged") {
            return Err(die("unable to modify read-only option: 'unprivileged'"));
        }
        let mut new_vols = Vec::new();
        let mut changes: Vec<(String, Option<String>)> = Vec::new();
        for (k, v) in &sets {
            let stored = if k.starts_with("net") {
                store_net(v).map_err(|e| param1(k, format!("invalid format - {e}")))?
            } else if k.starts_with("mp") {
                let Some((sid, gib)) = new_volume_spec(v) else {
                    // An existing volume: only this guest's own volumes are allowed here.
                    let vol = v.split(',').next().unwrap_or("");
                    if !st.volumes.iter().any(|x| x.volid == vol && x.owner == vmid) {
                        return Err(param1(k, format!("unable to apply pending change {k} : volume '{vol}' does not belong to this guest")));
                    }
                    changes.push((k.clone(), Some(v.clone())));
                    continue;
                };
                let s = st.storage(&sid).ok_or_else(|| die(format!("storage '{sid}' does not exist")))?;
                if !s.content.iter().any(|c| c == "rootdir") {
                    return Err(die(format!("storage '{sid}' does not allow content type 'rootdir' (Container)")));
                }
                let mut m = pve_api::MountConfig::parse_mp(v).map_err(|e| param1(k, format!("invalid format - {e}")))?;
                let bytes = (gib * GIB as f64) as u64;
                let volid = st.next_disk_name(&sid, vmid, &new_vols);
                new_vols.push(Volume { volid: volid.clone(), storage: sid, owner: vmid, size: bytes });
                m.volume = volid;
                m.size = Some(bytes);
                m.to_string()
            } else if k == "rootfs" {
                return Err(param1(k, "pve-sim does not model replacing rootfs; use resize"));
            } else if k == "tags" {
                normalize_tags(v)
            } else {
                v.clone()
            };
            changes.push((k.clone(), Some(stored)));
        }
        for d in &deletes {
            changes.push((d.clone(), None));
        }
        let g = st.guests.get_mut(&vmid).ok_or_else(|| no_conf(&req.node, vmid))?;
        let mut destroyed = Vec::new();
        for (k, v) in changes {
            match v {
                Some(v) => {
                    if k.starts_with("mp") {
                        // A replaced volume is detached to unusedN, never deleted.
                        if let Some(old) = g.config.get(&k).and_then(|o| o.split(',').next().map(str::to_string)) {
                            let n = (0..256).find(|n| !g.config.contains_key(&format!("unused{n}"))).unwrap_or(255);
                            g.config.insert(format!("unused{n}"), old);
                        }
                    }
                    g.config.insert(k, v);
                }
                None => {
                    if let Some(old) = g.config.remove(&k) {
                        if k.starts_with("mp") {
                            let n = (0..256).find(|n| !g.config.contains_key(&format!("unused{n}"))).unwrap_or(255);
                            g.config.insert(format!("unused{n}"), old.split(',').next().unwrap_or("").to_string());
                        } else if k.starts_with("unused") {
                            destroyed.push(old);
                        }
                    }
                }
            }
        }
        st.volumes.extend(new_vols);
        st.volumes.retain(|v| !destroyed.contains(&v.volid));
        Ok(Value::Null.into())
    })
}

fn resize(sim: &Arc<Sim>, req: &Req) -> HResult {
    let vmid = req.vmid();
    let vms = format!("/vms/{vmid}");
    sim.read(|st| need(st, &req.who, &vms, "VM.Config.Disk"))?;
    validate(
        req,
        &[
            NODE,
            VMID,
            (
                "disk",
                Kind::Enum(&[
                    "rootfs", "mp0", "mp1", "mp2", "mp3", "mp4", "mp5", "mp6", "mp7", "mp8", "mp9",
                ]),
            ),
            ("size", Kind::Size),
            ("digest", Kind::Str(64)),
        ],
        &["disk", "size"],
    )?;
    let disk = req.get("disk").unwrap_or_default().to_string();
    let size = req.get("size").unwrap_or_default().to_string();
    let who = req.who.clone();
    let upid = sim.mutate(|st| -> Result<String, PveErr> {
        // The quirk: the handler also runs the per-key check on {disk => …} (reference §5).
        need(st, &who, &vms, "VM.Config.Options")?;
        let g = guest_or_err(st, &req.node, vmid)?;
        if let Some(l) = g.config.get("lock") {
            return Err(die(format!("CT is locked ({l})")));
        }
        if let Some(d) = req.get("digest") {
            if d != digest(g) {
                return Err(die(
                    "detected modified configuration - file changed by other user? Try again.",
                ));
            }
        }
        let cur = g
            .config
            .get(&disk)
            .ok_or_else(|| die(format!("unable to parse config option '{disk}'")))?;
        let m = if disk == "rootfs" {
            pve_api::MountConfig::parse_rootfs(cur)
        } else {
            pve_api::MountConfig::parse_mp(cur)
        }
        .map_err(|e| die(e.to_string()))?;
        let sid = m.storage().unwrap_or_default().to_string();
        need(
            st,
            &who,
            &format!("/storage/{sid}"),
            "Datastore.AllocateSpace",
        )?;
        let current = m.size.ok_or_else(|| {
            die(format!(
                "Could not determine current size of volume '{}'",
                m.volume
            ))
        })?;
        let (relative, num) = match size.strip_prefix('+') {
            Some(n) => (true, n),
            None => (false, size.as_str()),
        };
        let bytes = pve_api::parse_disk_size(num)
            .map_err(|_| param1("size", "value does not match the regex pattern"))?;
        let target = if relative { current + bytes } else { bytes };
        if target < current {
            return Err(die("unable to shrink disk size"));
        }
        if target == current {
            return Err(die("disk is already at specified size"));
        }
        let plan = if sim.chance(sim.cfg.faults.task_fail_probability("resize")) {
            TaskPlan::Fail {
                vmid,
                message: "simulated fault: resize2fs failed".into(),
                cleanup_restore: false,
            }
        } else {
            TaskPlan::Resize {
                vmid,
                disk: disk.clone(),
                bytes: target,
            }
        };
        Ok(sim.new_task(st, "resize", &vmid.to_string(), &who, model::RESIZE, plan))
    })?;
    sim.spawn_task(upid.clone(), Some(vmid), sim.try_flock(vmid));
    Ok(json!(upid).into())
}

fn status_current(sim: &Sim, req: &Req) -> HResult {
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

fn power(sim: &Arc<Sim>, req: &Req, action: &str) -> HResult {
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
        return Err(perm_text(
            "skiplock is only allowed for root@pam".to_string(),
        ));
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
            "shutdown" => ("vzshutdown", model::STOP * 2, TaskPlan::Stop { vmid }),
            _ => ("vzreboot", model::START, TaskPlan::Start { vmid }),
        };
        let plan = if sim.chance(sim.cfg.faults.task_fail_probability(ty)) {
            TaskPlan::Fail {
                vmid,
                message: format!("simulated fault: {ty} failed: lxc-start exited with status 1"),
                cleanup_restore: false,
            }
        } else {
            plan
        };
        Ok(sim.new_task(st, ty, &vmid.to_string(), &who, modelled, plan))
    })?;
    sim.spawn_task(upid.clone(), Some(vmid), sim.try_flock(vmid));
    Ok(json!(upid).into())
}

fn iface(name: &str, mac: &str, inet: Option<(&str, u32)>, inet6: Option<(&str, u32)>) -> Value {
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

fn interfaces(sim: &Sim, req: &Req) -> HResult {
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
        for (k, v) in g.config.iter().filter(|(k, _)| k.starts_with("net")) {
            let _ = k;
            let Ok(n) = v.parse::<pve_api::NetConfig>() else {
                continue;
            };
            let Some(mac) = n.hwaddr.map(|m| m.to_string()) else {
                continue;
            };
            let ip = if leased {
                n.bridge
                    .as_ref()
                    .and_then(|b| st.leases.get(b))
                    .and_then(|l| l.get(&mac))
                    .cloned()
            } else {
                None
            };
            out.push(iface(
                &n.name,
                &mac.to_ascii_lowercase(),
                ip.as_deref().map(|a| (a, 16)),
                None,
            ));
        }
        Ok(json!(out).into())
    })
}

fn destroy(sim: &Arc<Sim>, req: &Req) -> HResult {
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
            return Err(die(format!("CT is locked ({l})")));
        }
        if g.running && !req.flag("force") {
            return Err(die(format!(
                "unable to destroy CT {vmid} - container is running"
            )));
        }
        if let Some(g) = st.guests.get_mut(&vmid) {
            g.config.insert("lock".into(), "destroyed".into());
            g.running = false;
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

/// A token sees its own tasks; the owning user sees the user's and its tokens' tasks;
/// anyone else needs `Sys.Audit` on `/nodes/<node>` (reference §6.3).
fn task_visible(st: &State, who: &Subject, t: &crate::state::Task) -> bool {
    let mine = match &who.token {
        Some(_) => t.user == who.userid && t.tokenid == who.token_name(),
        None => t.user == who.userid,
    };
    mine || auth::has(st, who, &format!("/nodes/{}", t.node), "Sys.Audit")
}

fn find_task<'a>(st: &'a State, req: &Req) -> Result<&'a crate::state::Task, PveErr> {
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

fn task_status(sim: &Sim, req: &Req) -> HResult {
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

fn task_log(sim: &Sim, req: &Req) -> HResult {
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

fn task_list(sim: &Sim, req: &Req) -> HResult {
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
            .take(limit)
            .map(|t| json!({ "upid": t.upid, "node": t.node, "type": t.task_type, "id": t.id, "user": t.user, "status": if t.status == "stopped" { t.exitstatus.clone().unwrap_or_default() } else { String::new() }, "starttime": t.start_ms / 1000, "endtime": if t.status == "stopped" { json!(t.end_ms / 1000) } else { Value::Null } }))
            .collect();
        Ok(json!(v).into())
    })
}

// ---- the simulator's own side channel (outside /api2, loopback only) ----

fn loopback_only(peer: &SocketAddr) -> Option<Response> {
    (!peer.ip().is_loopback()).then(|| (StatusCode::FORBIDDEN, "loopback only").into_response())
}

async fn admin_state(
    AxState(sim): AxState<Arc<Sim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(r) = loopback_only(&peer) {
        return r;
    }
    let ports: BTreeMap<u32, Option<u16>> =
        sim.read(|st| st.guests.keys().map(|v| (*v, sim.ssh_port(*v))).collect());
    let locked: Vec<u32> = sim.read(|st| st.guests.keys().copied().collect::<Vec<_>>());
    let body = sim.read(|st| {
        let now = now_ms();
        let guests: Vec<Value> = st
            .guests
            .values()
            .map(|g| {
                let macs: Vec<String> = g.config.iter().filter(|(k, _)| k.starts_with("net")).filter_map(|(_, v)| v.parse::<pve_api::NetConfig>().ok()?.hwaddr.map(|m| m.to_string())).collect();
                let ip = if g.running && g.lease_visible_at.is_some_and(|t| now >= t) {
                    g.config
                        .iter()
                        .filter(|(k, _)| k.starts_with("net"))
                        .filter_map(|(_, v)| v.parse::<pve_api::NetConfig>().ok())
                        .find_map(|n| st.leases.get(n.bridge.as_ref()?)?.get(&n.hwaddr?.to_string()).cloned())
                } else {
                    None
                };
                json!({
                    "vmid": g.vmid,
                    "status": if g.running { "running" } else { "stopped" },
                    "config": g.config,
                    "lock": g.config.get("lock"),
                    "macs": macs,
                    "ip": ip,
                    "machine_id": g.machine_id,
                    "boots": g.boots,
                    "ssh": { "port": ports.get(&g.vmid).copied().flatten(), "fingerprint": g.ssh_key.as_deref().and_then(crate::guest::fingerprint) },
                    "pool": g.pool,
                })
            })
            .collect();
        let tasks: Vec<Value> = st.tasks.iter().map(|t| json!({ "upid": t.upid, "type": t.task_type, "id": t.id, "status": t.status, "exitstatus": t.exitstatus, "start_ms": t.start_ms, "end_ms": t.end_ms, "modelled_ms": t.modelled_ms })).collect();
        json!({ "node": st.node, "guests": guests, "volumes": st.volumes, "leases": st.leases, "tasks": tasks, "counters": st.counters, "pools": st.pools })
    });
    let mut body = body;
    body["locks"] = json!(locked
        .into_iter()
        .filter(|v| sim.is_locked(*v))
        .collect::<Vec<_>>());
    Json(body).into_response()
}

async fn admin_requests(
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

#[derive(serde::Deserialize)]
struct TokenReq {
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
struct AclReq {
    path: String,
    privs: Vec<String>,
    #[serde(default = "yes")]
    propagate: bool,
}

async fn admin_tokens(
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
    let secret = format!("{:032x}", rand::random::<u128>());
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
        st.acl.retain(|a| a.subject != id && a.subject != t.userid);
        for (i, a) in t.acl.iter().enumerate() {
            let role = format!("sim-{}-{}-{i}", t.userid.replace('@', "-"), t.tokenid);
            st.roles.insert(role.clone(), a.privs.clone());
            for subject in [&t.userid, &id] {
                st.acl.push(crate::state::AclEntry {
                    path: a.path.clone(),
                    subject: subject.clone(),
                    role: role.clone(),
                    propagate: a.propagate,
                });
            }
        }
    });
    Json(json!({ "tokenid": id, "secret": secret })).into_response()
}

async fn admin_ssh(
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
