//! Archiving a root filesystem directory the way vzdump does: numeric owners, modes and
//! mtimes kept, symlinks stored as links, hard links stored once, the extended attributes
//! PVE's restore extracts (`user.*`, `security.capability`) and POSIX ACLs as GNU tar's pax
//! records, one file system only, and vzdump's excludes.
//!
//! GNU tar does this on a PVE host; here it is done in-process so that a golden can be
//! written in one streamed pass with `pct.conf` first, without a tar binary or a temporary
//! uncompressed tarball.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::{ArchiveWriter, VzdumpError};

/// What a container backup leaves out: vzdump's own excludes (pve-container
/// `VZDump/LXC.pm`: temporary files and pid files), and `./dev/*`, which PVE's restore never
/// extracts (device nodes are made by LXC at start). GNU tar exclude semantics: anchored at
/// the root, `*` also matches `/`, `?` matches one character.
pub const EXCLUDES: &[&str] = &["./tmp/?*", "./var/tmp/?*", "./var/run/?*.pid", "./dev/*"];

/// Extended attributes kept, as PVE's restore asks tar for them
/// (`--xattrs-include=user.* --xattrs-include=security.capability`): file capabilities
/// (e.g. `ping`'s `cap_net_raw`) must survive, or those programs lose their privilege.
fn xattr_wanted(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

/// POSIX ACLs, stored by Linux as binary xattrs, go into the archive the way GNU tar
/// `--acls --numeric-owner` writes them: pax records `SCHILY.acl.access` / `.default` with
/// the ACL as text and numeric ids (PVE's restore passes `--acls`; names would be resolved
/// against the PVE host's users, not the guest's).
fn acl_pax_key(name: &[u8]) -> Option<&'static str> {
    match name {
        b"system.posix_acl_access" => Some("SCHILY.acl.access"),
        b"system.posix_acl_default" => Some("SCHILY.acl.default"),
        _ => None,
    }
}

/// The kernel's `posix_acl_xattr` layout (version 2, then 8-byte entries: tag, permissions,
/// id) as ACL text: `user::rwx,group::r-x,group:4:r-x,mask::r-x,other::r-x`.
pub fn acl_xattr_to_text(raw: &[u8]) -> Option<String> {
    let (head, rest) = raw.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*head) != 2 || rest.len() % 8 != 0 {
        return None;
    }
    let mut out = Vec::new();
    for e in rest.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        if perm & !0o7 != 0 {
            return None;
        }
        let rwx: String = [(4, 'r'), (2, 'w'), (1, 'x')]
            .iter()
            .map(|(bit, c)| if perm & bit != 0 { *c } else { '-' })
            .collect();
        out.push(match tag {
            0x01 => format!("user::{rwx}"),
            0x02 => format!("user:{id}:{rwx}"),
            0x04 => format!("group::{rwx}"),
            0x08 => format!("group:{id}:{rwx}"),
            0x10 => format!("mask::{rwx}"),
            0x20 => format!("other::{rwx}"),
            _ => return None,
        });
    }
    Some(out.join(","))
}

/// What [`ArchiveWriter::add_tree`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Every entry written (directories, files, links, fifos, device nodes).
    pub entries: u64,
    /// Regular files with content (hard links not counted again).
    pub files: u64,
    /// Bytes of regular-file content (the uncompressed size of the rootfs).
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Entries that carried kept extended attributes.
    pub xattr_entries: u64,
    /// Paths left out by [`EXCLUDES`] (a left-out directory counts once).
    pub excluded: u64,
    /// Sockets are not archivable (GNU tar skips them too).
    pub sockets_skipped: u64,
    /// Mount points whose contents were skipped (`--one-file-system`).
    pub other_fs_skipped: Vec<String>,
    /// Entries whose POSIX ACLs were archived.
    pub acl_entries: u64,
    /// Paths whose ACL xattr could not be read as an ACL (left out).
    pub acls_dropped: Vec<String>,
}

/// `*` matches any run of characters including `/`, `?` exactly one (GNU tar's default for
/// exclude patterns).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(b'*'), _) => (0..=name.len()).any(|i| glob(&pattern[1..], &name[i..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Whether an archive member name (`./var/tmp/x`) is left out by [`EXCLUDES`].
pub fn excluded(member: &str) -> bool {
    EXCLUDES
        .iter()
        .any(|p| glob(p.as_bytes(), member.as_bytes()))
}

