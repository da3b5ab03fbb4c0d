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
//! | `a_job_whose_node_goes_down_pauses_and_resumes_when_it_is_back` | `node_down` during a bring-up on that node: paused (exit 3), nothing rolled back; back up, `resume` finishes it |
//! | `a_vmid_taken_by_the_other_process_after_a_crash_before_the_restore_moves_on` | felhom killed after journaling its restore intent, before the POST; the other installation makes its guest at that VMID; `resume` moves on to the next VMID (succeeded), the other's guest untouched — found by `bench reliability`'s two-process part (it was a refused restore and a rollback_incomplete) |
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
#[test]
fn a_batch_spreads_over_the_nodes_and_felhom_nodes_limits_it() {
    let sim = Sim::cluster(3, "", 0.02);
    let specs: Vec<_> = ["aa", "bb", "cc"]
        .iter()
        .map(|c| sim.write_spec(&format!("{c}.toml"), &auto_spec(c, "")))
        .collect();
    let refs: Vec<&std::path::Path> = specs.iter().map(|p| p.as_path()).collect();
    let o = apply(&sim, &refs);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let mut nodes: Vec<String> = guests_on(&sim).into_iter().map(|(_, n)| n).collect();
    nodes.sort();
    assert_eq!(nodes, ["pve1", "pve2", "pve3"], "one guest per node");
    assert_clean_invariants(&sim.state());

    // Only pve3 allowed: two more guests both go there.
    set_config_nodes(&sim, "[\"pve3\"]");
    let more: Vec<_> = ["dd", "ee"]
        .iter()
        .map(|c| sim.write_spec(&format!("{c}.toml"), &auto_spec(c, "")))
        .collect();
    let refs: Vec<&std::path::Path> = more.iter().map(|p| p.as_path()).collect();
    let plan = sim.felhom(&["plan", refs[0].to_str().unwrap(), refs[1].to_str().unwrap()]);
    assert!(
        stdout(&plan).contains("node pve3: most free memory"),
        "{}",
        both(&plan)
    );
    let o = apply(&sim, &refs);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let on3 = guests_on(&sim).iter().filter(|(_, n)| n == "pve3").count();
    assert_eq!(on3, 3, "{:?}", guests_on(&sim));
}

