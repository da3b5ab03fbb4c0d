//! The lxc runtime's restore sizing, template and clone on disk (root, lxc, uidmap; no
//! container is started): a restore into a rootfs too small for the archive fails as tar's
//! ENOSPC and leaves nothing (audit §2 (a)); a template renames the volume directory to
//! `base-…`; a clone copies it and `post_clone_hook` empties only `/etc/machine-id`
//! (pve-container `Setup/Base.pm` `clear_machine_id`).

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;
use pve_api::{texts, ApiError, WaitOptions};
use pve_sim::runtime::RuntimeKind;
use pve_sim::SimConfig;
use serde_json::{json, Value};

const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef\n";

fn archive(path: &std::path::Path, big: usize) {
    let mut w =
        vzdump::ArchiveWriter::create(path, vzdump::Compression::from_path(path).unwrap()).unwrap();
    w.pct_conf(&pct_conf("")).unwrap();
    w.dir("etc", 0o755).unwrap();
    w.file("etc/machine-id", 0o444, MACHINE_ID.as_bytes())
        .unwrap();
    w.dir("usr/lib/systemd", 0o755).unwrap();
    w.file("usr/lib/systemd/systemd", 0o755, b"#!/bin/sh\n")
        .unwrap();
    if big > 0 {
        // Incompressible, so the archive stays honest about its content.
        let data: Vec<u8> = (0..big).map(|_| rand_byte()).collect();
        w.file("srv/blob", 0o644, &data).unwrap();
    }
    w.finish().unwrap();
}

fn rand_byte() -> u8 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static S: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = S.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    S.store(x, Ordering::Relaxed);
    (x >> 24) as u8
}

/// A simulator with the lxc runtime serving `nodes` (none: the one node `pve`), its `local`
/// storage holding `archives` (name, bytes of incompressible content), and the felhom
/// token's client. Fails on a host without the runtime's tools.
async fn lxc_sim(
    nodes: Vec<String>,
    archives: &[(&str, usize)],
) -> (tempfile::TempDir, pve_sim::SimHandle, pve_api::PveClient) {
    if let Err(e) = pve_sim::runtime::lxc::preflight() {
        panic!("this test needs the lxc runtime's host: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let dump = pve_sim::dump_dir(dir.path(), "local");
    std::fs::create_dir_all(&dump).unwrap();
    for (name, big) in archives {
        archive(&dump.join(name), *big);
    }
    let sim = pve_sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.path().to_path_buf(),
        node: "pve".into(),
        nodes,
        faults: Default::default(),
        time_scale: 0.02,
        guests: RuntimeKind::Lxc,
    })
    .await
    .unwrap();
    let secret = std::fs::read_to_string(dir.path().join("felhom-agent.token")).unwrap();
    let client = client_for(&sim, "felhom@pve!agent", secret.trim());
    (dir, sim, client)
}

