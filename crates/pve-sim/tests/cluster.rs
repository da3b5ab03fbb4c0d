//! Issue 17, deliverable 1: the simulator as a cluster of nodes on one HTTPS port. Each test
//! drives the real client over real HTTPS and names the Perl source whose behaviour it
//! checks (audit §2 (c); docs/pve-fidelity.md).

mod common;
#[path = "common/schema.rs"]
mod schema;

use std::time::Duration;

use common::*;
use pve_api::{ApiError, ResourceType, WaitOptions};
use serde_json::{json, Value};

async fn get(env: &Env, path: &str) -> Result<Value, ApiError> {
    env.client.get::<Value>(path, &[]).await
}

fn entry<'a>(all: &'a [Value], id: &str) -> &'a Value {
    all.iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {all:#?}"))
}

/// The cluster invariants and the volume ones (these tests restore the golden without
/// `unique`, so its MAC repeats on purpose).
fn assert_cluster_clean(st: &Value) {
    let v = pve_sim::invariants::check(st);
    assert!(
        v.duplicate_vmids.is_empty()
            && v.misplaced_volumes.is_empty()
            && v.leaked_volumes.is_empty()
            && v.detached_volumes.is_empty(),
        "{v:?}"
    );
}

fn message(e: &ApiError) -> String {
    e.to_string()
}

/// `/nodes` lists every node (pve-manager `PVE/API2/Nodes.pm` `index`, from the corosync
/// member list); `/cluster/status` has the cluster entry and one entry per node
/// (`PVE/API2/Cluster.pm` `get_status`). With N = 1 the single node is `pve`, a standalone
/// host without a cluster entry.
#[tokio::test]
async fn nodes_and_cluster_status_list_every_node() {
    let env = Env::start_cluster(0.02, "", 3).await;
    let nodes = get(&env, "/nodes").await.unwrap();
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pve1", "pve2", "pve3"]);
    assert!(nodes
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["status"] == "online" && n["maxmem"].as_u64().unwrap() > 0));
    let status = get(&env, "/cluster/status").await.unwrap();
    let status = status.as_array().unwrap();
    assert_eq!(status.len(), 4, "{status:#?}");
    assert_eq!(status[0]["type"], "cluster");
    assert_eq!(status[0]["nodes"], 3);
    assert_eq!(status[0]["quorate"], 1);
    for (i, n) in ["pve1", "pve2", "pve3"].iter().enumerate() {
        let e = entry(status, &format!("node/{n}"));
        assert_eq!(e["type"], "node");
        assert_eq!(e["name"], *n);
        assert_eq!(e["online"], 1);
        assert_eq!(e["nodeid"], i + 1);
    }

    let single = Env::start(0.02, "").await;
    let nodes = get(&single, "/nodes").await.unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["node"], "pve");
    let status = get(&single, "/cluster/status").await.unwrap();
    assert_eq!(status.as_array().unwrap().len(), 1);
    assert_eq!(status[0]["type"], "node");
    assert_eq!(status[0]["name"], "pve");

    // An unknown node keeps today's text.
    let e = get(&env, "/nodes/nope/lxc").await.unwrap_err();
    assert!(message(&e).contains("no such cluster node 'nope'"), "{e}");
}

/// `/cluster/nextid` reads pmxcfs's vmlist, which covers every node, and reserves nothing
/// (pve-manager `PVE/API2/Cluster.pm` L1013-1053).
#[tokio::test]
async fn nextid_is_cluster_wide_and_reserves_nothing() {
    let env = Env::start_cluster(0.02, "", 3).await;
    assert_eq!(env.client.next_id(None).await.unwrap(), vmid(100));
    env.restore_on("pve2", 100, &[]).await.unwrap();
    env.restore_on("pve3", 101, &[]).await.unwrap();
    assert_eq!(env.client.next_id(None).await.unwrap(), vmid(102));
    // Asked twice, the same answer: nothing was reserved.
    assert_eq!(env.client.next_id(None).await.unwrap(), vmid(102));
    let e = env.client.next_id(Some(vmid(100))).await.unwrap_err();
    assert!(message(&e).contains("VM 100 already exists"), "{e}");
    assert_eq!(
        env.client.next_id(Some(vmid(105))).await.unwrap(),
        vmid(105)
    );
}

