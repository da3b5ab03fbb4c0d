//! The node task list (`GET /nodes/{node}/tasks`) as pve-manager `PVE/API2/Tasks.pm`
//! `node_tasks` answers it, and the client's batched task watching built on it
//! (`pve_api::watch`): many tasks of a node observed with one request per poll.

mod common;
#[path = "common/schema.rs"]
mod schema;

use std::collections::BTreeMap;

use common::*;
use pve_api::watch::{TaskEntry, TaskQuery, TaskSource};
use pve_api::{ApiError, WaitOptions};
use serde_json::Value;

async fn list(env: &Env, q: &[(&str, &str)]) -> Vec<Value> {
    let q: Vec<(&str, String)> = q.iter().map(|(k, v)| (*k, v.to_string())).collect();
    env.client
        .get::<Vec<Value>>("/nodes/pve/tasks", &q)
        .await
        .unwrap()
}

fn types(l: &[Value]) -> Vec<String> {
    l.iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// Sources, `RUNNING`, the filters, `start`/`limit` and the answer's shape, as `Tasks.pm`
/// has them: `archive` (the default) lists finished tasks only, `active` running ones with
/// `status: RUNNING` and no `endtime`, `all` the active ones first; a running task filters
/// as `unknown` (its status is set after the filters); `errors` drops `ok`; `statusfilter`
/// takes `pve-task-status-type` values only.
#[tokio::test]
async fn the_node_task_list_answers_as_pve_does() {
    let env = Env::start(0.1, "").await; // resize: 1.2 s
    env.restore(1600, &[]).await.unwrap();
    env.restore(1601, &[]).await.unwrap();
    let upid = env
        .client
        .lxc_resize("pve", vmid(1600), "rootfs", "12G")
        .await
        .unwrap();

    let archive = list(&env, &[]).await;
    assert_eq!(types(&archive), ["vzrestore", "vzrestore"], "{archive:?}");
    assert_eq!(archive[0]["id"], "1601", "the last ended first");
    assert!(archive
        .iter()
        .all(|e| e["status"] == "OK" && e["endtime"].is_i64()));

    let active = list(&env, &[("source", "active")]).await;
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["upid"], upid.to_string());
    assert_eq!(active[0]["status"], "RUNNING");
    assert!(active[0].get("endtime").is_none());

    let all = list(&env, &[("source", "all")]).await;
    assert_eq!(types(&all), ["resize", "vzrestore", "vzrestore"]);
    let by = |q: &'static [(&'static str, &'static str)]| {
        let env = &env;
        async move { types(&list(env, q).await) }
    };
    assert_eq!(
        by(&[("source", "all"), ("typefilter", "resize")]).await,
        ["resize"]
    );
    assert_eq!(
        by(&[("source", "all"), ("statusfilter", "ok")]).await,
        ["vzrestore", "vzrestore"]
    );
    assert_eq!(
        by(&[("source", "all"), ("statusfilter", "unknown,WARNING")]).await,
        ["resize"]
    );
    // `errors` wins over `statusfilter` and keeps everything but `ok`.
    assert_eq!(
        by(&[("source", "all"), ("errors", "1"), ("statusfilter", "ok")]).await,
        ["resize"]
    );
    assert_eq!(
        by(&[("source", "all"), ("vmid", "1601")]).await,
        ["vzrestore"]
    );
    assert_eq!(by(&[("source", "all"), ("start", "1")]).await.len(), 2);
    assert_eq!(by(&[("source", "all"), ("limit", "1")]).await, ["resize"]);
    assert!(by(&[("source", "all"), ("limit", "0")]).await.is_empty());
    assert!(by(&[("source", "all"), ("userfilter", "nobody")])
        .await
        .is_empty());
    assert_eq!(
        by(&[("source", "all"), ("userfilter", "FELHOM@PVE")])
            .await
            .len(),
        3
    );
    let start = upid.starttime.to_string();
    let later = (upid.starttime + 3600).to_string();
    assert!(list(&env, &[("source", "all"), ("since", later.as_str())])
        .await
        .is_empty());
    assert_eq!(
        list(&env, &[("source", "all"), ("until", "0")]).await.len(),
        0
    );
    assert!(!list(&env, &[("source", "all"), ("since", start.as_str())])
        .await
        .is_empty());
    match env
        .client
        .get::<Value>("/nodes/pve/tasks", &[("statusfilter", "ok,bogus".into())])
        .await
    {
        Err(ApiError::Param { errors, .. }) => {
            assert_eq!(errors["statusfilter"], "invalid status 'bogus'")
        }
        other => panic!("expected a 400 on statusfilter, got {other:?}"),
    }

    // The typed call reads the same answer.
    let typed: Vec<TaskEntry> = env
        .client
        .node_tasks(
            "pve",
            &TaskQuery {
                source: Some(TaskSource::Active),
                ..TaskQuery::default()
            },
        )
        .await
        .unwrap();
    assert!(typed.iter().all(TaskEntry::is_running));

    // Every entry has the schema's item properties, typed as it says.
    let s = schema::Schema::load();
    let info = s.info("GET", "/nodes/{node}/tasks").unwrap();
    let props = info["returns"]["items"]["properties"].as_object().unwrap();
    for e in &all {
        for (k, p) in props {
            match e.get(k) {
                None => assert!(p["optional"] == 1, "{k} missing in {e}"),
                Some(v) => match p["type"].as_str().unwrap() {
                    "integer" => assert!(v.is_i64(), "{k} of {e}"),
                    _ => assert!(v.is_string(), "{k} of {e}"),
                },
            }
        }
        let extra: Vec<&String> = e
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !props.contains_key(*k) && *k != "tokenid")
            .collect();
        assert!(extra.is_empty(), "not in the schema: {extra:?}");
    }
    env.client
        .wait_task(&upid, &WaitOptions::default())
        .await
        .unwrap();

    // Every request sent validates against the endpoint's parameter schema.
    let mut tally = schema::Tally::default();
    for r in env.requests().await.as_array().unwrap() {
        let params: BTreeMap<String, String> = serde_json::from_value(r["params"].clone()).unwrap();
        let path = r["path"].as_str().unwrap().trim_start_matches("/api2/json");
        if r["status"] == 400 {
            continue; // the refused statusfilter above
        }
        s.validate(r["method"].as_str().unwrap(), path, &params, &mut tally);
    }
    assert!(tally.failures.is_empty(), "{:#?}", tally.failures);
}

