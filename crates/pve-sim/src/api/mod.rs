//! The PVE HTTP surface under `/api2/json`: PVE's request pipeline (auth → route →
//! permission → parameters → handler, reference §0 "Order of checks"), its envelope, and one
//! module per endpoint family. `ROUTES` is the single source of truth for what is served: each
//! entry holds its handler, the dispatcher matches against it and answers with that handler,
//! and the schema conformance test checks the same list against `apidata.js`. A route cannot
//! be listed without being answered, nor answered without being listed.
//!
//! Not modelled (yet): plain create from a template (only restore), force-restore over an
//! existing guest, HA, replication, firewall files, snapshots, QEMU, the migrate API (an
//! offline migration is a side-channel call), groups in ACLs, tag-access policies other than
//! the default `free`.
//!
//! A cluster (`SimConfig::nodes`) is served on one port: the `{node}` of the path decides
//! where a call runs (`dispatch`: an unknown node dies as before, a down node answers 595
//! before the handler, `no_quorum` refuses what `check_cfs_quorum` guards and config
//! writes); handlers look guests up on the asked node only (`guest_or_err`).

mod access;
mod clone;
mod cluster;
mod config;
mod lxc;
mod network;
pub(crate) mod params;
mod status;
mod storage;
mod tasks;

pub(crate) use config::resize_check;
pub(crate) use lxc::check_vnet_access;
pub(crate) use std::collections::BTreeMap;
pub(crate) use std::sync::Arc;
pub(crate) use texts_sim::NO_QUORUM;

use std::future::Future;
use std::pin::Pin;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
pub(crate) use serde_json::{json, Value};

pub(crate) use crate::auth::{self, Subject};
pub(crate) use crate::error::*;
pub(crate) use crate::sim::{model, now_ms, Sim};
pub(crate) use crate::state::{Guest, State, TaskPlan, GIB};
pub(crate) use params::{new_volume_bytes, new_volume_spec, normalize_tags, store_net, Kind};
pub(crate) use pve_api::texts;

/// A handler's future, for the async ones (they wait for a flock or a runtime).
type Fut<'a> = Pin<Box<dyn Future<Output = HResult> + Send + 'a>>;

/// What answers a route.
#[derive(Clone, Copy)]
enum Handler {
    Sync(fn(&Arc<Sim>, &Req) -> HResult),
    Async(for<'a> fn(&'a Arc<Sim>, &'a Req) -> Fut<'a>),
}

/// One served route: method, path as in the schema, and its handler.
struct Route {
    method: &'static str,
    path: &'static str,
    handler: Handler,
}

const fn sync(
    method: &'static str,
    path: &'static str,
    f: fn(&Arc<Sim>, &Req) -> HResult,
) -> Route {
    Route {
        method,
        path,
        handler: Handler::Sync(f),
    }
}

const fn asy(
    method: &'static str,
    path: &'static str,
    f: for<'a> fn(&'a Arc<Sim>, &'a Req) -> Fut<'a>,
) -> Route {
    Route {
        method,
        path,
        handler: Handler::Async(f),
    }
}

