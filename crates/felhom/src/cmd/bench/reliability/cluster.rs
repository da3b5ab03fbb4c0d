//! The cluster parts of `felhom bench reliability` (issue 17's reliability rows), each on a
//! simulated cluster of `--nodes` nodes (`pve1`..`pveN`) with specs that leave placement to
//! felhom (no `node`, VMIDs `auto`):
//!
//! | part | what it does | correct |
//! |---|---|---|
//! | 5. node down | `apply` of N guests; once a third of the last node's share of guests exist there, `node_down:pveN`; the apply ends (exit 3); the fault is cleared, `felhom resume`, then `apply`, then `apply` once more | every guest placed on another node succeeded and runs while the node is down; every paused job resumes to success; in the end one running guest per identity, nothing written by the last run |
//! | 6. two processes | two configs with their own journals on one cluster, A applying identities 0..70%, B 30%..100% (40% overlap), both at once, each SIGKILLed at its own seeded random moment, for several rounds, under `--faults`; then both at once to the end, then each once more alone | one guest per identity, no VMID in both journals, every identity owned by one journal, a refusal only for an identity the other owns, no guest either journal recorded gone, no job open, nothing written by the last runs |
//!
//! Why the overlap ends in refusals and not in exit 0 for both: an identity made by one
//! installation is refused by the other ("cannot prove it is its own", README "Several felhom
//! processes"); the bench checks each such refusal against the other journal's `status`.
//! The faults of part 6 are the re-run's (`--faults`): answers lost after the work among
//! them, so the yield protocol is tried with ambiguous answers too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use felhom_core::adversarial::{base_spec, BASE_MOUNT};
use serde::Serialize;
use serde_json::{json, Value};

use super::{golden, json_out, tally, Leaks, ReliabilityArgs, Rng, SimChild};

/// Rounds of part 6 in which both processes run and each is SIGKILLed at a random moment.
const TWO_KILL_ROUNDS: usize = 6;

/// Runs of part 6 allowed to bring both processes to the end after the kills.
const TWO_FINAL_TRIES: usize = 4;

#[derive(Debug, Default, Serialize)]
pub(super) struct NodeDown {
    guests: usize,
    nodes: usize,
    down_node: String,
    /// Guests on the down node when it went down (their restores begun or done).
    guests_on_down_node_at_fault: usize,
    /// Guests the first apply placed on the down node (by where its jobs paused or ran).
    first_exit: Option<i32>,
    /// Guests on the other nodes that succeeded and run while the node was down.
    converged_while_down: usize,
    /// Guests on the down node that had succeeded before it went down.
    done_on_down_node_before: usize,
    /// Guests of the first apply not on the down node that did not converge (must be 0).
    other_nodes_not_converged: usize,
    /// Jobs paused (with a job in the journal) and decisions paused (before any job).
    paused_jobs: usize,
    paused_decisions: usize,
    /// Outcomes of the first apply neither succeeded nor paused (must be 0).
    other_outcomes: usize,
    resume_exit: Option<i32>,
    resumed_to_success: usize,
    /// The apply after the resume: its exit, the guests it made (paused decisions), and
    /// the ones it found unchanged.
    apply_after_exit: Option<i32>,
    created_after_resume: usize,
    unchanged_after_resume: usize,
    identities_exactly_one: usize,
    identities_missing: usize,
    identities_duplicated: usize,
    running: usize,
    unchanged_on_last_run: usize,
    writes_on_last_run: u64,
    /// Requests the simulator answered 595 for the down node.
    node_down_595: u64,
    /// Wall of the first apply (until its paused jobs gave up), of the resume, and of all.
    first_apply_s: f64,
    resume_s: f64,
    wall_s: f64,
    pub(super) details: Vec<String>,
}

impl NodeDown {
    pub(super) fn good(&self) -> bool {
        let paused = self.paused_jobs + self.paused_decisions;
        self.first_exit == Some(3)
            && paused > 0
            && self.converged_while_down + self.done_on_down_node_before + paused == self.guests
            && self.other_nodes_not_converged + self.other_outcomes == 0
            && self.resume_exit == Some(0)
            && self.resumed_to_success == self.paused_jobs
            && self.apply_after_exit == Some(0)
            && self.created_after_resume == self.paused_decisions
            && self.identities_exactly_one == self.guests
            && self.running == self.guests
            && self.unchanged_on_last_run == self.guests
            && self.writes_on_last_run == 0
    }

