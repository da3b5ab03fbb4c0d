//! The journal: felhom's durable record of intent and outcome.
//!
//! SQLite (bundled), WAL, `synchronous=FULL`: an `intent` row is on disk before the act it
//! announces, so after a crash at any point `resume` knows which step may have acted and
//! observes PVE again instead of guessing. Events are append-only; a job's step states are
//! derived by replaying them (the steno idea, small).
//!
//! Leases make "one job per guest" hold across processes: a lease names the job and the
//! holding process (pid plus its start time, so a recycled pid is not mistaken for the
//! holder). A lease whose process is gone is taken over; a live one is refused with the
//! holder's job id. There are two kinds, with one rule: a VMID lease (the guest on PVE) and an
//! identity lease on (customer, name), so two felhom processes applying the same spec never
//! build the same guest twice before either has a VMID.
//!
//! A guest's identity is (customer, name); the name defaults to the hostname. Jobs and guest
//! records carry it, so "what is felhom doing or holding for acme/web1" is one query.
//!
//! # Job states and liveness
//!
//! | state | final | resumable | meaning |
//! |---|---|---|---|
//! | `running` | | yes | going forward |
//! | `rolling_back` | | yes | undoing after a permanent failure |
//! | `failed` | | yes | a forward-only job (teardown) failed, or a step kept failing transiently |
//! | `paused` | | yes | stopped on transient trouble, to go on where it stopped |
//! | `rollback_incomplete` | | by a person | an undo failed: PVE may hold leftovers |
//! | `succeeded` | yes | | done |
//! | `rolled_back` | yes | | undone after a permanent failure |
//! | `superseded` | yes | never | a later job (a teardown) took the guest over; `superseded_by` names it |
//!
//! A run starts at `create_job`/`claim_job` (`started_at`, `ended_at` cleared) and ends when
//! the job reaches a state other than `running`/`rolling_back` (`ended_at`). A job whose run
//! has not ended and whose process (`runner_pid` + `runner_start`) is gone was interrupted
//! (a crash or a kill): [`JobRow::liveness`] and [`JobRow::display_state`] say so.
//!
//! # Schema (version [`SCHEMA_VERSION`], in `PRAGMA user_version`; see `schema.rs`)
//!
//! | table | columns | since |
//! |---|---|---|
//! | `jobs` | `id` PK, `kind`, `vmid`, `node`, `hostname`, `spec` (JSON), `state`, `error`, `runner_pid`, `runner_start`, `created_at`, `updated_at` | v1 |
//! | | `customer`, `name` (identity; NULL when unknown), `started_at`, `ended_at`, `superseded_by` | v2 |
//! | `events` | `seq` PK, `job_id` → jobs, `step`, `attempt`, `phase`, `data` (JSON), `at` | v1 |
//! | `leases` | `vmid` PK, `job_id`, `pid`, `pid_start`, `acquired_at` | v1 |
//! | `guests` | `vmid` PK, `node`, `job_id`, `hostname`, `mac`, `ip`, `ssh_fingerprint`, `spec` (JSON), `state`, `updated_at` | v1 |
//! | | `customer`, `name` | v2 |
//! | `durations` | (`kind`, `seq`) PK, `lo_ms`, `hi_ms` | v1 |
//! | `identity_leases` | (`customer`, `name`) PK, `job_id`, `pid`, `pid_start`, `acquired_at` | v2 |
//!
//! Version 1 is the layout of felhom before the journal had a version. Migration 2 fills the
//! identity of old rows from the stored spec JSON (`customer`, and `hostname` for the name; a
//! guest without a spec hostname is named by its recorded hostname; a teardown job, whose spec
//! holds only the VMID, takes its guest's identity), `started_at` from `created_at`, and
//! `ended_at` from `updated_at` for jobs not in flight. Times are milliseconds since the epoch.

mod schema;

pub use schema::CURRENT as SCHEMA_VERSION;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use pve_api::Vmid;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("cannot open journal {path}: {message}")]
    Open { path: String, message: String },
    #[error("guest {vmid} is held by job {job} (felhom process {pid}); wait for it, or `felhom resume {job}` once it has stopped")]
    Held { vmid: u32, job: String, pid: u32 },
    #[error("job {job} is being run by felhom process {pid}")]
    JobBusy { job: String, pid: u32 },
    #[error("no job {0} in the journal")]
    NoSuchJob(String),
    #[error("guest {customer}/{name} is held by job {job} (felhom process {pid}); wait for it, or `felhom resume {job}` once it has stopped")]
    IdentityHeld {
        customer: String,
        name: String,
        job: String,
        pid: u32,
    },
    #[error("journal {path} has schema version {found}, newer than this felhom understands (version {supported}); a newer felhom wrote it: use that one")]
    TooNew {
        path: String,
        found: u32,
        supported: u32,
    },
}

impl JournalError {
    /// The job and process holding a lease this error refused (VMID or identity), if it is
    /// such a refusal.
    pub fn held_by(&self) -> Option<(&str, u32)> {
        match self {
            JournalError::Held { job, pid, .. } | JournalError::IdentityHeld { job, pid, .. } => {
                Some((job, *pid))
            }
            _ => None,
        }
    }
}

/// What kind of job a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Bringup,
    Teardown,
    /// `apply` converging a guest that exists: the bring-up steps, forward only (a failed
    /// repair never destroys the customer's guest).
    Repair,
    /// `felhom golden publish`: restore the golden into a template VMID and make it a
    /// template (`crate::publish`); rolls back like a bring-up.
    Publish,
}

/// Where a job stands (the table in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    RollingBack,
    Succeeded,
    RolledBack,
    RollbackIncomplete,
    /// A forward-only job (teardown) failed, or a step kept failing transiently; resumable.
    Failed,
    /// Stopped on transient trouble (PVE unreachable, a lock that never freed); resumable
    /// forward, where it stopped.
    Paused,
    /// A later job (a teardown) took the guest over. Final; never resumed.
    Superseded,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::RollingBack => "rolling_back",
            JobState::Succeeded => "succeeded",
            JobState::RolledBack => "rolled_back",
            JobState::RollbackIncomplete => "rollback_incomplete",
            JobState::Failed => "failed",
            JobState::Paused => "paused",
            JobState::Superseded => "superseded",
        }
    }
    fn parse(s: &str) -> JobState {
        match s {
            "running" => JobState::Running,
            "rolling_back" => JobState::RollingBack,
            "succeeded" => JobState::Succeeded,
            "rolled_back" => JobState::RolledBack,
            "failed" => JobState::Failed,
            "paused" => JobState::Paused,
            "superseded" => JobState::Superseded,
            _ => JobState::RollbackIncomplete,
        }
    }
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            JobState::Running | JobState::RollingBack | JobState::Failed | JobState::Paused
        )
    }
    /// Nothing is left to do, ever: the job cannot be resumed, not even by a person.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::RolledBack | JobState::Superseded
        )
    }
    /// A process is (or was, until it died) acting on this job.
    pub fn is_in_flight(self) -> bool {
        matches!(self, JobState::Running | JobState::RollingBack)
    }
}

/// Whether a job's run is going on, was cut off, or has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "liveness")]
pub enum Liveness {
    /// Its run has not ended and the process running it is alive (it may be this one).
    Live { pid: u32 },
    /// Its run has not ended but the process running it is gone (a crash or a kill):
    /// `felhom resume` picks it up.
    Interrupted,
    /// Its run ended: the job is final, or waits for `resume` (see [`Journal::needs_person`]).
    Stopped,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: String,
    pub kind: JobKind,
    pub vmid: Option<u32>,
    pub node: String,
    pub hostname: Option<String>,
    pub spec: Value,
    pub state: JobState,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The guest's identity; `None` for jobs that never learnt it.
    pub customer: Option<String>,
    pub name: Option<String>,
    /// When the latest run started (create or claim), ms.
    pub started_at: i64,
    /// When the latest run ended (the job left `running`/`rolling_back`), ms.
    pub ended_at: Option<i64>,
    /// The job that superseded this one (state `superseded`).
    pub superseded_by: Option<String>,
    /// The process that last ran (or runs) the job.
    pub runner_pid: Option<u32>,
    /// Whether that process was alive when the row was read.
    pub runner_alive: bool,
}

