//! The simulator's runtime: the state under a mutex (persisted after each change), the fault
//! RNG, the request log, the per-guest SSH endpoints. The config flock lives in `locks.rs`,
//! the task workers in `tasks.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::runtime::GuestRuntime;
use crate::ssh::SshEndpoint;
use crate::state::{self, ArchiveTraits, Guest, State};
use crate::SimConfig;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Modelled durations at time scale 1 (milliseconds).
pub mod model {
    pub const LOCK_TIMEOUT: u64 = 10_000;
    pub const CREATE_LOCK_TIMEOUT: u64 = 5_000;
    pub const AUTH_FAIL_DELAY: u64 = 3_000;
    pub const RESTORE_BASE: u64 = 2_000;
    /// Per 100 MB of archive.
    pub const RESTORE_PER_100MB: u64 = 1_000;
    /// e2fsck -f + resize2fs of a stopped guest. It must outlast the 10 s lock timeout: that
    /// is what gave the spike's back-to-back PUT its 500 (F4, reference §10).
    pub const RESIZE: u64 = 12_000;
    pub const START: u64 = 1_000;
    pub const STOP: u64 = 500;
    pub const SHUTDOWN: u64 = 1_500;
    pub const DESTROY: u64 = 500;
    /// Of a destroy, the part after the volumes are freed: the config is `lock: destroyed`
    /// until ACLs, firewall and jobs are cleaned up and the config is removed.
    pub const DESTROY_LAST: u64 = 150;
    pub const DHCP: u64 = 1_500;
    /// How long an injected lock500 blocks before failing (a short, scaled wait).
    pub const INJECTED_LOCK_WAIT: u64 = 1_000;
    /// How long a call for a down node takes to fail with 595 (the proxy's connect attempt).
    pub const NODE_DOWN_DELAY: u64 = 1_000;
    /// Memory a node uses with no guest running (`/cluster/resources` `mem`).
    pub const NODE_BASE_MEM: u64 = 2 << 30;
}

/// The config flocks: one per node and VMID (`locks.rs`).
pub(crate) type FlockMap = HashMap<(String, u32), Arc<tokio::sync::Mutex<()>>>;

pub struct Sim {
    pub cfg: SimConfig,
    pub state: Mutex<State>,
    pub(crate) locks: Mutex<FlockMap>,
    pub(crate) cancels: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Set by `shutdown`: workers stop waiting (their tasks stay `running`) and nothing more
    /// is persisted, so a stopped simulator never clobbers the state a new one loaded.
    pub(crate) stopping: AtomicBool,
    stop_tx: tokio::sync::watch::Sender<bool>,
    pub(crate) stop_rx: tokio::sync::watch::Receiver<bool>,
    rng: Mutex<StdRng>,
    pub requests: Mutex<Vec<serde_json::Value>>,
    ssh: Mutex<HashMap<u32, SshEndpoint>>,
    /// What the guests are: modelled records or real containers.
    pub(crate) runtime: Arc<dyn GuestRuntime>,
    traits_cache: Mutex<HashMap<(PathBuf, u64), ArchiveTraits>>,
    /// What a side-channel request must present (`admin.rs`); made fresh at every start.
    pub(crate) side_secret: String,
    persist: Persist,
    /// The cluster faults in force (`node_down`, `no_quorum`); workers of a down node's tasks
    /// wait on it for the node to return.
    pub(crate) cluster_faults: tokio::sync::watch::Sender<crate::faults::ClusterFaults>,
    /// The `taken_before_create` VMIDs whose foreign guest was made already (once each).
    taken_fired: Mutex<std::collections::BTreeSet<u32>>,
}

/// Group commit of `state.json`. Every mutation is durable before `mutate` returns (write,
/// fsync, rename, fsync of the directory: `state::save_bytes`), but an fsync costs tens of
/// milliseconds on a virtual disk and every API request mutates the counters, so one fsync
/// must serve many mutations: each mutation leaves its snapshot in `pending` (newer replaces
/// older, in the order the state lock gave them), and whoever then holds `written` writes the
/// newest pending snapshot, which covers every mutation before it. Lock order: `state` →
/// `pending`, `written` → `pending`; `state` is never held while writing.
#[derive(Default)]
struct Persist {
    seq: std::sync::atomic::AtomicU64,
    pending: Mutex<Option<(u64, Vec<u8>)>>,
    /// The sequence number of the newest snapshot on disk.
    written: Mutex<u64>,
}

