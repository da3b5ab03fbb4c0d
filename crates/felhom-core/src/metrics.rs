//! felhom's Prometheus metrics: one process-global registry (prometheus-client, the
//! official Rust client) that the job engine, the PVE client (through its observer hook)
//! and the agent record into, and [`encode`] renders for `GET /metrics`.
//!
//! Why process-global: the engine and the client are used from many places (CLI commands,
//! the agent, benchmarks) that should not have to thread a registry through; recording is a
//! few atomic operations, so a CLI run that nobody scrapes pays next to nothing.
//!
//! | family | type | labels | recorded by |
//! |---|---|---|---|
//! | `felhom_jobs_total` | counter | `kind` (bringup, repair, teardown), `outcome` ([`Outcome`]'s snake_case name) | `ops`, when a job run ends |
//! | `felhom_step_duration_seconds` | histogram | `step` | the engine, when a step is done (observed, or acted and verified) |
//! | `felhom_step_retries_total` | counter | `step` | the engine, per transient retry (forward or undo) |
//! | `felhom_pve_lock_timeouts_total` | counter | none | the engine, per PVE lock timeout a step or undo met |
//! | `felhom_pve_requests_total` | counter | `endpoint` (method + route template), `status` (HTTP status, or `none`: no answer) | [`PveObserver`] |
//! | `felhom_pve_request_duration_seconds` | histogram | `endpoint` | [`PveObserver`] (until the answer's head) |
//! | `felhom_pve_task_expected_duration_seconds` | gauge | `task_type`, `bound` (`lower`, `upper`) | [`PveObserver`]: the client's learned bracket for the next task of that type |
//! | `felhom_guests` | gauge | `state` | the agent: [`set_guests_by_state`] |
//! | `felhom_guests_drifted` | gauge | none | the agent: [`set_drift`] |
//!
//! No label takes an unbounded value: steps, kinds and outcomes are the code's own names;
//! endpoints are route templates from a fixed vocabulary (`pve_api::observe`); HTTP
//! statuses are three digits; task types and guest states, which come from outside, pass
//! through [`Bounded`]: the first few distinct well-formed values are kept, the rest are
//! counted as `other`.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::job::{Outcome, StepError};
use crate::journal::JobKind;

/// The `Content-Type` of [`encode`]'s output: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task_type: String,
    bound: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Steps and PVE tasks run from milliseconds (simulator, observe-only steps) to minutes
