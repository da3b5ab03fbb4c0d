//! Crash safety: SIGKILL felhom at every crash point the job engine has
//! (`FELHOM_CRASH_AT=<step>:<before|after|undo|undone>`), then `felhom resume`. The guest must end
//! correct — no leaked volume, no duplicate MAC, no double grow — and the job's outcome must
//! be the one the crash interrupted.
//!
//! The cases are generated from the step lists themselves, so a step added to a job is
//! crash-tested without anyone remembering to:
//!
//! | group    | steps                              | points          | after resume            |
//! |----------|------------------------------------|-----------------|-------------------------|
//! | bring-up | `bringup::STEPS`                   | before, after   | succeeded, guest right  |
//! | undo     | `bringup::STEPS` with `has_undo()` | undo, undone    | rolled back, nothing left |
//! | teardown | `teardown::STEPS`                  | before, after   | succeeded, guest gone   |
//!
//! The undo group forces a permanent failure with a simulator fault (every start task
//! fails), so the rollback passes through the undo of every step before `start`.
//!
//! Each group runs its cases concurrently against one simulator (distinct customers and
//! VMIDs, each job resumed by its id), a few at a time: most of a case is waiting on the
//! simulator's modelled task time, so this costs little CPU and saves most of the wall
//! time. While cases are in flight, only the invariants that concern a case's own guest
//! are asserted after it; the whole state is checked once every case of the group is done.

mod common;
use std::os::unix::process::ExitStatusExt;

use common::*;
use felhom_core::job::Step;
use serde_json::Value;

/// Cases in flight at once against one simulator.
const PARALLEL: usize = 6;

/// The id of the newest job of `kind` matching `pred`, from `felhom jobs`.
fn job_id(sim: &Sim, kind: &str, pred: impl Fn(&Value) -> bool) -> String {
    let out = sim.felhom(&["--output", "json", "jobs"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
    jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == kind && pred(j))
        .and_then(|j| j["job"].as_str())
        .unwrap_or_else(|| panic!("no {kind} job found in {jobs}"))
        .to_string()
}

/// `felhom resume <job>`: its exit code and its report of that job.
fn resume(sim: &Sim, job: &str, what: &str) -> (Option<i32>, Value) {
    let out = sim.felhom(&["--output", "json", "resume", job]);
    let rep: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: resume printed no report ({e}): {}", both(&out)));
    assert_eq!(
        rep["jobs"].as_array().map(Vec::len),
        Some(1),
        "{what}: {rep}"
    );
    (out.status.code(), rep["jobs"][0].clone())
}

/// Provision one guest with a crash point set; felhom must die there.
fn provision_crashing(sim: &Sim, customer: &str, vmid: u64, crash: &str) {
    let path = sim.write_spec(
        &format!("{customer}.toml"),
        &spec(customer, &vmid.to_string(), MOUNT),
    );
    let out = sim.felhom_env(
        &["provision", path.to_str().unwrap()],
        &[("FELHOM_CRASH_AT", crash)],
    );
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{crash}: felhom was not killed at the crash point: {}",
        both(&out)
    );
}

