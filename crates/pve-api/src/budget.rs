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
//! (`/cluster/…`, `/access/…`, `/version`) from the window of the host the client talks to:
//! the entry node's, when the client knows which node that is (`pve.entry_node`; its
//! pveproxy answers those itself), else a window of its own (key `""`), so that node then
//! sees up to twice the rate. Each request is given its send time at once — now, or one window after the
//! send `rate` places before it — so waiting requests keep their order and never wake
//! together. A rate below one a second is one request per `1 / rate` seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Added to the window so the jitter between send and arrival never puts `rate + 1`
/// arrivals into one second at the node: a loaded felhom host sends some tens of
/// milliseconds late (a request woken late asks again, [`LATE_WAKE`]), and the connection
/// and the node's own queue add more on the way in. At 1000 guests on 10 nodes, with felhom
/// and the simulator on one saturated 2-core host, 25, 50 and 100 ms still let 21 through.
const ARRIVAL_MARGIN: Duration = Duration::from_millis(150);

/// A request woken this much after its send time asks for a new one ([`Budget::take`]).
const LATE_WAKE: Duration = Duration::from_millis(10);

/// What a request is to the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A write, or a read a step acts on: it waits its turn and keeps its place.
    Act,
    /// A look at something that changes by itself (the node's task list, a task's status,
    /// a guest's status or interfaces): polled, so one sent a little later only finds out a
    /// little later. Looks use at most [`Budget::look_cap`] of a window and never hold a
    /// place in the future: when the window is full a look waits and asks again, and an act
    /// that comes meanwhile goes first.
    Look,
}

impl Class {
    /// The class of `method` on `full_path`.
    pub(crate) fn of(method: &reqwest::Method, full_path: &str) -> Class {
        if method != reqwest::Method::GET {
            return Class::Act;
        }
        let Some(rest) = full_path.strip_prefix("/api2/json/nodes/") else {
            return Class::Act;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [_, "tasks"] | [_, "tasks", _, "status"] => Class::Look,
            [_, "lxc" | "qemu", _, "interfaces"] => Class::Look,
            [_, "lxc" | "qemu", _, "status", "current"] => Class::Look,
            _ => Class::Act,
        }
    }
}

/// What the budget says to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Send after this wait (the send time is taken).
    SendAfter(Duration),
    /// A look that does not fit now: ask again after this wait.
    AskAgainAfter(Duration),
}

#[derive(Debug)]
pub(crate) struct Budget {
    /// Requests per window.
    per_window: usize,
    /// Looks per window.
    look_cap: usize,
    /// The node the client talks to: cluster-wide requests spend from its window.
    entry: Option<String>,
    window: Duration,
    /// Per key, the send times given out less than a window ago or still to come, sorted.
    sends: Mutex<HashMap<String, Vec<(Instant, Class)>>>,
}

