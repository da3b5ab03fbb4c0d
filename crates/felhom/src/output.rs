//! Rendering: what goes to stdout, how, and what happens when nobody reads it.
//!
//! - **Every byte for stdout goes through [`outln!`]/[`out!`]** (clippy's `print_stdout` is
//!   denied in this crate, so a stray `println!` does not compile clean). `println!` panics
//!   when the reader has gone (`felhom jobs | head -1`: "failed printing to stdout: Broken
//!   pipe", exit 101). Here a broken pipe on stdout only means "stop printing": later output
//!   is dropped, the command finishes its work (a half-done provision is not abandoned
//!   because a pager closed) and the process exits with the command's own code, quietly. Any
//!   other write error on stdout (a full disk) makes a successful run exit 1 with a message.
//!   stderr goes through [`errln!`], which ignores write errors: there is nowhere left to
//!   report them.
//! - **Tables** ([`table`]) have an upper-case header row and no borders, like `ps` or
//!   `kubectl get`: greppable, `awk`-able, one line per row (never wrapped), and never a
//!   colour code (comfy-table is built without its terminal features).
//! - **JSON** ([`json`], [`json_line`]): with `--output json` a command prints exactly one
//!   JSON document on stdout, its result or its error; progress and logs go to stderr.
//! - **Progress** ([`CliProgress`]): one spinner per job on a TTY, one line per event
//!   otherwise, and nothing in JSON mode; always on stderr.
//! - **Untrusted text is escaped** ([`escape_terminal`]): PVE's messages, task-log tails and
//!   guest-controlled strings (a marker's job id, a hostname in drift) reach people's
//!   terminals, where an escape sequence could retitle the window, clear the screen or fake
//!   output. Every human line goes through `outln!`/`out!`/`errln!` (errors included:
//!   [`crate::error::CliError::render`]) and every progress message through
//!   [`CliProgress`], and all of them escape control characters there, once: C0 but `\n`,
//!   DEL and C1 show as `\x1b`, `\x07`, `\u{9b}`. JSON ([`json`], [`json_line`]) is
//!   written as serde_json made it (its strings escape control characters themselves), so a
//!   script reads the exact text. Logs go through tracing-subscriber, which escapes them the
//!   same way (since 0.3.20).

use std::collections::HashMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use felhom_core::job::{Outcome, Progress, ProgressEvent};
use felhom_core::journal::JobKind;
use felhom_core::ops::JobReport;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::error::Exit;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Text for people: tables, progress on stderr.
    #[default]
    Human,
    /// One JSON document on stdout, for scripts; progress is not shown.
    Json,
}

/// `println!` for stdout that survives a reader that went away. See the module docs.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for stdout that survives a reader that went away.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that ignores write errors (a closed stderr has nobody to tell).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {errln, out, outln};

const STDOUT_OK: u8 = 0;
const STDOUT_GONE: u8 = 1;
const STDOUT_FAILED: u8 = 2;
static STDOUT: AtomicU8 = AtomicU8::new(STDOUT_OK);
static STDOUT_ERROR: OnceLock<String> = OnceLock::new();

fn stdout_error(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        let _ = STDOUT.compare_exchange(STDOUT_OK, STDOUT_GONE, Ordering::SeqCst, Ordering::SeqCst);
    } else {
        let _ = STDOUT_ERROR.set(e.to_string());
        STDOUT.store(STDOUT_FAILED, Ordering::SeqCst);
    }
}

/// Untrusted text made safe for a terminal: every control character but the newline —
/// C0 (tab and carriage return included), DEL and C1 — is shown as its escape (`\x1b`,
/// `\x07`, `\x7f`, `\u{9b}`), so an escape sequence prints as text and does nothing.
/// Everything else, other Unicode included, is kept. The one place this is decided; see
/// the module docs for where it is applied.
pub fn escape_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c != '\n' && (c.is_ascii_control() || ('\u{80}'..='\u{9f}').contains(&c));
    if !text.contains(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if c.is_ascii() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    std::borrow::Cow::Owned(out)
}

#[doc(hidden)]
pub fn write_stdout(args: fmt::Arguments<'_>) {
    write_stdout_bytes(escape_terminal(&args.to_string()).as_bytes());
}

#[doc(hidden)]
pub fn write_stderr(args: fmt::Arguments<'_>) {
    let _ = std::io::stderr()
        .lock()
        .write_all(escape_terminal(&args.to_string()).as_bytes());
}

/// Raw bytes to stdout (generated completions and man pages, JSON documents): not escaped.
pub fn write_stdout_bytes(bytes: &[u8]) {
    if STDOUT.load(Ordering::SeqCst) != STDOUT_OK {
        return;
    }
    if let Err(e) = std::io::stdout().lock().write_all(bytes) {
        stdout_error(&e);
    }
}

/// The process's exit code, once the command is done: its own, unless stdout failed for a
/// reason other than a reader that went away and the command would otherwise have passed.
pub fn finish(exit: Exit) -> std::process::ExitCode {
    if STDOUT.load(Ordering::SeqCst) == STDOUT_OK {
        if let Err(e) = std::io::stdout().lock().flush() {
            stdout_error(&e);
        }
    }
    let exit = match (STDOUT.load(Ordering::SeqCst), exit) {
        (STDOUT_FAILED, Exit::Ok) => {
            errln!(
                "error: writing stdout: {}",
                STDOUT_ERROR.get().map(String::as_str).unwrap_or("?")
            );
            Exit::Failed
        }
        (_, exit) => exit,
    };
    std::process::ExitCode::from(exit as u8)
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

/// One pretty-printed JSON document on stdout.
pub fn json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => write_stdout_bytes(format!("{text}\n").as_bytes()),
        Err(e) => errln!("error: cannot encode the result as JSON: {e}"),
    }
}

