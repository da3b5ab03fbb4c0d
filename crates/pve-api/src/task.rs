//! Tasks (reference §6.3): the UPID, task status, and waiting for a task to end.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::PveClient;
use crate::durations::Bracket;
use crate::error::ApiError;

/// `UPID:<node>:<pid 8 hex>:<pstart 8–9 hex>:<starttime 8 hex>:<type>:<id>:<user>:`
/// (pve-common `UPID.pm`). Hex is upper-case; note the trailing colon.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upid {
    pub node: String,
    pub pid: u32,
    pub pstart: u64,
    pub starttime: u64,
    pub task_type: String,
    pub id: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse worker upid '{0}'")]
pub struct UpidError(String);

impl FromStr for Upid {
    type Err = UpidError;
    fn from_str(s: &str) -> Result<Self, UpidError> {
        let err = || UpidError(s.chars().take(120).collect());
        let body = s
            .strip_prefix("UPID:")
            .and_then(|b| b.strip_suffix(':'))
            .ok_or_else(err)?;
        // The user (a token id may hold '!', never ':') is the last field; split from the left.
        let f: Vec<&str> = body.splitn(7, ':').collect();
        if f.len() != 7 {
            return Err(err());
        }
        let node_ok = f[0]
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && f[0].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        fn hex(x: &str, min: usize, max: usize) -> Option<u64> {
            let ok = x.len() >= min && x.len() <= max && x.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| u64::from_str_radix(x, 16).ok()).flatten()
        }
        let pid = hex(f[1], 8, 8)
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(err)?;
        let pstart = hex(f[2], 8, 9).ok_or_else(err)?;
        let starttime = hex(f[3], 8, 8).ok_or_else(err)?;
        let word = |x: &str| !x.is_empty() && !x.contains(char::is_whitespace) && !x.contains(':');
        let id_ok = !f[5].contains(':') && !f[5].contains(char::is_whitespace);
        if !node_ok || !word(f[4]) || !id_ok || !word(f[6]) {
            return Err(err());
        }
        Ok(Upid {
            node: f[0].into(),
            pid,
            pstart,
            starttime,
            task_type: f[4].into(),
            id: f[5].into(),
            user: f[6].into(),
        })
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.task_type, self.id, self.user
        )
    }
}

impl Upid {
    /// The UPID as one percent-encoded URL path segment, as it appears in request paths
    /// (`/nodes/{node}/tasks/{upid}/status`).
    pub fn path_segment(&self) -> String {
        crate::client::encode_segment(&self.to_string())
    }
}

impl Serialize for Upid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Upid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct TaskStatus {
    pub status: String,
    #[serde(default)]
    pub exitstatus: Option<String>,
    #[serde(default, rename = "type")]
    pub task_type: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tokenid: Option<String>,
}

impl TaskStatus {
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }
}

/// `OK` or `WARNINGS: n` is success (pve-common `status_is_error`); returns the warning count.
pub fn exit_ok(exitstatus: &str) -> Option<u32> {
    if exitstatus == "OK" {
        return Some(0);
    }
    let n = exitstatus.strip_prefix("WARNINGS: ")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// How to wait for a task (reference §6.3).
///
/// Polling trades detection latency (how long after a task ends the caller learns of it;
/// on average half the current interval plus one round trip) against load (requests per
/// second, each one a pvedaemon/pveproxy worker on the PVE side). The product target is a
/// median detection ≤ 100 ms while never exceeding 10 polls/s per task. The defaults:
///
/// - `first_poll` 50 ms: many tasks (start, stop, a small resize) end within a fraction of
///   a second, and a fresh UPID is often visible within tens of milliseconds;
/// - then `min_interval` 100 ms for `fast_polls` polls (~2 s at the 10 polls/s ceiling):
///   a task ending in this phase is seen ~50 ms later (median), well inside the target;
/// - then ×1.5 per poll up to `max_interval` 500 ms (≤ 2 polls/s): a task that has run
///   for seconds is a restore or a big resize, where 250 ms of median latency does not
///   matter but thirty minutes at 10 polls/s would (18,000 requests);
/// - `deadline` 30 min (docs/lessons.md L4: bpg uses 1800 s for create/clone; Ansible's 30 s is too
///   short for a restore), after which the wait gives up with `TaskTimeout` — the task
///   itself may still be running.
///
/// Set `fast_polls: 0` for a pure ×1.5 back-off from `min_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOptions {
    /// The pause before the first poll.
    pub first_poll: Duration,
    /// The pause between the following polls, before the back-off starts.
    pub min_interval: Duration,
    /// How many polls after the first stay at `min_interval`.
    pub fast_polls: u32,
    /// The back-off's ceiling.
    pub max_interval: Duration,
    /// The whole wait, from the call until `TaskTimeout`.
    pub deadline: Duration,
    /// How long a 400/404 on the status of a just-created UPID counts as "not visible yet"
    /// (peers saw a 400 on a fresh UPID, docs/lessons.md L4). Measured from the start of the
    /// wait, because the UPID's `starttime` is the PVE host's clock, not ours.
    pub not_visible_grace: Duration,
    /// How long PVE may stay unreachable (connection refused, reset, timed out) in a row
    /// before the wait gives up with that transport error, instead of polling a dead host
    /// until `deadline`. The caller decides what unreachable means for its job (felhom
    /// pauses it).
    pub unreachable_budget: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            // Not sooner than the cadence: a task of about a second is then polled at most
            // 10 times a second from its first poll to its last.
            first_poll: Duration::from_millis(100),
            min_interval: Duration::from_millis(100),
            fast_polls: 20,
            max_interval: Duration::from_millis(500),
            deadline: Duration::from_secs(1800),
            not_visible_grace: Duration::from_secs(5),
            unreachable_budget: Duration::from_secs(60),
        }
    }
}

