//! The journal's schema: the version-1 baseline and the ordered migrations after it.
//!
//! The version is SQLite's `PRAGMA user_version`. felhom before versioning never set it, so a
//! journal it wrote reads as version 0 with the v1 tables present, and a new file reads as
//! version 0 with nothing in it. Both are brought to v1 by [`V1`] (every statement is
//! `IF NOT EXISTS`, which is what that felhom ran on each open, so it changes nothing in
//! an existing file) and then through [`MIGRATIONS`] in order. Everything happens in one
//! IMMEDIATE transaction that also sets the new version: a crash or a failing migration leaves
//! the file exactly as it was, and of two processes opening an old journal at once, the second
//! waits for the write lock, reads the version again and finds nothing left to do.
//!
//! A journal with a version above [`CURRENT`] was written by a newer felhom; opening it fails
//! with [`JournalError::TooNew`] naming both versions, because writing to a layout this build
//! does not know could lose what the newer one recorded.
//!
//! The migrations only add (columns, tables, indexes), so a felhom from before versioning can
//! still run on a migrated file (its statements name their columns); it just leaves the new
//! columns empty, and it does not check the version.

use std::path::Path;

use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use serde_json::Value;

use super::{spec_identity, JournalError};

/// Version 1: the layout felhom used before the journal had a version, verbatim.
pub(super) const V1: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    vmid INTEGER,
    node TEXT NOT NULL,
    hostname TEXT,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    runner_pid INTEGER,
    runner_start INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    phase TEXT NOT NULL,
    data TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS leases (
    vmid INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS guests (
    vmid INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    job_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    mac TEXT,
    ip TEXT,
    ssh_fingerprint TEXT,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS durations (
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    lo_ms INTEGER NOT NULL,
    hi_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, seq)
);
"#;

type Migration = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// `MIGRATIONS[i]` takes a journal from version `i + 1` to `i + 2`. Append only; never edit
/// one that has shipped.
const MIGRATIONS: &[Migration] = &[v2_identity_and_liveness, v3_agent_specs];

/// The version this build writes.
pub const CURRENT: u32 = 1 + MIGRATIONS.len() as u32;

fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Bring the journal at `path` (open as `conn`) to [`CURRENT`], or refuse a newer one.
/// Returns the version found.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<u32, JournalError> {
    let too_new = |found| JournalError::TooNew {
        path: path.display().to_string(),
        found,
        supported: CURRENT,
    };
    let found = version(conn)?;
    if found > CURRENT {
        return Err(too_new(found));
    }
    if found == CURRENT {
        return Ok(found);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read again under the write lock: another process may have migrated meanwhile.
    let found = version(&tx)?;
    if found > CURRENT {
        return Err(too_new(found));
    }
    if found < 1 {
        tx.execute_batch(V1)?;
    }
    for (i, step) in MIGRATIONS.iter().enumerate() {
        if found < i as u32 + 2 {
            step(&tx)?;
        }
    }
    tx.pragma_update(None, "user_version", CURRENT)?;
    tx.commit()?;
    if found < CURRENT {
        tracing::info!(journal = %path.display(), from = found, to = CURRENT, "journal schema migrated");
    }
    Ok(found)
}

/// Version 2: guest identity (customer, name) on jobs and guests, identity leases, job
/// start/end times, and who superseded a job.
fn v2_identity_and_liveness(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        r#"
ALTER TABLE jobs ADD COLUMN customer TEXT;
ALTER TABLE jobs ADD COLUMN name TEXT;
ALTER TABLE jobs ADD COLUMN started_at INTEGER;
ALTER TABLE jobs ADD COLUMN ended_at INTEGER;
ALTER TABLE jobs ADD COLUMN superseded_by TEXT;
ALTER TABLE guests ADD COLUMN customer TEXT;
ALTER TABLE guests ADD COLUMN name TEXT;
ALTER TABLE guests ADD COLUMN rootfs TEXT;
CREATE TABLE identity_leases (
    customer TEXT NOT NULL,
    name TEXT NOT NULL,
    job_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL,
    PRIMARY KEY (customer, name)
);
CREATE INDEX jobs_identity ON jobs(customer, name);
CREATE INDEX guests_identity ON guests(customer, name);
UPDATE jobs SET started_at = created_at;
UPDATE jobs SET ended_at = updated_at WHERE state NOT IN ('running', 'rolling_back');
"#,
    )?;

    // Guests: the customer from the stored spec; the name from the spec's hostname, else
    // the recorded hostname (a name defaults to the hostname).
    let guests: Vec<(u32, String, String)> = {
        let mut st = tx.prepare("SELECT vmid, spec, hostname FROM guests")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (vmid, spec, hostname) in guests {
        let spec: Value = serde_json::from_str(&spec).unwrap_or(Value::Null);
        let customer = spec["customer"].as_str();
        let name = spec["hostname"].as_str().unwrap_or(&hostname);
        tx.execute(
            "UPDATE guests SET customer = ?2, name = ?3 WHERE vmid = ?1",
            params![vmid, customer, name],
        )?;
    }

    // Jobs: from the spec (bring-ups store the whole guest spec); a job whose spec names no
    // customer (a teardown stores only the VMID) takes its guest's identity.
    let jobs: Vec<(String, String, Option<String>, Option<u32>)> = {
        let mut st = tx.prepare("SELECT id, spec, hostname, vmid FROM jobs")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, spec, hostname, vmid) in jobs {
        let spec: Value = serde_json::from_str(&spec).unwrap_or(Value::Null);
        if let Some((customer, name)) = spec_identity(&spec, hostname.as_deref()) {
            tx.execute(
                "UPDATE jobs SET customer = ?2, name = ?3 WHERE id = ?1",
                params![id, customer, name],
            )?;
        } else if let Some(vmid) = vmid {
            tx.execute(
                "UPDATE jobs SET (customer, name) = (SELECT customer, name FROM guests WHERE vmid = ?2)
                 WHERE id = ?1 AND EXISTS (SELECT 1 FROM guests WHERE vmid = ?2 AND customer IS NOT NULL)",
                params![id, vmid],
            )?;
        }
    }
    Ok(())
}

/// Version 3: the guest specs `felhom agent` was given through its API (desired state that
/// must survive a restart; the spec directory's files are read from disk, never stored).
fn v3_agent_specs(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        r#"
CREATE TABLE agent_specs (
    customer TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (customer, name)
);
"#,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{JobState, Journal, Phase};
    use pve_api::Vmid;

    /// The layout and rows as felhom before versioning wrote them: written out here, not
    /// taken from [`V1`], so a change to the baseline constant cannot go unnoticed.
    const OLD_FELHOM: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    vmid INTEGER,
    node TEXT NOT NULL,
    hostname TEXT,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    runner_pid INTEGER,
    runner_start INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    phase TEXT NOT NULL,
    data TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS leases (
    vmid INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    acquired_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS guests (
    vmid INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    job_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    mac TEXT,
    ip TEXT,
    ssh_fingerprint TEXT,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS durations (
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    lo_ms INTEGER NOT NULL,
    hi_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, seq)
);
INSERT INTO jobs VALUES ('b1', 'bringup', 1200, 'pve', 'acme-web1',
    '{"customer":"acme","hostname":"acme-web1","vmid":"auto","node":"pve"}',
    'succeeded', NULL, 99999999, 1, 1000, 2000);
INSERT INTO jobs VALUES ('b2', 'bringup', NULL, 'pve', 'acme-db1',
    '{"customer":"acme","hostname":"acme-db1"}', 'running', NULL, 99999999, 1, 3000, 3500);
INSERT INTO jobs VALUES ('t1', 'teardown', 1200, 'pve', 'acme-web1', '{"vmid":1200}',
    'failed', 'PVE unreachable', 99999999, 1, 4000, 4500);
INSERT INTO jobs VALUES ('x1', 'bringup', NULL, 'pve', NULL, 'not json', 'rolled_back',
    'bad golden', NULL, NULL, 5000, 5100);
INSERT INTO events (job_id, step, attempt, phase, data, at)
    VALUES ('b1', 'restore', 1, 'intent', '{"mac":"BC:24:11:00:00:01"}', 1100);
INSERT INTO events (job_id, step, attempt, phase, data, at)
    VALUES ('b1', 'restore', 1, 'done', '{}', 1200);
INSERT INTO leases VALUES (1300, 'b2', 99999999, 1, 3100);
INSERT INTO guests VALUES (1200, 'pve', 'b1', 'acme-web1', 'BC:24:11:00:00:01', '10.0.0.5',
    'SHA256:abc', '{"customer":"acme","hostname":"acme-web1"}', 'active', 2000);
INSERT INTO guests VALUES (1201, 'pve', 'b0', 'legacy', NULL, NULL, NULL, '{}', 'active', 900);
INSERT INTO durations VALUES ('restore', 0, 1000, 2000);
"#;

    fn old_journal(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(OLD_FELHOM).unwrap();
    }

    fn user_version(path: &Path) -> u32 {
        version(&Connection::open(path).unwrap()).unwrap()
    }

    fn columns(path: &Path, table: &str) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut st = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap();
        let cols = st.query_map([], |r| r.get(0)).unwrap();
        cols.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn a_journal_of_felhom_before_versioning_migrates_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        old_journal(&path);
        assert_eq!(user_version(&path), 0);

        let j = Journal::open(&path).unwrap();
        assert_eq!(user_version(&path), CURRENT);
        assert_eq!(CURRENT, 3);
        assert!(j.agent_specs().unwrap().is_empty());

        let b1 = j.job("b1").unwrap();
        assert_eq!(b1.state, JobState::Succeeded);
        assert_eq!(b1.vmid, Some(1200));
        assert_eq!(b1.spec["vmid"], "auto");
        assert_eq!(
            (b1.customer.as_deref(), b1.name.as_deref()),
            (Some("acme"), Some("acme-web1"))
        );
        assert_eq!((b1.started_at, b1.ended_at), (1000, Some(2000)));
        let b2 = j.job("b2").unwrap();
        assert_eq!(b2.name.as_deref(), Some("acme-db1"));
        assert_eq!((b2.started_at, b2.ended_at), (3000, None));
        assert_eq!(b2.display_state(), "interrupted");
        // The teardown's spec holds only the VMID: it takes its guest's identity.
        let t1 = j.job("t1").unwrap();
        assert_eq!(
            (t1.customer.as_deref(), t1.name.as_deref()),
            (Some("acme"), Some("acme-web1"))
        );
        assert_eq!(t1.error.as_deref(), Some("PVE unreachable"));
        let x1 = j.job("x1").unwrap();
        assert_eq!((x1.customer, x1.name), (None, None));
        assert_eq!(j.jobs().unwrap().len(), 4);

        let ev = j.events("b1").unwrap();
        assert_eq!(
            ev.iter().map(|e| e.phase.clone()).collect::<Vec<_>>(),
            vec![Phase::Intent, Phase::Done]
        );
        assert_eq!(ev[0].data["mac"], "BC:24:11:00:00:01");

        let g = j.guest(1200).unwrap().unwrap();
        assert_eq!(
            (g.customer.as_str(), g.name.as_str()),
            ("acme", "acme-web1")
        );
        assert_eq!(g.ssh_fingerprint.as_deref(), Some("SHA256:abc"));
        let legacy = j.guest(1201).unwrap().unwrap();
        assert_eq!(
            (legacy.customer.as_str(), legacy.name.as_str()),
            ("", "legacy")
        );
        assert_eq!(
            j.guests_by_identity("acme", "acme-web1")
                .unwrap()
                .iter()
                .map(|g| g.vmid)
                .collect::<Vec<_>>(),
            vec![1200]
        );

        let vmid = Vmid::try_from(1300).unwrap();
        assert_eq!(j.lease_holder(vmid).unwrap().as_deref(), Some("b2"));
        assert_eq!(
            j.load_durations().unwrap(),
            vec![("restore".to_string(), 1000, 2000)]
        );
        assert_eq!(
            j.unfinished_jobs_for_identity("acme", "acme-web1")
                .unwrap()
                .iter()
                .map(|j| j.id.as_str())
                .collect::<Vec<_>>(),
            vec!["t1"]
        );
        drop(j);
        // Opening again finds nothing to do.
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.jobs().unwrap().len(), 4);
        assert_eq!(user_version(&path), CURRENT);
    }

    #[test]
    fn two_processes_opening_an_old_journal_at_once_migrate_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        old_journal(&path);
        let opened: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| Journal::open(&path).map(|j| j.jobs().unwrap().len())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in opened {
            assert_eq!(r.unwrap(), 4);
        }
        assert_eq!(user_version(&path), CURRENT);
    }

    #[test]
    fn a_new_journal_gets_the_same_layout_as_a_migrated_one() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old.db"), dir.path().join("new.db"));
        old_journal(&old);
        drop(Journal::open(&old).unwrap());
        drop(Journal::open(&new).unwrap());
        assert_eq!(user_version(&new), CURRENT);
        for table in [
            "jobs",
            "events",
            "leases",
            "guests",
            "durations",
            "identity_leases",
        ] {
            assert_eq!(columns(&old, table), columns(&new, table), "{table}");
            assert!(!columns(&new, table).is_empty(), "{table}");
        }
        assert!(columns(&new, "jobs").contains(&"superseded_by".to_string()));
    }

    #[test]
    fn a_journal_from_a_newer_felhom_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        drop(Journal::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", CURRENT + 5)
            .unwrap();
        let err = Journal::open(&path).unwrap_err();
        match &err {
            JournalError::TooNew {
                found, supported, ..
            } => assert_eq!((*found, *supported), (CURRENT + 5, CURRENT)),
            other => panic!("expected TooNew, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("version {}", CURRENT + 5)), "{msg}");
        assert!(msg.contains(&format!("version {CURRENT}")), "{msg}");
        assert_eq!(user_version(&path), CURRENT + 5);
    }

    #[test]
    fn a_failing_migration_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        old_journal(&path);
        // Something in the way of migration 2's new table makes it fail half-way.
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE identity_leases (x INTEGER)")
            .unwrap();
        assert!(matches!(Journal::open(&path), Err(JournalError::Db(_))));
        assert_eq!(user_version(&path), 0);
        assert!(!columns(&path, "jobs").contains(&"customer".to_string()));
        assert!(columns(&path, "jobs").contains(&"runner_pid".to_string()));
        // Out of the way, the same file migrates.
        Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE identity_leases")
            .unwrap();
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.job("b1").unwrap().customer.as_deref(), Some("acme"));
    }
}
