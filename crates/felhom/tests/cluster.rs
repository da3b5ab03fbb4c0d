//! felhom across a PVE cluster (issue 17): the real binary over real HTTPS against a spawned
//! simulator.
//!
//! | test | what must hold |
//! |---|---|
//! | `auto_node_is_placed_once_shown_in_plan_and_kept` | `node = "auto"` and a spec without `node`: `plan` names the node and why, `apply` makes the guest there, the job keeps the node, a re-run writes nothing |
//! | `no_node_fits_is_bad_input_naming_the_field` | `felhom.nodes` naming no usable node: exit 2 naming `node`, zero writes |

mod common;

use common::*;

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
