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
    /// A PVE node name (`pve-node`).
    NodeName,
    validate_node
);

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
    pub fn gib_string(self) -> String {
        if self.0.is_multiple_of(GIB) {
            format!("{}", self.0 / GIB)
        } else {
            let v = self.0 as f64 / GIB as f64;
            let s = format!("{v:.4}");
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
    /// The guest's name: `name`, or the hostname.
    pub fn name(&self) -> &str {
        self.name.as_ref().unwrap_or(&self.hostname).as_str()
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
        for (i, s) in specs.iter().enumerate() {
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
        let node = w.parsed::<NodeName>("node", true);
        let storage = w.parsed::<StorageId>("storage", true);
        let rootfs_size = w.parsed::<ByteSize>("rootfs_size", true);
        if let Some(size) = rootfs_size {
            if size.bytes() < GIB {
                w.err("rootfs_size", "must be at least 1G");
            }
        }
        let bridge = w.parsed::<Bridge>("bridge", true);
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
