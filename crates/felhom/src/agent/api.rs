//! The HTTP API (axum). Routes, their handlers and the OpenAPI 3.1 document are one thing:
//! each handler carries its `#[utoipa::path]`, and [`router`] builds the axum router and the
//! document from the same list (utoipa-axum), so a route cannot exist undocumented.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /healthz` | – | the process is alive |
//! | `GET /readyz` | – | the journal is writable and PVE answers with the token (503 otherwise) |
//! | `GET /` | – | the status page shell (`page.rs`) |
//! | `GET /metrics` | bearer | Prometheus text (`metrics.rs`) |
//! | `GET /v1/openapi.json` | bearer | this document |
//! | `GET /v1/guests`, `GET/PUT/DELETE /v1/guests/{customer}/{name}` | bearer | desired + observed guests; PUT 202 with the job or 200 unchanged; DELETE 202 or 200 absent |
//! | `POST /v1/plan` | bearer | `apply`'s decisions for specs, zero writes |
//! | `GET /v1/jobs`, `GET /v1/jobs/{id}` | bearer | the journal's jobs |
//! | `GET /v1/events`, `GET /v1/jobs/{id}/events` | bearer | Server-Sent Events (one job: history first, ends with its outcome) |
//!
//! Every error is problem+json ([`Problem`]), including 401, 404, 405, 413 and 415. Request
//! bodies are capped at [`BODY_LIMIT`]. A spec is checked exactly as a spec file is
//! (`GuestSpec::from_json`, then `Felhom::validate` against PVE, reads only) before anything is
//! stored or written: bad input is 422 with the fields and rules, and zero writes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use felhom_core::job::Outcome;
use felhom_core::journal::JobRow;
use felhom_core::spec::{FieldError, GuestSpec, Identity};
use futures::Stream;
use serde::Serialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::desired::{Source, Wanted};
use super::events::{rfc3339_ms, AgentEvent};
use super::problem::{FieldRule, Problem};
use super::reconcile::{SlotState, Work};
use super::Agent;

/// The largest request body accepted (413 above).
pub const BODY_LIMIT: usize = 64 * 1024;
/// How long a PUT or DELETE waits for its job to appear before answering 202 without one.
const ANSWER_WAIT: Duration = Duration::from_secs(60);

type St = State<Arc<Agent>>;

/// A job, briefly.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobBrief {
    pub id: String,
    /// `bringup`, `repair` or `teardown`.
    pub kind: String,
    /// The journal's state (`running`, `succeeded`, …; `interrupted` for a run whose process died).
    pub state: String,
}

/// A guest: what is wanted and what PVE shows.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Guest {
    pub customer: String,
    pub name: String,
    /// The wanted spec (the spec file's keys as JSON); null for a felhom guest nobody wants.
    #[schema(value_type = Option<Object>)]
    pub spec: Option<Value>,
    /// `file` (the spec directory), `api`, or null.
    pub source: Option<String>,
    pub node: Option<String>,
    pub vmid: Option<u32>,
    /// `running`, `stopped`, `absent`, `queued` (waiting for a concurrency slot), `building`,
    /// `paused`, `tearing_down`.
    pub state: String,
    pub ip: Option<String>,
    pub ssh_fingerprint: Option<String>,
    /// What differs from the spec, one line each (`field: actual → expected`).
    pub drift: Vec<String>,
    pub job: Option<JobBrief>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GuestList {
    pub guests: Vec<Guest>,
}

/// The answer to a DELETE.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Removal {
    pub customer: String,
    pub name: String,
    /// `absent` (nothing to do) or `tearing_down`.
    pub state: String,
    pub job: Option<JobBrief>,
}

