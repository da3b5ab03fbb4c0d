//! Headless chromium over the DevTools protocol (a WebSocket of JSON calls), shared by the
//! status page's tests: `agent_page.rs` (a stand-in agent) and `agent.rs` (the real one).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub struct Browser {
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
    pub async fn launch() -> Browser {
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

    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
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
    pub async fn open(&mut self, url: &str) -> String {
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
    pub async fn try_eval(&mut self, session: &str, expr: &str) -> Result<Value, Value> {
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

    pub async fn eval(&mut self, session: &str, expr: &str) -> Value {
        self.try_eval(session, expr)
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// Wait until `expr` is true in the tab; the page's table on failure.
    pub async fn wait_for(&mut self, session: &str, expr: &str, what: &str) {
        self.wait_within(session, expr, what, Duration::from_secs(30))
            .await
    }

    pub async fn wait_within(&mut self, session: &str, expr: &str, what: &str, limit: Duration) {
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
    pub async fn table(&mut self, session: &str) -> Value {
        let s = self
            .eval(
                session,
                "JSON.stringify(Object.fromEntries(Array.from(document.querySelectorAll('#guests tbody tr')).map(tr => [tr.dataset.identity, Array.from(tr.cells).map(td => td.textContent)])))",
            )
            .await;
        serde_json::from_str(s.as_str().unwrap()).unwrap()
    }
}
