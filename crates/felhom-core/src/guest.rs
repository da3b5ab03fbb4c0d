//! What PVE says about a guest, each fact read in exactly one place.
//!
//! Bring-up, teardown, `plan` and `status` all ask the same questions of PVE: is there a
//! guest at this VMID, is it felhom's, what MAC, size and mounts does it have, where is its
//! SSH server, which VMID would a new guest get. They used to answer them each in their own
//! way and disagreed (status hard-coded the simulator's SSH host; `plan` picked VMID 1000 for
//! every "auto" guest). Every one of those answers lives here now:
//!
//! | question | here |
//! |---|---|
//! | the config at a VMID, or "no guest" | [`config_of`] |
//! | whose guest is it | [`Ownership::of`] (`Ours` / `OtherJob` / `Unmarked`) |
//! | net0, its MAC, rootfs size, `mpN` mounts, tags | [`net0_of`], [`mac_of`], [`rootfs_bytes`], [`mounts_of`], [`tags_of`] |
//! | mounts whose detach waits for the next start | [`pending_mount_detaches`] |
//! | eth0's IP | [`eth0_ip`] |
//! | where to reach the guest's sshd, and the key it proves | [`ssh_endpoint`], [`ssh_fingerprint`] |
//! | power state, IP and key of a live guest | [`live`] |
//! | which VMIDs new guests get | [`VmidPicker`] (plan and provision share it) |
//! | what the golden archive says about itself | [`golden_info`] |

use std::collections::HashSet;

use pve_api::{ApiError, LxcConfig, NetConfig, PveClient, Vmid};
use serde_json::Value;

use crate::config::{Config, SshEndpoint, VmidRange};
use crate::journal::Journal;
use crate::marker::Marker;
use crate::spec::VmidChoice;

/// The guest's config, or `None` if there is no guest at that VMID.
pub async fn config_of(
    client: &PveClient,
    node: &str,
    vmid: Vmid,
) -> Result<Option<LxcConfig>, ApiError> {
    match client.lxc_config(node, vmid).await {
        Ok(c) => Ok(Some(c)),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whose guest a config describes, as far as felhom can prove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// The marker names the job asked about.
    Ours(Marker),
    /// felhom's marker, but of another job.
    OtherJob(Marker),
    /// No felhom marker: never felhom's to touch.
    Unmarked,
}

impl Ownership {
    /// Classify `cfg` against the job that claims it.
    pub fn of(cfg: &LxcConfig, job: &str) -> Ownership {
        match marker_of(cfg) {
            Some(m) if m.job == job => Ownership::Ours(m),
            Some(m) => Ownership::OtherJob(m),
            None => Ownership::Unmarked,
        }
    }

    pub fn is_ours(&self) -> bool {
        matches!(self, Ownership::Ours(_))
    }

    /// Who holds the guest, for refusal messages.
    pub fn describe(&self) -> String {
        match self {
            Ownership::Ours(m) | Ownership::OtherJob(m) => format!("felhom job {}", m.job),
            Ownership::Unmarked => "no felhom marker".into(),
        }
    }
}

pub fn marker_of(cfg: &LxcConfig) -> Option<Marker> {
    cfg.get_str("description").and_then(Marker::find)
}

/// Whether `cfg` still is the guest felhom recorded with net0's `mac` and the rootfs volume
/// `rootfs`: facts that only felhom's restore set and that a tenant cannot change from inside
/// the guest. With them, a guest whose description (the marker) was rewritten is still
/// provably felhom's, and its marker is repaired; without a recorded volume, never.
pub fn bound_to(cfg: &LxcConfig, mac: Option<&str>, rootfs: Option<&str>) -> bool {
    let same_mac = matches!((mac_of(cfg), mac), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b));
    let same_rootfs = matches!((rootfs_volume(cfg), rootfs), (Some(a), Some(b)) if a == b);
    same_mac && same_rootfs
}

/// net0, or an error if PVE holds something that does not parse as a network property.
pub fn net0_of(cfg: &LxcConfig) -> Result<Option<NetConfig>, String> {
    match cfg.net(0) {
        None => Ok(None),
        Some(Ok(n)) => Ok(Some(n)),
        Some(Err(e)) => Err(format!(
            "guest net0 is not a valid network property string: {e}"
        )),
    }
}

/// net0's MAC, upper case as PVE stores it (None when absent or unparsable).
pub fn mac_of(cfg: &LxcConfig) -> Option<String> {
    net0_of(cfg)
        .ok()
        .flatten()
        .and_then(|n| n.hwaddr)
        .map(|m| m.to_string().to_ascii_uppercase())
}

