//! The simulator's persistent state: nodes' storages, volumes, guests, tasks, users, tokens,
//! roles, ACLs, pools and DHCP leases. Saved as JSON after every mutation (write, fsync, rename, fsync of the directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a guest's golden archive decides about its identity on boot (read from the archive's
/// real files at restore; `docs/guests.md`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchiveTraits {
    /// `etc/machine-id` contents: `None` = missing (a true first boot), `Some("")` = empty
    /// (systemd generates one at boot), else the baked id every copy shares.
    pub machine_id: Option<String>,
    /// A baked `etc/ssh/ssh_host_ed25519_key` (OpenSSH private key): every copy serves it.
    pub ssh_host_key: Option<String>,
    /// An enabled unit runs `ssh-keygen -A` at boot: fresh keys per copy.
    pub keygen_unit: bool,
    /// Archived `lxc.*` raw keys (dropped for non-root restores, with a task warning).
    pub raw_lxc: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Guest {
    pub vmid: u32,
    /// The node whose `nodes/<node>/lxc/<vmid>.conf` this is (empty in a state saved before
    /// clusters: the state's first node, filled in by [`State::normalize`]).
    #[serde(default)]
    pub node: String,
    /// The config as PVE stores it: key → value (description raw, without trailing `\n`).
    pub config: BTreeMap<String, String>,
    pub running: bool,
    pub boots: u32,
    pub machine_id: Option<String>,
    /// OpenSSH private host key, once the guest has one.
    pub ssh_key: Option<String>,
    pub traits: ArchiveTraits,
    /// Milliseconds since the epoch from which the DHCP lease is visible on `/interfaces`.
    pub lease_visible_at: Option<u64>,
    pub pool: Option<String>,
    /// `[pve:pending]`: changes a running guest gets at its next start (reference §3.2).
    #[serde(default)]
    pub pending: BTreeMap<String, String>,
    #[serde(default)]
    pub pending_delete: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Volume {
    pub volid: String,
    pub storage: String,
    pub owner: u32,
    pub size: u64,
    /// The node holding it. For a node-local storage it is the only node that sees it; on a
    /// shared one it is where it was made (every node sees it). Empty in an old state: the
    /// state's first node ([`State::normalize`]).
    #[serde(default)]
    pub node: String,
}

/// What a task does when its modelled duration has passed. Kept in the state so a
/// restarted simulator finishes tasks that were running.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskPlan {
    /// A restore whose worker has not read the archive yet (the sync phase's result).
    RestoreRequest {
        vmid: u32,
        archive: PathBuf,
        storage: String,
        request: BTreeMap<String, String>,
        pool: Option<String>,
        start: bool,
        unique: bool,
        unprivileged: Option<bool>,
        /// A plain create (`vzcreate`): `archive` is a `vztmpl` template, not a vzdump.
        #[serde(default)]
        create: bool,
    },
    /// A restore after the worker read the archive and allocated the volumes (in the state,
    /// owned by `vmid`): what is applied at its end.
    Restore {
        vmid: u32,
        /// The archive (the real runtime unpacks it while the task runs).
        #[serde(default)]
        archive: Option<PathBuf>,
        config: BTreeMap<String, String>,
        volumes: Vec<Volume>,
        traits: ArchiveTraits,
        pool: Option<String>,
        start: bool,
        warnings: Vec<String>,
    },
    /// `size` as requested: `relative` for `+<size>`. The worker checks again and makes it
    /// absolute before it waits (audit Z2).
    Resize {
        vmid: u32,
        disk: String,
        bytes: u64,
        #[serde(default)]
        relative: bool,
        #[serde(default)]
        digest: Option<String>,
    },
    Start {
        vmid: u32,
    },
    Stop {
        vmid: u32,
    },
    Reboot {
        vmid: u32,
    },
    Destroy {
        vmid: u32,
        destroy_unreferenced: bool,
    },
    /// `vzclone` (`crate::clone`): the target's disks to make, then what its end applies.
    /// `begun` once the worker allocated `volumes` (a restarted simulator does not again).
    Clone {
        source: u32,
        newid: u32,
        disks: Vec<crate::clone::CloneDisk>,
        pool: Option<String>,
        #[serde(default)]
        begun: bool,
        #[serde(default)]
        volumes: Vec<Volume>,
    },
    /// `vztemplate` (`crate::clone`): the volume renames `vm-…` → `base-…`, decided under the
    /// lock when the worker begins.
    Template {
        vmid: u32,
        #[serde(default)]
        renames: Vec<(String, String)>,
    },
    /// A task that fails at its end with this message (injected or modelled failure).
    Fail {
        vmid: u32,
        message: String,
        cleanup_restore: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub upid: String,
    pub node: String,
    pub task_type: String,
    pub id: String,
    /// The owning `user@realm`.
    pub user: String,
    /// The token name for token tasks.
    pub tokenid: Option<String>,
    pub status: String,
    pub exitstatus: Option<String>,
    pub log: Vec<String>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub modelled_ms: u64,
    pub plan: Option<TaskPlan>,
    /// Who started it (the worker's privilege checks run as them).
    #[serde(default)]
    pub who: Option<crate::auth::Subject>,
    /// An injected `task_fail` fault: the task ends with an error and leaves nothing behind.
    #[serde(default)]
    pub inject_fail: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageDef {
    pub id: String,
    #[serde(rename = "type")]
    pub storage_type: String,
    pub content: Vec<String>,
    /// Capacity (per node for a node-local storage, once for a shared one).
    pub total: u64,
    /// `shared 1` in storage.cfg: one pool of volumes every node sees. Otherwise each node has
    /// its own volumes and free space under the same definition (`local`, `local-lvm`).
    #[serde(default)]
    pub shared: bool,
    /// storage.cfg `nodes`: the nodes it is available on (`None`: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
}

impl StorageDef {
    /// Whether the storage is available on `node` (storage.cfg `nodes`).
    pub fn on_node(&self, node: &str) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|ns| ns.iter().any(|n| n == node))
    }
}

