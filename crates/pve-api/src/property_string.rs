//! PVE property strings (`net[n]`, `rootfs`, `mp[n]`, `features`): `key=value` pairs joined
//! by `,`, with an optional default key whose `key=` may be omitted (reference §3.3, §3.4;
//! pve-common `parse_property_string` / `print_property_string`).
//!
//! PVE has no escaping: a `,` in a value *is* a second key. So a value containing `,` `=`
//! `;` a newline or any control character is refused when felhom builds a property string —
//! never escaped, never passed on. The one exception is `;` inside the three list-valued
//! keys (`trunks`, `mountoptions`, the `mount` feature), where it is PVE's own item separator
//! and every item must match a strict pattern (digits, a mount-option name, a fs-type word),
//! so it cannot start a key either.
//!
//! The typed structs ([`NetConfig`], [`MountConfig`], [`Features`]) know their key sets, so
//! they refuse unknown keys as PVE does (`invalid key in comma-separated list property`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    #[error("{key}: value contains a forbidden character ({what}); property-string values may not contain ',', '=', ';', newlines or control characters")]
    ForbiddenChar { key: String, what: String },
    #[error("invalid key in comma-separated list property: {0}")]
    UnknownKey(String),
    #[error("duplicate key in comma-separated list property: {0}")]
    DuplicateKey(String),
    #[error("{0}: property is missing and it is not optional")]
    Missing(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("malformed property string: {0}")]
    Malformed(String),
}

fn forbidden_in_value(c: char, allow_semicolon: bool) -> Option<&'static str> {
    match c {
        ',' => Some("','"),
        '=' => Some("'='"),
        ';' if !allow_semicolon => Some("';'"),
        '\n' => Some("newline"),
        '\r' => Some("carriage return"),
        c if c.is_control() => Some("control character"),
        _ => None,
    }
}

fn check_value(key: &str, value: &str, allow_semicolon: bool) -> Result<(), PropertyError> {
    if let Some(what) = value
        .chars()
        .find_map(|c| forbidden_in_value(c, allow_semicolon))
    {
        return Err(PropertyError::ForbiddenChar {
            key: key.to_string(),
            what: what.to_string(),
        });
    }
    if value.is_empty() {
        return Err(PropertyError::Invalid {
            key: key.to_string(),
            message: "empty value".into(),
        });
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), PropertyError> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PropertyError::Malformed(format!(
            "bad key {:?}",
            key.chars().take(40).collect::<String>()
        )))
    }
}

/// An ordered list of key/value pairs. Construction validates every key and value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyString {
    entries: Vec<(String, String)>,
}

impl PropertyString {
    pub fn new() -> PropertyString {
        PropertyString::default()
    }

    /// Parse PVE's text (pve-common `parse_property_string`, reference §3.3): parts are split
    /// at `,`, empty parts are skipped, and a part without `=` is the value of `default_key`
    /// (`local-lvm:vm-100-disk-0,size=8G`). Like PVE, a second bare part is a duplicate of the
    /// default key, and a repeated key is refused.
    pub fn parse(text: &str, default_key: Option<&str>) -> Result<PropertyString, PropertyError> {
        let mut out = PropertyString::new();
        for part in text.split(',') {
            if part.trim().is_empty() {
                continue;
            }
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k, v),
                None => match default_key {
                    Some(d) => (d, part),
                    None => {
                        return Err(PropertyError::Malformed(format!(
                            "part {:?} has no key and this property has no default key",
                            part.chars().take(40).collect::<String>()
                        )))
                    }
                },
            };
            check_key(key)?;
            check_value(key, value, true)?;
            if out.get(key).is_some() {
                return Err(PropertyError::DuplicateKey(key.to_string()));
            }
            out.entries.push((key.to_string(), value.to_string()));
        }
        if out.is_empty() {
            return Err(PropertyError::Malformed("empty property string".into()));
        }
        Ok(out)
    }

    /// Set (or replace) a key. The value is refused if it could smuggle in another key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), PropertyError> {
        check_key(key)?;
        check_value(key, value, false)?;
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value.to_string(),
            None => self.entries.push((key.to_string(), value.to_string())),
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// PVE's canonical print: `first` (if present, printed bare when it is the default key),
    /// then the other keys sorted.
    pub fn canonical(&self, first: &str, bare_first: bool) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.get(first) {
            parts.push(if bare_first {
                v.to_string()
            } else {
                format!("{first}={v}")
            });
        }
        let mut rest: Vec<&(String, String)> =
            self.entries.iter().filter(|(k, _)| k != first).collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        parts.extend(rest.into_iter().map(|(k, v)| format!("{k}={v}")));
        parts.join(",")
    }
}

impl fmt::Display for PropertyString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A MAC address. Parsed case-insensitively; printed upper-case as PVE stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// PVE's unicast check: the first octet's lowest bit (multicast) is clear.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }

    /// A random MAC with `prefix` (PVE default `BC:24:11`, the Proxmox OUI), multicast bit
    /// cleared like pve-common `random_ether_addr`.
    pub fn random(prefix: &[u8]) -> MacAddr {
        let mut b: [u8; 6] = rand::random();
        for (i, p) in prefix.iter().take(6).enumerate() {
            b[i] = *p;
        }
        b[0] &= 0xfe;
        MacAddr(b)
    }
}

