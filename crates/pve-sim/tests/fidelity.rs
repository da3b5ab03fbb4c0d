//! Simulator fidelity, round 2 (docs/pve-fidelity.md, the top 10 and §2 (d)): each test drives
//! the real client over HTTPS and follows the Perl source its comment names (`C:` is
//! pve-container `src/PVE/`, `S:` pve-storage `src/PVE/`, `A:` pve-access-control `src/PVE/`,
//! `M:` pve-manager `PVE/`, as in the audit).

mod common;
use std::time::Duration;

use common::*;
use pve_api::{ApiError, StorageVolume, TaskFailure, WaitOptions};
use serde_json::json;

/// The privileges a restore into a pool needs, granted on the pool only (plus the archive
/// and the storage): what `felhom role` prints for a pool.
const POOL_PRIVS: &[&str] = &[
    "VM.Allocate",
    "VM.Config.Disk",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Audit",
];

fn params(vmid: u32, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = vec![
        ("vmid".into(), vmid.to_string()),
        ("ostemplate".into(), GOLDEN_VOLID.into()),
        ("restore".into(), "1".into()),
    ];
    p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    p
}

/// The volume ids `local-lvm` lists for `vmid` (its storage content, filtered as PVE does),
/// sorted.
async fn lvm_volumes(c: &pve_api::PveClient, vmid: u32) -> Vec<String> {
    let v: Vec<StorageVolume> = c
        .get(
            "/nodes/pve/storage/local-lvm/content",
            &[("vmid", vmid.to_string())],
        )
        .await
        .unwrap();
    let mut names: Vec<String> = v.into_iter().map(|v| v.volid).collect();
    names.sort_unstable();
    names
}

async fn make_pool(env: &Env, pool: &str) {
    let admin = env
        .token(
            "pooladmin",
            json!([{ "path": "/pool", "privs": ["Pool.Allocate"], "propagate": true }]),
        )
        .await;
    let _: serde_json::Value = admin
        .post("/pools", &[("poolid", pool.to_string())])
        .await
        .unwrap();
}

/// Top #2, R1, R4: `check_ct_modify_config_perm` asks `check_vm_perm` with the pool, which
/// accepts a grant on `/pool/<pool>` before looking at `/vms/<vmid>` (C:LXC.pm
/// `check_ct_modify_config_perm`; A:RPCEnvironment.pm `check_vm_perm`). With a `rootfs` in
/// the request, the default `storage` is not checked (C:API2/LXC.pm `create_vm`, the
/// `$check_and_activate_storage` calls), so no grant on `local` is needed.
#[tokio::test]
async fn a_pool_grant_is_enough_for_a_restore_into_that_pool() {
    let env = Env::start(0.02, "").await;
    make_pool(&env, "team").await;
    // Per-key privileges on the pool only; the storages (the archive's `local` too) and the
    // archive's owner as the restore needs them anyway.
    let narrow_local = env
        .token(
            "pooled2",
            json!([
                { "path": "/pool/team", "privs": POOL_PRIVS, "propagate": true },
                { "path": "/storage", "privs": ["Datastore.AllocateSpace", "Datastore.Audit"], "propagate": true },
                { "path": "/vms/9100", "privs": ["VM.Backup"], "propagate": true },
                { "path": "/sdn", "privs": ["SDN.Use"], "propagate": true },
            ]),
        )
        .await;
    let p = params(
        1500,
        &[
            ("pool", "team"),
            ("cores", "1"),
            ("memory", "1024"),
            ("hostname", "pooled"),
            ("rootfs", "local-lvm:1"),
            ("mp0", "local-lvm:1,mp=/srv"),
        ],
    );
    let upid = narrow_local.lxc_create("pve", &p).await.unwrap();
    narrow_local
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1500)).await.unwrap();
    assert_eq!(cfg.hostname(), Some("pooled"));
    // Outside a pool the same token is refused on /vms/<vmid>.
    let e = narrow_local
        .lxc_create("pve", &params(1501, &[("cores", "1")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::Permission { path: Some(path), .. } if path == "/vms/1501"),
        "{e:?}"
    );
}

/// Top #3, X1: `destroy_vm`'s worker frees the volumes with the config as it was (marker and
/// all, no lock), then `destroy_lxc_container` writes the replacement config
/// `{ lock => 'destroyed' }`, and the config goes last (C:API2/LXC.pm `destroy_vm`;
/// C:LXC.pm `destroy_lxc_container`).
#[tokio::test]
async fn lock_destroyed_shows_only_after_the_volumes_are_freed() {
    let env = Env::start(1.0, "").await;
    env.restore(1510, &[("tags", "felhom-marker")])
        .await
        .unwrap();
    let upid = env
        .client
        .lxc_delete("pve", vmid(1510), false, false)
        .await
        .unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1510)).await.unwrap();
    assert_eq!(cfg.get_str("lock"), None, "no lock while the volumes go");
    assert_eq!(cfg.get_str("tags"), Some("felhom-marker"));
    let mut saw_destroyed = false;
    for _ in 0..400 {
        match env.client.lxc_config("pve", vmid(1510)).await {
            Ok(cfg) if cfg.get_str("lock") == Some("destroyed") => {
                assert_eq!(cfg.get_str("tags"), None, "only the lock is left");
                assert_eq!(cfg.hostname(), None);
                let vols = env
                    .client
                    .storage_content("pve", "local-lvm", None)
                    .await
                    .unwrap();
                assert!(
                    vols.iter().all(|v| !v.volid.contains("vm-1510-")),
                    "volumes are freed before the lock: {vols:?}"
                );
                saw_destroyed = true;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("config gone before `lock: destroyed` was seen: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(saw_destroyed);
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        env.client.lxc_config("pve", vmid(1510)).await,
        Err(ApiError::NotFound { .. })
    ));
}

/// Top #4, R12, Z1: `create_disks` allocates `int(size_gb * 1024) * 1024` KiB, whole MiB
/// (C:LXC.pm `create_disks`), and `resize_vm` compares the request with
/// `volume_size_info`, the volume's size on its storage (C:API2/LXC.pm `resize_vm`).
#[tokio::test]
async fn new_volumes_are_whole_mib_and_resize_compares_with_the_storage() {
    let env = Env::start(0.02, "").await;
    env.restore(1520, &[("rootfs", "local-lvm:1.2695")])
        .await
        .unwrap();
    let vols = env
        .client
        .storage_content("pve", "local-lvm", None)
        .await
        .unwrap();
    let root = vols.iter().find(|v| v.volid.contains("vm-1520-")).unwrap();
    assert_eq!(root.size, Some(1299 << 20), "{root:?}");
    let e = env
        .client
        .lxc_resize("pve", vmid(1520), "rootfs", "1299M")
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::AlreadyAtSize { .. }), "{e:?}");
}