#[tokio::test]
async fn lxc_runtime_sizes_restores_templates_and_clones_on_disk() {
    let big = "vzdump-lxc-9101-2026_06_09-20_41_10.tar.zst";
    let (dir, sim, felhom) = lxc_sim(Vec::new(), &[(GOLDEN, 0), (big, 3 << 20)]).await;
    let reply: Value = felhom
        .side_channel_post(
            "/felhom-sim/tokens",
            &json!({ "userid": "ops@pve", "tokenid": "t", "privsep": true,
                     "acl": [{ "path": "/", "privs": ["VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone",
                       "VM.Config.Disk", "VM.Config.Network", "VM.Config.Options", "VM.PowerMgmt",
                       "Datastore.AllocateSpace", "Datastore.Audit", "SDN.Use", "Sys.Audit"] }] }),
            sim.side_channel_secret(),
        )
        .await
        .unwrap();
    let c = client_for(&sim, "ops@pve!t", reply["secret"].as_str().unwrap());
    let w = WaitOptions::default();
    let vols = std::fs::canonicalize(dir.path())
        .unwrap()
        .join("lxc/volumes/local-lvm");
    let restore = |vmid: u32, archive: &str, extra: Vec<(String, String)>| {
        let mut p = vec![
            ("vmid".to_string(), vmid.to_string()),
            ("ostemplate".to_string(), format!("local:backup/{archive}")),
            ("restore".to_string(), "1".to_string()),
            ("storage".to_string(), "local-lvm".to_string()),
        ];
        p.extend(extra);
        p
    };

    // Too small: 3 MiB of content into a 1 MiB rootfs fails as ENOSPC, and nothing stays.
    let upid = c
        .lxc_create(
            "pve",
            &restore(1100, big, vec![("rootfs".into(), "local-lvm:0.001".into())]),
        )
        .await
        .unwrap();
    let r = c.wait_task(&upid, &w).await;
    match &r {
        Err(ApiError::TaskFailed { exitstatus, .. }) => {
            assert!(
                exitstatus.contains("unable to restore CT 1100"),
                "{exitstatus}"
            );
            // PVE's exit status names tar's failed command; tar's ENOSPC line is in the log.
            let log = c.task_log(&upid, 0, 500).await.unwrap().join("\n");
            assert!(
                exitstatus.contains(texts::NO_SPACE) || log.contains(texts::NO_SPACE),
                "{exitstatus}\n{log}"
            );
        }
        other => panic!("a too-small rootfs restored: {other:?}"),
    }
    assert!(matches!(
        c.lxc_config("pve", vmid(1100)).await,
        Err(ApiError::NotFound { .. })
    ));
    assert!(
        !vols.join("vm-1100-disk-0").exists(),
        "the volume is removed"
    );
    // Large enough: the same archive restores.
    let upid = c
        .lxc_create(
            "pve",
            &restore(1100, big, vec![("rootfs".into(), "local-lvm:0.01".into())]),
        )
        .await
        .unwrap();
    c.wait_task(&upid, &w).await.unwrap();

    // Template: the volume directory becomes base-9000-disk-0.
    let upid = c
        .lxc_create("pve", &restore(9000, GOLDEN, vec![]))
        .await
        .unwrap();
    c.wait_task(&upid, &w).await.unwrap();
    let t = c.lxc_template("pve", vmid(9000)).await.unwrap().unwrap();
    c.wait_task(&t, &w).await.unwrap();
    let base = vols.join("base-9000-disk-0");
    assert!(base.join("etc/machine-id").is_file(), "{}", base.display());
    assert!(!vols.join("vm-9000-disk-0").exists());

    // Linked clone: a copy whose machine-id is emptied, the base's untouched, ids shifted.
    let u = c
        .lxc_clone("pve", vmid(9000), vmid(1001), &[])
        .await
        .unwrap();
    c.wait_task(&u, &w).await.unwrap();
    let clone = vols.join("vm-1001-disk-0");
    assert_eq!(
        std::fs::read_to_string(clone.join("etc/machine-id")).unwrap(),
        "\n"
    );
    assert_eq!(
        std::fs::read_to_string(base.join("etc/machine-id")).unwrap(),
        MACHINE_ID
    );
    let m = std::fs::metadata(clone.join("usr/lib/systemd/systemd")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (100_000, 0o755));

    // Destroy the clone, then the template: nothing is left on disk.
    for v in [1001, 9000, 1100] {
        let u = c.lxc_delete("pve", vmid(v), true, true).await.unwrap();
        c.wait_task(&u, &w).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let left: Vec<_> = std::fs::read_dir(&vols)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    sim.shutdown().await;
}

/// The lxc runtime with two nodes (`--guests lxc --nodes pve1,pve2`): its volumes and
/// containers are keyed by volume id and VMID, unique in the whole simulator, so every node
/// shares one volume directory and one set of bridge namespaces. A restore on `pve2` unpacks
/// its rootfs; an offline migration to `pve1` (the side channel, as `pct migrate`) leaves
/// the rootfs where the runtime finds it, and a destroy on `pve1` removes it.
#[tokio::test]
async fn lxc_runtime_serves_two_nodes() {
    let (dir, sim, c) = lxc_sim(vec!["pve1".into(), "pve2".into()], &[(GOLDEN, 0)]).await;
    let w = WaitOptions::default();
    let vols = std::fs::canonicalize(dir.path())
        .unwrap()
        .join("lxc/volumes/local-lvm");
    let p = vec![
        ("vmid".to_string(), "1200".to_string()),
        ("ostemplate".to_string(), GOLDEN_VOLID.to_string()),
        ("restore".to_string(), "1".to_string()),
        ("storage".to_string(), "local-lvm".to_string()),
    ];
    let u = c.lxc_create("pve2", &p).await.unwrap();
    assert_eq!(u.node, "pve2");
    c.wait_task(&u, &w).await.unwrap();
    let rootfs = vols.join("vm-1200-disk-0");
    assert!(
        rootfs.join("etc/machine-id").is_file(),
        "{}",
        rootfs.display()
    );

    let moved: Value = c
        .side_channel_post(
            "/felhom-sim/migrate",
            &json!({ "vmid": 1200, "node": "pve1" }),
            sim.side_channel_secret(),
        )
        .await
        .unwrap();
    assert_eq!(moved["from"], "pve2");
    assert!(rootfs.join("etc/machine-id").is_file());
    c.lxc_config("pve1", vmid(1200)).await.unwrap();
    let u = c.lxc_delete("pve1", vmid(1200), true, true).await.unwrap();
    assert_eq!(u.node, "pve1");
    c.wait_task(&u, &w).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!rootfs.exists(), "the rootfs is removed");
    sim.shutdown().await;
}
