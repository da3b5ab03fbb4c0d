//! The PVE error texts felhom tells apart, written once: the simulator produces its errors
//! from these, and [`crate::classify`] recognises them from these, so a text and its
//! recognition cannot drift apart.
//!
//! Each text is a plain `die` in the Perl sources (so HTTP 500, or a task's exit status when
//! it happens inside a worker; reference §0). PVE sends no error codes, only these words, and
//! may prefix them (`unable to restore CT 101 - …`), so recognition looks for the fixed part
//! anywhere in the message. A format fn writes the full text; the `pub(crate)` fragments
//! beside it are what recognition looks for.
//!
//! | text | source (facts in docs/pve-reference.md) | variant |
//! |---|---|---|
//! | [`CONFIG_MODIFIED`] | pve-common `src/PVE/Tools.pm` `assert_if_modified` (§3.2) | `ConfigModified` |
//! | [`already_running`] | pve-container `src/PVE/API2/LXC/Status.pm` `vm_start` (§6.1) | `AlreadyRunning` |
//! | [`not_running`], [`vm_not_running`] | same file, `vm_stop`/`vm_shutdown`, `vm_reboot` (§6.1) | `NotRunning` |
//! | [`ALREADY_AT_SIZE`], [`CANNOT_SHRINK`] | pve-container `src/PVE/API2/LXC.pm` `resize_vm` (§5) | `AlreadyAtSize`, `CannotShrink` |
//! | [`already_exists_on_node`], [`vmid_in_use`] | pve-cluster `src/PVE/Cluster.pm` `check_vmid_unused`; pve-manager `PVE/API2/Cluster.pm` `nextid` (§2.2, §8) | `AlreadyExists`, `Param` |
//! | [`no_config`], [`storage_missing`], [`volume_missing`] | pve-guest-common `src/PVE/AbstractConfig.pm` `load_config`; pve-storage `src/PVE/Storage.pm` `storage_config` (§0, §2.2) | `NotFound` |
//! | [`locked`] | pve-guest-common `src/PVE/AbstractConfig.pm` `check_lock` (§4.2) | `Locked` |
//! | [`lock_timeout`], [`config_lock_file`] | pve-common `src/PVE/Tools.pm` `lock_file_full`; pve-container `src/PVE/LXC/Config.pm` `config_file_lock` (§4.1) | `LockTimeout` |
//! | [`bridge_missing`] | pve-common `src/PVE/Network.pm` `read_bridge_mtu`, called by pve-container `src/PVE/LXC.pm` `update_lxc_config` when `vm_start` writes the LXC config (§6.1) | `BridgeMissing` (task exit status) |
//! | [`unable_to_restore`] | pve-container `src/PVE/API2/LXC.pm` `create_vm` worker (§2.3) | prefix only |
//! | [`NO_WORKER_UPID`] | pve-common `src/PVE/RESTEnvironment.pm` `fork_worker` (§0) | `Server`, transient |
//! | [`cant_find_file`] | pve-storage `src/PVE/Storage.pm` `abs_filesystem_path` (audit top #7) | `NotFound` |
//! | [`MP_WITHOUT_ROOTFS`] | pve-container `src/PVE/API2/LXC.pm` `create_vm` (audit R2) | plain 500 |
//! | [`arbitrary_paths_root_only`] | pve-storage `src/PVE/Storage.pm` `check_volume_access` (audit R3) | plain 500 |
//! | [`tar_no_space`], [`restore_tar_failed`] | GNU tar's ENOSPC line; pve-common `src/PVE/Tools.pm` `run_command`, from pve-container `src/PVE/LXC/Create.pm` `restore_tar_archive` (audit R13) | plain task failure |
//! | [`TEMPLATE_START`] | pve-container `src/PVE/API2/LXC/Status.pm` `vm_start` (audit top #10) | plain task failure |
//! | [`not_owner_of_volume`] | pve-container `src/PVE/LXC.pm` `delete_mountpoint_volume` (audit X2) | a plain log line |
//! | [`resize_foreign_volume`] | pve-container `src/PVE/API2/LXC.pm` `resize_vm` (audit Z3) | plain 500 |
//! | [`linked_clone_unavailable`], [`STORAGE_NOT_FOR_LINKED`], [`FULL_CLONE_RUNNING`], [`clone_failed`], [`clone_mountpoint`] | pve-container `src/PVE/API2/LXC.pm` `clone_vm` (audit §2b) | `Server` / task exit status |
//! | [`TEMPLATE_OF_TEMPLATE`], [`TEMPLATE_RUNNING`], [`template_unavailable`] | pve-container `src/PVE/API2/LXC.pm` `template`, `src/PVE/LXC.pm` `template_create`, `src/PVE/API2/LXC/Status.pm` `vm_start` (audit §2b) | `Server` / task exit status |
//! | [`base_in_use`] | pve-storage `src/PVE/Storage.pm` `vdisk_free` | task exit status |
//! | [`NO_SPACE`] | tar's `Cannot write: No space left on device` (ENOSPC) inside a restore (audit §2a) | prefix `unable to restore` |
//! | [`NO_QUORUM`] | pve-cluster `src/PVE/Cluster.pm` `check_cfs_quorum` (audit §2 (c)) | `NoQuorum`, transient |
//! | [`protected`] | pve-guest-common `src/PVE/AbstractConfig.pm` `check_protection`, from pve-container `destroy_vm` and `LXC/Config.pm` `update_pct_config` (audit P3) | plain 500 |