/// A job row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub customer: Option<String>,
    pub name: Option<String>,
    pub vmid: Option<u32>,
    pub node: String,
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub ended_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// `POST /v1/plan`'s body: `{"specs": [spec, …]}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanRequest {
    #[schema(value_type = Vec<Object>)]
    pub specs: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanDecision {
    pub customer: String,
    pub name: String,
    /// `create`, `unchanged`, `repair`, `continue`, `refuse`.
    pub decision: String,
    pub vmid: Option<u32>,
    /// The decision in words, as `felhom plan` prints it.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Plan {
    pub decisions: Vec<PlanDecision>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "felhom agent",
        description = "Keeps customer LXC guests on Proxmox VE converged to their specs. Every error is application/problem+json (RFC 9457)."
    ),
    components(schemas(Problem, FieldRule, AgentEvent)),
    modifiers(&Common)
)]
struct ApiDoc;

/// The bearer scheme, and the error answers every operation can give.
struct Common;

impl utoipa::Modify for Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let problem = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let authed = path.starts_with("/v1/") || path == "/metrics";
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let mut common = vec![
                    ("404", "no such resource"),
                    ("405", "method not allowed on this path"),
                    ("500", "the agent could not read or write its own state"),
                ];
                if authed {
                    common.push(("401", "no or a wrong bearer token"));
                }
                for (code, what) in common {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| problem(what).into());
                }
            }
        }
    }
}

/// The axum router and the OpenAPI document, from one list.
pub fn router(agent: Arc<Agent>) -> axum::Router {
    let (authed, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_guests))
        .routes(routes!(get_guest, put_guest, delete_guest))
        .routes(routes!(plan))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(job_events))
        .routes(routes!(all_events))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics))
        .split_for_parts();
    let (open, open_doc) = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(index))
        .split_for_parts();
    doc.merge(open_doc);
    utoipa::Modify::modify(&Common, &mut doc);
    let doc = Arc::new(serde_json::to_value(&doc).unwrap_or(Value::Null));
    let authed = authed
        .layer(axum::middleware::from_fn_with_state(
            agent.clone(),
            require_token,
        ))
        .layer(axum::Extension(doc));
    authed
        .merge(open)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(agent)
}

async fn not_found() -> Problem {
    Problem::not_found("no such resource")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "",
        "this method is not allowed on this path",
    )
}

/// 401 unless `Authorization: Bearer <token>` carries the configured token (constant time).
async fn require_token(State(a): St, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let token = a.token();
    let want = token.expose().as_bytes();
    if bool::from(given.as_bytes().ct_eq(want)) && !want.is_empty() {
        next.run(req).await
    } else {
        Problem::unauthorized().into_response()
    }
}

fn identity(customer: &str, name: &str) -> Result<Identity, Problem> {
    let mut errors = Vec::new();
    if let Err(e) = customer.parse::<felhom_core::spec::CustomerId>() {
        errors.push(FieldError {
            field: "customer".into(),
            rule: e,
        });
    }
    if let Err(e) = name.parse::<felhom_core::spec::Hostname>() {
        errors.push(FieldError {
            field: "name".into(),
            rule: e,
        });
    }
    if errors.is_empty() {
        Ok(Identity {
            customer: customer.into(),
            name: name.into(),
        })
    } else {
        Err(Problem::invalid(
            "invalid guest identity in the path",
            errors,
        ))
    }
}

fn job_brief(a: &Agent, id: &str) -> Option<JobBrief> {
    let row = a.rec.felhom.journal.job(id).ok()?;
    Some(JobBrief {
        id: row.id.clone(),
        kind: kind_str(&row),
        state: row.display_state().to_string(),
    })
}

