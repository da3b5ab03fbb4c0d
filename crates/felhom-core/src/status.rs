//! Status and drift: for each guest felhom owns, compare what PVE shows with the spec and
//! with what the journal recorded at bring-up (MAC, hostname, size, mounts, running, IP,
//! SSH host key), and say what drifted.

use std::time::Duration;

use pve_api::{ApiError, Vmid};
use serde::Serialize;

use crate::config::SshEndpoint;
use crate::journal::GuestRecord;
use crate::marker::Marker;
use crate::ops::{Felhom, OpsError};
use crate::spec::GuestSpec;

#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub field: &'static str,
    pub expected: String,
    pub actual: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GuestStatus {
    pub vmid: u32,
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

fn drift(
    out: &mut Vec<Drift>,
    field: &'static str,
    expected: impl Into<String>,
    actual: impl Into<String>,
) {
    out.push(Drift {
        field,
        expected: expected.into(),
        actual: actual.into(),
    });
}

pub async fn status(f: &Felhom, vmids: &[Vmid]) -> Result<Vec<GuestStatus>, OpsError> {
    let mut guests: Vec<GuestRecord> = f
        .journal
        .live_guests()?
        .into_iter()
        .filter(|g| g.state == "active")
        .collect();
    if !vmids.is_empty() {
        for v in vmids {
            if !guests.iter().any(|g| g.vmid == v.get()) {
                return Err(OpsError::Invalid(format!("felhom owns no live guest {v}")));
            }
        }
        guests.retain(|g| vmids.iter().any(|v| v.get() == g.vmid));
    }
    let mut out = Vec::new();
    for g in guests {
        out.push(one(f, g).await?);
    }
    Ok(out)
}

async fn one(f: &Felhom, g: GuestRecord) -> Result<GuestStatus, OpsError> {
    let mut d = Vec::new();
    let vmid = Vmid::try_from(g.vmid).map_err(|e| OpsError::Invalid(e.to_string()))?;
    let spec: Option<GuestSpec> = serde_json::from_value(g.spec.clone()).ok();
    let base = GuestStatus {
        vmid: g.vmid,
        hostname: g.hostname.clone(),
        node: g.node.clone(),
        job: g.job_id.clone(),
        status: "missing".into(),
        ip: None,
        mac: None,
        ssh_fingerprint: None,
        drift: Vec::new(),
    };
    let cfg = match f.client.lxc_config(&g.node, vmid).await {
        Ok(c) => c,
        Err(ApiError::NotFound { .. }) => {
            drift(&mut d, "exists", "guest present", "missing from PVE");
            return Ok(GuestStatus { drift: d, ..base });
        }
        Err(e) => return Err(e.into()),
    };
    match cfg.get_str("description").and_then(Marker::find) {
        Some(m) if m.job == g.job_id => {}
        Some(m) => drift(
            &mut d,
            "marker",
            format!("job={}", g.job_id),
            format!("job={}", m.job),
        ),
        None => drift(
            &mut d,
            "marker",
            format!("job={}", g.job_id),
            "no felhom marker",
        ),
    }
    let mac = cfg
        .net(0)
        .and_then(Result::ok)
        .and_then(|n| n.hwaddr)
        .map(|m| m.to_string());
    if !eq_ci(mac.as_deref(), g.mac.as_deref()) {
        drift(
            &mut d,
            "mac",
            g.mac.clone().unwrap_or_default(),
            mac.clone().unwrap_or_default(),
        );
    }
    if let Some(spec) = &spec {
        let host = cfg.get_str("hostname").unwrap_or_default();
        if host != spec.hostname.as_str() {
            drift(&mut d, "hostname", spec.hostname.as_str(), host);
        }
        let size = cfg
            .mount("rootfs")
            .and_then(Result::ok)
            .and_then(|m| m.size)
            .unwrap_or(0);
        if size < spec.rootfs_size.bytes() {
            drift(
                &mut d,
                "rootfs_size",
                spec.rootfs_size.to_string(),
                pve_api::format_disk_size(size),
            );
        }
        for m in &spec.mounts {
            let found = (0..256)
                .filter_map(|n| cfg.mount(&format!("mp{n}")).and_then(Result::ok))
                .find(|mc| mc.mp.as_deref() == Some(m.path.as_str()));
            match found {
                None => drift(
                    &mut d,
                    "mount",
                    format!("{} ({})", m.path, m.size),
                    "absent",
                ),
                Some(mc) if mc.size.unwrap_or(0) < m.size.bytes() => drift(
                    &mut d,
                    "mount",
                    format!("{} ({})", m.path, m.size),
                    pve_api::format_disk_size(mc.size.unwrap_or(0)),
                ),
                Some(_) => {}
            }
        }
    }
    let st = f.client.lxc_status(&g.node, vmid).await?;
    if st.status != "running" {
        drift(&mut d, "running", "running", st.status.clone());
    }
    let mut ip = None;
    let mut fp = None;
    if st.status == "running" {
        if let Some(ifaces) = f.client.lxc_interfaces(&g.node, vmid).await? {
            ip = ifaces
                .iter()
                .find(|i| i.name == "eth0")
                .and_then(|i| i.inet.clone())
                .map(|a| a.split('/').next().unwrap_or(&a).to_string());
        }
        if ip != g.ip {
            drift(
                &mut d,
                "ip",
                g.ip.clone().unwrap_or_default(),
                ip.clone().unwrap_or_default(),
            );
        }
        let endpoint = match f.config.ssh_endpoint {
            SshEndpoint::Direct => ip.clone().map(|ip| (ip, 22)),
            SshEndpoint::Sim => f
                .client
                .get_outside_api::<serde_json::Value>(&format!("/felhom-sim/guests/{vmid}/ssh"))
                .await
                .ok()
                .and_then(|v| {
                    Some((
                        "127.0.0.1".to_string(),
                        u16::try_from(v.get("port")?.as_u64()?).ok()?,
                    ))
                }),
        };
        if let Some((host, port)) = endpoint {
            fp = crate::ssh_probe::host_key_fingerprint(&host, port, Duration::from_secs(5))
                .await
                .ok();
        }
        if fp != g.ssh_fingerprint {
            drift(
                &mut d,
                "ssh_host_key",
                g.ssh_fingerprint.clone().unwrap_or_default(),
                fp.clone().unwrap_or_else(|| "unreachable".into()),
            );
        }
    }
    Ok(GuestStatus {
        status: st.status,
        ip,
        mac,
        ssh_fingerprint: fp,
        drift: d,
        ..base
    })
}

fn eq_ci(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        (None, None) => true,
        _ => false,
    }
}
