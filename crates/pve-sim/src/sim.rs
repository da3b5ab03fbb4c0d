//! The simulator's engine: state under a mutex (persisted after each change), the per-guest
//! config flock, tasks that hold it for their whole run, and what each task does at its end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::OwnedMutexGuard;

use crate::guest;
use crate::ssh::SshEndpoint;
use crate::state::{self, ArchiveTraits, State, Task, TaskPlan};
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
    /// e2fsck -f + resize2fs of a stopped guest: longer than the 10 s lock timeout, which is
    /// why the spike's back-to-back PUT got the 500 (F4, reference §10).
    pub const RESIZE: u64 = 12_000;
    pub const START: u64 = 1_000;
    pub const STOP: u64 = 500;
    pub const DESTROY: u64 = 500;
    pub const DHCP: u64 = 1_500;
}

pub struct Sim {
    pub cfg: SimConfig,
    pub state: Mutex<State>,
    locks: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    rng: Mutex<StdRng>,
    pub requests: Mutex<Vec<serde_json::Value>>,
    ssh: Mutex<HashMap<u32, SshEndpoint>>,
    traits_cache: Mutex<HashMap<(PathBuf, u64), ArchiveTraits>>,
}

impl Sim {
    pub fn open(cfg: SimConfig) -> Result<Arc<Sim>, String> {
        let st = match state::load(&cfg.state_dir)? {
            Some(st) => st,
            None => {
                let mut st = State::bootstrap(&cfg.node);
                // The felhom token; its secret goes to a 0600 file, only its hash to the state.
                let secret = format!(
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    rand::random::<u32>(),
                    rand::random::<u16>(),
                    rand::random::<u16>(),
                    rand::random::<u16>(),
                    rand::random::<u64>() & 0xffff_ffff_ffff
                );
                crate::tls::write_private(
                    &cfg.state_dir.join("felhom-agent.token"),
                    &format!("{secret}\n"),
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
        let seed = cfg.faults.seed.unwrap_or_else(rand::random);
        Ok(Arc::new(Sim {
            cfg,
            state: Mutex::new(st),
            locks: Mutex::default(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            requests: Mutex::default(),
            ssh: Mutex::default(),
            traits_cache: Mutex::default(),
        }))
    }

    pub fn shutdown(&self) {
        self.ssh.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn scaled(&self, ms: u64) -> Duration {
        Duration::from_secs_f64(ms as f64 / 1000.0 * self.cfg.time_scale)
    }

    pub fn scaled_ms(&self, ms: u64) -> u64 {
        (ms as f64 * self.cfg.time_scale).round() as u64
    }

    pub fn chance(&self, p: f64) -> bool {
        p > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .gen_bool(p.min(1.0))
    }

    /// Run `f` on the state, then persist it.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut st);
        if let Err(e) = state::save(&self.cfg.state_dir, &st) {
            tracing::error!(error = %e, "cannot persist simulator state");
        }
        r
    }

    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn lock_of(&self, vmid: u32) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(vmid)
            .or_default()
            .clone()
    }

    /// The flock `/run/lock/lxc/pve-config-<vmid>.lock`, waited for up to `timeout_ms`
    /// (scaled); the error is PVE's text.
    pub async fn flock(&self, vmid: u32, timeout_ms: u64) -> Result<OwnedMutexGuard<()>, String> {
        let lock = self.lock_of(vmid);
        match tokio::time::timeout(self.scaled(timeout_ms), lock.lock_owned()).await {
            Ok(g) => Ok(g),
            Err(_) => {
                self.mutate(|st| st.counters.lock500 += 1);
                Err(lock_timeout_text(vmid))
            }
        }
    }

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
        let t = guest::archive_traits(path).map_err(|e| e.to_string())?;
        self.traits_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, t.clone());
        Ok(t)
    }

    /// Register a task (status running) and return its UPID.
    pub fn new_task(
        &self,
        st: &mut State,
        task_type: &str,
        id: &str,
        who: &crate::auth::Subject,
        modelled_ms: u64,
        plan: TaskPlan,
    ) -> String {
        st.next_pid += 1;
        let start = now_ms();
        let upid = pve_api::Upid {
            node: st.node.clone(),
            pid: st.next_pid,
            pstart: 0x0100_0000 + st.next_pid as u64,
            starttime: start / 1000,
            task_type: task_type.into(),
            id: id.into(),
            user: who.upid_user(),
        }
        .to_string();
        let scaled = self.scaled_ms(modelled_ms);
        st.tasks.push(Task {
            upid: upid.clone(),
            node: st.node.clone(),
            task_type: task_type.into(),
            id: id.into(),
            user: who.userid.clone(),
            tokenid: who.token_name(),
            status: "running".into(),
            exitstatus: None,
            log: vec![format!("starting task {upid}")],
            start_ms: start,
            end_ms: start + scaled,
            modelled_ms: scaled,
            plan: Some(plan),
        });
        // Keep the task list bounded like PVE's index (oldest finished tasks drop out).
        if st.tasks.len() > 5000 {
            let drop = st
                .tasks
                .iter()
                .position(|t| t.status == "stopped")
                .unwrap_or(0);
            st.tasks.remove(drop);
        }
        upid
    }

    /// Run a task: take the guest's flock (unless `guard` already holds it), wait out the
    /// modelled duration, apply the plan, record the exit status.
    pub fn spawn_task(
        self: &Arc<Self>,
        upid: String,
        vmid: Option<u32>,
        guard: Option<OwnedMutexGuard<()>>,
    ) {
        let sim = self.clone();
        tokio::spawn(async move {
            let guard = match (guard, vmid) {
                (Some(g), _) => Some(g),
                (None, Some(v)) => match sim.flock(v, model::LOCK_TIMEOUT).await {
                    Ok(g) => Some(g),
                    Err(msg) => {
                        sim.finish(&upid, Err(msg));
                        return;
                    }
                },
                (None, None) => None,
            };
            let end = sim
                .read(|st| st.tasks.iter().find(|t| t.upid == upid).map(|t| t.end_ms))
                .unwrap_or(0);
            let wait = end.saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let plan = sim.read(|st| {
                st.tasks
                    .iter()
                    .find(|t| t.upid == upid)
                    .and_then(|t| t.plan.clone())
            });
            let Some(plan) = plan else { return };
            let follow_up = sim.apply(&upid, plan);
            drop(guard);
            if let Some((vmid, who)) = follow_up {
                // `start=1` on restore: a separate vzstart task after the lock is released.
                let upid = sim.mutate(|st| {
                    sim.new_task(
                        st,
                        "vzstart",
                        &vmid.to_string(),
                        &who,
                        model::START,
                        TaskPlan::Start { vmid },
                    )
                });
                sim.spawn_task(upid, Some(vmid), None);
            }
            sim.sync_ssh().await;
        });
    }

    /// After a restart: finish the tasks a previous run left running.
    pub fn resume_tasks(self: &Arc<Self>) {
        let running: Vec<(String, Option<u32>)> = self.read(|st| {
            st.tasks
                .iter()
                .filter(|t| t.status == "running")
                .map(|t| (t.upid.clone(), t.id.parse().ok()))
                .collect()
        });
        for (upid, vmid) in running {
            self.spawn_task(upid, vmid, None);
        }
        let sim = self.clone();
        tokio::spawn(async move { sim.sync_ssh().await });
    }

    fn finish(&self, upid: &str, result: Result<Vec<String>, String>) {
        self.mutate(|st| {
            if let Some(t) = st.tasks.iter_mut().find(|t| t.upid == upid) {
                t.status = "stopped".into();
                t.plan = None;
                t.end_ms = now_ms();
                match result {
                    Ok(warnings) if warnings.is_empty() => {
                        t.log.push("TASK OK".into());
                        t.exitstatus = Some("OK".into());
                    }
                    Ok(warnings) => {
                        for w in &warnings {
                            t.log.push(format!("WARN: {w}"));
                        }
                        t.log.push(format!("TASK WARNINGS: {}", warnings.len()));
                        t.exitstatus = Some(format!("WARNINGS: {}", warnings.len()));
                    }
                    Err(msg) => {
                        t.log.push(msg.clone());
                        t.log.push(format!("TASK ERROR: {msg}"));
                        t.exitstatus = Some(msg.replace('\n', " "));
                    }
                }
            }
        });
    }

    /// Apply a finished task's plan; returns a follow-up start for `start=1` restores.
    fn apply(&self, upid: &str, plan: TaskPlan) -> Option<(u32, crate::auth::Subject)> {
        let mut follow_up = None;
        let dhcp_at = now_ms() + self.scaled_ms(model::DHCP);
        let result = self.mutate(|st| -> Result<Vec<String>, String> {
            match plan {
                TaskPlan::Restore {
                    vmid,
                    config,
                    volumes,
                    traits,
                    pool,
                    start,
                    warnings,
                } => {
                    let g = st.guests.entry(vmid).or_default();
                    g.vmid = vmid;
                    g.config = config;
                    g.traits = traits;
                    g.pool = pool.clone();
                    st.volumes.extend(volumes);
                    if let Some(p) = pool {
                        st.pools.entry(p).or_default().push(vmid);
                    }
                    if start {
                        let task = st.tasks.iter().find(|t| t.upid == upid);
                        if let Some(t) = task {
                            let who = crate::auth::Subject {
                                userid: t.user.clone(),
                                token: t.tokenid.as_ref().map(|n| format!("{}!{n}", t.user)),
                                privsep: true,
                            };
                            follow_up = Some((vmid, who));
                        }
                    }
                    Ok(warnings)
                }
                TaskPlan::Fail {
                    vmid,
                    message,
                    cleanup_restore,
                } => {
                    if cleanup_restore {
                        st.guests.remove(&vmid);
                        st.volumes.retain(|v| v.owner != vmid);
                    }
                    Err(message)
                }
                TaskPlan::Resize { vmid, disk, bytes } => {
                    let g = st.guests.get_mut(&vmid).ok_or_else(|| {
                        format!(
                            "Configuration file 'nodes/{}/lxc/{vmid}.conf' does not exist",
                            st.node
                        )
                    })?;
                    let cur = g
                        .config
                        .get(&disk)
                        .cloned()
                        .ok_or_else(|| format!("no such disk '{disk}'"))?;
                    let mut m = if disk == "rootfs" {
                        pve_api::MountConfig::parse_rootfs(&cur)
                    } else {
                        pve_api::MountConfig::parse_mp(&cur)
                    }
                    .map_err(|e| e.to_string())?;
                    m.size = Some(bytes);
                    g.config.insert(disk, m.to_string());
                    if let Some(v) = st.volumes.iter_mut().find(|v| v.volid == m.volume) {
                        v.size = bytes;
                    }
                    Ok(Vec::new())
                }
                TaskPlan::Start { vmid } => {
                    let node = st.node.clone();
                    let g = st.guests.get_mut(&vmid).ok_or_else(|| {
                        format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist")
                    })?;
                    if let Some(l) = g.config.get("lock") {
                        return Err(format!("CT is locked ({l})"));
                    }
                    if g.running {
                        return Err(format!("CT {vmid} already running"));
                    }
                    let (mid, key) = guest::boot(&g.traits, &g.machine_id, &g.ssh_key);
                    g.machine_id = mid;
                    g.ssh_key = key;
                    g.running = true;
                    g.boots += 1;
                    g.lease_visible_at = Some(dhcp_at);
                    let nets: Vec<(String, String)> = g
                        .config
                        .iter()
                        .filter(|(k, _)| k.starts_with("net"))
                        .filter_map(|(_, v)| v.parse::<pve_api::NetConfig>().ok())
                        .filter(|n| n.ip.as_deref() == Some("dhcp"))
                        .filter_map(|n| Some((n.bridge.clone()?, n.hwaddr?.to_string())))
                        .collect();
                    for (bridge, mac) in nets {
                        lease(st, &bridge, &mac);
                    }
                    Ok(Vec::new())
                }
                TaskPlan::Stop { vmid } => {
                    if let Some(g) = st.guests.get_mut(&vmid) {
                        g.running = false;
                        g.lease_visible_at = None;
                    }
                    Ok(Vec::new())
                }
                TaskPlan::Destroy {
                    vmid,
                    destroy_unreferenced,
                } => {
                    let Some(g) = st.guests.remove(&vmid) else {
                        return Ok(Vec::new());
                    };
                    let referenced: Vec<String> = g
                        .config
                        .iter()
                        .filter(|(k, _)| {
                            *k == "rootfs" || k.starts_with("mp") || k.starts_with("unused")
                        })
                        .filter_map(|(_, v)| v.split(',').next().map(str::to_string))
                        .collect();
                    let mut warnings = Vec::new();
                    st.volumes.retain(|v| {
                        let referenced = referenced.contains(&v.volid);
                        if referenced && v.owner != vmid {
                            warnings.push(format!(
                                "volume '{}' is owned by another guest, skipping",
                                v.volid
                            ));
                            return true;
                        }
                        !(referenced || (destroy_unreferenced && v.owner == vmid))
                    });
                    st.acl.retain(|a| a.path != format!("/vms/{vmid}"));
                    for members in st.pools.values_mut() {
                        members.retain(|m| *m != vmid);
                    }
                    // dnsmasq would keep the lease until it expires; a destroyed MAC never
                    // returns, so drop it to keep the lease table honest.
                    let macs: Vec<String> = g
                        .config
                        .iter()
                        .filter(|(k, _)| k.starts_with("net"))
                        .filter_map(|(_, v)| {
                            v.parse::<pve_api::NetConfig>()
                                .ok()?
                                .hwaddr
                                .map(|m| m.to_string())
                        })
                        .collect();
                    for leases in st.leases.values_mut() {
                        leases.retain(|mac, _| !macs.contains(mac));
                    }
                    Ok(warnings)
                }
            }
        });
        self.finish(upid, result);
        follow_up
    }

    /// Start SSH endpoints for running guests with keys; stop the others.
    pub async fn sync_ssh(&self) {
        let want: Vec<(u32, String)> = self.read(|st| {
            st.guests
                .values()
                .filter(|g| g.running)
                .filter_map(|g| Some((g.vmid, g.ssh_key.clone()?)))
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
            let Some(k) = guest::parse_key(&key) else {
                continue;
            };
            match crate::ssh::serve(k).await {
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

    /// The flock if nobody holds it right now. A task's worker takes it as it starts, so
    /// callers take it before answering with the UPID: a request that follows the UPID
    /// always finds it held.
    pub fn try_flock(&self, vmid: u32) -> Option<OwnedMutexGuard<()>> {
        self.lock_of(vmid).try_lock_owned().ok()
    }

    /// Whether a task or call holds the guest's flock right now.
    pub fn is_locked(&self, vmid: u32) -> bool {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&vmid)
            .is_some_and(|l| l.try_lock().is_err())
    }

    pub fn ssh_port(&self, vmid: u32) -> Option<u16> {
        self.ssh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&vmid)
            .map(|e| e.port)
    }
}

pub fn lock_timeout_text(vmid: u32) -> String {
    format!("can't lock file '/run/lock/lxc/pve-config-{vmid}.lock' - got timeout")
}

/// A DHCP lease for `mac` on `bridge`, stable per MAC, unique per bridge (like dnsmasq).
/// Addresses come from 10.77.0.0/16: data only, never contacted.
pub fn lease(st: &mut State, bridge: &str, mac: &str) -> String {
    let table = st.leases.entry(bridge.to_string()).or_default();
    let mac = mac.to_ascii_uppercase();
    if let Some(ip) = table.get(&mac) {
        return ip.clone();
    }
    let used: std::collections::HashSet<&String> = table.values().collect();
    let ip = (2u32..65_534)
        .map(|n| format!("10.77.{}.{}", n >> 8, n & 0xff))
        .find(|ip| !used.contains(ip))
        .unwrap_or_else(|| "10.77.255.254".into());
    table.insert(mac, ip.clone());
    ip
}