pub fn random_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Sim {
    pub fn open(
        cfg: SimConfig,
        runtime: Arc<dyn GuestRuntime>,
        side_secret: String,
    ) -> Result<Arc<Sim>, String> {
        let st = match state::load(&cfg.state_dir)? {
            Some(st) => st,
            None => {
                let mut st = State::bootstrap_cluster(&cfg.node_names());
                // The felhom token; its secret goes to a 0600 file, only its hash to the state.
                let secret = random_uuid();
                crate::files::write_atomic(
                    &cfg.state_dir,
                    "felhom-agent.token",
                    format!("{secret}\n").as_bytes(),
                    0o600,
                )?;
                st.tokens.push(state::TokenDef {
                    id: "felhom@pve!agent".into(),
                    secret_sha256: crate::auth::hash_secret(&secret),
                    privsep: true,
                });
                state::save(&cfg.state_dir, &st)?;
                st
            }
        };
        let mut st = st;
        st.normalize(&cfg.node_names());
        for n in &cfg.faults.node_down {
            if !st.has_node(n) {
                return Err(format!(
                    "--faults node_down:{n}: no such node (the nodes are {})",
                    st.nodes
                        .iter()
                        .map(|x| x.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let faults = crate::faults::ClusterFaults {
            down: cfg.faults.node_down.iter().cloned().collect(),
            no_quorum: cfg.faults.no_quorum,
        };
        let (cluster_faults, _) = tokio::sync::watch::channel(faults);
        let seed = cfg.faults.seed.unwrap_or_else(rand::random);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        Ok(Arc::new(Sim {
            stopping: AtomicBool::new(false),
            stop_tx,
            stop_rx,
            cfg,
            state: Mutex::new(st),
            locks: Mutex::default(),
            cancels: Mutex::default(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            requests: Mutex::default(),
            ssh: Mutex::default(),
            runtime,
            traits_cache: Mutex::default(),
            side_secret,
            persist: Persist::default(),
            cluster_faults,
            taken_fired: Mutex::default(),
        }))
    }

    pub fn shutdown(&self) {
        // Workers stop with the server; their tasks stay `running` in the state and are
        // rescheduled by the next start (like pvedaemon workers outliving the API daemon).
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop_tx.send(true);
        self.ssh.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Whether `node` is down (`node_down:<node>`).
    /// The `taken_before_create` fault: before the first create at `vmid`, someone else's
    /// guest appears there on `node` (once per VMID).
    pub(crate) fn take_before_create(&self, vmid: u32, node: &str) {
        if !self.cfg.faults.taken_before_create.contains(&vmid)
            || !self
                .taken_fired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(vmid)
        {
            return;
        }
        self.mutate(|st| {
            st.guests.entry(vmid).or_insert_with(|| Guest {
                vmid,
                node: node.to_string(),
                config: BTreeMap::from([
                    ("hostname".to_string(), "someone-else".to_string()),
                    ("memory".to_string(), "512".to_string()),
                    ("ostype".to_string(), "debian".to_string()),
                ]),
                ..Guest::default()
            });
        });
    }

    pub fn node_down(&self, node: &str) -> bool {
        self.cluster_faults.borrow().down.contains(node)
    }

    /// Whether the cluster has lost quorum (`no_quorum`).
    pub fn no_quorum(&self) -> bool {
        self.cluster_faults.borrow().no_quorum
    }

    /// Set or clear a cluster fault at run time. A node that does not exist is refused.
    pub fn set_cluster_fault(
        &self,
        f: &crate::faults::ClusterFault,
        on: bool,
    ) -> Result<crate::faults::ClusterFaults, String> {
        if let crate::faults::ClusterFault::NodeDown(n) = f {
            if !self.read(|st| st.has_node(n)) {
                return Err(format!("node_down: no such node '{n}'"));
            }
        }
        self.cluster_faults.send_modify(|c| c.apply(f, on));
        Ok(self.cluster_faults.borrow().clone())
    }

    /// Wait until `node` is up (at once if it is).
    pub async fn wait_node_up(&self, node: &str) {
        let mut rx = self.cluster_faults.subscribe();
        let _ = rx.wait_for(|c| !c.down.contains(node)).await;
    }

    /// Sleep `total` of the time `node` is up: a down node's clock stops (its tasks pause)
    /// and goes on when it returns.
    pub async fn sleep_while_up(&self, node: &str, total: Duration) {
        let mut left = total;
        loop {
            self.wait_node_up(node).await;
            let mut rx = self.cluster_faults.subscribe();
            let began = std::time::Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(left) => return,
                _ = rx.wait_for(|c| c.down.contains(node)) => {
                    left = left.saturating_sub(began.elapsed());
                    if left.is_zero() {
                        return;
                    }
                }
            }
        }
    }

    pub fn scaled(&self, ms: u64) -> Duration {
        Duration::from_secs_f64(ms as f64 / 1000.0 * self.cfg.time_scale)
    }

    pub fn scaled_ms(&self, ms: u64) -> u64 {
        (ms as f64 * self.cfg.time_scale).round() as u64
    }

    /// The modelled DHCP delay (the `dhcp_delay` fault overrides it), scaled.
    pub fn dhcp_delay_ms(&self) -> u64 {
        let base = self
            .cfg
            .faults
            .dhcp_delay
            .map(|d| d.as_millis() as u64)
            .unwrap_or(model::DHCP);
        self.scaled_ms(base)
    }

    /// A task's modelled time plus up to 10%: real task times vary (load, disk), and a
    /// poller must not be able to look good by landing on round numbers. Never shorter, so
    /// a resize still outlasts the lock timeout (F4).
    pub fn jittered_ms(&self, ms: u64) -> u64 {
        ms + self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .gen_range(0..=ms / 10)
    }

    pub fn chance(&self, p: f64) -> bool {
        p > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .gen_bool(p.min(1.0))
    }

    /// A change that need not be durable on its own (the request counters every API call
    /// bumps): made in memory and persisted with the next [`Sim::mutate`], so that a read
    /// waits for no fsync. A SIGKILL may lose the counts since the last mutation.
    pub fn count(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Run `f` on the state, then persist it durably before returning (group commit, see
    /// [`Persist`]).
    pub fn mutate<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let seq;
        let r;
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            r = f(&mut st);
            if self.stopping.load(Ordering::SeqCst) {
                return r;
            }
            let bytes = match serde_json::to_vec(&*st) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot serialise simulator state");
                    return r;
                }
            };
            seq = self.persist.seq.fetch_add(1, Ordering::SeqCst) + 1;
            *self
                .persist
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((seq, bytes));
        }
        let mut written = self
            .persist
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *written >= seq || self.stopping.load(Ordering::SeqCst) {
            // A later snapshot, written by another caller, covers this change; or the
            // simulator stopped, and a new one may own the state dir now.
            return r;
        }
        let newest = self
            .persist
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((s, bytes)) = newest {
            if let Err(e) = state::save_bytes(&self.cfg.state_dir, &bytes) {
                tracing::error!(error = %e, "cannot persist simulator state");
            }
            *written = s;
        }
        r
    }

    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// What an archive's files decide about identity (cached per path and size).
    pub fn archive_traits(&self, path: &std::path::Path) -> Result<ArchiveTraits, String> {
        let size = std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| e.to_string())?;
        let key = (path.to_path_buf(), size);
        if let Some(t) = self
            .traits_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(t.clone());
        }
        let t = crate::archive::traits(path).map_err(|e| e.to_string())?;
        self.traits_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, t.clone());
        Ok(t)
    }

    /// Start SSH endpoints for running guests the runtime serves SSH for (modelled: those
    /// with keys; real: all, the guest's own sshd answers or not); stop the others.
    pub async fn sync_ssh(self: &Arc<Self>) {
        let want: Vec<(u32, Option<String>)> = self.read(|st| {
            st.guests
                .values()
                .filter(|g| g.running && self.runtime.serves_ssh(g))
                .map(|g| (g.vmid, g.ssh_key.clone()))
                .collect()
        });
        let mut to_start = Vec::new();
        {
            let mut ssh = self.ssh.lock().unwrap_or_else(|p| p.into_inner());
            ssh.retain(|vmid, _| want.iter().any(|(v, _)| v == vmid));
            for (vmid, key) in want {
                if !ssh.contains_key(&vmid) {
                    to_start.push((vmid, key));
                }
            }
        }
        for (vmid, key) in to_start {
            let sim = Arc::downgrade(self);
            let config: crate::runtime::ConfigSource = Arc::new(move || {
                sim.upgrade()?
                    .read(|st| st.guests.get(&vmid).map(|g| g.config.clone()))
            });
            let Some(ep) = self.runtime.clone().ssh_endpoint(vmid, key, config).await else {
                continue;
            };
            match ep {
                Ok(ep) => {
                    self.ssh
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(vmid)
                        .or_insert(ep);
                }
                Err(e) => tracing::warn!(vmid, error = %e, "cannot start guest SSH endpoint"),
            }
        }
    }

    /// At start: guests the state says are running keep running only if the runtime still
    /// runs them (a killed simulator leaves real containers up; a stopped one took them
    /// down); storage of volumes the state no longer has is removed; then the runtime
    /// sweeps what the killed run left that nothing adopted uses (`GuestRuntime::sweep`).
    pub async fn reconcile_runtime(self: &Arc<Self>) {
        let rt = self.runtime.clone();
        let (running, bridges, keep) = self.read(|st| {
            (
                st.guests
                    .values()
                    .filter(|g| g.running)
                    .map(|g| (g.vmid, g.config.clone()))
                    .collect::<Vec<_>>(),
                st.bridges.clone(),
                st.volumes
                    .iter()
                    .map(|v| v.volid.clone())
                    .collect::<Vec<_>>(),
            )
        });
        let known: Vec<u32> = self.read(|st| st.guests.keys().copied().collect());
        let stopped = tokio::task::spawn_blocking(move || {
            if let Err(e) = rt.collect_volumes(&keep) {
                tracing::warn!(error = %e, "cannot remove a volume directory");
            }
            let stopped = running
                .into_iter()
                .filter(|(vmid, conf)| !rt.adopt(*vmid, conf, &bridges))
                .map(|(vmid, _)| vmid)
                .collect::<Vec<u32>>();
            rt.sweep(&known);
            stopped
        })
        .await
        .unwrap_or_default();
        if !stopped.is_empty() {
            self.mutate(|st| {
                for v in stopped {
                    if let Some(g) = st.guests.get_mut(&v) {
                        g.running = false;
                    }
                }
            });
        }
    }

    pub fn ssh_port(&self, vmid: u32) -> Option<u16> {
        self.ssh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&vmid)
            .map(|e| e.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Group commit: mutations from many threads at once all reach `state.json` (the file
    /// after the last one returns is the state in memory), with fewer writes than mutations
    /// allowed but never a lost one.
    #[test]
    fn every_mutation_is_on_disk_when_mutate_returns() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SimConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: dir.path().to_path_buf(),
            node: "pve".into(),
            nodes: Vec::new(),
            faults: Default::default(),
            time_scale: 1.0,
            guests: Default::default(),
        };
        let rt = crate::runtime::open(Default::default(), dir.path()).unwrap();
        let sim = Sim::open(cfg, rt, "s".into()).unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..25 {
                        let mine = sim.mutate(|st| {
                            st.counters.requests += 1;
                            st.counters.requests
                        });
                        // What this thread just did is on disk already (or a later state).
                        let on_disk = state::load(dir.path()).unwrap().unwrap();
                        assert!(on_disk.counters.requests >= mine);
                    }
                });
            }
        });
        let on_disk = state::load(dir.path()).unwrap().unwrap();
        assert_eq!(on_disk.counters.requests, 200);
        assert_eq!(sim.read(|st| st.counters.requests), 200);
    }
}
