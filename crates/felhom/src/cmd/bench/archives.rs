//! The hostile-archive rows of `bench reliability`: each kind of [`vzdump::hostile`] (a
//! 512 MiB long-name bomb, a 512 MiB pax bomb, a truncated zstd stream, a `..` member) is
//! generated into the simulator's backup storage, then
//!
//! | through                                  | must                                        |
//! |------------------------------------------|---------------------------------------------|
//! | `felhom golden inspect` (a child)        | exit 2 naming the member; peak RSS ≤ 64 MB  |
//! | the simulator's restore (HTTPS API)      | the task fails naming the member            |
//! | `felhom provision` of a spec naming it   | refused; no guest left                      |
//! | the state dump afterwards                | no leaked or detached volume                |
//! | the simulator's peak RSS (`VmHWM`)       | ≤ 64 MB                                     |
//!
//! The peak RSS of `inspect` is the child's own (`wait4`); the simulator's is its high-water
//! mark over its whole life, so the bench starts a fresh simulator for these rows.

use std::process::{Command, Stdio};

use anyhow::Context;
use felhom_core::adversarial::{base_spec, BASE_MOUNT};
use serde::Serialize;
use vzdump::hostile::Hostile;

use super::sim_child::SimChild;
use crate::output::{self, outln};

/// The bound on peak RSS for every process reading a hostile archive.
pub const RSS_BOUND_MB: f64 = 64.0;

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveRow {
    pub kind: &'static str,
    /// `felhom golden inspect`'s exit code (must be 2) and whether its error names the
    /// archive member.
    pub inspect_exit: Option<i32>,
    pub inspect_names_member: bool,
    pub inspect_peak_rss_mb: f64,
    /// The simulator's restore task failed naming the member, and `felhom provision` of a
    /// spec naming the archive as golden was refused.
    pub restore_refused: bool,
    pub provision_exit: Option<i32>,
    /// Guests at the VMIDs tried, leaked and detached volumes afterwards.
    pub guests_left: usize,
    pub leaks: usize,
    /// The simulator's peak RSS after this row.
    pub sim_peak_rss_mb: f64,
    pub details: Vec<String>,
}

impl ArchiveRow {
    pub fn good(&self) -> bool {
        self.inspect_exit == Some(2)
            && self.inspect_names_member
            && self.inspect_peak_rss_mb <= RSS_BOUND_MB
            && self.restore_refused
            && self.guests_left + self.leaks == 0
            && self.sim_peak_rss_mb <= RSS_BOUND_MB
    }
}

pub fn all_good(rows: &[ArchiveRow]) -> bool {
    rows.len() == Hostile::ALL.len() && rows.iter().all(ArchiveRow::good)
}