/// Eight tasks in flight on one node are watched through the node's task list: no status
/// request per task, list requests at least the gap apart, and far fewer of them than
/// eight separate waits would poll. Each wait still ends with its own outcome.
#[tokio::test]
async fn many_tasks_of_a_node_are_watched_with_one_request_per_poll() {
    let env = Env::start(0.1, "").await; // resize: 1.2 s
    for v in 1610..1618 {
        env.restore(v, &[]).await.unwrap();
    }
    let before = env.requests().await.as_array().unwrap().len();
    let mut upids = Vec::new();
    for v in 1610..1618 {
        upids.push(
            env.client
                .lxc_resize("pve", vmid(v), "rootfs", "12G")
                .await
                .unwrap(),
        );
    }
    let opts = WaitOptions::default();
    let waits = upids.iter().map(|u| env.client.watch_task(u, &opts));
    let outcomes = futures::future::join_all(waits).await;
    for o in &outcomes {
        assert_eq!(o.as_ref().unwrap().exitstatus, "OK", "{o:?}");
    }
    let looks: u32 = outcomes.iter().map(|o| o.as_ref().unwrap().polls).sum();
    let reqs = env.requests().await;
    let reqs = &reqs.as_array().unwrap()[before..];
    let status_reads = reqs
        .iter()
        .filter(|r| r["path"].as_str().unwrap().ends_with("/status"))
        .count();
    let lists: Vec<u64> = reqs
        .iter()
        .filter(|r| r["path"].as_str().unwrap().ends_with("/nodes/pve/tasks"))
        .map(|r| r["at_ms"].as_u64().unwrap())
        .collect();
    eprintln!(
        "{} looks by 8 waits, {} list requests, {status_reads} status reads",
        looks,
        lists.len()
    );
    assert_eq!(status_reads, 0, "no status request per task");
    assert!(!lists.is_empty());
    assert!(
        (lists.len() as u32) * 3 <= looks,
        "looks are shared: {} requests for {looks} looks",
        lists.len()
    );
    // The gap between two list requests (100 ms; the log's clock has ms resolution).
    assert!(
        lists.windows(2).all(|w| w[1] - w[0] >= 95),
        "list requests closer than the gap: {lists:?}"
    );
}
