//! The privileges felhom's work needs, derived from the steps that do the work (each step
//! says what its calls require, per reference §2.4, §3.5, §5, §6, §8), not from a hand-kept
//! list. `preflight` compares them with what the token holds; `role` prints the grants.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::bringup::BringupStep;
use crate::spec::GuestSpec;
use crate::teardown::TeardownStep;

/// One required privilege on one ACL path, with the reason (the step and call that needs it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Need {
    pub path: String,
    pub privilege: &'static str,
    pub why: String,
}

/// The paths felhom's work touches, for one configured host and its specs.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The ACL path standing for felhom's VMIDs: `/pool/<pool>` when the specs use a pool,
    /// else `/vms` (granted with propagate, so it covers the range).
    pub vms: String,
    pub target_storages: BTreeSet<String>,
    pub backup_storage: String,
    pub golden_owner: Option<u32>,
    pub bridges: BTreeSet<String>,
    pub pool: Option<String>,
    /// The config keys beyond net0 some spec sets (`cores`, `memory`, …): each needs its own
    /// privilege, and only a spec that sets it makes felhom ask for it.
    pub settings: BTreeSet<&'static str>,
    /// Some spec leaves its node to felhom (`node = "auto"`, or none): placement reads the
    /// nodes' memory in `/cluster/resources`, which PVE shows only with `Sys.Audit` on
    /// `/nodes/<node>` (pve-manager `API2/Cluster.pm` resources, `extract_node_stats` with
    /// `exclude_stats`); without it every node looks alike and placement goes by running
    /// guests and name alone.
    pub placement: bool,
}

/// The privilege PVE checks for a config key felhom's settings write (reference §3.5).
pub fn setting_privilege(key: &str) -> &'static str {
    match key {
        "cores" => "VM.Config.CPU",
        "memory" | "swap" => "VM.Config.Memory",
        "nameserver" | "searchdomain" => "VM.Config.Network",
        _ => "VM.Config.Options",
    }
}

impl Scope {
    pub fn from_specs(specs: &[GuestSpec]) -> Option<Scope> {
        let first = specs.first()?;
        let pool = first.pool.as_ref().map(|p| p.to_string());
        Some(Scope {
            vms: pool
                .as_ref()
                .map(|p| format!("/pool/{p}"))
                .unwrap_or_else(|| "/vms".into()),
            target_storages: specs
                .iter()
                .flat_map(|s| {
                    std::iter::once(s.storage.to_string())
                        .chain(s.mounts.iter().map(|m| m.storage.to_string()))
                })
                .collect(),
            backup_storage: first.golden.storage().to_string(),
            golden_owner: first.golden.owner_vmid(),
            bridges: specs.iter().map(|s| s.bridge.to_string()).collect(),
            pool,
            settings: specs
                .iter()
                .flat_map(|s| s.settings().into_iter().map(|(k, _)| k))
                .collect(),
            placement: specs.iter().any(GuestSpec::node_is_auto),
        })
    }
}

fn need(out: &mut Vec<Need>, path: &str, privilege: &'static str, why: impl Into<String>) {
    out.push(Need {
        path: path.to_string(),
        privilege,
        why: why.into(),
    });
}

/// What a bring-up step's calls require.
pub fn bringup_needs(step: BringupStep, sc: &Scope) -> Vec<Need> {
    let mut n = Vec::new();
    let vms = sc.vms.as_str();
    match step {
        BringupStep::Reserve => need(&mut n, vms, "VM.Audit", "reserve: list guests and read configs (GET /nodes/{node}/lxc lists only VM.Audit guests)"),
        BringupStep::Restore => {
            need(&mut n, vms, "VM.Allocate", "restore: POST /nodes/{node}/lxc restore=1 (reference §2.4)");
            need(&mut n, vms, "VM.Config.Network", "restore: hostname and net0 in the request (§3.5)");
            need(&mut n, vms, "VM.Config.Options", "restore: description (the ownership marker) in the request (§3.5)");
            need(&mut n, vms, "VM.Config.Disk", "restore: rootfs=<sid>:<GiB> and mpN=<sid>:<GiB>,mp=<path> in the request (strategy restore, the default; checked per key, the pool's grant first; audit §2(a))");
            for s in &sc.target_storages {
                need(&mut n, &format!("/storage/{s}"), "Datastore.AllocateSpace", "restore/mounts: allocate the rootfs and mount volumes on the target storage (create_disks; the storage must allow rootdir)");
            }
            need(&mut n, &format!("/storage/{}", sc.backup_storage), "Datastore.AllocateSpace", "restore: read the golden archive (check_volume_access)");
            if let Some(owner) = sc.golden_owner {
                need(&mut n, &format!("/vms/{owner}"), "VM.Backup", "restore: the golden archive belongs to another VMID (check_volume_access, §2.4)");
            }
            for b in &sc.bridges {
                need(&mut n, &format!("/sdn/zones/localnetwork/{b}"), "SDN.Use", "restore/identity: net0 on this bridge (check_vnet_access; with a VLAN tag PVE checks …/<bridge>/<tag>, which this grant covers as it propagates)");
            }
            for k in &sc.settings {
                need(&mut n, vms, setting_privilege(k), format!("restore: {k} in the request (§3.5)"));
            }
            need(&mut n, vms, "VM.Clone", "restore (strategy linked-clone): POST /nodes/{node}/lxc/{template}/clone on felhom's published template (VM.Allocate on the new VMID, Datastore.AllocateSpace on the base's storage and SDN.Use on the bridge as above; audit §2(b))");
            need(&mut n, vms, "VM.PowerMgmt", "undo restore: stop the guest before destroying it");
        }
        BringupStep::Identity => {
            need(&mut n, vms, "VM.Audit", "identity: GET config");
            need(&mut n, vms, "VM.Config.Network", "identity: PUT net0 + hostname");
        }
        BringupStep::Settings => {
            need(&mut n, vms, "VM.Audit", "settings: GET config");
            for k in &sc.settings {
                need(&mut n, vms, setting_privilege(k), format!("settings: PUT {k} (§3.5)"));
            }
        }
        BringupStep::Rootfs => {
            need(&mut n, vms, "VM.Config.Disk", "rootfs: PUT resize");
            need(&mut n, vms, "VM.Config.Options", "rootfs: resize also checks VM.Config.Options for the 'disk' key (reference §5 quirk)");
        }
        BringupStep::Mounts => need(&mut n, vms, "VM.Config.Disk", "mounts: PUT config mpN"),
        BringupStep::Start => need(&mut n, vms, "VM.PowerMgmt", "start: POST status/start"),
        BringupStep::Linkup => need(&mut n, vms, "VM.Audit", "linkup: GET interfaces"),
        BringupStep::Ssh => {}
        BringupStep::Finish => need(&mut n, vms, "VM.Config.Options", "finish: PUT tags + description"),
    }
    n
}