fn kind_str(row: &JobRow) -> String {
    serde_json::to_value(row.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The guest as the API shows it.
fn view(a: &Agent, id: &Identity, wanted: Option<&Wanted>) -> Guest {
    let obs = a
        .rec
        .observed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .cloned();
    // In memory only: a read never queries the journal per guest.
    let current = a.rec.current_job(id);
    let job = a
        .rec
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .filter(|j| current.as_deref() == Some(j.id.as_str()) || !j.is_final())
        .map(|j| JobBrief {
            id: j.id.clone(),
            kind: j.kind.clone(),
            state: if current.as_deref() == Some(j.id.as_str()) {
                "running".into()
            } else {
                j.state.clone()
            },
        });
    let queued = a.rec.queued(id);
    let state = match (&current, &job, &obs) {
        (None, _, _) if queued => "queued".to_string(),
        (Some(_), Some(j), _) if j.kind == "teardown" => "tearing_down".to_string(),
        (Some(_), _, _) => "building".to_string(),
        (None, Some(j), _) if j.state == "paused" => "paused".to_string(),
        (None, _, Some(o)) if o.status == "missing" => "absent".to_string(),
        (None, _, Some(o)) => o.status.clone(),
        (None, _, None) => "absent".to_string(),
    };
    Guest {
        customer: id.customer.clone(),
        name: id.name.clone(),
        spec: wanted.and_then(|w| serde_json::to_value(&w.spec).ok()),
        source: wanted.map(|w| match w.source {
            Source::File(_) => "file".to_string(),
            Source::Api => "api".to_string(),
        }),
        node: wanted
            .map(|w| w.spec.node.to_string())
            .or_else(|| obs.as_ref().map(|o| o.node.clone())),
        vmid: obs.as_ref().map(|o| o.vmid),
        state,
        ip: obs.as_ref().and_then(|o| o.ip.clone()),
        ssh_fingerprint: obs.as_ref().and_then(|o| o.ssh_fingerprint.clone()),
        drift: obs
            .as_ref()
            .map(|o| {
                o.drift
                    .iter()
                    .map(|d| format!("{}: {} → {}", d.field, d.actual, d.expected))
                    .collect()
            })
            .unwrap_or_default(),
        job,
    }
}

/// Every wanted guest, and every felhom guest PVE has that nobody wants.
#[utoipa::path(get, path = "/v1/guests", security(("bearer" = [])),
    responses((status = 200, description = "the guests", body = GuestList)))]
async fn list_guests(State(a): St) -> Json<GuestList> {
    let wanted = a
        .rec
        .desired
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .all();
    let mut ids: std::collections::BTreeSet<Identity> = wanted.keys().cloned().collect();
    ids.extend(
        a.rec
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned(),
    );
    let guests = ids.iter().map(|id| view(&a, id, wanted.get(id))).collect();
    Json(GuestList { guests })
}

/// One guest: its spec, what PVE shows, its drift and its current job.
#[utoipa::path(get, path = "/v1/guests/{customer}/{name}", security(("bearer" = [])),
    params(("customer" = String, Path, description = "the customer id"), ("name" = String, Path, description = "the guest's name (default: its hostname)")),
    responses((status = 200, description = "the guest", body = Guest),
              (status = 422, description = "not a valid identity", body = Problem, content_type = "application/problem+json")))]
async fn get_guest(State(a): St, Path((customer, name)): Path<(String, String)>) -> Response {
    let id = match identity(&customer, &name) {
        Ok(id) => id,
        Err(p) => return p.into_response(),
    };
    let wanted = a
        .rec
        .desired
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned();
    let known = wanted.is_some()
        || a.rec
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id);
    if !known {
        return Problem::not_found(format!("no guest {id} is wanted or known")).into_response();
    }
    Json(view(&a, &id, wanted.as_ref())).into_response()
}

/// The body as JSON, or the problem: 413 too large, 415 not JSON, 422 not parseable.
fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Value, Problem> {
    let body = body.map_err(|r| {
        let status = r.status();
        Problem::new(
            status,
            "body",
            format!("the request body cannot be read: {}", r.body_text()),
        )
        .fields(vec![FieldError {
            field: "(body)".into(),
            rule: if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("must be at most {BODY_LIMIT} bytes")
            } else {
                "must be readable".into()
            },
        }])
    })?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "media-type",
            "the body must be JSON",
        )
        .fields(vec![FieldError {
            field: "Content-Type".into(),
            rule: format!(
                "must be application/json; got {}",
                felhom_core::spec::show_value(ct)
            ),
        }]));
    }
    serde_json::from_slice(&body).map_err(|e| {
        Problem::invalid(
            "the body is not JSON",
            vec![FieldError {
                field: "(body)".into(),
                rule: format!("must be a JSON object ({e})"),
            }],
        )
    })
}

