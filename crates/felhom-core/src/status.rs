//! Status and drift: for each guest felhom owns, compare what PVE shows with the spec and
//! with what the journal recorded at bring-up (MAC, hostname, size, mounts, running, IP,
//! SSH host key), and say what drifted. The guest is read once ([`crate::guest`]); each
//! bring-up step judges its own part of it ([`bringup::BringupStep::drift`]), so `status`
//! checks exactly what the steps make. Each guest is read on the node `/cluster/resources`
//! says it lives on (one read per call): a guest migrated outside felhom is followed.

use pve_api::Vmid;
use serde::Serialize;

use crate::bringup::{self, GuestView};
use crate::guest;
use crate::journal::GuestRecord;
use crate::ops::{Felhom, OpsError};
use crate::spec::GuestSpec;

pub use crate::bringup::Drift;

#[derive(Debug, Clone, Serialize)]
pub struct GuestStatus {
    pub vmid: u32,
    /// customer/name
    pub identity: String,
    pub hostname: String,
    pub node: String,
    pub job: String,
    /// `running`, `stopped`, or `missing` when PVE no longer has the guest.
    pub status: String,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub ssh_fingerprint: Option<String>,
    pub drift: Vec<Drift>,
}

pub async fn status(f: &Felhom, vmids: &[Vmid]) -> Result<Vec<GuestStatus>, OpsError> {
    // Active guests and half-built ones (a bring-up that has not finished): both are
    // felhom's on PVE, and a person must see both.
    let mut guests: Vec<GuestRecord> = f.journal.live_guests()?;
    if !vmids.is_empty() {
        for v in vmids {
            if !guests.iter().any(|g| g.vmid == v.get()) {
                return Err(OpsError::Invalid(format!("felhom owns no live guest {v}")));
            }
        }
        guests.retain(|g| vmids.iter().any(|v| v.get() == g.vmid));
    }
    // Two live guests with one identity: felhom made the same guest twice.
    let mut by_identity: std::collections::BTreeMap<(String, String), Vec<u32>> =
        Default::default();
    for g in &guests {
        by_identity
            .entry((g.customer.clone(), g.name.clone()))
            .or_default()
            .push(g.vmid);
    }
    // Where each guest lives now: one cluster read, so a guest migrated outside felhom is
    // read on its new node (a config read on the old one would say "does not exist").
    let cluster = if guests.is_empty() {
        Default::default()
    } else {
        crate::cluster::ClusterView::read(&f.client).await?
    };
    let mut out = Vec::new();
    for mut g in guests {
        if let Some(n) = cluster.node_of(g.vmid) {
            g.node = n.to_string();
        }
        let twins: Vec<String> = by_identity[&(g.customer.clone(), g.name.clone())]
            .iter()
            .filter(|v| **v != g.vmid)
            .map(u32::to_string)
            .collect();
        let mut st = if g.state == "active" {
            one(f, g).await?
        } else if g.state == crate::publish::TEMPLATE_STATE {
            template(f, g).await?
        } else {
            half_built(f, g).await?
        };
        if !twins.is_empty() {
            st.drift.push(Drift::new(
                "identity",
                format!("one guest {}", st.identity),
                format!("also VMID {}", twins.join(", ")),
            ));
        }
        out.push(st);
    }
    Ok(out)
}

