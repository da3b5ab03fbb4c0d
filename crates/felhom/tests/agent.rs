//! `felhom agent` end to end (issue 18): the real binary serving its API on loopback, driving
//! a spawned simulator, and a client that speaks only HTTP to it. Every response a test
//! receives is checked against the agent's own OpenAPI document ([`Api::check`]).
//!
//! | test | what the agent must do |
//! |---|---|
//! | `five_guests_put_and_followed_to_success` | 5 PUTs → 202 with jobs; each job's SSE stream ends `succeeded`; again → 200, zero writes; plan, jobs |
//! | `sigkill_mid_run_then_restart_converges` | SIGKILL while 5 guests build; the restarted agent resumes; one guest per identity |
//! | `fifty_concurrent_puts_make_one_guest` | 50 PUTs of one guest at once: one job, one guest |
//! | `delete_tears_down_then_is_absent` | DELETE → 202, gone; again → 200 |
//! | `errors_are_problems_and_bad_input_writes_nothing` | 401, 404, 405, 413, 415, 422 (every hostile spec: the field; zero writes) |
//! | `a_spec_file_is_reconciled_and_wins_over_the_api` | a file dropped in the directory → a guest, no API call; PUT/DELETE of it → 409 |
//! | `drift_is_repaired_within_one_interval` | a guest stopped and its memory changed outside felhom → running, memory back |
//! | `lifecycle_sighup_sigterm_and_readiness` | READY=1 on NOTIFY_SOCKET, /healthz, /readyz; SIGHUP reloads the token and the spec dir; SIGTERM → exit 0 within 10 s |
//! | `tls_serves_https_with_the_configured_certificate` | agent.tls_cert/tls_key: HTTPS on the configured certificate, token still required |
//! | `the_status_page_shows_the_agents_guests_and_follows_a_job` | `/` in headless chromium: the guest the agent built (VMID, state, key), and a job started while the page is open followed step by step to its outcome |
//! | `bad_settings_exit_2` | plain HTTP on a non-loopback address, a token readable by others |

mod browser;
mod common;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "agent-test-token-0123456789";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// A running `felhom agent` against `sim`.
struct Agent {
    child: Option<Child>,
    config: PathBuf,
    specs_dir: PathBuf,
    url: String,
    stderr_log: PathBuf,
}

impl Agent {
    fn start(sim: &Sim, interval: u64) -> Agent {
        Agent::start_env(sim, interval, &[])
    }

    fn start_env(sim: &Sim, interval: u64, env: &[(&str, &str)]) -> Agent {
        let dir = sim.dir.path();
        let specs_dir = dir.join("guests.d");
        std::fs::create_dir_all(&specs_dir).unwrap();
        let token = dir.join("api.token");
        if !token.exists() {
            std::fs::write(&token, TOKEN).unwrap();
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut t: toml::Table = std::fs::read_to_string(&sim.config)
            .unwrap()
            .parse()
            .unwrap();
        let mut agent = toml::Table::new();
        agent.insert("listen".into(), "127.0.0.1:0".into());
        agent.insert("specs_dir".into(), specs_dir.display().to_string().into());
        agent.insert("interval_secs".into(), (interval as i64).into());
        agent.insert("token_file".into(), token.display().to_string().into());
        agent.insert("debounce_ms".into(), 100.into());
        t.insert("agent".into(), toml::Value::Table(agent));
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml::to_string(&t).unwrap()).unwrap();
        let mut a = Agent {
            child: None,
            config,
            specs_dir,
            url: String::new(),
            stderr_log: dir.join("agent.log"),
        };
        a.spawn(env);
        a
    }

