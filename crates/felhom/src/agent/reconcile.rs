//! The reconcile loop: one slot per guest identity, `apply` semantics, bounded concurrency.
//!
//! | trigger | what is queued |
//! |---|---|
//! | a PUT, a spec file changed, SIGHUP | `Apply` for the identities that changed |
//! | every `agent.interval_secs` | `Apply` for every wanted identity not already busy (drift repair) |
//! | a DELETE | `Teardown` of that identity |
//! | start | `Apply` for every wanted identity (this continues unfinished jobs: `apply`'s `continue`), `Resume` for unfinished jobs of identities nobody wants (teardowns) |
//!
//! A slot runs one piece of work at a time (`Felhom::apply` of one spec, `teardown_targets`,
//! or `resume` of one job) and queues at most one more: a burst of 50 PUTs of one guest is one
//! job. Each run publishes, through a `watch` channel, its number, the first job it touched
//! and, when it ended, its outcome: the API answers a PUT with that job (202) or with the
//! outcome when no job was needed (200 unchanged). Runs of different identities go in
//! parallel up to `agent.concurrency`, and felhom-core's own limits (global, per node, per
//! storage) still apply inside them. Two felhom processes never work one identity at once
//! (the journal's identity leases, as for the CLI).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use felhom_core::job::Outcome;
use felhom_core::ops::{Felhom, JobReport, Target};
use felhom_core::spec::Identity;
use felhom_core::status::GuestStatus;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use super::desired::Desired;
use super::events::{Bus, RunProgress};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Apply,
    Teardown,
    Resume,
}

/// What a slot's watchers see.
#[derive(Debug, Clone, Default)]
pub struct SlotState {
    /// The number of the run going on (or the last one).
    pub started: u64,
    /// The number of the last run that ended.
    pub finished: u64,
    /// The first job the run `started` touched.
    pub job: Option<String>,
    /// How the run `finished` ended.
    pub last: Option<JobReport>,
    /// The run `started` waits for a concurrency slot (`agent.concurrency` runs go on).
    pub queued: bool,
}

struct Slot {
    tx: watch::Sender<SlotState>,
    running: bool,
    pending: Option<(Work, Option<String>)>,
}

pub struct Reconciler {
    pub felhom: Arc<Felhom>,
    pub bus: Arc<Bus>,
    pub desired: Arc<Mutex<Desired>>,
    sem: Arc<Semaphore>,
    slots: Mutex<HashMap<Identity, Slot>>,
    /// Cleared on SIGTERM: nothing new starts.
    accepting: AtomicBool,
    /// What `status` last said about each felhom guest, by identity.
    pub observed: Mutex<HashMap<Identity, GuestStatus>>,
    /// Each identity's latest job as this process knows it: reads of the API never query
    /// the journal per guest (it is one connection, and the jobs write through it).
    pub jobs: Mutex<HashMap<Identity, LastJob>>,
}

/// A job, as the API shows it.
#[derive(Debug, Clone)]
pub struct LastJob {
    pub id: String,
    pub kind: String,
    /// The journal's state, `interrupted` for a run whose process died.
    pub state: String,
}

impl LastJob {
    pub fn of(row: &felhom_core::journal::JobRow) -> LastJob {
        LastJob {
            id: row.id.clone(),
            kind: serde_json::to_value(row.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            state: row.display_state().to_string(),
        }
    }

    /// Ended for good (nothing left to resume).
    pub fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "succeeded" | "rolled_back" | "superseded"
        )
    }
}