/// Every route the simulator serves under `/api2/json`, with its handler: the one list the
/// dispatcher matches against and the schema conformance test reads ([`routes`]).
const ROUTES: &[Route] = &[
    sync("GET", "/version", |_, _| {
        // `repoid` is the short git revision, hex (the schema's pattern `[0-9a-fA-F]{8,64}`).
        Ok(json!({ "version": "9.2.2", "release": "9.2", "repoid": "5e1f0a7c" }).into())
    }),
    sync("GET", "/cluster/nextid", |s, r| cluster::nextid(s, r)),
    sync("GET", "/cluster/resources", |s, r| cluster::resources(s, r)),
    sync("GET", "/access/permissions", |s, r| {
        access::permissions(s, r)
    }),
    sync("GET", "/pools", |s, r| access::pools(s, r)),
    sync("POST", "/pools", |s, r| access::create_pool(s, r)),
    sync("GET", "/nodes", |s, r| cluster::nodes(s, r)),
    sync("GET", "/cluster/status", |s, r| cluster::status(s, r)),
    sync("GET", "/nodes/{node}/network", |s, r| {
        network::network_list(s, r)
    }),
    sync("GET", "/nodes/{node}/storage", |s, r| {
        storage::storage_list(s, r)
    }),
    sync("GET", "/nodes/{node}/storage/{storage}/status", |s, r| {
        storage::storage_status(s, r)
    }),
    sync("GET", "/nodes/{node}/storage/{storage}/content", |s, r| {
        storage::storage_content(s, r)
    }),
    sync("GET", "/nodes/{node}/vzdump/extractconfig", |s, r| {
        storage::extractconfig(s, r)
    }),
    sync("GET", "/nodes/{node}/lxc", |s, r| lxc::lxc_list(s, r)),
    asy("POST", "/nodes/{node}/lxc", |s, r| {
        Box::pin(lxc::create(s, r))
    }),
    sync("DELETE", "/nodes/{node}/lxc/{vmid}", |s, r| {
        lxc::destroy(s, r)
    }),
    asy("POST", "/nodes/{node}/lxc/{vmid}/clone", |s, r| {
        Box::pin(clone::clone(s, r))
    }),
    asy("POST", "/nodes/{node}/lxc/{vmid}/template", |s, r| {
        Box::pin(clone::template(s, r))
    }),
    sync("GET", "/nodes/{node}/lxc/{vmid}/config", |s, r| {
        config::get_config(s, r)
    }),
    asy("PUT", "/nodes/{node}/lxc/{vmid}/config", |s, r| {
        Box::pin(config::put_config(s, r))
    }),
    sync("GET", "/nodes/{node}/lxc/{vmid}/pending", |s, r| {
        config::pending(s, r)
    }),
    sync("PUT", "/nodes/{node}/lxc/{vmid}/resize", |s, r| {
        config::resize(s, r)
    }),
    sync("GET", "/nodes/{node}/lxc/{vmid}/status/current", |s, r| {
        status::status_current(s, r)
    }),
    sync("POST", "/nodes/{node}/lxc/{vmid}/status/start", |s, r| {
        status::power(s, r, "start")
    }),
    sync("POST", "/nodes/{node}/lxc/{vmid}/status/stop", |s, r| {
        status::power(s, r, "stop")
    }),
    sync(
        "POST",
        "/nodes/{node}/lxc/{vmid}/status/shutdown",
        |s, r| status::power(s, r, "shutdown"),
    ),
    sync("POST", "/nodes/{node}/lxc/{vmid}/status/reboot", |s, r| {
        status::power(s, r, "reboot")
    }),
    asy("GET", "/nodes/{node}/lxc/{vmid}/interfaces", |s, r| {
        Box::pin(status::interfaces(s, r))
    }),
    sync("GET", "/nodes/{node}/tasks", |s, r| tasks::task_list(s, r)),
    sync("GET", "/nodes/{node}/tasks/{upid}/status", |s, r| {
        tasks::task_status(s, r)
    }),
    sync("GET", "/nodes/{node}/tasks/{upid}/log", |s, r| {
        tasks::task_log(s, r)
    }),
    sync("DELETE", "/nodes/{node}/tasks/{upid}", |s, r| {
        tasks::task_stop(s, r)
    }),
];

/// The served (method, path) pairs, for the schema conformance test; the same list the
/// dispatcher answers from.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    ROUTES.iter().map(|r| (r.method, r.path)).collect()
}

pub(crate) struct Req {
    pub who: Subject,
    pub params: BTreeMap<String, String>,
    pub node: String,
}

impl Req {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "on" | "yes" | "true"))
    }
    pub fn vmid(&self) -> u32 {
        self.get("vmid").and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

/// What a handler returns: `data`, plus `total` for task logs.
pub(crate) struct Reply {
    pub data: Value,
    pub total: Option<usize>,
}

impl From<Value> for Reply {
    fn from(data: Value) -> Reply {
        Reply { data, total: None }
    }
}

pub(crate) type HResult = Result<Reply, PveErr>;

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/felhom-sim/state", get(crate::admin::state))
        .route("/felhom-sim/requests", get(crate::admin::requests))
        .route("/felhom-sim/tokens", post(crate::admin::tokens))
        .route("/felhom-sim/storages", post(crate::admin::storages))
        .route("/felhom-sim/faults", post(crate::admin::faults))
        .route("/felhom-sim/migrate", post(crate::admin::migrate))
        .route("/felhom-sim/guests/{vmid}/ssh", get(crate::admin::ssh))
        .fallback(api_entry)
        .with_state(sim)
}

