//! The customer guest spec: what one customer guest must look like.
//!
//! Parsing yields a fully validated [`GuestSpec`] or **every** field error at once, each
//! naming the field and the rule it broke. There is no half-valid value: every field is a
//! newtype that can only be built through its validating constructor, so code further down
//! (property strings, URLs, journal rows) never sees an unchecked string.
//!
//! Property-string injection (a `,` `=` `;` or newline smuggled into a hostname, path or
//! storage id) is an attack on the `net0`/`mpN` strings felhom writes; every newtype refuses
//! those characters by construction, and `pve_api::PropertyString` refuses them again.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::PolicyName;

pub use pve_api::Vmid;

/// One field that failed validation: the dotted field path, the rule, and the offending value
/// (shortened and escaped so that a hostile value cannot forge output lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub rule: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

/// Every field error found in one spec file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid guest spec ({} error{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" },
    .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct SpecErrors(pub Vec<FieldError>);

/// Escape a value for an error message: printable ASCII kept, everything else as `\u{..}`,
/// cut at 64 characters.
/// Quote a value for an error message (escaped, shortened).
pub fn show_value(value: &str) -> String {
    show(value)
}

pub(crate) fn show(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(64)
        .flat_map(|c| c.escape_default())
        .collect();
    if value.chars().count() > 64 {
        out.push('…');
    }
    format!("'{out}'")
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $validate:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $validate(s).map(|()| Self(s.to_string()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fn validate_hostname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!(
            "must be 1–253 characters (RFC 1123), got {} characters",
            s.len()
        ));
    }
    for label in s.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if label.is_empty()
            || label.len() > 63
            || !ok_chars
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!(
                "must be RFC 1123 labels of 1–63 characters [a-z0-9-], not starting or ending with '-', separated by '.'; got {}",
                show(s)
            ));
        }
    }
    Ok(())
}
string_newtype!(
    /// A guest hostname per RFC 1123 (lower case; PVE's `dns-name` accepts a superset).
    Hostname,
    validate_hostname
);

fn validate_storage_id(s: &str) -> Result<(), String> {
    let mut b = s.bytes();
    let ok = matches!(b.next(), Some(c) if c.is_ascii_lowercase())
        && b.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
        && s.len() <= 100;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must match PVE's storage id format [a-z][a-z0-9-_.]* (at most 100 characters); got {}",
            show(s)
        ))
    }
}
string_newtype!(
    /// A PVE storage identifier (`pve-storage-id`).
    StorageId,
    validate_storage_id
);

fn validate_bridge(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a Linux bridge name [A-Za-z0-9-_.] of 1–15 characters; got {}",
            show(s)
        ))
    }
}
string_newtype!(
    /// A Linux bridge name as PVE's `net[n].bridge` accepts it, limited to IFNAMSIZ-1.
    Bridge,
    validate_bridge
);

fn validate_node(s: &str) -> Result<(), String> {
    let mut b = s.bytes();
    let ok = matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && s.len() <= 63;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a PVE node name [a-zA-Z0-9][a-zA-Z0-9-]*; got {}",
            show(s)
        ))
    }
}
string_newtype!(
    /// A PVE node name (`pve-node`), or [`AUTO_NODE`].
    NodeName,
    validate_node
);

/// The `node` of a spec that lets felhom place the guest (also what a spec without `node`
/// gets): the rule is in `cluster.rs`. The placed node is what the job and the journal keep.
pub const AUTO_NODE: &str = "auto";

fn validate_customer(s: &str) -> Result<(), String> {
    let mut b = s.bytes();
    let ok = matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.len() <= 63;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be [a-z0-9][a-z0-9-]* of at most 63 characters; got {}",
            show(s)
        ))
    }
}
string_newtype!(
    /// The customer this guest belongs to; it ends up in the ownership marker and in tags.
    CustomerId,
    validate_customer
);

fn validate_pool(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 100
        && s.split('/').count() <= 3
        && s.split('/').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a PVE pool id [A-Za-z0-9.-_]+ (nested at most 3 levels with '/'); got {}",
            show(s)
        ))
    }
}
string_newtype!(
    /// A PVE resource pool id.
    PoolId,
    validate_pool
);

fn validate_tag(s: &str) -> Result<(), String> {
    let mut b = s.bytes();
    let ok = matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && b.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'+' | b'.')
        })
        && s.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must match PVE's tag format [a-z0-9_][a-z0-9_-+.]* (lower case); got {}",
            show(s)
        ))
    }
}
string_newtype!(
    /// A PVE guest tag, lower case (PVE lower-cases and sorts tags by default).
    Tag,
    validate_tag
);

fn validate_backup_volid(s: &str) -> Result<(), String> {
    let rule =
        "must be a backup volume id '<storage>:backup/vzdump-lxc-<vmid>-<date>.tar[.zst|.gz]'";
    let Some((storage, rest)) = s.split_once(':') else {
        return Err(format!("{rule}; got {}", show(s)));
    };
    validate_storage_id(storage).map_err(|e| format!("{rule}: storage part {e}"))?;
    let Some(file) = rest.strip_prefix("backup/") else {
        return Err(format!("{rule}; got {}", show(s)));
    };
    let safe = !file.is_empty()
        && file.len() <= 200
        && file
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && !file.starts_with('.');
    let ext = file.ends_with(".tar") || file.ends_with(".tar.zst") || file.ends_with(".tar.gz");
    if !safe || !ext || vzdump::owner_vmid_from_name(file).is_none() {
        return Err(format!("{rule}; got {}", show(s)));
    }
    Ok(())
}
string_newtype!(
    /// The golden archive's volume id on a PVE backup storage.
    BackupVolid,
    validate_backup_volid
);

impl BackupVolid {
    pub fn storage(&self) -> &str {
        self.0.split_once(':').map(|(s, _)| s).unwrap_or_default()
    }
    /// The VMID the archive was made from (PVE checks `VM.Backup` on it, reference §2.4).
    pub fn owner_vmid(&self) -> Option<u32> {
        self.0
            .rsplit('/')
            .next()
            .and_then(vzdump::owner_vmid_from_name)
    }
}

/// An absolute, normalised mount path inside the guest (`mp=` of an `mpN`).
///
/// Normalised means: starts with `/`, no empty, `.` or `..` components, no trailing slash,
/// not `/` itself, and only characters that cannot break a property string or a shell line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct MountPath(String);

impl TryFrom<String> for MountPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl MountPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MountPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rule = "must be an absolute, normalised path of [A-Za-z0-9._+@-] components (no '.', '..', '//', trailing '/', or '/' alone)";
        if s.len() > 4096 || !s.starts_with('/') || s == "/" || s.ends_with('/') {
            return Err(format!("{rule}; got {}", show(s)));
        }
        for comp in s[1..].split('/') {
            let ok = !comp.is_empty()
                && comp != "."
                && comp != ".."
                && comp.bytes().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'+' | b'@')
                });
            if !ok {
                return Err(format!("{rule}; got {}", show(s)));
            }
        }
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for MountPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A size in bytes, written in specs as `16G`, `512M`, `1T`; always whole MiB and > 0.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct ByteSize(u64);

