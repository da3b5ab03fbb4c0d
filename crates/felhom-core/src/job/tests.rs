//! Unit tests of the job engine against a fake world.
//!
//! What is here: a step set ([`Fake`]) whose behaviour each test scripts (observe errors,
//! act errors that are transient, transient after the effect happened, or permanent; undo
//! errors; an act that claims success without effect), a fake world that counts every
//! effect, a real [`Journal`] in a tempdir, and a [`JobCx`] whose client points at a
//! loopback port nothing listens on (the fake steps never call PVE).
//!
//! Why it looks like this: the engine's promises are about the journal and about effects
//! happening exactly once, so the tests read both back instead of the engine's internals. A
//! crash is modelled the way the process dies: a test hook makes an act or undo signal
//! "crashed" and never complete, and the test drops the whole `run` future there, so no
//! later journal write happens. The job is then run again by a fresh `JobCx` on a freshly
//! opened journal, as `felhom resume` would in a new process. The crash cases are generated
//! from the fake step list, not written by hand.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pve_api::{ApiError, ApiToken, ClientConfig, PveClient, Secret, TlsTrust, Vmid};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::{run, Backoff, JobCx, Observed, Outcome, Quiet, Step, StepError};
use crate::config::{Config, SshEndpoint, VmidRange};
use crate::journal::{Event, JobKind, JobState, Journal, Phase};

/// The fake steps' names, in job order.
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// How a scripted call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    /// A transient error before anything happened (a lock timeout, a dropped connection).
    Transient,
    /// A transient error after the effect happened (the request reached PVE, the answer
    /// was lost): the next observe must find the effect and not act again.
    TransientAfterEffect,
    /// An error no retry fixes.
    Permanent,
    /// PVE cannot be reached at all: retried within the connect budget, never counted
    /// against the attempts.
    Unreachable,
    /// PVE's certificate was refused (pin mismatch): never retried, never undone.
    Untrusted,
}

impl Fail {
    fn error(self) -> StepError {
        match self {
            Fail::Transient | Fail::TransientAfterEffect => StepError::Api(ApiError::LockTimeout {
                lock_file: "/run/lock/lxc/pve-config-1100.lock".into(),
                message: "can't lock file (scripted)".into(),
            }),
            Fail::Unreachable => StepError::Api(ApiError::Transport {
                message: "connection refused (scripted)".into(),
                maybe_sent: false,
            }),
            Fail::Permanent => StepError::Refused("refused (scripted)".into()),
            Fail::Untrusted => StepError::Api(ApiError::Certificate {
                expected: Some(pve_api::CertFingerprint([0xAB; 32])),
                presented: pve_api::CertFingerprint([0xCD; 32]),
                reason: "server certificate fingerprint mismatch".into(),
            }),
        }
    }
}

/// Where the test hook "kills the process".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// The intent is durable, the act has not happened.
    BeforeAct,
    /// The act happened, `done` is not journaled.
    AfterAct,
    /// The undo intent is durable, the undo has not happened.
    BeforeUndo,
    /// The undo happened, `undo_done` is not journaled.
    AfterUndo,
}

/// One fake step's script and what happened to it.
#[derive(Debug, Default)]
struct StepState {
    has_undo: bool,
    observe_errors: VecDeque<Fail>,
    act_errors: VecDeque<Fail>,
    undo_errors: VecDeque<Fail>,
    /// The act returns Ok without making its effect visible.
    no_effect: bool,
    /// The step's effect is there now.
    present: bool,
    /// Act calls, and how many of them made the effect appear.
    acts: u32,
    effects: u32,
    /// Undo calls, and how many of them removed a present effect.
    undos: u32,
    removals: u32,
}

/// The fake world the fake steps act on.
#[derive(Debug, Default)]
struct World {
    steps: Mutex<Vec<StepState>>,
    /// Every call, in order: `observe a`, `act a`, `undo a`.
    log: Mutex<Vec<String>>,
    crash: Mutex<Option<(usize, Point)>>,
    crashed: Notify,
}

