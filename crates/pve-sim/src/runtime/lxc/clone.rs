//! Clone and template for real guests (pve-container `src/PVE/API2/LXC.pm` `clone_vm`,
//! `src/PVE/LXC.pm` `template_create`, `src/PVE/LXC/Setup/Base.pm` `clear_machine_id`).
//!
//! A volume is a directory here, so:
//! - a **linked clone** is a copy too (`cp -a --reflink=auto`: shared extents where the file
//!   system can, a plain copy elsewhere). What felhom can observe is the same as a thin
//!   snapshot on lvmthin/ZFS (the clone's files are the base's, writes do not reach the
//!   base); what differs is time and space, which the modelled runtime models instead. An
//!   overlay on a read-only base would save the copy but needs a mount at every start;
//!   the state still records which base a clone uses, so a base in use is never freed.
//! - a **full clone** copies the tree the same way (PVE rsyncs a mounted volume).
//! - `post_clone_hook` is the only change inside: on a systemd guest `/etc/machine-id` is
//!   emptied to a bare newline (unless it says `uninitialized`) and a regular
//!   `/var/lib/dbus/machine-id` goes; SSH host keys are copied as they are.
//! - a **template** renames the volume directories `vm-<id>-…` → `base-<id>-…`.

use super::*;
use crate::runtime::VolumeCopy;

impl Lxc {
    /// Make each new volume from its source, then `post_clone_hook` in the new rootfs.
    pub(crate) fn clone_volumes(
        &self,
        newid: u32,
        copies: &[VolumeCopy],
        conf: &BTreeMap<String, String>,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut log = vec![format!("creating a clone with ID {newid}")];
        for c in copies {
            if cancel.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(RuntimeError::Guest("interrupted by signal".into()));
            }
            let from = self.volume_dir(&c.from)?;
            let to = self.volume_dir(&c.to)?;
            if !from.is_dir() {
                return Err(RuntimeError::Guest(texts_volume_missing(&c.from)));
            }
            remove_tree(&to)?;
            if let Some(parent) = to.parent() {
                mkdir(parent, 0o711)?;
            }
            let t = Instant::now();
            run(cmd("cp")
                .args(["-a", "--reflink=auto", "--no-target-directory"])
                .arg(&from)
                .arg(&to))?;
            log.push(format!(
                "create {} of mount point {} ({}) as {} in {:.2}s",
                if c.linked {
                    "linked clone"
                } else {
                    "full clone"
                },
                c.key,
                c.from,
                c.to,
                t.elapsed().as_secs_f64()
            ));
        }
        let Some(root) = copies.iter().find(|c| c.key == "rootfs") else {
            return Ok(log);
        };
        let unpriv = is_on(conf.get("unprivileged"));
        let (uid, gid) = if unpriv { (ID_SHIFT, ID_SHIFT) } else { (0, 0) };
        let dir = self.volume_dir(&root.to)?;
        let guest =
            GuestRoot::open(&dir, uid, gid).map_err(io_err(format!("open {}", dir.display())))?;
        let systemd = ["lib/systemd/systemd", "usr/lib/systemd/systemd"]
            .iter()
            .any(|p| dir.join(p).exists());
        if systemd {
            let dbus = dir.join("var/lib/dbus/machine-id");
            if std::fs::symlink_metadata(&dbus).is_ok_and(|m| m.is_file()) {
                guest
                    .unlink("var/lib/dbus/machine-id")
                    .map_err(io_err("remove /var/lib/dbus/machine-id in the clone"))?;
            }
            let old = guest
                .read("etc/machine-id")
                .map_err(io_err("read /etc/machine-id of the clone"))?;
            if let Some(old) = old {
                if old.lines().next().unwrap_or("") != "uninitialized" {
                    guest
                        .write("etc/machine-id", "\n", 0o444)
                        .map_err(io_err("truncate /etc/machine-id of the clone"))?;
                    log.push("post_clone_hook: /etc/machine-id truncated".into());
                }
            }
        }
        Ok(log)
    }

    /// Rename volume directories for a template.
    pub fn template(&self, renames: &[(String, String)]) -> Result<Vec<String>, RuntimeError> {
        let mut log = Vec::new();
        for (from, to) in renames {
            let a = self.volume_dir(from)?;
            let b = self.volume_dir(to)?;
            if a.exists() {
                std::fs::rename(&a, &b).map_err(io_err(format!(
                    "rename {} to {}",
                    a.display(),
                    b.display()
                )))?;
                log.push(format!("renamed volume {from} to {to}"));
            }
        }
        Ok(log)
    }
}

fn texts_volume_missing(volid: &str) -> String {
    pve_api::texts::volume_missing(volid)
}
