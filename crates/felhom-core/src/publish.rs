//! Linked-clone templates (`strategy = "linked-clone"`, issue 16 item 5): `felhom golden
//! publish` restores the golden once per node and storage into a VMID of felhom's range and
//! turns it into a PVE template; every guest of that strategy is then a linked clone of it
//! (the bring-up's restore step dispatches `POST …/{template}/clone` instead of a restore).
//!
//! The publish job is journaled like a bring-up (job kind `publish`, id prefix `pub-`) and
//! rolls back like one; its steps reuse the bring-up's:
//!
//! | # | step | observe | act | undo |
//! |---|---|---|---|---|
//! | 1 | reserve | lease on the VMID held by this job | pick the VMID, take the lease | release |
//! | 2 | restore | guest exists with this job's marker | `POST lxc` restore=1 at the golden's own sizes, description = marker + [`TemplateLine`]; wait | stop + destroy with purge, only with this job's marker |
//! | 3 | template | config has `template: 1` | `POST …/template` (answers `null`: the client finds the `vztemplate` task, else the config is polled); record the guest as `template` | – |
//!
//! A template is found by its identity: customer [`TEMPLATE_CUSTOMER`], name `t<hash>`
//! where the hash covers the golden's volume id, its archived `pct.conf` and the storage,
//! so a new golden (or the same golden on another storage) gets a new template and the old
//! one stays while clones use it. A second publish finds the template and writes nothing.
//! Teardown refuses a template a clone still uses (its base volume would outlive it);
//! an unused template is torn down like any guest (`felhom teardown <vmid>`).

use pve_api::{LxcConfig, Vmid};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::bringup;
use crate::guest;
use crate::job::{JobCx, Observed, Step, StepError};
use crate::journal::{GuestRecord, Journal};

/// The job-id prefix of publish jobs (how a step knows it builds a template).
pub const JOB_PREFIX: &str = "pub";
/// The customer id templates are recorded under (reserved: a spec may not use it).
pub const TEMPLATE_CUSTOMER: &str = "felhom-template";
/// The hostname a template carries (a template never starts).
pub const TEMPLATE_HOSTNAME: &str = "felhom-template";
/// The journal state of a published template.
pub const TEMPLATE_STATE: &str = "template";

/// Whether `job` is a publish job.
pub fn is_publish_job(job: &str) -> bool {
    job.starts_with(&format!("{JOB_PREFIX}-"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishStep {
    Reserve,
    Restore,
    Template,
}

pub const STEPS: [PublishStep; 3] = [
    PublishStep::Reserve,
    PublishStep::Restore,
    PublishStep::Template,
];

/// The line a template carries in its description, after felhom's marker:
/// `felhom-template: sha256=<hex> golden=<volid> storage=<sid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateLine {
    pub sha256: String,
    pub golden: String,
    pub storage: String,
}

pub const LINE_PREFIX: &str = "felhom-template:";

impl std::fmt::Display for TemplateLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{LINE_PREFIX} sha256={} golden={} storage={}",
            self.sha256, self.golden, self.storage
        )
    }
}

impl TemplateLine {
    pub fn find(description: &str) -> Option<TemplateLine> {
        description.lines().find_map(|line| {
            let rest = line.trim().strip_prefix(LINE_PREFIX)?;
            let mut sha = None;
            let mut golden = None;
            let mut storage = None;
            for kv in rest.split_whitespace() {
                match kv.split_once('=')? {
                    ("sha256", v) => sha = Some(v.to_string()),
                    ("golden", v) => golden = Some(v.to_string()),
                    ("storage", v) => storage = Some(v.to_string()),
                    _ => {}
                }
            }
            Some(TemplateLine {
                sha256: sha?,
                golden: golden?,
                storage: storage?,
            })
        })
    }

    pub fn of(cfg: &LxcConfig) -> Option<TemplateLine> {
        TemplateLine::find(cfg.get_str("description")?)
    }
}

/// The golden's hash: its volume id and the `pct.conf` its archive carries.
pub fn golden_hash(volid: &str, pct_conf: &str) -> String {
    let mut h = Sha256::new();
    h.update(volid.as_bytes());
    h.update(b"\n");
    h.update(pct_conf.as_bytes());
    hex::encode(h.finalize())
}

/// The template's name (its identity within [`TEMPLATE_CUSTOMER`]): one per golden hash,
/// storage and rootfs size.
pub fn template_name(hash: &str, storage: &str, rootfs_bytes: u64) -> String {
    let mut h = Sha256::new();
    h.update(hash.as_bytes());
    h.update(b"\n");
    h.update(storage.as_bytes());
    h.update(b"\n");
    h.update(rootfs_bytes.to_string().as_bytes());
    format!("t{}", &hex::encode(h.finalize())[..16])
}

