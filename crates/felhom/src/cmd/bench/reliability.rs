//! `felhom bench reliability`: does the job survive what real hosts do to it? Three parts,
//! each against a simulator child process and the real `felhom` binary as child processes:
//!
//! 1. **Crash points**: every bring-up step × {before, after} its act, the process SIGKILLed
//!    there (`FELHOM_CRASH_AT`), then `felhom resume`. Correct = the guest is up, grown once,
//!    with exactly its volumes and the journal's MAC.
//! 2. **Soak**: N guests (default 500) in one batch under injected faults — the config-lock
//!    500, 503s, and answers lost after the work (`post_effect_595`: the request performed,
//!    then 595 with an empty body), 30% of the writes in all — with the simulator SIGKILLed
//!    and restarted twice mid-run; then one `felhom resume`. Each guest ends succeeded,
//!    rolled back, or stuck (needs a person).
//! 3. **Bad inputs**: every hostile spec of [`felhom_core::adversarial`] through `provision`
//!    and `plan`, and malformed VMIDs through `teardown`: all must exit 2 and cause 0 writes.
//! 4. **Re-run**: the same `apply` of N guests (VMIDs `auto`) under the same faults, run
//!    again and again, felhom SIGKILLed at a random moment of each run (seeded by `--seed`),
//!    and in two of the runs the simulator SIGKILLed and restarted instead. Then `apply` to
//!    the end and one more that must write nothing (the faults strike writes only). Correct = exactly one guest per identity, no job left open, every guest
//!    `unchanged` on the last run.
//!
//! What must be 0 everywhere (leaked/detached volumes, duplicate MACs, IPs and SSH keys)
//! is judged by [`pve_sim::invariants`], the same rules the integration tests assert; beside
//! them the bench counts guests per identity (a second guest for one customer/name) and
//! double grows (a rootfs not at the spec's size, or grown by two resize tasks).
//!
//! The crash points need a build with the hook (`--features crash-points`, see
//! [`felhom_core::job::CRASH_POINTS`]); without it the bench refuses to run.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use felhom_core::adversarial::{base_spec, hostile_specs, BASE_MOUNT};
use felhom_core::bringup::STEPS;
use felhom_core::job::Step;
use serde::Serialize;
use serde_json::{json, Value};

mod cluster;

use super::sim_child::SimChild;
use crate::error::{CliError, Exit};
use crate::output::{self, outln, OutputFormat};

/// The spec's rootfs size, which a guest must have exactly once grown to.
const ROOTFS: &str = "12G";

#[derive(Args, Debug)]
pub struct ReliabilityArgs {
    /// Guests in the soak batch and in the re-run.
    #[arg(long, default_value_t = 500)]
    pub guests: usize,
    /// Faults injected during the soak and the re-run (the simulator's `--faults` syntax):
    /// by default one mutating request in ten hits the config-lock 500, one in ten a 503,
    /// and one in ten is performed and then answered 595 with an empty body, i.e. about 30%
    /// of writes see a transient error.
    #[arg(long, default_value = "lock500=0.1,http503=0.1,post_effect_595=0.1")]
    pub faults: String,
    /// Seed of the simulator's fault generator and of the re-run's kill moments, so a run
    /// can be repeated.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulator time scale.
    #[arg(long, default_value_t = 0.02)]
    pub time_scale: f64,
    /// The parts to run, comma-separated (default: all of them).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "crash,soak,bad,archives,rerun,node-down,two"
    )]
    pub parts: Vec<Part>,
    /// Nodes of the simulated cluster of the `node-down` and `two` parts (pve1..pveN).
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
}

/// One part of the bench (`--parts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// Every crash point, then `resume`.
    Crash,
    /// N guests under transient faults and two simulator restarts.
    Soak,
    /// Hostile specs and VMIDs: exit 2, zero writes.
    Bad,
    /// Hostile archives through `golden inspect` and the simulator's restore.
    Archives,
    /// The same `apply` SIGKILLed at random moments and run again.
    Rerun,
    /// A cluster node down during an `apply` of N guests, then back.
    NodeDown,
    /// Two felhom processes with their own journals on overlapping specs, SIGKILLed.
    Two,
}

