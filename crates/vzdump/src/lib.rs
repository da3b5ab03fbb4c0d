//! Proxmox vzdump LXC archives: a tar stream (plain, gzip or zstd) whose first entry is
//! `./etc/vzdump/pct.conf` (the guest config), followed by the guest's root filesystem
//! (pve-container `VZDump/LXC.pm`; `docs/guests.md`, "Restore").
//!
//! Reading streams the archive once and never unpacks to disk, so memory stays flat on
//! multi-gigabyte archives, and goes through one bounded reader (`bounded.rs`) whatever the
//! input: header-like entries are capped ([`Limits`]), and a truncated or corrupt stream, an
//! absolute or `..` member name or hard-link target, and an entry type no extraction expects
//! are refused with a [`VzdumpError`] variant that names the member. Writing produces the
//! same layout, from synthetic entries or from a real root filesystem directory
//! ([`ArchiveWriter::add_tree`]).

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::rc::Rc;

mod bounded;
pub mod hostile;
mod tree;
pub use bounded::{ExtKind, Limits, DEFAULT_HEADER_CAP, DEFAULT_ZSTD_WINDOW_LOG_MAX};
pub use tree::{excluded, TreeStats, EXCLUDES};

/// `member #3 "etc/passwd"` (the name escaped), or `member #0` when no name is known.
fn member(index: &u64, name: &str) -> String {
    if name.is_empty() {
        format!("member #{index}")
    } else {
        format!("member #{index} {name:?}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VzdumpError {
    #[error(
        "file does not look like a template archive (expected .tar, .tar.gz/.tgz or .tar.zst): {0}"
    )]
    UnknownFormat(String),
    #[error("cannot read archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a vzdump archive: no etc/vzdump/pct.conf")]
    NoPctConf,
    #[error("archive entry {path}: {message}")]
    BadEntry { path: String, message: String },
    #[error("pct.conf line {line}: {message}")]
    BadConf { line: usize, message: String },
    #[error("the first entry written must be pct.conf")]
    ConfNotFirst,
    #[error(
        "archive {}: {kind} of {size} bytes is over the cap of {cap} bytes",
        member(index, name)
    )]
    HeaderTooLarge {
        index: u64,
        name: String,
        kind: ExtKind,
        size: u64,
        cap: u64,
    },
    #[error(
        "archive {}: the archive is truncated (it ends at byte {offset} of the tar stream)",
        member(index, name)
    )]
    Truncated {
        index: u64,
        name: String,
        offset: u64,
    },
    #[error("archive {}: corrupt {format} data: {message}", member(index, name))]
    Decompress {
        index: u64,
        name: String,
        format: &'static str,
        message: String,
    },
    #[error("archive {}: corrupt tar header: {message}", member(index, name))]
    Corrupt {
        index: u64,
        name: String,
        message: String,
    },
    #[error("archive {}: unsafe member name: {reason}", member(index, name))]
    UnsafePath {
        index: u64,
        name: String,
        reason: &'static str,
    },
    #[error(
        "archive {}: unsafe hard link target {target:?}: {reason}",
        member(index, name)
    )]
    UnsafeLink {
        index: u64,
        name: String,
        target: String,
        reason: &'static str,
    },
    #[error(
        "archive {}: expected a regular file, found {found}",
        member(index, name)
    )]
    NotRegular {
        index: u64,
        name: String,
        found: &'static str,
    },
    #[error("archive {}: unsupported entry type {typeflag:?}", member(index, name))]
    UnsupportedEntry {
        index: u64,
        name: String,
        typeflag: char,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From the file name, as PVE decides it.
    pub fn from_path(p: &Path) -> Result<Compression, VzdumpError> {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".tar.zst") {
            Ok(Compression::Zstd)
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Ok(Compression::Gzip)
        } else if name.ends_with(".tar") {
            Ok(Compression::None)
        } else {
            Err(VzdumpError::UnknownFormat(name.to_string()))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The member's position in the archive, counted from 0 (extension headers are part of
    /// the member they describe).
    pub index: u64,
    /// Normalised: no leading `./` or `/` (`etc/machine-id`).
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

impl EntryInfo {
    /// Refuse anything but a regular file where the caller expects one (a FIFO or device
    /// node at `etc/machine-id` must not be read, nor taken for an absent file).
    pub fn expect_file(&self) -> Result<(), VzdumpError> {
        let found = match self.kind {
            EntryKind::File => return Ok(()),
            EntryKind::Dir => "a directory",
            EntryKind::Symlink => "a symbolic link",
            EntryKind::Hardlink => "a hard link",
            EntryKind::Other => "a special file",
        };
        Err(VzdumpError::NotRegular {
            index: self.index,
            name: self.path.clone(),
            found,
        })
    }
}

pub const PCT_CONF: &str = "etc/vzdump/pct.conf";

fn decoder<'a, R: Read + 'a>(
    reader: R,
    c: Compression,
    limits: &Limits,
) -> Result<Box<dyn Read + 'a>, VzdumpError> {
    Ok(match c {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(reader)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(reader)?;
            d.window_log_max(limits.zstd_window_log_max)?;
            Box::new(d)
        }
    })
}

