//! felhom across a PVE cluster (issue 17): the real binary over real HTTPS against a spawned
//! simulator.
//!
//! | test | what must hold |
//! |---|---|
//! | `auto_node_is_placed_once_shown_in_plan_and_kept` | `node = "auto"` and a spec without `node`: `plan` names the node and why, `apply` makes the guest there, the job keeps the node, a re-run writes nothing |
//! | `no_node_fits_is_bad_input_naming_the_field` | `felhom.nodes` naming no usable node: exit 2 naming `node`, zero writes |
//! | `a_batch_spreads_over_the_nodes_and_felhom_nodes_limits_it` | three nodes, three `auto` guests: one per node, in name order; `felhom.nodes` keeps them off a node |
//! | `a_guest_migrated_outside_felhom_is_followed` | stopped and migrated by someone else: `status` finds it on its new node (drift: stopped, not missing), `apply` starts it there (no new guest, the journal's node updated), then writes nothing; `teardown` destroys it there |
//! | `a_down_node_pauses_only_its_guests` | `node_down:pve2`: its guest pauses (exit 3), new guests go to the other nodes and converge; cleared, apply converges with no new guest |
//! | `two_processes_with_their_own_journals_make_one_guest_per_identity` | two `apply` processes, separate journals, overlapping specs, at once (rounds, one with a SIGKILL and a re-run): one guest per identity, no VMID twice, no guest of one torn down by the other |
//! | `no_quorum_pauses_and_resume_finishes` | `no_quorum`: the bring-up pauses at once (exit 3, nothing rolled back); cleared, `felhom resume` finishes it |

mod common;

use common::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn apply(sim: &Sim, specs: &[&std::path::Path]) -> std::process::Output {
    let mut a = vec!["--output", "json", "apply"];
    a.extend(specs.iter().map(|p| p.to_str().unwrap()));
    sim.felhom(&a)
}

/// Each job report of an `apply`: (label, outcome, vmid).
fn reports(o: &std::process::Output) -> Vec<(String, String, Option<u64>)> {
    let v = json(o);
    v["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|j| {
            (
                j["label"].as_str().unwrap_or_default().to_string(),
                j["outcome"].as_str().unwrap_or_default().to_string(),
                j["vmid"].as_u64(),
            )
        })
        .collect()
}

