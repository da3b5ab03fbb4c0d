//! `felhom bench perf --nodes 3` end to end at a small N (the real binary, a simulated cluster
//! over loopback HTTPS): felhom places every guest, and the report's per-node rows add up.

mod common;
use common::*;
use serde_json::Value;

#[test]
fn perf_bench_on_a_cluster_reports_each_node() {
    let v = bench_report(&[
        "perf",
        "--nodes",
        "3",
        "--guests",
        "6",
        "--modes",
        "restore",
        "--no-naive",
        "--concurrency",
        "2",
    ]);
    let rows = v["perf"].as_array().expect("perf rows");
    assert_eq!(rows.len(), 1, "{v}");
    let r = &rows[0];
    assert_eq!(r["mode"], "restore", "{r}");
    assert_eq!(r["guests"], 6, "{r}");
    assert_eq!(r["succeeded"], 6, "{r}");
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    let floor = f(r, "floor_s");
    assert!(floor > 0.0 && f(r, "wall_s") >= floor, "{r}");

    let nodes = r["per_node"].as_array().expect("per_node");
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["node"].as_str()).collect();
    // Placement spreads six guests over three empty nodes.
    assert_eq!(names, ["pve1", "pve2", "pve3"], "{r}");
    let sum = |k: &str| nodes.iter().map(|n| n[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("guests"), 6, "{r}");
    assert_eq!(sum("succeeded"), 6, "{r}");
    let mut largest = 0.0f64;
    for n in nodes {
        assert!(n["guests"].as_u64().unwrap() > 0, "{n}");
        let (nf, nw) = (f(n, "floor_s"), f(n, "wall_s"));
        assert!(nf > 0.0 && nf <= floor, "{n} vs floor {floor}");
        // A node's last guest ends no later than the batch, and no sooner than its floor.
        assert!(nw >= nf && nw <= f(r, "wall_s"), "{n}");
        assert!(f(n, "peak_requests_per_s") > 0.0, "{n}");
        assert!(
            f(n, "peak_requests_per_s") <= f(r, "peak_requests_per_s"),
            "{n}"
        );
        largest = largest.max(nf);
    }
    // The run's floor is the slowest node's.
    assert_eq!(largest, floor, "{r}");
    // Every request reaches the entry node: its peak is at least the busiest node's.
    assert!(
        f(r, "entry_peak_requests_per_s") >= f(r, "peak_requests_per_s"),
        "{r}"
    );

    // Issue 17's rows are reported for a cluster run.
    let targets: Vec<&str> = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["target"].as_str())
        .collect();
    for what in [
        "wall ≤ 1.15 × floor",
        "RSS ≤ 128 MB",
        "peak ≤ 20 requests/s per node",
    ] {
        assert!(
            targets.iter().any(|t| t.contains(what)),
            "{what}: {targets:?}"
        );
    }
}

#[test]
fn perf_bench_refuses_more_guests_than_one_node_takes() {
    for (args, field) in [
        (&["--guests", "501"][..], "--guests"),
        (&["--guests", "1001", "--nodes", "2"][..], "--guests"),
        (&["--nodes", "0"][..], "--nodes"),
        (&["--nodes", "2", "--modes", "naive"][..], "--modes"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_felhom"))
            .args(["bench", "perf"])
            .args(args)
            .output()
            .expect("run felhom bench perf");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(field), "{args:?}: {err}");
    }
}