/// Why a member name (or hard-link target) could reach outside the directory it is
/// extracted into; `None` when it cannot.
fn unsafe_path(raw: &str) -> Option<&'static str> {
    if raw.starts_with('/') {
        Some("an absolute path")
    } else if raw.split('/').any(|c| c == "..") {
        Some("a '..' component leaves the root")
    } else {
        None
    }
}

fn normalise(p: &str) -> String {
    let p = p.trim_start_matches("./").trim_start_matches('/');
    p.trim_end_matches('/').to_string()
}

/// Visit every entry once, in archive order; `visit` may read the entry's bytes. With the
/// default [`Limits`].
pub fn scan<R: Read>(
    reader: R,
    c: Compression,
    visit: impl FnMut(&EntryInfo, &mut dyn Read) -> Result<Flow, VzdumpError>,
) -> Result<(), VzdumpError> {
    scan_with(reader, c, &Limits::default(), visit)
}

/// Visit every entry once, in archive order, through the bounded reader: memory stays
/// within `limits` whatever the input, and a hostile or broken archive fails with the
/// variant that names its member (the first refusal wins, even when `visit` swallowed the
/// read error). Member names that are absolute or contain `..`, hard links whose target is,
/// and entry types no extraction expects are refused. Symbolic link targets are not checked:
/// `/etc/machine-id` or `../lib/x` are ordinary in a root filesystem, and are resolved in the
/// guest's root.
pub fn scan_with<R: Read>(
    reader: R,
    c: Compression,
    limits: &Limits,
    visit: impl FnMut(&EntryInfo, &mut dyn Read) -> Result<Flow, VzdumpError>,
) -> Result<(), VzdumpError> {
    scan_measured(reader, c, limits, visit).0
}

