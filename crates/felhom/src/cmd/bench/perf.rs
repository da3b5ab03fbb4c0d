//! `felhom bench perf`: bring-up speed against the simulator's modelled task times, side by
//! side in one run at one time scale: the spike's sequence (`strategy = "restore-resize"`:
//! restore, resize task, mount write), restore-time sizing (`restore`, the default), linked
//! clone (`linked-clone`: the template published before the run, not measured) and the
//! naive baseline script
//! (`bench/naive_bringup.py`). Per mode: wall, floor, wall/floor, requests per guest, the
//! peak requests per second to the node, task-end detection, RSS and CPU; then the issue's
//! targets, met or not. Figures, not assertions.
//!
//! `--nodes N` (N > 1) runs the felhom modes on a simulated cluster (`pve1`..`pveN`) with
//! specs that name no node, so felhom places every guest; `--concurrency` is then per node
//! (`max_parallel_per_node` and `_per_storage`), and `max_parallel` is N × that, so the
//! global limit idles no node's slots. What it reports beside the totals, per node:
//!
//! | figure | how |
//! |---|---|
//! | guests | the guests whose tasks ran on that node (the simulator's state: each task's `node`) |
//! | floor | that node's guests' modelled chains (each task's `modelled_ms`, scaled, plus the modelled DHCP delay) list-scheduled on that node's `--concurrency` slots |
//! | overall floor | the largest per-node floor: nodes work in parallel, so no bring-up of the whole batch ends sooner |
//! | wall | from the batch's start to the end of that node's last guest's job |
//! | peak requests/s, per target node | the busiest second of the requests whose path names that node (`/nodes/<n>/…`); cluster-wide paths (`/cluster/…`, `/pools`, `/access/…`, `/version`) are answered by the node felhom talks to, which the bench takes to be the first node |
//! | peak requests/s, entry node (all requests) | the busiest second of every request: on a real cluster pveproxy on the node felhom talks to also receives (and proxies) every request for the other nodes |
//!
//! With one node both peaks are the same figure and the floor is the one node's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::sim_child::SimChild;
use felhom_core::config::{Config, Strategy};
use felhom_core::ops::Felhom;
use felhom_core::spec::GuestSpec;
use serde_json::{json, Value};

use crate::error::CliError;
use crate::output::{self, outln, OutputFormat};

#[derive(Args, Debug)]
pub struct PerfArgs {
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    pub guests: Vec<usize>,
    /// Simulator time scale (1.0 = PVE-like task durations).
    #[arg(long, default_value_t = 0.1)]
    pub time_scale: f64,
    /// Jobs at once (felhom's max_parallel, per node and per storage).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Skip the naive baseline.
    #[arg(long)]
    pub no_naive: bool,
    /// Bring one guest up and down first, so the batch starts from what an earlier run on
    /// this host learned of its task durations (an installation's steady state; the
    /// journal keeps them between runs).
    #[arg(long)]
    pub warm: bool,
    /// Which modes to run (restore-resize, restore, linked-clone, naive); all by default.
    #[arg(long, value_delimiter = ',', value_parser = ["restore-resize", "restore", "linked-clone", "naive"])]
    pub modes: Vec<String>,
    /// Also report each mode's requests per guest by endpoint (method and path, ids as `*`).
    #[arg(long)]
    pub by_endpoint: bool,
    /// felhom's per-node request budget for the run (`pve.max_requests_per_second`).
    #[arg(long, value_name = "N")]
    pub max_requests_per_second: Option<f64>,
    /// Simulated cluster nodes (1: the single node `pve`; N > 1: `pve1`..`pveN`, every guest
    /// placed by felhom, `--concurrency` per node).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
}

/// The most guests one run takes: 500 on one node; on a cluster, the simulator's VMID range
/// (1000–1999).
const MAX_GUESTS_ONE_NODE: usize = 500;
const MAX_GUESTS_CLUSTER: usize = 1000;
/// The simulator's limit on `--nodes`.
const MAX_NODES: usize = 64;

impl PerfArgs {
    fn runs(&self, mode: &str) -> bool {
        self.modes.is_empty() || self.modes.iter().any(|m| m == mode)
    }
}