impl World {
    /// A world of `NAMES.len()` steps; `undo[i]` says whether step i has an undo. Leaked so
    /// that the `Copy + 'static` steps can point at it (a few bytes per test).
    fn new(undo: [bool; 5]) -> &'static World {
        let w = World::default();
        *w.steps.lock().unwrap() = undo
            .iter()
            .map(|&has_undo| StepState {
                has_undo,
                ..StepState::default()
            })
            .collect();
        Box::leak(Box::new(w))
    }
    fn steps(&'static self) -> Vec<Fake> {
        (0..NAMES.len()).map(|i| Fake { i, w: self }).collect()
    }
    fn with<R>(&self, i: usize, f: impl FnOnce(&mut StepState) -> R) -> R {
        f(&mut self.steps.lock().unwrap()[i])
    }
    fn log(&self, what: &str, i: usize) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{what} {}", NAMES[i]));
    }
    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
    fn crash_at(&self, i: usize, p: Point) {
        *self.crash.lock().unwrap() = Some((i, p));
    }
    /// If the hook is set at (i, p): say so and never return (the test drops the run).
    async fn maybe_crash(&self, i: usize, p: Point) {
        let hit = {
            let mut c = self.crash.lock().unwrap();
            if *c == Some((i, p)) {
                *c = None;
                true
            } else {
                false
            }
        };
        if hit {
            self.crashed.notify_one();
            std::future::pending::<()>().await;
        }
    }
    fn effects(&self) -> Vec<u32> {
        self.steps
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.effects)
            .collect()
    }
    fn acts(&self) -> Vec<u32> {
        self.steps.lock().unwrap().iter().map(|s| s.acts).collect()
    }
    fn present(&self) -> Vec<bool> {
        self.steps
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.present)
            .collect()
    }
    fn undos(&self) -> Vec<u32> {
        self.steps.lock().unwrap().iter().map(|s| s.undos).collect()
    }
    fn removals(&self) -> Vec<u32> {
        self.steps
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.removals)
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
struct Fake {
    i: usize,
    w: &'static World,
}

impl Step for Fake {
    fn name(&self) -> &'static str {
        NAMES[self.i]
    }
    fn has_undo(&self) -> bool {
        self.w.with(self.i, |s| s.has_undo)
    }
    async fn observe(&self, _cx: &JobCx) -> Result<Observed, StepError> {
        self.w.log("observe", self.i);
        self.w.with(self.i, |s| match s.observe_errors.pop_front() {
            Some(f) => Err(f.error()),
            None if s.present => Ok(Observed::Done(json!({ "seen": NAMES[self.i] }))),
            None => Ok(Observed::NotDone),
        })
    }
    async fn intent(&self, _cx: &JobCx) -> Result<Value, StepError> {
        Ok(json!({ "step": NAMES[self.i] }))
    }
    async fn act(&self, _cx: &JobCx) -> Result<(), StepError> {
        self.w.log("act", self.i);
        self.w.maybe_crash(self.i, Point::BeforeAct).await;
        let r = self.w.with(self.i, |s| {
            s.acts += 1;
            let fail = s.act_errors.pop_front();
            let effect = match fail {
                None => !s.no_effect,
                Some(Fail::TransientAfterEffect) => true,
                Some(Fail::Transient | Fail::Permanent | Fail::Unreachable | Fail::Untrusted) => {
                    false
                }
            };
            if effect && !s.present {
                s.present = true;
                s.effects += 1;
            }
            fail.map_or(Ok(()), |f| Err(f.error()))
        });
        self.w.maybe_crash(self.i, Point::AfterAct).await;
        r
    }
    async fn undo(&self, _cx: &JobCx) -> Result<(), StepError> {
        self.w.log("undo", self.i);
        self.w.maybe_crash(self.i, Point::BeforeUndo).await;
        let r = self.w.with(self.i, |s| {
            s.undos += 1;
            match s.undo_errors.pop_front() {
                Some(f) => Err(f.error()),
                None => {
                    // Idempotent: removing what is not there is a no-op.
                    if s.present {
                        s.present = false;
                        s.removals += 1;
                    }
                    Ok(())
                }
            }
        });
        self.w.maybe_crash(self.i, Point::AfterUndo).await;
        r
    }
}

/// A backoff that does not make the tests wait (at most a millisecond per retry).
const FAST: Backoff = Backoff {
    base: Duration::ZERO,
    cap: Duration::ZERO,
    max_attempts: 3,
};