fn c_path(p: &Path) -> Result<CString, VzdumpError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| VzdumpError::BadEntry {
        path: p.display().to_string(),
        message: "path contains a NUL byte".into(),
    })
}

fn os_err(p: &Path, what: &str) -> VzdumpError {
    VzdumpError::BadEntry {
        path: p.display().to_string(),
        message: format!("{what}: {}", std::io::Error::last_os_error()),
    }
}

/// A pax record for an extended attribute or ACL: key and raw value.
type Xattr = (Vec<u8>, Vec<u8>);

/// The pax records for the extended attributes of `p` itself (never of a symlink's target):
/// the kept xattrs as `SCHILY.xattr.*`, ACLs as `SCHILY.acl.*`; and whether an ACL could not
/// be decoded.
fn read_xattrs(p: &Path) -> Result<(Vec<Xattr>, bool), VzdumpError> {
    let cp = c_path(p)?;
    // SAFETY: a valid NUL-terminated path; a null buffer with size 0 asks for the size.
    let size = unsafe { libc::llistxattr(cp.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        let err = std::io::Error::last_os_error();
        // A file system without xattr support has none to keep.
        if err.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok((Vec::new(), false));
        }
        return Err(os_err(p, "llistxattr"));
    }
    if size == 0 {
        return Ok((Vec::new(), false));
    }
    let mut names = vec![0u8; size as usize];
    // SAFETY: the buffer is `names.len()` bytes long.
    let got = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if got < 0 {
        return Err(os_err(p, "llistxattr"));
    }
    names.truncate(got as usize);
    let mut records = Vec::new();
    let mut bad_acl = false;
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let acl_key = acl_pax_key(name);
        if acl_key.is_none() && !xattr_wanted(name) {
            continue;
        }
        let cname = CString::new(name).map_err(|_| os_err(p, "xattr name"))?;
        // SAFETY: as above.
        let len = unsafe { libc::lgetxattr(cp.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(os_err(p, "lgetxattr"));
        }
        let mut value = vec![0u8; len as usize];
        // SAFETY: the buffer is `value.len()` bytes long.
        let got = unsafe {
            libc::lgetxattr(
                cp.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if got < 0 {
            return Err(os_err(p, "lgetxattr"));
        }
        value.truncate(got as usize);
        match acl_key {
            Some(key) => match acl_xattr_to_text(&value) {
                Some(text) => records.push((key.as_bytes().to_vec(), text.into_bytes())),
                None => bad_acl = true,
            },
            None => {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(name);
                records.push((key, value));
            }
        }
    }
    Ok((records, bad_acl))
}

/// One pax record, `"<len> <key>=<value>\n"`, where `<len>` counts the whole record,
/// itself included.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// The header fields every entry takes from the file: numeric owner, permission bits, mtime.
fn header_from(meta: &Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid() as u64);
    h.set_gid(meta.gid() as u64);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);
    h
}

struct Walk<'a> {
    w: &'a mut ArchiveWriter,
    root_dev: u64,
    /// (dev, inode) of a multiply-linked file → the member name it was first stored under.
    links: HashMap<(u64, u64), String>,
    stats: TreeStats,
}

