//! Batched task watching: every task this client waits for on one node is observed through
//! one shared request per poll, `GET /nodes/{node}/tasks?source=all&since=…&userfilter=…`.
//!
//! Why: a bring-up mostly waits on tasks, and a status poll per task per interval makes the
//! request rate to a node grow with the guests in flight (100 guests, 10 polls/s each: a
//! thousand requests a second against pveproxy's few workers). The node task list answers for
//! all of them at once: its running entries (`source=active`, PVE marks them `RUNNING`) and,
//! with `source=all` and `since` (the oldest watched task's start), the finished ones with
//! their exit status (pve-manager `PVE/API2/Tasks.pm` `node_tasks`: the active file, then
//! the archive newest first). So the rate per node is bounded by [`NODE_POLL_GAP`] however
//! many tasks are in flight, and a finished task costs no extra request.
//!
//! How: each waiter keeps its own schedule ([`crate::WaitOptions`], the learned durations
//! of [`crate::durations`]); when it wants a look it asks its node's [`NodeWatch`] for a
//! list sent no earlier than that moment. The first asker sends the request (never sooner
//! than [`NODE_POLL_GAP`] after the previous one); everyone waiting meanwhile shares that
//! answer. There is no background task: a node with no waiter sends nothing. A watched UPID
//! missing from the list (cut off by `limit`, or not visible yet) is read with one status
//! request, as a single-task wait would; a list the node refuses (not transient) hands the
//! wait over to [`crate::PveClient::wait_task`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::client::PveClient;
use crate::error::ApiError;
use crate::task::Upid;

/// The least time between two task-list requests to one node.
pub const NODE_POLL_GAP: Duration = Duration::from_millis(100);

/// Finished tasks listed beyond the watched ones (a node's other tasks of this user since the
/// oldest watched start); a watched task cut off is read by its status instead.
const LIST_SLACK: usize = 64;

/// `source` of the node task list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskSource {
    /// Finished tasks (PVE's default).
    #[default]
    Archive,
    /// Running tasks.
    Active,
    /// Both: the running ones first, then the archive newest first.
    All,
}

impl TaskSource {
    fn as_str(self) -> &'static str {
        match self {
            TaskSource::Archive => "archive",
            TaskSource::Active => "active",
            TaskSource::All => "all",
        }
    }
}

/// The filters of `GET /nodes/{node}/tasks` (all optional, PVE's defaults when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskQuery {
    pub source: Option<TaskSource>,
    /// Tasks started at or after this UNIX time (the node's clock, as in the UPID).
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub typefilter: Option<String>,
    pub userfilter: Option<String>,
    pub vmid: Option<crate::Vmid>,
    /// `ok`, `warning`, `error`, `unknown`, comma-separated.
    pub statusfilter: Option<String>,
    pub errors: Option<bool>,
    pub start: Option<u64>,
    /// PVE's default is 50; 0 lists nothing (only `total`).
    pub limit: Option<u64>,
}

impl TaskQuery {
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(s) = self.source {
            p.push(("source", s.as_str().to_string()));
        }
        let num = |p: &mut Vec<_>, k, v: Option<u64>| {
            if let Some(v) = v {
                p.push((k, v.to_string()));
            }
        };
        num(&mut p, "since", self.since);
        num(&mut p, "until", self.until);
        num(&mut p, "start", self.start);
        num(&mut p, "limit", self.limit);
        if let Some(v) = &self.typefilter {
            p.push(("typefilter", v.clone()));
        }
        if let Some(v) = &self.userfilter {
            p.push(("userfilter", v.clone()));
        }
        if let Some(v) = self.vmid {
            p.push(("vmid", v.to_string()));
        }
        if let Some(v) = &self.statusfilter {
            p.push(("statusfilter", v.clone()));
        }
        if let Some(v) = self.errors {
            p.push(("errors", u8::from(v).to_string()));
        }
        p
    }
}

/// One entry of the node task list.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TaskEntry {
    pub upid: String,
    #[serde(default, rename = "type")]
    pub task_type: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tokenid: Option<String>,
    #[serde(default)]
    pub starttime: Option<u64>,
    #[serde(default)]
    pub endtime: Option<u64>,
    /// The exit status of a finished task; `RUNNING` (or absent) while it runs.
    #[serde(default)]
    pub status: Option<String>,
}

impl TaskEntry {
    /// Still running: PVE lists an active task with `status: RUNNING` (set after its
    /// filters, `Tasks.pm`); an entry without status is taken as running too.
    pub fn is_running(&self) -> bool {
        self.status.as_deref().is_none_or(|s| s == "RUNNING")
    }
    /// The exit status once it ended (`OK`, `WARNINGS: n`, an error text).
    pub fn exit_status(&self) -> Option<&str> {
        (!self.is_running()).then_some(self.status.as_deref()?)
    }
}

impl PveClient {
    /// `GET /nodes/{node}/tasks` with `q`'s filters (counted as a task poll).
    pub async fn node_tasks(&self, node: &str, q: &TaskQuery) -> Result<Vec<TaskEntry>, ApiError> {
        crate::client::check_node(node)?;
        let params = q.params();
        let params: Vec<(&str, String)> = params.into_iter().collect();
        self.get_counted(&format!("/nodes/{node}/tasks"), &params, true)
            .await
    }
}