/// Two nodes restoring one VMID at once: the placeholder config decides (pve-cluster
/// `pmxcfs/memdb.c` L717-724 refuses a second config of a VMID on any node), and the loser
/// hears `check_vmid_unused`'s text naming the owner (`PVE/Cluster.pm` L785-797). Flocks
/// are node-local, so the loser does not wait for the winner's lock.
#[tokio::test]
async fn two_concurrent_restores_of_one_vmid_on_two_nodes_one_wins() {
    let env = Env::start_cluster(0.02, "", 3).await;
    let params = |id: u32| -> Vec<(String, String)> {
        vec![
            ("vmid".into(), id.to_string()),
            ("ostemplate".into(), GOLDEN_VOLID.into()),
            ("restore".into(), "1".into()),
            ("storage".into(), "local-lvm".into()),
        ]
    };
    for id in 300..306u32 {
        let (p1, p2) = (params(id), params(id));
        let (a, b) = tokio::join!(
            env.client.lxc_create("pve1", &p1),
            env.client.lxc_create("pve2", &p2)
        );
        let (winner, upid, loser_err) = match (a, b) {
            (Ok(u), Err(e)) => ("pve1", u, e),
            (Err(e), Ok(u)) => ("pve2", u, e),
            other => panic!("exactly one restore of {id} must win: {other:?}"),
        };
        assert!(
            matches!(loser_err, ApiError::AlreadyExists { .. }),
            "{loser_err:?}"
        );
        assert!(
            message(&loser_err).contains(&format!("CT {id} already exists on node '{winner}'")),
            "{loser_err}"
        );
        env.client
            .wait_task(&upid, &WaitOptions::default())
            .await
            .unwrap();
        // A later restore on a third node names the owner, not itself.
        let e = env.restore_on("pve3", id, &[]).await.unwrap_err();
        assert!(
            message(&e).contains(&format!("CT {id} already exists on node '{winner}'")),
            "{e}"
        );
    }
    let st = env.state().await;
    let guests = st["guests"].as_array().unwrap();
    assert_eq!(guests.len(), 6);
    assert_cluster_clean(&st);
}

