//! Rendering: progress bars on a TTY, plain lines otherwise, JSON for scripts.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use felhom_core::job::{Progress, ProgressEvent};
use felhom_core::ops::JobReport;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Human,
    Json,
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings). Nothing felhom logs carries
/// the token secret: it only ever lives in a `Secret`, which prints `<redacted>`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Progress for job runs: one spinner per job on a TTY, one line per event otherwise, and
/// nothing in JSON mode (the result on stdout is the whole output).
pub struct CliProgress {
    mode: Mode,
}

enum Mode {
    Bars {
        multi: MultiProgress,
        bars: Mutex<HashMap<String, ProgressBar>>,
    },
    Lines,
    Silent,
}

impl CliProgress {
    pub fn new(format: OutputFormat) -> CliProgress {
        let mode = match format {
            OutputFormat::Json => Mode::Silent,
            OutputFormat::Human if std::io::stderr().is_terminal() => Mode::Bars {
                multi: MultiProgress::new(),
                bars: Mutex::default(),
            },
            OutputFormat::Human => Mode::Lines,
        };
        CliProgress { mode }
    }
}

fn describe(ev: &ProgressEvent<'_>) -> String {
    match ev {
        ProgressEvent::Step(s) => format!("{s}…"),
        ProgressEvent::StepDone(s) => format!("{s} done"),
        ProgressEvent::Retry {
            step,
            attempt,
            error,
        } => format!("{step}: retry {attempt} after: {error}"),
        ProgressEvent::Undo(s) => format!("undo {s}…"),
        ProgressEvent::Finished { ok: true } => "finished".into(),
        ProgressEvent::Finished { ok: false } => "failed".into(),
    }
}

impl Progress for CliProgress {
    fn event(&self, job: &str, label: &str, ev: ProgressEvent<'_>) {
        match &self.mode {
            Mode::Silent => {}
            Mode::Lines => eprintln!("{label} [{job}]: {}", describe(&ev)),
            Mode::Bars { multi, bars } => {
                let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
                let bar = bars.entry(job.to_string()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.set_prefix(label.to_string());
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                });
                match ev {
                    ProgressEvent::Finished { ok } => {
                        bar.finish_with_message(if ok { "✔ done" } else { "✘ failed" })
                    }
                    other => bar.set_message(describe(&other)),
                }
            }
        }
    }
}

/// The exit code for a batch: 3 if any job needs a person, else 1 if any failed, else 0.
pub fn batch_exit_code(reports: &[JobReport]) -> i32 {
    // 3 > 1 > 0 is also the order of urgency.
    reports
        .iter()
        .map(|r| r.outcome.exit_code())
        .max()
        .unwrap_or(0)
}

pub fn print_reports(reports: &[JobReport], format: OutputFormat) {
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "jobs": reports }))
                .unwrap_or_default()
        ),
        OutputFormat::Human => {
            for r in reports {
                let vmid = r.vmid.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                match &r.outcome {
                    felhom_core::job::Outcome::Succeeded if r.kind == felhom_core::journal::JobKind::Teardown => {
                        println!("removed {:<20} vmid {vmid:<6} stopped, destroyed with purge, forgotten  (job {})", r.label, r.job)
                    }
                    felhom_core::job::Outcome::Succeeded => println!(
                        "ok      {:<20} vmid {vmid:<6} ip {:<15} mac {:<17} ssh {}  (job {})",
                        r.label,
                        r.ip.as_deref().unwrap_or("-"),
                        r.mac.as_deref().unwrap_or("-"),
                        r.ssh_fingerprint.as_deref().unwrap_or("-"),
                        r.job
                    ),
                    felhom_core::job::Outcome::RolledBack { error } => println!("failed  {:<20} vmid {vmid:<6} rolled back: {error}  (job {})", r.label, r.job),
                    felhom_core::job::Outcome::Failed { error } => println!("failed  {:<20} vmid {vmid:<6} {error}  (job {}; `felhom resume {}` to retry)", r.label, r.job, r.job),
                    felhom_core::job::Outcome::Paused { error } => println!("paused  {:<20} vmid {vmid:<6} {error}  (job {}; nothing undone; `felhom resume {}` when PVE answers)", r.label, r.job, r.job),
                    felhom_core::job::Outcome::RollbackIncomplete { error, undo_error } => println!(
                        "STUCK   {:<20} vmid {vmid:<6} {error}; rollback incomplete: {undo_error}  (job {}; needs a person, then `felhom resume {}`)",
                        r.label, r.job, r.job
                    ),
                }
            }
        }
    }
}
