//! The simulator behaves like PVE as the reference describes it: the real client, over real
//! HTTPS, asserting observable behaviour.

mod common;
use std::time::{Duration, Instant};

use common::*;
use pve_api::{ApiError, WaitOptions};

#[tokio::test]
async fn f4_resize_then_immediate_config_put_times_out_on_the_lock() {
    let env = Env::start(0.05, "").await;
    env.restore(1200, &[]).await.unwrap();
    let upid = env
        .client
        .lxc_resize("pve", vmid(1200), "rootfs", "12G")
        .await
        .unwrap();
    // Back to back, as the spike did: the resize task holds the config flock.
    let put = env
        .client
        .lxc_update_config(
            "pve",
            vmid(1200),
            &[("mp0".into(), "local-lvm:1,mp=/mnt/spike-test".into())],
            None,
        )
        .await;
    match put {
        Err(ApiError::LockTimeout { lock_file, message }) => {
            assert_eq!(lock_file, "/run/lock/lxc/pve-config-1200.lock");
            assert!(message.contains("got timeout"));
        }
        other => panic!("expected the F4 lock-timeout 500, got {other:?}"),
    }
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    env.client
        .lxc_update_config(
            "pve",
            vmid(1200),
            &[("mp0".into(), "local-lvm:1,mp=/mnt/spike-test".into())],
            None,
        )
        .await
        .unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1200)).await.unwrap();
    assert!(cfg.get_str("rootfs").unwrap().ends_with("size=12G"));
    assert!(cfg.get_str("mp0").unwrap().contains("mp=/mnt/spike-test"));
}

#[tokio::test]
async fn restore_keeps_the_archived_mac_and_net0_writes_mint_new_ones() {
    let env = Env::start(0.02, "").await;
    env.restore(1201, &[]).await.unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1201)).await.unwrap();
    assert_eq!(
        cfg.net(0).unwrap().unwrap().hwaddr.unwrap().to_string(),
        GOLDEN_MAC,
        "F1: restore keeps the archived MAC"
    );
    assert_eq!(
        cfg.hostname(),
        Some("felhom-golden"),
        "F2: and the archived hostname"
    );

    // PUT net0 without hwaddr → a fresh BC:24:11 MAC.
    env.client
        .lxc_update_config(
            "pve",
            vmid(1201),
            &[("net0".into(), "name=eth0,bridge=vmbr0,ip=dhcp".into())],
            cfg.digest.as_deref(),
        )
        .await
        .unwrap();
    let mac = env
        .client
        .lxc_config("pve", vmid(1201))
        .await
        .unwrap()
        .net(0)
        .unwrap()
        .unwrap()
        .hwaddr
        .unwrap()
        .to_string();
    assert_ne!(mac, GOLDEN_MAC);
    assert!(mac.starts_with("BC:24:11:"), "{mac}");

    // Restore with net0 given (no hwaddr) or with unique=1: never the archived MAC.
    env.restore(1202, &[("net0", "name=eth0,bridge=vmbr0,ip=dhcp")])
        .await
        .unwrap();
    env.restore(1203, &[("unique", "1")]).await.unwrap();
    for v in [1202, 1203] {
        let m = env
            .client
            .lxc_config("pve", vmid(v))
            .await
            .unwrap()
            .net(0)
            .unwrap()
            .unwrap()
            .hwaddr
            .unwrap()
            .to_string();
        assert_ne!(m, GOLDEN_MAC, "guest {v}");
    }
    // A stale digest is refused with PVE's text.
    let err = env
        .client
        .lxc_update_config(
            "pve",
            vmid(1201),
            &[("hostname".into(), "x".into())],
            cfg.digest.as_deref(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("detected modified configuration"),
        "{err}"
    );
}