fn match_route(method: &str, path: &str) -> Option<(&'static Route, BTreeMap<String, String>)> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    for route in ROUTES {
        if route.method != method {
            continue;
        }
        let pat: Vec<&str> = route.path.split('/').skip(1).collect();
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
            return Some((route, vars));
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
    sim.count(|st| {
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
        None => Err(not_implemented(method.as_str(), &path)),
        Some((route, vars)) => {
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
            // A call for a down node: the receiving node tries to proxy it and the hop fails
            // (`node_down:<name>`).
            if let Some(n) = vars.get("node") {
                if sim.node_down(n) && sim.read(|st| st.has_node(n)) {
                    // The receiving node checks the schema's permissions first.
                    if let Err(e) = sim.read(|st| schema_permission(st, route, &who, &params)) {
                        log_request(&sim, method.as_str(), &path, &params, e.status);
                        return error_response(&e);
                    }
                    tokio::time::sleep(sim.scaled(model::NODE_DOWN_DELAY)).await;
                    sim.count(|st| st.counters.node_down_595 += 1);
                    log_request(&sim, method.as_str(), &path, &params, 595);
                    return node_down_response();
                }
            }
            let result = dispatch(&sim, route, who, params.clone()).await;
            if result.is_ok() && answer_lost(&sim, route) {
                log_request(&sim, method.as_str(), &path, &params, 595);
                return proxy_timeout_response();
            }
            result
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

/// The kind of mutating guest request a route is, as `post_effect_595:<kind>` names it.
fn request_kind(route: &Route) -> Option<&'static str> {
    Some(match (route.method, route.path) {
        ("POST", "/nodes/{node}/lxc") => "restore",
        ("PUT", "/nodes/{node}/lxc/{vmid}/config") => "config",
        ("PUT", "/nodes/{node}/lxc/{vmid}/resize") => "resize",
        ("POST", "/nodes/{node}/lxc/{vmid}/status/start") => "start",
        ("POST", "/nodes/{node}/lxc/{vmid}/status/stop") => "stop",
        ("POST", "/nodes/{node}/lxc/{vmid}/status/shutdown") => "shutdown",
        ("POST", "/nodes/{node}/lxc/{vmid}/status/reboot") => "reboot",
        ("DELETE", "/nodes/{node}/lxc/{vmid}") => "destroy",
        _ => return None,
    })
}

/// Whether the injected `post_effect_595` fault hides the answer of this request, which
/// was performed in full (counted).
fn answer_lost(sim: &Sim, route: &Route) -> bool {
    let Some(kind) = request_kind(route) else {
        return false;
    };
    if !sim.chance(sim.cfg.faults.post_effect_probability(kind)) {
        return false;
    }
    sim.mutate(|st| {
        st.counters.faults_injected += 1;
        st.counters.post_effect_595 += 1;
    });
    true
}

/// What pveproxy answers when its hop to pvedaemon timed out: AnyEvent::HTTP's pseudo-status
/// 595, the errno text as the reason phrase, an empty body (pve-http-server
/// `src/PVE/APIServer/AnyEvent.pm` `proxy_request`; audit top #1).
fn proxy_timeout_response() -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::from_u16(595).unwrap_or(StatusCode::GATEWAY_TIMEOUT);
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(
            b"Connection timed out",
        ));
    resp
}

/// What a client gets for a call whose node is down: pveproxy on the receiving node checks
/// the permissions, then proxies to the node's IP from the corosync nodelist; the connection
/// fails and AnyEvent::HTTP's pseudo-status 595 is passed through with the errno text as the
/// reason phrase and an empty body (pve-http-server `src/PVE/APIServer/AnyEvent.pm`
/// `proxy_request`; pve-manager `PVE/HTTPServer.pm` L176-190; audit §2 (c)), after the
/// receiving node's schema-level permission check ([`schema_permission`]).
fn node_down_response() -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::from_u16(595).unwrap_or(StatusCode::GATEWAY_TIMEOUT);
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(b"No route to host"));
    resp
}