/// Without quorum, a create, restore, clone or start dies with this (pve-cluster
/// `src/PVE/Cluster.pm` `check_cfs_quorum`; audit §2 (c)): pmxcfs is read-only until the
/// node sees a majority again.
pub const NO_QUORUM: &str = "cluster not ready - no quorum?";

/// A stale `digest` on a config write (pve-common `Tools.pm` `assert_if_modified`).
pub const CONFIG_MODIFIED: &str =
    "detected modified configuration - file changed by other user? Try again.";
/// What recognition looks for: the text up to its question, as other callers re-die it with
/// their own prefix (`VM 100: detected modified configuration - …`).
pub(crate) const CONFIG_MODIFIED_PART: &str = "detected modified configuration";

pub(crate) const ALREADY_RUNNING_PART: &str = " already running";
/// `vm_start` on a running CT (pve-container `API2/LXC/Status.pm`).
pub fn already_running(vmid: u32) -> String {
    format!("CT {vmid}{ALREADY_RUNNING_PART}")
}

pub(crate) const NOT_RUNNING_PART: &str = " not running";
/// `vm_stop` / `vm_shutdown` on a stopped CT (pve-container `API2/LXC/Status.pm`).
pub fn not_running(vmid: u32) -> String {
    format!("CT {vmid}{NOT_RUNNING_PART}")
}
/// `vm_reboot` on a stopped CT: it says `VM`, not `CT` (same file; reference §6.1 "sic").
pub fn vm_not_running(vmid: u32) -> String {
    format!("VM {vmid}{NOT_RUNNING_PART}")
}

/// `resize_vm` asked for the size the disk has (pve-container `API2/LXC.pm`).
pub const ALREADY_AT_SIZE: &str = "disk is already at specified size";
/// `resize_vm` asked for less than the disk has (same function).
pub const CANNOT_SHRINK: &str = "unable to shrink disk size";

pub(crate) const ALREADY_EXISTS_PART: &str = " already exists";
/// `check_vmid_unused` during create/restore (pve-cluster `Cluster.pm`): `CT` for a container.
pub fn already_exists_on_node(vmid: u32, node: &str) -> String {
    format!("CT {vmid}{ALREADY_EXISTS_PART} on node '{node}'")
}
/// `GET /cluster/nextid?vmid=X` for a used X: a 400 field error on `vmid` (pve-manager
/// `API2/Cluster.pm` `nextid`), so it arrives as `Param`, not as a die.
pub fn vmid_in_use(vmid: u32) -> String {
    format!("VM {vmid}{ALREADY_EXISTS_PART}")
}

