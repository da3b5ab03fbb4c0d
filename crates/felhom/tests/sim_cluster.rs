//! `felhom sim serve --nodes N` (issue 17, deliverable 1) as a child process: one port serves
//! every node, and the test helpers other cluster tests use (`Sim::cluster`,
//! `Sim::fault_set`/`fault_clear`, `Sim::migrate`) do what they say. The simulator's own
//! behaviour per Perl source is tested in `crates/pve-sim/tests/cluster.rs`.

mod common;

use std::process::Command;

use common::*;
use pve_api::{ApiError, Vmid, WaitOptions};
use serde_json::Value;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn sim_serve_nodes_serves_a_cluster_with_faults_and_migration() {
    let sim = Sim::cluster(3, "", 0.02);
    let c = sim.client();
    let nodes: Vec<Value> = block_on(c.get("/nodes", &[])).unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(names, ["pve1", "pve2", "pve3"]);

    let vmid = Vmid::try_from(1000).unwrap();
    let params = vec![
        ("vmid".to_string(), "1000".to_string()),
        ("ostemplate".into(), GOLDEN.into()),
        ("restore".into(), "1".into()),
        ("storage".into(), "local-lvm".into()),
    ];
    block_on(async {
        let u = c.lxc_create("pve2", &params).await.unwrap();
        c.wait_task(&u, &WaitOptions::default()).await.unwrap();
    });

    // Someone else's migration: the guest is on pve3 afterwards, nowhere else.
    let moved = sim.migrate(1000, "pve3").unwrap();
    assert_eq!(moved["from"], "pve2");
    block_on(c.lxc_config("pve3", vmid)).unwrap();
    let e = block_on(c.lxc_config("pve2", vmid)).unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    assert_eq!(guest(&sim.state(), 1000).unwrap()["node"], "pve3");

    // pve3 down: its calls answer 595, the others do not; back after the clear.
    let now = sim.fault_set("node_down:pve3");
    assert_eq!(now["node_down"][0], "pve3");
    let e = block_on(c.lxc_config("pve3", vmid)).unwrap_err();
    assert!(
        matches!(e, ApiError::AnswerLost { status: 595, .. }),
        "{e:?}"
    );
    block_on(c.get::<Value>("/nodes/pve1/lxc", &[])).unwrap();
    sim.fault_clear("node_down:pve3");
    block_on(c.lxc_config("pve3", vmid)).unwrap();

    // No quorum: a start dies with PVE's text.
    sim.fault_set("no_quorum");
    let e = block_on(c.lxc_start("pve3", vmid)).unwrap_err();
    assert!(
        e.to_string().contains("cluster not ready - no quorum?"),
        "{e}"
    );
    sim.fault_clear("no_quorum");
    let st = sim.state();
    assert!(st["counters"]["no_quorum"].as_u64().unwrap() >= 1);
    assert!(st["counters"]["node_down_595"].as_u64().unwrap() >= 1);
    assert_clean_invariants(&st);
}

#[test]
fn sim_serve_refuses_bad_node_lists() {
    let dir = tempfile::tempdir().unwrap();
    for (nodes, says) in [
        ("0", "at least 1"),
        ("a,a", "given twice"),
        ("1bad", "must be [a-zA-Z]"),
    ] {
        let out = Command::new(BIN)
            .args(["sim", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.path().join("sim"))
            .args(["--nodes", nodes])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--nodes {nodes} must be refused");
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("--nodes") && err.contains(says), "{err}");
        assert!(!dir.path().join("sim").join("state.json").exists());
    }
    let out = Command::new(BIN)
        .args(["sim", "serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path().join("sim"))
        .args(["--nodes", "2", "--faults", "node_down:pve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("node_down:pve: no such node (--nodes gives pve1, pve2)"),
        "{}",
        stderr(&out)
    );
}
