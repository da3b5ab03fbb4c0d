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
    /// `dns-name-list` (`searchdomain`).
    DnsNameList,
    /// `lxc-ip-with-ll-iface-list` (`nameserver`).
    IpList,
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
    /// `entrypoint`: no control character but tab (C:LXC/Config.pm `$confdesc`).
    NoControl,
    /// `env`: `NAME=value` items separated by NUL, values without control characters but tab.
    Env,
    /// `devN`: `$dev_desc` (C:LXC/Config.pm), `path` the default key.
    Dev,
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

/// pve-common `ParseUtils.pm` `split_list`: items separated by `,`, `;` or white space.
fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split([',', ';', ' ', '\t', '\n'])
        .filter(|i| !i.is_empty())
}

/// pve-common `JSONSchema.pm` `pve_verify_ip` (IPv4 or IPv6, no prefix).
fn is_ip(v: &str) -> bool {
    v.parse::<std::net::IpAddr>().is_ok()
}

/// `pve_verify_cidrv4` / `pve_verify_cidrv6`: an address and a prefix of 8..=32 / 8..=128.
fn is_cidr(v: &str, v6: bool) -> bool {
    let Some((addr, prefix)) = v.split_once('/') else {
        return false;
    };
    let prefix_ok = !prefix.is_empty()
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && prefix
            .parse::<u32>()
            .is_ok_and(|p| p > 7 && p <= if v6 { 128 } else { 32 });
    let addr_ok = if v6 {
        addr.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        addr.parse::<std::net::Ipv4Addr>().is_ok()
    };
    prefix_ok && addr_ok
}

/// pve-common `JSONSchema.pm` `is_integer` and `is_number`.
fn is_integer(v: &str) -> bool {
    let d = v.strip_prefix(['+', '-']).unwrap_or(v);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

fn is_number(v: &str) -> bool {
    let d = v.strip_prefix(['+', '-']).unwrap_or(v);
    let (mantissa, exp) = match d.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (d, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => (!a.is_empty() || !b.is_empty()) && digits(a) && digits(b),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    mantissa_ok && exp.is_none_or(|e| !e.is_empty() && digits(e))
}

/// One key of the `netN` property string checked as `check_prop` checks it (pve-container
/// `LXC/Config.pm` `$netconf_desc`; the texts are pve-common `JSONSchema.pm`'s).
fn check_net_key(key: &str, v: &str) -> Result<(), String> {
    let int = |min: i64, max: i64| -> Result<(), String> {
        if !is_integer(v) {
            return Err(format!("type check ('integer') failed - got '{v}'"));
        }
        let n: f64 = v.parse().unwrap_or(f64::MAX);
        if n > max as f64 {
            Err(format!("value must have a maximum value of {max}"))
        } else if n < min as f64 {
            Err(format!("value must have a minimum value of {min}"))
        } else {
            Ok(())
        }
    };
    let format = |ok: bool, what: &str| -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid format - value does not look like a valid {what}"
            ))
        }
    };
    let pattern = |ok: bool| -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err("value does not match the regex pattern".into())
        }
    };
    let ifname = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match key {
        "type" => {
            if v == "veth" {
                Ok(())
            } else {
                Err(format!(
                    "value '{v}' does not have a value in the enumeration 'veth'"
                ))
            }
        }
        "name" | "bridge" => pattern(ifname(v)),
        // `^[a-f0-9][02468ace](?::[a-f0-9]{2}){5}$`, case-insensitive.
        "hwaddr" => format(
            v.len() == 17
                && v.split(':').count() == 6
                && v.split(':')
                    .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()))
                && b"02468aceACE".contains(&v.as_bytes()[1]),
            "unicast MAC address",
        ),
        "mtu" => int(64, 65535),
        "tag" => int(1, 4094),
        "ip" => format(
            matches!(v, "dhcp" | "manual") || is_cidr(v, false),
            "ipv4 network configuration",
        ),
        "ip6" => format(
            matches!(v, "auto" | "dhcp" | "manual") || is_cidr(v, true),
            "ipv6 network configuration",
        ),
        "gw" => format(v.parse::<std::net::Ipv4Addr>().is_ok(), "IPv4 address"),
        "gw6" => format(v.parse::<std::net::Ipv6Addr>().is_ok(), "IPv6 address"),
        "firewall" | "link_down" | "host-managed" => match v.to_ascii_lowercase().as_str() {
            "1" | "on" | "yes" | "true" | "0" | "off" | "no" | "false" => Ok(()),
            _ => Err(format!("type check ('boolean') failed - got '{v}'")),
        },
        "trunks" => pattern(
            v.split(';')
                .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())),
        ),
        "rate" => {
            if is_number(v) {
                Ok(())
            } else {
                Err(format!("type check ('number') failed - got '{v}'"))
            }
        }
        _ => Ok(()),
    }
}

