//! Tasks (reference §6.3): the UPID, task status, and waiting for a task to end.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::PveClient;
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
        if !node_ok || !word(f[4]) || f[5].contains(':') || !word(f[6]) {
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

/// How to wait for a task.
///
/// Polling trades detection latency against requests: the first poll comes fast (many
/// tasks end within a second), then the interval grows ×1.5 up to `max_interval`. With the
/// defaults (50 ms, then 100 ms … 500 ms) a task ending after a few seconds is seen within
/// ~250 ms on average, at ≤ 10 polls per second while it is young and ≤ 2/s later.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    pub first_poll: Duration,
    pub min_interval: Duration,
    pub max_interval: Duration,
    pub deadline: Duration,
    /// How long a 400/404 on the status of a just-created UPID counts as "not visible yet".
    pub not_visible_grace: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            first_poll: Duration::from_millis(50),
            min_interval: Duration::from_millis(100),
            max_interval: Duration::from_millis(500),
            deadline: Duration::from_secs(1800),
            not_visible_grace: Duration::from_secs(5),
        }
    }
}

impl WaitOptions {
    /// The pause before poll number `n` (0-based). Pure, so it is tested on its own.
    pub fn interval(&self, n: u32) -> Duration {
        if n == 0 {
            return self.first_poll;
        }
        let mut d = self.min_interval;
        for _ in 1..n {
            d = d.mul_f64(1.5);
            if d >= self.max_interval {
                return self.max_interval;
            }
        }
        d.min(self.max_interval)
    }
}

/// A task that ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    pub exitstatus: String,
    pub warnings: u32,
    pub polls: u32,
}

#[derive(Deserialize)]
struct LogLine {
    #[serde(default)]
    t: String,
}

impl PveClient {
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, ApiError> {
        let path = format!(
            "/nodes/{}/tasks/{}/status",
            upid.node,
            crate::client::encode_segment(&upid.to_string())
        );
        self.get_counted(&path, &[], true).await
    }

    /// Log lines `start..start+limit` (texts only).
    pub async fn task_log(
        &self,
        upid: &Upid,
        start: u32,
        limit: u32,
    ) -> Result<Vec<String>, ApiError> {
        let path = format!(
            "/nodes/{}/tasks/{}/log",
            upid.node,
            crate::client::encode_segment(&upid.to_string())
        );
        let lines: Vec<LogLine> = self
            .get(
                &path,
                &[("start", start.to_string()), ("limit", limit.to_string())],
            )
            .await?;
        Ok(lines.into_iter().map(|l| l.t).collect())
    }

    /// Wait for a task to stop. `OK` and `WARNINGS: n` are success; anything else is
    /// `TaskFailed` with the last lines of the task log.
    pub async fn wait_task(
        &self,
        upid: &Upid,
        opts: &WaitOptions,
    ) -> Result<TaskOutcome, ApiError> {
        let started = Instant::now();
        let mut polls = 0u32;
        loop {
            let pause = opts.interval(polls);
            if started.elapsed() + pause > opts.deadline {
                return Err(ApiError::TaskTimeout {
                    upid: upid.to_string(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(pause).await;
            polls += 1;
            let st = match self.task_status(upid).await {
                Ok(st) => st,
                // A UPID the server has only just created may not be visible yet.
                Err(ApiError::Param { .. } | ApiError::NotFound { .. })
                    if started.elapsed() < opts.not_visible_grace =>
                {
                    continue
                }
                Err(e) if e.is_transient() => continue,
                Err(e) => return Err(e),
            };
            if st.is_running() {
                continue;
            }
            let exit = st.exitstatus.unwrap_or_else(|| "unexpected status".into());
            if let Some(warnings) = exit_ok(&exit) {
                return Ok(TaskOutcome {
                    exitstatus: exit,
                    warnings,
                    polls,
                });
            }
            let log_tail = match self.task_log(upid, 0, 500).await {
                Ok(lines) => lines.iter().rev().take(20).rev().cloned().collect(),
                Err(_) => Vec::new(),
            };
            return Err(ApiError::TaskFailed {
                upid: upid.to_string(),
                exitstatus: exit,
                log_tail,
            });
        }
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
        assert_eq!(o.interval(0), Duration::from_millis(50));
        assert_eq!(o.interval(1), Duration::from_millis(100));
        assert_eq!(o.interval(2), Duration::from_millis(150));
        assert_eq!(o.interval(3), Duration::from_millis(225));
        assert_eq!(o.interval(50), Duration::from_millis(500));
        let total: Duration = (0..20).map(|n| o.interval(n)).sum();
        assert!(
            total > Duration::from_secs(5),
            "20 polls span more than 5 s: {total:?}"
        );
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