/// Run `cmd` to its end: exit code (None: a signal), stdout, and its own peak RSS in MB.
///
/// The peak is the child's `VmHWM`, read every 2 ms while it runs (it exists only until
/// the child exits; a bomb's growth takes far longer than that). `wait4`'s `ru_maxrss` is
/// not used: the kernel carries the pre-exec address space's high-water mark into it, and
/// with `posix_spawn` that is this (the bench's) process's.
fn run_measured(mut cmd: Command) -> anyhow::Result<(Option<i32>, String, f64)> {
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(Stdio::null())
        .spawn()
        .context("run felhom")?;
    let pid = child.id();
    let mut peak: f64 = 0.0;
    let status = loop {
        if let Some(mb) = peak_rss_mb(pid) {
            peak = peak.max(mb);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let mut text = String::new();
    out.rewind()?;
    out.read_to_string(&mut text)?;
    Ok((status.code(), text, peak))
}

/// A process's peak RSS in MB (`VmHWM` of /proc/PID/status).
fn peak_rss_mb(pid: u32) -> Option<f64> {
    super::peak_rss_kib(&pid.to_string()).map(|kib| kib as f64 / 1024.0)
}

/// Every hostile kind through inspect and through restore, against `sim` (a fresh one).
pub async fn hostile_archive_rows(sim: &SimChild) -> anyhow::Result<Vec<ArchiveRow>> {
    let felhom = std::env::current_exe()?;
    let state_dir = sim.dir().join("sim");
    let dump = pve_sim::dump_dir(&state_dir, "local");
    let conf = vzdump::read_pct_conf(&dump.join(crate::cmd::sim::SEED_GOLDEN))
        .context("read the seeded golden's pct.conf")?;
    let config = felhom_core::config::Config::load(Some(&sim.config()))?;
    let client = pve_api::PveClient::new(config.client)?;
    let mut rows = Vec::new();
    for (i, kind) in Hostile::ALL.into_iter().enumerate() {
        let name = format!("vzdump-lxc-9100-2026_06_09-20_44_1{i}.tar.zst");
        let path = dump.join(&name);
        kind.write(&path, &conf)
            .with_context(|| format!("write the {} archive", kind.name()))?;
        let volid = format!("local:backup/{name}");
        let mut details = Vec::new();

        let mut cmd = Command::new(&felhom);
        cmd.args(["--output", "json", "golden", "inspect"])
            .arg(&path);
        let (inspect_exit, out, inspect_peak_rss_mb) = run_measured(cmd)?;
        let error = serde_json::from_str::<serde_json::Value>(out.trim())
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_default();
        let inspect_names_member = error.contains("archive member #");
        if !inspect_names_member {
            details.push(format!("inspect: {out}"));
        }

        // The simulator's restore, through its API.
        let vmid = 1900 + i as u32;
        let params: Vec<(String, String)> = [
            ("vmid", vmid.to_string()),
            ("ostemplate", volid.clone()),
            ("restore", "1".into()),
            ("storage", "local-lvm".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let upid = client.lxc_create("pve", &params).await?;
        let task = client
            .wait_task(&upid, &pve_api::WaitOptions::default())
            .await;
        let task_refused = matches!(&task, Err(pve_api::ApiError::TaskFailed { exitstatus, .. })
            if exitstatus.contains("archive member #"));
        if !task_refused {
            details.push(format!("restore task: {task:?}"));
        }

        // felhom provision of a spec that names the archive as its golden.
        let spec = sim.dir().join(format!("hostile-archive-{i}.toml"));
        let pvmid = vmid + 10;
        std::fs::write(
            &spec,
            base_spec(
                &format!("archive{i}"),
                &pvmid.to_string(),
                &volid,
                BASE_MOUNT,
            ),
        )?;
        let out = sim.felhom(&["provision", &spec.to_string_lossy()], &[])?;
        let provision_exit = out.status.code();
        if provision_exit == Some(0) {
            details.push("provision succeeded".into());
        }

        let state = sim.get("state").await?;
        let guests_left = state["guests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| {
                g["vmid"]
                    .as_u64()
                    .is_some_and(|v| v == vmid as u64 || v == pvmid as u64)
            })
            .count();
        let v = pve_sim::invariants::check(&state);
        let leaks = v.leaked_volumes.len() + v.detached_volumes.len();
        if leaks > 0 {
            details.push(format!("{v:?}"));
        }
        rows.push(ArchiveRow {
            kind: kind.name(),
            inspect_exit,
            inspect_names_member,
            inspect_peak_rss_mb,
            restore_refused: task_refused && provision_exit != Some(0),
            provision_exit,
            guests_left,
            leaks,
            sim_peak_rss_mb: sim.pid().and_then(peak_rss_mb).unwrap_or(f64::NAN),
            details,
        });
        let _ = std::fs::remove_file(&path);
    }
    Ok(rows)
}

/// The table: kind | inspect exit | inspect peak RSS MB | restore refused | leaks.
pub fn print_rows(rows: &[ArchiveRow]) {
    outln!("hostile archives");
    let mut t = output::table([
        "kind",
        "inspect exit",
        "inspect peak RSS MB",
        "restore refused",
        "leaks",
        "sim peak RSS MB",
    ]);
    for r in rows {
        t.add_row([
            r.kind.to_string(),
            r.inspect_exit
                .map(|c| c.to_string())
                .unwrap_or_else(|| "signal".into()),
            format!("{:.1}", r.inspect_peak_rss_mb),
            if r.restore_refused { "yes" } else { "NO" }.into(),
            (r.guests_left + r.leaks).to_string(),
            format!("{:.1}", r.sim_peak_rss_mb),
        ]);
    }
    output::print_table(&t);
    for r in rows {
        for d in &r.details {
            outln!("hostile archive {}: {d}", r.kind);
        }
    }
}