/// Top #5, Z2: `resize_vm` runs `$load_and_check` on the call and again in the worker under
/// the flock (C:API2/LXC.pm `resize_vm`), so an identical resize that passed its call while
/// the first was running fails in its task once the first is done.
#[tokio::test]
async fn a_queued_identical_resize_fails_in_its_task() {
    let env = Env::start(0.2, "").await;
    env.restore(1530, &[]).await.unwrap();
    let first = env
        .client
        .lxc_resize("pve", vmid(1530), "rootfs", "12G")
        .await
        .unwrap();
    // The second comes while the first runs (2.4 s here) and within its own lock wait (2 s)
    // of the first's end.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = env
        .client
        .lxc_resize("pve", vmid(1530), "rootfs", "12G")
        .await
        .unwrap();
    let w = WaitOptions::default();
    env.client.wait_task(&first, &w).await.unwrap();
    match env.client.wait_task(&second, &w).await {
        Err(ApiError::TaskFailed { kind, .. }) => assert_eq!(kind, TaskFailure::AlreadyAtSize),
        other => panic!("the queued resize must fail in its task: {other:?}"),
    }
}

/// Top #6 (R2, R3, R13): explicit mode in `create_vm` (C:API2/LXC.pm): an `mpN` without
/// `rootfs` is refused on the call; a bare `rootfs=16` reaches the per-key check raw and
/// `check_volume_access('16')` refuses a caller other than root@pam (S:Storage.pm
/// `check_volume_access`); a volume too small for what tar unpacks ends the task with
/// tar's failure and the worker removes the volumes and the placeholder
/// (C:LXC/Create.pm `restore_tar_archive`; C:API2/LXC.pm `create_vm`'s error path).
#[tokio::test]
async fn restore_in_explicit_mode_is_as_strict_as_pve() {
    let env = Env::start(0.02, "").await;
    let e = env
        .client
        .lxc_create(
            "pve",
            &params(
                1540,
                &[("mp0", "local-lvm:1,mp=/srv"), ("storage", "local-lvm")],
            ),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("mount points configured, but 'rootfs' not set - aborting"),
        "{e}"
    );
    let e = env
        .client
        .lxc_create(
            "pve",
            &params(1540, &[("rootfs", "16"), ("storage", "local-lvm")]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(500), "{e:?}");
    assert!(
        e.to_string()
            .contains("Only root can pass arbitrary filesystem paths."),
        "{e}"
    );

    // A golden whose content (3 MiB) does not fit a 2 MiB rootfs.
    let dump = pve_sim::dump_dir(env.dir.path(), "local");
    let big = "vzdump-lxc-9200-2026_06_09-20_41_10.tar.zst";
    let mut w = vzdump::ArchiveWriter::create(&dump.join(big), vzdump::Compression::Zstd).unwrap();
    w.pct_conf(&pct_conf("")).unwrap();
    w.dir("var", 0o755).unwrap();
    w.file("var/blob", 0o644, &vec![7u8; 3 << 20]).unwrap();
    w.finish().unwrap();
    let mut p = params(
        1541,
        &[("rootfs", "local-lvm:0.002"), ("storage", "local-lvm")],
    );
    p[1].1 = format!("local:backup/{big}");
    let upid = env.client.lxc_create("pve", &p).await.unwrap();
    match env.client.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed {
            exitstatus,
            log_tail,
            ..
        }) => {
            assert!(
                exitstatus.starts_with("unable to restore CT 1541 - "),
                "{exitstatus}"
            );
            assert!(
                log_tail
                    .iter()
                    .any(|l| l.contains("var/blob: Cannot write: No space left on device")),
                "{log_tail:?}"
            );
        }
        other => panic!("a too-small rootfs must fail the restore: {other:?}"),
    }
    let st = env.state().await;
    assert!(
        st["guests"].as_array().unwrap().is_empty(),
        "placeholder left: {st}"
    );
    assert!(st["volumes"].as_array().unwrap().is_empty(), "{st}");
    // The same archive fits a 4 MiB rootfs.
    p[3].1 = "local-lvm:0.004".into();
    let upid = env.client.lxc_create("pve", &p).await.unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
}

