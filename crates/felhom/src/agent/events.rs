//! Job events for the API's Server-Sent Events and for the logs.
//!
//! The job engine reports progress through [`felhom_core::job::Progress`]; [`Bus`] is that
//! sink for the agent. Each event becomes one [`AgentEvent`] with a process-wide sequence
//! number, is logged (job id, guest identity and VMID on every line; an error text, never a
//! secret), kept in a bounded per-job history (a late subscriber gets the history first),
//! and broadcast to live subscribers. A job's history from before this process started is
//! rebuilt from the journal's events ([`Bus::history`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use felhom_core::job::{Progress, ProgressEvent};
use felhom_core::journal::{JobRow, JobState, Journal, Phase};
use serde::Serialize;
use tokio::sync::broadcast;
use utoipa::ToSchema;

/// Jobs whose history is kept in memory (older ones come from the journal).
const KEPT_JOBS: usize = 1024;
/// Events kept per job (a job has ~10 steps; retries add some).
const KEPT_EVENTS: usize = 256;

/// One job event (`event: step` or `event: outcome` on the stream).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentEvent {
    #[serde(skip)]
    pub seq: u64,
    /// `step` or `outcome`.
    #[serde(skip)]
    pub event: &'static str,
    pub job: String,
    /// `bringup`, `repair` or `teardown`.
    pub kind: String,
    pub customer: Option<String>,
    pub name: Option<String>,
    pub vmid: Option<u32>,
    pub step: Option<String>,
    /// `start`, `done`, `retry`, `pause`, `undo`; null on an outcome.
    pub phase: Option<String>,
    /// The job's end state on an outcome event (`succeeded`, `rolled_back`, `failed`,
    /// `paused`, `rollback_incomplete`, `superseded`).
    pub outcome: Option<String>,
    pub message: Option<String>,
    /// RFC 3339.
    pub at: String,
}

#[derive(Debug, Clone)]
struct JobMeta {
    kind: String,
    customer: Option<String>,
    name: Option<String>,
    vmid: Option<u32>,
}

#[derive(Default)]
struct Kept {
    jobs: HashMap<String, Vec<Arc<AgentEvent>>>,
    order: VecDeque<String>,
    meta: HashMap<String, JobMeta>,
    seq: u64,
}

pub struct Bus {
    journal: Arc<Journal>,
    tx: broadcast::Sender<Arc<AgentEvent>>,
    kept: Mutex<Kept>,
}

pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn kind_str(row: &JobRow) -> String {
    serde_json::to_value(row.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Bus {
    pub fn new(journal: Arc<Journal>) -> Arc<Bus> {
        let (tx, _) = broadcast::channel(4096);
        Arc::new(Bus {
            journal,
            tx,
            kept: Mutex::default(),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AgentEvent>> {
        self.tx.subscribe()
    }

    fn meta(&self, job: &str) -> JobMeta {
        let known = self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .meta
            .get(job)
            .cloned();
        match known {
            Some(m) if m.vmid.is_some() => m,
            _ => {
                let m = match self.journal.job(job) {
                    Ok(row) => JobMeta {
                        kind: kind_str(&row),
                        customer: row.customer,
                        name: row.name,
                        vmid: row.vmid,
                    },
                    Err(_) => JobMeta {
                        kind: String::new(),
                        customer: None,
                        name: None,
                        vmid: None,
                    },
                };
                self.kept
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .meta
                    .insert(job.to_string(), m.clone());
                m
            }
        }
    }

    /// Log, keep and broadcast one event.
    fn emit(
        &self,
        job: &str,
        event: &'static str,
        step: Option<&str>,
        phase: Option<&str>,
        outcome: Option<&str>,
        message: Option<&str>,
    ) {
        let m = self.meta(job);
        tracing::info!(
            job,
            customer = m.customer.as_deref().unwrap_or("-"),
            name = m.name.as_deref().unwrap_or("-"),
            vmid = m.vmid,
            kind = %m.kind,
            step,
            phase,
            outcome,
            message,
            "{event}"
        );
        let ev = {
            let mut k = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            k.seq += 1;
            let ev = Arc::new(AgentEvent {
                seq: k.seq,
                event,
                job: job.to_string(),
                kind: m.kind,
                customer: m.customer,
                name: m.name,
                vmid: m.vmid,
                step: step.map(str::to_string),
                phase: phase.map(str::to_string),
                outcome: outcome.map(str::to_string),
                message: message.map(str::to_string),
                at: rfc3339_ms(felhom_core::journal::now_ms()),
            });
            if !k.jobs.contains_key(job) {
                k.order.push_back(job.to_string());
                while k.order.len() > KEPT_JOBS {
                    if let Some(old) = k.order.pop_front() {
                        k.jobs.remove(&old);
                        k.meta.remove(&old);
                    }
                }
            }
            let list = k.jobs.entry(job.to_string()).or_default();
            if list.len() < KEPT_EVENTS || event == "outcome" {
                list.push(ev.clone());
            }
            ev
        };
        // metrics: job events could be counted here (h-agentx's registry).
        let _ = self.tx.send(ev);
    }

    /// The job's end, once: its state as the journal has it.
    pub fn outcome(&self, job: &str) {
        if job.is_empty() || self.has_outcome(job) {
            return;
        }
        let (state, error) = match self.journal.job(job) {
            Ok(row) => (row.state.as_str().to_string(), row.error),
            Err(e) => ("unknown".into(), Some(e.to_string())),
        };
        self.emit(job, "outcome", None, None, Some(&state), error.as_deref());
    }

    fn has_outcome(&self, job: &str) -> bool {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .jobs
            .get(job)
            .is_some_and(|l| l.iter().any(|e| e.event == "outcome"))
    }

    /// Everything known of `job` so far, oldest first, and whether it has ended. From
    /// memory when this process saw the job, else rebuilt from the journal.
    pub fn history(&self, job: &JobRow) -> (Vec<Arc<AgentEvent>>, bool) {
        if let Some(l) = self
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .jobs
            .get(&job.id)
        {
            let ended = l.iter().any(|e| e.event == "outcome");
            return (l.clone(), ended);
        }
        let mut out = Vec::new();
        let mk = |event: &'static str,
                  step: Option<String>,
                  phase: Option<&str>,
                  outcome: Option<String>,
                  message: Option<String>,
                  at: i64| {
            Arc::new(AgentEvent {
                seq: 0,
                event,
                job: job.id.clone(),
                kind: kind_str(job),
                customer: job.customer.clone(),
                name: job.name.clone(),
                vmid: job.vmid,
                step,
                phase: phase.map(str::to_string),
                outcome,
                message,
                at: rfc3339_ms(at),
            })
        };
        for e in self.journal.events(&job.id).unwrap_or_default() {
            let phase = match e.phase {
                Phase::Intent => "start",
                Phase::Done => "done",
                Phase::UndoIntent => "undo",
                Phase::Error if e.data["permanent"] == false => "retry",
                _ => continue,
            };
            let msg = e.data["error"].as_str().map(str::to_string);
            out.push(mk(
                "step",
                Some(e.step.clone()),
                Some(phase),
                None,
                msg,
                e.at,
            ));
        }
        let ended =
            job.state.is_final() || (job.ended_at.is_some() && job.state != JobState::Running);
        if ended {
            out.push(mk(
                "outcome",
                None,
                None,
                Some(job.state.as_str().to_string()),
                job.error.clone(),
                job.ended_at.unwrap_or(job.updated_at),
            ));
        }
        (out, ended)
    }
}

impl Progress for Bus {
    fn event(&self, job: &str, _label: &str, event: ProgressEvent<'_>) {
        match event {
            ProgressEvent::Step(s) => self.emit(job, "step", Some(s), Some("start"), None, None),
            ProgressEvent::StepDone(s) => self.emit(job, "step", Some(s), Some("done"), None, None),
            ProgressEvent::Retry {
                step,
                attempt,
                error,
            } => self.emit(
                job,
                "step",
                Some(step),
                Some("retry"),
                None,
                Some(&format!("attempt {attempt}: {error}")),
            ),
            ProgressEvent::Undo(s) => self.emit(job, "step", Some(s), Some("undo"), None, None),
            ProgressEvent::Finished { .. } => self.outcome(job),
        }
    }
}

/// A progress sink for one reconcile run: forwards steps to the bus, remembers the jobs it
/// saw (the first is what the API answers a PUT or DELETE with), and holds their outcome
/// events back until the run has read the guest's new state ([`RunProgress::finish`]), so a
/// client that reads the guest after the outcome sees it as the job left it.
pub struct RunProgress {
    pub bus: Arc<Bus>,
    pub on_job: Box<dyn Fn(&str) + Send + Sync>,
    pub seen: Mutex<Vec<String>>,
}

impl RunProgress {
    /// The outcome of every job this run touched.
    pub fn finish(&self) {
        for job in self.seen.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            self.bus.outcome(job);
        }
    }
}

impl Progress for RunProgress {
    fn event(&self, job: &str, label: &str, event: ProgressEvent<'_>) {
        (self.on_job)(job);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !seen.iter().any(|j| j == job) {
                seen.push(job.to_string());
            }
        }
        if !matches!(event, ProgressEvent::Finished { .. }) {
            self.bus.event(job, label, event);
        }
    }
}