/// [`scan_with`], and the largest extension content (long name, pax header) tar was handed,
/// which is what it buffers whole: the tests of the bound read it.
#[doc(hidden)]
pub fn scan_measured<R: Read>(
    reader: R,
    c: Compression,
    limits: &Limits,
    mut visit: impl FnMut(&EntryInfo, &mut dyn Read) -> Result<Flow, VzdumpError>,
) -> (Result<(), VzdumpError>, u64) {
    let decoded = match decoder(reader, c, limits) {
        Ok(d) => d,
        Err(e) => return (Err(e), 0),
    };
    let shared = Rc::new(RefCell::new(bounded::Shared::default()));
    let guard = bounded::Guard::new(decoded, *limits, c, shared.clone());
    let mut ar = tar::Archive::new(guard);
    let result = (|| -> Result<(), VzdumpError> {
        let here = || {
            let s = shared.borrow();
            (s.index, s.name.clone())
        };
        let corrupt = |e: std::io::Error| {
            let (index, name) = here();
            VzdumpError::Corrupt {
                index,
                name,
                message: e.to_string(),
            }
        };
        for entry in ar.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            let (index, _) = here();
            let raw_path = entry
                .path()
                .map_err(corrupt)?
                .to_string_lossy()
                .into_owned();
            let name = || bounded::display_name(raw_path.as_bytes());
            if let Some(reason) = unsafe_path(&raw_path) {
                return Err(VzdumpError::UnsafePath {
                    index,
                    name: name(),
                    reason,
                });
            }
            let h = entry.header();
            let kind = match h.entry_type() {
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink,
                tar::EntryType::Link => EntryKind::Hardlink,
                tar::EntryType::Char
                | tar::EntryType::Block
                | tar::EntryType::Fifo
                | tar::EntryType::XGlobalHeader => EntryKind::Other,
                // GNU tar's volume label: no file, nothing to extract.
                t if t.as_byte() == b'V' => EntryKind::Other,
                t => {
                    return Err(VzdumpError::UnsupportedEntry {
                        index,
                        name: name(),
                        typeflag: t.as_byte() as char,
                    })
                }
            };
            let link_target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|l| l.to_string_lossy().into_owned());
            if kind == EntryKind::Hardlink {
                let target = link_target.clone().unwrap_or_default();
                if let Some(reason) = unsafe_path(&target) {
                    return Err(VzdumpError::UnsafeLink {
                        index,
                        name: name(),
                        target: bounded::display_name(target.as_bytes()),
                        reason,
                    });
                }
            }
            let h = entry.header();
            let info = EntryInfo {
                index,
                path: normalise(&raw_path),
                kind,
                size: entry.size(),
                mode: h.mode().unwrap_or(0),
                uid: h.uid().unwrap_or(0),
                gid: h.gid().unwrap_or(0),
                link_target,
            };
            if visit(&info, &mut entry)? == Flow::Stop {
                break;
            }
        }
        Ok(())
    })();
    drop(ar);
    let mut shared = shared.borrow_mut();
    // The guard's refusal is the cause, however tar or `visit` reported it.
    let result = match shared.refusal.take() {
        Some(refusal) => Err(refusal),
        None => result,
    };
    (result, shared.peak_ext)
}

pub fn scan_path(
    p: &Path,
    visit: impl FnMut(&EntryInfo, &mut dyn Read) -> Result<Flow, VzdumpError>,
) -> Result<(), VzdumpError> {
    scan_path_with(p, &Limits::default(), visit)
}

pub fn scan_path_with(
    p: &Path,
    limits: &Limits,
    visit: impl FnMut(&EntryInfo, &mut dyn Read) -> Result<Flow, VzdumpError>,
) -> Result<(), VzdumpError> {
    let c = Compression::from_path(p)?;
    scan_with(BufReader::new(File::open(p)?), c, limits, visit)
}

/// The archived `pct.conf` text. vzdump writes it first, so this stops at once.
pub fn read_pct_conf(p: &Path) -> Result<String, VzdumpError> {
    let mut found = None;
    scan_path(p, |e, r| {
        if e.path == PCT_CONF {
            e.expect_file()?;
            let mut s = String::new();
            r.take(1 << 20)
                .read_to_string(&mut s)
                .map_err(|err| VzdumpError::BadEntry {
                    path: e.path.clone(),
                    message: err.to_string(),
                })?;
            found = Some(s);
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    })?;
    found.ok_or(VzdumpError::NoPctConf)
}

/// The main section of a `pct.conf`: ordered key/value pairs, and the description (PVE
/// stores it as leading `#` comment lines, URL-escaped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PctConf {
    pub entries: Vec<(String, String)>,
    pub description: String,
}