/// A job in a journal in its own tempdir.
struct Harness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    job: String,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let job = "job-under-test".to_string();
        Journal::open(&path)
            .unwrap()
            .create_job(&job, JobKind::Bringup, "pve", Some("fake"), &json!({}))
            .unwrap();
        Harness {
            _dir: dir,
            path,
            job,
        }
    }
    /// A fresh context on a freshly opened journal: what a new felhom process would have.
    fn cx(&self) -> JobCx {
        job_cx(&self.path, &self.job)
    }
    fn events(&self) -> Vec<Event> {
        Journal::open(&self.path)
            .unwrap()
            .events(&self.job)
            .unwrap()
    }
    fn state(&self) -> JobState {
        Journal::open(&self.path)
            .unwrap()
            .job(&self.job)
            .unwrap()
            .state
    }
}

/// How long PVE may stay unreachable in these tests before a job pauses.
const CONNECT_BUDGET: Duration = Duration::from_millis(300);

/// A `JobCx` for tests: the client points at a loopback port nothing serves (the fake steps
/// never call PVE), the journal is the one at `journal`.
fn job_cx(journal: &Path, job: &str) -> JobCx {
    let vmid = |n| Vmid::try_from(n).unwrap();
    let client = ClientConfig {
        base_url: "https://127.0.0.1:9/".parse().unwrap(),
        token: ApiToken::new(
            "felhom@pve!test".parse().unwrap(),
            Secret::new("not-a-secret".into()),
        ),
        trust: TlsTrust::Pinned(
            std::iter::repeat_n("00", 32)
                .collect::<Vec<_>>()
                .join(":")
                .parse()
                .unwrap(),
        ),
        timeout: Duration::from_secs(1),
        max_body_bytes: pve_api::DEFAULT_MAX_BODY_BYTES,
    };
    let config = Config {
        path: journal.with_file_name("felhom.toml"),
        client: client.clone(),
        vmid_range: VmidRange {
            lo: vmid(1000),
            hi: vmid(1999),
        },
        journal: journal.to_path_buf(),
        max_parallel: 1,
        max_parallel_per_node: 1,
        max_parallel_per_storage: 1,
        ssh_endpoint: SshEndpoint::Direct,
        linkup_timeout: Duration::from_secs(1),
        ssh_timeout: Duration::from_secs(1),
        task_timeout: Duration::from_secs(1),
        connect_budget: CONNECT_BUDGET,
        max_requests_per_second: None,
        entry_node: None,
        strategy: Default::default(),
        specs: Vec::new(),
        nodes: Vec::new(),
        agent: Default::default(),
    };
    JobCx {
        job_id: job.into(),
        label: "fake".into(),
        node: "pve".into(),
        client: PveClient::new(client).unwrap(),
        journal: Arc::new(Journal::open(journal).unwrap()),
        config: Arc::new(config),
        facts: Default::default(),
        progress: Arc::new(Quiet),
        backoff: FAST,
        spec: None,
        config_cache: Default::default(),
        acting: Default::default(),
        shortcuts: Default::default(),
        waits: Default::default(),
        created: Default::default(),
        unreachable_since: Default::default(),
        dispatch_unsure: Default::default(),
    }
}

/// Run the job until it ends, or until the crash hook fires (then `None`: the run future is
/// dropped mid-await, as the process would die there).
async fn run_or_crash(h: &Harness, w: &World, steps: &[Fake]) -> Option<Outcome> {
    let cx = h.cx();
    tokio::select! {
        o = run(&cx, steps, true) => Some(o),
        () = w.crashed.notified() => None,
    }
}

/// The journal as `(step, phase)` pairs, notes and errors left out unless asked for.
fn phases(events: &[Event], keep: &[Phase]) -> Vec<(String, Phase)> {
    events
        .iter()
        .filter(|e| keep.contains(&e.phase))
        .map(|e| (e.step.clone(), e.phase.clone()))
        .collect()
}

fn count(events: &[Event], step: &str, phase: Phase) -> usize {
    events
        .iter()
        .filter(|e| e.step == step && e.phase == phase)
        .count()
}

const ALL_UNDO: [bool; 5] = [true; 5];