/// A `netN` value as `parse_property_string` checks it: a malformed part or an unknown or
/// repeated key dies with its own text; every key's value error is collected under
/// `netN.<key>` and the whole raises `format error` (pve-common `JSONSchema.pm`
/// `parse_property_string`, `check_object`). `check_prop` prefixes `invalid format - `, and
/// `PVE::Exception` prints the collected errors after the message, one a line.
fn check_net(path: &str, v: &str) -> Result<(), String> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for part in v.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((k, val)) = part
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        else {
            return Err(if part.contains('=') {
                "invalid format - missing key in comma-separated list property".into()
            } else {
                "invalid format - value without key, but schema does not define a default key"
                    .into()
            });
        };
        if seen.contains_key(k) {
            return Err(format!(
                "invalid format - duplicate key in comma-separated list property: {k}"
            ));
        }
        if !pve_api::NetConfig::KEYS.contains(&k) {
            return Err(format!(
                "invalid format - invalid key in comma-separated list property: {k}"
            ));
        }
        seen.insert(k, val);
    }
    let mut errors: Vec<String> = Vec::new();
    if !seen.contains_key("name") {
        errors.push(format!(
            "{path}.name: property is missing and it is not optional"
        ));
    }
    for (k, val) in &seen {
        if let Err(e) = check_net_key(k, val) {
            errors.push(format!("{path}.{k}: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "invalid format - format error\n{}",
            errors.join("\n")
        ))
    }
}

fn check(key: &str, kind: Kind, v: &str) -> Result<(), String> {
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
        Kind::DnsNameList => {
            if split_list(v).all(is_dns_name) {
                Ok(())
            } else {
                Err("invalid format - value does not look like a valid DNS name".into())
            }
        }
        // `verify_ip_with_ll_iface`: an IP, or a link-local `fe80:…%<iface>`.
        Kind::IpList => {
            let ok = |i: &str| match i.split_once('%') {
                Some((a, iface)) if a.starts_with("fe80:") => {
                    is_ip(a) && {
                        let b = iface.as_bytes();
                        (2..=21).contains(&b.len())
                            && b[0].is_ascii_alphabetic()
                            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    }
                }
                _ => is_ip(i),
            };
            if split_list(v).all(ok) {
                Ok(())
            } else {
                Err("invalid format - value does not look like a valid IP address".into())
            }
        }
        Kind::Net => check_net(key, v),
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
        Kind::NoControl => {
            if !v.is_empty() && !v.chars().any(is_ctl) {
                Ok(())
            } else {
                regex()
            }
        }
        Kind::Env => {
            let item = |i: &str| {
                i.split_once('=').is_some_and(|(name, val)| {
                    !name.is_empty()
                        && name.chars().all(|c| c.is_alphanumeric() || c == '_')
                        && !val.chars().any(is_ctl)
                })
            };
            if v.split('\0').all(item) {
                Ok(())
            } else {
                regex()
            }
        }
        Kind::Dev => check_dev(key, v),
        Kind::Upid => v
            .parse::<pve_api::Upid>()
            .map(|_| ())
            .map_err(|_| "unable to parse worker upid".into()),
    }
}

