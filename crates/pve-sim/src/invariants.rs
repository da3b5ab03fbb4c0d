//! What must never be true of a host after felhom is done with it, read from the state dump
//! (`GET /felhom-sim/state`): a volume no guest owns, two guests sharing a MAC, an IP or an
//! SSH host key; and of a cluster: a VMID on more than one node, a volume of a node-local
//! storage on another node than its owner's config. The integration tests assert these are empty and `felhom bench reliability`
//! counts them, so both judge by the same rules.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

/// Every violation found, each named so a report can say which.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Violations {
    /// Volume ids whose owner VMID has no guest.
    pub leaked_volumes: Vec<String>,
    /// Volume ids whose guest exists but uses them neither as `rootfs` nor as an `mpN`
    /// (left behind as `unusedN`, or not in the config at all): space nobody will free.
    pub detached_volumes: Vec<String>,
    /// MACs (upper case) configured on more than one NIC.
    pub duplicate_macs: Vec<String>,
    /// IPs leased to more than one running guest.
    pub duplicate_ips: Vec<String>,
    /// SSH host-key fingerprints served by more than one guest.
    pub duplicate_keys: Vec<String>,
    /// VMIDs with a config on more than one node (pmxcfs allows one).
    pub duplicate_vmids: Vec<u64>,
    /// Volume ids on a node-local storage held by another node than the one its owner's
    /// config is on (a migration that left a disk behind): the guest cannot start there.
    pub misplaced_volumes: Vec<String>,
}

impl Violations {
    pub fn is_clean(&self) -> bool {
        self == &Violations::default()
    }
}

