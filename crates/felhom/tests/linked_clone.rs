//! Strategy `linked-clone` end to end (issue 16 item 5): the real binary against a spawned
//! simulator publishes the golden as a template and makes each guest a linked clone of it.

mod common;
use common::*;
use serde_json::{json, Value};

fn add_storage(sim: &Sim, id: &str, ty: &str) {
    // Through the side channel, with this run's secret.
    let _: Value = sim.post(
        "storages",
        &json!({ "id": id, "type": ty, "content": ["rootdir", "images"] }),
    );
}

/// Publish the golden on local-lvm; the template's VMID.
fn publish(sim: &Sim) -> u64 {
    let out = sim.felhom(&[
        "--output", "json", "golden", "publish", GOLDEN, "--node", "pve",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let rep = json(&out);
    assert_eq!(rep["result"], "ran", "{rep}");
    assert_eq!(rep["outcome"], "succeeded", "{rep}");
    rep["vmid"].as_u64().expect("template vmid")
}

#[test]
fn publish_makes_a_template_once_and_a_second_publish_writes_nothing() {
    let sim = Sim::start();
    sim.set_strategy("linked-clone");
    let t = publish(&sim);
    let state = sim.state();
    let g = guest(&state, t).expect("template exists");
    assert_eq!(g["config"]["template"], "1", "{g}");
    let desc = g["config"]["description"].as_str().unwrap();
    assert!(desc.contains("felhom-template: sha256="), "{desc}");
    assert!(desc.contains(&format!("golden={GOLDEN}")), "{desc}");
    assert!(
        g["config"]["rootfs"]
            .as_str()
            .unwrap()
            .contains(&format!("local-lvm:base-{t}-disk-")),
        "{}",
        g["config"]["rootfs"]
    );

    let writes = sim.write_count();
    let out = sim.felhom(&["--output", "json", "golden", "publish", GOLDEN]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let rep = json(&out);
    assert_eq!(rep["result"], "exists", "{rep}");
    assert_eq!(rep["vmid"].as_u64(), Some(t));
    assert_eq!(sim.write_count(), writes, "a second publish wrote to PVE");
}

#[test]
fn apply_with_linked_clone_makes_linked_guests_with_their_own_identity() {
    let sim = Sim::start();
    sim.set_strategy("linked-clone");
    let t = publish(&sim);
    let a = sim.write_spec("a.toml", &spec("acme", "1100", MOUNT));
    let b = sim.write_spec("b.toml", &spec("beta", "1101", ""));
    let plan = sim.felhom(&["plan", a.to_str().unwrap()]);
    assert_eq!(plan.status.code(), Some(0), "{}", both(&plan));
    assert!(
        stdout(&plan).contains(&format!("linked clone of template {t}")),
        "{}",
        stdout(&plan)
    );
    let out = sim.felhom(&[
        "--output",
        "json",
        "apply",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let rep = json(&out);
    let state = sim.state();
    let tmac = guest(&state, t).unwrap()["config"]["net0"]
        .as_str()
        .unwrap()
        .to_string();
    let mut keys = Vec::new();
    for (vmid, host) in [(1100, "acme-app"), (1101, "beta-app")] {
        let job = rep["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["vmid"] == vmid)
            .unwrap_or_else(|| panic!("no job for {vmid}: {rep}"));
        assert_eq!(job["outcome"], "succeeded", "{job}");
        let g = guest(&state, vmid).expect("guest exists");
        let cfg = &g["config"];
        assert_eq!(g["status"], "running");
        assert_eq!(cfg["hostname"], host);
        // A linked clone: its rootfs shares the template's base volume (lvmthin names the
        // clone's volume without its base; the simulator records the link).
        let rootfs = cfg["rootfs"].as_str().unwrap();
        let volid = rootfs.split(',').next().unwrap();
        assert_eq!(
            state["linked"][volid].as_str(),
            Some(format!("local-lvm:base-{t}-disk-0").as_str()),
            "{rootfs}: {}",
            state["linked"]
        );
        assert!(rootfs.contains("size=12G"), "{rootfs}");
        // The MAC felhom journaled (its job reports it), not the template's nor the golden's.
        let mac = job["mac"].as_str().unwrap().to_ascii_uppercase();
        let net0 = cfg["net0"].as_str().unwrap().to_ascii_uppercase();
        assert!(net0.contains(&mac), "{net0} vs {mac}");
        assert!(!tmac.to_ascii_uppercase().contains(&mac));
        assert_ne!(mac, "BC:24:11:63:43:F4");
        keys.push(job["ssh_fingerprint"].as_str().unwrap().to_string());
    }
    assert_ne!(keys[0], keys[1], "two clones share an SSH host key");
    assert!(state_has_mount(&state, 1100));
    assert_clean_invariants(&state);

    let st = sim.felhom(&["--output", "json", "status"]);
    assert_eq!(st.status.code(), Some(0), "status: {}", both(&st));
    let tpl = json(&st)["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"].as_u64() == Some(t))
        .cloned()
        .expect("status lists the template");
    assert_eq!(tpl["status"], "template", "{tpl}");

    // Re-apply: one guest per identity, nothing written.
    let writes = sim.write_count();
    let again = sim.felhom(&["apply", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "{}", both(&again));
    assert_eq!(
        sim.write_count(),
        writes,
        "re-apply wrote: {}",
        both(&again)
    );

    // Teardown of a guest keeps the template; the template is refused while a clone uses it.
    let down = sim.felhom(&["teardown", "1100"]);
    assert_eq!(down.status.code(), Some(0), "{}", both(&down));
    assert!(
        guest(&sim.state(), t).is_some(),
        "teardown removed the template"
    );
    let refused = sim.felhom(&["teardown", &t.to_string()]);
    assert_ne!(refused.status.code(), Some(0), "{}", both(&refused));
    assert!(
        both(&refused).contains("linked clones still use its base volume (guests 1101)"),
        "{}",
        both(&refused)
    );
    assert!(guest(&sim.state(), t).is_some());
    // Once no clone uses it, an explicit teardown removes it.
    let down = sim.felhom(&["teardown", "1101"]);
    assert_eq!(down.status.code(), Some(0), "{}", both(&down));
    let gone = sim.felhom(&["teardown", &t.to_string()]);
    assert_eq!(gone.status.code(), Some(0), "{}", both(&gone));
    assert!(guest(&sim.state(), t).is_none());
    assert_clean_invariants(&sim.state());
}

fn state_has_mount(state: &Value, vmid: u64) -> bool {
    guest(state, vmid).is_some_and(|g| {
        g["config"]["mp0"]
            .as_str()
            .is_some_and(|m| m.contains("mp=/srv/data"))
    })
}

#[test]
fn a_storage_that_cannot_link_clone_is_refused_at_plan_time_with_zero_writes() {
    let sim = Sim::start();
    sim.set_strategy("linked-clone");
    add_storage(&sim, "dirct", "dir");
    let text =
        spec("acme", "1100", "").replacen("storage = \"local-lvm\"", "storage = \"dirct\"", 1);
    let s = sim.write_spec("dir.toml", &text);
    let writes = sim.write_count();
    for cmd in ["plan", "apply"] {
        let out = sim.felhom(&[cmd, s.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", both(&out));
        let text = both(&out);
        assert!(
            text.contains("storage 'dirct' (type dir) cannot link-clone"),
            "{cmd}: {text}"
        );
    }
    let out = sim.felhom(&["golden", "publish", GOLDEN, "--storage", "dirct"]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(both(&out).contains("cannot link-clone"), "{}", both(&out));
    assert_eq!(sim.write_count(), writes);
}

#[test]
fn apply_without_a_published_template_says_to_publish() {
    let sim = Sim::start();
    sim.set_strategy("linked-clone");
    let s = sim.write_spec("a.toml", &spec("acme", "1100", ""));
    let out = sim.felhom(&["apply", s.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(
        both(&out).contains("felhom golden publish --node pve --storage local-lvm"),
        "{}",
        both(&out)
    );
    assert_eq!(sim.write_count(), 0);
}

/// Many guests cloned from one template in one `apply`: PVE runs one clone of a template at
/// a time (`lock: disk` on it for the whole task) and refuses the others at once, so felhom
/// queues its own clones of one template instead of spending their retry budget on refusals
/// (at 100 guests, 44 gave up before it did). No clone request is refused; all converge.
#[test]
fn clones_of_one_template_take_turns_instead_of_being_refused() {
    let sim = Sim::start();
    sim.set_strategy("linked-clone");
    let _t = publish(&sim);
    let mut text = String::new();
    for i in 0..8 {
        let one = spec(&format!("turn{i}"), "\"auto\"", "");
        text.push_str("[[guest]]\n");
        text.push_str(&one);
        text.push('\n');
    }
    let path = sim.write_spec("turns.toml", &text);
    let out = sim.felhom(&["--output", "json", "apply", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let rep = json(&out);
    let jobs = rep["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 8, "{rep}");
    assert!(jobs.iter().all(|j| j["outcome"] == "succeeded"), "{rep}");
    let requests = sim.get("requests");
    let clones: Vec<&Value> = requests
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["method"] == "POST" && r["path"].as_str().is_some_and(|p| p.ends_with("/clone"))
        })
        .collect();
    let refused: Vec<&&Value> = clones.iter().filter(|r| r["status"] != 200).collect();
    assert_eq!(clones.len(), 8, "one clone request per guest: {clones:?}");
    assert!(refused.is_empty(), "clone requests refused: {refused:?}");
}