/// Every MAC a config carries on any `netN`.
pub fn all_macs(cfg: &LxcConfig) -> impl Iterator<Item = String> + '_ {
    (0..32).filter_map(|n| match cfg.net(n) {
        Some(Ok(net)) => net.hwaddr.map(|m| m.to_string().to_ascii_uppercase()),
        _ => None,
    })
}

/// The rootfs size in bytes.
pub fn rootfs_bytes(cfg: &LxcConfig) -> Result<u64, String> {
    match cfg.mount("rootfs") {
        Some(Ok(m)) => Ok(m.size.unwrap_or(0)),
        Some(Err(e)) => Err(format!(
            "guest rootfs is not a valid mount property string: {e}"
        )),
        None => Err("guest has no rootfs".into()),
    }
}

/// The rootfs volume id (`local-lvm:vm-1100-disk-0`).
pub fn rootfs_volume(cfg: &LxcConfig) -> Option<String> {
    match cfg.mount("rootfs") {
        Some(Ok(m)) => Some(m.volume),
        _ => None,
    }
}

/// One `mpN` of a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSeen {
    pub key: String,
    pub path: String,
    pub bytes: u64,
}

/// Every `mpN` that parses.
pub fn mounts_of(cfg: &LxcConfig) -> Vec<MountSeen> {
    (0..256)
        .filter_map(|n| {
            let key = format!("mp{n}");
            match cfg.mount(&key) {
                Some(Ok(m)) => Some(MountSeen {
                    key,
                    path: m.mp.clone().unwrap_or_default(),
                    bytes: m.size.unwrap_or(0),
                }),
                _ => None,
            }
        })
        .collect()
}

/// The `mpN` keys whose detach is pending (a mount removed from a running guest waits for
/// its next start, its volume and data untouched), with their mount paths.
pub fn pending_mount_detaches(pending: &[pve_api::PendingEntry]) -> Vec<MountSeen> {
    pending
        .iter()
        .filter(|e| e.key.starts_with("mp") && e.delete_pending())
        .filter_map(|e| {
            let m = pve_api::MountConfig::parse_mp(e.value_str()?).ok()?;
            Some(MountSeen {
                key: e.key.clone(),
                path: m.mp.clone().unwrap_or_default(),
                bytes: m.size.unwrap_or(0),
            })
        })
        .collect()
}

/// The config's tags (PVE separates them with `;`, reference §9).
pub fn tags_of(cfg: &LxcConfig) -> Vec<String> {
    let mut t: Vec<String> = cfg
        .get_str("tags")
        .unwrap_or_default()
        .split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    t.sort();
    t.dedup();
    t
}

/// eth0's IPv4 address without its prefix length, from `/interfaces` (`None` when the guest
/// is stopped or has no lease yet).
pub fn eth0_ip(ifaces: &[pve_api::Interface]) -> Option<String> {
    ifaces
        .iter()
        .find(|i| i.name == "eth0")
        .and_then(|i| i.inet.as_deref())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
}

/// Where to reach the guest's sshd: `<ip>:22` on a real host, or the simulator's loopback
/// forward. Guest IPs from the simulator are data, never addresses to contact, so a
/// simulator that offers anything but loopback is refused (`Err`). `Ok(None)`: not yet.
pub async fn ssh_endpoint(
    client: &PveClient,
    config: &Config,
    vmid: Vmid,
    ip: &str,
) -> Result<Option<(String, u16)>, EndpointError> {
    match config.ssh_endpoint {
        SshEndpoint::Direct => Ok(Some((ip.to_string(), 22))),
        SshEndpoint::Sim => match client
            .get_outside_api::<Value>(&format!("/felhom-sim/guests/{vmid}/ssh"))
            .await
        {
            Ok(v) => {
                let host = v.get("host").and_then(Value::as_str).unwrap_or("127.0.0.1");
                if !matches!(host, "127.0.0.1" | "::1" | "localhost") {
                    return Err(EndpointError::NotLoopback(host.to_string()));
                }
                let port = v
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok());
                Ok(port.map(|p| (host.to_string(), p)))
            }
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(EndpointError::Api(e)),
        },
    }
}

/// How long one SSH handshake may take.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The host key fingerprint the guest's sshd proves in a handshake; `Ok(None)` when it cannot
/// be reached (yet).
pub async fn ssh_fingerprint(
    client: &PveClient,
    config: &Config,
    vmid: Vmid,
    ip: &str,
) -> Result<Option<String>, EndpointError> {
    let Some((host, port)) = ssh_endpoint(client, config, vmid, ip).await? else {
        return Ok(None);
    };
    match crate::ssh_probe::host_key_fingerprint(&host, port, HANDSHAKE_TIMEOUT).await {
        Ok(fp) => Ok(Some(fp)),
        Err(e) => {
            tracing::debug!(%vmid, error = %e, "SSH host key not available yet");
            Ok(None)
        }
    }
}

