//! Step 3, identity: the guest's net0 MAC is the one felhom chose (never the golden's, never
//! another guest's on the node: seed F1) and its hostname is the spec's; under the DR policy
//! the archived MAC and hostname are kept instead ([`crate::identity`] decides which). net0's
//! other keys felhom manages — `bridge`, `tag`, `ip`, `gw`, `ip6`, `gw6`, `firewall` — are
//! the spec's ([`GuestSpec::net0_keys`]); the restore request already set them, so this step
//! acts only on a guest that drifted.
//! Act: one `PUT config` of net0 (every key felhom does not manage kept) and hostname, with
//! the digest of the config it was decided on.

use std::collections::HashSet;

use pve_api::{ApiError, MacAddr, NetConfig, Vmid};
use serde_json::{json, Value};

use super::{net0_of, owned_config, spec, Drift, GuestView, PlanCx};
use crate::guest;
use crate::identity::{HostnameAction, IdentityPolicy, MacAction};
use crate::job::{Facts, JobCx, Observed, StepError};
use crate::spec::{GuestSpec, Ipv4Setting, Ipv6Setting};

/// PVE's default MAC prefix (Proxmox OUI, `datacenter.cfg mac_prefix`, reference §3.3).
pub const MAC_PREFIX: [u8; 3] = [0xBC, 0x24, 0x11];

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    let cfg = owned_config(cx, vmid).await?;
    let f = cx.facts();
    let mac = guest::mac_of(&cfg);
    let policy = IdentityPolicy::named(s.identity);
    let hostname_ok = match policy.hostname() {
        HostnameAction::FromSpec => cfg.get_str("hostname") == Some(s.hostname.as_str()),
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
    let net_ok = net0_drift(net0_of(&cfg)?.as_ref(), s).is_empty();
    if hostname_ok && mac_ok && net_ok {
        // A read that began after this guest's marker was visible (see
        // one_guest_per_identity), shared with the other guests in flight: the marker came
        // with the restore's end, which this process's task look saw (`restored_at`: when
        // that look's answer came back, shared by the restores it saw end), so a read
        // started since will do. Not the look's send time: the task may end between the
        // send and the node's answer, and a read started before the marker showed could
        // miss another process's twin while that one's read missed this guest.
        let since = cx
            .shortcuts
            .restored_at()
            .unwrap_or_else(std::time::Instant::now);
        let scan = scan_cluster(cx, Some(vmid), since).await?;
        if cx.owner_job() == cx.job_id {
            one_guest_per_identity(vmid, s, &scan.twins)?;
        }
        let taken = scan.macs;
        if !taken.contains(mac.as_deref().unwrap_or_default()) {
            return Ok(Observed::Done(
                json!({ "mac": mac, "hostname": s.hostname }),
            ));
        }
    }
    Ok(Observed::NotDone)
}

pub(super) fn intent(cx: &JobCx) -> Result<Value, StepError> {
    let s = spec(cx)?;
    Ok(json!({ "hostname": s.hostname, "mac": cx.facts().mac, "net0": describe_net0(s) }))
}

pub(super) async fn act(cx: &JobCx) -> Result<(), StepError> {
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
    // Keep every net0 key felhom does not manage; the managed ones are the spec's, and the
    // MAC is always given (a net0 without hwaddr would mint yet another one, reference §3.3).
    let net0 = s
        .net0(net0_of(&cfg)?.as_ref(), &mac)
        .map_err(|e| StepError::Refused(format!("net0: {e}")))?;
    let mut params = vec![("net0".to_string(), net0.to_string())];
    if policy.hostname() == HostnameAction::FromSpec {
        params.push(("hostname".to_string(), s.hostname.to_string()));
    }
    cx.client
        .lxc_update_config(&cx.node, vmid, &params, cfg.digest.as_deref())
        .await
        .map_err(modified_is_not_yet)
}

/// Someone changed the config between our read and our write (PVE's digest check,
/// reference §3.2): observe again rather than fail.
pub(super) fn modified_is_not_yet(e: ApiError) -> StepError {
    match e {
        ApiError::ConfigModified { message } => StepError::NotYet(message),
        e => e.into(),
    }
}