impl Walk<'_> {
    fn pax(&mut self, xattrs: &[Xattr]) -> Result<(), VzdumpError> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (key, value) in xattrs {
            data.extend(pax_record(key, value));
        }
        if xattrs.iter().any(|(k, _)| k.starts_with(b"SCHILY.acl.")) {
            self.stats.acl_entries += 1;
        }
        if xattrs.iter().any(|(k, _)| k.starts_with(b"SCHILY.xattr.")) {
            self.stats.xattr_entries += 1;
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        self.w
            .append_raw(h, "./PaxHeaders/xattrs", None, &data[..])?;
        Ok(())
    }

    fn entry(&mut self, path: &Path, member: &str, meta: &Metadata) -> Result<(), VzdumpError> {
        let ft = meta.file_type();
        if ft.is_socket() {
            self.stats.sockets_skipped += 1;
            return Ok(());
        }
        let (xattrs, bad_acl) = read_xattrs(path)?;
        if bad_acl {
            self.stats.acls_dropped.push(member.to_string());
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(path)?;
            let h = header_from(meta, tar::EntryType::Symlink);
            self.pax(&xattrs)?;
            self.w.append_raw(
                h,
                member,
                Some(target.as_os_str().as_bytes()),
                std::io::empty(),
            )?;
            self.stats.symlinks += 1;
        } else if ft.is_dir() {
            let h = header_from(meta, tar::EntryType::Directory);
            self.pax(&xattrs)?;
            self.w
                .append_raw(h, &format!("{member}/"), None, std::io::empty())?;
            self.stats.dirs += 1;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&key) {
                    let first = first.clone();
                    let h = header_from(meta, tar::EntryType::Link);
                    self.pax(&xattrs)?;
                    self.w
                        .append_raw(h, member, Some(first.as_bytes()), std::io::empty())?;
                    self.stats.hardlinks += 1;
                    self.stats.entries += 1;
                    return Ok(());
                }
                self.links.insert(key, member.to_string());
            }
            // O_NOFOLLOW: the entry was a regular file when listed; never read through a
            // symlink swapped in since.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            let mut h = header_from(meta, tar::EntryType::Regular);
            h.set_size(meta.len());
            self.pax(&xattrs)?;
            self.w
                .append_raw(h, member, None, std::io::Read::take(file, meta.len()))?;
            self.stats.files += 1;
            self.stats.bytes += meta.len();
        } else {
            let kind = if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            let mut h = header_from(meta, kind);
            let rdev = meta.rdev();
            h.set_device_major(libc::major(rdev))?;
            h.set_device_minor(libc::minor(rdev))?;
            self.pax(&xattrs)?;
            self.w.append_raw(h, member, None, std::io::empty())?;
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn dir(&mut self, path: &Path, member: &str) -> Result<(), VzdumpError> {
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        // Sorted, so the same tree always gives the same archive.
        names.sort();
        for name in names {
            let child = path.join(&name);
            let child_member = format!("{member}/{}", name.to_string_lossy());
            if name.as_bytes().contains(&b'\n') {
                return Err(VzdumpError::BadEntry {
                    path: child.display().to_string(),
                    message: "file name with a newline".into(),
                });
            }
            if excluded(&child_member) {
                self.stats.excluded += 1;
                continue;
            }
            let meta = std::fs::symlink_metadata(&child)?;
            self.entry(&child, &child_member, &meta)?;
            if meta.is_dir() {
                if meta.dev() != self.root_dev {
                    self.stats.other_fs_skipped.push(child_member);
                    continue;
                }
                self.dir(&child, &child_member)?;
            }
        }
        Ok(())
    }
}

