//! `felhom bench reliability` end to end at a small N: every crash point ends correct, the
//! soak survives its faults (answers lost after the work among them) and two simulator
//! restarts, no bad input writes anything, and the same `apply` killed again and again ends
//! with one guest per identity. The cluster parts run in a test of their own (in parallel):
//! a node down during an apply (the others converge, the paused jobs resume to success) and
//! two felhom processes with their own journals on overlapping specs, SIGKILLed at random
//! (one guest per identity, each owned by one journal, nothing torn down).

mod common;
use common::*;
use serde_json::Value;

#[test]
fn reliability_bench_reports_every_part_and_all_good() {
    // The default faults, with answers lost after the work three times as often: at 4
    // guests the default 10% drew none for one seed once the bring-up sent fewer requests.
    let v = bench_report(&[
        "reliability",
        "--guests",
        "4",
        "--parts",
        "crash,soak,bad,archives,rerun",
        "--faults",
        "lock500=0.1,http503=0.1,post_effect_595=0.3",
    ]);
    let r = &v["reliability"];
    assert_eq!(v["all_good"], true, "{v}");
    // A crash before and after every bring-up step.
    let points = 2 * felhom_core::bringup::STEPS.len() as u64;
    assert_eq!(r["crash_points"]["tried"], points, "{r}");
    assert_eq!(r["crash_points"]["correct"], points, "{r}");
    assert_eq!(r["soak"]["guests"], 4);
    assert_eq!(r["soak"]["simulator_restarts"], 2, "{r}");
    // The faults include answers lost after the work (595, empty body).
    let lost =
        r["soak"]["answers_lost"].as_u64().unwrap() + r["rerun"]["answers_lost"].as_u64().unwrap();
    assert!(lost > 0, "{r}");
    assert_eq!(
        r["soak"]["succeeded"].as_u64().unwrap() + r["soak"]["rolled_back"].as_u64().unwrap(),
        4,
        "{r}"
    );
    let hostile = felhom_core::adversarial::hostile_specs("x").len() as u64;
    assert_eq!(r["bad_inputs"]["tried"].as_u64(), Some(2 * hostile + 6));
    assert_eq!(r["bad_inputs"]["refused_exit_2"], r["bad_inputs"]["tried"]);
    assert_eq!(r["bad_inputs"]["writes_caused"], 0);
    // The same apply, killed again and again (and the simulator twice): one guest each.
    let rr = &r["rerun"];
    assert_eq!(rr["guests"], 4, "{rr}");
    assert_eq!(rr["simulator_restarts"], 2, "{rr}");
    assert!(rr["felhom_killed"].as_u64().unwrap() >= 1, "{rr}");
    assert_eq!(rr["final_exit"], 0, "{rr}");
    assert_eq!(rr["identities_exactly_one"], 4, "{rr}");
    assert_eq!(rr["identities_duplicated"], 0, "{rr}");
    assert_eq!(rr["jobs_open"], 0, "{rr}");
    assert_eq!(rr["unchanged_on_last_run"], 4, "{rr}");
    assert_eq!(rr["writes_on_last_run"], 0, "{rr}");
    assert_no_leaks(r);
    // Hostile archives: inspect exits 2, the restore is refused, nothing is left, and no
    // process reading one goes over 64 MB.
    let rows = r["hostile_archives"]
        .as_array()
        .expect("hostile archive rows");
    assert_eq!(rows.len(), vzdump::hostile::Hostile::ALL.len(), "{r}");
    for row in rows {
        assert_eq!(row["inspect_exit"], 2, "{row}");
        assert_eq!(row["restore_refused"], true, "{row}");
        assert_eq!(row["guests_left"], 0, "{row}");
        assert_eq!(row["leaks"], 0, "{row}");
        assert!(
            row["inspect_peak_rss_mb"].as_f64().unwrap() <= 64.0,
            "{row}"
        );
        assert!(row["sim_peak_rss_mb"].as_f64().unwrap() <= 64.0, "{row}");
    }
}