#[tokio::test]
async fn clean_run_acts_each_step_once_and_journals_intent_before_done() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    let steps = w.steps();
    assert_eq!(run_or_crash(&h, w, &steps).await, Some(Outcome::Succeeded));
    assert_eq!(w.effects(), [1; 5]);
    assert_eq!(w.acts(), [1; 5]);
    assert_eq!(w.undos(), [0; 5]);
    let expected: Vec<_> = NAMES
        .iter()
        .flat_map(|n| [(n.to_string(), Phase::Intent), (n.to_string(), Phase::Done)])
        .collect();
    assert_eq!(
        phases(
            &h.events(),
            &[Phase::Intent, Phase::Done, Phase::UndoIntent]
        ),
        expected
    );
    assert_eq!(h.state(), JobState::Succeeded);
}

#[tokio::test]
async fn transient_act_errors_retry_with_a_fresh_observe_before_every_act() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(2, |s| {
        s.act_errors = [Fail::Transient, Fail::Transient].into();
    });
    let steps = w.steps();
    assert_eq!(run_or_crash(&h, w, &steps).await, Some(Outcome::Succeeded));
    assert_eq!(w.acts(), [1, 1, 3, 1, 1]);
    assert_eq!(w.effects(), [1; 5]);
    let log: Vec<String> = w
        .take_log()
        .into_iter()
        .filter(|l| l.ends_with(" c"))
        .collect();
    assert_eq!(
        log,
        [
            "observe c",
            "act c",
            "observe c",
            "act c",
            "observe c",
            "act c",
            "observe c"
        ]
    );
    let ev = h.events();
    let intents: Vec<u32> = ev
        .iter()
        .filter(|e| e.step == "c" && e.phase == Phase::Intent)
        .map(|e| e.attempt)
        .collect();
    assert_eq!(intents, [1, 2, 3], "every attempt journaled, numbered");
    let errors: Vec<&Event> = ev
        .iter()
        .filter(|e| e.step == "c" && e.phase == Phase::Error)
        .collect();
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| e.data["permanent"] == false));
    assert_eq!(count(&ev, "c", Phase::Done), 1);
}

#[tokio::test]
async fn a_transient_error_after_the_effect_is_observed_not_acted_again() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(1, |s| s.act_errors = [Fail::TransientAfterEffect].into());
    let steps = w.steps();
    assert_eq!(run_or_crash(&h, w, &steps).await, Some(Outcome::Succeeded));
    assert_eq!(w.acts(), [1; 5], "no blind second act");
    assert_eq!(w.effects(), [1; 5]);
    let ev = h.events();
    assert_eq!(count(&ev, "b", Phase::Intent), 1);
    assert_eq!(count(&ev, "b", Phase::Error), 1);
    assert_eq!(count(&ev, "b", Phase::Done), 1);
}

#[tokio::test]
async fn transient_observe_errors_retry_too() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(3, |s| {
        s.observe_errors = [Fail::Transient, Fail::Transient].into()
    });
    let steps = w.steps();
    assert_eq!(run_or_crash(&h, w, &steps).await, Some(Outcome::Succeeded));
    assert_eq!(w.acts(), [1; 5]);
    assert_eq!(count(&h.events(), "d", Phase::Error), 2);
}

#[tokio::test]
async fn transient_errors_beyond_the_budget_pause_without_undo_and_resume_forward() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    // One more failure than the budget allows retries for.
    w.with(2, |s| {
        s.act_errors = vec![Fail::Transient; FAST.max_attempts as usize + 1].into()
    });
    let steps = w.steps();
    let out = run_or_crash(&h, w, &steps).await.unwrap();
    assert!(matches!(out, Outcome::Paused { .. }), "{out:?}");
    assert_eq!(out.exit_code(), 3);
    assert_eq!(w.acts(), [1, 1, FAST.max_attempts + 1, 0, 0]);
    assert_eq!(w.undos(), [0; 5], "a pause undoes nothing");
    assert_eq!(w.present(), [true, true, false, false, false]);
    let ev = h.events();
    assert!(phases(&ev, &[Phase::UndoIntent, Phase::UndoDone]).is_empty());
    let last = ev.last().unwrap();
    assert_eq!((last.step.as_str(), &last.phase), ("c", &Phase::Error));
    assert_eq!(last.data["permanent"], false);
    let state = h.state();
    assert!(state.is_resumable(), "{state:?}");

    // Resume: the errors are gone, the job goes forward from c; a and b are not redone.
    w.take_log();
    assert_eq!(run_or_crash(&h, w, &steps).await, Some(Outcome::Succeeded));
    assert_eq!(w.effects(), [1; 5]);
    assert_eq!(w.acts(), [1, 1, FAST.max_attempts + 2, 1, 1]);
    let log = w.take_log();
    assert!(
        !log.iter().any(|l| l.ends_with(" a") || l.ends_with(" b")),
        "done steps are skipped on resume: {log:?}"
    );
    let ev = h.events();
    assert_eq!(count(&ev, "c", Phase::Done), 1);
    // Attempt numbers continue where the paused run left them.
    let attempts: Vec<u32> = ev
        .iter()
        .filter(|e| e.step == "c" && e.phase == Phase::Intent)
        .map(|e| e.attempt)
        .collect();
    assert_eq!(
        attempts,
        (1..=FAST.max_attempts + 2).collect::<Vec<_>>(),
        "attempts journaled across the pause"
    );
}