/// One shared look at a node's tasks: what each listed UPID said.
#[derive(Debug, Clone)]
pub(crate) struct Look {
    /// When its request was sent: a task it shows running ran then.
    pub sent: Instant,
    /// When its answer came back: a task it shows finished had ended by then (not by
    /// `sent`: the task may end between the send and the node's reading of its list).
    pub answered: Instant,
    /// Its `since`: it speaks for tasks started at or after this.
    pub since: u64,
    /// UPID → `None` running, `Some(exit status)` finished.
    pub seen: Arc<HashMap<String, Option<String>>>,
}

/// The watch of one node: who waits, and the last look.
#[derive(Default)]
pub(crate) struct NodeWatch {
    /// Watched UPID → (start time, waiters).
    waiting: Mutex<HashMap<String, (u64, usize)>>,
    /// The last look or error and when its request was sent, behind the lock that makes
    /// one request at a time.
    last: tokio::sync::Mutex<Option<(Instant, Result<Look, ApiError>)>>,
}

/// Removes a waiter from its node's watch when its wait ends, however it ends.
pub(crate) struct Registration {
    node: Arc<NodeWatch>,
    upid: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut w = self.node.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = w.get_mut(&self.upid) {
            e.1 -= 1;
            if e.1 == 0 {
                w.remove(&self.upid);
            }
        }
    }
}

impl NodeWatch {
    pub(crate) fn register(self: &Arc<Self>, upid: &Upid) -> Registration {
        let key = upid.to_string();
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(key.clone()).or_insert((upid.starttime, 0)).1 += 1;
        Registration {
            node: self.clone(),
            upid: key,
        }
    }

    /// A look sent at or after `wanted` that speaks for tasks started at `starttime`: the one
    /// another waiter already fetched, or a new request (at most one per [`NODE_POLL_GAP`]).
    pub(crate) async fn look(
        &self,
        client: &PveClient,
        node: &str,
        wanted: Instant,
        starttime: u64,
    ) -> Result<Look, ApiError> {
        let mut last = self.last.lock().await;
        if let Some((sent, prev)) = last.as_ref() {
            // Sent since this waiter asked: share it (an error too, so a node that is down
            // gets one request per gap, not one per waiter).
            if *sent >= wanted && prev.as_ref().map_or(true, |l| l.since <= starttime) {
                return prev.clone();
            }
            tokio::time::sleep_until((*sent + NODE_POLL_GAP).into()).await;
        }
        let (since, watched) = {
            let w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let since = w.values().map(|(s, _)| *s).min().unwrap_or(starttime);
            (since.min(starttime), w.len())
        };
        let q = TaskQuery {
            source: Some(TaskSource::All),
            since: Some(since),
            userfilter: Some(client.token_user().to_string()),
            limit: Some((watched + LIST_SLACK) as u64),
            ..TaskQuery::default()
        };
        // What the list shows is as of when it went out (after the request budget's wait).
        let (res, sent) = crate::budget::sent_at(client.node_tasks(node, &q)).await;
        let answered = Instant::now();
        let res = res.map(|list| Look {
            sent,
            answered,
            since,
            seen: Arc::new(
                list.into_iter()
                    .map(|e| {
                        let exit = e.exit_status().map(str::to_string);
                        (e.upid, exit)
                    })
                    .collect(),
            ),
        });
        *last = Some((sent, res.clone()));
        res
    }
}

/// Every node's watch of one client.
#[derive(Default)]
pub(crate) struct Watchers {
    nodes: Mutex<HashMap<String, Arc<NodeWatch>>>,
}

impl Watchers {
    pub(crate) fn node(&self, node: &str) -> Arc<NodeWatch> {
        let mut m = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(node.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_entries_are_recognised_as_pve_marks_them() {
        let e: TaskEntry = serde_json::from_str(
            r#"{"upid":"UPID:pve:00000001:00000002:66A1B2C3:vzstart:100:root@pam:","status":"RUNNING"}"#,
        )
        .unwrap();
        assert!(e.is_running());
        assert_eq!(e.exit_status(), None);
        let e: TaskEntry = serde_json::from_str(
            r#"{"upid":"UPID:pve:00000001:00000002:66A1B2C3:vzstart:100:root@pam:","status":"WARNINGS: 2","endtime":5}"#,
        )
        .unwrap();
        assert_eq!(e.exit_status(), Some("WARNINGS: 2"));
    }

    #[test]
    fn query_sends_only_what_is_set() {
        let q = TaskQuery {
            source: Some(TaskSource::Active),
            since: Some(7),
            errors: Some(true),
            ..TaskQuery::default()
        };
        assert_eq!(
            q.params(),
            vec![
                ("source", "active".to_string()),
                ("since", "7".to_string()),
                ("errors", "1".to_string())
            ]
        );
        assert!(TaskQuery::default().params().is_empty());
    }
}