fn volumes_of(state: &Value, vmid: u64) -> Vec<&Value> {
    state["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["owner"].as_u64() == Some(vmid))
        .collect()
}

/// The invariants (`pve_sim::invariants`) as far as they concern guest `vmid`: none of its
/// volumes leaked or detached, and its MAC, IP and SSH key not shared with another guest.
/// Other cases may be mid-crash while this runs, so their violations are not this case's.
fn assert_case_invariants(state: &Value, vmid: u64, what: &str) {
    let v = pve_sim::invariants::check(state);
    let mine: Vec<&str> = volumes_of(state, vmid)
        .iter()
        .filter_map(|v| v["volid"].as_str())
        .collect();
    let bad_volumes: Vec<&String> = v
        .leaked_volumes
        .iter()
        .chain(&v.detached_volumes)
        .filter(|id| mine.contains(&id.as_str()))
        .collect();
    assert!(
        bad_volumes.is_empty(),
        "{what}: leaked or detached volumes: {bad_volumes:?}"
    );
    if let Some(g) = guest(state, vmid) {
        let macs: Vec<String> = g["macs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_ascii_uppercase))
            .collect();
        for m in &macs {
            assert!(!v.duplicate_macs.contains(m), "{what}: duplicate MAC {m}");
        }
        if let Some(ip) = g["ip"].as_str() {
            assert!(
                !v.duplicate_ips.iter().any(|d| d == ip),
                "{what}: duplicate IP {ip}"
            );
        }
        if let Some(k) = g["ssh"]["fingerprint"].as_str() {
            assert!(
                !v.duplicate_keys.iter().any(|d| d == k),
                "{what}: duplicate SSH key {k}"
            );
        }
    }
}

/// Once every case of a group is done: the whole state is clean and nothing is left to
/// resume.
fn assert_all_done(sim: &Sim) {
    assert_clean_invariants(&sim.state());
    let out = sim.felhom(&["resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).contains("nothing to resume"),
        "{}",
        stdout(&out)
    );
}

fn mac_of(net0: &str) -> Option<String> {
    net0.split(',')
        .find_map(|kv| kv.strip_prefix("hwaddr="))
        .map(str::to_ascii_uppercase)
}

/// `<step>:<phase>` for every step of a job and every phase given.
fn crash_points<S: Step>(steps: &[S], phases: &[&'static str]) -> Vec<String> {
    steps
        .iter()
        .flat_map(|s| phases.iter().map(move |p| format!("{}:{p}", s.name())))
        .collect()
}

/// One crash case of a bring-up: `customer`'s guest at `vmid` provisioned with felhom
/// SIGKILLed at `crash`, then resumed: the resume succeeds, the case's invariants hold, the
/// guest runs with its 12G rootfs (grown once, or made at that size), and the journal and PVE
/// agree on its MAC. Returns the simulator's state and the guest's rootfs.
fn crash_then_resume(sim: &Sim, customer: &str, vmid: u64, crash: &str) -> (Value, String) {
    provision_crashing(sim, customer, vmid, crash);
    let hostname = format!("{customer}-app");
    let job = job_id(sim, "bringup", |j| j["hostname"] == hostname.as_str());
    let (code, rep) = resume(sim, &job, crash);
    assert_eq!(code, Some(0), "{crash}: resume failed: {rep}");
    assert_eq!(rep["outcome"], "succeeded", "{crash}: {rep}");
    let state = sim.state();
    assert_case_invariants(&state, vmid, crash);
    let g = guest(&state, vmid).unwrap_or_else(|| panic!("{crash}: guest {vmid} missing"));
    assert_eq!(g["status"], "running", "{crash}");
    let rootfs = g["config"]["rootfs"].as_str().unwrap().to_string();
    assert!(
        rootfs.contains("size=12G"),
        "{crash}: double grow or no grow: {rootfs}"
    );
    assert_eq!(
        rep["mac"].as_str().map(str::to_ascii_uppercase),
        g["config"]["net0"].as_str().and_then(mac_of),
        "{crash}: journal and PVE disagree on the MAC"
    );
    (state, rootfs)
}

/// For every bring-up step: SIGKILL felhom just before and just after its act, then resume.
#[test]
fn crash_at_every_bringup_step_then_resume_succeeds() {
    let sim = Sim::start();
    let cases: Vec<(String, u64)> =
        crash_points(&felhom_core::bringup::STEPS, &["before", "after"])
            .into_iter()
            .zip(1100..)
            .collect();
    run_concurrently(&cases, PARALLEL, |(crash, vmid)| {
        let (state, _) = crash_then_resume(&sim, &format!("c{vmid}"), *vmid, crash);
        let owned = volumes_of(&state, *vmid);
        assert_eq!(
            owned.len(),
            2,
            "{crash}: expected rootfs + one data volume, got {owned:?}"
        );
    });
    assert_all_done(&sim);
}

/// A crash in the middle of a rollback, in the undo of every bring-up step that has one:
/// the rollback resumes and completes.
#[test]
fn crash_during_rollback_then_resume_rolls_back_fully() {
    let sim = Sim::with("task_fail:start=1.0", 0.02);
    let undoable: Vec<_> = felhom_core::bringup::STEPS
        .into_iter()
        .filter(|s| s.has_undo())
        .collect();
    assert!(!undoable.is_empty(), "bring-up has no step with an undo");
    let cases: Vec<(String, u64)> = crash_points(&undoable, &["undo", "undone"])
        .into_iter()
        .zip(1190..)
        .collect();
    run_concurrently(&cases, PARALLEL, |(crash, vmid)| {
        let vmid = *vmid;
        let customer = format!("rb{vmid}");
        provision_crashing(&sim, &customer, vmid, crash);
        let hostname = format!("{customer}-app");
        let job = job_id(&sim, "bringup", |j| j["hostname"] == hostname.as_str());

        let (code, rep) = resume(&sim, &job, crash);
        assert_eq!(code, Some(1), "{crash}: {rep}");
        assert_eq!(rep["outcome"], "rolled_back", "{crash}: {rep}");
        let state = sim.state();
        assert_case_invariants(&state, vmid, crash);
        assert!(
            guest(&state, vmid).is_none(),
            "{crash}: guest left after rollback"
        );
        assert_eq!(
            volumes_of(&state, vmid).len(),
            0,
            "{crash}: {}",
            state["volumes"]
        );
    });
    let state = sim.state();
    assert_eq!(
        state["volumes"].as_array().map(Vec::len),
        Some(0),
        "{}",
        state["volumes"]
    );
    assert_all_done(&sim);
}

/// For every teardown step: provision a guest, SIGKILL the teardown just before and just
/// after the step's act, resume the teardown: the guest is gone, nothing leaked, and felhom
/// no longer counts it as live.
#[test]
fn crash_at_every_teardown_step_then_resume_finishes() {
    let sim = Sim::start();
    let cases: Vec<(String, u64)> =
        crash_points(&felhom_core::teardown::STEPS, &["before", "after"])
            .into_iter()
            .zip(1300..)
            .collect();
    run_concurrently(&cases, PARALLEL, |(crash, vmid)| {
        let vmid = *vmid;
        let customer = format!("td{vmid}");
        let path = sim.write_spec(
            &format!("{customer}.toml"),
            &spec(&customer, &vmid.to_string(), MOUNT),
        );
        let out = sim.felhom(&["provision", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{crash}: {}", both(&out));

        let out = sim.felhom_env(
            &["teardown", &vmid.to_string()],
            &[("FELHOM_CRASH_AT", crash)],
        );
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{crash}: felhom was not killed at the crash point: {}",
            both(&out)
        );
        let job = job_id(&sim, "teardown", |j| j["vmid"].as_u64() == Some(vmid));

        let (code, rep) = resume(&sim, &job, crash);
        assert_eq!(code, Some(0), "{crash}: resume failed: {rep}");
        assert_eq!(rep["outcome"], "succeeded", "{crash}: {rep}");
        let state = sim.state();
        assert_case_invariants(&state, vmid, crash);
        assert!(
            guest(&state, vmid).is_none(),
            "{crash}: guest left after teardown"
        );
        assert_eq!(
            volumes_of(&state, vmid).len(),
            0,
            "{crash}: {}",
            state["volumes"]
        );
        // Forgotten and gone: a second teardown has nothing to do ("absent", exit 0).
        let out = sim.felhom(&["--output", "json", "teardown", &vmid.to_string()]);
        assert_eq!(out.status.code(), Some(0), "{crash}: {}", both(&out));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["jobs"][0]["outcome"],
            "absent",
            "{crash}: {}",
            both(&out)
        );
    });
    assert_all_done(&sim);
}

/// Strategy `linked-clone`: SIGKILL `golden publish` before and after every publish step
/// (`publish::STEPS`), then resume: the template is made once per case. Then every bring-up
/// step of a linked clone (its restore step is the clone) before and after, then resume.
#[test]
fn crash_at_every_publish_and_linked_clone_step_then_resume_succeeds() {
    let sim = Sim::start();
    sim.set_strategy("linked-clone");
    let points = crash_points(&felhom_core::publish::STEPS, &["before", "after"]);
    // One template per case: each at its own size (the template's identity includes it).
    for (i, crash) in points.iter().enumerate() {
        let size = format!("{}G", 9 + i);
        let out = sim.felhom_env(
            &["golden", "publish", GOLDEN, "--rootfs-size", &size],
            &[("FELHOM_CRASH_AT", crash.as_str())],
        );
        assert_eq!(out.status.signal(), Some(9), "{crash}: {}", both(&out));
        let job = job_id(&sim, "publish", |j| j["state"] != "succeeded");
        let (code, rep) = resume(&sim, &job, crash);
        assert_eq!(code, Some(0), "{crash}: resume failed: {rep}");
        assert_eq!(rep["outcome"], "succeeded", "{crash}: {rep}");
        let t = rep["vmid"].as_u64().unwrap();
        let state = sim.state();
        let g = guest(&state, t).unwrap_or_else(|| panic!("{crash}: template {t} missing"));
        assert_eq!(g["config"]["template"], "1", "{crash}: {g}");
        assert!(
            g["config"]["rootfs"]
                .as_str()
                .unwrap()
                .contains(&format!("size={size}")),
            "{crash}: {g}"
        );
        assert_case_invariants(&state, t, crash);
        // Published: a second publish finds it and writes nothing.
        let writes = sim.write_count();
        let again = sim.felhom(&["golden", "publish", GOLDEN, "--rootfs-size", &size]);
        assert_eq!(again.status.code(), Some(0), "{crash}: {}", both(&again));
        assert_eq!(
            sim.write_count(),
            writes,
            "{crash}: publish after resume wrote"
        );
    }
    // The largest template not above 12G is the clones' base (size 12G: no resize task).
    let cases: Vec<(String, u64)> =
        crash_points(&felhom_core::bringup::STEPS, &["before", "after"])
            .into_iter()
            .zip(1100..)
            .collect();
    run_concurrently(&cases, PARALLEL, |(crash, vmid)| {
        let (state, rootfs) = crash_then_resume(&sim, &format!("l{vmid}"), *vmid, crash);
        let volid = rootfs.split(',').next().unwrap();
        assert!(
            state["linked"][volid]
                .as_str()
                .is_some_and(|b| b.contains(":base-")),
            "{crash}: {volid} is not a linked clone: {}",
            state["linked"]
        );
    });
    assert_all_done(&sim);
}