impl TryFrom<String> for ByteSize {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

impl ByteSize {
    pub fn from_bytes(bytes: u64) -> Result<Self, String> {
        if bytes == 0 || !bytes.is_multiple_of(MIB) {
            return Err(format!(
                "must be a positive whole number of MiB, got {bytes} bytes"
            ));
        }
        Ok(Self(bytes))
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
    /// The size as PVE's `<storage>:<GiB>` allocation syntax wants it (may be fractional).
    /// PVE allocates `int(gib * 1024)` MiB (pve-container `LXC.pm` `create_disks`), so the
    /// fraction is written exactly: a whole number of MiB over 1024 has at most ten decimals
    /// and is exact in binary. Four decimals made 1300M `1.2695`, which PVE allocates as
    /// 1299 MiB (audit top #4).
    pub fn gib_string(self) -> String {
        if self.0.is_multiple_of(GIB) {
            format!("{}", self.0 / GIB)
        } else {
            let v = (self.0 / MIB) as f64 / 1024.0;
            let s = format!("{v:.10}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
    }
    /// The size as an absolute `resize` argument (`16G`), never `+…`: a retried absolute
    /// resize cannot grow twice.
    pub fn resize_arg(self) -> String {
        pve_api::format_disk_size(self.0)
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> String {
        pve_api::format_disk_size(b.0)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&pve_api::format_disk_size(self.0))
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rule = "must be a size like 16G, 512M or 1T (units K/M/G/T, binary), a whole number of MiB, > 0";
        let t = s.trim();
        if t.is_empty()
            || t.starts_with('+')
            || !t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.')
        {
            return Err(format!("{rule}; got {}", show(s)));
        }
        let (num, mult) = match t.as_bytes()[t.len() - 1] {
            b'K' | b'k' => (&t[..t.len() - 1], 1024u64),
            b'M' | b'm' => (&t[..t.len() - 1], MIB),
            b'G' | b'g' => (&t[..t.len() - 1], GIB),
            b'T' | b't' => (&t[..t.len() - 1], 1024 * GIB),
            _ => {
                return Err(format!(
                    "{rule} (a bare number would be bytes in PVE's resize; give a unit); got {}",
                    show(s)
                ))
            }
        };
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{rule}; got {}", show(s)))?;
        if !value.is_finite() || value <= 0.0 || value * mult as f64 > 1e18 {
            return Err(format!("{rule}; got {}", show(s)));
        }
        let bytes = (value * mult as f64).round() as u64;
        ByteSize::from_bytes(bytes).map_err(|e| format!("{rule}: {e}"))
    }
}

// ---- what a customer buys: CPU, memory, boot, network ----------------------------------
//
// Every one is optional: a spec without it keeps what the golden has (and today's specs stay
// valid). Ranges are PVE's (`docs/pve-api-schema/apidata.js`, `PUT lxc/{vmid}/config`); the
// addresses are parsed by `std::net`, so no value can carry a `,` `=` `;` or newline into the
// `net0` property string or the config request.

macro_rules! int_newtype {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $rule:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(u32);

        impl $name {
            pub const MIN: u32 = $min;
            pub const MAX: u32 = $max;
            /// The rule a value must meet, for error messages.
            pub const RULE: &'static str = $rule;
            pub fn get(self) -> u32 {
                self.0
            }
        }

        impl TryFrom<i64> for $name {
            type Error = String;
            fn try_from(n: i64) -> Result<Self, String> {
                if (i64::from(Self::MIN)..=i64::from(Self::MAX)).contains(&n) {
                    Ok(Self(n as u32))
                } else {
                    Err(format!("{}; got {n}", Self::RULE))
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let n = i64::deserialize(d)?;
                Self::try_from(n).map_err(serde::de::Error::custom)
            }
        }
    };
}

int_newtype!(
    /// CPU cores (`cores`); without it a PVE container may use every core of the host.
    Cores,
    1,
    8192,
    "must be an integer number of CPU cores 1–8192 (PVE's `cores`)"
);
int_newtype!(
    /// Memory in MiB (`memory`).
    MemoryMib,
    16,
    u32::MAX,
    "must be an integer number of MiB, at least 16 (PVE's `memory`)"
);
int_newtype!(
    /// Swap in MiB (`swap`); 0 turns it off.
    SwapMib,
    0,
    u32::MAX,
    "must be an integer number of MiB, 0 or more (PVE's `swap`)"
);
int_newtype!(
    /// The VLAN tag of net0 (`tag`), not to be confused with the guest's `tags`.
    VlanTag,
    1,
    4094,
    "must be a VLAN id 1–4094 (net0's `tag`; the guest's PVE tags are `tags`)"
);

/// An address with its prefix length, parsed by `std::net` (`10.0.0.5/24`, `2001:db8::5/64`),
/// that is a usable host address in its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr<A> {
    pub addr: A,
    pub prefix: u8,
}

impl<A: FromStr + fmt::Display + Copy> Cidr<A> {
    fn parse(s: &str, max: u8, family: &str) -> Result<(A, u8), String> {
        let rule = format!(
            "must be a static {family} address with its prefix length (like {}), or \"dhcp\"",
            if family == "IPv4" {
                "10.0.0.5/24"
            } else {
                "2001:db8::5/64"
            }
        );
        let bad = || format!("{rule}; got {}", show(s));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: A = a.parse().map_err(|_| bad())?;
        let prefix_ok = !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|n| prefix_ok && *n <= max)
            .ok_or_else(bad)?;
        Ok((addr, prefix))
    }
}

impl fmt::Display for Cidr<std::net::Ipv4Addr> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Display for Cidr<std::net::Ipv6Addr> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr<std::net::Ipv4Addr> {
    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }
    /// Whether `gw` lies in this address's subnet.
    pub fn contains(&self, gw: std::net::Ipv4Addr) -> bool {
        u32::from(gw) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl Cidr<std::net::Ipv6Addr> {
    fn mask(&self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0)
    }
    /// Whether `gw` lies in this address's subnet (a link-local gateway is reachable too).
    pub fn contains(&self, gw: std::net::Ipv6Addr) -> bool {
        gw.is_unicast_link_local()
            || u128::from(gw) & self.mask() == u128::from(self.addr) & self.mask()
    }
}

impl FromStr for Cidr<std::net::Ipv4Addr> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = Self::parse(s, 32, "IPv4")?;
        let c = Cidr { addr, prefix };
        let host = !c.mask();
        let bits = u32::from(addr);
        let usable = !(addr.is_unspecified()
            || addr.is_loopback()
            || addr.is_multicast()
            || addr.is_broadcast()
            || prefix == 0
            || (prefix <= 30 && (bits & host == 0 || bits & host == host)));
        if usable {
            Ok(c)
        } else {
            Err(format!(
                "must be a usable host address in its subnet (not the network or broadcast address, loopback, multicast or 0.0.0.0); got {}",
                show(s)
            ))
        }
    }
}