pub(crate) const DOES_NOT_EXIST_PART: &str = " does not exist";
/// `load_config` of a missing guest (pve-guest-common `AbstractConfig.pm`).
pub fn no_config(node: &str, vmid: u32) -> String {
    format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf'{DOES_NOT_EXIST_PART}")
}
/// `storage_config` of an unknown storage id (pve-storage `Storage.pm`).
pub fn storage_missing(sid: &str) -> String {
    format!("storage '{sid}'{DOES_NOT_EXIST_PART}")
}
/// A volume id whose file or LV is absent (pve-storage `Storage.pm` `path`/`parse_volname`
/// callers).
pub fn volume_missing(volid: &str) -> String {
    format!("volume '{volid}'{DOES_NOT_EXIST_PART}")
}

pub(crate) const LOCKED_PARTS: [&str; 2] = ["CT is locked (", "VM is locked ("];
/// `check_lock`: the persistent `lock` property is set (pve-guest-common `AbstractConfig.pm`;
/// the guest type word is `CT` for containers).
pub fn locked(lock: &str) -> String {
    format!("{}{lock})", LOCKED_PARTS[0])
}

pub(crate) const LOCK_FILE_PART: &str = "can't lock file '";
pub(crate) const GOT_TIMEOUT_PART: &str = "got timeout";
/// `lock_file_full` gave up waiting for the flock (pve-common `Tools.pm`).
pub fn lock_timeout(lock_file: &str) -> String {
    format!("{LOCK_FILE_PART}{lock_file}' - {GOT_TIMEOUT_PART}")
}
/// A container's config flock (pve-container `LXC/Config.pm` `config_file_lock`).
pub fn config_lock_file(vmid: u32) -> String {
    format!("/run/lock/lxc/pve-config-{vmid}.lock")
}

pub(crate) const BRIDGE_PART: &str = "bridge '";
/// A start of a guest whose `netN` names a bridge the node does not have: `vm_start` writes
/// the LXC config first, and reading the bridge's MTU fails (pve-common `Network.pm`
/// `read_bridge_mtu`, from pve-container `LXC.pm` `update_lxc_config`). The `vzstart` task
/// ends with it; nothing was started.
pub fn bridge_missing(bridge: &str) -> String {
    format!("{BRIDGE_PART}{bridge}'{DOES_NOT_EXIST_PART}")
}

/// The prefix a failed restore's exit status carries (pve-container `API2/LXC.pm`).
pub fn unable_to_restore(vmid: impl std::fmt::Display, err: &str) -> String {
    format!("unable to restore CT {vmid} - {err}")
}

/// `create_vm`'s `$emsg` for a plain create (no `restore`).
pub fn unable_to_create(vmid: impl std::fmt::Display, err: &str) -> String {
    format!("unable to create CT {vmid} - {err}")
}

/// The worker could not be forked, so nothing was done (pve-common `RESTEnvironment.pm`
/// `fork_worker`): the one 500 that is worth repeating.
pub const NO_WORKER_UPID: &str = "got no worker upid";

pub(crate) const CANT_FIND_FILE_PART: &str = "can't find file '";
/// A restore whose archive volume names no file: `abs_filesystem_path` in the worker, so it
/// is a task failure (prefixed with [`unable_to_restore`]), never a refusal of the call.
pub fn cant_find_file(volid: &str) -> String {
    format!("{CANT_FIND_FILE_PART}{volid}'")
}

/// `create_vm` in explicit mode (an `mpN` in the request) without a `rootfs`: refused on the
/// call, before anything is locked.
pub const MP_WITHOUT_ROOTFS: &str = "mount points configured, but 'rootfs' not set - aborting";

/// `check_volume_access` of a value that is no volume id (a bare `rootfs=16` is checked raw,
/// before `create_vm` adds the storage) for a caller other than `root@pam`. The Perl `die`
/// has no newline, so Perl appends where it died.
pub fn arbitrary_paths_root_only() -> String {
    "Only root can pass arbitrary filesystem paths. at /usr/share/perl5/PVE/Storage.pm line 651."
        .to_string()
}

