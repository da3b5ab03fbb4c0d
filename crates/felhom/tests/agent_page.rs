//! The status page in a real headless browser (Debian's `chromium`, which `scripts/test`
//! installs), driven over the DevTools protocol: it renders the guests the API lists
//! (identity, node, VMID, state, IP, key fingerprint, drift), follows job progress live
//! from `/v1/events`, writes hostile text as text, takes the token from the fragment (and
//! drops it from the address bar) or from its field, and shows a refused token.
//!
//! The server here is a stand-in agent on loopback that serves the real page handler
//! (`src/agent/page.rs`, included by path) and `/v1/guests` and `/v1/events` as the agent
//! contract shapes them; the same browser helper drives the real agent in the end-to-end
//! variant.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

#[allow(dead_code)]
#[path = "../src/agent/page.rs"]
mod page;

const TOKEN: &str = "page-test-token-6f1d";
const HOSTILE: &str = r#"<img src=x onerror="document.title='pwned'">"#;

// ---------------------------------------------------------------------------------------
// The stand-in agent.

#[derive(Clone)]
struct Agent {
    guests: Arc<Mutex<Value>>,
    events: broadcast::Sender<String>,
    /// /v1 requests without the right bearer token.
    refused: Arc<AtomicUsize>,
    /// Every request's path and query (never a fragment: browsers do not send it).
    seen: Arc<Mutex<Vec<String>>>,
}

fn authorized(a: &Agent, h: &HeaderMap) -> bool {
    let ok = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    if !ok {
        a.refused.fetch_add(1, Ordering::SeqCst);
    }
    ok
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/problem+json")],
        r#"{"type":"about:blank","title":"Unauthorized","status":401}"#,
    )
        .into_response()
}

async fn guests(State(a): State<Agent>, h: HeaderMap) -> Response {
    if !authorized(&a, &h) {
        return unauthorized();
    }
    let body = a.guests.lock().unwrap().clone();
    axum::Json(body).into_response()
}

async fn events(State(a): State<Agent>, h: HeaderMap) -> Response {
    if !authorized(&a, &h) {
        return unauthorized();
    }
    let rx = a.events.subscribe();
    let first = futures::stream::once(async {
        Ok::<_, std::convert::Infallible>(": hello\n\n".to_string())
    });
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(s) => return Some((Ok(s), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(first.chain(rest)),
    )
        .into_response()
}

impl Agent {
    async fn start(guests_list: Value) -> (Agent, u16) {
        let (tx, _) = broadcast::channel(64);
        let a = Agent {
            guests: Arc::new(Mutex::new(json!({ "guests": guests_list }))),
            events: tx,
            refused: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let seen = a.seen.clone();
        let app = axum::Router::new()
            .route("/", get(page::index))
            .route("/v1/guests", get(guests))
            .route("/v1/events", get(events))
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push(req.uri().to_string());
                        next.run(req).await
                    }
                },
            ))
            .with_state(a.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (a, port)
    }

    /// One SSE event as the agent sends it.
    fn send(&self, kind: &str, data: Value) {
        self.events
            .send(format!("event: {kind}\ndata: {data}\n\n"))
            .unwrap();
    }

    fn set_guests(&self, list: Value) {
        *self.guests.lock().unwrap() = json!({ "guests": list });
    }
}

