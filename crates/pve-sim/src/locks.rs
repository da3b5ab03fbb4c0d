//! The per-guest config flock `/run/lock/lxc/pve-config-<vmid>.lock` (reference §4.1): one
//! mutex per node and VMID, waited for up to 10 s (5 s in create/restore), scaled, then PVE's 500; and
//! the persistent `lock` config property's `check_lock` (§4.2).

use pve_api::texts;
use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;

use crate::error::lock_timeout_text;
use crate::sim::Sim;
use crate::state::Guest;

impl Sim {
    /// The flock of `vmid` on the node its config is on (the first node for a VMID no node
    /// has). A flock is node-local (`/run/lock/lxc` of that host): two nodes never wait for
    /// each other, which is why a create race is decided by the placeholder config alone.
    fn lock_of(&self, vmid: u32) -> Arc<tokio::sync::Mutex<()>> {
        let node = self.read(|st| {
            st.guests
                .get(&vmid)
                .map(|g| g.node.clone())
                .unwrap_or_else(|| st.node.clone())
        });
        self.lock_on(&node, vmid)
    }

    fn lock_on(&self, node: &str, vmid: u32) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((node.to_string(), vmid))
            .or_default()
            .clone()
    }

    /// [`Sim::flock`] of `node`'s flock for `vmid` (create, restore and clone, before the
    /// VMID has a config anywhere).
    pub async fn flock_on(
        &self,
        node: &str,
        vmid: u32,
        timeout_ms: u64,
    ) -> Result<OwnedMutexGuard<()>, String> {
        let lock = self.lock_on(node, vmid);
        self.wait_flock(lock, vmid, timeout_ms).await
    }

    /// Take the flock, waiting up to `timeout_ms` (scaled); the error is PVE's text.
    pub async fn flock(&self, vmid: u32, timeout_ms: u64) -> Result<OwnedMutexGuard<()>, String> {
        let lock = self.lock_of(vmid);
        self.wait_flock(lock, vmid, timeout_ms).await
    }

    async fn wait_flock(
        &self,
        lock: Arc<tokio::sync::Mutex<()>>,
        vmid: u32,
        timeout_ms: u64,
    ) -> Result<OwnedMutexGuard<()>, String> {
        match tokio::time::timeout(self.scaled(timeout_ms), lock.lock_owned()).await {
            Ok(g) => Ok(g),
            Err(_) => {
                self.mutate(|st| st.counters.lock500 += 1);
                Err(lock_timeout_text(vmid))
            }
        }
    }

    /// The flock if nobody holds it right now. A task's worker takes it as it starts, so
    /// handlers take it before answering with the UPID: a request that follows the UPID
    /// always finds it held.
    pub fn try_flock(&self, vmid: u32) -> Option<OwnedMutexGuard<()>> {
        self.lock_of(vmid).try_lock_owned().ok()
    }

    /// Whether a task or call holds the guest's flock right now.
    pub fn is_locked(&self, vmid: u32) -> bool {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((_, v), _)| *v == vmid)
            .any(|(_, l)| l.try_lock().is_err())
    }
}

/// `check_lock`: `CT is locked (<value>)`; start and stop tolerate `mounted`.
pub fn check_lock(g: &Guest, tolerate_mounted: bool) -> Result<(), String> {
    match g.config.get("lock") {
        Some(l) if tolerate_mounted && l == "mounted" => Ok(()),
        Some(l) => Err(texts::locked(l)),
        None => Ok(()),
    }
}