#[test]
fn a_guest_migrated_outside_felhom_is_followed() {
    let sim = Sim::cluster(3, "", 0.02);
    let a = sim.write_spec(
        "a.toml",
        &spec("acme", "\"auto\"", MOUNT).replacen("node = \"pve\"", "node = \"pve1\"", 1),
    );
    let o = apply(&sim, &[&a]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let vmid = reports(&o)[0].2.unwrap() as u32;
    assert_eq!(guests_on(&sim), [(u64::from(vmid), "pve1".to_string())]);

    // Someone stops it and migrates it to pve3.
    let admin = sim.admin(&["VM.PowerMgmt", "VM.Audit", "VM.Migrate", "Sys.Audit"]);
    rt().block_on(async {
        let v = pve_api::Vmid::try_from(vmid).unwrap();
        let upid = admin.lxc_stop("pve1", v).await.unwrap();
        admin
            .wait_task(&upid, &pve_api::WaitOptions::default())
            .await
            .unwrap();
    });
    sim.migrate(vmid, "pve3").expect("migrate");
    assert_eq!(guests_on(&sim), [(u64::from(vmid), "pve3".to_string())]);

    // status follows it: stopped on pve3 is drift, not a missing guest.
    let st = sim.felhom(&["--output", "json", "status"]);
    assert_eq!(st.status.code(), Some(1), "{}", both(&st));
    let st = json(&st);
    let g = st["guests"]
        .as_array()
        .or_else(|| st.as_array())
        .unwrap_or_else(|| panic!("{st}"))[0]
        .clone();
    assert_eq!(g["node"], "pve3", "{g}");
    assert_eq!(g["status"], "stopped", "{g}");

    // apply repairs it where it lives: started on pve3, no second guest, no write to pve1.
    let before = sim.write_count();
    let o = apply(&sim, &[&a]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(reports(&o)[0].2, Some(u64::from(vmid)));
    assert_eq!(guests_on(&sim), [(u64::from(vmid), "pve3".to_string())]);
    let writes: Vec<String> = sim.get("requests").as_array().unwrap()[..]
        .iter()
        .filter(|r| matches!(r["method"].as_str(), Some("POST" | "PUT" | "DELETE")))
        .map(|r| r["path"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()[before..]
        .to_vec();
    assert!(!writes.is_empty(), "the start");
    assert!(
        writes.iter().all(|p| p.contains("/nodes/pve3/")),
        "every write went to the guest's new node: {writes:?}"
    );
    let jobs = json(&sim.felhom(&["--output", "json", "jobs"]));
    assert!(
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["kind"] == "repair" && j["node"] == "pve3"),
        "the repair job acted on pve3: {jobs}"
    );
    let guest = &sim.state()["guests"][0];
    assert_eq!(guest["status"], "running", "{guest}");

    // Then nothing to do.
    let before = sim.write_count();
    let o = apply(&sim, &[&a]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(reports(&o)[0].1, "unchanged");
    assert_eq!(sim.write_count(), before);

    // teardown finds it on pve3 and destroys it there.
    let o = sim.felhom(&["teardown", &vmid.to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(guests_on(&sim).is_empty(), "{:?}", guests_on(&sim));
    assert_clean_invariants(&sim.state());
}

#[test]
fn a_down_node_pauses_only_its_guests() {
    let sim = Sim::cluster(3, "", 0.02);
    let on2 = sim.write_spec(
        "on2.toml",
        &spec("two", "\"auto\"", "").replacen("node = \"pve\"", "node = \"pve2\"", 1),
    );
    let o = apply(&sim, &[&on2]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));

    sim.fault_set("node_down:pve2");
    let news: Vec<_> = ["n1", "n2"]
        .iter()
        .map(|c| sim.write_spec(&format!("{c}.toml"), &auto_spec(c, "")))
        .collect();
    let o = apply(&sim, &[&on2, &news[0], &news[1]]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "the down node's guest pauses: {}",
        both(&o)
    );
    let r = reports(&o);
    assert_eq!(r[0].1, "paused", "{r:?}");
    assert_eq!(r[1].1, "succeeded", "{r:?}");
    assert_eq!(r[2].1, "succeeded", "{r:?}");
    let nodes: Vec<String> = guests_on(&sim).into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        nodes.iter().filter(|n| *n == "pve2").count(),
        1,
        "nothing new on the down node: {nodes:?}"
    );

    sim.fault_clear("node_down:pve2");
    let o = apply(&sim, &[&on2, &news[0], &news[1]]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        reports(&o).iter().all(|r| r.1 == "unchanged"),
        "{:?}",
        reports(&o)
    );
    assert_eq!(guests_on(&sim).len(), 3);
    assert_clean_invariants(&sim.state());
}

#[test]
fn no_quorum_pauses_and_resume_finishes() {
    let sim = Sim::cluster(2, "", 0.02);
    sim.fault_set("no_quorum");
    let a = sim.write_spec("a.toml", &auto_spec("acme", ""));
    let o = apply(&sim, &[&a]);
    assert_eq!(o.status.code(), Some(3), "{}", both(&o));
    let r = reports(&o);
    assert_eq!(r[0].1, "paused", "{r:?}");
    let v = json(&o);
    assert!(
        v["jobs"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no quorum")),
        "{v}"
    );
    assert!(
        guests_on(&sim).is_empty(),
        "nothing made, nothing to roll back"
    );

    sim.fault_clear("no_quorum");
    let o = sim.felhom(&["--output", "json", "resume"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(reports(&o)[0].1, "succeeded", "{:?}", reports(&o));
    assert_eq!(guests_on(&sim).len(), 1);
    let o = apply(&sim, &[&a]);
    assert_eq!(reports(&o)[0].1, "unchanged");
    assert_clean_invariants(&sim.state());
}

#[test]
fn a_job_whose_node_goes_down_pauses_and_resumes_when_it_is_back() {
    let sim = Sim::cluster(2, "", 0.3);
    // A short connect budget: the test need not wait a minute for the pause.
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let text = text.replace("connect_budget_secs = 60", "connect_budget_secs = 2");
    assert!(text.contains("connect_budget_secs = 2"), "{text}");
    std::fs::write(&sim.config, text).unwrap();
    let a = sim.write_spec(
        "a.toml",
        &spec("late", "\"auto\"", "").replacen("node = \"pve\"", "node = \"pve2\"", 1),
    );
    let child = sim
        .cmd(&["--output", "json", "apply", a.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the restore to run on pve2, then take the node down.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let st = sim.state();
        if st["guests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["node"] == "pve2")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no restore began: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sim.fault_set("node_down:pve2");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", both(&o));
    assert_eq!(reports(&o)[0].1, "paused", "{}", both(&o));

    sim.fault_clear("node_down:pve2");
    let r = sim.felhom(&["--output", "json", "resume"]);
    assert_eq!(r.status.code(), Some(0), "{}", both(&r));
    assert_eq!(reports(&r)[0].1, "succeeded", "{}", both(&r));
    assert_eq!(guests_on(&sim).len(), 1, "{:?}", guests_on(&sim));
    let o = apply(&sim, &[&a]);
    assert_eq!(reports(&o)[0].1, "unchanged", "{}", both(&o));
    assert_clean_invariants(&sim.state());
}

#[test]
fn a_vmid_taken_by_the_other_process_after_a_crash_before_the_restore_moves_on() {
    let sim = Sim::start();
    let other = second_config(&sim);
    let a = sim.write_spec("a.toml", &spec("acme", "\"auto\"", ""));
    let o = sim.felhom_env(
        &["apply", a.to_str().unwrap()],
        &[("FELHOM_CRASH_AT", "restore:before")],
    );
    assert_ne!(
        o.status.code(),
        Some(0),
        "killed at restore:before: {}",
        both(&o)
    );
    let jobs = json(&sim.felhom(&["--output", "json", "jobs"]));
    let vmid = jobs["jobs"][0]["vmid"]
        .as_u64()
        .unwrap_or_else(|| panic!("the job reserved a VMID: {jobs}"));
    assert!(guests_on(&sim).is_empty(), "nothing restored yet");

    // The other installation makes its own guest at exactly that VMID.
    let b = sim.write_spec("b.toml", &spec("beta", &vmid.to_string(), ""));
    let o = felhom_with(&other, &["--output", "json", "apply", b.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(identities(&sim), [("beta/beta-app".to_string(), vmid)]);

    // The first resumes: its restore never reached PVE, the VMID is the other's now, so
    // its "auto" guest moves on; nothing of the other's is touched.
    let r = sim.felhom(&["--output", "json", "resume"]);
    assert_eq!(r.status.code(), Some(0), "{}", both(&r));
    let rep = reports(&r);
    assert_eq!(rep[0].1, "succeeded", "{rep:?}");
    assert_ne!(rep[0].2, Some(vmid), "{rep:?}");
    let ids = identities(&sim);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids.contains(&("beta/beta-app".to_string(), vmid)),
        "{ids:?}"
    );
    assert_clean_invariants(&sim.state());
    let o = apply(&sim, &[&a]);
    assert_eq!(reports(&o)[0].1, "unchanged", "{}", both(&o));
}

/// A guest of another installation on a node that is down cannot be read, so nobody can
/// tell whose identity it carries: a second process pauses creating (exit 3, naming the
/// VMID and the node) instead of making a second guest of that identity; when the node is
/// back, the marker is read again and the identity is refused as the other's.
#[test]
fn a_guest_on_a_down_node_is_not_made_twice_by_another_process() {
    let sim = Sim::cluster(3, "", 0.02);
    let other = second_config(&sim);
    let on3 = sim.write_spec(
        "twin.toml",
        &spec("twin", "\"auto\"", "").replacen("node = \"pve\"", "node = \"pve3\"", 1),
    );
    let o = apply(&sim, &[&on3]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let (vmid, _) = guests_on(&sim)[0].clone();

    sim.fault_set("node_down:pve3");
    let placed = sim.write_spec("twin-auto.toml", &auto_spec("twin", ""));
    let writes = sim.write_count();
    let o = felhom_with(
        &other,
        &["--output", "json", "apply", placed.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(3), "pauses: {}", both(&o));
    let r = reports(&o);
    assert_eq!(r[0].1, "paused", "{r:?}");
    assert!(
        stdout(&o).contains(&format!("VMID {vmid} on node pve3")),
        "names the guest it cannot read: {}",
        both(&o)
    );
    assert_eq!(sim.write_count(), writes, "nothing written");
    assert_eq!(identities(&sim).len(), 1, "{:?}", identities(&sim));

    sim.fault_clear("node_down:pve3");
    let o = felhom_with(
        &other,
        &["--output", "json", "apply", placed.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(
        reports(&o)[0].1,
        "refused",
        "the other's guest: {}",
        both(&o)
    );
    assert_eq!(identities(&sim).len(), 1, "{:?}", identities(&sim));
    // The first installation's own apply is untouched by all this.
    let o = apply(&sim, &[&on3]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(reports(&o)[0].1, "unchanged", "{:?}", reports(&o));
    assert_clean_invariants(&sim.state());
}

/// A rollback cut off after its restore undo destroyed the guest (`restore:undone`: before
/// that was journaled) frees the VMID, and the other installation takes it. The resumed
/// rollback finds another felhom job's guest there: nothing of its own, so its rollback
/// completes (rolled back, exit 1) and the other's guest is left as it is — not a
/// "rollback incomplete" that needs a person, and not a destroy.
#[test]
fn a_rollback_resumed_after_its_vmid_was_reused_completes_and_touches_nothing() {
    let sim = Sim::with("task_fail:start=1.0", 0.02);
    let other = second_config(&sim);
    let a = sim.write_spec("a.toml", &spec("acme", "\"auto\"", ""));
    let o = sim.felhom_env(
        &["apply", a.to_str().unwrap()],
        &[("FELHOM_CRASH_AT", "restore:undone")],
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&o.status),
        Some(9),
        "killed at restore:undone: {}",
        both(&o)
    );
    let jobs = json(&sim.felhom(&["--output", "json", "jobs"]));
    let vmid = jobs["jobs"][0]["vmid"].as_u64().unwrap();
    assert!(guests_on(&sim).is_empty(), "the undo destroyed the guest");

    // The other installation's bring-up at that VMID, stopped before its start.
    let b = sim.write_spec("b.toml", &spec("beta", &vmid.to_string(), ""));
    let o = felhom_with(&other, &["apply", b.to_str().unwrap()])
        .env("FELHOM_CRASH_AT", "start:before")
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&o.status),
        Some(9),
        "{}",
        both(&o)
    );
    assert_eq!(identities(&sim), [("beta/beta-app".to_string(), vmid)]);

    let r = sim.felhom(&["--output", "json", "resume"]);
    assert_eq!(r.status.code(), Some(1), "{}", both(&r));
    assert_eq!(reports(&r)[0].1, "rolled_back", "{}", both(&r));
    assert_eq!(
        identities(&sim),
        [("beta/beta-app".to_string(), vmid)],
        "the other's guest is untouched"
    );
    assert_clean_invariants(&sim.state());
}