/// The synthetic spec a publish job carries: the golden on `storage` of `node`, its rootfs
/// at `rootfs` (the golden's own size unless `golden publish --rootfs-size`), with the
/// template identity.
pub fn template_spec(
    node: &str,
    storage: &str,
    golden: &str,
    hash: &str,
    rootfs: crate::spec::ByteSize,
) -> Result<crate::spec::GuestSpec, String> {
    serde_json::from_value(json!({
        "customer": TEMPLATE_CUSTOMER,
        "hostname": TEMPLATE_HOSTNAME,
        "name": template_name(hash, storage, rootfs.bytes()),
        "vmid": "next_free",
        "golden": golden,
        "node": node,
        "storage": storage,
        "rootfs_size": rootfs.to_string(),
        "bridge": "vmbr0",
        "mounts": [],
        "pool": null,
        "tags": [],
        "identity": "provision",
    }))
    .map_err(|e| format!("template spec: {e}"))
}

/// The journal's published template of `golden` on `node` and `storage`, if any. `name`:
/// only that template ([`template_name`]); `max_bytes`: only a template whose rootfs is no
/// larger (a linked clone cannot be smaller than its base), the largest such, then the
/// newest.
/// Whether a template a guest of `s` can be linked-cloned from is recorded on `node` (its
/// golden and storage, a rootfs no larger than the guest's).
pub fn has_template_for(journal: &Journal, node: &str, s: &crate::spec::GuestSpec) -> bool {
    recorded_template(
        journal,
        node,
        s.storage.as_str(),
        s.golden.as_str(),
        None,
        Some(s.rootfs_size.bytes()),
    )
    .ok()
    .flatten()
    .is_some()
}

pub fn recorded_template(
    journal: &Journal,
    node: &str,
    storage: &str,
    golden: &str,
    name: Option<&str>,
    max_bytes: Option<u64>,
) -> Result<Option<GuestRecord>, crate::journal::JournalError> {
    let bytes = |g: &GuestRecord| {
        g.spec["rootfs_size"]
            .as_str()
            .and_then(|s| s.parse::<crate::spec::ByteSize>().ok())
            .map_or(u64::MAX, |b| b.bytes())
    };
    Ok(journal
        .live_guests()?
        .into_iter()
        .filter(|g| g.customer == TEMPLATE_CUSTOMER && g.state == TEMPLATE_STATE)
        .filter(|g| g.node == node)
        .filter(|g| g.spec["golden"] == golden && g.spec["storage"] == storage)
        .filter(|g| name.is_none_or(|n| g.name == n))
        .filter(|g| max_bytes.is_none_or(|m| bytes(g) <= m))
        .max_by_key(|g| (bytes(g), g.vmid)))
}

/// Whether PVE's config of `vmid` is the published template of `line`.
pub fn is_published(cfg: &LxcConfig, golden: &str, storage: &str) -> bool {
    cfg.get_string("template").as_deref() == Some("1")
        && TemplateLine::of(cfg).is_some_and(|l| l.golden == golden && l.storage == storage)
}

/// The guests that still use template `vmid`'s base volume: felhom's own clones (the
/// journal's live guests whose clone step chose this template; on lvmthin a clone's volume
/// name does not show its base) and any guest on `node` whose volume names the base
/// (`<sid>:base-<vmid>-disk-<n>/vm-…`, as zfspool, btrfs and rbd name linked clones).
pub async fn clones_of(
    journal: &Journal,
    client: &pve_api::PveClient,
    node: &str,
    vmid: Vmid,
) -> Result<Vec<u32>, StepError> {
    let mut out = std::collections::BTreeSet::new();
    for g in journal.live_guests()? {
        if g.vmid != vmid.get()
            && g.node == node
            && crate::job::load_facts(journal, &g.job_id)?.template == Some(vmid.get())
        {
            out.insert(g.vmid);
        }
    }
    let base = format!(":base-{vmid}-");
    for g in client.lxc_list(node).await? {
        if g.vmid == vmid.get() || out.contains(&g.vmid) {
            continue;
        }
        let Ok(v) = Vmid::try_from(g.vmid) else {
            continue;
        };
        let Some(cfg) = guest::config_of(client, node, v).await? else {
            continue;
        };
        let linked = cfg.values.iter().any(|(k, val)| {
            let disk = k == "rootfs"
                || k.strip_prefix("mp")
                    .is_some_and(|n| n.parse::<u16>().is_ok());
            disk && val
                .as_str()
                .is_some_and(|s| s.contains(&base) && s.contains('/'))
        });
        if linked {
            out.insert(g.vmid);
        }
    }
    Ok(out.into_iter().collect())
}