    pub(super) fn rows(&self, row: &mut impl FnMut(&str, String)) {
        row(
            "node down guests / nodes",
            format!("{} / {}", self.guests, self.nodes),
        );
        row(
            &format!("node down: guests on {} when it went down", self.down_node),
            self.guests_on_down_node_at_fault.to_string(),
        );
        row(
            "node down first apply exit",
            super::exit_text(self.first_exit),
        );
        row(
            "node down converged on other nodes while down",
            self.converged_while_down.to_string(),
        );
        row(
            "node down: done on it before it went down",
            self.done_on_down_node_before.to_string(),
        );
        row(
            "node down other nodes not converged",
            self.other_nodes_not_converged.to_string(),
        );
        row("node down jobs paused", self.paused_jobs.to_string());
        row(
            "node down decisions paused (no job yet)",
            self.paused_decisions.to_string(),
        );
        row("node down other outcomes", self.other_outcomes.to_string());
        row(
            "node down resumed to success",
            self.resumed_to_success.to_string(),
        );
        row(
            "node down made by the apply after resume",
            self.created_after_resume.to_string(),
        );
        row(
            "node down identities with exactly 1 guest",
            self.identities_exactly_one.to_string(),
        );
        row("node down guests running", self.running.to_string());
        row(
            "node down writes on the last run",
            self.writes_on_last_run.to_string(),
        );
        row(
            "node down wall s (first apply, resume, all)",
            format!(
                "{:.1}, {:.1}, {:.1}",
                self.first_apply_s, self.resume_s, self.wall_s
            ),
        );
    }
}

