//! A request budget per node: at most `rate` requests to any one node in any one-second
//! window (a sliding window over the send times). Opt-in
//! ([`crate::PveClient::set_request_budget`]).
//!
//! Why: pveproxy and pvedaemon serve a node's API with a few workers each; a batch of a
//! hundred guests must not take them all. The batched task watch ([`crate::watch`]) and the
//! bring-up's reuse of what it saw bound most of felhom's rate already; the budget is the
//! hard ceiling an operator can set on top, and it means what it says: a token bucket with a
//! burst lets twice the rate through in a second (the full bucket, then the refill), which
//! is what a batch's start looks like, so the window keeps the send times themselves.
//!
//! How: a request to `/nodes/{node}/…` spends from that node's window; any other API path
//! (`/cluster/…`, `/access/…`, `/version`) from the window of the host the client talks to
//! (key `""`). Each request is given its send time at once — now, or one window after the
//! send `rate` places before it — so waiting requests keep their order and never wake
//! together. A rate below one a second is one request per `1 / rate` seconds.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Added to the window so a few milliseconds of jitter between send and arrival never put
/// `rate + 1` arrivals into one second at the node.
const ARRIVAL_MARGIN: Duration = Duration::from_millis(25);

#[derive(Debug)]
pub(crate) struct Budget {
    /// Requests per window.
    per_window: usize,
    window: Duration,
    /// Per key, the send times given out, at most `per_window` of them (the latest).
    sends: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Budget {
    /// `rate` requests a second per node (> 0).
    pub(crate) fn new(rate: f64) -> Budget {
        let (per_window, window) = if rate >= 1.0 {
            (rate.floor() as usize, Duration::from_secs(1))
        } else {
            (1, Duration::from_secs_f64(1.0 / rate))
        };
        // The node counts arrivals, which follow the sends by a varying few milliseconds:
        // a send exactly one window after its predecessor's could arrive inside that
        // window. A margin keeps the arrivals within the rate too.
        let window = window + ARRIVAL_MARGIN;
        Budget {
            per_window,
            window,
            sends: Mutex::default(),
        }
    }

    /// The bucket a request path spends from: its node, or `""` for the entry host.
    pub(crate) fn key(full_path: &str) -> &str {
        full_path
            .strip_prefix("/api2/json/nodes/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("")
    }

    /// Take a send time for `key` at `now`; how long to wait before sending. Pure in `now`.
    pub(crate) fn take_at(&self, key: &str, now: Instant) -> Duration {
        let mut all = self.sends.lock().unwrap_or_else(|p| p.into_inner());
        let sends = all.entry(key.to_string()).or_default();
        let at = if sends.len() < self.per_window {
            now
        } else {
            // The send `per_window` places back must be a whole window old.
            let oldest = sends.pop_front().unwrap_or(now);
            now.max(oldest + self.window)
        };
        // Keep the order: never before the latest send given out.
        let at = sends.back().map_or(at, |last| at.max(*last));
        sends.push_back(at);
        at.saturating_duration_since(now)
    }

    /// Wait for a send time of `key`.
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

    /// At most `rate` send times in any one-second window, per key: the first `rate` at
    /// once, each later one a whole second after the one `rate` places before it.
    #[test]
    fn at_most_the_rate_in_any_second_per_node() {
        let b = Budget::new(4.0);
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..9).map(|_| b.take_at("pve1", t0)).collect();
        let ms = |n| Duration::from_millis(n);
        let w = ms(1000) + ARRIVAL_MARGIN;
        assert_eq!(&waits[..4], &[Duration::ZERO; 4]);
        assert_eq!(&waits[4..8], &[w; 4]);
        assert_eq!(waits[8], w * 2);
        // Another node has its own window; the entry host too.
        assert_eq!(b.take_at("pve2", t0), Duration::ZERO);
        assert_eq!(b.take_at("", t0), Duration::ZERO);
        // Spread out, nothing waits.
        let c = Budget::new(4.0);
        for i in 0..20 {
            assert_eq!(
                c.take_at("pve1", t0 + ms(300) * i),
                Duration::ZERO,
                "send {i}"
            );
        }
    }

    /// Whatever the arrival pattern, no one-second window of send times holds more than
    /// the rate, and send times keep the order of the requests.
    #[test]
    fn no_window_holds_more_than_the_rate() {
        let b = Budget::new(5.0);
        let t0 = Instant::now();
        let mut state = 7u64;
        let mut now = t0;
        let mut sends = Vec::new();
        for _ in 0..400 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            now += Duration::from_millis((state >> 33) % 300);
            sends.push(now + b.take_at("pve1", now));
        }
        assert!(sends.windows(2).all(|w| w[0] <= w[1]), "in order");
        for (i, s) in sends.iter().enumerate() {
            let within = sends[i..]
                .iter()
                .take_while(|t| t.duration_since(*s) < Duration::from_secs(1))
                .count();
            assert!(within <= 5, "{within} sends within a second of send {i}");
        }
    }

    #[test]
    fn a_rate_below_one_is_one_request_per_period() {
        let b = Budget::new(0.5);
        let t0 = Instant::now();
        assert_eq!(b.take_at("pve1", t0), Duration::ZERO);
        let period = Duration::from_secs(2) + ARRIVAL_MARGIN;
        assert_eq!(b.take_at("pve1", t0), period);
        assert_eq!(b.take_at("pve1", t0), period * 2);
    }

    #[test]
    fn paths_name_their_node() {
        assert_eq!(Budget::key("/api2/json/nodes/pve1/lxc/100/config"), "pve1");
        assert_eq!(Budget::key("/api2/json/nodes/pve2"), "pve2");
        assert_eq!(Budget::key("/api2/json/cluster/resources"), "");
        assert_eq!(Budget::key("/api2/json/version"), "");
    }
}