impl Step for PublishStep {
    fn name(&self) -> &'static str {
        match self {
            PublishStep::Reserve => "reserve",
            PublishStep::Restore => "restore",
            PublishStep::Template => "template",
        }
    }

    fn has_undo(&self) -> bool {
        matches!(self, PublishStep::Reserve | PublishStep::Restore)
    }

    async fn observe(&self, cx: &JobCx) -> Result<Observed, StepError> {
        match self {
            PublishStep::Reserve => bringup::reserve::observe(cx).await,
            PublishStep::Restore => bringup::restore::observe(cx).await,
            PublishStep::Template => {
                let vmid = cx.vmid()?;
                let cfg = bringup::owned_config(cx, vmid).await?;
                if cfg.get_string("template").as_deref() == Some("1") {
                    record_template(cx, &cfg)?;
                    Ok(Observed::Done(json!({ "vmid": vmid.get(), "template": 1 })))
                } else {
                    Ok(Observed::NotDone)
                }
            }
        }
    }

    async fn intent(&self, cx: &JobCx) -> Result<Value, StepError> {
        match self {
            PublishStep::Reserve => bringup::reserve::intent(cx),
            PublishStep::Restore => bringup::restore::intent(cx).await,
            PublishStep::Template => Ok(json!({ "vmid": cx.vmid()?.get() })),
        }
    }

    async fn act(&self, cx: &JobCx) -> Result<(), StepError> {
        match self {
            PublishStep::Reserve => bringup::reserve::act(cx).await,
            PublishStep::Restore => bringup::restore::act(cx).await,
            PublishStep::Template => {
                let vmid = cx.vmid()?;
                bringup::owned_config(cx, vmid).await?;
                if let Some(upid) = cx.client.lxc_template(&cx.node, vmid).await? {
                    cx.wait("template", &upid).await?;
                    return Ok(());
                }
                // Not listed (yet): poll the config for `template: 1`.
                let deadline = std::time::Instant::now() + cx.config.task_timeout;
                while std::time::Instant::now() < deadline {
                    if let Some(cfg) = guest::config_of(&cx.client, &cx.node, vmid).await? {
                        if cfg.get_string("template").as_deref() == Some("1") {
                            return Ok(());
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(StepError::Refused(format!(
                    "guest {vmid} did not become a template within the task timeout"
                )))
            }
        }
    }

    async fn undo(&self, cx: &JobCx) -> Result<(), StepError> {
        match self {
            PublishStep::Reserve => bringup::reserve::undo(cx),
            PublishStep::Restore => bringup::restore::undo(cx).await,
            PublishStep::Template => Ok(()),
        }
    }
}

/// The journal's record of the template, in state [`TEMPLATE_STATE`], with its rootfs (base)
/// volume.
fn record_template(cx: &JobCx, cfg: &LxcConfig) -> Result<(), StepError> {
    let rootfs = guest::rootfs_volume(cfg);
    cx.update_facts(|f| f.rootfs = rootfs);
    bringup::record_guest(cx, TEMPLATE_STATE)?;
    Ok(())
}

/// Storage types whose container volumes can be linked-cloned from a base volume
/// (pve-storage's plugins: `volume_has_feature(clone)` on a base; audit §2 (b)).
pub const LINKABLE_STORAGE_TYPES: [&str; 4] = ["lvmthin", "zfspool", "rbd", "btrfs"];

/// The plan-time rule for a linked clone's storage: `None` when `storage_type` can.
pub fn link_clone_refusal(storage: &str, storage_type: &str) -> Option<String> {
    if LINKABLE_STORAGE_TYPES.contains(&storage_type) {
        return None;
    }
    Some(format!(
        "storage '{storage}' (type {storage_type}) cannot link-clone a container volume; strategy linked-clone needs a storage of type {} (a directory storage's clones are qcow2, which a container cannot use; thick LVM has no clones)",
        LINKABLE_STORAGE_TYPES.join(", ")
    ))
}

/// What `felhom golden publish` did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PublishReport {
    /// The template of this golden hash on this node and storage exists: nothing written.
    Exists { vmid: u32, sha256: String },
    /// A publish job ran (its outcome says whether the template now exists).
    Ran {
        sha256: String,
        #[serde(flatten)]
        report: crate::ops::JobReport,
    },
}

impl crate::ops::Felhom {
    /// Publish `golden` as a linked-clone template on `node` and `storage`, or find it.
    pub async fn publish(
        self: &std::sync::Arc<Self>,
        node: &str,
        storage: &str,
        golden: &str,
        rootfs_size: Option<crate::spec::ByteSize>,
        progress: std::sync::Arc<dyn crate::job::Progress>,
    ) -> Result<PublishReport, crate::ops::OpsError> {
        use crate::ops::OpsError;
        let st = self.client.storage_status(node, storage).await?;
        if let Some(rule) = link_clone_refusal(storage, &st.storage_type) {
            return Err(OpsError::Invalid(format!("storage: {rule}")));
        }
        let conf = self.client.vzdump_extractconfig(node, golden).await?;
        let sha256 = golden_hash(golden, &conf);
        let golden_info = self.golden_info(node, golden).await?;
        let golden_bytes = golden_info.rootfs_bytes.unwrap_or(0);
        let rootfs = match rootfs_size {
            Some(b) if b.bytes() < golden_bytes => {
                return Err(OpsError::Invalid(format!(
                "rootfs_size: {b} would shrink the golden's {} rootfs; PVE cannot shrink a disk",
                pve_api::format_disk_size(golden_bytes)
            )))
            }
            Some(b) => b,
            None => crate::spec::ByteSize::from_bytes(golden_bytes)
                .map_err(|e| OpsError::Invalid(format!("the golden's rootfs size: {e}")))?,
        };
        let name = template_name(&sha256, storage, rootfs.bytes());
        if let Some(g) = recorded_template(&self.journal, node, storage, golden, Some(&name), None)?
        {
            let v = Vmid::try_from(g.vmid).map_err(|e| OpsError::Invalid(e.to_string()))?;
            if let Some(cfg) = guest::config_of(&self.client, node, v).await? {
                if is_published(&cfg, golden, storage)
                    && TemplateLine::of(&cfg).is_some_and(|l| l.sha256 == sha256)
                {
                    return Ok(PublishReport::Exists {
                        vmid: g.vmid,
                        sha256,
                    });
                }
            }
        }
        let spec =
            template_spec(node, storage, golden, &sha256, rootfs).map_err(OpsError::Invalid)?;
        let id = crate::ops::new_job_id(crate::journal::JobKind::Publish);
        let value = serde_json::to_value(&spec).map_err(|e| OpsError::Invalid(e.to_string()))?;
        self.journal.create_job(
            &id,
            crate::journal::JobKind::Publish,
            node,
            Some(TEMPLATE_HOSTNAME),
            &value,
        )?;
        // Templates take the top of felhom's range (guests fill it from the bottom): the
        // highest VMID neither PVE nor the journal uses; the reserve step tries it first.
        let used: std::collections::BTreeSet<u32> = self
            .client
            .cluster_resources(Some(pve_api::ResourceType::Vm))
            .await?
            .into_iter()
            .filter_map(|r| r.vmid)
            .chain(self.journal.live_guests()?.into_iter().map(|g| g.vmid))
            .collect();
        let range = self.config.vmid_range;
        let vmid_hint = (range.lo.get()..=range.hi.get())
            .rev()
            .find(|v| !used.contains(v));
        let facts = crate::job::Facts {
            vmid_hint,
            golden_mac: golden_info.mac.map(|m| m.to_ascii_uppercase()),
            golden_rootfs_bytes: golden_info.rootfs_bytes,
            golden_sha256: Some(sha256.clone()),
            ..Default::default()
        };
        self.journal.record(
            &id,
            "job",
            0,
            crate::journal::Phase::Note,
            &json!({ "facts": facts }),
        )?;
        let row = self.journal.job(&id)?;
        let report = self.run_job(row, progress).await;
        Ok(PublishReport::Ran { sha256, report })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_line_round_trips_and_names_differ_per_storage() {
        let l = TemplateLine {
            sha256: "ab".repeat(32),
            golden: "local:backup/vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst".into(),
            storage: "local-lvm".into(),
        };
        let d = format!("felhom: job=pub-1 customer=felhom-template state=provisioning\n{l}\n");
        assert_eq!(TemplateLine::find(&d), Some(l));
        assert_ne!(template_name("h", "a", 1), template_name("h", "b", 1));
        assert_ne!(template_name("h", "a", 1), template_name("h", "a", 2));
        assert_ne!(golden_hash("v", "x"), golden_hash("v", "y"));
        template_spec(
            "pve",
            "local-lvm",
            "local:backup/vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst",
            "h",
            "8G".parse().unwrap(),
        )
        .unwrap();
    }
}
