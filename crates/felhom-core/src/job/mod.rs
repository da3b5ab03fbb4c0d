//! The job engine: an ordered list of idempotent steps, each with observe → act → verify and
//! an undo, driven against a durable journal (oxidecomputer/steno's saga idea, small; and
//! kube-rs's reconcile: observe, compare, act, safe to run again at any time).
//!
//! The rules the runner enforces:
//! - `intent(step, attempt, inputs)` is durable **before** `act`; `done(step, observed)` only
//!   after `observe` confirms the act took effect.
//! - After a crash, `resume` replays: steps with `done` are skipped, and the first step not
//!   done is **observed again** — the runner never assumes an act did or did not happen.
//! - Transient errors retry with backoff + jitter (always re-observing first, so a dispatch
//!   that maybe reached PVE is never blindly repeated); permanent errors roll back: undo the
//!   steps that may have acted, in reverse, each undo journaled and itself resumable.

pub mod retry;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use pve_api::{ApiError, PveClient, Upid, WaitOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;
use crate::journal::{Event, Journal, JournalError, Phase};

pub use retry::Backoff;

/// What an observation found.
#[derive(Debug, Clone)]
pub enum Observed {
    /// The step's effect is there; the value is what was seen (journaled with `done`).
    Done(Value),
    /// Not there yet.
    NotDone,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A PVE error; `retry::is_transient` decides whether it is worth another try.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// Not yet, try again (e.g. a lease not visible yet). Bounded by the backoff's attempts.
    #[error("{0}")]
    NotYet(String),
    /// A refusal that no retry can fix (a guest felhom does not own, a shared host key…).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// PVE stayed unreachable for the whole connect budget: the job pauses.
    #[error("PVE unreachable for {waited_secs} s ({error}); the job is paused: `felhom resume` goes on when PVE is back")]
    Unreachable { waited_secs: u64, error: String },
}

impl StepError {
    /// PVE could not be reached at all (connection refused, reset, timed out): retried
    /// within the connect budget, then the job pauses.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StepError::Api(ApiError::Transport { .. }))
    }
    /// The server's TLS certificate was refused (a pin mismatch, a CA that does not vouch
    /// for it): never retried and never rolled back — felhom will not talk to that server,
    /// so undoing is impossible and waiting does not help. The job stops at once, paused
    /// (resumable once the trust is fixed); the command exits 2.
    pub fn is_untrusted(&self) -> bool {
        matches!(self, StepError::Api(ApiError::Certificate { .. }))
    }
    pub fn is_transient(&self) -> bool {
        match self {
            StepError::Api(e) => retry::is_transient(e),
            StepError::NotYet(_) | StepError::Unreachable { .. } => true,
            StepError::Refused(_) | StepError::Journal(_) => false,
        }
    }
}

/// One step of a job. Implementations are enums (static dispatch), so the futures are `Send`
/// and jobs can run in parallel on the tokio runtime.
pub trait Step: Copy + Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Whether the step has a compensating action.
    fn has_undo(&self) -> bool;
    /// Read PVE (and the journal) to tell whether the step's effect is already there.
    /// Must not write anything.
    fn observe(&self, cx: &JobCx) -> impl Future<Output = Result<Observed, StepError>> + Send;
    /// The inputs the act will use, journaled with the intent (chosen MAC, target size…).
    fn intent(&self, cx: &JobCx) -> impl Future<Output = Result<Value, StepError>> + Send;
    /// Make it so (one or a few API calls, waiting for any task).
    fn act(&self, cx: &JobCx) -> impl Future<Output = Result<(), StepError>> + Send;
    /// The compensating action; idempotent (observes first).
    fn undo(&self, cx: &JobCx) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Whether the act writes nothing to the guest's config (a start, a wait): the config
    /// an observe read before it is still the config after it, so the engine keeps it.
    fn keeps_config(&self) -> bool {
        false
    }
}

/// Facts a job learns along the way; every fact is journaled (in an intent, note or done
/// event under `"facts"`) so that a resumed job knows them again.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Facts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    /// The MAC felhom chose for net0 (upper case, as PVE stores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden_rootfs_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_fingerprint: Option<String>,
    /// The VMID `plan` would show for an "auto" spec, chosen in spec order before the job
    /// runs; the reserve step tries it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid_hint: Option<u32>,
    /// The job whose marker the guest carries, when it is not this job: a repair job works
    /// on a guest an earlier bring-up made, and keeps that job's marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_job: Option<String>,
    /// The rootfs volume the restore made (bound to the guest record with the MAC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// A publish job's golden hash (`crate::publish::golden_hash`), written into the
    /// template's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden_sha256: Option<String>,
    /// A linked clone's template VMID, chosen with the clone's intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<u32>,
    /// PVE refused this job's restore at this VMID: a guest was there already
    /// (`AlreadyExists`, before any work). Whatever is there is not this job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid_taken: Option<u32>,
}