/// (a restore of a large golden on a busy host): 5 ms × 2ⁿ up to about 10 min.
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// A PVE request: 1 ms to about 33 s (the client's own timeout is longer, but a request
/// that slow is an outage, which the `none` status and the top bucket already show).
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    step_duration: HistogramFamily<StepLabels>,
    step_retries: Family<StepLabels, Counter>,
    lock_timeouts: Counter,
    pve_requests: Family<RequestLabels, Counter>,
    pve_request_duration: HistogramFamily<EndpointLabels>,
    task_expected: Family<TaskLabels, Gauge<f64, AtomicU64>>,
    guests: Family<StateLabels, Gauge>,
    drifted: Gauge,
    task_types: Bounded,
    states: Bounded,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register(
            "felhom_jobs",
            "Job runs that ended, by kind and outcome",
            jobs.clone(),
        );
        let step_duration = HistogramFamily::<StepLabels>::new_with_constructor(step_histogram);
        registry.register(
            "felhom_step_duration_seconds",
            "Time from a step's start to its done record, by step",
            step_duration.clone(),
        );
        let step_retries = Family::<StepLabels, Counter>::default();
        registry.register(
            "felhom_step_retries",
            "Transient errors a step or undo retried after, by step",
            step_retries.clone(),
        );
        let lock_timeouts = Counter::default();
        registry.register(
            "felhom_pve_lock_timeouts",
            "PVE lock timeouts (another task held the guest's config lock) met by steps and undos",
            lock_timeouts.clone(),
        );
        let pve_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "felhom_pve_requests",
            "PVE API requests, by endpoint (method and route template) and HTTP status (none: no answer)",
            pve_requests.clone(),
        );
        let pve_request_duration =
            HistogramFamily::<EndpointLabels>::new_with_constructor(request_histogram);
        registry.register(
            "felhom_pve_request_duration_seconds",
            "Time from sending a PVE API request to its answer's head, by endpoint",
            pve_request_duration.clone(),
        );
        let task_expected = Family::<TaskLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "felhom_pve_task_expected_duration_seconds",
            "The learned bracket for the next PVE task of a type, from its dispatch: still running at the lower bound, ended by the upper",
            task_expected.clone(),
        );
        let guests = Family::<StateLabels, Gauge>::default();
        registry.register(
            "felhom_guests",
            "Guests the agent manages, by state",
            guests.clone(),
        );
        let drifted = Gauge::default();
        registry.register(
            "felhom_guests_drifted",
            "Guests the agent manages whose observed state differs from their spec",
            drifted.clone(),
        );
        Metrics {
            registry,
            jobs,
            step_duration,
            step_retries,
            lock_timeouts,
            pve_requests,
            pve_request_duration,
            task_expected,
            guests,
            drifted,
            task_types: Bounded::new(32),
            states: Bounded::new(16),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Label values from outside (a PVE task type, a guest state) kept bounded: a value is
/// kept if it is short, `[a-z0-9_-]`, and one of the first `max` distinct values seen;
/// anything else is `other`.
pub struct Bounded {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl Bounded {
    pub fn new(max: usize) -> Bounded {
        Bounded {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    pub fn label(&self, value: &str) -> String {
        let well_formed = !value.is_empty()
            && value.len() <= 32
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !well_formed {
            return "other".into();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) || seen.len() < self.max {
            seen.insert(value.to_string());
            value.to_string()
        } else {
            "other".into()
        }
    }
}

/// The registry in the Prometheus text format (0.0.4; serve it as [`CONTENT_TYPE`]).
pub fn encode() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &METRICS.registry);
    out
}

fn kind_name(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Bringup => "bringup",
        JobKind::Repair => "repair",
        JobKind::Teardown => "teardown",
        JobKind::Publish => "publish",
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::RolledBack { .. } => "rolled_back",
        Outcome::RollbackIncomplete { .. } => "rollback_incomplete",
        Outcome::Failed { .. } => "failed",
        Outcome::Paused { .. } => "paused",
        Outcome::Unchanged => "unchanged",
        Outcome::Refused { .. } => "refused",
        Outcome::Absent => "absent",
        Outcome::Untrusted { .. } => "untrusted",
    }
}

/// A job run ended with `outcome`.
pub fn job_finished(kind: JobKind, outcome: &Outcome) {
    METRICS
        .jobs
        .get_or_create(&JobLabels {
            kind: kind_name(kind),
            outcome: outcome_name(outcome),
        })
        .inc();
}

/// `step` is done, `elapsed` after the engine started it.
pub fn step_done(step: &'static str, elapsed: Duration) {
    METRICS
        .step_duration
        .get_or_create(&StepLabels { step })
        .observe(elapsed.as_secs_f64());
}

/// `step` (or its undo) is retried after a transient error.
pub fn step_retry(step: &'static str) {
    METRICS
        .step_retries
        .get_or_create(&StepLabels { step })
        .inc();
}

/// A step or undo attempt failed with `error` (counted if it is a PVE lock timeout).
pub fn step_error(error: &StepError) {
    if matches!(error, StepError::Api(pve_api::ApiError::LockTimeout { .. })) {
        METRICS.lock_timeouts.inc();
    }
}

/// The agent's guests by state (`running`, `stopped`, `absent`, `building`, …): each
/// given state is set to its count and every state set before but missing now to 0.
pub fn set_guests_by_state(counts: &[(&str, u64)]) {
    let m = &*METRICS;
    let mut given = HashSet::new();
    for (state, n) in counts {
        let state = m.states.label(state);
        let g = m.guests.get_or_create(&StateLabels {
            state: state.clone(),
        });
        // Two raw states may map to `other`: they add up.
        if given.insert(state) {
            g.set(0);
        }
        g.inc_by(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    let seen = m
        .states
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for state in seen.into_iter().chain(["other".to_string()]) {
        if !given.contains(&state) {
            if let Some(g) = m.guests.get(&StateLabels { state }) {
                g.set(0);
            }
        }
    }
}

/// How many of the agent's guests have drifted from their spec.
pub fn set_drift(guests_with_drift: u64) {
    METRICS
        .drifted
        .set(i64::try_from(guests_with_drift).unwrap_or(i64::MAX));
}

/// The [`pve_api::Observer`] that records PVE requests and learned task durations here.
pub struct PveObserver;

impl pve_api::Observer for PveObserver {
    fn request(&self, endpoint: &str, status: Option<u16>, elapsed: Duration) {
        let status = status.map_or_else(|| "none".to_string(), |s| s.to_string());
        METRICS
            .pve_requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
        METRICS
            .pve_request_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    fn task_duration(&self, task_type: &str, expected: pve_api::durations::Bracket) {
        let task_type = METRICS.task_types.label(task_type);
        for (bound, d) in [("lower", expected.lo), ("upper", expected.hi)] {
            METRICS
                .task_expected
                .get_or_create(&TaskLabels {
                    task_type: task_type.clone(),
                    bound,
                })
                .set(d.as_secs_f64());
        }
    }
}

/// The observer to set on every [`pve_api::PveClient`] felhom makes.
pub fn pve_observer() -> Arc<dyn pve_api::Observer> {
    Arc::new(PveObserver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_values_are_bounded() {
        let b = Bounded::new(2);
        assert_eq!(b.label("vzstart"), "vzstart");
        assert_eq!(b.label("vzrestore"), "vzrestore");
        assert_eq!(b.label("vzstart"), "vzstart", "a kept value stays");
        assert_eq!(b.label("resize"), "other", "past the cap");
        for bad in ["", "Vz", "a b", "x\"y", &"a".repeat(33)] {
            assert_eq!(Bounded::new(9).label(bad), "other", "{bad:?}");
        }
    }

    /// The families and their samples; the process-global registry is shared by the
    /// crate's tests, so each asserts only on its own label values.
    #[test]
    fn records_show_in_the_exposition() {
        job_finished(JobKind::Teardown, &Outcome::Absent);
        step_done("metrics-test-step", Duration::from_millis(30));
        step_retry("metrics-test-step");
        step_error(&StepError::Api(pve_api::ApiError::LockTimeout {
            lock_file: "/run/lock/lxc/pve-config-1.lock".into(),
            message: "can't lock file".into(),
        }));
        let o = PveObserver;
        pve_api::Observer::request(&o, "GET /version", Some(200), Duration::from_millis(3));
        pve_api::Observer::request(&o, "GET /version", None, Duration::from_millis(3));
        pve_api::Observer::task_duration(
            &o,
            "metricstest",
            pve_api::durations::Bracket {
                lo: Duration::from_millis(500),
                hi: Duration::from_millis(750),
            },
        );
        set_guests_by_state(&[("running", 3), ("metrics-test-state", 2)]);
        set_guests_by_state(&[("running", 4)]);
        set_drift(1);
        let text = encode();
        for want in [
            "# TYPE felhom_jobs_total counter",
            "felhom_jobs_total{kind=\"teardown\",outcome=\"absent\"} ",
            "# TYPE felhom_step_duration_seconds histogram",
            "felhom_step_duration_seconds_bucket{step=\"metrics-test-step\",le=\"0.04\"} 1",
            "felhom_step_retries_total{step=\"metrics-test-step\"} ",
            "# TYPE felhom_pve_lock_timeouts_total counter",
            "felhom_pve_requests_total{endpoint=\"GET /version\",status=\"200\"} ",
            "felhom_pve_requests_total{endpoint=\"GET /version\",status=\"none\"} ",
            "felhom_pve_request_duration_seconds_count{endpoint=\"GET /version\"} ",
            "felhom_pve_task_expected_duration_seconds{task_type=\"metricstest\",bound=\"lower\"} 0.5",
            "felhom_pve_task_expected_duration_seconds{task_type=\"metricstest\",bound=\"upper\"} 0.75",
            "felhom_guests{state=\"running\"} 4",
            "felhom_guests{state=\"metrics-test-state\"} 0",
            "felhom_guests_drifted 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