#[tokio::test]
async fn an_unreachable_pve_is_retried_beyond_the_attempts_within_the_connect_budget() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    // More failures than the attempts allow, but quicker than the connect budget.
    w.with(1, |s| {
        s.act_errors = vec![Fail::Unreachable; FAST.max_attempts as usize + 3].into()
    });
    let steps = w.steps();
    assert_eq!(run_or_crash(&h, w, &steps).await, Some(Outcome::Succeeded));
    assert_eq!(w.effects(), [1; 5]);
    let ev = h.events();
    let retries: Vec<&Event> = ev
        .iter()
        .filter(|e| e.step == "b" && e.phase == Phase::Error)
        .collect();
    assert_eq!(retries.len(), FAST.max_attempts as usize + 3);
    assert!(retries.iter().all(|e| e.data["unreachable"] == true
        && e.data["error"]
            .as_str()
            .unwrap()
            .starts_with("PVE unreachable, retrying (")));
}

#[tokio::test]
async fn pve_unreachable_for_the_connect_budget_pauses_never_rolls_back() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(2, |s| {
        s.act_errors = vec![Fail::Unreachable; 100_000].into()
    });
    let steps = w.steps();
    let started = std::time::Instant::now();
    let out = run_or_crash(&h, w, &steps).await.unwrap();
    let took = started.elapsed();
    assert!(
        matches!(&out, Outcome::Paused { error } if error.contains("PVE unreachable")),
        "{out:?}"
    );
    assert_eq!(out.exit_code(), 3);
    assert!(
        took >= CONNECT_BUDGET,
        "paused before the budget ran out: {took:?}"
    );
    assert_eq!(
        w.undos(),
        [0; 5],
        "an unreachable PVE is never a reason to undo"
    );
    assert_eq!(h.state(), JobState::Paused);
    // PVE is back: resume goes forward.
    w.with(2, |s| s.act_errors.clear());
    assert_eq!(run_or_crash(&h, w, &steps).await, Some(Outcome::Succeeded));
    assert_eq!(w.effects(), [1; 5]);
}

#[tokio::test]
async fn a_refused_certificate_stops_at_once_without_retry_or_undo() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(2, |s| s.act_errors = vec![Fail::Untrusted; 100].into());
    let steps = w.steps();
    let started = std::time::Instant::now();
    let out = run_or_crash(&h, w, &steps).await.unwrap();
    assert!(
        matches!(&out, Outcome::Untrusted { error } if error.contains("pvenode cert info")
            && error.contains(&pve_api::CertFingerprint([0xCD; 32]).to_string())),
        "{out:?}"
    );
    assert_eq!(out.exit_code(), 2);
    assert!(started.elapsed() < CONNECT_BUDGET, "no retry, no pause");
    assert_eq!(w.acts(), [1, 1, 1, 0, 0], "one attempt, no retry");
    assert_eq!(w.undos(), [0; 5], "nothing undone through a refused server");
    assert_eq!(h.state(), JobState::Paused);
    // The pin put right: resume goes forward.
    w.with(2, |s| s.act_errors.clear());
    assert_eq!(run_or_crash(&h, w, &steps).await, Some(Outcome::Succeeded));
    assert_eq!(w.effects(), [1; 5]);
}