/// Top #7, R6: the archive is only parsed and access-checked on the call
/// (S:Storage.pm `check_volume_access`); the worker, after the `lock: create` placeholder,
/// fails in `abs_filesystem_path` with `can't find file '<volid>'` (S:Storage.pm), prefixed
/// by `create_vm`'s `unable to restore CT <id> -`.
#[tokio::test]
async fn a_missing_archive_fails_the_task_not_the_call() {
    let env = Env::start(0.02, "").await;
    let gone = "local:backup/vzdump-lxc-9100-2020_01_01-00_00_00.tar.zst";
    let mut p = params(1550, &[("storage", "local-lvm")]);
    p[1].1 = gone.into();
    let upid = env.client.lxc_create("pve", &p).await.unwrap();
    match env.client.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed {
            exitstatus, kind, ..
        }) => {
            assert_eq!(
                exitstatus,
                format!("unable to restore CT 1550 - can't find file '{gone}'")
            );
            assert_eq!(kind, TaskFailure::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        env.client.lxc_config("pve", vmid(1550)).await,
        Err(ApiError::NotFound { .. })
    ));
}

/// Top #8: start, stop, shutdown, reboot, resize and destroy take the config flock only in
/// their worker (C:API2/LXC/Status.pm `vm_start` … workers, C:API2/LXC.pm `resize_vm`,
/// `destroy_vm`), so a lock timeout there is a failed task; PUT config locks on the call
/// (C:API2/LXC/Config.pm `update_vm`; G:AbstractConfig.pm `lock_config`).
#[tokio::test]
async fn an_injected_lock_timeout_is_a_task_failure_where_pve_locks_in_the_worker() {
    let env = Env::start(0.02, "").await;
    env.restore(1560, &[]).await.unwrap();
    let env = env.restart_with("lock500=1.0,seed=5").await;
    let w = WaitOptions::default();
    for upid in [
        env.client.lxc_start("pve", vmid(1560)).await.unwrap(),
        env.client
            .lxc_resize("pve", vmid(1560), "rootfs", "12G")
            .await
            .unwrap(),
        env.client
            .lxc_delete("pve", vmid(1560), false, false)
            .await
            .unwrap(),
    ] {
        match env.client.wait_task(&upid, &w).await {
            Err(ApiError::TaskFailed { kind, .. }) => assert_eq!(
                kind,
                TaskFailure::LockTimeout {
                    lock_file: "/run/lock/lxc/pve-config-1560.lock".into()
                }
            ),
            other => panic!("{upid}: {other:?}"),
        }
    }
    let put = env
        .client
        .lxc_update_config("pve", vmid(1560), &[("cores".into(), "1".into())], None)
        .await;
    assert!(matches!(put, Err(ApiError::LockTimeout { .. })), "{put:?}");
    // Nothing happened to the guest.
    let cfg = env.client.lxc_config("pve", vmid(1560)).await.unwrap();
    assert!(cfg.get_str("rootfs").unwrap().ends_with("size=8G"));
}

/// Top #9, A1, A2: `extractconfig` checks `VM.Backup` on the archive's owner even for a
/// holder of `Datastore.Allocate` (M:API2/VZDump.pm `extractconfig`); the content list keeps
/// only what passes `check_volume_access` for the caller and honours `vmid`
/// (S:API2/Storage/Content.pm `index`; S:Storage.pm `check_volume_access`).
#[tokio::test]
async fn extractconfig_and_storage_content_check_volume_access() {
    let env = Env::start(0.02, "").await;
    env.restore(1570, &[]).await.unwrap();
    let store_admin = env
        .token(
            "storeadmin",
            json!([{ "path": "/storage", "privs": ["Datastore.Allocate", "Datastore.Audit"], "propagate": true }]),
        )
        .await;
    let e = store_admin
        .vzdump_extractconfig("pve", GOLDEN_VOLID)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::Permission { path: Some(p), .. } if p == "/vms/9100"),
        "{e:?}"
    );
    let auditor = env
        .token(
            "auditor",
            json!([{ "path": "/storage", "privs": ["Datastore.Audit", "Datastore.AllocateSpace"], "propagate": true }]),
        )
        .await;
    for sid in ["local", "local-lvm"] {
        let seen = auditor.storage_content("pve", sid, None).await.unwrap();
        assert!(seen.is_empty(), "{sid}: {seen:?}");
    }
    let all = env
        .client
        .storage_content("pve", "local", None)
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(lvm_volumes(&env.client, 1570).await.len(), 1);
    assert!(lvm_volumes(&env.client, 1571).await.is_empty());
}

/// Top #10, R9: an archived `template: 1` makes the restored CT a template again
/// (C:API2/LXC.pm `create_vm`, `$was_template`), and its start fails in the worker
/// (C:API2/LXC/Status.pm `vm_start`).
#[tokio::test]
async fn an_archived_template_stays_a_template_and_does_not_start() {
    let env = Env::start(0.02, "").await;
    let dump = pve_sim::dump_dir(env.dir.path(), "local");
    let name = "vzdump-lxc-9300-2026_06_09-20_41_10.tar.zst";
    write_golden(&dump.join(name), &pct_conf("template: 1\n"), false, None);
    let mut p = params(1580, &[("storage", "local-lvm")]);
    p[1].1 = format!("local:backup/{name}");
    let upid = env.client.lxc_create("pve", &p).await.unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1580)).await.unwrap();
    assert_eq!(cfg.get("template").and_then(|v| v.as_u64()), Some(1));
    let upid = env.client.lxc_start("pve", vmid(1580)).await.unwrap();
    match env.client.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed { exitstatus, .. }) => {
            assert_eq!(exitstatus, "you can't start a CT if it's a template")
        }
        other => panic!("{other:?}"),
    }
}

