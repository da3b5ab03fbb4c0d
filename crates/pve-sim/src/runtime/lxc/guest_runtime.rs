//! The lxc runtime behind [`GuestRuntime`]: each lifecycle method hands the worker a blocking
//! job that does the real thing (`restore.rs`, `start.rs`, `stop.rs`, `destroy.rs`); what the
//! API and the state dump read comes from the containers themselves (`inspect.rs`).

use std::sync::atomic::AtomicBool;

use futures::future::BoxFuture;

use super::*;
use crate::runtime::{Conf, ConfigSource, GuestFacts, GuestRuntime, Job, Observed, RuntimeKind};
use crate::ssh::SshEndpoint;
use crate::state::{Guest, State};

/// A blocking job from a closure over the runtime.
fn job(
    l: Arc<Lxc>,
    f: impl FnOnce(&Lxc, &AtomicBool) -> Result<Vec<String>, RuntimeError> + Send + 'static,
) -> Option<Job> {
    Some(Box::new(move |cancel: &AtomicBool| f(&l, cancel)))
}

impl GuestRuntime for Lxc {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Lxc
    }

    fn restore(self: Arc<Self>, archive: PathBuf, config: Conf) -> Option<Job> {
        job(self, move |l, cancel| {
            Lxc::restore(l, &archive, &config, cancel)
        })
    }

    fn start(self: Arc<Self>, vmid: u32, config: Conf, bridges: Vec<String>) -> Option<Job> {
        job(self, move |l, _| Lxc::start(l, vmid, &config, &bridges))
    }

    fn reboot(self: Arc<Self>, vmid: u32, config: Conf, bridges: Vec<String>) -> Option<Job> {
        job(self, move |l, _| {
            let mut log = Lxc::stop(l, vmid, &config, Duration::from_secs(60))?;
            log.extend(Lxc::start(l, vmid, &config, &bridges)?);
            Ok(log)
        })
    }

    fn stop(self: Arc<Self>, vmid: u32, config: Conf, grace: Duration) -> Option<Job> {
        job(self, move |l, _| Lxc::stop(l, vmid, &config, grace))
    }

    fn destroy(self: Arc<Self>, vmid: u32, config: Conf, volumes: Vec<String>) -> Option<Job> {
        job(self, move |l, _| Lxc::destroy(l, vmid, &config, &volumes))
    }

    fn clone_volumes(
        self: Arc<Self>,
        newid: u32,
        copies: Vec<crate::runtime::VolumeCopy>,
        config: Conf,
    ) -> Option<Job> {
        job(self, move |l, cancel| {
            Lxc::clone_volumes(l, newid, &copies, &config, cancel)
        })
    }

    fn template(self: Arc<Self>, renames: Vec<(String, String)>) -> Option<Job> {
        job(self, move |l, _| Lxc::template(l, &renames))
    }

    /// The guest itself settled its identity files and asked for its lease: the record keeps
    /// no modelled lease time.
    fn booted(&self, st: &mut State, vmid: u32, _: u64) {
        if let Some(g) = st.guests.get_mut(&vmid) {
            g.lease_visible_at = None;
        }
    }

    fn collect_volumes(&self, keep: &[String]) -> Result<(), RuntimeError> {
        Lxc::collect_volumes(self, keep)
    }

    fn pid(&self, vmid: u32) -> i64 {
        self.cached_pid(vmid)
            .map_or(100_000 + i64::from(vmid), i64::from)
    }

    fn interfaces(
        &self,
        guest: &Guest,
        _: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Option<Value> {
        Lxc::interfaces(self, guest.vmid)
    }

    /// Every running guest: its own sshd answers, or not.
    fn serves_ssh(&self, _: &Guest) -> bool {
        true
    }

    fn ssh_endpoint(
        self: Arc<Self>,
        _: u32,
        _: Option<String>,
        config: ConfigSource,
    ) -> BoxFuture<'static, Option<std::io::Result<SshEndpoint>>> {
        let target: crate::runtime::forward::Target = Arc::new(move || self.ssh_target(&config()?));
        Box::pin(async move { Some(crate::runtime::forward::serve(target).await) })
    }

    /// Each guest's facts read from outside (`inspect.rs`), the leases dnsmasq handed out,
    /// and the runtime's summary.
    fn observe(&self, guests: Vec<(u32, bool, Conf)>) -> Option<Observed> {
        let guests: BTreeMap<u32, GuestFacts> = guests
            .into_iter()
            .map(|(vmid, running, conf)| {
                let f = self.facts(vmid, &conf);
                // Static addresses (the guest's network config has them), then leases.
                let ips = if running {
                    nets(&conf)
                        .iter()
                        .filter_map(|(_, n)| crate::runtime::static_ipv4(n))
                        .map(Value::from)
                        .chain(
                            f["leases"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|l| l["ip"].clone()),
                        )
                        .collect()
                } else {
                    Vec::new()
                };
                let facts = GuestFacts {
                    ips,
                    machine_id: f["machine_id"].clone(),
                    host_key_fingerprint: f["host_key_fingerprint"].clone(),
                    detail: f,
                };
                (vmid, facts)
            })
            .collect();
        let summary = self.summary();
        let mut leases: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (bridge, b) in summary["bridges"].as_object().into_iter().flatten() {
            for l in b["leases"].as_array().into_iter().flatten() {
                if let (Some(mac), Some(ip)) = (l["mac"].as_str(), l["ip"].as_str()) {
                    leases
                        .entry(bridge.clone())
                        .or_default()
                        .insert(mac.to_ascii_uppercase(), ip.to_string());
                }
            }
        }
        Some(Observed {
            guests,
            leases,
            summary,
        })
    }

    fn adopt(&self, vmid: u32, config: &Conf, bridges: &[String]) -> bool {
        Lxc::adopt(self, vmid, config, bridges)
    }

    fn shutdown(&self) {
        Lxc::shutdown(self)
    }
}
