//! Hostile or broken specs: each exits 2 with a message naming the field, and the simulator
//! records zero write requests.

mod common;
use common::*;

#[test]
fn hostile_specs_exit_2_name_the_field_and_write_nothing() {
    let sim = Sim::start();
    let before = sim.write_count();
    let cases = felhom_core::adversarial::hostile_specs(GOLDEN);
    assert!(cases.len() >= 30);
    for (i, felhom_core::adversarial::HostileSpec { name, text, field }) in cases.iter().enumerate()
    {
        let path = sim.write_spec(&format!("hostile-{i}.toml"), text);
        for cmd in ["provision", "plan"] {
            let out = sim.felhom(&[cmd, path.to_str().unwrap()]);
            let msg = both(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{name} ({cmd}): expected exit 2, got {:?}: {msg}",
                out.status.code()
            );
            assert!(
                msg.contains(field),
                "{name} ({cmd}): message does not name '{field}': {msg}"
            );
        }
    }
    assert_eq!(
        sim.write_count(),
        before,
        "hostile specs caused writes to PVE"
    );
}

#[test]
fn foreign_guest_at_vmid_is_refused_without_writes() {
    let sim = Sim::start();
    // Someone else's guest at 1150: restored by the same token, but without felhom's marker.
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let cfg = felhom_core::config::Config::parse(&sim.config, &text).unwrap();
    let client = pve_api::PveClient::new(cfg.client).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let params: Vec<(String, String)> = [
            ("vmid", "1150"),
            ("ostemplate", GOLDEN),
            ("restore", "1"),
            ("storage", "local-lvm"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let upid = client.lxc_create("pve", &params).await.unwrap();
        client
            .wait_task(&upid, &pve_api::WaitOptions::default())
            .await
            .unwrap();
    });
    let before = sim.write_count();
    let path = sim.write_spec("foreign.toml", &spec("acme", "1150", ""));
    let out = sim.felhom(&["provision", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(
        both(&out).contains("vmid") && both(&out).contains("does not own"),
        "{}",
        both(&out)
    );
    assert_eq!(sim.write_count(), before);
    // And teardown refuses a guest felhom has no record of.
    let out = sim.felhom(&["teardown", "1150"]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert_eq!(sim.write_count(), before);
    assert!(guest(&sim.state(), 1150).is_some());
}