impl FromStr for Cidr<std::net::Ipv6Addr> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = Self::parse(s, 128, "IPv6")?;
        if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || prefix == 0 {
            return Err(format!(
                "must be a usable unicast host address (not ::, ::1 or multicast); got {}",
                show(s)
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// net0's IPv4 setting: DHCP or a static address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ipv4Setting {
    Dhcp,
    Static(Cidr<std::net::Ipv4Addr>),
}

/// net0's IPv6 setting: DHCPv6, SLAAC (`auto`) or a static address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ipv6Setting {
    Dhcp,
    Auto,
    Static(Cidr<std::net::Ipv6Addr>),
}

impl FromStr for Ipv4Setting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dhcp" => Ok(Ipv4Setting::Dhcp),
            _ => s.parse().map(Ipv4Setting::Static),
        }
    }
}

impl FromStr for Ipv6Setting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dhcp" => Ok(Ipv6Setting::Dhcp),
            "auto" => Ok(Ipv6Setting::Auto),
            _ => s
                .parse()
                .map(Ipv6Setting::Static)
                .map_err(|e| e.replace("or \"dhcp\"", "\"dhcp\" or \"auto\"")),
        }
    }
}

impl fmt::Display for Ipv4Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ipv4Setting::Dhcp => f.write_str("dhcp"),
            Ipv4Setting::Static(c) => c.fmt(f),
        }
    }
}

impl fmt::Display for Ipv6Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ipv6Setting::Dhcp => f.write_str("dhcp"),
            Ipv6Setting::Auto => f.write_str("auto"),
            Ipv6Setting::Static(c) => c.fmt(f),
        }
    }
}

/// Serialised as the text PVE takes (`dhcp`, `10.0.0.5/24`); deserialised through `FromStr`.
macro_rules! text_serde {
    ($name:ty) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
text_serde!(Ipv4Setting);
text_serde!(Ipv6Setting);

fn validate_dns_name(s: &str) -> Result<(), String> {
    validate_hostname(s).map_err(|_| {
        format!(
            "must be a DNS name of RFC 1123 labels [a-z0-9-] separated by '.' (at most 253 characters); got {}",
            show(s)
        )
    })
}
string_newtype!(
    /// A DNS search domain (PVE's `dns-name`), lower case.
    DnsName,
    validate_dns_name
);

/// Where felhom picks the VMID from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmidChoice {
    Fixed(Vmid),
    /// The lowest VMID in felhom's configured range that neither PVE nor the journal uses.
    NextFree,
}

/// One data mount point of a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MountSpec {
    pub storage: StorageId,
    pub size: ByteSize,
    pub path: MountPath,
}

/// A fully validated customer guest spec. It round-trips through JSON (the journal keeps
/// it); deserialising re-validates every field through the newtypes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GuestSpec {
    pub customer: CustomerId,
    pub hostname: Hostname,
    /// The guest's name within its customer: with `customer`, the guest's identity (unique
    /// among felhom's guests; `apply` finds the guest by it). Defaults to the hostname; same
    /// rule as a hostname (RFC 1123), so it is safe inside the ownership marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Hostname>,
    pub vmid: VmidChoice,
    pub golden: BackupVolid,
    pub node: NodeName,
    pub storage: StorageId,
    pub rootfs_size: ByteSize,
    pub bridge: Bridge,
    /// CPU cores. Like every field down to `searchdomain`, optional: `None` (or empty)
    /// keeps what the golden has, except net0's keys, which felhom always writes (`ip`
    /// defaults to DHCP; `tag`, `gw`, `ip6`, `gw6` absent; `firewall` off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<Cores>,
    /// Memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryMib>,
    /// Swap, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapMib>,
    /// Start the guest when the host boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onboot: Option<bool>,
    /// net0's VLAN tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<VlanTag>,
    /// net0's IPv4 (`None`: DHCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Setting>,
    /// net0's IPv4 gateway; only with a static `ip`, inside its subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<std::net::Ipv4Addr>,
    /// net0's IPv6 (`None`: none configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Setting>,
    /// net0's IPv6 gateway; only with a static `ip6`, inside its subnet (or link-local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw6: Option<std::net::Ipv6Addr>,
    /// PVE's firewall on net0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<bool>,
    /// DNS servers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameserver: Vec<std::net::IpAddr>,
    /// DNS search domains, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searchdomain: Vec<DnsName>,
    pub mounts: Vec<MountSpec>,
    pub pool: Option<PoolId>,
    pub tags: Vec<Tag>,
    /// What the restore keeps or renews (`provision`: everything fresh; `dr`: keep the
    /// archived MAC, hostname and SSH keys). See `identity.rs`.
    #[serde(default = "default_policy")]
    pub identity: PolicyName,
}

fn default_policy() -> PolicyName {
    PolicyName::Provision
}

/// DNS servers or search domains per guest (resolv.conf reads at most 3 servers, 6 domains).
pub const MAX_DNS: usize = 6;

/// A gateway address, parsed by `std::net`.
struct Gateway<A>(A);

impl<A: FromStr> FromStr for Gateway<A> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(Gateway).map_err(|_| {
            format!(
                "must be a gateway address (like 10.0.0.1 or 2001:db8::1); got {}",
                show(s)
            )
        })
    }
}

/// A DNS server: an IPv4 or IPv6 address, parsed by `std::net`.
struct NameServer(std::net::IpAddr);

impl FromStr for NameServer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<std::net::IpAddr>() {
            Ok(a) if !a.is_unspecified() && !a.is_multicast() => Ok(NameServer(a)),
            _ => Err(format!(
                "must be a DNS server's IPv4 or IPv6 address; got {}",
                show(s)
            )),
        }
    }
}

/// Mount points per guest: PVE allows mp0..mp255; felhom keeps it to a sane number.
pub const MAX_MOUNTS: usize = 32;
/// Mount paths felhom refuses because mounting over them breaks the guest.
const RESERVED_MOUNT_PATHS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr",
    "/var",
];

/// Collects field errors while walking a TOML table.
struct Walker<'a> {
    prefix: String,
    table: &'a toml::Table,
    errors: &'a mut Vec<FieldError>,
    seen: BTreeSet<&'static str>,
}

