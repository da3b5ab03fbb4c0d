//! The bring-up job (seed Phase 7.1): restore the golden into a customer guest with a fresh
//! identity, grow it, attach data, start it, and prove it is on the network with SSH host
//! keys of its own.
//!
//! | # | step | module | observe | act | undo |
//! |---|---|---|---|---|---|
//! | 1 | reserve | [`reserve`] | lease on the VMID held by this job | pick the VMID, take the lease | release the lease |
//! | 2 | restore | [`restore`] | guest exists with this job's marker | `POST lxc` restore=1 with hostname, the spec's net0 (felhom's MAC) and settings, marker, and (strategy `restore`, the default) `rootfs=<sid>:<GiB>` and each `mpN=<sid>:<GiB>,mp=<path>` — one request; wait | stop + destroy with purge, only with this job's marker |
//! | 3 | identity | [`identity`] | MAC = chosen, ≠ golden, unique; hostname = spec; net0 bridge, tag, ip, gw, ip6, gw6, firewall = spec | `PUT config` net0 + hostname with digest | – |
//! | 4 | settings | [`settings`] | cores, memory, swap, onboot, nameserver, searchdomain = spec (those it sets) | `PUT config` of the differing keys with digest | – |
//! | 5 | rootfs | [`rootfs`] | rootfs size ≥ spec (after a sized restore: done) | `PUT resize` to the absolute size; wait | – |
//! | 6 | mounts | [`mounts`] | an `mpN` per spec path, size ≥ spec (after a sized restore: done) | `PUT config mpN=<sid>:<GiB>,mp=<path>` | – |
//! | 7 | start | [`start`] | status running (guest ours) | `POST status/start`; wait | stop |
//! | 8 | linkup | [`linkup`] | eth0 has inet (the spec's static address, or a lease), its MAC = config, IP unique | poll with deadline | – |
//! | 9 | ssh | [`ssh`] | host key proven by a handshake, unlike every other guest's | poll with deadline | – |
//! | 10 | finish | [`finish`] | tags + marker say provisioned | `PUT config` tags + description | – |
//!
//! With `strategy = "linked-clone"` step 2 clones felhom's published template instead
//! (`POST …/{template}/clone` with hostname and marker, the template chosen and journaled
//! with the intent; `crate::publish`), step 3 replaces the clone's fresh MAC by the
//! journaled one, and steps 5 and 6 grow the rootfs (when the template is smaller) and attach
//! the mounts.
//!
//! With `strategy = "restore"` (the default) steps 5 and 6 find the sizes made by the restore
//! and only observe; they act for `restore-resize` (the spike's sequence, kept to compare) and
//! to repair a guest that drifted or was made the old way. Task waits go through the node's
//! shared task watch (`PveClient::watch_task`).
//!
//! Each step's module holds everything about that step: `observe`, `intent`, `act`, `undo`,
//! the line `plan` prints for it, and the drift check `status` runs for it. This file keeps
//! the step list and what the steps share (the ownership guard, the guest record). What each
//! identity field gets comes from [`crate::identity`]; what PVE says about a guest is read
//! through [`crate::guest`].

pub mod finish;
pub mod identity;
pub mod linkup;
pub mod mounts;
pub mod reserve;
pub mod restore;
pub mod rootfs;
pub mod settings;
pub mod ssh;
pub mod start;

use std::time::{Duration, Instant};

use pve_api::{LxcConfig, Vmid};
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::guest::{self, GoldenInfo, Ownership};
use crate::job::{JobCx, Observed, Step, StepError};
use crate::journal::GuestRecord;
use crate::spec::GuestSpec;

pub use crate::guest::golden_info;
pub use finish::FELHOM_TAG;
pub use identity::MAC_PREFIX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BringupStep {
    Reserve,
    Restore,
    Identity,
    Settings,
    Rootfs,
    Mounts,
    Start,
    Linkup,
    Ssh,
    Finish,
}

pub const STEPS: [BringupStep; 10] = [
    BringupStep::Reserve,
    BringupStep::Restore,
    BringupStep::Identity,
    BringupStep::Settings,
    BringupStep::Rootfs,
    BringupStep::Mounts,
    BringupStep::Start,
    BringupStep::Linkup,
    BringupStep::Ssh,
    BringupStep::Finish,
];

