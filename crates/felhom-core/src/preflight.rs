//! Preflight: is this PVE host, with this token, ready for felhom's configured work? Reads
//! only. Compares the privileges the steps need (`privileges.rs`) with what the token holds
//! (`/access/permissions`), and checks the version, the golden archive, the specs' bridges
//! (`GET /nodes/{node}/network`), the VMID range and the storage room.

use std::collections::{BTreeMap, BTreeSet};

use pve_api::ApiError;
use serde::Serialize;

use crate::ops::Felhom;
use crate::privileges::{pveum_commands, required, Scope};
use crate::spec::GuestSpec;

#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    pub path: String,
    pub needed: Vec<String>,
    pub held: Vec<String>,
    pub missing: Vec<String>,
    pub excess: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Preflight {
    pub ready: bool,
    pub paths: Vec<PathReport>,
    pub checks: Vec<Check>,
    /// What a root operator runs to grant what is missing.
    pub grant_commands: Vec<String>,
}

/// PVE releases felhom is written against (reference: 9.x sources; `/interfaces` since 8.1).
pub fn version_supported(v: &str) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    major > 8 || (major == 8 && minor >= 1)
}

/// Run preflight for the work `specs` describe, sizing storage for `guests` more guests.
/// `Err` means "cannot tell" (PVE unreachable, authentication refused).
pub async fn preflight(
    f: &Felhom,
    specs: &[GuestSpec],
    guests: u64,
) -> Result<Preflight, ApiError> {
    let scope = Scope::from_specs(specs).ok_or_else(|| ApiError::InvalidInput {
        field: "spec".into(),
        message: "preflight needs at least one guest spec to know the work".into(),
    })?;
    // Guests on every node count (one cluster read); an `auto` spec is checked on the node
    // placement would give it. Placement failing is a finding, not bad input: it may be the
    // missing grants below (no view of the golden, the storages or the nodes' memory), so
    // preflight reports it and checks the rest on the first candidate node.
    let cluster = crate::cluster::ClusterView::read(&f.client).await?;
    let mut checks = Vec::new();
    let placed =
        if specs[0].node_is_auto() {
            let candidates = crate::cluster::Placer::new(&cluster, &f.config.nodes).candidates();
            let (placed, check) = match f.resolve_nodes(&cluster, &specs[..1]).await {
                Ok(mut r) => match r.pop() {
                    Some(Ok((s, _))) => {
                        let detail = format!("node \"auto\" places the first guest on {}", s.node);
                        (
                            Some(s),
                            Check {
                                name: "placement",
                                ok: true,
                                detail,
                            },
                        )
                    }
                    Some(Err(why)) => (
                        None,
                        Check {
                            name: "placement",
                            ok: false,
                            detail: format!("node \"auto\": {why}"),
                        },
                    ),
                    None => (
                        None,
                        Check {
                            name: "placement",
                            ok: false,
                            detail: "node \"auto\": nothing placed".into(),
                        },
                    ),
                },
                Err(e) => (
                    None,
                    Check {
                        name: "placement",
                        ok: false,
                        detail: format!("node \"auto\": {e}"),
                    },
                ),
            };
            checks.push(check);
            match (placed, candidates.first()) {
                (Some(s), _) => Some(s),
                (None, Some(node)) => {
                    let mut s = specs[0].clone();
                    s.node = node
                        .parse()
                        .map_err(|e: String| ApiError::Decode { message: e })?;
                    Some(s)
                }
                (None, None) => return Err(ApiError::InvalidInput {
                    field: "node".into(),
                    message:
                        "\"auto\": no node of the cluster is online (or none of [felhom] nodes is)"
                            .into(),
                }),
            }
        } else {
            None
        };
    let first = placed.as_ref().unwrap_or(&specs[0]);
    let node = first.node.as_str();

    let version = f.client.version().await?;
    checks.push(Check {
        name: "version",
        ok: version_supported(&version.version),
        detail: format!("PVE {} (felhom supports 8.1 and later)", version.version),
    });

    let needed = required(&scope);
    let mut paths = Vec::new();
    let mut missing_any = false;
    for (path, privs) in &needed {
        let held: Vec<String> = match f.client.permissions(Some(path)).await {
            Ok(p) => p
                .get(path)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            Err(e @ ApiError::Auth { .. }) => return Err(e),
            Err(_) => Vec::new(),
        };
        let needed_list: Vec<String> = privs.keys().map(|s| s.to_string()).collect();
        let missing: Vec<String> = needed_list
            .iter()
            .filter(|p| !held.contains(p))
            .cloned()
            .collect();
        let excess: Vec<String> = held
            .iter()
            .filter(|p| !needed_list.contains(p))
            .cloned()
            .collect();
        missing_any |= !missing.is_empty();
        paths.push(PathReport {
            path: path.clone(),
            needed: needed_list,
            held,
            missing,
            excess,
        });
    }

    let golden = crate::bringup::golden_info(&f.client, node, first.golden.as_str()).await;
    checks.push(Check {
        name: "golden",
        ok: golden.is_ok(),
        detail: match &golden {
            Ok(g) => format!(
                "{} readable (rootfs {}, features {})",
                first.golden,
                g.rootfs_bytes
                    .map(pve_api::format_disk_size)
                    .unwrap_or_else(|| "?".into()),
                g.features.as_deref().unwrap_or("none")
            ),
            Err(e) => format!("{}: {e}", first.golden),
        },
    });

    // Every spec's bridge exists on the node: a guest on a missing bridge restores fine
    // and then fails to start. `GET network` is open to any token (`user => all`), so no
    // privilege is added for it; should the answer still be refused, preflight says it
    // cannot tell rather than ask for more.
    let wanted: BTreeSet<&str> = specs.iter().map(|s| s.bridge.as_str()).collect();
    checks.push(match f.client.network(node).await {
        Ok(ifaces) => {
            let have: BTreeSet<&str> = ifaces
                .iter()
                .filter(|i| i.is_bridge())
                .map(|i| i.iface.as_str())
                .collect();
            let missing: Vec<&str> = wanted.difference(&have).copied().collect();
            Check {
                name: "bridge",
                ok: missing.is_empty(),
                detail: if missing.is_empty() {
                    format!("{} present on {node}", join(&wanted))
                } else {
                    format!(
                        "bridge {} does not exist on {node} (it has: {}); a guest on it would not start",
                        missing.join(", "),
                        if have.is_empty() { "none".to_string() } else { join(&have) }
                    )
                },
            }
        }
        Err(e @ ApiError::Auth { .. }) => return Err(e),
        Err(e) => Check {
            name: "bridge",
            ok: false,
            detail: format!("cannot tell whether {} exists on {node}: {e}", join(&wanted)),
        },
    });

    // The VMID range must be free or felhom's own.
    let owned: Vec<u32> = f
        .journal
        .live_guests()
        .map_err(|e| ApiError::Decode {
            message: e.to_string(),
        })?
        .into_iter()
        .map(|g| g.vmid)
        .collect();
    let foreign: Vec<u32> = cluster
        .vmids()
        .filter(|v| {
            pve_api::Vmid::try_from(*v).is_ok_and(|v| f.config.vmid_range.contains(v))
                && !owned.contains(v)
        })
        .collect();
    checks.push(Check {
        name: "vmid_range",
        ok: foreign.is_empty(),
        detail: if foreign.is_empty() {
            format!("{} is free or felhom's", f.config.vmid_range)
        } else {
            format!(
                "guests felhom does not own sit in {}: {foreign:?}",
                f.config.vmid_range
            )
        },
    });

    // Room for `guests` more guests per target storage.
    let mut per_storage: BTreeMap<String, u64> = BTreeMap::new();
    for s in specs {
        *per_storage.entry(s.storage.to_string()).or_default() += s.rootfs_size.bytes();
        for m in &s.mounts {
            *per_storage.entry(m.storage.to_string()).or_default() += m.size.bytes();
        }
    }
    for (sid, per_guest_set) in per_storage {
        let per_guest = per_guest_set / specs.len() as u64;
        let need = per_guest * guests;
        match f.client.storage_status(node, &sid).await {
            Ok(st) => checks.push(Check {
                name: "storage_room",
                ok: st.avail >= need,
                detail: format!(
                    "{sid}: {} free, {guests} guest(s) need {}",
                    pve_api::format_disk_size(st.avail),
                    pve_api::format_disk_size(need)
                ),
            }),
            Err(e) => checks.push(Check {
                name: "storage_room",
                ok: false,
                detail: format!("{sid}: {e}"),
            }),
        }
    }

    let token = f.config.client.token.id().to_string();
    let grant_commands = if missing_any {
        grant_missing(&paths, &token)
    } else {
        Vec::new()
    };
    let ready = !missing_any && checks.iter().all(|c| c.ok);
    Ok(Preflight {
        ready,
        paths,
        checks,
        grant_commands,
    })
}

fn join(set: &BTreeSet<&str>) -> String {
    set.iter().copied().collect::<Vec<_>>().join(", ")
}

/// `pveum` lines that grant exactly what is missing (a role per path of the missing privs).
fn grant_missing(paths: &[PathReport], token: &str) -> Vec<String> {
    let user = token.split('!').next().unwrap_or(token);
    let mut out = Vec::new();
    for (i, p) in paths.iter().filter(|p| !p.missing.is_empty()).enumerate() {
        let role = format!("FelhomAgentFix{i}");
        out.push(format!(
            "pveum role add {role} -privs \"{}\"",
            p.missing.join(",")
        ));
        let propagate = if crate::privileges::propagates(&p.path) {
            " -propagate 1"
        } else {
            ""
        };
        out.push(format!(
            "pveum acl modify {} -user {user} -role {role}{propagate}",
            p.path
        ));
        out.push(format!(
            "pveum acl modify {} -token '{token}' -role {role}{propagate}",
            p.path
        ));
    }
    out
}

/// The full role and ACL setup for a fresh host (`felhom role`).
pub fn role_commands(specs: &[GuestSpec], token: &str) -> Option<Vec<String>> {
    Scope::from_specs(specs).map(|s| pveum_commands(&s, token))
}