/// A published linked-clone template (`crate::publish`): still a template carrying its
/// `felhom-template:` line for the golden and storage it was published for.
async fn template(f: &Felhom, g: GuestRecord) -> Result<GuestStatus, OpsError> {
    let vmid = Vmid::try_from(g.vmid).map_err(|e| OpsError::Invalid(e.to_string()))?;
    let cfg = guest::config_of(&f.client, &g.node, vmid).await?;
    let golden = g.spec["golden"].as_str().unwrap_or_default();
    let storage = g.spec["storage"].as_str().unwrap_or_default();
    let (status, drift) = match &cfg {
        None => (
            "missing".to_string(),
            vec![Drift::new(
                "template",
                format!("template {vmid}"),
                "missing",
            )],
        ),
        Some(c) if crate::publish::is_published(c, golden, storage) => {
            ("template".to_string(), Vec::new())
        }
        Some(_) => (
            "not a template".to_string(),
            vec![Drift::new(
                "template",
                format!("template: 1, felhom-template: golden={golden} storage={storage}"),
                "a guest that is not that template",
            )],
        ),
    };
    Ok(GuestStatus {
        vmid: g.vmid,
        identity: format!("{}/{}", g.customer, g.name),
        hostname: g.hostname,
        node: g.node,
        job: g.job_id,
        status,
        ip: None,
        mac: g.mac,
        ssh_fingerprint: None,
        drift,
    })
}

/// A guest whose bring-up has not finished: which job owns it and where that job stands.
/// Drift unless that job is running right now in a live felhom process.
async fn half_built(f: &Felhom, g: GuestRecord) -> Result<GuestStatus, OpsError> {
    let vmid = Vmid::try_from(g.vmid).map_err(|e| OpsError::Invalid(e.to_string()))?;
    let job = f.journal.job(&g.job_id).ok();
    let job_state = job
        .as_ref()
        .map(|j| j.display_state().to_string())
        .unwrap_or_else(|| "unknown".into());
    let on_pve = guest::config_of(&f.client, &g.node, vmid).await?.is_some();
    let status = if on_pve {
        f.client.lxc_status(&g.node, vmid).await?.status
    } else {
        "missing".into()
    };
    let live = job
        .as_ref()
        .is_some_and(|j| matches!(j.liveness(), crate::journal::Liveness::Live { .. }));
    let drift = if live {
        Vec::new()
    } else {
        vec![Drift::new(
            "half_built",
            "provisioned",
            format!(
                "job {} is {job_state} (`felhom apply` continues it, `felhom teardown {}` removes it)",
                g.job_id, g.vmid
            ),
        )]
    };
    Ok(GuestStatus {
        vmid: g.vmid,
        identity: format!("{}/{}", g.customer, g.name),
        hostname: g.hostname,
        node: g.node,
        job: g.job_id,
        status: format!("half-built ({status})"),
        ip: g.ip,
        mac: g.mac,
        ssh_fingerprint: g.ssh_fingerprint,
        drift,
    })
}

async fn one(f: &Felhom, g: GuestRecord) -> Result<GuestStatus, OpsError> {
    let vmid = Vmid::try_from(g.vmid).map_err(|e| OpsError::Invalid(e.to_string()))?;
    let spec: Option<GuestSpec> = serde_json::from_value(g.spec.clone()).ok();
    let base = GuestStatus {
        vmid: g.vmid,
        identity: format!("{}/{}", g.customer, g.name),
        hostname: g.hostname.clone(),
        node: g.node.clone(),
        job: g.job_id.clone(),
        status: "missing".into(),
        ip: None,
        mac: None,
        ssh_fingerprint: None,
        drift: Vec::new(),
    };
    let Some(cfg) = guest::config_of(&f.client, &g.node, vmid).await? else {
        return Ok(GuestStatus {
            drift: vec![Drift::new("exists", "guest present", "missing from PVE")],
            ..base
        });
    };
    let guest::Live {
        status,
        ip,
        ssh_fingerprint: fp,
    } = guest::live(&f.client, &f.config, &g.node, vmid).await?;
    let view = GuestView {
        spec: spec.as_ref(),
        record: &g,
        cfg: &cfg,
        status: &status,
        ip: ip.as_deref(),
        ssh_fingerprint: fp.as_deref(),
    };
    let drift = bringup::STEPS.iter().flat_map(|s| s.drift(&view)).collect();
    Ok(GuestStatus {
        status: status.clone(),
        ip,
        mac: guest::mac_of(&cfg),
        ssh_fingerprint: fp,
        drift,
        ..base
    })
}
