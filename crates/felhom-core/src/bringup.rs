//! The bring-up job (seed Phase 7.1): restore the golden into a customer guest with a fresh
//! identity, grow it, attach data, start it, and prove it is on the network with SSH host
//! keys of its own.
//!
//! | # | step | observe | act | undo |
//! |---|---|---|---|---|
//! | 1 | reserve | lease on the VMID held by this job | pick the VMID, take the lease | release the lease |
//! | 2 | restore | guest exists with this job's marker | `POST lxc` restore=1 with hostname, net0 (felhom's MAC), marker; wait | stop + destroy with purge, only with this job's marker |
//! | 3 | identity | MAC = chosen, ≠ golden, unique; hostname = spec | `PUT config` net0 + hostname with digest | – |
//! | 4 | rootfs | rootfs size ≥ spec | `PUT resize` to the absolute size; wait | – |
//! | 5 | mounts | an `mpN` per spec path, size ≥ spec | `PUT config mpN=<sid>:<GiB>,mp=<path>` | – |
//! | 6 | start | status running | `POST status/start`; wait | stop |
//! | 7 | linkup | eth0 has inet, its MAC = config, IP unique | poll with deadline | – |
//! | 8 | ssh | host key proven by a handshake, unlike every other guest's | poll with deadline | – |
//! | 9 | finish | tags + marker say provisioned | `PUT config` tags + description | – |
//!
//! What each identity field gets comes from [`crate::identity`], not from ifs scattered here.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pve_api::{ApiError, MacAddr, NetConfig, PveClient, Vmid};
use serde_json::{json, Value};

use crate::config::SshEndpoint;
use crate::identity::{HostnameAction, IdentityPolicy, KeyAction, MacAction};
use crate::job::{Facts, JobCx, Observed, Step, StepError};
use crate::journal::GuestRecord;
use crate::marker::{Marker, MarkerState};
use crate::spec::{GuestSpec, VmidChoice};

/// PVE's default MAC prefix (Proxmox OUI, `datacenter.cfg mac_prefix`, reference §3.3).
pub const MAC_PREFIX: [u8; 3] = [0xBC, 0x24, 0x11];
/// The tag every felhom guest carries.
pub const FELHOM_TAG: &str = "felhom";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BringupStep {
    Reserve,
    Restore,
    Identity,
    Rootfs,
    Mounts,
    Start,
    Linkup,
    Ssh,
    Finish,
}

pub const STEPS: [BringupStep; 9] = [
    BringupStep::Reserve,
    BringupStep::Restore,
    BringupStep::Identity,
    BringupStep::Rootfs,
    BringupStep::Mounts,
    BringupStep::Start,
    BringupStep::Linkup,
    BringupStep::Ssh,
    BringupStep::Finish,
];

fn spec(cx: &JobCx) -> Result<&GuestSpec, StepError> {
    cx.spec
        .as_ref()
        .ok_or_else(|| StepError::Refused("internal: a bring-up job without a spec".into()))
}