impl JobRow {
    /// Is the run going on, cut off, or over (as of when the row was read)?
    pub fn liveness(&self) -> Liveness {
        if self.state.is_final() || self.ended_at.is_some() {
            return Liveness::Stopped;
        }
        match self.runner_pid {
            Some(pid) if self.runner_alive => Liveness::Live { pid },
            _ => Liveness::Interrupted,
        }
    }

    /// The state to show a person: the stored state, except `interrupted` for a run whose
    /// process died before it ended.
    pub fn display_state(&self) -> &str {
        match self.liveness() {
            Liveness::Interrupted => "interrupted",
            _ => self.state.as_str(),
        }
    }
}

/// A job waiting for a person: what happened and what to run.
#[derive(Debug, Clone, Serialize)]
pub struct NeedsPerson {
    pub job: JobRow,
    /// Why it stopped, in words.
    pub why: String,
    /// The command that goes on with it.
    pub run: String,
}

/// One journal event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// About to act (written durably before the act).
    Intent,
    /// Something learned mid-act that resume needs (a UPID, a chosen MAC).
    Note,
    /// Verified done, with what was observed.
    Done,
    /// About to undo.
    UndoIntent,
    /// Undo verified.
    UndoDone,
    /// An error (transient or permanent) while acting or undoing.
    Error,
}

impl Phase {
    fn as_str(&self) -> &'static str {
        match self {
            Phase::Intent => "intent",
            Phase::Note => "note",
            Phase::Done => "done",
            Phase::UndoIntent => "undo_intent",
            Phase::UndoDone => "undo_done",
            Phase::Error => "error",
        }
    }
    fn parse(s: &str) -> Phase {
        match s {
            "intent" => Phase::Intent,
            "note" => Phase::Note,
            "done" => Phase::Done,
            "undo_intent" => Phase::UndoIntent,
            "undo_done" => Phase::UndoDone,
            _ => Phase::Error,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: i64,
    pub job_id: String,
    pub step: String,
    pub attempt: u32,
    pub phase: Phase,
    pub data: Value,
    pub at: i64,
}

/// One live guest as the uniqueness scan sees it ([`Journal::live_guest_macs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMac {
    pub mac: Option<String>,
    /// Still `provisioning`: its restore may not have been accepted by PVE yet.
    pub provisioning: bool,
}

/// A guest record's column that must not be shared between live guests
/// ([`Journal::live_guest_sharing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedColumn {
    Ip,
    SshFingerprint,
}

/// A guest felhom made and has recorded: the baseline for drift and uniqueness checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestRecord {
    pub vmid: u32,
    pub node: String,
    pub job_id: String,
    pub hostname: String,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub ssh_fingerprint: Option<String>,
    pub spec: Value,
    /// `provisioning`, `active`, `torn_down`.
    pub state: String,
    /// The guest's identity. Left empty, [`Journal::upsert_guest`] fills them from `spec`
    /// (`customer`; `hostname`, else `self.hostname`).
    #[serde(default)]
    pub customer: String,
    #[serde(default)]
    pub name: String,
    /// The rootfs volume the restore made (`local-lvm:vm-1100-disk-0`): with the MAC, what
    /// binds the guest to this record beyond its description, which anyone with
    /// `VM.Config.Options` can rewrite.
    #[serde(default)]
    pub rootfs: Option<String>,
}

pub struct Journal {
    conn: Mutex<Connection>,
    pid: u32,
    pid_start: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22); with
/// the pid it names one process for good, even after the pid is recycled.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn process_alive(pid: u32, start: u64) -> bool {
    process_start(pid) == Some(start)
}

/// The identity a stored guest spec names: its `customer`, and its `hostname` (else
/// `hostname`) as the name. `None` without a customer.
/// How long a journal operation waits for another process's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// SQLite's "another connection holds the lock" answers.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn spec_identity(spec: &Value, hostname: Option<&str>) -> Option<(String, String)> {
    let customer = spec["customer"].as_str()?;
    let name = spec["name"]
        .as_str()
        .or(spec["hostname"].as_str())
        .or(hostname)?;
    Some((customer.to_string(), name.to_string()))
}

