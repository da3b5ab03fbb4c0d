//! Restore: unpack a vzdump archive into the guest's rootfs volume as PVE's `vzrestore`
//! worker does (pve-container `src/PVE/LXC/Create.pm`; `docs/pve-reference.md §2.3`).

use super::*;

impl Lxc {
    // ---- restore ------------------------------------------------------------------------

    /// Unpack `archive` into the guest's rootfs volume as PVE's `vzrestore` worker does;
    /// returns the task log lines. The directory is emptied first, so a restore that a
    /// restarted simulator resumes starts over cleanly.
    /// `cancel` (a killed task, a stopping simulator) kills tar and fails the restore.
    pub fn restore(
        &self,
        archive: &Path,
        conf: &BTreeMap<String, String>,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Vec<String>, RuntimeError> {
        let (uid, gid, unprivileged) = Self::ids(conf);
        let rootfs = self.rootfs_dir(conf)?;
        remove_tree(&rootfs)?;
        mkdir(&rootfs, 0o755)?;
        chown(&rootfs, uid, gid)?;
        // Fresh mount-point volumes of the request start empty, owned by the guest's root.
        for v in conf
            .iter()
            .filter(|(k, _)| k.starts_with("mp"))
            .map(|(_, v)| v)
        {
            if let Ok(m) = pve_api::MountConfig::parse_mp(v) {
                if !m.volume.starts_with('/') {
                    let d = self.volume_dir(&m.volume)?;
                    remove_tree(&d)?;
                    mkdir(&d, 0o755)?;
                    chown(&d, uid, gid)?;
                }
            }
        }
        let name = archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let decompress: Option<&str> = if name.ends_with(".tar.zst") {
            Some("--zstd")
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some("-z")
        } else if name.ends_with(".tar.bz2") {
            Some("-j")
        } else if name.ends_with(".tar.xz") {
            Some("-J")
        } else if name.ends_with(".tar.lzo") {
            Some("--lzop")
        } else if name.ends_with(".tar") {
            None
        } else {
            return Err(RuntimeError::Guest(format!(
                "file '{name}' does not look like a template archive"
            )));
        };
        let mut c = if unprivileged {
            let mut c = cmd("lxc-usernsexec");
            c.args([
                "-m",
                &format!("u:0:{ID_SHIFT}:{ID_COUNT}"),
                "-m",
                &format!("g:0:{ID_SHIFT}:{ID_COUNT}"),
                "--",
                "tar",
            ]);
            c
        } else {
            cmd("tar")
        };
        c.args(["xpf", "-"]);
        if let Some(d) = decompress {
            c.arg(d);
        }
        c.args([
            "--totals",
            "--one-file-system",
            "-p",
            "--sparse",
            "--numeric-owner",
            "--acls",
            "--xattrs",
            "--xattrs-include=user.*",
            "--xattrs-include=security.capability",
            "--warning=no-file-ignored",
            "--warning=no-xattr-write",
            "--skip-old-files",
            "--anchored",
            "--exclude",
            "./dev/*",
            // The rootfs is the working directory (entered as root before the id map
            // applies), so the mapped tar never needs to traverse the state dir's parents.
            "-C",
            ".",
        ]);
        c.current_dir(&rootfs);
        let input =
            std::fs::File::open(archive).map_err(io_err(format!("open {}", archive.display())))?;
        // tar's messages go to a file: a pipe nobody reads while waiting could fill up.
        let msgs = self.root.join(format!(
            ".restore-{}.log",
            rootfs
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let msgs_file =
            std::fs::File::create(&msgs).map_err(io_err(format!("create {}", msgs.display())))?;
        c.stdin(Stdio::from(input))
            .stdout(Stdio::null())
            .stderr(Stdio::from(msgs_file));
        proc::own_group(&mut c);
        let t = Instant::now();
        let mut child = c
            .spawn()
            .map_err(io_err(format!("run `{}`", proc::describe(&c))))?;
        let mut guard = proc::GroupGuard::new(child.id());
        let status = loop {
            if cancel.load(std::sync::atomic::Ordering::SeqCst) {
                drop(guard);
                let _ = child.wait();
                let _ = std::fs::remove_file(&msgs);
                return Err(RuntimeError::Guest("interrupted by signal".into()));
            }
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(io_err(format!("wait for `{}`", proc::describe(&c)))(e)),
            }
        };
        guard.disarm();
        let text = std::fs::read_to_string(&msgs).unwrap_or_default();
        let _ = std::fs::remove_file(&msgs);
        if !status.success() {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            return Err(RuntimeError::Command {
                command: proc::describe(&c),
                status: status.to_string(),
                output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        // The volume is a directory here: what a file system of the requested size would
        // refuse is measured after the unpack (allocated blocks, hard links once). Too much
        // fails the task as tar's ENOSPC would; the worker then removes the volumes and the
        // placeholder (audit §2 (a)). Mount-point paths unpack into the rootfs directory
        // here, so their content counts against the rootfs.
        if let Some(size) = conf
            .get("rootfs")
            .and_then(|r| pve_api::MountConfig::parse_rootfs(r).ok())
            .and_then(|m| m.size)
        {
            let used = tree_bytes(&rootfs)?;
            if used > size {
                return Err(RuntimeError::Guest(format!(
                    "tar: ./: Cannot write: {} (the archive's content needs {} MiB, the rootfs volume has {} MiB)",
                    pve_api::texts::NO_SPACE,
                    used.div_ceil(1 << 20),
                    size >> 20
                )));
            }
        }
        let mut log = vec![format!("extracting archive '{}'", archive.display())];
        log.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
        // PVE deletes the archived config from the new rootfs.
        let root = GuestRoot::open(&rootfs, uid, gid)
            .map_err(io_err(format!("open {}", rootfs.display())))?;
        for f in ["etc/vzdump/pct.conf", "etc/vzdump/pct.fw"] {
            root.unlink(f)
                .map_err(io_err(format!("remove {f} from the rootfs")))?;
        }
        log.push(format!(
            "unpacked into {} in {:.2}s{}",
            rootfs.display(),
            t.elapsed().as_secs_f64(),
            if unprivileged {
                format!(" (ids shifted by {ID_SHIFT})")
            } else {
                String::new()
            }
        ));
        Ok(log)
    }
}

/// The bytes a directory tree occupies: allocated blocks of every file and directory, each
/// inode once, never leaving the tree's file system.
pub(super) fn tree_bytes(dir: &Path) -> Result<u64, RuntimeError> {
    fn walk(
        dir: &Path,
        dev: u64,
        seen: &mut std::collections::HashSet<u64>,
    ) -> Result<u64, RuntimeError> {
        let mut total = 0;
        for e in std::fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
            let p = e.map_err(io_err(format!("read {}", dir.display())))?.path();
            let m =
                std::fs::symlink_metadata(&p).map_err(io_err(format!("stat {}", p.display())))?;
            if m.dev() != dev || !seen.insert(m.ino()) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                total += walk(&p, dev, seen)?;
            }
        }
        Ok(total)
    }
    let m = std::fs::symlink_metadata(dir).map_err(io_err(format!("stat {}", dir.display())))?;
    walk(dir, m.dev(), &mut std::collections::HashSet::new())
}