/// The guest's config, or None if there is no guest at that VMID.
async fn config_of(
    client: &PveClient,
    node: &str,
    vmid: Vmid,
) -> Result<Option<pve_api::LxcConfig>, StepError> {
    match client.lxc_config(node, vmid).await {
        Ok(c) => Ok(Some(c)),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The guest's config, refusing a guest that does not carry this job's marker: every step
/// after the restore acts only on a guest felhom provably made for this job (a resumed job
/// included — someone may have replaced the guest while felhom was down).
///
/// An observe's read is shared with the next observe and the act's first guard while
/// nothing is written in between ([`JobCx::cached_config`]).
async fn owned_config(cx: &JobCx, vmid: Vmid) -> Result<pve_api::LxcConfig, StepError> {
    let cfg = match cx.cached_config(vmid.get()) {
        Some(cfg) => cfg,
        None => {
            let cfg = config_of(&cx.client, &cx.node, vmid)
                .await?
                .ok_or_else(|| StepError::Refused(format!("guest {vmid} vanished")))?;
            cx.cache_config(vmid.get(), &cfg);
            cfg
        }
    };
    match marker_of(&cfg) {
        Some(m) if m.job == cx.job_id => Ok(cfg),
        Some(m) => Err(StepError::Refused(format!(
            "guest {vmid} now carries the marker of felhom job {}, not {}; refusing to touch it",
            m.job, cx.job_id
        ))),
        None => Err(StepError::Refused(format!(
            "guest {vmid} no longer carries felhom's ownership marker; refusing to touch it"
        ))),
    }
}

fn marker_of(cfg: &pve_api::LxcConfig) -> Option<Marker> {
    cfg.get_str("description").and_then(Marker::find)
}

fn net0_of(cfg: &pve_api::LxcConfig) -> Result<Option<NetConfig>, StepError> {
    match cfg.net(0) {
        None => Ok(None),
        Some(Ok(n)) => Ok(Some(n)),
        Some(Err(e)) => Err(StepError::Refused(format!(
            "guest net0 is not a valid network property string: {e}"
        ))),
    }
}

/// MACs in use on the node, other than `except`'s, plus the golden's (F1: every guest
/// restored without a reset would share the golden's MAC).
async fn taken_macs(cx: &JobCx, except: Option<Vmid>) -> Result<HashSet<String>, StepError> {
    let mut taken = HashSet::new();
    // Under the provision policy the golden's MAC is never a guest's (F1); a DR restore
    // keeps the archived MAC on purpose.
    let fresh = spec(cx)
        .is_ok_and(|s| IdentityPolicy::named(s.identity).mac() == MacAction::FreshAtRestore);
    if let (true, Some(g)) = (fresh, cx.facts().golden_mac) {
        taken.insert(g.to_ascii_uppercase());
    }
    let recorded: std::collections::HashMap<u32, GuestRecord> = cx
        .journal
        .live_guests()?
        .into_iter()
        .map(|g| (g.vmid, g))
        .collect();
    for guest in cx.client.lxc_list(&cx.node).await? {
        let vmid = guest.vmid;
        if Some(vmid) == except.map(|v| v.get()) {
            continue;
        }
        if let Some(mac) = recorded.get(&vmid).and_then(|g| g.mac.clone()) {
            taken.insert(mac.to_ascii_uppercase());
            continue;
        }
        let Ok(v) = Vmid::try_from(vmid) else {
            continue;
        };
        if let Some(cfg) = config_of(&cx.client, &cx.node, v).await? {
            for n in 0..32 {
                if let Some(Ok(net)) = cfg.net(n) {
                    if let Some(mac) = net.hwaddr {
                        taken.insert(mac.to_string().to_ascii_uppercase());
                    }
                }
            }
        }
    }
    Ok(taken)
}

fn fresh_mac(taken: &HashSet<String>) -> String {
    loop {
        let mac = MacAddr::random(&MAC_PREFIX)
            .to_string()
            .to_ascii_uppercase();
        if !taken.contains(&mac) {
            return mac;
        }
    }
}

fn other_live_guests(cx: &JobCx, vmid: Vmid) -> Result<Vec<GuestRecord>, StepError> {
    Ok(cx
        .journal
        .live_guests()?
        .into_iter()
        .filter(|g| g.vmid != vmid.get())
        .collect())
}

fn record_guest(cx: &JobCx, state: &str) -> Result<(), StepError> {
    let s = spec(cx)?;
    let f = cx.facts();
    let Some(vmid) = f.vmid else { return Ok(()) };
    cx.journal.upsert_guest(&GuestRecord {
        vmid,
        node: cx.node.clone(),
        job_id: cx.job_id.clone(),
        hostname: s.hostname.to_string(),
        mac: f.mac,
        ip: f.ip,
        ssh_fingerprint: f.ssh_fingerprint,
        spec: serde_json::to_value(s).unwrap_or(Value::Null),
        state: state.into(),
    })?;
    Ok(())
}

/// Where to reach the guest's sshd: `<ip>:22` on a real host, or the simulator's loopback
/// forward (guest IPs from the simulator are data, never addresses to contact).
async fn ssh_endpoint(
    cx: &JobCx,
    vmid: Vmid,
    ip: &str,
) -> Result<Option<(String, u16)>, StepError> {
    match cx.config.ssh_endpoint {
        SshEndpoint::Direct => Ok(Some((ip.to_string(), 22))),
        SshEndpoint::Sim => match cx
            .client
            .get_outside_api::<Value>(&format!("/felhom-sim/guests/{vmid}/ssh"))
            .await
        {
            Ok(v) => {
                let host = v.get("host").and_then(Value::as_str).unwrap_or("127.0.0.1");
                if !matches!(host, "127.0.0.1" | "::1" | "localhost") {
                    return Err(StepError::Refused(format!("simulator offered a non-loopback SSH endpoint {host}; refusing to contact it")));
                }
                let port = v
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok());
                Ok(port.map(|p| (host.to_string(), p)))
            }
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        },
    }
}

impl Step for BringupStep {
    fn name(&self) -> &'static str {
        match self {
            BringupStep::Reserve => "reserve",
            BringupStep::Restore => "restore",
            BringupStep::Identity => "identity",
            BringupStep::Rootfs => "rootfs",
            BringupStep::Mounts => "mounts",
            BringupStep::Start => "start",
            BringupStep::Linkup => "linkup",
            BringupStep::Ssh => "ssh",
            BringupStep::Finish => "finish",
        }
    }

    fn has_undo(&self) -> bool {
        matches!(
            self,
            BringupStep::Reserve | BringupStep::Restore | BringupStep::Start
        )
    }

    async fn observe(&self, cx: &JobCx) -> Result<Observed, StepError> {
        match self {
            BringupStep::Reserve => {
                let Some(vmid) = cx.facts().vmid else {
                    return Ok(Observed::NotDone);
                };
                let vmid = Vmid::try_from(vmid).map_err(|e| StepError::Refused(e.to_string()))?;
                // Re-taking our own lease is how a resumed job proves no one else has it.
                cx.journal
                    .acquire_lease(vmid, &cx.job_id)
                    .map_err(|e| StepError::Refused(e.to_string()))?;
                Ok(Observed::Done(json!({ "vmid": vmid.get() })))
            }
            BringupStep::Restore => observe_restore(cx).await,
            BringupStep::Identity => {
                let s = spec(cx)?;
                let vmid = cx.vmid()?;
                let cfg = owned_config(cx, vmid).await?;
                let f = cx.facts();
                let mac = net0_of(&cfg)?
                    .and_then(|n| n.hwaddr)
                    .map(|m| m.to_string().to_ascii_uppercase());
                let policy = IdentityPolicy::named(s.identity);
                let hostname_ok = match policy.hostname() {
                    HostnameAction::FromSpec => {
                        cfg.get_str("hostname") == Some(s.hostname.as_str())
                    }
                    HostnameAction::KeepArchived => true,
                };
                let is_golden = |m: &str| {
                    f.golden_mac
                        .as_deref()
                        .is_some_and(|g| g.eq_ignore_ascii_case(m))
                };
                let mac_ok = match (&mac, &f.mac, policy.mac()) {
                    (Some(have), Some(want), MacAction::FreshAtRestore) => {
                        have.eq_ignore_ascii_case(want) && !is_golden(have)
                    }
                    (Some(have), _, MacAction::KeepArchived) => is_golden(have),
                    _ => false,
                };
                if hostname_ok && mac_ok {
                    let taken = taken_macs(cx, Some(vmid)).await?;
                    if !taken.contains(mac.as_deref().unwrap_or_default()) {
                        return Ok(Observed::Done(
                            json!({ "mac": mac, "hostname": s.hostname }),
                        ));
                    }
                }
                Ok(Observed::NotDone)
            }
            BringupStep::Rootfs => {
                let s = spec(cx)?;
                let vmid = cx.vmid()?;
                let cfg = owned_config(cx, vmid).await?;
                let size = rootfs_size(&cfg)?;
                if size >= s.rootfs_size.bytes() {
                    Ok(Observed::Done(json!({ "rootfs_bytes": size })))
                } else {
                    Ok(Observed::NotDone)
                }
            }
            BringupStep::Mounts => {
                let s = spec(cx)?;
                let vmid = cx.vmid()?;
                let cfg = owned_config(cx, vmid).await?;
                let present = mounts_of(&cfg);
                let mut seen = Vec::new();
                for m in &s.mounts {
                    match present.iter().find(|(_, p, _)| p == m.path.as_str()) {
                        Some((key, _, size)) if *size >= m.size.bytes() => {
                            seen.push(json!({ "key": key, "path": m.path, "bytes": size }))
                        }
                        _ => return Ok(Observed::NotDone),
                    }
                }
                Ok(Observed::Done(Value::Array(seen)))
            }
            BringupStep::Start => {
                let vmid = cx.vmid()?;
                let st = cx.client.lxc_status(&cx.node, vmid).await?;
                if st.status == "running" {
                    Ok(Observed::Done(json!({ "status": st.status })))
                } else {
                    Ok(Observed::NotDone)
                }
            }
            BringupStep::Linkup => observe_linkup(cx).await,
            BringupStep::Ssh => observe_ssh(cx).await,
            BringupStep::Finish => {
                let vmid = cx.vmid()?;
                let cfg = owned_config(cx, vmid).await?;
                let tagged = cfg
                    .get_str("tags")
                    .is_some_and(|t| t.split(';').any(|t| t == FELHOM_TAG));
                let provisioned = marker_of(&cfg)
                    .is_some_and(|m| m.job == cx.job_id && m.state == MarkerState::Provisioned);
                if tagged && provisioned {
                    record_guest(cx, "active")?;
                    cx.journal.release_lease(vmid, &cx.job_id)?;
                    Ok(Observed::Done(json!({ "tags": cfg.get_str("tags") })))
                } else {
                    Ok(Observed::NotDone)
                }
            }
        }
    }

    async fn intent(&self, cx: &JobCx) -> Result<Value, StepError> {
        let s = spec(cx)?;
        Ok(match self {
            BringupStep::Reserve => json!({ "vmid": s.vmid, "range": cx.config.vmid_range }),
            BringupStep::Restore => {
                // The MAC is chosen here and journaled with the intent, before the restore is
                // dispatched, so a resumed job restores with the same MAC or recognises it.
                if cx.facts().mac.is_none() {
                    let mac = match IdentityPolicy::named(s.identity).mac() {
                        MacAction::FreshAtRestore => {
                            let taken = taken_macs(
                                cx,
                                cx.facts().vmid.and_then(|v| Vmid::try_from(v).ok()),
                            )
                            .await?;
                            fresh_mac(&taken)
                        }
                        MacAction::KeepArchived => cx.facts().golden_mac.ok_or_else(|| {
                            StepError::Refused(
                                "DR restore: the archive's net0 has no MAC to keep".into(),
                            )
                        })?,
                    };
                    cx.update_facts(|f| f.mac = Some(mac));
                }
                record_guest(cx, "provisioning")?;
                json!({ "golden": s.golden, "storage": s.storage, "hostname": s.hostname, "mac": cx.facts().mac })
            }
            BringupStep::Identity => json!({ "hostname": s.hostname, "mac": cx.facts().mac }),
            BringupStep::Rootfs => json!({ "size": s.rootfs_size.resize_arg() }),
            BringupStep::Mounts => serde_json::to_value(&s.mounts).unwrap_or(Value::Null),
            BringupStep::Start | BringupStep::Linkup | BringupStep::Ssh => json!({}),
            BringupStep::Finish => json!({ "tags": tags_for(s) }),
        })
    }

    async fn act(&self, cx: &JobCx) -> Result<(), StepError> {
        match self {
            BringupStep::Reserve => act_reserve(cx).await,
            BringupStep::Restore => act_restore(cx).await,
            BringupStep::Identity => act_identity(cx).await,
            BringupStep::Rootfs => {
                let s = spec(cx)?;
                let vmid = cx.vmid()?;
                // Absolute size, never `+N`: a retried grow cannot grow twice.
                match cx
                    .client
                    .lxc_resize(&cx.node, vmid, "rootfs", &s.rootfs_size.resize_arg())
                    .await
                {
                    Ok(upid) => cx.wait(self.name(), &upid).await,
                    Err(ApiError::AlreadyAtSize { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            BringupStep::Mounts => act_mounts(cx).await,
            BringupStep::Start => {
                let vmid = cx.vmid()?;
                match cx.client.lxc_start(&cx.node, vmid).await {
                    Ok(upid) => cx.wait(self.name(), &upid).await,
                    Err(ApiError::AlreadyRunning { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            BringupStep::Linkup => {
                poll_until(cx, *self, cx.config.linkup_timeout, "no DHCP lease on eth0").await
            }
            BringupStep::Ssh => {
                poll_until(
                    cx,
                    *self,
                    cx.config.ssh_timeout,
                    "no SSH host key served (is the golden's first-boot key unit missing? seed F3)",
                )
                .await
            }
            BringupStep::Finish => {
                let s = spec(cx)?;
                let vmid = cx.vmid()?;
                let cfg = owned_config(cx, vmid).await?;
                let marker = Marker {
                    job: cx.job_id.clone(),
                    customer: s.customer.to_string(),
                    state: MarkerState::Provisioned,
                };
                let params = vec![
                    ("tags".to_string(), tags_for(s).join(";")),
                    ("description".to_string(), marker.to_string()),
                ];
                cx.client
                    .lxc_update_config(&cx.node, vmid, &params, cfg.digest.as_deref())
                    .await?;
                Ok(())
            }
        }
    }

    async fn undo(&self, cx: &JobCx) -> Result<(), StepError> {
        match self {
            BringupStep::Reserve => {
                if let Some(v) = cx.facts().vmid.and_then(|v| Vmid::try_from(v).ok()) {
                    if let Some(g) = cx.journal.guest(v.get())? {
                        if g.job_id == cx.job_id && g.state == "provisioning" {
                            cx.journal.forget_guest(v.get(), &cx.job_id)?;
                        }
                    }
                    cx.journal.release_lease(v, &cx.job_id)?;
                }
                Ok(())
            }
            BringupStep::Restore => undo_restore(cx).await,
            BringupStep::Start => {
                let vmid = cx.vmid()?;
                if config_of(&cx.client, &cx.node, vmid).await?.is_none() {
                    return Ok(());
                }
                owned_config(cx, vmid).await?;
                stop_if_running(cx, vmid, "start").await
            }
            _ => Ok(()),
        }
    }
}

fn tags_for(s: &GuestSpec) -> Vec<String> {
    let mut tags: Vec<String> = vec![FELHOM_TAG.into(), format!("customer-{}", s.customer)];
    tags.extend(s.tags.iter().map(|t| t.to_string()));
    tags.sort();
    tags.dedup();
    tags
}

fn rootfs_size(cfg: &pve_api::LxcConfig) -> Result<u64, StepError> {
    match cfg.mount("rootfs") {
        Some(Ok(m)) => Ok(m.size.unwrap_or(0)),
        Some(Err(e)) => Err(StepError::Refused(format!(
            "guest rootfs is not a valid mount property string: {e}"
        ))),
        None => Err(StepError::Refused("guest has no rootfs".into())),
    }
}

/// `(key, mount path, size in bytes)` of every `mpN`.
fn mounts_of(cfg: &pve_api::LxcConfig) -> Vec<(String, String, u64)> {
    (0..256)
        .filter_map(|n| {
            let key = format!("mp{n}");
            match cfg.mount(&key) {
                Some(Ok(m)) => Some((key, m.mp.clone().unwrap_or_default(), m.size.unwrap_or(0))),
                _ => None,
            }
        })
        .collect()
}

async fn act_reserve(cx: &JobCx) -> Result<(), StepError> {
    let s = spec(cx)?;
    let range = cx.config.vmid_range;
    let candidates: Vec<Vmid> = match s.vmid {
        VmidChoice::Fixed(v) => vec![v],
        VmidChoice::NextFree => {
            let leased: HashSet<u32> = cx.journal.leased_vmids()?.into_iter().collect();
            let used: HashSet<u32> = cx
                .client
                .lxc_list(&cx.node)
                .await?
                .into_iter()
                .map(|g| g.vmid)
                .collect();
            range
                .iter()
                .filter(|v| !leased.contains(&v.get()) && !used.contains(&v.get()))
                .take(64)
                .collect()
        }
    };
    for vmid in candidates {
        if !range.contains(vmid) {
            return Err(StepError::Refused(format!(
                "VMID {vmid} is outside felhom's range {range}"
            )));
        }
        match cx.journal.acquire_lease(vmid, &cx.job_id) {
            Ok(()) => {}
            Err(e @ crate::journal::JournalError::Held { .. }) => {
                if matches!(s.vmid, VmidChoice::Fixed(_)) {
                    return Err(StepError::Refused(e.to_string()));
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        // VMIDs are cluster-wide: ask the cluster whether it is free (not a reservation —
        // the lease is felhom's; the restore's placeholder config is PVE's).
        match cx.client.next_id(Some(vmid)).await {
            Ok(_) => {}
            Err(ApiError::Param { .. }) if matches!(s.vmid, VmidChoice::NextFree) => {
                cx.journal.release_lease(vmid, &cx.job_id)?;
                continue;
            }
            Err(ApiError::Param { .. }) => {
                // A guest already sits at the requested VMID. If it carries this job's
                // marker the restore step will recognise it; otherwise it is not ours.
                let cfg = config_of(&cx.client, &cx.node, vmid).await?;
                let ours = cfg
                    .as_ref()
                    .and_then(marker_of)
                    .is_some_and(|m| m.job == cx.job_id);
                if !ours {
                    cx.journal.release_lease(vmid, &cx.job_id)?;
                    return Err(StepError::Refused(format!("VMID {vmid} already holds a guest felhom did not create for this job; refusing to touch it")));
                }
            }
            Err(e) => {
                cx.journal.release_lease(vmid, &cx.job_id)?;
                return Err(e.into());
            }
        }
        cx.journal.set_job_vmid(&cx.job_id, vmid)?;
        cx.note(
            "reserve",
            Facts {
                vmid: Some(vmid.get()),
                ..Facts::default()
            },
        )?;
        return Ok(());
    }
    Err(StepError::Refused(format!(
        "no free VMID in felhom's range {range}"
    )))
}

async fn observe_restore(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    let deadline = Instant::now() + cx.config.task_timeout;
    loop {
        let Some(cfg) = config_of(&cx.client, &cx.node, vmid).await? else {
            return Ok(Observed::NotDone);
        };
        match (cfg.get_str("lock"), marker_of(&cfg)) {
            (None, Some(m)) if m.job == cx.job_id => {
                let mac = net0_of(&cfg)?.and_then(|n| n.hwaddr).map(|m| m.to_string());
                // Ours: the identity step's observe may start from this read.
                cx.cache_config(vmid.get(), &cfg);
                return Ok(Observed::Done(json!({ "vmid": vmid.get(), "mac": mac })));
            }
            (Some("create"), _) if restore_dispatched(cx)? => {
                // Our restore is still running (or a crash lost its UPID): wait for the
                // placeholder's `create` lock to go, then look again.
                if let Some(upid) = cx
                    .facts()
                    .upid
                    .and_then(|u| u.parse::<pve_api::Upid>().ok())
                    .filter(|u| u.task_type == "vzrestore")
                {
                    let _ = cx.client.wait_task(&upid, &cx.wait_options()).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if Instant::now() > deadline {
                    return Err(StepError::Refused(format!(
                        "guest {vmid} stayed locked (create) past the task timeout"
                    )));
                }
            }
            (lock, m) => {
                let who = m
                    .map(|m| format!("felhom job {}", m.job))
                    .unwrap_or_else(|| "no felhom marker".into());
                let lock = lock.map(|l| format!(", locked ({l})")).unwrap_or_default();
                return Err(StepError::Refused(format!("VMID {vmid} holds a guest this job did not create ({who}{lock}); refusing to touch it")));
            }
        }
    }
}

fn restore_dispatched(cx: &JobCx) -> Result<bool, StepError> {
    Ok(cx
        .journal
        .events(&cx.job_id)?
        .iter()
        .any(|e| e.step == "restore" && e.phase == crate::journal::Phase::Intent))
}

async fn act_restore(cx: &JobCx) -> Result<(), StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    let mac = cx
        .facts()
        .mac
        .ok_or_else(|| StepError::Refused("internal: no MAC chosen before restore".into()))?;
    let net0 = NetConfig::dhcp("eth0", s.bridge.as_str(), &mac)
        .map_err(|e| StepError::Refused(format!("net0: {e}")))?;
    let marker = Marker {
        job: cx.job_id.clone(),
        customer: s.customer.to_string(),
        state: MarkerState::Provisioning,
    };
    // Identity is set at restore (F1, F2): hostname and a net0 carrying felhom's MAC, so the
    // guest never exists with the golden's MAC. `storage` is always passed (PVE defaults to
    // `local`, which rarely allows container directories); `rootfs` is not, so archived
    // mount points are kept (reference §2.3 step 5).
    let mut params = vec![
        ("vmid".to_string(), vmid.to_string()),
        ("ostemplate".to_string(), s.golden.to_string()),
        ("restore".to_string(), "1".to_string()),
        ("storage".to_string(), s.storage.to_string()),
        ("net0".to_string(), net0.to_string()),
        ("description".to_string(), marker.to_string()),
    ];
    if IdentityPolicy::named(s.identity).hostname() == HostnameAction::FromSpec {
        params.push(("hostname".to_string(), s.hostname.to_string()));
    }
    if let Some(pool) = &s.pool {
        params.push(("pool".to_string(), pool.to_string()));
    }
    let upid = cx.client.lxc_create(&cx.node, &params).await?;
    cx.wait("restore", &upid).await
}

async fn undo_restore(cx: &JobCx) -> Result<(), StepError> {
    let vmid = cx.vmid()?;
    loop {
        let Some(cfg) = config_of(&cx.client, &cx.node, vmid).await? else {
            return Ok(());
        };
        match (cfg.get_str("lock"), marker_of(&cfg)) {
            (Some("create"), _) => {
                // Still restoring: a failed restore removes itself; a finished one carries our
                // marker. Either way, wait for the lock to go before deciding.
                return Err(StepError::NotYet(format!(
                    "guest {vmid} is still being restored (lock: create)"
                )));
            }
            (Some("destroyed"), Some(m)) if m.job == cx.job_id => {
                return Err(StepError::NotYet(format!(
                    "guest {vmid} is being destroyed"
                )));
            }
            (_, Some(m)) if m.job == cx.job_id => {
                stop_if_running(cx, vmid, "restore").await?;
                let upid = cx.client.lxc_delete(&cx.node, vmid, true, true).await?;
                cx.wait("restore", &upid).await?;
            }
            (_, m) => {
                let who = m
                    .map(|m| format!("felhom job {}", m.job))
                    .unwrap_or_else(|| "no felhom marker".into());
                return Err(StepError::Refused(format!(
                    "refusing to destroy guest {vmid}: it does not carry this job's ownership marker ({who}); a person must look at it"
                )));
            }
        }
    }
}

async fn stop_if_running(cx: &JobCx, vmid: Vmid, step: &str) -> Result<(), StepError> {
    let st = cx.client.lxc_status(&cx.node, vmid).await?;
    if st.status != "running" {
        return Ok(());
    }
    match cx.client.lxc_stop(&cx.node, vmid).await {
        Ok(upid) => cx.wait(step, &upid).await,
        Err(ApiError::NotRunning { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn act_identity(cx: &JobCx) -> Result<(), StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    let cfg = owned_config(cx, vmid).await?;
    let taken = taken_macs(cx, Some(vmid)).await?;
    let policy = IdentityPolicy::named(s.identity);
    let mut mac = cx.facts().mac.unwrap_or_default();
    if policy.mac() == MacAction::KeepArchived && taken.contains(&mac.to_ascii_uppercase()) {
        return Err(StepError::Refused(format!(
            "DR restore: the archived MAC {mac} is in use by another guest on {}; stop or tear down the original first",
            cx.node
        )));
    }
    if mac.is_empty() || taken.contains(&mac.to_ascii_uppercase()) {
        mac = fresh_mac(&taken);
        cx.note(
            "identity",
            Facts {
                mac: Some(mac.clone()),
                ..Facts::default()
            },
        )?;
    }
    // Keep every other net0 key; only the MAC changes (and the MAC is always given: a net0
    // without hwaddr would mint yet another one, reference §3.3).
    let net0 = match net0_of(&cfg)? {
        Some(n) => n
            .with_hwaddr(&mac)
            .map_err(|e| StepError::Refused(format!("net0: {e}")))?,
        None => NetConfig::dhcp("eth0", s.bridge.as_str(), &mac)
            .map_err(|e| StepError::Refused(format!("net0: {e}")))?,
    };
    let mut params = vec![("net0".to_string(), net0.to_string())];
    if policy.hostname() == HostnameAction::FromSpec {
        params.push(("hostname".to_string(), s.hostname.to_string()));
    }
    match cx
        .client
        .lxc_update_config(&cx.node, vmid, &params, cfg.digest.as_deref())
        .await
    {
        Ok(()) => Ok(()),
        // Someone changed the config between our read and write: observe again.
        Err(ApiError::ConfigModified { message }) => Err(StepError::NotYet(message)),
        Err(e) => Err(e.into()),
    }
}

async fn act_mounts(cx: &JobCx) -> Result<(), StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    for m in &s.mounts {
        let cfg = owned_config(cx, vmid).await?;
        let present = mounts_of(&cfg);
        if let Some((key, _, size)) = present.iter().find(|(_, p, _)| p == m.path.as_str()) {
            if *size < m.size.bytes() {
                let upid = cx
                    .client
                    .lxc_resize(&cx.node, vmid, key, &m.size.resize_arg())
                    .await?;
                cx.wait("mounts", &upid).await?;
            }
            continue;
        }
        let used: HashSet<String> = present
            .into_iter()
            .map(|(k, _, _)| k)
            .chain(
                (0..256)
                    .map(|n| format!("unused{n}"))
                    .filter(|k| cfg.get_str(k).is_some()),
            )
            .collect();
        let key = (0..256)
            .map(|n| format!("mp{n}"))
            .find(|k| !used.contains(k))
            .ok_or_else(|| StepError::Refused("no free mpN slot".into()))?;
        let value = pve_api::MountConfig::new_volume(
            &format!("{}:{}", m.storage, m.size.gib_string()),
            m.path.as_str(),
        )
        .map_err(|e| StepError::Refused(format!("mount {}: {e}", m.path)))?;
        cx.client
            .lxc_update_config(
                &cx.node,
                vmid,
                &[(key, value.to_string())],
                cfg.digest.as_deref(),
            )
            .await
            .map_err(|e| match e {
                ApiError::ConfigModified { message } => StepError::NotYet(message),
                e => e.into(),
            })?;
    }
    Ok(())
}

async fn observe_linkup(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    let want = cx.facts().mac.unwrap_or_default();
    let Some(ifaces) = cx.client.lxc_interfaces(&cx.node, vmid).await? else {
        return Ok(Observed::NotDone);
    };
    let Some(eth0) = ifaces.iter().find(|i| i.name == "eth0") else {
        return Ok(Observed::NotDone);
    };
    // MACs come back lower-case from iproute2 (reference §7): compare case-insensitively.
    if !eth0
        .hwaddr
        .as_deref()
        .is_some_and(|h| h.eq_ignore_ascii_case(&want))
    {
        return Ok(Observed::NotDone);
    }
    let Some(ip) = eth0
        .inet
        .as_deref()
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
    else {
        return Ok(Observed::NotDone);
    };
    if let Some(other) = other_live_guests(cx, vmid)?
        .into_iter()
        .find(|g| g.ip.as_deref() == Some(ip.as_str()))
    {
        return Err(StepError::Refused(format!(
            "guest {vmid} got IP {ip}, which guest {} already has: DHCP identity is shared (DUID or client-id from the golden?)",
            other.vmid
        )));
    }
    cx.update_facts(|f| f.ip = Some(ip.clone()));
    Ok(Observed::Done(json!({ "ip": ip, "mac": eth0.hwaddr })))
}

async fn observe_ssh(cx: &JobCx) -> Result<Observed, StepError> {
    let vmid = cx.vmid()?;
    let Some(ip) = cx.facts().ip else {
        return Ok(Observed::NotDone);
    };
    let Some((host, port)) = ssh_endpoint(cx, vmid, &ip).await? else {
        return Ok(Observed::NotDone);
    };
    let fp = match crate::ssh_probe::host_key_fingerprint(&host, port, Duration::from_secs(5)).await
    {
        Ok(fp) => fp,
        Err(e) => {
            tracing::debug!(%vmid, error = %e, "SSH host key not available yet");
            return Ok(Observed::NotDone);
        }
    };
    let s = spec(cx)?;
    if IdentityPolicy::named(s.identity).ssh_host_keys() == KeyAction::RequireSameAsRecorded {
        if let Some(recorded) = cx
            .journal
            .recorded_fingerprint(s.hostname.as_str(), vmid.get())?
        {
            if recorded != fp {
                return Err(StepError::Refused(format!(
                    "DR restore of {}: guest {vmid} presents SSH host key {fp}, but felhom recorded {recorded}; clients would see a changed host key",
                    s.hostname
                )));
            }
        }
    }
    if let Some(other) = other_live_guests(cx, vmid)?
        .into_iter()
        .find(|g| g.ssh_fingerprint.as_deref() == Some(fp.as_str()))
    {
        return Err(StepError::Refused(format!(
            "guest {vmid} presents SSH host key {fp}, the same as guest {}: the golden carries baked host keys (seed F3); rebuild it with `felhom golden recipe` and check it with `felhom golden inspect`",
            other.vmid
        )));
    }
    cx.update_facts(|f| f.ssh_fingerprint = Some(fp.clone()));
    record_guest(cx, "provisioning")?;
    Ok(Observed::Done(json!({ "fingerprint": fp })))
}

/// The act of a "wait for the guest" step: observe until done or the deadline. Polled like
/// a PVE task (`WaitOptions::next_pause_hinted`): once this host's lease or key time is
/// known, one look at its start, a look every 50 ms to its end, then a short back-off.
async fn poll_until(
    cx: &JobCx,
    step: BringupStep,
    timeout: Duration,
    what: &str,
) -> Result<(), StepError> {
    // The engine observed "not yet" just before this act: the first look waits a little.
    let opts = pve_api::WaitOptions {
        first_poll: Duration::from_millis(50),
        min_interval: Duration::from_millis(50),
        fast_polls: 0,
        max_interval: Duration::from_millis(250),
        deadline: timeout,
        ..pve_api::WaitOptions::default()
    };
    let hint = cx.waits.expected(step.name());
    let started = Instant::now();
    let mut not_yet_at = Duration::ZERO;
    for n in 0.. {
        let Some(pause) = opts.next_pause_hinted(n, started.elapsed(), hint) else {
            break;
        };
        tokio::time::sleep(pause).await;
        let looked = started.elapsed();
        if let Observed::Done(_) = step.observe(cx).await? {
            cx.waits.record(
                step.name(),
                pve_api::durations::Bracket {
                    lo: not_yet_at,
                    hi: started.elapsed(),
                },
            );
            return Ok(());
        }
        not_yet_at = looked;
    }
    Err(StepError::Refused(format!(
        "{what} within {}s",
        timeout.as_secs()
    )))
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