impl FromStr for MacAddr {
    type Err = PropertyError;
    fn from_str(s: &str) -> Result<Self, PropertyError> {
        let bad = || PropertyError::Invalid {
            key: "hwaddr".into(),
            message: "value does not look like a valid unicast MAC address".into(),
        };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

fn invalid(key: &str, message: impl Into<String>) -> PropertyError {
    PropertyError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// PVE's `[-_.\w\d]+` for interface and bridge names.
fn check_ifname(key: &str, v: &str) -> Result<(), PropertyError> {
    check_value(key, v, false)?;
    if v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Ok(())
    } else {
        Err(invalid(key, "value does not match the regex pattern"))
    }
}

/// A `;`-separated list whose items all satisfy `item` (`trunks`, `mountoptions`, the
/// `mount` feature). `;` is PVE's in-value list separator there; it cannot start a new key,
/// and no other key may contain it.
fn check_list(key: &str, v: &str, item: impl Fn(&str) -> bool) -> Result<(), PropertyError> {
    check_value(key, v, true)?;
    if v.split(';').all(|i| !i.is_empty() && item(i)) {
        Ok(())
    } else {
        Err(invalid(key, "value does not match the regex pattern"))
    }
}

fn check_uint(key: &str, v: &str, min: u64, max: u64) -> Result<(), PropertyError> {
    check_value(key, v, false)?;
    match v.parse::<u64>() {
        Ok(n) if v.bytes().all(|b| b.is_ascii_digit()) && (min..=max).contains(&n) => Ok(()),
        Ok(_) => Err(invalid(
            key,
            format!("value must be in the range {min}–{max}"),
        )),
        Err(_) => Err(invalid(
            key,
            format!("type check ('integer') failed - got '{v}'"),
        )),
    }
}

fn check_cidr(key: &str, v: &str, v6: bool) -> Result<(), PropertyError> {
    let bad = || {
        invalid(
            key,
            if v6 {
                "invalid format - value does not look like a valid IPv6 network configuration"
            } else {
                "invalid format - value does not look like a valid IPv4 network configuration"
            },
        )
    };
    let (addr, prefix) = v.split_once('/').ok_or_else(bad)?;
    let max = if v6 { 128 } else { 32 };
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 3
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && prefix.parse::<u8>().is_ok_and(|p| p <= max);
    let addr_ok = if v6 {
        addr.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        addr.parse::<std::net::Ipv4Addr>().is_ok()
    };
    if prefix_ok && addr_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

fn unicast(mac: &str) -> Result<MacAddr, PropertyError> {
    let mac: MacAddr = mac.parse()?;
    if mac.is_unicast() {
        Ok(mac)
    } else {
        Err(invalid(
            "hwaddr",
            "value does not look like a valid unicast MAC address",
        ))
    }
}

/// The typed key set of `netN` (reference §3.3), apart from `name`, `bridge`, `hwaddr`, `ip`
/// which have their own fields. Returns the value as PVE stores it (booleans as `1`/`0`).
fn check_net_other(key: &str, v: &str) -> Result<String, PropertyError> {
    match key {
        "firewall" | "link_down" | "host-managed" => {
            check_value(key, v, false)?;
            normalize_bool(key, v)
        }
        "gw" => {
            check_value(key, v, false)?;
            v.parse::<std::net::Ipv4Addr>()
                .map(|_| v.to_string())
                .map_err(|_| {
                    invalid(
                        key,
                        "invalid format - value does not look like a valid IPv4 address",
                    )
                })
        }
        "gw6" => {
            check_value(key, v, false)?;
            v.parse::<std::net::Ipv6Addr>()
                .map(|_| v.to_string())
                .map_err(|_| {
                    invalid(
                        key,
                        "invalid format - value does not look like a valid IPv6 address",
                    )
                })
        }
        "ip6" => {
            check_value(key, v, false)?;
            if !matches!(v, "auto" | "dhcp" | "manual") {
                check_cidr(key, v, true)?;
            }
            Ok(v.to_string())
        }
        "tag" => check_uint(key, v, 1, 4094).map(|_| v.to_string()),
        "mtu" => check_uint(key, v, 64, 65535).map(|_| v.to_string()),
        "trunks" => check_list(key, v, |i| {
            i.bytes().all(|b| b.is_ascii_digit()) && i.parse::<u16>().is_ok_and(|n| n <= 4094)
        })
        .map(|_| v.to_string()),
        "rate" => {
            check_value(key, v, false)?;
            let ok = v.parse::<f64>().is_ok_and(|r| r.is_finite() && r >= 0.0)
                && v.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            if ok {
                Ok(v.to_string())
            } else {
                Err(invalid(
                    key,
                    format!("type check ('number') failed - got '{v}'"),
                ))
            }
        }
        "type" => {
            check_value(key, v, false)?;
            if v == "veth" {
                Ok(v.to_string())
            } else {
                Err(invalid(
                    key,
                    format!("value '{v}' does not have a value in the enumeration 'veth'"),
                ))
            }
        }
        _ => Err(PropertyError::UnknownKey(key.to_string())),
    }
}

fn check_net_ip(v: &str) -> Result<(), PropertyError> {
    check_value("ip", v, false)?;
    if matches!(v, "dhcp" | "manual") {
        Ok(())
    } else {
        check_cidr("ip", v, false)
    }
}

/// PVE accepts `1|on|yes|true` and `0|off|no|false`, stored as `1`/`0`.
fn normalize_bool(key: &str, v: &str) -> Result<String, PropertyError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Ok("1".into()),
        "0" | "off" | "no" | "false" => Ok("0".into()),
        _ => Err(invalid(
            key,
            format!("type check ('boolean') failed - got '{v}'"),
        )),
    }
}

/// A container NIC (`net[n]`, reference §3.3). `netN` has no default key; `name` is required.
///
/// The fields are public for reading and pattern matching. Build and change a NIC through
/// [`NetConfig::new`], [`NetConfig::dhcp`] and [`NetConfig::set`], which validate every value;
/// a value written straight into a field is checked again by [`NetConfig::try_to_string`]
/// (and `Display`, which fails rather than print an unsafe value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub name: String,
    pub bridge: Option<String>,
    pub hwaddr: Option<MacAddr>,
    pub ip: Option<String>,
    /// Every other key of the `netN` schema, already validated and normalised.
    pub other: BTreeMap<String, String>,
}