/// The violations in a state dump.
pub fn check(state: &Value) -> Violations {
    let guests = state["guests"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let vmids: BTreeSet<u64> = guests.iter().filter_map(|g| g["vmid"].as_u64()).collect();
    let in_use: BTreeSet<&str> = guests
        .iter()
        .flat_map(|g| g["config"].as_object())
        .flatten()
        .filter(|(k, _)| *k == "rootfs" || mount_key(k))
        .filter_map(|(_, v)| v.as_str()?.split(',').next())
        .collect();
    // Cluster facts, where the dump has them (a dump without nodes is one node).
    let owner_node: HashMap<u64, &str> = guests
        .iter()
        .filter_map(|g| Some((g["vmid"].as_u64()?, g["node"].as_str()?)))
        .collect();
    let shared: BTreeSet<&str> = state["storages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["shared"].as_bool() == Some(true))
        .filter_map(|s| s["id"].as_str())
        .collect();
    let mut misplaced_volumes = Vec::new();
    let (mut leaked_volumes, mut detached_volumes) = (Vec::new(), Vec::new());
    for v in state["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let volid = v["volid"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_string);
        let storage = v["storage"].as_str().unwrap_or_default();
        if let (Some(node), Some(owner)) = (
            v["node"].as_str(),
            v["owner"].as_u64().and_then(|o| owner_node.get(&o)),
        ) {
            if node != *owner && !shared.contains(storage) {
                misplaced_volumes.push(volid.clone());
            }
        }
        if !v["owner"].as_u64().is_some_and(|o| vmids.contains(&o)) {
            leaked_volumes.push(volid);
        } else if !in_use.contains(volid.as_str()) {
            detached_volumes.push(volid);
        }
    }
    let macs = guests.iter().flat_map(|g| {
        g["macs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_ascii_uppercase))
    });
    let ips = guests
        .iter()
        .filter_map(|g| g["ip"].as_str().map(str::to_string));
    let keys = guests
        .iter()
        .filter_map(|g| g["ssh"]["fingerprint"].as_str().map(str::to_string));
    let duplicate_vmids = repeated(
        guests
            .iter()
            .filter_map(|g| g["vmid"].as_u64().map(|v| v.to_string())),
    )
    .into_iter()
    .filter_map(|v| v.parse().ok())
    .collect();
    Violations {
        duplicate_vmids,
        misplaced_volumes,
        leaked_volumes,
        detached_volumes,
        duplicate_macs: repeated(macs),
        duplicate_ips: repeated(ips),
        duplicate_keys: repeated(keys),
    }
}

/// `mp0` … `mp255`.
fn mount_key(k: &str) -> bool {
    k.strip_prefix("mp")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn repeated(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for v in values {
        *seen.entry(v).or_default() += 1;
    }
    let mut dup: Vec<String> = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(v, _)| v)
        .collect();
    dup.sort();
    dup
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clean_state_has_no_violations() {
        let state = json!({
            "guests": [
                {"vmid": 100, "macs": ["bc:24:11:00:00:01"], "ip": "10.77.0.2", "ssh": {"fingerprint": "SHA256:a"},
                 "config": {"rootfs": "local-lvm:vm-100-disk-0,size=12G", "mp0": "local-lvm:vm-100-disk-1,mp=/srv,size=4G"}},
                {"vmid": 101, "macs": ["BC:24:11:00:00:02"], "ip": null, "ssh": {"fingerprint": null}},
            ],
            "volumes": [{"volid": "local-lvm:vm-100-disk-0", "owner": 100}, {"volid": "local-lvm:vm-100-disk-1", "owner": 100}],
        });
        assert!(check(&state).is_clean());
    }

    #[test]
    fn each_kind_of_violation_is_named() {
        let state = json!({
            "guests": [
                {"vmid": 100, "macs": ["bc:24:11:00:00:01"], "ip": "10.77.0.2", "ssh": {"fingerprint": "SHA256:a"},
                 "config": {"rootfs": "local-lvm:vm-100-disk-0,size=12G", "unused0": "local-lvm:vm-100-disk-1"}},
                {"vmid": 101, "macs": ["BC:24:11:00:00:01"], "ip": "10.77.0.2", "ssh": {"fingerprint": "SHA256:a"}},
            ],
            "volumes": [{"volid": "local-lvm:vm-102-disk-0", "owner": 102}, {"volid": "local-lvm:vm-100-disk-0", "owner": 100}, {"volid": "local-lvm:vm-100-disk-1", "owner": 100}],
        });
        let v = check(&state);
        assert_eq!(v.leaked_volumes, ["local-lvm:vm-102-disk-0"]);
        assert_eq!(v.detached_volumes, ["local-lvm:vm-100-disk-1"]);
        assert_eq!(v.duplicate_macs, ["BC:24:11:00:00:01"]);
        assert_eq!(v.duplicate_ips, ["10.77.0.2"]);
        assert_eq!(v.duplicate_keys, ["SHA256:a"]);
        assert!(!v.is_clean());
    }

    #[test]
    fn cluster_violations_are_named() {
        let state = json!({
            "storages": [{"id": "local-lvm", "shared": false}, {"id": "ceph", "shared": true}],
            "guests": [
                {"vmid": 100, "node": "pve1", "config": {"rootfs": "local-lvm:vm-100-disk-0,size=8G", "mp0": "ceph:vm-100-disk-1,mp=/srv,size=1G"}},
                {"vmid": 101, "node": "pve2", "config": {"rootfs": "local-lvm:vm-101-disk-0,size=8G"}},
                {"vmid": 101, "node": "pve3", "config": {"rootfs": "local-lvm:vm-101-disk-0,size=8G"}},
            ],
            "volumes": [
                {"volid": "local-lvm:vm-100-disk-0", "storage": "local-lvm", "owner": 100, "node": "pve2"},
                {"volid": "ceph:vm-100-disk-1", "storage": "ceph", "owner": 100, "node": "pve3"},
            ],
        });
        let v = check(&state);
        assert_eq!(v.duplicate_vmids, [101]);
        assert_eq!(v.misplaced_volumes, ["local-lvm:vm-100-disk-0"]);
        // A volume on the owner's node, and one on a shared storage, are fine.
        let mut ok = state.clone();
        ok["volumes"][0]["node"] = json!("pve1");
        ok["guests"].as_array_mut().unwrap().pop();
        assert!(check(&ok).is_clean(), "{:?}", check(&ok));
    }
}