/// The journal holds hostnames, MACs, IPs, SSH fingerprints and PVE's error texts: it is
/// private to its owner. A new journal is created here with mode 0600 before SQLite opens
/// it, and SQLite gives the `-wal` and `-shm` files it creates the database file's mode
/// (its unix VFS copies it), so all three are 0600 whatever the umask. An existing journal
/// (or its `-wal`/`-shm`) readable or writable by group or others is used as it is, with a
/// warning naming the file and its mode: changing a file's mode behind its owner's back is
/// not felhom's call.
fn private_file(path: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(JournalError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        }
    }
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        files.push(p.into());
    }
    for f in files {
        if let Ok(meta) = std::fs::metadata(&f) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "journal file {} has mode {mode:04o}: group or others can read what it holds (hostnames, MACs, IPs, fingerprints); `chmod 600` it",
                    f.display()
                );
            }
        }
    }
    Ok(())
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| JournalError::Open {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            }
        }
        private_file(path)?;
        // Several felhom processes may open one journal at the same moment (a batch, a
        // controller's retries): switching a new file to WAL takes an exclusive lock that
        // SQLite does not wait for, so a busy open is tried again, within the busy timeout.
        let started = std::time::Instant::now();
        let conn = loop {
            match Self::open_once(path) {
                Err(JournalError::Db(e)) if is_busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => break other?,
            }
        };
        let pid = std::process::id();
        let pid_start = process_start(pid).unwrap_or(0);
        Ok(Journal {
            conn: Mutex::new(conn),
            pid,
            pid_start,
        })
    }

    /// Open, switch to WAL, and bring the schema to this build's version.
    fn open_once(path: &Path) -> Result<Connection, JournalError> {
        let mut conn = Connection::open(path).map_err(|e| JournalError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut conn, path)?;
        Ok(conn)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every write is a
        // transaction), so a poisoned mutex is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace the learned durations (`kind` → brackets `(lo_ms, hi_ms)`, oldest first): how
    /// long this host's tasks and guest waits take, so the next process polls where tasks
    /// end instead of learning again (`pve_api::durations`).
    pub fn save_durations(&self, items: &[(String, u64, u64)]) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM durations", [])?;
        for (seq, (kind, lo, hi)) in items.iter().enumerate() {
            tx.execute(
                "INSERT INTO durations (kind, seq, lo_ms, hi_ms) VALUES (?1, ?2, ?3, ?4)",
                params![kind, seq as i64, *lo as i64, *hi as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The learned durations, in the order they were saved.
    pub fn load_durations(&self) -> Result<Vec<(String, u64, u64)>, JournalError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT kind, lo_ms, hi_ms FROM durations ORDER BY seq")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?.max(0) as u64,
                r.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Insert a new job, claimed by this process. Its identity comes from `spec` when that
    /// names a customer (`customer`, and `hostname` else `hostname` as the name); otherwise
    /// set it with [`Journal::set_job_identity`].
    pub fn create_job(
        &self,
        id: &str,
        kind: JobKind,
        node: &str,
        hostname: Option<&str>,
        spec: &Value,
    ) -> Result<(), JournalError> {
        let now = now_ms();
        let (customer, name) = spec_identity(spec, hostname).unzip();
        self.conn().execute(
            "INSERT INTO jobs (id, kind, vmid, node, hostname, spec, state, runner_pid, runner_start, created_at, updated_at, customer, name, started_at)
             VALUES (?1, ?2, NULL, ?3, ?4, ?5, 'running', ?6, ?7, ?8, ?8, ?9, ?10, ?8)",
            params![id, kind_str(kind), node, hostname, spec.to_string(), self.pid, self.pid_start as i64, now, customer, name],
        )?;
        Ok(())
    }

    /// Record which guest identity a job acts for.
    pub fn set_job_identity(
        &self,
        id: &str,
        customer: &str,
        name: &str,
    ) -> Result<(), JournalError> {
        let n = self.conn().execute(
            "UPDATE jobs SET customer = ?2, name = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, customer, name, now_ms()],
        )?;
        if n == 0 {
            return Err(JournalError::NoSuchJob(id.to_string()));
        }
        Ok(())
    }

    /// Claim a job for this process (resume). Refused while another live process runs it.
    pub fn claim_job(&self, id: &str) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row: Option<(Option<u32>, Option<i64>)> = tx
            .query_row(
                "SELECT runner_pid, runner_start FROM jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((pid, start)) = row else {
            return Err(JournalError::NoSuchJob(id.to_string()));
        };
        if let (Some(pid), Some(start)) = (pid, start) {
            if pid != self.pid && process_alive(pid, start as u64) {
                return Err(JournalError::JobBusy {
                    job: id.to_string(),
                    pid,
                });
            }
        }
        tx.execute(
            "UPDATE jobs SET runner_pid = ?2, runner_start = ?3, updated_at = ?4, started_at = ?4, ended_at = NULL WHERE id = ?1",
            params![id, self.pid, self.pid_start as i64, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The node a job acts on, after the guest it works on was found elsewhere in the
    /// cluster (migrated outside felhom): the next run of the job acts there.
    pub fn set_job_node(&self, id: &str, node: &str) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE jobs SET node = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, node, now_ms()],
        )?;
        Ok(())
    }

    /// Where a recorded guest lives now, as `/cluster/resources` says (a guest migrated
    /// outside felhom is followed, not re-created). The record's spec keeps the node it was
    /// made on.
    pub fn set_guest_node(&self, vmid: u32, node: &str) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE guests SET node = ?2, updated_at = ?3 WHERE vmid = ?1",
            params![vmid, node, now_ms()],
        )?;
        Ok(())
    }

    pub fn set_job_vmid(&self, id: &str, vmid: Vmid) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE jobs SET vmid = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, vmid.get(), now_ms()],
        )?;
        Ok(())
    }

    /// Set a job's state (and error, if given). Leaving `running`/`rolling_back` ends the
    /// run (`ended_at`); entering them starts it again. A superseded job stays superseded:
    /// a process still running it cannot bring it back.
    pub fn set_job_state(
        &self,
        id: &str,
        state: JobState,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        let now = now_ms();
        let ended = (!state.is_in_flight()).then_some(now);
        self.conn().execute(
            "UPDATE jobs SET state = ?2, error = COALESCE(?3, error), updated_at = ?4, ended_at = ?5
             WHERE id = ?1 AND state != 'superseded'",
            params![id, state.as_str(), error, now, ended],
        )?;
        Ok(())
    }

    /// Mark `job` superseded by `by_job` (a teardown taking its guest over): final, never
    /// resumed. Returns false, changing nothing, if `job` had already reached a final state.
    /// Refused with [`JournalError::JobBusy`] while another live process is running it.
    pub fn supersede(&self, job: &str, by_job: &str) -> Result<bool, JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row = tx
            .query_row(&format!("{JOB_SELECT} WHERE id = ?1"), [job], job_from_row)
            .optional()?;
        let Some((row, start)) = row else {
            return Err(JournalError::NoSuchJob(job.to_string()));
        };
        if row.state.is_final() {
            return Ok(false);
        }
        if let (Some(pid), Some(start)) = (row.runner_pid, start) {
            if pid != self.pid && row.ended_at.is_none() && process_alive(pid, start as u64) {
                return Err(JournalError::JobBusy {
                    job: job.to_string(),
                    pid,
                });
            }
        }
        let now = now_ms();
        tx.execute(
            "UPDATE jobs SET state = 'superseded', superseded_by = ?2, updated_at = ?3, ended_at = ?3 WHERE id = ?1",
            params![job, by_job, now],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Is the process `(pid, start)` alive? This process always is.
    fn alive(&self, pid: u32, start: i64) -> bool {
        (pid == self.pid && start as u64 == self.pid_start) || process_alive(pid, start as u64)
    }

    /// Run a job query (`{JOB_SELECT} ...`) and tell each row whether its runner lives.
    fn query_jobs(
        &self,
        tail: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<JobRow>, JournalError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("{JOB_SELECT} {tail}"))?;
        let rows = st
            .query_map(params, job_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(mut row, start)| {
                row.runner_alive = match (row.runner_pid, start) {
                    (Some(pid), Some(start)) => self.alive(pid, start),
                    _ => false,
                };
                row
            })
            .collect())
    }

    pub fn job(&self, id: &str) -> Result<JobRow, JournalError> {
        self.query_jobs("WHERE id = ?1", [id])?
            .pop()
            .ok_or_else(|| JournalError::NoSuchJob(id.to_string()))
    }

    /// All jobs, newest first.
    pub fn jobs(&self) -> Result<Vec<JobRow>, JournalError> {
        self.query_jobs("ORDER BY created_at DESC, id", [])
    }

    /// Jobs that a crash left unfinished and that no live process is running.
    pub fn resumable_jobs(&self) -> Result<Vec<JobRow>, JournalError> {
        Ok(self
            .query_jobs(
                "WHERE state IN ('running', 'rolling_back', 'failed', 'paused') ORDER BY created_at, id",
                [],
            )?
            .into_iter()
            .filter(|j| !j.runner_alive || j.runner_pid == Some(self.pid))
            .collect())
    }

    /// Whether `job`'s run is going on, was interrupted, or has ended.
    pub fn job_liveness(&self, job: &str) -> Result<Liveness, JournalError> {
        Ok(self.job(job)?.liveness())
    }

    /// Jobs that stopped and wait for a person: a rollback that could not finish (PVE may
    /// hold leftovers), or a job paused or failed on the way, oldest first. Jobs some live
    /// process is running again right now are left out.
    pub fn needs_person(&self) -> Result<Vec<NeedsPerson>, JournalError> {
        Ok(self
            .query_jobs(
                "WHERE state IN ('rollback_incomplete', 'failed', 'paused') ORDER BY created_at, id",
                [],
            )?
            .into_iter()
            .filter(|j| !matches!(j.liveness(), Liveness::Live { .. }))
            .map(|job| {
                let error = job.error.as_deref().unwrap_or("no error recorded");
                let why = match job.state {
                    JobState::RollbackIncomplete => format!(
                        "its rollback could not finish, so PVE may hold what it made: {error}"
                    ),
                    JobState::Paused => format!("paused on trouble that may pass: {error}"),
                    _ => format!("failed: {error}"),
                };
                let run = format!("felhom resume {}", job.id);
                NeedsPerson { job, why, run }
            })
            .collect())
    }

    /// Jobs for the guest (`customer`, `name`) that are not final, oldest first.
    pub fn unfinished_jobs_for_identity(
        &self,
        customer: &str,
        name: &str,
    ) -> Result<Vec<JobRow>, JournalError> {
        self.query_jobs(
            "WHERE customer = ?1 AND name = ?2 AND state NOT IN ('succeeded', 'rolled_back', 'superseded') ORDER BY created_at, id",
            params![customer, name],
        )
    }

    /// Append an event. Returns once it is durable (WAL + synchronous=FULL).
    pub fn record(
        &self,
        job: &str,
        step: &str,
        attempt: u32,
        phase: Phase,
        data: &Value,
    ) -> Result<(), JournalError> {
        self.conn().execute(
            "INSERT INTO events (job_id, step, attempt, phase, data, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![job, step, attempt, phase.as_str(), data.to_string(), now_ms()],
        )?;
        Ok(())
    }

    pub fn events(&self, job: &str) -> Result<Vec<Event>, JournalError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT seq, job_id, step, attempt, phase, data, at FROM events WHERE job_id = ?1 ORDER BY seq")?;
        let rows = st
            .query_map([job], |r| {
                let data: String = r.get(5)?;
                let phase: String = r.get(4)?;
                Ok(Event {
                    seq: r.get(0)?,
                    job_id: r.get(1)?,
                    step: r.get(2)?,
                    attempt: r.get(3)?,
                    phase: Phase::parse(&phase),
                    data: serde_json::from_str(&data).unwrap_or(Value::Null),
                    at: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Take the lease on `vmid` for `job`, or say who holds it. A lease held by this same
    /// job (resume) or by a process that is gone is taken over.
    pub fn acquire_lease(&self, vmid: Vmid, job: &str) -> Result<(), JournalError> {
        self.take_lease(vmid, job, true)
    }

    /// [`Journal::acquire_lease`] for a VMID chosen among free ones: a lease another job
    /// holds is never taken over, even when its process is gone. That job crashed after
    /// its reserve and will resume on this VMID; a job that may pick any free VMID takes
    /// the next one instead (the race: it listed this VMID as free just before the other
    /// leased it and died).
    pub fn acquire_free_lease(&self, vmid: Vmid, job: &str) -> Result<(), JournalError> {
        self.take_lease(vmid, job, false)
    }

    fn take_lease(&self, vmid: Vmid, job: &str, take_stale: bool) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let held: Option<(String, u32, i64)> = tx
            .query_row(
                "SELECT job_id, pid, pid_start FROM leases WHERE vmid = ?1",
                [vmid.get()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((holder, pid, start)) = held {
            let mine = holder == job;
            if !mine && (!take_stale || process_alive(pid, start as u64)) {
                return Err(JournalError::Held {
                    vmid: vmid.get(),
                    job: holder,
                    pid,
                });
            }
            if !mine {
                // The holder's process is gone. Its job stays in the journal, resumable;
                // it will have to take the lease back (and find it held) before acting.
                tracing::warn!(vmid = vmid.get(), stale_job = %holder, pid, "taking over a stale lease");
            }
        }
        tx.execute(
            "INSERT INTO leases (vmid, job_id, pid, pid_start, acquired_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(vmid) DO UPDATE SET job_id = excluded.job_id, pid = excluded.pid, pid_start = excluded.pid_start, acquired_at = excluded.acquired_at",
            params![vmid.get(), job, self.pid, self.pid_start as i64, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Release `job`'s lease on `vmid` (no-op if another job holds it now).
    pub fn release_lease(&self, vmid: Vmid, job: &str) -> Result<(), JournalError> {
        self.conn().execute(
            "DELETE FROM leases WHERE vmid = ?1 AND job_id = ?2",
            params![vmid.get(), job],
        )?;
        Ok(())
    }

    /// VMIDs leased by any job (candidates for "next free" skip these).
    pub fn leased_vmids(&self) -> Result<Vec<u32>, JournalError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT vmid FROM leases")?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The job and process holding `vmid`, if that process is alive and is not this one.
    pub fn live_lease_holder(&self, vmid: Vmid) -> Result<Option<(String, u32)>, JournalError> {
        let held: Option<(String, u32, i64)> = self
            .conn()
            .query_row(
                "SELECT job_id, pid, pid_start FROM leases WHERE vmid = ?1",
                [vmid.get()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(held
            .filter(|(_, pid, start)| *pid != self.pid && process_alive(*pid, *start as u64))
            .map(|(j, pid, _)| (j, pid)))
    }

    /// Take the lease on the guest identity (`customer`, `name`) for `job`, with the VMID
    /// lease's rule: re-entrant for the same job, taken over from a process that is gone,
    /// refused ([`JournalError::IdentityHeld`]) while another job's process lives (this
    /// process included).
    pub fn acquire_identity(
        &self,
        customer: &str,
        name: &str,
        job: &str,
    ) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let held: Option<(String, u32, i64)> = tx
            .query_row(
                "SELECT job_id, pid, pid_start FROM identity_leases WHERE customer = ?1 AND name = ?2",
                [customer, name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((holder, pid, start)) = held {
            if holder != job {
                if self.alive(pid, start) {
                    return Err(JournalError::IdentityHeld {
                        customer: customer.to_string(),
                        name: name.to_string(),
                        job: holder,
                        pid,
                    });
                }
                tracing::warn!(%customer, %name, stale_job = %holder, pid, "taking over a stale identity lease");
            }
        }
        tx.execute(
            "INSERT INTO identity_leases (customer, name, job_id, pid, pid_start, acquired_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(customer, name) DO UPDATE SET job_id = excluded.job_id, pid = excluded.pid, pid_start = excluded.pid_start, acquired_at = excluded.acquired_at",
            params![customer, name, job, self.pid, self.pid_start as i64, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Release `job`'s lease on (`customer`, `name`) (no-op if another job holds it now).
    pub fn release_identity(
        &self,
        customer: &str,
        name: &str,
        job: &str,
    ) -> Result<(), JournalError> {
        self.conn().execute(
            "DELETE FROM identity_leases WHERE customer = ?1 AND name = ?2 AND job_id = ?3",
            params![customer, name, job],
        )?;
        Ok(())
    }

    /// The job and process holding (`customer`, `name`), if that process is alive (this
    /// process included; a stale lease counts as free).
    pub fn identity_holder(
        &self,
        customer: &str,
        name: &str,
    ) -> Result<Option<(String, u32)>, JournalError> {
        let held: Option<(String, u32, i64)> = self
            .conn()
            .query_row(
                "SELECT job_id, pid, pid_start FROM identity_leases WHERE customer = ?1 AND name = ?2",
                [customer, name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(held
            .filter(|(_, pid, start)| self.alive(*pid, *start))
            .map(|(j, pid, _)| (j, pid)))
    }

    pub fn lease_holder(&self, vmid: Vmid) -> Result<Option<String>, JournalError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT job_id FROM leases WHERE vmid = ?1",
                [vmid.get()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Record a guest. An empty `customer` or `name` is filled from `spec` (`customer`;
    /// `hostname`, else the record's hostname).
    pub fn upsert_guest(&self, g: &GuestRecord) -> Result<(), JournalError> {
        let customer = Some(g.customer.as_str())
            .filter(|c| !c.is_empty())
            .or_else(|| g.spec["customer"].as_str());
        let name = Some(g.name.as_str())
            .filter(|n| !n.is_empty())
            .or_else(|| g.spec["name"].as_str())
            .or_else(|| g.spec["hostname"].as_str())
            .unwrap_or(&g.hostname);
        self.conn().execute(
            "INSERT INTO guests (vmid, node, job_id, hostname, mac, ip, ssh_fingerprint, spec, state, updated_at, customer, name, rootfs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT(vmid) DO UPDATE SET node = excluded.node, job_id = excluded.job_id, hostname = excluded.hostname,
               mac = excluded.mac, ip = excluded.ip, ssh_fingerprint = excluded.ssh_fingerprint, spec = excluded.spec,
               state = excluded.state, updated_at = excluded.updated_at, customer = excluded.customer, name = excluded.name,
               rootfs = COALESCE(excluded.rootfs, guests.rootfs)",
            params![g.vmid, g.node, g.job_id, g.hostname, g.mac, g.ip, g.ssh_fingerprint, g.spec.to_string(), g.state, now_ms(), customer, name, g.rootfs],
        )?;
        Ok(())
    }

    /// The live (not torn down) guests recorded for (`customer`, `name`), by VMID. More
    /// than one means a duplicate to resolve.
    pub fn guests_by_identity(
        &self,
        customer: &str,
        name: &str,
    ) -> Result<Vec<GuestRecord>, JournalError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "{GUEST_SELECT} WHERE customer = ?1 AND name = ?2 AND state != 'torn_down' ORDER BY vmid"
        ))?;
        let rows = st
            .query_map([customer, name], guest_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn guest(&self, vmid: u32) -> Result<Option<GuestRecord>, JournalError> {
        Ok(self
            .conn()
            .query_row(
                &format!("{GUEST_SELECT} WHERE vmid = ?1"),
                [vmid],
                guest_from_row,
            )
            .optional()?)
    }

    /// The VMIDs this journal's jobs hold that are not final (a bring-up under way, paused
    /// or interrupted): their guests are this journal's even before a guest record exists.
    pub fn unfinished_vmids(&self) -> Result<BTreeSet<u32>, JournalError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT vmid FROM jobs WHERE vmid IS NOT NULL AND state NOT IN ('succeeded', 'rolled_back', 'superseded')",
        )?;
        let rows = st
            .query_map([], |r| r.get::<_, u32>(0))?
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(rows)
    }

    /// Every guest felhom recorded that is not torn down.
    pub fn live_guests(&self) -> Result<Vec<GuestRecord>, JournalError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "{GUEST_SELECT} WHERE state != 'torn_down' ORDER BY vmid"
        ))?;
        let rows = st
            .query_map([], guest_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The MAC recorded for each live guest (`None`: not chosen yet), by VMID, and whether
    /// the guest is still `provisioning`. What a bring-up's uniqueness scan needs, without
    /// reading and decoding every guest's spec: each of a batch's bring-ups asks, so a
    /// whole-record read per bring-up made a 1000-guest batch quadratic in decoded specs
    /// (CPU, and peak memory with many in flight).
    pub fn live_guest_macs(&self) -> Result<std::collections::HashMap<u32, LiveMac>, JournalError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT vmid, mac, state = 'provisioning' FROM guests WHERE state != 'torn_down'",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    LiveMac {
                        mac: r.get(1)?,
                        provisioning: r.get(2)?,
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// A live guest other than `except_vmid` recorded with this IP (`column = "ip"`) or SSH
    /// host key (`"ssh_fingerprint"`): the lowest such VMID. The uniqueness checks of the
    /// link-up and SSH steps, one lookup instead of reading every record.
    pub fn live_guest_sharing(
        &self,
        column: SharedColumn,
        value: &str,
        except_vmid: u32,
    ) -> Result<Option<u32>, JournalError> {
        let column = match column {
            SharedColumn::Ip => "ip",
            SharedColumn::SshFingerprint => "ssh_fingerprint",
        };
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT vmid FROM guests WHERE {column} = ?1 AND vmid != ?2 AND state != 'torn_down' ORDER BY vmid LIMIT 1"
                ),
                params![value, except_vmid],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The SSH host key felhom last recorded for another guest with this hostname (a DR
    /// restore must present the same key, so clients see no changed host key).
    pub fn recorded_fingerprint(
        &self,
        hostname: &str,
        except_vmid: u32,
    ) -> Result<Option<String>, JournalError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT ssh_fingerprint FROM guests WHERE hostname = ?1 AND vmid != ?2 AND ssh_fingerprint IS NOT NULL ORDER BY updated_at DESC LIMIT 1",
                params![hostname, except_vmid],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn forget_guest(&self, vmid: u32, job: &str) -> Result<(), JournalError> {
        self.conn().execute(
            "UPDATE guests SET state = 'torn_down', job_id = ?2, updated_at = ?3 WHERE vmid = ?1",
            params![vmid, job, now_ms()],
        )?;
        Ok(())
    }

    /// Store the spec `felhom agent` was given for (`customer`, `name`) through its API.
    /// Returns whether it differs from what was stored (false: the same spec again).
    pub fn put_agent_spec(
        &self,
        customer: &str,
        name: &str,
        spec: &Value,
    ) -> Result<bool, JournalError> {
        let text = spec.to_string();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let old: Option<String> = tx
            .query_row(
                "SELECT spec FROM agent_specs WHERE customer = ?1 AND name = ?2",
                [customer, name],
                |r| r.get(0),
            )
            .optional()?;
        let old: Option<Value> = old.and_then(|t| serde_json::from_str(&t).ok());
        if old.as_ref() == Some(spec) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO agent_specs (customer, name, spec, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(customer, name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            params![customer, name, text, now_ms()],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Forget the agent's spec for (`customer`, `name`); whether there was one.
    pub fn delete_agent_spec(&self, customer: &str, name: &str) -> Result<bool, JournalError> {
        let n = self.conn().execute(
            "DELETE FROM agent_specs WHERE customer = ?1 AND name = ?2",
            [customer, name],
        )?;
        Ok(n > 0)
    }

    /// Every spec the agent was given through its API: (customer, name, spec), by identity.
    pub fn agent_specs(&self) -> Result<Vec<(String, String, Value)>, JournalError> {
        let conn = self.conn();
        let mut st =
            conn.prepare("SELECT customer, name, spec FROM agent_specs ORDER BY customer, name")?;
        let rows = st.query_map([], |r| {
            let spec: String = r.get(2)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                serde_json::from_str(&spec).unwrap_or(Value::Null),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether the journal can be written now (the agent's readiness): a write transaction
    /// taken and rolled back.
    pub fn writable(&self) -> Result<(), JournalError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.rollback()?;
        Ok(())
    }
}

fn kind_str(k: JobKind) -> &'static str {
    match k {
        JobKind::Bringup => "bringup",
        JobKind::Teardown => "teardown",
        JobKind::Repair => "repair",
        JobKind::Publish => "publish",
    }
}

const JOB_SELECT: &str = "SELECT id, kind, vmid, node, hostname, spec, state, error, created_at, updated_at, runner_pid, runner_start, customer, name, started_at, ended_at, superseded_by FROM jobs";

/// A job row (with `runner_alive` false) and its runner's start time.
fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(JobRow, Option<i64>)> {
    let kind: String = r.get(1)?;
    let spec: String = r.get(5)?;
    let state: String = r.get(6)?;
    let created_at: i64 = r.get(8)?;
    let row = JobRow {
        id: r.get(0)?,
        kind: match kind.as_str() {
            "teardown" => JobKind::Teardown,
            "repair" => JobKind::Repair,
            "publish" => JobKind::Publish,
            _ => JobKind::Bringup,
        },
        vmid: r.get(2)?,
        node: r.get(3)?,
        hostname: r.get(4)?,
        spec: serde_json::from_str(&spec).unwrap_or(Value::Null),
        state: JobState::parse(&state),
        error: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        runner_pid: r.get(10)?,
        runner_alive: false,
        customer: r.get(12)?,
        name: r.get(13)?,
        started_at: r.get::<_, Option<i64>>(14)?.unwrap_or(created_at),
        ended_at: r.get(15)?,
        superseded_by: r.get(16)?,
    };
    Ok((row, r.get(11)?))
}

const GUEST_SELECT: &str =
    "SELECT vmid, node, job_id, hostname, mac, ip, ssh_fingerprint, spec, state, customer, name, rootfs FROM guests";

fn guest_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GuestRecord> {
    let spec: String = r.get(7)?;
    let hostname: String = r.get(3)?;
    Ok(GuestRecord {
        vmid: r.get(0)?,
        node: r.get(1)?,
        job_id: r.get(2)?,
        customer: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
        name: r
            .get::<_, Option<String>>(10)?
            .unwrap_or_else(|| hostname.clone()),
        hostname,
        mac: r.get(4)?,
        ip: r.get(5)?,
        ssh_fingerprint: r.get(6)?,
        spec: serde_json::from_str(&spec).unwrap_or(Value::Null),
        state: r.get(8)?,
        rootfs: r.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal and its WAL and shared-memory files are the owner's only, whatever the
    /// umask (nextest runs each test in its own process, so setting the umask here is local).
    #[test]
    fn journal_wal_and_shm_are_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: umask has no memory-safety preconditions.
        unsafe { libc::umask(0o022) };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let j = Journal::open(&path).unwrap();
        j.create_job(
            "j1",
            JobKind::Bringup,
            "pve",
            Some("a"),
            &serde_json::json!({}),
        )
        .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let f = dir.path().join(format!("journal.db{suffix}"));
            let mode = std::fs::metadata(&f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", f.display());
        }
    }

    /// The agent's API specs survive a reopen; the same spec again is reported unchanged;
    /// a delete says whether there was one.
    #[test]
    fn agent_specs_are_durable_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let j = Journal::open(&path).unwrap();
        let spec = serde_json::json!({ "customer": "acme", "hostname": "web1" });
        assert!(j.put_agent_spec("acme", "web1", &spec).unwrap());
        assert!(!j.put_agent_spec("acme", "web1", &spec).unwrap());
        let changed = serde_json::json!({ "customer": "acme", "hostname": "web1", "cores": 2 });
        assert!(j.put_agent_spec("acme", "web1", &changed).unwrap());
        j.writable().unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(
            j.agent_specs().unwrap(),
            vec![("acme".to_string(), "web1".to_string(), changed)]
        );
        assert!(j.delete_agent_spec("acme", "web1").unwrap());
        assert!(!j.delete_agent_spec("acme", "web1").unwrap());
        assert!(j.agent_specs().unwrap().is_empty());
    }

    /// Many processes opening one new journal at the same moment all get it (a batch of
    /// `felhom apply` runs, a controller's retries): none fails with "database is locked".
    #[test]
    fn many_opens_of_one_new_journal_at_once_all_succeed() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("journal.db");
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Journal::open(&path).map(|_| ())
                        })
                    })
                    .collect();
                for h in handles {
                    let r = h.join().unwrap();
                    assert!(r.is_ok(), "round {round}: {r:?}");
                }
            });
        }
    }

    fn vmid(n: u32) -> Vmid {
        Vmid::try_from(n).unwrap()
    }

    #[test]
    fn events_replay_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            let j = Journal::open(&path).unwrap();
            j.create_job(
                "job1",
                JobKind::Bringup,
                "pve",
                Some("a"),
                &serde_json::json!({"x": 1}),
            )
            .unwrap();
            j.record(
                "job1",
                "restore",
                1,
                Phase::Intent,
                &serde_json::json!({"mac": "BC:24:11:00:00:01"}),
            )
            .unwrap();
            j.record("job1", "restore", 1, Phase::Done, &serde_json::json!({}))
                .unwrap();
        }
        let j = Journal::open(&path).unwrap();
        let ev = j.events("job1").unwrap();
        assert_eq!(
            ev.iter().map(|e| e.phase.clone()).collect::<Vec<_>>(),
            vec![Phase::Intent, Phase::Done]
        );
        assert_eq!(ev[0].data["mac"], "BC:24:11:00:00:01");
        assert_eq!(j.job("job1").unwrap().state, JobState::Running);
    }

    #[test]
    fn lease_is_exclusive_between_jobs_and_reentrant_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        j.acquire_lease(vmid(1200), "a").unwrap();
        j.acquire_lease(vmid(1200), "a").unwrap();
        // Same live process, different job: refused (two jobs never share a guest).
        match j.acquire_lease(vmid(1200), "b") {
            Err(JournalError::Held { job, .. }) => assert_eq!(job, "a"),
            other => panic!("expected Held, got {other:?}"),
        }
        j.release_lease(vmid(1200), "a").unwrap();
        j.acquire_lease(vmid(1200), "b").unwrap();
    }

    #[test]
    fn stale_lease_of_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        // A pid that cannot exist (beyond pid_max) with a made-up start time.
        j.conn().execute("INSERT INTO leases (vmid, job_id, pid, pid_start, acquired_at) VALUES (1300, 'dead', 99999999, 1, 0)", []).unwrap();
        // Not by a job picking among free VMIDs: the dead one will resume on it.
        match j.acquire_free_lease(vmid(1300), "alive") {
            Err(JournalError::Held { job, .. }) => assert_eq!(job, "dead"),
            other => panic!("expected Held, got {other:?}"),
        }
        j.acquire_lease(vmid(1300), "alive").unwrap();
        assert_eq!(
            j.lease_holder(vmid(1300)).unwrap().as_deref(),
            Some("alive")
        );
        j.acquire_free_lease(vmid(1300), "alive").unwrap();
    }

    fn journal() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j.db")).unwrap();
        (dir, j)
    }

    fn spec(customer: &str, hostname: &str) -> Value {
        serde_json::json!({"customer": customer, "hostname": hostname})
    }

    /// A live process that is not this one, killed and reaped on drop.
    struct Other(std::process::Child);
    impl Other {
        fn start() -> Other {
            Other(
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .unwrap(),
            )
        }
        fn pid(&self) -> u32 {
            self.0.id()
        }
        fn start_time(&self) -> i64 {
            process_start(self.pid()).unwrap() as i64
        }
    }
    impl Drop for Other {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn set_runner(j: &Journal, job: &str, pid: u32, start: i64) {
        j.conn()
            .execute(
                "UPDATE jobs SET runner_pid = ?2, runner_start = ?3 WHERE id = ?1",
                params![job, pid, start],
            )
            .unwrap();
    }

    fn ids(jobs: &[JobRow]) -> Vec<&str> {
        jobs.iter().map(|j| j.id.as_str()).collect()
    }

    #[test]
    fn states_round_trip_and_classify() {
        let all = [
            JobState::Running,
            JobState::RollingBack,
            JobState::Succeeded,
            JobState::RolledBack,
            JobState::RollbackIncomplete,
            JobState::Failed,
            JobState::Paused,
            JobState::Superseded,
        ];
        for s in all {
            assert_eq!(JobState::parse(s.as_str()), s);
            assert!(!(s.is_final() && s.is_resumable()), "{s:?}");
        }
        let finals: Vec<_> = all.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            vec![
                JobState::Succeeded,
                JobState::RolledBack,
                JobState::Superseded
            ]
        );
        assert!(JobState::Paused.is_resumable());
        assert!(!JobState::Superseded.is_resumable());
    }

    #[test]
    fn jobs_carry_identity_from_their_spec_or_when_set() {
        let (_d, j) = journal();
        j.create_job(
            "b",
            JobKind::Bringup,
            "pve",
            Some("web1"),
            &spec("acme", "web1"),
        )
        .unwrap();
        j.create_job(
            "t",
            JobKind::Teardown,
            "pve",
            Some("web1"),
            &serde_json::json!({"vmid": 1200}),
        )
        .unwrap();
        let b = j.job("b").unwrap();
        assert_eq!(
            (b.customer.as_deref(), b.name.as_deref()),
            (Some("acme"), Some("web1"))
        );
        assert_eq!(j.job("t").unwrap().customer, None);
        j.set_job_identity("t", "acme", "web1").unwrap();
        let t = j.job("t").unwrap();
        assert_eq!(
            (t.customer.as_deref(), t.name.as_deref()),
            (Some("acme"), Some("web1"))
        );
        assert!(matches!(
            j.set_job_identity("nope", "acme", "web1"),
            Err(JournalError::NoSuchJob(_))
        ));
    }

    #[test]
    fn unfinished_jobs_for_identity_leave_out_final_ones_and_other_guests() {
        let (_d, j) = journal();
        for (id, state) in [
            ("done", JobState::Succeeded),
            ("undone", JobState::RolledBack),
            ("gone", JobState::Superseded),
            ("stuck", JobState::RollbackIncomplete),
            ("paused", JobState::Paused),
            ("run", JobState::Running),
        ] {
            j.create_job(id, JobKind::Bringup, "pve", None, &spec("acme", "web1"))
                .unwrap();
            j.conn()
                .execute(
                    "UPDATE jobs SET state = ?2 WHERE id = ?1",
                    params![id, state.as_str()],
                )
                .unwrap();
        }
        j.create_job("db", JobKind::Bringup, "pve", None, &spec("acme", "db1"))
            .unwrap();
        j.create_job("b", JobKind::Bringup, "pve", None, &spec("beta", "web1"))
            .unwrap();
        let got = j.unfinished_jobs_for_identity("acme", "web1").unwrap();
        let mut got = ids(&got);
        got.sort();
        assert_eq!(got, vec!["paused", "run", "stuck"]);
        assert!(j
            .unfinished_jobs_for_identity("acme", "nothing")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn guests_by_identity_are_the_live_ones_with_identity_from_spec_or_given() {
        let (_d, j) = journal();
        let rec = |vmid, hostname: &str, spec: Value| GuestRecord {
            vmid,
            node: "pve".into(),
            job_id: "job".into(),
            hostname: hostname.into(),
            spec,
            state: "active".into(),
            ..Default::default()
        };
        j.upsert_guest(&rec(1200, "web1", spec("acme", "web1")))
            .unwrap();
        j.upsert_guest(&rec(1201, "web1", spec("acme", "web1")))
            .unwrap();
        j.upsert_guest(&rec(1202, "web1", spec("acme", "web1")))
            .unwrap();
        j.upsert_guest(&rec(1203, "web1", spec("beta", "web1")))
            .unwrap();
        // Given explicitly: the name is not the hostname.
        j.upsert_guest(&GuestRecord {
            customer: "acme".into(),
            name: "shop".into(),
            ..rec(1204, "web7", serde_json::json!({}))
        })
        .unwrap();
        j.forget_guest(1202, "teardown").unwrap();

        let live = j.guests_by_identity("acme", "web1").unwrap();
        assert_eq!(
            live.iter().map(|g| g.vmid).collect::<Vec<_>>(),
            vec![1200, 1201]
        );
        assert_eq!(live[0].customer, "acme");
        assert_eq!(live[0].name, "web1");
        let shop = j.guests_by_identity("acme", "shop").unwrap();
        assert_eq!(shop.len(), 1);
        assert_eq!((shop[0].vmid, shop[0].hostname.as_str()), (1204, "web7"));
        assert!(j.guests_by_identity("acme", "web7").unwrap().is_empty());
    }

    #[test]
    fn uniqueness_lookups_see_only_other_live_guests() {
        let (_d, j) = journal();
        let rec = |vmid, mac: Option<&str>, ip: &str, fp: &str| GuestRecord {
            vmid,
            node: "pve".into(),
            job_id: "job".into(),
            hostname: format!("g{vmid}"),
            mac: mac.map(str::to_string),
            ip: Some(ip.into()),
            ssh_fingerprint: Some(fp.into()),
            spec: spec("acme", &format!("g{vmid}")),
            state: "active".into(),
            ..Default::default()
        };
        j.upsert_guest(&rec(
            1200,
            Some("BC:24:11:00:00:01"),
            "10.0.0.2",
            "SHA256:a",
        ))
        .unwrap();
        j.upsert_guest(&rec(1201, None, "10.0.0.3", "SHA256:b"))
            .unwrap();
        j.upsert_guest(&rec(
            1202,
            Some("BC:24:11:00:00:03"),
            "10.0.0.4",
            "SHA256:c",
        ))
        .unwrap();
        j.forget_guest(1202, "teardown").unwrap();

        let macs = j.live_guest_macs().unwrap();
        assert_eq!(macs.len(), 2, "{macs:?}");
        assert_eq!(macs[&1200].mac.as_deref(), Some("BC:24:11:00:00:01"));
        assert_eq!(macs[&1201].mac, None);

        let ip = SharedColumn::Ip;
        let fp = SharedColumn::SshFingerprint;
        assert_eq!(
            j.live_guest_sharing(ip, "10.0.0.2", 1300).unwrap(),
            Some(1200)
        );
        // Its own record is not another guest's; a torn-down guest shares nothing.
        assert_eq!(j.live_guest_sharing(ip, "10.0.0.2", 1200).unwrap(), None);
        assert_eq!(j.live_guest_sharing(ip, "10.0.0.4", 1300).unwrap(), None);
        assert_eq!(
            j.live_guest_sharing(fp, "SHA256:b", 1300).unwrap(),
            Some(1201)
        );
        assert_eq!(j.live_guest_sharing(fp, "10.0.0.3", 1300).unwrap(), None);
    }

    #[test]
    fn identity_lease_is_exclusive_between_jobs_and_reentrant_for_one() {
        let (_d, j) = journal();
        assert_eq!(j.identity_holder("acme", "web1").unwrap(), None);
        j.acquire_identity("acme", "web1", "a").unwrap();
        j.acquire_identity("acme", "web1", "a").unwrap();
        assert_eq!(
            j.identity_holder("acme", "web1").unwrap(),
            Some(("a".to_string(), std::process::id()))
        );
        // Same live process, different job: refused.
        let err = j.acquire_identity("acme", "web1", "b").unwrap_err();
        match &err {
            JournalError::IdentityHeld {
                customer,
                name,
                job,
                pid,
            } => {
                assert_eq!((customer.as_str(), name.as_str()), ("acme", "web1"));
                assert_eq!((job.as_str(), *pid), ("a", std::process::id()));
            }
            other => panic!("expected IdentityHeld, got {other:?}"),
        }
        assert_eq!(err.held_by(), Some(("a", std::process::id())));
        // Another identity is another lease.
        j.acquire_identity("acme", "web2", "b").unwrap();
        j.acquire_identity("beta", "web1", "c").unwrap();
        // Releasing someone else's lease does nothing.
        j.release_identity("acme", "web1", "b").unwrap();
        assert!(j.acquire_identity("acme", "web1", "b").is_err());
        j.release_identity("acme", "web1", "a").unwrap();
        assert_eq!(j.identity_holder("acme", "web1").unwrap(), None);
        j.acquire_identity("acme", "web1", "b").unwrap();
        assert_eq!(
            j.identity_holder("acme", "web1").unwrap().map(|h| h.0),
            Some("b".to_string())
        );
    }

    #[test]
    fn identity_lease_of_a_live_other_process_is_refused() {
        let (_d, j) = journal();
        let other = Other::start();
        j.conn().execute(
            "INSERT INTO identity_leases (customer, name, job_id, pid, pid_start, acquired_at) VALUES ('acme', 'web1', 'theirs', ?1, ?2, 0)",
            params![other.pid(), other.start_time()],
        ).unwrap();
        assert_eq!(
            j.identity_holder("acme", "web1").unwrap(),
            Some(("theirs".to_string(), other.pid()))
        );
        assert_eq!(
            j.acquire_identity("acme", "web1", "mine")
                .unwrap_err()
                .held_by(),
            Some(("theirs", other.pid()))
        );
    }

    #[test]
    fn stale_identity_lease_of_dead_process_is_taken_over() {
        let (_d, j) = journal();
        // A pid that cannot exist (beyond pid_max) with a made-up start time.
        j.conn().execute("INSERT INTO identity_leases (customer, name, job_id, pid, pid_start, acquired_at) VALUES ('acme', 'web1', 'dead', 99999999, 1, 0)", []).unwrap();
        assert_eq!(j.identity_holder("acme", "web1").unwrap(), None);
        j.acquire_identity("acme", "web1", "alive").unwrap();
        assert_eq!(
            j.identity_holder("acme", "web1").unwrap(),
            Some(("alive".to_string(), std::process::id()))
        );
        // A recycled pid (alive, but started at another time) is not the holder either.
        let other = Other::start();
        j.conn()
            .execute(
                "UPDATE identity_leases SET job_id = 'old', pid = ?1, pid_start = ?2",
                params![other.pid(), other.start_time() - 1],
            )
            .unwrap();
        j.acquire_identity("acme", "web1", "new").unwrap();
    }

    #[test]
    fn liveness_follows_the_runner_and_the_run() {
        let (_d, j) = journal();
        j.create_job("a", JobKind::Bringup, "pve", None, &spec("acme", "web1"))
            .unwrap();
        let a = j.job("a").unwrap();
        assert!(a.runner_alive);
        assert_eq!(a.ended_at, None);
        assert_eq!(
            j.job_liveness("a").unwrap(),
            Liveness::Live {
                pid: std::process::id()
            }
        );
        assert_eq!(a.display_state(), "running");

        // Its process died mid-run.
        set_runner(&j, "a", 99999999, 1);
        assert_eq!(j.job_liveness("a").unwrap(), Liveness::Interrupted);
        assert_eq!(j.job("a").unwrap().display_state(), "interrupted");
        j.set_job_state("a", JobState::RollingBack, Some("boom"))
            .unwrap();
        assert_eq!(j.job("a").unwrap().display_state(), "interrupted");

        // Another live process runs it.
        let other = Other::start();
        set_runner(&j, "a", other.pid(), other.start_time());
        assert_eq!(
            j.job_liveness("a").unwrap(),
            Liveness::Live { pid: other.pid() }
        );
        assert_eq!(j.job("a").unwrap().display_state(), "rolling_back");

        // The run ended: the state is what it says, whatever became of the process.
        j.set_job_state("a", JobState::RolledBack, None).unwrap();
        set_runner(&j, "a", 99999999, 1);
        let a = j.job("a").unwrap();
        assert!(a.ended_at.is_some());
        assert_eq!(a.liveness(), Liveness::Stopped);
        assert_eq!(a.display_state(), "rolled_back");
        assert_eq!(a.error.as_deref(), Some("boom"));

        // A claim (resume) starts a new run.
        j.create_job("b", JobKind::Teardown, "pve", None, &Value::Null)
            .unwrap();
        j.set_job_state("b", JobState::Failed, Some("unreachable"))
            .unwrap();
        set_runner(&j, "b", 99999999, 1);
        let before = j.job("b").unwrap();
        assert_eq!(before.display_state(), "failed");
        std::thread::sleep(std::time::Duration::from_millis(2));
        j.claim_job("b").unwrap();
        let b = j.job("b").unwrap();
        assert_eq!(b.ended_at, None);
        assert!(b.started_at > before.started_at);
        assert_eq!(
            b.liveness(),
            Liveness::Live {
                pid: std::process::id()
            }
        );
        assert!(matches!(
            j.job_liveness("nope"),
            Err(JournalError::NoSuchJob(_))
        ));
    }

    #[test]
    fn supersede_is_final_and_sticks() {
        let (_d, j) = journal();
        j.create_job("up", JobKind::Bringup, "pve", None, &spec("acme", "web1"))
            .unwrap();
        j.set_job_state("up", JobState::Paused, Some("PVE unreachable"))
            .unwrap();
        assert_eq!(ids(&j.resumable_jobs().unwrap()), vec!["up"]);
        assert!(j.supersede("up", "down").unwrap());
        let up = j.job("up").unwrap();
        assert_eq!(up.state, JobState::Superseded);
        assert_eq!(up.superseded_by.as_deref(), Some("down"));
        assert_eq!(up.display_state(), "superseded");
        assert!(up.ended_at.is_some());
        assert!(!up.state.is_resumable());
        assert!(j.resumable_jobs().unwrap().is_empty());
        assert!(j
            .unfinished_jobs_for_identity("acme", "web1")
            .unwrap()
            .is_empty());
        // A process still running it cannot bring it back.
        j.set_job_state("up", JobState::Failed, Some("late"))
            .unwrap();
        assert_eq!(j.job("up").unwrap().state, JobState::Superseded);
        // Final jobs are not superseded.
        assert!(!j.supersede("up", "other").unwrap());
        assert_eq!(j.job("up").unwrap().superseded_by.as_deref(), Some("down"));
        j.create_job("ok", JobKind::Bringup, "pve", None, &Value::Null)
            .unwrap();
        j.set_job_state("ok", JobState::Succeeded, None).unwrap();
        assert!(!j.supersede("ok", "down").unwrap());
        assert_eq!(j.job("ok").unwrap().state, JobState::Succeeded);
        assert!(matches!(
            j.supersede("nope", "down"),
            Err(JournalError::NoSuchJob(_))
        ));
    }

    #[test]
    fn supersede_is_refused_while_another_live_process_runs_the_job() {
        let (_d, j) = journal();
        j.create_job("up", JobKind::Bringup, "pve", None, &Value::Null)
            .unwrap();
        let other = Other::start();
        set_runner(&j, "up", other.pid(), other.start_time());
        match j.supersede("up", "down") {
            Err(JournalError::JobBusy { job, pid }) => {
                assert_eq!((job.as_str(), pid), ("up", other.pid()))
            }
            r => panic!("expected JobBusy, got {r:?}"),
        }
        assert_eq!(j.job("up").unwrap().state, JobState::Running);
        // Once that process is gone, it can be.
        set_runner(&j, "up", 99999999, 1);
        assert!(j.supersede("up", "down").unwrap());
    }

    #[test]
    fn needs_person_lists_stuck_paused_and_failed_jobs_not_being_run() {
        let (_d, j) = journal();
        for (id, state) in [
            ("stuck", JobState::RollbackIncomplete),
            ("paused", JobState::Paused),
            ("failed", JobState::Failed),
            ("rerun", JobState::Failed),
            ("ok", JobState::Succeeded),
            ("undone", JobState::RolledBack),
        ] {
            j.create_job(id, JobKind::Bringup, "pve", None, &Value::Null)
                .unwrap();
            j.set_job_state(id, state, Some(&format!("why {id}")))
                .unwrap();
            set_runner(&j, id, 99999999, 1);
        }
        // Running, and an interrupted one (`resume` with no argument takes those).
        j.create_job("run", JobKind::Bringup, "pve", None, &Value::Null)
            .unwrap();
        j.create_job("dead", JobKind::Bringup, "pve", None, &Value::Null)
            .unwrap();
        set_runner(&j, "dead", 99999999, 1);
        // This process took `rerun` up again.
        j.claim_job("rerun").unwrap();

        let np = j.needs_person().unwrap();
        let mut got: Vec<_> = np.iter().map(|n| n.job.id.as_str()).collect();
        got.sort();
        assert_eq!(got, vec!["failed", "paused", "stuck"]);
        for n in &np {
            assert_eq!(n.run, format!("felhom resume {}", n.job.id));
            assert!(n.why.contains(&format!("why {}", n.job.id)), "{}", n.why);
        }
        let stuck = np.iter().find(|n| n.job.id == "stuck").unwrap();
        assert!(stuck.why.contains("rollback"), "{}", stuck.why);
    }

    #[test]
    fn resumable_jobs_take_paused_and_interrupted_but_not_live_others() {
        let (_d, j) = journal();
        for id in ["paused", "dead", "theirs", "mine"] {
            j.create_job(id, JobKind::Bringup, "pve", None, &Value::Null)
                .unwrap();
        }
        j.set_job_state("paused", JobState::Paused, Some("x"))
            .unwrap();
        set_runner(&j, "dead", 99999999, 1);
        let other = Other::start();
        set_runner(&j, "theirs", other.pid(), other.start_time());
        let mut got = j.resumable_jobs().unwrap();
        got.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(ids(&got), vec!["dead", "mine", "paused"]);
    }
}