impl NetConfig {
    /// Every key of PVE's `netN` schema (reference §3.3).
    pub const KEYS: &'static [&'static str] = &[
        "name",
        "bridge",
        "hwaddr",
        "ip",
        "gw",
        "ip6",
        "gw6",
        "firewall",
        "tag",
        "trunks",
        "rate",
        "mtu",
        "link_down",
        "host-managed",
        "type",
    ];

    /// A NIC with only its (validated) name.
    pub fn new(name: &str) -> Result<NetConfig, PropertyError> {
        check_ifname("name", name)?;
        Ok(NetConfig {
            name: name.into(),
            bridge: None,
            hwaddr: None,
            ip: None,
            other: BTreeMap::new(),
        })
    }

    /// `name=<name>,bridge=<bridge>,hwaddr=<mac>,ip=dhcp,type=veth`.
    pub fn dhcp(name: &str, bridge: &str, mac: &str) -> Result<NetConfig, PropertyError> {
        let mut n = NetConfig::new(name)?;
        n.set("bridge", bridge)?;
        n.set("hwaddr", mac)?;
        n.set("ip", "dhcp")?;
        n.set("type", "veth")?;
        Ok(n)
    }

    /// The same NIC with another MAC: every other key is kept (a `netN` written without
    /// `hwaddr` would get a fresh random MAC, reference §3.3).
    pub fn with_hwaddr(&self, mac: &str) -> Result<NetConfig, PropertyError> {
        let mut n = self.clone();
        n.set("hwaddr", mac)?;
        Ok(n)
    }

    /// Set one key of the `netN` schema, validated as PVE would (unknown keys, bad formats,
    /// and any value that could smuggle in another key are refused).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), PropertyError> {
        match key {
            "name" => {
                check_ifname(key, value)?;
                self.name = value.into();
            }
            "bridge" => {
                check_ifname(key, value)?;
                self.bridge = Some(value.into());
            }
            "hwaddr" => {
                check_value(key, value, false)?;
                self.hwaddr = Some(unicast(value)?);
            }
            "ip" => {
                check_net_ip(value)?;
                self.ip = Some(value.into());
            }
            _ => {
                let v = check_net_other(key, value)?;
                self.other.insert(key.into(), v);
            }
        }
        Ok(())
    }

    /// Remove an optional key; `name` cannot be removed.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        match key {
            "bridge" => self.bridge.take(),
            "hwaddr" => self.hwaddr.take().map(|m| m.to_string()),
            "ip" => self.ip.take(),
            _ => self.other.remove(key),
        }
    }

    /// Check every field again (they are public, so they may have been written directly).
    pub fn validate(&self) -> Result<(), PropertyError> {
        check_ifname("name", &self.name)?;
        if let Some(b) = &self.bridge {
            check_ifname("bridge", b)?;
        }
        if let Some(m) = &self.hwaddr {
            unicast(&m.to_string())?;
        }
        if let Some(ip) = &self.ip {
            check_net_ip(ip)?;
        }
        for (k, v) in &self.other {
            if matches!(k.as_str(), "name" | "bridge" | "hwaddr" | "ip") {
                return Err(PropertyError::DuplicateKey(k.clone()));
            }
            if check_net_other(k, v)? != *v {
                return Err(invalid(k, "value is not in PVE's canonical form (use set)"));
            }
        }
        Ok(())
    }

    /// The canonical text (`name` first, the other keys sorted, as PVE stores it), or the
    /// reason a field is not acceptable.
    pub fn try_to_string(&self) -> Result<String, PropertyError> {
        self.validate()?;
        let mut p = PropertyString::new();
        p.entries.push(("name".into(), self.name.clone()));
        if let Some(b) = &self.bridge {
            p.entries.push(("bridge".into(), b.clone()));
        }
        if let Some(m) = &self.hwaddr {
            p.entries.push(("hwaddr".into(), m.to_string()));
        }
        if let Some(ip) = &self.ip {
            p.entries.push(("ip".into(), ip.clone()));
        }
        for (k, v) in &self.other {
            p.entries.push((k.clone(), v.clone()));
        }
        Ok(p.canonical("name", false))
    }
}

impl FromStr for NetConfig {
    type Err = PropertyError;
    fn from_str(s: &str) -> Result<Self, PropertyError> {
        let p = PropertyString::parse(s, None)?;
        let name = p
            .get("name")
            .ok_or_else(|| PropertyError::Missing("name".into()))?;
        let mut n = NetConfig::new(name)?;
        for (k, v) in &p.entries {
            if k != "name" {
                n.set(k, v)?;
            }
        }
        Ok(n)
    }
}

impl fmt::Display for NetConfig {
    /// Canonical: `name` first, the other keys sorted (as PVE stores it). Fails (so
    /// `to_string` panics) only if a public field was given an unsafe value directly; use
    /// [`NetConfig::try_to_string`] where that is possible.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.try_to_string().map_err(|_| fmt::Error)?)
    }
}

/// `rootfs` or `mp[n]` (reference §3.4, §3.6). The default key is `volume`.
///
/// As with [`NetConfig`], change it through [`MountConfig::set`]; `Display` re-validates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    pub volume: String,
    pub mp: Option<String>,
    /// Bytes.
    pub size: Option<u64>,
    pub other: BTreeMap<String, String>,
}