impl<'a> Walker<'a> {
    fn field(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }
    fn err(&mut self, key: &str, rule: impl Into<String>) {
        let field = self.field(key);
        self.errors.push(FieldError {
            field,
            rule: rule.into(),
        });
    }
    fn raw(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.seen.insert(key);
        self.table.get(key)
    }
    fn string(&mut self, key: &'static str, required: bool) -> Option<&'a str> {
        match self.raw(key) {
            None if required => {
                self.err(key, "is required");
                None
            }
            None => None,
            Some(toml::Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                self.err(key, format!("must be a string, got {}", other.type_str()));
                None
            }
        }
    }
    fn parsed<T: FromStr<Err = String>>(&mut self, key: &'static str, required: bool) -> Option<T> {
        let s = self.string(key, required)?;
        match s.parse() {
            Ok(v) => Some(v),
            Err(rule) => {
                self.err(key, rule);
                None
            }
        }
    }
    fn int<T: TryFrom<i64, Error = String>>(&mut self, key: &'static str) -> Option<T> {
        match self.raw(key)? {
            toml::Value::Integer(n) => match T::try_from(*n) {
                Ok(v) => Some(v),
                Err(rule) => {
                    self.err(key, rule);
                    None
                }
            },
            other => {
                let t = other.type_str();
                self.err(key, format!("must be an integer, got {t}"));
                None
            }
        }
    }
    fn boolean(&mut self, key: &'static str) -> Option<bool> {
        match self.raw(key)? {
            toml::Value::Boolean(b) => Some(*b),
            other => {
                let t = other.type_str();
                self.err(key, format!("must be true or false, got {t}"));
                None
            }
        }
    }
    /// An array of strings, each parsed; an error per bad item (`key[i]`).
    fn list<T: FromStr<Err = String>>(&mut self, key: &'static str, max: usize) -> Vec<T> {
        let items = match self.raw(key) {
            None => return Vec::new(),
            Some(toml::Value::Array(items)) => items,
            Some(other) => {
                let t = other.type_str();
                self.err(key, format!("must be an array of strings, got {t}"));
                return Vec::new();
            }
        };
        if items.len() > max {
            self.err(key, format!("at most {max} entries, got {}", items.len()));
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                toml::Value::String(s) => match s.parse::<T>() {
                    Ok(v) => out.push(v),
                    Err(rule) => self.err(&format!("{key}[{i}]"), rule),
                },
                other => {
                    let t = other.type_str();
                    self.err(&format!("{key}[{i}]"), format!("must be a string, got {t}"));
                }
            }
        }
        out
    }
    fn unknown_keys(&mut self) {
        let unknown: Vec<String> = self
            .table
            .keys()
            .filter(|k| !self.seen.contains(k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            let shown = show(&k);
            self.err(&k, format!("unknown field {shown} (check the spelling; felhom refuses fields it would ignore)"));
        }
    }
}

/// A guest's identity: (customer, name). Unique among felhom's guests.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub customer: String,
    pub name: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.customer, self.name)
    }
}

impl GuestSpec {
    /// Whether felhom places this guest (`node = "auto"`, or no `node`).
    pub fn node_is_auto(&self) -> bool {
        self.node.as_str() == AUTO_NODE
    }

    /// This spec with its node set (placement's answer, or where the guest lives).
    pub fn on_node(&self, node: &str) -> Result<GuestSpec, String> {
        let mut s = self.clone();
        s.node = node.parse()?;
        Ok(s)
    }

    /// The guest's name: `name`, or the hostname.
    pub fn name(&self) -> &str {
        self.name.as_ref().unwrap_or(&self.hostname).as_str()
    }

    /// net0's IPv4 setting (DHCP unless the spec gives a static address).
    pub fn ipv4(&self) -> Ipv4Setting {
        self.ip.unwrap_or(Ipv4Setting::Dhcp)
    }