#[tokio::test]
async fn permanent_error_undoes_touched_steps_with_undo_in_reverse_order() {
    let h = Harness::new();
    // b has no undo.
    let w = World::new([true, false, true, true, true]);
    w.with(3, |s| s.act_errors = [Fail::Permanent].into());
    let steps = w.steps();
    let out = run_or_crash(&h, w, &steps).await.unwrap();
    match &out {
        Outcome::RolledBack { error } => assert!(error.starts_with("d: "), "{error}"),
        other => panic!("expected RolledBack, got {other:?}"),
    }
    assert_eq!(out.exit_code(), 1);
    assert_eq!(h.state(), JobState::RolledBack);
    let ev = h.events();
    // d failed after its intent (it may have acted), so it is undone first; e was never
    // touched and b has no undo.
    let undo_log: Vec<(String, Phase)> = phases(&ev, &[Phase::UndoIntent, Phase::UndoDone]);
    let pairs = |names: &[&str]| -> Vec<(String, Phase)> {
        names
            .iter()
            .flat_map(|n| {
                [
                    (n.to_string(), Phase::UndoIntent),
                    (n.to_string(), Phase::UndoDone),
                ]
            })
            .collect()
    };
    assert_eq!(undo_log, pairs(&["d", "c", "a"]));
    assert_eq!(w.undos(), [1, 0, 1, 1, 0]);
    assert_eq!(w.removals(), [1, 0, 1, 0, 0]);
    assert_eq!(w.present(), [false, true, false, false, false]);
    let undo_calls: Vec<String> = w
        .take_log()
        .into_iter()
        .filter(|l| l.starts_with("undo"))
        .collect();
    assert_eq!(undo_calls, ["undo d", "undo c", "undo a"]);
    let failed = ev
        .iter()
        .find(|e| e.step == "d" && e.phase == Phase::Error)
        .unwrap();
    assert_eq!(failed.data["permanent"], true);
}

#[tokio::test]
async fn a_step_failing_in_observe_was_never_touched_and_is_not_undone() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(2, |s| s.observe_errors = [Fail::Permanent].into());
    let steps = w.steps();
    let out = run_or_crash(&h, w, &steps).await.unwrap();
    assert!(matches!(out, Outcome::RolledBack { .. }), "{out:?}");
    assert_eq!(w.acts(), [1, 1, 0, 0, 0]);
    assert_eq!(w.undos(), [1, 1, 0, 0, 0]);
    let ev = h.events();
    assert_eq!(count(&ev, "c", Phase::Intent), 0);
    assert_eq!(count(&ev, "c", Phase::UndoIntent), 0);
}

#[tokio::test]
async fn forward_only_job_fails_without_undo() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(2, |s| s.act_errors = [Fail::Permanent].into());
    let steps = w.steps();
    let cx = h.cx();
    let out = run(&cx, &steps, false).await;
    assert!(matches!(out, Outcome::Failed { .. }), "{out:?}");
    assert_eq!(w.undos(), [0; 5]);
    assert_eq!(h.state(), JobState::Failed);
    assert!(h.state().is_resumable());
}

#[tokio::test]
async fn an_act_without_visible_effect_is_bounded_and_rolled_back() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(1, |s| s.no_effect = true);
    let steps = w.steps();
    let out = run_or_crash(&h, w, &steps).await.unwrap();
    match &out {
        Outcome::RolledBack { error } => assert!(error.contains("no effect"), "{error}"),
        other => panic!("expected RolledBack, got {other:?}"),
    }
    assert_eq!(w.acts(), [1, FAST.max_attempts + 1, 0, 0, 0]);
    assert_eq!(w.present(), [false; 5]);
}