    fn spawn(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["agent", "--log-format", "json"])
            .env_remove("FELHOM_CRASH_AT")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn felhom agent");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "agent's first stdout line is not JSON ({e}): {line:?}\n{}",
                self.log()
            )
        });
        self.url = ready["url"].as_str().unwrap().to_string();
        self.child = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions; the child is ours.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the agent to exit; its status and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (Option<std::process::ExitStatus>, Duration) {
        let started = Instant::now();
        let c = self.child.as_mut().unwrap();
        while started.elapsed() < limit {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return (Some(st), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (None, started.elapsed())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP answer.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

/// A client of the agent's API that checks every answer against the OpenAPI document.
#[derive(Clone)]
struct Api {
    url: String,
    http: reqwest::Client,
    doc: Arc<Value>,
    checked: Arc<Mutex<usize>>,
}

impl Api {
    async fn new(url: &str) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let doc: Value = http
            .get(format!("{url}/v1/openapi.json"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["openapi"], "3.1.0", "{doc}");
        Api {
            url: url.to_string(),
            http,
            doc: Arc::new(doc),
            checked: Default::default(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Answer {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.finish(method, path, req).await
    }

    async fn finish(&self, method: &str, path: &str, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let a = Answer {
            status,
            content_type,
            body,
        };
        self.check(method, path, &a);
        a
    }

    async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None, Some(TOKEN)).await
    }
    async fn put(&self, path: &str, body: &Value) -> Answer {
        self.call("PUT", path, Some(body), Some(TOKEN)).await
    }
    async fn delete(&self, path: &str) -> Answer {
        self.call("DELETE", path, None, Some(TOKEN)).await
    }

    /// The document's operation for `method path` (templates matched segment by segment).
    fn operation(&self, method: &str, path: &str) -> Option<&Value> {
        let path = path.split('?').next().unwrap();
        let segs: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()?
            .iter()
            .find_map(|(tpl, item)| {
                let t: Vec<&str> = tpl.split('/').collect();
                let fits = t.len() == segs.len()
                    && t.iter()
                        .zip(&segs)
                        .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b);
                fits.then(|| &item[method.to_ascii_lowercase()])
                    .filter(|op| !op.is_null())
            })
    }

    /// Validate `value` against `schema` (a piece of the document; `$ref`s resolve into it).
    fn validate(&self, schema: &Value, value: &Value, what: &str) {
        let mut root = schema.clone();
        if let Value::Object(m) = &mut root {
            m.insert("components".into(), self.doc["components"].clone());
            m.insert(
                "$schema".into(),
                "https://json-schema.org/draft/2020-12/schema".into(),
            );
        }
        let v = jsonschema::validator_for(&root).unwrap_or_else(|e| {
            panic!("{what}: the document's schema does not compile: {e}\n{schema}")
        });
        let errors: Vec<String> = v
            .iter_errors(value)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the answer does not satisfy the OpenAPI document: {errors:?}\nbody: {value}\nschema: {schema}"
        );
        *self.checked.lock().unwrap() += 1;
    }

    /// Every answer against the document: a documented status for the operation, its content
    /// type, and its body against its schema. A path the document does not have (404) must
    /// still be a Problem.
    fn check(&self, method: &str, path: &str, a: &Answer) {
        let what = format!("{method} {path} → {}", a.status);
        let Some(op) = self.operation(method, path) else {
            // 405 on a documented path for another method, or 404 on an unknown path.
            assert!(
                a.status == 404 || a.status == 405,
                "{what}: not in the document"
            );
            assert_eq!(a.content_type, "application/problem+json", "{what}");
            self.validate(
                &json!({"$ref": "#/components/schemas/Problem"}),
                &a.body,
                &what,
            );
            return;
        };
        let resp = &op["responses"][a.status.to_string()];
        assert!(
            resp.is_object(),
            "{what}: status not documented for this operation: {}",
            op["responses"]
        );
        let mime = a.content_type.split(';').next().unwrap().trim();
        let content = &resp["content"][mime];
        assert!(
            content.is_object(),
            "{what}: content type {mime} not documented: {}",
            resp["content"]
        );
        if a.status >= 400 {
            assert_eq!(mime, "application/problem+json", "{what}");
        }
        if mime.ends_with("json") {
            self.validate(&content["schema"], &a.body, &what);
        }
    }

    /// Follow an SSE stream until `until` says stop (or `limit` passes); every event's data
    /// checked against the document's event schema. Returns (event name, data) pairs.
    async fn follow(
        &self,
        path: &str,
        limit: Duration,
        until: impl Fn(&str, &Value) -> bool,
    ) -> Vec<(String, Value)> {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .timeout(limit + Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let op = self.operation("GET", path).expect("SSE path documented");
        let schema = op["responses"]["200"]["content"]["text/event-stream"]["schema"].clone();
        assert!(schema.is_object(), "{path}: event schema documented");
        let mut out = Vec::new();
        let mut buf = String::new();
        let (mut event, mut data) = (String::new(), String::new());
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Ok(Ok(Some(c))) => c,
                _ => return out,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find('\n') {
                let line = buf[..i].trim_end_matches('\r').to_string();
                buf.drain(..=i);
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                } else if line.is_empty() && !data.is_empty() {
                    let v: Value = serde_json::from_str(&data).unwrap();
                    self.validate(&schema, &v, &format!("SSE {path}"));
                    let stop = until(&event, &v);
                    out.push((std::mem::take(&mut event), v));
                    data.clear();
                    if stop {
                        return out;
                    }
                }
            }
        }
    }

    /// Follow one job's events to its outcome.
    async fn outcome(&self, job: &str) -> (Vec<(String, Value)>, String) {
        let ev = self
            .follow(
                &format!("/v1/jobs/{job}/events"),
                Duration::from_secs(120),
                |e, _| e == "outcome",
            )
            .await;
        let outcome = ev
            .iter()
            .find(|(e, _)| e == "outcome")
            .map(|(_, d)| d["outcome"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| "(no outcome)".into());
        (ev, outcome)
    }
}

/// A guest spec as JSON (the spec file's keys).
fn spec_json(customer: &str, vmid: &str) -> Value {
    toml_to_json(&spec(customer, vmid, ""))
}

fn toml_to_json(text: &str) -> Value {
    let t: toml::Table = text.parse().unwrap();
    serde_json::to_value(t).unwrap()
}

/// The simulator's guests, by hostname: how many each.
fn guests_by_hostname(sim: &Sim) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for g in sim.state()["guests"].as_array().unwrap() {
        let h = g["config"]["hostname"]
            .as_str()
            .or(g["hostname"].as_str())
            .unwrap_or("?")
            .to_string();
        *out.entry(h).or_insert(0) += 1;
    }
    out
}

/// Blocking calls (the simulator's state) from inside the test's runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Poll `f` until it is true or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn five_guests_put_and_followed_to_success() {
    let sim = Sim::start();
    let agent = Agent::start(&sim, 600);
    let rt = rt();
    rt.block_on(async {
        let api = Api::new(&agent.url).await;
        let mut jobs = Vec::new();
        for i in 0..5 {
            let c = format!("cust{i}");
            let a = api
                .put(&format!("/v1/guests/{c}/{c}-app"), &spec_json(&c, "\"auto\""))
                .await;
            assert_eq!(a.status, 202, "{:?}\n{}", a.body, agent.log());
            let job = a.body["job"]["id"].as_str().expect("202 names the job").to_string();
            // Building (a fast job may have ended by the time the answer is made).
            assert!(
                a.body["state"] == "building" || a.body["state"] == "running",
                "{:?}",
                a.body
            );
            jobs.push(job);
        }
        let followers: Vec<_> = jobs
            .iter()
            .map(|j| {
                let api = api.clone();
                let j = j.clone();
                tokio::spawn(async move { api.outcome(&j).await })
            })
            .collect();
        for (f, job) in followers.into_iter().zip(&jobs) {
            let (events, outcome) = f.await.unwrap();
            assert_eq!(outcome, "succeeded", "{job}: {events:?}\n{}", agent.log());
            let steps: Vec<&str> = events
                .iter()
                .filter(|(e, d)| e == "step" && d["phase"] == "done")
                .map(|(_, d)| d["step"].as_str().unwrap())
                .collect();
            assert!(steps.contains(&"restore") && steps.contains(&"ssh"), "{steps:?}");
            assert!(events.iter().all(|(_, d)| d["job"] == job.as_str()));
            assert!(events.iter().any(|(_, d)| d["vmid"].is_u64()), "events carry the VMID");
        }
        // A late subscriber gets the whole history, ending in the outcome.
        let (late, outcome) = api.outcome(&jobs[0]).await;
        assert_eq!(outcome, "succeeded");
        assert!(late.len() > 5, "{late:?}");

        let list = api.get("/v1/guests").await;
        assert_eq!(list.status, 200);
        let guests = list.body["guests"].as_array().unwrap();
        assert_eq!(guests.len(), 5, "{guests:?}");
        for g in guests {
            assert_eq!(g["state"], "running", "{g}");
            assert!(g["vmid"].is_u64() && g["ip"].is_string() && g["ssh_fingerprint"].is_string(), "{g}");
            assert_eq!(g["source"], "api");
        }
        let one = api.get("/v1/guests/cust0/cust0-app").await;
        assert_eq!(one.status, 200);
        assert_eq!(one.body["customer"], "cust0");

        // The same spec again: 200 unchanged, zero writes.
        let before = blocking(|| sim.write_count());
        let again = api
            .put("/v1/guests/cust0/cust0-app", &spec_json("cust0", "\"auto\""))
            .await;
        assert_eq!(again.status, 200, "{:?}", again.body);
        assert_eq!(blocking(|| sim.write_count()), before, "an unchanged PUT wrote to PVE");

        // plan: the decisions, zero writes.
        let plan = api
            .call(
                "POST",
                "/v1/plan",
                Some(&json!({ "specs": [spec_json("cust0", "\"auto\""), spec_json("newcust", "\"auto\"")] })),
                Some(TOKEN),
            )
            .await;
        assert_eq!(plan.status, 200, "{:?}", plan.body);
        let d: Vec<&str> = plan.body["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["decision"].as_str().unwrap())
            .collect();
        assert_eq!(d, vec!["unchanged", "create"]);
        assert_eq!(blocking(|| sim.write_count()), before, "plan wrote to PVE");

        let list = api.get("/v1/jobs").await;
        assert_eq!(list.status, 200);
        assert!(list.body["jobs"].as_array().unwrap().len() >= 5);
        let one = api.get(&format!("/v1/jobs/{}", jobs[0])).await;
        assert_eq!(one.status, 200);
        assert_eq!(one.body["state"], "succeeded");
        assert!(*api.checked.lock().unwrap() > 20);
    });
    assert_eq!(guests_by_hostname(&sim).len(), 5);
    assert_clean_invariants(&sim.state());
    // Logs: JSON lines; every job event names the job, the guest identity and (once it has
    // one) the VMID; never a secret.
    let log = agent.log();
    let events: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["job"].is_string() && v["phase"].is_string())
        .collect();
    assert!(events.len() > 5 * 10, "{log}");
    for e in &events {
        assert!(e["customer"].is_string() && e["name"].is_string(), "{e}");
        if e["step"] == "ssh" {
            assert!(e["vmid"].is_u64(), "{e}");
        }
    }
    let pve_secret = std::fs::read_to_string(sim.state_dir.join("felhom-agent.token")).unwrap();
    assert!(
        !log.contains(pve_secret.trim()) && !log.contains(TOKEN),
        "a secret in the log"
    );
}