    /// The net0 keys felhom manages, each with the value the spec wants (`None`: absent).
    /// Every other key of net0 (`mtu`, `rate`, …) is left as it is; `hwaddr` is the identity
    /// step's.
    pub fn net0_keys(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("bridge", Some(self.bridge.to_string())),
            ("tag", self.tag.map(|t| t.to_string())),
            ("ip", Some(self.ipv4().to_string())),
            ("gw", self.gw.map(|g| g.to_string())),
            ("ip6", self.ip6.map(|i| i.to_string())),
            ("gw6", self.gw6.map(|g| g.to_string())),
            // PVE stores booleans as 1/0 and reads an absent firewall as off.
            (
                "firewall",
                self.firewall.filter(|f| *f).map(|_| "1".to_string()),
            ),
        ]
    }

    /// net0 as the spec wants it: `base` (the guest's net0, or a fresh `eth0` veth) with the
    /// managed keys set or removed and `hwaddr` = `mac`.
    pub fn net0(
        &self,
        base: Option<&pve_api::NetConfig>,
        mac: &str,
    ) -> Result<pve_api::NetConfig, pve_api::PropertyError> {
        let mut n = match base {
            Some(b) => b.clone(),
            None => {
                let mut n = pve_api::NetConfig::new("eth0")?;
                n.set("type", "veth")?;
                n
            }
        };
        for (key, want) in self.net0_keys() {
            match want {
                Some(v) => n.set(key, &v)?,
                None => {
                    n.remove(key);
                }
            }
        }
        n.set("hwaddr", mac)?;
        Ok(n)
    }

    /// The config keys beyond net0 the spec sets (`cores`, `memory`, `swap`, `onboot`,
    /// `nameserver`, `searchdomain`), as PVE takes them; unset ones are left out.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(c) = self.cores {
            out.push(("cores", c.to_string()));
        }
        if let Some(m) = self.memory {
            out.push(("memory", m.to_string()));
        }
        if let Some(s) = self.swap {
            out.push(("swap", s.to_string()));
        }
        if let Some(b) = self.onboot {
            out.push(("onboot", u8::from(b).to_string()));
        }
        if !self.nameserver.is_empty() {
            let v: Vec<String> = self.nameserver.iter().map(|a| a.to_string()).collect();
            out.push(("nameserver", v.join(" ")));
        }
        if !self.searchdomain.is_empty() {
            let v: Vec<&str> = self.searchdomain.iter().map(|d| d.as_str()).collect();
            out.push(("searchdomain", v.join(" ")));
        }
        out
    }

    /// (customer, name).
    pub fn identity_key(&self) -> Identity {
        Identity {
            customer: self.customer.to_string(),
            name: self.name().to_string(),
        }
    }

    /// Parse a spec file's text: either one guest at the top level or a `[[guest]]` list.
    pub fn parse_many(text: &str) -> Result<Vec<GuestSpec>, SpecErrors> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            SpecErrors(vec![FieldError {
                field: "(file)".into(),
                rule: format!("is not valid TOML: {}", e.message()),
            }])
        })?;
        let mut errors = Vec::new();
        let mut specs = Vec::new();
        match table.get("guest") {
            Some(toml::Value::Array(items)) => {
                if table.len() > 1 {
                    for k in table.keys().filter(|k| *k != "guest") {
                        errors.push(FieldError {
                            field: k.clone(),
                            rule: "unknown field next to a [[guest]] list".into(),
                        });
                    }
                }
                if items.is_empty() {
                    errors.push(FieldError {
                        field: "guest".into(),
                        rule: "must list at least one guest".into(),
                    });
                }
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::Table(t) => {
                            if let Some(s) = Self::from_table(t, format!("guest[{i}]"), &mut errors)
                            {
                                specs.push(s);
                            }
                        }
                        other => errors.push(FieldError {
                            field: format!("guest[{i}]"),
                            rule: format!("must be a table, got {}", other.type_str()),
                        }),
                    }
                }
            }
            Some(other) => errors.push(FieldError {
                field: "guest".into(),
                rule: format!(
                    "must be an array of tables ([[guest]]), got {}",
                    other.type_str()
                ),
            }),
            None => {
                if let Some(s) = Self::from_table(&table, String::new(), &mut errors) {
                    specs.push(s);
                }
            }
        }
        // Two guests of one file must not collide.
        let mut hostnames = BTreeSet::new();
        let mut identities = BTreeSet::new();
        let mut vmids = BTreeSet::new();
        let mut ips = BTreeSet::new();
        for (i, s) in specs.iter().enumerate() {
            if let Some(Ipv4Setting::Static(c)) = s.ip {
                if !ips.insert(c.addr) {
                    errors.push(FieldError {
                        field: format!("guest[{i}].ip"),
                        rule: format!("duplicates another guest's address {}", c.addr),
                    });
                }
            }
            let dup_host = !hostnames.insert(s.hostname.clone());
            if dup_host {
                errors.push(FieldError {
                    field: format!("guest[{i}].hostname"),
                    rule: format!(
                        "duplicates another guest's hostname {}",
                        show(s.hostname.as_str())
                    ),
                });
            }
            // A duplicate hostname is reported once, as such, even when it makes the identity
            // (whose name defaults to the hostname) a duplicate too.
            if !identities.insert(s.identity_key()) && !dup_host {
                errors.push(FieldError {
                    field: format!("guest[{i}].name"),
                    rule: format!(
                        "duplicates another guest's identity {} (customer/name; name defaults to the hostname)",
                        show(&s.identity_key().to_string())
                    ),
                });
            }
            if let VmidChoice::Fixed(v) = s.vmid {
                if !vmids.insert(v) {
                    errors.push(FieldError {
                        field: format!("guest[{i}].vmid"),
                        rule: format!("duplicates another guest's vmid {v}"),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(specs)
        } else {
            Err(SpecErrors(errors))
        }
    }

    /// Parse a spec file from disk.
    pub fn load_many(path: &Path) -> Result<Vec<GuestSpec>, SpecErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SpecErrors(vec![FieldError {
                field: "(file)".into(),
                rule: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Self::parse_many(&text)
    }

    /// One guest from a JSON object with the spec file's keys (the agent's API): the same
    /// walk, the same field errors, as a file. A `null` is refused naming its key; the
    /// mount list is `mount` as in a file.
    pub fn from_json(value: &serde_json::Value) -> Result<GuestSpec, SpecErrors> {
        let one = |field: &str, rule: String| {
            SpecErrors(vec![FieldError {
                field: field.into(),
                rule,
            }])
        };
        let serde_json::Value::Object(map) = value else {
            return Err(one(
                "(body)",
                "must be a JSON object with the spec's keys".into(),
            ));
        };
        if let Some((k, _)) = map.iter().find(|(_, v)| v.is_null()) {
            return Err(one(
                k,
                "must not be null (leave the key out instead)".into(),
            ));
        }
        let table = toml::Table::try_from(value)
            .map_err(|e| one("(body)", format!("cannot be read as a spec: {e}")))?;
        let mut errors = Vec::new();
        match Self::from_table(&table, String::new(), &mut errors) {
            Some(s) if errors.is_empty() => Ok(s),
            _ => Err(SpecErrors(errors)),
        }
    }

    fn from_table(
        table: &toml::Table,
        prefix: String,
        errors: &mut Vec<FieldError>,
    ) -> Option<GuestSpec> {
        let before = errors.len();
        let mut w = Walker {
            prefix,
            table,
            errors,
            seen: BTreeSet::new(),
        };
        let customer = w.parsed::<CustomerId>("customer", true);
        let hostname = w.parsed::<Hostname>("hostname", true);
        let name = w.parsed::<Hostname>("name", false);
        let vmid = match w.raw("vmid") {
            None => {
                w.err(
                    "vmid",
                    "is required (a number in felhom's VMID range, or \"auto\")",
                );
                None
            }
            Some(toml::Value::Integer(n)) => {
                match u32::try_from(*n).ok().and_then(|n| Vmid::try_from(n).ok()) {
                    Some(v) => Some(VmidChoice::Fixed(v)),
                    None => {
                        w.err("vmid", format!("must be an integer 100–999999999 (PVE's vmid format) or \"auto\"; got {n}"));
                        None
                    }
                }
            }
            Some(toml::Value::String(s)) if s == "auto" => Some(VmidChoice::NextFree),
            Some(toml::Value::String(s)) => {
                let shown = show(s);
                w.err(
                    "vmid",
                    format!("must be an integer 100–999999999 or \"auto\"; got the string {shown}"),
                );
                None
            }
            Some(other) => {
                let t = other.type_str();
                w.err("vmid", format!("must be an integer or \"auto\", got {t}"));
                None
            }
        };
        let golden = w.parsed::<BackupVolid>("golden", true);
        // No node, or "auto": felhom places the guest (cluster.rs), once, when it creates it.
        let node = if w.raw("node").is_some() {
            w.parsed::<NodeName>("node", true)
        } else {
            Some(NodeName(AUTO_NODE.to_string()))
        };
        let storage = w.parsed::<StorageId>("storage", true);
        let rootfs_size = w.parsed::<ByteSize>("rootfs_size", true);
        if let Some(size) = rootfs_size {
            if size.bytes() < GIB {
                w.err("rootfs_size", "must be at least 1G");
            }
        }
        let bridge = w.parsed::<Bridge>("bridge", true);
        let cores = w.int::<Cores>("cores");
        let memory = w.int::<MemoryMib>("memory");
        let swap = w.int::<SwapMib>("swap");
        let onboot = w.boolean("onboot");
        let tag = w.int::<VlanTag>("tag");
        let ip = w.parsed::<Ipv4Setting>("ip", false);
        let gw = w
            .parsed::<Gateway<std::net::Ipv4Addr>>("gw", false)
            .map(|g| g.0);
        let ip6 = w.parsed::<Ipv6Setting>("ip6", false);
        let gw6 = w
            .parsed::<Gateway<std::net::Ipv6Addr>>("gw6", false)
            .map(|g| g.0);
        let firewall = w.boolean("firewall");
        let nameserver = w
            .list::<NameServer>("nameserver", MAX_DNS)
            .into_iter()
            .map(|n| n.0)
            .collect();
        let searchdomain = w.list::<DnsName>("searchdomain", MAX_DNS);
        match (gw, ip) {
            (Some(_), None | Some(Ipv4Setting::Dhcp)) => w.err(
                "gw",
                "is only allowed with a static ip (with DHCP the lease brings the gateway)",
            ),
            (Some(g), Some(Ipv4Setting::Static(c))) if !c.contains(g) || g == c.addr => w.err(
                "gw",
                format!("must be another address inside ip's subnet {c}; got '{g}'"),
            ),
            _ => {}
        }
        match (gw6, ip6) {
            (Some(_), None | Some(Ipv6Setting::Dhcp | Ipv6Setting::Auto)) => w.err(
                "gw6",
                "is only allowed with a static ip6 (DHCPv6 and SLAAC bring the gateway)",
            ),
            (Some(g), Some(Ipv6Setting::Static(c))) if !c.contains(g) || g == c.addr => w.err(
                "gw6",
                format!(
                    "must be another address inside ip6's subnet {c} (or link-local); got '{g}'"
                ),
            ),
            _ => {}
        }
        let pool = w.parsed::<PoolId>("pool", false);
        let tags = match w.raw("tags") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let mut tags = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => match s.parse::<Tag>() {
                            Ok(t) => tags.push(t),
                            Err(rule) => w.err(&format!("tags[{i}]"), rule),
                        },
                        other => {
                            let t = other.type_str();
                            w.err(&format!("tags[{i}]"), format!("must be a string, got {t}"));
                        }
                    }
                }
                tags
            }
            Some(other) => {
                let t = other.type_str();
                w.err("tags", format!("must be an array of strings, got {t}"));
                Vec::new()
            }
        };
        let identity = match w.raw("identity") {
            None => Some(PolicyName::Provision),
            Some(toml::Value::String(p)) => match p.parse::<PolicyName>() {
                Ok(n) => Some(n),
                Err(rule) => {
                    w.err("identity", rule);
                    None
                }
            },
            Some(other) => {
                let t = other.type_str();
                w.err(
                    "identity",
                    format!("must be \"provision\" or \"dr\", got {t}"),
                );
                None
            }
        };
        let mut mounts = Vec::new();
        match w.raw("mount") {
            None => {}
            Some(toml::Value::Array(items)) => {
                if items.len() > MAX_MOUNTS {
                    w.err(
                        "mount",
                        format!("at most {MAX_MOUNTS} mount points, got {}", items.len()),
                    );
                }
                let mut paths = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let field = w.field(&format!("mount[{i}]"));
                    let toml::Value::Table(t) = item else {
                        let ty = item.type_str();
                        w.err(
                            &format!("mount[{i}]"),
                            format!("must be a table ([[mount]]), got {ty}"),
                        );
                        continue;
                    };
                    let mut mw = Walker {
                        prefix: field,
                        table: t,
                        errors: w.errors,
                        seen: BTreeSet::new(),
                    };
                    let storage = mw.parsed::<StorageId>("storage", true);
                    let size = mw.parsed::<ByteSize>("size", true);
                    let path = mw.parsed::<MountPath>("path", true);
                    if let Some(p) = &path {
                        if RESERVED_MOUNT_PATHS
                            .iter()
                            .any(|r| p.as_str() == *r || p.as_str().starts_with(&format!("{r}/")))
                        {
                            mw.err(
                                "path",
                                format!(
                                    "must not be a system directory (refused: {}); got {}",
                                    RESERVED_MOUNT_PATHS.join(" "),
                                    show(p.as_str())
                                ),
                            );
                        } else if !paths.insert(p.clone()) {
                            mw.err(
                                "path",
                                format!("duplicates another mount's path {}", show(p.as_str())),
                            );
                        } else if paths.iter().any(|q| {
                            q != p
                                && (p.as_str().starts_with(&format!("{}/", q.as_str()))
                                    || q.as_str().starts_with(&format!("{}/", p.as_str())))
                        }) {
                            mw.err("path", format!("nests inside another mount path ({}); PVE mount order would hide one", show(p.as_str())));
                        }
                    }
                    mw.unknown_keys();
                    if let (Some(storage), Some(size), Some(path)) = (storage, size, path) {
                        mounts.push(MountSpec {
                            storage,
                            size,
                            path,
                        });
                    }
                }
            }
            Some(other) => {
                let t = other.type_str();
                w.err(
                    "mount",
                    format!("must be an array of tables ([[mount]]), got {t}"),
                );
            }
        }
        w.unknown_keys();
        if errors.len() != before {
            return None;
        }
        Some(GuestSpec {
            customer: customer?,
            hostname: hostname?,
            name,
            vmid: vmid?,
            golden: golden?,
            node: node?,
            storage: storage?,
            rootfs_size: rootfs_size?,
            bridge: bridge?,
            cores,
            memory,
            swap,
            onboot,
            tag,
            ip,
            gw,
            ip6,
            gw6,
            firewall,
            nameserver,
            searchdomain,
            mounts,
            pool,
            tags,
            identity: identity?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
customer = "acme"
hostname = "acme-web1"
vmid = 1200
golden = "local:backup/vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst"
node = "pve"
storage = "local-lvm"
rootfs_size = "16G"
bridge = "vmbr0"
tags = ["web"]

[[mount]]
storage = "local-lvm"
size = "10G"
path = "/srv/data"
"#;

    #[test]
    fn good_spec_parses() {
        let s = GuestSpec::parse_many(GOOD).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].hostname.as_str(), "acme-web1");
        assert_eq!(s[0].rootfs_size.bytes(), 16 * GIB);
        assert_eq!(s[0].mounts[0].size.gib_string(), "10");
        assert_eq!(s[0].golden.owner_vmid(), Some(9100));
    }

    /// The agent's JSON form walks the same fields with the same errors as a file.
    #[test]
    fn a_json_spec_is_the_file_spec() {
        let table: toml::Table = GOOD.parse().unwrap();
        let json = serde_json::to_value(&table).unwrap();
        assert_eq!(
            GuestSpec::from_json(&json).unwrap(),
            GuestSpec::parse_many(GOOD).unwrap().remove(0)
        );
        let mut bad = json.clone();
        bad["rootfs_size"] = serde_json::json!("lots");
        bad["cores"] = serde_json::json!(0);
        let errs = GuestSpec::from_json(&bad).unwrap_err().0;
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(
            fields.contains(&"rootfs_size") && fields.contains(&"cores"),
            "{errs:?}"
        );
        let mut null = json.clone();
        null["memory"] = serde_json::Value::Null;
        assert_eq!(
            GuestSpec::from_json(&null).unwrap_err().0[0].field,
            "memory"
        );
        assert_eq!(
            GuestSpec::from_json(&serde_json::json!([1])).unwrap_err().0[0].field,
            "(body)"
        );
    }

    #[test]
    fn every_error_reported_at_once() {
        let bad = GOOD
            .replace("acme-web1", "acme,web1=x")
            .replace("\"16G\"", "\"16\"")
            .replace("/srv/data", "/srv/../etc");
        let errs = GuestSpec::parse_many(&bad).unwrap_err();
        let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["hostname", "rootfs_size", "mount[0].path"],
            "{errs}"
        );
    }

    #[test]
    fn hostile_values_are_refused_by_newtypes() {
        for h in ["a\nb", "a,b", "a=b", "a;b", "-a", "a-", "A", "a..b", ""] {
            assert!(h.parse::<Hostname>().is_err(), "{h:?}");
        }
        for p in [
            "/a,b", "/a=b", "relative", "/a/./b", "/a/../b", "/a//b", "/a/", "/", "/a b", "/a\nb",
        ] {
            assert!(p.parse::<MountPath>().is_err(), "{p:?}");
        }
        for s in ["Local", "a,b", "a=b", "a:b", "1abc", ""] {
            assert!(s.parse::<StorageId>().is_err(), "{s:?}");
        }
        assert!("vmbr0,firewall=1".parse::<Bridge>().is_err());
        assert!("averyveryverylongbridge".parse::<Bridge>().is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!("1.5G".parse::<ByteSize>().unwrap().gib_string(), "1.5");
        // PVE truncates `<GiB> * 1024` to whole MiB: every size must come back exactly.
        for mib in [1u64, 1300, 1023, 4097, 123_457, 16 * 1024 * 1024 - 1] {
            let g: f64 = ByteSize::from_bytes(mib * MIB)
                .unwrap()
                .gib_string()
                .parse()
                .unwrap();
            assert_eq!((g * 1024.0) as u64, mib, "{mib} MiB");
        }
        assert_eq!(
            "1300M".parse::<ByteSize>().unwrap().gib_string(),
            "1.26953125"
        );
        assert_eq!("512M".parse::<ByteSize>().unwrap().resize_arg(), "512M");
        assert!(
            "10".parse::<ByteSize>().is_err(),
            "bare numbers are bytes in PVE; refused"
        );
        assert!(
            "+2G".parse::<ByteSize>().is_err(),
            "relative sizes grow twice on retry"
        );
        assert!("0G".parse::<ByteSize>().is_err());
        assert!("-1G".parse::<ByteSize>().is_err());
        assert!("1.0000001K".parse::<ByteSize>().is_err());
    }

    #[test]
    fn guest_list_and_duplicates() {
        let one = GOOD.split("[[mount]]").next().unwrap();
        let text = format!("[[guest]]\n{one}\n[[guest]]\n{one}");
        let errs = GuestSpec::parse_many(&text).unwrap_err();
        let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["guest[1].hostname", "guest[1].vmid"]);
    }

    fn with_lines(lines: &str) -> String {
        GOOD.replace("tags = [\"web\"]", &format!("tags = [\"web\"]\n{lines}"))
    }

    /// The field each error names, for a spec with `lines` added.
    fn error_fields(lines: &str) -> Vec<String> {
        match GuestSpec::parse_many(&with_lines(lines)) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|f| f.field).collect(),
        }
    }

    const BOUGHT: &str = r#"