fn check_mount_path(p: &str) -> Result<(), PropertyError> {
    check_value("mp", p, false)?;
    if !p.starts_with('/') {
        return Err(invalid("mp", "mount point path must be absolute"));
    }
    if p.contains("/./") || p.contains("/../") || p.ends_with("/..") || p.ends_with("/.") {
        return Err(invalid(
            "mp",
            "mount point path may not contain '.' or '..' components",
        ));
    }
    Ok(())
}

/// The `rootfs`/`mpN` keys other than `volume`, `mp`, `size`.
fn check_mount_other(key: &str, v: &str) -> Result<String, PropertyError> {
    match key {
        "acl" | "ro" | "quota" | "backup" | "replicate" | "shared" | "keepattrs" => {
            check_value(key, v, false)?;
            normalize_bool(key, v)
        }
        // pve-container `$valid_mount_option_re`.
        "mountoptions" => check_list(key, v, |i| {
            matches!(
                i,
                "discard" | "lazytime" | "noatime" | "nodev" | "noexec" | "nosuid"
            )
        })
        .map(|_| v.to_string()),
        "idmap" => check_value(key, v, false).map(|_| v.to_string()),
        _ => Err(PropertyError::UnknownKey(key.to_string())),
    }
}

/// A disk size as a mount's `size=` key: PVE's `disk-size` has no relative `+`.
fn mount_size(v: &str) -> Result<u64, PropertyError> {
    check_value("size", v, false)?;
    if v.starts_with('+') {
        return Err(invalid("size", "value does not match the regex pattern"));
    }
    parse_disk_size(v)
}

impl MountConfig {
    /// Every key of PVE's `rootfs`/`mpN` schema (reference §3.4).
    pub const KEYS: &'static [&'static str] = &[
        "volume",
        "mp",
        "size",
        "acl",
        "ro",
        "quota",
        "backup",
        "replicate",
        "shared",
        "mountoptions",
        "idmap",
        "keepattrs",
    ];

    /// A new volume to allocate: `<storage>:<GiB>,mp=<path>` (reference §3.6).
    pub fn new_volume(volume: &str, mp: &str) -> Result<MountConfig, PropertyError> {
        check_value("volume", volume, false)?;
        let (sid, size) = volume
            .split_once(':')
            .ok_or_else(|| invalid("volume", "expected <storage>:<GiB>"))?;
        let sid_ok = sid.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && sid.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        let size_ok = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && size.parse::<f64>().is_ok_and(|v| v > 0.0);
        if !sid_ok || !size_ok {
            return Err(invalid("volume", "expected <storage>:<GiB>"));
        }
        check_mount_path(mp)?;
        Ok(MountConfig {
            volume: volume.into(),
            mp: Some(mp.into()),
            size: None,
            other: BTreeMap::new(),
        })
    }

    /// Set one key, validated (unknown keys, bad formats and unsafe characters are refused).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), PropertyError> {
        match key {
            "volume" => {
                check_value(key, value, false)?;
                self.volume = value.into();
            }
            "mp" => {
                check_mount_path(value)?;
                self.mp = Some(value.into());
            }
            "size" => self.size = Some(mount_size(value)?),
            _ => {
                let v = check_mount_other(key, value)?;
                self.other.insert(key.into(), v);
            }
        }
        Ok(())
    }

    fn parse_with(s: &str, need_mp: bool) -> Result<MountConfig, PropertyError> {
        let p = PropertyString::parse(s, Some("volume"))?;
        let volume = p
            .get("volume")
            .ok_or_else(|| PropertyError::Missing("volume".into()))?;
        check_value("volume", volume, false)?;
        let mut m = MountConfig {
            volume: volume.to_string(),
            mp: None,
            size: None,
            other: BTreeMap::new(),
        };
        for (k, v) in &p.entries {
            if k != "volume" {
                m.set(k, v)?;
            }
        }
        if need_mp && m.mp.is_none() {
            return Err(PropertyError::Missing("mp".into()));
        }
        Ok(m)
    }

    /// `rootfs`: `mp` is optional (it is always `/`).
    pub fn parse_rootfs(s: &str) -> Result<MountConfig, PropertyError> {
        Self::parse_with(s, false)
    }

    /// `mpN`: `mp=<path>` is required.
    pub fn parse_mp(s: &str) -> Result<MountConfig, PropertyError> {
        Self::parse_with(s, true)
    }

    /// The storage id of the volume (`local-lvm` of `local-lvm:vm-100-disk-0`).
    pub fn storage(&self) -> Option<&str> {
        self.volume.split_once(':').map(|(s, _)| s)
    }

    /// Check every field again (they are public).
    pub fn validate(&self) -> Result<(), PropertyError> {
        check_value("volume", &self.volume, false)?;
        if let Some(m) = &self.mp {
            check_mount_path(m)?;
        }
        for (k, v) in &self.other {
            if matches!(k.as_str(), "volume" | "mp" | "size") {
                return Err(PropertyError::DuplicateKey(k.clone()));
            }
            if check_mount_other(k, v)? != *v {
                return Err(invalid(k, "value is not in PVE's canonical form (use set)"));
            }
        }
        Ok(())
    }

    /// Canonical: the volume bare, then the other keys sorted (`…,mp=/data,size=8G`).
    pub fn try_to_string(&self) -> Result<String, PropertyError> {
        self.validate()?;
        let mut p = PropertyString::new();
        p.entries.push(("volume".into(), self.volume.clone()));
        if let Some(m) = &self.mp {
            p.entries.push(("mp".into(), m.clone()));
        }
        if let Some(s) = self.size {
            p.entries.push(("size".into(), format_disk_size(s)));
        }
        for (k, v) in &self.other {
            p.entries.push((k.clone(), v.clone()));
        }
        Ok(p.canonical("volume", true))
    }
}

