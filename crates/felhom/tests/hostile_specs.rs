//! Hostile or broken specs: each exits 2 with a message naming the field, and the simulator
//! records zero write requests.

mod common;
use common::*;

/// (name, spec text, field the message must name)
fn cases() -> Vec<(&'static str, String, &'static str)> {
    let base = |customer: &str, vmid: &str| spec(customer, vmid, MOUNT);
    let with = |from: &str, to: &str| base("acme", "1300").replacen(from, to, 1);
    vec![
        (
            "hostname comma injection",
            with("hostname = \"acme-app\"", "hostname = \"acme,ip=10.0.0.1\""),
            "hostname",
        ),
        (
            "hostname newline injection",
            with(
                "hostname = \"acme-app\"",
                "hostname = \"acme\\nnet1: name=eth1\"",
            ),
            "hostname",
        ),
        (
            "hostname equals",
            with("hostname = \"acme-app\"", "hostname = \"acme=1\""),
            "hostname",
        ),
        (
            "hostname semicolon",
            with("hostname = \"acme-app\"", "hostname = \"acme;reboot\""),
            "hostname",
        ),
        (
            "hostname underscore",
            with("hostname = \"acme-app\"", "hostname = \"acme_app\""),
            "hostname",
        ),
        (
            "hostname label too long",
            with(
                "hostname = \"acme-app\"",
                &format!("hostname = \"{}\"", "a".repeat(64)),
            ),
            "hostname",
        ),
        (
            "hostname leading dash",
            with("hostname = \"acme-app\"", "hostname = \"-acme\""),
            "hostname",
        ),
        (
            "hostname empty",
            with("hostname = \"acme-app\"", "hostname = \"\""),
            "hostname",
        ),
        (
            "mount path injection",
            with("path = \"/srv/data\"", "path = \"/srv,mp=/etc\""),
            "mount[0].path",
        ),
        (
            "mount path relative",
            with("path = \"/srv/data\"", "path = \"srv/data\""),
            "mount[0].path",
        ),
        (
            "mount path traversal",
            with("path = \"/srv/data\"", "path = \"/srv/../etc\""),
            "mount[0].path",
        ),
        (
            "mount path system dir",
            with("path = \"/srv/data\"", "path = \"/etc\""),
            "mount[0].path",
        ),
        (
            "mount path newline",
            with("path = \"/srv/data\"", "path = \"/srv/data\\n\""),
            "mount[0].path",
        ),
        (
            "duplicate mount path",
            format!("{}{}", base("acme", "1300"), MOUNT),
            "mount[1].path",
        ),
        (
            "storage injection",
            with("storage = \"local-lvm\"", "storage = \"local-lvm,size=1\""),
            "storage",
        ),
        (
            "storage upper case",
            with("storage = \"local-lvm\"", "storage = \"Local\""),
            "storage",
        ),
        (
            "mount storage injection",
            base("acme", "1300").replace(
                "[[mount]]\nstorage = \"local-lvm\"",
                "[[mount]]\nstorage = \"x;y\"",
            ),
            "mount[0].storage",
        ),
        (
            "bridge injection",
            with("bridge = \"vmbr0\"", "bridge = \"vmbr0,firewall=1\""),
            "bridge",
        ),
        (
            "bridge too long",
            with("bridge = \"vmbr0\"", "bridge = \"averyveryverylongbridge\""),
            "bridge",
        ),
        ("vmid below PVE minimum", base("acme", "99"), "vmid"),
        ("vmid outside felhom range", base("acme", "5000"), "vmid"),
        ("vmid not a number", base("acme", "\"12a\""), "vmid"),
        ("vmid negative", base("acme", "-1"), "vmid"),
        (
            "rootfs shrink below golden",
            with("rootfs_size = \"12G\"", "rootfs_size = \"4G\""),
            "rootfs_size",
        ),
        (
            "rootfs relative size",
            with("rootfs_size = \"12G\"", "rootfs_size = \"+2G\""),
            "rootfs_size",
        ),
        (
            "rootfs bare bytes",
            with("rootfs_size = \"12G\"", "rootfs_size = \"10\""),
            "rootfs_size",
        ),
        (
            "rootfs zero",
            with("rootfs_size = \"12G\"", "rootfs_size = \"0G\""),
            "rootfs_size",
        ),
        (
            "rootfs wrong type",
            with("rootfs_size = \"12G\"", "rootfs_size = 12"),
            "rootfs_size",
        ),
        (
            "mount size fraction of KiB",
            with("size = \"4G\"", "size = \"0.5K\""),
            "mount[0].size",
        ),
        (
            "missing hostname",
            with("hostname = \"acme-app\"\n", ""),
            "hostname",
        ),
        (
            "missing golden",
            with(&format!("golden = \"{GOLDEN}\"\n"), ""),
            "golden",
        ),
        (
            "golden path traversal",
            with(GOLDEN, "local:backup/../../etc/passwd"),
            "golden",
        ),
        (
            "golden does not exist",
            with(
                GOLDEN,
                "local:backup/vzdump-lxc-9100-2020_01_01-00_00_00.tar.zst",
            ),
            "golden",
        ),
        (
            "unknown field",
            with("bridge = \"vmbr0\"", "bridge = \"vmbr0\"\nhostnmae = \"x\""),
            "hostnmae",
        ),
        (
            "tag with space",
            with(
                "bridge = \"vmbr0\"",
                "bridge = \"vmbr0\"\ntags = [\"bad tag\"]",
            ),
            "tags[0]",
        ),
        ("customer upper case", base("ACME", "1300"), "customer"),
        (
            "node injection",
            with("node = \"pve\"", "node = \"pve/../../x\""),
            "node",
        ),
        (
            "pool does not exist",
            with(
                "bridge = \"vmbr0\"",
                "bridge = \"vmbr0\"\npool = \"nosuchpool\"",
            ),
            "pool",
        ),
        (
            "storage without rootdir",
            with("storage = \"local-lvm\"", "storage = \"local\""),
            "storage",
        ),
        (
            "not TOML",
            "customer = \"acme\nhostname = ".to_string(),
            "(file)",
        ),
        (
            "guest list with bad entry",
            format!(
                "[[guest]]\n{}\n[[guest]]\ncustomer = 1\n",
                spec("acme", "1300", "")
            ),
            "guest[1].customer",
        ),
    ]
}

#[test]
fn hostile_specs_exit_2_name_the_field_and_write_nothing() {
    let sim = Sim::start();
    let before = sim.write_count();
    let cases = cases();
    assert!(cases.len() >= 30);
    for (i, (name, text, field)) in cases.iter().enumerate() {
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
