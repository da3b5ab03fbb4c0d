//! What a client has learned of how long each task type runs on its host, so that
//! `wait_task` can sleep through most of a task and poll right where it is likely to end.
//!
//! Why: a bring-up mostly waits on PVE tasks, and the time from a task's end to the poll
//! that sees it is pure loss on every step. Polling densely the whole time would find the
//! end quickly but costs requests (and PVE's `pvedaemon` workers); polling sparsely is cheap
//! but late. Tasks of one type on one host take much the same time (the same golden is
//! restored, the same resize made, the same container started), so each wait brackets its
//! task's duration between the last poll that saw it running and the first that saw it
//! stopped. Later waits of that type sleep until the earliest moment such a task was seen
//! still running, then poll at the usual cadence to the latest moment one was first seen
//! stopped: detection stays within one interval while the polls before the likely end are
//! skipped. Where durations barely vary that is two polls: one at the bracket's start, one
//! at its end.
//!
//! Before a type has been seen on this host, [`prior`] says how long such a task at least
//! takes on a typical PVE host, so the first wait of the type does not poll it from zero
//! at the fast cadence: it probes at geometrically growing gaps (a fast host, or a task
//! that fails at once, is still seen early) and polls at the cadence from the prior on
//! ([`crate::WaitOptions::next_pause_prior`]). The first learned bracket replaces it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cold prior: how long a task of this type at least takes on a typical PVE host,
/// before this host has shown one (`None`: no prior, the usual cadence from the start).
///
/// A value a little under the typical duration: a task that ends before it is found by
/// the probes before it (late by at most the time it ran, once per type and host), one
/// that ends after it by the cadence. Sources, PVE-typical figures at time scale 1:
///
/// | task | prior | typical on PVE | source |
/// |---|---|---|---|
/// | `vzrestore`, `vzcreate` | 1.6 s | 2 s + 1 s per 100 MB of archive | pve-sim `model::RESTORE_BASE` (docs/pve-reference.md); unpacking the 173 MB Debian golden alone takes 0.6 s (docs/guests.md) |
/// | `vzstart` | 0.8 s | 1 s | pve-sim `model::START` |
/// | `vzstop` | 0.4 s | 0.5 s | pve-sim `model::STOP` |
/// | `vzshutdown` | 1.0 s | 1.5 s; `systemctl poweroff` of the golden about 1 s | pve-sim `model::SHUTDOWN`, docs/guests.md |
/// | `vzdestroy` | 0.4 s | 0.5 s | pve-sim `model::DESTROY` |
/// | `vzclone` | 1.2 s | linked 1.5 s, full 2 s + 1 s/GiB | docs/pve-fidelity.md (clone) |
/// | `vztemplate` | 0.8 s | 1 s | docs/pve-fidelity.md (clone) |
///
/// None for `resize` (e2fsck -f and resize2fs: over 10 s in the seed's F4, but it scales with
/// the file system, from about a second for a small one; a prior far above a small resize
/// would make its wait late by seconds and teach a bracket too wide to save anything), nor
/// for others (`vzdump`, …) that vary as much with the guest.
pub fn prior(task_type: &str) -> Option<Duration> {
    let ms = match task_type {
        "vzrestore" | "vzcreate" => 1600,
        "vzstart" => 800,
        "vzstop" | "vzdestroy" => 400,
        "vzshutdown" => 1000,
        "vzclone" => 1200,
        "vztemplate" => 800,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// How many recent tasks per type the estimate is drawn from.
const KEEP: usize = 16;

/// A bracket on one task's duration, measured from the start of the wait: it was still
/// running at `lo` and had stopped by `hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bracket {
    pub lo: Duration,
    pub hi: Duration,
}

/// How long a dispatch time is kept for a UPID nobody waited on.
const DISPATCH_TTL: Duration = Duration::from_secs(6 * 3600);

/// Recent brackets per task type (`vzrestore`, `resize`, `vzstart`, …), and when each task
/// this client started was dispatched.
///
/// Brackets are measured from the dispatch (the moment the request that started the task
/// was sent), not from the start of the wait: under load the answer carrying the UPID can
/// take hundreds of milliseconds, during which the task already runs, and a bracket
/// measured from the wait would then lie later than the task's real end, so the next wait
/// would sleep past it. From the dispatch, a slow answer can only make a wait look early.
#[derive(Debug, Default)]
pub struct TaskDurations {
    by_type: Mutex<HashMap<String, VecDeque<Bracket>>>,
    dispatched: Mutex<HashMap<String, Instant>>,
}

impl TaskDurations {
    /// Record a task that ended well (failed tasks end early and say nothing of the next).
    pub fn record(&self, task_type: &str, b: Bracket) {
        if b.lo >= b.hi {
            return;
        }
        let mut map = self.by_type.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.entry(task_type.to_string()).or_default();
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(b);
    }

    /// Note that the request which started task `upid` was sent at `sent`.
    pub fn dispatched(&self, upid: &str, sent: Instant) {
        let mut map = self.dispatched.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, t| t.elapsed() < DISPATCH_TTL);
        map.insert(upid.to_string(), sent);
    }

    /// When the request that started `upid` was sent, if this client sent it; kept so a
    /// second wait on the same task (after a transient error) measures from the same origin.
    pub fn dispatch_of(&self, upid: &str) -> Option<Instant> {
        let map = self.dispatched.lock().unwrap_or_else(|p| p.into_inner());
        map.get(upid).copied()
    }

    /// Every kept bracket, by type, oldest first: what a caller persists so that the next
    /// process starts knowing this host (and feeds back with [`TaskDurations::record`]).
    pub fn snapshot(&self) -> Vec<(String, Bracket)> {
        let map = self.by_type.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, Bracket)> = map
            .iter()
            .flat_map(|(t, q)| q.iter().map(move |b| (t.clone(), *b)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Where the next task of this type is expected to end, as a bracket; `None` until one
    /// has been seen.
    pub fn expected(&self, task_type: &str) -> Option<Bracket> {
        let map = self.by_type.lock().unwrap_or_else(|p| p.into_inner());
        estimate(map.get(task_type)?.iter().copied())
    }
}

/// The envelope of the brackets: from the earliest moment a task of this type was seen
/// still running to the latest it was first seen stopped. Every recent duration lies inside
/// it, so a wait that sleeps to its start and polls at the cadence to its end finds a task
/// like them within one interval. A bracket that starts at zero (the first look found the
/// task stopped: tasks got faster than any seen running) pulls the start to 90% of its end,
/// so the estimate follows faster tasks down a step per task instead of sticking.
///
/// Why not their intersection (which narrows faster): real task times vary with load (the
/// simulator adds up to 10%), and brackets of varying durations can intersect in a narrow
/// window that the next task misses; the wait then polls at the fast cadence from scratch.
/// The envelope narrows only as the kept brackets themselves narrow, i.e. only while the
/// durations stay consistent.
pub fn estimate(brackets: impl Iterator<Item = Bracket>) -> Option<Bracket> {
    let (lo, hi) = brackets.fold(None, |acc: Option<(Duration, Duration)>, b| {
        Some(match acc {
            None => (start(b), b.hi),
            Some((lo, hi)) => (lo.min(start(b)), hi.max(b.hi)),
        })
    })?;
    Some(Bracket { lo, hi })
}

fn start(b: Bracket) -> Duration {
    if b.lo.is_zero() {
        b.hi.mul_f64(0.9)
    } else {
        b.lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn consistent_brackets_give_a_narrow_envelope() {
        let e = estimate(
            [
                Bracket {
                    lo: ms(200),
                    hi: ms(250),
                },
                Bracket {
                    lo: ms(210),
                    hi: ms(240),
                },
            ]
            .into_iter(),
        );
        assert_eq!(
            e,
            Some(Bracket {
                lo: ms(200),
                hi: ms(250)
            })
        );
    }

    #[test]
    fn a_task_found_stopped_at_the_first_look_pulls_the_start_down() {
        let seen = Bracket {
            lo: ms(600),
            hi: ms(700),
        };
        // Stopped by 650: consistent with what was seen, the start does not move.
        let e = estimate(
            [
                seen,
                Bracket {
                    lo: ms(0),
                    hi: ms(650),
                },
            ]
            .into_iter(),
        );
        assert_eq!(
            e,
            Some(Bracket {
                lo: ms(585),
                hi: ms(700)
            })
        );
        // Stopped by 300: faster than any seen running, the start follows it down.
        let e = estimate(
            [
                seen,
                Bracket {
                    lo: ms(0),
                    hi: ms(300),
                },
            ]
            .into_iter(),
        );
        assert_eq!(
            e,
            Some(Bracket {
                lo: ms(270),
                hi: ms(700)
            })
        );
    }

    #[test]
    fn disagreeing_brackets_give_their_envelope() {
        let e = estimate(
            [
                Bracket {
                    lo: ms(100),
                    hi: ms(200),
                },
                Bracket {
                    lo: ms(900),
                    hi: ms(1000),
                },
                Bracket {
                    lo: ms(150),
                    hi: ms(250),
                },
            ]
            .into_iter(),
        );
        assert_eq!(
            e,
            Some(Bracket {
                lo: ms(100),
                hi: ms(1000)
            })
        );
        assert_eq!(estimate(std::iter::empty()), None);
    }

    #[test]
    fn keeps_the_recent_tasks_of_each_type() {
        let d = TaskDurations::default();
        assert_eq!(d.expected("resize"), None);
        d.record(
            "resize",
            Bracket {
                lo: ms(5),
                hi: ms(1),
            },
        );
        assert_eq!(d.expected("resize"), None, "an empty bracket is ignored");
        for i in 0..40 {
            d.record(
                "resize",
                Bracket {
                    lo: ms(1000 + i),
                    hi: ms(1300),
                },
            );
        }
        // Only the last KEEP count: the lowest lower bound kept is the 25th of 40.
        assert_eq!(
            d.expected("resize"),
            Some(Bracket {
                lo: ms(1000 + 40 - KEEP as u64),
                hi: ms(1300)
            })
        );
        assert_eq!(d.expected("vzstart"), None);
        let snap = d.snapshot();
        assert_eq!(snap.len(), KEEP);
        let again = TaskDurations::default();
        for (t, b) in snap {
            again.record(&t, b);
        }
        assert_eq!(again.expected("resize"), d.expected("resize"));
    }
}