/// R16: after the extraction, `create_vm` calls `template_create` for an archived template,
/// which renames every volume with `vdisk_create_base` (`vm-<id>-disk-N` →
/// `base-<id>-disk-N`) and writes them into the config (C:API2/LXC.pm `create_vm`,
/// `$was_template`; C:LXC.pm `template_create`; S:Storage.pm `vdisk_create_base`). A
/// storage without the `template` feature (thick LVM) fails the restore inside the worker,
/// which then removes what it made (`destroy_disks`, `destroy_config`).
#[tokio::test]
async fn a_restored_template_has_base_volumes() {
    let env = Env::start(0.02, "").await;
    let dump = pve_sim::dump_dir(env.dir.path(), "local");
    let name = "vzdump-lxc-9300-2026_06_09-20_41_10.tar.zst";
    write_golden(&dump.join(name), &pct_conf("template: 1\n"), false, None);
    let archive = format!("local:backup/{name}");
    let mut p = params(
        1585,
        &[("rootfs", "local-lvm:1"), ("mp0", "local-lvm:1,mp=/srv")],
    );
    p[1].1 = archive.clone();
    let upid = env.client.lxc_create("pve", &p).await.unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1585)).await.unwrap();
    assert_eq!(cfg.get("template").and_then(|v| v.as_u64()), Some(1));
    assert!(
        cfg.get_str("rootfs")
            .unwrap()
            .starts_with("local-lvm:base-1585-disk-0,"),
        "{:?}",
        cfg.get_str("rootfs")
    );
    assert!(
        cfg.get_str("mp0")
            .unwrap()
            .starts_with("local-lvm:base-1585-disk-1,"),
        "{:?}",
        cfg.get_str("mp0")
    );
    assert_eq!(
        lvm_volumes(&env.client, 1585).await,
        ["local-lvm:base-1585-disk-0", "local-lvm:base-1585-disk-1"]
    );

    // Thick LVM has no `template` feature: the task fails and nothing of 1586 is left.
    let _: serde_json::Value = env
        .client
        .side_channel_post(
            "/felhom-sim/storages",
            &json!({ "id": "thick", "type": "lvm", "content": ["rootdir", "images"] }),
            env.sim().side_channel_secret(),
        )
        .await
        .unwrap();
    let mut p = params(1586, &[("rootfs", "thick:1")]);
    p[1].1 = archive;
    let upid = env.client.lxc_create("pve", &p).await.unwrap();
    match env.client.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed { exitstatus, .. }) => assert_eq!(
            exitstatus,
            "unable to restore CT 1586 - Template feature is not available for 'thick:vm-1586-disk-0'"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        env.client.lxc_config("pve", vmid(1586)).await,
        Err(ApiError::NotFound { .. })
    ));
    let content: Vec<StorageVolume> = env
        .client
        .get("/nodes/pve/storage/thick/content", &[])
        .await
        .unwrap();
    assert!(content.is_empty(), "{content:?}");
}

