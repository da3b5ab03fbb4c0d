//! `apply`: felhom as a reconciler. Per guest identity (customer, name): observe PVE and the
//! journal, decide, act — safe to run any time, any number of times, from any number of
//! felhom processes sharing one journal.
//!
//! | what is observed | decision | act |
//! |---|---|---|
//! | an unfinished job for the identity (crash, pause, interrupted) | `continue` | resume that job, then decide again |
//! | that job's rollback did not finish | `refuse` (needs a person) | – |
//! | no guest, no record | `create` (with the VMID `plan` shows) | a bring-up job |
//! | one recorded guest, bound to its record, as specified | `unchanged` | nothing: zero writes |
//! | the same, with drift the steps can repair | `repair` (fields) | a repair job: the bring-up steps, forward only |
//! | drift no step may repair (MAC, golden, storage, a spec naming a third node — a guest migrated outside felhom is followed, shrink, a mount to remove, a mount felhom made whose detach outside it already happened) | `refuse` (why) | – |
//! | a guest whose marker or MAC/rootfs no longer match felhom's record | `refuse` | – |
//! | two live guests with one identity, or a marked guest felhom has no record of | `refuse` | – |
//!
//! "Bound" means: the guest's net0 MAC and rootfs volume are the ones felhom recorded, and the
//! marker names the record's job and identity — or the marker was rewritten, which is then
//! drift the finish step repairs. A description alone (which anyone with
//! `VM.Config.Options` may rewrite) never makes a guest felhom's, and never unmakes it.
//!
//! Every decision of a run shares one look at PVE ([`Observed`]): one `/cluster/resources`
//! read says where each guest lives (a guest migrated outside felhom is followed, and the
//! journal's record and unfinished jobs get its node: [`Felhom::follow_guests`]), and `auto`
//! specs are placed from the same read ([`Felhom::resolve_nodes`], rule in `cluster.rs`).
//! A guest PVE cannot answer for now (its node down) pauses alone.
//!
//! Two felhom processes never work on one identity at once: each holds the journal's
//! identity lease while it decides and acts (a live holder is waited for, a dead one's lease
//! is taken over), so a second `apply` of the same spec sees the first one's guest and says
//! `unchanged`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pve_api::Vmid;
use serde::Serialize;
use serde_json::json;

use crate::bringup::{self, Drift, GuestView};
use crate::cluster::{ClusterView, Need, Placement, Placer};
use crate::guest::{self, Ownership};
use crate::job::{Facts, Outcome, Progress};
use crate::journal::{GuestRecord, JobKind, JobRow, JobState, JournalError, Phase};
use crate::ops::{Felhom, JobReport, OpsError};
use crate::spec::{GuestSpec, Identity};

/// Guests in felhom's range that the journal has no live record of: those that carry
/// felhom's marker for an identity, and those whose marker cannot be read now.
#[derive(Debug, Default)]
pub struct MarkerIndex {
    by_identity: std::collections::BTreeMap<Identity, (u32, String)>,
    /// (VMID, node) of guests whose config cannot be read now (their node down, no
    /// answer): any of them may carry an identity this run would otherwise create again.
    unreadable: Vec<(u32, String)>,
}

/// One look at PVE that every decision of a run shares ([`Felhom::observe`]).
#[derive(Debug, Default)]
pub struct Observed {
    /// Where every guest lives, node and storage figures: one `/cluster/resources` read.
    pub cluster: ClusterView,
    markers: MarkerIndex,
}

/// What `apply` will do (or did decide) for one guest.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// No such guest: bring it up at `vmid` (None: no free VMID is known yet) on `node`
    /// (None: the spec's); `placed` says why placement chose that node (`node = "auto"`).
    Create {
        vmid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        placed: Option<String>,
    },
    /// There and as specified: nothing to do.
    Unchanged { vmid: u32 },
    /// There, with drift the steps repair.
    Repair {
        vmid: u32,
        #[serde(skip)]
        record: Box<GuestRecord>,
        drift: Vec<Drift>,
    },
    /// An interrupted job of this identity: finish it first.
    Continue {
        job: String,
        vmid: Option<u32>,
        state: String,
    },
    /// Not felhom's to change, or not safely: why, and whether a person must act.
    Refuse {
        vmid: Option<u32>,
        why: String,
        needs_person: bool,
    },
    /// A felhom guest in none of the specs (`--prune`): tear it down.
    Prune { vmid: u32 },
}