/// One cluster node: its name and the capacity `/cluster/resources` and `/nodes` report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeDef {
    pub name: String,
    pub maxcpu: u32,
    /// Bytes.
    pub maxmem: u64,
}

impl NodeDef {
    pub fn new(name: &str) -> NodeDef {
        NodeDef {
            name: name.to_string(),
            maxcpu: 8,
            maxmem: 64 * GIB,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenDef {
    /// `user@realm!name`.
    pub id: String,
    /// SHA-256 hex of the secret; the secret itself is never stored here.
    pub secret_sha256: String,
    pub privsep: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AclEntry {
    pub path: String,
    /// A user id (`felhom@pve`) or a token id (`felhom@pve!agent`).
    pub subject: String,
    pub role: String,
    pub propagate: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub requests: u64,
    pub writes: u64,
    pub lock500: u64,
    pub faults_injected: u64,
    /// Requests performed and then answered 595 (`post_effect_595`).
    #[serde(default)]
    pub post_effect_595: u64,
    /// Requests answered 595 because their node was down (`node_down:<name>`).
    #[serde(default)]
    pub node_down_595: u64,
    /// Requests refused with `cluster not ready - no quorum?` (`no_quorum`).
    #[serde(default)]
    pub no_quorum: u64,
    /// Side-channel migrations done (`POST /felhom-sim/migrate`).
    #[serde(default)]
    pub migrations: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The first node (the only one of a single-node simulator, `pve` by default).
    pub node: String,
    /// Every node of the cluster, in order (empty in an old state: `[node]`, filled in by
    /// [`State::normalize`]).
    #[serde(default)]
    pub nodes: Vec<NodeDef>,
    pub storages: Vec<StorageDef>,
    pub bridges: Vec<String>,
    pub guests: BTreeMap<u32, Guest>,
    pub volumes: Vec<Volume>,
    pub tasks: Vec<Task>,
    pub users: Vec<String>,
    pub tokens: Vec<TokenDef>,
    pub roles: BTreeMap<String, Vec<String>>,
    pub acl: Vec<AclEntry>,
    pub pools: BTreeMap<String, Vec<u32>>,
    /// bridge → MAC (upper case) → IPv4.
    pub leases: BTreeMap<String, BTreeMap<String, String>>,
    pub counters: Counters,
    pub next_pid: u32,
    /// Linked clones: clone volume id → the base volume it shares (`crate::clone`); a base
    /// listed here is not freed (pve-storage `vdisk_free`).
    #[serde(default)]
    pub linked: BTreeMap<String, String>,
}

/// The role preset felhom's token gets (reference §10, "Suggested minimal grants").
pub const FELHOM_AGENT_PRIVS: &[&str] = &[
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Clone",
    "VM.Config.Disk",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.PowerMgmt",
    "Datastore.AllocateSpace",
    "Datastore.Audit",
    "SDN.Use",
    "Pool.Audit",
    "Sys.Audit",
];

/// Every privilege PVE knows that the simulator checks (Administrator has them all).
pub const ALL_PRIVS: &[&str] = &[
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Console",
    "VM.Migrate",
    "VM.PowerMgmt",
    "VM.Snapshot",
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "SDN.Use",
    "SDN.Audit",
    "SDN.Allocate",
    "Pool.Allocate",
    "Pool.Audit",
    "Sys.Audit",
    "Sys.Modify",
    "Sys.Console",
    "Permissions.Modify",
];

pub const GIB: u64 = 1 << 30;

impl State {
    /// A fresh cluster of `nodes` (at least one; the first is [`State::node`]).
    pub fn bootstrap_cluster(nodes: &[String]) -> State {
        let first = nodes.first().map(String::as_str).unwrap_or("pve");
        let mut st = State::bootstrap(first);
        st.nodes = nodes.iter().map(|n| NodeDef::new(n)).collect();
        st.normalize(nodes);
        st
    }

    /// Make a loaded state whole: an old single-node state gets its node list, guests and
    /// volumes without a node belong to the first node, and nodes the configuration names
    /// that the state lacks are added (nodes are never dropped: their guests stay).
    pub fn normalize(&mut self, configured: &[String]) {
        if self.nodes.is_empty() {
            self.nodes.push(NodeDef::new(&self.node));
        }
        for n in configured {
            if !self.nodes.iter().any(|x| &x.name == n) {
                self.nodes.push(NodeDef::new(n));
            }
        }
        let first = self.node.clone();
        for g in self.guests.values_mut() {
            if g.node.is_empty() {
                g.node = first.clone();
            }
        }
        for v in self.volumes.iter_mut() {
            if v.node.is_empty() {
                v.node = first.clone();
            }
        }
    }

    /// Whether `name` is a node of the cluster.
    pub fn has_node(&self, name: &str) -> bool {
        self.nodes.iter().any(|n| n.name == name)
    }

    /// The guest `vmid` if its config lives on `node`.
    pub fn guest_on(&self, node: &str, vmid: u32) -> Option<&Guest> {
        self.guests.get(&vmid).filter(|g| g.node == node)
    }

    /// Whether `node` sees volume `v` (its own node-local volumes, and every shared one).
    pub fn volume_on(&self, node: &str, v: &Volume) -> bool {
        v.node == node || self.storage(&v.storage).is_some_and(|s| s.shared)
    }

    pub fn bootstrap(node: &str) -> State {
        let mut roles = BTreeMap::new();
        roles.insert(
            "FelhomAgent".to_string(),
            FELHOM_AGENT_PRIVS.iter().map(|s| s.to_string()).collect(),
        );
        roles.insert(
            "Administrator".to_string(),
            ALL_PRIVS.iter().map(|s| s.to_string()).collect(),
        );
        roles.insert(
            "PVESDNUser".to_string(),
            vec!["SDN.Use".to_string(), "SDN.Audit".to_string()],
        );
        roles.insert("NoAccess".to_string(), Vec::new());
        let acl = vec![
            AclEntry {
                path: "/".into(),
                subject: "felhom@pve".into(),
                role: "FelhomAgent".into(),
                propagate: true,
            },
            AclEntry {
                path: "/".into(),
                subject: "felhom@pve!agent".into(),
                role: "FelhomAgent".into(),
                propagate: true,
            },
        ];
        State {
            node: node.to_string(),
            storages: vec![
                StorageDef {
                    id: "local".into(),
                    storage_type: "dir".into(),
                    content: vec!["backup".into(), "iso".into(), "vztmpl".into()],
                    total: 100 * GIB,
                    shared: false,
                    nodes: None,
                },
                StorageDef {
                    id: "local-lvm".into(),
                    storage_type: "lvmthin".into(),
                    content: vec!["images".into(), "rootdir".into()],
                    total: 2048 * GIB,
                    shared: false,
                    nodes: None,
                },
            ],
            bridges: vec!["vmbr0".into()],
            users: vec!["root@pam".into(), "felhom@pve".into()],
            roles,
            acl,
            next_pid: 0x1000,
            ..State::default()
        }
    }

    pub fn storage(&self, id: &str) -> Option<&StorageDef> {
        self.storages.iter().find(|s| s.id == id)
    }

    /// Bytes used on `storage` as `node` sees it (a node-local storage: that node's volumes;
    /// a shared one: all).
    pub fn used_bytes(&self, node: &str, storage: &str) -> u64 {
        self.volumes
            .iter()
            .filter(|v| v.storage == storage && self.volume_on(node, v))
            .map(|v| v.size)
            .sum()
    }

    /// Allocate a new volume of `bytes` for `vmid` on `storage`, on the node of `vmid`'s
    /// config: named after the ones that exist and the ones this change allocated already
    /// (`new`), and added to `new`.
    pub fn allocate_volume(
        &self,
        storage: String,
        vmid: u32,
        bytes: u64,
        new: &mut Vec<Volume>,
    ) -> String {
        let volid = self.next_disk_name(&storage, vmid, new);
        let node = self
            .guests
            .get(&vmid)
            .map(|g| g.node.clone())
            .unwrap_or_else(|| self.node.clone());
        new.push(Volume {
            volid: volid.clone(),
            storage,
            owner: vmid,
            size: bytes,
            node,
        });
        volid
    }

    /// The next free `vm-<vmid>-disk-<n>` on a storage. A name taken on any node counts as
    /// taken (PVE looks only at the node's own storage): a volume id is unique in the whole
    /// simulator, so volume bookkeeping keyed by it stays unambiguous; it differs from PVE
    /// only when another node holds an orphan of the same VMID.
    pub fn next_disk_name(&self, storage: &str, vmid: u32, taken: &[Volume]) -> String {
        let mut n = 0;
        loop {
            let volid = format!("{storage}:vm-{vmid}-disk-{n}");
            if !self
                .volumes
                .iter()
                .chain(taken.iter())
                .any(|v| v.volid == volid)
            {
                return volid;
            }
            n += 1;
        }
    }
}

pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub fn load(dir: &Path) -> Result<Option<State>, String> {
    let p = state_file(dir);
    let Some(text) = crate::files::read(&p, u64::MAX)? else {
        return Ok(None);
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// Write the state durably: beside `state.json`, fsync, rename, fsync of the directory
/// (`files::write_atomic`); only the simulator's user can read it (it holds token hashes).
pub fn save(dir: &Path, state: &State) -> Result<(), String> {
    let text = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    save_bytes(dir, &text)
}

/// [`save`] of a state already serialised.
pub fn save_bytes(dir: &Path, json: &[u8]) -> Result<(), String> {
    crate::files::write_atomic(dir, "state.json", json, 0o600)
}
