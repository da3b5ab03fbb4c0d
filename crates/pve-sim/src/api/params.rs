//! Parameter validation with PVE's schema messages (pve-common `JSONSchema.pm` `check_prop`),
//! for the parameters of the endpoints the simulator serves.

use std::collections::BTreeMap;

pub type Errors = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Bool,
    Int(i64, i64),
    Str(usize),
    Enum(&'static [&'static str]),
    Node,
    Vmid,
    StorageId,
    DnsName,
    Net,
    Mount,
    Rootfs,
    Features,
    Tags,
    ConfigIdList,
    Size,
    PoolId,
    Upid,
    /// `rootfs`, `mp0` … `mp255` (the resize `disk` enum).
    ResizeDisk,
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

fn check(kind: Kind, v: &str) -> Result<(), String> {
    let regex = || Err("value does not match the regex pattern".to_string());
    match kind {
        Kind::Bool => match v {
            "0" | "1" | "on" | "off" | "yes" | "no" | "true" | "false" => Ok(()),
            _ => Err(format!("type check ('boolean') failed - got '{v}'")),
        },
        Kind::Int(min, max) => {
            let n: i64 = v
                .parse()
                .map_err(|_| format!("type check ('integer') failed - got '{v}'"))?;
            if n < min {
                Err(format!("value must have a minimum value of {min}"))
            } else if n > max {
                Err(format!("value must have a maximum value of {max}"))
            } else {
                Ok(())
            }
        }
        Kind::Str(max) => {
            if v.chars().count() > max {
                Err(format!("value may only be {max} characters long"))
            } else {
                Ok(())
            }
        }
        Kind::Enum(vals) => {
            if vals.contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "value '{v}' does not have a value in the enumeration '{}'",
                    vals.join(", ")
                ))
            }
        }
        Kind::Node => {
            if v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                Ok(())
            } else {
                regex()
            }
        }
        Kind::Vmid => v.parse::<pve_api::Vmid>().map(|_| ()).or_else(|_| regex()),
        Kind::StorageId => {
            if v.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                })
            {
                Ok(())
            } else {
                Err(format!(
                    "invalid format - storage ID '{v}' contains illegal characters"
                ))
            }
        }
        Kind::DnsName => {
            if v.len() <= 255 && is_dns_name(v) {
                Ok(())
            } else {
                Err("invalid format - value does not look like a valid DNS name".into())
            }
        }
        Kind::Net => v
            .parse::<pve_api::NetConfig>()
            .map(|_| ())
            .map_err(|e| format!("invalid format - {e}")),
        Kind::Mount => pve_api::MountConfig::parse_mp(v)
            .map(|_| ())
            .map_err(|e| format!("invalid format - {e}")),
        Kind::Rootfs => pve_api::MountConfig::parse_rootfs(v)
            .map(|_| ())
            .map_err(|e| format!("invalid format - {e}")),
        Kind::Features => v
            .parse::<pve_api::Features>()
            .map(|_| ())
            .map_err(|e| format!("invalid format - {e}")),
        Kind::Tags => {
            let ok = v.split([';', ',', ' ']).filter(|t| !t.is_empty()).all(|t| {
                let b = t.as_bytes();
                (b[0].is_ascii_alphanumeric() || b[0] == b'_')
                    && b.iter().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'.')
                    })
            });
            if ok {
                Ok(())
            } else {
                Err("invalid format - invalid characters in tag".into())
            }
        }
        Kind::ConfigIdList => {
            if v.split([';', ',', ' ']).filter(|t| !t.is_empty()).all(|k| {
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            }) {
                Ok(())
            } else {
                Err("invalid format - invalid configuration ID".into())
            }
        }
        Kind::Size => pve_api::parse_disk_size(v.trim_start_matches('+'))
            .map(|_| ())
            .or_else(|_| regex()),
        Kind::PoolId => {
            if !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/'))
            {
                Ok(())
            } else {
                Err("invalid format - invalid pool ID".into())
            }
        }
        Kind::ResizeDisk => {
            let ok = v == "rootfs"
                || v.strip_prefix("mp")
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n < 256 && !v[2..].starts_with('0') || v == "mp0");
            if ok {
                Ok(())
            } else {
                let all: Vec<String> = std::iter::once("rootfs".to_string())
                    .chain((0..256).map(|n| format!("mp{n}")))
                    .collect();
                Err(format!(
                    "value '{v}' does not have a value in the enumeration '{}'",
                    all.join(", ")
                ))
            }
        }
        Kind::Upid => v
            .parse::<pve_api::Upid>()
            .map(|_| ())
            .map_err(|_| "unable to parse worker upid".into()),
    }
}