impl fmt::Display for MountConfig {
    /// See [`MountConfig::try_to_string`]; fails only on a field written directly with an
    /// unsafe value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.try_to_string().map_err(|_| fmt::Error)?)
    }
}

/// `features` (reference §3.4): `mount=…;…,nesting=0|1,keyctl=0|1,fuse=0|1,mknod=0|1,
/// force_rw_sys=0|1`. No default key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Features {
    pub nesting: bool,
    pub keyctl: bool,
    /// `fuse`, `mknod`, `force_rw_sys` (as `1`/`0`) and `mount` (`;`-separated fs types).
    pub other: BTreeMap<String, String>,
}

fn check_feature_other(key: &str, v: &str) -> Result<String, PropertyError> {
    match key {
        "fuse" | "mknod" | "force_rw_sys" => {
            check_value(key, v, false)?;
            normalize_bool(key, v)
        }
        "mount" => check_list(key, v, |i| {
            i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map(|_| v.to_string()),
        _ => Err(PropertyError::UnknownKey(key.to_string())),
    }
}

impl Features {
    /// Set one key, validated.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), PropertyError> {
        match key {
            "nesting" => self.nesting = normalize_bool(key, value)? == "1",
            "keyctl" => self.keyctl = normalize_bool(key, value)? == "1",
            _ => {
                let v = check_feature_other(key, value)?;
                self.other.insert(key.into(), v);
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), PropertyError> {
        for (k, v) in &self.other {
            if check_feature_other(k, v)? != *v {
                return Err(invalid(k, "value is not in PVE's canonical form (use set)"));
            }
        }
        Ok(())
    }

    /// Keys sorted; `nesting`/`keyctl` printed only when on.
    pub fn try_to_string(&self) -> Result<String, PropertyError> {
        self.validate()?;
        let mut all: BTreeMap<&str, String> = self
            .other
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        if self.nesting {
            all.insert("nesting", "1".into());
        }
        if self.keyctl {
            all.insert("keyctl", "1".into());
        }
        let parts: Vec<String> = all.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok(parts.join(","))
    }
}

impl FromStr for Features {
    type Err = PropertyError;
    fn from_str(s: &str) -> Result<Self, PropertyError> {
        let mut f = Features::default();
        if s.trim().is_empty() {
            return Ok(f);
        }
        let p = PropertyString::parse(s, None)?;
        for (k, v) in &p.entries {
            f.set(k, v)?;
        }
        Ok(f)
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.try_to_string().map_err(|_| fmt::Error)?)
    }
}

const UNITS: [(u8, u64); 4] = [
    (b'K', 1 << 10),
    (b'M', 1 << 20),
    (b'G', 1 << 30),
    (b'T', 1 << 40),
];

/// `\+?\d+(\.\d+)?[KMGT]?` → bytes, as pve-common `parse_size` does: a bare number is bytes
/// (reference §5: `size=10` is 10 bytes), units are binary, a fraction is allowed and the
/// result is truncated to whole bytes (Perl `int`). The leading `+` of a relative resize is
/// accepted and ignored: the caller knows whether it sent one.
pub fn parse_disk_size(s: &str) -> Result<u64, PropertyError> {
    let bad = || {
        invalid(
            "size",
            format!(
                "value '{}' does not match the regex pattern \\+?\\d+(\\.\\d+)?[KMGT]?",
                s.chars().take(40).collect::<String>()
            ),
        )
    };
    let body = s.strip_prefix('+').unwrap_or(s);
    let (num, mult) = match body.as_bytes().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m = UNITS
                .iter()
                .find(|(u, _)| u == c)
                .map(|(_, m)| *m)
                .ok_or_else(bad)?;
            (&body[..body.len() - 1], m)
        }
        _ => (body, 1),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return Err(bad()),
        None => (num, ""),
    };
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // Exact decimal arithmetic: int·mult + frac·mult / 10^len(frac), truncated.
    let int: u128 = int.parse().map_err(|_| bad())?;
    let mut bytes = int.checked_mul(u128::from(mult)).ok_or_else(bad)?;
    let frac = frac.trim_end_matches('0');
    if !frac.is_empty() {
        if frac.len() > 30 {
            return Err(bad());
        }
        let f: u128 = frac.parse().map_err(|_| bad())?;
        let scale = 10u128.pow(frac.len() as u32);
        let extra = f.checked_mul(u128::from(mult)).ok_or_else(bad)? / scale;
        bytes = bytes.checked_add(extra).ok_or_else(bad)?;
    }
    u64::try_from(bytes).map_err(|_| bad())
}