/// A guest's config lives on one node: another node's `load_config` dies with
/// `Configuration file 'nodes/<asked-node>/lxc/<id>.conf' does not exist` (pve-container
/// `PVE/LXC/Config.pm` via `PVE/AbstractConfig.pm` `load_config`; audit §2 (c)). Tasks
/// are per node: the UPID names the node, and another node has no such task (pve-manager
/// `PVE/API2/Tasks.pm` reads the task file of the node it runs on).
#[tokio::test]
async fn a_guest_and_its_tasks_are_only_on_their_node() {
    let env = Env::start_cluster(0.02, "", 3).await;
    let params = vec![
        ("vmid".to_string(), "100".to_string()),
        ("ostemplate".into(), GOLDEN_VOLID.into()),
        ("restore".into(), "1".into()),
        ("storage".into(), "local-lvm".into()),
    ];
    let upid = env.client.lxc_create("pve2", &params).await.unwrap();
    assert_eq!(upid.node, "pve2");
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    env.client.lxc_config("pve2", vmid(100)).await.unwrap();
    let e = env.client.lxc_config("pve1", vmid(100)).await.unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    assert!(
        message(&e).contains("Configuration file 'nodes/pve1/lxc/100.conf' does not exist"),
        "{e}"
    );
    let e = env.client.lxc_status("pve3", vmid(100)).await.unwrap_err();
    assert!(
        message(&e).contains("Configuration file 'nodes/pve3/lxc/100.conf' does not exist"),
        "{e}"
    );
    let on = |n: &'static str| {
        let c = &env.client;
        async move {
            let l: Vec<Value> = c.get(&format!("/nodes/{n}/lxc"), &[]).await.unwrap();
            l.iter()
                .map(|g| g["vmid"].as_u64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(on("pve2").await, [100]);
    assert!(on("pve1").await.is_empty());

    // The task is pve2's only.
    let up = upid.to_string();
    let e = get(&env, &format!("/nodes/pve1/tasks/{up}/status"))
        .await
        .unwrap_err();
    assert!(message(&e).contains("no such task"), "{e}");
    get(&env, &format!("/nodes/pve2/tasks/{up}/status"))
        .await
        .unwrap();
    let listed = |n: &'static str| {
        let c = &env.client;
        async move {
            let l: Vec<Value> = c
                .get(&format!("/nodes/{n}/tasks"), &[("source", "all".into())])
                .await
                .unwrap();
            l.iter()
                .map(|t| t["upid"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("pve2").await, vec![up]);
    assert!(listed("pve1").await.is_empty());

    // A start sent to the wrong node gets a UPID of that node, and its worker cannot load
    // the config (pve-container `API2/LXC/Status.pm` `vm_start` forks before load_config).
    let u = env.client.lxc_start("pve1", vmid(100)).await.unwrap();
    assert_eq!(u.node, "pve1");
    let e = env
        .client
        .wait_task(&u, &WaitOptions::default())
        .await
        .unwrap_err();
    assert!(message(&e).contains("nodes/pve1/lxc/100.conf"), "{e}");
    let s = env.client.lxc_status("pve2", vmid(100)).await.unwrap();
    assert_eq!(s.status, "stopped");
}

/// `/cluster/resources` covers every node in one read (pve-manager `PVE/API2/Cluster.pm`
/// L262-660, `PVE/API2Tools.pm` `extract_vm_stats`, `extract_node_stats`,
/// `extract_storage_stats`): the guest on its node, one storage entry per node and storage
/// with that node's own figures for node-local storages, node memory growing with the
/// running guests; and after an offline migration (`pct migrate`, pve-container
/// `PVE/LXC/Migrate.pm` phase1: the config file renamed into the target node's directory,
/// local volumes moved under the same names) the guest and its disk are on the target.
#[tokio::test]
async fn resources_show_every_node_and_follow_a_migration() {
    let env = Env::start_cluster(0.02, "", 3).await;
    env.restore_on("pve2", 100, &[]).await.unwrap();
    let all = env.client.cluster_resources(None).await.unwrap();
    let all: Vec<Value> = all
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    let raw: Vec<Value> = env.client.get("/cluster/resources", &[]).await.unwrap();
    assert_eq!(all.len(), raw.len());
    let ct = entry(&raw, "lxc/100");
    assert_eq!(ct["node"], "pve2");
    assert_eq!(ct["type"], "lxc");
    assert_eq!(ct["status"], "stopped");
    assert_eq!(ct["template"], 0);
    assert_eq!(ct["maxmem"], 2048u64 << 20);
    assert!(ct["maxdisk"].as_u64().unwrap() > 0);
    let storages: Vec<&Value> = raw.iter().filter(|e| e["type"] == "storage").collect();
    assert_eq!(storages.len(), 6, "{storages:#?}");
    let disk = |raw: &[Value], n: &str| {
        entry(raw, &format!("storage/{n}/local-lvm"))["disk"]
            .as_u64()
            .unwrap()
    };
    let used = disk(&raw, "pve2");
    assert!(used > 0);
    assert_eq!(disk(&raw, "pve1"), 0);
    assert_eq!(disk(&raw, "pve3"), 0);
    assert_eq!(entry(&raw, "storage/pve2/local-lvm")["shared"], 0);
    for n in ["pve1", "pve2", "pve3"] {
        let e = entry(&raw, &format!("node/{n}"));
        assert_eq!(e["status"], "online");
        assert_eq!(e["node"], n);
    }
    let mem = |raw: &[Value], n: &str| entry(raw, &format!("node/{n}"))["mem"].as_u64().unwrap();
    assert_eq!(mem(&raw, "pve1"), mem(&raw, "pve2"));

    // Running, the guest's memory counts on its node.
    let u = env.client.lxc_start("pve2", vmid(100)).await.unwrap();
    env.client
        .wait_task(&u, &WaitOptions::default())
        .await
        .unwrap();
    let raw: Vec<Value> = env
        .client
        .get("/cluster/resources", &[("type", "node".into())])
        .await
        .unwrap();
    assert_eq!(raw.len(), 3);
    assert_eq!(mem(&raw, "pve2"), mem(&raw, "pve1") + (2048u64 << 20));
    let u = env.client.lxc_stop("pve2", vmid(100)).await.unwrap();
    env.client
        .wait_task(&u, &WaitOptions::default())
        .await
        .unwrap();

    let moved = env.migrate(100, "pve3").await.unwrap();
    assert_eq!(moved["from"], "pve2");
    let raw: Vec<Value> = env.client.get("/cluster/resources", &[]).await.unwrap();
    assert_eq!(entry(&raw, "lxc/100")["node"], "pve3");
    assert_eq!(disk(&raw, "pve3"), used);
    assert_eq!(disk(&raw, "pve2"), 0);
    let vm = env
        .client
        .cluster_resources(Some(ResourceType::Vm))
        .await
        .unwrap();
    assert_eq!(vm.len(), 1);
    assert_eq!(vm[0].node.as_deref(), Some("pve3"));
    let conf = env.client.lxc_config("pve3", vmid(100)).await.unwrap();
    let e = env.client.lxc_config("pve2", vmid(100)).await.unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    // Same volume names on the target.
    let st = env.state().await;
    let vols: Vec<&Value> = st["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["owner"] == 100)
        .collect();
    assert!(!vols.is_empty());
    for v in &vols {
        assert_eq!(v["node"], "pve3", "{v}");
        assert!(conf
            .get_str("rootfs")
            .is_some_and(|r| r.starts_with(v["volid"].as_str().unwrap())));
    }
    assert_eq!(st["counters"]["migrations"], 1);
    assert_cluster_clean(&st);
    // And it runs there.
    let u = env.client.lxc_start("pve3", vmid(100)).await.unwrap();
    env.client
        .wait_task(&u, &WaitOptions::default())
        .await
        .unwrap();
}

/// `pct migrate` of a running container without `--online`/`--restart` dies before
/// anything moves: `can't migrate running container without --online or --restart`
/// (pve-container `src/PVE/API2/LXC.pm` `migrate_vm`, "try to detect errors early").
#[tokio::test]
async fn migrating_a_running_guest_is_refused() {
    let env = Env::start_cluster(0.02, "", 2).await;
    env.restore_on("pve1", 100, &[("start", "1")])
        .await
        .unwrap();
    let w = WaitOptions::default();
    // `start=1` runs a separate vzstart task after the restore.
    for _ in 0..100 {
        let s = env.client.lxc_status("pve1", vmid(100)).await.unwrap();
        if s.status == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = env.migrate(100, "pve2").await.unwrap_err();
    assert!(
        message(&e).contains("can't migrate running container without --online or --restart"),
        "{e}"
    );
    let raw: Vec<Value> = env.client.get("/cluster/resources", &[]).await.unwrap();
    assert_eq!(entry(&raw, "lxc/100")["node"], "pve1");
    // Unknown target and the node it is on are refused too.
    let u = env.client.lxc_stop("pve1", vmid(100)).await.unwrap();
    env.client.wait_task(&u, &w).await.unwrap();
    let e = env.migrate(100, "nope").await.unwrap_err();
    assert!(message(&e).contains("no such cluster node 'nope'"), "{e}");
    let e = env.migrate(100, "pve1").await.unwrap_err();
    assert!(message(&e).contains("target is local node"), "{e}");
}

/// A down node: the receiving node proxies to it and the connection fails, so the client
/// gets AnyEvent::HTTP's 595 with an empty body (pve-manager `PVE/HTTPServer.pm` L176-190,
/// pve-http-server `AnyEvent.pm` `proxy_request`); the other nodes answer; its guests show
/// `status: unknown` in `/cluster/resources` (no fresh RRD data); its tasks stop and go on
/// when it is back, with its state intact.
#[tokio::test]
async fn a_down_node_answers_595_and_its_tasks_resume_after_clear() {
    let env = Env::start_cluster(0.1, "", 3).await;
    env.restore_on("pve2", 100, &[]).await.unwrap();
    env.restore_on("pve1", 101, &[]).await.unwrap();
    // START is 1 s modelled: 100 ms here. The node goes down while it runs.
    let upid = env.client.lxc_start("pve2", vmid(100)).await.unwrap();
    let now = env.fault_set("node_down:pve2").await;
    assert_eq!(now["node_down"], json!(["pve2"]));

    let e = get(&env, "/nodes/pve2/lxc").await.unwrap_err();
    match &e {
        ApiError::AnswerLost { status, .. } => assert_eq!(*status, 595),
        other => panic!("{other:?}"),
    }
    let e = env.client.task_status(&upid).await.unwrap_err();
    assert!(
        matches!(e, ApiError::AnswerLost { status: 595, .. }),
        "{e:?}"
    );
    // Other nodes are fine.
    env.client.lxc_config("pve1", vmid(101)).await.unwrap();
    let raw: Vec<Value> = env.client.get("/cluster/resources", &[]).await.unwrap();
    assert_eq!(entry(&raw, "lxc/100")["status"], "unknown");
    assert_eq!(entry(&raw, "lxc/101")["status"], "stopped");
    assert_eq!(entry(&raw, "node/pve2")["status"], "offline");
    assert_eq!(entry(&raw, "node/pve1")["status"], "online");
    assert_eq!(entry(&raw, "storage/pve2/local-lvm")["status"], "unknown");
    let status = get(&env, "/cluster/status").await.unwrap();
    assert_eq!(entry(status.as_array().unwrap(), "node/pve2")["online"], 0);

    // Well past the start's modelled time, the task has not advanced.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let st = env.state().await;
    let t = st["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["upid"] == upid.to_string())
        .unwrap()
        .clone();
    assert_eq!(t["status"], "running", "{t}");
    let g = st["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == 100)
        .unwrap()
        .clone();
    assert_eq!(g["status"], "stopped");
    assert!(st["counters"]["node_down_595"].as_u64().unwrap() >= 2);
    assert_eq!(st["faults"]["node_down"], json!(["pve2"]));

    let now = env.fault_clear("node_down:pve2").await;
    assert_eq!(now["node_down"], json!([]));
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();
    let s = env.client.lxc_status("pve2", vmid(100)).await.unwrap();
    assert_eq!(s.status, "running");
    let raw: Vec<Value> = env.client.get("/cluster/resources", &[]).await.unwrap();
    assert_eq!(entry(&raw, "lxc/100")["status"], "running");
}

/// Without quorum, create/restore and start die in `check_cfs_quorum` with `cluster not
/// ready - no quorum?` (pve-cluster `PVE/Cluster.pm` L121-132), a config write fails on the
/// read-only `/etc/pve` (text not verified), and reads go on.
#[tokio::test]
async fn without_quorum_creates_starts_and_config_writes_fail_and_reads_work() {
    let env = Env::start_cluster(0.02, "", 2).await;
    env.restore_on("pve1", 100, &[]).await.unwrap();
    env.fault_set("no_quorum").await;
    let e = env.restore_on("pve2", 101, &[]).await.unwrap_err();
    assert!(
        message(&e).contains("cluster not ready - no quorum?"),
        "{e}"
    );
    let e = env.client.lxc_start("pve1", vmid(100)).await.unwrap_err();
    assert!(
        message(&e).contains("cluster not ready - no quorum?"),
        "{e}"
    );
    let e = env
        .client
        .put::<Value>("/nodes/pve1/lxc/100/config", &[("memory", "1024".into())])
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Server { status: 500, .. }), "{e:?}");
    // Reads work.
    let conf = env.client.lxc_config("pve1", vmid(100)).await.unwrap();
    assert_eq!(conf.get_string("memory").as_deref(), Some("2048"));
    env.client.cluster_resources(None).await.unwrap();
    let status = get(&env, "/cluster/status").await.unwrap();
    assert_eq!(status[0]["quorate"], 0);
    let st = env.state().await;
    assert!(st["counters"]["no_quorum"].as_u64().unwrap() >= 3);
    assert!(st["guests"].as_array().unwrap().len() == 1);
    let conf = env.client.lxc_config("pve1", vmid(100)).await.unwrap();
    assert_eq!(conf.get_string("memory").as_deref(), Some("2048"));

    env.fault_clear("no_quorum").await;
    let u = env.client.lxc_start("pve1", vmid(100)).await.unwrap();
    env.client
        .wait_task(&u, &WaitOptions::default())
        .await
        .unwrap();
    env.restore_on("pve2", 101, &[]).await.unwrap();
}

/// `--faults node_down:<n>,no_quorum` at start: in force from the first request; an unknown
/// node is a clear start error.
#[tokio::test]
async fn cluster_faults_given_at_start() {
    let env = Env::start_cluster(0.02, "node_down:pve3,no_quorum", 3).await;
    let e = get(&env, "/nodes/pve3/storage").await.unwrap_err();
    assert!(
        matches!(e, ApiError::AnswerLost { status: 595, .. }),
        "{e:?}"
    );
    get(&env, "/nodes/pve1/storage").await.unwrap();
    let status = get(&env, "/cluster/status").await.unwrap();
    assert_eq!(status[0]["quorate"], 0);
    // In process, the handle clears them as the side channel does.
    env.sim().cluster_fault("node_down:pve3", false).unwrap();
    env.sim().cluster_fault("no_quorum", false).unwrap();
    assert!(env.sim().cluster_fault("node_down:pve9", true).is_err());
    get(&env, "/nodes/pve3/storage").await.unwrap();
    env.restore_on("pve3", 100, &[]).await.unwrap();
    assert_eq!(env.sim().migrate(100, "pve1").await.unwrap(), "pve3");
    env.client.lxc_config("pve1", vmid(100)).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let r = pve_sim::start(pve_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.path().to_path_buf(),
        node: "pve".into(),
        nodes: vec!["a".into(), "b".into()],
        faults: "node_down:c".parse().unwrap(),
        time_scale: 0.02,
        guests: Default::default(),
    })
    .await;
    let e = r.err().expect("an unknown node_down node must not start");
    assert!(e.to_string().contains("node_down:c: no such node"), "{e}");
}

/// A state saved before clusters (no node list, no `node` on guests and volumes) loads as
/// the single node it was.
#[tokio::test]
async fn a_single_node_state_from_before_clusters_still_loads() {
    let env = Env::start(0.02, "").await;
    env.restore(100, &[]).await.unwrap();
    let env = env
        .restart_editing(|dir| {
            let p = dir.join("state.json");
            let mut st: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            st.as_object_mut().unwrap().remove("nodes");
            for g in st["guests"].as_object_mut().unwrap().values_mut() {
                g.as_object_mut().unwrap().remove("node").unwrap();
            }
            for v in st["volumes"].as_array_mut().unwrap() {
                v.as_object_mut().unwrap().remove("node").unwrap();
            }
            std::fs::write(&p, serde_json::to_vec(&st).unwrap()).unwrap();
        })
        .await;
    env.client.lxc_config("pve", vmid(100)).await.unwrap();
    let raw: Vec<Value> = env.client.get("/cluster/resources", &[]).await.unwrap();
    assert_eq!(entry(&raw, "lxc/100")["node"], "pve");
    assert!(
        entry(&raw, "storage/pve/local-lvm")["disk"]
            .as_u64()
            .unwrap()
            > 0
    );
}

/// The answers of `/nodes`, `/cluster/status` and `/cluster/resources` on a cluster use
/// only fields PVE's schema names for them.
#[tokio::test]
async fn cluster_answers_use_schema_fields() {
    let env = Env::start_cluster(0.02, "", 3).await;
    env.restore_on("pve2", 100, &[]).await.unwrap();
    let s = schema::Schema::load();
    for path in ["/nodes", "/cluster/status", "/cluster/resources"] {
        let known = s.return_properties("GET", path);
        assert!(!known.is_empty(), "{path}");
        let answer = get(&env, path).await.unwrap();
        for a in answer.as_array().unwrap() {
            for k in a.as_object().unwrap().keys() {
                assert!(known.contains(k), "{path} answers {k:?}, not in the schema");
            }
        }
    }
}

/// Storages: a shared one is one pool every node sees (storage.cfg `shared 1`: the same
/// `disk` from every node, a migration leaves its volumes in place, pve-container
/// `PVE/LXC/Migrate.pm` skips shared volumes); one limited with `nodes` is not available
/// elsewhere (pve-storage `PVE/Storage.pm` `storage_check_node`).
#[tokio::test]
async fn shared_and_node_limited_storages() {
    let env = Env::start_cluster(0.02, "", 3).await;
    let add = |body: Value| {
        let c = &env.client;
        let secret = env.sim().side_channel_secret().to_string();
        async move {
            c.side_channel_post::<Value>("/felhom-sim/storages", &body, &secret)
                .await
        }
    };
    add(json!({ "id": "ceph", "type": "rbd", "content": ["images", "rootdir"], "shared": true }))
        .await
        .unwrap();
    add(json!({ "id": "nas", "type": "nfs", "content": ["backup"], "shared": true }))
        .await
        .unwrap();
    add(json!({ "id": "only1", "type": "dir", "content": ["backup"], "nodes": ["pve1"] }))
        .await
        .unwrap();
    let e = add(json!({ "id": "bad", "type": "dir", "content": ["backup"], "nodes": ["pve9"] }))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("pve9"), "{e}");
    for sid in ["nas", "only1"] {
        let dump = pve_sim::dump_dir(env.dir.path(), sid);
        std::fs::create_dir_all(&dump).unwrap();
        write_golden(&dump.join(GOLDEN), &pct_conf(""), true, None);
    }
    let restore = |node: &'static str, id: u32, archive: &'static str, storage: &'static str| {
        let c = &env.client;
        async move {
            let p = vec![
                ("vmid".to_string(), id.to_string()),
                ("ostemplate".into(), format!("{archive}:backup/{GOLDEN}")),
                ("restore".into(), "1".into()),
                ("storage".into(), storage.into()),
            ];
            let u = c.lxc_create(node, &p).await?;
            c.wait_task(&u, &WaitOptions::default()).await
        }
    };
    // The shared backup storage is readable from every node.
    restore("pve2", 100, "nas", "ceph").await.unwrap();
    restore("pve3", 101, "nas", "local-lvm").await.unwrap();
    // The node-limited one only from its node.
    restore("pve1", 102, "only1", "local-lvm").await.unwrap();
    let e = restore("pve2", 103, "only1", "local-lvm")
        .await
        .unwrap_err();
    assert!(
        message(&e).contains("storage 'only1' is not available on node 'pve2'"),
        "{e}"
    );
    let raw: Vec<Value> = env.client.get("/cluster/resources", &[]).await.unwrap();
    let ceph: Vec<u64> = ["pve1", "pve2", "pve3"]
        .iter()
        .map(|n| {
            entry(&raw, &format!("storage/{n}/ceph"))["disk"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        ceph[0] > 0 && ceph.iter().all(|d| *d == ceph[0]),
        "{ceph:?}"
    );
    assert_eq!(entry(&raw, "storage/pve1/ceph")["shared"], 1);
    assert!(raw.iter().all(|e| e["id"] != "storage/pve2/only1"));
    assert!(raw.iter().any(|e| e["id"] == "storage/pve1/only1"));

    // A guest on shared storage migrates; its volume stays where it is, visible to all.
    env.migrate(100, "pve1").await.unwrap();
    let st = env.state().await;
    assert_cluster_clean(&st);
    let u = env.client.lxc_start("pve1", vmid(100)).await.unwrap();
    env.client
        .wait_task(&u, &WaitOptions::default())
        .await
        .unwrap();
    let list: Vec<Value> = env
        .client
        .get("/nodes/pve3/storage/ceph/content", &[])
        .await
        .unwrap();
    assert!(list.iter().any(|v| v["vmid"] == 100), "{list:#?}");
    // Node-local content is the node's own.
    let list: Vec<Value> = env
        .client
        .get("/nodes/pve1/storage/local-lvm/content", &[])
        .await
        .unwrap();
    let owners: Vec<u64> = list.iter().map(|v| v["vmid"].as_u64().unwrap()).collect();
    assert_eq!(owners, [102]);
}

/// A call for a down node is permission-checked on the receiving node before the proxy hop
/// fails (pve-manager `PVE/HTTPServer.pm` L176-190: `check_api2_permissions`, then
/// `proxy_request`): a token without the schema's privilege gets the 403, one with it the
/// 595.
#[tokio::test]
async fn a_down_node_checks_permissions_before_595() {
    let env = Env::start_cluster(0.02, "", 2).await;
    env.restore_on("pve2", 100, &[]).await.unwrap();
    let narrow = env
        .token(
            "audit",
            json!([{ "path": "/vms/100", "privs": ["VM.Audit"] }]),
        )
        .await;
    env.fault_set("node_down:pve2").await;
    let e = narrow.lxc_config("pve2", vmid(100)).await.unwrap_err();
    assert!(
        matches!(e, ApiError::AnswerLost { status: 595, .. }),
        "{e:?}"
    );
    let e = narrow.lxc_start("pve2", vmid(100)).await.unwrap_err();
    match &e {
        ApiError::Permission {
            path, privilege, ..
        } => {
            assert_eq!(path.as_deref(), Some("/vms/100"));
            assert_eq!(privilege.as_deref(), Some("VM.PowerMgmt"));
        }
        other => panic!("{other:?}"),
    }
    let e = narrow.lxc_config("pve2", vmid(101)).await.unwrap_err();
    assert!(matches!(e, ApiError::Permission { .. }), "{e:?}");
}