/// Guests of the simulator by VMID: (node, status, hostname).
fn guests_by_vmid(state: &Value) -> BTreeMap<u64, (String, String, String)> {
    state["guests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| {
            Some((
                g["vmid"].as_u64()?,
                (
                    g["node"].as_str().unwrap_or("pve").to_string(),
                    g["status"].as_str().unwrap_or_default().to_string(),
                    g["config"]["hostname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ),
            ))
        })
        .collect()
}

/// How many guests carry `hostname`.
fn count_named(state: &Value, hostname: &str) -> usize {
    guests_by_vmid(state)
        .values()
        .filter(|(_, _, h)| h == hostname)
        .count()
}

/// A `[[guest]]` file of `prefix{i}` for each `i` in `range`, without `node` (felhom places
/// them) and with VMIDs `auto`.
fn write_specs(
    dir: &Path,
    file: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<PathBuf> {
    let golden = golden();
    let mut text = String::new();
    for i in range {
        text.push_str("[[guest]]\n");
        let one = base_spec(&format!("{prefix}{i}"), "\"auto\"", &golden, BASE_MOUNT).replacen(
            "node = \"pve\"\n",
            "",
            1,
        );
        text.push_str(&one.replace("[[mount]]", "[[guest.mount]]"));
        text.push('\n');
    }
    let path = dir.join(file);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Rewrite the config the simulator wrote: `from` → `to`, which must be there.
fn edit_config(path: &Path, from: &str, to: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    anyhow::ensure!(
        text.contains(from),
        "{} has no {from:?} to change",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1))?;
    Ok(())
}

fn writes(state: &Value) -> u64 {
    state["counters"]["writes"].as_u64().unwrap_or(0)
}

fn outcomes(report: &Value) -> impl Iterator<Item = &Value> {
    report["jobs"].as_array().into_iter().flatten()
}

pub(super) async fn node_down(
    args: &ReliabilityArgs,
    leaks: &mut Leaks,
) -> anyhow::Result<NodeDown> {
    let sim = SimChild::start_cluster(args.time_scale, "", args.nodes)?;
    let down = format!("pve{}", args.nodes);
    let spec = write_specs(sim.dir(), "node-down.toml", "nd", 0..args.guests)?;
    let spec = spec.to_string_lossy().into_owned();
    let apply = ["--output", "json", "apply", spec.as_str()];
    let mut r = NodeDown {
        guests: args.guests,
        nodes: args.nodes,
        down_node: down.clone(),
        ..NodeDown::default()
    };

    let t0 = Instant::now();
    let mut child = sim
        .felhom_cmd(&apply, &[])?
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start felhom apply")?;
    // The node goes down once a third of its share of the guests exist on it: some done,
    // some mid-step, the rest not begun.
    let threshold = (args.guests / args.nodes / 3).max(1);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let state = sim.get("state").await?;
        let on = guests_by_vmid(&state)
            .values()
            .filter(|(n, _, _)| *n == down)
            .count();
        if on >= threshold {
            sim.post("faults", &json!({ "set": format!("node_down:{down}") }))
                .await?;
            r.guests_on_down_node_at_fault = on;
            break;
        }
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            r.details.push(format!(
                "the apply ended (or 600 s passed) before {threshold} guests were on {down}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    r.first_exit = out.status.code();
    r.first_apply_s = t0.elapsed().as_secs_f64();
    let first = json_out(&out);
    let state = sim.get("state").await?;
    let guests = guests_by_vmid(&state);
    for j in outcomes(&first) {
        let vmid = j["vmid"].as_u64();
        let at = vmid.and_then(|v| guests.get(&v));
        match (j["outcome"].as_str(), at) {
            (Some("succeeded"), Some((node, status, _)))
                if *node != down && status == "running" =>
            {
                r.converged_while_down += 1
            }
            (Some("paused"), at) => {
                if j["job"].as_str().is_some_and(|s| !s.is_empty()) {
                    r.paused_jobs += 1;
                } else {
                    r.paused_decisions += 1;
                }
                if let Some((node, _, _)) = at.filter(|(n, _, _)| *n != down) {
                    r.other_nodes_not_converged += 1;
                    r.details.push(format!(
                        "{} paused on {node}, which was up: {j}",
                        j["label"]
                    ));
                }
            }
            (Some("succeeded"), Some((node, status, _)))
                if *node == down && status == "running" =>
            {
                r.done_on_down_node_before += 1
            }
            (Some("succeeded"), _) => {
                r.other_nodes_not_converged += 1;
                r.details
                    .push(format!("{} succeeded but is {at:?}", j["label"]));
            }
            _ => {
                r.other_outcomes += 1;
                r.details.push(format!("while {down} was down: {j}"));
            }
        }
    }
    if outcomes(&first).count() != args.guests {
        r.details.push(format!(
            "the first apply reported {} guests, not {}: {}",
            outcomes(&first).count(),
            args.guests,
            String::from_utf8_lossy(&out.stdout)
        ));
    }

    sim.post("faults", &json!({ "clear": format!("node_down:{down}") }))
        .await?;
    let t1 = Instant::now();
    let res = sim.felhom(&["--output", "json", "resume"], &[])?;
    r.resume_s = t1.elapsed().as_secs_f64();
    r.resume_exit = res.status.code();
    let res = json_out(&res);
    for j in outcomes(&res) {
        if j["outcome"] == "succeeded" {
            r.resumed_to_success += 1;
        } else {
            r.details.push(format!("resume: {j}"));
        }
    }
    let after = sim.felhom(&apply, &[])?;
    r.apply_after_exit = after.status.code();
    for j in outcomes(&json_out(&after)) {
        match j["outcome"].as_str() {
            Some("succeeded") => r.created_after_resume += 1,
            Some("unchanged") => r.unchanged_after_resume += 1,
            _ => r.details.push(format!("apply after resume: {j}")),
        }
    }
    let before = writes(&sim.get("state").await?);
    let last = json_out(&sim.felhom(&apply, &[])?);
    r.unchanged_on_last_run = outcomes(&last)
        .filter(|j| j["outcome"] == "unchanged")
        .count();
    let state = sim.get("state").await?;
    r.writes_on_last_run = writes(&state).saturating_sub(before);
    r.node_down_595 = state["counters"]["node_down_595"].as_u64().unwrap_or(0);
    r.wall_s = t0.elapsed().as_secs_f64();
    for i in 0..args.guests {
        match count_named(&state, &format!("nd{i}-app")) {
            1 => r.identities_exactly_one += 1,
            0 => r.identities_missing += 1,
            n => {
                r.identities_duplicated += 1;
                r.details.push(format!("nd{i}-app: {n} guests"));
            }
        }
    }
    r.running = guests_by_vmid(&state)
        .values()
        .filter(|(_, s, _)| s == "running")
        .count();
    tally(leaks, &state, "node down");
    Ok(r)
}

#[derive(Debug, Default, Serialize)]
pub(super) struct TwoProcesses {
    guests: usize,
    nodes: usize,
    seed: u64,
    /// Identities `two{i}` of process A (`a[0]..a[1]`) and of B; the overlap is both.
    a_identities: [usize; 2],
    b_identities: [usize; 2],
    overlap: usize,
    /// SIGKILLs of A and of B at random moments.
    a_killed: usize,
    b_killed: usize,
    faults_injected: u64,
    answers_lost: u64,
    /// Rounds without kills it took until both ended with nothing paused, failed or rolled
    /// back (at most 4).
    final_runs: usize,
    final_exits: [Option<i32>; 2],
    identities_exactly_one: usize,
    identities_missing: usize,
    identities_duplicated: usize,
    /// Identities in the journals: A's, B's, and in both (must be 0).
    owned_by_a: usize,
    owned_by_b: usize,
    owned_by_both: usize,
    /// Guests on PVE with a felhom marker that neither journal records (must be 0).
    owned_by_neither: usize,
    /// VMIDs both journals record (must be 0).
    vmids_in_both_journals: usize,
    /// Guests a journal records that PVE no longer has: torn down by someone (must be 0).
    recorded_but_gone: usize,
    /// Refusals on the last runs, and those of an identity the other does not own (0).
    refused_owned_by_other: usize,
    refused_otherwise: usize,
    unchanged_on_last_runs: usize,
    writes_on_last_runs: u64,
    jobs_open: usize,
    wall_s: f64,
    pub(super) details: Vec<String>,
}

impl TwoProcesses {
    pub(super) fn good(&self) -> bool {
        self.identities_exactly_one == self.guests
            && self.identities_missing + self.identities_duplicated == 0
            && self.owned_by_a + self.owned_by_b == self.guests
            && self.owned_by_both
                + self.owned_by_neither
                + self.vmids_in_both_journals
                + self.recorded_but_gone
                + self.refused_otherwise
                + self.jobs_open
                == 0
            && self.unchanged_on_last_runs + self.refused_owned_by_other
                == self.a_identities[1] - self.a_identities[0] + self.b_identities[1]
                    - self.b_identities[0]
            && self.refused_owned_by_other == self.overlap
            && self.writes_on_last_runs == 0
    }

    pub(super) fn rows(&self, row: &mut impl FnMut(&str, String)) {
        row(
            "two processes guests / overlap / nodes",
            format!("{} / {} / {}", self.guests, self.overlap, self.nodes),
        );
        row(
            "two processes killed (A, B)",
            format!("{}, {}", self.a_killed, self.b_killed),
        );
        row(
            "two processes faults injected (answers lost)",
            format!("{} ({})", self.faults_injected, self.answers_lost),
        );
        row(
            "two processes final runs, exits (A, B)",
            format!(
                "{}: {}, {}",
                self.final_runs,
                super::exit_text(self.final_exits[0]),
                super::exit_text(self.final_exits[1])
            ),
        );
        row(
            "two processes identities with exactly 1 guest",
            self.identities_exactly_one.to_string(),
        );
        row(
            "two processes identities owned by A / B / both",
            format!(
                "{} / {} / {}",
                self.owned_by_a, self.owned_by_b, self.owned_by_both
            ),
        );
        row(
            "two processes VMIDs in both journals",
            self.vmids_in_both_journals.to_string(),
        );
        row(
            "two processes recorded guests torn down",
            self.recorded_but_gone.to_string(),
        );
        row(
            "two processes refused (owned by the other / otherwise)",
            format!(
                "{} / {}",
                self.refused_owned_by_other, self.refused_otherwise
            ),
        );
        row("two processes jobs left open", self.jobs_open.to_string());
        row(
            "two processes writes on the last runs",
            self.writes_on_last_runs.to_string(),
        );
        row("two processes wall s", format!("{:.1}", self.wall_s));
    }
}

/// `felhom --config CONFIG ARGS` as a child process (minimal environment, no crash point).
fn felhom_with(config: &Path, args: &[&str]) -> anyhow::Result<Command> {
    let mut c = Command::new(std::env::current_exe()?);
    felhom_core::secrets::minimal_env(&mut c, &["RUST_LOG"]);
    c.arg("--config").arg(config).args(args);
    c.env_remove("FELHOM_CRASH_AT");
    c.stdin(Stdio::null());
    Ok(c)
}

/// A journal's view from `felhom status`: its guests by hostname (each identity here has its
/// own, and apply's reports are labelled with it) → (vmid, status).
fn owned(config: &Path) -> anyhow::Result<BTreeMap<String, (u64, String)>> {
    let out = felhom_with(config, &["--output", "json", "status"])?.output()?;
    let v = json_out(&out);
    let list = v["guests"]
        .as_array()
        .or_else(|| v.as_array())
        .with_context(|| {
            format!(
                "felhom status with {}: {}",
                config.display(),
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
    Ok(list
        .iter()
        .filter_map(|g| {
            Some((
                g["hostname"].as_str()?.to_string(),
                (
                    g["vmid"].as_u64()?,
                    g["status"].as_str().unwrap_or_default().to_string(),
                ),
            ))
        })
        .collect())
}

/// The jobs of a journal not ended (succeeded, rolled back or superseded).
fn open_jobs(config: &Path) -> anyhow::Result<Vec<String>> {
    let v = json_out(&felhom_with(config, &["--output", "json", "jobs"])?.output()?);
    Ok(v["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| {
            !matches!(
                j["state"].as_str(),
                Some("succeeded" | "rolled_back" | "superseded")
            )
        })
        .map(|j| format!("job {} is {}: {}", j["job"], j["state"], j["error"]))
        .collect())
}

fn spawn_apply(config: &Path, spec: &str) -> anyhow::Result<Child> {
    felhom_with(config, &["--output", "json", "apply", spec])?
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start felhom apply")
}

/// SIGKILL `child` at `at` (from `t0`) unless it ended first; whether it was killed.
async fn kill_at(child: &mut Child, t0: Instant, at: Duration) -> anyhow::Result<bool> {
    if let Some(rest) = at.checked_sub(t0.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    if child.try_wait()?.is_some() {
        return Ok(false);
    }
    child.kill()?;
    child.wait()?;
    Ok(true)
}

pub(super) async fn two_processes(
    args: &ReliabilityArgs,
    leaks: &mut Leaks,
) -> anyhow::Result<TwoProcesses> {
    let faults = format!("{},seed={}", args.faults, args.seed);
    let sim = SimChild::start_cluster(args.time_scale, &faults, args.nodes)?;
    let n = args.guests;
    let a_ids = [0, (7 * n).div_ceil(10).max(1)];
    let b_ids = [(3 * n / 10).min(n - 1), n];
    let a_cfg = sim.config();
    let b_cfg = sim.dir().join("felhom-b.toml");
    std::fs::copy(&a_cfg, &b_cfg)?;
    edit_config(&b_cfg, "felhom-journal.db", "felhom-journal-b.db")?;
    let a_spec = write_specs(sim.dir(), "two-a.toml", "two", a_ids[0]..a_ids[1])?;
    let b_spec = write_specs(sim.dir(), "two-b.toml", "two", b_ids[0]..b_ids[1])?;
    let (a_spec, b_spec) = (
        a_spec.to_string_lossy().into_owned(),
        b_spec.to_string_lossy().into_owned(),
    );
    let mut r = TwoProcesses {
        guests: n,
        nodes: args.nodes,
        seed: args.seed,
        a_identities: a_ids,
        b_identities: b_ids,
        overlap: a_ids[1].saturating_sub(b_ids[0]),
        ..TwoProcesses::default()
    };
    // The re-run's window: a kill anywhere in a first run's wall; a process that ended
    // before its moment halves it, so later rounds still strike while work is left.
    let mut rng = Rng(args.seed ^ 0x7477_6f00);
    let mut window = 300 + 40 * n as u64;
    let t0 = Instant::now();
    for _ in 0..TWO_KILL_ROUNDS {
        let start = Instant::now();
        let mut a = spawn_apply(&a_cfg, &a_spec)?;
        let mut b = spawn_apply(&b_cfg, &b_spec)?;
        let (ka, kb) = (rng.millis(20, window), rng.millis(20, window));
        let (first, second, a_first) = if ka <= kb {
            ((&mut a, ka), (&mut b, kb), true)
        } else {
            ((&mut b, kb), (&mut a, ka), false)
        };
        let k1 = kill_at(first.0, start, first.1).await?;
        let k2 = kill_at(second.0, start, second.1).await?;
        let (ka_hit, kb_hit) = if a_first { (k1, k2) } else { (k2, k1) };
        r.a_killed += usize::from(ka_hit);
        r.b_killed += usize::from(kb_hit);
        if !ka_hit || !kb_hit {
            window = (window / 2).max(40);
        }
    }
    // Both at once to the end, again while anything paused, failed or rolled back.
    let settled = |v: &Value| {
        outcomes(v).all(|j| {
            matches!(
                j["outcome"].as_str(),
                Some("succeeded" | "unchanged" | "refused")
            )
        })
    };
    for _ in 0..TWO_FINAL_TRIES {
        r.final_runs += 1;
        let a = spawn_apply(&a_cfg, &a_spec)?;
        let b = spawn_apply(&b_cfg, &b_spec)?;
        let (oa, ob) =
            tokio::task::spawn_blocking(move || (a.wait_with_output(), b.wait_with_output()))
                .await?;
        let (oa, ob) = (oa?, ob?);
        r.final_exits = [oa.status.code(), ob.status.code()];
        let (va, vb) = (json_out(&oa), json_out(&ob));
        if settled(&va) && settled(&vb) {
            break;
        }
        for (who, v) in [("A", &va), ("B", &vb)] {
            for j in outcomes(v).filter(|j| !settled(&json!({ "jobs": [j] }))) {
                r.details
                    .push(format!("final run {}: {who}: {j}", r.final_runs));
            }
        }
    }
    // Each alone once more: nothing to write; a refusal only of the other's identity.
    let own_a = owned(&a_cfg)?;
    let own_b = owned(&b_cfg)?;
    for (who, cfg, spec, other) in [
        ("A", &a_cfg, &a_spec, &own_b),
        ("B", &b_cfg, &b_spec, &own_a),
    ] {
        let before = writes(&sim.get("state").await?);
        let v = json_out(&felhom_with(cfg, &["--output", "json", "apply", spec])?.output()?);
        r.writes_on_last_runs += writes(&sim.get("state").await?).saturating_sub(before);
        for j in outcomes(&v) {
            let label = j["label"].as_str().unwrap_or_default();
            match j["outcome"].as_str() {
                Some("unchanged") => r.unchanged_on_last_runs += 1,
                Some("refused") if other.contains_key(label) => r.refused_owned_by_other += 1,
                _ => {
                    r.refused_otherwise += 1;
                    r.details.push(format!("last run of {who}: {j}"));
                }
            }
        }
        for j in open_jobs(cfg)? {
            r.jobs_open += 1;
            r.details.push(format!("{who}: {j}"));
        }
    }
    r.wall_s = t0.elapsed().as_secs_f64();

    let state = sim.get("state").await?;
    r.faults_injected = state["counters"]["faults_injected"].as_u64().unwrap_or(0);
    r.answers_lost = state["counters"]["post_effect_595"].as_u64().unwrap_or(0);
    for i in 0..n {
        match count_named(&state, &format!("two{i}-app")) {
            1 => r.identities_exactly_one += 1,
            0 => r.identities_missing += 1,
            k => {
                r.identities_duplicated += 1;
                r.details.push(format!("two{i}-app: {k} guests"));
            }
        }
    }
    r.owned_by_a = own_a.len();
    r.owned_by_b = own_b.len();
    r.owned_by_both = own_a.keys().filter(|k| own_b.contains_key(*k)).count();
    let vmids = |o: &BTreeMap<String, (u64, String)>| -> BTreeSet<u64> {
        o.values().map(|(v, _)| *v).collect()
    };
    r.vmids_in_both_journals = vmids(&own_a).intersection(&vmids(&own_b)).count();
    for (who, o) in [("A", &own_a), ("B", &own_b)] {
        for (id, (vmid, status)) in o {
            if status == "missing" {
                r.recorded_but_gone += 1;
                r.details.push(format!(
                    "{who} recorded {id} at {vmid}, which PVE no longer has"
                ));
            }
        }
    }
    let recorded: BTreeSet<u64> = vmids(&own_a).union(&vmids(&own_b)).copied().collect();
    for g in state["guests"].as_array().into_iter().flatten() {
        let marked = g["config"]["description"]
            .as_str()
            .and_then(felhom_core::marker::Marker::find)
            .is_some();
        let vmid = g["vmid"].as_u64().unwrap_or(0);
        if marked && !recorded.contains(&vmid) {
            r.owned_by_neither += 1;
            r.details.push(format!(
                "guest {vmid} carries a marker neither journal records"
            ));
        }
    }
    tally(leaks, &state, "two processes");
    Ok(r)
}
