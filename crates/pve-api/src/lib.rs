//! A Proxmox VE API client: API-token auth with a redacted secret, TLS pinned by
//! certificate fingerprint (or a CA, or system roots), typed errors classified once,
//! PVE property strings that refuse injection, UPIDs and task waiting, and the LXC
//! endpoints felhom uses. No policy and no felhom words: retries are the caller's.
//!
//! The behaviour it follows is PVE 9's, as read from the Proxmox sources
//! (`docs/pve-reference.md`; the § numbers below are its sections).
//!
//! | module | what | why it looks like this |
//! |---|---|---|
//! | `auth` | [`TokenId`], [`Secret`], [`ApiToken`] | §0 `PVEAPIToken=user@realm!id=secret`; the secret never prints, is never cloned and is zeroized on drop |
//! | `transport` | [`TlsTrust`], [`CertFingerprint`] | rustls + ring only; a pin checks the end-entity DER hash and still verifies handshake signatures; a refusal becomes [`ApiError::Certificate`] (permanent; the client then sends nothing more) |
//! | `client` | [`PveClient`], [`ClientConfig`], [`ClientStats`] | https only; `{base}/api2/json/{path}`; form bodies for POST/PUT, query for GET/DELETE (§0); bodies read up to [`DEFAULT_MAX_BODY_BYTES`] (or the config's cap), else [`ApiError::BodyTooLarge`] |
//! | `error` | [`ApiError`], [`TaskFailure`], [`classify`] | one pure classifier of (status, reason phrase, body) and of task exit statuses, and one place deciding what is transient |
//! | `texts` | the PVE error texts felhom tells apart | written once, cited to the Perl source; the simulator says them and `classify` recognises them from the same constants |
//! | `property_string` | [`PropertyString`], [`NetConfig`], [`MountConfig`], [`Features`], [`MacAddr`], disk sizes | §3.3/§3.4: PVE has no escaping, so unsafe values are refused, never escaped |
//! | `task` | [`Upid`], [`TaskStatus`], [`WaitOptions`], `wait_task` | §6.3: `WARNINGS: n` is success; a fresh UPID may be invisible for a moment |
//! | `watch` | [`watch::TaskQuery`], [`watch::TaskEntry`], `watch_task` | every task waited for on a node observed by one shared node task-list request per poll: the request rate to a node is bounded however many guests are in flight |
//! | `budget` | `pve.max_requests_per_second`, [`sent_at`] | a sliding window per node over send times, where polls (task list and status, a guest's status and interfaces) take at most three quarters and hold no place ahead, so writes never queue behind them; [`sent_at`] tells a poll when its request really went out |
//! | `observe` | [`Observer`], `endpoint_template` | the hook a caller's metrics hang on ([`PveClient::set_observer`]); endpoints as bounded route templates, never raw ids |
//! | `vmid` | [`Vmid`] | §3.4 `^[1-9][0-9]{2,8}$` |
//! | `side_channel` | [`SIDE_CHANNEL_HEADER`], `PveClient::side_channel_get`/`_post` | a simulator's `/felhom-sim/*` side channel wants its secret in a header of its own (the `Authorization` header carries the PVE token); the value is marked sensitive |
//! | `lxc`, `cluster`, `access`, `storage`, `network` | typed endpoints (`lxc_clone` returns the UPID; `lxc_template` finds the task PVE does not return; `cluster_resources` typed) | path inputs (node, storage, disk) are validated before anything is sent |
//!
//! What a caller must know about retrying: [`ApiError::is_transient`] says whether trying
//! again may help; `Transport { maybe_sent: true }` means a write may have happened, so
//! re-observe before repeating it. [`PveClient::wait_task`] never re-dispatches a task.

mod access;
mod auth;
mod budget;
mod client;
mod cluster;
pub mod durations;
mod error;
mod lxc;
mod network;
pub mod observe;
mod property_string;
mod side_channel;
mod storage;
mod task;
pub mod texts;
mod transport;
mod vmid;
pub mod watch;

pub use access::Permissions;
pub use auth::{ApiToken, Secret, TokenId, TokenIdError};
pub use budget::sent_at;
pub use client::{ClientConfig, ClientStats, PveClient, DEFAULT_MAX_BODY_BYTES};
pub use cluster::{ClusterResource, ResourceType, VersionInfo};
pub use error::{classify, ApiError, TaskFailure};
pub use lxc::{Interface, IpAddress, LxcConfig, LxcStatus, LxcSummary, PendingEntry};
pub use network::NodeInterface;
pub use observe::Observer;
pub use property_string::{
    format_disk_size, parse_disk_size, Features, MacAddr, MountConfig, NetConfig, PropertyError,
    PropertyString,
};
pub use side_channel::SIDE_CHANNEL_HEADER;
pub use storage::{PoolInfo, StorageStatus, StorageVolume};
pub use task::{exit_ok, TaskOutcome, TaskStatus, Upid, UpidError, WaitOptions};
pub use transport::{CertFingerprint, TlsTrust};
pub use url::Url;
pub use vmid::{Vmid, VmidError};