impl ArchiveWriter {
    /// Append the directory tree at `root` as the container's root filesystem (after
    /// [`ArchiveWriter::pct_conf`]), in the layout vzdump writes: members named `./…`,
    /// numeric owners, [`EXCLUDES`] left out, contents of other file systems skipped.
    pub fn add_tree(&mut self, root: &Path) -> Result<TreeStats, VzdumpError> {
        self.check()?;
        let meta = std::fs::symlink_metadata(root)?;
        if !meta.is_dir() {
            return Err(VzdumpError::BadEntry {
                path: root.display().to_string(),
                message: "not a directory".into(),
            });
        }
        let mut walk = Walk {
            w: self,
            root_dev: meta.dev(),
            links: HashMap::new(),
            stats: TreeStats::default(),
        };
        let (xattrs, _) = read_xattrs(root)?;
        let h = header_from(&meta, tar::EntryType::Directory);
        walk.pax(&xattrs)?;
        walk.w.append_raw(h, "./", None, std::io::empty())?;
        walk.stats.entries += 1;
        walk.stats.dirs += 1;
        walk.dir(root, ".")?;
        walk.w.builder.get_mut().flush()?;
        Ok(walk.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{scan_path, Compression, EntryKind, Flow};
    use std::fs::File;

    #[test]
    fn excludes_follow_gnu_tar_semantics() {
        assert!(excluded("./tmp/x"));
        assert!(excluded("./tmp/a/b"));
        assert!(!excluded("./tmp"), "the directory itself stays");
        assert!(excluded("./var/tmp/systemd-private"));
        assert!(excluded("./var/run/sshd.pid"));
        assert!(excluded("./var/run/a/b.pid"));
        assert!(!excluded("./var/run/.pid"), "?* needs one character");
        assert!(!excluded("./var/run/x.pidfile"));
        assert!(excluded("./dev/null"));
        assert!(!excluded("./dev"));
        assert!(!excluded("./etc/tmp/x"), "anchored at the root");
    }

    #[test]
    fn acl_text_refuses_what_is_not_an_acl() {
        assert_eq!(acl_xattr_to_text(&[]), None);
        assert_eq!(acl_xattr_to_text(&1u32.to_le_bytes()), None, "version 1");
        let mut v = 2u32.to_le_bytes().to_vec();
        assert_eq!(acl_xattr_to_text(&v).as_deref(), Some(""));
        v.extend([0x02, 0, 6, 0, 0xe8, 0x03, 0, 0]);
        assert_eq!(acl_xattr_to_text(&v).as_deref(), Some("user:1000:rw-"));
        v.push(0);
        assert_eq!(acl_xattr_to_text(&v), None, "not whole entries");
        let bad_tag = [2u32.to_le_bytes().to_vec(), vec![0x40, 0, 7, 0, 0, 0, 0, 0]].concat();
        assert_eq!(acl_xattr_to_text(&bad_tag), None);
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for n in [0usize, 1, 5, 80, 88, 89, 90, 990, 995, 1000, 9990] {
            let v = vec![b'x'; n];
            let r = pax_record(b"SCHILY.xattr.user.a", &v);
            let (len, _) = std::str::from_utf8(&r[..r.iter().position(|b| *b == b' ').unwrap()])
                .map(|s| (s.parse::<usize>().unwrap(), ()))
                .unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
        }
    }

    fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
        let cp = c_path(p).unwrap();
        let cn = CString::new(name).unwrap();
        // SAFETY: valid pointers and lengths.
        unsafe {
            libc::lsetxattr(
                cp.as_ptr(),
                cn.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            ) == 0
        }
    }

    /// Modes, owners, symlinks, hard links, excludes and kept xattrs survive the trip, and
    /// pct.conf stays first.
    #[test]
    fn tree_round_trip() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        for d in [
            "etc/ssh", "tmp/junk", "var/tmp", "usr/bin", "dev", "var/run",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/motd"), b"hello\n").unwrap();
        std::fs::set_permissions(
            root.join("etc/motd"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::fs::write(root.join("usr/bin/perl"), b"#!perl").unwrap();
        std::fs::hard_link(root.join("usr/bin/perl"), root.join("usr/bin/perl5")).unwrap();
        std::os::unix::fs::symlink("/etc/machine-id", root.join("etc/link")).unwrap();
        std::fs::write(root.join("tmp/junk/x"), b"gone").unwrap();
        std::fs::write(root.join("var/tmp/y"), b"gone").unwrap();
        std::fs::write(root.join("var/run/a.pid"), b"1").unwrap();
        std::fs::write(root.join("dev/fake"), b"").unwrap();
        // A file capability (ping's cap_net_raw, VFS_CAP_REVISION_2) and a user xattr: both
        // kept; a trusted.* one is not (PVE's restore would not extract it either).
        let cap: Vec<u8> = [0x0200_0001u32, 1 << 13, 0, 0, 0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        for (name, value) in [
            ("security.capability", &cap[..]),
            ("user.felhom", &b"v\0bin"[..]),
            ("trusted.felhom", &b"no"[..]),
        ] {
            assert!(
                set_xattr(&root.join("etc/motd"), name, value),
                "setting {name} needs root and a file system with xattrs: {}",
                std::io::Error::last_os_error()
            );
        }
        // An ACL as the kernel stores it: user::rwx group::r-x group:4:r-x mask::r-x
        // other::r-x (what systemd puts on /var/log/journal for the adm group).
        let acl: Vec<u8> = std::iter::once(2u32.to_le_bytes().to_vec())
            .chain(
                [
                    (0x01u16, 7u16, u32::MAX),
                    (0x04, 5, u32::MAX),
                    (0x08, 5, 4),
                    (0x10, 5, u32::MAX),
                    (0x20, 5, u32::MAX),
                ]
                .iter()
                .map(|(t, p, id)| {
                    [
                        t.to_le_bytes().to_vec(),
                        p.to_le_bytes().to_vec(),
                        id.to_le_bytes().to_vec(),
                    ]
                    .concat()
                }),
            )
            .flatten()
            .collect();
        assert!(
            set_xattr(&root.join("etc/ssh"), "system.posix_acl_access", &acl),
            "setting an ACL needs a file system with ACLs: {}",
            std::io::Error::last_os_error()
        );
        let long = "d".repeat(120);
        std::fs::create_dir_all(root.join(&long)).unwrap();
        std::fs::write(root.join(&long).join("f"), b"long").unwrap();
        std::os::unix::fs::symlink("t".repeat(150), root.join("etc/longlink")).unwrap();

        let out = dir.path().join("g.tar.zst");
        let mut w = ArchiveWriter::create(&out, Compression::Zstd).unwrap();
        w.pct_conf("arch: amd64\n").unwrap();
        let stats = w.add_tree(&root).unwrap();
        w.finish().unwrap();
        assert_eq!(stats.hardlinks, 1);
        assert_eq!(stats.excluded, 4, "{stats:?}");
        assert_eq!(stats.xattr_entries, 1);
        assert_eq!(stats.acl_entries, 1);
        assert!(stats.acls_dropped.is_empty());

        let mut seen = Vec::new();
        scan_path(&out, |e, _| {
            seen.push(e.clone());
            Ok(Flow::Continue)
        })
        .unwrap();
        let names: Vec<&str> = seen.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            seen.iter()
                .find(|e| e.kind == EntryKind::File)
                .unwrap()
                .path,
            crate::PCT_CONF
        );
        for gone in [
            "tmp/junk",
            "tmp/junk/x",
            "var/tmp/y",
            "var/run/a.pid",
            "dev/fake",
        ] {
            assert!(!names.contains(&gone), "{gone} excluded: {names:?}");
        }
        for kept in ["tmp", "var/tmp", "dev", "etc/motd"] {
            assert!(names.contains(&kept), "{kept} kept: {names:?}");
        }
        let get = |p: &str| seen.iter().find(|e| e.path == p).unwrap();
        assert_eq!(get("etc/motd").mode, 0o640);
        let me = std::fs::metadata(&root).unwrap();
        assert_eq!(get("etc/motd").uid, me.uid() as u64);
        assert_eq!(get("etc/link").kind, EntryKind::Symlink);
        assert_eq!(
            get("etc/link").link_target.as_deref(),
            Some("/etc/machine-id")
        );
        assert_eq!(
            get("etc/longlink").link_target.as_deref(),
            Some("t".repeat(150).as_str())
        );
        assert_eq!(get(&format!("{long}/f")).size, 4);
        let first = if names.iter().position(|n| *n == "usr/bin/perl")
            < names.iter().position(|n| *n == "usr/bin/perl5")
        {
            ("usr/bin/perl", "usr/bin/perl5")
        } else {
            ("usr/bin/perl5", "usr/bin/perl")
        };
        assert_eq!(get(first.1).kind, EntryKind::Hardlink);
        assert_eq!(
            get(first.1).link_target.as_deref(),
            Some(format!("./{}", first.0).as_str())
        );

        // Raw member names as `tar tf` lists them: PVE looks for `./etc/vzdump/pct.conf`.
        let f = File::open(&out).unwrap();
        let mut ar = tar::Archive::new(zstd::stream::read::Decoder::new(f).unwrap());
        let mut raw = Vec::new();
        let mut found = Vec::new();
        let mut acl_text = None;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            if name == "./etc/ssh/" {
                for x in e.pax_extensions().unwrap().unwrap() {
                    let x = x.unwrap();
                    acl_text = Some((x.key().unwrap().to_string(), x.value().unwrap().to_string()));
                }
            }
            if name == "./etc/motd" {
                for x in e.pax_extensions().unwrap().unwrap() {
                    let x = x.unwrap();
                    found.push((x.key().unwrap().to_string(), x.value_bytes().to_vec()));
                }
            }
            raw.push(name);
        }
        assert!(raw.iter().all(|n| n.starts_with("./")), "{raw:?}");
        assert_eq!(
            raw.iter().find(|n| !n.ends_with('/')).map(String::as_str),
            Some("./etc/vzdump/pct.conf")
        );
        assert!(raw.contains(&format!("./{long}/f")), "long names keep ./");
        assert_eq!(
            acl_text,
            Some((
                "SCHILY.acl.access".to_string(),
                "user::rwx,group::r-x,group:4:r-x,mask::r-x,other::r-x".to_string()
            ))
        );
        // The pax records read back byte for byte; trusted.* left out.
        found.sort();
        assert_eq!(
            found,
            vec![
                ("SCHILY.xattr.security.capability".to_string(), cap),
                ("SCHILY.xattr.user.felhom".to_string(), b"v\0bin".to_vec()),
            ]
        );
    }
}