/// R15: a forced restore (`restore=1, force=1`) onto an existing CT (C:API2/LXC.pm
/// `create_vm`): refused on the call while the CT runs (`can't overwrite running
/// container`) or is protected (`check_protection`); `VM.Backup` on `/vms/<id>` is enough
/// instead of `VM.Allocate`; `create_and_lock_config($vmid, $force)` puts `lock: create` on
/// the existing config; the worker makes the new volumes, then destroys the old ones
/// (`destroy_lxc_container` with `{ lock => 'create' }`). A failure before the new volumes
/// only removes the lock (`$destroy_config_on_error` still false), one after them removes
/// the config too.
#[tokio::test]
async fn a_forced_restore_replaces_an_existing_ct_as_pve_does() {
    let env = Env::start(0.5, "").await;
    let c = &env.client;
    let wait = |upid| async move { c.wait_task(&upid, &WaitOptions::default()).await };
    env.restore(1600, &[("hostname", "old")]).await.unwrap();
    let volumes = || lvm_volumes(c, 1600);
    assert_eq!(volumes().await, ["local-lvm:vm-1600-disk-0"]);
    let forced = |extra: &[(&str, &str)]| {
        let mut p = params(1600, &[("storage", "local-lvm"), ("force", "1")]);
        p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        p
    };

    // Without force the VMID is taken; while it runs, or protected, force is refused too.
    let e = c
        .lxc_create("pve", &params(1600, &[("storage", "local-lvm")]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    wait(c.lxc_start("pve", vmid(1600)).await.unwrap())
        .await
        .unwrap();
    let e = c.lxc_create("pve", &forced(&[])).await.unwrap_err();
    assert_eq!(e.status(), Some(500), "{e:?}");
    assert!(
        e.to_string().contains("can't overwrite running container"),
        "{e}"
    );
    wait(c.lxc_stop("pve", vmid(1600)).await.unwrap())
        .await
        .unwrap();
    let set = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    c.lxc_update_config("pve", vmid(1600), &set("protection", "1"), None)
        .await
        .unwrap();
    let e = c.lxc_create("pve", &forced(&[])).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("unable to restore CT 1600 - protection mode enabled"),
        "{e}"
    );
    c.lxc_update_config("pve", vmid(1600), &set("protection", "0"), None)
        .await
        .unwrap();

    // A missing archive fails the task before any volume: the old CT stays, unlocked.
    let mut p = forced(&[]);
    p[1].1 = "local:backup/vzdump-lxc-9100-2020_01_01-00_00_00.tar.zst".into();
    let upid = c.lxc_create("pve", &p).await.unwrap();
    assert!(matches!(wait(upid).await, Err(ApiError::TaskFailed { .. })));
    let cfg = c.lxc_config("pve", vmid(1600)).await.unwrap();
    assert_eq!(cfg.get_str("lock"), None);
    assert_eq!(cfg.hostname(), Some("old"));
    assert_eq!(volumes().await, ["local-lvm:vm-1600-disk-0"]);

    // VM.Backup on the CT replaces VM.Allocate; the old volume goes after the new one came.
    let backup_only = env
        .token(
            "backuponly",
            json!([
                { "path": "/vms/1600", "privs": ["VM.Backup", "VM.Config.Network", "VM.Config.Options"], "propagate": true },
                { "path": "/vms/9100", "privs": ["VM.Backup"], "propagate": true },
                { "path": "/storage", "privs": ["Datastore.AllocateSpace", "Datastore.Audit"], "propagate": true },
                { "path": "/sdn", "privs": ["SDN.Use"], "propagate": true },
            ]),
        )
        .await;
    let e = backup_only
        .lxc_create(
            "pve",
            &params(1601, &[("storage", "local-lvm"), ("force", "1")]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::Permission { path: Some(path), .. } if path == "/vms/1601"),
        "VM.Backup counts only for an existing CT: {e:?}"
    );
    let upid = backup_only
        .lxc_create("pve", &forced(&[("hostname", "new")]))
        .await
        .unwrap();
    assert_eq!(
        c.lxc_config("pve", vmid(1600))
            .await
            .unwrap()
            .get_str("lock"),
        Some("create"),
        "lock: create on the existing config from the call on"
    );
    backup_only
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    let cfg = c.lxc_config("pve", vmid(1600)).await.unwrap();
    assert_eq!(cfg.hostname(), Some("new"));
    assert_eq!(cfg.get_str("lock"), None);
    assert!(
        cfg.get_str("rootfs")
            .unwrap()
            .starts_with("local-lvm:vm-1600-disk-1,"),
        "{:?}",
        cfg.get_str("rootfs")
    );
    assert_eq!(volumes().await, ["local-lvm:vm-1600-disk-1"]);

    // A failure after the new volumes (tar: no space) leaves nothing of the CT.
    let dump = pve_sim::dump_dir(env.dir.path(), "local");
    let big = "vzdump-lxc-9200-2026_06_09-20_41_10.tar.zst";
    let mut w = vzdump::ArchiveWriter::create(&dump.join(big), vzdump::Compression::Zstd).unwrap();
    w.pct_conf(&pct_conf("")).unwrap();
    w.dir("var", 0o755).unwrap();
    w.file("var/blob", 0o644, &vec![7u8; 3 << 20]).unwrap();
    w.finish().unwrap();
    let mut p = forced(&[("rootfs", "local-lvm:0.002")]);
    p[1].1 = format!("local:backup/{big}");
    let upid = c.lxc_create("pve", &p).await.unwrap();
    assert!(matches!(wait(upid).await, Err(ApiError::TaskFailed { .. })));
    assert!(matches!(
        c.lxc_config("pve", vmid(1600)).await,
        Err(ApiError::NotFound { .. })
    ));
    assert!(volumes().await.is_empty());
}

/// R15, the other half: a plain create (no `restore`) from a `vztmpl` template, as
/// `create_vm` does it (pve-container `src/PVE/API2/LXC.pm`): `check_volume_access` with
/// content type `vztmpl` (pve-storage `src/PVE/Storage.pm` L619-656: the type first, then
/// `Datastore.AllocateSpace` or `Datastore.Audit` on the storage), worker `vzcreate`, rootfs
/// `<storage>:4` by default ("defaults to 4GB"), `hostname` `CT<vmid>`, memory and swap 512,
/// `post_create_hook` (`src/PVE/LXC/Setup.pm`: "Creating SSH host key"), and a failure
/// named `unable to create CT <id> -` that leaves nothing behind.
#[tokio::test]
async fn a_plain_create_from_a_template_makes_a_ct_as_pve_does() {
    let env = Env::start(0.05, "").await;
    let c = &env.client;
    let name = "debian-12-standard_12.7-1_amd64.tar.zst";
    let dir = pve_sim::template_dir(env.dir.path(), "local");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), b"not read by the model").unwrap();
    let template = format!("local:vztmpl/{name}");
    let create = |id: u32, tmpl: &str, extra: &[(&str, &str)]| {
        let mut p = vec![
            ("vmid".to_string(), id.to_string()),
            ("ostemplate".to_string(), tmpl.to_string()),
        ];
        p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        p
    };
    let volumes = |id: u32| lvm_volumes(c, id);

    // A backup is no template: the content type is checked before anything is made.
    let e = c
        .lxc_create("pve", &create(1700, GOLDEN_VOLID, &[]))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "unable to use volume {GOLDEN_VOLID} - content type needs to be 'vztmpl'"
        )),
        "{e}"
    );
    // Without Datastore.AllocateSpace or Datastore.Audit on the template's storage: 403.
    let blind = env
        .token(
            "blind",
            json!([
                { "path": "/vms", "privs": ["VM.Allocate", "VM.Config.Disk", "VM.Config.Options"], "propagate": true },
                { "path": "/storage/local-lvm", "privs": ["Datastore.AllocateSpace"], "propagate": true },
            ]),
        )
        .await;
    let e = blind
        .lxc_create("pve", &create(1700, &template, &[("storage", "local-lvm")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::Permission { path: Some(p), .. } if p == "/storage/local"),
        "{e:?}"
    );
    assert!(matches!(
        c.lxc_config("pve", vmid(1700)).await,
        Err(ApiError::NotFound { .. })
    ));

    // Unprivileged unless asked: a privileged create needs Sys.Modify on `/`, which the
    // felhom token does not have; `force` does not let a create replace a CT.
    let e = c
        .lxc_create(
            "pve",
            &create(
                1700,
                &template,
                &[("storage", "local-lvm"), ("unprivileged", "0")],
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::Permission { path: Some(p), .. } if p == "/"),
        "{e:?}"
    );

    // The create: task vzcreate, a 4 GiB rootfs on `storage`, PVE's defaults, a NIC's MAC.
    let upid = c
        .lxc_create(
            "pve",
            &create(
                1700,
                &template,
                &[
                    ("storage", "local-lvm"),
                    ("net0", "name=eth0,bridge=vmbr0,ip=dhcp"),
                ],
            ),
        )
        .await
        .unwrap();
    assert!(upid.to_string().contains(":vzcreate:1700:"), "{upid}");
    c.wait_task(&upid, &WaitOptions::default()).await.unwrap();
    let cfg = c.lxc_config("pve", vmid(1700)).await.unwrap();
    assert_eq!(cfg.hostname(), Some("CT1700"));
    assert_eq!(cfg.get_string("memory").as_deref(), Some("512"));
    assert_eq!(cfg.get_string("swap").as_deref(), Some("512"));
    assert_eq!(cfg.get_str("ostype"), Some("debian"));
    assert_eq!(cfg.get_str("arch"), Some("amd64"));
    assert_eq!(cfg.get_str("lock"), None);
    assert_eq!(cfg.get_string("unprivileged").as_deref(), Some("1"));
    assert_eq!(
        cfg.get_str("rootfs"),
        Some("local-lvm:vm-1700-disk-0,size=4G")
    );
    assert!(
        cfg.get_str("net0").unwrap().contains("hwaddr="),
        "{:?}",
        cfg.get_str("net0")
    );
    assert_eq!(volumes(1700).await, ["local-lvm:vm-1700-disk-0"]);
    let log = c.task_log(&upid, 0, 500).await.unwrap().join("\n");
    assert!(log.contains("Creating SSH host key"), "{log}");

    let e = c
        .lxc_create(
            "pve",
            &create(1700, &template, &[("storage", "local-lvm"), ("force", "1")]),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("CT 1700 already exists on node 'pve'"),
        "{e}"
    );

    // A missing template fails the task, named as a create, and leaves no config or volume.
    let upid = c
        .lxc_create(
            "pve",
            &create(
                1701,
                "local:vztmpl/missing.tar.zst",
                &[("storage", "local-lvm"), ("rootfs", "local-lvm:2")],
            ),
        )
        .await
        .unwrap();
    match c.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed { exitstatus, .. }) => assert!(
            exitstatus.contains(
                "unable to create CT 1701 - can't find file 'local:vztmpl/missing.tar.zst'"
            ),
            "{exitstatus}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.lxc_config("pve", vmid(1701)).await,
        Err(ApiError::NotFound { .. })
    ));
    assert!(volumes(1701).await.is_empty());
}