impl Decision {
    /// One line for `plan`.
    pub fn describe(&self) -> String {
        match self {
            Decision::Create { vmid, node, placed } => {
                let mut line = match vmid {
                    Some(v) => format!("create at VMID {v}"),
                    None => "create (no free VMID in range now)".into(),
                };
                if let (Some(n), Some(why)) = (node, placed) {
                    line.push_str(&format!(" on node {n}: {why}"));
                }
                line
            }
            Decision::Unchanged { vmid } => format!("unchanged (VMID {vmid})"),
            Decision::Repair { vmid, drift, .. } => format!(
                "repair VMID {vmid}: {}",
                drift
                    .iter()
                    .map(|d| format!("{} ({} → {})", d.field, show_or_dash(&d.actual), d.expected))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Decision::Continue { job, state, .. } => format!("continue job {job} ({state})"),
            Decision::Refuse { why, .. } => format!("refuse: {why}"),
            Decision::Prune { vmid } => format!("prune: tear down VMID {vmid}"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Decision::Create { .. } => "create",
            Decision::Unchanged { .. } => "unchanged",
            Decision::Repair { .. } => "repair",
            Decision::Continue { .. } => "continue",
            Decision::Refuse { .. } => "refuse",
            Decision::Prune { .. } => "prune",
        }
    }
}

fn show_or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn refuse(vmid: Option<u32>, why: impl Into<String>) -> Decision {
    Decision::Refuse {
        vmid,
        why: why.into(),
        needs_person: false,
    }
}

/// How long `apply` waits for another live felhom process that holds a guest's identity.
const IDENTITY_WAIT_POLL: Duration = Duration::from_millis(200);

impl Felhom {
    /// What a decision needs to know of PVE beyond one guest, read once per run (or per
    /// observe pass): where every guest lives (one `/cluster/resources` read) and the
    /// markers of guests in felhom's range that the journal has no live record of (a lost or
    /// another journal's guests: one config read each, on the node the read names).
    pub async fn observe(&self) -> Result<Observed, OpsError> {
        let cluster = ClusterView::read(&self.client).await?;
        let markers = self.unrecorded_markers(&cluster).await?;
        Ok(Observed { cluster, markers })
    }

    /// The markers of guests in felhom's range, on any node, that the journal has no live
    /// record of.
    pub async fn unrecorded_markers(&self, cluster: &ClusterView) -> Result<MarkerIndex, OpsError> {
        let mut recorded: BTreeSet<u32> =
            self.journal.live_guests()?.iter().map(|g| g.vmid).collect();
        recorded.extend(self.journal.unfinished_vmids()?);
        let mut index = MarkerIndex::default();
        for (vmid, at) in cluster.guests() {
            let Ok(vmid) = Vmid::try_from(vmid) else {
                continue;
            };
            if !self.config.vmid_range.contains(vmid) || recorded.contains(&vmid.get()) {
                continue;
            }
            // A guest on a node that is down cannot be read: its VMID stays taken for the
            // pickers (it is in the read), and no identity is created while it may be its.
            if !cluster.node_online(&at.node) && cluster.node_names().next().is_some() {
                index.unreadable.push((vmid.get(), at.node.clone()));
                continue;
            }
            let cfg = match guest::config_of(&self.client, &at.node, vmid).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) if e.is_transient() => {
                    tracing::warn!(%vmid, node = %at.node, error = %e, "cannot read an unrecorded guest's marker now");
                    index.unreadable.push((vmid.get(), at.node.clone()));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(m) = guest::marker_of(&cfg) {
                if let Some(name) = m.name {
                    index.by_identity.insert(
                        Identity {
                            customer: m.customer,
                            name,
                        },
                        (vmid.get(), m.job),
                    );
                }
            }
        }
        Ok(index)
    }

    /// Decide what `apply` does for `spec`, reading only (PVE and the journal).
    pub async fn decide(&self, spec: &GuestSpec) -> Result<Decision, OpsError> {
        let observed = self.observe().await?;
        self.decide_with(spec, &observed).await
    }

    /// [`Felhom::decide`] with PVE already observed.
    pub async fn decide_with(
        &self,
        spec: &GuestSpec,
        observed: &Observed,
    ) -> Result<Decision, OpsError> {
        let unrecorded = &observed.markers;
        let id = spec.identity_key();
        // 1. A job of this identity that did not finish comes first.
        if let Some(j) = self
            .journal
            .unfinished_jobs_for_identity(&id.customer, &id.name)?
            .into_iter()
            .next()
        {
            if j.state == JobState::RollbackIncomplete {
                return Ok(Decision::Refuse {
                    vmid: j.vmid,
                    why: format!(
                        "job {} could not finish its rollback ({}); a person must look, then run `felhom resume {}`",
                        j.id,
                        j.error.as_deref().unwrap_or("no error recorded"),
                        j.id
                    ),
                    needs_person: true,
                });
            }
            return Ok(Decision::Continue {
                job: j.id.clone(),
                vmid: j.vmid,
                state: j.display_state().to_string(),
            });
        }
        // 2. The guest felhom recorded for this identity.
        let records = self.journal.guests_by_identity(&id.customer, &id.name)?;
        match records.as_slice() {
            [] => Ok(match unrecorded.by_identity.get(&id) {
                Some((vmid, job)) => refuse(
                    Some(*vmid),
                    format!("guest {vmid} carries felhom's marker for {id} (job {job}), but this journal has no record of it; felhom cannot prove it is its own"),
                ),
                // Another journal's guest (or a lost record) that cannot be read now may be
                // this identity's: creating it would make a second guest. Pause instead.
                None if !unrecorded.unreadable.is_empty() => Decision::Refuse {
                    vmid: None,
                    why: format!(
                        "cannot tell whether {id} already has a guest: {} in felhom's range, with no record in this journal, cannot be read now; nothing was done: apply again when PVE answers for {}",
                        unrecorded
                            .unreadable
                            .iter()
                            .map(|(v, n)| format!("VMID {v} on node {n}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        unrecorded
                            .unreadable
                            .iter()
                            .map(|(_, n)| n.as_str())
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    needs_person: true,
                },
                None => Decision::Create {
                    vmid: None,
                    node: None,
                    placed: None,
                },
            }),
            [rec] => self.decide_recorded(spec, rec, &observed.cluster).await,
            many => Ok(refuse(
                None,
                format!(
                    "{} felhom guests carry identity {id}: VMIDs {}; tear down the extra ones (`felhom teardown VMID`)",
                    many.len(),
                    many.iter()
                        .map(|g| g.vmid.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    async fn decide_recorded(
        &self,
        spec: &GuestSpec,
        rec: &GuestRecord,
        cluster: &ClusterView,
    ) -> Result<Decision, OpsError> {
        let vmid = Vmid::try_from(rec.vmid).map_err(|e| OpsError::Invalid(e.to_string()))?;
        let v = Some(rec.vmid);
        // The guest is where the cluster says it is (migrated outside felhom: followed, not
        // drift); a guest the read does not list is looked for where felhom left it.
        let mut followed = rec.clone();
        if let Some(n) = cluster.node_of(rec.vmid) {
            followed.node = n.to_string();
        }
        let rec = &followed;
        let Some(cfg) = guest::config_of(&self.client, &rec.node, vmid).await? else {
            // The journal remembers a guest PVE no longer has: it is absent, bring it up.
            return Ok(Decision::Create {
                vmid: None,
                node: None,
                placed: None,
            });
        };
        if let Some(why) = unbound(&cfg, rec) {
            return Ok(refuse(v, why));
        }
        let old: Option<GuestSpec> = serde_json::from_value(rec.spec.clone()).ok();
        let present = guest::mounts_of(&cfg);
        let attached = |path: &str| present.iter().find(|p| p.path == path);
        if let Some(old) = &old {
            let mut changed = Vec::new();
            if old.golden != spec.golden {
                changed.push(format!(
                    "golden (made from {}, the spec says {}): a different golden needs a new guest (`felhom teardown`, then apply)",
                    old.golden, spec.golden
                ));
            }
            // The spec's node says where to create; a guest that lives elsewhere (placed
            // by "auto", or migrated outside felhom) is followed. Only a spec naming a third
            // node asks for a migration.
            if !spec.node_is_auto() && old.node != spec.node && rec.node != spec.node.as_str() {
                changed.push(format!(
                    "node ({} → {}): felhom does not migrate guests",
                    old.node, spec.node
                ));
            }
            if old.storage != spec.storage {
                changed.push(format!(
                    "storage ({} → {}): felhom does not move disks",
                    old.storage, spec.storage
                ));
            }
            if old.identity != spec.identity {
                changed.push("identity policy: it only applies at restore".to_string());
            }
            for m in &old.mounts {
                let kept = spec.mounts.iter().any(|n| n.path == m.path);
                if !kept && attached(m.path.as_str()).is_some() {
                    changed.push(format!(
                        "mount {} is not in the spec any more, and it may hold data: felhom never removes a mount (detach it by hand, then apply)",
                        m.path
                    ));
                }
            }
            // A mount felhom made that is no longer attached was detached outside felhom: in
            // PVE its volume (the data) is now `unusedN`, or the detach is pending until the
            // guest restarts. A pending detach is reverted by the mounts step (repair); a
            // done one is refused: a fresh empty volume at its path would hide that data, so a
            // person re-attaches it.
            let detached: Vec<&crate::spec::MountSpec> = spec
                .mounts
                .iter()
                .filter(|m| {
                    old.mounts.iter().any(|o| o.path == m.path)
                        && attached(m.path.as_str()).is_none()
                })
                .collect();
            // A detach still pending (running guest) is the mounts step's to revert.
            let pending = if detached.is_empty() {
                Vec::new()
            } else {
                guest::pending_mount_detaches(&self.client.lxc_pending(&rec.node, vmid).await?)
            };
            for m in detached {
                if !pending.iter().any(|p| p.path == m.path.as_str()) {
                    changed.push(format!(
                        "mount {} that felhom made is no longer attached (detached outside felhom; its volume, with the data, is unused or pending detach): felhom never puts an empty volume in its place (re-attach it, or revert the pending delete, then apply)",
                        m.path
                    ));
                }
            }
            if !changed.is_empty() {
                return Ok(refuse(v, changed.join("; ")));
            }
        }
        let size = guest::rootfs_bytes(&cfg).unwrap_or(0);
        if size > spec.rootfs_size.bytes() {
            return Ok(refuse(
                v,
                format!(
                    "rootfs is {}, the spec asks {}: PVE cannot shrink a disk",
                    pve_api::format_disk_size(size),
                    spec.rootfs_size
                ),
            ));
        }
        for m in &spec.mounts {
            if let Some(p) = attached(m.path.as_str()) {
                if p.bytes > m.size.bytes() {
                    return Ok(refuse(
                        v,
                        format!(
                            "mount {} is {}, the spec asks {}: PVE cannot shrink a disk",
                            m.path,
                            pve_api::format_disk_size(p.bytes),
                            m.size
                        ),
                    ));
                }
            }
        }
        let drift = self.drift_of(spec, rec, &cfg, vmid).await?;
        // The MAC is bound above; any other drift is the steps' to repair.
        if drift.is_empty() {
            Ok(Decision::Unchanged { vmid: rec.vmid })
        } else {
            Ok(Decision::Repair {
                vmid: rec.vmid,
                record: Box::new(rec.clone()),
                drift,
            })
        }
    }

    /// Every step's drift check against the new spec.
    async fn drift_of(
        &self,
        spec: &GuestSpec,
        rec: &GuestRecord,
        cfg: &pve_api::LxcConfig,
        vmid: Vmid,
    ) -> Result<Vec<Drift>, OpsError> {
        let live = guest::live(&self.client, &self.config, &rec.node, vmid).await?;
        let view = GuestView {
            spec: Some(spec),
            record: rec,
            cfg,
            status: &live.status,
            ip: live.ip.as_deref(),
            ssh_fingerprint: live.ssh_fingerprint.as_deref(),
        };
        Ok(bringup::STEPS.iter().flat_map(|s| s.drift(&view)).collect())
    }

    /// `plan`: the decision for every spec (and with `prune`, the guests to remove), with the
    /// VMIDs `apply` will use. Reads only.
    pub async fn plan_apply(
        &self,
        specs: &[GuestSpec],
        prune: bool,
    ) -> Result<Vec<(Identity, Decision)>, OpsError> {
        let observed = self.observe().await?;
        let resolved = self.resolve_nodes(&observed.cluster, specs).await?;
        let mut out = Vec::new();
        let mut placed_specs = Vec::new();
        for (s, r) in specs.iter().zip(resolved) {
            let d = match r {
                Ok((placed, how)) => {
                    let d = self.decide_with(&placed, &observed).await?;
                    placed_specs.push(placed);
                    with_placement(d, how)
                }
                Err(why) => {
                    placed_specs.push(s.clone());
                    refuse(None, format!("node: {why}"))
                }
            };
            out.push((s.identity_key(), d));
        }
        self.assign_vmids(
            &observed.cluster,
            &placed_specs,
            out.iter_mut().map(|(_, d)| Some(d)),
        )
        .await?;
        if prune {
            out.extend(self.prunable(specs)?);
        }
        Ok(out)
    }

    /// Give each `create` the VMID `provision` reserves first (in spec order). `decisions`
    /// follows `specs`; `None` is a guest not decided yet (its identity held elsewhere).
    async fn assign_vmids<'d>(
        &self,
        cluster: &ClusterView,
        specs: &[GuestSpec],
        decisions: impl Iterator<Item = Option<&'d mut Decision>>,
    ) -> Result<(), OpsError> {
        let creating: Vec<(GuestSpec, &mut Option<u32>)> = specs
            .iter()
            .zip(decisions)
            .filter_map(|(s, d)| match d {
                Some(Decision::Create { vmid, .. }) => Some((s.clone(), vmid)),
                _ => None,
            })
            .collect();
        let (specs, slots): (Vec<GuestSpec>, Vec<&mut Option<u32>>) = creating.into_iter().unzip();
        let picks = self.pick_vmids_in(cluster, &specs)?;
        for (slot, pick) in slots.into_iter().zip(picks) {
            *slot = pick.map(|v| v.get());
        }
        Ok(())
    }

    /// felhom's live guests whose identity is in none of `specs` (never a linked-clone
    /// template: no spec names one; `felhom teardown <vmid>` removes an unused one).
    fn prunable(&self, specs: &[GuestSpec]) -> Result<Vec<(Identity, Decision)>, OpsError> {
        let wanted: BTreeSet<Identity> = specs.iter().map(GuestSpec::identity_key).collect();
        Ok(self
            .journal
            .live_guests()?
            .into_iter()
            .filter(|g| g.customer != crate::publish::TEMPLATE_CUSTOMER)
            .filter(|g| {
                !wanted.contains(&Identity {
                    customer: g.customer.clone(),
                    name: g.name.clone(),
                })
            })
            .map(|g| {
                (
                    Identity {
                        customer: g.customer.clone(),
                        name: g.name.clone(),
                    },
                    Decision::Prune { vmid: g.vmid },
                )
            })
            .collect())
    }

    /// `apply SPEC…`: converge every guest; with `prune`, also tear down felhom guests in
    /// none of the specs.
    pub async fn apply(
        self: &Arc<Self>,
        specs: Vec<GuestSpec>,
        prune: bool,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<JobReport>, OpsError> {
        let holder = crate::ops::new_apply_id();
        let mut specs = specs;
        let (decided, prunes) = match self.decide_all(&mut specs, prune, &holder).await {
            Ok(d) => d,
            Err(e) => {
                // Nothing was done: give back every identity this call took.
                self.release_all(&specs, &holder);
                return Err(e);
            }
        };
        let mut handles = Vec::new();
        for (spec, first) in specs.into_iter().zip(decided) {
            let me = self.clone();
            let progress = progress.clone();
            let holder = holder.clone();
            handles.push(tokio::spawn(async move {
                let id = spec.identity_key();
                let r = me.converge(spec, first, &holder, progress).await;
                let _ = me.journal.release_identity(&id.customer, &id.name, &holder);
                r
            }));
        }
        let mut reports = crate::ops::collect(handles).await?;
        if !prunes.is_empty() {
            let vmids: Vec<Vmid> = prunes
                .iter()
                .filter_map(|(_, d)| match d {
                    Decision::Prune { vmid } => Vmid::try_from(*vmid).ok(),
                    _ => None,
                })
                .collect();
            reports.extend(self.teardown(vmids, progress).await?);
        }
        self.remember_durations();
        Ok(reports)
    }

    /// Decide in spec order, each under its identity lease (`None`: a live holder elsewhere,
    /// waited for in that guest's own task), with the VMIDs creations get; and with `prune`
    /// the guests to remove. Reads PVE; writes only identity leases.
    async fn decide_all(
        &self,
        specs: &mut [GuestSpec],
        prune: bool,
        holder: &str,
    ) -> Result<(Vec<Option<Decision>>, Vec<(Identity, Decision)>), OpsError> {
        let observed = self.observe().await?;
        self.follow_guests(&observed.cluster)?;
        let resolved = self.resolve_nodes(&observed.cluster, specs).await?;
        let mut decided = Vec::new();
        for (s, r) in specs.iter_mut().zip(resolved) {
            let id = s.identity_key();
            decided.push(
                match self
                    .journal
                    .acquire_identity(&id.customer, &id.name, holder)
                {
                    Ok(()) => Some(match r {
                        Ok((placed, how)) => {
                            // The job keeps the node placement chose: placed once.
                            *s = placed;
                            match self.decide_with(s, &observed).await {
                                Ok(d) => with_placement(d, how),
                                // One guest PVE cannot tell about now (its node down, no
                                // answer): that guest pauses, the others go on.
                                Err(OpsError::Api(e)) if self.client.refused_certificate().is_none() => {
                                    Decision::Refuse {
                                        vmid: None,
                                        why: format!("cannot look at this guest now ({e}); nothing was done: apply again when PVE answers for node {}", s.node),
                                        needs_person: true,
                                    }
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        Err(why) => refuse(None, format!("node: {why}")),
                    }),
                    Err(JournalError::IdentityHeld { .. }) => {
                        // Decided later in its own task; the node resolved now stands.
                        if let Ok((placed, _)) = r {
                            *s = placed;
                        }
                        None
                    }
                    Err(e) => return Err(e.into()),
                },
            );
        }
        self.assign_vmids(
            &observed.cluster,
            specs,
            decided.iter_mut().map(Option::as_mut),
        )
        .await?;
        let prunes = if prune {
            self.prunable(specs)?
        } else {
            Vec::new()
        };
        Ok((decided, prunes))
    }

    fn release_all(&self, specs: &[GuestSpec], holder: &str) {
        for s in specs {
            let id = s.identity_key();
            let _ = self
                .journal
                .release_identity(&id.customer, &id.name, holder);
        }
    }

    /// Wait (bounded by the task timeout) until this process holds the identity.
    async fn wait_identity(&self, id: &Identity, holder: &str) -> Result<(), String> {
        let started = Instant::now();
        loop {
            match self
                .journal
                .acquire_identity(&id.customer, &id.name, holder)
            {
                Ok(()) => return Ok(()),
                Err(JournalError::IdentityHeld { job, pid, .. }) => {
                    if started.elapsed() > self.config.task_timeout {
                        return Err(format!(
                            "{id} is being applied by felhom process {pid} ({job}) for longer than the task timeout; try again later"
                        ));
                    }
                    tokio::time::sleep(IDENTITY_WAIT_POLL).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Act on one guest's decision until it converges (a continued job is followed by a
    /// fresh decision: at most a few rounds).
    async fn converge(
        &self,
        spec: GuestSpec,
        first: Option<Decision>,
        holder: &str,
        progress: Arc<dyn Progress>,
    ) -> JobReport {
        let id = spec.identity_key();
        let label = spec.hostname.to_string();
        let mut next = first;
        // The report of a job this call continued, should the next look find the guest done.
        let mut continued: Option<JobReport> = None;
        // felhom could not read or write its own state (PVE or the journal): stop, undo
        // nothing, let a person or the next run look again.
        // A refused certificate stops it too, as its own outcome (exit 2, never retried).
        let paused = |vmid: Option<u32>, e: &dyn std::fmt::Display| {
            let outcome = match self.client.refused_certificate() {
                Some(c) => Outcome::Untrusted {
                    error: c.to_string(),
                },
                None => Outcome::Paused {
                    error: e.to_string(),
                },
            };
            JobReport::decided(&label, vmid, outcome)
        };
        for _ in 0..3 {
            let decision = match next.take() {
                Some(d) => d,
                None => {
                    if let Err(why) = self.wait_identity(&id, holder).await {
                        return JobReport::decided(&label, None, Outcome::Refused { error: why });
                    }
                    match self.decide(&spec).await {
                        Ok(d) => d,
                        Err(e) => return paused(None, &e),
                    }
                }
            };
            match decision {
                Decision::Unchanged { vmid } => {
                    return continued.unwrap_or_else(|| {
                        let mut r = JobReport::decided(&label, Some(vmid), Outcome::Unchanged);
                        // What felhom recorded, which the decision just found true.
                        if let Ok(Some(g)) = self.journal.guest(vmid) {
                            (r.ip, r.mac, r.ssh_fingerprint) = (g.ip, g.mac, g.ssh_fingerprint);
                        }
                        r
                    });
                }
                Decision::Refuse {
                    vmid,
                    why,
                    needs_person,
                } => {
                    let outcome = if needs_person {
                        Outcome::Paused { error: why }
                    } else {
                        Outcome::Refused { error: why }
                    };
                    return JobReport::decided(&label, vmid, outcome);
                }
                Decision::Create { vmid, .. } => {
                    return match self.start_bringup(&spec, vmid, None).await {
                        Ok(job) => self.run_job(job, progress).await,
                        Err(e) => paused(None, &e),
                    }
                }
                Decision::Repair { record, .. } => {
                    return match self.start_bringup(&spec, None, Some(&record)).await {
                        Ok(job) => self.run_job(job, progress).await,
                        Err(e) => paused(Some(record.vmid), &e),
                    }
                }
                Decision::Continue { job, .. } => {
                    let row = match self.journal.job(&job) {
                        Ok(r) => r,
                        Err(e) => return paused(None, &e),
                    };
                    if let Err(e) = self.journal.claim_job(&row.id) {
                        return JobReport::decided(
                            &label,
                            row.vmid,
                            Outcome::Refused {
                                error: format!("job {}: {e}", row.id),
                            },
                        );
                    }
                    let r = self.run_job(row, progress.clone()).await;
                    match r.outcome {
                        // Finished or undone: look again (the spec may ask more).
                        Outcome::Succeeded | Outcome::RolledBack { .. } => continued = Some(r),
                        _ => return r,
                    }
                }
                Decision::Prune { .. } => unreachable_prune(),
            }
        }
        JobReport::decided(
            &label,
            None,
            Outcome::Refused {
                error: format!("{id} did not converge in three rounds"),
            },
        )
    }

    /// Create the journal's bring-up (or, for a guest that exists, repair) job for `spec`.
    async fn start_bringup(
        &self,
        spec: &GuestSpec,
        vmid_hint: Option<u32>,
        existing: Option<&GuestRecord>,
    ) -> Result<JobRow, OpsError> {
        // Facts known before the first step: the golden's own identity, so the identity
        // step can prove the guest does not carry it (F1).
        let golden = self
            .golden_info(spec.node.as_str(), spec.golden.as_str())
            .await?;
        let kind = if existing.is_some() {
            JobKind::Repair
        } else {
            JobKind::Bringup
        };
        let id = crate::ops::new_job_id(kind);
        // A repair acts where the guest lives now (followed: the job's node, the spec keeps
        // the node it named); a creation where the spec (placed, if it said "auto") puts it.
        let node = existing.map_or(spec.node.as_str(), |r| r.node.as_str());
        let value = serde_json::to_value(spec).map_err(|e| OpsError::Invalid(e.to_string()))?;
        self.journal
            .create_job(&id, kind, node, Some(spec.hostname.as_str()), &value)?;
        let mut facts = Facts {
            golden_mac: golden.mac.map(|m| m.to_ascii_uppercase()),
            golden_rootfs_bytes: golden.rootfs_bytes,
            vmid_hint,
            ..Facts::default()
        };
        if let Some(rec) = existing {
            // The repair works on the recorded guest, under the marker of the job that made it.
            facts.vmid = Some(rec.vmid);
            facts.mac = rec.mac.clone();
            facts.owner_job = Some(rec.job_id.clone());
            facts.rootfs = rec.rootfs.clone();
            if let Ok(v) = Vmid::try_from(rec.vmid) {
                self.journal.set_job_vmid(&id, v)?;
            }
        }
        self.journal
            .record(&id, "job", 0, Phase::Note, &json!({ "facts": facts }))?;
        Ok(self.journal.job(&id)?)
    }
}

/// A creation decided for a placed spec says where, and why.
fn with_placement(d: Decision, how: Option<Placement>) -> Decision {
    match (d, how) {
        (Decision::Create { vmid, .. }, Some(p)) => Decision::Create {
            vmid,
            node: Some(p.node),
            placed: Some(p.why),
        },
        (d, _) => d,
    }
}

/// One spec's node for this run: the spec with a concrete node, and the placement that
/// chose it (None: the spec named it, or the guest already lives there); `Err`: no node fits.
pub type Resolved = Result<(GuestSpec, Option<Placement>), String>;

impl Felhom {
    /// Every spec's node for this run (`cluster.rs` has the rule): a spec naming a node keeps
    /// it; an `auto` spec of a guest felhom already has (a live record, an unfinished job)
    /// gets the node that guest lives on now — never placed again; a new one is placed,
    /// counting the placements before it.
    pub async fn resolve_nodes(
        &self,
        cluster: &ClusterView,
        specs: &[GuestSpec],
    ) -> Result<Vec<Resolved>, OpsError> {
        let mut placer = Placer::new(cluster, &self.config.nodes);
        let mut golden_on: std::collections::HashMap<(String, String, u64), BTreeSet<String>> =
            Default::default();
        let mut out = Vec::new();
        for s in specs {
            if !s.node_is_auto() {
                out.push(Ok((s.clone(), None)));
                continue;
            }
            let id = s.identity_key();
            let known = match self
                .journal
                .unfinished_jobs_for_identity(&id.customer, &id.name)?
                .into_iter()
                .next()
            {
                Some(j) => Some((j.vmid, j.node)),
                None => self
                    .journal
                    .guests_by_identity(&id.customer, &id.name)?
                    .into_iter()
                    .next()
                    .map(|g| (Some(g.vmid), g.node)),
            };
            if let Some((vmid, node)) = known {
                let node = vmid
                    .and_then(|v| cluster.node_of(v))
                    .map(str::to_string)
                    .unwrap_or(node);
                out.push(s.on_node(&node).map(|s| (s, None)));
                continue;
            }
            let key = (
                s.golden.to_string(),
                s.storage.to_string(),
                s.rootfs_size.bytes(),
            );
            if !golden_on.contains_key(&key) {
                let on = self.golden_nodes(cluster, &placer.candidates(), s).await;
                golden_on.insert(key.clone(), on);
            }
            let need = Need {
                storage: s.storage.to_string(),
                disk: s.rootfs_size.bytes()
                    + s.mounts
                        .iter()
                        .filter(|m| m.storage == s.storage)
                        .map(|m| m.size.bytes())
                        .sum::<u64>(),
                mem: u64::from(s.memory.map(|m| m.get()).unwrap_or(DEFAULT_MEMORY_MIB)) << 20,
                golden_on: golden_on.get(&key).cloned(),
            };
            out.push(
                placer
                    .place(&need)
                    .and_then(|p| Ok((s.on_node(&p.node)?, Some(p)))),
            );
        }
        Ok(out)
    }

    /// The nodes (of `candidates`) where a guest of `s` can be made: with `linked-clone`,
    /// where a template of its golden is published; else where the golden archive can be
    /// read (a shared storage: every node that has it available; a node-local one: the nodes
    /// whose `extractconfig` answers, read once per node and process).
    async fn golden_nodes(
        &self,
        cluster: &ClusterView,
        candidates: &[String],
        s: &GuestSpec,
    ) -> BTreeSet<String> {
        if self.config.strategy == crate::config::Strategy::LinkedClone {
            return candidates
                .iter()
                .filter(|n| crate::publish::has_template_for(&self.journal, n, s))
                .cloned()
                .collect();
        }
        let sid = s.golden.as_str().split(':').next().unwrap_or_default();
        let mut on = BTreeSet::new();
        for n in candidates {
            let readable = match cluster.storage(n, sid) {
                Some(st) if !st.available => false,
                Some(st) if st.shared => true,
                _ => self.golden_info(n, s.golden.as_str()).await.is_ok(),
            };
            if readable {
                on.insert(n.clone());
            }
        }
        on
    }

    /// Guests that live elsewhere than the journal says (migrated outside felhom) are
    /// followed: the record's node, and the node of any unfinished job of that guest, become
    /// the one `/cluster/resources` names, so the next step acts where the guest is.
    pub fn follow_guests(&self, cluster: &ClusterView) -> Result<(), OpsError> {
        for g in self.journal.live_guests()? {
            if let Some(n) = cluster.node_of(g.vmid).filter(|n| *n != g.node) {
                tracing::info!(vmid = g.vmid, from = %g.node, to = n, "guest lives on another node now: followed");
                self.journal.set_guest_node(g.vmid, n)?;
            }
        }
        for j in self.journal.resumable_jobs()? {
            if let Some(n) = j
                .vmid
                .and_then(|v| cluster.node_of(v))
                .filter(|n| *n != j.node)
            {
                self.journal.set_job_node(&j.id, n)?;
            }
        }
        Ok(())
    }
}

/// Memory a guest is counted with when its spec does not say (PVE's default for a CT).
const DEFAULT_MEMORY_MIB: u32 = 512;

fn unreachable_prune() -> ! {
    unreachable!("prune decisions are made by `prunable`, never by `decide`")
}

/// Why `cfg` is not provably the guest `rec` describes (None: it is).
fn unbound(cfg: &pve_api::LxcConfig, rec: &GuestRecord) -> Option<String> {
    let vmid = rec.vmid;
    // The marker is only a description: rewritten outside felhom, the guest is still the one
    // felhom made if its MAC and rootfs volume are the recorded ones, and the marker is
    // repaired (the restore step's drift, the finish step's act).
    let bound = guest::bound_to(cfg, rec.mac.as_deref(), rec.rootfs.as_deref());
    match Ownership::of(cfg, &rec.job_id) {
        Ownership::OtherJob(_) | Ownership::Unmarked if bound => return None,
        Ownership::Ours(m) => {
            if m.customer != rec.customer
                || m.name.as_deref().is_some_and(|n| n != rec.name)
            {
                return Some(format!(
                    "guest {vmid}'s marker names {}/{}, but felhom recorded it as {}/{}; refusing to touch it",
                    m.customer,
                    m.name.as_deref().unwrap_or("?"),
                    rec.customer,
                    rec.name
                ));
            }
        }
        Ownership::OtherJob(m) => {
            return Some(format!(
                "guest {vmid} carries the marker of felhom job {}, but felhom recorded job {}; refusing to touch it",
                m.job, rec.job_id
            ))
        }
        Ownership::Unmarked => {
            return Some(format!(
                "guest {vmid} no longer carries felhom's ownership marker (description changed outside felhom); refusing to touch it"
            ))
        }
    }
    let mac = guest::mac_of(cfg);
    let same_mac = match (mac.as_deref(), rec.mac.as_deref()) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    };
    if !same_mac {
        return Some(format!(
            "guest {vmid}'s MAC changed outside felhom (recorded {}, now {}): felhom does not re-key a live guest, and cannot prove it is the one it made",
            rec.mac.as_deref().unwrap_or("-"),
            mac.as_deref().unwrap_or("-")
        ));
    }
    if let (Some(want), Some(have)) = (rec.rootfs.as_deref(), guest::rootfs_volume(cfg)) {
        if want != have {
            return Some(format!(
                "guest {vmid}'s rootfs volume changed outside felhom (recorded {want}, now {have}); refusing to touch it"
            ));
        }
    }
    None
}
