//! Issue #3 item 4: every route the simulator serves exists in PVE's official schema with that
//! method, and every request the real client sends validates against the endpoint's
//! parameter schema.

mod common;
#[path = "common/schema.rs"]
mod schema;

use std::collections::BTreeMap;

use common::*;
use pve_api::WaitOptions;

/// The schema is the file `docs/pve-api-schema/PROVENANCE.md` describes: its sha256 there is
/// the file's. A refresh that forgets the provenance (or a damaged copy) fails here.
#[test]
fn the_schema_file_is_the_one_this_provenance_names() {
    use sha2::{Digest, Sha256};
    let path = schema::schema_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let actual = hex::encode(Sha256::digest(&bytes));
    let provenance_path = path.with_file_name("PROVENANCE.md");
    let provenance = std::fs::read_to_string(&provenance_path)
        .unwrap_or_else(|e| panic!("{}: {e}", provenance_path.display()));
    let pinned: Vec<&str> = provenance
        .lines()
        .filter(|l| l.starts_with("| sha256 |"))
        .flat_map(|l| l.split('`'))
        .filter(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert_eq!(
        pinned,
        [actual.as_str()],
        "sha256 of {} vs its PROVENANCE.md",
        path.display()
    );
}

#[test]
fn every_served_route_exists_in_the_schema() {
    let s = schema::Schema::load();
    let mut checked = 0;
    for (method, path) in pve_sim::routes() {
        assert!(
            s.info(method, path).is_some(),
            "{method} {path} is not in apidata.js"
        );
        checked += 1;
    }
    eprintln!("schema route checks: {checked}");
    assert!(checked >= 20);
}

#[tokio::test]
async fn every_request_of_a_full_workload_validates() {
    let env = Env::start(0.02, "").await;
    let c = &env.client;
    let w = WaitOptions::default();
    c.version().await.unwrap();
    c.next_id(None).await.unwrap();
    c.next_id(Some(vmid(1400))).await.unwrap();
    c.permissions(None).await.unwrap();
    c.permissions(Some("/vms/1400")).await.unwrap();
    c.storage_content("pve", "local", Some("backup"))
        .await
        .unwrap();
    c.storage_status("pve", "local-lvm").await.unwrap();
    c.pools().await.unwrap();
    c.vzdump_extractconfig("pve", GOLDEN_VOLID).await.unwrap();
    env.restore(
        1400,
        &[
            ("hostname", "conform"),
            (
                "net0",
                "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:42,ip=dhcp,type=veth",
            ),
            ("description", "felhom: job=x customer=y state=provisioning"),
            ("unique", "0"),
        ],
    )
    .await
    .unwrap();
    let v = vmid(1400);
    let cfg = c.lxc_config("pve", v).await.unwrap();
    c.lxc_update_config(
        "pve",
        v,
        &[
            ("hostname".into(), "conform2".into()),
            ("tags".into(), "felhom;web".into()),
        ],
        cfg.digest.as_deref(),
    )
    .await
    .unwrap();
    // The guest settings felhom's spec carries, as it sends them.
    c.lxc_update_config(
        "pve",
        v,
        &[
            ("cores".into(), "2".into()),
            ("memory".into(), "1024".into()),
            ("swap".into(), "0".into()),
            ("onboot".into(), "1".into()),
            ("nameserver".into(), "192.0.2.53".into()),
            ("searchdomain".into(), "example.org".into()),
            (
                "net0".into(),
                "name=eth0,bridge=vmbr0,firewall=1,gw=192.0.2.1,gw6=2001:db8::1,hwaddr=BC:24:11:00:00:42,ip=192.0.2.10/24,ip6=2001:db8::10/64,tag=10,type=veth".into(),
            ),
        ],
        None,
    )
    .await
    .unwrap();
    let u = c.lxc_resize("pve", v, "rootfs", "10G").await.unwrap();
    c.wait_task(&u, &w).await.unwrap();
    c.task_log(&u, 0, 50).await.unwrap();
    c.lxc_update_config(
        "pve",
        v,
        &[("mp0".into(), "local-lvm:2,mp=/srv/data".into())],
        None,
    )
    .await
    .unwrap();
    let u = c.lxc_start("pve", v).await.unwrap();
    c.wait_task(&u, &w).await.unwrap();
    c.lxc_status("pve", v).await.unwrap();
    c.lxc_interfaces("pve", v).await.unwrap();
    c.lxc_list("pve").await.unwrap();
    let _: serde_json::Value = c.get("/nodes/pve/lxc/1400/pending", &[]).await.unwrap();
    c.lxc_update_config(
        "pve",
        v,
        &[("tty".into(), "2".into()), ("delete".into(), "mp0".into())],
        None,
    )
    .await
    .unwrap();
    let _: serde_json::Value = c
        .get("/nodes/pve/lxc/1400/config", &[("current", "1".into())])
        .await
        .unwrap();
    let u: pve_api::Upid = c
        .post::<String>(
            "/nodes/pve/lxc/1400/status/reboot",
            &[("timeout", "30".into())],
        )
        .await
        .unwrap()
        .parse()
        .unwrap();
    c.wait_task(&u, &w).await.unwrap();
    let _: serde_json::Value = c
        .delete(&format!("/nodes/pve/tasks/{u}"), &[])
        .await
        .unwrap();
    let _: serde_json::Value = c
        .get(
            "/nodes/pve/tasks",
            &[("limit", "20".into()), ("vmid", "1400".into())],
        )
        .await
        .unwrap();
    let _: serde_json::Value = c.get("/nodes", &[]).await.unwrap();
    let _: serde_json::Value = c.get("/nodes/pve/storage", &[]).await.unwrap();
    let _: serde_json::Value = c
        .get(
            "/access/permissions",
            &[("path", "/storage/local-lvm".into())],
        )
        .await
        .unwrap();
    let u = c.lxc_shutdown("pve", v).await.unwrap();
    c.wait_task(&u, &w).await.unwrap();
    let u = c.lxc_start("pve", v).await.unwrap();
    c.wait_task(&u, &w).await.unwrap();
    let u = c.lxc_stop("pve", v).await.unwrap();
    c.wait_task(&u, &w).await.unwrap();
    let u = c.lxc_delete("pve", v, true, true).await.unwrap();
    c.wait_task(&u, &w).await.unwrap();

    // Clone, template and cluster resources (audit §2 (b), (c)), as felhom's client sends
    // them; a token with VM.Clone (felhom's preset has none).
    let privs = [
        "VM.Allocate",
        "VM.Audit",
        "VM.Clone",
        "VM.Config.Disk",
        "VM.Config.Network",
        "VM.Config.Options",
        "VM.PowerMgmt",
        "Datastore.AllocateSpace",
        "Datastore.Audit",
        "SDN.Use",
        "Pool.Audit",
        "Sys.Audit",
    ];
    let cl = env
        .token(
            "cloner",
            serde_json::json!([{ "path": "/", "privs": privs }]),
        )
        .await;
    env.restore(1401, &[]).await.unwrap();
    let tpl = cl.lxc_template("pve", vmid(1401)).await.unwrap().unwrap();
    cl.wait_task(&tpl, &w).await.unwrap();
    let u = cl
        .lxc_clone(
            "pve",
            vmid(1401),
            vmid(1402),
            &[
                ("hostname".into(), "conform-clone".into()),
                ("description".into(), "felhom: clone".into()),
                ("full".into(), "0".into()),
            ],
        )
        .await
        .unwrap();
    cl.wait_task(&u, &w).await.unwrap();
    let u = cl
        .lxc_clone(
            "pve",
            vmid(1401),
            vmid(1403),
            &[
                ("full".into(), "1".into()),
                ("storage".into(), "local-lvm".into()),
            ],
        )
        .await
        .unwrap();
    cl.wait_task(&u, &w).await.unwrap();
    cl.cluster_resources(None).await.unwrap();
    cl.cluster_resources(Some(pve_api::ResourceType::Vm))
        .await
        .unwrap();
    let answers: Vec<serde_json::Value> = cl
        .get("/cluster/resources", &[("type", "vm".into())])
        .await
        .unwrap();

    let s = schema::Schema::load();
    // Every field of a resources answer is one the schema's `returns` names.
    let known = s.return_properties("GET", "/cluster/resources");
    assert!(known.len() > 20, "{known:?}");
    for a in &answers {
        for k in a.as_object().unwrap().keys() {
            assert!(
                known.contains(k),
                "/cluster/resources answers {k:?}, not in the schema"
            );
        }
    }
    let mut tally = schema::Tally::default();
    let reqs = env.requests().await;
    let reqs = reqs.as_array().unwrap();
    assert!(reqs.len() >= 25, "workload too small: {}", reqs.len());
    let mut params_seen = 0;
    for r in reqs {
        let params: BTreeMap<String, String> = serde_json::from_value(r["params"].clone()).unwrap();
        params_seen += params.len();
        s.validate(
            r["method"].as_str().unwrap(),
            r["path"].as_str().unwrap(),
            &params,
            &mut tally,
        );
    }
    eprintln!(
        "schema checks: {} over {} requests ({} params); perl-only patterns skipped: {}",
        tally.checks,
        reqs.len(),
        params_seen,
        tally.skipped_patterns
    );
    assert!(
        tally.failures.is_empty(),
        "requests that do not validate:\n{}",
        tally.failures.join("\n")
    );
    assert!(tally.checks >= reqs.len() + params_seen);
}

#[test]
fn the_validator_rejects_what_pve_would_reject() {
    let s = schema::Schema::load();
    let mut t = schema::Tally::default();
    let p = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    s.validate(
        "PUT",
        "/nodes/pve/lxc/100/config",
        &p(&[("node", "pve"), ("vmid", "100"), ("hostnmae", "x")]),
        &mut t,
    );
    s.validate(
        "POST",
        "/nodes/pve/lxc",
        &p(&[
            ("node", "pve"),
            ("vmid", "100"),
            ("ostemplate", "x"),
            ("restore", "yes"),
        ]),
        &mut t,
    );
    s.validate(
        "PUT",
        "/nodes/pve/lxc/100/config",
        &p(&[
            ("node", "pve"),
            ("vmid", "100"),
            ("net0", "name=eth0,bogus=1"),
        ]),
        &mut t,
    );
    s.validate(
        "PUT",
        "/nodes/pve/lxc/100/config",
        &p(&[
            ("node", "pve"),
            ("vmid", "100"),
            ("net0", "name=eth0,bridge=vmbr0,tag=5000"),
        ]),
        &mut t,
    );
    s.validate("POST", "/nodes/pve/lxc/100/config", &p(&[]), &mut t);
    assert_eq!(t.failures.len(), 5, "{:#?}", t.failures);
    assert!(
        t.failures
            .iter()
            .any(|f| f.contains(" net0.tag=\"5000\": above maximum 4094")),
        "{:#?}",
        t.failures
    );
}

/// Every route in the table is answered by its handler: none answers 501 (which is what a
/// route listed but not dispatched used to answer), and a path outside the table does.
#[tokio::test]
async fn every_listed_route_is_dispatched() {
    let env = Env::start(0.02, "").await;
    let c = &env.client;
    let upid = "UPID:pve:00000001:00000001:00000001:vzstart:999999:root@pam:";
    let mut checked = 0;
    for (method, path) in pve_sim::routes() {
        let concrete = path
            .replace("{node}", "pve")
            .replace("{vmid}", "999999")
            .replace("{storage}", "local")
            .replace("{upid}", upid);
        let r: Result<serde_json::Value, _> = match method {
            "GET" => c.get(&concrete, &[]).await,
            "POST" => c.post(&concrete, &[]).await,
            "PUT" => c.put(&concrete, &[]).await,
            "DELETE" => c.delete(&concrete, &[]).await,
            other => panic!("unexpected method {other}"),
        };
        assert!(
            !matches!(r, Err(pve_api::ApiError::NotImplemented { .. })),
            "{method} {path} answered 501: {r:?}"
        );
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
    let r: Result<serde_json::Value, _> = c.get("/nodes/pve/qemu", &[]).await;
    assert!(
        matches!(r, Err(pve_api::ApiError::NotImplemented { .. })),
        "{r:?}"
    );
}