/// The simulator's guest with `hostname`, if exactly one.
fn sim_guest(sim: &Sim, hostname: &str) -> Option<Value> {
    let state = sim.state();
    let mine: Vec<Value> = state["guests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["config"]["hostname"] == hostname)
        .cloned()
        .collect();
    assert!(mine.len() <= 1, "{} guests named {hostname}", mine.len());
    mine.into_iter().next()
}

/// Until every guest the agent wants is running with no job going on.
async fn all_running(api: &Api, n: usize, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let list = api.get("/v1/guests").await;
        let guests = list.body["guests"].as_array().cloned().unwrap_or_default();
        if guests.len() == n && guests.iter().all(|g| g["state"] == "running") {
            return list.body;
        }
        assert!(Instant::now() < deadline, "not all running: {}", list.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn sigkill_mid_run_then_restart_converges() {
    // Slower modelled time, so the kill lands mid-job.
    let sim = Sim::with("", 0.2);
    let mut agent = Agent::start(&sim, 600);
    let rt = rt();
    rt.block_on(async {
        let api = Api::new(&agent.url).await;
        for i in 0..5 {
            let c = format!("kill{i}");
            let a = api
                .put(
                    &format!("/v1/guests/{c}/{c}-app"),
                    &spec_json(&c, "\"auto\""),
                )
                .await;
            assert_eq!(a.status, 202, "{:?}", a.body);
        }
        // Kill once some step of some job is done (the jobs are under way, none finished).
        let ev = api
            .follow("/v1/events", Duration::from_secs(60), |_, d| {
                d["step"] == "restore" && d["phase"] == "done"
            })
            .await;
        assert!(
            !ev.iter().any(|(e, _)| e == "outcome"),
            "a job finished before the kill: {ev:?}"
        );
    });
    agent.signal(libc::SIGKILL);
    let (st, _) = agent.wait_exit(Duration::from_secs(10));
    assert!(st.is_some(), "the agent survived SIGKILL");
    agent.spawn(&[]);
    rt.block_on(async {
        let api = Api::new(&agent.url).await;
        all_running(&api, 5, Duration::from_secs(180)).await;
        let jobs = api.get("/v1/jobs").await;
        for j in jobs.body["jobs"].as_array().unwrap() {
            assert_eq!(
                j["state"],
                "succeeded",
                "every job finished after the restart: {j}\n{}",
                agent.log()
            );
        }
    });
    let by = guests_by_hostname(&sim);
    assert_eq!(by.len(), 5, "{by:?}");
    assert!(
        by.values().all(|n| *n == 1),
        "one guest per identity: {by:?}"
    );
    assert_clean_invariants(&sim.state());
}

#[test]
fn fifty_concurrent_puts_make_one_guest() {
    let sim = Sim::start();
    let agent = Agent::start(&sim, 600);
    let rt = rt();
    rt.block_on(async {
        let api = Api::new(&agent.url).await;
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let api = api.clone();
                tokio::spawn(async move {
                    api.put(
                        "/v1/guests/burst/burst-app",
                        &spec_json("burst", "\"auto\""),
                    )
                    .await
                })
            })
            .collect();
        let mut jobs = std::collections::BTreeSet::new();
        for t in tasks {
            let a = t.await.unwrap();
            assert!(
                a.status == 202 || a.status == 200,
                "{} {:?}",
                a.status,
                a.body
            );
            if a.status == 202 {
                jobs.insert(a.body["job"]["id"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(jobs.len(), 1, "one job for 50 PUTs: {jobs:?}");
        let (_, outcome) = api.outcome(jobs.iter().next().unwrap()).await;
        assert_eq!(outcome, "succeeded");
    });
    assert_eq!(guests_by_hostname(&sim).get("burst-app"), Some(&1));
    assert_clean_invariants(&sim.state());
}

#[test]
fn delete_tears_down_then_is_absent() {
    let sim = Sim::start();
    let agent = Agent::start(&sim, 600);
    let rt = rt();
    rt.block_on(async {
        let api = Api::new(&agent.url).await;
        let a = api
            .put("/v1/guests/gone/gone-app", &spec_json("gone", "\"auto\""))
            .await;
        assert_eq!(a.status, 202);
        let (_, outcome) = api.outcome(a.body["job"]["id"].as_str().unwrap()).await;
        assert_eq!(outcome, "succeeded");
        assert!(blocking(|| sim_guest(&sim, "gone-app")).is_some());

        let d = api.delete("/v1/guests/gone/gone-app").await;
        assert_eq!(d.status, 202, "{:?}", d.body);
        assert_eq!(d.body["job"]["kind"], "teardown");
        let (_, outcome) = api.outcome(d.body["job"]["id"].as_str().unwrap()).await;
        assert_eq!(outcome, "succeeded");
        assert!(
            blocking(|| sim_guest(&sim, "gone-app")).is_none(),
            "the guest is gone"
        );
        let g = api.get("/v1/guests/gone/gone-app").await;
        assert_eq!(g.status, 404, "{:?}", g.body);

        let again = api.delete("/v1/guests/gone/gone-app").await;
        assert_eq!(again.status, 200, "{:?}", again.body);
        assert_eq!(again.body["state"], "absent");
        let never = api.delete("/v1/guests/never/never-app").await;
        assert_eq!(never.status, 200, "{:?}", never.body);
    });
    assert_clean_invariants(&sim.state());
}

#[test]
fn errors_are_problems_and_bad_input_writes_nothing() {
    let sim = Sim::start();
    let agent = Agent::start(&sim, 600);
    let rt = rt();
    rt.block_on(async {
        let api = Api::new(&agent.url).await;
        let before = blocking(|| sim.write_count());

        // No token, a wrong token: 401 on every /v1 route and /metrics.
        for (m, p) in [
            ("GET", "/v1/guests"),
            ("PUT", "/v1/guests/a/b"),
            ("GET", "/v1/events"),
            ("GET", "/metrics"),
            ("GET", "/v1/openapi.json"),
        ] {
            for token in [None, Some("wrong-token-0123456789")] {
                let a = api.call(m, p, None, token).await;
                assert_eq!(a.status, 401, "{m} {p}");
                assert_eq!(a.body["status"], 401);
            }
        }
        // Unknown path 404, wrong method 405, both problems.
        let a = api.get("/v1/nothing-here").await;
        assert_eq!(a.status, 404);
        let a = api
            .call("POST", "/v1/guests", Some(&json!({})), Some(TOKEN))
            .await;
        assert_eq!(a.status, 405);
        // Too large: 413; not JSON: 415; not parseable: 422.
        let big = json!({ "customer": "x".repeat(100_000) });
        let a = api.put("/v1/guests/big/big-app", &big).await;
        assert_eq!(a.status, 413, "{:?}", a.body);
        let req = api
            .http
            .put(format!("{}/v1/guests/acme/acme-app", api.url))
            .bearer_auth(TOKEN)
            .header("content-type", "text/plain")
            .body("customer = \"acme\"");
        let a = api.finish("PUT", "/v1/guests/acme/acme-app", req).await;
        assert_eq!(a.status, 415, "{:?}", a.body);
        let req = api
            .http
            .put(format!("{}/v1/guests/acme/acme-app", api.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{not json");
        let a = api.finish("PUT", "/v1/guests/acme/acme-app", req).await;
        assert_eq!(a.status, 422, "{:?}", a.body);
        assert_eq!(a.body["errors"][0]["field"], "(body)");
        // The body names another guest than the path.
        let mut named = spec_json("acme", "\"auto\"");
        named["name"] = json!("web1");
        let a = api.put("/v1/guests/acme/other", &named).await;
        assert_eq!(a.status, 422);
        assert_eq!(a.body["errors"][0]["field"], "name", "{:?}", a.body);

        // Every hostile spec the CLI refuses: 422 naming the field.
        let mut tried = 0;
        for h in felhom_core::adversarial::hostile_specs(GOLDEN) {
            if h.text.contains("[[guest]]") {
                continue;
            }
            let Ok(t) = h.text.parse::<toml::Table>() else {
                continue;
            };
            let body = serde_json::to_value(&t).unwrap();
            // The path carries the body's identity when it is a valid one, so the spec's
            // own field is what the answer must name.
            let customer = body["customer"]
                .as_str()
                .filter(|s| s.parse::<felhom_core::spec::CustomerId>().is_ok())
                .unwrap_or("acme");
            let name = body["name"]
                .as_str()
                .or(body["hostname"].as_str())
                .filter(|s| s.parse::<felhom_core::spec::Hostname>().is_ok())
                .unwrap_or("acme-app");
            let a = api
                .put(&format!("/v1/guests/{customer}/{name}"), &body)
                .await;
            assert_eq!(a.status, 422, "{}: {:?}", h.name, a.body);
            assert!(
                a.body.to_string().contains(h.field),
                "{}: the problem does not name '{}': {}",
                h.name,
                h.field,
                a.body
            );
            tried += 1;
        }
        assert!(tried >= 20, "only {tried} hostile specs tried");
        let plan = api
            .call(
                "POST",
                "/v1/plan",
                Some(&json!({ "specs": [{ "customer": "BAD" }] })),
                Some(TOKEN),
            )
            .await;
        assert_eq!(plan.status, 422);
        assert!(
            plan.body.to_string().contains("specs[0].customer"),
            "{}",
            plan.body
        );
        assert_eq!(
            blocking(|| sim.write_count()),
            before,
            "bad input wrote to PVE"
        );
        let list = api.get("/v1/guests").await;
        assert_eq!(list.body["guests"], json!([]), "bad input stored a guest");
    });
}

#[test]
fn a_spec_file_is_reconciled_and_wins_over_the_api() {
    let sim = Sim::start();
    let agent = Agent::start(&sim, 600);
    let rt = rt();
    rt.block_on(async {
        let api = Api::new(&agent.url).await;
        std::fs::write(
            agent.specs_dir.join("filed.toml"),
            spec("filed", "\"auto\"", ""),
        )
        .unwrap();
        let body = all_running(&api, 1, Duration::from_secs(60)).await;
        assert_eq!(body["guests"][0]["source"], "file");
        assert_eq!(body["guests"][0]["name"], "filed-app");
        let a = api
            .put(
                "/v1/guests/filed/filed-app",
                &spec_json("filed", "\"auto\""),
            )
            .await;
        assert_eq!(a.status, 409, "{:?}", a.body);
        let d = api.delete("/v1/guests/filed/filed-app").await;
        assert_eq!(d.status, 409, "{:?}", d.body);
    });
    assert!(sim_guest(&sim, "filed-app").is_some());
    assert!(!agent.log().contains(TOKEN), "the API token is in the log");
}

/// A client with an administrator's token: someone other than felhom changing PVE.
fn admin(sim: &Sim) -> pve_api::PveClient {
    sim.admin(&[
        "VM.Audit",
        "VM.PowerMgmt",
        "VM.Config.Memory",
        "VM.Config.Options",
        "Sys.Audit",
    ])
}

#[test]
fn drift_is_repaired_within_one_interval() {
    let sim = Sim::start();
    let interval = 2;
    let agent = Agent::start(&sim, interval);
    let rt = rt();
    let vmid = rt.block_on(async {
        let api = Api::new(&agent.url).await;
        let a = api
            .put(
                "/v1/guests/drift/drift-app",
                &spec_json("drift", "1950")
                    .as_object()
                    .map(|m| {
                        let mut m = m.clone();
                        m.insert("memory".into(), json!(1024));
                        Value::Object(m)
                    })
                    .unwrap(),
            )
            .await;
        assert_eq!(a.status, 202, "{:?}", a.body);
        let (_, outcome) = api.outcome(a.body["job"]["id"].as_str().unwrap()).await;
        assert_eq!(outcome, "succeeded");
        1950u32
    });
    // Outside felhom: stop the guest and change its memory.
    let adm = admin(&sim);
    let v = pve_api::Vmid::try_from(vmid).unwrap();
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    local.block_on(async {
        let upid = adm.lxc_stop("pve", v).await.unwrap();
        adm.wait_task(&upid, &pve_api::WaitOptions::default())
            .await
            .unwrap();
        adm.lxc_update_config("pve", v, &[("memory".to_string(), "512".to_string())], None)
            .await
            .unwrap();
    });
    let g = sim_guest(&sim, "drift-app").unwrap();
    assert_eq!(g["status"], "stopped");
    assert_eq!(g["config"]["memory"].to_string().trim_matches('"'), "512");
    let started = Instant::now();
    let repaired = eventually(Duration::from_secs(interval * 2 + 20), || {
        let g = sim_guest(&sim, "drift-app").unwrap();
        g["status"] == "running" && g["config"]["memory"].to_string().trim_matches('"') == "1024"
    });
    assert!(
        repaired,
        "drift not repaired: {}\n{}",
        sim_guest(&sim, "drift-app").unwrap(),
        agent.log()
    );
    eprintln!(
        "drift repaired {:.1}s after it was made (interval {interval}s)",
        started.elapsed().as_secs_f64()
    );
    let log = agent.log();
    assert!(
        log.contains("\"kind\":\"repair\""),
        "a repair job ran: {log}"
    );
}

#[test]
fn lifecycle_sighup_sigterm_and_readiness() {
    use std::os::unix::net::UnixDatagram;
    let mut sim = Sim::start();
    let sock_path = sim.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut agent = Agent::start_env(&sim, 600, &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 on NOTIFY_SOCKET");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));

    let rt = rt();
    rt.block_on(async {
        let api = Api::new(&agent.url).await;
        let h = api.call("GET", "/healthz", None, None).await;
        assert_eq!((h.status, h.body["status"].as_str()), (200, Some("ok")));
        let r = api.call("GET", "/readyz", None, None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let p = api.call("GET", "/", None, None).await;
        assert_eq!(p.status, 200);

        // SIGHUP: a new token and a new spec file, both taken.
        let token = sim.dir.path().join("api.token");
        std::fs::write(&token, "the-new-token-after-sighup").unwrap();
        std::fs::write(
            agent.specs_dir.join("hup.toml"),
            spec("hup", "\"auto\"", ""),
        )
        .unwrap();
        agent.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let a = api
                .call(
                    "GET",
                    "/v1/guests",
                    None,
                    Some("the-new-token-after-sighup"),
                )
                .await;
            if a.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new token is not taken after SIGHUP"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            api.get("/v1/guests").await.status,
            401,
            "the old token still works"
        );
    });
    assert!(eventually(Duration::from_secs(60), || sim_guest(
        &sim, "hup-app"
    )
    .is_some()));

    // PVE gone (once the guest is up): not ready, and the problem says why.
    rt.block_on(async {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let g: Value = http
                .get(format!("{}/v1/guests/hup/hup-app", agent.url))
                .bearer_auth("the-new-token-after-sighup")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if g["state"] == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "hup-app never ran: {g}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    sim.crash();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(format!("{}/readyz", agent.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503);
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["field"], "pve", "{body}");
    });

    agent.signal(libc::SIGTERM);
    let (st, took) = agent.wait_exit(Duration::from_secs(10));
    let st = st.unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM\n{}", agent.log()));
    assert_eq!(st.code(), Some(0), "{}", agent.log());
    eprintln!("SIGTERM → exit in {:.2}s", took.as_secs_f64());
    let n = sock.recv(&mut buf).expect("STOPPING=1 on NOTIFY_SOCKET");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

#[test]
fn bad_settings_exit_2() {
    let sim = Sim::start();
    let dir = sim.dir.path();
    let token = dir.join("api.token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut t: toml::Table = std::fs::read_to_string(&sim.config)
        .unwrap()
        .parse()
        .unwrap();
    let mut agent = toml::Table::new();
    agent.insert("listen".into(), "0.0.0.0:0".into());
    agent.insert("specs_dir".into(), dir.display().to_string().into());
    agent.insert("token_file".into(), token.display().to_string().into());
    t.insert("agent".into(), toml::Value::Table(agent));
    let config = dir.join("bad.toml");
    std::fs::write(&config, toml::to_string(&t).unwrap()).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("agent")
        .output()
        .unwrap();
    let msg = both(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(
        msg.contains("agent.listen") && msg.contains("loopback"),
        "{msg}"
    );
    assert!(
        msg.contains("agent.token_file") && msg.contains("chmod 600"),
        "{msg}"
    );
    assert!(!msg.contains(TOKEN), "the token is in the message");
}

#[test]
fn tls_serves_https_with_the_configured_certificate() {
    let sim = Sim::start();
    let dir = sim.dir.path();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("agent.pem"), dir.join("agent.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token = dir.join("api.token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut t: toml::Table = std::fs::read_to_string(&sim.config)
        .unwrap()
        .parse()
        .unwrap();
    let mut agent = toml::Table::new();
    agent.insert("listen".into(), "127.0.0.1:0".into());
    agent.insert("specs_dir".into(), dir.display().to_string().into());
    agent.insert("token_file".into(), token.display().to_string().into());
    agent.insert("tls_cert".into(), cert.display().to_string().into());
    agent.insert("tls_key".into(), key.display().to_string().into());
    t.insert("agent".into(), toml::Value::Table(agent));
    let config = dir.join("tls.toml");
    std::fs::write(&config, toml::to_string(&t).unwrap()).unwrap();
    let mut a = Agent {
        child: None,
        config,
        specs_dir: dir.to_path_buf(),
        url: String::new(),
        stderr_log: dir.join("agent.log"),
    };
    a.spawn(&[]);
    assert!(a.url.starts_with("https://127.0.0.1:"), "{}", a.url);
    rt().block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(root)
            .build()
            .unwrap();
        let h = http.get(format!("{}/healthz", a.url)).send().await.unwrap();
        assert_eq!(h.status().as_u16(), 200);
        let g = http
            .get(format!("{}/v1/guests", a.url))
            .send()
            .await
            .unwrap();
        assert_eq!(g.status().as_u16(), 401);
        let g = http
            .get(format!("{}/v1/guests", a.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(g.status().as_u16(), 200);
        // Plain HTTP on the TLS port is not served.
        let plain = reqwest::Client::new()
            .get(a.url.replace("https://", "http://") + "/healthz")
            .send()
            .await;
        assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    });
}

/// The status page of the real agent in headless chromium (Debian's `chromium`): it lists
/// the guest the agent built with what PVE says of it, and follows a job started while it is
/// open step by step (from `/v1/events`) to its outcome, without a reload.
#[test]
fn the_status_page_shows_the_agents_guests_and_follows_a_job() {
    let sim = Sim::start();
    let agent = Agent::start(&sim, 600);
    rt().block_on(async {
        let api = Api::new(&agent.url).await;
        let a = api
            .put("/v1/guests/acme/acme-app", &spec_json("acme", "\"auto\""))
            .await;
        assert_eq!(a.status, 202, "{:?}\n{}", a.body, agent.log());
        let list = all_running(&api, 1, Duration::from_secs(120)).await;
        let g = &list["guests"][0];

        let mut b = browser::Browser::launch().await;
        let tab = b.open(&format!("{}/#token={TOKEN}", agent.url)).await;
        b.wait_for(
            &tab,
            "document.querySelectorAll('#guests tbody tr').length === 1",
            "the agent's guest",
        )
        .await;
        let t = b.table(&tab).await;
        let row = t["acme/acme-app"].as_array().expect("a row for acme/acme-app").clone();
        assert_eq!(row[1], g["node"], "{row:?}");
        assert_eq!(row[2], json!(g["vmid"].to_string()), "{row:?}");
        assert_eq!(row[3], "running", "{row:?}");
        assert_eq!(row[5], g["ssh_fingerprint"], "{row:?}");
        assert!(
            g["ssh_fingerprint"].as_str().is_some_and(|f| f.starts_with("SHA256:")),
            "{g}"
        );

        // A second guest while the page is open: its row appears, its job cell moves
        // through the steps and ends with the outcome.
        let a = api
            .put("/v1/guests/beta/beta-app", &spec_json("beta", "\"auto\""))
            .await;
        assert_eq!(a.status, 202, "{:?}", a.body);
        let cell = "(() => { const r = Array.from(document.querySelectorAll('#guests tbody tr')).find(r => r.dataset.identity === 'beta/beta-app'); return r ? r.cells[7].textContent : null; })()";
        let mut seen: Vec<String> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Value::String(text)) = b.try_eval(&tab, cell).await {
                if seen.last() != Some(&text) {
                    seen.push(text.clone());
                }
                if text == "bringup succeeded" {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the job never showed its outcome: {seen:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let steps = seen.iter().filter(|t| t.starts_with("bringup: ")).count();
        assert!(steps >= 2, "the page showed too few of the job's steps live: {seen:?}");
        b.wait_for(
            &tab,
            "(() => { const r = Array.from(document.querySelectorAll('#guests tbody tr')).find(r => r.dataset.identity === 'beta/beta-app'); return !!r && r.cells[3].textContent === 'running'; })()",
            "beta/beta-app running",
        )
        .await;
    });
}