/// The `permissions` check of a route's schema, which pveproxy makes on the receiving node
/// before it proxies a call to the node in the path (pve-http-server `AnyEvent.pm`,
/// pve-manager `PVE/HTTPServer.pm` L176-190): asked only for a down node, whose call is never
/// answered by its handler. Routes whose schema says `user => 'all'` check inside their
/// handler, so nothing here. From `apidata.js`'s `permissions` of each route.
fn schema_permission(
    st: &State,
    route: &Route,
    who: &Subject,
    params: &BTreeMap<String, String>,
) -> Result<(), PveErr> {
    let p = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    let vm = format!("/vms/{}", p("vmid"));
    match (route.method, route.path) {
        ("GET", "/nodes/{node}/storage/{storage}/status")
        | ("GET", "/nodes/{node}/storage/{storage}/content") => need_any(
            st,
            who,
            &format!("/storage/{}", p("storage")),
            &["Datastore.Audit", "Datastore.AllocateSpace"],
        ),
        ("DELETE", "/nodes/{node}/lxc/{vmid}") | ("POST", "/nodes/{node}/lxc/{vmid}/template") => {
            need(st, who, &vm, "VM.Allocate")
        }
        ("POST", "/nodes/{node}/lxc/{vmid}/clone") => {
            need(st, who, &vm, "VM.Clone")?;
            let pool = params.get("pool");
            if pool.is_some_and(|pl| auth::has(st, who, &format!("/pool/{pl}"), "VM.Allocate")) {
                return Ok(());
            }
            need(st, who, &format!("/vms/{}", p("newid")), "VM.Allocate")
        }
        ("GET", "/nodes/{node}/lxc/{vmid}/config")
        | ("GET", "/nodes/{node}/lxc/{vmid}/pending")
        | ("GET", "/nodes/{node}/lxc/{vmid}/status/current")
        | ("GET", "/nodes/{node}/lxc/{vmid}/interfaces") => need(st, who, &vm, "VM.Audit"),
        ("PUT", "/nodes/{node}/lxc/{vmid}/config") => need_any(
            st,
            who,
            &vm,
            &[
                "VM.Config.Disk",
                "VM.Config.CPU",
                "VM.Config.Memory",
                "VM.Config.Network",
                "VM.Config.Options",
            ],
        ),
        ("PUT", "/nodes/{node}/lxc/{vmid}/resize") => need(st, who, &vm, "VM.Config.Disk"),
        ("POST", path) if path.starts_with("/nodes/{node}/lxc/{vmid}/status/") => {
            need(st, who, &vm, "VM.PowerMgmt")
        }
        _ => Ok(()),
    }
}

/// The routes that die with `cluster not ready - no quorum?` without quorum: those that call
/// `check_cfs_quorum` (pve-cluster `PVE/Cluster.pm` L121-132) before anything else: create
/// and restore, clone, template, start (pve-container `API2/LXC.pm`, `API2/LXC/Status.pm`).
fn needs_quorum(route: &Route) -> bool {
    matches!(
        (route.method, route.path),
        ("POST", "/nodes/{node}/lxc")
            | ("POST", "/nodes/{node}/lxc/{vmid}/clone")
            | ("POST", "/nodes/{node}/lxc/{vmid}/template")
            | ("POST", "/nodes/{node}/lxc/{vmid}/status/start")
    )
}

/// The routes that write a guest config (or remove it): without quorum `/etc/pve` is
/// read-only and the write fails.
fn writes_config(route: &Route) -> bool {
    matches!(
        (route.method, route.path),
        ("PUT", "/nodes/{node}/lxc/{vmid}/config")
            | ("PUT", "/nodes/{node}/lxc/{vmid}/resize")
            | ("DELETE", "/nodes/{node}/lxc/{vmid}")
    )
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
    route: &Route,
    who: Subject,
    params: BTreeMap<String, String>,
) -> HResult {
    let node = params.get("node").cloned().unwrap_or_default();
    let req = Req { who, params, node };
    if let Some(n) = req.params.get("node") {
        if !sim.read(|st| st.has_node(n)) {
            return Err(die(format!("no such cluster node '{n}'")));
        }
    }
    if sim.no_quorum() && (needs_quorum(route) || writes_config(route)) {
        sim.count(|st| st.counters.no_quorum += 1);
        if needs_quorum(route) {
            return Err(die(texts_sim::NO_QUORUM));
        }
        // The config file cannot be written on a read-only `/etc/pve`. Not verified: the
        // exact text (audit §3); the simulator says what `file_set_contents` would.
        return Err(die(texts_sim::read_only_config(&req.node, req.vmid())));
    }
    // Injected faults, for mutating guest calls: the config-lock timeout and 503s.
    let vmid = req.get("vmid").and_then(|v| v.parse::<u32>().ok());
    if route.method != "GET" {
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
                if let Some(reply) = injected_lock_task(sim, route, &req, v) {
                    return reply;
                }
                tokio::time::sleep(sim.scaled(model::INJECTED_LOCK_WAIT)).await;
                sim.mutate(|st| {
                    st.counters.faults_injected += 1;
                    st.counters.lock500 += 1;
                });
                let text = lock_timeout_text(v);
                return Err(die(if route.path == "/nodes/{node}/lxc" {
                    texts::unable_to_restore(v, &text)
                } else {
                    text
                }));
            }
        }
    }
    match route.handler {
        Handler::Sync(f) => f(sim, &req),
        Handler::Async(f) => f(sim, &req).await,
    }
}