/// GNU tar's line for a member that did not fit the target volume (ENOSPC).
pub fn tar_no_space(member: &str) -> String {
    format!("tar: ./{member}: Cannot write: No space left on device")
}

/// `run_command` of the restore's tar ended with tar's exit status 2 (a fatal error such as
/// ENOSPC): the restore task's error after [`unable_to_restore`]'s prefix.
pub fn restore_tar_failed() -> String {
    "command 'tar xpf - --zstd --totals --one-file-system -p --sparse --numeric-owner --acls \
     --xattrs --xattrs-include=user.* --xattrs-include=security.capability \
     --warning=no-file-ignored --warning=no-xattr-write --skip-old-files --anchored \
     --exclude ./dev/*' failed: exit code 2"
        .to_string()
}

/// `vm_start` of a template (the check in the worker, under the flock).
pub const TEMPLATE_START: &str = "you can't start a CT if it's a template";

/// A destroy skips a volume another guest owns with a plain `warn` (not a task warning: the
/// task still ends `OK`).
pub fn not_owner_of_volume(volid: &str, vmid: u32) -> String {
    format!("ignore deletion of '{volid}', CT {vmid} isn't the owner!")
}

/// `resize_vm` of a mount point whose volume another guest owns.
pub fn resize_foreign_volume(owner: u32) -> String {
    format!("can't resize mount point owned by another container ({owner})")
}
/// A linked clone (`full=0`, the default for a template) of a volume whose storage cannot
/// clone it: directory storages (no qcow2 for containers), thick LVM, a non-base volume on
/// ZFS (pve-container `API2/LXC.pm` `clone_vm`; pve-storage `*Plugin.pm` `volume_has_feature`).
pub fn linked_clone_unavailable(volid: &str) -> String {
    format!("Linked clone feature for '{volid}' is not available")
}
/// `storage` given for a linked clone (`clone_vm`).
pub const STORAGE_NOT_FOR_LINKED: &str = "parameter 'storage' not allowed for linked clones";
/// A full clone of a running CT without a snapshot (`clone_vm`).
pub const FULL_CLONE_RUNNING: &str =
    "Full clone of a running container is only possible from a snapshot";
/// A bind or device mount point in the source (`clone_vm`).
pub fn clone_mountpoint(key: &str, kind: &str) -> String {
    format!("unable to clone mountpoint '{key}' (type {kind})")
}
/// The prefix of a failed `vzclone` task's exit status (`clone_vm` worker).
pub fn clone_failed(err: &str) -> String {
    format!("clone failed: {err}")
}
/// `POST …/template` on a template (pve-container `API2/LXC.pm` `template`).
pub const TEMPLATE_OF_TEMPLATE: &str = "you can't convert a template to a template";
/// `POST …/template` on a running CT (same function).
/// `create_vm` with `restore=1, force=1` onto a running CT (pve-container `API2/LXC.pm`).
pub const CANT_OVERWRITE_RUNNING: &str = "can't overwrite running container";
pub const TEMPLATE_RUNNING: &str = "you can't convert a CT to template if the CT is running";
/// A volume whose storage has no `template` feature (thick LVM), in the `vztemplate` worker
/// (pve-container `LXC.pm` `template_create`).
pub fn template_unavailable(volid: &str) -> String {
    format!("Template feature is not available for '{volid}'")
}
/// `vdisk_free` of a base volume linked clones still use (pve-storage `Storage.pm`).
pub fn base_in_use(volname: &str) -> String {
    format!("base volume '{volname}' is still in use by linked clones")
}
/// What tar says when the restore target is too small (ENOSPC); the task then fails with
/// `unable to restore CT <id> - …` and its volumes and placeholder go (audit §2a). The exact
/// surrounding text of a real host is not verified (audit §3).
pub const NO_SPACE: &str = "No space left on device";

/// `check_protection` refusing a change to a protected guest; `what` is the caller's own
/// prefix (`can't remove CT 101`, `can't update CT 101 drive 'mp0'`, …).
pub fn protected(what: &str) -> String {
    format!("{what} - protection mode enabled")
}