#[tokio::test]
async fn failed_undo_leaves_rollback_incomplete_and_resuming_retries_it() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(3, |s| s.act_errors = [Fail::Permanent].into());
    w.with(2, |s| s.undo_errors = [Fail::Permanent].into());
    let steps = w.steps();
    let out = run_or_crash(&h, w, &steps).await.unwrap();
    match &out {
        Outcome::RollbackIncomplete { error, undo_error } => {
            assert!(error.starts_with("d: "), "{error}");
            assert!(undo_error.starts_with("undo c: "), "{undo_error}");
        }
        other => panic!("expected RollbackIncomplete, got {other:?}"),
    }
    assert_eq!(out.exit_code(), 3);
    assert_eq!(h.state(), JobState::RollbackIncomplete);
    // d undone, c's undo failed, a not reached.
    assert_eq!(w.undos(), [0, 0, 1, 1, 0]);
    assert_eq!(w.present(), [true, true, true, false, false]);
    let ev = h.events();
    assert_eq!(count(&ev, "c", Phase::UndoIntent), 1);
    assert_eq!(count(&ev, "c", Phase::UndoDone), 0);

    // `felhom resume` on a RollbackIncomplete job asks for the rollback again (ops::resume).
    Journal::open(&h.path)
        .unwrap()
        .set_job_state(&h.job, JobState::RollingBack, None)
        .unwrap();
    let out = run_or_crash(&h, w, &steps).await.unwrap();
    assert!(matches!(out, Outcome::RolledBack { .. }), "{out:?}");
    assert_eq!(h.state(), JobState::RolledBack);
    // d is not undone again; c's undo is retried; then b and a.
    assert_eq!(w.undos(), [1, 1, 2, 1, 0]);
    assert_eq!(w.present(), [false; 5]);
    assert_eq!(
        w.acts(),
        [1, 1, 1, 1, 0],
        "a resumed rollback never goes forward"
    );
    let ev = h.events();
    for n in ["a", "b", "c", "d"] {
        assert_eq!(count(&ev, n, Phase::UndoDone), 1, "{n}");
    }
    assert_eq!(count(&ev, "e", Phase::UndoIntent), 0);
}

#[tokio::test]
async fn transient_undo_errors_retry_within_the_budget() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(2, |s| s.act_errors = [Fail::Permanent].into());
    w.with(0, |s| {
        s.undo_errors = [Fail::Transient, Fail::Transient].into()
    });
    let steps = w.steps();
    let out = run_or_crash(&h, w, &steps).await.unwrap();
    assert!(matches!(out, Outcome::RolledBack { .. }), "{out:?}");
    assert_eq!(w.undos(), [3, 1, 1, 0, 0]);
    assert_eq!(w.present(), [false; 5]);
    let ev = h.events();
    let undo_errors = ev
        .iter()
        .filter(|e| e.step == "a" && e.phase == Phase::Error && e.data["undo"] == true)
        .count();
    assert_eq!(undo_errors, 2);
    assert_eq!(count(&ev, "a", Phase::UndoDone), 1);
}

#[tokio::test]
async fn a_step_observed_done_is_not_acted_on() {
    let h = Harness::new();
    let w = World::new(ALL_UNDO);
    w.with(1, |s| s.present = true);
    let steps = w.steps();
    assert_eq!(run_or_crash(&h, w, &steps).await, Some(Outcome::Succeeded));
    assert_eq!(w.acts(), [1, 0, 1, 1, 1]);
    let ev = h.events();
    assert_eq!(count(&ev, "b", Phase::Intent), 0);
    assert_eq!(count(&ev, "b", Phase::Done), 1);
    let done = ev
        .iter()
        .find(|e| e.step == "b" && e.phase == Phase::Done)
        .unwrap();
    assert_eq!(
        done.data["observed"]["seen"], "b",
        "what was observed is journaled"
    );
}

