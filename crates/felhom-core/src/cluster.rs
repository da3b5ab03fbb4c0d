//! felhom across a PVE cluster: where each guest lives now, and where a new one goes.
//!
//! PVE is the only truth about where a guest lives: anyone may migrate it (`pct migrate`),
//! and a config read on the wrong node answers "does not exist", exactly like a guest that
//! is gone. So every run that looks at existing guests first reads **one**
//! `GET /cluster/resources` ([`ClusterView::read`]) and takes each VMID's node from it,
//! never from a spec or a stale journal row; uniqueness checks (VMIDs, MACs, identities)
//! walk the same read across every node. One read replaces the per-node guest lists, so a
//! run costs no more requests than it did on one node.
//!
//! | question | here |
//! |---|---|
//! | which node holds VMID n (and is it running, a template) | [`ClusterView::node_of`], [`ClusterView::guest`] |
//! | every guest in the cluster (VMID pickers, MAC uniqueness, markers) | [`ClusterView::guests`] |
//! | is a node up | [`ClusterView::node_online`] |
//! | which node a new guest goes on, and why | [`Placer::place`] |
//!
//! ## Placement (`node = "auto"`, or no `node`)
//!
//! Candidates: the nodes of `felhom.nodes` (else every node the read lists) that are online,
//! where the spec's storage is available (and, on a node-local storage, holds the guest's
//! disk and mounts on it in free space), and where the golden can be read (a shared backup
//! storage: everywhere; a node-local one: the nodes whose `extractconfig` answers) — for
//! `strategy = "linked-clone"`, the nodes with a published template of that golden. Among
//! them: the most free memory (`maxmem - mem`), then the most free space on the target
//! storage, then the fewest running guests, then the node name. What this run placed earlier
//! counts (its memory and disk taken, a running guest more), so a batch spreads out. The
//! same cluster state always gives the same answer; `plan` prints it with the figures.
//! A guest is placed once: its job and the journal keep the node, and every later run
//! follows the guest wherever it lives.

use std::collections::{BTreeMap, BTreeSet};

use pve_api::{ApiError, ClusterResource, PveClient};

/// One guest as the cluster read shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAt {
    pub node: String,
    /// `running`, `stopped`, `unknown` (its node is down).
    pub status: String,
    pub template: bool,
}

/// One node's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAt {
    pub online: bool,
    pub maxmem: u64,
    pub mem: u64,
}

/// One storage on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageAt {
    pub available: bool,
    pub shared: bool,
    pub maxdisk: u64,
    pub disk: u64,
}

/// Shared cluster reads ([`ClusterView::read_shared`]) start at most this many a second,
/// from a bucket of [`SHARED_READ_BURST`]. Bring-ups finish their restores at up to a dozen
/// a second across a cluster, and each identity scan wants a read started after its own
/// marker showed: one read per scan sent the entry node 0.75 reads per guest (1000 guests on
/// 10 nodes). Past the rate a scan waits for the next read (at most a quarter of a second
/// in the steady state) and shares it with the scans of that moment; a small batch's reads
/// go at once. A fixed gap of 250 ms between any two reads made every second group of a
/// small batch's scans wait (10 guests at time scale 0.1: 1.7 s against 1.0 s); a window of
/// 4 in any second let a big batch's reads go in fours and then wait most of a second.
pub const SHARED_READS_PER_SECOND: f64 = 4.0;
/// Reads that may start at once after a quiet moment.
pub const SHARED_READ_BURST: f64 = 2.0;

/// What one `GET /cluster/resources` said: guests, nodes, storages.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    guests: BTreeMap<u32, GuestAt>,
    nodes: BTreeMap<String, NodeAt>,
    storages: BTreeMap<(String, String), StorageAt>,
}

fn num(r: &ClusterResource, key: &str) -> u64 {
    r.other
        .get(key)
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
        .unwrap_or(0)
}

fn flag(r: &ClusterResource, key: &str) -> bool {
    r.other.get(key).is_some_and(|v| {
        v.as_u64().is_some_and(|n| n != 0)
            || v.as_bool() == Some(true)
            || v.as_str().is_some_and(|s| !matches!(s, "" | "0"))
    })
}

impl ClusterView {
    /// One `GET /cluster/resources` (no `type`: guests, nodes and storages in one answer).
    pub async fn read(client: &PveClient) -> Result<ClusterView, ApiError> {
        Ok(Self::from_resources(client.cluster_resources(None).await?))
    }

