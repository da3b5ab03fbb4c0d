//! PVE property strings (`net[n]`, `rootfs`, `mp[n]`, `features`): `key=value` pairs joined
//! by `,`, with an optional default key whose `key=` may be omitted (reference §3.3, §3.4;
//! pve-common `parse_property_string` / `print_property_string`).
//!
//! PVE has no escaping: a `,` in a value *is* a second key. So a value containing `,` `=`
//! `;` a newline or any control character is refused when felhom builds a property string —
//! never escaped, never passed on. (Parsing what PVE itself returns accepts `;` inside
//! values, because list-valued keys such as `mountoptions` and `trunks` use it.)

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

    /// Parse PVE's text. A part without `=` is the value of `default_key` (only the first
    /// part may omit its key, as in `local-lvm:vm-100-disk-0,size=8G`).
    pub fn parse(text: &str, default_key: Option<&str>) -> Result<PropertyString, PropertyError> {
        let mut out = PropertyString::new();
        if text.is_empty() {
            return Err(PropertyError::Malformed("empty property string".into()));
        }
        for (i, part) in text.split(',').enumerate() {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k, v),
                None => match default_key {
                    Some(d) if i == 0 => (d, part),
                    _ => {
                        return Err(PropertyError::Malformed(format!(
                            "part {:?} has no key",
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
            if p.len() != 2 {
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

/// PVE's `[-_.\w\d]+` for interface and bridge names.
fn check_ifname(key: &str, v: &str) -> Result<(), PropertyError> {
    if !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Ok(())
    } else {
        Err(PropertyError::Invalid {
            key: key.into(),
            message: "value does not match the regex pattern".into(),
        })
    }
}

const NET_KEYS: &[&str] = &[
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
const NET_BOOLS: &[&str] = &["firewall", "link_down", "host-managed"];

/// PVE accepts `1|on|yes|true` and `0|off|no|false`, stored as `1`/`0`.
fn normalize_bool(key: &str, v: &str) -> Result<String, PropertyError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Ok("1".into()),
        "0" | "off" | "no" | "false" => Ok("0".into()),
        _ => Err(PropertyError::Invalid {
            key: key.into(),
            message: format!("type check ('boolean') failed - got '{v}'"),
        }),
    }
}

/// A container NIC (`net[n]`, reference §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub name: String,
    pub bridge: Option<String>,
    pub hwaddr: Option<MacAddr>,
    pub ip: Option<String>,
    /// Every other key, already validated and normalised.
    pub other: BTreeMap<String, String>,
}

impl NetConfig {
    /// `name=<name>,bridge=<bridge>,hwaddr=<mac>,ip=dhcp,type=veth`.
    pub fn dhcp(name: &str, bridge: &str, mac: &str) -> Result<NetConfig, PropertyError> {
        check_ifname("name", name)?;
        check_ifname("bridge", bridge)?;
        let mac: MacAddr = mac.parse()?;
        if !mac.is_unicast() {
            return Err(PropertyError::Invalid {
                key: "hwaddr".into(),
                message: "value does not look like a valid unicast MAC address".into(),
            });
        }
        let mut other = BTreeMap::new();
        other.insert("type".to_string(), "veth".to_string());
        Ok(NetConfig {
            name: name.into(),
            bridge: Some(bridge.into()),
            hwaddr: Some(mac),
            ip: Some("dhcp".into()),
            other,
        })
    }

    /// The same NIC with another MAC: every other key is kept (a `netN` written without
    /// `hwaddr` would get a fresh random MAC, reference §3.3).
    pub fn with_hwaddr(&self, mac: &str) -> Result<NetConfig, PropertyError> {
        let mac: MacAddr = mac.parse()?;
        if !mac.is_unicast() {
            return Err(PropertyError::Invalid {
                key: "hwaddr".into(),
                message: "value does not look like a valid unicast MAC address".into(),
            });
        }
        Ok(NetConfig {
            hwaddr: Some(mac),
            ..self.clone()
        })
    }

    fn to_property_string(&self) -> PropertyString {
        let mut p = PropertyString::new();
        // Fields were validated at construction; `set` cannot fail on them.
        let _ = p.set("name", &self.name);
        if let Some(b) = &self.bridge {
            let _ = p.set("bridge", b);
        }
        if let Some(m) = &self.hwaddr {
            p.entries.push(("hwaddr".into(), m.to_string()));
        }
        if let Some(ip) = &self.ip {
            let _ = p.set("ip", ip);
        }
        for (k, v) in &self.other {
            p.entries.push((k.clone(), v.clone()));
        }
        p
    }
}

impl FromStr for NetConfig {
    type Err = PropertyError;
    fn from_str(s: &str) -> Result<Self, PropertyError> {
        let p = PropertyString::parse(s, None)?;
        let mut other = BTreeMap::new();
        for k in p.keys() {
            if !NET_KEYS.contains(&k) {
                return Err(PropertyError::UnknownKey(k.to_string()));
            }
        }
        let name = p
            .get("name")
            .ok_or_else(|| PropertyError::Missing("name".into()))?
            .to_string();
        check_ifname("name", &name)?;
        let bridge = p.get("bridge").map(str::to_string);
        if let Some(b) = &bridge {
            check_ifname("bridge", b)?;
        }
        let hwaddr = p.get("hwaddr").map(str::parse::<MacAddr>).transpose()?;
        if hwaddr.is_some_and(|m| !m.is_unicast()) {
            return Err(PropertyError::Invalid {
                key: "hwaddr".into(),
                message: "value does not look like a valid unicast MAC address".into(),
            });
        }
        let ip = p.get("ip").map(str::to_string);
        for (k, v) in &p.entries {
            if matches!(k.as_str(), "name" | "bridge" | "hwaddr" | "ip") {
                continue;
            }
            let v = if NET_BOOLS.contains(&k.as_str()) {
                normalize_bool(k, v)?
            } else {
                v.clone()
            };
            other.insert(k.clone(), v);
        }
        Ok(NetConfig {
            name,
            bridge,
            hwaddr,
            ip,
            other,
        })
    }
}

impl fmt::Display for NetConfig {
    /// Canonical: `name` first, the other keys sorted (as PVE stores it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_property_string().canonical("name", false))
    }
}

const MOUNT_KEYS: &[&str] = &[
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
    "keepattrs",
];
const MOUNT_BOOLS: &[&str] = &[
    "acl",
    "ro",
    "quota",
    "backup",
    "replicate",
    "shared",
    "keepattrs",
];

/// `rootfs` or `mp[n]` (reference §3.4, §3.6). The default key is `volume`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    pub volume: String,
    pub mp: Option<String>,
    /// Bytes.
    pub size: Option<u64>,
    pub other: BTreeMap<String, String>,
}

fn check_mount_path(p: &str) -> Result<(), PropertyError> {
    let bad = |m: &str| PropertyError::Invalid {
        key: "mp".into(),
        message: m.into(),
    };
    if !p.starts_with('/') {
        return Err(bad("mount point path must be absolute"));
    }
    if p.contains("/./") || p.contains("/../") || p.ends_with("/..") || p.ends_with("/.") {
        return Err(bad(
            "mount point path may not contain '.' or '..' components",
        ));
    }
    check_value("mp", p, false)
}

impl MountConfig {
    /// A new volume to allocate: `<storage>:<GiB>,mp=<path>` (reference §3.6).
    pub fn new_volume(volume: &str, mp: &str) -> Result<MountConfig, PropertyError> {
        let (sid, size) = volume
            .split_once(':')
            .ok_or_else(|| PropertyError::Invalid {
                key: "volume".into(),
                message: "expected <storage>:<GiB>".into(),
            })?;
        let sid_ok = sid.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && sid.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        let size_ok = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && size.parse::<f64>().is_ok_and(|v| v > 0.0);
        if !sid_ok || !size_ok {
            return Err(PropertyError::Invalid {
                key: "volume".into(),
                message: "expected <storage>:<GiB>".into(),
            });
        }
        check_mount_path(mp)?;
        Ok(MountConfig {
            volume: volume.into(),
            mp: Some(mp.into()),
            size: None,
            other: BTreeMap::new(),
        })
    }

    fn parse_with(s: &str, need_mp: bool) -> Result<MountConfig, PropertyError> {
        let p = PropertyString::parse(s, Some("volume"))?;
        for k in p.keys() {
            if !MOUNT_KEYS.contains(&k) {
                return Err(PropertyError::UnknownKey(k.to_string()));
            }
        }
        let volume = p
            .get("volume")
            .ok_or_else(|| PropertyError::Missing("volume".into()))?
            .to_string();
        let mp = p.get("mp").map(str::to_string);
        if need_mp && mp.is_none() {
            return Err(PropertyError::Missing("mp".into()));
        }
        if let Some(m) = &mp {
            check_mount_path(m)?;
        }
        let size = p.get("size").map(parse_disk_size).transpose()?;
        let mut other = BTreeMap::new();
        for (k, v) in &p.entries {
            if matches!(k.as_str(), "volume" | "mp" | "size") {
                continue;
            }
            let v = if MOUNT_BOOLS.contains(&k.as_str()) {
                normalize_bool(k, v)?
            } else {
                v.clone()
            };
            other.insert(k.clone(), v);
        }
        Ok(MountConfig {
            volume,
            mp,
            size,
            other,
        })
    }

    pub fn parse_rootfs(s: &str) -> Result<MountConfig, PropertyError> {
        Self::parse_with(s, false)
    }

    pub fn parse_mp(s: &str) -> Result<MountConfig, PropertyError> {
        Self::parse_with(s, true)
    }

    /// The storage id of the volume (`local-lvm` of `local-lvm:vm-100-disk-0`).
    pub fn storage(&self) -> Option<&str> {
        self.volume.split_once(':').map(|(s, _)| s)
    }
}

impl fmt::Display for MountConfig {
    /// Canonical: the volume bare, then the other keys sorted (`…,mp=/data,size=8G`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        f.write_str(&p.canonical("volume", true))
    }
}

const FEATURE_KEYS: &[&str] = &[
    "nesting",
    "keyctl",
    "fuse",
    "mknod",
    "force_rw_sys",
    "mount",
];

/// `features` (reference §3.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Features {
    pub nesting: bool,
    pub keyctl: bool,
    pub other: BTreeMap<String, String>,
}