impl Facts {
    /// Overlay the facts found in a journaled event's data.
    pub fn merge(&mut self, data: &Value) {
        let Some(f) = data.get("facts") else { return };
        let Ok(new) = serde_json::from_value::<Facts>(f.clone()) else {
            return;
        };
        macro_rules! take {
            ($($field:ident),*) => { $( if new.$field.is_some() { self.$field = new.$field; } )* };
        }
        take!(
            vmid,
            mac,
            golden_mac,
            golden_rootfs_bytes,
            upid,
            ip,
            ssh_fingerprint,
            vmid_hint,
            owner_job,
            rootfs,
            golden_sha256,
            template,
            vmid_taken
        );
    }
}

/// Progress notifications for the CLI (a bar on a TTY, JSON lines for scripts).
pub trait Progress: Send + Sync {
    fn event(&self, job: &str, label: &str, event: ProgressEvent<'_>);
}

#[derive(Debug, Clone, Copy)]
pub enum ProgressEvent<'a> {
    Step(&'static str),
    StepDone(&'static str),
    Retry {
        step: &'static str,
        attempt: u32,
        error: &'a str,
    },
    Undo(&'static str),
    Finished {
        ok: bool,
    },
}

/// A progress sink that says nothing.
pub struct Quiet;
impl Progress for Quiet {
    fn event(&self, _: &str, _: &str, _: ProgressEvent<'_>) {}
}

/// How long one task wait polls an unreachable PVE before the engine's loop (which reports
/// it and counts it against the connect budget) takes over.
const UNREACHABLE_IN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything a step needs: the client, the journal, the job's facts.
pub struct JobCx {
    pub job_id: String,
    /// Human label for progress output (hostname or VMID).
    pub label: String,
    pub node: String,
    pub client: PveClient,
    pub journal: Arc<Journal>,
    pub config: Arc<Config>,
    pub facts: Mutex<Facts>,
    pub progress: Arc<dyn Progress>,
    pub backoff: Backoff,
    /// The validated spec of a bring-up job (teardown has none).
    pub spec: Option<crate::spec::GuestSpec>,
    /// The guest config as an observe last read it. Nothing is written between the observe
    /// that verified one step, the observe of the next and the start of its act, so those
    /// share one read; the act takes the config (its later reads, after its own writes, go
    /// to PVE) and the engine forgets it after every act and around every undo.
    pub config_cache: Mutex<Option<(u32, pve_api::LxcConfig)>>,
    /// Set by the engine while an act or undo runs: reads then are not kept.
    pub acting: std::sync::atomic::AtomicBool,
    /// How long this host takes for the waits on the guest that are not PVE tasks (DHCP
    /// lease, SSH keys), learned like task durations, shared by all jobs of this process.
    pub waits: Arc<pve_api::durations::TaskDurations>,
    /// The VMIDs where PVE accepted a create (restore or clone) from this process, not
    /// undone since: the guest there is this process's. A `provisioning` record alone is
    /// only a claim (the create may yet be refused: another process took the VMID), so the
    /// uniqueness scan reads a recorded guest's marker unless its VMID is here or its
    /// record is past `provisioning`. Shared by all jobs of this process; empty after a
    /// restart (those guests are then read).
    pub created: Arc<Mutex<std::collections::HashSet<u32>>>,
    /// Since when every request of this job failed to reach PVE (the connect budget runs
    /// from there; a task wait that gave up on an unreachable PVE has spent it already).
    pub unreachable_since: Mutex<Option<std::time::Instant>>,
    /// Set by the engine while the step's last dispatch may have been performed without
    /// felhom learning of it (its answer lost: a 595, a broken connection, a task past its
    /// deadline; or an act of a crashed run being resumed): the step's observe then looks
    /// for the task it may have started ([`JobCx::settle_lost_dispatch`]).
    pub dispatch_unsure: std::sync::atomic::AtomicBool,
    /// What this process's own acts saw, so the reads after them can be spared.
    pub shortcuts: Shortcuts,
}

/// What an act of this process saw and the next reads need not ask PVE again (issue 16,
/// requests per guest). In memory only: a resumed job has none and reads everything.
#[derive(Debug, Default)]
pub struct Shortcuts {
    /// The act proved its step done, with this value (a start task that ended OK, a wait
    /// whose last look saw the effect): the engine takes it instead of observing again.
    proved: Mutex<Option<Value>>,
    /// The running act keeps the config ([`Step::keeps_config`]).
    keeps_config: std::sync::atomic::AtomicBool,
    /// This process's reserve picked the VMID from a cluster read a moment old.
    pub reserved: std::sync::atomic::AtomicBool,
    /// When this process restored the guest (it is stopped until a start of ours).
    pub restored_at: Mutex<Option<std::time::Instant>>,
    /// When this process's start request went out (set once its task ended well).
    pub started_at: Mutex<Option<std::time::Instant>>,
}

impl Shortcuts {
    pub fn note_reserved(&self) {
        self.reserved
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn reserved(&self) -> bool {
        self.reserved.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// This process's restore of the guest had ended by `at` (its marker visible since).
    pub fn note_restored(&self, at: std::time::Instant) {
        *self.restored_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }
    /// This process's start, its request sent at `went_out`, ended well.
    pub fn note_started(&self, went_out: std::time::Instant) {
        *self.started_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(went_out);
        // A started guest is no longer the stopped one the restore left.
        *self.restored_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    /// A start of ours is about to be sent: from now on the guest may be running, even if
    /// the answer is lost (a 595 after the work), so the next observe asks PVE.
    pub fn note_start_sent(&self) {
        *self.restored_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    pub fn restored(&self) -> bool {
        self.restored_at().is_some()
    }
    /// When this process's restore of the guest had ended by (cleared by a start of ours).
    pub fn restored_at(&self) -> Option<std::time::Instant> {
        *self.restored_at.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn started_at(&self) -> Option<std::time::Instant> {
        *self.started_at.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl JobCx {
    /// PVE accepted this process's create at `vmid` (see [`JobCx::created`]).
    pub fn note_created(&self, vmid: u32, created: bool) {
        let mut set = self.created.lock().unwrap_or_else(|p| p.into_inner());
        if created {
            set.insert(vmid);
        } else {
            set.remove(&vmid);
        }
    }
    /// Whether PVE accepted a create at `vmid` from this process, not undone since.
    pub fn made_here(&self, vmid: u32) -> bool {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&vmid)
    }
    pub fn facts(&self) -> Facts {
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn update_facts(&self, f: impl FnOnce(&mut Facts)) {
        f(&mut self.facts.lock().unwrap_or_else(|p| p.into_inner()));
    }
    /// Journal a mid-act fact (a UPID, a chosen MAC) durably.
    pub fn note(&self, step: &str, facts: Facts) -> Result<(), JournalError> {
        self.journal.record(
            &self.job_id,
            step,
            0,
            Phase::Note,
            &json!({ "facts": facts }),
        )?;
        let v = json!({ "facts": facts });
        self.update_facts(|f| f.merge(&v));
        Ok(())
    }
    /// The config of `vmid` an observe read, if nothing was written since. Outside an act
    /// it stays cached; inside one it is taken, so the act's later reads go to PVE.
    pub fn cached_config(&self, vmid: u32) -> Option<pve_api::LxcConfig> {
        let mut c = self.config_cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.as_ref().is_some_and(|(v, _)| *v == vmid) {
            if self.is_acting() && !self.keeps_config() {
                return c.take().map(|(_, cfg)| cfg);
            }
            return c.as_ref().map(|(_, cfg)| cfg.clone());
        }
        None
    }
    /// Keep a config an observe read (a read inside an act or undo is not kept).
    pub fn cache_config(&self, vmid: u32, cfg: &pve_api::LxcConfig) {
        if !self.is_acting() || self.keeps_config() {
            *self.config_cache.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((vmid, cfg.clone()));
        }
    }
    fn forget_config(&self) {
        *self.config_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    fn is_acting(&self) -> bool {
        self.acting.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn keeps_config(&self) -> bool {
        self.shortcuts
            .keeps_config
            .load(std::sync::atomic::Ordering::SeqCst)
    }
    /// Enter or leave an act or undo; leaving forgets the cached config unless the act
    /// keeps it ([`Step::keeps_config`]; an undo never does).
    fn set_acting(&self, acting: bool, keeps_config: bool) {
        self.acting
            .store(acting, std::sync::atomic::Ordering::SeqCst);
        self.shortcuts
            .keeps_config
            .store(acting && keeps_config, std::sync::atomic::Ordering::SeqCst);
        if !acting && !keeps_config {
            self.forget_config();
        }
        if acting {
            self.shortcuts
                .proved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        }
    }
    /// The running act saw its step done, with the value its observe would return: the
    /// engine takes it instead of observing again (no read repeats what the act just saw).
    pub fn prove(&self, v: Value) {
        *self
            .shortcuts
            .proved
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(v);
    }
    fn take_proved(&self) -> Option<Value> {
        self.shortcuts
            .proved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
    fn set_dispatch_unsure(&self, unsure: bool) {
        self.dispatch_unsure
            .store(unsure, std::sync::atomic::Ordering::SeqCst);
    }

    /// Observe first after a lost answer: when the step's last dispatch may have been
    /// performed unseen ([`JobCx::dispatch_unsure`]), wait for every running task of `vmid`
    /// of one of `task_types` (a resize, a start, a stop, a destroy the lost answer started)
    /// before the step reads PVE and decides, so it never dispatches a second one behind the
    /// first (a second grow, a second start that PVE's worker fails). No request otherwise.
    /// How the waited task ended does not matter here (failed, or gone from the list): the
    /// observe that follows reads its effect.
    pub async fn settle_lost_dispatch(
        &self,
        vmid: pve_api::Vmid,
        task_types: &[&str],
    ) -> Result<(), StepError> {
        if !self
            .dispatch_unsure
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(());
        }
        let running = self.client.active_tasks(&self.node, vmid).await?;
        let mut waited = false;
        for upid in running
            .iter()
            .filter(|u| task_types.contains(&u.task_type.as_str()))
        {
            waited = true;
            match self.client.wait_task(upid, &self.wait_options()).await {
                // Ended, well or not, or no longer to be seen: the observe reads the effect.
                Ok(_) => {}
                // Unreachable, or still running past the deadline: never a second dispatch.
                Err(e) if e.is_transient() || matches!(e, ApiError::TaskTimeout { .. }) => {
                    return Err(e.into())
                }
                Err(_) => {}
            }
        }
        if waited {
            self.forget_config();
        }
        self.set_dispatch_unsure(false);
        Ok(())
    }

    /// The job whose marker the guest must carry: this job, or for a repair the bring-up
    /// that made the guest.
    pub fn owner_job(&self) -> String {
        self.facts()
            .owner_job
            .unwrap_or_else(|| self.job_id.clone())
    }
    pub fn vmid(&self) -> Result<pve_api::Vmid, StepError> {
        let n = self.facts().vmid.ok_or_else(|| {
            StepError::Refused("internal: no VMID reserved before this step".into())
        })?;
        pve_api::Vmid::try_from(n)
            .map_err(|e| StepError::Refused(format!("journal holds an invalid VMID {n}: {e}")))
    }
    pub fn wait_options(&self) -> WaitOptions {
        WaitOptions {
            deadline: self.config.task_timeout,
            // The wait polls an unreachable PVE for a slice of the connect budget only,
            // then hands the error to the engine's loop, which says "PVE unreachable,
            // retrying" and waits again (the step's observe finds the journaled UPID) until
            // the budget is spent: a silent wait would look like a hung step.
            unreachable_budget: self.config.connect_budget.min(UNREACHABLE_IN_WAIT),
            ..WaitOptions::default()
        }
    }
    /// Wait for a task through its node's shared watch (`PveClient::watch_task`: one task-list
    /// request per poll for all of this process's tasks on the node); the UPID is journaled
    /// first so a resumed job can wait for it again.
    pub async fn wait(&self, step: &str, upid: &Upid) -> Result<(), StepError> {
        self.wait_ended(step, upid).await.map(|_| ())
    }
    /// [`JobCx::wait`], telling when the task had ended by (`TaskOutcome::ended_by`).
    pub async fn wait_ended(
        &self,
        step: &str,
        upid: &Upid,
    ) -> Result<std::time::Instant, StepError> {
        self.note(
            step,
            Facts {
                upid: Some(upid.to_string()),
                ..Facts::default()
            },
        )?;
        let opts = self.wait_options();
        match self.client.watch_task(upid, &opts).await {
            Ok(out) => Ok(out.ended_by),
            Err(e @ ApiError::Transport { .. }) => {
                // The wait polled an unreachable PVE for its slice of the budget already.
                let spent = std::time::Instant::now()
                    .checked_sub(opts.unreachable_budget)
                    .unwrap_or_else(std::time::Instant::now);
                let mut since = self
                    .unreachable_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                since.get_or_insert(spent);
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }
    fn set_unreachable_since(&self, v: Option<std::time::Instant>) {
        *self
            .unreachable_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = v;
    }
    fn unreachable_since_or_now(&self) -> std::time::Instant {
        *self
            .unreachable_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(std::time::Instant::now)
    }
}

/// How a job run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    /// Failed permanently and every done step was undone.
    RolledBack {
        error: String,
    },
    /// Failed, and an undo failed too: a person has to look.
    RollbackIncomplete {
        error: String,
        undo_error: String,
    },
    /// A forward-only job (teardown) failed permanently; it stays resumable.
    Failed {
        error: String,
    },
    /// A step kept failing transiently (PVE unreachable, a lock that never freed); nothing
    /// was undone and the job stays resumable.
    Paused {
        error: String,
    },
    /// `apply` found the guest as specified: nothing was done (zero writes).
    Unchanged,
    /// `apply` would not change the guest (not provably felhom's, or drift no step may
    /// repair): why. Nothing was written.
    Refused {
        error: String,
    },
    /// `teardown` found no such guest: nothing to do.
    Absent,
    /// PVE's TLS certificate was refused ([`StepError::is_untrusted`]): the job stopped at
    /// once, nothing retried or undone; it stays resumable (paused) for when the pin or CA
    /// is put right. Exit 2: the configuration does not fit the host.
    Untrusted {
        error: String,
    },
}

impl Outcome {
    /// The CLI exit code this outcome maps to: 0 ok; 1 failed and rolled back (or a teardown
    /// refused); 3 failed and not undone — rollback incomplete, or paused on an unreachable
    /// PVE — which needs a person or `felhom resume`.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Succeeded | Outcome::Unchanged | Outcome::Absent => 0,
            Outcome::RolledBack { .. } | Outcome::Failed { .. } | Outcome::Refused { .. } => 1,
            Outcome::RollbackIncomplete { .. } | Outcome::Paused { .. } => 3,
            Outcome::Untrusted { .. } => 2,
        }
    }
}

/// Whether this build carries the crash-point hook: only builds made for tests and benches
/// (the cargo feature `crash-points`, which `felhom`'s own tests enable through their
/// dev-dependency and CI's bench build through `--features crash-points`). In a build without
/// it, `FELHOM_CRASH_AT` does nothing, so no environment a production host sets can make
/// felhom kill itself.
pub const CRASH_POINTS: bool = cfg!(feature = "crash-points");

/// The test hook for crash-safety tests: `FELHOM_CRASH_AT=<step>:<before|after|undo|undone>`
/// makes the process SIGKILL itself at that point, exactly like a power cut would: `before` is
/// after the intent is durable and before the act, `after` is after the act and before `done`
/// is journaled (for a step observed already done, both fire before `done` is journaled);
/// `undo` is after the undo's intent and before it acts, `undone` after it acted and before
/// that is journaled.
/// Live only in builds with [`CRASH_POINTS`].
fn crash_point(step: &str, phase: &str) {
    if crash_requested(
        std::env::var("FELHOM_CRASH_AT").ok().as_deref(),
        step,
        phase,
    ) {
        tracing::warn!(step, phase, "FELHOM_CRASH_AT: killing this process");
        // SAFETY: kill(2) on our own pid with SIGKILL has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Whether `FELHOM_CRASH_AT`'s value asks for a crash at `step:phase` in this build.
fn crash_requested(spec: Option<&str>, step: &str, phase: &str) -> bool {
    CRASH_POINTS
        && spec.is_some_and(|spec| {
            let point = format!("{step}:{phase}");
            spec.split(',').any(|s| s == point)
        })
}

#[cfg(test)]
mod crash_point_tests {
    use super::*;

    /// The hook is live exactly in builds with the feature: `cargo nextest run -p
    /// felhom-core` builds without it (the value asks, nothing fires), a workspace run
    /// builds with it (unified with `felhom`'s dev-dependency) and the same value fires.
    #[test]
    fn crash_at_fires_only_in_builds_with_crash_points() {
        let asked = Some("mounts:after,restore:before");
        assert_eq!(
            crash_requested(asked, "restore", "before"),
            cfg!(feature = "crash-points")
        );
        assert!(!crash_requested(asked, "restore", "after"));
        assert!(!crash_requested(None, "restore", "before"));
    }

    /// Without the feature, the real hook returns with `FELHOM_CRASH_AT` set: this test
    /// process is still alive to pass.
    #[cfg(not(feature = "crash-points"))]
    #[test]
    fn without_the_feature_the_hook_does_nothing() {
        // nextest runs each test in its own process; nothing else reads the variable.
        std::env::set_var("FELHOM_CRASH_AT", "restore:before");
        // With the hook live, this SIGKILLs the test process and the test fails.
        crash_point("restore", "before");
    }
}

/// Per-step state replayed from the journal.
#[derive(Debug, Default)]
struct Replay {
    done: HashSet<String>,
    intended: HashSet<String>,
    undone: HashSet<String>,
    attempts: std::collections::HashMap<String, u32>,
}

fn replay(events: &[Event], facts: &mut Facts) -> Replay {
    let mut r = Replay::default();
    for e in events {
        facts.merge(&e.data);
        match e.phase {
            Phase::Intent => {
                r.intended.insert(e.step.clone());
                let a = r.attempts.entry(e.step.clone()).or_default();
                *a = (*a).max(e.attempt);
            }
            Phase::Done => {
                r.done.insert(e.step.clone());
            }
            Phase::UndoDone => {
                r.undone.insert(e.step.clone());
            }
            Phase::Note | Phase::UndoIntent | Phase::Error => {}
        }
    }
    r
}

/// Load a job's facts from its journal events.
pub fn load_facts(journal: &Journal, job: &str) -> Result<Facts, JournalError> {
    let mut facts = Facts::default();
    replay(&journal.events(job)?, &mut facts);
    Ok(facts)
}

/// Run (or resume) a job: forward through `steps`, and on a permanent failure roll back if
/// `rollback` is set. A step that keeps failing *transiently* (PVE unreachable, locks that
/// never free) pauses the job instead: rolling back a customer's guest because the API was
/// down for a minute would be the wrong compensation.
pub async fn run<S: Step>(cx: &JobCx, steps: &[S], rollback: bool) -> Outcome {
    use crate::journal::JobState;
    let job = match cx.journal.job(&cx.job_id) {
        Ok(j) => j,
        Err(e) => {
            return Outcome::Paused {
                error: e.to_string(),
            }
        }
    };
    let events = match cx.journal.events(&cx.job_id) {
        Ok(e) => e,
        Err(e) => {
            return Outcome::Paused {
                error: e.to_string(),
            }
        }
    };
    let mut facts = cx.facts();
    let rep = replay(&events, &mut facts);
    cx.update_facts(|f| *f = facts);

    let error = if job.state == JobState::RollingBack {
        job.error
            .clone()
            .unwrap_or_else(|| "rollback resumed".into())
    } else {
        match forward(cx, steps, &rep).await {
            Ok(()) => {
                if let Err(e) = cx
                    .journal
                    .set_job_state(&cx.job_id, JobState::Succeeded, None)
                {
                    return Outcome::Paused {
                        error: e.to_string(),
                    };
                }
                cx.progress
                    .event(&cx.job_id, &cx.label, ProgressEvent::Finished { ok: true });
                return Outcome::Succeeded;
            }
            Err((error, Stop::Untrusted)) => {
                let _ = cx
                    .journal
                    .set_job_state(&cx.job_id, JobState::Paused, Some(&error));
                cx.progress
                    .event(&cx.job_id, &cx.label, ProgressEvent::Finished { ok: false });
                return Outcome::Untrusted { error };
            }
            Err((error, stop)) if stop == Stop::Transient || !rollback => {
                let transient = stop == Stop::Transient;
                // Stays resumable forward: `felhom resume` picks it up again.
                let state = if transient {
                    JobState::Paused
                } else {
                    JobState::Failed
                };
                let _ = cx.journal.set_job_state(&cx.job_id, state, Some(&error));
                cx.progress
                    .event(&cx.job_id, &cx.label, ProgressEvent::Finished { ok: false });
                return if transient {
                    Outcome::Paused { error }
                } else {
                    Outcome::Failed { error }
                };
            }
            Err((error, _)) => error,
        }
    };
    let outcome = roll_back(cx, steps, error).await;
    cx.progress
        .event(&cx.job_id, &cx.label, ProgressEvent::Finished { ok: false });
    outcome
}

/// How a forward run stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Kept failing transiently: pause, never undo.
    Transient,
    /// A permanent error: roll back (or fail, for a forward-only job).
    Permanent,
    /// The server's certificate was refused: stop, never undo.
    Untrusted,
}

/// Forward through the steps; on failure, the message and how it stopped.
async fn forward<S: Step>(cx: &JobCx, steps: &[S], rep: &Replay) -> Result<(), (String, Stop)> {
    for step in steps {
        let name = step.name();
        if rep.done.contains(name) {
            continue;
        }
        cx.progress
            .event(&cx.job_id, &cx.label, ProgressEvent::Step(name));
        let first_attempt = rep.attempts.get(name).copied().unwrap_or(0);
        let started = std::time::Instant::now();
        match drive(cx, *step, first_attempt).await {
            Ok(observed) => {
                let data = json!({ "observed": observed, "facts": cx.facts() });
                cx.journal
                    .record(&cx.job_id, name, 0, Phase::Done, &data)
                    .map_err(|e| (e.to_string(), Stop::Transient))?;
                crate::metrics::step_done(name, started.elapsed());
                cx.progress
                    .event(&cx.job_id, &cx.label, ProgressEvent::StepDone(name));
            }
            Err(e) => {
                let msg = format!("{name}: {e}");
                let stop = if e.is_untrusted() {
                    Stop::Untrusted
                } else if e.is_transient() {
                    Stop::Transient
                } else {
                    Stop::Permanent
                };
                let _ = cx.journal.record(
                    &cx.job_id,
                    name,
                    0,
                    Phase::Error,
                    &json!({ "error": msg, "permanent": stop != Stop::Transient }),
                );
                return Err((msg, stop));
            }
        }
    }
    Ok(())
}

/// observe → (intent → act → observe)… until done, a permanent error, or the attempts run out.
async fn drive<S: Step>(cx: &JobCx, step: S, mut attempt: u32) -> Result<Value, StepError> {
    let name = step.name();
    let mut retries = 0u32;
    // Retries while PVE was unreachable: they pace the backoff, the connect budget bounds them.
    let mut unreachable_retries = 0u32;
    // A step intended by an earlier run may have dispatched unseen before that run died.
    cx.set_dispatch_unsure(attempt > 0);
    loop {
        let outcome = match step.observe(cx).await {
            Ok(Observed::Done(v)) => {
                // A step found done without acting still passes its crash points, so a crash
                // test can kill the process around every step's journal record.
                crash_point(name, "before");
                crash_point(name, "after");
                return Ok(v);
            }
            Ok(Observed::NotDone) => {
                attempt += 1;
                let inputs = step.intent(cx).await?;
                let data = json!({ "inputs": inputs, "facts": cx.facts() });
                cx.journal
                    .record(&cx.job_id, name, attempt, Phase::Intent, &data)?;
                crash_point(name, "before");
                cx.set_acting(true, step.keeps_config());
                let r = step.act(cx).await;
                cx.set_acting(false, step.keeps_config());
                cx.set_dispatch_unsure(matches!(&r, Err(StepError::Api(e)) if e.maybe_performed()));
                crash_point(name, "after");
                if r.is_ok() {
                    if let Some(v) = cx.take_proved() {
                        return Ok(v);
                    }
                }
                r
            }
            Err(e) => Err(e),
        };
        if !matches!(&outcome, Err(e) if e.is_unreachable()) {
            cx.set_unreachable_since(None);
        }
        if let Err(e) = &outcome {
            crate::metrics::step_error(e);
        }
        match outcome {
            Err(e) if e.is_unreachable() => {
                // PVE is down or unreachable: retry within the connect budget, then pause.
                // Never counted against the attempts, never a rollback.
                let since = cx.unreachable_since_or_now();
                let waited = since.elapsed();
                if waited >= cx.config.connect_budget {
                    return Err(StepError::Unreachable {
                        waited_secs: waited.as_secs(),
                        error: e.to_string(),
                    });
                }
                unreachable_retries += 1;
                retry_later(
                    cx,
                    name,
                    attempt,
                    unreachable_retries,
                    json!({
                        "error": format!("PVE unreachable, retrying ({} s): {e}", waited.as_secs()),
                        "permanent": false,
                        "unreachable": true,
                    }),
                )
                .await;
            }
            Ok(()) => {
                // Loop: the next observe verifies. An act that "succeeded" without visible
                // effect counts against the retry budget so the loop stays bounded.
                retries += 1;
                if retries > cx.backoff.max_attempts {
                    return Err(StepError::Refused(format!(
                        "no effect after {retries} attempts"
                    )));
                }
            }
            // Quorum lost: PVE refuses every write until the cluster is whole again, which
            // no backoff of ours bridges. Pause now; `felhom resume` (or apply) goes on.
            Err(e @ StepError::Api(ApiError::NoQuorum { .. })) => return Err(e),
            Err(e) if e.is_transient() && retries < cx.backoff.max_attempts => {
                retries += 1;
                retry_later(
                    cx,
                    name,
                    attempt,
                    retries,
                    json!({ "error": e.to_string(), "permanent": false }),
                )
                .await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A transient error: journal it (`data` carries the error text), tell the progress sink,
/// and sleep the backoff for this retry. Forward steps and undos retry alike.
async fn retry_later(cx: &JobCx, step: &'static str, attempt: u32, retries: u32, data: Value) {
    crate::metrics::step_retry(step);
    let _ = cx
        .journal
        .record(&cx.job_id, step, attempt, Phase::Error, &data);
    cx.progress.event(
        &cx.job_id,
        &cx.label,
        ProgressEvent::Retry {
            step,
            attempt: retries,
            error: data["error"].as_str().unwrap_or_default(),
        },
    );
    tokio::time::sleep(cx.backoff.delay(retries)).await;
}

async fn roll_back<S: Step>(cx: &JobCx, steps: &[S], error: String) -> Outcome {
    let _ = cx.journal.set_job_state(
        &cx.job_id,
        crate::journal::JobState::RollingBack,
        Some(&error),
    );
    let events = match cx.journal.events(&cx.job_id) {
        Ok(e) => e,
        Err(e) => {
            return Outcome::RollbackIncomplete {
                error,
                undo_error: e.to_string(),
            }
        }
    };
    let mut facts = cx.facts();
    let rep = replay(&events, &mut facts);
    cx.update_facts(|f| *f = facts);
    for step in steps.iter().rev() {
        let name = step.name();
        let touched = rep.intended.contains(name) || rep.done.contains(name);
        if !step.has_undo() || !touched || rep.undone.contains(name) {
            continue;
        }
        cx.progress
            .event(&cx.job_id, &cx.label, ProgressEvent::Undo(name));
        if let Err(e) = cx
            .journal
            .record(&cx.job_id, name, 0, Phase::UndoIntent, &json!({}))
        {
            return Outcome::RollbackIncomplete {
                error,
                undo_error: e.to_string(),
            };
        }
        crash_point(name, "undo");
        let mut retries = 0;
        loop {
            cx.forget_config();
            cx.set_acting(true, false);
            let r = step.undo(cx).await;
            cx.set_acting(false, false);
            if let Err(e) = &r {
                crate::metrics::step_error(e);
            }
            cx.set_dispatch_unsure(matches!(&r, Err(StepError::Api(e)) if e.maybe_performed()));
            match r {
                Ok(()) => {
                    crash_point(name, "undone");
                    break;
                }
                Err(e) if e.is_transient() && retries < cx.backoff.max_attempts => {
                    retries += 1;
                    retry_later(
                        cx,
                        name,
                        retries,
                        retries,
                        json!({ "error": e.to_string(), "undo": true, "permanent": false }),
                    )
                    .await;
                }
                Err(e) => {
                    let undo_error = format!("undo {name}: {e}");
                    let _ = cx.journal.record(
                        &cx.job_id,
                        name,
                        retries,
                        Phase::Error,
                        &json!({ "error": undo_error, "undo": true, "permanent": true }),
                    );
                    let _ = cx.journal.set_job_state(
                        &cx.job_id,
                        crate::journal::JobState::RollbackIncomplete,
                        Some(&format!("{error}; {undo_error}")),
                    );
                    return Outcome::RollbackIncomplete { error, undo_error };
                }
            }
        }
        if let Err(e) = cx
            .journal
            .record(&cx.job_id, name, 0, Phase::UndoDone, &json!({}))
        {
            return Outcome::RollbackIncomplete {
                error,
                undo_error: e.to_string(),
            };
        }
    }
    let _ = cx.journal.set_job_state(
        &cx.job_id,
        crate::journal::JobState::RolledBack,
        Some(&error),
    );
    Outcome::RolledBack { error }
}