/// Wait until the run `target` shows its job (202), is queued (202 without a job yet: it
/// waits for a concurrency slot, or for the identity's run going on), or ends (its report).
async fn answer(
    mut rx: tokio::sync::watch::Receiver<SlotState>,
    target: u64,
) -> Result<Option<String>, Option<felhom_core::ops::JobReport>> {
    let wait = async {
        loop {
            {
                let s = rx.borrow_and_update();
                if s.started < target && s.started > s.finished {
                    // Another run of this identity goes on; ours is queued behind it.
                    return Ok(None);
                }
                if s.started >= target {
                    if let Some(j) = &s.job {
                        return Ok(Some(j.clone()));
                    }
                    if s.queued {
                        return Ok(None);
                    }
                }
                if s.finished >= target {
                    return Err(s.last.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err(None);
            }
        }
    };
    tokio::time::timeout(ANSWER_WAIT, wait)
        .await
        .unwrap_or(Err(None))
}

fn ended_problem(report: Option<felhom_core::ops::JobReport>) -> Problem {
    match report.map(|r| r.outcome) {
        Some(Outcome::Refused { error }) => Problem::new(StatusCode::CONFLICT, "refused", error),
        Some(Outcome::Paused { error }) => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "paused", error)
        }
        Some(o) => Problem::internal(format!("the reconcile ended {o:?}")),
        None => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the agent did not start the work in time (stopping, or busy); try again",
        ),
    }
}

fn in_dir_conflict(id: &Identity, path: &std::path::Path) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "owned-by-file",
        format!(
            "guest {id} is wanted by the spec file {} in the agent's spec directory; the file decides (change or remove it there)",
            path.display()
        ),
    )
    .fields(vec![FieldError {
        field: "name".into(),
        rule: "must not be an identity the spec directory holds".into(),
    }])
}

fn stopping() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "stopping",
        "the agent is stopping and takes no new work",
    )
}

/// Want this guest as specified: stored durably, then reconciled. Idempotent.
#[utoipa::path(put, path = "/v1/guests/{customer}/{name}", security(("bearer" = [])),
    params(("customer" = String, Path, description = "the customer id"), ("name" = String, Path, description = "the guest's name (default: its hostname)")),
    request_body(content = Object, content_type = "application/json", description = "a guest spec: the spec file's keys as JSON (`customer` and `name` default to the path's)"),
    responses((status = 200, description = "unchanged: the guest is as specified, nothing was done", body = Guest),
              (status = 202, description = "accepted: the job that converges the guest", body = Guest),
              (status = 409, description = "the spec directory holds this identity, or felhom refuses to change the guest (why)", body = Problem, content_type = "application/problem+json"),
              (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
              (status = 415, description = "body not JSON", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "invalid spec: the fields and rules; nothing was written", body = Problem, content_type = "application/problem+json"),
              (status = 503, description = "stopping, or PVE unreachable", body = Problem, content_type = "application/problem+json")))]