/// What `plan` knows about one guest: the spec, the VMID it will get, the golden's facts.
pub struct PlanCx<'a> {
    pub spec: &'a GuestSpec,
    pub vmid: Vmid,
    pub golden: &'a GoldenInfo,
    pub config: &'a Config,
    /// Strategy `linked-clone`: the published template this guest would be cloned from.
    pub template: Option<u32>,
}

/// What `status` read of one live guest, once, for every step's drift check.
pub struct GuestView<'a> {
    pub spec: Option<&'a GuestSpec>,
    pub record: &'a GuestRecord,
    pub cfg: &'a LxcConfig,
    /// `running`, `stopped`…
    pub status: &'a str,
    /// eth0's address, read only when the guest runs.
    pub ip: Option<&'a str>,
    /// The host key a handshake proved (`None`: unreachable), read only when it runs.
    pub ssh_fingerprint: Option<&'a str>,
}

/// One field where the guest differs from its spec or its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub field: &'static str,
    pub expected: String,
    pub actual: String,
}

impl Drift {
    pub fn new(
        field: &'static str,
        expected: impl Into<String>,
        actual: impl Into<String>,
    ) -> Self {
        Drift {
            field,
            expected: expected.into(),
            actual: actual.into(),
        }
    }
}

impl BringupStep {
    /// What `plan` says this step will do (one line per action; none for a no-op).
    pub fn plan(&self, p: &PlanCx) -> Vec<String> {
        match self {
            BringupStep::Reserve => reserve::plan(p),
            BringupStep::Restore => restore::plan(p),
            BringupStep::Identity => identity::plan(p),
            BringupStep::Settings => settings::plan(p),
            BringupStep::Rootfs => rootfs::plan(p),
            BringupStep::Mounts => mounts::plan(p),
            BringupStep::Start => start::plan(p),
            BringupStep::Linkup => linkup::plan(p),
            BringupStep::Ssh => ssh::plan(p),
            BringupStep::Finish => finish::plan(p),
        }
    }

    /// Where a live guest no longer is what this step made it.
    pub fn drift(&self, v: &GuestView) -> Vec<Drift> {
        match self {
            BringupStep::Reserve => Vec::new(),
            BringupStep::Restore => restore::drift(v),
            BringupStep::Identity => identity::drift(v),
            BringupStep::Settings => settings::drift(v),
            BringupStep::Rootfs => rootfs::drift(v),
            BringupStep::Mounts => mounts::drift(v),
            BringupStep::Start => start::drift(v),
            BringupStep::Linkup => linkup::drift(v),
            BringupStep::Ssh => ssh::drift(v),
            BringupStep::Finish => finish::drift(v),
        }
    }
}

