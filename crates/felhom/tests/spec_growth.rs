//! What a customer buys (issue 14, item 7), through the real binary against the simulator:
//! cores, memory, swap, onboot, DNS, a VLAN tag and a static address are set in the one
//! restore request, shown by `plan`, checked by `status`, and repaired by `apply`; preflight
//! names a bridge the node does not have.

mod common;
use common::*;
use serde_json::Value;

const BOUGHT: &str = "cores = 2\nmemory = 1024\nswap = 256\nonboot = true\ntag = 120\nip = \"192.0.2.10/24\"\ngw = \"192.0.2.1\"\nnameserver = [\"192.0.2.53\"]\nsearchdomain = [\"acme.example\"]\n";

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", both(o)))
}

/// The simulator's request log from index `from` on.
fn requests(sim: &Sim, from: usize) -> Vec<Value> {
    sim.get("requests").as_array().unwrap()[from..].to_vec()
}

fn config_puts(reqs: &[Value]) -> Vec<&Value> {
    reqs.iter()
        .filter(|r| {
            r["method"] == "PUT" && r["path"].as_str().is_some_and(|p| p.ends_with("/config"))
        })
        .collect()
}

fn drift_fields(st: &Value) -> Vec<String> {
    st["guests"][0]["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn bought_settings_come_in_one_restore_request_and_status_and_apply_keep_them() {
    let sim = Sim::start();
    let path = sim.write_spec("bought.toml", &spec("bought", "1700", BOUGHT));
    let path = path.to_str().unwrap();

    // plan shows them, and writes nothing.
    let before = sim.write_count();
    let plan = sim.felhom(&["plan", path]);
    assert_eq!(plan.status.code(), Some(0), "{}", both(&plan));
    let text = stdout(&plan);
    for want in [
        "cores 2, memory 1024 MiB, swap 256 MiB, onboot yes, nameserver 192.0.2.53, searchdomain acme.example",
        "on vmbr0, VLAN 120, 192.0.2.10/24 via 192.0.2.1",
        "static address 192.0.2.10 (no DHCP)",
    ] {
        assert!(text.contains(want), "plan lacks {want:?}: {text}");
    }
    assert_eq!(sim.write_count(), before);

    let from = sim.get("requests").as_array().unwrap().len();
    let out = sim.felhom(&["--output", "json", "provision", path]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let reqs = requests(&sim, from);
    let restores: Vec<&Value> = reqs
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/nodes/pve/lxc")
        .collect();
    assert_eq!(restores.len(), 1, "one restore request");
    let p = &restores[0]["params"];
    for (k, v) in [
        ("cores", "2"),
        ("memory", "1024"),
        ("swap", "256"),
        ("onboot", "1"),
        ("nameserver", "192.0.2.53"),
        ("searchdomain", "acme.example"),
    ] {
        assert_eq!(p[k], v, "{k} in the restore request: {p}");
    }
    let net0 = p["net0"].as_str().unwrap();
    for want in [
        "bridge=vmbr0",
        "tag=120",
        "ip=192.0.2.10/24",
        "gw=192.0.2.1",
        "hwaddr=BC:24:11:",
    ] {
        assert!(net0.contains(want), "net0 {net0} lacks {want}");
    }
    // Nothing was set a second time: the only config write after the restore is finish's.
    let puts = config_puts(&reqs);
    assert!(
        puts.iter().all(|r| r["params"].get("net0").is_none()
            && r["params"].get("cores").is_none()
            && r["params"].get("memory").is_none()),
        "settings written again after the restore: {puts:?}"
    );

    let rep = json(&out);
    assert_eq!(
        rep["jobs"][0]["ip"], "192.0.2.10",
        "the static address is recorded"
    );
    let state = sim.state();
    let g = guest(&state, 1700).unwrap();
    assert_eq!(g["status"], "running");
    assert_clean_invariants(&state);

    let st = sim.felhom(&["--output", "json", "status", "1700"]);
    assert_eq!(st.status.code(), Some(0), "{}", both(&st));
    assert!(drift_fields(&json(&st)).is_empty());

    // Changed outside felhom: cores, memory, and net0's VLAN (the MAC kept, so the guest is
    // still provably felhom's).
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let cfg = felhom_core::config::Config::parse(&sim.config, &text).unwrap();
    let client = pve_api::PveClient::new(cfg.client).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vmid = pve_api::Vmid::try_from(1700).unwrap();
    rt.block_on(async {
        let c = client.lxc_config("pve", vmid).await.unwrap();
        let moved = c.get_str("net0").unwrap().replace("tag=120", "tag=130");
        let params: Vec<(String, String)> = [("cores", "4"), ("memory", "2048"), ("net0", &moved)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        client
            .lxc_update_config("pve", vmid, &params, None)
            .await
            .unwrap();
    });
    let st = sim.felhom(&["--output", "json", "status", "1700"]);
    assert_eq!(st.status.code(), Some(1), "{}", both(&st));
    let mut fields = drift_fields(&json(&st));
    fields.sort();
    assert_eq!(
        fields,
        vec!["cores", "memory", "net0.tag"],
        "{}",
        stdout(&st)
    );

    // apply repairs it: one config write for the settings, one for net0.
    let from = sim.get("requests").as_array().unwrap().len();
    let out = sim.felhom(&["apply", path]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let reqs = requests(&sim, from);
    let puts = config_puts(&reqs);
    assert!(
        puts.iter()
            .any(|r| r["params"]["cores"] == "2" && r["params"]["memory"] == "1024"),
        "{puts:?}"
    );
    assert!(
        puts.iter().any(|r| r["params"]["net0"]
            .as_str()
            .is_some_and(|n| n.contains("tag=120"))),
        "{puts:?}"
    );
    assert!(
        !reqs
            .iter()
            .any(|r| r["method"] == "POST" && r["path"] == "/nodes/pve/lxc"),
        "repair must not restore again"
    );
    let st = sim.felhom(&["--output", "json", "status", "1700"]);
    assert_eq!(st.status.code(), Some(0), "{}", both(&st));
    assert!(drift_fields(&json(&st)).is_empty());
    let state = sim.state();
    let g = guest(&state, 1700).unwrap();
    assert_eq!(g["config"]["cores"], "2", "{}", g["config"]);
    assert!(g["config"]["net0"].as_str().unwrap().contains("tag=120"));
}

#[test]
fn preflight_names_a_missing_bridge() {
    let sim = Sim::start();
    let path = sim.write_spec(
        "nobridge.toml",
        &spec("nobr", "1710", "").replace("bridge = \"vmbr0\"", "bridge = \"vmbr9\""),
    );
    let out = sim.felhom(&["--output", "json", "preflight", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let rep = json(&out);
    let check = rep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bridge")
        .unwrap_or_else(|| panic!("no bridge check: {rep}"));
    assert_eq!(check["ok"], false);
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("vmbr9") && detail.contains("does not exist") && detail.contains("vmbr0"),
        "{detail}"
    );

    // And the bridge that exists passes.
    let ok = sim.write_spec("bridge.toml", &spec("br", "1711", ""));
    let out = sim.felhom(&["--output", "json", "preflight", ok.to_str().unwrap()]);
    let rep = json(&out);
    let check = rep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bridge")
        .unwrap();
    assert_eq!(check["ok"], true, "{check}");
}