#[test]
fn reliability_bench_cluster_parts_end_with_one_guest_per_identity_and_nothing_lost() {
    let v = bench_report(&[
        "reliability",
        "--parts",
        "node-down,two",
        "--guests",
        "10",
        "--nodes",
        "3",
    ]);
    assert_eq!(v["all_good"], true, "{v}");
    let r = &v["reliability"];
    assert_eq!(r["parts"], serde_json::json!(["node-down", "two"]), "{r}");
    for skipped in [
        "crash_points",
        "soak",
        "bad_inputs",
        "rerun",
        "hostile_archives",
    ] {
        assert!(r[skipped].is_null(), "{skipped} was not asked for: {r}");
    }

    // A node down mid-apply: its guests pause (exit 3), every other guest converged while
    // it was down; back up, each paused job resumes to success; then one running guest per
    // identity and a last apply that writes nothing.
    let n = &r["node_down"];
    assert_eq!(n["down_node"], "pve3", "{n}");
    assert!(
        n["guests_on_down_node_at_fault"].as_u64().unwrap() >= 1,
        "{n}"
    );
    assert_eq!(n["first_exit"], 3, "{n}");
    let paused = n["paused_jobs"].as_u64().unwrap() + n["paused_decisions"].as_u64().unwrap();
    assert!(paused >= 1, "{n}");
    let converged = n["converged_while_down"].as_u64().unwrap();
    assert!(converged >= 1, "{n}");
    let before = n["done_on_down_node_before"].as_u64().unwrap();
    assert_eq!(converged + before + paused, 10, "{n}");
    assert_eq!(n["other_nodes_not_converged"], 0, "{n}");
    assert_eq!(n["other_outcomes"], 0, "{n}");
    assert_eq!(n["resume_exit"], 0, "{n}");
    assert_eq!(n["resumed_to_success"], n["paused_jobs"], "{n}");
    assert_eq!(n["apply_after_exit"], 0, "{n}");
    assert_eq!(n["identities_exactly_one"], 10, "{n}");
    assert_eq!(n["running"], 10, "{n}");
    assert_eq!(n["unchanged_on_last_run"], 10, "{n}");
    assert_eq!(n["writes_on_last_run"], 0, "{n}");
    assert!(n["node_down_595"].as_u64().unwrap() >= 1, "{n}");

    // Two processes, A with identities 0..7 and B with 3..10, killed at random moments:
    // one guest per identity, each owned by exactly one journal, the other refusing it.
    let t = &r["two_processes"];
    assert_eq!(t["overlap"], 4, "{t}");
    assert!(
        t["a_killed"].as_u64().unwrap() + t["b_killed"].as_u64().unwrap() >= 2,
        "{t}"
    );
    assert_eq!(t["identities_exactly_one"], 10, "{t}");
    assert_eq!(
        t["owned_by_a"].as_u64().unwrap() + t["owned_by_b"].as_u64().unwrap(),
        10,
        "{t}"
    );
    for k in [
        "owned_by_both",
        "owned_by_neither",
        "vmids_in_both_journals",
        "recorded_but_gone",
        "refused_otherwise",
        "jobs_open",
        "writes_on_last_runs",
    ] {
        assert_eq!(t[k], 0, "{k}: {t}");
    }
    assert_eq!(t["refused_owned_by_other"], 4, "{t}");
    assert_no_leaks(r);
}

/// Every leak counter of the report is 0: volumes leaked or detached, MACs, IPs, SSH keys
/// or guests twice, rootfs grown twice.
fn assert_no_leaks(r: &Value) {
    for k in [
        "leaked_volumes",
        "detached_volumes",
        "duplicate_macs",
        "duplicate_ips",
        "duplicate_ssh_keys",
        "duplicate_guests",
        "double_grows",
    ] {
        assert_eq!(r["leaks"][k], 0, "{k}: {r}");
    }
}
