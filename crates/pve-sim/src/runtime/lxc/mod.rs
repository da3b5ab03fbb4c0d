//! The real guest runtime: every guest is an LXC container booted from its own rootfs.
//!
//! What PVE does is followed from the pve-container sources (`src/PVE/LXC/Create.pm`,
//! `src/PVE/LXC.pm` `update_lxc_config`, `src/PVE/LXC/Setup/Debian.pm`; differences from the
//! simulator in `docs/pve-fidelity.md`, restore in `docs/pve-reference.md §2.3`):
//!
//! - **restore** unpacks the archive with PVE's tar invocation (`tar xpf - --zstd --totals
//!   --one-file-system -p --sparse --numeric-owner --acls --xattrs … --anchored --exclude
//!   './dev/*'`), under `lxc-usernsexec` with the id map `u|g 0 100000 65536` for an
//!   unprivileged guest, into a directory per volume under `STATE/lxc/volumes/`, then deletes
//!   `etc/vzdump/pct.conf` and `pct.fw` from it. Nothing of `post_create_hook`.
//! - **start** applies the start-time setup (`setup.rs`), writes the LXC config PVE's
//!   `update_lxc_config` would write for it, and runs `lxc-start -d` in a private mount
//!   namespace whose `/run` is `STATE/lxc/run`. Each NIC is a veth pair whose host end
//!   (`veth<vmid>i<n>`, PVE's name) is plugged into the bridge inside the bridge's network
//!   namespace (`netns.rs`); dnsmasq there answers the guest's DHCP client (`dhcp.rs`).
//! - **stop / shutdown** run `systemctl poweroff` in the guest and fall back to
//!   `lxc-stop -k`; **destroy** removes the volumes' directories, the container's config
//!   directory, its veths and its leases.
//!
//! | module | what |
//! |---|---|
//! | `mod.rs` | preflight, [`Lxc`] and its paths, id maps, adopting guests after a restart, shutdown |
//! | `restore` | the `vzrestore` unpack; a rootfs too small for what was unpacked fails as ENOSPC |
//! | `clone` | `vzclone` (a copy, `cp -a --reflink=auto`, linked or full; `post_clone_hook` empties `/etc/machine-id`) and `vztemplate` (volume directories renamed `base-…`) |
//! | `start` | bridges and NICs, start-time setup, LXC config rendering, `lxc-start`, boot watcher |
//! | `destroy` | a guest's teardown; sweeping volume directories the state no longer has |
//! | `stop` | poweroff, then kill after the grace; is it stopped, waiting for that |
//! | `inspect` | pids, `/interfaces`, SSH endpoints, facts and summary for the API and state dump |
//! | `guest_runtime` | the runtime behind the `GuestRuntime` trait: blocking jobs, the dump's observations |
//!
//! Where this runtime departs from PVE, and why:
//! - AppArmor: `lxc.apparmor.profile = unconfined` instead of PVE's `generated` (these hosts
//!   have no AppArmor).
//! - `lxc.cap.drop = sys_rawio sys_module` for unprivileged guests. LXC's `userns.conf`
//!   clears the drop list, so systemd's `sys-kernel-debug.mount` and
//!   `systemd-modules-load.service` pass their capability conditions, fail in the user
//!   namespace, and every guest boots `degraded` (lxc/lxc#4724). Both capabilities only act
//!   against the initial user namespace, so dropping them takes nothing from the guest; it
//!   lets "systemd reached `running`" be asserted. The reference does not say what PVE's own
//!   packaging does here.
//! - No cgroup memory/CPU limits (these hosts run a cgroup v1/v2 hybrid), no container-getty
//!   units, no `systemd-networkd` preset, no timezone (the reference does not give PVE's
//!   exact files for these, and none changes what felhom observes).
//! - The NIC is handed to LXC as a ready veth end (`lxc.net.N.type = phys`) instead of
//!   `type = veth` with PVE's `lxcnetaddbr` up-script: the bridge lives in another network
//!   namespace, and plugging it in before the container starts means the guest's DHCP client
//!   never sees an unplugged link. The guest sees the same `eth0` with the same MAC.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::dhcp::{self, Dnsmasq, Subnet};
use super::proc::{self, alive, cmd, in_private_run, run};
use super::setup::{self, GuestRoot, Nic, StartSetup};
use super::{io_err, netns, RuntimeError};
use crate::sim::now_ms;