#[derive(Debug, Default, Serialize)]
struct CrashPoints {
    tried: usize,
    correct: usize,
    /// `step:phase` → what was wrong, for each point that did not end correct.
    wrong: Vec<(String, String)>,
}

#[derive(Debug, Default, Serialize)]
struct Soak {
    guests: usize,
    faults: String,
    simulator_restarts: usize,
    succeeded: usize,
    rolled_back: usize,
    stuck: usize,
    resumed: bool,
    transient_faults_injected: u64,
    lock500: u64,
    /// Requests performed and then answered 595.
    answers_lost: u64,
    wall_s: f64,
}

#[derive(Debug, Default, Serialize)]
struct Rerun {
    guests: usize,
    seed: u64,
    /// `apply` runs SIGKILLed at a random moment.
    felhom_killed: usize,
    /// Runs during which the simulator was SIGKILLed and restarted.
    simulator_restarts: usize,
    /// Faults injected by the simulator over the runs (lost answers among them).
    faults_injected: u64,
    answers_lost: u64,
    /// The exit code of the `apply` let run to its end after the kills.
    final_exit: Option<i32>,
    identities_exactly_one: usize,
    identities_missing: usize,
    identities_duplicated: usize,
    /// Jobs not succeeded, rolled back or superseded once everything ran.
    jobs_open: usize,
    /// Guests the last `apply` found unchanged, and what it wrote (must be 0).
    unchanged_on_last_run: usize,
    writes_on_last_run: u64,
    wall_s: f64,
    details: Vec<String>,
}

impl Rerun {
    fn good(&self) -> bool {
        self.final_exit == Some(0)
            && self.identities_exactly_one == self.guests
            && self.identities_missing + self.identities_duplicated + self.jobs_open == 0
            && self.unchanged_on_last_run == self.guests
            && self.writes_on_last_run == 0
    }
}

