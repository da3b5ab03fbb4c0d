//! A Proxmox VE API client: API-token auth with a redacted secret, TLS pinned by
//! certificate fingerprint (or a CA, or system roots), typed errors classified once,
//! PVE property strings that refuse injection, UPIDs and task waiting, and the LXC
//! endpoints felhom uses. No policy and no felhom words: retries are the caller's.
//!
//! The behaviour it follows is PVE 9's, as read from the Proxmox sources (see the project's
//! `shared/pve-reference.md`).

mod access;
mod auth;
mod client;
mod cluster;
mod error;
mod lxc;
mod property_string;
mod storage;
mod task;
mod transport;
mod vmid;

pub use access::Permissions;
pub use auth::{ApiToken, Secret, TokenId, TokenIdError};
pub use client::{ClientConfig, ClientStats, PveClient};
pub use cluster::VersionInfo;
pub use error::{classify, ApiError};
pub use lxc::{Interface, IpAddress, LxcConfig, LxcStatus, LxcSummary};
pub use property_string::{
    format_disk_size, parse_disk_size, Features, MacAddr, MountConfig, NetConfig, PropertyError,
    PropertyString,
};
pub use storage::{PoolInfo, StorageStatus, StorageVolume};
pub use task::{exit_ok, TaskOutcome, TaskStatus, Upid, UpidError, WaitOptions};
pub use transport::{CertFingerprint, TlsTrust};
pub use url::Url;
pub use vmid::{Vmid, VmidError};