mod clone;
mod destroy;
mod guest_runtime;
mod inspect;
mod restore;
mod start;
mod stop;

/// The id map PVE gives unprivileged guests, and the subordinate range root needs for it.
pub const ID_SHIFT: u32 = 100_000;
pub const ID_COUNT: u32 = 65_536;
const SUBID_LINE: &str = "root:100000:65536";

/// Every host tool the runtime runs, with the Debian package that ships it.
pub const TOOLS: &[(&str, &str)] = &[
    ("lxc-start", "lxc"),
    ("lxc-stop", "lxc"),
    ("lxc-info", "lxc"),
    ("lxc-usernsexec", "lxc"),
    ("newuidmap", "uidmap"),
    ("newgidmap", "uidmap"),
    ("nsenter", "util-linux"),
    ("ip", "iproute2"),
    ("dnsmasq", "dnsmasq-base"),
    ("tar", "tar"),
    ("zstd", "zstd"),
];

const LXC_CONFIG_DIR: &str = "/usr/share/lxc/config";

/// Can this host run real guests? Root, every tool of [`TOOLS`], LXC's shipped configs.
pub fn preflight() -> Result<(), RuntimeError> {
    if !proc::is_root() {
        return Err(RuntimeError::NotRoot);
    }
    for (tool, package) in TOOLS {
        if proc::find_tool(tool).is_none() {
            return Err(RuntimeError::MissingTool { tool, package });
        }
    }
    check_subids()?;
    if !Path::new(LXC_CONFIG_DIR).join("common.conf").is_file() {
        return Err(RuntimeError::Host(format!(
            "LXC's shipped configuration in {LXC_CONFIG_DIR} (apt-get install lxc)"
        )));
    }
    Ok(())
}

/// When a guest's current boot reached its milestones (seconds after `lxc-start` returned).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BootTimes {
    #[serde(skip)]
    generation: u64,
    pub started_at_ms: u64,
    /// The first DHCP lease for the guest's first NIC in dnsmasq's lease file.
    pub lease_secs: Option<f64>,
    /// `systemctl is-system-running --wait` returned.
    pub systemd_secs: Option<f64>,
    /// What it answered.
    pub systemd_state: Option<String>,
}

/// One NIC as started: where its pair lives, for stop and destroy.
#[derive(Debug, Clone)]
struct StartedNic {
    ns: String,
    bridge: String,
    host_end: String,
    peer: String,
    mac: String,
}

struct BridgeNet {
    ns: String,
    subnet: Subnet,
    dhcp: Dnsmasq,
}

pub struct Lxc {
    sim_id: String,
    root: PathBuf,
    lxc_path: PathBuf,
    run_dir: PathBuf,
    vol_dir: PathBuf,
    dhcp_dir: PathBuf,
    bridges: Mutex<BTreeMap<String, BridgeNet>>,
    pids: Mutex<HashMap<u32, i32>>,
    nics: Mutex<HashMap<u32, Vec<StartedNic>>>,
    boots: Arc<Mutex<HashMap<u32, BootTimes>>>,
    generation: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bridge, storage and volume names become file and interface names: letters, digits and
/// `- _ .`, not starting with a dot.
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn features(conf: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    conf.get("features")
        .map(|f| {
            f.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn is_on(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("1" | "on" | "yes" | "true"))
}

/// The `netN` entries in order of N.
fn nets(conf: &BTreeMap<String, String>) -> Vec<(u32, pve_api::NetConfig)> {
    let mut v: Vec<(u32, pve_api::NetConfig)> = conf
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("net")?.parse().ok()?, v.parse().ok()?)))
        .collect();
    v.sort_by_key(|(n, _)| *n);
    v
}

/// Remove a directory tree without ever leaving its file system: a mount inside (which the
/// host should never see, LXC mounts in its own namespace) stops the removal instead of
/// deleting what is mounted there.
pub fn remove_tree(dir: &Path) -> Result<(), RuntimeError> {
    fn walk(dir: &Path, dev: u64) -> Result<(), RuntimeError> {
        for e in std::fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
            let child = e.map_err(io_err(format!("read {}", dir.display())))?.path();
            let m = std::fs::symlink_metadata(&child)
                .map_err(io_err(format!("stat {}", child.display())))?;
            if m.is_dir() {
                if m.dev() != dev {
                    return Err(RuntimeError::Guest(format!(
                        "{} is a mount point; not removing through it",
                        child.display()
                    )));
                }
                walk(&child, dev)?;
            } else {
                std::fs::remove_file(&child)
                    .map_err(io_err(format!("remove {}", child.display())))?;
            }
        }
        std::fs::remove_dir(dir).map_err(io_err(format!("remove {}", dir.display())))
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => walk(dir, m.dev()),
        Ok(_) => std::fs::remove_file(dir).map_err(io_err(format!("remove {}", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("stat {}", dir.display()))(e)),
    }
}

