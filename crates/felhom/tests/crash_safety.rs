//! Crash safety: for every bring-up step, SIGKILL felhom just before and just after its act
//! (`FELHOM_CRASH_AT=<step>:<before|after>`), then `felhom resume`. The guest must end
//! correct — no leaked volume, no duplicate MAC, no double grow.

mod common;
use std::os::unix::process::ExitStatusExt;

use common::*;

fn crash_then_resume(step: &str, vmid: u64) {
    let sim = Sim::start();
    for phase in ["before", "after"] {
        let vmid = vmid + if phase == "after" { 1 } else { 0 };
        let customer = format!("c{vmid}");
        let path = sim.write_spec(
            &format!("{customer}.toml"),
            &spec(&customer, &vmid.to_string(), MOUNT),
        );
        let crash = format!("{step}:{phase}");
        let out = sim.felhom_env(
            &["provision", path.to_str().unwrap()],
            &[("FELHOM_CRASH_AT", &crash)],
        );
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{crash}: felhom was not killed at the crash point: {}",
            both(&out)
        );

        let out = sim.felhom(&["--output", "json", "resume"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{crash}: resume failed: {}",
            both(&out)
        );
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rep["jobs"][0]["outcome"], "succeeded", "{crash}: {rep}");

        let state = sim.state();
        assert_clean_invariants(&state);
        let g = guest(&state, vmid).unwrap_or_else(|| panic!("{crash}: guest {vmid} missing"));
        assert_eq!(g["status"], "running", "{crash}");
        let rootfs = g["config"]["rootfs"].as_str().unwrap();
        assert!(
            rootfs.contains("size=12G"),
            "{crash}: double grow or no grow: {rootfs}"
        );
        let owned: Vec<_> = state["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["owner"].as_u64() == Some(vmid))
            .collect();
        assert_eq!(
            owned.len(),
            2,
            "{crash}: expected rootfs + one data volume, got {owned:?}"
        );
        assert_eq!(
            rep["jobs"][0]["mac"].as_str().map(str::to_ascii_uppercase),
            g["config"]["net0"].as_str().and_then(mac_of),
            "{crash}: journal and PVE disagree on the MAC"
        );
    }
    // Nothing left to resume.
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

macro_rules! crash_tests {
    ($($name:ident: $step:literal, $vmid:literal;)*) => {
        $( #[test] fn $name() { crash_then_resume($step, $vmid); } )*
    };
}

crash_tests! {
    crash_at_reserve: "reserve", 1100;
    crash_at_restore: "restore", 1110;
    crash_at_identity: "identity", 1120;
    crash_at_rootfs: "rootfs", 1130;
    crash_at_mounts: "mounts", 1140;
    crash_at_start: "start", 1150;
    crash_at_linkup: "linkup", 1160;
    crash_at_ssh: "ssh", 1170;
    crash_at_finish: "finish", 1180;
}

/// A crash in the middle of a rollback: the rollback resumes and completes.
#[test]
fn crash_during_rollback_then_resume_rolls_back_fully() {
    let sim = Sim::with("task_fail:start=1.0", 0.02);
    let path = sim.write_spec("rb.toml", &spec("rb", "1190", MOUNT));
    let out = sim.felhom_env(
        &["provision", path.to_str().unwrap()],
        &[("FELHOM_CRASH_AT", "restore:undo")],
    );
    assert_eq!(out.status.signal(), Some(9), "{}", both(&out));
    let out = sim.felhom(&["--output", "json", "resume"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["jobs"][0]["outcome"], "rolled_back", "{rep}");
    let state = sim.state();
    assert!(guest(&state, 1190).is_none(), "guest left after rollback");
    assert_eq!(
        state["volumes"].as_array().map(Vec::len),
        Some(0),
        "{}",
        state["volumes"]
    );
}