impl PctConf {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// PVE URL-escapes control characters, `%` and `:` in description comment lines.
fn unescape_comment(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_pct_conf(text: &str) -> Result<PctConf, VzdumpError> {
    let mut conf = PctConf::default();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('[') {
            // A snapshot or [pve:pending] section: not part of the main config.
            break;
        }
        if let Some(c) = line.strip_prefix('#') {
            conf.description.push_str(&unescape_comment(c));
            conf.description.push('\n');
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line.split_once(':').ok_or(VzdumpError::BadConf {
            line: i + 1,
            message: "expected 'key: value'".into(),
        })?;
        let k = k.trim();
        let ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            return Err(VzdumpError::BadConf {
                line: i + 1,
                message: format!("bad key {k:?}"),
            });
        }
        conf.entries.push((k.to_string(), v.trim().to_string()));
    }
    Ok(conf)
}

/// The compressed output of an [`ArchiveWriter`]; finished explicitly so that errors of the
/// final flush (the gzip trailer, the last zstd frame) are reported, not lost in a drop.
enum Sink {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

impl Sink {
    fn finish(self) -> std::io::Result<()> {
        let mut file = match self {
            Sink::Plain(w) => w,
            Sink::Gzip(w) => w.finish()?,
            Sink::Zstd(w) => w.finish()?,
        };
        file.flush()
    }
}

/// Writes an archive in vzdump layout: `./etc/vzdump/pct.conf` first, then the rootfs.
///
/// Member names keep their leading `./` exactly as GNU tar writes them on a PVE host: PVE
/// finds the config by listing the archive with `tar tf` and matching
/// `\./etc/vzdump/(pct|vps)\.conf$` (pve-storage `extract_vzdump_config_tar`), so an archive
/// whose member is plain `etc/vzdump/pct.conf` fails its restore with "archive contains no
/// configuration file". The tar crate's path setters drop `./`, so names are written raw here
/// (with GNU long-name entries past 100 bytes).
pub struct ArchiveWriter {
    builder: tar::Builder<Sink>,
    wrote_conf: bool,
}

/// The GNU long-name (`L`) or long-link (`K`) entry that carries a name too long for the
/// 100-byte header field.
fn long_name_header(len: usize, kind: u8) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = b"././@LongLink";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(len as u64 + 1);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    h
}

impl ArchiveWriter {
    pub fn create(path: &Path, c: Compression) -> Result<ArchiveWriter, VzdumpError> {
        let file = BufWriter::new(File::create(path)?);
        let sink = match c {
            Compression::None => Sink::Plain(file),
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::fast(),
            )),
            Compression::Zstd => Sink::Zstd(zstd::stream::write::Encoder::new(file, 3)?),
        };
        let mut builder = tar::Builder::new(sink);
        builder.mode(tar::HeaderMode::Deterministic);
        Ok(ArchiveWriter {
            builder,
            wrote_conf: false,
        })
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_781_037_670);
        h
    }

    /// `./etc/x` for `etc/x`, `/etc/x` or `./etc/x`; `./` for the root.
    fn rel(path: &str) -> String {
        format!("./{}", normalise(path))
    }

    /// Put `bytes` into a header's name or link field, as GNU tar does: truncated there, and
    /// whole in a preceding long-name (`L`) or long-link (`K`) entry when it does not fit.
    fn put_name(&mut self, bytes: &[u8], kind: u8, field: &mut [u8]) -> Result<(), VzdumpError> {
        if bytes.len() >= field.len() {
            let lh = long_name_header(bytes.len(), kind);
            self.builder.append(&lh, bytes.chain(&[0u8][..]))?;
        }
        let n = bytes.len().min(field.len());
        field.fill(0);
        field[..n].copy_from_slice(&bytes[..n]);
        Ok(())
    }

    /// Write one entry under the exact member `name` (and link target), then its data.
    fn append_raw(
        &mut self,
        mut h: tar::Header,
        name: &str,
        link: Option<&[u8]>,
        data: impl Read,
    ) -> Result<(), VzdumpError> {
        let bad = |what: &str| VzdumpError::BadEntry {
            path: name.to_string(),
            message: format!("{what} contains a NUL byte"),
        };
        let name_bytes = name.as_bytes();
        if name_bytes.contains(&0) {
            return Err(bad("name"));
        }
        self.put_name(name_bytes, b'L', &mut h.as_old_mut().name)?;
        if let Some(link) = link {
            if link.contains(&0) {
                return Err(bad("link target"));
            }
            self.put_name(link, b'K', &mut h.as_old_mut().linkname)?;
        }
        h.set_cksum();
        self.builder.append(&h, data)?;
        Ok(())
    }

    pub fn pct_conf(&mut self, text: &str) -> Result<(), VzdumpError> {
        if self.wrote_conf {
            return Err(VzdumpError::ConfNotFirst);
        }
        for d in ["./", "./etc/", "./etc/vzdump/"] {
            let h = Self::header(tar::EntryType::Directory, 0o755, 0);
            self.append_raw(h, d, None, std::io::empty())?;
        }
        let h = Self::header(tar::EntryType::Regular, 0o644, text.len() as u64);
        self.append_raw(h, &Self::rel(PCT_CONF), None, text.as_bytes())?;
        self.wrote_conf = true;
        Ok(())
    }

    fn check(&self) -> Result<(), VzdumpError> {
        if self.wrote_conf {
            Ok(())
        } else {
            Err(VzdumpError::ConfNotFirst)
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), VzdumpError> {
        self.check()?;
        let h = Self::header(tar::EntryType::Directory, mode, 0);
        let name = format!("{}/", Self::rel(path).trim_end_matches('/'));
        self.append_raw(h, &name, None, std::io::empty())
    }

    pub fn file(&mut self, path: &str, mode: u32, bytes: &[u8]) -> Result<(), VzdumpError> {
        self.file_from_reader(path, mode, bytes.len() as u64, bytes)
    }

    pub fn file_from_reader(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        r: impl Read,
    ) -> Result<(), VzdumpError> {
        self.check()?;
        let h = Self::header(tar::EntryType::Regular, mode, size);
        self.append_raw(h, &Self::rel(path), None, r)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), VzdumpError> {
        self.check()?;
        let h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.append_raw(
            h,
            &Self::rel(path),
            Some(target.as_bytes()),
            std::io::empty(),
        )
    }

    pub fn finish(self) -> Result<(), VzdumpError> {
        self.builder.into_inner()?.finish()?;
        Ok(())
    }
}