impl WaitOptions {
    /// The pause before poll number `n` (0-based). Pure, so it is tested on its own.
    pub fn interval(&self, n: u32) -> Duration {
        if n == 0 {
            return self.first_poll;
        }
        let floor = self.min_interval.min(self.max_interval);
        let growth = n.saturating_sub(1).saturating_sub(self.fast_polls);
        let mut d = floor;
        for _ in 0..growth {
            d = d.mul_f64(1.5);
            if d >= self.max_interval {
                return self.max_interval;
            }
        }
        d
    }

    /// The pause before poll `n` when `elapsed` has passed since the wait began, clamped so
    /// the last poll happens at the deadline; `None` once the deadline has passed. Pure.
    pub fn next_pause(&self, n: u32, elapsed: Duration) -> Option<Duration> {
        self.next_pause_hinted(n, elapsed, None)
    }

    /// [`WaitOptions::next_pause`] when tasks of this type were seen to end inside `hint`
    /// (see [`crate::durations`]): sleep until the bracket starts and look there (a task
    /// seen running then keeps the bracket's start honest; one already stopped says tasks
    /// got faster), then poll every `min_interval` landing on its end; past the bracket,
    /// the usual cadence. Pure.
    pub fn next_pause_hinted(
        &self,
        n: u32,
        elapsed: Duration,
        hint: Option<Bracket>,
    ) -> Option<Duration> {
        let left = self
            .deadline
            .checked_sub(elapsed)
            .filter(|d| !d.is_zero())?;
        let pause = match hint {
            Some(b) if elapsed < b.lo => b.lo - elapsed,
            Some(b) if elapsed < b.hi => self.min_interval.min(b.hi - elapsed),
            _ => self.interval(n),
        };
        Some(pause.min(left))
    }

    /// The pause before poll `n` of the first wait of a task type this host has not shown
    /// yet, when such tasks at least take `prior` on PVE ([`crate::durations::prior`]):
    /// probes at `first_poll` and then at [`PRIOR_PROBE_GROWTH`] times the time elapsed
    /// (a task faster than the prior, on a fast host or failing at once, is seen no later
    /// than that many times its duration), the poll at `prior`, then the usual cadence.
    /// Pure.
    pub fn next_pause_prior(&self, n: u32, elapsed: Duration, prior: Duration) -> Option<Duration> {
        let left = self
            .deadline
            .checked_sub(elapsed)
            .filter(|d| !d.is_zero())?;
        let pause = if elapsed < prior {
            let probe = self
                .first_poll
                .max(elapsed.saturating_mul(PRIOR_PROBE_GROWTH));
            probe.min(prior) - elapsed
        } else {
            // From the prior on, the usual cadence.
            self.interval(n.max(1))
        };
        Some(pause.min(left))
    }
}

/// Before the cold prior: each probe at this many times the time elapsed since dispatch.
pub const PRIOR_PROBE_GROWTH: u32 = 4;