    /// One read shared by the jobs of this process: the newest read of `server` that
    /// *started* at or after `since` is reused, else this call reads (one read at a time per
    /// server, at most [`SHARED_READS_PER_SECOND`] starting a second; callers arriving
    /// meanwhile take the next one). A bring-up's VMID pick and MAC
    /// choice accept a read a moment old (a VMID taken since is PVE's to refuse, and the
    /// restore then moves on); the identity step's scan asks for one started after its own
    /// marker was visible. Without it every guest in flight read every guest of the
    /// cluster two or three times: quadratic in the batch.
    pub async fn read_shared(
        client: &PveClient,
        server: &str,
        since: std::time::Instant,
    ) -> Result<std::sync::Arc<ClusterView>, ApiError> {
        /// The newest read (its start, what it said) and the bucket: reads it holds, as of
        /// when.
        #[derive(Default)]
        struct Shared {
            last: Option<(std::time::Instant, std::sync::Arc<ClusterView>)>,
            bucket: Option<(f64, std::time::Instant)>,
        }
        type Slot = std::sync::Arc<tokio::sync::Mutex<Shared>>;
        static SHARED: std::sync::LazyLock<std::sync::Mutex<BTreeMap<String, Slot>>> =
            std::sync::LazyLock::new(Default::default);
        let slot = SHARED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(server.to_string())
            .or_default()
            .clone();
        let mut shared = slot.lock().await;
        if let Some((started, view)) = &shared.last {
            if *started >= since {
                return Ok(view.clone());
            }
        }
        // At the rate from the bucket: past it, wait for the next read; everyone asking
        // meanwhile (queued on the slot) shares this one. The entry node answers every
        // such read.
        let now = std::time::Instant::now();
        let (held, at) = shared.bucket.unwrap_or((SHARED_READ_BURST, now));
        let mut held = (held
            + now.saturating_duration_since(at).as_secs_f64() * SHARED_READS_PER_SECOND)
            .min(SHARED_READ_BURST);
        if held < 1.0 {
            let wait = (1.0 - held) / SHARED_READS_PER_SECOND;
            tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
            held = 1.0;
        }
        let started = std::time::Instant::now();
        shared.bucket = Some((held - 1.0, started));
        let view = std::sync::Arc::new(Self::read(client).await?);
        shared.last = Some((started, view.clone()));
        Ok(view)
    }

    pub fn from_resources(items: Vec<ClusterResource>) -> ClusterView {
        let mut v = ClusterView::default();
        for r in items {
            match r.resource_type.as_str() {
                "lxc" | "qemu" => {
                    if let (Some(vmid), Some(node)) = (r.vmid, r.node.clone()) {
                        v.guests.insert(
                            vmid,
                            GuestAt {
                                node,
                                status: r.status.clone().unwrap_or_default(),
                                template: r.template,
                            },
                        );
                    }
                }
                "node" => {
                    if let Some(node) = r.node.clone() {
                        v.nodes.insert(
                            node,
                            NodeAt {
                                online: r.status.as_deref() == Some("online"),
                                maxmem: r.maxmem.unwrap_or(0),
                                mem: num(&r, "mem"),
                            },
                        );
                    }
                }
                "storage" => {
                    if let (Some(node), Some(sid)) = (r.node.clone(), r.storage.clone()) {
                        v.storages.insert(
                            (node, sid),
                            StorageAt {
                                available: r.status.as_deref() == Some("available"),
                                shared: flag(&r, "shared"),
                                maxdisk: r.maxdisk.unwrap_or(0),
                                disk: num(&r, "disk"),
                            },
                        );
                    }
                }
                _ => {}
            }
        }
        v
    }

    /// The node that holds `vmid` now (None: no such guest anywhere in the cluster).
    pub fn node_of(&self, vmid: u32) -> Option<&str> {
        self.guests.get(&vmid).map(|g| g.node.as_str())
    }

    pub fn guest(&self, vmid: u32) -> Option<&GuestAt> {
        self.guests.get(&vmid)
    }

    /// Every guest of the cluster, by VMID.
    pub fn guests(&self) -> impl Iterator<Item = (u32, &GuestAt)> {
        self.guests.iter().map(|(v, g)| (*v, g))
    }

    /// Every VMID in use anywhere in the cluster.
    pub fn vmids(&self) -> impl Iterator<Item = u32> + '_ {
        self.guests.keys().copied()
    }

    /// Whether the read lists `node` as online (a node it does not list: false).
    pub fn node_online(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.online)
    }

    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    pub fn storage(&self, node: &str, sid: &str) -> Option<&StorageAt> {
        self.storages.get(&(node.to_string(), sid.to_string()))
    }

    /// Running guests (templates aside) on `node`.
    pub fn running_on(&self, node: &str) -> usize {
        self.guests
            .values()
            .filter(|g| g.node == node && g.status == "running" && !g.template)
            .count()
    }
}