cores = 4
memory = 2048
swap = 0
onboot = true
tag = 120
ip = "192.0.2.10/24"
gw = "192.0.2.1"
ip6 = "2001:db8::10/64"
gw6 = "2001:db8::1"
firewall = true
nameserver = ["192.0.2.53", "2001:db8::53"]
searchdomain = ["acme.example", "corp.example"]
"#;

    #[test]
    fn what_a_customer_buys_parses_and_renders_as_pve_takes_it() {
        let s = &GuestSpec::parse_many(&with_lines(BOUGHT)).unwrap()[0];
        assert_eq!(
            s.settings(),
            vec![
                ("cores", "4".to_string()),
                ("memory", "2048".into()),
                ("swap", "0".into()),
                ("onboot", "1".into()),
                ("nameserver", "192.0.2.53 2001:db8::53".into()),
                ("searchdomain", "acme.example corp.example".into()),
            ]
        );
        let net0 = s.net0(None, "BC:24:11:00:00:01").unwrap().to_string();
        assert_eq!(
            net0,
            "name=eth0,bridge=vmbr0,firewall=1,gw=192.0.2.1,gw6=2001:db8::1,hwaddr=BC:24:11:00:00:01,ip=192.0.2.10/24,ip6=2001:db8::10/64,tag=120,type=veth"
        );
        // A journal round trip keeps every field (and re-validates it).
        let back: GuestSpec = serde_json::from_value(serde_json::to_value(s).unwrap()).unwrap();
        assert_eq!(&back, s);
    }

    #[test]
    fn todays_specs_stay_valid_and_keep_the_golden_settings() {
        let s = &GuestSpec::parse_many(GOOD).unwrap()[0];
        assert!(s.settings().is_empty(), "nothing beyond net0 is touched");
        assert_eq!(s.ipv4(), Ipv4Setting::Dhcp);
        assert_eq!(
            s.net0(None, "BC:24:11:00:00:01").unwrap().to_string(),
            "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth"
        );
        // Serialised as before: a record written by an older felhom decodes the same.
        let v = serde_json::to_value(s).unwrap();
        for k in ["cores", "memory", "ip", "tag", "nameserver", "searchdomain"] {
            assert!(v.get(k).is_none(), "{k} serialised for a spec without it");
        }
    }

    #[test]
    fn net0_keeps_unmanaged_keys_and_drops_unset_managed_ones() {
        let s = &GuestSpec::parse_many(GOOD).unwrap()[0];
        let old: pve_api::NetConfig =
            "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:00:00:09,ip=10.0.0.5/24,gw=10.0.0.1,mtu=1400,tag=7,type=veth"
                .parse()
                .unwrap();
        assert_eq!(
            s.net0(Some(&old), "BC:24:11:00:00:01").unwrap().to_string(),
            "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,mtu=1400,type=veth"
        );
    }

    #[test]
    fn every_rule_of_every_new_field_names_the_field() {
        let cases: &[(&str, &str)] = &[
            ("cores = 0", "cores"),
            ("cores = 8193", "cores"),
            ("cores = \"4\"", "cores"),
            ("memory = 15", "memory"),
            ("memory = -1", "memory"),
            ("memory = 4294967296", "memory"),
            ("memory = \"2G\"", "memory"),
            ("swap = -1", "swap"),
            ("swap = 1.5", "swap"),
            ("onboot = 1", "onboot"),
            ("onboot = \"yes\"", "onboot"),
            ("tag = 0", "tag"),
            ("tag = 4095", "tag"),
            ("tag = \"100,trunks=1\"", "tag"),
            ("ip = \"static\"", "ip"),
            ("ip = \"10.0.0.5\"", "ip"),
            ("ip = \"10.0.0.5/33\"", "ip"),
            ("ip = \"10.0.0.5/\"", "ip"),
            ("ip = \"10.0.0.5/+8\"", "ip"),
            ("ip = \"10.0.0.0/24\"", "ip"),
            ("ip = \"10.0.0.255/24\"", "ip"),
            ("ip = \"127.0.0.5/8\"", "ip"),
            ("ip = \"224.0.0.5/24\"", "ip"),
            ("ip = \"0.0.0.0/0\"", "ip"),
            ("ip = \"10.0.0.5/24,gw=10.0.0.1\"", "ip"),
            ("ip = \"10.0.0.5/24\\nnet1: x\"", "ip"),
            ("ip = \"2001:db8::5/64\"", "ip"),
            ("ip = \"manual\"", "ip"),
            ("ip = 10", "ip"),
            ("gw = \"10.0.0.1\"", "gw"),
            ("ip = \"dhcp\"\ngw = \"10.0.0.1\"", "gw"),
            ("ip = \"10.0.0.5/24\"\ngw = \"10.0.1.1\"", "gw"),
            ("ip = \"10.0.0.5/24\"\ngw = \"10.0.0.5\"", "gw"),
            ("ip = \"10.0.0.5/24\"\ngw = \"10.0.0.1;reboot\"", "gw"),
            ("ip = \"10.0.0.5/24\"\ngw = \"2001:db8::1\"", "gw"),
            ("ip6 = \"10.0.0.5/24\"", "ip6"),
            ("ip6 = \"2001:db8::5/129\"", "ip6"),
            ("ip6 = \"::1/128\"", "ip6"),
            ("ip6 = \"ff02::1/64\"", "ip6"),
            ("ip6 = \"2001:db8::5/64=x\"", "ip6"),
            ("gw6 = \"2001:db8::1\"", "gw6"),
            ("ip6 = \"auto\"\ngw6 = \"2001:db8::1\"", "gw6"),
            ("ip6 = \"2001:db8::5/64\"\ngw6 = \"2001:db9::1\"", "gw6"),
            ("ip6 = \"2001:db8::5/64\"\ngw6 = \"10.0.0.1\"", "gw6"),
            ("firewall = \"1\"", "firewall"),
            ("nameserver = \"1.1.1.1\"", "nameserver"),
            ("nameserver = [\"1.1.1.1,8.8.8.8\"]", "nameserver[0]"),
            ("nameserver = [\"1.1.1.1\", \"dns.example\"]", "nameserver[1]"),
            ("nameserver = [\"0.0.0.0\"]", "nameserver[0]"),
            ("nameserver = [1]", "nameserver[0]"),
            ("nameserver = [\"1.1.1.1\",\"1.1.1.2\",\"1.1.1.3\",\"1.1.1.4\",\"1.1.1.5\",\"1.1.1.6\",\"1.1.1.7\"]", "nameserver"),
            ("searchdomain = \"acme.example\"", "searchdomain"),
            ("searchdomain = [\"acme.example;x\"]", "searchdomain[0]"),
            ("searchdomain = [\"acme example\"]", "searchdomain[0]"),
            ("searchdomain = [\"acme.example=\"]", "searchdomain[0]"),
            ("searchdomain = [\"-acme.example\"]", "searchdomain[0]"),
            ("searchdomain = [\"acme.example\\n\"]", "searchdomain[0]"),
        ];
        for (lines, field) in cases {
            assert_eq!(error_fields(lines), vec![field.to_string()], "{lines}");
        }
        // And the valid edges.
        for lines in [
            "cores = 1\nmemory = 16\nswap = 0\ntag = 1",
            "cores = 8192\ntag = 4094\nonboot = false\nfirewall = false",
            "ip = \"dhcp\"\nip6 = \"dhcp\"",
            "ip6 = \"auto\"",
            "ip = \"10.0.0.1/31\"\ngw = \"10.0.0.0\"",
            "ip = \"10.0.0.7/32\"",
            "ip6 = \"2001:db8::5/64\"\ngw6 = \"fe80::1\"",
        ] {
            assert_eq!(error_fields(lines), Vec::<String>::new(), "{lines}");
        }
    }

    #[test]
    fn two_guests_with_one_static_address_collide() {
        let one = GOOD.split("[[mount]]").next().unwrap();
        let a = one.replace("tags = [\"web\"]", "ip = \"10.0.0.5/24\"");
        let b = a
            .replace("acme-web1", "acme-web2")
            .replace("vmid = 1200", "vmid = 1201");
        let errs = GuestSpec::parse_many(&format!("[[guest]]\n{a}\n[[guest]]\n{b}")).unwrap_err();
        let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["guest[1].ip"], "{errs}");
    }

    #[test]
    fn unknown_fields_and_wrong_types() {
        let text = GOOD
            .replace("vmid = 1200", "vmid = \"1200\"\nvmdi = 3")
            .replace("tags = [\"web\"]", "tags = \"web\"");
        let errs = GuestSpec::parse_many(&text).unwrap_err();
        let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["vmid", "tags", "vmdi"], "{errs}");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Arbitrary text never panics the spec parser; it yields a spec or field errors.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = GuestSpec::parse_many(&text);
        }

        /// Valid TOML with arbitrary values in every field: a fully valid spec or errors
        /// naming fields, never a panic; an accepted spec has no separator in any value.
        #[test]
        fn arbitrary_field_values(h in "\\PC{0,40}", p in "\\PC{0,40}", st in "\\PC{0,20}", b in "\\PC{0,20}", size in "\\PC{0,10}", vmid in any::<i64>()) {
            let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
            let text = format!(
                "customer = \"c\"\nhostname = \"{}\"\nvmid = {vmid}\ngolden = \"local:backup/vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst\"\nnode = \"pve\"\nstorage = \"{}\"\nrootfs_size = \"{}\"\nbridge = \"{}\"\n[[mount]]\nstorage = \"local-lvm\"\nsize = \"1G\"\npath = \"{}\"\n",
                esc(&h), esc(&st), esc(&size), esc(&b), esc(&p)
            );
            match GuestSpec::parse_many(&text) {
                Ok(specs) => {
                    let s = &specs[0];
                    for v in [s.hostname.as_str(), s.storage.as_str(), s.bridge.as_str(), s.mounts[0].path.as_str()] {
                        prop_assert!(!v.contains([',', '=', ';', '\n', '\r']), "{v:?}");
                    }
                }
                Err(e) => prop_assert!(!e.0.is_empty() && e.0.iter().all(|f| !f.field.is_empty())),
            }
        }
    }
}
