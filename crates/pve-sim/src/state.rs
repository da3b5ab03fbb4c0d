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
    pub total: u64,
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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub node: String,
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
                },
                StorageDef {
                    id: "local-lvm".into(),
                    storage_type: "lvmthin".into(),
                    content: vec!["images".into(), "rootdir".into()],
                    total: 2048 * GIB,
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

    pub fn used_bytes(&self, storage: &str) -> u64 {
        self.volumes
            .iter()
            .filter(|v| v.storage == storage)
            .map(|v| v.size)
            .sum()
    }

    /// Allocate a new volume of `bytes` for `vmid` on `storage`: named after the ones that
    /// exist and the ones this change allocated already (`new`), and added to `new`.
    pub fn allocate_volume(
        &self,
        storage: String,
        vmid: u32,
        bytes: u64,
        new: &mut Vec<Volume>,
    ) -> String {
        let volid = self.next_disk_name(&storage, vmid, new);
        new.push(Volume {
            volid: volid.clone(),
            storage,
            owner: vmid,
            size: bytes,
        });
        volid
    }

    /// The next free `vm-<vmid>-disk-<n>` on a storage.
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