/// R8: `create_vm`'s worker checks the bridge of every archived NIC the request does not
/// set, before anything else, `unique` or not (C:API2/LXC.pm `create_vm`,
/// `check_bridge_access`).
#[tokio::test]
async fn unique_does_not_skip_sdn_use_on_archived_bridges() {
    let env = Env::start(0.02, "").await;
    let no_sdn = env
        .token(
            "nosdn",
            json!([{ "path": "/", "privs": ["VM.Allocate", "VM.Backup", "VM.Config.Disk", "VM.Config.Network", "VM.Config.Options", "Datastore.AllocateSpace", "Datastore.Audit"], "propagate": true }]),
        )
        .await;
    let upid = no_sdn
        .lxc_create(
            "pve",
            &params(1590, &[("storage", "local-lvm"), ("unique", "1")]),
        )
        .await
        .unwrap();
    match no_sdn.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed { exitstatus, .. }) => assert!(
            exitstatus.contains("/sdn/zones/localnetwork/vmbr0") && exitstatus.contains("SDN.Use"),
            "{exitstatus}"
        ),
        other => panic!("{other:?}"),
    }
}

/// `/version`'s `repoid` is the short git revision in hex (PVE's schema: `[0-9a-fA-F]{8,64}`,
/// M:API2/Version.pm).
#[tokio::test]
async fn version_repoid_is_hex() {
    let env = Env::start(0.02, "").await;
    let v = env.client.version().await.unwrap();
    let id = v.repoid.unwrap();
    assert!(
        (8..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
}

// Round 3 (docs/pve-fidelity.md §2 (d), the items round 2 left open).

/// S1: the status calls ask only `check_running`, false for a CT that does not exist: start
/// answers with a UPID and its worker's `load_config` fails the task; stop, shutdown and
/// reboot say the CT is not running (C:API2/LXC/Status.pm `vm_start`, `vm_stop`,
/// `vm_shutdown`, `vm_reboot`); `/interfaces` answers `null`, as `get_interfaces` finds no
/// PID (C:LXC.pm `get_interfaces`).
#[tokio::test]
async fn a_ct_that_does_not_exist_answers_as_on_pve() {
    let env = Env::start(0.02, "").await;
    let gone = vmid(1600);
    let upid = env.client.lxc_start("pve", gone).await.unwrap();
    match env.client.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed {
            exitstatus, kind, ..
        }) => {
            assert_eq!(exitstatus, pve_api::texts::no_config("pve", 1600));
            assert_eq!(kind, TaskFailure::NotFound);
        }
        other => panic!("{other:?}"),
    }
    for e in [
        env.client.lxc_stop("pve", gone).await.unwrap_err(),
        env.client.lxc_shutdown("pve", gone).await.unwrap_err(),
        env.client
            .post::<serde_json::Value>("/nodes/pve/lxc/1600/status/reboot", &[])
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, ApiError::NotRunning { .. }), "{e:?}");
    }
    assert_eq!(env.client.lxc_interfaces("pve", gone).await.unwrap(), None);
    assert!(env.state().await["guests"].as_array().unwrap().is_empty());
}