impl Budget {
    /// `rate` requests a second per node (> 0); `entry`: the node whose pveproxy the client
    /// talks to, if known.
    pub(crate) fn new(rate: f64, entry: Option<String>) -> Budget {
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
            look_cap: Self::look_cap(per_window),
            entry: entry.filter(|e| !e.is_empty()),
            window,
            sends: Mutex::default(),
        }
    }

    /// Looks per window: three quarters of it (at least one), so a burst of polls leaves
    /// room for the writes and reads the steps wait on.
    fn look_cap(per_window: usize) -> usize {
        (per_window * 3 / 4).max(1)
    }

    /// The window a request path spends from: its node's, else the entry node's (or `""`,
    /// the entry host's, when the client does not know its node).
    pub(crate) fn key<'a>(&'a self, full_path: &'a str) -> &'a str {
        full_path
            .strip_prefix("/api2/json/nodes/")
            .and_then(|rest| rest.split('/').next())
            .or(self.entry.as_deref())
            .unwrap_or("")
    }

    /// Whether one more send of `class` at `t` keeps every window that holds `t` within
    /// `cap` (counting only looks when `looks_only`).
    fn fits(&self, sends: &[(Instant, Class)], t: Instant, cap: usize, looks_only: bool) -> bool {
        let counted = |c: Class| !looks_only || c == Class::Look;
        let w = self.window;
        let tiny = Duration::from_nanos(1);
        // The windows `[s, s + w)` that hold `t` start in `(t - w, t]`; the fullest starts at
        // `t` itself, at a send in that range, or just after a later send's `b - w`.
        let lo = t.checked_sub(w).map(|x| x + tiny);
        let mut starts = vec![t];
        if let Some(lo) = lo {
            starts.push(lo);
        }
        for &(a, _) in sends {
            if lo.is_none_or(|lo| a >= lo) && a <= t {
                starts.push(a);
            }
            if a > t && a < t + w {
                if let Some(s) = (a + tiny).checked_sub(w) {
                    starts.push(s);
                }
            }
        }
        starts.into_iter().all(|s| {
            let inside = sends
                .iter()
                .filter(|(a, c)| *a >= s && *a < s + w && counted(*c))
                .count();
            inside < cap
        })
    }

    /// Take a send time for a request of `class` to `key` at `now`. Pure in `now`.
    pub(crate) fn take_at(&self, key: &str, class: Class, now: Instant) -> Turn {
        let mut all = self.sends.lock().unwrap_or_else(|p| p.into_inner());
        let sends = all.entry(key.to_string()).or_default();
        // Sends a whole window old count in no window that holds `now` or later (two
        // windows kept: a caller's `now`, read before it got the lock, may be a little
        // older than another's that pruned first).
        sends.retain(|(a, _)| *a + self.window * 2 > now);
        let fits = |t: Instant| {
            self.fits(sends, t, self.per_window, false)
                && (class == Class::Act || self.fits(sends, t, self.look_cap, true))
        };
        // The moments a send leaves a window: where a full window gets room.
        let mut frees: Vec<Instant> = sends
            .iter()
            .map(|(a, _)| *a + self.window)
            .filter(|t| *t > now)
            .collect();
        frees.sort();
        let at = match class {
            Class::Act => {
                // Acts keep their order: never before the latest act given out.
                let first = sends
                    .iter()
                    .filter(|(_, c)| *c == Class::Act)
                    .map(|(a, _)| *a)
                    .max()
                    .map_or(now, |last| last.max(now));
                std::iter::once(first)
                    .chain(frees.iter().copied().filter(|t| *t > first))
                    .find(|t| fits(*t))
            }
            Class::Look => {
                if !fits(now) {
                    let again = frees
                        .first()
                        .map_or(Duration::from_millis(5), |t| t.duration_since(now));
                    return Turn::AskAgainAfter(again.max(Duration::from_millis(1)));
                }
                Some(now)
            }
        };
        // Once the last send has left every window, any time fits: some candidate does.
        let at = at.unwrap_or_else(|| frees.last().copied().unwrap_or(now));
        let pos = sends.partition_point(|(a, _)| *a <= at);
        sends.insert(pos, (at, class));
        Turn::SendAfter(at.saturating_duration_since(now))
    }

    /// Give back the send time `at` of `key` (its request did not go then).
    fn give_back(&self, key: &str, at: Instant) {
        let mut all = self.sends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sends) = all.get_mut(key) {
            if let Some(i) = sends.iter().position(|(a, _)| *a == at) {
                sends.remove(i);
            }
        }
    }

    /// Wait for a send time of a request of `class` to `key`.
    pub(crate) async fn take(&self, key: &str, class: Class) {
        loop {
            let now = Instant::now();
            match self.take_at(key, class, now) {
                Turn::SendAfter(wait) => {
                    if wait.is_zero() {
                        return;
                    }
                    let at = now + wait;
                    tokio::time::sleep(wait).await;
                    // Woken late (a busy host): the request goes out later than the window
                    // counted it, and with others woken late it could crowd a second. Give
                    // the place back and ask again from now.
                    if Instant::now().saturating_duration_since(at) < LATE_WAKE {
                        return;
                    }
                    self.give_back(key, at);
                }
                Turn::AskAgainAfter(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

tokio::task_local! {
    /// When the last request made inside [`sent_at`] went out (its turn in the budget
    /// taken).
    static SENT: std::cell::Cell<Option<Instant>>;
}

/// Run `f` and tell when the (last) API request it made actually went out: after any wait
/// for its turn in the request budget. A poll brackets what it saw by that moment, not by
/// when it asked: a look held back by the budget saw the guest or task as it was when it
/// was sent, and bracketing by the asking time widened every learned duration by the
/// budget's waits (more looks next time, more waits: a feedback loop). When no request
/// went out (a look that asks no API, or one refused before sending), the moment `f`
/// began.
pub async fn sent_at<F: std::future::Future>(f: F) -> (F::Output, Instant) {
    let began = Instant::now();
    SENT.scope(std::cell::Cell::new(None), async move {
        let out = f.await;
        (out, SENT.with(|c| c.get()).unwrap_or(began))
    })
    .await
}

/// Note that a request goes out now (for [`sent_at`]).
pub(crate) fn note_sent() {
    let _ = SENT.try_with(|c| c.set(Some(Instant::now())));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait of an act.
    fn send(b: &Budget, key: &str, now: Instant) -> Duration {
        match b.take_at(key, Class::Act, now) {
            Turn::SendAfter(d) => d,
            Turn::AskAgainAfter(_) => panic!("an act is never asked to come again"),
        }
    }

    /// At most `rate` send times in any one-second window, per key: the first `rate` at
    /// once, each later one a whole second after the one `rate` places before it.
    #[test]
    fn at_most_the_rate_in_any_second_per_node() {
        let b = Budget::new(4.0, None);
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..9).map(|_| send(&b, "pve1", t0)).collect();
        let ms = |n| Duration::from_millis(n);
        let w = ms(1000) + ARRIVAL_MARGIN;
        assert_eq!(&waits[..4], &[Duration::ZERO; 4]);
        assert_eq!(&waits[4..8], &[w; 4]);
        assert_eq!(waits[8], w * 2);
        // Another node has its own window; the entry host too.
        assert_eq!(send(&b, "pve2", t0), Duration::ZERO);
        assert_eq!(send(&b, "", t0), Duration::ZERO);
        // Spread out, nothing waits.
        let c = Budget::new(4.0, None);
        for i in 0..20 {
            assert_eq!(
                send(&c, "pve1", t0 + ms(300) * i),
                Duration::ZERO,
                "send {i}"
            );
        }
    }

    /// Whatever the arrival pattern, no one-second window of send times holds more than
    /// the rate, and send times keep the order of the requests.
    #[test]
    fn no_window_holds_more_than_the_rate() {
        let b = Budget::new(5.0, None);
        let t0 = Instant::now();
        let mut state = 7u64;
        let mut now = t0;
        let mut sends = Vec::new();
        for _ in 0..400 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            now += Duration::from_millis((state >> 33) % 300);
            sends.push(now + send(&b, "pve1", now));
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
        let b = Budget::new(0.5, None);
        let t0 = Instant::now();
        assert_eq!(send(&b, "pve1", t0), Duration::ZERO);
        let period = Duration::from_secs(2) + ARRIVAL_MARGIN;
        assert_eq!(send(&b, "pve1", t0), period);
        assert_eq!(send(&b, "pve1", t0), period * 2);
    }

    /// Looks take at most three quarters of a window: an act finds room at once behind a
    /// burst of polls, and a look that does not fit is asked to come again, holding no
    /// place meanwhile.
    #[test]
    fn looks_leave_room_for_acts() {
        let b = Budget::new(20.0, None);
        let t0 = Instant::now();
        for i in 0..15 {
            assert_eq!(
                b.take_at("pve1", Class::Look, t0),
                Turn::SendAfter(Duration::ZERO),
                "look {i}"
            );
        }
        let again = match b.take_at("pve1", Class::Look, t0) {
            Turn::AskAgainAfter(d) => d,
            t => panic!("the 16th look in a window: {t:?}"),
        };
        assert_eq!(again, Duration::from_secs(1) + ARRIVAL_MARGIN);
        for i in 0..5 {
            assert_eq!(send(&b, "pve1", t0), Duration::ZERO, "act {i}");
        }
        // The window is full: the next act waits for the first sends to leave it.
        assert_eq!(
            send(&b, "pve1", t0),
            Duration::from_secs(1) + ARRIVAL_MARGIN
        );
        // And a look then finds the acts' future place taken too.
        let later = t0 + Duration::from_secs(1) + ARRIVAL_MARGIN;
        assert_eq!(
            b.take_at("pve1", Class::Look, later),
            Turn::SendAfter(Duration::ZERO)
        );
    }

    /// Acts and looks arriving at random, looks asking again when told to: no window of
    /// send times holds more than the rate, nor more looks than their cap; acts keep their
    /// order.
    #[test]
    fn mixed_classes_keep_both_caps_in_every_window() {
        let b = Budget::new(8.0, None);
        let t0 = Instant::now();
        let mut state = 11u64;
        let mut rnd = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        // Requests (time, issue order, class), taken in time order as a clock would.
        let mut now = t0;
        let mut queue = std::collections::BTreeSet::new();
        for i in 0..600u32 {
            now += Duration::from_millis(rnd(120));
            let class = if rnd(3) == 0 { Class::Act } else { Class::Look };
            queue.insert((now, i, class == Class::Act));
        }
        let mut sends: Vec<(Instant, Class)> = Vec::new();
        let mut acts = Vec::new();
        while let Some((at, i, act)) = queue.pop_first() {
            let class = if act { Class::Act } else { Class::Look };
            match b.take_at("pve1", class, at) {
                Turn::SendAfter(d) => {
                    sends.push((at + d, class));
                    if act {
                        acts.push((i, at + d));
                    }
                }
                Turn::AskAgainAfter(d) => {
                    queue.insert((at + d, i, act));
                }
            }
        }
        acts.sort_by_key(|(i, _)| *i);
        let acts: Vec<Instant> = acts.into_iter().map(|(_, t)| t).collect();
        assert!(acts.windows(2).all(|w| w[0] <= w[1]), "acts in order");
        sends.sort_by_key(|(t, _)| *t);
        let w = Duration::from_secs(1);
        for (i, (s, _)) in sends.iter().enumerate() {
            let inside: Vec<Class> = sends[i..]
                .iter()
                .take_while(|(t, _)| t.duration_since(*s) < w)
                .map(|(_, c)| *c)
                .collect();
            assert!(
                inside.len() <= 8,
                "{} sends within a second of send {i}",
                inside.len()
            );
            let looks = inside.iter().filter(|c| **c == Class::Look).count();
            assert!(looks <= 6, "{looks} looks within a second of send {i}");
        }
    }

    /// A request woken late gives its place back and is counted when it really goes: its old
    /// place no longer holds up the requests after it.
    #[test]
    fn a_late_send_gives_its_place_back() {
        let b = Budget::new(1.0, None);
        let t0 = Instant::now();
        let w = Duration::from_secs(1) + ARRIVAL_MARGIN;
        assert_eq!(send(&b, "pve1", t0), Duration::ZERO);
        assert_eq!(send(&b, "pve1", t0), w);
        // The second was woken 50 ms late: it gives back t0 + w and asks again.
        b.give_back("pve1", t0 + w);
        let late = t0 + w + Duration::from_millis(50);
        assert_eq!(send(&b, "pve1", late), Duration::ZERO);
        // The next one counts from the late send, not from the place given back.
        assert_eq!(send(&b, "pve1", late), w);
    }

    #[test]
    fn polls_are_looks_everything_else_acts() {
        use reqwest::Method;
        let look = |m: &Method, p: &str| Class::of(m, p) == Class::Look;
        assert!(look(&Method::GET, "/api2/json/nodes/pve1/tasks"));
        assert!(look(
            &Method::GET,
            "/api2/json/nodes/pve1/tasks/UPID:pve1:1:2:3:vzstart:100:a@pve!t:/status"
        ));
        assert!(look(
            &Method::GET,
            "/api2/json/nodes/pve1/lxc/100/interfaces"
        ));
        assert!(look(
            &Method::GET,
            "/api2/json/nodes/pve1/lxc/100/status/current"
        ));
        assert!(!look(&Method::GET, "/api2/json/nodes/pve1/lxc/100/config"));
        assert!(!look(
            &Method::POST,
            "/api2/json/nodes/pve1/lxc/100/status/start"
        ));
        assert!(!look(
            &Method::GET,
            "/api2/json/nodes/pve1/tasks/UPID:x/log"
        ));
        assert!(!look(&Method::GET, "/api2/json/cluster/resources"));
    }

    #[test]
    fn paths_name_their_node() {
        let b = Budget::new(5.0, None);
        assert_eq!(b.key("/api2/json/nodes/pve1/lxc/100/config"), "pve1");
        assert_eq!(b.key("/api2/json/nodes/pve2"), "pve2");
        assert_eq!(b.key("/api2/json/cluster/resources"), "");
        assert_eq!(b.key("/api2/json/version"), "");
        // Knowing its entry node, the cluster-wide reads spend from that node's window.
        let e = Budget::new(5.0, Some("pve1".into()));
        assert_eq!(e.key("/api2/json/cluster/resources"), "pve1");
        assert_eq!(e.key("/api2/json/nodes/pve2/tasks"), "pve2");
        assert_eq!(e.key("/api2/json/nodes/pve1/tasks"), "pve1");
    }
}