/// An injected lock timeout on a call whose handler takes the flock only in its worker
/// (start, stop, shutdown, reboot, resize, DELETE): PVE answers with the UPID and the task
/// fails with the lock timeout, never a 500 on the call (audit top #8;
/// pve-container `API2/LXC/Status.pm` workers, `API2/LXC.pm` `resize_vm`, `destroy_vm`).
/// `None` for the calls that lock synchronously (PUT config, create/restore) and for a guest
/// that does not exist (the handler answers that).
fn injected_lock_task(sim: &Arc<Sim>, route: &Route, req: &Req, vmid: u32) -> Option<HResult> {
    let ty = match (route.method, route.path) {
        ("POST", "/nodes/{node}/lxc/{vmid}/status/start") => "vzstart",
        ("POST", "/nodes/{node}/lxc/{vmid}/status/stop") => "vzstop",
        ("POST", "/nodes/{node}/lxc/{vmid}/status/shutdown") => "vzshutdown",
        ("POST", "/nodes/{node}/lxc/{vmid}/status/reboot") => "vzreboot",
        ("PUT", "/nodes/{node}/lxc/{vmid}/resize") => "resize",
        ("DELETE", "/nodes/{node}/lxc/{vmid}") => "vzdestroy",
        _ => return None,
    };
    let upid = sim.mutate(|st| {
        st.guest_on(&req.node, vmid).is_some().then(|| {
            st.counters.faults_injected += 1;
            st.counters.lock500 += 1;
            let plan = TaskPlan::Fail {
                vmid,
                message: lock_timeout_text(vmid),
                cleanup_restore: false,
            };
            sim.new_task(
                st,
                ty,
                &vmid.to_string(),
                &req.who,
                model::INJECTED_LOCK_WAIT,
                plan,
            )
        })
    })?;
    // No flock: the worker waited for it and gave up.
    sim.spawn_task(upid.clone(), None, None);
    Some(Ok(json!(upid).into()))
}

pub(crate) fn validate(
    req: &Req,
    allowed: &[(&str, Kind)],
    required: &[&str],
) -> Result<(), PveErr> {
    params::validate(
        &req.params,
        |k| allowed.iter().find(|(n, _)| *n == k).map(|(_, kind)| *kind),
        required,
    )
    .map_err(param_err)
}

pub(crate) fn need(st: &State, who: &Subject, path: &str, privilege: &str) -> Result<(), PveErr> {
    if auth::has(st, who, path, privilege) {
        Ok(())
    } else {
        Err(perm_err(path, privilege))
    }
}

pub(crate) fn need_any(
    st: &State,
    who: &Subject,
    path: &str,
    privs: &[&str],
) -> Result<(), PveErr> {
    if privs.iter().any(|p| auth::has(st, who, path, p)) {
        Ok(())
    } else {
        Err(perm_err(path, &privs.join("|")))
    }
}

/// Texts of a cluster the simulator words itself (not in `pve_api::texts`: felhom matches
/// them through the status and the `no quorum` wording only).
pub(crate) mod texts_sim {
    /// `check_cfs_quorum` (pve-cluster `PVE/Cluster.pm` L121-132).
    pub const NO_QUORUM: &str = "cluster not ready - no quorum?";

    /// A config write on a cluster without quorum (`/etc/pve` read-only). Not verified.
    pub fn read_only_config(node: &str, vmid: u32) -> String {
        format!(
            "unable to open file '/etc/pve/nodes/{node}/lxc/{vmid}.conf.tmp' - Permission denied"
        )
    }
}

pub(crate) const NODE: (&str, Kind) = ("node", Kind::Node);
pub(crate) const VMID: (&str, Kind) = ("vmid", Kind::Vmid);

pub(crate) fn guest_or_err<'a>(st: &'a State, node: &str, vmid: u32) -> Result<&'a Guest, PveErr> {
    st.guest_on(node, vmid).ok_or_else(|| no_conf(node, vmid))
}