/// P3: `update_pct_config` runs `check_protection` for every `mpN`/`unusedN` delete (a key
/// that is set) and every `rootfs`/`mpN` set, not only for new volumes (C:LXC/Config.pm
/// `update_pct_config`; G:AbstractConfig.pm `check_protection`).
#[tokio::test]
async fn protection_blocks_every_drive_change() {
    let env = Env::start(0.02, "").await;
    env.restore(1610, &[]).await.unwrap();
    let put = |p: &[(&str, &str)]| {
        let p: Vec<(String, String)> = p
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let c = env.client.clone();
        async move { c.lxc_update_config("pve", vmid(1610), &p, None).await }
    };
    put(&[("mp0", "local-lvm:1,mp=/srv")]).await.unwrap();
    put(&[("protection", "1")]).await.unwrap();
    let e = put(&[("delete", "mp0")]).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("can't remove CT 1610 drive 'mp0' - protection mode enabled"),
        "{e}"
    );
    let cfg = env.client.lxc_config("pve", vmid(1610)).await.unwrap();
    let rootfs = cfg.get_str("rootfs").unwrap().to_string();
    let e = put(&[("rootfs", &rootfs)]).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("can't update CT 1610 drive 'rootfs' - protection mode enabled"),
        "{e}"
    );
    let mp0 = cfg.get_str("mp0").unwrap().to_string();
    let e = put(&[("mp0", &format!("{mp0},ro=1"))]).await.unwrap_err();
    assert!(e.to_string().contains("drive 'mp0'"), "{e}");
    let after = env.client.lxc_config("pve", vmid(1610)).await.unwrap();
    assert_eq!(after.get_str("mp0"), Some(mp0.as_str()));
    // Deleting a drive that is not set is only warned about.
    put(&[("delete", "mp5")]).await.unwrap();
}

/// A3: a caller may read its own permissions and, as a user, those of its tokens; a token
/// asking about its user (or anyone else) needs `Sys.Audit` on `/access`, and the answer is
/// the asked subject's (A:API2/AccessControl.pm `permissions`, `$check_self`,
/// `$check_owned_token`).
#[tokio::test]
async fn a_token_asking_about_its_user_needs_sys_audit() {
    let env = Env::start(0.02, "").await;
    let narrow = env
        .token(
            "a3",
            json!([{ "path": "/vms/1620", "privs": ["VM.Audit"], "propagate": true }]),
        )
        .await;
    let ask = |c: &pve_api::PveClient, userid: &str| {
        let c = c.clone();
        let q = vec![
            ("userid", userid.to_string()),
            ("path", "/vms/1620".to_string()),
        ];
        async move {
            c.get::<pve_api::Permissions>("/access/permissions", &q)
                .await
        }
    };
    let own = ask(&narrow, "narrow@pve!a3").await.unwrap();
    assert!(own["/vms/1620"].contains_key("VM.Audit"), "{own:?}");
    let e = ask(&narrow, "narrow@pve").await.unwrap_err();
    assert!(
        matches!(&e, ApiError::Permission { path: Some(p), .. } if p == "/access"),
        "{e:?}"
    );
    // The agent has Sys.Audit: it sees the narrow token's privileges, not its own.
    let theirs = ask(&env.client, "narrow@pve!a3").await.unwrap();
    assert_eq!(
        theirs["/vms/1620"].keys().collect::<Vec<_>>(),
        ["VM.Audit"],
        "{theirs:?}"
    );
}

/// R14: `ha-managed=1` needs `Sys.Console` on `/`, checked before the VMID
/// (C:API2/LXC.pm `create_vm`).
#[tokio::test]
async fn ha_managed_needs_sys_console() {
    let env = Env::start(0.02, "").await;
    let e = env.restore(1630, &[("ha-managed", "1")]).await.unwrap_err();
    assert!(
        matches!(&e, ApiError::Permission { path: Some(p), privilege: Some(v), .. } if p == "/" && v == "Sys.Console"),
        "{e:?}"
    );
    assert!(env.state().await["guests"].as_array().unwrap().is_empty());
}

/// Config keys of `$confdesc` the simulator did not know: `entrypoint`, `env` and `debug`
/// are "other" keys needing `VM.Config.Options`, `devN` is root's only
/// (C:LXC/Config.pm `$confdesc`, `$dev_desc`; C:LXC.pm `check_ct_modify_config_perm`). The
/// schema is checked first (K:JSONSchema.pm; `entrypoint` allows no control character but
/// tab).
#[tokio::test]
async fn entrypoint_env_debug_and_dev_are_config_keys() {
    let env = Env::start(0.02, "").await;
    env.restore(1640, &[("debug", "1")]).await.unwrap();
    let set = vec![
        (
            "entrypoint".to_string(),
            "/sbin/init --log-level=debug".to_string(),
        ),
        ("env".to_string(), "A=1\0B_2=two words".to_string()),
    ];
    env.client
        .lxc_update_config("pve", vmid(1640), &set, None)
        .await
        .unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1640)).await.unwrap();
    assert_eq!(
        cfg.get_str("entrypoint"),
        Some("/sbin/init --log-level=debug")
    );
    assert_eq!(cfg.get_str("env"), Some("A=1\0B_2=two words"));
    assert_eq!(cfg.get("debug").and_then(|v| v.as_u64()), Some(1));
    let e = env
        .client
        .lxc_update_config(
            "pve",
            vmid(1640),
            &[("dev0".into(), "/dev/fuse".into())],
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::Permission { message, .. } if message.contains("configuring device passthrough is only allowed for root@pam")),
        "{e:?}"
    );
    for (k, v) in [
        ("entrypoint", "/sbin/init\nrm"),
        ("env", "A=1\0=2"),
        ("dev0", "/dev/../etc/shadow"),
        ("dev1", "/dev/fuse,mode=999"),
    ] {
        let e = env
            .client
            .lxc_update_config("pve", vmid(1640), &[(k.into(), v.into())], None)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ApiError::Param { errors, .. } if errors.contains_key(k)),
            "{k}={v:?}: {e:?}"
        );
    }
}

