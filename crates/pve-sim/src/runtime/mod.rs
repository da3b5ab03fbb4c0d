//! Guest runtimes: what a guest *is* behind the simulated PVE API.
//!
//! One lifecycle interface, [`GuestRuntime`], with two implementations behind it. The task
//! workers (`tasks.rs`) call it at restore, start, reboot, stop, shutdown and destroy; the API
//! asks it for `/interfaces` and a running guest's pid; the simulator asks it for a guest's SSH
//! endpoint, to adopt guests after a restart and to shut down; the state dump asks it what it
//! observes of its guests. Callers hold an `Arc<dyn GuestRuntime>` and never ask which one it
//! is (the shape follows omicron's simulated sled-agent, `sled-agent/src/sim/simulatable.rs`:
//! one trait, the simulated object behind it).
//!
//! - [`RuntimeKind::Modelled`] (the default, `modelled.rs`): a guest is a record in the state.
//!   Boots decide machine-id and SSH keys from the archive's traits (`guest.rs`), DHCP leases
//!   are drawn from a table, and an in-process SSH server presents the modelled key
//!   (`ssh.rs`). Task durations are modelled. Fast, deterministic, needs nothing from the host.
//! - [`RuntimeKind::Lxc`] (`lxc/`): a guest is a real container. Restore unpacks the archive
//!   with PVE's own tar invocation, start applies PVE's start-time setup to the rootfs and
//!   boots it with `lxc-start`; its NIC sits on a bridge inside a network namespace the
//!   simulator made, where dnsmasq hands out leases; the SSH endpoint forwards to the guest's
//!   own sshd. Restore, start, stop and destroy take as long as they really do. Needs root and
//!   the tools [`lxc::preflight`] names.
//!
//! Several nodes (`--nodes`): the runtimes know nothing of nodes. Containers are named by
//! VMID and volumes by volume id, both unique in the whole simulator, so all nodes share one
//! volume directory and one set of bridge namespaces with their DHCP servers: the nodes'
//! `vmbr0` are one L2 segment, as cluster nodes' bridges usually are on one LAN. An offline
//! migration moves nothing on disk. A down node (`node_down:<n>`) is a node whose API is
//! unreachable: with the lxc runtime its containers keep running, as behind a network
//! partition, and its tasks' runtime work already started runs to its end (only the task's
//! result waits for the node to return).
//!
//! How the two differ is in what the trait's methods return, not in the callers: a lifecycle
//! method returns the runtime's own blocking work for a task ([`Job`]), or `None` when the
//! runtime models the task (the worker then waits the task's modelled duration); the methods
//! marked *blocking* may run processes and are called from `spawn_blocking`.
//!
//! | module | what |
//! |---|---|
//! | `mod.rs` | [`GuestRuntime`], [`RuntimeKind`] (the `--guests` selector), [`RuntimeError`] |
//! | `modelled` | the modelled runtime: boot model, `/interfaces` from the lease table |
//! | `lxc/` | the real runtime (its own table of modules) |
//! | `setup` | PVE's start-time setup of a Debian rootfs (hostname, hosts, network config) |
//! | `netns` | a network namespace with a bridge per PVE bridge, veth pairs |
//! | `dhcp` | dnsmasq per bridge, its lease files |
//! | `forward` | the loopback SSH endpoint forwarding into a bridge's namespace |
//! | `proc` | running host tools, root and PATH checks |

pub mod lxc;
pub(crate) mod modelled;

mod dhcp;
pub(crate) mod forward;
mod netns;
mod proc;
mod setup;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::ssh::SshEndpoint;
use crate::state::{Guest, State};

/// Which runtime a simulator's guests use (`felhom sim serve --guests …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeKind {
    #[default]
    Modelled,
    Lxc,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Modelled => "modelled",
            RuntimeKind::Lxc => "lxc",
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "modelled" => Ok(RuntimeKind::Modelled),
            "lxc" => Ok(RuntimeKind::Lxc),
            other => Err(format!("must be modelled or lxc; got {other:?}")),
        }
    }
}

/// A guest config as PVE stores it (key → value).
pub(crate) type Conf = BTreeMap<String, String>;

/// A runtime's own work for one task, run on a blocking thread: its task-log lines, or why it
/// failed. The flag asks it to stop early (a killed task, a stopping simulator).
pub(crate) type Job = Box<dyn FnOnce(&AtomicBool) -> Result<Vec<String>, RuntimeError> + Send>;

/// One volume a clone makes: `to` from `from`, a linked clone (sharing `from`, a base) or a
/// full copy; `key` is the mount (`rootfs`, `mpN`) it serves.
#[derive(Debug, Clone)]
pub(crate) struct VolumeCopy {
    pub key: String,
    pub from: String,
    pub to: String,
    pub linked: bool,
}

/// Reads a guest's current config (for an SSH endpoint that outlives one request).
pub(crate) type ConfigSource = Arc<dyn Fn() -> Option<Conf> + Send + Sync>;

/// What a runtime observes of one guest for the state dump, where it overrides the record.
pub(crate) struct GuestFacts {
    /// Addresses the guest holds (running guests only).
    pub ips: Vec<Value>,
    pub machine_id: Value,
    pub host_key_fingerprint: Value,
    /// Everything else the runtime read, shown under the runtime's name.
    pub detail: Value,
}