/// Requests per guest by endpoint: `GET /nodes/*/lxc/*/config` (a path's numbers and UPIDs
/// as `*`), the busiest first.
fn by_endpoint(reqs: &[Value], n: usize) -> Vec<(String, f64)> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for r in reqs {
        let path = r["path"].as_str().unwrap_or("?");
        let shape: Vec<&str> = path
            .split('/')
            .enumerate()
            .map(|(i, seg)| {
                let node = i >= 2 && path.split('/').nth(i - 1) == Some("nodes");
                if node
                    || seg.starts_with("UPID:")
                    || seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty()
                {
                    "*"
                } else {
                    seg
                }
            })
            .collect();
        let key = format!(
            "{} {}",
            r["method"].as_str().unwrap_or("?"),
            shape.join("/")
        );
        *counts.entry(key).or_default() += 1;
    }
    let mut v: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(k, c)| (k, c as f64 / n.max(1) as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn rusage() -> (f64, u64) {
    // SAFETY: getrusage fills the struct we pass; no other preconditions.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    (cpu, ru.ru_maxrss as u64 * 1024)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

/// The makespan of the guests' modelled task chains on `slots` parallel slots (longest
/// first, each onto the earliest-free slot): the fastest any bring-up could be.
fn floor_ms(mut chains: Vec<u64>, slots: usize) -> u64 {
    chains.sort_unstable_by(|a, b| b.cmp(a));
    let mut free = vec![0u64; slots.max(1)];
    for c in chains {
        let (i, _) = free
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .unwrap_or((0, &0));
        free[i] += c;
    }
    free.into_iter().max().unwrap_or(0)
}

/// `n` guest specs on `node` (`"auto"`: placed by felhom).
fn specs(n: usize, golden: &str, node: &str) -> anyhow::Result<Vec<GuestSpec>> {
    (0..n)
        .map(|i| {
            let text = format!(
                "customer = \"bench{i}\"\nhostname = \"bench{i}\"\nvmid = {}\ngolden = \"{golden}\"\nnode = \"{node}\"\nstorage = \"local-lvm\"\nrootfs_size = \"12G\"\nbridge = \"vmbr0\"\n\n[[mount]]\nstorage = \"local-lvm\"\nsize = \"4G\"\npath = \"/srv/data\"\n",
                1000 + i
            );
            GuestSpec::parse_many(&text).map(|mut v| v.remove(0)).map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect()
}

fn naive_script() -> PathBuf {
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/naive_bringup.py");
    if built_in.exists() {
        built_in
    } else {
        PathBuf::from("bench/naive_bringup.py")
    }
}

/// Peak RSS since the last reset, and a reset (Linux: `5` into `clear_refs` resets VmHWM), so
/// each mode reports its own peak.
fn peak_rss_and_reset() -> Option<f64> {
    let kib = super::peak_rss_kib("self")?;
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    Some(kib as f64 / 1024.0)
}

/// The most requests in any one second of the run (a sliding window over the simulator's
/// request log): every request, as the node felhom talks to receives them.
fn peak_per_second(reqs: &[Value]) -> f64 {
    peak_of(reqs.iter().filter_map(|r| r["at_ms"].as_u64()).collect())
}

/// The most of these instants (ms) in any one second.
fn peak_of(mut at: Vec<u64>) -> f64 {
    at.sort_unstable();
    let (mut best, mut lo) = (0usize, 0usize);
    for hi in 0..at.len() {
        while at[hi] - at[lo] >= 1000 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as f64
}

/// The node a request is for: the one its path names (`/nodes/<n>/…`), else (`/cluster/…`,
/// `/pools`, `/access/…`, `/version`) `entry`, the node felhom talks to.
fn target_node<'a>(path: &'a str, entry: &'a str) -> &'a str {
    let mut segs = path.trim_start_matches('/').split('/');
    match (segs.next(), segs.next()) {
        (Some("nodes"), Some(n)) if !n.is_empty() => n,
        _ => entry,
    }
}

/// One node's share of a run, as the simulator saw it.
struct NodeSeen {
    node: String,
    /// The guests (VMIDs) whose tasks ran there.
    guests: Vec<String>,
    floor_s: f64,
    /// The busiest second of the requests for this node (see [`target_node`]).
    peak_rps: f64,
}

/// What the simulator saw of one mode's run: the floor, detection latencies, the request rate.
struct Seen {
    /// The largest per-node floor (one node: its floor).
    floor_s: f64,
    per_node: Vec<NodeSeen>,
    detect: Vec<f64>,
    next_write: Vec<f64>,
    peak_rps: f64,
    requests: usize,
    lock500: u64,
}

/// Floor: each guest's modelled task chain plus the modelled DHCP delay, scheduled on its
/// node's `slots`; the run's floor is the largest node's. Detection: from a task's end (the simulator's clock) to the first request that
/// could see it ended (its status, or the node's task list that watches every task); and,
/// as the issue defines it, to the next write on that guest — except after a start, where
/// the next write legitimately waits for the guest's lease and SSH keys.
/// `since_ms`: the run's start (the simulator's clock, UNIX ms): tasks started earlier (a
/// warm-up, a template's publish) are not the run's. `entry`: the node felhom talks to
/// (cluster-wide requests count as its).
fn seen(
    state: &Value,
    requests: &Value,
    since_ms: u64,
    time_scale: f64,
    slots: usize,
    entry: &str,
) -> Seen {
    let dhcp_ms = (1500.0 * time_scale) as u64;
    let tasks: Vec<&Value> = state["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["start_ms"].as_u64().unwrap_or(u64::MAX) >= since_ms)
        .collect();
    // Each guest's chain, on the node of its last task (where it lives at the end).
    let mut chains: std::collections::BTreeMap<&str, (&str, u64)> = Default::default();
    for t in &tasks {
        if let Some(id) = t["id"].as_str() {
            let c = chains.entry(id).or_insert((entry, dhcp_ms));
            c.0 = t["node"].as_str().unwrap_or(entry);
            c.1 += t["modelled_ms"].as_u64().unwrap_or(0);
        }
    }
    let reqs = requests.as_array().cloned().unwrap_or_default();
    let mut at_by_node: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for r in &reqs {
        if let Some(at) = r["at_ms"].as_u64() {
            let node = target_node(r["path"].as_str().unwrap_or(""), entry);
            at_by_node.entry(node).or_default().push(at);
        }
    }
    let mut by_node: std::collections::BTreeMap<&str, (Vec<String>, Vec<u64>)> = Default::default();
    for (id, (node, ms)) in &chains {
        let n = by_node.entry(node).or_default();
        n.0.push(id.to_string());
        n.1.push(*ms);
    }
    for node in at_by_node.keys() {
        by_node.entry(*node).or_default();
    }
    let per_node: Vec<NodeSeen> = by_node
        .into_iter()
        .map(|(node, (guests, chains))| NodeSeen {
            node: node.to_string(),
            guests,
            floor_s: floor_ms(chains, slots) as f64 / 1000.0,
            peak_rps: at_by_node.remove(node).map_or(0.0, peak_of),
        })
        .collect();
    let floor_s = per_node.iter().map(|n| n.floor_s).fold(0.0, f64::max);
    let mut detect = Vec::new();
    let mut next_write = Vec::new();
    for t in &tasks {
        let (Some(id), Some(end), Some(upid)) = (
            t["id"].as_str(),
            t["end_ms"].as_u64(),
            t["upid"]
                .as_str()
                .and_then(|u| u.parse::<pve_api::Upid>().ok()),
        ) else {
            continue;
        };
        let status_path = format!("/tasks/{}/status", upid.path_segment());
        let list_path = format!("/nodes/{}/tasks", upid.node);
        let seen = reqs
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&status_path) || p.ends_with(&list_path))
            })
            .filter_map(|r| r["at_ms"].as_u64())
            .filter(|at| *at >= end)
            .min();
        if let Some(seen) = seen {
            detect.push((seen - end) as f64);
        }
        if upid.task_type == "vzstart" {
            continue;
        }
        let needle = format!("/lxc/{id}");
        let next = reqs
            .iter()
            .filter(|r| {
                r["method"] != "GET"
                    && r["path"].as_str().is_some_and(|p| {
                        p.contains(&needle)
                            || (p.ends_with("/lxc") && r["params"]["vmid"].as_str() == Some(id))
                    })
            })
            .filter_map(|r| r["at_ms"].as_u64())
            .filter(|at| *at >= end)
            .min();
        if let Some(at) = next {
            next_write.push((at - end) as f64);
        }
    }
    Seen {
        floor_s,
        per_node,
        detect,
        next_write,
        peak_rps: peak_per_second(&reqs),
        requests: reqs.len(),
        lock500: state["counters"]["lock500"].as_u64().unwrap_or(0),
    }
}

/// One mode's row. `peak_requests_per_s` is the busiest node's (per target node),
/// `entry_peak_requests_per_s` every request's (the same figure on one node); `per_node` has
/// each node's guests, floor and peak (`wall_s` is added by [`felhom_mode`]).
fn figures(mode: &str, n: usize, wall: f64, s: Seen, rss: Option<f64>, cpu: Option<f64>) -> Value {
    let (mut detect, mut next_write) = (s.detect, s.next_write);
    let per_node: Vec<Value> = s
        .per_node
        .iter()
        .map(|p| {
            json!({
                "node": p.node, "guests": p.guests.len(), "vmids": p.guests,
                "floor_s": p.floor_s, "peak_requests_per_s": p.peak_rps,
            })
        })
        .collect();
    let busiest = s.per_node.iter().map(|p| p.peak_rps).fold(0.0, f64::max);
    json!({
        "mode": mode, "guests": n,
        "wall_s": wall, "floor_s": s.floor_s, "wall_over_floor": wall / s.floor_s,
        "requests_per_guest": s.requests as f64 / n.max(1) as f64,
        "peak_requests_per_s": busiest,
        "entry_peak_requests_per_s": s.peak_rps,
        "per_node": per_node,
        "detection_ms_median": percentile(&mut detect.clone(), 0.5),
        "detection_ms_p99": percentile(&mut detect, 0.99),
        "next_write_ms_median": percentile(&mut next_write.clone(), 0.5),
        "next_write_ms_p99": percentile(&mut next_write, 0.99),
        "peak_rss_mb": rss, "cpu_s": cpu, "lock500": s.lock500,
    })
}

/// When each job of a run finished (by its label, the hostname), from the batch's start.
struct Ends {
    t0: Instant,
    at: std::sync::Mutex<std::collections::HashMap<String, f64>>,
}

impl felhom_core::job::Progress for Ends {
    fn event(&self, _job: &str, label: &str, event: felhom_core::job::ProgressEvent<'_>) {
        if let felhom_core::job::ProgressEvent::Finished { .. } = event {
            let t = self.t0.elapsed().as_secs_f64();
            self.at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(label.to_string(), t);
        }
    }
}

/// The node felhom talks to in the bench's simulator (its config's URL): the first node.
fn entry_node(nodes: usize) -> String {
    pve_sim::cluster_node_names(&nodes.to_string())
        .ok()
        .and_then(|v| v.into_iter().next())
        .unwrap_or_else(|| "pve".into())
}

/// One strategy's bring-up of `n` guests on a fresh simulator (a cluster with `--nodes`),
/// measured.
async fn felhom_mode(n: usize, args: &PerfArgs, strategy: Strategy) -> anyhow::Result<Value> {
    // The simulated host's disk is not felhom's. The simulator keeps its state durable (a
    // JSON snapshot of the whole cluster, fsynced after mutations, standing in for pmxcfs);
    // on the one disk of a benchmark machine those fsyncs queue with the journal's, which on
    // a real cluster they never meet (1000 guests on 10 nodes: 1.17 × the floor with both on
    // one virtual disk; 1.07 with either on a RAM disk). So the simulator's directory goes
    // to a RAM disk where there is one (`/dev/shm`), and the journal stays on the system's
    // temp dir, as a felhom host's journal is on its own disk.
    let shm = Path::new("/dev/shm");
    let sim = SimChild::start_in(shm.is_dir().then_some(shm), args.time_scale, "", args.nodes)?;
    let journal_dir = tempfile::Builder::new()
        .prefix("felhom-bench-journal-")
        .tempdir()?;
    let mut config = Config::load(Some(&sim.config()))?;
    config.journal = journal_dir.path().join("journal.db");
    config.max_parallel = args.concurrency * args.nodes;
    config.max_parallel_per_node = args.concurrency;
    config.max_parallel_per_storage = args.concurrency;
    config.strategy = strategy;
    config.max_requests_per_second = args.max_requests_per_second;
    let felhom = Arc::new(Felhom::open(config)?);
    let golden = format!("local:backup/{}", crate::cmd::sim::SEED_GOLDEN);
    let node = if args.nodes > 1 { "auto" } else { "pve" };
    let specs = specs(n, &golden, node)?;
    // The top of the range is where a linked-clone template goes; the warm-up takes the
    // next one down.
    let warm_vmid = pve_api::Vmid::try_from(felhom.config.vmid_range.hi.get() - 1)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if strategy == Strategy::LinkedClone {
        // Once per golden, node and storage, before the run (not measured).
        let s0 = &specs[0];
        let published = felhom
            .publish(
                s0.node.as_str(),
                s0.storage.as_str(),
                &golden,
                // At the guests' size: a clone then needs no resize task.
                Some(s0.rootfs_size),
                Arc::new(felhom_core::job::Quiet),
            )
            .await?;
        if let felhom_core::publish::PublishReport::Ran { report, .. } = &published {
            anyhow::ensure!(
                report.outcome == felhom_core::job::Outcome::Succeeded,
                "publish failed: {:?}",
                report.outcome
            );
        }
    }
    if args.warm {
        let mut warm = specs[0].clone();
        warm.vmid = felhom_core::spec::VmidChoice::Fixed(warm_vmid);
        warm.hostname = "warmup".parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let quiet = Arc::new(felhom_core::job::Quiet);
        felhom.provision(vec![warm], quiet.clone()).await?;
        felhom.teardown(vec![warm_vmid], quiet).await?;
    }
    // What the run sent: the simulator's log from here on (the warm-up's requests before).
    let skip = sim.get("requests").await?.as_array().map_or(0, Vec::len);
    let stats0 = felhom.client.stats();
    let (cpu0, _) = rusage();
    let _ = peak_rss_and_reset();
    // The simulator's clock is this host's (UNIX ms).
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let ends = Arc::new(Ends {
        t0: Instant::now(),
        at: Default::default(),
    });
    let reports = felhom.provision(specs, ends.clone()).await?;
    let wall = ends.t0.elapsed().as_secs_f64();
    let (cpu1, _) = rusage();
    let rss = peak_rss_and_reset();
    let ok = reports
        .iter()
        .filter(|r| r.outcome == felhom_core::job::Outcome::Succeeded)
        .count();
    let stats = felhom.client.stats().since(&stats0);
    let state = sim.get("state").await?;
    let requests: Vec<Value> = sim
        .get("requests")
        .await?
        .as_array()
        .map(|a| a[skip.min(a.len())..].to_vec())
        .unwrap_or_default();
    let s = seen(
        &state,
        &json!(requests),
        since_ms,
        args.time_scale,
        args.concurrency,
        &entry_node(args.nodes),
    );
    let mut v = figures(strategy.name(), n, wall, s, rss, Some(cpu1 - cpu0));
    // Each node's wall: its last guest's job end.
    let ends = ends.at.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let end_of: std::collections::HashMap<String, f64> = reports
        .iter()
        .filter_map(|r| Some((r.vmid?.to_string(), *ends.get(&r.label)?)))
        .collect();
    let succeeded: std::collections::HashSet<String> = reports
        .iter()
        .filter(|r| r.outcome == felhom_core::job::Outcome::Succeeded)
        .filter_map(|r| Some(r.vmid?.to_string()))
        .collect();
    for p in v["per_node"].as_array_mut().into_iter().flatten() {
        let vmids = p.as_object_mut().and_then(|o| o.remove("vmids"));
        let last = vmids
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(|id| end_of.get(id.as_str()?))
            .copied()
            .fold(f64::NAN, f64::max);
        let ok = vmids
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .filter(|id| id.as_str().is_some_and(|id| succeeded.contains(id)))
            .count();
        let floor = p["floor_s"].as_f64().unwrap_or(f64::NAN);
        p["succeeded"] = json!(ok);
        p["wall_s"] = json!(last);
        p["wall_over_floor"] = json!(last / floor);
    }
    let per_guest = |x: u64| x as f64 / n.max(1) as f64;
    v["succeeded"] = json!(ok);
    if let Some(r) = reports
        .iter()
        .find(|r| r.outcome != felhom_core::job::Outcome::Succeeded)
    {
        v["first_failure"] = json!(r);
    }
    if args.by_endpoint {
        v["by_endpoint"] = json!(by_endpoint(&requests, n)
            .into_iter()
            .map(|(k, c)| json!({ "endpoint": k, "per_guest": c }))
            .collect::<Vec<_>>());
    }
    v["writes_per_guest"] = json!(per_guest(stats.writes));
    v["polls_per_guest"] = json!(per_guest(stats.task_polls));
    v["other_gets_per_guest"] = json!(per_guest(stats.gets));
    Ok(v)
}

/// The naive script (`bench/naive_bringup.py`, the spike's sequence one request after the
/// other) on its own simulator.
async fn naive_mode(n: usize, args: &PerfArgs) -> anyhow::Result<Value> {
    let nsim = SimChild::start(args.time_scale, "")?;
    let golden = format!("local:backup/{}", crate::cmd::sim::SEED_GOLDEN);
    let out = felhom_core::secrets::minimal_env(&mut Command::new("python3"), &[])
        .arg(naive_script())
        .arg(nsim.config())
        .arg(&golden)
        .arg("1000")
        .arg(n.to_string())
        .output()
        .context("run bench/naive_bringup.py (needs python3)")?;
    let Ok(v) = serde_json::from_slice::<Value>(out.stdout.trim_ascii()) else {
        return Ok(
            json!({ "mode": "naive", "guests": n, "error": String::from_utf8_lossy(&out.stderr).to_string() }),
        );
    };
    let state = nsim.get("state").await?;
    let requests = nsim.get("requests").await?;
    // One request at a time: the floor is the sum of the chains.
    let s = seen(&state, &requests, 0, args.time_scale, 1, "pve");
    let mut f = figures(
        "naive",
        n,
        v["wall_s"].as_f64().unwrap_or(f64::NAN),
        s,
        None,
        None,
    );
    f["succeeded"] = v["ok"].clone();
    Ok(f)
}

async fn one_batch(n: usize, args: &PerfArgs) -> anyhow::Result<Vec<Value>> {
    let mut rows = Vec::new();
    for s in [
        Strategy::RestoreResize,
        Strategy::Restore,
        Strategy::LinkedClone,
    ] {
        // On a cluster: the modes placement serves (a template lives on one node).
        if args.runs(s.name()) && (args.nodes == 1 || s != Strategy::LinkedClone) {
            rows.push(felhom_mode(n, args, s).await?);
        }
    }
    // The naive script knows one node.
    if !args.no_naive && args.runs("naive") && args.nodes == 1 {
        rows.push(naive_mode(n, args).await?);
    }
    Ok(rows)
}

/// The issues' targets against one batch's rows: (what, met, measured). One node: issue 16's;
/// a cluster: issue 17's first row (wall, RSS, the busiest node's peak), and the
/// requests-per-guest and lock rows of issue 16, which hold on any number of nodes.
fn targets(rows: &[Value], time_scale: f64, nodes: usize) -> Vec<(String, bool, String)> {
    if nodes > 1 {
        return cluster_targets(rows, time_scale, nodes);
    }
    let row = |m: &str| rows.iter().find(|r| r["mode"] == m);
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let mut out = Vec::new();
    let (Some(spike), Some(sized)) = (row("restore-resize"), row("restore")) else {
        return out;
    };
    let n = sized["guests"].as_u64().unwrap_or(0);
    let at = format!("{n} guest(s), time scale {time_scale}");
    if n == 1 {
        out.push((
            format!("restore wall ≤ 1.05 × its floor ({at})"),
            f(sized, "wall_s") <= 1.05 * f(sized, "floor_s"),
            format!("{:.2}", f(sized, "wall_over_floor")),
        ));
        if let Some(linked) = row("linked-clone") {
            out.push((
                format!("linked-clone wall ≤ 0.3 × the spike-sequence floor ({at})"),
                f(linked, "wall_s") <= 0.3 * f(spike, "floor_s"),
                format!("{:.2}", f(linked, "wall_s") / f(spike, "floor_s")),
            ));
        }
        out.push((
            format!("restore wall ≤ 0.55 × the spike-sequence floor ({at})"),
            f(sized, "wall_s") <= 0.55 * f(spike, "floor_s"),
            format!("{:.2}", f(sized, "wall_s") / f(spike, "floor_s")),
        ));
    }
    out.push((
        format!("restore requests per guest ≤ 12 ({at})"),
        f(sized, "requests_per_guest") <= 12.0,
        format!("{:.1}", f(sized, "requests_per_guest")),
    ));
    if n >= 100 {
        for (what, ok, v) in [
            (
                "peak ≤ 20 requests/s to the node",
                f(sized, "peak_requests_per_s") <= 20.0,
                f(sized, "peak_requests_per_s"),
            ),
            (
                "detection median ≤ 150 ms",
                f(sized, "detection_ms_median") <= 150.0,
                f(sized, "detection_ms_median"),
            ),
            (
                "wall ≤ 1.25 × floor",
                f(sized, "wall_over_floor") <= 1.25,
                f(sized, "wall_over_floor"),
            ),
            (
                "RSS ≤ 64 MB",
                f(sized, "peak_rss_mb") <= 64.0,
                f(sized, "peak_rss_mb"),
            ),
            ("CPU ≤ 5 s", f(sized, "cpu_s") <= 5.0, f(sized, "cpu_s")),
        ] {
            out.push((format!("restore {what} ({at})"), ok, format!("{v:.2}")));
        }
    }
    out.push(no_lock500(rows, &at));
    out
}

/// Issue 17's row for a cluster run ("1000 guests on 10 nodes": wall ≤ 1.15 × floor, RSS ≤
/// 128 MB, peak ≤ 20 requests/s per node), on the `restore` row.
fn cluster_targets(rows: &[Value], time_scale: f64, nodes: usize) -> Vec<(String, bool, String)> {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let mut out = Vec::new();
    let Some(sized) = rows.iter().find(|r| r["mode"] == "restore") else {
        return out;
    };
    let n = sized["guests"].as_u64().unwrap_or(0);
    let at = format!("{n} guest(s) on {nodes} nodes, time scale {time_scale}");
    let busiest = sized["per_node"]
        .as_array()
        .into_iter()
        .flatten()
        .max_by(|a, b| f(a, "peak_requests_per_s").total_cmp(&f(b, "peak_requests_per_s")))
        .and_then(|p| p["node"].as_str())
        .unwrap_or("?");
    for (what, ok, v) in [
        (
            "wall ≤ 1.15 × floor".to_string(),
            f(sized, "wall_over_floor") <= 1.15,
            format!("{:.2}", f(sized, "wall_over_floor")),
        ),
        (
            "RSS ≤ 128 MB".to_string(),
            f(sized, "peak_rss_mb") <= 128.0,
            format!("{:.1}", f(sized, "peak_rss_mb")),
        ),
        (
            "peak ≤ 20 requests/s per node (per target node)".to_string(),
            f(sized, "peak_requests_per_s") <= 20.0,
            format!(
                "{:.0} ({busiest}; entry node, all requests: {:.0})",
                f(sized, "peak_requests_per_s"),
                f(sized, "entry_peak_requests_per_s")
            ),
        ),
        (
            "requests per guest ≤ 12".to_string(),
            f(sized, "requests_per_guest") <= 12.0,
            format!("{:.1}", f(sized, "requests_per_guest")),
        ),
    ] {
        out.push((format!("restore {what} ({at})"), ok, v));
    }
    out.push(no_lock500(rows, &at));
    out
}

/// The target row every run has: no lock 500 without injected faults, over all its rows.
fn no_lock500(rows: &[Value], at: &str) -> (String, bool, String) {
    let total: u64 = rows
        .iter()
        .map(|r| r["lock500"].as_u64().unwrap_or(0))
        .sum();
    (
        format!("lock 500s without injected faults = 0 ({at})"),
        total == 0,
        total.to_string(),
    )
}

pub async fn run(args: PerfArgs, format: OutputFormat) -> Result<(), CliError> {
    if !(args.time_scale > 0.0 && args.concurrency > 0) {
        return Err(CliError::bad_input(
            "--time-scale and --concurrency must be > 0",
        ));
    }
    if !(1..=MAX_NODES).contains(&args.nodes) {
        return Err(CliError::bad_input(format!(
            "--nodes must be 1–{MAX_NODES}; got {}",
            args.nodes
        )));
    }
    let max = if args.nodes > 1 {
        MAX_GUESTS_CLUSTER
    } else {
        MAX_GUESTS_ONE_NODE
    };
    if let Some(n) = args.guests.iter().find(|n| !(1..=max).contains(*n)) {
        return Err(CliError::bad_input(format!(
            "--guests values must be 1–{max} with --nodes {} (up to {MAX_GUESTS_ONE_NODE} on one node, {MAX_GUESTS_CLUSTER} on a cluster); got {n}",
            args.nodes
        )));
    }
    if args.nodes > 1 {
        if let Some(m) = args
            .modes
            .iter()
            .find(|m| *m == "linked-clone" || *m == "naive")
        {
            return Err(CliError::bad_input(format!(
                "--modes {m} with --nodes > 1: {m} runs on one node only (a linked clone's template lives on one node; the naive script knows one); use restore or restore-resize"
            )));
        }
    }
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    for &n in &args.guests {
        let batch = one_batch(n, &args).await?;
        checks.extend(targets(&batch, args.time_scale, args.nodes));
        rows.extend(batch);
    }
    let checks_json: Vec<Value> = checks
        .iter()
        .map(|(what, met, v)| json!({ "target": what, "met": met, "measured": v }))
        .collect();
    match format {
        OutputFormat::Json => output::json(&json!({ "perf": rows, "targets": checks_json })),
        OutputFormat::Human => print_table(&args, &rows, &checks),
    }
    Ok(())
}

fn print_table(args: &PerfArgs, rows: &[Value], checks: &[(String, bool, String)]) {
    outln!(
        "felhom bench perf (time scale {}, concurrency {}{}, {})",
        args.time_scale,
        args.concurrency,
        if args.nodes > 1 {
            format!(" per node, {} nodes", args.nodes)
        } else {
            String::new()
        },
        if args.warm {
            "warm: durations learned by an earlier guest"
        } else {
            "cold: nothing learned yet"
        }
    );
    let mut t = output::table([
        "N", "mode", "ok", "wall_s", "floor_s", "ratio", "req/g", "peak_r/s", "det_med", "det_p99",
        "wr_med", "wr_p99", "rss_MB", "cpu_s", "l500",
    ]);
    for c in t.column_iter_mut() {
        c.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    for r in rows {
        let f = |k: &str, prec: usize| match r[k].as_f64() {
            Some(x) if x.is_finite() => format!("{x:.prec$}"),
            _ => "-".into(),
        };
        let mode = r["mode"].as_str().unwrap_or("?").to_string();
        if let Some(note) = r["note"].as_str().or(r["error"].as_str()) {
            t.add_row([r["guests"].to_string(), mode, note.to_string()]);
            continue;
        }
        t.add_row([
            r["guests"].to_string(),
            mode,
            r["succeeded"].to_string(),
            f("wall_s", 2),
            f("floor_s", 2),
            f("wall_over_floor", 2),
            f("requests_per_guest", 1),
            f("peak_requests_per_s", 0),
            f("detection_ms_median", 0),
            f("detection_ms_p99", 0),
            f("next_write_ms_median", 0),
            f("next_write_ms_p99", 0),
            f("peak_rss_mb", 1),
            f("cpu_s", 2),
            r["lock500"].to_string(),
        ]);
    }
    output::print_table(&t);
    if args.nodes > 1 {
        print_nodes(rows);
    }
    for r in rows.iter().filter(|r| r["by_endpoint"].is_array()) {
        outln!(
            "{} guest(s), {}: requests per guest by endpoint",
            r["guests"],
            r["mode"].as_str().unwrap_or("?")
        );
        for e in r["by_endpoint"].as_array().into_iter().flatten() {
            outln!(
                "  {:>6.2}  {}",
                e["per_guest"].as_f64().unwrap_or(f64::NAN),
                e["endpoint"].as_str().unwrap_or("?")
            );
        }
    }
    for (what, met, v) in checks {
        outln!("{} {what}: {v}", if *met { "met    " } else { "NOT met" });
    }
}

/// Per node of each cluster row: guests, wall, floor, ratio, peak requests/s for that node;
/// then the entry node's peak over every request.
fn print_nodes(rows: &[Value]) {
    let mut t = output::table([
        "N", "mode", "node", "guests", "ok", "wall_s", "floor_s", "ratio", "peak_r/s",
    ]);
    for c in t.column_iter_mut() {
        c.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    let f = |v: &Value, k: &str, prec: usize| match v[k].as_f64() {
        Some(x) if x.is_finite() => format!("{x:.prec$}"),
        _ => "-".into(),
    };
    for r in rows {
        let mode = r["mode"].as_str().unwrap_or("?");
        for p in r["per_node"].as_array().into_iter().flatten() {
            t.add_row([
                r["guests"].to_string(),
                mode.to_string(),
                p["node"].as_str().unwrap_or("?").to_string(),
                p["guests"].to_string(),
                p["succeeded"].to_string(),
                f(p, "wall_s", 2),
                f(p, "floor_s", 2),
                f(p, "wall_over_floor", 2),
                f(p, "peak_requests_per_s", 0),
            ]);
        }
        t.add_row([
            r["guests"].to_string(),
            mode.to_string(),
            "entry (all requests)".to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            f(r, "entry_peak_requests_per_s", 0),
        ]);
    }
    outln!("per node (peak_r/s: requests naming that node; cluster-wide ones count for the first node, the one felhom talks to; the entry node's pveproxy also receives every other node's requests):");
    output::print_table(&t);
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn floor_is_the_list_schedule_makespan() {
        assert_eq!(floor_ms(vec![10, 10, 10], 1), 30);
        assert_eq!(floor_ms(vec![10, 10, 10], 3), 10);
        assert_eq!(floor_ms(vec![10, 10, 10, 10], 3), 20);
        assert_eq!(percentile(&mut [3.0, 1.0, 2.0], 0.5), 2.0);
    }

    #[test]
    fn a_request_counts_for_the_node_its_path_names_else_the_entry() {
        assert_eq!(target_node("/nodes/pve3/lxc/1000/config", "pve1"), "pve3");
        assert_eq!(target_node("/nodes/pve2", "pve1"), "pve2");
        assert_eq!(target_node("/cluster/resources", "pve1"), "pve1");
        assert_eq!(target_node("/nodes", "pve1"), "pve1");
        assert_eq!(target_node("/access/permissions", "pve"), "pve");
    }

    #[test]
    fn the_floor_is_the_slowest_nodes_and_requests_count_per_node() {
        let task =
            |id: &str, node: &str, ms: u64| json!({ "id": id, "node": node, "modelled_ms": ms });
        // time scale 0: no DHCP delay in the chains.
        let state = json!({ "tasks": [
            task("1", "a", 100), task("1", "a", 50), task("2", "a", 100),
            task("3", "b", 400),
            // Before the run (a warm-up): not counted.
            json!({ "id": "3", "node": "b", "modelled_ms": 1000, "start_ms": 99 }),
        ]});
        let req = |path: &str, at: u64| json!({ "method": "GET", "path": path, "at_ms": at });
        let requests = json!([
            req("/nodes/a/lxc", 0),
            req("/nodes/b/lxc", 10),
            req("/nodes/b/lxc", 20),
            req("/cluster/resources", 30),
        ]);
        let s = seen(&state, &requests, 100, 0.0, 1, "a");
        assert_eq!(s.floor_s, 0.4);
        let by: Vec<(&str, usize, f64, f64)> = s
            .per_node
            .iter()
            .map(|n| (n.node.as_str(), n.guests.len(), n.floor_s, n.peak_rps))
            .collect();
        assert_eq!(by, [("a", 2, 0.25, 2.0), ("b", 1, 0.4, 2.0)]);
        assert_eq!(s.peak_rps, 4.0);
    }

    #[test]
    fn peak_is_the_busiest_second() {
        let at = |ms: &[u64]| ms.iter().map(|m| json!({ "at_ms": m })).collect::<Vec<_>>();
        assert_eq!(peak_per_second(&at(&[])), 0.0);
        assert_eq!(peak_per_second(&at(&[0, 999, 1000, 1500, 1999])), 3.0);
        assert_eq!(peak_per_second(&at(&[0, 10, 20, 999, 1000])), 4.0);
        assert_eq!(peak_per_second(&at(&[5000, 0, 10_000])), 1.0);
    }
}
