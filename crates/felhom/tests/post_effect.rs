//! The answer lost after the work is done (`post_effect_595`): the simulator performs every
//! request of one kind in full (the restore's placeholder and task, the config write and its
//! volume, the resize, the start, the stop, the destroy) and answers it 595 with an empty
//! body, as pveproxy does when its 30 s hop to pvedaemon times out while the change still
//! completes. felhom must observe before every retry and converge: one guest per identity,
//! exactly its volumes, sized once (the spike's sequence, `restore-resize`: one resize task;
//! restore-time sizing, the default: none), and a teardown that leaves nothing.

mod common;
use common::*;
use serde_json::Value;

/// The spec's rootfs size (`adversarial::base_spec`).
const ROOTFS: &str = "size=12G";

fn guests_named<'a>(state: &'a Value, hostname: &str) -> Vec<&'a Value> {
    state["guests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["config"]["hostname"] == hostname)
        .collect()
}

/// Tasks of `task_type` on `vmid`, however they ended: a dispatch repeated behind a lost
/// answer shows as two.
fn tasks(state: &Value, vmid: u64, task_type: &str) -> usize {
    state["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == task_type && t["id"] == vmid.to_string().as_str())
        .count()
}

/// Resize tasks of `vmid`: a grow done twice shows as two.
fn grows(state: &Value, vmid: u64) -> usize {
    tasks(state, vmid, "resize")
}

fn owned_volumes(state: &Value, vmid: u64) -> usize {
    state["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["owner"].as_u64() == Some(vmid))
        .count()
}

fn lost_answers(state: &Value) -> u64 {
    state["counters"]["post_effect_595"].as_u64().unwrap_or(0)
}

/// Resize tasks a bring-up makes under `strategy`: the spike's sequence grows the rootfs
/// once; restore-time sizing allocates it at its size.
fn expected_grows(strategy: &str) -> usize {
    usize::from(strategy == "restore-resize")
}

/// `apply` of one guest (rootfs sized, one mount) under `strategy` with every `kind` request
/// answered 595: converged once, and a second `apply` finds it unchanged and writes nothing.
fn bring_up(sim: &Sim, name: &str, vmid: u64, strategy: &str) {
    let path = sim.write_spec(
        &format!("{name}.toml"),
        &spec(name, &vmid.to_string(), MOUNT),
    );
    let out = sim.felhom(&["--output", "json", "apply", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(
        json(&out)["jobs"][0]["outcome"],
        "succeeded",
        "{}",
        both(&out)
    );
    let state = sim.state();
    assert!(
        lost_answers(&state) > 0,
        "no answer was lost: {}",
        state["counters"]
    );
    let mine = guests_named(&state, &format!("{name}-app"));
    assert_eq!(mine.len(), 1, "one guest for {name}: {}", state["guests"]);
    let g = mine[0];
    assert_eq!(g["vmid"].as_u64(), Some(vmid));
    assert_eq!(g["status"], "running", "{g}");
    let rootfs = g["config"]["rootfs"].as_str().unwrap_or_default();
    assert!(rootfs.split(',').any(|kv| kv == ROOTFS), "rootfs {rootfs}");
    assert_eq!(
        grows(&state, vmid),
        expected_grows(strategy),
        "sized once: {}",
        state["tasks"]
    );
    assert_eq!(
        tasks(&state, vmid, "vzstart"),
        1,
        "started once: {}",
        state["tasks"]
    );
    assert_eq!(
        tasks(&state, vmid, "vzrestore"),
        1,
        "restored once: {}",
        state["tasks"]
    );
    assert_eq!(
        owned_volumes(&state, vmid),
        2,
        "rootfs + one mount: {}",
        state["volumes"]
    );
    assert!(g["config"]["mp1"].is_null(), "one mount point: {g}");
    assert_clean_invariants(&state);

    let writes = sim.write_count();
    let out = sim.felhom(&["--output", "json", "apply", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(
        json(&out)["jobs"][0]["outcome"],
        "unchanged",
        "{}",
        both(&out)
    );
    assert_eq!(sim.write_count(), writes, "the second apply wrote");
}

/// Modelled time slow enough that a task whose answer was lost still runs when felhom's
/// first retry observes (a start, a stop, a resize take longer than the first backoff).
const SLOW: f64 = 0.3;

fn converges_when_lost(kind: &str, vmid: u64, strategy: &str) {
    let sim = Sim::with(&format!("post_effect_595:{kind}=1,seed=3"), SLOW);
    sim.set_strategy(strategy);
    bring_up(&sim, &format!("lost{kind}"), vmid, strategy);
}

#[test]
fn restore_answered_595_makes_one_guest() {
    converges_when_lost("restore", 1700, "restore");
}

#[test]
fn restore_answered_595_makes_one_guest_in_the_spike_sequence() {
    converges_when_lost("restore", 1706, "restore-resize");
}

#[test]
fn config_writes_answered_595_attach_one_volume() {
    converges_when_lost("config", 1701, "restore-resize");
}

#[test]
fn config_writes_answered_595_with_restore_time_sizing() {
    converges_when_lost("config", 1707, "restore");
}

#[test]
fn resize_answered_595_grows_once() {
    converges_when_lost("resize", 1702, "restore-resize");
}

#[test]
fn start_answered_595_starts_once() {
    converges_when_lost("start", 1703, "restore");
}

/// Teardown with every `kind` request answered 595: the guest and all its volumes are gone
/// and the job succeeded.
fn teardown_when_lost(kind: &str, vmid: u64) {
    let sim = Sim::with(&format!("post_effect_595:{kind}=1,seed=5"), SLOW);
    let name = format!("down{kind}");
    let path = sim.write_spec(
        &format!("{name}.toml"),
        &spec(&name, &vmid.to_string(), MOUNT),
    );
    let out = sim.felhom(&["apply", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let out = sim.felhom(&["--output", "json", "teardown", &vmid.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let state = sim.state();
    assert_eq!(
        tasks(&state, vmid, "vzstop"),
        1,
        "stopped once: {}",
        state["tasks"]
    );
    assert_destroyed_once_behind_a_lost_answer(&state, vmid);
}

/// An answer was lost, and the guest is gone: destroyed by one task, none of its volumes
/// left, the simulator's invariants clean.
fn assert_destroyed_once_behind_a_lost_answer(state: &Value, vmid: u64) {
    assert!(
        lost_answers(state) > 0,
        "no answer was lost: {}",
        state["counters"]
    );
    assert!(guest(state, vmid).is_none(), "{}", state["guests"]);
    assert_eq!(
        tasks(state, vmid, "vzdestroy"),
        1,
        "destroyed once: {}",
        state["tasks"]
    );
    assert_eq!(owned_volumes(state, vmid), 0, "{}", state["volumes"]);
    assert_clean_invariants(state);
}

#[test]
fn teardown_with_stop_answered_595() {
    teardown_when_lost("stop", 1704);
}

#[test]
fn teardown_with_destroy_answered_595() {
    teardown_when_lost("destroy", 1705);
}

/// A rollback whose undo's destroy (or stop) is answered 595: the undo waits for the task
/// the lost answer started (never a second one behind it) and does not mistake the end of
/// a destroy — the config is `lock: destroyed` alone there, without the marker — for a
/// guest that is not its own: rolled back, one destroy, nothing left.
fn rollback_when_lost(kind: &str, vmid: u64) {
    let sim = Sim::with(
        &format!("post_effect_595:{kind}=1,task_fail:start=1.0,seed=5"),
        SLOW,
    );
    let name = format!("back{kind}");
    let path = sim.write_spec(
        &format!("{name}.toml"),
        &spec(&name, &vmid.to_string(), MOUNT),
    );
    let out = sim.felhom(&["--output", "json", "apply", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["jobs"][0]["outcome"], "rolled_back", "{rep}");
    let state = sim.state();
    assert_destroyed_once_behind_a_lost_answer(&state, vmid);
}

#[test]
fn rollback_with_destroy_answered_595() {
    rollback_when_lost("destroy", 1706);
}

/// Every kind at once, one request in three, for several guests in one batch.
#[test]
fn many_guests_with_a_third_of_the_answers_lost() {
    many_guests_lost("restore");
}

/// The same in the spike's sequence, where each guest's rootfs is grown once by a resize.
#[test]
fn many_guests_with_a_third_of_the_answers_lost_in_the_spike_sequence() {
    many_guests_lost("restore-resize");
}

fn many_guests_lost(strategy: &str) {
    let sim = Sim::with("post_effect_595=0.33,seed=11", 0.02);
    sim.set_strategy(strategy);
    let mut text = String::new();
    for i in 0..6 {
        let one = spec(&format!("third{i}"), "\"auto\"", MOUNT);
        text.push_str("[[guest]]\n");
        text.push_str(&one.replace("[[mount]]", "[[guest.mount]]"));
        text.push('\n');
    }
    let path = sim.write_spec("third.toml", &text);
    let out = sim.felhom(&["--output", "json", "apply", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let state = sim.state();
    assert!(lost_answers(&state) > 0, "{}", state["counters"]);
    for i in 0..6 {
        let mine = guests_named(&state, &format!("third{i}-app"));
        assert_eq!(mine.len(), 1, "third{i}: {}", state["guests"]);
        let vmid = mine[0]["vmid"].as_u64().unwrap();
        assert_eq!(
            grows(&state, vmid),
            expected_grows(strategy),
            "{vmid}: {}",
            state["tasks"]
        );
        assert_eq!(
            owned_volumes(&state, vmid),
            2,
            "{vmid}: {}",
            state["volumes"]
        );
    }
    assert_clean_invariants(&state);
}