/// Several felhom processes (each with its own journal) may bring up one identity at the same
/// time: each decided `create` before the other's guest carried its marker. PVE is the only
/// shared truth, so the bring-up settles it there, after its own restore made its marker
/// visible and before its guest ever starts: it reads every guest's marker (the same cluster
/// scan as the MAC check) and, finding another guest of its identity made by another job,
/// - that guest has the lower VMID, or it finished its bring-up (`state=provisioned`): this
///   one yields — refused, so the bring-up rolls back and destroys its own guest;
/// - else (higher VMID, still provisioning): not yet — that process sees this guest when it
///   gets here and yields; this one waits (the step's retries, then it pauses).
///
/// Each process writes (its marker) before it reads (this scan), so of two racing bring-ups
/// at least one sees the other: never both keep a guest. Both may yield only if the lower one
/// gives up waiting; a re-run then makes the one guest.
fn one_guest_per_identity(
    vmid: Vmid,
    s: &GuestSpec,
    twins: &[(u32, crate::marker::Marker)],
) -> Result<(), StepError> {
    let id = s.identity_key();
    for (other, m) in twins {
        if m.customer != id.customer || m.name.as_deref().unwrap_or_default() != id.name {
            continue;
        }
        if *other < vmid.get() || m.state == crate::marker::MarkerState::Provisioned {
            return Err(StepError::Refused(format!(
                "identity {id} is already guest {other}, made by felhom job {} (another felhom process); this bring-up yields and removes its own guest {vmid}",
                m.job
            )));
        }
        return Err(StepError::NotYet(format!(
            "guest {other} (felhom job {}, another felhom process) is bringing up {id} too; waiting for it to yield to guest {vmid}",
            m.job
        )));
    }
    Ok(())
}

/// What one scan of the cluster's guests found: MACs in use, and felhom's markers on guests
/// this journal has no record of (another felhom process's guests).
pub(super) struct ClusterScan {
    pub macs: HashSet<String>,
    pub twins: Vec<(u32, crate::marker::Marker)>,
}

/// MACs in use on any node of the cluster, other than `except`'s, plus the golden's (F1: every guest
/// restored without a reset would share the golden's MAC).
pub(super) async fn taken_macs(
    cx: &JobCx,
    except: Option<Vmid>,
) -> Result<HashSet<String>, StepError> {
    let since = std::time::Instant::now()
        .checked_sub(SHARED_READ_AGE)
        .unwrap_or_else(std::time::Instant::now);
    Ok(scan_cluster(cx, except, since).await?.macs)
}

/// How old a shared cluster read may be for a MAC choice (MACs are random: a guest made
/// meanwhile collides with a chance of one in 2^24, and the identity step checks again).
const SHARED_READ_AGE: std::time::Duration = std::time::Duration::from_millis(500);

/// [`taken_macs`] with the unrecorded guests' markers, from a cluster read started at or
/// after `since`.
pub(super) async fn scan_cluster(
    cx: &JobCx,
    except: Option<Vmid>,
    since: std::time::Instant,
) -> Result<ClusterScan, StepError> {
    let mut twins = Vec::new();
    let mut taken = HashSet::new();
    // Under the provision policy the golden's MAC is never a guest's (F1); a DR restore
    // keeps the archived MAC on purpose.
    let fresh = spec(cx)
        .is_ok_and(|s| IdentityPolicy::named(s.identity).mac() == MacAction::FreshAtRestore);
    if let (true, Some(g)) = (fresh, cx.facts().golden_mac) {
        taken.insert(g.to_ascii_uppercase());
    }
    // Every node's guests (one cluster read): a MAC is unique across the cluster.
    let cluster = crate::cluster::ClusterView::read_shared(
        &cx.client,
        cx.config.client.base_url.as_str(),
        since,
    )
    .await?;
    // The journal after the read: every guest of this process the read shows was recorded
    // before it (a job records its guest before the restore's POST). Read before, the
    // records of guests made while this scan waited for its shared read were missing, and
    // each scan then read those guests' configs.
    let recorded = cx.journal.live_guest_macs()?;
    for (vmid, at) in cluster.guests() {
        if Some(vmid) == except.map(|v| v.get()) {
            continue;
        }
        // A down node's guests cannot be read until it is back.
        if !cluster.node_online(&at.node) && cluster.node_names().next().is_some() {
            continue;
        }
        if let Some(rec) = recorded.get(&vmid) {
            if let Some(mac) = &rec.mac {
                taken.insert(mac.to_ascii_uppercase());
            }
            // This process's guest: past provisioning, or its create accepted here. A
            // provisioning record alone may be a claim PVE is about to refuse, the guest at
            // the VMID another process's: its marker is read.
            if !rec.provisioning || cx.made_here(vmid) {
                continue;
            }
        }
        let Ok(v) = Vmid::try_from(vmid) else {
            continue;
        };
        if let Some(cfg) = guest::config_of(&cx.client, &at.node, v).await? {
            taken.extend(guest::all_macs(&cfg));
            if let Some(m) = guest::marker_of(&cfg) {
                twins.push((vmid, m));
            }
        }
    }
    Ok(ClusterScan { macs: taken, twins })
}