async fn put_guest(
    State(a): St,
    Path((customer, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match put_inner(&a, &customer, &name, &headers, body).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

async fn put_inner(
    a: &Arc<Agent>,
    customer: &str,
    name: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = identity(customer, name)?;
    let mut value = json_body(headers, body)?;
    if let Value::Object(m) = &mut value {
        m.entry("customer")
            .or_insert_with(|| Value::String(id.customer.clone()));
        if !m.contains_key("name") && m.get("hostname").and_then(Value::as_str) != Some(&id.name) {
            m.insert("name".into(), Value::String(id.name.clone()));
        }
    }
    let spec =
        GuestSpec::from_json(&value).map_err(|e| Problem::invalid("invalid guest spec", e.0))?;
    let got = spec.identity_key();
    if got != id {
        let mut errors = Vec::new();
        if got.customer != id.customer {
            errors.push(FieldError {
                field: "customer".into(),
                rule: format!(
                    "must be the path's customer {}; got {}",
                    id.customer, got.customer
                ),
            });
        }
        if got.name != id.name {
            errors.push(FieldError {
                field: "name".into(),
                rule: format!(
                    "must be the path's name {} (name defaults to the hostname); got {}",
                    id.name, got.name
                ),
            });
        }
        return Err(Problem::invalid(
            "the spec names another guest than the path",
            errors,
        ));
    }
    if let Some(Wanted {
        source: Source::File(f),
        ..
    }) = a
        .rec
        .desired
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .dir
        .get(&id)
    {
        return Err(in_dir_conflict(&id, f));
    }
    if !a.rec.accepting() {
        return Err(stopping());
    }
    let errors = a.rec.felhom.validate(std::slice::from_ref(&spec)).await;
    if !errors.is_empty() {
        return Err(Problem::invalid(
            "guest spec does not fit this PVE host",
            errors,
        ));
    }
    let stored = serde_json::to_value(&spec).map_err(Problem::internal)?;
    let changed = a
        .rec
        .felhom
        .journal
        .put_agent_spec(&id.customer, &id.name, &stored)
        .map_err(Problem::internal)?;
    a.rec
        .desired
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .api
        .insert(
            id.clone(),
            Wanted {
                spec,
                source: Source::Api,
            },
        );
    let (rx, target) = match (changed, a.rec.running(&id)) {
        // The same spec while a run goes on: that run answers.
        (false, Some((rx, started))) => (rx, started),
        _ => a.rec.kick(&id, Work::Apply, None),
    };
    let wanted = a
        .rec
        .desired
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned();
    match answer(rx, target).await {
        Ok(job) => {
            let mut g = view(a, &id, wanted.as_ref());
            // The job that answered, even if it has ended since.
            if let Some(b) = job.and_then(|j| job_brief(a, &j)) {
                g.job = Some(b);
            }
            Ok((StatusCode::ACCEPTED, Json(g)).into_response())
        }
        Err(Some(r)) if matches!(r.outcome, Outcome::Unchanged | Outcome::Succeeded) => {
            Ok((StatusCode::OK, Json(view(a, &id, wanted.as_ref()))).into_response())
        }
        Err(r) => Err(ended_problem(r)),
    }
}

/// No longer want this guest: tear it down (202 with the job), or 200 if already absent.
#[utoipa::path(delete, path = "/v1/guests/{customer}/{name}", security(("bearer" = [])),
    params(("customer" = String, Path, description = "the customer id"), ("name" = String, Path, description = "the guest's name")),
    responses((status = 200, description = "absent: nothing to do", body = Removal),
              (status = 202, description = "the teardown job", body = Removal),
              (status = 409, description = "the spec directory holds this identity, or the teardown is refused (why)", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "not a valid identity", body = Problem, content_type = "application/problem+json"),
              (status = 503, description = "stopping, or PVE unreachable", body = Problem, content_type = "application/problem+json")))]
async fn delete_guest(State(a): St, Path((customer, name)): Path<(String, String)>) -> Response {
    let id = match identity(&customer, &name) {
        Ok(id) => id,
        Err(p) => return p.into_response(),
    };
    if let Some(Wanted {
        source: Source::File(f),
        ..
    }) = a
        .rec
        .desired
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .dir
        .get(&id)
    {
        return in_dir_conflict(&id, f).into_response();
    }
    if !a.rec.accepting() {
        return stopping().into_response();
    }
    if let Err(e) = a
        .rec
        .felhom
        .journal
        .delete_agent_spec(&id.customer, &id.name)
    {
        return Problem::internal(e).into_response();
    }
    a.rec
        .desired
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .api
        .remove(&id);
    let (rx, target) = a.rec.kick(&id, Work::Teardown, None);
    let removal = |state: &str, job: Option<JobBrief>| Removal {
        customer: id.customer.clone(),
        name: id.name.clone(),
        state: state.into(),
        job,
    };
    match answer(rx, target).await {
        Ok(job) => (
            StatusCode::ACCEPTED,
            Json(removal("tearing_down", job.and_then(|j| job_brief(&a, &j)))),
        )
            .into_response(),
        Err(Some(r)) if r.outcome == Outcome::Absent => {
            (StatusCode::OK, Json(removal("absent", None))).into_response()
        }
        Err(Some(r)) if r.outcome == Outcome::Succeeded => (
            StatusCode::OK,
            Json(removal("absent", job_brief(&a, &r.job))),
        )
            .into_response(),
        Err(r) => ended_problem(r).into_response(),
    }
}

/// What `apply` would decide for these specs; reads only, zero writes.
#[utoipa::path(post, path = "/v1/plan", security(("bearer" = [])),
    request_body(content = PlanRequest, content_type = "application/json"),
    responses((status = 200, description = "the decisions", body = Plan),
              (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
              (status = 415, description = "body not JSON", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "invalid specs: the fields and rules", body = Problem, content_type = "application/problem+json"),
              (status = 503, description = "PVE unreachable", body = Problem, content_type = "application/problem+json")))]