#[derive(Debug, Default, Serialize)]
struct Leaks {
    leaked_volumes: usize,
    detached_volumes: usize,
    duplicate_macs: usize,
    duplicate_ips: usize,
    duplicate_ssh_keys: usize,
    /// Identities (customer/name) with more than one guest.
    duplicate_guests: usize,
    double_grows: usize,
    details: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct BadInputs {
    tried: usize,
    refused_exit_2: usize,
    writes_caused: u64,
    /// Inputs that were not refused with exit 2.
    accepted: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    parts: Vec<Part>,
    /// Each part's section is `null` when `--parts` left it out.
    crash_points: Option<CrashPoints>,
    soak: Option<Soak>,
    leaks: Leaks,
    bad_inputs: Option<BadInputs>,
    rerun: Option<Rerun>,
    hostile_archives: Option<Vec<super::archives::ArchiveRow>>,
    node_down: Option<cluster::NodeDown>,
    two_processes: Option<cluster::TwoProcesses>,
}

impl Leaks {
    fn total(&self) -> usize {
        self.leaked_volumes
            + self.detached_volumes
            + self.duplicate_macs
            + self.duplicate_ips
            + self.duplicate_ssh_keys
            + self.duplicate_guests
            + self.double_grows
    }
}

impl Report {
    fn all_good(&self) -> bool {
        self.leaks.total() == 0
            && self
                .crash_points
                .as_ref()
                .is_none_or(|c| c.correct == c.tried)
            && self
                .soak
                .as_ref()
                .is_none_or(|s| s.stuck == 0 && s.succeeded + s.rolled_back == s.guests)
            && self
                .bad_inputs
                .as_ref()
                .is_none_or(|b| b.refused_exit_2 == b.tried && b.writes_caused == 0)
            && self.rerun.as_ref().is_none_or(Rerun::good)
            && self
                .hostile_archives
                .as_ref()
                .is_none_or(|a| super::archives::all_good(a))
            && self.node_down.as_ref().is_none_or(cluster::NodeDown::good)
            && self
                .two_processes
                .as_ref()
                .is_none_or(cluster::TwoProcesses::good)
    }
}

fn golden() -> String {
    format!("local:backup/{}", crate::cmd::sim::SEED_GOLDEN)
}

fn json_out(out: &std::process::Output) -> Value {
    serde_json::from_slice(out.stdout.trim_ascii()).unwrap_or(Value::Null)
}

/// The value of `size=` in a `rootfs`/`mpN` property string.
fn size_of(prop: &str) -> Option<&str> {
    prop.split(',').find_map(|kv| kv.strip_prefix("size="))
}

/// Resize tasks that grew `vmid` since its last restore (a VMID freed by a rollback may hold
/// a later guest).
fn grows_since_restore(state: &Value, vmid: u64) -> usize {
    let tasks: Vec<&Value> = state["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["id"] == vmid.to_string().as_str())
        .collect();
    let restored = tasks
        .iter()
        .filter(|t| t["type"] == "vzrestore")
        .filter_map(|t| t["start_ms"].as_u64())
        .max()
        .unwrap_or(0);
    tasks
        .iter()
        .filter(|t| t["type"] == "resize" && t["exitstatus"] == "OK")
        .filter(|t| t["start_ms"].as_u64().unwrap_or(0) >= restored)
        .count()
}

fn tally(leaks: &mut Leaks, state: &Value, context: &str) {
    let v = pve_sim::invariants::check(state);
    leaks.leaked_volumes += v.leaked_volumes.len();
    leaks.detached_volumes += v.detached_volumes.len();
    leaks.duplicate_macs += v.duplicate_macs.len();
    leaks.duplicate_ips += v.duplicate_ips.len();
    leaks.duplicate_ssh_keys += v.duplicate_keys.len();
    if !v.is_clean() {
        leaks.details.push(format!("{context}: {v:?}"));
    }
    let mut per_identity: std::collections::BTreeMap<&str, usize> = Default::default();
    for g in state["guests"].as_array().into_iter().flatten() {
        let rootfs = g["config"]["rootfs"].as_str().unwrap_or_default();
        let vmid = g["vmid"].as_u64().unwrap_or(0);
        let grows = grows_since_restore(state, vmid);
        if size_of(rootfs) != Some(ROOTFS) || grows > 1 {
            leaks.double_grows += 1;
            leaks.details.push(format!(
                "{context}: guest {vmid} has rootfs {rootfs} after {grows} resize tasks, want size={ROOTFS} after one"
            ));
        }
        if let Some(h) = g["config"]["hostname"].as_str() {
            *per_identity.entry(h).or_default() += 1;
        }
    }
    for (hostname, n) in per_identity.into_iter().filter(|(_, n)| *n > 1) {
        leaks.duplicate_guests += 1;
        leaks
            .details
            .push(format!("{context}: {n} guests named {hostname}"));
    }
}

async fn crash_points(sim: &SimChild, leaks: &mut Leaks) -> anyhow::Result<CrashPoints> {
    let mut r = CrashPoints::default();
    let golden = golden();
    for (i, step) in STEPS.iter().enumerate() {
        for (j, phase) in ["before", "after"].into_iter().enumerate() {
            let point = format!("{}:{phase}", step.name());
            let vmid = 1100 + 2 * i + j;
            let path = sim.dir().join(format!("crash-{vmid}.toml"));
            std::fs::write(
                &path,
                base_spec(
                    &format!("crash{vmid}"),
                    &vmid.to_string(),
                    &golden,
                    BASE_MOUNT,
                ),
            )?;
            let spec = path.to_string_lossy();
            r.tried += 1;
            let out = sim.felhom(&["provision", &spec], &[("FELHOM_CRASH_AT", &point)])?;
            if out.status.signal() != Some(libc::SIGKILL) {
                r.wrong
                    .push((point, format!("not killed there: {:?}", out.status)));
                continue;
            }
            let out = sim.felhom(&["--output", "json", "resume"], &[])?;
            let rep = json_out(&out);
            let state = sim.get("state").await?;
            let guest = state["guests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|g| g["vmid"].as_u64() == Some(vmid as u64));
            let owned = state["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["owner"].as_u64() == Some(vmid as u64))
                .count();
            let pve_mac = guest
                .and_then(|g| g["macs"][0].as_str())
                .map(str::to_ascii_uppercase);
            let journal_mac = rep["jobs"][0]["mac"].as_str().map(str::to_ascii_uppercase);
            let problem = if out.status.code() != Some(0) {
                Some(format!("resume exited {:?}: {rep}", out.status.code()))
            } else if guest.map(|g| &g["status"]) != Some(&json!("running")) {
                Some("guest not running after resume".to_string())
            } else if owned != 2 {
                Some(format!("{owned} volumes, want rootfs + one mount"))
            } else if pve_mac.is_none() || pve_mac != journal_mac {
                Some(format!("MAC: PVE {pve_mac:?}, journal {journal_mac:?}"))
            } else {
                None
            };
            match problem {
                Some(p) => r.wrong.push((point, p)),
                None => r.correct += 1,
            }
        }
    }
    tally(leaks, &sim.get("state").await?, "crash points");
    Ok(r)
}

async fn soak(args: &ReliabilityArgs, leaks: &mut Leaks) -> anyhow::Result<Soak> {
    let faults = format!("{},seed={}", args.faults, args.seed);
    let mut sim = SimChild::start(args.time_scale, &faults)?;
    let golden = golden();
    let mut text = String::new();
    for i in 0..args.guests {
        text.push_str("[[guest]]\n");
        let one = base_spec(&format!("soak{i}"), "\"auto\"", &golden, BASE_MOUNT);
        text.push_str(&one.replace("[[mount]]", "[[guest.mount]]"));
        text.push('\n');
    }
    let path = sim.dir().join("soak.toml");
    std::fs::write(&path, text)?;
    let spec = path.to_string_lossy().into_owned();

    let t0 = Instant::now();
    let mut child = sim
        .felhom_cmd(&["--output", "json", "provision", &spec], &[])?
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start felhom provision")?;
    // Restart the simulator when about a third and about two thirds of the guests exist:
    // mid-run, with tasks, locks and polls in flight.
    let thresholds = [
        args.guests.div_ceil(3).max(1),
        (2 * args.guests).div_ceil(3).max(1),
    ];
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut restarts = 0;
    while restarts < thresholds.len() && Instant::now() < deadline && child.try_wait()?.is_none() {
        let n = sim
            .get("state")
            .await
            .ok()
            .and_then(|s| s["guests"].as_array().map(Vec::len))
            .unwrap_or(0);
        if n >= thresholds[restarts] {
            sim.restart()?;
            restarts += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let first = json_out(&out);
    let all_done = first["jobs"]
        .as_array()
        .is_some_and(|j| j.len() == args.guests && j.iter().all(|j| j["outcome"] == "succeeded"));
    // Whatever the restart left paused or unfinished, one resume must finish.
    let resumed = !all_done;
    if resumed {
        sim.felhom(&["--output", "json", "resume"], &[])?;
    }
    let wall_s = t0.elapsed().as_secs_f64();

    let jobs = json_out(&sim.felhom(&["--output", "json", "jobs"], &[])?);
    let mut r = Soak {
        guests: args.guests,
        faults,
        simulator_restarts: restarts,
        resumed,
        wall_s,
        ..Soak::default()
    };
    for j in jobs["jobs"].as_array().into_iter().flatten() {
        match j["state"].as_str() {
            Some("succeeded") => r.succeeded += 1,
            Some("rolled_back") => r.rolled_back += 1,
            _ => r.stuck += 1,
        }
    }
    let state = sim.get("state").await?;
    r.transient_faults_injected = state["counters"]["faults_injected"].as_u64().unwrap_or(0);
    r.lock500 = state["counters"]["lock500"].as_u64().unwrap_or(0);
    r.answers_lost = state["counters"]["post_effect_595"].as_u64().unwrap_or(0);
    tally(leaks, &state, "soak");
    Ok(r)
}

/// SplitMix64: the kill moments are reproducible from `--seed`, with no generator crate
/// for what is a dozen lines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

/// Runs of the same `apply` that are killed (felhom, or in two of them the simulator).
const RERUN_KILLS: usize = 8;
/// Of those, the runs (0-based) during which the simulator is restarted instead.
const RERUN_SIM_RESTARTS: [usize; 2] = [2, 5];

async fn rerun(args: &ReliabilityArgs, leaks: &mut Leaks) -> anyhow::Result<Rerun> {
    let faults = format!("{},seed={}", args.faults, args.seed);
    let mut sim = SimChild::start(args.time_scale, &faults)?;
    let golden = golden();
    let mut text = String::new();
    for i in 0..args.guests {
        text.push_str("[[guest]]\n");
        let one = base_spec(&format!("rerun{i}"), "\"auto\"", &golden, BASE_MOUNT);
        text.push_str(&one.replace("[[mount]]", "[[guest.mount]]"));
        text.push('\n');
    }
    let path = sim.dir().join("rerun.toml");
    std::fs::write(&path, text)?;
    let spec = path.to_string_lossy().into_owned();
    let apply = ["--output", "json", "apply", spec.as_str()];
    let mut rng = Rng(args.seed);
    let mut r = Rerun {
        guests: args.guests,
        seed: args.seed,
        ..Rerun::default()
    };
    // A first run takes up to about 40 ms of wall per guest at the default time scale (the
    // guests run in parallel); a kill moment anywhere in that window hits every phase. A run
    // that ended before its kill moment halves the window, so later runs are still killed
    // while they work.
    let mut window = 300 + 40 * args.guests as u64;
    let t0 = Instant::now();
    for round in 0..RERUN_KILLS {
        let mut child = sim
            .felhom_cmd(&apply, &[])?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start felhom apply")?;
        tokio::time::sleep(rng.millis(20, window)).await;
        if RERUN_SIM_RESTARTS.contains(&round) {
            sim.restart()?;
            r.simulator_restarts += 1;
            // felhom rides through (PVE unreachable is retried within the connect budget)
            // or pauses; either way the next run goes on.
            tokio::task::spawn_blocking(move || child.wait()).await??;
        } else if child.try_wait()?.is_none() {
            child.kill()?;
            child.wait()?;
            r.felhom_killed += 1;
        } else {
            window = (window / 2).max(40);
        }
    }
    let out = sim.felhom(&apply, &[])?;
    r.final_exit = out.status.code();
    if out.status.code() != Some(0) {
        r.details.push(format!(
            "final apply: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    let writes = |s: &Value| s["counters"]["writes"].as_u64().unwrap_or(0);
    let before = writes(&sim.get("state").await?);
    let last = json_out(&sim.felhom(&apply, &[])?);
    r.unchanged_on_last_run = last["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["outcome"] == "unchanged")
        .count();
    let state = sim.get("state").await?;
    r.writes_on_last_run = writes(&state).saturating_sub(before);
    r.faults_injected = state["counters"]["faults_injected"].as_u64().unwrap_or(0);
    r.answers_lost = state["counters"]["post_effect_595"].as_u64().unwrap_or(0);
    r.wall_s = t0.elapsed().as_secs_f64();

    for i in 0..args.guests {
        let hostname = format!("rerun{i}-app");
        let n = state["guests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["config"]["hostname"] == hostname.as_str())
            .count();
        match n {
            1 => r.identities_exactly_one += 1,
            0 => r.identities_missing += 1,
            _ => {
                r.identities_duplicated += 1;
                r.details.push(format!("{hostname}: {n} guests"));
            }
        }
    }
    let jobs = json_out(&sim.felhom(&["--output", "json", "jobs"], &[])?);
    for j in jobs["jobs"].as_array().into_iter().flatten() {
        if !matches!(
            j["state"].as_str(),
            Some("succeeded" | "rolled_back" | "superseded")
        ) {
            r.jobs_open += 1;
            r.details.push(format!(
                "job {} is {}: {}",
                j["job"], j["state"], j["error"]
            ));
        }
    }
    tally(leaks, &state, "re-run");
    Ok(r)
}

async fn bad_inputs(sim: &SimChild) -> anyhow::Result<BadInputs> {
    let mut r = BadInputs::default();
    let writes = |s: &Value| s["counters"]["writes"].as_u64().unwrap_or(0);
    let before = writes(&sim.get("state").await?);
    let mut runs: Vec<(String, Vec<String>)> = Vec::new();
    for (i, case) in hostile_specs(&golden()).into_iter().enumerate() {
        let path = sim.dir().join(format!("hostile-{i}.toml"));
        std::fs::write(&path, &case.text)?;
        let p = path.to_string_lossy().into_owned();
        for cmd in ["provision", "plan"] {
            runs.push((format!("{cmd}: {}", case.name), vec![cmd.into(), p.clone()]));
        }
    }
    for vmid in ["abc", "1100,ip=1", "99", "4294967296", "-1", "1100\n"] {
        runs.push((
            format!("teardown {vmid:?}"),
            vec!["teardown".into(), vmid.into()],
        ));
    }
    for (name, argv) in runs {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = sim.felhom(&argv, &[])?;
        r.tried += 1;
        if out.status.code() == Some(2) {
            r.refused_exit_2 += 1;
        } else {
            r.accepted
                .push(format!("{name}: exit {:?}", out.status.code()));
        }
    }
    r.writes_caused = writes(&sim.get("state").await?).saturating_sub(before);
    Ok(r)
}

pub async fn run(args: ReliabilityArgs, format: OutputFormat) -> Result<(), CliError> {
    if !(1..=500).contains(&args.guests) {
        return Err(CliError::bad_input(format!(
            "--guests must be 1–500, got {}",
            args.guests
        )));
    }
    if args.time_scale.is_nan() || args.time_scale <= 0.0 {
        return Err(CliError::bad_input(format!(
            "--time-scale must be > 0, got {}",
            args.time_scale
        )));
    }
    args.faults
        .parse::<pve_sim::FaultSpec>()
        .map_err(|e| CliError::bad_input(format!("--faults: {e}")))?;
    if args.parts.is_empty() {
        return Err(CliError::bad_input("--parts must name at least one part"));
    }
    if !(2..=16).contains(&args.nodes) {
        return Err(CliError::bad_input(format!(
            "--nodes must be 2–16 (a node goes down while the others carry on), got {}",
            args.nodes
        )));
    }
    if !felhom_core::job::CRASH_POINTS {
        return Err(CliError::bad_input(
            "bench reliability kills felhom at its crash points, and this build has no crash-point hook: build it with `cargo build --release -p felhom --features crash-points` (a build for benches, never for hosts)",
        ));
    }
    let mut report = Report {
        parts: args.parts.clone(),
        ..Report::default()
    };
    let runs = |p: Part| args.parts.contains(&p);
    if runs(Part::Bad) || runs(Part::Crash) {
        let sim = SimChild::start(args.time_scale, "")?;
        if runs(Part::Bad) {
            report.bad_inputs = Some(bad_inputs(&sim).await?);
        }
        if runs(Part::Crash) {
            report.crash_points = Some(crash_points(&sim, &mut report.leaks).await?);
        }
    }
    if runs(Part::Archives) {
        report.hostile_archives = Some(
            super::archives::hostile_archive_rows(&SimChild::start(args.time_scale, "")?).await?,
        );
    }
    if runs(Part::Soak) {
        report.soak = Some(soak(&args, &mut report.leaks).await?);
    }
    if runs(Part::Rerun) {
        report.rerun = Some(rerun(&args, &mut report.leaks).await?);
    }
    if runs(Part::NodeDown) {
        report.node_down = Some(cluster::node_down(&args, &mut report.leaks).await?);
    }
    if runs(Part::Two) {
        report.two_processes = Some(cluster::two_processes(&args, &mut report.leaks).await?);
    }
    let good = report.all_good();
    match format {
        OutputFormat::Json => output::json(&json!({ "reliability": report, "all_good": good })),
        OutputFormat::Human => print_table(&report, good),
    }
    if good { Exit::Ok } else { Exit::Failed }.into_result()
}

fn print_table(r: &Report, good: bool) {
    let l = &r.leaks;
    outln!("felhom bench reliability");
    let mut t = output::table(["what", "count"]);
    if let Some(col) = t.column_mut(1) {
        col.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    let mut row = |k: &str, v: String| {
        t.add_row([k.to_string(), v]);
    };
    if let Some(c) = &r.crash_points {
        row(
            &format!("crash points tried ({} steps x before/after)", STEPS.len()),
            c.tried.to_string(),
        );
        row("crash points ended correct", c.correct.to_string());
    }
    if let Some(s) = &r.soak {
        row("soak guests", s.guests.to_string());
        row("soak simulator restarts", s.simulator_restarts.to_string());
        row(
            "soak faults injected",
            s.transient_faults_injected.to_string(),
        );
        row(
            "soak answers lost (595 after the work)",
            s.answers_lost.to_string(),
        );
        row("soak succeeded", s.succeeded.to_string());
        row("soak rolled back", s.rolled_back.to_string());
        row("soak stuck", s.stuck.to_string());
        row(
            "soak needed a resume",
            if s.resumed { "yes" } else { "no" }.into(),
        );
        row("soak wall s (incl. resume)", format!("{:.1}", s.wall_s));
    }
    if let Some(rr) = &r.rerun {
        row("re-run guests", rr.guests.to_string());
        row("re-run felhom killed", rr.felhom_killed.to_string());
        row("re-run faults injected", rr.faults_injected.to_string());
        row(
            "re-run answers lost (595 after the work)",
            rr.answers_lost.to_string(),
        );
        row(
            "re-run simulator restarts",
            rr.simulator_restarts.to_string(),
        );
        row("re-run final apply exit", exit_text(rr.final_exit));
        row(
            "re-run identities with exactly 1 guest",
            rr.identities_exactly_one.to_string(),
        );
        row(
            "re-run identities missing",
            rr.identities_missing.to_string(),
        );
        row(
            "re-run identities duplicated",
            rr.identities_duplicated.to_string(),
        );
        row("re-run jobs left open", rr.jobs_open.to_string());
        row(
            "re-run unchanged on the last run",
            rr.unchanged_on_last_run.to_string(),
        );
        row(
            "re-run writes on the last run",
            rr.writes_on_last_run.to_string(),
        );
        row("re-run wall s", format!("{:.1}", rr.wall_s));
    }
    if let Some(n) = &r.node_down {
        n.rows(&mut row);
    }
    if let Some(t2) = &r.two_processes {
        t2.rows(&mut row);
    }
    row("leaked volumes", l.leaked_volumes.to_string());
    row("detached volumes", l.detached_volumes.to_string());
    row("duplicate MACs", l.duplicate_macs.to_string());
    row("duplicate IPs", l.duplicate_ips.to_string());
    row("duplicate SSH host keys", l.duplicate_ssh_keys.to_string());
    row(
        "identities with more than 1 guest",
        l.duplicate_guests.to_string(),
    );
    row("double grows", l.double_grows.to_string());
    if let Some(b) = &r.bad_inputs {
        row("bad inputs tried", b.tried.to_string());
        row("bad inputs refused (exit 2)", b.refused_exit_2.to_string());
        row("writes caused by bad inputs", b.writes_caused.to_string());
    }
    output::print_table(&t);
    if let Some(a) = &r.hostile_archives {
        super::archives::print_rows(a);
    }
    if let Some(s) = &r.soak {
        outln!("soak faults: {}", s.faults);
    }
    for (point, why) in r.crash_points.iter().flat_map(|c| &c.wrong) {
        outln!("crash point {point}: {why}");
    }
    for d in &l.details {
        outln!("leak: {d}");
    }
    for a in r.bad_inputs.iter().flat_map(|b| &b.accepted) {
        outln!("bad input not refused: {a}");
    }
    for d in r.rerun.iter().flat_map(|rr| &rr.details) {
        outln!("re-run: {d}");
    }
    for d in r.node_down.iter().flat_map(|n| &n.details) {
        outln!("node down: {d}");
    }
    for d in r.two_processes.iter().flat_map(|t| &t.details) {
        outln!("two processes: {d}");
    }
    outln!("{}", if good { "all good" } else { "NOT ALL GOOD" });
}

/// An exit code for the table (`signal` when a signal ended the process).
fn exit_text(code: Option<i32>) -> String {
    code.map(|c| c.to_string())
        .unwrap_or_else(|| "signal".into())
}