impl FromStr for Features {
    type Err = PropertyError;
    fn from_str(s: &str) -> Result<Self, PropertyError> {
        let p = PropertyString::parse(s, None)?;
        let mut f = Features::default();
        for (k, v) in &p.entries {
            if !FEATURE_KEYS.contains(&k.as_str()) {
                return Err(PropertyError::UnknownKey(k.clone()));
            }
            match k.as_str() {
                "nesting" => f.nesting = normalize_bool(k, v)? == "1",
                "keyctl" => f.keyctl = normalize_bool(k, v)? == "1",
                "mount" => {
                    f.other.insert(k.clone(), v.clone());
                }
                _ => {
                    f.other.insert(k.clone(), normalize_bool(k, v)?);
                }
            }
        }
        Ok(f)
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        f.write_str(&parts.join(","))
    }
}

const UNITS: [(char, u64); 4] = [
    ('T', 1 << 40),
    ('G', 1 << 30),
    ('M', 1 << 20),
    ('K', 1 << 10),
];

/// `\d+(\.\d+)?[KMGT]?` → bytes. A bare number is bytes (reference §5: `size=10` is 10
/// bytes). A leading `+` (relative resize) is refused here: felhom only resizes absolutely.
pub fn parse_disk_size(s: &str) -> Result<u64, PropertyError> {
    let bad = || PropertyError::Invalid {
        key: "size".into(),
        message: format!(
            "value '{}' does not match the regex pattern",
            s.chars().take(40).collect::<String>()
        ),
    };
    let (num, mult) = match s.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m = UNITS
                .iter()
                .find(|(u, _)| *u == c)
                .map(|(_, m)| *m)
                .ok_or_else(bad)?;
            (&s[..s.len() - 1], m)
        }
        _ => (s, 1),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (num.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let v: f64 = num.parse().map_err(|_| bad())?;
    let bytes = v * mult as f64;
    if !bytes.is_finite() || bytes > 9.0e18 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Bytes → PVE's print (`8G`, `1536M`): the largest unit that divides evenly, else bytes.
pub fn format_disk_size(bytes: u64) -> String {
    for (u, m) in UNITS {
        if bytes >= m && bytes.is_multiple_of(m) {
            return format!("{}{u}", bytes / m);
        }
    }
    bytes.to_string()
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
        assert!(parse_disk_size("+2G").is_err());
        assert!(parse_disk_size("2X").is_err());
        assert!(parse_disk_size("1.G").is_err());
        assert_eq!(format_disk_size(8 << 30), "8G");
        assert_eq!(format_disk_size(1536 << 20), "1536M");
        assert_eq!(format_disk_size(1000), "1000");
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
        }

        #[test]
        fn net_config_round_trips(name in "[a-z][a-z0-9]{0,7}", bridge in "[a-z][a-z0-9_.-]{0,10}", mac in any::<[u8; 6]>(), fw in any::<bool>(), tag in proptest::option::of(1u16..4095)) {
            let mut mac = mac; mac[0] &= 0xfe;
            let mac = MacAddr(mac).to_string();
            let mut n = NetConfig::dhcp(&name, &bridge, &mac).unwrap();
            n.other.insert("firewall".into(), if fw { "1".into() } else { "0".into() });
            if let Some(t) = tag { n.other.insert("tag".into(), t.to_string()); }
            let back: NetConfig = n.to_string().parse().unwrap();
            prop_assert_eq!(back, n);
        }

        #[test]
        fn mount_config_round_trips(sid in "[a-z][a-z0-9-]{0,8}", disk in 0u32..99, path in "(/[a-z0-9_]{1,8}){1,4}", gib in 1u64..4096) {
            let m = MountConfig { volume: format!("{sid}:vm-100-disk-{disk}"), mp: Some(path), size: Some(gib << 30), other: BTreeMap::new() };
            let back = MountConfig::parse_mp(&m.to_string()).unwrap();
            prop_assert_eq!(back, m);
        }

        #[test]
        fn disk_sizes_round_trip(bytes in 1u64..(1u64 << 50)) {
            prop_assert_eq!(parse_disk_size(&format_disk_size(bytes)).unwrap(), bytes);
        }
    }
}