/// The owner VMID PVE parses from `vzdump-lxc-<vmid>-YYYY_MM_DD-HH_MM_SS.tar[.gz|.zst]`
/// (pve-storage `parse_volname`); `None` for any other name.
pub fn owner_vmid_from_name(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix("vzdump-lxc-")?;
    let (vmid, rest) = rest.split_once('-')?;
    if vmid.is_empty()
        || vmid.len() > 9
        || !vmid.bytes().all(|b| b.is_ascii_digit())
        || vmid.starts_with('0')
    {
        return None;
    }
    let stamp = rest.split('.').next()?;
    let b = stamp.as_bytes();
    let shape = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 | 13 | 16 => *c == b'_',
            10 => *c == b'-',
            _ => c.is_ascii_digit(),
        });
    let ext = &rest[stamp.len()..];
    if !shape || !matches!(ext, ".tar" | ".tar.gz" | ".tar.zst" | ".tgz") {
        return None;
    }
    vmid.parse().ok().filter(|v| *v >= 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut w = ArchiveWriter::create(&p, Compression::from_path(&p).unwrap()).unwrap();
        w.pct_conf("#golden%3A base\narch: amd64\nnet0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:63:43:F4,ip=dhcp,type=veth\nunprivileged: 1\n\n[snap1]\narch: i386\n").unwrap();
        w.dir("etc/ssh", 0o755).unwrap();
        w.file("etc/machine-id", 0o444, b"").unwrap();
        w.symlink("var/lib/dbus/machine-id", "/etc/machine-id")
            .unwrap();
        w.finish().unwrap();
        p
    }

    #[test]
    fn all_compressions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "vzdump-lxc-9100-2026_06_09-20_41_10.tar",
            "vzdump-lxc-9100-2026_06_09-20_41_10.tar.gz",
            "vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst",
        ] {
            let p = write(dir.path(), name);
            let conf = parse_pct_conf(&read_pct_conf(&p).unwrap()).unwrap();
            assert_eq!(
                conf.get("arch"),
                Some("amd64"),
                "{name}: snapshot sections are not the main config"
            );
            assert_eq!(conf.description, "golden: base\n");
            let mut seen = Vec::new();
            scan_path(&p, |e, _| {
                seen.push((e.path.clone(), e.kind, e.link_target.clone()));
                Ok(Flow::Continue)
            })
            .unwrap();
            assert!(seen.contains(&("etc/machine-id".into(), EntryKind::File, None)));
            assert!(seen.contains(&(
                "var/lib/dbus/machine-id".into(),
                EntryKind::Symlink,
                Some("/etc/machine-id".into())
            )));
        }
    }

    #[test]
    fn not_vzdump_garbage_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plain.tar");
        {
            let mut b = tar::Builder::new(File::create(&p).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            b.append_data(&mut h, "hello.txt", &b"hi"[..]).unwrap();
            b.finish().unwrap();
        }
        assert!(matches!(read_pct_conf(&p), Err(VzdumpError::NoPctConf)));
        let g = dir.path().join("garbage.tar.zst");
        std::fs::write(&g, b"this is not zstd at all").unwrap();
        assert!(read_pct_conf(&g).is_err());
        let good = write(dir.path(), "vzdump-lxc-100-2026_01_01-00_00_00.tar.zst");
        let bytes = std::fs::read(&good).unwrap();
        let t = dir.path().join("trunc.tar.zst");
        std::fs::write(&t, &bytes[..bytes.len() / 3]).unwrap();
        assert!(scan_path(&t, |_, _| Ok(Flow::Continue)).is_err());
        assert!(matches!(
            Compression::from_path(Path::new("x.zip")),
            Err(VzdumpError::UnknownFormat(_))
        ));
    }

    #[test]
    fn owner_vmids() {
        assert_eq!(
            owner_vmid_from_name("vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst"),
            Some(9100)
        );
        assert_eq!(
            owner_vmid_from_name("vzdump-lxc-9100-2026_06_09-20_41_10.tar"),
            Some(9100)
        );
        assert_eq!(
            owner_vmid_from_name("vzdump-qemu-9100-2026_06_09-20_41_10.tar.zst"),
            None
        );
        assert_eq!(owner_vmid_from_name("golden.tar.zst"), None);
        assert_eq!(
            owner_vmid_from_name("vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst.bak"),
            None
        );
        assert_eq!(
            owner_vmid_from_name("vzdump-lxc-99-2026_06_09-20_41_10.tar"),
            None
        );
    }

    #[test]
    fn conf_parse_errors() {
        assert!(parse_pct_conf("arch amd64\n").is_err());
        assert!(parse_pct_conf("ar ch: x\n").is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Arbitrary bytes as any compression: an error or entries, never a panic.
        #[test]
        fn arbitrary_archives_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), c in 0u8..3) {
            let c = [Compression::None, Compression::Gzip, Compression::Zstd][c as usize];
            let _ = scan(&bytes[..], c, |_, r| { let _ = std::io::copy(r, &mut std::io::sink()); Ok(Flow::Continue) });
        }

        #[test]
        fn arbitrary_pct_conf_never_panics(text in "\\PC{0,300}") {
            let _ = parse_pct_conf(&text);
        }

        #[test]
        fn owner_vmid_parse_never_panics(name in "\\PC{0,80}") {
            let _ = owner_vmid_from_name(&name);
        }
    }
}