fn mkdir(p: &Path, mode: u32) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(p).map_err(io_err(format!("create {}", p.display())))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", p.display())))
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<(), RuntimeError> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .map_err(io_err(format!("chown {}", p.display())))
}

/// `root:100000:65536` in `/etc/subuid` and `/etc/subgid`: `newuidmap` refuses the id map
/// otherwise (measured on this machine kind; `docs/pve-fidelity.md`). PVE hosts ship it. The simulator checks and says what to add
/// rather than edit the host's `/etc` itself (`scripts/test` adds it on a test machine).
fn check_subids() -> Result<(), RuntimeError> {
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if !text.lines().any(|l| l.trim() == SUBID_LINE) {
            return Err(RuntimeError::Host(format!(
                "the line `{SUBID_LINE}` in {f} (the id range PVE maps unprivileged guests to; \
                 add it with `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 root`)"
            )));
        }
    }
    Ok(())
}

impl Lxc {
    /// The runtime of the simulator whose state lives in `state_dir`: checks the host and
    /// prepares `STATE/lxc/`.
    pub fn open(state_dir: &Path) -> Result<Lxc, RuntimeError> {
        preflight()?;
        let state_dir = std::fs::canonicalize(state_dir)
            .map_err(io_err(format!("resolve {}", state_dir.display())))?;
        let shown = state_dir.to_string_lossy();
        if shown.contains(['\n', '\r']) {
            return Err(RuntimeError::Host(format!(
                "a state dir without line breaks in its path; got {shown:?}"
            )));
        }
        // Unprivileged guests mount their rootfs as uid 100000: every directory above it must
        // let others pass.
        for dir in state_dir.ancestors() {
            let mode = std::fs::metadata(dir)
                .map_err(io_err(format!("stat {}", dir.display())))?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                return Err(RuntimeError::Host(format!(
                    "its state dir reachable by the guests' root (uid {ID_SHIFT}), which LXC mounts the rootfs as: {} has mode {:o} (no o+x); `chmod o+x {}` or choose another --state-dir",
                    dir.display(),
                    mode & 0o7777,
                    dir.display()
                )));
            }
        }
        let root = state_dir.join("lxc");
        let lx = Lxc {
            sim_id: hex::encode(Sha256::digest(state_dir.as_os_str().as_encoded_bytes()))[..8]
                .to_string(),
            lxc_path: root.join("ct"),
            run_dir: root.join("run"),
            vol_dir: root.join("volumes"),
            dhcp_dir: root.join("dhcp"),
            root,
            bridges: Mutex::default(),
            pids: Mutex::default(),
            nics: Mutex::default(),
            boots: Arc::default(),
            generation: Default::default(),
        };
        mkdir(&lx.root, 0o711)?;
        mkdir(&lx.lxc_path, 0o711)?;
        mkdir(&lx.vol_dir, 0o711)?;
        mkdir(&lx.dhcp_dir, 0o700)?;
        mkdir(&lx.run_dir.join("lxc").join("lock"), 0o755)?;
        mkdir(&lx.run_dir, 0o755)?;
        Ok(lx)
    }

    pub fn sim_id(&self) -> &str {
        &self.sim_id
    }

    /// The directory holding a volume (`local-lvm:vm-1000-disk-0` →
    /// `STATE/lxc/volumes/local-lvm/vm-1000-disk-0`).
    pub fn volume_dir(&self, volid: &str) -> Result<PathBuf, RuntimeError> {
        match volid.split_once(':') {
            Some((storage, name)) if safe_name(storage) && safe_name(name) => {
                Ok(self.vol_dir.join(storage).join(name))
            }
            _ => Err(RuntimeError::Guest(format!(
                "volume '{volid}' cannot be a directory of the lxc runtime"
            ))),
        }
    }

    fn rootfs_dir(&self, conf: &BTreeMap<String, String>) -> Result<PathBuf, RuntimeError> {
        let root = conf
            .get("rootfs")
            .ok_or_else(|| RuntimeError::Guest("missing 'rootfs' configuration".into()))?;
        let m = pve_api::MountConfig::parse_rootfs(root)
            .map_err(|e| RuntimeError::Guest(format!("unable to parse rootfs: {e}")))?;
        if m.volume.starts_with('/') {
            return Err(RuntimeError::Guest(
                "a bind-mounted rootfs is not supported by the simulator's lxc runtime".into(),
            ));
        }
        self.volume_dir(&m.volume)
    }

    /// Where LXC keeps the containers' lock files (under the private `/run`).
    fn lock_dir(&self) -> PathBuf {
        self.run_dir
            .join("lxc")
            .join("lock")
            .join(self.lxc_path.strip_prefix("/").unwrap_or(&self.lxc_path))
    }

    fn ct_dir(&self, vmid: u32) -> PathBuf {
        self.lxc_path.join(vmid.to_string())
    }

    /// The guest's root as seen from the host.
    fn ids(conf: &BTreeMap<String, String>) -> (u32, u32, bool) {
        if is_on(conf.get("unprivileged")) {
            (ID_SHIFT, ID_SHIFT, true)
        } else {
            (0, 0, false)
        }
    }

    fn peer_name(&self, vmid: u32, n: u32) -> String {
        let h = hex::encode(Sha256::digest(format!("{}/{vmid}/{n}", self.sim_id)));
        format!("fh{}", &h[..13])
    }

    fn lxc_cmd(&self, program: &str, vmid: u32) -> Result<std::process::Command, RuntimeError> {
        let mut c = cmd(program);
        c.arg("-P")
            .arg(&self.lxc_path)
            .args(["-n", &vmid.to_string()]);
        in_private_run(&mut c, &self.run_dir)?;
        Ok(c)
    }

    /// After a simulator restart: is this guest's container still running? If so, take it
    /// over (its bridges' DHCP servers are started again with their lease files).
    pub fn adopt(&self, vmid: u32, conf: &BTreeMap<String, String>, bridges: &[String]) -> bool {
        if self.running_pid(vmid).is_none() {
            self.unplug(vmid, conf);
            return false;
        }
        for (_, net) in nets(conf) {
            if let Some(b) = net.bridge {
                if let Some(idx) = bridges.iter().position(|x| *x == b) {
                    if let Err(e) = self.ensure_bridge(&b, idx) {
                        tracing::warn!(vmid, error = %e, "cannot restore the bridge network");
                    }
                }
            }
        }
        true
    }

    /// Stop the runtime with the simulator: running containers are killed (a simulator
    /// that stops takes its guests with it; their rootfs stay), their NICs, the DHCP
    /// servers and the bridges' network namespaces are removed.
    pub fn shutdown(&self) {
        let mut vmids: Vec<u32> = std::fs::read_dir(&self.lxc_path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        vmids.extend(lock(&self.pids).keys().copied());
        vmids.sort_unstable();
        vmids.dedup();
        for vmid in vmids {
            if self.running_pid(vmid).is_some() {
                if let Err(e) = self.kill(vmid) {
                    tracing::warn!(vmid, error = %e, "cannot stop the container");
                }
                self.wait_stopped(vmid, Duration::from_secs(15));
            }
            let nics = lock(&self.nics).remove(&vmid).unwrap_or_default();
            for n in nics {
                netns::del_veth(&n.ns, &n.host_end, &n.peer);
            }
        }
        lock(&self.pids).clear();
        // Nothing runs any more: LXC's lock files can go.
        let lock_root = self.run_dir.join("lxc").join("lock");
        if let Err(e) = remove_tree(&lock_root).and_then(|()| mkdir(&lock_root, 0o755)) {
            tracing::warn!(error = %e, "cannot clear LXC's lock directory");
        }
        let bridges = std::mem::take(&mut *lock(&self.bridges));
        for (_, mut b) in bridges {
            b.dhcp.stop();
            if let Err(e) = netns::remove(&b.ns) {
                tracing::warn!(error = %e, "cannot remove the network namespace");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_map_to_safe_directories() {
        assert!(safe_name("vm-1000-disk-0") && safe_name("local-lvm"));
        for bad in ["", "..", ".hidden", "a/b", "a b", "x\ny"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
    }
}