pub(super) fn fresh_mac(taken: &HashSet<String>) -> String {
    loop {
        let mac = MacAddr::random(&MAC_PREFIX)
            .to_string()
            .to_ascii_uppercase();
        if !taken.contains(&mac) {
            return mac;
        }
    }
}

/// The managed net0 keys where `have` differs from the spec (`None`: no net0 at all).
/// Addresses are compared as addresses, `firewall=0` as no firewall.
pub(super) fn net0_drift(have: Option<&NetConfig>, s: &GuestSpec) -> Vec<Drift> {
    let mut out = Vec::new();
    for (key, want) in s.net0_keys() {
        let got = have.and_then(|n| match key {
            "bridge" => n.bridge.clone(),
            "ip" => n.ip.clone(),
            k => n.other.get(k).cloned(),
        });
        let got = got
            .map(|v| canonical(key, &v))
            .filter(|v| !(key == "firewall" && v == "0"));
        if got != want {
            out.push(Drift::new(
                net0_field(key),
                want.unwrap_or_else(|| "-".into()),
                got.unwrap_or_default(),
            ));
        }
    }
    out
}

/// A net0 value in the form the spec renders it (an address PVE kept as written, such as
/// `2001:DB8::5/64`, compares equal to `2001:db8::5/64`).
fn canonical(key: &str, v: &str) -> String {
    let parsed = match key {
        "ip" => v.parse::<Ipv4Setting>().ok().map(|x| x.to_string()),
        "ip6" => v.parse::<Ipv6Setting>().ok().map(|x| x.to_string()),
        "gw" => v.parse::<std::net::Ipv4Addr>().ok().map(|x| x.to_string()),
        "gw6" => v.parse::<std::net::Ipv6Addr>().ok().map(|x| x.to_string()),
        _ => None,
    };
    parsed.unwrap_or_else(|| v.to_string())
}

fn net0_field(key: &str) -> &'static str {
    match key {
        "bridge" => "net0.bridge",
        "tag" => "net0.tag",
        "ip" => "net0.ip",
        "gw" => "net0.gw",
        "ip6" => "net0.ip6",
        "gw6" => "net0.gw6",
        "firewall" => "net0.firewall",
        _ => "net0",
    }
}

/// net0 as `plan` and the restore step's plan line name it.
pub(super) fn describe_net0(s: &GuestSpec) -> String {
    let mut parts = vec![format!("on {}", s.bridge)];
    if let Some(t) = s.tag {
        parts.push(format!("VLAN {t}"));
    }
    parts.push(match (s.ipv4(), s.gw) {
        (Ipv4Setting::Dhcp, _) => "IPv4 by DHCP".to_string(),
        (ip, Some(gw)) => format!("{ip} via {gw}"),
        (ip, None) => ip.to_string(),
    });
    if let Some(ip6) = s.ip6 {
        parts.push(match s.gw6 {
            Some(gw) => format!("{ip6} via {gw}"),
            None => format!("IPv6 {ip6}"),
        });
    }
    if s.firewall == Some(true) {
        parts.push("firewall on".into());
    }
    parts.join(", ")
}

pub(super) fn plan(p: &PlanCx) -> Vec<String> {
    let policy = IdentityPolicy::named(p.spec.identity);
    let net = format!("; net0 {}", describe_net0(p.spec));
    vec![match (policy.mac(), policy.hostname()) {
        (MacAction::FreshAtRestore, HostnameAction::FromSpec) => format!(
            "verify the MAC is felhom's, unique on {} and not the golden's; hostname {}{net}",
            p.spec.node, p.spec.hostname
        ),
        _ => format!(
            "verify the archived MAC is not in use by another guest on {} (DR){net}",
            p.spec.node
        ),
    }]
}

/// MAC against the record, hostname against the spec.
pub(super) fn drift(v: &GuestView) -> Vec<Drift> {
    let mut d = Vec::new();
    let mac = guest::mac_of(v.cfg);
    let same = match (mac.as_deref(), v.record.mac.as_deref()) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        (None, None) => true,
        _ => false,
    };
    if !same {
        d.push(Drift::new(
            "mac",
            v.record.mac.clone().unwrap_or_default(),
            mac.unwrap_or_default(),
        ));
    }
    if let Some(spec) = v.spec {
        match guest::net0_of(v.cfg) {
            Ok(n) => d.extend(net0_drift(n.as_ref(), spec)),
            Err(e) => d.push(Drift::new("net0", "a valid net0", e)),
        }
        if IdentityPolicy::named(spec.identity).hostname() == HostnameAction::FromSpec {
            let host = v.cfg.get_str("hostname").unwrap_or_default();
            if host != spec.hostname.as_str() {
                d.push(Drift::new("hostname", spec.hostname.as_str(), host));
            }
        }
    }
    d
}