/// P2: the per-feature diff of `check_ct_modify_config_perm` (C:LXC.pm): toggling only
/// `nesting` with `keyctl` kept needs `VM.Allocate`; dropping `keyctl` or an explicit
/// `keyctl=0` is an "other" change and root's only.
#[tokio::test]
async fn features_are_checked_per_feature_against_the_old_value() {
    let env = Env::start(0.02, "").await;
    env.restore(1650, &[]).await.unwrap();
    let tok = env
        .token(
            "feat",
            json!([{ "path": "/vms/1650", "privs": ["VM.Config.Options", "VM.Allocate", "VM.Audit"], "propagate": true }]),
        )
        .await;
    let put = |v: &str| {
        let c = tok.clone();
        let p = vec![("features".to_string(), v.to_string())];
        async move { c.lxc_update_config("pve", vmid(1650), &p, None).await }
    };
    put("keyctl=1,nesting=0").await.unwrap();
    for v in ["nesting=0", "keyctl=0,nesting=0"] {
        let e = put(v).await.unwrap_err();
        assert!(
            matches!(&e, ApiError::Permission { message, .. } if message.contains("changing feature flags (except nesting) is only allowed for root@pam")),
            "{v}: {e:?}"
        );
    }
    let cfg = env.client.lxc_config("pve", vmid(1650)).await.unwrap();
    assert_eq!(cfg.get_str("features"), Some("keyctl=1,nesting=0"));
}

/// P4: an `mpN` on another guest's existing volume passes `check_volume_access` with
/// `Datastore.Audit` on the storage and `VM.Config.Disk` on the owner (S:Storage.pm
/// `check_volume_access`; C:LXC.pm `check_ct_modify_config_perm`); the size is read from
/// the storage, and a volume that does not exist is only warned about
/// (C:LXC/Config.pm `apply_pending_mountpoint`, `$rescan_volume`).
#[tokio::test]
async fn a_mount_point_may_use_another_guests_volume() {
    let env = Env::start(0.02, "").await;
    env.restore(
        1660,
        &[("rootfs", "local-lvm:1"), ("mp0", "local-lvm:2,mp=/data")],
    )
    .await
    .unwrap();
    env.restore(1661, &[]).await.unwrap();
    let vol = env
        .client
        .lxc_config("pve", vmid(1660))
        .await
        .unwrap()
        .get_str("mp0")
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let grants = |owner_disk: bool| {
        let mut acl = vec![
            json!({ "path": "/vms/1661", "privs": ["VM.Config.Disk"], "propagate": true }),
            json!({ "path": "/storage/local-lvm", "privs": ["Datastore.Audit"], "propagate": true }),
        ];
        if owner_disk {
            acl.push(
                json!({ "path": "/vms/1660", "privs": ["VM.Config.Disk"], "propagate": true }),
            );
        }
        json!(acl)
    };
    let without = env.token("p4a", grants(false)).await;
    let mp = vec![("mp1".to_string(), format!("{vol},mp=/shared"))];
    let e = without
        .lxc_update_config("pve", vmid(1661), &mp, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ApiError::Permission { path: Some(p), .. } if p == "/vms/1660"),
        "{e:?}"
    );
    let with = env.token("p4b", grants(true)).await;
    with.lxc_update_config("pve", vmid(1661), &mp, None)
        .await
        .unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1661)).await.unwrap();
    assert_eq!(
        cfg.get_str("mp1"),
        Some(format!("{vol},mp=/shared,size=2G").as_str())
    );
    let missing = vec![(
        "mp2".to_string(),
        "local-lvm:vm-1660-disk-9,mp=/gone".to_string(),
    )];
    with.lxc_update_config("pve", vmid(1661), &missing, None)
        .await
        .unwrap();
}

/// Replacing `rootfs` by PUT: `vmconfig_apply_pending` copies it as given, with no
/// allocation and no hot-plug (C:LXC/Config.pm `update_pct_config`,
/// `vmconfig_apply_pending`; only `mpN` go through `apply_pending_mountpoint`).
#[tokio::test]
async fn rootfs_may_be_replaced_by_put() {
    let env = Env::start(0.02, "").await;
    env.restore(1670, &[]).await.unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1670)).await.unwrap();
    let new = format!("{},mountoptions=noatime", cfg.get_str("rootfs").unwrap());
    env.client
        .lxc_update_config("pve", vmid(1670), &[("rootfs".into(), new.clone())], None)
        .await
        .unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1670)).await.unwrap();
    assert_eq!(cfg.get_str("rootfs"), Some(new.as_str()));
    // On a running CT it waits in [pve:pending].
    let upid = env.client.lxc_start("pve", vmid(1670)).await.unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    let plain = new.replace(",mountoptions=noatime", "");
    env.client
        .lxc_update_config("pve", vmid(1670), &[("rootfs".into(), plain.clone())], None)
        .await
        .unwrap();
    let pending = env.client.lxc_pending("pve", vmid(1670)).await.unwrap();
    let e = pending.iter().find(|e| e.key == "rootfs").unwrap();
    assert_eq!(
        e.pending.as_ref().and_then(|v| v.as_str()),
        Some(plain.as_str())
    );
}
