//! PVE's start-time setup of a Debian guest (`pre_start_hook`, pve-container
//! `src/PVE/LXC/Setup/Debian.pm`; `docs/pve-fidelity.md`), applied to the rootfs before
//! every boot: `/fastboot`, `/etc/network/interfaces` for the NICs that have a name,
//! `/etc/hostname`, the PVE section of `/etc/hosts`, and `/etc/resolv.conf`. Nothing of `post_create_hook`: PVE does not run it on restore.
//!
//! The rootfs belongs to the guest, so every path in it is resolved as the guest would see
//! it: `openat2(RESOLVE_IN_ROOT)` makes `/` and `..` stop at the rootfs and follows the
//! guest's symlinks inside it, as PVE's chroot does. A link such as `etc/hostname ->
//! /etc/shadow` can never reach the host's files. Files are replaced by write-and-rename, keep
//! the owner and mode of the file they replace, and are otherwise owned by the guest's root
//! (uid 100000 for an unprivileged guest).

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// A guest's rootfs, opened once; all access goes through it.
pub struct GuestRoot {
    dir: OwnedFd,
    uid: u32,
    gid: u32,
}

fn cstr(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::other("path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Split `etc/hostname` into its directory and a plain file name.
fn split(path: &str) -> std::io::Result<(&str, &str)> {
    let path = path.trim_start_matches('/');
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    if name.is_empty() || name == "." || name == ".." {
        return Err(std::io::Error::other(format!("not a file path: {path}")));
    }
    Ok((if dir.is_empty() { "." } else { dir }, name))
}

impl GuestRoot {
    /// `uid`/`gid`: the guest's root as seen from the host.
    pub fn open(rootfs: &Path, uid: u32, gid: u32) -> std::io::Result<GuestRoot> {
        let p = CString::new(rootfs.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("rootfs path contains a NUL byte"))?;
        // SAFETY: a valid C string; the returned descriptor is owned below.
        let fd = check(unsafe {
            libc::open(
                p.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(GuestRoot {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
            uid,
            gid,
        })
    }

    /// Open `path` inside the guest, resolved as if the rootfs were `/`.
    fn resolve(&self, path: &str, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
        let p = cstr(if path.is_empty() { "." } else { path })?;
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: mode as u64,
            resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 with a valid directory fd, C string and a correctly sized open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                p.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor from openat2.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Open an existing file of the guest for reading without blocking (a FIFO or a device
    /// planted there by the guest opens at once instead of hanging the caller), and only if
    /// it is a regular file: anything else is an error naming the path and what it is.
    fn open_regular(&self, path: &str) -> std::io::Result<std::fs::File> {
        let fd = self.resolve(path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0)?;
        let f = std::fs::File::from(fd);
        let kind = f.metadata()?.file_type();
        if kind.is_file() {
            return Ok(f);
        }
        use std::os::unix::fs::FileTypeExt;
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a file"
        };
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the guest's /{} is {what}, not a regular file",
                path.trim_start_matches('/')
            ),
        ))
    }

    /// A small text file of the guest; `None` if it does not exist; an error if it is not a
    /// regular file.
    pub fn read(&self, path: &str) -> std::io::Result<Option<String>> {
        match self.open_regular(path) {
            Ok(f) => {
                let mut s = String::new();
                f.take(1 << 20).read_to_string(&mut s).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("the guest's /{}: {e}", path.trim_start_matches('/')),
                    )
                })?;
                Ok(Some(s))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replace `path` with `contents` (write beside it, then rename over it).
    pub fn write(&self, path: &str, contents: &str, mode: u32) -> std::io::Result<()> {
        let (dir, name) = split(path)?;
        let dirfd = self.resolve(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let cname = cstr(name)?;
        let tmp = cstr(&format!(".{name}.felhom-sim-tmp"))?;
        // Keep the owner and mode of a regular file being replaced.
        let (mut uid, mut gid, mut mode) = (self.uid, self.gid, mode);
        // SAFETY: zeroed stat is a valid out-parameter for fstatat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and stat buffer.
        let r = unsafe {
            libc::fstatat(
                dirfd.as_raw_fd(),
                cname.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFREG {
            (uid, gid, mode) = (st.st_uid, st.st_gid, st.st_mode & 0o7777);
        }
        // SAFETY: valid fd and C string; a missing file is fine.
        unsafe { libc::unlinkat(dirfd.as_raw_fd(), tmp.as_ptr(), 0) };
        // SAFETY: valid fd and C string; O_EXCL|O_NOFOLLOW never follows a link.
        let fd = check(unsafe {
            libc::openat(
                dirfd.as_raw_fd(),
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        })?;
        // SAFETY: a fresh descriptor.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let done = (|| {
            f.write_all(contents.as_bytes())?;
            // SAFETY: valid descriptor.
            check(unsafe { libc::fchown(f.as_raw_fd(), uid, gid) })?;
            // SAFETY: valid descriptor.
            check(unsafe { libc::fchmod(f.as_raw_fd(), mode) })?;
            // SAFETY: valid fd and C strings, both names in the same directory.
            check(unsafe {
                libc::renameat(
                    dirfd.as_raw_fd(),
                    tmp.as_ptr(),
                    dirfd.as_raw_fd(),
                    cname.as_ptr(),
                )
            })?;
            Ok(())
        })();
        if done.is_err() {
            // SAFETY: valid fd and C string.
            unsafe { libc::unlinkat(dirfd.as_raw_fd(), tmp.as_ptr(), 0) };
        }
        done
    }

    /// Create an empty file unless a regular file exists there.
    pub fn touch(&self, path: &str) -> std::io::Result<()> {
        match self.open_regular(path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.write(path, "", 0o644),
            Err(e) => Err(e),
        }
    }

    /// Remove a file if it is there (never a directory, never through a final symlink).
    pub fn unlink(&self, path: &str) -> std::io::Result<()> {
        let (dir, name) = split(path)?;
        let dirfd = match self.resolve(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let cname = cstr(name)?;
        // SAFETY: valid fd and C string.
        match check(unsafe { libc::unlinkat(dirfd.as_raw_fd(), cname.as_ptr(), 0) }) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// One NIC as the start-time setup sees it (a `netN` with a `name`).
#[derive(Debug, Clone, Default)]
pub struct Nic {
    pub name: String,
    /// `dhcp`, `manual` or `a.b.c.d/nn`.
    pub ip: Option<String>,
    pub gw: Option<String>,
    /// `dhcp`, `auto`, `manual` or an IPv6 CIDR.
    pub ip6: Option<String>,
    pub gw6: Option<String>,
}

/// What the start-time setup writes.
#[derive(Debug, Clone, Default)]
pub struct StartSetup {
    pub hostname: String,
    /// From the guest's `searchdomain`, else the host's resolv.conf.
    pub searchdomain: Option<String>,
    /// From the guest's `nameserver`, else the host's resolv.conf.
    pub nameservers: Vec<String>,
    pub nics: Vec<Nic>,
}

pub const BEGIN: &str = "# --- BEGIN PVE ---";
pub const END: &str = "# --- END PVE ---";

/// Apply the setup to a rootfs; the lines say what was written (for the task log).
pub fn apply(root: &GuestRoot, s: &StartSetup) -> std::io::Result<Vec<String>> {
    let mut log = Vec::new();
    root.touch("fastboot")?;
    if !s.nics.is_empty() {
        let old = root.read("etc/network/interfaces")?;
        root.write(
            "etc/network/interfaces",
            &interfaces_file(old.as_deref(), &s.nics),
            0o644,
        )?;
        log.push(format!(
            "setup: /etc/network/interfaces for {}",
            s.nics
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let short = short_name(&s.hostname);
    root.write("etc/hostname", &format!("{short}\n"), 0o644)?;
    let static_ip = s
        .nics
        .iter()
        .filter_map(|n| n.ip.as_deref())
        .find(|ip| ip.contains('/'))
        .map(|ip| ip.split('/').next().unwrap_or(ip).to_string());
    let old = root.read("etc/hosts")?;
    root.write(
        "etc/hosts",
        &hosts_file(
            old.as_deref(),
            &s.hostname,
            s.searchdomain.as_deref(),
            static_ip.as_deref(),
        ),
        0o644,
    )?;
    log.push(format!("setup: hostname {short}, /etc/hosts PVE section"));
    if s.searchdomain.is_some() || !s.nameservers.is_empty() {
        root.write(
            "etc/resolv.conf",
            &resolv_conf(s.searchdomain.as_deref(), &s.nameservers),
            0o644,
        )?;
        log.push("setup: /etc/resolv.conf".into());
    }
    Ok(log)
}

fn short_name(hostname: &str) -> &str {
    hostname.split('.').next().unwrap_or(hostname)
}

/// `(before, after)` around the PVE section, or `None` when there is none.
fn outside_section(text: &str) -> Option<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let b = lines.iter().position(|l| l.trim() == BEGIN)?;
    let e = lines[b..].iter().position(|l| l.trim() == END)? + b;
    let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    Some((join(&lines[..b]), join(&lines[e + 1..])))
}

/// `/etc/hosts` with the PVE section: the loopback lines only when the rest of the file has
/// none, then the guest's own names on its static address or, for DHCP, on 127.0.1.1. An
/// existing section is replaced where it is; otherwise the section is appended.
pub fn hosts_file(
    old: Option<&str>,
    hostname: &str,
    searchdomain: Option<&str>,
    static_ip: Option<&str>,
) -> String {
    let old = old.unwrap_or("");
    let (before, after, had_section) = match outside_section(old) {
        Some((b, a)) => (b, a, true),
        None => (old.to_string(), String::new(), false),
    };
    let rest = format!("{before}{after}");
    let has = |addr: &str| {
        rest.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some(addr) && f.next().is_some()
        })
    };
    let short = short_name(hostname);
    let names = if hostname.contains('.') {
        format!("{hostname} {short}")
    } else {
        match searchdomain.and_then(|d| d.split([' ', ',', ';']).find(|d| !d.is_empty())) {
            Some(d) => format!("{hostname}.{d} {hostname}"),
            None => hostname.to_string(),
        }
    };
    let mut section = format!("{BEGIN}\n");
    if !has("127.0.0.1") {
        section.push_str("127.0.0.1 localhost.localnet localhost\n");
    }
    if !has("::1") {
        section.push_str("::1 localhost.localnet localhost\n");
    }
    match static_ip {
        Some(ip) => section.push_str(&format!("{ip} {names}\n")),
        None => section.push_str(&format!("127.0.1.1 {names}\n")),
    }
    section.push_str(END);
    section.push('\n');
    if had_section {
        format!("{before}{section}{after}")
    } else if before.is_empty() {
        section
    } else if before.ends_with('\n') {
        format!("{before}{section}")
    } else {
        format!("{before}\n{section}")
    }
}

const STANZAS: &[&str] = &[
    "auto",
    "iface",
    "mapping",
    "source",
    "source-directory",
    "source-dir",
    "rename",
];

fn starts_stanza(first: &str) -> bool {
    STANZAS.contains(&first) || first.starts_with("allow-")
}

/// Is `ip` inside `cidr` (same family, the first `prefix` bits equal)?
fn in_cidr(ip: &str, cidr: &str) -> bool {
    use std::net::IpAddr;
    let Some((net, prefix)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(ip), Ok(net), Ok(prefix)) = (
        ip.parse::<IpAddr>(),
        net.parse::<IpAddr>(),
        prefix.parse::<u32>(),
    ) else {
        return false;
    };
    let (a, b, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    if prefix > bits {
        return false;
    }
    let shift = bits - prefix;
    shift >= 128 || (a >> shift) == (b >> shift)
}

/// A stanza's gateway: `gateway <gw>` when the gateway is on the link; otherwise PVE's
/// Debian setup adds a host route to it and the default route through it, between its
/// markers (pve-container `src/PVE/LXC/Setup/Debian.pm`, `setup_network` and its gateway
/// scripts).
fn gateway(ifname: &str, gw: &str, on_link: bool) -> String {
    if on_link {
        return format!("\tgateway {gw}\n");
    }
    format!(
        "{BEGIN}\n\tpost-up ip route add {gw} dev {ifname}\n\tpost-up ip route add default via {gw} dev {ifname}\n\tpre-down ip route del default via {gw} dev {ifname}\n\tpre-down ip route del {gw} dev {ifname}\n{END}\n"
    )
}

/// `/etc/network/interfaces`: `lo` and every named NIC written by PVE's rules (`auto` +
/// `inet dhcp`, or `inet static` with `address` and a gateway, on the link or routed;
/// the same for `inet6`), every other stanza and comment of the old file kept after them.
pub fn interfaces_file(old: Option<&str>, nics: &[Nic]) -> String {
    let managed: Vec<&str> = std::iter::once("lo")
        .chain(nics.iter().map(|n| n.name.as_str()))
        .collect();
    let mut kept = String::new();
    let mut skipping = false;
    for line in old.unwrap_or("").lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if starts_stanza(first) {
            skipping = false;
            if first == "iface" && words.next().is_some_and(|n| managed.contains(&n)) {
                skipping = true;
                continue;
            }
            if first == "auto" || first.starts_with("allow-") {
                let rest: Vec<&str> = line
                    .split_whitespace()
                    .skip(1)
                    .filter(|n| !managed.contains(n))
                    .collect();
                if !rest.is_empty() {
                    kept.push_str(&format!("{first} {}\n", rest.join(" ")));
                }
                continue;
            }
        } else if skipping
            && ((!first.is_empty() && !first.starts_with('#'))
                || line.trim() == BEGIN
                || line.trim() == END)
        {
            // An option line of a stanza PVE rewrites, or the markers of its gateway routes.
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    let mut out = String::from("auto lo\niface lo inet loopback\n");
    for n in nics {
        let v4 = n.ip.as_deref();
        let v6 = n.ip6.as_deref();
        if v4.is_none() && v6.is_none() {
            continue;
        }
        out.push_str(&format!("\nauto {}\n", n.name));
        match v4 {
            Some("dhcp") => out.push_str(&format!("iface {} inet dhcp\n", n.name)),
            Some("manual") => out.push_str(&format!("iface {} inet manual\n", n.name)),
            Some(cidr) => {
                out.push_str(&format!("iface {} inet static\n\taddress {cidr}\n", n.name));
                if let Some(gw) = &n.gw {
                    out.push_str(&gateway(&n.name, gw, in_cidr(gw, cidr)));
                }
            }
            None => {}
        }
        match v6 {
            Some(m @ ("dhcp" | "auto" | "manual")) => {
                out.push_str(&format!("iface {} inet6 {m}\n", n.name))
            }
            Some(cidr) => {
                out.push_str(&format!(
                    "iface {} inet6 static\n\taddress {cidr}\n",
                    n.name
                ));
                if let Some(gw) = &n.gw6 {
                    let on_link = in_cidr(gw, cidr) || in_cidr(gw, "fe80::/10");
                    out.push_str(&gateway(&n.name, gw, on_link));
                }
            }
            None => {}
        }
    }
    let kept = kept.trim_start_matches('\n');
    if !kept.trim().is_empty() {
        out.push('\n');
        out.push_str(kept);
    }
    out
}

/// `/etc/resolv.conf` with the `search` and `nameserver` lines.
pub fn resolv_conf(search: Option<&str>, nameservers: &[String]) -> String {
    let mut s = String::new();
    if let Some(d) = search {
        let domains: Vec<&str> = d.split([' ', ',', ';']).filter(|x| !x.is_empty()).collect();
        if !domains.is_empty() {
            s.push_str(&format!("search {}\n", domains.join(" ")));
        }
    }
    for n in nameservers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    s
}

/// The host's `search` domains and nameservers (PVE's fallback when the guest's config has
/// none).
pub fn host_dns(resolv: &str) -> (Option<String>, Vec<String>) {
    let mut search = None;
    let mut ns = Vec::new();
    for l in resolv.lines() {
        let mut f = l.split_whitespace();
        match f.next() {
            Some("search") | Some("domain") => {
                let d: Vec<&str> = f.collect();
                if !d.is_empty() {
                    search = Some(d.join(" "));
                }
            }
            Some("nameserver") => {
                if let Some(n) = f.next() {
                    ns.push(n.to_string());
                }
            }
            _ => {}
        }
    }
    (search, ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dhcp(name: &str) -> Nic {
        Nic {
            name: name.into(),
            ip: Some("dhcp".into()),
            ..Nic::default()
        }
    }

    #[test]
    fn interfaces_keep_other_stanzas_and_replace_pves() {
        let golden = "# interfaces(5) file used by ifup(8) and ifdown(8)\n# Include files from /etc/network/interfaces.d:\nsource /etc/network/interfaces.d/*\n";
        let out = interfaces_file(Some(golden), &[dhcp("eth0")]);
        assert_eq!(
            out,
            format!(
                "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n\n{golden}"
            )
        );
        // Idempotent: a second start rewrites PVE's stanzas, keeps the rest once.
        assert_eq!(interfaces_file(Some(&out), &[dhcp("eth0")]), out);
        let old = "auto lo eth1\niface lo inet loopback\niface eth0 inet static\n\taddress 1.2.3.4/24\n\tgateway 1.2.3.1\niface eth1 inet manual\n    mtu 9000\n";
        let stat = Nic {
            name: "eth0".into(),
            ip: Some("192.0.2.5/24".into()),
            gw: Some("192.0.2.1".into()),
            ip6: Some("auto".into()),
            ..Nic::default()
        };
        let out = interfaces_file(Some(old), &[stat]);
        assert_eq!(
            out,
            "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n\taddress 192.0.2.5/24\n\tgateway 192.0.2.1\niface eth0 inet6 auto\n\nauto eth1\niface eth1 inet manual\n    mtu 9000\n"
        );
    }

    #[test]
    fn a_gateway_off_the_link_gets_pves_routes() {
        let nic = Nic {
            name: "eth0".into(),
            ip: Some("192.0.2.5/24".into()),
            gw: Some("198.51.100.1".into()),
            ip6: Some("2001:db8::5/64".into()),
            gw6: Some("fe80::1".into()),
        };
        let nic2 = nic.clone();
        let out = interfaces_file(None, &[nic]);
        assert_eq!(
            out,
            "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n\taddress 192.0.2.5/24\n# --- BEGIN PVE ---\n\tpost-up ip route add 198.51.100.1 dev eth0\n\tpost-up ip route add default via 198.51.100.1 dev eth0\n\tpre-down ip route del default via 198.51.100.1 dev eth0\n\tpre-down ip route del 198.51.100.1 dev eth0\n# --- END PVE ---\niface eth0 inet6 static\n\taddress 2001:db8::5/64\n\tgateway fe80::1\n"
        );
        // A second start writes the same file, not a second set of routes.
        assert_eq!(interfaces_file(Some(&out), &[nic2]), out);
        assert!(in_cidr("192.0.2.1", "192.0.2.5/24"));
        assert!(!in_cidr("192.0.3.1", "192.0.2.5/24"));
        assert!(in_cidr("2001:db8::1", "2001:db8::5/64"));
        assert!(!in_cidr("192.0.2.1", "2001:db8::5/64"));
    }

    #[test]
    fn hosts_section() {
        assert_eq!(
            hosts_file(None, "acme-app", None, None),
            "# --- BEGIN PVE ---\n127.0.0.1 localhost.localnet localhost\n::1 localhost.localnet localhost\n127.0.1.1 acme-app\n# --- END PVE ---\n"
        );
        let old = "127.0.0.1 localhost\n# --- BEGIN PVE ---\n127.0.1.1 old\n# --- END PVE ---\n10.0.0.9 db\n";
        assert_eq!(
            hosts_file(Some(old), "web.example.com", None, Some("192.0.2.5")),
            "127.0.0.1 localhost\n# --- BEGIN PVE ---\n::1 localhost.localnet localhost\n192.0.2.5 web.example.com web\n# --- END PVE ---\n10.0.0.9 db\n"
        );
        assert!(hosts_file(Some("::1 ip6-localhost\n"), "a", Some("corp.example"), None)
            .ends_with("127.0.0.1 localhost.localnet localhost\n127.0.1.1 a.corp.example a\n# --- END PVE ---\n"));
    }

    #[test]
    fn dns() {
        let (s, n) =
            host_dns("# x\nsearch a.example b.example\nnameserver 10.0.0.53\nnameserver ::1\n");
        assert_eq!(s.as_deref(), Some("a.example b.example"));
        assert_eq!(n, ["10.0.0.53", "::1"]);
        assert_eq!(
            resolv_conf(s.as_deref(), &n),
            "search a.example b.example\nnameserver 10.0.0.53\nnameserver ::1\n"
        );
    }

    /// A FIFO (or any non-regular file) the guest left where the setup reads a file: the
    /// setup fails at once naming the file, instead of waiting forever for a writer; the
    /// state dump's reads of the guest's files get an error, not a hang.
    #[test]
    fn a_fifo_in_the_guest_is_refused_without_blocking() {
        let host = tempfile::tempdir().unwrap();
        let rootfs = host.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc/network")).unwrap();
        let fifo = std::ffi::CString::new(rootfs.join("etc/hosts").as_os_str().as_encoded_bytes())
            .unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let root = GuestRoot::open(&rootfs, uid, gid).unwrap();
        let s = StartSetup {
            hostname: "acme-app".into(),
            nics: vec![dhcp("eth0")],
            ..StartSetup::default()
        };
        // On a thread, so a regression shows as a failure, not as a hung test run.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = apply(&root, &s).map_err(|e| e.to_string());
            let read = root.read("etc/hosts").map_err(|e| e.to_string());
            let _ = tx.send((r, read));
        });
        let (r, read) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the setup returned instead of blocking on the FIFO");
        let e = r.unwrap_err();
        assert_eq!(e, "the guest's /etc/hosts is a FIFO, not a regular file");
        assert_eq!(read.unwrap_err(), e);
        // `fastboot` as a directory: touch refuses it too.
        std::fs::remove_file(rootfs.join("etc/hosts")).unwrap();
        std::fs::remove_file(rootfs.join("fastboot")).unwrap();
        std::fs::create_dir(rootfs.join("fastboot")).unwrap();
        let root = GuestRoot::open(&rootfs, uid, gid).unwrap();
        assert!(root
            .touch("fastboot")
            .unwrap_err()
            .to_string()
            .contains("/fastboot is a directory"));
    }

    #[test]
    fn guest_symlinks_never_leave_the_rootfs() {
        use std::os::unix::fs::symlink;
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret");
        std::fs::write(&secret, "host data").unwrap();
        let rootfs = host.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        // Absolute and relative escapes, as a hostile guest could leave them.
        symlink(&secret, rootfs.join("etc/hostname")).unwrap();
        symlink("../../secret", rootfs.join("etc/hosts")).unwrap();
        symlink(host.path(), rootfs.join("etc/network")).unwrap();
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let root = GuestRoot::open(&rootfs, uid, gid).unwrap();
        assert_eq!(root.read("etc/hosts").unwrap(), None, "resolved inside");
        let s = StartSetup {
            hostname: "acme-app".into(),
            nics: vec![dhcp("eth0")],
            ..StartSetup::default()
        };
        // etc/network points at a host path that does not exist inside: refused.
        assert!(apply(&root, &s).is_err());
        std::fs::remove_file(rootfs.join("etc/network")).unwrap();
        std::fs::create_dir(rootfs.join("etc/network")).unwrap();
        apply(&root, &s).unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host data");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
            "acme-app\n"
        );
        assert!(!rootfs.join("etc/hostname").is_symlink(), "link replaced");
        assert!(rootfs.join("fastboot").is_file());
        root.unlink("etc/vzdump/pct.conf").unwrap();
    }
}