/// One JSON document on one line of stdout (errors, `sim serve`'s ready line).
pub fn json_line(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => write_stdout_bytes(format!("{text}\n").as_bytes()),
        Err(e) => errln!("error: cannot encode the result as JSON: {e}"),
    }
}

/// A table with these column names (shown upper-case), no borders, never wrapped.
pub fn table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    t.set_header(header.map(str::to_uppercase));
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t
}

/// Print a table, without the trailing blanks of its last column.
pub fn print_table(t: &comfy_table::Table) {
    outln!("{}", t.trim_fmt());
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
            Mode::Lines => errln!("{label} [{job}]: {}", describe(&ev)),
            Mode::Bars { multi, bars } => {
                let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
                let bar = bars.entry(job.to_string()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.set_prefix(escape_terminal(label).into_owned());
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                });
                match ev {
                    ProgressEvent::Finished { ok } => {
                        bar.finish_with_message(if ok { "✔ done" } else { "✘ failed" })
                    }
                    other => bar.set_message(escape_terminal(&describe(&other)).into_owned()),
                }
            }
        }
    }
}

/// The exit for a batch: its most urgent job's (3 needs a person, then 1 failed, then 0).
pub fn batch_exit(reports: &[JobReport]) -> Exit {
    reports
        .iter()
        .map(|r| Exit::from_code(r.outcome.exit_code()))
        .max()
        .unwrap_or(Exit::Ok)
}

/// A journal time (ms since the epoch) as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn utc_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Job reports: one table row per job, then one line per job that did not succeed, saying
/// what went wrong and what to do next. JSON: `{"jobs": [...]}`.
pub fn print_reports(reports: &[JobReport], format: OutputFormat) {
    match format {
        OutputFormat::Json => json(&serde_json::json!({ "jobs": reports })),
        OutputFormat::Human => print_reports_human(reports),
    }
}

fn print_reports_human(reports: &[JobReport]) {
    if reports.is_empty() {
        return;
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut t = table(["result", "guest", "vmid", "ip", "mac", "ssh", "job"]);
    for r in reports {
        let result = match &r.outcome {
            Outcome::Succeeded if r.kind == JobKind::Teardown => "removed",
            Outcome::Succeeded if r.kind == JobKind::Repair => "repaired",
            Outcome::Succeeded => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::Absent => "absent",
            Outcome::Refused { .. } => "refused",
            Outcome::RolledBack { .. } | Outcome::Failed { .. } => "failed",
            Outcome::Paused { .. } => "paused",
            Outcome::Untrusted { .. } => "untrusted",
            Outcome::RollbackIncomplete { .. } => "STUCK",
        };
        t.add_row([
            result.to_string(),
            r.label.clone(),
            r.vmid.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            dash(&r.ip),
            dash(&r.mac),
            dash(&r.ssh_fingerprint),
            r.job.clone(),
        ]);
    }
    print_table(&t);
    let removed = |r: &JobReport| r.outcome == Outcome::Succeeded && r.kind == JobKind::Teardown;
    if reports.iter().any(removed) {
        outln!("(removed: stopped, destroyed with purge, forgotten)");
    }
    for r in reports {
        let (label, job) = (&r.label, &r.job);
        match &r.outcome {
            Outcome::Succeeded | Outcome::Unchanged | Outcome::Absent => {}
            Outcome::Refused { error } => outln!("{label}: refused: {error}"),
            Outcome::RolledBack { error } => outln!("{label}: rolled back: {error}"),
            Outcome::Failed { error } => {
                outln!("{label}: {error} (`felhom resume {job}` to retry)")
            }
            Outcome::Paused { error } if job.is_empty() => outln!("{label}: needs a person: {error}"),
            Outcome::Paused { error } => outln!(
                "{label}: paused: {error} (nothing undone; `felhom resume {job}` when PVE answers)"
            ),
            Outcome::Untrusted { error } => outln!(
                "{label}: stopped, nothing undone: {error} (then `felhom resume {job}`)"
            ),
            Outcome::RollbackIncomplete { error, undo_error } => outln!(
                "{label}: {error}; rollback incomplete: {undo_error} (needs a person, then `felhom resume {job}`)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_show_as_escapes() {
        assert_eq!(
            escape_terminal("job \x1b]0;pwned\x07\x1b[2J done\n"),
            "job \\x1b]0;pwned\\x07\\x1b[2J done\n"
        );
        assert_eq!(
            escape_terminal("a\tb\rc\x7fd\u{9b}31me\u{0}"),
            "a\\x09b\\x0dc\\x7fd\\u{9b}31me\\x00"
        );
        // Nothing to escape: the text itself, not a copy; other Unicode is kept.
        let plain = "acme-web1 ✔ grün 192.0.2.10\nnext line";
        assert!(matches!(
            escape_terminal(plain),
            std::borrow::Cow::Borrowed(p) if p == plain
        ));
    }

    #[test]
    fn tables_have_a_header_and_no_colour_or_border() {
        let mut t = table(["job", "vmid"]);
        t.add_row(["provision-1", "1100"]);
        let text = t.trim_fmt();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("JOB") && lines[0].contains("VMID"),
            "{text}"
        );
        assert!(lines[1].starts_with("provision-1") && lines[1].ends_with("1100"));
        assert!(!text.contains('\u{1b}'), "no escape codes: {text:?}");
        assert!(
            !text.contains('|') && !text.contains('─'),
            "no borders: {text}"
        );
        // Columns line up: each header starts where its column does.
        assert_eq!(lines[0].find("VMID"), lines[1].find("1100"));
    }
}