/// Bytes → PVE's print (pve-common `format_size`): the largest of K/M/G/T that divides
/// evenly, else plain bytes (`8G`, `1536M`, `1000`). Like PVE, 0 prints as `0T`.
pub fn format_disk_size(bytes: u64) -> String {
    if !bytes.is_multiple_of(1024) {
        return bytes.to_string();
    }
    let mut unit = 0;
    let mut v = bytes / 1024;
    while unit < 3 && v.is_multiple_of(1024) {
        v /= 1024;
        unit += 1;
    }
    format!("{v}{}", UNITS[unit].0 as char)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn net_canonical_form() {
        let n: NetConfig =
            "bridge=vmbr0,name=eth0,ip=dhcp,hwaddr=bc:24:11:5e:0a:1f,type=veth,firewall=yes"
                .parse()
                .unwrap();
        assert_eq!(
            n.to_string(),
            "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:5E:0A:1F,ip=dhcp,type=veth"
        );
        assert!(
            matches!("name=eth0,foo=1".parse::<NetConfig>(), Err(PropertyError::UnknownKey(k)) if k == "foo")
        );
        assert!(matches!(
            "name=eth0,name=eth1".parse::<NetConfig>(),
            Err(PropertyError::DuplicateKey(_))
        ));
        assert!(matches!(
            "bridge=vmbr0".parse::<NetConfig>(),
            Err(PropertyError::Missing(_))
        ));
        assert!(
            "name=eth0,hwaddr=01:00:00:00:00:00"
                .parse::<NetConfig>()
                .is_err(),
            "multicast MAC"
        );
        let n2 = n.with_hwaddr("BC:24:11:00:00:01").unwrap();
        assert_eq!(
            n2.to_string(),
            "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth"
        );
    }

    #[test]
    fn mounts() {
        let r = MountConfig::parse_rootfs("local-lvm:vm-100-disk-0,size=8G").unwrap();
        assert_eq!(r.size, Some(8 << 30));
        assert_eq!(r.storage(), Some("local-lvm"));
        assert_eq!(r.to_string(), "local-lvm:vm-100-disk-0,size=8G");
        let m = MountConfig::parse_mp("local-lvm:vm-123-disk-1,size=8G,mp=/data,backup=1").unwrap();
        assert_eq!(
            m.to_string(),
            "local-lvm:vm-123-disk-1,backup=1,mp=/data,size=8G"
        );
        assert!(MountConfig::parse_mp("local-lvm:vm-1-disk-1,size=1G").is_err());
        assert!(MountConfig::new_volume("local-lvm:4", "/srv/a,mp=/etc").is_err());
        assert!(MountConfig::new_volume("local-lvm:4", "/srv/../etc").is_err());
        assert_eq!(
            MountConfig::new_volume("local-lvm:1.5", "/srv/data")
                .unwrap()
                .to_string(),
            "local-lvm:1.5,mp=/srv/data"
        );
        assert_eq!(
            Features::from_str("nesting=1,keyctl=1")
                .unwrap()
                .to_string(),
            "keyctl=1,nesting=1"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_disk_size("10").unwrap(), 10);
        assert_eq!(parse_disk_size("1.5G").unwrap(), 1536 << 20);
        assert_eq!(parse_disk_size("+2G").unwrap(), 2 << 30);
        assert_eq!(parse_disk_size("0.5K").unwrap(), 512);
        assert_eq!(
            parse_disk_size("1.1K").unwrap(),
            1126,
            "truncated like Perl int()"
        );
        assert_eq!(parse_disk_size("4T").unwrap(), 4 << 40);
        assert!(parse_disk_size("").is_err());
        assert!(parse_disk_size("G").is_err());
        assert!(parse_disk_size("8g").is_err(), "units are upper-case");
        assert!(parse_disk_size("-1G").is_err());
        assert!(parse_disk_size("99999999999T").is_err(), "overflow");
        assert!(MountConfig::parse_rootfs("local-lvm:vm-1-disk-0,size=+1G").is_err());
        assert_eq!(format_disk_size(0), "0T");
        assert_eq!(format_disk_size(512 << 20), "512M");
        assert_eq!(format_disk_size(2 << 40), "2T");
        assert_eq!(format_disk_size(3 << 10), "3K");
        assert_eq!(format_disk_size(1025), "1025");
        assert!(parse_disk_size("2X").is_err());
        assert!(parse_disk_size("1.G").is_err());
        assert_eq!(format_disk_size(8 << 30), "8G");
        assert_eq!(format_disk_size(1536 << 20), "1536M");
        assert_eq!(format_disk_size(1000), "1000");
    }

    #[test]
    fn pve_parse_rules() {
        // The default key may come anywhere, once; empty parts are skipped.
        let p = PropertyString::parse("size=8G,,local:vm-1-disk-0", Some("volume")).unwrap();
        assert_eq!(p.get("volume"), Some("local:vm-1-disk-0"));
        assert!(matches!(
            PropertyString::parse("a:1,b:2", Some("volume")),
            Err(PropertyError::DuplicateKey(k)) if k == "volume"
        ));
        assert!(matches!(
            PropertyString::parse("local:1,volume=x", Some("volume")),
            Err(PropertyError::DuplicateKey(_))
        ));
        assert!(PropertyString::parse("eth0,bridge=vmbr0", None).is_err());
        assert!(PropertyString::parse("", None).is_err());
        assert!(PropertyString::parse("name=", None).is_err());
        let mut p = PropertyString::new();
        p.set("b", "2").unwrap();
        p.set("a", "1").unwrap();
        p.set("b", "3").unwrap();
        assert_eq!(p.to_string(), "b=3,a=1");
        assert_eq!(p.canonical("a", false), "a=1,b=3");
        assert_eq!(p.remove("b").as_deref(), Some("3"));
        let e = p.set("a", "x,ip=1.2.3.4").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("a: value contains a forbidden character (',')"),
            "{e}"
        );
        assert!(p.set("A", "1").is_err(), "keys are lower-case");
    }

    #[test]
    fn net_values_checked_like_pve() {
        let mut n = NetConfig::new("eth0").unwrap();
        for (k, v) in [
            ("ip", "10.0.0.5/24"),
            ("gw", "10.0.0.1"),
            ("ip6", "auto"),
            ("tag", "4094"),
            ("mtu", "1500"),
            ("trunks", "10;20;30"),
            ("rate", "12.5"),
            ("link_down", "off"),
            ("host-managed", "true"),
        ] {
            n.set(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        assert_eq!(
            n.to_string(),
            "name=eth0,gw=10.0.0.1,host-managed=1,ip=10.0.0.5/24,ip6=auto,link_down=0,mtu=1500,rate=12.5,tag=4094,trunks=10;20;30"
        );
        for (k, v) in [
            ("ip", "10.0.0.5"),
            ("ip", "300.0.0.1/24"),
            ("ip", "10.0.0.5/33"),
            ("gw", "x"),
            ("ip6", "fe80::1"),
            ("tag", "0"),
            ("tag", "4095"),
            ("mtu", "63"),
            ("trunks", "10;;20"),
            ("trunks", "10;x"),
            ("type", "macvlan"),
            ("firewall", "maybe"),
            ("hwaddr", "01:23:45:67:89:AB"),
            ("hwaddr", "BC:24:11:00:00"),
            ("bridge", "vmbr 0"),
            ("name", ""),
            ("vlan", "1"),
        ] {
            assert!(n.set(k, v).is_err(), "{k}={v} accepted");
        }
        assert!(matches!(n.set("vlan", "1"), Err(PropertyError::UnknownKey(k)) if k == "vlan"));
        // A hostile value written straight into a public field is caught when printing.
        let mut raw = n.clone();
        raw.other.insert("tag".into(), "1,ip=6.6.6.6/32".into());
        assert!(raw.try_to_string().is_err());
        let mut raw = n.clone();
        raw.bridge = Some("vmbr0,hwaddr=02:00:00:00:00:01".into());
        assert!(raw.try_to_string().is_err());
        let mut raw = n.clone();
        raw.other.insert("ip".into(), "dhcp".into());
        assert!(raw.try_to_string().is_err(), "typed key in other");
        assert_eq!(n.remove("tag").as_deref(), Some("4094"));
        // PVE's stored MACs are upper-case; input case does not matter.
        let m: MacAddr = "bc:24:11:aB:cD:eF".parse().unwrap();
        assert_eq!(m.to_string(), "BC:24:11:AB:CD:EF");
        assert!("bc-24-11-ab-cd-ef".parse::<MacAddr>().is_err());
        assert!("bc:24:11:ab:cd:eff".parse::<MacAddr>().is_err());
        assert!("+c:24:11:ab:cd:ef".parse::<MacAddr>().is_err());
        assert!(!"03:00:00:00:00:00".parse::<MacAddr>().unwrap().is_unicast());
    }

    #[test]
    fn mount_and_feature_values_checked() {
        let mut m = MountConfig::parse_rootfs("local-lvm:vm-100-disk-0,size=8G").unwrap();
        m.set("mountoptions", "noatime;nodev").unwrap();
        m.set("acl", "on").unwrap();
        assert_eq!(
            m.to_string(),
            "local-lvm:vm-100-disk-0,acl=1,mountoptions=noatime;nodev,size=8G"
        );
        assert!(m.set("mountoptions", "noatime;rw").is_err());
        assert!(m.set("mp", "relative/path").is_err());
        assert!(m.set("volume", "local:1,mp=/etc").is_err());
        assert!(m.set("bogus", "1").is_err());
        let mut raw = m.clone();
        raw.volume = "local:1,mp=/etc".into();
        assert!(raw.try_to_string().is_err());
        let f: Features = "mount=nfs;cifs,nesting=1,fuse=yes".parse().unwrap();
        assert!(f.nesting && !f.keyctl);
        assert_eq!(f.to_string(), "fuse=1,mount=nfs;cifs,nesting=1");
        assert!("nesting=2".parse::<Features>().is_err());
        assert!("mount=nfs,mount=cifs".parse::<Features>().is_err());
        assert!("foo=1".parse::<Features>().is_err());
        assert_eq!("".parse::<Features>().unwrap(), Features::default());
    }

    #[test]
    fn mac_random_is_unicast_with_prefix() {
        for _ in 0..200 {
            let m = MacAddr::random(&[0xBC, 0x24, 0x11]);
            assert!(m.is_unicast());
            assert!(m.to_string().starts_with("BC:24:11:"));
        }
    }

    fn safe_value() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_./:+@-]{1,24}"
    }
    fn key() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_-]{0,10}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn property_string_round_trips(pairs in proptest::collection::btree_map(key(), safe_value(), 1..8)) {
            let mut p = PropertyString::new();
            for (k, v) in &pairs { p.set(k, v).unwrap(); }
            let text = p.to_string();
            let back = PropertyString::parse(&text, None).unwrap();
            prop_assert_eq!(back, p);
        }

        #[test]
        fn hostile_values_never_make_keys(k in key(), prefix in safe_value(), bad in prop::sample::select(vec![",", "=", ";", "\n", "\r", "\u{0}", "\u{7f}", ",ip=1.2.3.4", "\nnet1: x"]), suffix in "[a-z0-9=,]{0,8}") {
            let value = format!("{prefix}{bad}{suffix}");
            let mut p = PropertyString::new();
            p.set("name", "eth0").unwrap();
            prop_assert!(p.set(&k, &value).is_err());
            // Whatever was accepted still parses to the same keys.
            let back = PropertyString::parse(&p.to_string(), None).unwrap();
            prop_assert_eq!(back.len(), p.len());
            prop_assert!(NetConfig::dhcp(&value, "vmbr0", "BC:24:11:00:00:01").is_err());
            prop_assert!(NetConfig::dhcp("eth0", &value, "BC:24:11:00:00:01").is_err());
            let path = format!("/{value}");
            prop_assert!(MountConfig::new_volume("local-lvm:4", &path).is_err());
            // Every key of every typed struct refuses it, and what is printed afterwards still
            // has exactly the keys it had.
            let mut n = NetConfig::dhcp("eth0", "vmbr0", "BC:24:11:00:00:01").unwrap();
            let before = n.to_string();
            // `;` is PVE's item separator inside the three list-valued keys (`trunks`,
            // `mountoptions`, the `mount` feature), where each item has a strict pattern; it
            // cannot start a key. Everywhere else it is refused.
            let list_ok = bad == ";";
            for key in NetConfig::KEYS {
                if list_ok && *key == "trunks" { continue; }
                prop_assert!(n.set(key, &value).is_err(), "net {}={:?} accepted", key, value);
            }
            prop_assert_eq!(n.to_string(), before.clone());
            prop_assert_eq!(PropertyString::parse(&before, None).unwrap().len(), 5);
            if list_ok {
                // Even where `;` is allowed, an accepted value never adds a key.
                if n.set("trunks", &value).is_ok() {
                    prop_assert_eq!(PropertyString::parse(&n.to_string(), None).unwrap().len(), 6);
                }
            }
            let mut m = MountConfig::new_volume("local-lvm:4", "/srv").unwrap();
            for key in MountConfig::KEYS {
                if list_ok && *key == "mountoptions" { continue; }
                prop_assert!(m.set(key, &value).is_err(), "mount {}={:?} accepted", key, value);
            }
            prop_assert_eq!(m.to_string(), "local-lvm:4,mp=/srv");
            let mut f = Features::default();
            for key in ["nesting", "keyctl", "fuse", "mknod", "force_rw_sys", "mount"] {
                if list_ok && key == "mount" { continue; }
                prop_assert!(f.set(key, &value).is_err(), "feature {}={:?} accepted", key, value);
            }
            // Written straight into the public maps, it is refused at print time.
            let mut raw = n.clone();
            raw.other.insert(k.clone(), value.clone());
            prop_assert!(raw.try_to_string().is_err());
            let mut raw = m.clone();
            raw.other.insert(k.clone(), value.clone());
            prop_assert!(raw.try_to_string().is_err());
        }

        #[test]
        fn any_accepted_net_value_keeps_its_key(key in prop::sample::select(NetConfig::KEYS.to_vec()), value in "\\PC{0,24}") {
            let mut n = NetConfig::new("eth0").unwrap();
            if n.set(key, &value).is_ok() {
                let text = n.try_to_string().unwrap();
                let p = PropertyString::parse(&text, None).unwrap();
                prop_assert!(p.len() <= 2, "{} gave {}", value, text);
                let back: NetConfig = text.parse().unwrap();
                prop_assert_eq!(back, n);
            }
        }

        #[test]
        fn net_config_round_trips(name in "[a-z][a-z0-9]{0,7}", bridge in "[a-z][a-z0-9_.-]{0,10}", mac in any::<[u8; 6]>(), fw in any::<bool>(), tag in proptest::option::of(1u16..4095),
                                ip in proptest::option::of((any::<u32>(), 0u8..=32)), mtu in proptest::option::of(64u32..=65535), trunks in any::<bool>()) {
            let mut mac = mac; mac[0] &= 0xfe;
            let mac = MacAddr(mac).to_string();
            let mut n = NetConfig::dhcp(&name, &bridge, &mac).unwrap();
            n.set("firewall", if fw { "yes" } else { "off" }).unwrap();
            if let Some(t) = tag { n.set("tag", &t.to_string()).unwrap(); }
            if let Some(ip) = ip { n.set("ip", &format!("{}/{}", std::net::Ipv4Addr::from(ip.0), ip.1)).unwrap(); }
            if let Some(mtu) = mtu { n.set("mtu", &mtu.to_string()).unwrap(); }
            if trunks { n.set("trunks", "10;20").unwrap(); }
            let back: NetConfig = n.to_string().parse().unwrap();
            prop_assert_eq!(back, n);
        }

        #[test]
        fn mount_config_round_trips(sid in "[a-z][a-z0-9-]{0,8}", disk in 0u32..99, path in "(/[a-z0-9_]{1,8}){1,4}", size in 1u64..(1 << 44),
                                    bools in proptest::collection::btree_map(prop::sample::select(vec!["acl", "ro", "quota", "backup", "replicate", "shared", "keepattrs"]), any::<bool>(), 0..4)) {
            let mut m = MountConfig { volume: format!("{sid}:vm-100-disk-{disk}"), mp: Some(path), size: Some(size), other: BTreeMap::new() };
            for (k, b) in bools { m.set(k, if b { "on" } else { "0" }).unwrap(); }
            let rootfs = MountConfig::parse_rootfs(&m.to_string()).unwrap();
            prop_assert_eq!(&rootfs, &m);
            let back = MountConfig::parse_mp(&m.to_string()).unwrap();
            prop_assert_eq!(back, m);
        }

        #[test]
        fn features_round_trip(nesting in any::<bool>(), keyctl in any::<bool>(), fuse in proptest::option::of(any::<bool>()),
                               mount in proptest::option::of(proptest::collection::vec("[a-z0-9]{1,6}", 1..4))) {
            let mut f = Features { nesting, keyctl, ..Features::default() };
            if let Some(b) = fuse { f.set("fuse", if b { "true" } else { "no" }).unwrap(); }
            if let Some(m) = mount { f.set("mount", &m.join(";")).unwrap(); }
            let text = f.to_string();
            let back: Features = text.parse().unwrap();
            prop_assert_eq!(back, f);
        }

        #[test]
        fn disk_sizes_round_trip(bytes in 1u64..(1u64 << 50)) {
            prop_assert_eq!(parse_disk_size(&format_disk_size(bytes)).unwrap(), bytes);
        }
    }
}
