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

    // ---- restore ------------------------------------------------------------------------

    /// Unpack `archive` into the guest's rootfs volume as PVE's `vzrestore` worker does;
    /// returns the task log lines. The directory is emptied first, so a restore that a
    /// restarted simulator resumes starts over cleanly.
    /// `cancel` (a killed task, a stopping simulator) kills tar and fails the restore.
    pub fn restore(
        &self,
        archive: &Path,
        conf: &BTreeMap<String, String>,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Vec<String>, RuntimeError> {
        let (uid, gid, unprivileged) = Self::ids(conf);
        let rootfs = self.rootfs_dir(conf)?;
        remove_tree(&rootfs)?;
        mkdir(&rootfs, 0o755)?;
        chown(&rootfs, uid, gid)?;
        // Fresh mount-point volumes of the request start empty, owned by the guest's root.
        for v in conf
            .iter()
            .filter(|(k, _)| k.starts_with("mp"))
            .map(|(_, v)| v)
        {
            if let Ok(m) = pve_api::MountConfig::parse_mp(v) {
                if !m.volume.starts_with('/') {
                    let d = self.volume_dir(&m.volume)?;
                    remove_tree(&d)?;
                    mkdir(&d, 0o755)?;
                    chown(&d, uid, gid)?;
                }
            }
        }
        let name = archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let decompress: Option<&str> = if name.ends_with(".tar.zst") {
            Some("--zstd")
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some("-z")
        } else if name.ends_with(".tar.bz2") {
            Some("-j")
        } else if name.ends_with(".tar.xz") {
            Some("-J")
        } else if name.ends_with(".tar.lzo") {
            Some("--lzop")
        } else if name.ends_with(".tar") {
            None
        } else {
            return Err(RuntimeError::Guest(format!(
                "file '{name}' does not look like a template archive"
            )));
        };
        let mut c = if unprivileged {
            let mut c = cmd("lxc-usernsexec");
            c.args([
                "-m",
                &format!("u:0:{ID_SHIFT}:{ID_COUNT}"),
                "-m",
                &format!("g:0:{ID_SHIFT}:{ID_COUNT}"),
                "--",
                "tar",
            ]);
            c
        } else {
            cmd("tar")
        };
        c.args(["xpf", "-"]);
        if let Some(d) = decompress {
            c.arg(d);
        }
        c.args([
            "--totals",
            "--one-file-system",
            "-p",
            "--sparse",
            "--numeric-owner",
            "--acls",
            "--xattrs",
            "--xattrs-include=user.*",
            "--xattrs-include=security.capability",
            "--warning=no-file-ignored",
            "--warning=no-xattr-write",
            "--skip-old-files",
            "--anchored",
            "--exclude",
            "./dev/*",
            // The rootfs is the working directory (entered as root before the id map
            // applies), so the mapped tar never needs to traverse the state dir's parents.
            "-C",
            ".",
        ]);
        c.current_dir(&rootfs);
        let input =
            std::fs::File::open(archive).map_err(io_err(format!("open {}", archive.display())))?;
        // tar's messages go to a file: a pipe nobody reads while waiting could fill up.
        let msgs = self.root.join(format!(
            ".restore-{}.log",
            rootfs
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let msgs_file =
            std::fs::File::create(&msgs).map_err(io_err(format!("create {}", msgs.display())))?;
        c.stdin(Stdio::from(input))
            .stdout(Stdio::null())
            .stderr(Stdio::from(msgs_file));
        proc::own_group(&mut c);
        let t = Instant::now();
        let mut child = c
            .spawn()
            .map_err(io_err(format!("run `{}`", proc::describe(&c))))?;
        let mut guard = proc::GroupGuard::new(child.id());
        let status = loop {
            if cancel.load(std::sync::atomic::Ordering::SeqCst) {
                drop(guard);
                let _ = child.wait();
                let _ = std::fs::remove_file(&msgs);
                return Err(RuntimeError::Guest("interrupted by signal".into()));
            }
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(io_err(format!("wait for `{}`", proc::describe(&c)))(e)),
            }
        };
        guard.disarm();
        let text = std::fs::read_to_string(&msgs).unwrap_or_default();
        let _ = std::fs::remove_file(&msgs);
        if !status.success() {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            return Err(RuntimeError::Command {
                command: proc::describe(&c),
                status: status.to_string(),
                output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        let mut log = vec![format!("extracting archive '{}'", archive.display())];
        log.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
        // PVE deletes the archived config from the new rootfs.
        let root = GuestRoot::open(&rootfs, uid, gid)
            .map_err(io_err(format!("open {}", rootfs.display())))?;
        for f in ["etc/vzdump/pct.conf", "etc/vzdump/pct.fw"] {
            root.unlink(f)
                .map_err(io_err(format!("remove {f} from the rootfs")))?;
        }
        log.push(format!(
            "unpacked into {} in {:.2}s{}",
            rootfs.display(),
            t.elapsed().as_secs_f64(),
            if unprivileged {
                format!(" (ids shifted by {ID_SHIFT})")
            } else {
                String::new()
            }
        ));
        Ok(log)
    }

    // ---- networks -----------------------------------------------------------------------

    fn ensure_bridge(&self, bridge: &str, idx: usize) -> Result<(String, Subnet), RuntimeError> {
        if !safe_name(bridge) || bridge.len() > 15 {
            return Err(RuntimeError::Guest(format!(
                "bridge '{bridge}' cannot be an interface name"
            )));
        }
        let mut b = lock(&self.bridges);
        if let Some(x) = b.get(bridge) {
            return Ok((x.ns.clone(), x.subnet));
        }
        let ns = netns::name(&self.sim_id, bridge);
        let subnet = Subnet {
            second: u8::try_from(77 + idx).unwrap_or(255),
        };
        netns::ensure(&ns, bridge, &subnet.gateway_cidr())?;
        let dhcp = Dnsmasq::start(&self.dhcp_dir, &ns, bridge, subnet)?;
        b.insert(
            bridge.to_string(),
            BridgeNet {
                ns: ns.clone(),
                subnet,
                dhcp,
            },
        );
        Ok((ns, subnet))
    }

    fn take_nics(&self, vmid: u32, conf: &BTreeMap<String, String>) -> Vec<StartedNic> {
        if let Some(n) = lock(&self.nics).remove(&vmid) {
            return n;
        }
        nets(conf)
            .into_iter()
            .filter_map(|(n, net)| {
                let bridge = net.bridge.clone()?;
                Some(StartedNic {
                    ns: netns::name(&self.sim_id, &bridge),
                    bridge,
                    host_end: format!("veth{vmid}i{n}"),
                    peer: self.peer_name(vmid, n),
                    mac: net.hwaddr?.to_string(),
                })
            })
            .collect()
    }

    fn unplug(&self, vmid: u32, conf: &BTreeMap<String, String>) {
        for n in self.take_nics(vmid, conf) {
            netns::del_veth(&n.ns, &n.host_end, &n.peer);
        }
    }

    // ---- start --------------------------------------------------------------------------

    /// Start a guest: NICs, start-time setup, LXC config, `lxc-start`. `bridges` is the
    /// node's bridge list (its order picks each bridge's subnet). Returns the task log.
    pub fn start(
        &self,
        vmid: u32,
        conf: &BTreeMap<String, String>,
        bridges: &[String],
    ) -> Result<Vec<String>, RuntimeError> {
        if let Some(pid) = self.running_pid(vmid) {
            // A simulator restarted while the container kept running.
            return Ok(vec![format!(
                "container {vmid} already running (pid {pid})"
            )]);
        }
        let (uid, gid, unprivileged) = Self::ids(conf);
        let rootfs = self.rootfs_dir(conf)?;
        if !rootfs.is_dir() {
            return Err(RuntimeError::Guest(format!(
                "rootfs {} does not exist",
                rootfs.display()
            )));
        }
        let hostname = conf
            .get("hostname")
            .cloned()
            .unwrap_or_else(|| format!("CT{vmid}"));
        let mut log = Vec::new();
        let mut started = Vec::new();
        let mut nic_setup = Vec::new();
        let mut net_lines = String::new();
        let result = (|| -> Result<(), RuntimeError> {
            for (n, net) in nets(conf) {
                let bridge = net
                    .bridge
                    .clone()
                    .ok_or_else(|| RuntimeError::Guest(format!("net{n}: missing bridge")))?;
                let idx = bridges.iter().position(|b| *b == bridge).ok_or_else(|| {
                    RuntimeError::Guest(format!("net{n}: bridge '{bridge}' does not exist"))
                })?;
                let mac = net
                    .hwaddr
                    .as_ref()
                    .map(|m| m.to_string().to_ascii_lowercase())
                    .ok_or_else(|| RuntimeError::Guest(format!("net{n}: no hwaddr")))?;
                let mtu = net.other.get("mtu").cloned();
                let (ns, _) = self.ensure_bridge(&bridge, idx)?;
                let nic = StartedNic {
                    ns: ns.clone(),
                    bridge: bridge.clone(),
                    host_end: format!("veth{vmid}i{n}"),
                    peer: self.peer_name(vmid, n),
                    mac: mac.clone(),
                };
                netns::add_veth(&ns, &bridge, &nic.host_end, &nic.peer, &mac, mtu.as_deref())?;
                started.push(nic.clone());
                net_lines.push_str(&format!(
                    "lxc.net.{n}.type = phys\nlxc.net.{n}.link = {}\nlxc.net.{n}.name = {}\nlxc.net.{n}.hwaddr = {mac}\n",
                    nic.peer, net.name
                ));
                if let Some(m) = &mtu {
                    net_lines.push_str(&format!("lxc.net.{n}.mtu = {m}\n"));
                }
                nic_setup.push(Nic {
                    name: net.name.clone(),
                    ip: net.ip.clone(),
                    gw: net.other.get("gw").cloned(),
                    ip6: net.other.get("ip6").cloned(),
                    gw6: net.other.get("gw6").cloned(),
                });
                log.push(format!(
                    "net{n}: {} ({mac}) on {bridge} (host end {} in netns {ns})",
                    net.name, nic.host_end
                ));
            }
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let (host_search, host_ns) = setup::host_dns(&host);
            let searchdomain = conf.get("searchdomain").cloned().or(host_search);
            let nameservers = match conf.get("nameserver") {
                Some(n) => n
                    .split([' ', ',', ';'])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                None => host_ns,
            };
            let root = GuestRoot::open(&rootfs, uid, gid)
                .map_err(io_err(format!("open {}", rootfs.display())))?;
            log.extend(
                setup::apply(
                    &root,
                    &StartSetup {
                        hostname: hostname.clone(),
                        searchdomain,
                        nameservers,
                        nics: nic_setup.clone(),
                    },
                )
                .map_err(io_err("start-time setup of the rootfs"))?,
            );
            let mounts = self.mount_entries(conf, uid, gid)?;
            let config = self.render_config(vmid, conf, &hostname, &rootfs, &net_lines, &mounts)?;
            let dir = self.ct_dir(vmid);
            mkdir(&dir, 0o755)?;
            std::fs::write(dir.join("config"), config)
                .map_err(io_err(format!("write {}", dir.join("config").display())))?;
            let _ = std::fs::remove_file(dir.join("lxc.log"));
            let mut c = self.lxc_cmd("lxc-start", vmid)?;
            c.arg("-d");
            if let Err(e) = run(&mut c) {
                let tail = std::fs::read_to_string(dir.join("lxc.log")).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(8).collect();
                return Err(RuntimeError::Guest(format!(
                    "startup for container '{vmid}' failed: {e}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            Ok(())
        })();
        if let Err(e) = result {
            for n in &started {
                netns::del_veth(&n.ns, &n.host_end, &n.peer);
            }
            return Err(e);
        }
        let pid = self.query_pid(vmid).ok_or_else(|| {
            RuntimeError::Guest(format!(
                "startup for container '{vmid}' failed: no init process after lxc-start"
            ))
        })?;
        lock(&self.pids).insert(vmid, pid);
        let lease_mac = started.first().map(|n| (n.bridge.clone(), n.mac.clone()));
        lock(&self.nics).insert(vmid, started);
        self.watch_boot(vmid, pid, lease_mac);
        log.push(format!(
            "container {vmid} started: init pid {pid}{}",
            if unprivileged { ", unprivileged" } else { "" }
        ));
        Ok(log)
    }

    /// `lxc.mount.entry` lines for the `mpN` volumes (each its own directory, owned by the
    /// guest's root when new).
    fn mount_entries(
        &self,
        conf: &BTreeMap<String, String>,
        uid: u32,
        gid: u32,
    ) -> Result<String, RuntimeError> {
        let mut out = String::new();
        let mut mps: Vec<(u32, pve_api::MountConfig)> = conf
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.strip_prefix("mp")?.parse().ok()?,
                    pve_api::MountConfig::parse_mp(v).ok()?,
                ))
            })
            .collect();
        mps.sort_by_key(|(n, _)| *n);
        for (n, m) in mps {
            let Some(path) = m.mp.as_deref() else {
                continue;
            };
            if path.contains(|c: char| c.is_whitespace() || c == '\\') {
                return Err(RuntimeError::Guest(format!(
                    "mp{n}: mount path '{path}' cannot be written as an lxc.mount.entry"
                )));
            }
            let src = if m.volume.starts_with('/') {
                PathBuf::from(&m.volume)
            } else {
                let d = self.volume_dir(&m.volume)?;
                if !d.exists() {
                    mkdir(&d, 0o755)?;
                    chown(&d, uid, gid)?;
                }
                d
            };
            out.push_str(&format!(
                "lxc.mount.entry = {} {} none rbind,create=dir 0 0\n",
                src.display(),
                path.trim_start_matches('/')
            ));
        }
        Ok(out)
    }

    /// The LXC config, in the order and with the keys PVE's `update_lxc_config` writes for
    /// the guest (see the module doc for the departures).
    fn render_config(
        &self,
        vmid: u32,
        conf: &BTreeMap<String, String>,
        hostname: &str,
        rootfs: &Path,
        net_lines: &str,
        mounts: &str,
    ) -> Result<String, RuntimeError> {
        let (_, _, unprivileged) = Self::ids(conf);
        let feats = features(conf);
        let word = |k: &str, dflt: &str| -> Result<String, RuntimeError> {
            let v = conf.get(k).map(String::as_str).unwrap_or(dflt);
            if v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !v.is_empty() {
                Ok(v.to_string())
            } else {
                Err(RuntimeError::Guest(format!("{k} '{v}' is not supported")))
            }
        };
        let arch = word("arch", "amd64")?;
        let ostype = word("ostype", "debian")?;
        let inc = |kind: &str| {
            let p = Path::new(LXC_CONFIG_DIR).join(format!("{ostype}.{kind}.conf"));
            if p.is_file() {
                p
            } else {
                Path::new(LXC_CONFIG_DIR).join(format!("{kind}.conf"))
            }
        };
        let tty: u32 = conf.get("tty").and_then(|t| t.parse().ok()).unwrap_or(2);
        let dir = self.ct_dir(vmid);
        let mut c = format!(
            "# written by pve-sim's lxc runtime for CT {vmid}, as PVE's update_lxc_config would\nlxc.arch = {arch}\nlxc.include = {}\n",
            inc("common").display()
        );
        if unprivileged {
            c.push_str(&format!("lxc.include = {}\n", inc("userns").display()));
        }
        c.push_str("lxc.monitor.unshare = 1\n");
        if unprivileged {
            c.push_str(&format!(
                "lxc.idmap = u 0 {ID_SHIFT} {ID_COUNT}\nlxc.idmap = g 0 {ID_SHIFT} {ID_COUNT}\n"
            ));
            c.push_str("lxc.mount.auto = sys:mixed\n");
            c.push_str("lxc.cap.drop = sys_rawio sys_module\n");
        }
        if is_on(feats.get("nesting")) {
            c.push_str(&format!(
                "lxc.include = {}\nlxc.apparmor.allow_nesting = 1\n",
                Path::new(LXC_CONFIG_DIR).join("nesting.conf").display()
            ));
        }
        c.push_str("lxc.apparmor.profile = unconfined\n");
        if unprivileged && !is_on(feats.get("keyctl")) {
            // PVE's rule for unprivileged guests without keyctl=1: keyctl(2) fails ENOSYS.
            let base = std::fs::read_to_string(Path::new(LXC_CONFIG_DIR).join("common.seccomp"))
                .map_err(io_err("read LXC's common.seccomp"))?;
            let profile = dir.join("seccomp");
            mkdir(&dir, 0o755)?;
            std::fs::write(&profile, format!("{}\nkeyctl errno 38\n", base.trim_end()))
                .map_err(io_err(format!("write {}", profile.display())))?;
            c.push_str(&format!("lxc.seccomp.profile = {}\n", profile.display()));
        }
        c.push_str(&format!(
            "lxc.tty.max = {tty}\nlxc.environment = TERM=linux\nlxc.uts.name = {hostname}\nlxc.rootfs.path = dir:{}\n",
            rootfs.display()
        ));
        c.push_str(net_lines);
        c.push_str(mounts);
        // Raw lxc.* keys (only ever set by root, as PVE takes them only from root).
        for (k, v) in conf.iter().filter(|(k, _)| k.starts_with("lxc.")) {
            if v.contains(['\n', '\r']) {
                continue;
            }
            c.push_str(&format!("{k} = {v}\n"));
        }
        c.push_str(&format!(
            "lxc.log.file = {}\nlxc.log.level = WARN\n",
            dir.join("lxc.log").display()
        ));
        Ok(c)
    }

    /// Record when this boot reaches its milestones: the first lease in dnsmasq's file, and
    /// systemd's answer to `is-system-running --wait`. Two plain threads, each ending with
    /// its milestone, the guest's end, or two minutes.
    fn watch_boot(&self, vmid: u32, pid: i32, lease_mac: Option<(String, String)>) {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        lock(&self.boots).insert(
            vmid,
            BootTimes {
                generation,
                started_at_ms: now_ms(),
                ..BootTimes::default()
            },
        );
        let t0 = Instant::now();
        let limit = Duration::from_secs(120);
        let record = {
            let boots = self.boots.clone();
            move |f: &dyn Fn(&mut BootTimes)| {
                if let Some(b) = lock(&boots).get_mut(&vmid) {
                    if b.generation == generation {
                        f(b);
                    }
                }
            }
        };
        if let Some((bridge, mac)) = lease_mac {
            let file = self.dhcp_dir.join(format!("{bridge}.leases"));
            let record = record.clone();
            let _ = std::thread::Builder::new()
                .name(format!("felhom-sim-lease-{vmid}"))
                .spawn(move || {
                    while t0.elapsed() < limit && alive(pid) {
                        if dhcp::read_leases(&file).iter().any(|l| l.mac == mac) {
                            let secs = t0.elapsed().as_secs_f64();
                            record(&|b| b.lease_secs = Some(secs));
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
        }
        let _ = std::thread::Builder::new()
            .name(format!("felhom-sim-boot-{vmid}"))
            .spawn(move || {
                let socket = PathBuf::from(format!("/proc/{pid}/root/run/systemd/private"));
                while !socket.exists() {
                    if t0.elapsed() > limit || !alive(pid) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let mut c = cmd("nsenter");
                c.args(["-t", &pid.to_string(), "-a", "--"])
                    .args(["systemctl", "is-system-running", "--wait"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                let Ok(mut child) = c.spawn() else {
                    return;
                };
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) => break,
                        Ok(None) if t0.elapsed() < limit => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return;
                        }
                    }
                }
                let mut out = String::new();
                if let Some(mut s) = child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut s, &mut out);
                }
                let secs = t0.elapsed().as_secs_f64();
                let state = out.trim().to_string();
                record(&|b| {
                    b.systemd_secs = Some(secs);
                    b.systemd_state = Some(state.clone());
                });
            });
    }

    // ---- state --------------------------------------------------------------------------

    /// `lxc-info -pH`: the container's init pid, if it runs.
    fn query_pid(&self, vmid: u32) -> Option<i32> {
        if !self.ct_dir(vmid).join("config").exists() {
            return None;
        }
        let mut c = self.lxc_cmd("lxc-info", vmid).ok()?;
        c.arg("-pH");
        run(&mut c).ok()?.trim().parse().ok()
    }

    /// The init pid of a running guest.
    pub fn running_pid(&self, vmid: u32) -> Option<i32> {
        if let Some(pid) = lock(&self.pids).get(&vmid).copied() {
            if alive(pid) {
                return Some(pid);
            }
        }
        let pid = self.query_pid(vmid);
        let mut pids = lock(&self.pids);
        match pid {
            Some(p) => {
                pids.insert(vmid, p);
            }
            None => {
                pids.remove(&vmid);
            }
        }
        pid
    }

    /// The cached init pid (no process is run: for `status/current`).
    pub fn cached_pid(&self, vmid: u32) -> Option<i32> {
        lock(&self.pids).get(&vmid).copied().filter(|p| alive(*p))
    }

    /// Is the container stopped as far as LXC is concerned (monitor gone)?
    fn stopped(&self, vmid: u32) -> bool {
        let Ok(mut c) = self.lxc_cmd("lxc-info", vmid) else {
            return true;
        };
        c.arg("-sH");
        match run(&mut c) {
            Ok(s) => s.trim() == "STOPPED",
            Err(_) => true,
        }
    }

    fn wait_stopped(&self, vmid: u32, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.stopped(vmid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn kill(&self, vmid: u32) -> Result<(), RuntimeError> {
        let mut c = self.lxc_cmd("lxc-stop", vmid)?;
        c.arg("-k");
        if let Err(e) = run(&mut c) {
            if !self.stopped(vmid) {
                return Err(e);
            }
        }
        Ok(())
    }

    // ---- stop / destroy -----------------------------------------------------------------

    /// Power a guest off: `systemctl poweroff` inside, then `lxc-stop -k` if it is still up
    /// after `grace`. Unplugs its NICs. Returns the task log.
    pub fn stop(
        &self,
        vmid: u32,
        conf: &BTreeMap<String, String>,
        grace: Duration,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut log = Vec::new();
        if let Some(pid) = self.running_pid(vmid) {
            let t = Instant::now();
            let mut c = cmd("nsenter");
            c.args(["-t", &pid.to_string(), "-a", "--", "systemctl", "poweroff"]);
            let asked = run(&mut c).is_ok();
            while asked && alive(pid) && t.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(25));
            }
            if alive(pid) {
                log.push(format!(
                    "{}; lxc-stop -k",
                    if asked {
                        format!("still running after {:.0}s", grace.as_secs_f64())
                    } else {
                        "systemctl poweroff failed".to_string()
                    }
                ));
                self.kill(vmid)?;
            } else {
                log.push(format!(
                    "powered off in {:.2}s (systemctl poweroff)",
                    t.elapsed().as_secs_f64()
                ));
            }
            if !self.wait_stopped(vmid, Duration::from_secs(15)) {
                self.kill(vmid)?;
            }
        }
        lock(&self.pids).remove(&vmid);
        self.unplug(vmid, conf);
        Ok(log)
    }

    /// Remove everything of a guest: a running container is killed, its NICs unplugged, its
    /// leases forgotten by dnsmasq, its LXC directory and the directories of `volumes`
    /// removed.
    pub fn destroy(
        &self,
        vmid: u32,
        conf: &BTreeMap<String, String>,
        volumes: &[String],
    ) -> Result<Vec<String>, RuntimeError> {
        let mut log = Vec::new();
        if self.running_pid(vmid).is_some() {
            self.kill(vmid)?;
            self.wait_stopped(vmid, Duration::from_secs(15));
            log.push(format!("container {vmid} killed"));
        }
        lock(&self.pids).remove(&vmid);
        lock(&self.boots).remove(&vmid);
        self.unplug(vmid, conf);
        let mut by_bridge: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, net) in nets(conf) {
            if let (Some(b), Some(m)) = (net.bridge, net.hwaddr) {
                by_bridge.entry(b).or_default().push(m.to_string());
            }
        }
        for (bridge, macs) in by_bridge {
            if let Some(b) = lock(&self.bridges).get_mut(&bridge) {
                b.dhcp.purge(&macs)?;
            } else {
                // No server runs for this bridge now: edit its lease file directly.
                let file = self.dhcp_dir.join(format!("{bridge}.leases"));
                if let Ok(text) = std::fs::read_to_string(&file) {
                    let kept: String = text
                        .lines()
                        .filter(|l| {
                            let mac = l.split_whitespace().nth(1).unwrap_or("");
                            !macs.iter().any(|m| m.eq_ignore_ascii_case(mac))
                        })
                        .map(|l| format!("{l}\n"))
                        .collect();
                    std::fs::write(&file, kept)
                        .map_err(io_err(format!("rewrite {}", file.display())))?;
                }
            }
        }
        remove_tree(&self.ct_dir(vmid))?;
        let _ = std::fs::remove_file(self.lock_dir().join(format!(".{vmid}")));
        for v in volumes {
            if let Ok(d) = self.volume_dir(v) {
                remove_tree(&d)?;
                log.push(format!("removed volume {v}"));
            }
        }
        Ok(log)
    }

    /// Remove the directories of volumes the state no longer has (a failed restore, a
    /// destroy, a simulator that stopped in between), and empty storage directories.
    pub fn collect_volumes(&self, keep: &[String]) -> Result<(), RuntimeError> {
        let Ok(storages) = std::fs::read_dir(&self.vol_dir) else {
            return Ok(());
        };
        for s in storages.flatten() {
            let storage = s.file_name().to_string_lossy().into_owned();
            for v in std::fs::read_dir(s.path()).into_iter().flatten().flatten() {
                let volid = format!("{storage}:{}", v.file_name().to_string_lossy());
                if !keep.contains(&volid) {
                    remove_tree(&v.path())?;
                }
            }
            let _ = std::fs::remove_dir(s.path());
        }
        Ok(())
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

    // ---- what the API and the state dump show ------------------------------------------

    /// `GET …/interfaces` of a running guest: `ip --json addr` inside its network
    /// namespace, reshaped as PVE does (pve-container `src/PVE/LXC.pm`; `docs/pve-fidelity.md`). `None` when it does not run.
    pub fn interfaces(&self, vmid: u32) -> Option<Value> {
        let pid = self.running_pid(vmid)?;
        let mut c = cmd("nsenter");
        c.args([
            "-t",
            &pid.to_string(),
            "-n",
            "--",
            "ip",
            "--json",
            "addr",
            "show",
        ]);
        let out = run(&mut c).ok()?;
        let links: Vec<Value> = serde_json::from_str(&out).ok()?;
        Some(Value::Array(links.iter().map(reshape_interface).collect()))
    }

    /// The leases of a guest's NICs in its bridges' lease files.
    fn leases_of(&self, conf: &BTreeMap<String, String>) -> Vec<Value> {
        nets(conf)
            .into_iter()
            .filter_map(|(_, n)| Some((n.bridge?, n.hwaddr?.to_string().to_ascii_lowercase())))
            .flat_map(|(bridge, mac)| {
                dhcp::read_leases(&self.dhcp_dir.join(format!("{bridge}.leases")))
                    .into_iter()
                    .filter(move |l| l.mac == mac)
                    .map(move |l| json!({ "bridge": bridge, "mac": l.mac, "ip": l.ip, "hostname": l.hostname, "expiry": l.expiry }))
            })
            .collect()
    }

    /// The leased IP of a guest's first NIC that has one, and the namespace it lives in
    /// (the SSH forward's target).
    pub fn ssh_target(
        &self,
        conf: &BTreeMap<String, String>,
    ) -> Option<(PathBuf, std::net::IpAddr)> {
        nets(conf).into_iter().find_map(|(_, n)| {
            let bridge = n.bridge?;
            let mac = n.hwaddr?.to_string().to_ascii_lowercase();
            let lease = dhcp::read_leases(&self.dhcp_dir.join(format!("{bridge}.leases")))
                .into_iter()
                .find(|l| l.mac == mac)?;
            Some((
                netns::path(&netns::name(&self.sim_id, &bridge)),
                lease.ip.parse().ok()?,
            ))
        })
    }

    /// What the state dump shows of one guest, read from outside: its rootfs and files on
    /// disk, its init process, systemd's state inside, its leases. Runs a few short
    /// processes when the guest is running.
    pub fn facts(&self, vmid: u32, conf: &BTreeMap<String, String>) -> Value {
        let (uid, gid, unprivileged) = Self::ids(conf);
        let rootfs = self.rootfs_dir(conf).ok();
        let root = rootfs
            .as_deref()
            .filter(|p| p.is_dir())
            .and_then(|p| GuestRoot::open(p, uid, gid).ok());
        let read = |p: &str| {
            root.as_ref()
                .and_then(|r| r.read(p).ok().flatten())
                .map(|s| s.trim().to_string())
        };
        let machine_id = read("etc/machine-id").filter(|m| !m.is_empty());
        let host_key = read("etc/ssh/ssh_host_ed25519_key.pub").and_then(|k| {
            russh::keys::PublicKey::from_openssh(&k)
                .ok()
                .map(|k| k.fingerprint(russh::keys::HashAlg::Sha256).to_string())
        });
        let pid = self.running_pid(vmid);
        let in_guest = |args: &[&str]| -> Option<String> {
            let pid = pid?;
            let mut c = cmd("nsenter");
            c.args(["-t", &pid.to_string(), "-a", "--"]).args(args);
            proc::output(&mut c)
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let system_state = in_guest(&["systemctl", "is-system-running"]);
        let failed: Vec<String> = in_guest(&[
            "systemctl",
            "list-units",
            "--failed",
            "--plain",
            "--no-legend",
            "--no-pager",
        ])
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
        let uts = pid.and_then(|pid| {
            let mut c = cmd("nsenter");
            c.args(["-t", &pid.to_string(), "-u", "--", "uname", "-n"]);
            run(&mut c).ok().map(|s| s.trim().to_string())
        });
        let veths: Vec<String> = nets(conf)
            .into_iter()
            .filter_map(|(n, net)| {
                let ns = netns::name(&self.sim_id, net.bridge.as_deref()?);
                let name = format!("veth{vmid}i{n}");
                netns::links(&ns).contains(&name).then_some(name)
            })
            .collect();
        let boot = lock(&self.boots).get(&vmid).cloned();
        json!({
            "container": vmid.to_string(),
            "config_dir": self.ct_dir(vmid),
            "config_exists": self.ct_dir(vmid).join("config").exists(),
            "rootfs": rootfs,
            "rootfs_exists": rootfs.as_deref().is_some_and(Path::is_dir),
            "unprivileged": unprivileged,
            "init_pid": pid,
            "system_state": system_state,
            "failed_units": failed,
            "uts_hostname": uts,
            "hostname_file": read("etc/hostname"),
            "machine_id": machine_id,
            "host_key_fingerprint": host_key,
            "leases": self.leases_of(conf),
            "veths": veths,
            "boot": boot,
        })
    }

    /// The runtime's own state for the dump: namespaces, DHCP servers and their leases,
    /// what is left in the container and volume directories.
    pub fn summary(&self) -> Value {
        let bridges: BTreeMap<String, Value> = lock(&self.bridges)
            .iter()
            .map(|(name, b)| {
                (
                    name.clone(),
                    json!({
                        "netns": b.ns,
                        "subnet": format!("10.{}.0.0/16", b.subnet.second),
                        "dnsmasq_pid": b.dhcp.pid(),
                        "lease_file": b.dhcp.lease_file,
                        "links": netns::links(&b.ns),
                        "leases": dhcp::read_leases(&b.dhcp.lease_file),
                    }),
                )
            })
            .collect();
        let list = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let volumes: Vec<String> = list(&self.vol_dir)
            .into_iter()
            .flat_map(|s| {
                list(&self.vol_dir.join(&s))
                    .into_iter()
                    .map(move |v| format!("{s}:{v}"))
            })
            .collect();
        let peers: Vec<String> = {
            let out = run(cmd("ip").args(["-j", "link", "show"])).unwrap_or_default();
            serde_json::from_str::<Vec<Value>>(&out)
                .unwrap_or_default()
                .iter()
                .filter_map(|l| l["ifname"].as_str())
                .filter(|n| n.starts_with("fh") && n.len() == 15)
                .map(str::to_string)
                .collect()
        };
        json!({
            "sim_id": self.sim_id,
            "dir": self.root,
            "lxc_path": self.lxc_path,
            "run_dir": self.run_dir,
            "volumes_dir": self.vol_dir,
            "dhcp_dir": self.dhcp_dir,
            "bridges": bridges,
            "containers": list(&self.lxc_path),
            "volumes": volumes,
            "host_peers": peers,
        })
    }
}

/// One interface of `ip --json addr` as PVE's `/interfaces` shows it.
fn reshape_interface(l: &Value) -> Value {
    let name = l["ifname"].as_str().unwrap_or("");
    let mac = l["address"].as_str().unwrap_or("");
    let mut v = json!({ "name": name, "hwaddr": mac, "hardware-address": mac });
    let mut addrs = Vec::new();
    for a in l["addr_info"].as_array().into_iter().flatten() {
        let (Some(family), Some(local), Some(prefix)) = (
            a["family"].as_str(),
            a["local"].as_str(),
            a["prefixlen"].as_u64(),
        ) else {
            continue;
        };
        if family != "inet" && family != "inet6" {
            continue;
        }
        // The last address of each family, as PVE keeps it.
        v[family] = json!(format!("{local}/{prefix}"));
        addrs.push(json!({ "ip-address": local, "ip-address-type": family, "prefix": prefix }));
    }
    v["ip-addresses"] = json!(addrs);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_are_reshaped_as_pve_does() {
        let ip: Value = serde_json::from_str(r#"[{"ifindex":5,"ifname":"eth0","address":"bc:24:11:00:00:01","addr_info":[{"family":"inet","local":"10.77.105.123","prefixlen":16},{"family":"inet6","local":"fe80::be24:11ff:fe00:1","prefixlen":64}]}]"#).unwrap();
        let v = reshape_interface(&ip[0]);
        assert_eq!(v["name"], "eth0");
        assert_eq!(v["hwaddr"], "bc:24:11:00:00:01");
        assert_eq!(v["hardware-address"], "bc:24:11:00:00:01");
        assert_eq!(v["inet"], "10.77.105.123/16");
        assert_eq!(v["inet6"], "fe80::be24:11ff:fe00:1/64");
        assert_eq!(v["ip-addresses"][0]["ip-address-type"], "inet");
        assert_eq!(v["ip-addresses"][1]["prefix"], 64);
        // Before the lease: no `inet` key at all.
        let bare = json!({"ifname":"eth0","address":"bc:24:11:00:00:01","addr_info":[]});
        assert!(reshape_interface(&bare).get("inet").is_none());
    }

    #[test]
    fn volume_ids_map_to_safe_directories() {
        assert!(safe_name("vm-1000-disk-0") && safe_name("local-lvm"));
        for bad in ["", "..", ".hidden", "a/b", "a b", "x\ny"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
    }
}