/// What a guest shows beyond its config, read for `status` and `apply`'s drift checks.
#[derive(Debug, Clone)]
pub struct Live {
    /// `running`, `stopped`…
    pub status: String,
    /// eth0's address (read only while it runs).
    pub ip: Option<String>,
    /// The host key a handshake proves (read only while it runs; `None`: unreachable).
    pub ssh_fingerprint: Option<String>,
}

pub async fn live(
    client: &PveClient,
    config: &Config,
    node: &str,
    vmid: Vmid,
) -> Result<Live, ApiError> {
    let status = client.lxc_status(node, vmid).await?.status;
    let mut ip = None;
    let mut fp = None;
    if status == "running" {
        if let Some(ifaces) = client.lxc_interfaces(node, vmid).await? {
            ip = eth0_ip(&ifaces);
        }
        if let Some(ip) = ip.as_deref() {
            // An endpoint that cannot be reached, or is refused, shows as unreachable.
            fp = ssh_fingerprint(client, config, vmid, ip)
                .await
                .unwrap_or(None);
        }
    }
    Ok(Live {
        status,
        ip,
        ssh_fingerprint: fp,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("simulator offered a non-loopback SSH endpoint {0}; refusing to contact it")]
    NotLoopback(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Chooses VMIDs for new guests: the lowest in felhom's range that no guest in the cluster uses,
/// no live journal lease holds, and no earlier pick of this picker took. `plan` and
/// `provision` both walk their specs in order through one picker, so `plan` shows exactly the
/// VMIDs `provision` reserves first (a concurrent felhom process may still take one: the
/// reserve step then moves to the next free one and says so).
pub struct VmidPicker {
    range: VmidRange,
    taken: HashSet<u32>,
}

impl VmidPicker {
    /// VMIDs are cluster-wide: every guest on every node counts, from one
    /// `/cluster/resources` read.
    pub async fn new(
        client: &PveClient,
        journal: &Journal,
        range: VmidRange,
    ) -> Result<VmidPicker, PickError> {
        let view = crate::cluster::ClusterView::read(client).await?;
        Self::from_view(journal, &view, range)
    }

    /// The picker over a cluster read already made.
    pub fn from_view(
        journal: &Journal,
        view: &crate::cluster::ClusterView,
        range: VmidRange,
    ) -> Result<VmidPicker, PickError> {
        let mut taken: HashSet<u32> = journal.leased_vmids()?.into_iter().collect();
        taken.extend(view.vmids());
        Ok(VmidPicker { range, taken })
    }

    /// The VMID a spec gets: its fixed one, or the next free one (then taken for later picks).
    pub fn pick(&mut self, choice: VmidChoice) -> Option<Vmid> {
        match choice {
            VmidChoice::Fixed(v) => {
                self.taken.insert(v.get());
                Some(v)
            }
            VmidChoice::NextFree => {
                let v = self.candidates().next()?;
                self.taken.insert(v.get());
                Some(v)
            }
        }
    }

    /// Whether `v` is in the range and free (not leased, on no node).
    pub fn is_free(&self, v: Vmid) -> bool {
        self.range.contains(v) && !self.taken.contains(&v.get())
    }

    /// Free VMIDs in order, without taking them.
    pub fn candidates(&self) -> impl Iterator<Item = Vmid> + '_ {
        self.range.iter().filter(|v| !self.taken.contains(&v.get()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PickError {
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// What the golden archive says about itself, read with `vzdump/extractconfig` (a read: the
/// same privileges the restore needs, and zero writes).
#[derive(Debug, Clone)]
pub struct GoldenInfo {
    pub mac: Option<String>,
    pub rootfs_bytes: Option<u64>,
    pub features: Option<String>,
    pub unprivileged: bool,
}

pub async fn golden_info(
    client: &PveClient,
    node: &str,
    volid: &str,
) -> Result<GoldenInfo, ApiError> {
    let text = client.vzdump_extractconfig(node, volid).await?;
    let conf = vzdump::parse_pct_conf(&text).map_err(|e| ApiError::Decode {
        message: format!("golden pct.conf: {e}"),
    })?;
    let get = |k: &str| {
        conf.entries
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let mac = get("net0")
        .and_then(|v| v.parse::<NetConfig>().ok())
        .and_then(|n| n.hwaddr)
        .map(|m| m.to_string());
    let rootfs_bytes = get("rootfs")
        .and_then(|v| pve_api::MountConfig::parse_rootfs(&v).ok())
        .and_then(|m| m.size);
    Ok(GoldenInfo {
        mac,
        rootfs_bytes,
        features: get("features"),
        unprivileged: get("unprivileged").as_deref() == Some("1"),
    })
}