/// For every step and both forward crash points, the journal a crash leaves, then a resume:
/// each act's effect happens exactly once and the job succeeds.
#[tokio::test]
async fn resume_after_a_crash_at_every_forward_point_acts_exactly_once() {
    for i in 0..NAMES.len() {
        for point in [Point::BeforeAct, Point::AfterAct] {
            let case = format!("{}:{point:?}", NAMES[i]);
            let h = Harness::new();
            let w = World::new(ALL_UNDO);
            let steps = w.steps();
            w.crash_at(i, point);
            assert_eq!(run_or_crash(&h, w, &steps).await, None, "{case}: no crash");
            // The journal a crash there leaves: step i intended, not done.
            let ev = h.events();
            assert_eq!(count(&ev, NAMES[i], Phase::Intent), 1, "{case}");
            assert_eq!(count(&ev, NAMES[i], Phase::Done), 0, "{case}");
            let done: Vec<&str> = ev
                .iter()
                .filter(|e| e.phase == Phase::Done)
                .map(|e| e.step.as_str())
                .collect();
            assert_eq!(done, NAMES[..i], "{case}");
            assert_eq!(h.state(), JobState::Running, "{case}");
            let effects_at_crash = w.effects();
            assert_eq!(
                effects_at_crash[i],
                u32::from(point == Point::AfterAct),
                "{case}"
            );

            w.take_log();
            assert_eq!(
                run_or_crash(&h, w, &steps).await,
                Some(Outcome::Succeeded),
                "{case}"
            );
            assert_eq!(w.effects(), [1; 5], "{case}: every effect exactly once");
            // Completed act calls: a crash before the act cut the first call short, so the
            // resume acts once; a crash after it leaves the effect, which the resume observes.
            assert_eq!(w.acts(), [1; 5], "{case}");
            let log = w.take_log();
            assert_eq!(
                log.first().map(String::as_str),
                Some(format!("observe {}", NAMES[i]).as_str()),
                "{case}: resume starts by observing the first step not done: {log:?}"
            );
            for n in &NAMES[..i] {
                assert!(
                    !log.iter().any(|l| l.ends_with(&format!(" {n}"))),
                    "{case}: done step {n} touched on resume: {log:?}"
                );
            }
            let ev = h.events();
            for n in NAMES {
                assert_eq!(count(&ev, n, Phase::Done), 1, "{case}: {n}");
            }
            assert_eq!(w.undos(), [0; 5], "{case}");
            assert_eq!(h.state(), JobState::Succeeded, "{case}");
        }
    }
}

/// For every step with an undo and both undo crash points: a permanent failure at the last
/// step starts a rollback, the process dies in that step's undo (undo intent journaled, no
/// undo done), and a resume runs that undo again and completes the rollback once.
#[tokio::test]
async fn resume_after_a_crash_in_every_undo_completes_the_rollback_once() {
    let undo = [true, false, true, true, true];
    let last = NAMES.len() - 1;
    let mut cases = 0;
    for (i, _) in undo.iter().enumerate().filter(|(_, u)| **u) {
        for point in [Point::BeforeUndo, Point::AfterUndo] {
            cases += 1;
            let case = format!("{}:{point:?}", NAMES[i]);
            let h = Harness::new();
            let w = World::new(undo);
            w.with(last, |s| s.act_errors = [Fail::Permanent].into());
            let steps = w.steps();
            w.crash_at(i, point);
            assert_eq!(run_or_crash(&h, w, &steps).await, None, "{case}: no crash");
            let ev = h.events();
            assert_eq!(count(&ev, NAMES[i], Phase::UndoIntent), 1, "{case}");
            assert_eq!(count(&ev, NAMES[i], Phase::UndoDone), 0, "{case}");
            assert_eq!(h.state(), JobState::RollingBack, "{case}");

            w.take_log();
            let out = run_or_crash(&h, w, &steps).await;
            assert!(
                matches!(out, Some(Outcome::RolledBack { .. })),
                "{case}: {out:?}"
            );
            let log = w.take_log();
            assert_eq!(
                log.first().map(String::as_str),
                Some(format!("undo {}", NAMES[i]).as_str()),
                "{case}: the resumed rollback starts with the interrupted undo: {log:?}"
            );
            assert!(!log.iter().any(|l| l.starts_with("act")), "{case}: {log:?}");
            assert_eq!(w.present(), [false, true, false, false, false], "{case}");
            let ev = h.events();
            for (n, u) in NAMES.iter().zip(undo) {
                let expected = usize::from(u);
                assert_eq!(count(&ev, n, Phase::UndoDone), expected, "{case}: {n}");
            }
            // Each effect removed exactly once; the interrupted undo ran twice, idempotently.
            let removals = w.removals();
            for (j, u) in undo.iter().enumerate() {
                let expected = u32::from(*u && j != last); // e's act failed: nothing to remove
                assert_eq!(removals[j], expected, "{case}: {}", NAMES[j]);
            }
            // Completed undo calls of the interrupted step: the resumed one, plus the
            // crashed one if it got past its effect.
            let undos = 1 + u32::from(point == Point::AfterUndo);
            assert_eq!(w.undos()[i], undos, "{case}");
            assert_eq!(h.state(), JobState::RolledBack, "{case}");
        }
    }
    assert_eq!(cases, 8);
}