/// What a runtime observes of itself and its guests for the state dump.
pub(crate) struct Observed {
    pub guests: BTreeMap<u32, GuestFacts>,
    /// bridge → MAC (upper case) → IPv4, as the runtime's DHCP servers handed them out.
    pub leases: BTreeMap<String, BTreeMap<String, String>>,
    /// The runtime's own state, shown under its name.
    pub summary: Value,
}

/// The lifecycle of a guest behind the simulated API. See the module docs.
pub(crate) trait GuestRuntime: Send + Sync {
    fn kind(&self) -> RuntimeKind;

    // ---- lifecycle: the task's work, or `None` when the task's duration is modelled --------

    /// `vzrestore`: unpack `archive` into the volumes `config` names.
    fn restore(self: Arc<Self>, archive: PathBuf, config: Conf) -> Option<Job>;
    /// `vzstart` with `config` (pending changes applied); `bridges` are the node's.
    fn start(self: Arc<Self>, vmid: u32, config: Conf, bridges: Vec<String>) -> Option<Job>;
    /// `vzreboot`: stop, then start.
    fn reboot(self: Arc<Self>, vmid: u32, config: Conf, bridges: Vec<String>) -> Option<Job>;
    /// `vzstop` / `vzshutdown`: the guest gets `grace` to power off, then it is killed.
    fn stop(self: Arc<Self>, vmid: u32, config: Conf, grace: Duration) -> Option<Job>;
    /// `vzdestroy`: the guest and the volumes listed go.
    fn destroy(self: Arc<Self>, vmid: u32, config: Conf, volumes: Vec<String>) -> Option<Job>;
    /// `vzclone`: make the new volumes of guest `newid` from the source's (`config` is the
    /// target's config as the worker wrote it, without its volumes), then what
    /// `post_clone_hook` does inside (only `/etc/machine-id` truncated).
    fn clone_volumes(
        self: Arc<Self>,
        newid: u32,
        copies: Vec<VolumeCopy>,
        config: Conf,
    ) -> Option<Job>;
    /// `vztemplate`: volumes renamed (`vm-…` → `base-…`), as (from, to).
    fn template(self: Arc<Self>, renames: Vec<(String, String)>) -> Option<Job>;
    /// A finished start or reboot, recorded in the state: what the boot leaves in the guest's
    /// record beyond `running` and `boots` (identity files, leases, when the lease shows).
    fn booted(&self, st: &mut State, vmid: u32, lease_visible_at: u64);
    /// Blocking. Forget storage of volumes the state no longer has (`keep` is what it has).
    fn collect_volumes(&self, keep: &[String]) -> Result<(), RuntimeError>;

    // ---- what the API reads -----------------------------------------------------------

    /// `status/current`'s `pid` of a running guest. Never runs a process.
    fn pid(&self, vmid: u32) -> i64;
    /// Blocking. `GET …/interfaces` of a running guest, `leases` being the state's table;
    /// `None` when it cannot be read.
    fn interfaces(
        &self,
        guest: &Guest,
        leases: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Option<Value>;
    /// Does a running guest get an SSH endpoint?
    fn serves_ssh(&self, guest: &Guest) -> bool;
    /// The loopback SSH endpoint of a running guest (`None`: it has none).
    fn ssh_endpoint(
        self: Arc<Self>,
        vmid: u32,
        host_key: Option<String>,
        config: ConfigSource,
    ) -> BoxFuture<'static, Option<std::io::Result<SshEndpoint>>>;
    /// Blocking. What the state dump shows from the runtime itself (`guests`: vmid, running,
    /// config); `None` when the state's records are all there is.
    fn observe(&self, guests: Vec<(u32, bool, Conf)>) -> Option<Observed>;

    // ---- the simulator's own start and stop ------------------------------------------------

    /// Blocking. After a simulator restart: does this guest the state says runs still run?
    /// If so the runtime takes it over again.
    fn adopt(&self, vmid: u32, config: &Conf, bridges: &[String]) -> bool;
    /// Blocking. After the adoptions of a restart: remove what a killed previous run left
    /// that no adopted guest uses (`known`: every VMID the state has). Nothing by default.
    fn sweep(&self, _known: &[u32]) {}
    /// Blocking. The simulator stops: what the runtime runs stops with it.
    fn shutdown(&self);
}

/// The address of a NIC's static `ip=<a.b.c.d/nn>` (none for `dhcp`, `manual` or no `ip`).
pub(crate) fn static_ipv4(n: &pve_api::NetConfig) -> Option<String> {
    let (addr, _) = n.ip.as_deref()?.split_once('/')?;
    Some(addr.to_string())
}

/// The runtime a simulator's guests use.
pub(crate) fn open(
    kind: RuntimeKind,
    state_dir: &Path,
) -> Result<Arc<dyn GuestRuntime>, RuntimeError> {
    Ok(match kind {
        RuntimeKind::Modelled => Arc::new(modelled::Modelled),
        RuntimeKind::Lxc => Arc::new(lxc::Lxc::open(state_dir)?),
    })
}

/// Why the real runtime could not do something. The messages name what to install or fix:
/// they reach a person through `felhom sim serve`, the demo or a failing test.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the lxc guest runtime must run as root: it unpacks rootfs trees owned by shifted ids, creates network namespaces and starts containers")]
    NotRoot,
    #[error("the lxc guest runtime needs `{tool}`, which is not in PATH; install it with `apt-get install {package}` (Debian package {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("the lxc guest runtime needs {0}")]
    Host(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("{0}")]
    Guest(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}