async fn plan(State(a): St, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let value = match json_body(&headers, body) {
        Ok(v) => v,
        Err(p) => return p.into_response(),
    };
    let Some(items) = value.get("specs").and_then(Value::as_array) else {
        return Problem::invalid(
            "invalid plan request",
            vec![FieldError {
                field: "specs".into(),
                rule: "must be an array of guest specs".into(),
            }],
        )
        .into_response();
    };
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match GuestSpec::from_json(item) {
            Ok(s) => specs.push(s),
            Err(e) => errors.extend(e.0.into_iter().map(|f| FieldError {
                field: format!("specs[{i}].{}", f.field),
                rule: f.rule,
            })),
        }
    }
    if errors.is_empty() {
        errors = a.rec.felhom.validate(&specs).await;
    }
    if !errors.is_empty() {
        return Problem::invalid("invalid guest spec", errors).into_response();
    }
    match a.rec.felhom.plan_apply(&specs, false).await {
        Ok(decisions) => Json(Plan {
            decisions: decisions
                .into_iter()
                .map(|(id, d)| PlanDecision {
                    customer: id.customer,
                    name: id.name,
                    decision: d.name().to_string(),
                    vmid: match &d {
                        felhom_core::apply::Decision::Create { vmid, .. } => *vmid,
                        felhom_core::apply::Decision::Unchanged { vmid }
                        | felhom_core::apply::Decision::Repair { vmid, .. }
                        | felhom_core::apply::Decision::Prune { vmid } => Some(*vmid),
                        felhom_core::apply::Decision::Continue { vmid, .. }
                        | felhom_core::apply::Decision::Refuse { vmid, .. } => *vmid,
                    },
                    detail: d.describe(),
                })
                .collect(),
        })
        .into_response(),
        Err(e) => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "pve", e.to_string()).into_response()
        }
    }
}

fn job_of(row: JobRow) -> Job {
    Job {
        kind: kind_str(&row),
        state: row.display_state().to_string(),
        id: row.id,
        customer: row.customer,
        name: row.name,
        vmid: row.vmid,
        node: row.node,
        error: row.error,
        created_at: rfc3339_ms(row.created_at),
        ended_at: row.ended_at.map(rfc3339_ms),
    }
}

/// The journal's jobs, newest first (at most 1000).
#[utoipa::path(get, path = "/v1/jobs", security(("bearer" = [])),
    responses((status = 200, description = "the jobs", body = JobList)))]
async fn list_jobs(State(a): St) -> Response {
    match a.rec.felhom.journal.jobs() {
        Ok(rows) => Json(JobList {
            jobs: rows.into_iter().take(1000).map(job_of).collect(),
        })
        .into_response(),
        Err(e) => Problem::internal(e).into_response(),
    }
}

/// One job.
#[utoipa::path(get, path = "/v1/jobs/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "the job id")),
    responses((status = 200, description = "the job", body = Job)))]
async fn get_job(State(a): St, Path(id): Path<String>) -> Response {
    match a.rec.felhom.journal.job(&id) {
        Ok(row) => Json(job_of(row)).into_response(),
        Err(felhom_core::journal::JournalError::NoSuchJob(_)) => {
            Problem::not_found(format!("no job {}", felhom_core::spec::show_value(&id)))
                .into_response()
        }
        Err(e) => Problem::internal(e).into_response(),
    }
}