/// A control character as the `entrypoint`/`env` patterns exclude them (`\x00-\x08`,
/// `\x0a-\x1f`, `\x7f`): tab is allowed.
fn is_ctl(c: char) -> bool {
    c != '\t' && (c < ' ' || c == '\x7f')
}

/// A `devN` value as `parse_property_string` checks it against `$dev_desc` (C:LXC/Config.pm;
/// K:JSONSchema.pm): a part without `=` is the default key `path`; errors per key as for
/// `netN`. Whether the device exists is checked later, by root's `update_pct_config` only.
fn check_dev(key: &str, v: &str) -> Result<(), String> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for part in v.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, val) = part.split_once('=').unwrap_or(("path", part));
        if seen.insert(k, val).is_some() {
            return Err(format!(
                "invalid format - duplicate key in comma-separated list property: {k}"
            ));
        }
        if !matches!(k, "path" | "mode" | "uid" | "gid" | "deny-write") {
            return Err(format!(
                "invalid format - invalid key in comma-separated list property: {k}"
            ));
        }
    }
    let errors: Vec<String> = seen
        .iter()
        .filter_map(|(k, val)| {
            let e = match *k {
                // `verify_lxc_dev_string`.
                "path" => (!val.starts_with("/dev/")
                    || val.split('/').any(|s| s == "." || s == ".."))
                .then(|| format!("{val} is not a valid device path")),
                "mode" => {
                    let b = val.as_bytes();
                    (b.len() != 4
                        || b[0] != b'0'
                        || !b[1..].iter().all(|c| (b'0'..=b'7').contains(c)))
                    .then(|| "value does not match the regex pattern".to_string())
                }
                "uid" | "gid" => check(k, Kind::Int(0, i64::MAX), val).err(),
                _ => check(k, Kind::Bool, val).err(),
            };
            e.map(|e| format!("{key}.{k}: {e}"))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "invalid format - format error\n{}",
            errors.join("\n")
        ))
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
    if let Some(n) = key.strip_prefix("dev") {
        return n
            .parse::<u32>()
            .ok()
            .filter(|n| *n < 256)
            .map(|_| Kind::Dev);
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
        // No maximum in the schema for either.
        "memory" => Kind::Int(16, i64::MAX),
        "swap" => Kind::Int(0, i64::MAX),
        "cores" => Kind::Int(1, 8192),
        "cpuunits" => Kind::Int(0, 500_000),
        "onboot" | "protection" | "unprivileged" | "template" | "console" | "debug" => Kind::Bool,
        "entrypoint" => Kind::NoControl,
        "env" => Kind::Env,
        "tty" => Kind::Int(0, 6),
        "arch" => Kind::Enum(&["amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"]),
        "ostype" => Kind::Enum(OSTYPES),
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
        "nameserver" => Kind::IpList,
        "searchdomain" => Kind::DnsNameList,
        "timezone" | "startup" | "hookscript" | "cpulimit" => Kind::Str(255),
        _ => return None,
    })
}

/// Extra parameters of `POST /nodes/{node}/lxc`.
/// The schema's `ostype` values (`unmanaged` last: PVE's answer for an OS it does not know).
pub(crate) const OSTYPES: &[&str] = &[
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
];

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
                if let Err(e) = check(k, kind, v) {
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

/// The bytes of a new volume of `gib` GiB: PVE allocates `int(gib * 1024) * 1024` KiB, so a
/// fractional size is truncated to whole MiB (pve-container `LXC.pm` `create_disks`; audit
/// R12, top #4). `1.2695` GiB is 1299 MiB.
pub fn new_volume_bytes(gib: f64) -> u64 {
    (gib * 1024.0) as u64 * (1 << 20)
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
