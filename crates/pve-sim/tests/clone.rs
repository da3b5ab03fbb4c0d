//! Clone, template and `/cluster/resources` behave as PVE's sources say (audit §2 (b), (c)):
//! the real client over real HTTPS against the modelled runtime. Each test names the Perl
//! function it follows (pve-container `src/PVE/API2/LXC.pm` `clone_vm`, `template`;
//! pve-storage `*Plugin.pm` `volume_has_feature`, `Storage.pm` `vdisk_free`; pve-manager
//! `PVE/API2/Cluster.pm` `resources`).

mod common;

use common::*;
use pve_api::{texts, ApiError, ResourceType, TaskOutcome, WaitOptions};
use serde_json::{json, Value};

fn vol(v: &Value, key: &str) -> String {
    v["config"][key]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn guest(state: &Value, id: u32) -> Value {
    state["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// A token with every privilege on `/` (felhom's own token has no `VM.Clone`,
/// `Pool.Allocate`).
async fn admin(env: &Env) -> pve_api::PveClient {
    let privs: Vec<&str> = vec![
        "VM.Allocate",
        "VM.Audit",
        "VM.Clone",
        "VM.Config.Disk",
        "VM.Config.Network",
        "VM.Config.Options",
        "VM.Config.CPU",
        "VM.Config.Memory",
        "VM.PowerMgmt",
        "Datastore.Allocate",
        "Datastore.AllocateSpace",
        "Datastore.Audit",
        "SDN.Use",
        "Pool.Allocate",
        "Pool.Audit",
        "Sys.Audit",
        "Sys.Modify",
    ];
    env.token("admin", json!([{ "path": "/", "privs": privs }]))
        .await
}

async fn add_storage(env: &Env, id: &str, ty: &str) {
    let _: Value = env
        .client
        .side_channel_post(
            "/felhom-sim/storages",
            &json!({ "id": id, "type": ty, "content": ["rootdir", "images"] }),
            env.sim().side_channel_secret(),
        )
        .await
        .unwrap();
}

/// Restore the golden as `vmid` on `storage` and make it a template.
async fn template_on(
    env: &Env,
    c: &pve_api::PveClient,
    vmid: u32,
    storage: &str,
) -> Result<TaskOutcome, ApiError> {
    env.restore(vmid, &[("storage", storage)]).await.unwrap();
    let upid = c
        .lxc_template("pve", common::vmid(vmid))
        .await?
        .expect("the vztemplate task is in the task list");
    c.wait_task(&upid, &WaitOptions::default()).await
}

fn params(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `template`: answers null, runs `vztemplate` under the flock, renames the volume to
/// `base-…`, sets `template: 1`; a template does not start (`Status.pm` `vm_start`).
#[tokio::test]
async fn template_answers_null_renames_to_base_and_refuses_start() {
    let env = Env::start(0.05, "").await;
    let c = &admin(&env).await;
    env.restore(9000, &[]).await.unwrap();
    let answer: Value = c.post("/nodes/pve/lxc/9000/template", &[]).await.unwrap();
    assert_eq!(answer, Value::Null, "PVE returns undef, not the UPID");
    // The task is found in the node's task list: type vztemplate, id the VMID.
    let tasks: Vec<Value> = c
        .get(
            "/nodes/pve/tasks",
            &[("vmid", "9000".into()), ("source", "all".into())],
        )
        .await
        .unwrap();
    let upid: pve_api::Upid = tasks
        .iter()
        .find(|t| t["type"] == "vztemplate")
        .and_then(|t| t["upid"].as_str())
        .expect("a vztemplate task")
        .parse()
        .unwrap();
    assert_eq!(upid.id, "9000");
    c.wait_task(&upid, &WaitOptions::default()).await.unwrap();
    let cfg = c.lxc_config("pve", vmid(9000)).await.unwrap();
    assert_eq!(cfg.get("template"), Some(&json!(1)));
    assert!(
        cfg.get_str("rootfs")
            .unwrap()
            .starts_with("local-lvm:base-9000-disk-0,"),
        "{:?}",
        cfg.get_str("rootfs")
    );
    let state = env.state().await;
    let vols: Vec<&str> = state["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["volid"].as_str())
        .collect();
    assert_eq!(vols, ["local-lvm:base-9000-disk-0"]);

    // Again: `you can't convert a template to a template`, on the call.
    let again: Result<Value, _> = c.post("/nodes/pve/lxc/9000/template", &[]).await;
    match again {
        Err(e) => assert!(e.to_string().contains(texts::TEMPLATE_OF_TEMPLATE), "{e}"),
        Ok(v) => panic!("a second template call succeeded: {v}"),
    }
    // Start: the vzstart task fails with PVE's text.
    let up = c.lxc_start("pve", vmid(9000)).await.unwrap();
    let out = c.wait_task(&up, &WaitOptions::default()).await;
    assert!(
        matches!(&out, Err(ApiError::TaskFailed { exitstatus, .. }) if exitstatus.contains(texts::TEMPLATE_START)),
        "{out:?}"
    );
}

/// `template` refuses a running CT (`template`: `check_running`), needs `VM.Allocate`.
#[tokio::test]
async fn template_refuses_a_running_ct_and_needs_vm_allocate() {
    let env = Env::start(0.02, "").await;
    let c = &admin(&env).await;
    env.restore(9001, &[("start", "1")]).await.unwrap();
    // start=1 runs a follow-up vzstart: wait until the guest runs.
    for _ in 0..200 {
        if c.lxc_status("pve", vmid(9001)).await.unwrap().status == "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = c.lxc_template("pve", vmid(9001)).await;
    assert!(
        matches!(&r, Err(e) if e.to_string().contains(texts::TEMPLATE_RUNNING)),
        "{r:?}"
    );
    let narrow = env
        .token(
            "tpl",
            json!([{ "path": "/vms/9001", "privs": ["VM.Audit", "VM.PowerMgmt"] }]),
        )
        .await;
    let r = narrow.lxc_template("pve", vmid(9001)).await;
    assert!(matches!(&r, Err(ApiError::Permission { .. })), "{r:?}");
}

/// `clone_vm` of a template on lvmthin: linked by default; `vzclone` with the **source** as
/// UPID id; `lock: disk` on the source so a second clone fails on the call with
/// `CT is locked (disk)`; `lock: create` on the target; fresh MAC; hostname replaced,
/// description copied; `template` dropped; the source unlocked at the end.
#[tokio::test]
async fn linked_clone_of_a_template_locks_the_source_and_mints_a_mac() {
    let env = Env::start(0.5, "").await;
    let c = &admin(&env).await;
    env.restore(9000, &[("description", "the golden")])
        .await
        .unwrap();
    let src_mac = c
        .lxc_config("pve", vmid(9000))
        .await
        .unwrap()
        .net(0)
        .unwrap()
        .unwrap()
        .hwaddr
        .unwrap();
    let upid = c.lxc_template("pve", vmid(9000)).await.unwrap().unwrap();
    c.wait_task(&upid, &WaitOptions::default()).await.unwrap();

    let upid = c
        .lxc_clone(
            "pve",
            vmid(9000),
            vmid(1001),
            &params(&[("hostname", "acme-web1")]),
        )
        .await
        .unwrap();
    assert_eq!(upid.task_type, "vzclone");
    assert_eq!(upid.id, "9000", "the UPID names the source");
    // While it runs: the source carries lock: disk, the target lock: create.
    let src = c.lxc_config("pve", vmid(9000)).await.unwrap();
    assert_eq!(src.get_str("lock"), Some("disk"));
    let tgt = c.lxc_config("pve", vmid(1001)).await.unwrap();
    assert_eq!(tgt.get_str("lock"), Some("create"));
    let second = c.lxc_clone("pve", vmid(9000), vmid(1002), &[]).await;
    match second {
        Err(ApiError::Locked { lock, message }) => {
            assert_eq!(lock, "disk");
            assert!(message.contains("CT is locked (disk)"), "{message}");
        }
        other => panic!("expected CT is locked (disk), got {other:?}"),
    }
    let out = c.wait_task(&upid, &WaitOptions::default()).await.unwrap();
    assert_eq!(out.warnings, 0);
    // The refused second clone left nothing.
    let r = c.lxc_config("pve", vmid(1002)).await;
    assert!(matches!(r, Err(ApiError::NotFound { .. })), "{r:?}");

    let src = c.lxc_config("pve", vmid(9000)).await.unwrap();
    assert_eq!(src.get_str("lock"), None, "the source is unlocked");
    let cfg = c.lxc_config("pve", vmid(1001)).await.unwrap();
    assert_eq!(cfg.get_str("lock"), None);
    assert_eq!(cfg.hostname(), Some("acme-web1"));
    assert_eq!(cfg.get("template"), None, "template is dropped");
    assert_eq!(
        cfg.get_str("description").map(str::trim_end),
        Some("the golden")
    );
    let mac = cfg.net(0).unwrap().unwrap().hwaddr.unwrap();
    assert_ne!(mac, src_mac, "every netN gets a new MAC");
    assert!(mac.to_string().starts_with("BC:24:11:"), "{mac}");
    assert!(
        cfg.get_str("rootfs")
            .unwrap()
            .starts_with("local-lvm:vm-1001-disk-0,size=8G"),
        "{:?}",
        cfg.get_str("rootfs")
    );
    let state = env.state().await;
    assert_eq!(
        state["linked"]["local-lvm:vm-1001-disk-0"],
        "local-lvm:base-9000-disk-0"
    );
    // It starts, and boots with a machine-id of its own.
    let up = c.lxc_start("pve", vmid(1001)).await.unwrap();
    c.wait_task(&up, &WaitOptions::default()).await.unwrap();
}

/// `volume_has_feature(clone)`: no linked clone on a directory storage (its clones are
/// qcow2) nor of a non-base volume; `storage` is refused for linked clones; thick LVM has no
/// `template` feature (`template_create`, in the worker). Every refusal leaves the source
/// unlocked and no target config.
#[tokio::test]
async fn linked_clones_follow_the_storage_type() {
    let env = Env::start(0.02, "").await;
    let c = &admin(&env).await;
    add_storage(&env, "dirct", "dir").await;
    add_storage(&env, "thick", "lvm").await;
    add_storage(&env, "tank", "zfspool").await;

    // dir: template works, a linked clone does not, a full one does.
    template_on(&env, c, 9000, "dirct").await.unwrap();
    let r = c.lxc_clone("pve", vmid(9000), vmid(1001), &[]).await;
    match &r {
        Err(e) => assert!(
            e.to_string()
                .contains(&texts::linked_clone_unavailable("dirct:base-9000-disk-0")),
            "{e}"
        ),
        Ok(u) => panic!("linked clone on dir accepted: {u}"),
    }
    let full = c
        .lxc_clone("pve", vmid(9000), vmid(1001), &params(&[("full", "1")]))
        .await
        .unwrap();
    c.wait_task(&full, &WaitOptions::default()).await.unwrap();
    let cfg = c.lxc_config("pve", vmid(1001)).await.unwrap();
    assert!(cfg
        .get_str("rootfs")
        .unwrap()
        .starts_with("dirct:vm-1001-disk-0,"));

    // zfspool: a linked clone of the template works; `storage` is refused for it.
    template_on(&env, c, 9002, "tank").await.unwrap();
    let r = c
        .lxc_clone(
            "pve",
            vmid(9002),
            vmid(1003),
            &params(&[("storage", "local-lvm")]),
        )
        .await;
    assert!(
        matches!(&r, Err(e) if e.to_string().contains(texts::STORAGE_NOT_FOR_LINKED)),
        "{r:?}"
    );
    let u = c
        .lxc_clone("pve", vmid(9002), vmid(1003), &[])
        .await
        .unwrap();
    c.wait_task(&u, &WaitOptions::default()).await.unwrap();

    // lvmthin, not a template: full=0 needs a base volume.
    env.restore(1100, &[]).await.unwrap();
    let r = c
        .lxc_clone("pve", vmid(1100), vmid(1101), &params(&[("full", "0")]))
        .await;
    assert!(
        matches!(&r, Err(e) if e.to_string().contains(&texts::linked_clone_unavailable("local-lvm:vm-1100-disk-0"))),
        "{r:?}"
    );

    // thick LVM: the vztemplate task fails, the CT stays as it was.
    let r = template_on(&env, c, 9004, "thick").await;
    assert!(
        matches!(&r, Err(ApiError::TaskFailed { exitstatus, .. }) if exitstatus.contains(&texts::template_unavailable("thick:vm-9004-disk-0"))),
        "{r:?}"
    );
    let cfg = c.lxc_config("pve", vmid(9004)).await.unwrap();
    assert_eq!(cfg.get("template"), None);

    let state = env.state().await;
    for id in [9000, 9002, 1100] {
        assert_eq!(
            guest(&state, id)["lock"],
            Value::Null,
            "source {id} unlocked"
        );
    }
    assert_eq!(guest(&state, 1101), Value::Null, "no target left");
}

/// `full` defaults to "not a template": a full copy of the source's size, to another storage
/// when asked; a running source cannot be fully cloned without a snapshot; an injected
/// failure of the worker removes the new volume and config and unlocks the source.
#[tokio::test]
async fn full_clone_of_a_ct_copies_and_a_failed_clone_leaves_nothing() {
    let env = Env::start(0.02, "task_fail:clone=1").await;
    let c = &admin(&env).await;
    add_storage(&env, "tank", "zfspool").await;
    env.restore(1100, &[]).await.unwrap();
    let u = c
        .lxc_clone(
            "pve",
            vmid(1100),
            vmid(1101),
            &params(&[("storage", "tank")]),
        )
        .await
        .unwrap();
    let r = c.wait_task(&u, &WaitOptions::default()).await;
    assert!(
        matches!(&r, Err(ApiError::TaskFailed { .. })),
        "the injected fault fails the clone: {r:?}"
    );
    let state = env.state().await;
    assert_eq!(
        guest(&state, 1101),
        Value::Null,
        "the target config is gone"
    );
    assert_eq!(
        guest(&state, 1100)["lock"],
        Value::Null,
        "the source is unlocked"
    );
    let vols: Vec<&str> = state["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["volid"].as_str())
        .collect();
    assert_eq!(
        vols,
        ["local-lvm:vm-1100-disk-0"],
        "the new volume is freed"
    );
    drop(env);

    let env = Env::start(0.02, "").await;
    let c = &admin(&env).await;
    add_storage(&env, "tank", "zfspool").await;
    env.restore(1100, &[]).await.unwrap();
    let u = c
        .lxc_clone(
            "pve",
            vmid(1100),
            vmid(1101),
            &params(&[("storage", "tank")]),
        )
        .await
        .unwrap();
    c.wait_task(&u, &WaitOptions::default()).await.unwrap();
    let state = env.state().await;
    let size = |id: &str| {
        state["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["volid"] == id)
            .map(|v| v["size"].clone())
    };
    assert_eq!(
        size("tank:vm-1101-disk-0"),
        size("local-lvm:vm-1100-disk-0")
    );
    assert!(size("tank:vm-1101-disk-0").is_some());
    assert_eq!(vol(&guest(&state, 1101), "rootfs"), "tank:vm-1101-disk-0");
    assert!(state["linked"].as_object().unwrap().is_empty());

    let up = c.lxc_start("pve", vmid(1100)).await.unwrap();
    c.wait_task(&up, &WaitOptions::default()).await.unwrap();
    let r = c.lxc_clone("pve", vmid(1100), vmid(1102), &[]).await;
    assert!(
        matches!(&r, Err(e) if e.to_string().contains(texts::FULL_CLONE_RUNNING)),
        "{r:?}"
    );
    let state = env.state().await;
    assert_eq!(guest(&state, 1102), Value::Null);
    assert_eq!(guest(&state, 1100)["lock"], Value::Null);
}

/// `post_clone_hook` only truncates `/etc/machine-id`: a clone of a booted CT boots with a
/// machine-id of its own but serves the source's SSH host key (no regeneration on clone).
#[tokio::test]
async fn a_clone_gets_a_fresh_machine_id_and_keeps_the_host_key() {
    let env = Env::start(0.02, "").await;
    let c = &admin(&env).await;
    env.restore(1100, &[]).await.unwrap();
    let up = c.lxc_start("pve", vmid(1100)).await.unwrap();
    c.wait_task(&up, &WaitOptions::default()).await.unwrap();
    let up = c.lxc_stop("pve", vmid(1100)).await.unwrap();
    c.wait_task(&up, &WaitOptions::default()).await.unwrap();
    let u = c
        .lxc_clone("pve", vmid(1100), vmid(1101), &[])
        .await
        .unwrap();
    c.wait_task(&u, &WaitOptions::default()).await.unwrap();
    let up = c.lxc_start("pve", vmid(1101)).await.unwrap();
    c.wait_task(&up, &WaitOptions::default()).await.unwrap();
    let state = env.state().await;
    let (a, b) = (guest(&state, 1100), guest(&state, 1101));
    assert!(a["machine_id"].is_string() && b["machine_id"].is_string());
    assert_ne!(a["machine_id"], b["machine_id"]);
    assert!(a["ssh"]["fingerprint"].is_string());
    assert_eq!(a["ssh"]["fingerprint"], b["ssh"]["fingerprint"]);
}

/// Privileges (`clone_vm`'s `check`): `VM.Clone` on the source and `VM.Allocate` on the
/// new VMID or the pool; `Datastore.AllocateSpace` on the storage; `SDN.Use` on the bridge.
/// A refusal leaves the source unlocked and no target.
#[tokio::test]
async fn clone_privileges_follow_clone_vm() {
    let env = Env::start(0.02, "").await;
    let c = &admin(&env).await;
    env.restore(9000, &[]).await.unwrap();
    let u = c.lxc_template("pve", vmid(9000)).await.unwrap().unwrap();
    c.wait_task(&u, &WaitOptions::default()).await.unwrap();
    c.post::<Value>("/pools", &[("poolid", "acme".into())])
        .await
        .unwrap();

    let no_clone = env
        .token(
            "a",
            json!([{ "path": "/vms/9000", "privs": ["VM.Audit", "VM.Allocate"] },
                   { "path": "/vms/1001", "privs": ["VM.Allocate"] }]),
        )
        .await;
    let r = no_clone.lxc_clone("pve", vmid(9000), vmid(1001), &[]).await;
    assert!(matches!(&r, Err(ApiError::Permission { .. })), "{r:?}");

    // VM.Allocate through the pool, storage and bridge granted: accepted, and the clone is
    // in the pool.
    let by_pool = env
        .token(
            "b",
            json!([{ "path": "/vms/9000", "privs": ["VM.Clone"] },
                   { "path": "/pool/acme", "privs": ["VM.Allocate", "Pool.Audit"] },
                   { "path": "/storage/local-lvm", "privs": ["Datastore.AllocateSpace"] },
                   { "path": "/sdn/zones/localnetwork/vmbr0", "privs": ["SDN.Use"] }]),
        )
        .await;
    let u = by_pool
        .lxc_clone("pve", vmid(9000), vmid(1001), &params(&[("pool", "acme")]))
        .await
        .unwrap();
    by_pool
        .wait_task(&u, &WaitOptions::default())
        .await
        .unwrap();
    let state = env.state().await;
    assert_eq!(state["pools"]["acme"], json!([1001]));

    // Without SDN.Use on the bridge: 403, and nothing left behind.
    let no_sdn = env
        .token(
            "c",
            json!([{ "path": "/vms/9000", "privs": ["VM.Clone"] },
                   { "path": "/vms/1002", "privs": ["VM.Allocate"] },
                   { "path": "/storage/local-lvm", "privs": ["Datastore.AllocateSpace"] }]),
        )
        .await;
    let r = no_sdn.lxc_clone("pve", vmid(9000), vmid(1002), &[]).await;
    assert!(matches!(&r, Err(ApiError::Permission { .. })), "{r:?}");
    // Without Datastore.AllocateSpace: 403 too.
    let no_space = env
        .token(
            "d",
            json!([{ "path": "/vms/9000", "privs": ["VM.Clone"] },
                   { "path": "/vms/1002", "privs": ["VM.Allocate"] },
                   { "path": "/sdn/zones/localnetwork/vmbr0", "privs": ["SDN.Use"] }]),
        )
        .await;
    let r = no_space.lxc_clone("pve", vmid(9000), vmid(1002), &[]).await;
    assert!(matches!(&r, Err(ApiError::Permission { .. })), "{r:?}");
    let state = env.state().await;
    assert_eq!(guest(&state, 1002), Value::Null);
    assert_eq!(guest(&state, 9000)["lock"], Value::Null);
}

/// `vdisk_free` refuses a base volume linked clones still use: destroying the template ends
/// with a warning and the base stays until no clone uses it.
#[tokio::test]
async fn destroying_a_template_keeps_a_base_that_clones_use() {
    let env = Env::start(0.02, "").await;
    let c = &admin(&env).await;
    env.restore(9000, &[]).await.unwrap();
    let u = c.lxc_template("pve", vmid(9000)).await.unwrap().unwrap();
    c.wait_task(&u, &WaitOptions::default()).await.unwrap();
    let u = c
        .lxc_clone("pve", vmid(9000), vmid(1001), &[])
        .await
        .unwrap();
    c.wait_task(&u, &WaitOptions::default()).await.unwrap();
    let u = c.lxc_delete("pve", vmid(9000), true, true).await.unwrap();
    let out = c.wait_task(&u, &WaitOptions::default()).await.unwrap();
    assert_eq!(out.warnings, 1);
    let log = c.task_log(&u, 0, 50).await.unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains(&texts::base_in_use("base-9000-disk-0"))),
        "{log:?}"
    );
    let has = |state: &Value, id: &str| {
        state["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["volid"] == id)
    };
    assert!(has(&env.state().await, "local-lvm:base-9000-disk-0"));
    let u = c.lxc_delete("pve", vmid(1001), true, true).await.unwrap();
    c.wait_task(&u, &WaitOptions::default()).await.unwrap();
    let state = env.state().await;
    assert!(!has(&state, "local-lvm:vm-1001-disk-0"));
    assert!(state["linked"].as_object().unwrap().is_empty());
}

/// `/cluster/resources`: open to every token, guests filtered by `VM.Audit`, `pool` only
/// with `Pool.Audit`, `lock` and `tags` live from the config, `template` from it too;
/// `type=vm` narrows to guests (pve-manager `API2/Cluster.pm` `resources`).
#[tokio::test]
async fn cluster_resources_filters_by_vm_audit_and_reads_lock_and_tags_live() {
    let env = Env::start(0.3, "").await;
    let c = &admin(&env).await;
    c.post::<Value>("/pools", &[("poolid", "acme".into())])
        .await
        .unwrap();
    env.restore(9000, &[]).await.unwrap();
    env.restore(1100, &[("pool", "acme"), ("tags", "felhom;web")])
        .await
        .unwrap();
    let u = c.lxc_template("pve", vmid(9000)).await.unwrap().unwrap();
    // While the template task runs nothing else locks; the clone that follows sets lock: disk.
    c.wait_task(&u, &WaitOptions::default()).await.unwrap();
    let clone = c
        .lxc_clone("pve", vmid(9000), vmid(1001), &[])
        .await
        .unwrap();

    let all = c.cluster_resources(Some(ResourceType::Vm)).await.unwrap();
    assert!(all.iter().all(|r| r.is_lxc()), "{all:?}");
    let ids: Vec<u32> = all.iter().filter_map(|r| r.vmid).collect();
    assert_eq!(ids, [1001, 1100, 9000]);
    let by = |id: u32| all.iter().find(|r| r.vmid == Some(id)).unwrap();
    assert_eq!(
        by(9000).lock.as_deref(),
        Some("disk"),
        "live from the config"
    );
    assert!(by(9000).template);
    assert_eq!(by(1001).lock.as_deref(), Some("create"));
    assert_eq!(by(1100).tags.as_deref(), Some("felhom;web"));
    assert_eq!(by(1100).pool.as_deref(), Some("acme"));
    assert_eq!(by(1100).id, "lxc/1100");
    assert_eq!(by(1100).node.as_deref(), Some("pve"));
    assert_eq!(by(1100).status.as_deref(), Some("stopped"));
    c.wait_task(&clone, &WaitOptions::default()).await.unwrap();
    let after = c.cluster_resources(Some(ResourceType::Vm)).await.unwrap();
    assert!(after.iter().all(|r| r.lock.is_none()), "{after:?}");

    // A token that audits only 1100 sees only 1100, and no pool without Pool.Audit.
    let narrow = env
        .token(
            "ro",
            json!([{ "path": "/vms/1100", "privs": ["VM.Audit"] }]),
        )
        .await;
    let seen = narrow.cluster_resources(None).await.unwrap();
    let guests: Vec<u32> = seen.iter().filter_map(|r| r.vmid).collect();
    assert_eq!(guests, [1100]);
    assert_eq!(
        seen.iter().find(|r| r.vmid == Some(1100)).unwrap().pool,
        None
    );
    assert!(
        seen.iter()
            .all(|r| r.resource_type != "pool" && r.resource_type != "storage"),
        "{seen:?}"
    );
    // Without a type the node and (with Datastore.Audit) storages and pools are listed.
    let full = c.cluster_resources(None).await.unwrap();
    for id in [
        "node/pve",
        "storage/pve/local-lvm",
        "/pool/acme",
        "lxc/1100",
    ] {
        assert!(full.iter().any(|r| r.id == id), "{id} in {full:?}");
    }
}