fn sse_event(e: &AgentEvent) -> Event {
    Event::default()
        .event(e.event)
        .data(serde_json::to_string(e).unwrap_or_default())
}

/// One job's events: its history first, then live, ending after its outcome.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", security(("bearer" = [])),
    params(("id" = String, Path, description = "the job id")),
    responses((status = 200, description = "Server-Sent Events: `event: step|outcome`, `data:` one AgentEvent", body = AgentEvent, content_type = "text/event-stream")))]
async fn job_events(State(a): St, Path(id): Path<String>) -> Response {
    let row = match a.rec.felhom.journal.job(&id) {
        Ok(r) => r,
        Err(felhom_core::journal::JournalError::NoSuchJob(_)) => {
            return Problem::not_found(format!("no job {}", felhom_core::spec::show_value(&id)))
                .into_response()
        }
        Err(e) => return Problem::internal(e).into_response(),
    };
    let mut rx = a.rec.bus.subscribe();
    let (history, ended) = a.rec.bus.history(&row);
    let last = history.iter().map(|e| e.seq).max().unwrap_or(0);
    let stream = async_stream(history, ended, move |tx| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.job == id && e.seq > last => {
                    let end = e.event == "outcome";
                    if tx.send(e).await.is_err() || end {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Every job's events, live.
#[utoipa::path(get, path = "/v1/events", security(("bearer" = [])),
    responses((status = 200, description = "Server-Sent Events of all jobs: `event: step|outcome`, `data:` one AgentEvent", body = AgentEvent, content_type = "text/event-stream")))]
async fn all_events(State(a): St) -> Response {
    let mut rx = a.rec.bus.subscribe();
    let stream = async_stream(Vec::new(), false, move |tx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "an event subscriber lagged");
                }
                Err(_) => return,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `first` events, then (unless `ended`) what `feed` sends, as an SSE stream.
fn async_stream<F, Fut>(
    first: Vec<Arc<AgentEvent>>,
    ended: bool,
    feed: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Arc<AgentEvent>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Arc<AgentEvent>>(256);
    if !ended {
        tokio::spawn(feed(tx));
    }
    let live =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    futures::StreamExt::map(
        futures::StreamExt::chain(futures::stream::iter(first), live),
        |e| Ok(sse_event(&e)),
    )
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/v1/openapi.json", security(("bearer" = [])),
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
async fn openapi_json(axum::Extension(doc): axum::Extension<Arc<Value>>) -> Json<Value> {
    Json((*doc).clone())
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics() -> Response {
    super::metrics::handler().await
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz",
    responses((status = 200, description = "alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Ready: the journal is writable and PVE answers with the token.
#[utoipa::path(get, path = "/readyz",
    responses((status = 200, description = "ready", body = Health),
              (status = 503, description = "not ready: what is wrong", body = Problem, content_type = "application/problem+json")))]
async fn readyz(State(a): St) -> Response {
    let mut errors = Vec::new();
    if let Err(e) = a.rec.felhom.journal.writable() {
        errors.push(FieldError {
            field: "journal".into(),
            rule: format!("must be writable: {e}"),
        });
    }
    if let Err(e) = a.rec.felhom.client.version().await {
        errors.push(FieldError {
            field: "pve".into(),
            rule: format!("must answer with the token: {e}"),
        });
    }
    if !a.rec.accepting() {
        errors.push(FieldError {
            field: "agent".into(),
            rule: "is stopping".into(),
        });
    }
    if errors.is_empty() {
        Json(Health {
            status: "ready".into(),
        })
        .into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "the agent is not ready",
        )
        .fields(errors)
        .into_response()
    }
}

/// The status page (static HTML shell; it reads the API with the token).
#[utoipa::path(get, path = "/",
    responses((status = 200, description = "the status page", body = String, content_type = "text/html")))]
async fn index() -> Response {
    super::page::index().await
}