/// The LXC config keys the simulator accepts (create/restore and PUT config), with formats.
pub fn config_kind(key: &str) -> Option<Kind> {
    if let Some(n) = key.strip_prefix("net") {
        return n.parse::<u32>().ok().filter(|n| *n < 32).map(|_| Kind::Net);
    }
    if let Some(n) = key.strip_prefix("mp") {
        return n
            .parse::<u32>()
            .ok()
            .filter(|n| *n < 256)
            .map(|_| Kind::Mount);
    }
    if let Some(n) = key.strip_prefix("unused") {
        return n
            .parse::<u32>()
            .ok()
            .filter(|n| *n < 256)
            .map(|_| Kind::Str(255));
    }
    Some(match key {
        "hostname" => Kind::DnsName,
        "rootfs" => Kind::Rootfs,
        "features" => Kind::Features,
        "tags" => Kind::Tags,
        "description" => Kind::Str(8192),
        "memory" => Kind::Int(16, 268_435_456),
        "swap" => Kind::Int(0, 268_435_456),
        "cores" => Kind::Int(1, 8192),
        "cpuunits" => Kind::Int(0, 500_000),
        "onboot" | "protection" | "unprivileged" | "template" | "console" => Kind::Bool,
        "tty" => Kind::Int(0, 6),
        "arch" => Kind::Enum(&["amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"]),
        "ostype" => Kind::Enum(&[
            "debian",
            "devuan",
            "ubuntu",
            "centos",
            "fedora",
            "opensuse",
            "archlinux",
            "alpine",
            "gentoo",
            "nixos",
            "unmanaged",
        ]),
        "cmode" => Kind::Enum(&["shell", "console", "tty"]),
        "lock" => Kind::Enum(&[
            "backup",
            "create",
            "destroyed",
            "disk",
            "fstrim",
            "migrate",
            "mounted",
            "rollback",
            "snapshot",
            "snapshot-delete",
        ]),
        "nameserver" | "searchdomain" | "timezone" | "startup" | "hookscript" | "cpulimit" => {
            Kind::Str(255)
        }
        _ => return None,
    })
}

/// Extra parameters of `POST /nodes/{node}/lxc`.
pub fn create_kind(key: &str) -> Option<Kind> {
    Some(match key {
        "node" => Kind::Node,
        "vmid" => Kind::Vmid,
        "ostemplate" => Kind::Str(255),
        "restore" | "force" | "unique" | "start" | "ignore-unpack-errors" | "ha-managed" => {
            Kind::Bool
        }
        "storage" => Kind::StorageId,
        "pool" => Kind::PoolId,
        "password" => Kind::Str(4096),
        "ssh-public-keys" => Kind::Str(65536),
        "bwlimit" => Kind::Int(0, i64::MAX),
        other => return config_kind(other),
    })
}

/// Validate `params` with `kind_of`; unknown names are schema errors.
pub fn validate(
    params: &BTreeMap<String, String>,
    kind_of: impl Fn(&str) -> Option<Kind>,
    required: &[&str],
) -> Result<(), Errors> {
    let mut errors = Errors::new();
    for r in required {
        if !params.contains_key(*r) {
            errors.insert(
                r.to_string(),
                "property is missing and it is not optional".into(),
            );
        }
    }
    for (k, v) in params {
        match kind_of(k) {
            None => {
                errors.insert(k.clone(), "property is not defined in schema and the schema does not allow additional properties".into());
            }
            Some(kind) => {
                if let Err(e) = check(kind, v) {
                    errors.insert(k.clone(), e);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

pub fn normalize_tags(v: &str) -> String {
    let mut tags: Vec<String> = v
        .split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .map(|t| t.to_ascii_lowercase())
        .collect();
    tags.sort();
    tags.dedup();
    tags.join(";")
}

/// `<storage>:<GiB>` (a new volume), reference §3.6.
pub fn new_volume_spec(v: &str) -> Option<(String, f64)> {
    let vol = v.split(',').next()?;
    let (sid, size) = vol.split_once(':')?;
    if sid.is_empty() || sid.contains(char::is_whitespace) {
        return None;
    }
    let ok = !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    ok.then(|| size.parse().ok())
        .flatten()
        .map(|s| (sid.to_string(), s))
}

pub fn fresh_mac() -> String {
    pve_api::MacAddr::random(&[0xBC, 0x24, 0x11]).to_string()
}

/// A `netN` as PVE stores it: canonical, with a fresh MAC if none was given.
pub fn store_net(v: &str) -> Result<String, String> {
    let mut n: pve_api::NetConfig = v
        .parse()
        .map_err(|e: pve_api::PropertyError| e.to_string())?;
    if n.hwaddr.is_none() {
        n = n.with_hwaddr(&fresh_mac()).map_err(|e| e.to_string())?;
    }
    n.other.insert("type".into(), "veth".into());
    Ok(n.to_string())
}
