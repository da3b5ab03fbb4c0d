//! The spike's identity-reset table (seed §5, plus the DHCP client identity from
//! docs/lessons.md A5) as data, and the two policies that read it: *provision* (a new
//! customer: everything fresh) and *dr* (disaster recovery of the same customer: keep what
//! clients know).
//!
//! The bring-up job asks the policy what to do with each field instead of carrying its own
//! ifs: `IdentityPolicy::provision().mac()` says "fresh at restore".

use serde::Serialize;

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IdentityRow {
    pub field: &'static str,
    pub restore_leaves: &'static str,
    pub reset_by: &'static str,
    pub where_: &'static str,
    pub cost: &'static str,
}

/// Seed §5 (F1–F3), and docs/lessons.md A5 for the DHCP client id.
pub const TABLE: &[IdentityRow] = &[
    IdentityRow {
        field: "MAC",
        restore_leaves: "the golden's archived MAC (F1)",
        reset_by: "bring-up job, unconditionally",
        where_: "host-side: net0 with a felhom-chosen hwaddr, set at restore",
        cost: "cheap",
    },
    IdentityRow {
        field: "hostname",
        restore_leaves: "the golden's archived hostname (F2)",
        reset_by: "bring-up job",
        where_: "host-side: hostname at restore; PVE writes /etc/hostname at every start",
        cost: "cheap",
    },
    IdentityRow {
        field: "machine-id",
        restore_leaves: "empty (baked by the golden's identity clean)",
        reset_by: "systemd, at first boot",
        where_: "guest: an empty /etc/machine-id is regenerated",
        cost: "free",
    },
    IdentityRow {
        field: "SSH host keys",
        restore_leaves:
            "absent (baked); Debian 13 does not regenerate them on a non-first boot (F3)",
        reset_by: "the golden's first-boot unit (ssh-keygen -A when keys are missing)",
        where_: "guest: baked unit; the bring-up proves the key with a handshake",
        cost: "free at bring-up; surface-widening if done by the agent",
    },
    IdentityRow {
        field: "DHCP client id / DUID",
        restore_leaves: "whatever the golden left in /var/lib/dhcp, /var/lib/dhcpcd",
        reset_by: "the golden's identity clean; the bring-up checks the IP is unique",
        where_: "guest: lease and DUID files removed from the golden",
        cost: "free",
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MacAction {
    /// A MAC felhom chooses and journals, set at restore (never the golden's).
    FreshAtRestore,
    /// The archived MAC, as the customer's DHCP reservations and ARP caches know it.
    KeepArchived,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostnameAction {
    FromSpec,
    KeepArchived,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    /// New keys, proven by a handshake, unlike every other guest's.
    RequireFreshUnique,
    /// The keys felhom recorded for this customer, so clients see no changed host key.
    RequireSameAsRecorded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    Provision,
    Dr,
}

impl std::str::FromStr for PolicyName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "provision" => Ok(PolicyName::Provision),
            "dr" => Ok(PolicyName::Dr),
            other => Err(format!(
                "unknown identity policy '{other}' (provision or dr)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IdentityPolicy {
    pub name: PolicyName,
    mac: MacAction,
    hostname: HostnameAction,
    keys: KeyAction,
}

impl IdentityPolicy {
    pub const fn provision() -> IdentityPolicy {
        IdentityPolicy {
            name: PolicyName::Provision,
            mac: MacAction::FreshAtRestore,
            hostname: HostnameAction::FromSpec,
            keys: KeyAction::RequireFreshUnique,
        }
    }
    pub const fn dr() -> IdentityPolicy {
        IdentityPolicy {
            name: PolicyName::Dr,
            mac: MacAction::KeepArchived,
            hostname: HostnameAction::KeepArchived,
            keys: KeyAction::RequireSameAsRecorded,
        }
    }
    pub fn named(n: PolicyName) -> IdentityPolicy {
        match n {
            PolicyName::Provision => Self::provision(),
            PolicyName::Dr => Self::dr(),
        }
    }
    pub fn mac(&self) -> MacAction {
        self.mac
    }
    pub fn hostname(&self) -> HostnameAction {
        self.hostname
    }
    pub fn ssh_host_keys(&self) -> KeyAction {
        self.keys
    }
    /// The table rows with what this policy does for each field.
    pub fn rows(&self) -> Vec<(IdentityRow, &'static str)> {
        TABLE
            .iter()
            .map(|r| {
                let action = match (r.field, self.name) {
                    ("MAC", PolicyName::Provision) => "fresh MAC chosen by felhom, set at restore",
                    ("MAC", PolicyName::Dr) => "keep the archived MAC",
                    ("hostname", PolicyName::Provision) => "hostname from the spec, set at restore",
                    ("hostname", PolicyName::Dr) => "keep the archived hostname",
                    ("SSH host keys", PolicyName::Provision) => {
                        "fresh keys from the first-boot unit, proven unique"
                    }
                    ("SSH host keys", PolicyName::Dr) => {
                        "keep the archived keys; prove they match the record"
                    }
                    ("machine-id", PolicyName::Provision) => "regenerated at first boot",
                    ("machine-id", PolicyName::Dr) => "keep the archived id",
                    (_, PolicyName::Provision) => "fresh",
                    (_, PolicyName::Dr) => "keep",
                };
                (*r, action)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn policies_differ_where_the_seed_says() {
        assert_eq!(IdentityPolicy::provision().mac(), MacAction::FreshAtRestore);
        assert_eq!(IdentityPolicy::dr().mac(), MacAction::KeepArchived);
        assert_eq!(
            IdentityPolicy::dr().ssh_host_keys(),
            KeyAction::RequireSameAsRecorded
        );
        assert_eq!(IdentityPolicy::provision().rows().len(), TABLE.len());
        assert_eq!("dr".parse::<PolicyName>().unwrap(), PolicyName::Dr);
    }
}