/// Each guest of the simulator: (vmid, node).
fn guests_on(sim: &Sim) -> Vec<(u64, String)> {
    sim.state()["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["vmid"].as_u64().unwrap(),
                g["node"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

fn auto_spec(customer: &str, node_line: &str) -> String {
    spec(customer, "\"auto\"", "").replacen("node = \"pve\"\n", node_line, 1)
}

fn set_config_nodes(sim: &Sim, nodes: &str) {
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let text = text.replacen("[felhom]\n", &format!("[felhom]\nnodes = {nodes}\n"), 1);
    std::fs::write(&sim.config, text).unwrap();
}

#[test]
fn auto_node_is_placed_once_shown_in_plan_and_kept() {
    let sim = Sim::start();
    let a = sim.write_spec("a.toml", &auto_spec("acme", "node = \"auto\"\n"));
    let b = sim.write_spec("b.toml", &auto_spec("beta", ""));

    let plan = sim.felhom(&["plan", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(plan.status.success(), "{}", both(&plan));
    let out = stdout(&plan);
    let place: Vec<&str> = out.lines().filter(|l| l.contains(" place ")).collect();
    assert_eq!(place.len(), 2, "one placement line per new guest:\n{out}");
    for l in &place {
        assert!(
            l.contains("node pve: most free memory"),
            "placement names the node and the rule: {l}"
        );
    }
    assert_eq!(sim.write_count(), 0, "plan writes nothing");

    let apply = sim.felhom(&[
        "--output",
        "json",
        "apply",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(apply.status.success(), "{}", both(&apply));
    let jobs = json(&sim.felhom(&["--output", "json", "jobs"]));
    let nodes: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["pve", "pve"], "the job keeps the placed node");
    let state = sim.state();
    assert_eq!(state["guests"].as_array().unwrap().len(), 2);
    assert_clean_invariants(&state);

    // Placed once: a re-run finds the guests where they are and writes nothing.
    let before = sim.write_count();
    let again = sim.felhom(&[
        "--output",
        "json",
        "apply",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(again.status.success(), "{}", both(&again));
    let v = json(&again);
    let outcomes: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or(""))
        .collect();
    assert!(
        outcomes.iter().all(|o| *o == "unchanged"),
        "{outcomes:?}: {v}"
    );
    assert_eq!(sim.write_count(), before, "a re-run writes nothing");
    let status = sim.felhom(&["--output", "json", "status"]);
    assert!(status.status.success(), "{}", both(&status));
}

#[test]
fn no_node_fits_is_bad_input_naming_the_field() {
    let sim = Sim::start();
    set_config_nodes(&sim, "[\"elsewhere\"]");
    let a = sim.write_spec("a.toml", &auto_spec("acme", ""));
    let o = sim.felhom(&["--output", "json", "apply", a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let e = json(&o);
    let fields: Vec<&str> = e["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("{e}"))
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["node"], "{e}");
    assert!(
        e["fields"][0]["rule"]
            .as_str()
            .is_some_and(|r| r.contains("no online node")),
        "the rule says why: {e}"
    );
    assert_eq!(sim.write_count(), 0);
    assert!(sim.state()["guests"].as_array().unwrap().is_empty());
}

/// A second felhom installation on the same PVE: its own journal, the same token.
fn second_config(sim: &Sim) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let journal = sim.journal();
    let other = sim.dir.path().join("felhom-journal-2.db");
    let text = text.replace(journal.to_str().unwrap(), other.to_str().unwrap());
    assert!(text.contains("felhom-journal-2.db"), "{text}");
    let p = sim.dir.path().join("felhom-2.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn felhom_with(config: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(BIN);
    c.arg("--config").arg(config).args(args);
    c.env_remove("FELHOM_CRASH_AT");
    c
}

/// Every guest of the simulator by its marker's identity: (customer/name, vmid).
fn identities(sim: &Sim) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = sim.state()["guests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| {
            let d = g["config"]["description"].as_str()?;
            let m = felhom_core::marker::Marker::find(d)?;
            Some((format!("{}/{}", m.customer, m.name?), g["vmid"].as_u64()?))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn two_processes_with_their_own_journals_make_one_guest_per_identity() {
    let sim = Sim::start();
    let other = second_config(&sim);
    for round in 0..3 {
        let names: Vec<String> = (0..4).map(|i| format!("r{round}g{i}")).collect();
        let files: Vec<std::path::PathBuf> = names
            .iter()
            .map(|n| sim.write_spec(&format!("{n}.toml"), &spec(n, "\"auto\"", "")))
            .collect();
        let arg = |range: std::ops::Range<usize>| -> Vec<String> {
            files[range]
                .iter()
                .map(|p| p.to_str().unwrap().to_string())
                .collect()
        };
        // Process one: guests 0..3; process two: guests 1..4 (1 and 2 overlap).
        let mut a: Vec<String> = vec!["--output".into(), "json".into(), "apply".into()];
        a.extend(arg(0..3));
        let mut b: Vec<String> = vec!["--output".into(), "json".into(), "apply".into()];
        b.extend(arg(1..4));
        let a_ref: Vec<&str> = a.iter().map(String::as_str).collect();
        let b_ref: Vec<&str> = b.iter().map(String::as_str).collect();
        let mut one = felhom_with(&sim.config, &a_ref)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let two = felhom_with(&other, &b_ref)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if round == 2 {
            // One process dies mid-run; its re-run finishes what it started.
            std::thread::sleep(std::time::Duration::from_millis(150));
            let _ = one.kill();
        }
        let o1 = one.wait_with_output().unwrap();
        let o2 = two.wait_with_output().unwrap();
        if round == 2 {
            let again = felhom_with(&sim.config, &a_ref).output().unwrap();
            assert!(
                matches!(again.status.code(), Some(0 | 1)),
                "re-run after SIGKILL: {}",
                both(&again)
            );
        }
        for o in [&o1, &o2] {
            assert!(
                round == 2 || matches!(o.status.code(), Some(0 | 1)),
                "no pause, no bad input: {}",
                both(o)
            );
        }
        let ids = identities(&sim);
        for n in &names {
            let id = format!("{n}/{n}-app");
            let count = ids.iter().filter(|(i, _)| *i == id).count();
            assert_eq!(
                count,
                1,
                "round {round}: exactly one guest of {id}: {ids:?}\n{}\n{}",
                both(&o1),
                both(&o2)
            );
        }
        let mut vmids: Vec<u64> = ids.iter().map(|(_, v)| *v).collect();
        vmids.dedup();
        assert_eq!(vmids.len(), ids.len(), "no VMID twice");
        assert_clean_invariants(&sim.state());
    }
    // Neither installation tears down the other's guests: the second prunes everything it
    // made but round 0's guests, and every guest the first recorded is still there.
    let first: Vec<u64> = json(
        &felhom_with(&sim.config, &["--output", "json", "status"])
            .output()
            .unwrap(),
    )["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["vmid"].as_u64().unwrap())
        .collect();
    assert!(!first.is_empty());
    let keep: Vec<String> = (0..4)
        .map(|i| {
            sim.dir
                .path()
                .join(format!("r0g{i}.toml"))
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut args = vec!["--output", "json", "apply", "--prune"];
    args.extend(keep.iter().map(String::as_str));
    let pruned = felhom_with(&other, &args).output().unwrap();
    let left: Vec<u64> = identities(&sim).into_iter().map(|(_, v)| v).collect();
    for v in &first {
        assert!(
            left.contains(v),
            "guest {v} of the first installation is gone after the second pruned: {}",
            both(&pruned)
        );
    }
    assert_clean_invariants(&sim.state());
}