impl Reconciler {
    pub fn new(
        felhom: Arc<Felhom>,
        bus: Arc<Bus>,
        desired: Arc<Mutex<Desired>>,
        concurrency: usize,
    ) -> Arc<Reconciler> {
        Arc::new(Reconciler {
            felhom,
            bus,
            desired,
            sem: Arc::new(Semaphore::new(concurrency)),
            slots: Mutex::default(),
            accepting: AtomicBool::new(true),
            observed: Mutex::default(),
            jobs: Mutex::default(),
        })
    }

    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Stop starting work (SIGTERM); runs going on finish their current step's journal record.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Whether any slot is running.
    pub fn busy(&self) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|s| s.running)
    }

    /// The job the identity's current run works on, if any.
    pub fn current_job(&self, id: &Identity) -> Option<String> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let s = slots.get(id)?;
        if !s.running {
            return None;
        }
        let st = s.tx.borrow();
        // Only while the run goes on (its end is published before the slot goes idle).
        (st.started > st.finished).then(|| st.job.clone()).flatten()
    }

    /// Remember `job` as the identity's latest (`refresh`: read its state again, at a run's
    /// end). One journal read per job and run, never per API read.
    fn note_job(&self, id: &Identity, job: &str, refresh: bool) {
        let known = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|j| j.id == job);
        if known && !refresh {
            return;
        }
        if let Ok(row) = self.felhom.journal.job(job) {
            self.jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), LastJob::of(&row));
        }
    }

    /// At start: each identity's newest job from the journal.
    pub fn recall_jobs(&self) {
        let Ok(rows) = self.felhom.journal.jobs() else {
            return;
        };
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        // Newest first: the first seen per identity wins.
        for row in rows {
            if let (Some(customer), Some(name)) = (row.customer.clone(), row.name.clone()) {
                jobs.entry(Identity { customer, name })
                    .or_insert_with(|| LastJob::of(&row));
            }
        }
    }

    /// Whether the identity's run waits for a concurrency slot.
    pub fn queued(&self, id: &Identity) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .get(id)
            .is_some_and(|s| s.running && s.tx.borrow().queued)
    }

    /// The identity's run going on (or about to start): a watcher and its number.
    pub fn running(&self, id: &Identity) -> Option<(watch::Receiver<SlotState>, u64)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let s = slots.get(id).filter(|s| s.running)?;
        let st = s.tx.borrow();
        let run = if st.started > st.finished {
            st.started
        } else {
            st.started + 1
        };
        Some((s.tx.subscribe(), run))
    }

    /// Queue `work` for `id`; returns a watcher and the run number that will do it.
    /// A later request replaces a queued one (a DELETE after a PUT).
    pub fn kick(
        self: &Arc<Self>,
        id: &Identity,
        work: Work,
        job: Option<String>,
    ) -> (watch::Receiver<SlotState>, u64) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(id.clone()).or_insert_with(|| Slot {
            tx: watch::channel(SlotState::default()).0,
            running: false,
            pending: None,
        });
        let rx = slot.tx.subscribe();
        let started = slot.tx.borrow().started;
        // The next run does it: the one started now, or the one after the run going on.
        let target = started + 1;
        slot.pending = Some((work, job));
        if !slot.running && self.accepting() {
            slot.running = true;
            let me = self.clone();
            let id = id.clone();
            tokio::spawn(async move { me.drive(id).await });
        }
        (rx, target)
    }

    /// Queue `Apply` for `id` unless a run is already going on for it (the interval pass).
    pub fn kick_if_idle(self: &Arc<Self>, id: &Identity) {
        let idle = !self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|s| s.running || s.pending.is_some());
        if idle {
            self.kick(id, Work::Apply, None);
        }
    }

    /// Run the slot's queued work until none is left.
    async fn drive(self: Arc<Self>, id: Identity) {
        loop {
            let (work, job, tx, run) = {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                let Some(slot) = slots.get_mut(&id) else {
                    return;
                };
                let next = if self.accepting() {
                    slot.pending.take()
                } else {
                    None
                };
                let Some((work, job)) = next else {
                    slot.running = false;
                    return;
                };
                let mut run = 0;
                slot.tx.send_modify(|s| {
                    s.started += 1;
                    s.job = None;
                    run = s.started;
                });
                (work, job, slot.tx.clone(), run)
            };
            let span = tracing::info_span!("reconcile", customer = %id.customer, name = %id.name, run, work = ?work);
            let on_job = tx.clone();
            let me = self.clone();
            let job_id = id.clone();
            let progress = Arc::new(RunProgress {
                bus: self.bus.clone(),
                on_job: Box::new(move |job: &str| {
                    me.note_job(&job_id, job, false);
                    on_job.send_if_modified(|s| {
                        if s.job.is_none() {
                            s.job = Some(job.to_string());
                            true
                        } else {
                            false
                        }
                    });
                }),
                seen: Mutex::default(),
            });
            let report = async {
                let permit = match self.sem.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        tx.send_modify(|s| s.queued = true);
                        let p = self.sem.clone().acquire_owned().await;
                        tx.send_modify(|s| s.queued = false);
                        match p {
                            Ok(p) => p,
                            Err(_) => return None,
                        }
                    }
                };
                let _permit = permit;
                self.run_once(&id, work, job, progress.clone()).await
            }
            .instrument(span)
            .await;
            if let Some(last) = progress
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last()
            {
                self.note_job(&id, last, true);
            }
            if let Some(r) = &report {
                self.observe(&id, r.vmid).await;
                if !r.job.is_empty() {
                    progress
                        .seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(r.job.clone());
                }
            }
            tx.send_modify(|s| {
                s.finished = run;
                s.last = report;
            });
            progress.finish();
        }
    }

    async fn run_once(
        &self,
        id: &Identity,
        work: Work,
        job: Option<String>,
        progress: Arc<RunProgress>,
    ) -> Option<JobReport> {
        let f = &self.felhom;
        let result = match work {
            Work::Apply => {
                let wanted = self
                    .desired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .cloned();
                let w = wanted?;
                // Reads only; a spec that no longer fits this PVE host is not applied.
                let errors = f.validate(std::slice::from_ref(&w.spec)).await;
                if !errors.is_empty() {
                    let why = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.rule))
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::warn!(error = %why, "spec does not fit this PVE host; not applied");
                    return Some(JobReport::decided(
                        &id.to_string(),
                        None,
                        Outcome::Refused { error: why },
                    ));
                }
                f.apply(vec![w.spec], false, progress).await
            }
            Work::Teardown => {
                f.teardown_targets(vec![Target::Identity(id.clone())], progress)
                    .await
            }
            Work::Resume => match job {
                Some(j) => f.resume(Some(&j), progress).await,
                None => return None,
            },
        };
        match result {
            Ok(mut reports) => {
                let r = reports.pop();
                if let Some(r) = &r {
                    tracing::info!(job = %r.job, vmid = r.vmid, outcome = ?r.outcome, "reconciled");
                }
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconcile failed; the next interval tries again");
                Some(JobReport::decided(
                    &id.to_string(),
                    None,
                    Outcome::Paused {
                        error: e.to_string(),
                    },
                ))
            }
        }
    }

    /// Read what PVE says about the identity's guest now (after a run).
    async fn observe(&self, id: &Identity, vmid: Option<u32>) {
        let vmids: Vec<pve_api::Vmid> = vmid
            .and_then(|v| pve_api::Vmid::try_from(v).ok())
            .into_iter()
            .collect();
        if vmids.is_empty() {
            return;
        }
        match self.felhom.status(&vmids).await {
            Ok(list) => {
                let mut obs = self.observed.lock().unwrap_or_else(|p| p.into_inner());
                obs.remove(id);
                for g in list {
                    obs.insert(identity_of(&g), g);
                }
            }
            Err(_) => {
                // torn down: no live guest any more
                self.observed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(id);
            }
        }
    }

    /// Read every felhom guest's status (the interval pass).
    pub async fn observe_all(&self) {
        match self.felhom.status(&[]).await {
            Ok(list) => {
                let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
                for g in &list {
                    *by_state.entry(g.status.as_str()).or_default() += 1;
                }
                let counts: Vec<(&str, u64)> = by_state.into_iter().collect();
                felhom_core::metrics::set_guests_by_state(&counts);
                felhom_core::metrics::set_drift(
                    list.iter().filter(|g| !g.drift.is_empty()).count() as u64,
                );
                let map = list.into_iter().map(|g| (identity_of(&g), g)).collect();
                *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = map;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the guests' status"),
        }
    }

    /// One full pass: every wanted identity gets an `Apply` unless busy.
    pub fn pass(self: &Arc<Self>) {
        let ids: Vec<Identity> = self
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .all()
            .into_keys()
            .collect();
        for id in ids {
            self.kick_if_idle(&id);
        }
    }

    /// At start: unfinished jobs of identities nobody wants are resumed; the wanted ones are
    /// continued by their first `Apply`.
    pub fn resume_orphans(self: &Arc<Self>) {
        let jobs = match self.felhom.journal.resumable_jobs() {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "cannot list unfinished jobs");
                return;
            }
        };
        let desired = self.desired.lock().unwrap_or_else(|p| p.into_inner()).all();
        for j in jobs {
            let (Some(customer), Some(name)) = (j.customer.clone(), j.name.clone()) else {
                continue;
            };
            let id = Identity { customer, name };
            let wanted = desired.contains_key(&id);
            if !wanted || j.kind == felhom_core::journal::JobKind::Teardown {
                tracing::info!(job = %j.id, identity = %id, "resuming an unfinished job");
                self.kick(&id, Work::Resume, Some(j.id.clone()));
            }
        }
    }
}

fn identity_of(g: &GuestStatus) -> Identity {
    let (customer, name) = g.identity.split_once('/').unwrap_or((&g.identity, ""));
    Identity {
        customer: customer.to_string(),
        name: name.to_string(),
    }
}
