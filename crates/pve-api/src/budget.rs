//! A request budget per node: at most `rate` requests a second to any one node, with a burst
//! of one second's worth (a token bucket). Opt-in ([`crate::PveClient::set_request_budget`]).
//!
//! Why: pveproxy and pvedaemon serve a node's API with a few workers each; a batch of a
//! hundred guests must not take them all. The batched task watch ([`crate::watch`]) and the
//! bring-up's reuse of what it saw bound most of felhom's rate already; the budget is the
//! hard ceiling an operator can set on top.
//!
//! How: a request to `/nodes/{node}/…` spends from that node's bucket; any other API path
//! (`/cluster/…`, `/access/…`, `/version`) from the bucket of the host the client talks to
//! (key `""`). Each request takes a token at once, the bucket going negative when it has
//! none, and sleeps until its token would have accrued: waiting requests keep their order
//! and never wake together.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Budget {
    rate: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Budget {
    /// `rate` requests a second per node (> 0).
    pub(crate) fn new(rate: f64) -> Budget {
        Budget {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// The bucket a request path spends from: its node, or `""` for the entry host.
    pub(crate) fn key(full_path: &str) -> &str {
        full_path
            .strip_prefix("/api2/json/nodes/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("")
    }

    /// Take a token for `key` now; how long to wait before sending. Pure in `now`.
    pub(crate) fn take_at(&self, key: &str, now: Instant) -> Duration {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = b.entry(key.to_string()).or_insert((self.rate, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.rate);
        *last = now.max(*last);
        *tokens -= 1.0;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }

    /// Wait for a token of `key`.
    pub(crate) async fn take(&self, key: &str) {
        let wait = self.take_at(key, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate_per_node() {
        let b = Budget::new(4.0);
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..6).map(|_| b.take_at("pve1", t0)).collect();
        assert_eq!(&waits[..4], &[Duration::ZERO; 4]);
        assert_eq!(waits[4], Duration::from_millis(250));
        assert_eq!(waits[5], Duration::from_millis(500));
        // Another node has its own bucket; the entry host too.
        assert_eq!(b.take_at("pve2", t0), Duration::ZERO);
        assert_eq!(b.take_at("", t0), Duration::ZERO);
        // A second later four tokens have accrued, two of them already promised.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take_at("pve1", t1), Duration::ZERO);
        assert_eq!(b.take_at("pve1", t1), Duration::ZERO);
        assert_eq!(b.take_at("pve1", t1), Duration::from_millis(250));
    }

    #[test]
    fn paths_name_their_node() {
        assert_eq!(Budget::key("/api2/json/nodes/pve1/lxc/100/config"), "pve1");
        assert_eq!(Budget::key("/api2/json/nodes/pve2"), "pve2");
        assert_eq!(Budget::key("/api2/json/cluster/resources"), "");
        assert_eq!(Budget::key("/api2/json/version"), "");
    }
}