impl Step for BringupStep {
    fn name(&self) -> &'static str {
        match self {
            BringupStep::Reserve => "reserve",
            BringupStep::Restore => "restore",
            BringupStep::Identity => "identity",
            BringupStep::Settings => "settings",
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

    /// A start and the two waits write no config: the read before them stays good after.
    fn keeps_config(&self) -> bool {
        matches!(
            self,
            BringupStep::Start | BringupStep::Linkup | BringupStep::Ssh
        )
    }

    async fn observe(&self, cx: &JobCx) -> Result<Observed, StepError> {
        match self {
            BringupStep::Reserve => reserve::observe(cx).await,
            BringupStep::Restore => restore::observe(cx).await,
            BringupStep::Identity => identity::observe(cx).await,
            BringupStep::Settings => settings::observe(cx).await,
            BringupStep::Rootfs => rootfs::observe(cx).await,
            BringupStep::Mounts => mounts::observe(cx).await,
            BringupStep::Start => start::observe(cx).await,
            BringupStep::Linkup => linkup::observe(cx).await,
            BringupStep::Ssh => ssh::observe(cx).await,
            BringupStep::Finish => finish::observe(cx).await,
        }
    }

    async fn intent(&self, cx: &JobCx) -> Result<Value, StepError> {
        match self {
            BringupStep::Reserve => reserve::intent(cx),
            BringupStep::Restore => restore::intent(cx).await,
            BringupStep::Identity => identity::intent(cx),
            BringupStep::Settings => settings::intent(cx),
            BringupStep::Rootfs => rootfs::intent(cx),
            BringupStep::Mounts => mounts::intent(cx),
            BringupStep::Start | BringupStep::Linkup | BringupStep::Ssh => {
                spec(cx)?;
                Ok(serde_json::json!({}))
            }
            BringupStep::Finish => finish::intent(cx),
        }
    }

    async fn act(&self, cx: &JobCx) -> Result<(), StepError> {
        match self {
            BringupStep::Reserve => reserve::act(cx).await,
            BringupStep::Restore => restore::act(cx).await,
            BringupStep::Identity => identity::act(cx).await,
            BringupStep::Settings => settings::act(cx).await,
            BringupStep::Rootfs => rootfs::act(cx).await,
            BringupStep::Mounts => mounts::act(cx).await,
            BringupStep::Start => start::act(cx).await,
            BringupStep::Linkup => linkup::act(cx).await,
            BringupStep::Ssh => ssh::act(cx).await,
            BringupStep::Finish => finish::act(cx).await,
        }
    }

    async fn undo(&self, cx: &JobCx) -> Result<(), StepError> {
        match self {
            BringupStep::Reserve => reserve::undo(cx),
            BringupStep::Restore => restore::undo(cx).await,
            BringupStep::Start => start::undo(cx).await,
            _ => Ok(()),
        }
    }
}

/// The marker a guest of this job carries, in `state`.
fn marker(cx: &JobCx, s: &GuestSpec, state: crate::marker::MarkerState) -> crate::marker::Marker {
    crate::marker::Marker {
        job: cx.owner_job(),
        customer: s.customer.to_string(),
        name: Some(s.name().to_string()),
        state,
    }
}

/// The job's spec (a bring-up job always has one).
fn spec(cx: &JobCx) -> Result<&GuestSpec, StepError> {
    cx.spec
        .as_ref()
        .ok_or_else(|| StepError::Refused("internal: a bring-up job without a spec".into()))
}

/// The guest's config, refusing a guest that does not carry this job's marker: every step
/// after the restore acts only on a guest felhom provably made for this job (a resumed job
/// included — someone may have replaced the guest while felhom was down).
///
/// An observe's read is shared with the next observe and the act's first guard while
/// nothing is written in between ([`JobCx::cached_config`]).
pub(crate) async fn owned_config(cx: &JobCx, vmid: Vmid) -> Result<LxcConfig, StepError> {
    let cfg = match cx.cached_config(vmid.get()) {
        Some(cfg) => cfg,
        None => {
            let cfg = guest::config_of(&cx.client, &cx.node, vmid)
                .await?
                .ok_or_else(|| StepError::Refused(format!("guest {vmid} vanished")))?;
            cx.cache_config(vmid.get(), &cfg);
            cfg
        }
    };
    let owner = cx.owner_job();
    if repairs_unmarked(cx, &cfg) {
        return Ok(cfg);
    }
    match Ownership::of(&cfg, &owner) {
        Ownership::Ours(_) => Ok(cfg),
        Ownership::OtherJob(m) => Err(StepError::Refused(format!(
            "guest {vmid} now carries the marker of felhom job {}, not {owner}; refusing to touch it",
            m.job
        ))),
        Ownership::Unmarked => Err(StepError::Refused(format!(
            "guest {vmid} no longer carries felhom's ownership marker; refusing to touch it"
        ))),
    }
}

/// A repair job may work on a guest whose marker was rewritten outside felhom when the guest
/// is still bound to felhom's record by its MAC and rootfs volume (`apply` checked the same
/// before it made the job); the finish step writes the marker back. A bring-up never may.
fn repairs_unmarked(cx: &JobCx, cfg: &LxcConfig) -> bool {
    let f = cx.facts();
    f.owner_job.is_some() && guest::bound_to(cfg, f.mac.as_deref(), f.rootfs.as_deref())
}

fn net0_of(cfg: &LxcConfig) -> Result<Option<pve_api::NetConfig>, StepError> {
    guest::net0_of(cfg).map_err(StepError::Refused)
}

/// Another live guest recorded with the same IP or SSH host key as `vmid` now has.
fn other_live_guest_sharing(
    cx: &JobCx,
    vmid: Vmid,
    column: crate::journal::SharedColumn,
    value: &str,
) -> Result<Option<u32>, StepError> {
    Ok(cx.journal.live_guest_sharing(column, value, vmid.get())?)
}

/// The journal's record of this guest, in `state` (`provisioning` until finish).
pub(crate) fn record_guest(cx: &JobCx, state: &str) -> Result<(), StepError> {
    let s = spec(cx)?;
    let f = cx.facts();
    let Some(vmid) = f.vmid else { return Ok(()) };
    cx.journal.upsert_guest(&GuestRecord {
        vmid,
        node: cx.node.clone(),
        job_id: cx.owner_job(),
        hostname: s.hostname.to_string(),
        mac: f.mac,
        ip: f.ip,
        ssh_fingerprint: f.ssh_fingerprint,
        spec: serde_json::to_value(s).unwrap_or(Value::Null),
        state: state.into(),
        customer: s.customer.to_string(),
        name: s.name().to_string(),
        rootfs: f.rootfs,
    })?;
    Ok(())
}

/// The act of a "wait for the guest" step: observe until done or the deadline. Polled like
/// a PVE task (`WaitOptions::next_pause_hinted`): once this host's lease or key time is
/// known (a lease timed from this process's start request, [`linkup::LEASE_WAIT`]; a key
/// from the wait's start), one look at its start, then a look every `min_interval` to its
/// end, then a short back-off. Before it is known, a lease (a request to PVE per look) is
/// probed towards [`linkup::LEASE_PRIOR`] and looked for at the cadence from there
/// (`WaitOptions::next_pause_prior`); an SSH key (no PVE request) is looked for from the
/// start.
///
/// The lease cadence is 100 ms, the key's 50 ms: each lease look is a request to the
/// node, and at 100 guests a 50 ms cadence inside the learned bracket made most of the
/// node's busiest second; 100 ms keeps the median detection near 50 ms.
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
    let (opts, prior) = match step {
        BringupStep::Linkup => (
            pve_api::WaitOptions {
                min_interval: Duration::from_millis(150),
                fast_polls: 10,
                ..opts
            },
            linkup::lease_prior(cx),
        ),
        _ => (opts, None),
    };
    // A lease is timed from this process's start request (`linkup::LEASE_WAIT`); a guest
    // this process did not start (a resumed job) is looked for from now and teaches nothing.
    let now = Instant::now();
    let (key, origin) = match step {
        BringupStep::Linkup => (linkup::LEASE_WAIT, cx.shortcuts.started_at()),
        _ => (step.name(), Some(now)),
    };
    let hint = origin.and_then(|_| cx.waits.expected(key));
    // Once learned, the looks are scheduled on the learned bracket, from the origin; before
    // that, probed from now towards the cold prior (as a task's first wait is probed from
    // its dispatch): a fast host's lease is still seen early.
    let sched = match (hint, origin) {
        (Some(_), Some(o)) => o,
        _ => now,
    };
    let prior = prior.filter(|_| origin.is_some());
    let opts = pve_api::WaitOptions {
        deadline: opts.deadline + sched.elapsed(),
        ..opts
    };
    // Brackets are learned from the origin.
    let from = origin.unwrap_or(now);
    let mut not_yet_at = Duration::ZERO;
    for n in 0.. {
        let pause = match (hint, prior) {
            (None, Some(p)) => opts.next_pause_prior(n, sched.elapsed(), p),
            _ => opts.next_pause_hinted(n, sched.elapsed(), hint),
        };
        let Some(pause) = pause else {
            break;
        };
        tokio::time::sleep(pause).await;
        let (seen, sent) = pve_api::sent_at(async {
            match step {
                BringupStep::Linkup => linkup::look(cx).await,
                _ => ssh::look(cx).await,
            }
        })
        .await;
        let seen = seen?;
        // A lease look saw the guest as it was when its request went out (after any wait
        // for the request budget), not when it asked.
        let looked = sent.saturating_duration_since(from);
        if let Observed::Done(v) = seen {
            if origin.is_some() {
                cx.waits.record(
                    key,
                    pve_api::durations::Bracket {
                        lo: not_yet_at,
                        hi: from.elapsed(),
                    },
                );
            }
            // The look that saw it is the observe the engine would make next.
            cx.prove(v);
            return Ok(());
        }
        not_yet_at = looked;
    }
    Err(StepError::Refused(format!(
        "{what} within {}s",
        timeout.as_secs()
    )))
}