/// What a new guest needs of a node.
#[derive(Debug, Clone)]
pub struct Need {
    /// The rootfs storage.
    pub storage: String,
    /// Bytes on `storage` (rootfs and the mounts on the same storage).
    pub disk: u64,
    /// Bytes of memory the guest asks.
    pub mem: u64,
    /// Nodes where the golden (or its published template) can be used; `None`: everywhere.
    pub golden_on: Option<BTreeSet<String>>,
}

/// Where a guest was placed, and why (for `plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node: String,
    pub why: String,
}

/// Places new guests on nodes, one after another, counting what it placed.
#[derive(Debug)]
pub struct Placer<'v> {
    view: &'v ClusterView,
    allowed: Vec<String>,
    /// Per node: memory and running guests placed by this run.
    placed_mem: BTreeMap<String, u64>,
    placed_count: BTreeMap<String, usize>,
    /// Per (node, storage): bytes placed by this run (node-local storages only).
    placed_disk: BTreeMap<(String, String), u64>,
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

impl<'v> Placer<'v> {
    /// `allowed`: `felhom.nodes` (empty: every node the read lists).
    pub fn new(view: &'v ClusterView, allowed: &[String]) -> Placer<'v> {
        let allowed = if allowed.is_empty() {
            view.node_names().map(str::to_string).collect()
        } else {
            allowed.to_vec()
        };
        Placer {
            view,
            allowed,
            placed_mem: BTreeMap::new(),
            placed_count: BTreeMap::new(),
            placed_disk: BTreeMap::new(),
        }
    }

    /// The nodes a guest could go on at all (online, allowed), before its needs.
    pub fn candidates(&self) -> Vec<String> {
        let mut c: Vec<String> = self
            .allowed
            .iter()
            .filter(|n| self.view.node_online(n))
            .cloned()
            .collect();
        c.sort();
        c.dedup();
        c
    }

    /// Choose a node for `need` (the rule in the module doc) and count it as placed.
    pub fn place(&mut self, need: &Need) -> Result<Placement, String> {
        let mut rejected = Vec::new();
        // (free mem, free disk, running, name)
        let mut fits: Vec<(u64, u64, usize, String)> = Vec::new();
        for node in self.candidates() {
            if let Some(on) = &need.golden_on {
                if !on.contains(&node) {
                    rejected.push(format!("{node}: golden not available there"));
                    continue;
                }
            }
            let Some(st) = self
                .view
                .storage(&node, &need.storage)
                .filter(|s| s.available)
            else {
                rejected.push(format!("{node}: storage {} not available", need.storage));
                continue;
            };
            let key = if st.shared {
                (String::new(), need.storage.clone())
            } else {
                (node.clone(), need.storage.clone())
            };
            let used = st.disk + self.placed_disk.get(&key).copied().unwrap_or(0);
            let free_disk = st.maxdisk.saturating_sub(used);
            if st.maxdisk > 0 && free_disk < need.disk {
                rejected.push(format!(
                    "{node}: {} free on {}, needs {}",
                    gib(free_disk),
                    need.storage,
                    gib(need.disk)
                ));
                continue;
            }
            let n = self.view.nodes.get(&node).cloned().unwrap_or_default();
            let used_mem = n.mem + self.placed_mem.get(&node).copied().unwrap_or(0);
            let free_mem = n.maxmem.saturating_sub(used_mem);
            if n.maxmem > 0 && free_mem < need.mem {
                rejected.push(format!(
                    "{node}: {} memory free, needs {}",
                    gib(free_mem),
                    gib(need.mem)
                ));
                continue;
            }
            let running =
                self.view.running_on(&node) + self.placed_count.get(&node).copied().unwrap_or(0);
            fits.push((free_mem, free_disk, running, node));
        }
        // Most free memory, then most free disk, then fewest running guests, then name.
        fits.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(b.1.cmp(&a.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        let Some((free_mem, free_disk, running, node)) = fits.first().cloned() else {
            return Err(if rejected.is_empty() {
                "no online node to place the guest on (felhom.nodes, or the cluster's nodes)"
                    .to_string()
            } else {
                format!("no node fits: {}", rejected.join("; "))
            });
        };
        let figure = |b: u64, known: bool| if known { gib(b) } else { "unknown".into() };
        let mem_known = self.view.nodes.get(&node).is_some_and(|n| n.maxmem > 0);
        let disk_known = self
            .view
            .storage(&node, &need.storage)
            .is_some_and(|s| s.maxdisk > 0);
        let why = format!(
            "most free memory ({}), then free space on {} ({}), then fewest running guests ({running}), then name; of {} candidate(s): {}",
            figure(free_mem, mem_known),
            need.storage,
            figure(free_disk, disk_known),
            fits.len(),
            fits.iter()
                .map(|f| f.3.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        *self.placed_mem.entry(node.clone()).or_default() += need.mem;
        *self.placed_count.entry(node.clone()).or_default() += 1;
        let shared = self
            .view
            .storage(&node, &need.storage)
            .is_some_and(|s| s.shared);
        let key = if shared {
            (String::new(), need.storage.clone())
        } else {
            (node.clone(), need.storage.clone())
        };
        *self.placed_disk.entry(key).or_default() += need.disk;
        Ok(Placement { node, why })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const G: u64 = 1 << 30;

    fn view(nodes: &[(&str, &str, u64, u64)], lvm_free: &[(&str, u64)]) -> ClusterView {
        let mut items = Vec::new();
        for (n, status, maxmem, mem) in nodes {
            items.push(json!({"id": format!("node/{n}"), "type": "node", "node": n, "status": status, "maxmem": maxmem, "mem": mem}));
        }
        for (n, free) in lvm_free {
            items.push(json!({"id": format!("storage/{n}/local-lvm"), "type": "storage", "node": n, "storage": "local-lvm", "status": "available", "shared": 0, "maxdisk": 100 * G, "disk": 100 * G - free}));
        }
        items.push(json!({"id": "lxc/1000", "type": "lxc", "vmid": 1000, "node": "pve2", "status": "running"}));
        ClusterView::from_resources(serde_json::from_value(json!(items)).unwrap())
    }

    fn need(disk: u64, mem: u64) -> Need {
        Need {
            storage: "local-lvm".into(),
            disk,
            mem,
            golden_on: None,
        }
    }

    #[test]
    fn node_of_follows_the_read() {
        let v = view(&[("pve1", "online", 64 * G, 0)], &[]);
        assert_eq!(v.node_of(1000), Some("pve2"));
        assert_eq!(v.node_of(1001), None);
        assert_eq!(v.running_on("pve2"), 1);
    }

    #[test]
    fn most_free_memory_wins_and_a_batch_spreads() {
        let v = view(
            &[
                ("pve1", "online", 64 * G, 10 * G),
                ("pve2", "online", 64 * G, 4 * G),
                ("pve3", "offline", 640 * G, 0),
            ],
            &[("pve1", 50 * G), ("pve2", 50 * G), ("pve3", 90 * G)],
        );
        let mut p = Placer::new(&v, &[]);
        let first = p.place(&need(8 * G, 4 * G)).unwrap();
        assert_eq!(first.node, "pve2", "{first:?}");
        assert!(first.why.contains("most free memory"), "{}", first.why);
        // What this run placed counts: pve2 has 56 GiB free now, pve1 54.
        let second = p.place(&need(8 * G, 4 * G)).unwrap();
        assert_eq!(second.node, "pve2");
        // pve2 52 GiB, pve1 54: pve1. pve3 (offline) never.
        assert_eq!(p.place(&need(8 * G, 4 * G)).unwrap().node, "pve1");
    }

    #[test]
    fn ties_go_by_disk_then_running_then_name_and_misfits_are_named() {
        let v = view(
            &[
                ("pve1", "online", 64 * G, 0),
                ("pve2", "online", 64 * G, 0),
                ("pve3", "online", 64 * G, 0),
            ],
            &[("pve1", 50 * G), ("pve2", 50 * G), ("pve3", 10 * G)],
        );
        // pve1 and pve2 tie on memory and disk; pve2 runs a guest: pve1.
        assert_eq!(
            Placer::new(&v, &[]).place(&need(G, G)).unwrap().node,
            "pve1"
        );
        // Only pve3 allowed, and it lacks the disk: refused, naming why.
        let e = Placer::new(&v, &["pve3".into()])
            .place(&need(20 * G, G))
            .unwrap_err();
        assert!(e.contains("pve3") && e.contains("local-lvm"), "{e}");
        // The golden only on pve3 (and enough disk): pve3.
        let mut n = need(G, G);
        n.golden_on = Some(["pve3".to_string()].into());
        assert_eq!(Placer::new(&v, &[]).place(&n).unwrap().node, "pve3");
    }
}