// ---------------------------------------------------------------------------------------
// Headless chromium over the DevTools protocol (a WebSocket of JSON calls).

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    async fn launch() -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("felhom-chromium-")
            .tempdir()
            .unwrap();
        let mut child = match Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!(
                "the status page test needs Debian's chromium and could not start it ({e}): \
                 apt-get install chromium (scripts/test does, as root)"
            ),
        };
        // Chromium says where its DevTools endpoint is on stderr; the rest is kept for
        // a failure's message.
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("ws://") {
                    let _ = tx.send(line[i..].trim().to_string());
                }
                log2.lock().unwrap().push(line);
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "chromium did not open its DevTools endpoint:\n{}",
                    log.lock().unwrap().join("\n")
                )
            }
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to chromium's DevTools");
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
            log,
        }
    }

    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools connection closed")
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// A new tab at `url` (its own sessionStorage); returns its session id.
    async fn open(&mut self, url: &str) -> String {
        let t = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let a = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": t["targetId"], "flatten": true }),
            )
            .await;
        a["sessionId"].as_str().unwrap().to_string()
    }

    /// The value of a JavaScript expression in the tab, or what it threw.
    async fn try_eval(&mut self, session: &str, expr: &str) -> Result<Value, Value> {
        let r = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await;
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    async fn eval(&mut self, session: &str, expr: &str) -> Value {
        self.try_eval(session, expr)
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// Wait until `expr` is true in the tab; the page's table on failure.
    async fn wait_for(&mut self, session: &str, expr: &str, what: &str) {
        self.wait_within(session, expr, what, Duration::from_secs(30))
            .await
    }

    async fn wait_within(&mut self, session: &str, expr: &str, what: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            // Before the page has loaded the tab shows about:blank, where it may throw.
            if self.try_eval(session, expr).await == Ok(json!(true)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let body = self
            .eval(session, "document.body ? document.body.innerText : ''")
            .await;
        panic!(
            "timed out waiting for {what} ({expr}); the page shows:\n{}\nchromium said:\n{}",
            body.as_str().unwrap_or_default(),
            self.log.lock().unwrap().join("\n")
        );
    }

    /// The guest table: identity → the cells' text.
    async fn table(&mut self, session: &str) -> Value {
        let s = self
            .eval(
                session,
                "JSON.stringify(Object.fromEntries(Array.from(document.querySelectorAll('#guests tbody tr')).map(tr => [tr.dataset.identity, Array.from(tr.cells).map(td => td.textContent)])))",
            )
            .await;
        serde_json::from_str(s.as_str().unwrap()).unwrap()
    }
}

// ---------------------------------------------------------------------------------------

fn guest(
    name: &str,
    vmid: u32,
    state: &str,
    ip: Value,
    fp: Value,
    drift: Value,
    job: Value,
) -> Value {
    json!({
        "customer": "acme", "name": name, "spec": { "hostname": name }, "node": "pve",
        "vmid": vmid, "state": state, "ip": ip, "ssh_fingerprint": fp, "drift": drift,
        "job": job,
    })
}

fn first_guests() -> Value {
    json!([
        guest("web1", 1100, "running", json!("192.0.2.10"), json!("SHA256:Qm9vYmFy/web1"), json!([]), Value::Null),
        guest("db1", 1101, "stopped", Value::Null, json!("SHA256:ZGIx"), json!(["running: want running, found stopped"]),
              json!({ "id": "job-db1", "kind": "repair", "state": "running" })),
        {
            "customer": "evil", "name": HOSTILE, "spec": {}, "node": "pve", "vmid": null,
            "state": "absent", "ip": null, "ssh_fingerprint": null, "drift": [HOSTILE], "job": null,
        },
    ])
}

fn event(
    job: &str,
    kind: &str,
    name: &str,
    vmid: Value,
    step: Value,
    phase: Value,
    outcome: Value,
) -> Value {
    json!({
        "job": job, "kind": kind, "customer": "acme", "name": name, "vmid": vmid, "step": step,
        "phase": phase, "outcome": outcome, "message": null, "at": "2026-06-10T12:00:00Z",
    })
}

#[test]
fn the_page_renders_guests_and_follows_jobs_live() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (agent, port) = Agent::start(first_guests()).await;
        let mut b = Browser::launch().await;
        let tab = b
            .open(&format!("http://127.0.0.1:{port}/#token={TOKEN}"))
            .await;
        b.wait_for(
            &tab,
            "document.querySelectorAll('#guests tbody tr').length === 3",
            "the three guests",
        )
        .await;
        let t = b.table(&tab).await;
        assert_eq!(
            t["acme/web1"],
            json!(["acme/web1", "pve", "1100", "running", "192.0.2.10", "SHA256:Qm9vYmFy/web1", "none", "—"])
        );
        assert_eq!(
            t["acme/db1"],
            json!(["acme/db1", "pve", "1101", "stopped", "—", "SHA256:ZGIx", "running: want running, found stopped", "repair running"])
        );
        // Hostile text is text: shown verbatim, no element made of it, nothing ran.
        let evil = format!("evil/{HOSTILE}");
        assert_eq!(t[&evil], json!([evil, "pve", "—", "absent", "—", "—", HOSTILE, "—"]));
        assert_eq!(b.eval(&tab, "document.querySelectorAll('img').length").await, json!(0));
        assert_eq!(b.eval(&tab, "document.title").await, json!("felhom agent"));
        // The token left the address bar for this tab's sessionStorage, and never reached
        // the server in a URL.
        assert_eq!(b.eval(&tab, "location.hash").await, json!(""));
        assert_eq!(
            b.eval(&tab, "sessionStorage.getItem('felhom-agent-token')").await,
            json!(TOKEN)
        );
        assert!(agent.seen.lock().unwrap().iter().all(|u| !u.contains(TOKEN)));

        // Live progress: once the page follows the stream, a job step shows in its row.
        let start = Instant::now();
        while agent.events.receiver_count() == 0 {
            assert!(start.elapsed() < Duration::from_secs(30), "the page never opened /v1/events");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        agent.send("step", event("job-db1", "repair", "db1", json!(1101), json!("start"), json!("start"), Value::Null));
        b.wait_for(
            &tab,
            "document.querySelector('tr[data-identity=\"acme/db1\"] td.c-job').textContent === 'repair: start (start)'",
            "the step in db1's row",
        )
        .await;
        // A job of a guest not listed yet gets a row at once.
        agent.send("step", event("job-web2", "bringup", "web2", Value::Null, json!("reserve"), json!("start"), Value::Null));
        b.wait_for(
            &tab,
            "!!document.querySelector('tr[data-identity=\"acme/web2\"]') && document.querySelector('tr[data-identity=\"acme/web2\"] td.c-job').textContent === 'bringup: reserve (start)'",
            "a row for web2",
        )
        .await;
        // The outcome: the row says so, and the page reads the list again.
        let mut later = first_guests();
        later[1] = guest("db1", 1101, "running", json!("192.0.2.11"), json!("SHA256:ZGIx"), json!([]), Value::Null);
        later.as_array_mut().unwrap().push(guest("web2", 1102, "building", Value::Null, Value::Null, json!([]),
            json!({ "id": "job-web2", "kind": "bringup", "state": "running" })));
        agent.set_guests(later);
        agent.send("outcome", event("job-db1", "repair", "db1", json!(1101), Value::Null, Value::Null, json!("succeeded")));
        // Read again at the outcome, not at the next periodic refresh (15 s).
        b.wait_within(
            &tab,
            "document.querySelector('tr[data-identity=\"acme/db1\"] td.c-state').textContent === 'running'",
            "db1 running after its job",
            Duration::from_secs(10),
        )
        .await;
        let t = b.table(&tab).await;
        assert_eq!(
            t["acme/db1"],
            json!(["acme/db1", "pve", "1101", "running", "192.0.2.11", "SHA256:ZGIx", "none", "repair succeeded"])
        );
        assert_eq!(
            t["acme/web2"],
            json!(["acme/web2", "pve", "1102", "building", "—", "—", "none", "bringup: reserve (start)"])
        );
        let log = b
            .eval(&tab, "Array.from(document.querySelectorAll('#events li')).map(li => li.textContent)")
            .await;
        let log: Vec<&str> = log.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(log.len(), 3, "{log:?}");
        assert!(log[0].contains("acme/db1") && log[0].contains("repair succeeded"), "{log:?}");
        assert!(log[2].contains("#1101") && log[2].contains("repair: start (start)"), "{log:?}");
        assert_eq!(agent.refused.load(Ordering::SeqCst), 0, "every /v1 request carried the token");

        // A new tab has no token: the field, and no request to /v1 without one.
        let before = agent.refused.load(Ordering::SeqCst);
        let bare = b.open(&format!("http://127.0.0.1:{port}/")).await;
        b.wait_for(&bare, "document.readyState === 'complete' && !document.getElementById('login').hidden", "the token field").await;
        assert_eq!(b.eval(&bare, "document.getElementById('main').hidden").await, json!(true));
        assert_eq!(agent.refused.load(Ordering::SeqCst), before);
        // A wrong token is refused and said so; the right one shows the guests.
        b.eval(&bare, "document.getElementById('token').value = 'wrong'; document.querySelector('#login button').click(); true").await;
        b.wait_for(&bare, "document.getElementById('login-error').textContent.includes('401')", "the refusal").await;
        assert_eq!(b.eval(&bare, "sessionStorage.getItem('felhom-agent-token')").await, Value::Null);
        assert!(agent.refused.load(Ordering::SeqCst) > before);
        b.eval(&bare, &format!("document.getElementById('token').value = '{TOKEN}'; document.querySelector('#login button').click(); true")).await;
        b.wait_for(&bare, "document.querySelectorAll('#guests tbody tr').length === 4", "the guests after signing in").await;
    });
}