/// What a teardown step's calls require.
pub fn teardown_needs(step: TeardownStep, sc: &Scope) -> Vec<Need> {
    let mut n = Vec::new();
    let vms = sc.vms.as_str();
    match step {
        TeardownStep::Lease | TeardownStep::Forget => {}
        TeardownStep::Check => need(&mut n, vms, "VM.Audit", "teardown: read the marker"),
        TeardownStep::Stop => need(&mut n, vms, "VM.PowerMgmt", "teardown: stop"),
        TeardownStep::Destroy => need(
            &mut n,
            vms,
            "VM.Allocate",
            "teardown/undo restore: DELETE with purge",
        ),
    }
    n
}

/// Everything felhom's configured work needs, merged per path: path → privilege → reasons.
pub fn required(sc: &Scope) -> BTreeMap<String, BTreeMap<&'static str, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<&'static str, Vec<String>>> = BTreeMap::new();
    let mut all: Vec<Need> = crate::bringup::STEPS
        .iter()
        .flat_map(|s| bringup_needs(*s, sc))
        .collect();
    all.extend(
        crate::teardown::STEPS
            .iter()
            .flat_map(|s| teardown_needs(*s, sc)),
    );
    // Validation before any job: storage status and, with a pool, the pool list.
    for s in &sc.target_storages {
        all.push(Need {
            path: format!("/storage/{s}"),
            privilege: "Datastore.Audit",
            why: "validate: GET storage status (content types, free space)".into(),
        });
    }
    all.push(Need {
        path: format!("/storage/{}", sc.backup_storage),
        privilege: "Datastore.Audit",
        why: "preflight: list the golden archive".into(),
    });
    if sc.placement {
        // Granted on `/nodes` with propagate, so it covers every node placement may pick.
        all.push(Need {
            path: "/nodes".into(),
            privilege: "Sys.Audit",
            why: "placement (node \"auto\"): each node's memory in GET /cluster/resources, shown only with Sys.Audit on /nodes/<node>; the target storages' free space needs their Datastore.Audit (above)".into(),
        });
    }
    if let Some(p) = &sc.pool {
        all.push(Need {
            path: format!("/pool/{p}"),
            privilege: "Pool.Audit",
            why: "validate: the pool exists".into(),
        });
    }
    for n in all {
        out.entry(n.path)
            .or_default()
            .entry(n.privilege)
            .or_default()
            .push(n.why);
    }
    out
}

/// Whether felhom's grant on `path` must propagate: `/vms` stands for the VMID range and
/// `/nodes` for every node placement may pick; every other path is the object itself.
pub fn propagates(path: &str) -> bool {
    path == "/vms" || path == "/nodes"
}

/// The privileges of the role felhom's token needs (the union over all paths).
pub fn role_privileges(sc: &Scope) -> BTreeSet<&'static str> {
    required(sc)
        .into_values()
        .flat_map(|m| m.into_keys())
        .collect()
}

/// The `pveum` commands a root operator runs to create the role, user, token and ACLs.
pub fn pveum_commands(sc: &Scope, token_id: &str) -> Vec<String> {
    let (user, token) = token_id.split_once('!').unwrap_or((token_id, "agent"));
    let privs: Vec<&str> = role_privileges(sc).into_iter().collect();
    let mut cmds = vec![
        format!("pveum role add FelhomAgent -privs \"{}\"", privs.join(",")),
        format!("pveum user add {user}"),
        format!("pveum user token add {user} {token} --privsep 1"),
    ];
    for path in required(sc).keys() {
        // With privilege separation both the user and the token need the grant (§8).
        let propagate = if propagates(path) {
            " -propagate 1"
        } else {
            ""
        };
        cmds.push(format!(
            "pveum acl modify {path} -user {user} -role FelhomAgent{propagate}"
        ));
        cmds.push(format!(
            "pveum acl modify {path} -token '{token_id}' -role FelhomAgent{propagate}"
        ));
    }
    cmds
}
