//! Thin glue over the `vzdump` crate: the archived `pct.conf`, and what a golden archive's
//! files decide about a guest's identity (machine-id, a baked SSH host key, an enabled
//! first-boot unit running `ssh-keygen -A`), read in one streaming pass.
//!
//! Both go through vzdump's bounded reader, and a restore reads [`traits`] (the whole
//! archive) before any volume exists: a header bomb, a truncated or corrupt stream, a `..`
//! or absolute member name or a special file where a regular one belongs fails the restore
//! task with the reader's error, and neither runtime ever unpacks such an archive.

use std::io::Read;
use std::path::Path;

use crate::state::ArchiveTraits;

/// Read the identity-relevant files of a golden archive in one streaming pass.
pub fn traits(path: &Path) -> Result<ArchiveTraits, vzdump::VzdumpError> {
    let mut t = ArchiveTraits::default();
    let mut units: Vec<(String, bool)> = Vec::new(); // unit path, runs ssh-keygen -A
    let mut wants: Vec<String> = Vec::new(); // symlink targets in *.wants
    let small = |r: &mut dyn Read| -> String {
        let mut s = String::new();
        let _ = r.take(64 * 1024).read_to_string(&mut s);
        s
    };
    vzdump::scan_path(path, |e, r| {
        let p = e.path.as_str();
        match p {
            // A FIFO or device node here is never read (it is no identity; a real guest
            // would block on it): refused. A link is not followed, as before.
            "etc/machine-id" | "etc/ssh/ssh_host_ed25519_key"
                if e.kind == vzdump::EntryKind::Other =>
            {
                e.expect_file()?
            }
            "etc/machine-id" if e.kind == vzdump::EntryKind::File => {
                t.machine_id = Some(small(r).trim().to_string())
            }
            "etc/ssh/ssh_host_ed25519_key" if e.kind == vzdump::EntryKind::File => {
                t.ssh_host_key = Some(small(r))
            }
            vzdump::PCT_CONF => {
                let conf = small(r);
                t.raw_lxc = conf
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(k, _)| k.starts_with("lxc."))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
            }
            _ if p.starts_with("etc/systemd/system/")
                || p.starts_with("lib/systemd/system/")
                || p.starts_with("usr/lib/systemd/system/") =>
            {
                let in_wants = p.rsplit('/').nth(1).is_some_and(|d| d.ends_with(".wants"));
                if in_wants && e.kind == vzdump::EntryKind::Symlink {
                    if let Some(target) = &e.link_target {
                        wants.push(target.rsplit('/').next().unwrap_or(target).to_string());
                    }
                } else if e.kind == vzdump::EntryKind::File && p.ends_with(".service") {
                    let text = small(r);
                    let keygen = text.lines().any(|l| {
                        l.trim_start().starts_with("ExecStart")
                            && l.contains("ssh-keygen")
                            && l.contains("-A")
                    });
                    units.push((p.rsplit('/').next().unwrap_or(p).to_string(), keygen));
                }
            }
            _ => {}
        }
        Ok(vzdump::Flow::Continue)
    })?;
    t.keygen_unit = units
        .iter()
        .any(|(name, keygen)| *keygen && wants.contains(name));
    Ok(t)
}

/// The archived config: `pct.conf` parsed into ordered entries and the description.
pub fn pct_conf(path: &Path) -> Result<vzdump::PctConf, vzdump::VzdumpError> {
    vzdump::parse_pct_conf(&vzdump::read_pct_conf(path)?)
}

/// The first archive member that does not fit: `limits` are (mount path, bytes) of the
/// volumes a restore in explicit mode made, the rootfs as `/`. Each regular file counts
/// against the volume of the longest mount path above it, as tar writes it there; the one
/// whose bytes push a volume past its size is where GNU tar stops with ENOSPC (audit R13;
/// pve-container `LXC/Create.pm` `restore_tar_archive`). A size of 0 has no limit (a subvol
/// or a directory). File system overhead is not modelled.
pub fn first_member_over(
    path: &Path,
    limits: &[(String, u64)],
) -> Result<Option<String>, vzdump::VzdumpError> {
    let mounts: Vec<(String, u64)> = limits
        .iter()
        .map(|(mp, b)| (mp.trim_matches('/').to_string(), *b))
        .collect();
    let mut used = vec![0u64; mounts.len()];
    let mut over = None;
    vzdump::scan_path(path, |e, _| {
        if e.kind != vzdump::EntryKind::File {
            return Ok(vzdump::Flow::Continue);
        }
        let p = e.path.as_str();
        let best = mounts
            .iter()
            .enumerate()
            .filter(|(_, (mp, _))| {
                mp.is_empty()
                    || p == mp
                    || p.strip_prefix(mp.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
            .max_by_key(|(_, (mp, _))| mp.len());
        if let Some((i, (_, limit))) = best {
            used[i] += e.size;
            if *limit > 0 && used[i] > *limit {
                over = Some(p.to_string());
                return Ok(vzdump::Flow::Stop);
            }
        }
        Ok(vzdump::Flow::Continue)
    })?;
    Ok(over)
}