/// A task that ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    /// `OK` or `WARNINGS: n`.
    pub exitstatus: String,
    pub warnings: u32,
    /// Status requests this wait made.
    pub polls: u32,
    /// The task had ended by then: when the answer of the look that saw it stopped came
    /// back (not when that look was sent: the task may end between the send and the node's
    /// answer). What it did is visible from that moment (a read started after it sees it),
    /// a little before the wait returns; the looks of one shared task list give the same.
    pub ended_by: Instant,
}

#[derive(Deserialize)]
struct LogLine {
    #[serde(default)]
    t: String,
}

/// `GET .../log` answers `{"data": [{n, t}], "total": N}`; `total` is outside `data`.
#[derive(Deserialize)]
struct LogPage {
    #[serde(default)]
    data: Vec<LogLine>,
    #[serde(default)]
    total: Option<u64>,
}

/// How many log lines a `TaskFailed` carries.
const LOG_TAIL: u32 = 20;

/// The longest log line a `TaskFailed` keeps, in bytes: the page itself is capped by the
/// client's body cap, this keeps one error message readable.
const LOG_LINE_MAX: usize = 2048;

fn clip_line(mut line: String) -> String {
    if line.len() > LOG_LINE_MAX {
        let mut end = LOG_LINE_MAX;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

/// What a status-poll error means to the wait loop. Pure.
fn poll_error_action(e: &ApiError, elapsed: Duration, opts: &WaitOptions) -> PollErrorAction {
    match e {
        // A UPID the server has only just created may not be visible yet (PVE answers 400
        // `no such task`, some proxies 404).
        ApiError::Param { .. } | ApiError::NotFound { .. } if elapsed < opts.not_visible_grace => {
            PollErrorAction::Retry
        }
        e if e.is_transient() => PollErrorAction::Retry,
        _ => PollErrorAction::Fail,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum PollErrorAction {
    Retry,
    Fail,
}

/// What one look of a wait saw of its task.
enum Seen {
    /// Running when the look's request was sent (this long after the wait's origin).
    Running(Duration),
    /// Stopped with this exit status, by the moment the look's answer came back.
    Stopped(String, Instant),
}

/// A look that failed, and which kind of request failed.
enum Failed {
    /// The task's own status ([`poll_error_action`] decides).
    Status(ApiError),
    /// The node's task list (transient: again; otherwise the wait falls back to status).
    List(ApiError),
    /// The status of a task the (answered) list did not show: as a status poll's, but the
    /// node was reached.
    Unlisted(ApiError),
}

impl PveClient {
    fn task_path(upid: &Upid, tail: &str) -> Result<String, ApiError> {
        crate::client::check_node(&upid.node)?;
        Ok(format!(
            "/nodes/{}/tasks/{}/{tail}",
            upid.node,
            crate::client::encode_segment(&upid.to_string())
        ))
    }

    /// `GET /nodes/{node}/tasks/{upid}/status` (counted in [`crate::ClientStats::task_polls`]).
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, ApiError> {
        let path = Self::task_path(upid, "status")?;
        self.get_counted(&path, &[], true).await
    }

    /// The tasks of `vmid` still running on `node`, as UPIDs of tasks this token can see:
    /// `GET /nodes/{node}/tasks?vmid=…&source=active` (running entries carry `status:
    /// "RUNNING"`, pve-manager `API2/Tasks.pm`). What a caller whose dispatch lost its answer (a 595, a
    /// dropped connection) looks at before it dispatches again.
    pub async fn active_tasks(&self, node: &str, vmid: crate::Vmid) -> Result<Vec<Upid>, ApiError> {
        let q = crate::watch::TaskQuery {
            source: Some(crate::watch::TaskSource::Active),
            vmid: Some(vmid),
            ..Default::default()
        };
        Ok(self
            .node_tasks(node, &q)
            .await?
            .into_iter()
            // PVE marks an active task `status: "RUNNING"` (older answers: no status).
            .filter(|e| e.is_running())
            .filter_map(|e| e.upid.parse().ok())
            .collect())
    }

    /// Log lines `start..start+limit` (texts only).
    pub async fn task_log(
        &self,
        upid: &Upid,
        start: u32,
        limit: u32,
    ) -> Result<Vec<String>, ApiError> {
        Ok(self.task_log_page(upid, start, limit).await?.0)
    }

    async fn task_log_page(
        &self,
        upid: &Upid,
        start: u32,
        limit: u32,
    ) -> Result<(Vec<String>, Option<u64>), ApiError> {
        let path = Self::task_path(upid, "log")?;
        let page: LogPage = self
            .get_whole(
                &path,
                &[("start", start.to_string()), ("limit", limit.to_string())],
            )
            .await?;
        Ok((page.data.into_iter().map(|l| l.t).collect(), page.total))
    }

    /// The last [`LOG_TAIL`] lines: one page from the start (most task logs are short),
    /// and if `total` says there is more, the page that ends at `total`.
    async fn task_log_tail(&self, upid: &Upid) -> Result<Vec<String>, ApiError> {
        const FIRST: u32 = 200;
        let (mut lines, total) = self.task_log_page(upid, 0, FIRST).await?;
        if let Some(total) = total.and_then(|t| u32::try_from(t).ok()) {
            if total > FIRST {
                lines = self
                    .task_log_page(upid, total - LOG_TAIL, LOG_TAIL)
                    .await?
                    .0;
            }
        }
        let skip = lines.len().saturating_sub(LOG_TAIL as usize);
        Ok(lines.split_off(skip).into_iter().map(clip_line).collect())
    }

    /// Wait for a task to stop, polling as [`WaitOptions`] describes.
    ///
    /// `stopped` with `OK` or `WARNINGS: n` is success (`WARNINGS` is PVE's success with
    /// warnings, docs/lessons.md L4); any other exit status is `TaskFailed` with the last
    /// lines of the task log. Transient errors and a not-yet-visible UPID are retried within
    /// the deadline; anything else ends the wait at once. The wait never re-dispatches the
    /// task. Past the deadline: `TaskTimeout` (the task may still be running).
    pub async fn wait_task(
        &self,
        upid: &Upid,
        opts: &WaitOptions,
    ) -> Result<TaskOutcome, ApiError> {
        let started = Instant::now();
        let origin = self.origin_of(upid, started);
        self.poll_task(upid, opts, started, |_| async move {
            // Running as of when the request went out (after the budget's wait); stopped by
            // when the answer came.
            let (st, sent) = crate::budget::sent_at(self.task_status(upid)).await;
            match st {
                Ok(st) if st.status != "stopped" => {
                    Ok(Seen::Running(sent.saturating_duration_since(origin)))
                }
                Ok(st) => Ok(Seen::Stopped(
                    st.exitstatus.unwrap_or_else(|| "unexpected status".into()),
                    Instant::now(),
                )),
                Err(e) => Err(Failed::Status(e)),
            }
        })
        .await
    }

    /// Where a wait on `upid` measures from: the dispatch, when this client sent it (its
    /// durations are learned from there, `durations.rs`); else the start of the wait.
    fn origin_of(&self, upid: &Upid, started: Instant) -> Instant {
        self.durations()
            .dispatch_of(&upid.to_string())
            .unwrap_or(started)
    }

    /// The one schedule of [`PveClient::wait_task`] and [`PveClient::watch_task`]: sleep as
    /// the learned durations (before any, the type's cold prior) and [`WaitOptions`] say,
    /// take a look (`look`: its own status, or the node's shared task list), and end on a stopped task, the deadline, PVE
    /// unreachable past the budget, or an error that is not "not yet". A task this client
    /// did not start (another process's, or one resumed from a journal) has no known
    /// origin: it is waited for at the usual cadence and teaches nothing.
    async fn poll_task<F, Fut>(
        &self,
        upid: &Upid,
        opts: &WaitOptions,
        started: Instant,
        mut look: F,
    ) -> Result<TaskOutcome, ApiError>
    where
        F: FnMut(Instant) -> Fut,
        Fut: std::future::Future<Output = Result<Seen, Failed>>,
    {
        let timeout = |started: Instant| ApiError::TaskTimeout {
            upid: upid.to_string(),
            waited: started.elapsed(),
        };
        let mut polls = 0u32;
        let dispatch = self.durations().dispatch_of(&upid.to_string());
        let origin = dispatch.unwrap_or(started);
        let hint = dispatch.and_then(|_| self.durations().expected(&upid.task_type));
        // Nothing learned of this type yet: PVE's typical figure, for a task we dispatched.
        let prior = dispatch
            .filter(|_| hint.is_none())
            .and_then(|_| crate::durations::prior(&upid.task_type));
        // The schedule counts from the origin; the deadline still from this call.
        let schedule = WaitOptions {
            deadline: opts.deadline + started.saturating_duration_since(origin),
            ..*opts
        };
        // The last moment the task was seen running: the lower end of its bracket.
        let mut running_at = Duration::ZERO;
        // Since when every look failed to reach PVE.
        let mut unreachable_since: Option<Instant> = None;
        loop {
            let pause = match prior {
                Some(p) => schedule.next_pause_prior(polls, origin.elapsed(), p),
                None => schedule.next_pause_hinted(polls, origin.elapsed(), hint),
            }
            .ok_or_else(|| timeout(started))?;
            tokio::time::sleep(pause).await;
            polls += 1;
            // One request may overrun the deadline by at most one `max_interval`.
            let budget = opts
                .deadline
                .saturating_sub(started.elapsed())
                .max(opts.max_interval);
            let res = tokio::time::timeout(budget, look(Instant::now()))
                .await
                .map_err(|_| timeout(started))?;
            // A 595 with an empty body for every look is a node that is down (pveproxy cannot
            // reach it): as unreachable as a refused connection.
            if let Err(Failed::Status(
                e @ (ApiError::Transport { .. } | ApiError::AnswerLost { .. }),
            ))
            | Err(Failed::List(
                e @ (ApiError::Transport { .. } | ApiError::AnswerLost { .. }),
            )) = &res
            {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= opts.unreachable_budget {
                    return Err(e.clone());
                }
            } else {
                unreachable_since = None;
            }
            let (exit, ended_by) = match res {
                Ok(Seen::Running(at)) => {
                    running_at = running_at.max(at);
                    continue;
                }
                Ok(Seen::Stopped(exit, by)) => (exit, by),
                Err(Failed::Status(e) | Failed::Unlisted(e)) => {
                    match poll_error_action(&e, started.elapsed(), opts) {
                        PollErrorAction::Retry => {
                            tracing::debug!(upid = %upid, error = %e, "task status not available yet");
                            continue;
                        }
                        PollErrorAction::Fail => return Err(e),
                    }
                }
                Err(Failed::List(e)) if e.is_transient() => continue,
                // A list the node refuses: the rest of the wait reads the task's own status.
                Err(Failed::List(_)) => {
                    let rest = WaitOptions {
                        deadline: opts.deadline.saturating_sub(started.elapsed()),
                        ..*opts
                    };
                    return Box::pin(self.wait_task(upid, &rest)).await;
                }
            };
            let learn = dispatch.map(|origin| Bracket {
                lo: running_at,
                hi: origin.elapsed(),
            });
            return self.task_ended(upid, exit, ended_by, learn, polls).await;
        }
    }

    /// A task seen stopped with `exit`: success (and what it teaches of its type's
    /// duration, when this client dispatched it), or `TaskFailed` with the log's tail.
    async fn task_ended(
        &self,
        upid: &Upid,
        exit: String,
        ended_by: Instant,
        learn: Option<Bracket>,
        polls: u32,
    ) -> Result<TaskOutcome, ApiError> {
        if let Some(warnings) = exit_ok(&exit) {
            if let Some(b) = learn {
                self.durations().record(&upid.task_type, b);
                if let (Some(o), Some(expected)) =
                    (self.observer(), self.durations().expected(&upid.task_type))
                {
                    o.task_duration(&upid.task_type, expected);
                }
            }
            return Ok(TaskOutcome {
                exitstatus: exit,
                warnings,
                polls,
                ended_by,
            });
        }
        // The log is best effort (the exit status is the error), but a log refused for
        // its size says so instead of vanishing.
        let log_tail = match self.task_log_tail(upid).await {
            Ok(tail) => tail,
            Err(e @ ApiError::BodyTooLarge { .. }) => vec![format!("(log not read: {e})")],
            Err(_) => Vec::new(),
        };
        Err(ApiError::TaskFailed {
            upid: upid.to_string(),
            kind: crate::TaskFailure::of(&exit),
            exitstatus: exit,
            log_tail,
        })
    }

    /// [`PveClient::wait_task`], batched: the task is observed through its node's shared
    /// task list ([`crate::watch`]), one request per poll for every task this client waits
    /// for on that node, so the request rate to a node stays bounded however many tasks are
    /// in flight. The same schedule (learned durations included), deadline, unreachable
    /// budget and outcomes as `wait_task` (one loop, [`PveClient::poll_task`]); `polls`
    /// counts the looks this wait took (shared or not). A UPID the list does not show is
    /// read by its status once per look; a list the node refuses (not transient) hands the
    /// rest of the wait to `wait_task`.
    pub async fn watch_task(
        &self,
        upid: &Upid,
        opts: &WaitOptions,
    ) -> Result<TaskOutcome, ApiError> {
        let started = Instant::now();
        let node = self.node_watch(&upid.node);
        let _registered = node.register(upid);
        let key = upid.to_string();
        let origin = self.origin_of(upid, started);
        let (node, key) = (&node, &key);
        self.poll_task(upid, opts, started, |now| async move {
            // A look sent a little before this wake-up is fresh enough, and shared.
            let wanted = now
                .checked_sub(crate::watch::NODE_POLL_GAP / 2)
                .unwrap_or(now);
            let look = node
                .look(self, &upid.node, wanted, upid.starttime)
                .await
                .map_err(Failed::List)?;
            let seen_at = look.sent.saturating_duration_since(origin);
            match look.seen.get(key) {
                Some(None) => Ok(Seen::Running(seen_at)),
                Some(Some(exit)) => Ok(Seen::Stopped(exit.clone(), look.answered)),
                // Not listed (cut off by the limit, or not visible yet): its own status.
                None => match self.task_status(upid).await {
                    Ok(st) if st.is_running() => Ok(Seen::Running(seen_at)),
                    Ok(st) => Ok(Seen::Stopped(
                        st.exitstatus.unwrap_or_else(|| "unexpected status".into()),
                        Instant::now(),
                    )),
                    Err(e) => Err(Failed::Unlisted(e)),
                },
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn upid_reference_example() {
        let s = "UPID:pve1:0003A2F1:0B8C9D12:66A1B2C3:vzrestore:123:agent@pve!prov:";
        let u: Upid = s.parse().unwrap();
        assert_eq!(u.pid, 0x3A2F1);
        assert_eq!(u.task_type, "vzrestore");
        assert_eq!(u.user, "agent@pve!prov");
        assert_eq!(u.to_string(), s);
        assert!(
            "UPID:pve1:0003A2F1:0B8C9D12:66A1B2C3:vzrestore:123:agent@pve!prov"
                .parse::<Upid>()
                .is_err(),
            "no trailing colon"
        );
        assert!(
            "UPID:pve1:3A2F1:0B8C9D12:66A1B2C3:vzrestore:123:root@pam:"
                .parse::<Upid>()
                .is_err(),
            "short pid"
        );
        assert_eq!(
            "UPID:pve1:0003a2f1:0b8c9d12:66a1b2c3:vzstart:1:root@pam:"
                .parse::<Upid>()
                .unwrap()
                .to_string(),
            "UPID:pve1:0003A2F1:0B8C9D12:66A1B2C3:vzstart:1:root@pam:"
        );
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_ok("OK"), Some(0));
        assert_eq!(exit_ok("WARNINGS: 3"), Some(3));
        assert_eq!(exit_ok("WARNINGS: "), None);
        assert_eq!(exit_ok("unable to restore CT 101 - boom"), None);
    }

    #[test]
    fn intervals_back_off_and_cap() {
        let o = WaitOptions::default();
        assert_eq!(o.interval(0), Duration::from_millis(100));
        // The fast phase: 20 polls at 100 ms (10 polls/s, the ceiling).
        for n in 1..=21 {
            assert_eq!(o.interval(n), Duration::from_millis(100), "poll {n}");
        }
        assert_eq!(o.interval(22), Duration::from_millis(150));
        assert_eq!(o.interval(23), Duration::from_millis(225));
        assert_eq!(o.interval(24), Duration::from_micros(337_500));
        assert_eq!(o.interval(25), Duration::from_millis(500));
        assert_eq!(o.interval(u32::MAX), Duration::from_millis(500));
        // Never more than 10 polls/s, and the fast phase covers the first ~2 s.
        assert!((1..1000).all(|n| o.interval(n) >= Duration::from_millis(100)));
        let fast: Duration = (0..=21).map(|n| o.interval(n)).sum();
        assert!(fast >= Duration::from_secs(2), "{fast:?}");
        // Median detection latency (half an interval) stays ≤ 100 ms in the fast phase.
        assert!((1..=21).all(|n| o.interval(n) / 2 <= Duration::from_millis(100)));
        // Without a fast phase: pure ×1.5 back-off.
        let pure = WaitOptions { fast_polls: 0, ..o };
        assert_eq!(pure.interval(1), Duration::from_millis(100));
        assert_eq!(pure.interval(2), Duration::from_millis(150));
        assert_eq!(pure.interval(3), Duration::from_millis(225));
        // A min above the max is capped.
        let odd = WaitOptions {
            min_interval: Duration::from_secs(2),
            ..o
        };
        assert_eq!(odd.interval(5), Duration::from_millis(500));
    }

    #[test]
    fn a_known_bracket_is_entered_at_its_start_and_polled_to_its_end() {
        let o = WaitOptions::default();
        let ms = Duration::from_millis;
        let b = Bracket {
            lo: ms(200),
            hi: ms(300),
        };
        // No polls at 100 ms: straight to the bracket's start, then its end.
        assert_eq!(o.next_pause_hinted(0, ms(0), Some(b)), Some(ms(200)));
        assert_eq!(o.next_pause_hinted(1, ms(202), Some(b)), Some(ms(98)));
        // Past the bracket (a slower task): the usual cadence.
        assert_eq!(o.next_pause_hinted(2, ms(301), Some(b)), Some(ms(100)));
        // A wide bracket (durations that vary): the cadence inside it, landing on its end.
        let wide = Bracket {
            lo: ms(1000),
            hi: ms(2000),
        };
        assert_eq!(o.next_pause_hinted(0, ms(0), Some(wide)), Some(ms(1000)));
        assert_eq!(o.next_pause_hinted(1, ms(1003), Some(wide)), Some(ms(100)));
        assert_eq!(o.next_pause_hinted(9, ms(1950), Some(wide)), Some(ms(50)));
        // The deadline still clamps.
        let short = WaitOptions {
            deadline: ms(120),
            ..o
        };
        assert_eq!(short.next_pause_hinted(0, ms(0), Some(b)), Some(ms(120)));
        // Without a hint: exactly next_pause.
        assert_eq!(o.next_pause_hinted(0, ms(0), None), o.next_pause(0, ms(0)));
    }

    #[test]
    fn a_cold_prior_is_probed_towards_and_polled_from() {
        let o = WaitOptions::default();
        let ms = Duration::from_millis;
        let p = ms(1600);
        // Probes at 100 ms, then 4× the time elapsed, landing on the prior.
        assert_eq!(o.next_pause_prior(0, ms(3), p), Some(ms(97)));
        assert_eq!(o.next_pause_prior(1, ms(102), p), Some(ms(306)));
        assert_eq!(o.next_pause_prior(2, ms(410), p), Some(ms(1190)));
        // From the prior on: the usual cadence.
        assert_eq!(o.next_pause_prior(3, ms(1601), p), Some(ms(100)));
        assert_eq!(o.next_pause_prior(30, ms(9000), p), Some(ms(500)));
        // A long prior: the probes grow geometrically, a few polls to reach it.
        let mut at = ms(2);
        let mut polls = 0;
        while at < ms(8000) {
            at += o.next_pause_prior(polls, at, ms(8000)).unwrap();
            polls += 1;
        }
        assert_eq!((polls, at), (5, ms(8000)));
        assert_eq!(crate::durations::prior("resize"), None);
        assert_eq!(crate::durations::prior("vzstart"), Some(ms(800)));
        // The deadline still clamps.
        let short = WaitOptions {
            deadline: ms(300),
            ..o
        };
        assert_eq!(short.next_pause_prior(1, ms(150), p), Some(ms(150)));
        assert_eq!(short.next_pause_prior(1, ms(300), p), None);
    }

    #[test]
    fn pauses_end_at_the_deadline() {
        let o = WaitOptions {
            deadline: Duration::from_secs(1),
            ..WaitOptions::default()
        };
        assert_eq!(
            o.next_pause(0, Duration::ZERO),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            o.next_pause(3, Duration::from_millis(960)),
            Some(Duration::from_millis(40)),
            "the last pause is clamped so a final poll happens at the deadline"
        );
        assert_eq!(o.next_pause(3, Duration::from_secs(1)), None);
        assert_eq!(o.next_pause(3, Duration::from_secs(7)), None);
    }

    #[test]
    fn poll_errors() {
        let o = WaitOptions::default();
        let young = Duration::from_secs(1);
        let old = Duration::from_secs(6);
        let not_yet = crate::error::classify(
            400,
            "Parameter verification failed.",
            br#"{"data":null,"errors":{"upid":"no such task\n"},"message":"Parameter verification failed.\n"}"#,
        );
        assert_eq!(
            poll_error_action(&not_yet, young, &o),
            PollErrorAction::Retry
        );
        assert_eq!(poll_error_action(&not_yet, old, &o), PollErrorAction::Fail);
        let gone = crate::error::classify(404, "Not Found", b"");
        assert_eq!(poll_error_action(&gone, young, &o), PollErrorAction::Retry);
        assert_eq!(poll_error_action(&gone, old, &o), PollErrorAction::Fail);
        let busy = crate::error::classify(503, "Service Unavailable", b"");
        assert_eq!(poll_error_action(&busy, old, &o), PollErrorAction::Retry);
        let net = ApiError::Transport {
            message: "reset".into(),
            maybe_sent: true,
        };
        assert_eq!(poll_error_action(&net, old, &o), PollErrorAction::Retry);
        let denied =
            crate::error::classify(403, "Permission check failed (/nodes/pve, Sys.Audit)", b"");
        assert_eq!(poll_error_action(&denied, young, &o), PollErrorAction::Fail);
        let auth = crate::error::classify(401, "Authentication failed!", b"");
        assert_eq!(poll_error_action(&auth, young, &o), PollErrorAction::Fail);
    }

    #[test]
    fn upid_fields_are_checked() {
        for bad in [
            "",
            "UPID:",
            "upid:pve:0003A2F1:0B8C9D12:66A1B2C3:vzstart:1:root@pam:",
            "UPID:-pve:0003A2F1:0B8C9D12:66A1B2C3:vzstart:1:root@pam:",
            "UPID:pve_1:0003A2F1:0B8C9D12:66A1B2C3:vzstart:1:root@pam:",
            "UPID:pve:0003A2F1:0B8C9D1:66A1B2C3:vzstart:1:root@pam:",
            "UPID:pve:0003A2F1:0B8C9D12AA:66A1B2C3:vzstart:1:root@pam:",
            "UPID:pve:0003A2F1:0B8C9D12:66A1B2C:vzstart:1:root@pam:",
            "UPID:pve:0003A2FG:0B8C9D12:66A1B2C3:vzstart:1:root@pam:",
            "UPID:pve:0003A2F1:0B8C9D12:66A1B2C3::1:root@pam:",
            "UPID:pve:0003A2F1:0B8C9D12:66A1B2C3:vzstart:1 2:root@pam:",
            "UPID:pve:0003A2F1:0B8C9D12:66A1B2C3:vzstart:1::",
            "UPID:pve:0003A2F1:0B8C9D12:66A1B2C3:vzstart:1:root@pam:extra:",
        ] {
            assert!(bad.parse::<Upid>().is_err(), "{bad}");
        }
        // 9-digit pstart and an empty id are PVE's own.
        let u: Upid = "UPID:pve-2:00001234:1B8C9D12A:66A1B2C3:vzdump::root@pam:"
            .parse()
            .unwrap();
        assert_eq!(u.pstart, 0x1B8C9D12A);
        assert_eq!(u.id, "");
        assert_eq!(
            u.to_string(),
            "UPID:pve-2:00001234:1B8C9D12A:66A1B2C3:vzdump::root@pam:"
        );
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(serde_json::from_str::<Upid>(&json).unwrap(), u);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn upid_round_trips(node in "[a-z][a-z0-9-]{0,10}", pid in any::<u32>(), pstart in 0u64..0xF_FFFF_FFFF, start in any::<u32>(),
                            ty in "[a-z]{2,10}", id in "[0-9a-z]{0,6}", user in "[a-z]{1,8}@(pam|pve)(![a-z]{1,6})?") {
            let u = Upid { node, pid, pstart, starttime: start as u64, task_type: ty, id, user };
            let back: Upid = u.to_string().parse().unwrap();
            prop_assert_eq!(back, u);
        }

        #[test]
        fn upid_parse_never_panics(s in ".{0,120}") {
            let _ = s.parse::<Upid>();
        }
    }
}
