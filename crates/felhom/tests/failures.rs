//! Failures roll back fully; parallel bring-up survives lock contention; two processes never
//! work on one VMID.

mod common;
use common::*;
use serde_json::Value;

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", both(o)))
}

#[test]
fn failed_restore_task_leaves_nothing_behind() {
    let sim = Sim::with("task_fail:restore=1.0", 0.02);
    let path = sim.write_spec("r.toml", &spec("r", "1200", MOUNT));
    let out = sim.felhom(&["--output", "json", "provision", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let rep = json(&out);
    assert_eq!(rep["jobs"][0]["outcome"], "rolled_back");
    assert!(
        rep["jobs"][0]["error"]
            .as_str()
            .unwrap()
            .contains("restore"),
        "{rep}"
    );
    let state = sim.state();
    assert_eq!(
        state["guests"].as_array().map(Vec::len),
        Some(0),
        "{}",
        state["guests"]
    );
    assert_eq!(
        state["volumes"].as_array().map(Vec::len),
        Some(0),
        "{}",
        state["volumes"]
    );
    // The lease is released: the same VMID can be used again once the fault is gone.
    let jobs = sim.felhom(&["--output", "json", "jobs"]);
    assert_eq!(json(&jobs)["jobs"][0]["state"], "rolled_back");
}

#[test]
fn failure_at_start_rolls_back_fully() {
    let sim = Sim::with("task_fail:start=1.0", 0.02);
    let path = sim.write_spec("s.toml", &spec("s", "1210", MOUNT));
    let out = sim.felhom(&["--output", "json", "provision", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert_eq!(json(&out)["jobs"][0]["outcome"], "rolled_back");
    let state = sim.state();
    assert_eq!(state["guests"].as_array().map(Vec::len), Some(0));
    assert_eq!(state["volumes"].as_array().map(Vec::len), Some(0));
}

#[test]
fn twenty_guests_in_parallel_under_lock_faults() {
    let sim = Sim::with("lock500=0.2,seed=42", 0.02);
    let mut text = String::new();
    for i in 0..20 {
        text.push_str(&format!(
            "[[guest]]\n{}\n",
            spec(&format!("p{i}"), "\"auto\"", "")
        ));
    }
    let path = sim.write_spec("twenty.toml", &text);
    let out = sim.felhom(&["--output", "json", "provision", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let rep = json(&out);
    let jobs = rep["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 20);
    assert!(jobs.iter().all(|j| j["outcome"] == "succeeded"), "{rep}");
    let state = sim.state();
    assert_eq!(state["guests"].as_array().map(Vec::len), Some(20));
    assert_clean_invariants(&state);
    assert!(
        state["counters"]["lock500"].as_u64().unwrap_or(0) > 0,
        "the fault was never injected: {}",
        state["counters"]
    );
}

/// Two felhom processes applying one spec file at once (one journal): the second waits for
/// the first's identity lease, then finds the guest as specified. One guest.
#[test]
fn same_spec_from_two_processes_makes_one_guest() {
    let sim = Sim::with("", 0.2);
    for vmid in ["1220", "\"auto\""] {
        let name = format!("same{}", if vmid == "1220" { "f" } else { "a" });
        let path = sim.write_spec(&format!("{name}.toml"), &spec(&name, vmid, ""));
        let a = sim
            .cmd(&["--output", "json", "apply", path.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let b = sim.felhom(&["--output", "json", "apply", path.to_str().unwrap()]);
        let a = a.wait_with_output().unwrap();
        assert_eq!(a.status.code(), Some(0), "first: {}", both(&a));
        assert_eq!(b.status.code(), Some(0), "second: {}", both(&b));
        let outcomes: Vec<String> = [&a, &b]
            .iter()
            .map(|o| {
                json(o)["jobs"][0]["outcome"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(
            outcomes,
            ["succeeded", "unchanged"],
            "{}\n{}",
            both(&a),
            both(&b)
        );
        let state = sim.state();
        let mine: Vec<_> = state["guests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["config"]["hostname"] == format!("{name}-app").as_str())
            .collect();
        assert_eq!(mine.len(), 1, "one guest for {name}: {state}");
        assert_clean_invariants(&state);
    }
}

#[test]
fn simulator_restart_mid_run_is_survived() {
    let mut sim = Sim::with("", 0.3);
    let path = sim.write_spec("restart.toml", &spec("restart", "1230", MOUNT));
    let child = sim
        .cmd(&["provision", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    sim.restart();
    let out = child.wait_with_output().unwrap();
    // The run either rode through the restart or failed on the lost connection; resume
    // finishes the job either way.
    if out.status.code() != Some(0) {
        let r = sim.felhom(&["resume"]);
        assert_eq!(
            r.status.code(),
            Some(0),
            "first: {}\nresume: {}",
            both(&out),
            both(&r)
        );
    }
    let state = sim.state();
    assert_eq!(
        guest(&state, 1230).map(|g| g["status"].clone()),
        Some(Value::from("running"))
    );
    assert_clean_invariants(&state);
}