#[tokio::test]
async fn a_token_without_vm_allocate_gets_the_real_403() {
    let env = Env::start(0.02, "").await;
    let narrow = env.token("noalloc", serde_json::json!([{ "path": "/", "privs": ["VM.Audit", "Datastore.AllocateSpace", "Datastore.Audit", "VM.Backup", "SDN.Use", "VM.Config.Network"], "propagate": true }])).await;
    let params: Vec<(String, String)> = [
        ("vmid", "1300"),
        ("ostemplate", GOLDEN_VOLID),
        ("restore", "1"),
        ("storage", "local-lvm"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    match narrow.lxc_create("pve", &params).await {
        Err(ApiError::Permission {
            path,
            privilege,
            message,
        }) => {
            assert_eq!(path.as_deref(), Some("/vms/1300"));
            assert_eq!(privilege.as_deref(), Some("VM.Allocate"));
            assert_eq!(message, "Permission check failed (/vms/1300, VM.Allocate)");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let writes_before: u64 = env.state().await["counters"]["writes"].as_u64().unwrap();
    assert!(writes_before >= 1);
    // Permission is checked before existence: no VM.Audit → 403 even for a missing guest.
    let blind = env.token("blind", serde_json::json!([{ "path": "/storage", "privs": ["Datastore.Audit"], "propagate": true }])).await;
    assert!(matches!(
        blind.lxc_config("pve", vmid(1999)).await,
        Err(ApiError::Permission { .. })
    ));
    // With VM.Audit, a missing guest is PVE's 500 "does not exist".
    assert!(
        matches!(env.client.lxc_config("pve", vmid(1999)).await, Err(ApiError::NotFound { message }) if message.contains("nodes/pve/lxc/1999.conf"))
    );
}

#[tokio::test]
async fn a_wrong_secret_gets_401_after_the_scaled_delay() {
    let env = Env::start(0.1, "").await;
    let bad = client_for(env.sim(), "felhom@pve!agent", "not-the-secret");
    let t = Instant::now();
    assert!(matches!(bad.version().await, Err(ApiError::Auth { .. })));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "PVE delays failed logins (3 s × 0.1): {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn interfaces_are_null_when_stopped_and_show_the_lease_when_running() {
    let env = Env::start(0.02, "").await;
    env.restore(1204, &[("net0", "name=eth0,bridge=vmbr0,ip=dhcp")])
        .await
        .unwrap();
    assert_eq!(
        env.client.lxc_interfaces("pve", vmid(1204)).await.unwrap(),
        None
    );
    let upid = env.client.lxc_start("pve", vmid(1204)).await.unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    let mac = env
        .client
        .lxc_config("pve", vmid(1204))
        .await
        .unwrap()
        .net(0)
        .unwrap()
        .unwrap()
        .hwaddr
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ip = loop {
        let ifs = env
            .client
            .lxc_interfaces("pve", vmid(1204))
            .await
            .unwrap()
            .expect("running guests report interfaces");
        assert!(ifs.iter().any(|i| i.name == "lo"));
        let eth0 = ifs.iter().find(|i| i.name == "eth0").unwrap();
        assert_eq!(
            eth0.mac().unwrap(),
            mac.to_ascii_lowercase(),
            "iproute2 reports lower-case MACs"
        );
        if let Some(ip) = eth0.ipv4() {
            break ip;
        }
        assert!(Instant::now() < deadline, "no lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(ip.starts_with("10.77.") && ip.ends_with("/16"), "{ip}");
    assert!(
        matches!(env.client.lxc_start("pve", vmid(1204)).await, Err(ApiError::AlreadyRunning { message }) if message == "CT 1204 already running")
    );
    // A running guest cannot be destroyed without force.
    let err = env
        .client
        .lxc_delete("pve", vmid(1204), true, true)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unable to destroy CT 1204 - container is running"),
        "{err}"
    );
}

#[tokio::test]
async fn a_restart_keeps_guests_volumes_tasks_and_the_fingerprint() {
    let env = Env::start(0.02, "").await;
    env.restore(1205, &[]).await.unwrap();
    let fp = env.sim().fingerprint.clone();
    let before = env.state().await;
    let env = env.restart().await;
    assert_eq!(
        env.sim().fingerprint,
        fp,
        "the certificate is kept in the state dir"
    );
    let after = env.state().await;
    assert_eq!(after["guests"][0]["vmid"], 1205);
    assert_eq!(after["volumes"], before["volumes"]);
    assert_eq!(
        after["tasks"].as_array().unwrap().len(),
        before["tasks"].as_array().unwrap().len()
    );
    assert!(env.client.lxc_config("pve", vmid(1205)).await.is_ok());
}

#[tokio::test]
async fn a_task_running_across_a_restart_still_finishes() {
    let env = Env::start(1.0, "").await;
    let params: Vec<(String, String)> = [
        ("vmid", "1206"),
        ("ostemplate", GOLDEN_VOLID),
        ("restore", "1"),
        ("storage", "local-lvm"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let upid = env.client.lxc_create("pve", &params).await.unwrap();
    assert_eq!(
        env.client
            .lxc_config("pve", vmid(1206))
            .await
            .unwrap()
            .get_str("lock"),
        Some("create"),
        "the VMID is reserved at once"
    );
    let env = env.restart().await;
    let out = env
        .client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    assert_eq!(out.exitstatus, "OK");
    assert_eq!(
        env.client
            .lxc_config("pve", vmid(1206))
            .await
            .unwrap()
            .get_str("lock"),
        None
    );
}

#[tokio::test]
async fn rootfs_override_drops_archived_mount_points_and_storage_defaults_to_local() {
    let dir_env = Env::start(0.02, "").await;
    // A golden with an archived mp0.
    let dump = pve_sim::dump_dir(dir_env.dir.path(), "local");
    write_golden(
        &dump.join("vzdump-lxc-9200-2026_06_09-20_41_10.tar.zst"),
        &pct_conf("mp0: local-lvm:vm-9200-disk-1,mp=/srv/old,size=2G\n"),
        true,
        None,
    );
    let with_mp = |vmid: &str, extra: Option<(&str, &str)>| {
        let mut p: Vec<(String, String)> = [
            ("vmid", vmid),
            (
                "ostemplate",
                "local:backup/vzdump-lxc-9200-2026_06_09-20_41_10.tar.zst",
            ),
            ("restore", "1"),
            ("storage", "local-lvm"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some((k, v)) = extra {
            p.push((k.into(), v.into()));
        }
        p
    };
    let u = dir_env
        .client
        .lxc_create("pve", &with_mp("1210", None))
        .await
        .unwrap();
    dir_env
        .client
        .wait_task(&u, &WaitOptions::default())
        .await
        .unwrap();
    assert!(dir_env
        .client
        .lxc_config("pve", vmid(1210))
        .await
        .unwrap()
        .get_str("mp0")
        .unwrap()
        .contains("mp=/srv/old"));
    let u = dir_env
        .client
        .lxc_create("pve", &with_mp("1211", Some(("rootfs", "local-lvm:10"))))
        .await
        .unwrap();
    dir_env
        .client
        .wait_task(&u, &WaitOptions::default())
        .await
        .unwrap();
    let cfg = dir_env.client.lxc_config("pve", vmid(1211)).await.unwrap();
    assert!(
        cfg.get_str("mp0").is_none(),
        "explicit rootfs drops archived mount points"
    );
    assert!(cfg.get_str("rootfs").unwrap().ends_with("size=10G"));
    // storage defaults to `local`, which has no container directories.
    let p: Vec<(String, String)> = [
        ("vmid", "1212"),
        ("ostemplate", GOLDEN_VOLID),
        ("restore", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    match dir_env.client.lxc_create("pve", &p).await {
        Err(ApiError::Param { errors, .. }) => assert_eq!(
            errors["storage"],
            "storage 'local' does not support container directories"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn lxc_raw_keys_end_in_warnings_and_injected_failures_leave_nothing() {
    let env = Env::start(0.02, "task_fail:restore=1.0").await;
    let dump = pve_sim::dump_dir(env.dir.path(), "local");
    write_golden(
        &dump.join("vzdump-lxc-9300-2026_06_09-20_41_10.tar.zst"),
        &pct_conf("lxc.apparmor.profile: unconfined\n"),
        true,
        None,
    );
    let err = env.restore(1220, &[]).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::TaskFailed { exitstatus, log_tail, .. } if exitstatus.starts_with("unable to restore CT 1220") && log_tail.last().is_some_and(|l| l.starts_with("TASK ERROR"))),
        "{err:?}"
    );
    let st = env.state().await;
    assert_eq!(st["guests"].as_array().unwrap().len(), 0);
    assert_eq!(st["volumes"].as_array().unwrap().len(), 0);

    let env = Env::start(0.02, "").await;
    let dump = pve_sim::dump_dir(env.dir.path(), "local");
    write_golden(
        &dump.join("vzdump-lxc-9300-2026_06_09-20_41_10.tar.zst"),
        &pct_conf("lxc.apparmor.profile: unconfined\n"),
        true,
        None,
    );
    let p: Vec<(String, String)> = [
        ("vmid", "1221"),
        (
            "ostemplate",
            "local:backup/vzdump-lxc-9300-2026_06_09-20_41_10.tar.zst",
        ),
        ("restore", "1"),
        ("storage", "local-lvm"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let u = env.client.lxc_create("pve", &p).await.unwrap();
    let out = env
        .client
        .wait_task(&u, &WaitOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (out.exitstatus.as_str(), out.warnings),
        ("WARNINGS: 1", 1),
        "a non-root restore drops lxc.* keys with a warning"
    );
}

async fn started_key(env: &Env, v: u32) -> String {
    env.restore(v, &[("net0", "name=eth0,bridge=vmbr0,ip=dhcp")])
        .await
        .unwrap();
    let upid = env.client.lxc_start("pve", vmid(v)).await.unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(ep) = env
            .client
            .get_outside_api::<serde_json::Value>(&format!("/felhom-sim/guests/{v}/ssh"))
            .await
        {
            let port = ep["port"].as_u64().unwrap() as u16;
            // A real SSH handshake against the guest's endpoint.
            return felhom_ssh_fingerprint(port).await;
        }
        assert!(Instant::now() < deadline, "guest {v} never served SSH");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn felhom_ssh_fingerprint(port: u16) -> String {
    struct H(std::sync::Arc<std::sync::Mutex<Option<String>>>);
    impl russh::client::Handler for H {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            key: &russh::keys::PublicKey,
        ) -> Result<bool, Self::Error> {
            *self.0.lock().unwrap() =
                Some(key.fingerprint(russh::keys::HashAlg::Sha256).to_string());
            Ok(true)
        }
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let h = russh::client::connect(
        std::sync::Arc::new(russh::client::Config::default()),
        ("127.0.0.1", port),
        H(seen.clone()),
    )
    .await
    .unwrap();
    let _ = h
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    let fp = seen.lock().unwrap().clone().unwrap();
    fp
}

#[tokio::test]
async fn first_boot_unit_gives_distinct_keys_and_baked_keys_are_shared() {
    let env = Env::start(0.02, "").await;
    let a = started_key(&env, 1230).await;
    let b = started_key(&env, 1231).await;
    assert_ne!(
        a, b,
        "a golden with the first-boot unit yields a fresh key per guest"
    );
    let st = env.state().await;
    let mids: Vec<_> = st["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["machine_id"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(mids[0], mids[1], "empty machine-id regenerates per guest");

    // A golden with baked keys: every guest serves the same key.
    let env2 = Env::start(0.02, "").await;
    let seed = [7u8; 32];
    let key = russh::keys::PrivateKey::from(
        russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed),
    );
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .unwrap()
        .to_string();
    let dump = pve_sim::dump_dir(env2.dir.path(), "local");
    write_golden(&dump.join(GOLDEN), &pct_conf(""), false, Some(&pem));
    let c = started_key(&env2, 1232).await;
    let d = started_key(&env2, 1233).await;
    assert_eq!(c, d);
    assert_eq!(
        c,
        key.public_key()
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string()
    );

    // No unit and no keys: no SSH at all (F3).
    let env3 = Env::start(0.02, "").await;
    write_golden(
        &pve_sim::dump_dir(env3.dir.path(), "local").join(GOLDEN),
        &pct_conf(""),
        false,
        None,
    );
    env3.restore(1234, &[]).await.unwrap();
    let upid = env3.client.lxc_start("pve", vmid(1234)).await.unwrap();
    env3.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        env3.client
            .get_outside_api::<serde_json::Value>("/felhom-sim/guests/1234/ssh")
            .await,
        Err(ApiError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_running_guest_keeps_non_hotplug_changes_pending_until_reboot() {
    let env = Env::start(0.02, "").await;
    let c = &env.client;
    let w = WaitOptions::default();
    env.restore(1230, &[]).await.unwrap();
    let u = c.lxc_start("pve", vmid(1230)).await.unwrap();
    c.wait_task(&u, &w).await.unwrap();
    c.lxc_update_config(
        "pve",
        vmid(1230),
        &[
            ("tty".into(), "3".into()),
            ("hostname".into(), "hot".into()),
            ("mp0".into(), "local-lvm:1,mp=/srv/hot".into()),
        ],
        None,
    )
    .await
    .unwrap();
    let pending: serde_json::Value = c.get("/nodes/pve/lxc/1230/pending", &[]).await.unwrap();
    let entry = |k: &str| {
        pending
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == k)
            .cloned()
            .unwrap_or_default()
    };
    // tty waits for the next start; hostname is fast-plugged; a new mp0 is hot-plugged.
    assert_eq!(entry("tty")["pending"], 3, "{pending}");
    assert!(entry("tty").get("value").is_none(), "{pending}");
    assert_eq!(entry("hostname")["value"], "hot");
    assert!(entry("hostname").get("pending").is_none());
    assert!(entry("mp0")["value"]
        .as_str()
        .unwrap()
        .starts_with("local-lvm:vm-1230-disk-"));
    let current: serde_json::Value = c
        .get("/nodes/pve/lxc/1230/config", &[("current", "1".into())])
        .await
        .unwrap();
    assert!(current.get("tty").is_none());
    let cfg = c.lxc_config("pve", vmid(1230)).await.unwrap();
    assert_eq!(cfg.get("tty"), Some(&serde_json::json!(3)));

    // Deleting a mount point of a running guest waits as well; then reboot applies it all.
    c.lxc_update_config("pve", vmid(1230), &[("delete".into(), "mp0".into())], None)
        .await
        .unwrap();
    let current: serde_json::Value = c
        .get("/nodes/pve/lxc/1230/config", &[("current", "1".into())])
        .await
        .unwrap();
    assert!(
        current.get("mp0").is_some(),
        "mp0 stays until the next start"
    );
    let cfg = c.lxc_config("pve", vmid(1230)).await.unwrap();
    assert!(
        cfg.get("mp0").is_none(),
        "the default view applies pending deletes"
    );
    let u: pve_api::Upid = c
        .post::<String>("/nodes/pve/lxc/1230/status/reboot", &[])
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(u.task_type, "vzreboot");
    c.wait_task(&u, &w).await.unwrap();
    let pending: serde_json::Value = c.get("/nodes/pve/lxc/1230/pending", &[]).await.unwrap();
    assert!(
        pending
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e.get("pending").is_none() && e.get("delete").is_none()),
        "{pending}"
    );
    let cfg = c.lxc_config("pve", vmid(1230)).await.unwrap();
    assert_eq!(cfg.get("tty"), Some(&serde_json::json!(3)));
    assert!(cfg.get("mp0").is_none());
    assert!(cfg
        .get_str("unused0")
        .unwrap()
        .starts_with("local-lvm:vm-1230-disk-"));
    assert_eq!(
        c.lxc_status("pve", vmid(1230)).await.unwrap().status,
        "running"
    );
}

#[tokio::test]
async fn a_killed_restore_leaves_nothing_and_unknown_methods_get_501() {
    // Time scale 1: the restore worker runs for about 2 s, long enough to stop it.
    let env = Env::start(1.0, "").await;
    let c = &env.client;
    let params: Vec<(String, String)> = [
        ("vmid", "1240"),
        ("ostemplate", GOLDEN_VOLID),
        ("restore", "1"),
        ("storage", "local-lvm"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let upid = c.lxc_create("pve", &params).await.unwrap();
    // The VMID is reserved at once: the placeholder shows `lock: create`.
    let cfg = c.lxc_config("pve", vmid(1240)).await.unwrap();
    assert_eq!(cfg.get_str("lock"), Some("create"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The worker holds the flock and has allocated the archived rootfs already.
    let st = env.state().await;
    assert_eq!(
        st["volumes"][0]["volid"], "local-lvm:vm-1240-disk-0",
        "{st}"
    );
    assert_eq!(st["locks"], serde_json::json!([1240]));
    let _: serde_json::Value = c
        .delete(&format!("/nodes/pve/tasks/{upid}"), &[])
        .await
        .unwrap();
    match c.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed { exitstatus, .. }) => {
            assert_eq!(exitstatus, "interrupted by signal")
        }
        other => panic!("{other:?}"),
    }
    let st = env.state().await;
    assert!(st["guests"].as_array().unwrap().is_empty(), "{st}");
    assert!(st["volumes"].as_array().unwrap().is_empty(), "{st}");
    assert_eq!(c.next_id(Some(vmid(1240))).await.unwrap(), vmid(1240));

    match c
        .post::<serde_json::Value>("/nodes/pve/lxc/1240/config", &[])
        .await
    {
        Err(ApiError::NotImplemented { message }) => assert_eq!(
            message.trim_end(),
            "Method 'POST /nodes/pve/lxc/1240/config' not implemented"
        ),
        other => panic!("{other:?}"),
    }
    match c.get::<serde_json::Value>("/nodes/pve/tasks/UPID:pve:00001234:01001234:6A000000:vzstart:1:felhom@pve!agent:/status", &[]).await {
        Err(ApiError::Param { errors, .. }) => assert_eq!(errors["upid"].trim_end(), "no such task"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn injected_lock_timeouts_and_503s_look_like_pve() {
    let env = Env::start(0.02, "lock500=1.0,seed=3").await;
    env.restore(1250, &[]).await.unwrap_err();
    let put = env
        .client
        .lxc_update_config("pve", vmid(1250), &[("cores".into(), "1".into())], None)
        .await;
    assert!(
        matches!(&put, Err(ApiError::LockTimeout { lock_file, .. }) if lock_file == "/run/lock/lxc/pve-config-1250.lock"),
        "{put:?}"
    );
    let st = env.state().await;
    assert!(st["counters"]["lock500"].as_u64().unwrap() >= 2, "{st}");
    assert!(st["counters"]["faults_injected"].as_u64().unwrap() >= 2);
    // Reads are never failed by the lock fault.
    env.client.version().await.unwrap();

    let env = Env::start(0.02, "http503=1.0").await;
    let e = env.restore(1251, &[]).await.unwrap_err();
    assert_eq!(e.status(), Some(503), "{e:?}");
    assert!(e.is_transient());
    assert!("bogus=1"
        .parse::<pve_sim::FaultSpec>()
        .unwrap_err()
        .contains("bogus"));
}

/// The client learns how long a task type runs (`pve_api::durations`): the first resize is
/// found by the usual cadence (a poll every 100 ms), later ones by sleeping to the learned
/// bracket's start and polling to its end. Task times vary (+0..10% in the sim) and a busy
/// machine delays polls, so the bound is "well under half the first wait's polls", not an
/// exact count.
#[tokio::test]
async fn later_tasks_of_a_type_are_found_with_few_polls() {
    let env = Env::start(0.1, "").await; // resize: 12 s × 0.1 = 1.2 s
    let mut polls = Vec::new();
    for v in 1290..1294 {
        env.restore(v, &[]).await.unwrap();
        polls.push(resize_and_wait(&env, v, "12G").await);
    }
    assert!(polls[0] >= 10, "first resize: usual cadence, {polls:?}");
    assert!(
        polls[1..].iter().all(|p| *p * 3 <= polls[0]),
        "later resizes: the learned bracket, {polls:?}"
    );
}

/// Durations are measured from the task's dispatch. A client that did not start the task (a
/// process resuming from its journal) knows no origin: even with the learned brackets it
/// waits at the usual cadence, and its wait adds no bracket.
#[tokio::test]
async fn a_task_of_unknown_dispatch_is_waited_at_the_cadence_and_teaches_nothing() {
    let env = Env::start(0.1, "").await; // resize: 1.2 s
    for v in 1295..1297 {
        env.restore(v, &[]).await.unwrap();
        resize_and_wait(&env, v, "12G").await;
    }
    // A second process: it starts from what the first learned (as felhom does, from the
    // journal), but the resize was dispatched by the first.
    let secret = std::fs::read_to_string(env.dir.path().join("felhom-agent.token")).unwrap();
    let other = client_for(env.sim(), "felhom@pve!agent", secret.trim());
    for (t, b) in env.client.durations().snapshot() {
        other.durations().record(&t, b);
    }
    let learned = other.durations().snapshot().len();
    env.restore(1297, &[]).await.unwrap();
    let upid = env
        .client
        .lxc_resize("pve", vmid(1297), "rootfs", "12G")
        .await
        .unwrap();
    let out = other
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    assert!(
        out.polls >= 8,
        "the cadence, not the bracket: {}",
        out.polls
    );
    assert_eq!(
        other.durations().snapshot().len(),
        learned,
        "nothing learned"
    );
    // The client that dispatched it uses the bracket.
    let mine = resize_and_wait(&env, 1296, "13G").await;
    assert!(mine * 2 <= out.polls, "{mine} vs {}", out.polls);
}

/// Resize guest `v`'s rootfs and wait for it; the polls spent.
async fn resize_and_wait(env: &Env, v: u32, size: &str) -> u32 {
    let upid = env
        .client
        .lxc_resize("pve", vmid(v), "rootfs", size)
        .await
        .unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap()
        .polls
}

/// The PUT's 400 for one key, as PVE words it (`errors[key]`, without the trailing newline).
async fn put_refused(env: &Env, v: u32, key: &str, value: &str) -> String {
    match env
        .client
        .lxc_update_config("pve", vmid(v), &[(key.into(), value.into())], None)
        .await
    {
        Err(ApiError::Param { errors, .. }) => errors
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{key}={value}: no error for the key in {errors:?}")),
        other => panic!("{key}={value}: expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn guest_settings_are_refused_exactly_as_pve_refuses_them() {
    let env = Env::start(0.02, "").await;
    env.restore(1500, &[]).await.unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("cores", "0", "value must have a minimum value of 1"),
        ("cores", "8193", "value must have a maximum value of 8192"),
        ("cores", "two", "type check ('integer') failed - got 'two'"),
        ("memory", "15", "value must have a minimum value of 16"),
        ("swap", "-1", "value must have a minimum value of 0"),
        ("onboot", "maybe", "type check ('boolean') failed - got 'maybe'"),
        (
            "nameserver",
            "192.0.2.53 1.2.3",
            "invalid format - value does not look like a valid IP address",
        ),
        (
            "searchdomain",
            "example.org bad_name",
            "invalid format - value does not look like a valid DNS name",
        ),
        (
            "net0",
            "name=eth0,bridge=vmbr0,tag=4095",
            "invalid format - format error\nnet0.tag: value must have a maximum value of 4094",
        ),
        (
            "net0",
            "name=eth0,bridge=vmbr0,tag=0",
            "invalid format - format error\nnet0.tag: value must have a minimum value of 1",
        ),
        (
            "net0",
            "name=eth0,bridge=vmbr0,ip=192.0.2.10",
            "invalid format - format error\nnet0.ip: invalid format - value does not look like a valid ipv4 network configuration",
        ),
        (
            "net0",
            "name=eth0,bridge=vmbr0,ip=192.0.2.10/24,gw=192.0.2.300",
            "invalid format - format error\nnet0.gw: invalid format - value does not look like a valid IPv4 address",
        ),
        (
            "net0",
            "name=eth0,bridge=vmbr0,ip6=2001:db8::10/129",
            "invalid format - format error\nnet0.ip6: invalid format - value does not look like a valid ipv6 network configuration",
        ),
        (
            "net0",
            "name=eth0,bridge=vmbr0,ip6=2001:db8::10/64,gw6=2001:db8::zz",
            "invalid format - format error\nnet0.gw6: invalid format - value does not look like a valid IPv6 address",
        ),
        (
            "net0",
            "name=eth0,bridge=vmbr0,firewall=maybe",
            "invalid format - format error\nnet0.firewall: type check ('boolean') failed - got 'maybe'",
        ),
        (
            "net0",
            "bridge=vmbr0,ip=dhcp",
            "invalid format - format error\nnet0.name: property is missing and it is not optional",
        ),
        (
            "net0",
            "name=eth0,bridge=vmbr0,vlan=5",
            "invalid format - invalid key in comma-separated list property: vlan",
        ),
        (
            "net0",
            "name=eth0,tag=5,tag=6",
            "invalid format - duplicate key in comma-separated list property: tag",
        ),
    ];
    for (k, v, want) in cases {
        assert_eq!(put_refused(&env, 1500, k, v).await, *want, "{k}={v}");
    }
    // Create (a restore) refuses with the same texts, before anything is reserved.
    let mut params: Vec<(String, String)> = [
        ("vmid", "1501"),
        ("ostemplate", GOLDEN_VOLID),
        ("restore", "1"),
        ("storage", "local-lvm"),
        ("cores", "0"),
        ("net0", "name=eth0,bridge=vmbr0,tag=5000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    match env.client.lxc_create("pve", &params).await {
        Err(ApiError::Param { errors, .. }) => {
            assert_eq!(errors["cores"], "value must have a minimum value of 1");
            assert_eq!(
                errors["net0"],
                "invalid format - format error\nnet0.tag: value must have a maximum value of 4094"
            );
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(env.state().await["guests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["vmid"] != 1501));
    // What PVE accepts is stored as given: no maximum on memory or swap, lists of name
    // servers and search domains, a VLAN NIC with static addresses and the firewall on.
    let good: Vec<(String, String)> = [
        ("cores", "4"),
        ("memory", "1048576"),
        ("swap", "0"),
        ("onboot", "1"),
        ("nameserver", "192.0.2.53 2001:db8::53"),
        ("searchdomain", "example.org corp.example.org"),
        (
            "net0",
            "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:15:00,tag=10,ip=192.0.2.10/24,gw=192.0.2.1,ip6=2001:db8::10/64,gw6=2001:db8::1,firewall=1",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.client
        .lxc_update_config("pve", vmid(1500), &good, None)
        .await
        .unwrap();
    let cfg = env.client.lxc_config("pve", vmid(1500)).await.unwrap();
    assert_eq!(cfg.values["cores"], 4);
    assert_eq!(cfg.values["memory"], 1_048_576);
    assert_eq!(cfg.values["swap"], 0);
    assert_eq!(cfg.values["onboot"], 1);
    assert_eq!(cfg.get_str("nameserver"), Some("192.0.2.53 2001:db8::53"));
    let net = cfg.net(0).unwrap().unwrap();
    assert_eq!(net.ip.as_deref(), Some("192.0.2.10/24"));
    assert_eq!(net.other["tag"], "10");
    assert_eq!(net.other["gw6"], "2001:db8::1");
    assert_eq!(net.other["firewall"], "1");
    params.retain(|(k, _)| k != "cores" && k != "net0");
    params.push(("cores".into(), "2".into()));
    params.push((
        "net0".into(),
        "name=eth0,bridge=vmbr0,tag=10,ip=dhcp,ip6=auto".into(),
    ));
    let upid = env.client.lxc_create("pve", &params).await.unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn each_guest_setting_needs_the_privilege_pve_checks() {
    let env = Env::start(0.02, "").await;
    env.restore(1510, &[]).await.unwrap();
    let options = env
        .token(
            "options",
            serde_json::json!([{ "path": "/", "privs": ["VM.Audit", "VM.Config.Options"], "propagate": true }]),
        )
        .await;
    let put = |c: &pve_api::PveClient, k: &str, v: &str| {
        let (c, kv) = (c.clone(), vec![(k.to_string(), v.to_string())]);
        async move { c.lxc_update_config("pve", vmid(1510), &kv, None).await }
    };
    for (k, v, privilege) in [
        ("cores", "2", "VM.Config.CPU"),
        ("memory", "1024", "VM.Config.Memory"),
        ("swap", "256", "VM.Config.Memory"),
        ("nameserver", "192.0.2.53", "VM.Config.Network"),
        ("searchdomain", "example.org", "VM.Config.Network"),
        (
            "net0",
            "name=eth0,bridge=vmbr0,ip=dhcp",
            "VM.Config.Network",
        ),
    ] {
        match put(&options, k, v).await {
            Err(ApiError::Permission {
                path, privilege: p, ..
            }) => {
                assert_eq!(path.as_deref(), Some("/vms/1510"), "{k}");
                assert_eq!(p.as_deref(), Some(privilege), "{k}");
            }
            other => panic!("{k}: expected 403 for {privilege}, got {other:?}"),
        }
    }
    put(&options, "onboot", "1").await.unwrap();

    // A NIC with a VLAN tag needs SDN.Use on the VLAN below the bridge (an ACL on the
    // bridge propagates there), and the NIC it replaces needs it on its own bridge.
    let net = |privs: serde_json::Value| {
        serde_json::json!([
            { "path": "/vms", "privs": ["VM.Audit", "VM.Config.Network"], "propagate": true },
            privs
        ])
    };
    let vlan20 = env
        .token(
            "vlan20",
            net(serde_json::json!({ "path": "/sdn/zones/localnetwork/vmbr0/20", "privs": ["SDN.Use"] })),
        )
        .await;
    let tagged = "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:15:10,tag=10,ip=dhcp";
    let denied = |r: Result<(), ApiError>| match r {
        Err(ApiError::Permission {
            path, privilege, ..
        }) => (path.unwrap_or_default(), privilege.unwrap_or_default()),
        other => panic!("expected 403, got {other:?}"),
    };
    // The current net0 is untagged on vmbr0: the old value is checked first.
    assert_eq!(
        denied(put(&vlan20, "net0", tagged).await),
        ("/sdn/zones/localnetwork/vmbr0".into(), "SDN.Use".into())
    );
    let bridge_only = env
        .token(
            "bridge",
            net(serde_json::json!({ "path": "/sdn/zones/localnetwork/vmbr0", "privs": ["SDN.Use"], "propagate": false })),
        )
        .await;
    assert_eq!(
        denied(put(&bridge_only, "net0", tagged).await),
        ("/sdn/zones/localnetwork/vmbr0/10".into(), "SDN.Use".into())
    );
    let bridge_tree = env
        .token(
            "bridgetree",
            net(serde_json::json!({ "path": "/sdn/zones/localnetwork/vmbr0", "privs": ["SDN.Use"], "propagate": true })),
        )
        .await;
    put(&bridge_tree, "net0", tagged).await.unwrap();
    // Now the NIC is on VLAN 10: replacing it needs VLAN 10, not the bridge.
    assert_eq!(
        denied(put(&vlan20, "net0", "name=eth0,bridge=vmbr0,tag=20,ip=dhcp").await),
        ("/sdn/zones/localnetwork/vmbr0/10".into(), "SDN.Use".into())
    );
}

#[tokio::test]
async fn a_start_on_a_bridge_the_node_lacks_fails_as_pves_does() {
    let env = Env::start(0.02, "").await;
    env.restore(1520, &[]).await.unwrap();
    env.client
        .lxc_update_config(
            "pve",
            vmid(1520),
            &[(
                "net0".into(),
                format!("name=eth0,bridge=vmbr9,hwaddr={GOLDEN_MAC},ip=dhcp"),
            )],
            None,
        )
        .await
        .unwrap();
    let upid = env.client.lxc_start("pve", vmid(1520)).await.unwrap();
    match env.client.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed {
            exitstatus,
            kind,
            log_tail,
            ..
        }) => {
            assert_eq!(exitstatus, "bridge 'vmbr9' does not exist");
            assert_eq!(
                kind,
                pve_api::TaskFailure::BridgeMissing {
                    bridge: "vmbr9".into()
                }
            );
            assert_eq!(
                log_tail.last().map(String::as_str),
                Some("TASK ERROR: bridge 'vmbr9' does not exist")
            );
        }
        other => panic!("expected the start to fail, got {other:?}"),
    }
    let st = env.client.lxc_status("pve", vmid(1520)).await.unwrap();
    assert_eq!(st.status, "stopped");
    // Back on the node's bridge it starts.
    env.client
        .lxc_update_config(
            "pve",
            vmid(1520),
            &[(
                "net0".into(),
                format!("name=eth0,bridge=vmbr0,hwaddr={GOLDEN_MAC},ip=dhcp"),
            )],
            None,
        )
        .await
        .unwrap();
    let upid = env.client.lxc_start("pve", vmid(1520)).await.unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    // A reboot stops the guest, then its start meets the missing bridge.
    env.client
        .lxc_update_config(
            "pve",
            vmid(1520),
            &[(
                "net0".into(),
                format!("name=eth0,bridge=vmbr7,hwaddr={GOLDEN_MAC},ip=dhcp"),
            )],
            None,
        )
        .await
        .unwrap();
    let upid: pve_api::Upid = env
        .client
        .post::<String>("/nodes/pve/lxc/1520/status/reboot", &[])
        .await
        .unwrap()
        .parse()
        .unwrap();
    match env.client.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed { exitstatus, .. }) => {
            assert_eq!(exitstatus, "bridge 'vmbr7' does not exist")
        }
        other => panic!("expected the reboot to fail, got {other:?}"),
    }
    let st = env.client.lxc_status("pve", vmid(1520)).await.unwrap();
    assert_eq!(st.status, "stopped");
}

#[tokio::test]
async fn a_static_address_shows_on_eth0_from_the_start() {
    // A DHCP delay far beyond the test: a static NIC must not wait for it.
    let env = Env::start(0.02, "dhcp_delay=600s").await;
    env.restore(
        1530,
        &[(
            "net0",
            "name=eth0,bridge=vmbr0,ip=192.0.2.10/24,gw=192.0.2.1,ip6=2001:db8::10/64,gw6=2001:db8::1",
        )],
    )
    .await
    .unwrap();
    let upid = env.client.lxc_start("pve", vmid(1530)).await.unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    let ifs = env
        .client
        .lxc_interfaces("pve", vmid(1530))
        .await
        .unwrap()
        .expect("a running guest reports interfaces");
    let eth0 = ifs.iter().find(|i| i.name == "eth0").expect("eth0");
    assert_eq!(eth0.ipv4().as_deref(), Some("192.0.2.10/24"));
    assert_eq!(eth0.inet6.as_deref(), Some("2001:db8::10/64"));
    let state = env.state().await;
    assert!(state["leases"]["vmbr0"]
        .as_object()
        .is_none_or(|l| l.is_empty()));
    let g = state["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == 1530)
        .unwrap();
    assert_eq!(g["ip"], "192.0.2.10");
    // A second guest on the same static address is a duplicate the invariants see.
    env.restore(1531, &[("net0", "name=eth0,bridge=vmbr0,ip=192.0.2.10/24")])
        .await
        .unwrap();
    let upid = env.client.lxc_start("pve", vmid(1531)).await.unwrap();
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    let v = pve_sim::invariants::check(&env.state().await);
    assert_eq!(v.duplicate_ips, ["192.0.2.10"]);
}

/// The side channel (`/felhom-sim/*`) wants this run's secret: without it or with a wrong
/// one, the state dump, the request log and token minting answer 401 and nothing changes
/// (no token is made). The secret is 64 hex digits in a 0600 file of the state dir, made
/// fresh at every start: the previous run's no longer opens anything.
#[tokio::test]
async fn the_side_channel_refuses_requests_without_the_secret_of_this_run() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start(0.05, "").await;
    let file = pve_sim::side_channel_secret_file(env.dir.path());
    let meta = std::fs::symlink_metadata(&file).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "{}",
        file.display()
    );
    let secret = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(secret, env.sim().side_channel_secret());
    assert!(
        secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{secret}"
    );
    // One digit changed (a fixed suffix would equal the secret whenever it ends in it).
    let last = if secret.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &secret[..63]);
    assert_ne!(wrong, secret);
    let mint = serde_json::json!({ "userid": "root@pam", "tokenid": "mine", "privsep": false,
        "acl": [{ "path": "/", "privs": ["Sys.Modify", "VM.Allocate"] }] });
    let refused = |r: Result<serde_json::Value, ApiError>, what: &str| match r {
        Err(ApiError::Auth { .. }) => {}
        other => panic!("{what}: expected 401, got {other:?}"),
    };
    let c = &env.client;
    refused(
        c.get_outside_api("/felhom-sim/state").await,
        "state, no secret",
    );
    refused(
        c.side_channel_get("/felhom-sim/state", &wrong).await,
        "state, wrong secret",
    );
    refused(
        c.get_outside_api("/felhom-sim/requests").await,
        "requests, no secret",
    );
    refused(
        c.side_channel_get("/felhom-sim/requests", "").await,
        "requests, empty secret",
    );
    refused(
        c.post_outside_api("/felhom-sim/tokens", &mint).await,
        "tokens, no secret",
    );
    refused(
        c.side_channel_post("/felhom-sim/tokens", &mint, &wrong)
            .await,
        "tokens, wrong secret",
    );
    // Nothing was minted: no such token in the persisted state.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir.path().join("state.json")).unwrap()).unwrap();
    let ids: Vec<&str> = state["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["felhom@pve!agent"],
        "no token minted by a refused call"
    );
    // With the secret: all three work.
    assert!(env.state().await["guests"].is_array());
    assert!(env.requests().await.is_array());
    let narrow = env
        .token(
            "side",
            serde_json::json!([{ "path": "/", "privs": ["Sys.Audit"] }]),
        )
        .await;
    narrow.version().await.unwrap();
    // A restart makes a new secret; the old one is refused.
    let env = env.restart().await;
    let new = env.sim().side_channel_secret().to_string();
    assert_ne!(new, secret);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        new,
        "the file holds the new run's secret"
    );
    refused(
        env.client
            .side_channel_get("/felhom-sim/state", &secret)
            .await,
        "state, the previous run's secret",
    );
}
